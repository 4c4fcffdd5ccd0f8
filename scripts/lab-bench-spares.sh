#!/bin/sh
# Run inside the KVM lab (docs/benchmarks.md):
#   berth lab --with-qemu --memory 8192 --timeout 2400 --daemon-arg=--backend --daemon-arg=kvm \
#       --daemon-arg=--spare-vms --daemon-arg=1 \
#       --image /tmp/busybox.tar --file scripts/lab-bench-spares.sh:/lab/bench.sh -- sh /lab/bench.sh
# Clones with spare VMs on both backends, side by side in the same rounds: the lab's
# daemon (the built-in VMM) and a QEMU daemon beside it.
set -u
berth daemon --backend qemu --spare-vms 1 --root /var/lib/berth-qemu --exec-root /run/bq \
    --socket /run/qemu.sock --netns berth-qemu > /lab/qemu-daemon.log 2>&1 &
until [ -S /run/qemu.sock ]; do sleep 0.2; done
docker -H unix:///run/qemu.sock load -q -i /lab/images/0.tar > /dev/null
# Both daemons' templates built and their spares restored before the first round.
waited=0
until [ "$(grep -l 'berth-[s]pare' /proc/[0-9]*/cmdline 2>/dev/null | wc -l)" -ge 2 ] || [ $waited -ge 900 ]; do sleep 2; waited=$((waited + 2)); done
sleep 10
berth bench clone --socket /var/run/docker.sock --runs 5 --idle 2 --compare "QEMU clone=/run/qemu.sock"
grep -c "container started" /lab/qemu-daemon.log
