//! Berth's network namespace.
//!
//! Container networks (bridges, taps, the gateway addresses, DNS servers) live in a
//! network namespace the daemon owns, named like `ip netns` names them and pinned at
//! `/run/netns/<name>`, so that container addresses never appear on the host's own
//! interfaces. The daemon itself stays in the host's namespace; it reaches into its own
//! namespace in two ways:
//!
//! - commands (`ip`, `nft`, QEMU) are started with their network namespace switched
//!   before `exec` ([`Namespace::command`]);
//! - sockets are created by a short-lived thread that enters the namespace first
//!   ([`Namespace::run`]): a socket belongs to the namespace it was created in for the
//!   rest of its life, whichever thread then uses it.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use crate::NetError;

/// An open handle on a named network namespace.
#[derive(Debug, Clone)]
pub struct Namespace {
    name: String,
    path: PathBuf,
    handle: Arc<OwnedFd>,
}

impl Namespace {
    /// Opens the namespace `name`, creating it (`ip netns add`) if it does not exist. Its
    /// loopback is brought up and IP forwarding is turned off: traffic never crosses from
    /// one container network to another through it.
    pub fn ensure(name: &str) -> Result<Self, NetError> {
        if name.is_empty() || name.len() > 64 || name.contains('/') || name.starts_with('.') {
            return Err(NetError::Invalid(format!(
                "network namespace name {name:?} is not a plain file name"
            )));
        }
        let path = Path::new("/run/netns").join(name);
        if !path.exists() {
            run_checked(Command::new("ip").args(["netns", "add", name]))?;
        }
        let file = File::open(&path)
            .map_err(|e| NetError::Io(format!("opening {}", path.display()), e))?;
        let namespace = Self {
            name: name.to_owned(),
            path,
            handle: Arc::new(OwnedFd::from(file)),
        };
        namespace.ip(&["link", "set", "lo", "up"])?;
        namespace.sysctl("net.ipv4.ip_forward", "0")?;
        namespace.bridged_traffic_bypasses_netfilter();
        Ok(namespace)
    }

    /// Opens an existing namespace by its file (one another program made and owns, such
    /// as a pod's that CNI set up), changing nothing in it.
    pub fn open(path: &Path) -> Result<Self, NetError> {
        let file =
            File::open(path).map_err(|e| NetError::Io(format!("opening {}", path.display()), e))?;
        Ok(Self {
            name: path
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_default(),
            path: path.to_owned(),
            handle: Arc::new(OwnedFd::from(file)),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's pinned path (`/run/netns/<name>`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A command that runs inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        self.enter_before_exec(&mut command);
        command
    }

    /// Makes `command` enter this namespace in the child, before `exec`.
    pub fn enter_before_exec(&self, command: &mut impl PreExec) {
        let handle = self.handle.clone();
        command.add_pre_exec(Box::new(move || {
            // SAFETY: setns takes a descriptor and a flag, no pointers; it is
            // async-signal-safe, as code between fork and exec must be.
            if unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        }));
    }

    /// Runs `f` on a thread that has entered the namespace (for creating sockets there).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
        run_in_namespace(&self.handle, f)
    }

    /// Runs `ip ARGS...` inside the namespace.
    pub fn ip(&self, args: &[&str]) -> Result<String, NetError> {
        run_checked(self.command("ip").args(args))
    }

    /// Sets a sysctl of the namespace (`net.*` keys are per namespace).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<(), NetError> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let value = value.to_owned();
        self.run(move || std::fs::write(&path, value))
            .map_err(|e| NetError::Io(format!("setting {key} in the namespace"), e))
    }

    /// With `br_netfilter` loaded, frames crossing a bridge go through the IP hooks too;
    /// Berth's bridges need none of that (the setting is per namespace; absent without
    /// the module, which is fine).
    pub fn bridged_traffic_bypasses_netfilter(&self) {
        for key in [
            "net.bridge.bridge-nf-call-iptables",
            "net.bridge.bridge-nf-call-ip6tables",
            "net.bridge.bridge-nf-call-arptables",
        ] {
            let _ = self.sysctl(key, "0");
        }
    }

    /// Deletes a namespace and everything in it (for tests and `berth` clean-up).
    pub fn delete(name: &str) -> Result<(), NetError> {
        run_checked(Command::new("ip").args(["netns", "delete", name])).map(|_| ())
    }
}

/// Commands that take a hook run between `fork` and `exec` (std's and tokio's).
pub trait PreExec {
    fn add_pre_exec(&mut self, hook: Box<dyn FnMut() -> io::Result<()> + Send + Sync>);
}

impl PreExec for Command {
    fn add_pre_exec(&mut self, hook: Box<dyn FnMut() -> io::Result<()> + Send + Sync>) {
        use std::os::unix::process::CommandExt;
        // SAFETY: the hook only calls setns, which is async-signal-safe.
        unsafe {
            self.pre_exec(hook);
        }
    }
}

impl PreExec for tokio::process::Command {
    fn add_pre_exec(&mut self, hook: Box<dyn FnMut() -> io::Result<()> + Send + Sync>) {
        // SAFETY: the hook only calls setns, which is async-signal-safe.
        unsafe {
            self.pre_exec(hook);
        }
    }
}

/// Runs a command, returning its stdout, or an error with its stderr.
pub(crate) fn run_checked(command: &mut Command) -> Result<String, NetError> {
    let shown = format!("{command:?}");
    let output = command
        .output()
        .map_err(|e| NetError::Io(format!("running {shown}"), e))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(NetError::Command {
            command: shown,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

/// Runs `f` on a thread that has entered the network namespace `namespace` (an open
/// `/run/netns/NAME` or `/proc/PID/ns/net`): for opening a tap or a socket there.
pub fn run_in_namespace<T: Send>(
    namespace: &(impl AsRawFd + Sync),
    f: impl FnOnce() -> io::Result<T> + Send,
) -> io::Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                // SAFETY: setns takes a descriptor and a flag, no pointers; on this thread
                // it changes only this thread's namespace, and the thread ends when `f`
                // returns.
                if unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                f()
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("namespace thread panicked")))
    })
}
