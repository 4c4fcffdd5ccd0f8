//! A short-lived VM for a stopped container's files (`docker cp` to or from a container
//! that is not running). The host never mounts a container's filesystem: Berth boots a
//! VM on the container's own disk, with no network card, no volumes and none of the
//! container's processes; the agent mounts the disk and runs the `berth-archive` helper,
//! and the VM powers off when the helper ends. The container's lifecycle lock is held
//! meanwhile, so it cannot be started on the same disk at the same time.
//!
//! The VM boots cold: clones restore a template with a network card, and this VM has
//! none. On KVM hosts that takes well under a second; under TCG a few seconds.

use std::sync::Arc;
use std::time::Duration;

use berth_agent_proto::{GuestMessage, HostMessage, ProcessSpec, SetupSpec, AGENT_STREAM};
use berth_vm::{DiskFormat, DiskSpec, MemoryBacking, VmSpec};
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::agent::{handshake, AgentError, AgentEvent};
use crate::files::shares::ShareRelay;
use crate::process::output::{OutputChunk, OutputStream};
use crate::{ContainerHandle, Engine, EngineError, StdinEvent};

/// The stream the helper runs on (any id but the agent's).
const HELPER_STREAM: u32 = 1;
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);

/// A helper process's output, input and exit code, wherever it runs.
pub(crate) struct HelperRun {
    pub output: mpsc::UnboundedReceiver<OutputChunk>,
    pub stdin: Option<mpsc::UnboundedSender<StdinEvent>>,
    pub exit: oneshot::Receiver<i64>,
}

/// All a helper wrote and its exit code.
pub(crate) struct HelperResult {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub code: i64,
}

impl HelperRun {
    /// Reads the helper's output to its end (at most `limit` bytes of each stream: the
    /// guest is untrusted) and waits for its exit code.
    pub async fn collect(
        mut self,
        limit: usize,
        what: &'static str,
    ) -> Result<HelperResult, EngineError> {
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        while let Some(OutputChunk { stream, data }) = self.output.recv().await {
            let sink = match stream {
                OutputStream::Stdout => &mut stdout,
                OutputStream::Stderr => &mut stderr,
            };
            if sink.len() + data.len() > limit {
                return Err(AgentError::TooLong(what).into());
            }
            sink.extend_from_slice(&data);
        }
        let code = self.exit.await.unwrap_or(-1);
        Ok(HelperResult {
            stdout,
            stderr,
            code,
        })
    }
}

impl Engine {
    /// Boots a VM on the stopped container's disk and runs `berth-archive ARGS` in it.
    pub(crate) async fn run_helper_in_copy_vm(
        self: &Arc<Self>,
        handle: Arc<ContainerHandle>,
        args: Vec<String>,
        with_stdin: bool,
        extra_disks: Vec<DiskSpec>,
        shares: bool,
    ) -> Result<HelperRun, EngineError> {
        let (ready_sender, ready) = oneshot::channel();
        let engine = self.clone();
        tokio::spawn(async move {
            // Held until the VM is gone: nothing else may use the disk meanwhile.
            let _guard = handle.lifecycle.lock().await;
            if handle.runtime().is_some() {
                let _ = ready_sender.send(Err(EngineError::Conflict(format!(
                    "Container {} started meanwhile: copy again",
                    handle.id
                ))));
                return;
            }
            engine
                .copy_vm_run(
                    &handle.snapshot(),
                    args,
                    with_stdin,
                    extra_disks,
                    shares,
                    ready_sender,
                )
                .await;
        });
        ready
            .await
            .map_err(|_| AgentError::VmEnded("before the copy VM was ready"))?
    }

