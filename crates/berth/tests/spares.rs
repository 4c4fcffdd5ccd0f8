//! VMs restored ahead of demand (`berth daemon --spare-vms N`): a start claims a spare
//! VM, which takes the container's disk, tap and identity; another spare is restored
//! behind it; a killed daemon's claimed spares are taken over like any container's VM,
//! its unclaimed ones killed; a stopped daemon leaves none.

mod common;

use std::path::Path;

use common::{busybox_archive, eventually, Daemon};

/// The pids of spare VM processes (named `berth-spare…`) whose files are under `dir`.
fn spare_vms_under(dir: &Path) -> Vec<u32> {
    let dir = dir.display().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            cmdline.contains("berth-spare") && cmdline.contains(&dir)
        })
        .collect()
}

/// Whether process `pid` runs (a killed process is a zombie until it is reaped).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(") ")
            .next()
            .is_some_and(|rest| !rest.starts_with('Z'))
    })
}

/// The daemon's count of spare VMs ready (`docker info`: "Spare VMs": "N ready ...").
fn spares_ready(daemon: &Daemon) -> usize {
    let status = daemon.docker_ok(&["info", "--format", "{{json .DriverStatus}}"]);
    let status: Vec<(String, String)> = serde_json::from_str(&status).unwrap();
    status
        .iter()
        .find(|(key, _)| key == "Spare VMs")
        .and_then(|(_, value)| value.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no spare VM count in {status:?}"))
}

/// Waits until exactly one spare VM runs under `run_dir` and the daemon has it ready
/// (restored, rebound and rehearsed); returns its pid.
fn one_spare(daemon: &Daemon, run_dir: &Path) -> u32 {
    eventually("a spare VM is ready", || {
        spare_vms_under(run_dir).len() == 1 && spares_ready(daemon) == 1
    });
    spare_vms_under(run_dir)[0]
}

#[test]
fn starts_claim_spare_vms_which_become_the_containers() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let run_dir = root.with_extension("run");
    let daemon = Daemon::start_with(&root, &["--spare-vms", "1"]);
    daemon.docker_ok(&["load", "-i", busybox_archive().to_str().unwrap()]);

    // The daemon restores one spare of its default template once that is built.
    let spare = one_spare(&daemon, &run_dir);

    // `docker run -d` returns once the shell has started, not once it has written
    // /random: wait for the line to be there.
    let random = |name: &str| {
        eventually(&format!("{name} wrote /random"), || {
            let out = daemon.docker(&["exec", name, "cat", "/random"]);
            out.status.success() && !String::from_utf8_lossy(&out.stdout).trim().is_empty()
        });
        daemon.docker_ok(&["exec", name, "cat", "/random"])
    };

    // A container started now runs in that very VM, with its own disk and identity.
    daemon.docker_ok(&["network", "create", "sparenet"]);
    daemon.docker_ok(&[
        "run",
        "-d",
        "--name",
        "first",
        "--network",
        "sparenet",
        "busybox",
        "sh",
        "-c",
        // /proof is written once: a restart keeps what its disk has (rewriting it would
        // truncate it for a moment, under a `docker exec` that reads it right after the
        // start, and would prove nothing about the disk).
        "[ -s /proof ] || echo written-by-first > /proof; head -c 16 /dev/urandom | od -An -tx1 > /random; sleep 600",
    ]);
    let pid: u32 = daemon
        .docker_ok(&["inspect", "-f", "{{.State.Pid}}", "first"])
        .parse()
        .unwrap();
    assert_eq!(pid, spare, "the start did not claim the spare VM");
    let id = daemon.docker_ok(&["inspect", "-f", "{{.Id}}", "first"]);
    assert_eq!(daemon.docker_ok(&["exec", "first", "hostname"]), &id[..12]);
    let mac = daemon.docker_ok(&[
        "inspect",
        "-f",
        "{{.NetworkSettings.Networks.sparenet.MacAddress}}",
        "first",
    ]);
    let guest_mac = daemon.docker_ok(&["exec", "first", "cat", "/sys/class/net/eth0/address"]);
    assert_eq!(guest_mac, mac);
    let first_random = random("first"); // written after /proof
    assert_eq!(
        daemon.docker_ok(&["exec", "first", "cat", "/proof"]),
        "written-by-first"
    );

    // Behind it, another spare is restored; the next start claims that one.
    eventually("a second spare VM is ready", || {
        spare_vms_under(&run_dir)
            .iter()
            .any(|other| *other != spare)
            && spares_ready(&daemon) == 1
    });
    let second_spare = *spare_vms_under(&run_dir)
        .iter()
        .find(|other| **other != spare)
        .unwrap();
    daemon.docker_ok(&[
        "run",
        "-d",
        "--name",
        "second",
        "--network",
        "sparenet",
        "busybox",
        "sh",
        "-c",
        "head -c 16 /dev/urandom | od -An -tx1 > /random; sleep 600",
    ]);
    let second_pid: u32 = daemon
        .docker_ok(&["inspect", "-f", "{{.State.Pid}}", "second"])
        .parse()
        .unwrap();
    assert_eq!(second_pid, second_spare);
    // Spares share neither RNG state nor disks nor addresses; they reach each other.
    assert_ne!(first_random, random("second"));
    let second_files = daemon.docker(&["exec", "second", "cat", "/proof"]);
    assert!(
        !second_files.status.success(),
        "the second container sees the first one's file"
    );
    daemon.docker_ok(&["exec", "second", "ping", "-c", "1", "-W", "5", "first"]);

    // What the container wrote is on its own disk: readable once it has stopped.
    daemon.docker_ok(&["stop", "-t", "1", "first"]);
    let copied = daemon.docker_ok(&["cp", "first:/proof", "-"]);
    assert!(copied.contains("written-by-first"), "{copied}");
    // A restart runs in a VM of its own (maybe the next spare), on the same disk.
    daemon.docker_ok(&["start", "first"]);
    assert_eq!(
        daemon.docker_ok(&["exec", "first", "cat", "/proof"]),
        "written-by-first"
    );

    // A killed daemon: the claimed spares run on and are taken over; the unclaimed spare
    // is killed by the next daemon, which restores one of its own.
    let running: Vec<u32> = ["first", "second"]
        .iter()
        .map(|name| {
            daemon
                .docker_ok(&["inspect", "-f", "{{.State.Pid}}", name])
                .parse()
                .unwrap()
        })
        .collect();
    let waiting = || -> Vec<u32> {
        spare_vms_under(&run_dir)
            .into_iter()
            .filter(|pid| !running.contains(pid))
            .collect()
    };
    eventually("one spare VM waits", || waiting().len() == 1);
    let waiting = waiting();
    daemon.kill9();
    let daemon = Daemon::start_with(&root, &["--spare-vms", "1"]);
    eventually("the next daemon kills the unclaimed spare", || {
        !alive(waiting[0])
    });
    for (name, pid) in ["first", "second"].iter().zip(&running) {
        assert_eq!(
            daemon.docker_ok(&["inspect", "-f", "{{.State.Status}} {{.State.Pid}}", name]),
            format!("running {pid}")
        );
    }
    assert_eq!(daemon.docker_ok(&["exec", "second", "hostname"]).len(), 12);
    eventually("the new daemon restores a spare", || {
        spare_vms_under(&run_dir)
            .iter()
            .any(|pid| !running.contains(pid))
    });

    // Removing the containers and stopping the daemon leaves no VM at all.
    daemon.docker_ok(&["rm", "-f", "first", "second"]);
    daemon.stop();
    assert_eq!(spare_vms_under(&run_dir), Vec::<u32>::new());
    assert!(!running.iter().any(|pid| alive(*pid)));
}
