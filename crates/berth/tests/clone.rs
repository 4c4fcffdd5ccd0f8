//! Instant clone: containers' VMs restored from a template, each with its own identity.

mod common;

use common::{shared, stderr};

fn urandom(daemon: &common::Daemon, runtime: &str) -> String {
    daemon.docker_ok(&[
        "run",
        "--rm",
        "--runtime",
        runtime,
        "busybox",
        "sh",
        "-c",
        "head -c 16 /dev/urandom | od -An -tx1",
    ])
}

#[test]
fn clones_never_share_random_numbers() {
    let daemon = shared();
    let first = urandom(daemon, "berth");
    let second = urandom(daemon, "berth");
    assert_eq!(
        first.split_whitespace().count(),
        16,
        "read 16 bytes: {first}"
    );
    assert_ne!(
        first, second,
        "two clones of one template produced the same random bytes"
    );
}

#[test]
fn clone_and_coldboot_behave_the_same() {
    let daemon = shared();
    for runtime in ["berth", "berth-coldboot"] {
        let output = daemon.docker(&[
            "run",
            "--rm",
            "--runtime",
            runtime,
            "--hostname",
            "twin",
            "busybox",
            "sh",
            "-c",
            "hostname; echo err >&2; exit 5",
        ]);
        assert_eq!(
            output.status.code(),
            Some(5),
            "{runtime}: {}",
            stderr(&output)
        );
        assert_eq!(common::stdout(&output), "twin\n", "{runtime}");
        assert_eq!(stderr(&output), "err\n", "{runtime}");
    }
    // The clock of a clone is the host's, not its template's.
    let guest: i64 = daemon
        .docker_ok(&["run", "--rm", "busybox", "date", "+%s"])
        .parse()
        .unwrap();
    let host = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (host - guest).abs() < 30,
        "clone clock {guest} vs host {host}"
    );
}

#[test]
fn runtimes_are_listed_and_unknown_ones_refused() {
    let daemon = shared();
    let runtimes = daemon.docker_ok(&[
        "info",
        "--format",
        "{{.DefaultRuntime}} {{range $name, $_ := .Runtimes}}{{$name}} {{end}}",
    ]);
    assert_eq!(runtimes, "berth berth berth-coldboot");
    let refused = daemon.docker(&["run", "--rm", "--runtime", "runc", "busybox", "true"]);
    assert_eq!(refused.status.code(), Some(125));
    assert!(
        stderr(&refused).contains("unknown or invalid runtime name"),
        "{}",
        stderr(&refused)
    );
}

#[test]
fn idle_clones_report_memory_and_leave_nothing_behind() {
    // The density check, small: five idle clones at once, each answering exec.
    let daemon = shared();
    let ids: Vec<String> = (0..5)
        .map(|_| daemon.docker_ok(&["run", "-d", "busybox", "sleep", "3600"]))
        .collect();
    for id in &ids {
        assert_eq!(
            daemon.docker_ok(&["exec", id, "cat", "/etc/hostname"]),
            id[..12]
        );
    }
    for id in &ids {
        let memory = daemon.docker_ok(&[
            "inspect",
            "-f",
            "{{.Berth.Runtime}} {{.Berth.Memory.PrivateBytes}} {{.Berth.Memory.SharedBytes}}",
            id,
        ]);
        let fields: Vec<&str> = memory.split_whitespace().collect();
        assert_eq!(fields[0], "berth");
        let private: u64 = fields[1].parse().unwrap();
        let shared_bytes: u64 = fields[2].parse().unwrap();
        assert!(
            private > 0 && shared_bytes > 0,
            "a clone owns some pages and shares its template's: {memory}"
        );
    }
    let stats = daemon.docker_ok(&[
        "stats",
        "--no-stream",
        "--format",
        "{{.ID}} {{.MemUsage}}",
        &ids[0],
    ]);
    assert!(
        stats.starts_with(&ids[0][..12]) && stats.ends_with("/ 256MiB"),
        "docker stats: {stats}"
    );
    assert!(
        !stats.contains(" 0B /"),
        "docker stats shows the VM's memory: {stats}"
    );
    let info = daemon.docker_ok(&["info", "--format", "{{json .DriverStatus}}"]);
    assert!(info.contains("VM memory, private"), "{info}");
    let pids: Vec<String> = ids
        .iter()
        .map(|id| daemon.docker_ok(&["inspect", "-f", "{{.State.Pid}}", id]))
        .collect();
    let links = daemon.ip_in_namespace(&["-o", "link", "show"]);
    for id in &ids {
        assert!(
            links.contains(&format!("bt{}", &id[..12])),
            "a running clone has its tap: {links}"
        );
    }
    let mut args = vec!["rm", "-f"];
    args.extend(ids.iter().map(String::as_str));
    daemon.docker_ok(&args);
    for (id, pid) in ids.iter().zip(&pids) {
        let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        assert!(!cmdline.contains(&id[..]), "VM of {id} still runs");
        assert!(
            !daemon.root.join("containers").join(id).exists(),
            "files of {id} left behind"
        );
    }
    let links = daemon.ip_in_namespace(&["-o", "link", "show"]);
    for id in &ids {
        assert!(
            !links.contains(&format!("bt{}", &id[..12])),
            "tap of {id} left behind: {links}"
        );
    }
}

