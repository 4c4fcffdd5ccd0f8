//! Berth as a containerd runtime: Debian's containerd, run privately by the test (its
//! own config, root, state and socket), runs tasks with `--runtime
//! io.containerd.berth.v2`, which it finds as `containerd-shim-berth-v2` on its PATH (a
//! link to the berth binary), driven by the real `ctr`.

mod common;
mod cri_client;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{
    busybox_archive, die_with_parent_thread, eventually, output_within, scratch, stderr, stdout,
    terminate_within, BERTH,
};

const IMAGE: &str = "docker.io/library/busybox:latest";
const RUNTIME: &str = "io.containerd.berth.v2";
/// How long one `ctr` command may take (a VM's start under TCG is seconds): past it the
/// test fails and prints containerd's and the VMs' logs.
const CTR_DEADLINE: Duration = Duration::from_secs(240);

/// A containerd of the test's own.
struct Containerd {
    dir: PathBuf,
    socket: PathBuf,
    child: Child,
}

impl Containerd {
    fn start(name: &str) -> Containerd {
        Containerd::start_with(name, None)
    }

    /// A containerd; with `cri`, its CRI plugin runs (`cri`: the plugin's TOML lines)
    /// and containerd runs in the test's network namespace `cri.netns` (where CNI makes
    /// its bridge).
    fn start_with(name: &str, cri: Option<&Cri>) -> Containerd {
        let dir = scratch().join(name);
        let _ = std::fs::remove_dir_all(&dir);
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::os::unix::fs::symlink(BERTH, bin.join("containerd-shim-berth-v2")).unwrap();
        std::os::unix::fs::symlink(BERTH, bin.join("containerd-shim-berth-cold-v2")).unwrap();
        let socket = dir.join("containerd.sock");
        let config = dir.join("config.toml");
        let plugins = match cri {
            None => "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n".to_owned(),
            Some(cri) => cri.config(&dir),
        };
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
                 {plugins}\
                 [grpc]\n  address = \"{socket}\"\n\
                 [ttrpc]\n  address = \"{socket}.ttrpc\"\n\
                 [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{opt}\"\n",
                root = dir.join("root").display(),
                state = dir.join("state").display(),
                socket = socket.display(),
                opt = dir.join("opt").display(),
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut command = match cri {
            None => Command::new("containerd"),
            Some(cri) => {
                let mut command = Command::new("nsenter");
                command
                    .arg(format!("--net=/run/netns/{}", cri.netns))
                    .arg("--")
                    .arg("containerd");
                command
            }
        };
        command
            .arg("--config")
            .arg(&config)
            .env("PATH", path)
            .env("BERTH_SHIM_ROOT", dir.join("shim"))
            .env("BERTH_BACKEND", "qemu")
            .env("BERTH_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        die_with_parent_thread(&mut command);
        let child = command
            .spawn()
            .expect("starting containerd (scripts/setup.sh installs it)");
        let containerd = Containerd { dir, socket, child };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !containerd.ctr(&["version"]).status.success() {
            assert!(Instant::now() < deadline, "containerd did not answer");
            std::thread::sleep(Duration::from_millis(200));
        }
        containerd
    }

    fn ctr_command(&self) -> Command {
        let mut command = Command::new("ctr");
        command.arg("--address").arg(&self.socket);
        command
    }

    fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_with_input(args, None)
    }

    fn ctr_with_input(&self, args: &[&str], input: Option<&[u8]>) -> Output {
        let mut command = self.ctr_command();
        command.args(args);
        output_within(command, input, CTR_DEADLINE)
    }

    fn ctr_ok(&self, args: &[&str]) -> String {
        let output = self.ctr(args);
        assert!(
            output.status.success(),
            "ctr {args:?} failed: {}\nstdout: {}\nstderr: {}\n(containerd's log: {})",
            output.status,
            stdout(&output),
            stderr(&output),
            self.dir.join("containerd.log").display()
        );
        stdout(&output).trim().to_owned()
    }

    /// `ctr run --rm` of busybox on Berth's runtime.
    fn run(&self, name: &str, command: &[&str], input: Option<&[u8]>) -> Output {
        let mut args = vec!["run", "--rm", "--runtime", RUNTIME, IMAGE, name];
        args.extend(command);
        self.ctr_with_input(&args, input)
    }

    /// Waits until `ctr task ls` shows `task` stopped (`what` says why it should),
    /// then deletes the task and its container; both must succeed.
    fn remove_once_stopped(&self, task: &str, what: &str) {
        eventually(what, || {
            self.ctr_ok(&["task", "ls"]).lines().any(|line| {
                line.split_whitespace().next() == Some(task) && line.contains("STOPPED")
            })
        });
        self.ctr_ok(&["task", "delete", task]);
        self.ctr_ok(&["container", "delete", task]);
    }

