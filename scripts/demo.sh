#!/usr/bin/env bash
# From a fresh Debian 12 machine to a container running in its own VM:
# installs what Berth needs, builds it, starts the daemon, loads a busybox image made
# from Debian's busybox-static, and runs a container. The daemon keeps running.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --release
socket=/run/berth/docker.sock
if ! docker -H "unix://$socket" version >/dev/null 2>&1; then
    mkdir -p /var/log/berth
    nohup target/release/berth daemon --socket "$socket" >/var/log/berth/daemon.log 2>&1 &
    echo "berth daemon started (pid $!, log /var/log/berth/daemon.log)"
    for _ in $(seq 100); do docker -H "unix://$socket" version >/dev/null 2>&1 && break; sleep 0.2; done
fi
./scripts/make-busybox-image.sh /tmp/busybox.tar >/dev/null
docker -H "unix://$socket" load -i /tmp/busybox.tar
echo "+ docker run --rm busybox uname -r   (the guest's kernel)"
docker -H "unix://$socket" run --rm busybox uname -r
echo "+ docker run --rm busybox echo hello"
docker -H "unix://$socket" run --rm busybox echo hello
