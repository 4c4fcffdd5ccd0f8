#!/usr/bin/env bash
# Runs `berth bench containerd` against a containerd of its own (scripts/containerd-common.sh)
# with Berth's two runtimes on its PATH and the tests' busybox image imported:
#   ./scripts/bench-containerd.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/containerd-common.sh
runs=${1:-5}
berth=$(pwd)/target/release/berth
[ -x "$berth" ] || cargo build --release -p berth
containerd_dir "$berth" containerd
containerd_config_head 'disabled_plugins = ["io.containerd.grpc.v1.cri"]' > "$dir/config.toml"
start_containerd
./scripts/make-busybox-image.sh "$dir/busybox.tar" >/dev/null
ctr --address "$dir/containerd.sock" images import "$dir/busybox.tar" >/dev/null
"$berth" bench containerd --address "$dir/containerd.sock" --runs "$runs"
