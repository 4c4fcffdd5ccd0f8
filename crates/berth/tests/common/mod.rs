//! Shared fixtures for end-to-end tests: a real `berth daemon` with real VMs, driven by
//! the real docker CLI, and a busybox image made here from Debian's busybox-static.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

pub const BERTH: &str = env!("CARGO_BIN_EXE_berth");

/// A running daemon with its own root and socket.
pub struct Daemon {
    pub root: PathBuf,
    pub socket: PathBuf,
    /// The daemon's own network namespace (each test daemon has one, deleted on drop).
    pub netns: String,
    child: Mutex<Option<Child>>,
}

impl Daemon {
    /// Starts a daemon whose root is `root`. Its stderr goes to `root/../daemon.log`.
    pub fn start(root: &Path) -> Daemon {
        Self::start_with(root, &[])
    }

    /// Starts a daemon with extra `berth daemon` arguments.
    pub fn start_with(root: &Path, extra: &[&str]) -> Daemon {
        // First use of the scratch directory clears namespaces left by earlier binaries.
        scratch();
        std::fs::create_dir_all(root).unwrap();
        let socket = root.with_extension("sock");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(root.with_extension("log"))
            .unwrap();
        // The test process's pid is in the name: namespaces of processes that are gone
        // are cleared by the next test binary (see `remove_stale_namespaces`).
        let netns = format!(
            "berth-test-{}-{}",
            std::process::id(),
            &hex::encode(Sha256::digest(root.display().to_string().as_bytes()))[..12]
        );
        let mut command = Command::new(BERTH);
        command
            .args(["daemon", "--netns", &netns, "--root"])
            .arg(root)
            .arg("--socket")
            .arg(&socket)
            .arg("--exec-root")
            .arg(root.with_extension("run"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // The daemon dies with the test process (the parent thread is the spawner
        // thread, which lives as long as the process).
        die_with_parent_thread(&mut command);
        let child = command.spawn().expect("starting berth daemon");
        let daemon = Daemon {
            root: root.to_path_buf(),
            socket,
            netns,
            child: Mutex::new(Some(child)),
        };
        daemon.wait_ready();
        daemon
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if self
                .request("GET", "/_ping", None)
                .map(|(status, _)| status == 200)
                .unwrap_or(false)
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "daemon did not answer /_ping; see {}",
            self.root.with_extension("log").display()
        );
    }

    /// The daemon's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.lock().unwrap().as_ref().map(Child::id)
    }

    /// Stops the daemon with SIGTERM and waits for it. One that has not stopped after
    /// two minutes is killed, and the test fails (unless it is failing already: the
    /// failure it has must get reported).
    pub fn stop(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let stopped = terminate_within(&mut child, Duration::from_secs(120));
            assert!(
                stopped || std::thread::panicking(),
                "the daemon did not stop within 2 minutes of SIGTERM"
            );
        }
    }

    /// Kills the daemon with SIGKILL (no clean-up runs) and waits for it.
    pub fn kill9(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Runs the docker CLI against this daemon.
    pub fn docker(&self, args: &[&str]) -> Output {
        self.docker_with_input(args, None)
    }

    pub fn docker_with_input(&self, args: &[&str], input: Option<&[u8]>) -> Output {
        let config = self.root.with_extension("docker-config");
        std::fs::create_dir_all(&config).unwrap();
        let mut command = Command::new("docker");
        command
            .env("DOCKER_CONFIG", &config)
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT")
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .args(args);
        output_with_input(command, input)
    }

    /// Runs docker and asserts success; returns trimmed stdout.
    pub fn docker_ok(&self, args: &[&str]) -> String {
        let output = self.docker(args);
        assert!(
            output.status.success(),
            "docker {args:?} failed: {}\nstdout: {}\nstderr: {}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// A raw HTTP/1.1 request on the socket; returns the status and the body.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> std::io::Result<(u16, Vec<u8>)> {
        let mut stream = UnixStream::connect(&self.socket)?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        let body = body.unwrap_or(b"");
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: docker\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        // One write, and a refused write is not the end: the daemon may answer
        // (say, 403) and close before reading a body it has no use for, as any
        // HTTP server may; the answer is still there to read.
        let mut request = head.into_bytes();
        request.extend_from_slice(body);
        if let Err(error) = stream.write_all(&request) {
            if !matches!(
                error.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ) {
                return Err(error);
            }
        }
        let mut response = Vec::new();
        stream.read_to_end(&mut response)?;
        let text = String::from_utf8_lossy(&response);
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let split = response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|p| p + 4)
            .unwrap_or(response.len());
        let mut payload = response[split..].to_vec();
        if text[..split.min(text.len())]
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            payload = dechunk(&payload);
        }
        Ok((status, payload))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.netns])
            .output();
    }
}