    /// Boots the copy VM, hands the helper's streams to `ready`, and serves them until the
    /// helper exits and the VM is gone.
    async fn copy_vm_run(
        &self,
        record: &crate::ContainerRecord,
        args: Vec<String>,
        with_stdin: bool,
        extra_disks: Vec<DiskSpec>,
        shares: bool,
        ready: oneshot::Sender<Result<HelperRun, EngineError>>,
    ) {
        let run_dir = self
            .config
            .exec_root
            .join("vms")
            .join(format!("cp-{}", &record.id[..12]));
        let booted = self
            .copy_vm_boot(record, &run_dir, args, with_stdin, extra_disks, shares)
            .await;
        let (session, mut reader, control) = match booted {
            Ok(parts) => parts,
            Err(error) => {
                let _ = std::fs::remove_dir_all(&run_dir);
                let _ = ready.send(Err(error));
                return;
            }
        };
        let (output_sender, output) = mpsc::unbounded_channel();
        let (exit_sender, exit) = oneshot::channel();
        let stdin = with_stdin.then(|| {
            let (sender, mut receiver) = mpsc::unbounded_channel::<StdinEvent>();
            let session = session.clone();
            tokio::spawn(async move {
                while let Some(event) = receiver.recv().await {
                    let sent = match event {
                        StdinEvent::Data(data) => session.send_stdin(HELPER_STREAM, &data).await,
                        StdinEvent::Close => {
                            session.send(HELPER_STREAM, &HostMessage::CloseStdin).await
                        }
                    };
                    if sent.is_err() {
                        break;
                    }
                }
            });
            sender
        });
        let _ = ready.send(Ok(HelperRun {
            output,
            stdin,
            exit,
        }));
        let code = loop {
            let event = tokio::select! {
                event = reader.next_event() => event,
                _ = control.wait() => break -1,
            };
            match event {
                Ok(Some(AgentEvent::Output {
                    stream: HELPER_STREAM,
                    kind,
                    data,
                })) => {
                    let _ = output_sender.send(OutputChunk::from_agent(kind, data));
                }
                Ok(Some(AgentEvent::Message { message, .. })) => match message {
                    GuestMessage::Exited { code, .. } => break i64::from(code),
                    GuestMessage::SpawnFailed { message, .. } => {
                        let _ = output_sender.send(OutputChunk {
                            stream: OutputStream::Stderr,
                            data: Bytes::from(message),
                        });
                        break 126;
                    }
                    _ => {}
                },
                Ok(Some(AgentEvent::Output { .. })) => {}
                Ok(None) | Err(_) => break -1,
            }
        };
        drop(output_sender);
        let _ = exit_sender.send(code);
        let _ = session.send(AGENT_STREAM, &HostMessage::Shutdown).await;
        control.shut_down(Duration::from_secs(5)).await;
        let _ = std::fs::remove_dir_all(&run_dir);
    }

    async fn copy_vm_boot(
        &self,
        record: &crate::ContainerRecord,
        run_dir: &std::path::Path,
        args: Vec<String>,
        with_stdin: bool,
        extra_disks: Vec<DiskSpec>,
        shares: bool,
    ) -> Result<
        (
            Arc<crate::agent::AgentSession>,
            crate::agent::AgentReader,
            Arc<dyn berth_vm::VmControl>,
        ),
        EngineError,
    > {
        let guest = self.guest().await?.clone();
        let _ = std::fs::remove_dir_all(run_dir);
        std::fs::create_dir_all(run_dir).map_err(EngineError::io(run_dir))?;
        let spec = VmSpec {
            name: format!("cp-{}", &record.id[..12]),
            vcpus: 1,
            memory_mib: self.config.default_memory_mib,
            kernel: guest.kernel.clone(),
            initramfs: guest.initramfs.clone(),
            disks: std::iter::once(DiskSpec::new(
                self.container_dir(&record.id).join("rootfs.qcow2"),
                DiskFormat::Qcow2,
            ))
            .chain(extra_disks)
            .collect(),
            run_dir: run_dir.to_path_buf(),
            memory: MemoryBacking::Anonymous,
            restore_from: None,
            nics: Vec::new(),
            netns: None,
        };
        // The container's shares, as its run has them (nothing copied into a new volume).
        let shares = match shares {
            true => self.planned_shares(record)?,
            false => Vec::new(),
        };
        let vm = self.config.backend.boot(&spec).await?;
        let vm_pid = vm.pid;
        let control: Arc<dyn berth_vm::VmControl> = Arc::from(vm.control);
        let ready = async {
            self.start_share_servers(run_dir, &shares, vm_pid)?;
            let (session, mut reader, _kernel) = handshake(vm.agent, BOOT_TIMEOUT).await?;
            let session = Arc::new(session);
            if !shares.is_empty() {
                let relay = ShareRelay::connect(run_dir, &shares, session.clone()).await?;
                reader.attach_shares(relay);
            }
            let setup = SetupSpec {
                hostname: record.config.hostname.clone().unwrap_or_default(),
                root_device: "/dev/vda".into(),
                shares: shares
                    .iter()
                    .map(|share| berth_agent_proto::ShareMount {
                        populate: false,
                        ..share.to_mount()
                    })
                    .collect(),
                ..Default::default()
            };
            session
                .send(AGENT_STREAM, &HostMessage::Setup(setup))
                .await?;
            match reader
                .expect_message(AGENT_STREAM, SETUP_TIMEOUT, "mounting the container's disk")
                .await?
            {
                GuestMessage::SetupDone { .. } => {}
                other => {
                    return Err(
                        AgentError::unexpected("mounting the container's disk", &other).into(),
                    )
                }
            }
            let process = ProcessSpec {
                argv: args,
                env: Vec::new(),
                cwd: "/".into(),
                user: String::new(),
                tty: false,
                stdin: with_stdin,
                tty_size: None,
                rlimits: Vec::new(),
                capabilities: None,
                no_new_privileges: false,
                agent_helper: true,
                extra_groups: Vec::new(),
                own_pid_namespace: false,
                container: None,
            };
            session
                .send(HELPER_STREAM, &HostMessage::Spawn(process))
                .await?;
            Ok::<_, EngineError>((session, reader))
        };
        match ready.await {
            Ok((session, reader)) => Ok((session, reader, control)),
            Err(error) => {
                control.kill().await;
                Err(error)
            }
        }
    }
}
