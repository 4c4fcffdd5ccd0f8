#!/usr/bin/env bash
# What one clone start costs in instructions, the part of it that carries over to a host
# with hardware virtualization (docs/benchmarks.md, "A hardware estimate"):
#
# - the daemon: instructions of `berth daemon` from `docker start`'s request until its
#   answer (the container's process runs), counted by callgrind over RUNS starts;
# - the guest: instructions the clone's vCPU executes from the restore until the first
#   instruction of the container's program (busybox's ELF entry point), counted by a TCG
#   plugin (scripts/clone-instructions/guest-instructions.c) in each clone's QEMU.
#
# Usage: scripts/clone-instructions.sh [RUNS]   (default 5; needs gcc and valgrind)
#
# It starts a daemon of its own (QEMU backend, under callgrind) with a root, socket and
# network namespace under a fresh directory, and removes them at the end.
set -euo pipefail
runs=${1:-5}
here=$(cd "$(dirname "$0")" && pwd)
berth=${BERTH:-$here/../target/release/berth}
[ -x "$berth" ] || { echo "build berth first: cargo build --release" >&2; exit 1; }
for tool in gcc valgrind callgrind_control callgrind_annotate docker; do
    command -v "$tool" >/dev/null || { echo "$tool is needed (apt-get install valgrind gcc)" >&2; exit 1; }
done
work=$(mktemp -d /var/tmp/berth-clone-instructions.XXXXXX)
netns=berth-ci-$$
daemon_pid=
cleanup() {
    if [ -n "$daemon_pid" ]; then
        docker -H "unix://$work/d.sock" rm -f $(docker -H "unix://$work/d.sock" ps -aq) >/dev/null 2>&1 || true
        kill "$daemon_pid" 2>/dev/null || true
        wait "$daemon_pid" 2>/dev/null || true
    fi
    ip netns delete "$netns" 2>/dev/null || true
    [ -n "${KEEP:-}" ] && echo "kept $work" >&2 || rm -rf "$work"
}
trap cleanup EXIT

gcc -O2 -Wall -shared -fPIC -o "$work/guest-instructions.so" "$here/clone-instructions/guest-instructions.c"
entry=$(readelf -h /bin/busybox | awk '/Entry point address/ { print $4 }')
# Clones (QEMU started with -incoming) get the plugin, each with a log of its own;
# template boots run as they are.
cat > "$work/qemu" <<EOF
#!/bin/sh
case " \$* " in
*" -incoming "*) exec qemu-system-x86_64 -plugin "$work/guest-instructions.so,entry=$entry" \\
    -d plugin -D "$work/guest.\$\$.log" "\$@" ;;
esac
exec qemu-system-x86_64 "\$@"
EOF
chmod +x "$work/qemu"

image=$work/busybox.tar
"$here/make-busybox-image.sh" "$image" >/dev/null
export DOCKER_HOST=unix://$work/d.sock
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$work/daemon.callgrind" \
    "$berth" daemon --root "$work/root" --exec-root "$work/run" --socket "$work/d.sock" \
    --netns "$netns" --backend qemu --qemu "$work/qemu" > "$work/daemon.log" 2>&1 &
daemon_pid=$!
for _ in $(seq 600); do [ -S "$work/d.sock" ] && docker version >/dev/null 2>&1 && break; sleep 0.5; done
docker load -q -i "$image" >/dev/null
echo "clone-instructions: building the template (one cold boot)" >&2
docker run --rm busybox true
ids=()
for _ in $(seq "$runs"); do ids+=("$(docker create busybox true)"); done
rm -f "$work"/guest.*.log
callgrind_control -i on "$daemon_pid" >/dev/null 2>&1
for id in "${ids[@]}"; do docker start "$id" >/dev/null; done
callgrind_control -i off "$daemon_pid" >/dev/null 2>&1
callgrind_control -d "$daemon_pid" >/dev/null 2>&1
docker wait "${ids[@]}" >/dev/null

daemon_total=$(cat "$work"/daemon.callgrind* | awk '/^totals:/ { s += $2 } END { print s + 0 }')
echo "daemon: $((daemon_total / runs)) instructions per clone start ($runs starts, $daemon_total in all)"
grep -h "berth-guest-instructions entry=" "$work"/guest.*.log | awk '
    { for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
      n++; total += v["total"]; kernel += v["kernel"]; user += v["user"]
      printf "guest: clone %d: %d instructions from restore to the program (kernel %d, user %d)\n", n, v["total"], v["kernel"], v["user"] }
    END { if (n) printf "guest: mean %d instructions (kernel %d, user %d) over %d clones\n", total / n, kernel / n, user / n, n
          else { print "guest: no clone reached the program entry point"; exit 1 } }'