impl Daemon {
    /// `ip ARGS...` inside the daemon's network namespace; returns stdout.
    pub fn ip_in_namespace(&self, args: &[&str]) -> String {
        let output = Command::new("ip")
            .args(["-n", &self.netns])
            .args(args)
            .output()
            .expect("running ip");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = data.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(
            std::str::from_utf8(&data[..line_end]).unwrap_or("0").trim(),
            16,
        )
        .unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = line_end + 2;
        out.extend_from_slice(&data[start..(start + size).min(data.len())]);
        data = &data[(start + size + 2).min(data.len())..];
    }
    out
}

/// Namespaces of test daemons whose test process is gone (the shared daemon is never
/// dropped) are deleted when the next test binary starts; those of running test
/// processes (another test run on the same machine) are left alone.
fn remove_stale_namespaces() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("berth-test-") else {
            continue;
        };
        let owner = rest
            .split('-')
            .next()
            .and_then(|pid| pid.parse::<u32>().ok());
        let alive = owner.is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if !alive {
            let _ = Command::new("ip").args(["netns", "delete", &name]).output();
        }
    }
}

/// Sends `child` SIGTERM and waits for it; one still running after `limit` is killed.
/// Whether it stopped on its own. (A fixture's end must not wait forever: a failing
/// test would then never report.)
pub fn terminate_within(child: &mut Child, limit: Duration) -> bool {
    // SAFETY: kill takes no pointers; the pid is our child's, not yet reaped.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + limit;
    while matches!(child.try_wait(), Ok(None)) {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Makes the child get SIGTERM when the thread that spawns it ends.
pub fn die_with_parent_thread(command: &mut Command) {
    // SAFETY: prctl takes no pointers; it runs in the child between fork and exec.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
}

/// A scratch directory for this test process.
pub fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("berth-tests-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        remove_stale_namespaces();
        dir
    })
}

/// The daemon shared by the tests of this process, with the busybox image loaded.
/// It is started from a thread that lives as long as the process, so that the daemon's
/// parent-death signal fires only when the test process ends.
pub fn shared() -> &'static Daemon {
    static DAEMON: OnceLock<&'static Daemon> = OnceLock::new();
    DAEMON.get_or_init(|| {
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let daemon: &'static Daemon =
                Box::leak(Box::new(Daemon::start(&scratch().join("shared"))));
            sender.send(daemon).unwrap();
            loop {
                std::thread::park();
            }
        });
        let daemon = receiver.recv().unwrap();
        daemon.docker_ok(&["load", "-i", busybox_archive().to_str().unwrap()]);
        daemon
    })
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn append_file(builder: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32, data: &[u8]) {
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    builder.append_data(&mut header, path, data).unwrap();
}

fn append_dir(builder: &mut tar::Builder<Vec<u8>>, path: &str) {
    let mut header = tar::Header::new_gnu();
    header.set_size(0);
    header.set_mode(0o755);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Directory);
    builder.append_data(&mut header, path, &[][..]).unwrap();
}

fn append_symlink(builder: &mut tar::Builder<Vec<u8>>, path: &str, target: &str) {
    let mut header = tar::Header::new_gnu();
    header.set_size(0);
    header.set_mode(0o777);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Symlink);
    builder.append_link(&mut header, path, target).unwrap();
}

