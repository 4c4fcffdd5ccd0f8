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
# No transparent huge pages in the lab: once, a VM's vCPU thread spun in the lab
# kernel's KVM (soft lockup) while khugepaged waited on it, collapsing the VM's memory.
echo never > /sys/kernel/mm/transparent_hugepage/enabled 2> /dev/null
echo never > /sys/kernel/mm/transparent_hugepage/defrag 2> /dev/null
stty -F /dev/ttyS0 raw -echo
# The heartbeat (ttyS2): the host gives the lab up when it stops.
(while :; do echo alive > /dev/ttyS2; sleep 5; done) &
export HOME=/root
echo "berth-lab: ready, /dev/kvm: $(test -c /dev/kvm && echo yes || echo no)"
if [ -f /lab/daemon-args ]; then
    # Berth's daemon on the built-in VMM, its API where the docker CLI looks by default.
    mkdir -p /var/run
    eval "berth daemon $(cat /lab/daemon-args) --socket /var/run/docker.sock" > /lab/daemon.log 2>&1 &
    waited=0
    daemon=$!
    until [ -S /var/run/docker.sock ] || [ $waited -ge 600 ] || ! kill -0 $daemon 2> /dev/null; do
        sleep 0.1
        waited=$((waited + 1))
    done
    for image in /lab/images/*.tar; do
        [ -f "$image" ] && docker load -q -i "$image" > /dev/null 2>> /lab/daemon.log
    done
    echo "berth-lab: daemon up"
fi
# The command gets until /lab/deadline (seconds), a little less than the host gives the
# whole lab: when it hangs, what every process is blocked in and the logs below still
# reach the console before the host gives up.
report_hang() {
    echo "berth-lab: the command ran past its ${1}s; processes:"
    ps -o pid,ppid,stat,rss,args | grep -v ' \[.*\]$'
    # Every thread of Berth's processes: a vCPU thread in R is running (or spinning in)
    # its guest; in S, the guest halted; where it is in the lab's kernel follows.
    for task in /proc/[0-9]*/task/[0-9]*; do
        read -r _ name state _ < "$task/stat" 2> /dev/null || continue
        case "$(cat "${task%/task/*}/cmdline" 2> /dev/null | tr '\0' ' ')" in
            *berth*) echo "berth-lab: $task $name $state $(cat "$task/wchan" 2> /dev/null)"
                case "$name" in *vcpu*) sed 's/^/berth-lab:     /' "$task/stack" 2> /dev/null | head -n 8 ;; esac ;;
        esac
    done
    # Whether each VM's vCPUs still leave their guest (KVM's exit counters, 2 s apart).
    mount -t debugfs debugfs /sys/kernel/debug 2> /dev/null
    for vm in /sys/kernel/debug/kvm/*-*; do
        [ -f "$vm/exits" ] || continue
        before=$(cat "$vm/exits"); sleep 2
        echo "berth-lab: KVM VM ${vm##*/}: $(($(cat "$vm/exits") - before)) exits in 2 s, halts $(cat "$vm/halt_exits" 2> /dev/null)"
    done
    # The VMs' own ends, before the daemon's long log (which a reader may see cut).
    for log in /run/berth/vms/*/console.log /run/berth/vms/*/vmm.log; do
        [ -s "$log" ] && { echo "berth-lab: $log:"; tail -n 15 "$log"; }
    done
    echo "berth-lab: containers: $(timeout 20 docker ps -a --format '{{.Names}} {{.Status}}' 2>&1 | tr '\n' ';')"
}
cd /root
/bin/sh /lab/command < /dev/null > /dev/ttyS0 2>&1 &
command=$!
deadline=$(cat /lab/deadline 2> /dev/null || echo 0)
if [ "$deadline" -gt 0 ]; then
    (sleep "$deadline" && report_hang "$deadline" && kill -9 $command) &
    watchdog=$!
fi
wait $command
status=$?
[ -n "$watchdog" ] && kill $watchdog 2> /dev/null
log_lines=60
[ $status = 137 ] && log_lines=300
if [ -f /lab/daemon-args ]; then
    echo "berth-lab: daemon log:"
    tail -n $log_lines /lab/daemon.log
    for log in /run/berth/vms/*/console.log /run/berth/vms/*/vmm.log; do
        [ -f "$log" ] && { echo "berth-lab: $log:"; tail -n 30 "$log"; }
    done
fi
echo "berth-lab-exit=$status"
sync
poweroff -f
