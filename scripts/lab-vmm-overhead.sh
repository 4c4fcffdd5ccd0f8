#!/bin/sh
# Run inside the KVM lab: berth lab --image /tmp/busybox.tar --file scripts/lab-vmm-overhead.sh:/lab/overhead.sh -- sh /lab/overhead.sh
# The built-in VMM process's own private memory (all but guest RAM), for a clone and a cold boot.
sleep 5
docker run -d --name idle busybox sleep 600 > /dev/null
docker run -d --name idle2 --runtime berth-coldboot busybox sleep 600 > /dev/null
sleep 5
for name in idle idle2; do
  id=$(docker inspect -f '{{.Id}}' $name)
  pid=$(ps -o pid,args | grep "[b]erth vmm --config /run/berth/vms/${id:0:12}" | awk '{print $1}' | head -1)
  [ -z "$pid" ] && pid=$(ps -o pid,args | grep "[b]erth vmm --config" | grep "${id:0:12}" | awk '{print $1}' | head -1)
  awk -v name=$name '/^[0-9a-f]+-[0-9a-f]+ /{ size=0; split($1, r, "-"); path=$6 } /^Size:/{ size=$2 } /^Private_(Clean|Dirty):/{ if (path ~ /memory$/ || size >= 262144) guest+=$2; else own+=$2 } END { printf "%s: vmm_own_private_kib=%d guest_private_kib=%d\n", name, own, guest }' /proc/$pid/smaps
  grep -E "^(VmRSS|Threads)" /proc/$pid/status | tr '\n' ' '; echo
done
ls /run/berth/vms/
