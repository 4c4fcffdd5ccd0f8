#!/bin/sh
# Run inside the KVM lab: berth lab --with-qemu --memory 8192 --timeout 2400 --image /tmp/busybox.tar --file scripts/lab-bench-backends.sh:/lab/bench.sh -- sh /lab/bench.sh
# berth bench clone against the built-in VMM, then against QEMU, in one lab boot (docs/benchmarks.md).
set -u
sleep 10
echo "=== built-in VMM (berth daemon --backend kvm)"
berth bench clone --socket /var/run/docker.sock --runs 5 --idle 3 --density 5
docker rm -f $(docker ps -aq) > /dev/null 2>&1
echo "=== QEMU on KVM (berth daemon --backend qemu)"
berth daemon --backend qemu --root /var/lib/berth-qemu --exec-root /run/bq --socket /run/qemu.sock --netns berth-qemu > /lab/qemu-daemon.log 2>&1 &
until [ -S /run/qemu.sock ]; do sleep 0.2; done
docker -H unix:///run/qemu.sock load -q -i /lab/images/0.tar > /dev/null
sleep 20
berth bench clone --socket /run/qemu.sock --runs 5 --idle 3 --density 5
tail -5 /lab/qemu-daemon.log
