#!/usr/bin/env bash
# A pod's start through the CRI on runc, a Berth clone and a Berth cold boot, side by
# side: starts a containerd of its own (scripts/containerd-common.sh) with its CRI
# plugin, in a network namespace of its own (where CNI's bridge goes; the host's
# interfaces are left alone), with the runtime handlers `runc`, `berth`
# and `berth-cold`, imports busybox and a sandbox image made from it, and runs the
# `bench_pods` example (crates/berth/examples/bench_pods.rs):
#   ./scripts/bench-pods.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/containerd-common.sh
runs=${1:-5}
cargo build --release -p berth --bin berth --example bench_pods
berth=$(pwd)/target/release/berth
bench=$(pwd)/target/release/examples/bench_pods
containerd_dir "$berth" pods
netns=berth-bench-pods-$$
ip netns add "$netns"
ip -n "$netns" link set lo up
mkdir -p "$dir/net.d"
cat > "$dir/net.d/10-bench.conflist" <<JSON
{"cniVersion": "1.0.0", "name": "bench", "plugins": [{"type": "bridge", "bridge": "benchpods0",
  "isGateway": true, "ipMasq": false, "ipam": {"type": "host-local", "dataDir": "$dir/ipam",
  "ranges": [[{"subnet": "10.88.78.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}]}}]}
JSON
{
    containerd_config_head
    cat <<TOML
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "berth.bench/pause:1"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "/usr/lib/cni"
  conf_dir = "$dir/net.d"
[plugins."io.containerd.grpc.v1.cri".containerd]
  default_runtime_name = "runc"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.berth]
  runtime_type = "io.containerd.berth.v2"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.berth-cold]
  runtime_type = "io.containerd.berth-cold.v2"
TOML
} > "$dir/config.toml"
start_containerd nsenter --net="/run/netns/$netns" --
ctr() { command ctr --address "$dir/containerd.sock" --namespace k8s.io "$@"; }
./scripts/make-busybox-image.sh "$dir/busybox.tar" >/dev/null
./scripts/make-busybox-image.sh "$dir/pause.tar" berth.bench/pause:1 '["sleep","2147483647"]' >/dev/null
ctr images import "$dir/busybox.tar" >/dev/null
ctr images import "$dir/pause.tar" >/dev/null
"$bench" --address "$dir/containerd.sock" --image docker.io/library/busybox:latest \
    --runs "$runs" --handlers runc,berth,berth-cold --logs "$dir/logs"