    /// Processes of this containerd's shims and of their VMs.
    fn leftovers(&self) -> Vec<u32> {
        let shim_root = self.dir.join("shim");
        let socket = self.socket.display().to_string();
        processes()
            .into_iter()
            .filter(|(_, cmdline, environ)| {
                (cmdline.contains("containerd-shim-berth-v2") && cmdline.contains(&socket))
                    || environ
                        .iter()
                        .filter_map(|v| v.strip_prefix("BERTH_VM_DIR="))
                        .any(|dir| Path::new(dir).starts_with(&shim_root))
            })
            .map(|(pid, _, _)| pid)
            .collect()
    }
}

impl Containerd {
    /// Prints the end of containerd's log (the shims log into it) and of each VM's
    /// QEMU and console logs: what a failed test leaves to go on.
    fn print_logs(&self) {
        let mut logs = vec![self.dir.join("containerd.log")];
        // The VMs' directories are shim/vms/<namespace>/<id>/...: four levels at most.
        let mut dirs = vec![(self.dir.join("shim"), 0)];
        while let Some((dir, depth)) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() && !path.is_symlink() {
                    if depth < 4 {
                        dirs.push((path, depth + 1));
                    }
                } else if path.extension().is_some_and(|e| e == "log") {
                    logs.push(path);
                }
            }
        }
        for log in logs {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("==== {} (last 200 lines)", log.display());
            for line in &lines[lines.len().saturating_sub(200)..] {
                eprintln!("{line}");
            }
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_logs();
        }
        for pid in self.leftovers() {
            // SAFETY: kill takes no pointers.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
        terminate_within(&mut self.child, Duration::from_secs(20));
        for mount in mounts_under(&self.dir) {
            let _ = Command::new("umount").arg("-l").arg(mount).status();
        }
    }
}

/// How the CRI test's containerd runs its CRI plugin.
struct Cri {
    /// The network namespace containerd (and so CNI's bridge) runs in.
    netns: String,
    /// The registry (in that namespace) that serves over plain HTTP.
    registry: String,
    sandbox_image: String,
}

impl Cri {
    /// The CRI plugin's configuration: the `berth` handler, CNI's bridge on a private
    /// subnet, the sandbox image, the test's registry over HTTP.
    fn config(&self, dir: &Path) -> String {
        let cni = dir.join("cni");
        std::fs::create_dir_all(cni.join("net.d")).unwrap();
        std::fs::write(
            cni.join("net.d/10-berth-test.conflist"),
            serde_json::json!({
                "cniVersion": "1.0.0",
                "name": "berth-test",
                "plugins": [{
                    "type": "bridge",
                    "bridge": "berthtest0",
                    "isGateway": true,
                    "ipMasq": false,
                    "ipam": {
                        "type": "host-local",
                        "dataDir": cni.join("ipam"),
                        "ranges": [[{ "subnet": "10.88.77.0/24" }]],
                        "routes": [{ "dst": "0.0.0.0/0" }]
                    }
                }]
            })
            .to_string(),
        )
        .unwrap();
        format!(
            "[plugins.\"io.containerd.grpc.v1.cri\"]\n\
             \x20 sandbox_image = \"{image}\"\n\
             \x20 restrict_oom_score_adj = true\n\
             \x20 netns_mounts_under_state_dir = true\n\
             \x20 stream_server_address = \"127.0.0.1\"\n\
             \x20 stream_server_port = \"0\"\n\
             [plugins.\"io.containerd.grpc.v1.cri\".cni]\n\
             \x20 bin_dir = \"/usr/lib/cni\"\n\
             \x20 conf_dir = \"{conf}\"\n\
             [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n\
             \x20 default_runtime_name = \"berth\"\n\
             [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.berth]\n\
             \x20 runtime_type = \"{RUNTIME}\"\n\
             [plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"{registry}\"]\n\
             \x20 endpoint = [\"http://{registry}\"]\n",
            image = self.sandbox_image,
            conf = cni.join("net.d").display(),
            registry = self.registry,
        )
    }
}

/// A network namespace of the test's own, deleted on drop.
struct TestNamespace(String);

impl TestNamespace {
    fn new(role: &str) -> TestNamespace {
        let name = format!("berth-ctd-{}-{role}", std::process::id());
        let status = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap();
        assert!(status.success(), "ip netns add {name}");
        TestNamespace(name)
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

/// (pid, command line, environment) of every process.
fn processes() -> Vec<(u32, String, Vec<String>)> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            let split = |bytes: &[u8]| -> Vec<String> {
                bytes
                    .split(|b| *b == 0)
                    .map(|part| String::from_utf8_lossy(part).into_owned())
                    .collect()
            };
            Some((pid, split(&cmdline).join(" "), split(&environ)))
        })
        .collect()
}

fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split(' ').nth(1))
        .filter(|mount| mount.starts_with(&prefix))
        .map(str::to_owned)
        .collect()
}

#[test]
fn ctr_runs_tasks_in_vms_on_berths_runtime() {
    let containerd = Containerd::start("containerd");
    containerd.ctr_ok(&["images", "import", busybox_archive().to_str().unwrap()]);
    assert!(containerd
        .ctr_ok(&["images", "ls", "-q"])
        .lines()
        .any(|line| line == IMAGE));

    // The task runs in a VM: its kernel is the guest's, not the host's.
    let uname = containerd.run("uname", &["uname", "-r"], None);
    assert!(uname.status.success(), "stderr: {}", stderr(&uname));
    let guest = stdout(&uname).trim().to_owned();
    let host = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_ne!(guest, host.trim());
    assert!(guest.ends_with("-cloud-amd64"), "guest kernel {guest:?}");

    // The cold-boot runtime: the same, from a VM that booted rather than a clone (its
    // VM process maps no template's memory).
    containerd.ctr_ok(&[
        "run",
        "-d",
        "--null-io",
        "--runtime",
        "io.containerd.berth-cold.v2",
        IMAGE,
        "cold",
        "sleep",
        "600",
    ]);
    let cold_dir = containerd.dir.join("shim/vms/default/cold");
    let cold_vm: Vec<String> = processes()
        .into_iter()
        .filter(|(_, _, environ)| {
            environ
                .iter()
                .filter_map(|v| v.strip_prefix("BERTH_VM_DIR="))
                .any(|dir| Path::new(dir).starts_with(&cold_dir))
        })
        .map(|(_, cmdline, _)| cmdline)
        .collect();
    assert_eq!(cold_vm.len(), 1, "{cold_vm:?}");
    assert!(!cold_vm[0].contains("templates/"), "{}", cold_vm[0]);
    let cold = containerd.ctr(&["task", "exec", "--exec-id", "u", "cold", "uname", "-r"]);
    assert_eq!(stdout(&cold).trim(), guest, "stderr: {}", stderr(&cold));
    containerd.ctr_ok(&["task", "kill", "--signal", "SIGKILL", "cold"]);
    containerd.remove_once_stopped("cold", "the cold task stops");

    // Exit codes and both output streams come back through containerd.
    let exit = containerd.run(
        "exit",
        &["sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 3"],
        None,
    );
    assert_eq!(exit.status.code(), Some(3), "stderr: {}", stderr(&exit));
    assert_eq!(stdout(&exit).trim(), "to-stdout");
    assert!(
        stderr(&exit).contains("to-stderr"),
        "stderr: {}",
        stderr(&exit)
    );

    // The spec's memory limit holds in the guest, as under runc: 48 MiB in one buffer
    // fit in the VM, not under `--memory-limit` 16 MiB (the guest's OOM killer, 137).
    let hog = ["dd", "if=/dev/zero", "of=/dev/null", "bs=48M", "count=1"];
    let unlimited = containerd.run("unlimited", &hog, None);
    assert!(unlimited.status.success(), "{}", stderr(&unlimited));
    let mut limited_run = vec![
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--memory-limit",
        "16777216",
        IMAGE,
        "limited",
    ];
    limited_run.extend(hog);
    let limited = containerd.ctr(&limited_run);
    assert_eq!(limited.status.code(), Some(137), "{}", stderr(&limited));

    // Standard input reaches the task, all of it, then its end.
    let text = "line one\nline two\n".repeat(2000);
    let cat = containerd.run(
        "stdin",
        &["sh", "-c", "cat; echo done"],
        Some(text.as_bytes()),
    );
    assert!(cat.status.success(), "stderr: {}", stderr(&cat));
    assert_eq!(stdout(&cat), format!("{text}done\n"));

    // The spec's bind mounts are shares (both ways); its tmpfs mounts are the guest's.
    let shared = containerd.dir.join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::write(shared.join("in"), "from-host\n").unwrap();
    let bind = format!(
        "type=bind,src={},dst=/data,options=rbind:rw",
        shared.display()
    );
    let mounted = containerd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--mount",
        &bind,
        "--mount",
        "type=tmpfs,src=tmpfs,dst=/scratch,options=size=1m",
        IMAGE,
        "mounts",
        "sh",
        "-c",
        "cat /data/in; echo from-guest > /data/out; grep ' /scratch ' /proc/mounts",
    ]);
    assert!(mounted.status.success(), "stderr: {}", stderr(&mounted));
    let mounted_out = stdout(&mounted);
    assert!(mounted_out.starts_with("from-host\n"), "{mounted_out}");
    assert!(
        mounted_out.contains("tmpfs /scratch tmpfs"),
        "{mounted_out}"
    );
    assert_eq!(
        std::fs::read_to_string(shared.join("out")).unwrap(),
        "from-guest\n"
    );

    // A task in a network namespace prepared as CNI prepares a pod's (a veth end with
    // an address and a default route): the VM takes the interface over, and reaches the
    // other end (in a namespace of the test's own as well).
    let pod = TestNamespace::new("pod");
    let peer = TestNamespace::new("peer");
    let ip = |args: &[&str]| {
        let status = Command::new("ip").args(args).status().unwrap();
        assert!(status.success(), "ip {args:?}");
    };
    ip(&[
        "-n", &pod.0, "link", "add", "eth0", "type", "veth", "peer", "name", "vq", "netns", &peer.0,
    ]);
    ip(&["-n", &pod.0, "addr", "add", "10.199.0.2/24", "dev", "eth0"]);
    ip(&["-n", &pod.0, "link", "set", "eth0", "up"]);
    ip(&["-n", &pod.0, "link", "set", "lo", "up"]);
    ip(&["-n", &pod.0, "route", "add", "default", "via", "10.199.0.1"]);
    ip(&["-n", &peer.0, "addr", "add", "10.199.0.1/24", "dev", "vq"]);
    ip(&["-n", &peer.0, "link", "set", "vq", "up"]);
    let with_ns = format!("network:/run/netns/{}", pod.0);
    let net = containerd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--with-ns",
        &with_ns,
        IMAGE,
        "net",
        "sh",
        "-c",
        "ip -4 addr show eth0; ip route; ping -c 1 -W 10 10.199.0.1",
    ]);
    let net_out = stdout(&net);
    assert!(net.status.success(), "{net_out}\nstderr: {}", stderr(&net));
    assert!(net_out.contains("inet 10.199.0.2/24"), "{net_out}");
    assert!(net_out.contains("default via 10.199.0.1"), "{net_out}");
    assert!(net_out.contains("1 packets received"), "{net_out}");
    let tap_left = Command::new("ip")
        .args(["-n", &pod.0, "link", "show", "berth0"])
        .output()
        .unwrap();
    assert!(
        !tap_left.status.success(),
        "the task's tap is left in the pod's namespace"
    );

    // A program that does not exist: ctr fails and says so.
    let missing = containerd.run("missing", &["no-such-program"], None);
    assert!(!missing.status.success());

    // A detached task: execs join it, writes land in containerd's snapshot, kill ends it.
    containerd.ctr_ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--null-io",
        IMAGE,
        "long",
        "sleep",
        "600",
    ]);
    let listed = containerd.ctr_ok(&["task", "ls"]);
    assert!(
        listed
            .lines()
            .any(|line| line.starts_with("long") && line.contains("RUNNING")),
        "{listed}"
    );
    let ps = containerd.ctr_ok(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        "long",
        "ps",
        "-o",
        "pid,args",
    ]);
    assert!(
        ps.lines().any(|line| line.ends_with("sleep 600")),
        "the exec does not see the task's init:\n{ps}"
    );
    containerd.ctr_ok(&[
        "task",
        "exec",
        "--exec-id",
        "e2",
        "long",
        "sh",
        "-c",
        "echo kept > /written-in-vm",
    ]);
    let snapshot_has_it = || {
        walk(&containerd.dir.join("root")).iter().any(|path| {
            path.ends_with("written-in-vm")
                && std::fs::read_to_string(path).is_ok_and(|text| text == "kept\n")
        })
    };
    assert!(
        snapshot_has_it(),
        "the guest's write is not in containerd's snapshot"
    );
    // Pause stops the VM; resume goes on where it stopped.
    containerd.ctr_ok(&["task", "pause", "long"]);
    let paused = containerd.ctr_ok(&["task", "ls"]);
    assert!(
        paused
            .lines()
            .any(|line| line.starts_with("long") && line.contains("PAUSED")),
        "{paused}"
    );
    containerd.ctr_ok(&["task", "resume", "long"]);
    let resumed = containerd.ctr_ok(&["task", "ls"]);
    assert!(
        resumed
            .lines()
            .any(|line| line.starts_with("long") && line.contains("RUNNING")),
        "{resumed}"
    );
    let exec_exit = containerd.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e3",
        "long",
        "sh",
        "-c",
        "exit 7",
    ]);
    assert_eq!(
        exec_exit.status.code(),
        Some(7),
        "stderr: {}",
        stderr(&exec_exit)
    );
    // An exec still running when the init is killed: the init is reported stopped
    // only after it, so the delete that follows finds nothing running (as with runc).
    containerd.ctr_ok(&[
        "task",
        "exec",
        "--detach",
        "--exec-id",
        "e4",
        "long",
        "sleep",
        "600",
    ]);
    containerd.ctr_ok(&["task", "kill", "--signal", "SIGKILL", "long"]);
    containerd.remove_once_stopped("long", "the killed task stops");

    // A detached task whose output nobody reads once ctr has gone (more than its FIFO
    // holds) still stops, and goes.
    containerd.ctr_ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        IMAGE,
        "unread",
        "dd",
        "if=/dev/zero",
        "bs=64k",
        "count=32",
    ]);
    containerd.remove_once_stopped("unread", "the task whose output nobody reads stops");

    // A terminal: the task's standard streams are a tty.
    let mut script = Command::new("script");
    script
        .args(["-qec"])
        .arg(format!(
            "ctr --address {} run --rm -t --runtime {RUNTIME} {IMAGE} tty sh -c 'tty; echo cols=$(stty size)'",
            containerd.socket.display()
        ))
        .arg("/dev/null");
    let tty = output_within(script, None, CTR_DEADLINE);
    let tty_out = stdout(&tty);
    assert!(tty.status.success(), "{tty_out} {}", stderr(&tty));
    assert!(tty_out.contains("/dev/pts/"), "no terminal: {tty_out}");

    // Nothing is left: no task, no shim, no VM, no mount.
    assert_eq!(containerd.ctr_ok(&["task", "ls", "-q"]), "");
    eventually("the shims and their VMs are gone", || {
        containerd.leftovers().is_empty()
    });
    assert_eq!(
        mounts_under(&containerd.dir.join("state")),
        Vec::<String>::new()
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_file() {
                found.push(entry.path());
            }
        }
    }
    found
}