#[test]
fn a_corrupt_template_is_rebuilt_not_used() {
    let daemon = shared();
    // Make sure the default template exists, then damage its state file.
    daemon.docker_ok(&["run", "--rm", "busybox", "true"]);
    let templates = daemon.root.with_extension("run").join("templates");
    let mut damaged = 0;
    for entry in std::fs::read_dir(&templates).unwrap().flatten() {
        let state = entry.path().join("state");
        let record =
            std::fs::read_to_string(entry.path().join("template.json")).unwrap_or_default();
        // Only the default shape's template: other tests use other shapes at the same time.
        if state.exists() && record.contains("\"memory_mib\": 256") {
            let mut bytes = std::fs::read(&state).unwrap();
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0xff;
            // Replace it whole (a rename), as damage from outside would not be half-visible
            // to a restore that is reading it right now.
            let damaged_copy = entry.path().join("state.damaged");
            std::fs::write(&damaged_copy, bytes).unwrap();
            std::fs::rename(&damaged_copy, &state).unwrap();
            damaged += 1;
        }
    }
    assert!(
        damaged > 0,
        "no template found under {}",
        templates.display()
    );
    assert_eq!(
        daemon.docker_ok(&["run", "--rm", "busybox", "echo", "still fine"]),
        "still fine"
    );
}

#[test]
fn each_clone_has_its_own_disk_kept_until_removed() {
    let daemon = shared();
    // The file is written by an exec, not by the main command: a restart re-runs the
    // main command, and the file must come from the kept layer, not be written again.
    let first = daemon.docker_ok(&["run", "-d", "busybox", "sleep", "300"]);
    let second = daemon.docker_ok(&["run", "-d", "busybox", "sleep", "300"]);
    daemon.docker_ok(&["exec", &first, "sh", "-c", "echo mine > /only-here"]);
    assert_eq!(
        daemon.docker_ok(&["exec", &first, "cat", "/only-here"]),
        "mine"
    );
    let other = daemon.docker(&["exec", &second, "cat", "/only-here"]);
    assert!(!other.status.success(), "a clone saw another clone's file");
    // The writable layer survives stop and start.
    daemon.docker_ok(&["stop", "-t", "0", &first]);
    daemon.docker_ok(&["start", &first]);
    assert_eq!(
        daemon.docker_ok(&["exec", &first, "cat", "/only-here"]),
        "mine"
    );
    daemon.docker_ok(&["rm", "-f", &first, &second]);
}

#[test]
fn templates_are_reused_per_shape() {
    let daemon = shared();
    let templates = daemon.root.with_extension("run").join("templates");
    let list = || {
        let output = std::process::Command::new(common::BERTH)
            .args(["template", "ls", "--exec-root"])
            .arg(daemon.root.with_extension("run"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    daemon.docker_ok(&["run", "--rm", "-m", "300m", "busybox", "true"]);
    let before = list();
    let shape_lines = |text: &str| {
        text.lines()
            .filter(|l| l.contains(" 300Mi "))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        shape_lines(&before).len(),
        1,
        "one template for the 300 MiB shape: {before}"
    );
    daemon.docker_ok(&["run", "--rm", "-m", "300m", "busybox", "true"]);
    assert_eq!(
        shape_lines(&list()),
        shape_lines(&before),
        "the template was rebuilt instead of reused"
    );
    assert!(templates.exists());
}

#[test]
fn a_container_whose_setup_fails_runs_nothing() {
    // The engine sends the container's process right behind its setup; when the setup
    // fails in the guest, the agent must refuse it. A sysctl the guest kernel does not
    // have fails the setup after the root filesystem is mounted.
    let daemon = shared();
    for runtime in ["berth", "berth-coldboot"] {
        let id = daemon.docker_ok(&[
            "create",
            "--runtime",
            runtime,
            "--sysctl",
            "net.core.no_such_knob=1",
            "busybox",
            "sh",
            "-c",
            "echo ran > /ran",
        ]);
        let start = daemon.docker(&["start", &id]);
        assert!(!start.status.success(), "{runtime}: start must fail");
        assert!(
            stderr(&start).contains("no_such_knob"),
            "{runtime}: {}",
            stderr(&start)
        );
        let copied = daemon.docker(&["cp", &format!("{id}:/ran"), "-"]);
        assert!(
            !copied.status.success(),
            "{runtime}: the container's process ran after its setup failed"
        );
        daemon.docker_ok(&["rm", &id]);
    }
}
