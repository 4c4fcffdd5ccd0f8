# Sourced by scripts/bench-containerd.sh and scripts/bench-pods.sh: a containerd of the
# benchmark's own (its root, state and socket under a temporary directory; the host's
# containerd, if any, is left alone) with Berth's two runtimes on its PATH, and its
# cleanup (processes, mounts, the directory, and the network namespace `$netns` if the
# caller made one).

# Makes the directory ($dir, named after $2) and the runtimes' links for the berth
# binary $1; cleans up on exit from here on.
containerd_dir() {
    containerd_pid=
    dir=$(mktemp -d "/tmp/berth-bench-$2.XXXXXX")
    trap containerd_cleanup EXIT
    mkdir -p "$dir/bin"
    ln -s "$1" "$dir/bin/containerd-shim-berth-v2"
    ln -s "$1" "$dir/bin/containerd-shim-berth-cold-v2"
}

# The top of containerd's config.toml for $dir; the arguments are more top-level lines
# (TOML's top-level keys come before its tables).
containerd_config_head() {
    cat <<TOML
version = 2
root = "$dir/root"
state = "$dir/state"
TOML
    for line in "$@"; do
        echo "$line"
    done
    cat <<TOML
[grpc]
  address = "$dir/containerd.sock"
[ttrpc]
  address = "$dir/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$dir/opt"
TOML
}

containerd_cleanup() {
    if [ -n "$containerd_pid" ]; then
        kill "$containerd_pid" 2>/dev/null || true
        wait "$containerd_pid" 2>/dev/null || true
    fi
    grep -l "$dir" /proc/[0-9]*/environ 2>/dev/null | cut -d/ -f3 | xargs -r kill -9 2>/dev/null || true
    grep -ls "$dir/containerd.sock" /proc/[0-9]*/cmdline 2>/dev/null | cut -d/ -f3 | xargs -r kill -9 2>/dev/null || true
    awk -v d="$dir" '$2 ~ "^"d {print $2}' /proc/self/mounts | sort -r | xargs -r -n1 umount -l
    if [ -n "${netns:-}" ]; then
        ip netns delete "$netns" 2>/dev/null || true
    fi
    rm -rf "$dir"
}

# Starts containerd on $dir/config.toml (the arguments, if any, are a command it runs
# under, such as nsenter) and waits until it answers.
start_containerd() {
    PATH="$dir/bin:$PATH" BERTH_SHIM_ROOT="$dir/shim" BERTH_BACKEND=${BERTH_BACKEND:-auto} \
        "$@" containerd --config "$dir/config.toml" > "$dir/containerd.log" 2>&1 &
    containerd_pid=$!
    for _ in $(seq 100); do
        command ctr --address "$dir/containerd.sock" version >/dev/null 2>&1 && return
        sleep 0.2
    done
}