/// A process started in the test's network namespace `netns`, killed on drop.
struct InNamespace(Child);

impl InNamespace {
    fn start(netns: &str, program: &str, args: &[&str], log: &Path) -> InNamespace {
        let log = std::fs::File::create(log).unwrap();
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{netns}"))
            .arg("--")
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        die_with_parent_thread(&mut command);
        InNamespace(command.spawn().unwrap_or_else(|e| panic!("{program}: {e}")))
    }
}

impl Drop for InNamespace {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `program args` in the network namespace `netns`.
fn in_namespace(netns: &str, program: &str, args: &[&str]) -> Output {
    let mut command = Command::new("nsenter");
    command
        .arg(format!("--net=/run/netns/{netns}"))
        .arg("--")
        .arg(program)
        .args(args);
    output_within(command, None, CTR_DEADLINE)
}

#[test]
fn the_cri_runs_a_pod_in_one_vm() {
    use cri_client::*;

    let netns = TestNamespace::new("cri");
    let up = in_namespace(&netns.0, "ip", &["link", "set", "lo", "up"]);
    assert!(up.status.success(), "{}", stderr(&up));
    let dir = scratch().join("cri");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();

    // A registry in the namespace, holding busybox; the pod's sandbox image, imported.
    let registry = "127.0.0.1:5000";
    let registry_config = dir.join("registry.yml");
    std::fs::write(
        &registry_config,
        format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {registry}\n",
            dir.join("registry").display()
        ),
    )
    .unwrap();
    let _registry = InNamespace::start(
        &netns.0,
        "docker-registry",
        &["serve", registry_config.to_str().unwrap()],
        &dir.join("registry.log"),
    );
    let app_image = format!("{registry}/busybox:latest");
    let archive = busybox_archive().to_str().unwrap().to_owned();
    eventually("skopeo seeds the registry", || {
        in_namespace(
            &netns.0,
            "skopeo",
            &[
                "copy",
                "--dest-tls-verify=false",
                &format!("docker-archive:{archive}"),
                &format!("docker://{app_image}"),
            ],
        )
        .status
        .success()
    });
    let pause_archive = dir.join("pause.tar");
    common::write_archive(
        &pause_archive,
        "berth.test/pause:1",
        &[common::busybox_layer()],
        &["sleep", "2147483647"],
    );
    let setup = Cri {
        netns: netns.0.clone(),
        registry: registry.into(),
        sandbox_image: "berth.test/pause:1".into(),
    };
    // The guest's kernel comes from Debian's archive on first use, which the test's
    // namespace cannot reach: prepare it here first.
    let guest = Command::new(BERTH).arg("guest").output().unwrap();
    assert!(guest.status.success(), "berth guest: {}", stderr(&guest));
    let containerd = Containerd::start_with("containerd-cri", Some(&setup));
    containerd.ctr_ok(&[
        "-n",
        "k8s.io",
        "images",
        "import",
        pause_archive.to_str().unwrap(),
    ]);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let channel = runtime
        .block_on(connect(&containerd.socket))
        .expect("connecting to containerd's CRI");
    let mut pods = RuntimeServiceClient::new(channel.clone());
    let mut images = ImageServiceClient::new(channel);
    let version = runtime
        .block_on(pods.version(VersionRequest {
            version: "v1".into(),
        }))
        .unwrap_or_else(|e| panic!("the CRI: {e} (containerd's log: {:?})", containerd.dir))
        .into_inner();
    assert_eq!(version.runtime_api_version, "v1");

