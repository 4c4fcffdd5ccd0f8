//! Shares: host directories and files a container's VM reaches over FUSE (bind mounts,
//! and volumes kept as directories).
//!
//! Per running container and share, one `berth share-server` process (crate
//! `berth-share`) serves the share from inside its own sandbox. The engine makes its
//! listening socket, `<vm dir>/fs<n>.sock` (`SOCK_SEQPACKET`), and starts it with that
//! socket as descriptor 0 and the VM's pid to outlive no longer than. The relay
//! ([`ShareRelay`]) connects to each socket: FUSE requests from the guest
//! ([`berth_agent_proto::FrameKind::Fuse`] frames on the share's stream) are checked
//! (the header's length is the message's) and sent as one packet each; a task per share
//! sends the server's replies back as frames, lowering the `INIT` reply's largest I/O to
//! what a frame carries. A server blocked on a slow disk holds up only its own VM's
//! channel.
//!
//! The servers are not the daemon's: they are in their own process groups and outlive a
//! daemon that dies, keeping the guest's inodes and open files; the next daemon connects
//! to the same sockets when it takes the VM over (live restore).

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use berth_agent_proto::{MAX_FUSE_IO, MAX_FUSE_MESSAGE, SHARE_STREAM_BASE};
use berth_share::wire;
use tokio_seqpacket::UnixSeqpacket;

use crate::agent::{AgentError, AgentSession};
use crate::records::{ContainerRecord, VolumeStorage};
use crate::{Engine, EngineError};

/// A share of a container, as its start makes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PlannedShare {
    /// Its FUSE stream (and, less [`SHARE_STREAM_BASE`], its index).
    pub stream: u32,
    /// The host directory or file.
    pub source: PathBuf,
    pub target: String,
    pub read_only: bool,
    /// The source is a file, not a directory.
    pub file: bool,
    /// A volume that receives the image's content when empty.
    pub populate: bool,
}

impl PlannedShare {
    fn index(&self) -> u32 {
        self.stream - SHARE_STREAM_BASE
    }

    pub fn to_mount(&self) -> berth_agent_proto::ShareMount {
        berth_agent_proto::ShareMount {
            stream: self.stream,
            target: self.target.clone(),
            read_only: self.read_only,
            file: self.file,
            populate: self.populate,
        }
    }
}

/// `subpath` of a volume's data directory, which must exist and stay inside it (after
/// its symlinks are resolved: a container may have made them).
fn within(data: &Path, subpath: &str) -> Result<PathBuf, EngineError> {
    let missing = |error: std::io::Error| {
        EngineError::InvalidArgument(format!(
            "cannot access path {subpath} in the volume: {error}"
        ))
    };
    let root = data.canonicalize().map_err(missing)?;
    let path = data.join(subpath).canonicalize().map_err(missing)?;
    if !path.starts_with(&root) {
        return Err(EngineError::InvalidArgument(format!(
            "volume-subpath {subpath} leads outside the volume"
        )));
    }
    Ok(path)
}

fn socket_path(run_dir: &Path, index: u32) -> PathBuf {
    run_dir.join(format!("fs{index}.sock"))
}

impl Engine {
    /// The container's shares, parents first: its bind mounts (a source
    /// that went missing since the container was made is an error, as with Docker) and
    /// its volumes kept as directories.
    pub(crate) fn planned_shares(
        &self,
        record: &ContainerRecord,
    ) -> Result<Vec<PlannedShare>, EngineError> {
        let mut shares = Vec::new();
        for mount in &record.mounts {
            let (source, populate) = match &mount.bind_source {
                Some(source) => (PathBuf::from(source), false),
                None => match self.volume(&mount.volume) {
                    Some(volume) if volume.storage == VolumeStorage::Directory => {
                        let data = self.volume_data(&mount.volume);
                        match &mount.subpath {
                            Some(subpath) => (within(&data, subpath)?, false),
                            None => (data, mount.populate),
                        }
                    }
                    Some(_) if mount.subpath.is_some() => {
                        return Err(EngineError::NotSupported(format!(
                            "volume-subpath on the disk volume {}: only directory volumes have one",
                            mount.volume
                        )))
                    }
                    _ => continue,
                },
            };
            let metadata = std::fs::metadata(&source).map_err(|error| {
                EngineError::InvalidArgument(format!(
                    "invalid mount config for type \"bind\": bind source path does not exist: {} ({error})",
                    source.display()
                ))
            })?;
            shares.push(PlannedShare {
                stream: 0,
                source,
                target: mount.target.clone(),
                read_only: mount.read_only,
                file: !metadata.is_dir(),
                populate,
            });
        }
        // Mounted in this order: a parent before what is mounted inside it (`/etc`
        // before `/etc/hosts`), as Docker sorts mounts by depth.
        shares.sort_by_key(|share| share.target.trim_end_matches('/').matches('/').count());
        for (index, share) in shares.iter_mut().enumerate() {
            share.stream = SHARE_STREAM_BASE + index as u32;
        }
        Ok(shares)
    }