/// Writes a docker-archive with one image made of `layers` (each a tar), tagged `tag`.
pub fn write_archive(path: &Path, tag: &str, layers: &[Vec<u8>], cmd: &[&str]) {
    write_archive_with(path, tag, layers, cmd, serde_json::json!({}));
}

/// As [`write_archive`], with more keys in the image's `config` (e.g. `Healthcheck`).
pub fn write_archive_with(
    path: &Path,
    tag: &str,
    layers: &[Vec<u8>],
    cmd: &[&str],
    extra_config: serde_json::Value,
) {
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|l| format!("sha256:{}", sha256_hex(l)))
        .collect();
    let mut image_config =
        serde_json::json!({ "Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": cmd });
    for (key, value) in extra_config.as_object().into_iter().flatten() {
        image_config[key] = value.clone();
    }
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "2026-01-01T00:00:00Z",
        "config": image_config,
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
        "history": [],
    });
    let config_bytes = serde_json::to_vec(&config).unwrap();
    let config_name = format!("{}.json", sha256_hex(&config_bytes));
    let layer_names: Vec<String> = layers
        .iter()
        .map(|l| format!("{}/layer.tar", sha256_hex(l)))
        .collect();
    let manifest =
        serde_json::json!([{ "Config": config_name, "RepoTags": [tag], "Layers": layer_names }]);
    let mut archive = tar::Builder::new(Vec::new());
    for (layer, name) in layers.iter().zip(&layer_names) {
        append_file(&mut archive, name, 0o644, layer);
    }
    append_file(&mut archive, &config_name, 0o644, &config_bytes);
    append_file(
        &mut archive,
        "manifest.json",
        0o644,
        &serde_json::to_vec(&manifest).unwrap(),
    );
    std::fs::write(path, archive.into_inner().unwrap()).unwrap();
}

/// A layer with Debian's static busybox and a symlink per applet.
pub fn busybox_layer() -> Vec<u8> {
    let busybox =
        std::fs::read("/bin/busybox").expect("/bin/busybox (apt-get install busybox-static)");
    let applets = Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .expect("busybox --list");
    let mut layer = tar::Builder::new(Vec::new());
    for dir in ["bin", "etc", "root", "tmp"] {
        append_dir(&mut layer, dir);
    }
    append_file(&mut layer, "bin/busybox", 0o755, &busybox);
    for applet in String::from_utf8_lossy(&applets.stdout).lines() {
        if applet != "busybox" && !applet.is_empty() {
            append_symlink(&mut layer, &format!("bin/{applet}"), "busybox");
        }
    }
    append_file(
        &mut layer,
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    );
    append_file(
        &mut layer,
        "etc/group",
        0o644,
        b"root:x:0:\nnogroup:x:65534:\n",
    );
    layer.into_inner().unwrap()
}

/// The busybox image archive, made once per test process.
pub fn busybox_archive() -> &'static Path {
    static ARCHIVE: OnceLock<PathBuf> = OnceLock::new();
    ARCHIVE.get_or_init(|| {
        let path = scratch().join("busybox.tar");
        write_archive(&path, "busybox:latest", &[busybox_layer()], &["sh"]);
        path
    })
}

/// Runs `command` with `input` on its stdin (none: /dev/null); its whole output.
/// How long one docker or ctr command may run before its test fails with what the
/// command had printed: a hung command fails its test instead of stalling the suite
/// until CI's own limit.
pub const COMMAND_DEADLINE: Duration = Duration::from_secs(600);

/// Runs `command` (stdin from `input`, or none) and collects its output, within
/// [`COMMAND_DEADLINE`].
pub fn output_with_input(command: Command, input: Option<&[u8]>) -> Output {
    output_within(command, input, COMMAND_DEADLINE)
}

