//! The KVM lab: where Berth's own VMM is tested on machines without VMX or SVM.
//!
//! QEMU's TCG with `-cpu max` gives its guest AMD SVM, and Debian's `kvm-amd` works in
//! that guest. [`run`] boots such a guest ("the lab") with the same Debian kernel that
//! container VMs boot, from an initramfs made for the run ([`image`]): busybox, the KVM
//! modules, this `berth` binary and the programs it calls (with their shared libraries),
//! the docker CLI, the guest kernel and initramfs for the VMs inside, and any extra files.
//! The lab's `/init` ([`INIT_SCRIPT`]) loads the modules, starts `berth daemon` (by
//! default with `--backend kvm`) on `/var/run/docker.sock`, loads the given image
//! archives into it, runs the command and powers off; when a daemon ran, its log and the
//! VMs' logs follow on the console.
//!
//! Streams: the command's stdout and stderr go to the lab's first serial port, which is
//! this process's stdout (raw: no line-ending translation). The kernel's console is the
//! second serial port, written to `console.log` in the run directory; the init script
//! ends it with a line `berth-lab-exit=N`, N being the command's exit status, which
//! [`run`] returns. The third serial port carries a heartbeat, a line every few seconds
//! from the init script: a lab whose heartbeat stops has stopped running
//! ([`LabError::Stopped`]) and is given up at once rather than at its timeout. Timings
//! inside the lab are emulated: compare ratios measured side by side inside one lab run,
//! never absolute figures.

pub mod image;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `/init` of the lab.
pub const INIT_SCRIPT: &str = include_str!("init.sh");

/// The marker line the init script writes after the command ends.
const EXIT_MARKER: &str = "berth-lab-exit=";

/// What the init script writes when the command runs past its deadline.
const HANG_MARKER: &str = "berth-lab: the command ran past its";

/// Errors of a lab run.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("preparing the guest kernel failed")]
    Guest(#[from] berth_guest::GuestError),
    #[error("I/O error on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Missing(String),
    #[error("starting {program} failed (install it with `scripts/setup.sh`)")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the lab did not finish within {0:?}; its console log:\n{1}")]
    Timeout(Duration, String),
    #[error("the lab ended without running the command to its end; its console log:\n{0}")]
    NoExitStatus(String),
    /// The lab's own kernel stopped running: its heartbeat ceased. This is the emulated
    /// machine failing (seen now and then: both of the lab's vCPUs spinning in its kernel
    /// with interrupts off, as QEMU's monitor showed), not the command; a caller may run
    /// the lab again.
    #[error("{LAB_STOPPED}: no heartbeat for {0:?}; its console log:\n{1}")]
    Stopped(Duration, String),
    /// The lab's own kernel panicked (seen once in CI: "corrupted stack end detected
    /// inside scheduler" in a VM's vCPU thread): the emulated machine failing, as above.
    #[error("{LAB_STOPPED}: it panicked; its console log:\n{0}")]
    Panicked(String),
}

/// How [`LabError::Stopped`] begins, for callers that see only the message.
pub const LAB_STOPPED: &str = "the lab's kernel stopped running";

/// What `berth lab` prints when the command ran past its deadline inside a running lab.
pub const COMMAND_HUNG: &str = "the command was stopped at its deadline";

/// How long the lab may go without a heartbeat before it counts as stopped. The init
/// script beats every few seconds; the command's own work never holds it up, as it is a
/// separate process on a separate serial port.
const HEARTBEAT_LIMIT: Duration = Duration::from_secs(90);