    /// Starts a file server for each share of the VM whose process is `vm_pid`.
    pub(crate) fn start_share_servers(
        &self,
        run_dir: &Path,
        shares: &[PlannedShare],
        vm_pid: u32,
    ) -> Result<(), EngineError> {
        if shares.is_empty() {
            return Ok(());
        }
        let Some(program) = &self.config.share_server else {
            return Err(EngineError::NotSupported(
                "shared directories need the berth binary's file server".into(),
            ));
        };
        start_servers(program, run_dir, shares, vm_pid).map(drop)
    }
}

/// Starts `program share-server` for each share of the VM whose process is `vm_pid`,
/// listening at `<run_dir>/fs<index>.sock`; returns their pids.
pub(crate) fn start_servers(
    program: &Path,
    run_dir: &Path,
    shares: &[PlannedShare],
    vm_pid: u32,
) -> Result<Vec<u32>, EngineError> {
    {
        let mut pids = Vec::new();
        for share in shares {
            let index = share.index();
            let socket = socket_path(run_dir, index);
            let listener = listen(&socket)?;
            let scratch = run_dir.join(format!("fs{index}"));
            std::fs::create_dir_all(&scratch).map_err(EngineError::io(&scratch))?;
            let log_path = run_dir.join(format!("fs{index}.log"));
            let log = std::fs::File::create(&log_path).map_err(EngineError::io(&log_path))?;
            let mut command = tokio::process::Command::new(program);
            command
                .arg("share-server")
                .arg("--source")
                .arg(&share.source)
                .arg("--scratch")
                .arg(&scratch)
                .arg("--watch-pid")
                .arg(vm_pid.to_string())
                .stdin(std::process::Stdio::from(listener))
                .stdout(std::process::Stdio::null())
                .stderr(log)
                .env("BERTH_LOG", "warn")
                // Its own group: it outlives a daemon that dies (see the module docs).
                .process_group(0);
            if share.read_only {
                command.arg("--read-only");
            }
            let mut child = command.spawn().map_err(EngineError::io(program))?;
            pids.extend(child.id());
            tokio::spawn(async move {
                let _ = child.wait().await;
            });
        }
        Ok(pids)
    }
}

/// A bound, listening `SOCK_SEQPACKET` socket at `path` (an old one is replaced).
fn listen(path: &Path) -> Result<OwnedFd, EngineError> {
    use nix::sys::socket::{bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType};
    let failed = |errno: nix::Error| EngineError::Io {
        path: path.to_owned(),
        source: errno.into(),
    };
    let _ = std::fs::remove_file(path);
    let fd = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(failed)?;
    let address = nix::sys::socket::UnixAddr::new(path).map_err(failed)?;
    bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &address).map_err(failed)?;
    listen(&fd, Backlog::new(4).map_err(failed)?).map_err(failed)?;
    Ok(fd)
}

/// Requests waiting for a share's server, at most: far more than the guest kernel has
/// in flight (it is told to keep at most [`wire::MAX_BACKGROUND`] in the background, and
/// each of its other requests holds a thread); a guest that sends more is answered
/// `EAGAIN` rather than queued without end.
const QUEUED_REQUESTS: usize = 1024;

/// One share's connection to its server.
struct ShareLink {
    socket: UnixSeqpacket,
    /// Requests on their way to the server. The agent's channel is never made to wait
    /// for a server: the guest's requests and the server's replies share that channel,
    /// and a reader that waited on the server while the server waited to reply would
    /// stop both.
    queue: tokio::sync::mpsc::Sender<Vec<u8>>,
    /// The unique id of the guest's `INIT` request (0: none seen).
    init_unique: AtomicU64,
}

/// Carries a VM's FUSE traffic between its agent and its shares' servers.
pub struct ShareRelay {
    links: std::sync::Mutex<HashMap<u32, RelayedShare>>,
    session: Arc<AgentSession>,
}

/// One share's link and the tasks that carry its traffic.
struct RelayedShare {
    link: Arc<ShareLink>,
    tasks: [tokio::task::JoinHandle<()>; 2],
}