/// Runs `command` and collects its output; past `deadline` it is killed and the test
/// panics with the output it had so far.
pub fn output_within(mut command: Command, input: Option<&[u8]>, deadline: Duration) -> Output {
    let mut child = command
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("running {command:?}: {error}"));
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        let input = input.to_vec();
        // A thread of its own: a command that prints while it reads would otherwise
        // block on a full pipe while we block writing its input.
        std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
    }
    let stdout = PipeCollector::start(child.stdout.take().unwrap());
    let stderr = PipeCollector::start(child.stderr.take().unwrap());
    let pid = child.id();
    let (exited, waited) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = exited.send(child.wait());
    });
    let status = match waited.recv_timeout(deadline) {
        Ok(status) => status.unwrap(),
        Err(_) => {
            // SAFETY: kill takes no pointers; the waiting thread has not reaped the pid.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
            panic!(
                "{command:?} did not finish within {deadline:?}\nstdout so far: {}\nstderr so far: {}",
                String::from_utf8_lossy(&stdout.so_far()),
                String::from_utf8_lossy(&stderr.so_far()),
            );
        }
    };
    Output {
        status,
        stdout: stdout.finish(),
        stderr: stderr.finish(),
    }
}

/// A pipe read to its end by a thread, whose bytes can be looked at before then.
struct PipeCollector {
    bytes: std::sync::Arc<Mutex<Vec<u8>>>,
    reader: std::thread::JoinHandle<()>,
}

impl PipeCollector {
    fn start(mut pipe: impl Read + Send + 'static) -> PipeCollector {
        let bytes = std::sync::Arc::new(Mutex::new(Vec::new()));
        let filled = bytes.clone();
        let reader = std::thread::spawn(move || {
            let mut buffer = [0u8; 8192];
            while let Ok(read @ 1..) = pipe.read(&mut buffer) {
                filled.lock().unwrap().extend_from_slice(&buffer[..read]);
            }
        });
        PipeCollector { bytes, reader }
    }

    fn so_far(&self) -> Vec<u8> {
        self.bytes.lock().unwrap().clone()
    }

    fn finish(self) -> Vec<u8> {
        self.reader.join().unwrap();
        std::mem::take(&mut *self.bytes.lock().unwrap())
    }
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// One `GET path` on 127.0.0.1:port (HTTP/1.0); returns the body.
pub fn http_get_once(port: u16, path: &str) -> std::io::Result<String> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default())
}

