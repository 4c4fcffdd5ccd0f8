#!/bin/sh
# Run inside the KVM lab (docs/benchmarks.md), N spare VMs per daemon (default 1):
#   berth lab --with-qemu --memory 8192 --timeout 2400 --daemon-arg=--backend --daemon-arg=kvm \
#       --daemon-arg=--spare-vms --daemon-arg=N \
#       --image /tmp/busybox.tar --file scripts/lab-bench-spares.sh:/lab/bench.sh -- sh /lab/bench.sh N
# Clones with spare VMs on both backends, side by side in the same rounds: the lab's
# daemon (the built-in VMM) and a QEMU daemon beside it. Each daemon's start timings
# (its log's "container started" lines) are printed after the bench.
set -u
spares=${1:-1}
berth daemon --backend qemu --spare-vms "$spares" --root /var/lib/berth-qemu --exec-root /run/bq \
    --socket /run/qemu.sock --netns berth-qemu > /lab/qemu-daemon.log 2>&1 &
until [ -S /run/qemu.sock ]; do sleep 0.2; done
docker -H unix:///run/qemu.sock load -q -i /lab/images/0.tar > /dev/null
# Both daemons' templates built and their spares restored before the first round.
waited=0
until [ "$(grep -l 'berth-[s]pare' /proc/[0-9]*/cmdline 2>/dev/null | wc -l)" -ge $((2 * spares)) ] || [ $waited -ge 900 ]; do sleep 2; waited=$((waited + 2)); done
sleep 10
berth bench clone --socket /var/run/docker.sock --runs 5 --idle 1 --compare "QEMU clone=/run/qemu.sock"
for daemon in daemon qemu-daemon; do
    echo "== $daemon: container started"
    grep "container started" "/lab/$daemon.log" | sed 's/.*runtime=/runtime=/'
done
