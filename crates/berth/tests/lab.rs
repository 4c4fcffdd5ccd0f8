//! Berth's own VMM, end to end, in the KVM lab: `berth lab` boots a TCG VM with AMD SVM,
//! starts `berth daemon --backend kvm` in it, and the real docker CLI runs containers
//! there, each in a `berth vmm` process on KVM.

mod common;

use std::collections::HashMap;
use std::process::Command;

use common::{busybox_archive, run_lab, stderr, stdout, BERTH};

/// Runs `script` in the lab and returns its exit status and its `key=value` lines.
fn lab(script: &str) -> (i32, HashMap<String, String>, String) {
    let output = run_lab(|| {
        let mut command = Command::new(BERTH);
        command
            .args(["lab", "--image"])
            .arg(busybox_archive())
            .args(["--", "sh", "-c", script]);
        command
    });
    let text = stdout(&output);
    let values = text
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| (key.to_owned(), value.trim().to_owned()))
        .collect();
    let code = output.status.code().unwrap_or(-1);
    (
        code,
        values,
        format!("stdout:\n{text}\nstderr:\n{}", stderr(&output)),
    )
}

/// Runs the checks below in a lab; when they fail, once more in a new lab, recording the
/// first failure in `target/lab-retries.log` (as `lab_suites` does): the lab's emulated
/// SVM now and then stalls or loses a guest, which is the lab's, not Berth's; a real
/// failure fails twice.
#[test]
fn containers_run_on_the_built_in_vmm_in_the_lab() {
    let first = std::panic::catch_unwind(check_in_the_lab);
    if let Err(failure) = first {
        let message = failure
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| failure.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        common::record_lab_retry("a check failed in the lab once", &message);
        check_in_the_lab();
    }
}

