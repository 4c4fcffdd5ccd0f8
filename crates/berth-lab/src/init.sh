#!/bin/busybox sh
# PID 1 of the KVM lab (see berth-lab's docs). The kernel console (ttyS1) goes to the
# lab's log; the command's output goes to ttyS0, which `berth lab` copies to its stdout.
/bin/busybox --install -s /bin
export PATH=/usr/local/bin:/bin:/usr/bin:/sbin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm /run /tmp /var/lib /var/cache
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /dev/shm
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
ip link set lo up 2>/dev/null || ifconfig lo 127.0.0.1 up
while read -r module; do
    insmod "/lib/modules/lab/$module" || echo "berth-lab: insmod $module failed"
done < /lib/modules/lab/order
stty -F /dev/ttyS0 raw -echo
echo "berth-lab: ready, /dev/kvm: $(test -c /dev/kvm && echo yes || echo no)"
cd /root
/bin/sh /lab/command < /dev/null > /dev/ttyS0 2>&1
status=$?
echo "berth-lab-exit=$status"
sync
poweroff -f