    // PullImage from the test's registry.
    let pulled = runtime
        .block_on(images.pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: app_image.clone(),
                ..Default::default()
            }),
            ..Default::default()
        }))
        .unwrap_or_else(|e| panic!("PullImage: {e} (containerd's log: {:?})", containerd.dir))
        .into_inner();
    assert!(pulled.image_ref.starts_with("sha256:"), "{pulled:?}");

    // RunPodSandbox with the `berth` handler: the pod's VM.
    let logs = dir.join("pods/web");
    let sandbox_config = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: "web".into(),
            uid: "uid-web".into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: "web".into(),
        log_directory: logs.display().to_string(),
        linux: Some(LinuxPodSandboxConfig::default()),
        ..Default::default()
    };
    let pod = runtime
        .block_on(pods.run_pod_sandbox(RunPodSandboxRequest {
            config: Some(sandbox_config.clone()),
            runtime_handler: "berth".into(),
        }))
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e} (logs under {:?})", containerd.dir))
        .into_inner()
        .pod_sandbox_id;
    let pod_status = runtime
        .block_on(pods.pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: pod.clone(),
            verbose: false,
        }))
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(pod_status.state, PodSandboxState::SandboxReady as i32);
    let pod_ip = pod_status.network.unwrap().ip;
    assert!(pod_ip.starts_with("10.88.77."), "pod address {pod_ip}");

    // Two containers that share an emptyDir (a host directory, as the kubelet makes one)
    // and talk over localhost: a web server serving it, and a client.
    let empty_dir = dir.join("empty-dir");
    std::fs::create_dir_all(&empty_dir).unwrap();
    let container = |name: &str, script: &str| ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: app_image.clone(),
            ..Default::default()
        }),
        command: vec!["sh".into(), "-c".into(), script.into()],
        log_path: format!("{name}/0.log"),
        mounts: vec![Mount {
            container_path: "/shared".into(),
            host_path: empty_dir.display().to_string(),
            ..Default::default()
        }],
        // Each container's processes in a PID namespace of their own (the kubelet's
        // default); the client shares the pod's (shareProcessNamespace).
        linux: Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                namespace_options: Some(NamespaceOption {
                    pid: match name {
                        "client" => NamespaceMode::Pod,
                        _ => NamespaceMode::Container,
                    } as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut ids = Vec::new();
    for (name, script) in [
        (
            "server",
            "echo served-from-empty-dir > /shared/index.html; echo server-up; exec httpd -f -p 8080 -h /shared",
        ),
        (
            "client",
            "echo client-up; echo client-stderr >&2; touch /only-in-client; exec sleep 600",
        ),
    ] {
        let id = runtime
            .block_on(pods.create_container(CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(container(name, script)),
                sandbox_config: Some(sandbox_config.clone()),
            }))
            .unwrap_or_else(|e| panic!("CreateContainer {name}: {e}"))
            .into_inner()
            .container_id;
        runtime
            .block_on(pods.start_container(StartContainerRequest {
                container_id: id.clone(),
            }))
            .unwrap_or_else(|e| panic!("StartContainer {name}: {e} (logs under {:?})", containerd.dir));
        ids.push(id);
    }
    let (server, client) = (ids[0].clone(), ids[1].clone());
    for id in &ids {
        let status = runtime
            .block_on(pods.container_status(ContainerStatusRequest {
                container_id: id.clone(),
                verbose: false,
            }))
            .unwrap()
            .into_inner()
            .status
            .unwrap();
        assert_eq!(
            status.state,
            ContainerState::ContainerRunning as i32,
            "{status:?}"
        );
    }

    // One VM for the whole pod.
    let vms = containerd.leftovers().len();
    assert_eq!(vms, 2, "the pod should be one shim and one VM process");

    let mut updates = pods.clone();
    let mut exec = |id: &str, command: &[&str]| {
        let answer = runtime
            .block_on(pods.exec_sync(ExecSyncRequest {
                container_id: id.to_owned(),
                cmd: command.iter().map(|s| s.to_string()).collect(),
                timeout: 60,
            }))
            .unwrap_or_else(|e| panic!("ExecSync {command:?}: {e}"))
            .into_inner();
        (
            answer.exit_code,
            String::from_utf8_lossy(&answer.stdout).into_owned(),
            String::from_utf8_lossy(&answer.stderr).into_owned(),
        )
    };
    // The guest's kernel, not the host's.
    let (code, kernel, _) = exec(&client, &["uname", "-r"]);
    assert_eq!(code, 0);
    assert!(kernel.trim().ends_with("-cloud-amd64"), "{kernel}");
    // Over localhost, the client reads what the server serves from the emptyDir.
    let deadline = Instant::now() + Duration::from_secs(30);
    let fetched = loop {
        let (code, out, err) = exec(
            &client,
            &["wget", "-qO-", "http://127.0.0.1:8080/index.html"],
        );
        if code == 0 {
            break out;
        }
        assert!(
            Instant::now() < deadline,
            "the client could not reach the server over localhost: {err}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(fetched, "served-from-empty-dir\n");
    // The emptyDir is one directory for both, and the host's.
    let (code, shared, _) = exec(&client, &["cat", "/shared/index.html"]);
    assert_eq!((code, shared.as_str()), (0, "served-from-empty-dir\n"));
    std::fs::write(empty_dir.join("from-host"), "x").unwrap();
    let (code, _, _) = exec(&server, &["test", "-e", "/shared/from-host"]);
    assert_eq!(code, 0);
    // One file system in the VM for both containers' emptyDir (one share, bound into
    // each: the same device), so its inodes, cache and unix sockets are the pod's.
    let (_, server_device, _) = exec(&server, &["stat", "-c", "%d", "/shared"]);
    let (_, client_device, _) = exec(&client, &["stat", "-c", "%d", "/shared"]);
    assert!(!server_device.trim().is_empty());
    assert_eq!(
        server_device, client_device,
        "two file systems for one emptyDir"
    );
    // Each container has its own root filesystem.
    let (code, _, _) = exec(&client, &["test", "-e", "/only-in-client"]);
    assert_eq!(code, 0);
    let (code, _, _) = exec(&server, &["test", "-e", "/only-in-client"]);
    assert_eq!(code, 1, "the server sees the client's root");
    // PID namespaces: the server's own (its httpd is PID 1 there); the client's is the
    // pod's, where the sandbox's pause process is PID 1 and the server's are not seen.
    let (_, server_init, _) = exec(&server, &["cat", "/proc/1/cmdline"]);
    assert!(server_init.starts_with("httpd"), "{server_init:?}");
    let (_, client_init, _) = exec(&client, &["cat", "/proc/1/cmdline"]);
    assert!(
        client_init.starts_with("sleep\u{0}2147483647"),
        "{client_init:?}"
    );
    let (_, client_ps, _) = exec(&client, &["ps", "-o", "args"]);
    assert!(client_ps.contains("sleep 600"), "{client_ps}");
    assert!(!client_ps.contains("httpd"), "{client_ps}");
    // Mount namespaces and cgroups: each container has its own in the VM, as under runc
    // (the sandbox's, the server's and the client's are three).
    let (_, server_mounts, _) = exec(&server, &["readlink", "/proc/self/ns/mnt"]);
    let (_, client_mounts, _) = exec(&client, &["readlink", "/proc/self/ns/mnt"]);
    let (_, sandbox_mounts, _) = exec(&client, &["readlink", "/proc/1/ns/mnt"]);
    assert!(server_mounts.starts_with("mnt:["), "{server_mounts:?}");
    assert_ne!(server_mounts, client_mounts);
    assert_ne!(
        client_mounts, sandbox_mounts,
        "the client is in the sandbox's"
    );
    let (_, server_group, _) = exec(&server, &["cat", "/proc/self/cgroup"]);
    let (_, client_group, _) = exec(&client, &["cat", "/proc/self/cgroup"]);
    assert!(server_group.starts_with("0::/pod-"), "{server_group:?}");
    assert!(client_group.starts_with("0::/pod-"), "{client_group:?}");
    assert_ne!(server_group, client_group);
    // UpdateContainerResources: a memory limit on the client's cgroup alone. 48 MiB in
    // one buffer fit before; with 16 MiB, the guest's OOM killer ends it (137).
    let hog = ["dd", "if=/dev/zero", "of=/dev/null", "bs=48M", "count=1"];
    let (code, _, err) = exec(&client, &hog);
    assert_eq!(code, 0, "before the limit: {err}");
    runtime
        .block_on(
            updates.update_container_resources(UpdateContainerResourcesRequest {
                container_id: client.clone(),
                linux: Some(LinuxContainerResources {
                    memory_limit_in_bytes: 16 << 20,
                    ..Default::default()
                }),
                ..Default::default()
            }),
        )
        .unwrap_or_else(|e| panic!("UpdateContainerResources: {e}"));
    let (code, _, _) = exec(&client, &hog);
    assert_eq!(code, 137, "48 MiB under a 16 MiB limit");
    let (code, _, err) = exec(&server, &hog);
    assert_eq!(code, 0, "the server is not limited: {err}");
    // Pausing one container of the pod freezes it alone: the VM goes on.
    containerd.ctr_ok(&["-n", "k8s.io", "tasks", "pause", &client]);
    let tasks = containerd.ctr_ok(&["-n", "k8s.io", "tasks", "ls"]);
    let state_of = |id: &str| {
        tasks
            .lines()
            .find(|line| line.starts_with(id))
            .and_then(|line| line.split_whitespace().nth(2))
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(state_of(&client), "PAUSED", "{tasks}");
    assert_eq!(state_of(&server), "RUNNING", "{tasks}");
    let (code, _, _) = exec(&server, &["true"]);
    assert_eq!(code, 0, "the server runs while the client is paused");
    // As under runc, no exec into the paused container (it would freeze at once).
    let refused = containerd.ctr(&[
        "-n",
        "k8s.io",
        "tasks",
        "exec",
        "--exec-id",
        "late",
        &client,
        "true",
    ]);
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("paused"), "{}", stderr(&refused));
    containerd.ctr_ok(&["-n", "k8s.io", "tasks", "resume", &client]);
    let (code, _, _) = exec(&client, &["true"]);
    assert_eq!(code, 0, "the client runs again");
    // Exit codes and stderr of an exec.
    let (code, _, err) = exec(&client, &["sh", "-c", "echo oops >&2; exit 3"]);
    assert_eq!((code, err.as_str()), (3, "oops\n"));
    // The pod's address reaches the server from CNI's bridge (the pod's network is the
    // VM's NIC).
    let from_bridge = in_namespace(
        &netns.0,
        "busybox",
        &["wget", "-qO-", &format!("http://{pod_ip}:8080/index.html")],
    );
    assert_eq!(
        stdout(&from_bridge),
        "served-from-empty-dir\n",
        "stderr: {}",
        stderr(&from_bridge)
    );

    // ContainerStats: what each container's processes use, as the guest counts it.
    let stats = runtime
        .block_on(pods.container_stats(ContainerStatsRequest {
            container_id: server.clone(),
        }))
        .unwrap_or_else(|e| panic!("ContainerStats: {e}"))
        .into_inner()
        .stats
        .unwrap();
    let memory = stats.memory.unwrap().working_set_bytes.unwrap().value;
    assert!(
        (64 << 10..64 << 20).contains(&memory),
        "httpd's memory: {memory}"
    );
    assert!(stats.cpu.unwrap().usage_core_nano_seconds.is_some());

    // Logs in the CRI's format, by stream.
    let client_log = logs.join("client/0.log");
    eventually("the client's log has its lines", || {
        std::fs::read_to_string(&client_log).is_ok_and(|log| log.contains("client-stderr"))
    });
    let log = std::fs::read_to_string(&client_log).unwrap();
    let lines: Vec<(&str, &str, &str)> = log
        .lines()
        .map(|line| {
            let mut parts = line.splitn(4, ' ');
            let stamp = parts.next().unwrap();
            assert!(stamp.contains('T') && stamp.len() > 20, "{line}");
            (
                parts.next().unwrap(),
                parts.next().unwrap(),
                parts.next().unwrap_or(""),
            )
        })
        .collect();
    assert!(lines.contains(&("stdout", "F", "client-up")), "{log}");
    assert!(lines.contains(&("stderr", "F", "client-stderr")), "{log}");

    // Stopping and removing the pod removes its containers and VM.
    runtime
        .block_on(pods.stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        }))
        .unwrap_or_else(|e| panic!("StopPodSandbox: {e}"));
    let stopped = runtime
        .block_on(pods.container_status(ContainerStatusRequest {
            container_id: client.clone(),
            verbose: false,
        }))
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(stopped.state, ContainerState::ContainerExited as i32);
    runtime
        .block_on(pods.remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        }))
        .unwrap_or_else(|e| panic!("RemovePodSandbox: {e}"));
    let left = runtime
        .block_on(pods.list_containers(ListContainersRequest::default()))
        .unwrap()
        .into_inner()
        .containers;
    assert!(left.is_empty(), "{left:?}");
    eventually("the pod's shim and VM end", || {
        containerd.leftovers().is_empty()
    });
}
