#!/usr/bin/env bash
# Runs `berth bench containerd` against a containerd of its own (its own root, state and
# socket under a temporary directory; the host's containerd, if any, is left alone), with
# Berth's two runtimes on its PATH and the tests' busybox image imported:
#   ./scripts/bench-containerd.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
berth=$(pwd)/target/release/berth
[ -x "$berth" ] || cargo build --release -p berth
dir=$(mktemp -d /tmp/berth-bench-containerd.XXXXXX)
mkdir -p "$dir/bin"
ln -s "$berth" "$dir/bin/containerd-shim-berth-v2"
ln -s "$berth" "$dir/bin/containerd-shim-berth-cold-v2"
cat > "$dir/config.toml" <<TOML
version = 2
root = "$dir/root"
state = "$dir/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$dir/containerd.sock"
[ttrpc]
  address = "$dir/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$dir/opt"
TOML
PATH="$dir/bin:$PATH" BERTH_SHIM_ROOT="$dir/shim" BERTH_BACKEND=${BERTH_BACKEND:-auto} \
    containerd --config "$dir/config.toml" > "$dir/containerd.log" 2>&1 &
containerd_pid=$!
cleanup() {
    kill "$containerd_pid" 2>/dev/null || true
    wait "$containerd_pid" 2>/dev/null || true
    grep -l "$dir" /proc/[0-9]*/environ 2>/dev/null | cut -d/ -f3 | xargs -r kill -9 2>/dev/null || true
    grep -ls "$dir/containerd.sock" /proc/[0-9]*/cmdline 2>/dev/null | cut -d/ -f3 | xargs -r kill -9 2>/dev/null || true
    awk -v d="$dir" '$2 ~ "^"d {print $2}' /proc/self/mounts | xargs -r -n1 umount -l
    rm -rf "$dir"
}
trap cleanup EXIT
for _ in $(seq 100); do
    ctr --address "$dir/containerd.sock" version >/dev/null 2>&1 && break
    sleep 0.2
done
./scripts/make-busybox-image.sh "$dir/busybox.tar" >/dev/null
ctr --address "$dir/containerd.sock" images import "$dir/busybox.tar" >/dev/null
"$berth" bench containerd --address "$dir/containerd.sock" --runs "$runs"