impl LabError {
    pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |source| Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Where `scripts/setup.sh` unpacks the QEMU that runs the lab, under Berth's cache.
///
/// Why not the host's: Debian 12's QEMU 7.2 has a TCG bug, fixed in QEMU 9.0.1 ("Give
/// IRQs a chance when resetting HF_INHIBIT_IRQ_MASK"): after an STI followed by a RET,
/// the emulated CPU may never take the interrupts it just enabled. The lab's kernel hit
/// it now and then (both vCPUs spinning with interrupts off, the timer pending). The
/// setup script unpacks QEMU from bookworm-backports here, beside the host's QEMU, which
/// container VMs keep using.
pub const LAB_QEMU_DIR: &str = "lab-qemu";

/// The QEMU unpacked under `cache` for the lab (its root directory), if there is one.
pub fn cached_qemu(cache: &Path) -> Option<PathBuf> {
    let root = cache.join(LAB_QEMU_DIR);
    root.join(LAB_QEMU_BINARY).is_file().then_some(root)
}

/// The lab QEMU's binary, under its root.
pub const LAB_QEMU_BINARY: &str = "usr/bin/qemu-system-x86_64";

/// One lab run.
#[derive(Debug, Clone)]
pub struct LabSpec {
    /// Berth's cache (guest kernel and initramfs), as for `berth daemon --cache`.
    pub cache: PathBuf,
    /// The lab VM's memory.
    pub memory_mib: u32,
    pub vcpus: u32,
    /// Extra files: (host path, absolute path in the lab).
    pub files: Vec<(PathBuf, String)>,
    /// Image archives (`docker save` format) loaded into the lab's daemon before the
    /// command runs.
    pub images: Vec<PathBuf>,
    /// Bring QEMU (binary, BIOS, option ROMs) into the lab too.
    pub with_qemu: bool,
    /// Arguments of the `berth daemon` the lab starts before the command (its socket is
    /// `/var/run/docker.sock`); `None`: no daemon.
    pub daemon_args: Option<Vec<String>>,
    /// The command and its arguments, run by the lab's shell.
    pub command: Vec<String>,
    pub timeout: Duration,
    /// The QEMU binary.
    pub qemu: String,
    /// Where `qemu` was unpacked from Debian's packages ([`cached_qemu`]): QEMU is then
    /// pointed at the firmware and modules under it rather than the host's.
    pub qemu_root: Option<PathBuf>,
    /// Where the run's files go (lab initramfs, console log); removed afterwards unless
    /// `keep` is set.
    pub work_dir: PathBuf,
    pub keep: bool,
}

/// What a lab run ended with.
#[derive(Debug, Clone)]
pub struct LabOutcome {
    /// The command's exit status inside the lab.
    pub status: i32,
    /// The lab kernel's console (module loading, the init script's own lines).
    pub console: String,
    /// The command ran past its deadline in the lab and was stopped there; the console
    /// holds what the lab's processes were blocked in, and the logs.
    pub command_hung: bool,
    pub elapsed: Duration,
}

/// Boots the lab, runs `spec.command` in it, and returns its exit status. The command's
/// output is written to this process's stdout as it comes.
pub fn run(spec: &LabSpec, progress: &dyn Fn(&str)) -> Result<LabOutcome, LabError> {
    let guest = berth_guest::prepare(&spec.cache, progress)?;
    std::fs::create_dir_all(&spec.work_dir).map_err(LabError::io(&spec.work_dir))?;
    let run_dir = tempfile::Builder::new()
        .prefix("lab-")
        .tempdir_in(&spec.work_dir)
        .map_err(LabError::io(&spec.work_dir))?;
    let initramfs = run_dir.path().join("lab.cpio");
    progress("building the lab's initramfs");
    image::build(&guest, spec, &initramfs)?;
    let console_path = run_dir.path().join("console.log");
    let heartbeat_path = run_dir.path().join("heartbeat.log");
    // Which QEMU boots the lab matters (see [`LAB_QEMU_DIR`]): say it, so that a log
    // tells a lab on the host's QEMU from one on the unpacked one.
    let which = match &spec.qemu_root {
        Some(_) => format!("QEMU {}", spec.qemu),
        None => format!(
            "the host's QEMU {} (run scripts/setup.sh for the lab's own)",
            spec.qemu
        ),
    };
    progress(&format!("booting the lab on {which} (TCG with AMD SVM)"));
    let started = Instant::now();
    let mut qemu = Command::new(&spec.qemu);
    if let Some(root) = &spec.qemu_root {
        qemu.arg("-L").arg(root.join("usr/share/qemu")).env(
            "QEMU_MODULE_DIR",
            root.join("usr/lib/x86_64-linux-gnu/qemu"),
        );
    }
    let mut child = qemu
        .args(qemu_arguments(
            spec,
            &guest.kernel,
            &initramfs,
            &console_path,
            &heartbeat_path,
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|source| LabError::Spawn {
            program: spec.qemu.clone(),
            source,
        })?;
    let deadline = started + spec.timeout;
    let mut heartbeat = Heartbeat::new(heartbeat_path.clone());
    let ended = loop {
        match child.try_wait().map_err(LabError::io(&console_path))? {
            Some(_) => break Ended::Exited,
            None if Instant::now() > deadline => break Ended::TimedOut,
            None if heartbeat.silent_for() > HEARTBEAT_LIMIT => break Ended::Stopped,
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    if !matches!(ended, Ended::Exited) {
        let _ = child.kill();
        let _ = child.wait();
    }
    let console = std::fs::read_to_string(&console_path).unwrap_or_default();
    if spec.keep {
        let kept = run_dir.keep();
        progress(&format!("lab files kept in {}", kept.display()));
    }
    match ended {
        Ended::Exited => {}
        Ended::TimedOut => return Err(LabError::Timeout(spec.timeout, console)),
        Ended::Stopped => return Err(LabError::Stopped(HEARTBEAT_LIMIT, console)),
    }
    let Some(status) = exit_status(&console) else {
        if console.contains("Kernel panic - not syncing") {
            return Err(LabError::Panicked(console));
        }
        return Err(LabError::NoExitStatus(console));
    };
    Ok(LabOutcome {
        status,
        command_hung: console.contains(HANG_MARKER),
        console,
        elapsed: started.elapsed(),
    })
}

/// How the wait for the lab ended.
enum Ended {
    Exited,
    TimedOut,
    Stopped,
}

/// The lab's heartbeat: a file its init script appends a line to every few seconds
/// through the third serial port.
struct Heartbeat {
    path: PathBuf,
    length: u64,
    changed: Instant,
}

impl Heartbeat {
    fn new(path: PathBuf) -> Self {
        Heartbeat {
            path,
            length: 0,
            changed: Instant::now(),
        }
    }

    /// How long since the file last grew (or since the lab started).
    fn silent_for(&mut self) -> Duration {
        let length = std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        if length != self.length {
            self.length = length;
            self.changed = Instant::now();
        }
        self.changed.elapsed()
    }
}

/// The command's exit status from the lab's console log.
fn exit_status(console: &str) -> Option<i32> {
    console
        .lines()
        .rev()
        .find_map(|line| line.trim().strip_prefix(EXIT_MARKER)?.parse().ok())
}

fn qemu_arguments(
    spec: &LabSpec,
    kernel: &Path,
    initramfs: &Path,
    console: &Path,
    heartbeat: &Path,
) -> Vec<String> {
    vec![
        "-accel".into(),
        "tcg".into(),
        "-M".into(),
        "pc".into(),
        // `max` includes SVM: KVM works inside.
        "-cpu".into(),
        "max".into(),
        "-smp".into(),
        spec.vcpus.to_string(),
        "-m".into(),
        format!("{}M", spec.memory_mib),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-display".into(),
        "none".into(),
        "-no-reboot".into(),
        "-kernel".into(),
        kernel.display().to_string(),
        "-initrd".into(),
        initramfs.display().to_string(),
        "-append".into(),
        "console=ttyS1 quiet panic=-1 8250.nr_uarts=3 random.trust_cpu=on".into(),
        // ttyS0: the command's output, to our stdout.
        "-serial".into(),
        "stdio".into(),
        // ttyS1: the kernel console and the exit marker.
        "-serial".into(),
        format!("file:{}", console.display()),
        // ttyS2: the heartbeat.
        "-serial".into(),
        format!("file:{}", heartbeat.display()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_is_the_last_marker() {
        assert_eq!(exit_status("boot\nberth-lab-exit=3\n"), Some(3));
        assert_eq!(
            exit_status("berth-lab-exit=0\nberth-lab-exit=127\r\n"),
            Some(127)
        );
        assert_eq!(exit_status("boot\nKernel panic\n"), None);
        assert_eq!(exit_status("berth-lab-exit=x\n"), None);
    }
}