impl Drop for RelayedShare {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl ShareRelay {
    fn links(&self) -> std::sync::MutexGuard<'_, HashMap<u32, RelayedShare>> {
        self.links
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Connects to the servers of `shares` (started by [`Engine::start_share_servers`],
    /// by this daemon or the one before it) and starts sending their replies to the
    /// agent through `session`.
    pub(crate) async fn connect(
        run_dir: &Path,
        shares: &[PlannedShare],
        session: Arc<AgentSession>,
    ) -> Result<Arc<Self>, EngineError> {
        let relay = Arc::new(Self {
            links: std::sync::Mutex::default(),
            session,
        });
        relay.add(run_dir, shares).await?;
        Ok(relay)
    }

    /// Connects to the servers of more `shares` of the same VM (started since).
    pub(crate) async fn add(
        &self,
        run_dir: &Path,
        shares: &[PlannedShare],
    ) -> Result<(), EngineError> {
        for share in shares {
            let path = socket_path(run_dir, share.index());
            let socket = UnixSeqpacket::connect(&path)
                .await
                .map_err(EngineError::io(&path))?;
            // SAFETY: the descriptor is the socket's, alive while it is borrowed here.
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(socket.as_raw_fd()) };
            nix::sys::socket::setsockopt(
                &fd,
                nix::sys::socket::sockopt::SndBufForce,
                &berth_share::SOCKET_BUFFER,
            )
            .map_err(|errno| EngineError::io(&path)(errno.into()))?;
            let (queue, requests) = tokio::sync::mpsc::channel(QUEUED_REQUESTS);
            let link = Arc::new(ShareLink {
                socket,
                queue,
                init_unique: AtomicU64::new(0),
            });
            let tasks = [
                tokio::spawn(send_requests(link.clone(), requests)),
                tokio::spawn(send_replies(
                    link.clone(),
                    share.stream,
                    self.session.clone(),
                )),
            ];
            self.links()
                .insert(share.stream, RelayedShare { link, tasks });
        }
        Ok(())
    }

    /// Disconnects from the servers of the shares on `streams` (unmounted in the guest):
    /// each server ends when its connection closes.
    pub(crate) fn remove(&self, streams: &[u32]) {
        let mut links = self.links();
        for stream in streams {
            links.remove(stream);
        }
    }

    /// Connects to the servers whose sockets are in `run_dir` (a VM taken over after a
    /// daemon restart); `None` when the VM has no share.
    pub(crate) async fn reconnect(
        run_dir: &Path,
        session: Arc<AgentSession>,
    ) -> Result<Option<Arc<Self>>, EngineError> {
        let shares: Vec<PlannedShare> = (0..)
            .take_while(|index| socket_path(run_dir, *index).exists())
            .map(|index| PlannedShare {
                stream: SHARE_STREAM_BASE + index,
                source: PathBuf::new(),
                target: String::new(),
                read_only: false,
                file: false,
                populate: false,
            })
            .collect();
        if shares.is_empty() {
            return Ok(None);
        }
        Self::connect(run_dir, &shares, session).await.map(Some)
    }

    /// Passes one FUSE request from the guest to its share's server.
    pub async fn forward(&self, stream: u32, message: Vec<u8>) -> Result<(), AgentError> {
        let link = self
            .links()
            .get(&stream)
            .map(|relayed| relayed.link.clone())
            .ok_or(AgentError::UnexpectedFuse(stream))?;
        let header = wire::request_header(&message).map_err(AgentError::FuseMessage)?;
        if header.opcode == wire::opcode::INIT {
            link.init_unique.store(header.unique, Ordering::Relaxed);
        }
        match link.queue.try_send(message) {
            Ok(()) => Ok(()),
            Err(tokio::sync::mpsc::error::TrySendError::Full(_)) if header.expects_reply() => {
                self.session
                    .send_fuse(stream, &wire::error_reply(header.unique, libc::EAGAIN))
                    .await
            }
            Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => Ok(()),
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => {
                Err(AgentError::ShareServer {
                    stream,
                    source: std::io::Error::from(std::io::ErrorKind::BrokenPipe),
                })
            }
        }
    }
}

/// Sends one share's queued requests to its server, one packet each.
async fn send_requests(link: Arc<ShareLink>, mut requests: tokio::sync::mpsc::Receiver<Vec<u8>>) {
    while let Some(request) = requests.recv().await {
        if link.socket.send(&request).await.is_err() {
            return;
        }
    }
}

/// Sends one share's replies to the agent until the server or the channel goes away.
async fn send_replies(link: Arc<ShareLink>, stream: u32, session: Arc<AgentSession>) {
    let mut buffer = vec![0u8; MAX_FUSE_MESSAGE + 1];
    loop {
        let n = match link.socket.recv(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let reply = &mut buffer[..n];
        let Ok(unique) = wire::reply_header(reply) else {
            tracing::warn!(stream, "a share's server sent a malformed reply");
            continue;
        };
        if n > MAX_FUSE_MESSAGE {
            let refused = wire::error_reply(unique, libc::EIO);
            if session.send_fuse(stream, &refused).await.is_err() {
                return;
            }
            continue;
        }
        if unique != 0 && link.init_unique.load(Ordering::Relaxed) == unique {
            wire::limit_init_reply(reply, MAX_FUSE_IO as u32);
        }
        if session.send_fuse(stream, reply).await.is_err() {
            return;
        }
    }
}