/// `GET path` on 127.0.0.1:port, retried for up to 30 s (a container's server may not
/// listen yet right after `docker run -d` returns, as with Docker); returns the body.
pub fn http_get(port: u16, path: &str) -> String {
    let mut last = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        match http_get_once(port, path) {
            Ok(body) if !body.is_empty() => return body,
            Ok(_) => {}
            Err(error) => last = Some(error),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("GET {path} on port {port} failed: {last:?}");
}

/// The host port `docker port CONTAINER 80/tcp` names.
pub fn published_port(daemon: &Daemon, container: &str) -> u16 {
    published_port_of(daemon, container, "80/tcp")
}

/// The host port `docker port CONTAINER PORT` names (`PORT` as `5432/tcp`).
pub fn published_port_of(daemon: &Daemon, container: &str, port: &str) -> u16 {
    let line = daemon.docker_ok(&["port", container, port]);
    line.lines()
        .next()
        .and_then(|l| l.rsplit(':').next())
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"))
}

/// Polls `test` until it holds, for up to 60 s.
pub fn eventually(what: &str, test: impl Fn() -> bool) {
    assert!(
        eventually_within(Duration::from_secs(60), test),
        "never: {what}"
    );
}

/// Polls `test` until it holds or `limit` passes; whether it held. (A bound on a wait
/// for something to become true, never a measure of how fast it did.)
pub fn eventually_within(limit: Duration, test: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !test() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    true
}

/// Runs a `berth lab` command that `make` builds. The lab is an emulated machine whose
/// emulation of nested virtualization fails now and then (TCG's SVM): a lab whose own
/// kernel stopped (its heartbeat ceased, both of its vCPUs spinning with interrupts off,
/// seen in one to two runs of eight on a loaded machine; or its kernel panicked) is
/// booted again up to twice, and a command that hung inside a running lab (seen once in
/// CI: one VM's guest stopped answering while its vCPU thread ran) once. Every attempt
/// given up is appended to `target/lab-retries.log`, which `scripts/test.sh` reports
/// at the end of the run, so that a retry is never silent; a command that hangs twice
/// fails the test.
pub fn run_lab(make: impl Fn() -> Command) -> Output {
    let mut output = make().output().expect("berth lab runs");
    let mut hangs_retried = 0;
    for _ in 0..3 {
        let text = stderr(&output);
        let reason = if text.contains(berth_lab::LAB_STOPPED) {
            "the lab's kernel stopped"
        } else if text.contains(berth_lab::COMMAND_HUNG) && hangs_retried == 0 {
            hangs_retried += 1;
            "the command hung in the lab"
        } else {
            break;
        };
        eprintln!("{reason}; booting it again. The attempt:\n{text}");
        record_lab_retry(reason, &text);
        output = make().output().expect("berth lab runs");
    }
    output
}

/// Appends a lab attempt that was given up to `target/lab-retries.log`.
pub fn record_lab_retry(reason: &str, attempt: &str) {
    let Some(target) = Path::new(BERTH).parent().and_then(Path::parent) else {
        return;
    };
    let test = std::thread::current().name().unwrap_or("?").to_owned();
    if let Ok(mut log) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(target.join("lab-retries.log"))
    {
        let _ = writeln!(log, "== {test}: {reason}\n{attempt}");
    }
}

/// A tar entry written raw (ustar), so that hostile names reach the daemon as they are;
/// `size` is what the header declares, whatever `data` holds.
pub fn raw_entry(out: &mut Vec<u8>, name: &str, kind: u8, link: &str, data: &[u8], size: u64) {
    let mut header = [0u8; 512];
    header[..name.len()].copy_from_slice(name.as_bytes());
    header[100..107].copy_from_slice(b"0000644");
    header[108..115].copy_from_slice(b"0000000");
    header[116..123].copy_from_slice(b"0000000");
    header[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
    header[136..147].copy_from_slice(b"00000000000");
    header[156] = kind;
    header[157..157 + link.len()].copy_from_slice(link.as_bytes());
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    header[148..156].copy_from_slice(b"        ");
    let sum: u32 = header.iter().map(|&b| b as u32).sum();
    header[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(data);
    let pad = (512 - data.len() % 512) % 512;
    out.extend(std::iter::repeat_n(0u8, pad));
}

/// Runs openssl in `dir`; panics with its error output if it fails.
pub fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A CA (`NAME-ca.pem`), and certificates it signed: `NAME-server.pem` for 127.0.0.1 and
/// `NAME-client.pem`, each with its `-key.pem`.
pub fn make_ca_and_certificates(dir: &Path, name: &str) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let ca = format!("{name}-ca.pem");
    let ca_key = format!("{name}-ca-key.pem");
    let subject = format!("/CN={name} test CA");
    let mut args = vec!["req", "-x509"];
    args.extend(ec);
    args.extend([
        "-keyout", &ca_key, "-out", &ca, "-days", "2", "-subj", &subject,
    ]);
    openssl(dir, &args);
    for (role, extensions) in [
        (
            "server",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        ),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ] {
        let (key, request, cert, ext) = (
            format!("{name}-{role}-key.pem"),
            format!("{name}-{role}.csr"),
            format!("{name}-{role}.pem"),
            format!("{name}-{role}.ext"),
        );
        std::fs::write(dir.join(&ext), extensions).unwrap();
        let subject = format!("/CN={name} {role}");
        let mut args = vec!["req"];
        args.extend(ec);
        args.extend(["-keyout", &key, "-out", &request, "-subj", &subject]);
        openssl(dir, &args);
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &request,
                "-CA",
                &ca,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-out",
                &cert,
                "-days",
                "2",
                "-extfile",
                &ext,
            ],
        );
    }
}

/// A TCP port free on 127.0.0.1 now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
