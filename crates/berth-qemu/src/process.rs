//! The QEMU process: spawning, reaping, and the [`VmControl`] the engine holds.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use berth_vm::{VmControl, VmError, VmExit};
use tokio::process::Command;
use tokio::sync::watch;

use crate::qmp::QmpClient;

/// A QEMU process whose exit is published on a watch channel by a reaper task.
pub struct QemuProcess {
    pid: u32,
    exit: watch::Receiver<Option<VmExit>>,
}

impl QemuProcess {
    /// Starts QEMU with its output going to `log`. QEMU gets its own process group, so a
    /// Ctrl-C aimed at the daemon does not reach it: the daemon stops its VMs itself.
    pub fn spawn(binary: &Path, arguments: &[String], log: &Path) -> Result<Self, VmError> {
        let log_file = File::create(log).map_err(|e| VmError::Io("creating qemu.log", e))?;
        let log_clone = log_file
            .try_clone()
            .map_err(|e| VmError::Io("creating qemu.log", e))?;
        let mut child = Command::new(binary)
            .args(arguments)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_file))
            .stderr(Stdio::from(log_clone))
            .process_group(0)
            .kill_on_drop(false)
            .spawn()
            .map_err(VmError::Spawn)?;
        let pid = child
            .id()
            .ok_or_else(|| VmError::ExitedEarly("no pid".into()))?;
        let (sender, exit) = watch::channel(None);
        tokio::spawn(async move {
            let status = child.wait().await;
            let code = status.ok().and_then(|status| status.code());
            let _ = sender.send(Some(VmExit { code }));
        });
        Ok(Self { pid, exit })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Resolves when the process has ended.
    pub async fn exited(&self) -> VmExit {
        let mut exit = self.exit.clone();
        let result = match exit.wait_for(Option::is_some).await {
            Ok(value) => value.clone().unwrap_or(VmExit { code: None }),
            Err(_) => VmExit { code: None },
        };
        result
    }

    /// Kills the process and waits for it.
    pub async fn kill_now(&self) -> VmExit {
        if self.exit.borrow().is_none() {
            // SAFETY: kill takes no pointers. The pid is our child's and is reaped only by
            // the reaper task, which publishes the exit right after; a reaped pid is not
            // signalled (checked just above), save for that short window.
            unsafe {
                libc::kill(self.pid as i32, libc::SIGKILL);
            }
        }
        self.exited().await
    }

    pub fn into_control(self, qmp_socket: PathBuf) -> QemuControl {
        QemuControl {
            process: self,
            qmp_socket,
        }
    }
}

/// [`VmControl`] for a QEMU process.
pub struct QemuControl {
    process: QemuProcess,
    qmp_socket: PathBuf,
}

#[async_trait]
impl VmControl for QemuControl {
    async fn shut_down(&self, grace: Duration) -> VmExit {
        match tokio::time::timeout(grace, self.process.exited()).await {
            Ok(exit) => exit,
            Err(_) => self.kill().await,
        }
    }

    async fn kill(&self) -> VmExit {
        // Ask QEMU to quit first (it then closes its files cleanly); SIGKILL if it does not.
        if let Ok(Ok(mut monitor)) =
            tokio::time::timeout(Duration::from_secs(1), QmpClient::connect(&self.qmp_socket)).await
        {
            let _ = monitor.quit().await;
        }
        match tokio::time::timeout(Duration::from_secs(2), self.process.exited()).await {
            Ok(exit) => exit,
            Err(_) => self.process.kill_now().await,
        }
    }

    async fn wait(&self) -> VmExit {
        self.process.exited().await
    }

    async fn pause(&self) -> Result<(), VmError> {
        QmpClient::connect(&self.qmp_socket)
            .await?
            .execute("stop", None)
            .await
            .map(|_| ())
    }

    async fn resume(&self) -> Result<(), VmError> {
        QmpClient::connect(&self.qmp_socket)
            .await?
            .execute("cont", None)
            .await
            .map(|_| ())
    }

    async fn snapshot(&self, state_file: &Path) -> Result<(), VmError> {
        let mut monitor = QmpClient::connect(&self.qmp_socket).await?;
        monitor.execute("stop", None).await?;
        monitor.ignore_shared_memory().await?;
        let uri = format!("exec:cat > {}", crate::qmp::shell_quote(state_file));
        monitor
            .execute("migrate", Some(serde_json::json!({ "uri": uri })))
            .await?;
        monitor.wait_for_migration(Duration::from_secs(60)).await
    }
}