fn check_in_the_lab() {
    let script = r#"
echo "release=$(docker run --rm busybox uname -r)"
echo "coldboot=$(docker run --rm --runtime berth-coldboot busybox echo cold)"
docker run --rm busybox sh -c "exit 3"; echo "exit=$?"
echo "templates=$(berth template ls | tail -n +2 | wc -l)"
docker run -d --name first busybox sh -c "echo hello-log; sleep 600" > /dev/null
docker run -d --name second busybox sleep 600 > /dev/null
docker network create labnet1 > /dev/null
docker network create labnet2 > /dev/null
echo "nics=$(docker run --rm --network labnet1 --network labnet2 busybox sh -c 'ls /sys/class/net | grep -c eth')"
echo "none=$(docker run --rm --network none busybox ls /sys/class/net | tr '\n' ' ')"
echo "exec=$(docker exec first echo in-vm)"
echo "logs=$(docker logs first)"
echo "random1=$(docker exec first head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
echo "random2=$(docker exec second head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
echo "states=$(docker inspect -f '{{.Name}} {{.State.Status}} {{.State.ExitCode}} {{.State.Error}};' first second)"
echo "hostname1=$(docker exec first hostname)"
echo "hostname2=$(docker exec second hostname)"
echo "rng=$(docker exec first cat /sys/class/misc/hw_random/rng_current)"
echo "mac1=$(docker exec first cat /sys/class/net/eth0/address)"
echo "mac2=$(docker exec second cat /sys/class/net/eth0/address)"
peer=$(docker inspect -f '{{.NetworkSettings.IPAddress}}' second)
docker exec first ping -c 1 -W 10 "$peer" > /dev/null && echo "ping=ok"
docker pause first > /dev/null && echo "paused=$(docker inspect -f '{{.State.Status}}' first)"
docker unpause first > /dev/null && echo "unpaused=$(docker exec first echo alive)"
echo "backend=$(docker info --format '{{json .DriverStatus}}')"
echo "vmms=$(ps -o args | grep -c '^[/a-z]*berth vmm --config')"
mkdir -p /lab-share && echo from-lab-host > /lab-share/in
echo "bind=$(docker run --rm -v /lab-share:/s busybox sh -c 'cat /s/in; echo out > /s/out')-$(cat /lab-share/out)"
docker run -d --name holder -v labvol:/v busybox sh -c 'echo shared > /v/f; sleep 600' > /dev/null
for i in $(seq 1 50); do [ -s /var/lib/berth/volumes/labvol/_data/f ] && break; sleep 0.2; done
echo "volume=$(docker run --rm -v labvol:/v busybox cat /v/f)"
echo "holder_shared=$(docker inspect -f '{{.Berth.Memory.SharedBytes}}' holder)"
echo "clone_shared=$(docker inspect -f '{{.Berth.Memory.SharedBytes}}' second)"
docker volume create -o type=disk labdisk > /dev/null
docker run -d --name disked -v labdisk:/d busybox sh -c 'echo on-disk > /d/f; sleep 600' > /dev/null
echo "disk_file=$(docker exec disked sh -c 'for i in $(seq 1 50); do [ -s /d/f ] && break; sleep 0.2; done; cat /d/f')"
echo "disk_shared=$(docker inspect -f '{{.Berth.Memory.SharedBytes}}' disked)"
docker run -d --name peer --network labnet1 busybox sleep 600 > /dev/null
peer1=$(docker inspect -f '{{(index .NetworkSettings.Networks "labnet1").IPAddress}}' peer)
docker network connect labnet1 second && echo "connected=$(docker exec second sh -c 'ls /sys/class/net | grep -c eth')"
docker exec second ping -c 1 -W 10 "$peer1" > /dev/null && echo "ping_connected=ok"
docker network disconnect labnet1 second && echo "disconnected=$(docker exec second sh -c 'ls /sys/class/net | grep -c eth')"
docker exec second touch /made-here
echo "diff=$(docker diff second | grep made-here)"
printf 'FROM busybox\nRUN echo built > /built\n' | docker build -q -t labbuilt - > /dev/null && echo "built=$(docker run --rm labbuilt cat /built)"
echo "templates_after=$(berth template ls | tail -n +2 | wc -l)"
docker run -d --name mem --shm-size 200m busybox sleep 600 > /dev/null
docker exec mem dd if=/dev/zero of=/dev/shm/fill bs=1M count=120
private() { docker inspect -f '{{with .Berth.Memory}}{{.PrivateBytes}}{{end}}' mem; }
filled=$(private)
echo "mem_filled=$filled"
docker exec mem rm /dev/shm/fill
# Waits until the test's own bar (64 MiB of the 120 back) is passed, or 30 s (or the
# container is gone: its state is then printed for the assertion's message).
for i in $(seq 1 60); do sleep 0.5; p=$(private); [ -n "$p" ] && [ -n "$filled" ] || break; [ "$p" -lt $((filled - 67108864)) ] && break; done
echo "mem_freed=$p"
echo "mem_state=$(docker inspect -f '{{.State.Status}} exit {{.State.ExitCode}} oom {{.State.OOMKilled}} {{.State.Error}}' mem)"
total() { docker exec mem sed -n 's/MemTotal: *\([0-9]*\) kB/\1/p' /proc/meminfo; }
echo "memtotal=$(total)"
docker update -m 100m mem > /dev/null
for i in $(seq 1 60); do t=$(total); [ "$t" -lt 110000 ] && break; sleep 0.5; done
echo "memtotal_limited=$t"
docker rm -f first second holder disked peer mem > /dev/null
echo "left=$(ps -o args | grep -c '^[/a-z]*berth vmm --config')"
exit 7
"#;
    let (code, values, all) = lab(script);
    let value = |key: &str| values.get(key).map(String::as_str).unwrap_or("");
    assert_eq!(code, 7, "the lab returns the command's status\n{all}");
    assert!(value("release").ends_with("-cloud-amd64"), "{all}");
    let host = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_ne!(value("release"), host.trim(), "{all}");
    assert_eq!(value("coldboot"), "cold", "{all}");
    assert_eq!(value("exit"), "3", "{all}");
    // Shares on the built-in VMM: a bind, and a volume two running VMs use at once, in
    // clones (shares need no device, so no cold boot on a VMM without hot-plug).
    assert_eq!(value("bind"), "from-lab-host-out", "{all}");
    assert_eq!(value("volume"), "shared", "{all}");
    // As much of its template's memory shared as a clone without shares (a cold boot
    // shares next to none: its RAM is its own).
    let shared: u64 = value("holder_shared").parse().unwrap_or(0);
    let clone_shared: u64 = value("clone_shared").parse().unwrap_or(u64::MAX);
    assert!(
        shared > clone_shared / 2 && shared > 8 << 20,
        "a container with a share is a clone, sharing its template's memory\n{all}"
    );
    assert_eq!(
        value("templates"),
        "1",
        "clones come from one template\n{all}"
    );
    assert_eq!(
        value("nics"),
        "2",
        "two networks at start: a clone with its second NIC hot-plugged\n{all}"
    );
    // Hot-plug on the built-in VMM: a disk volume in a clone (sharing its template's
    // memory as a clone does), a NIC connected to and taken from a running container, the
    // image's disk attached for `docker diff` and for a build's steps; all from the one
    // template.
    assert_eq!(value("disk_file"), "on-disk", "{all}");
    let disk_shared: u64 = value("disk_shared").parse().unwrap_or(0);
    assert!(
        disk_shared > clone_shared / 2 && disk_shared > 8 << 20,
        "a container with a disk volume is a clone\n{all}"
    );
    assert_eq!(value("connected"), "2", "{all}");
    assert_eq!(
        value("ping_connected"),
        "ok",
        "over the hot-plugged NIC\n{all}"
    );
    assert_eq!(value("disconnected"), "1", "{all}");
    assert_eq!(value("diff"), "A /made-here", "{all}");
    assert_eq!(value("built"), "built", "{all}");
    assert_eq!(value("templates_after"), "1", "{all}");
    // Memory: pages a clone's guest frees go back to the host (free page reporting), and
    // `docker update -m` of a running clone moves its balloon.
    let filled: u64 = value("mem_filled").parse().unwrap_or(0);
    let freed: u64 = value("mem_freed").parse().unwrap_or(u64::MAX);
    assert!(
        filled > 120 << 20 && freed < filled - (64 << 20),
        "120 MiB written to tmpfs and removed: private {filled} then {freed} ({})\n{all}",
        value("mem_state")
    );
    let total: u64 = value("memtotal").parse().unwrap_or(0);
    let limited: u64 = value("memtotal_limited").parse().unwrap_or(u64::MAX);
    assert!(
        total > 200_000 && limited < 110_000,
        "MemTotal {total} kB, then {limited} kB after update -m 100m\n{all}"
    );
    assert_eq!(
        value("none"),
        "lo",
        "--network none: the loopback only\n{all}"
    );
    assert_eq!(value("exec"), "in-vm", "{all}");
    assert_eq!(value("logs"), "hello-log", "{all}");
    // Two clones of one template: their own entropy, hostname and MAC.
    assert_eq!(value("random1").len(), 32, "{all}");
    assert_ne!(value("random1"), value("random2"), "{all}");
    assert_ne!(value("hostname1"), value("hostname2"), "{all}");
    assert_ne!(value("mac1"), value("mac2"), "{all}");
    assert!(
        value("rng").starts_with("virtio_rng"),
        "the VMM's entropy device\n{all}"
    );
    assert_eq!(value("ping"), "ok", "clone to clone over the bridge\n{all}");
    assert_eq!(value("paused"), "paused", "{all}");
    assert_eq!(value("unpaused"), "alive", "{all}");
    assert!(value("backend").contains("kvm"), "{all}");
    assert_eq!(
        value("vmms"),
        "2",
        "one VMM process per running container\n{all}"
    );
    assert_eq!(value("left"), "0", "{all}");
}
