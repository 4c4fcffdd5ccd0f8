//! The serving loop: one connection at a time on the listening socket, a few worker
//! threads per connection, each taking whole requests (one per packet) and writing whole
//! replies.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::passthrough::{CachePolicy, Config, PassthroughFs};
use fuse_backend_rs::transport::{FuseBuf, FuseDevWriter, Reader};
use nix::sys::socket::{accept, recv, send, MsgFlags};

use crate::{sandbox, wire, ShareError};

/// Threads serving one connection: the guest kernel has several requests in flight.
const WORKERS: usize = 2;
/// Largest request or reply (512 KiB of data plus headers).
const MAX_MESSAGE: usize = berth_agent_proto::MAX_FUSE_MESSAGE;
/// Send buffer of a connection: a unix `SOCK_SEQPACKET` packet must fit in the sender's
/// buffer, whose default (208 KiB) is less than one message.
pub const SOCKET_BUFFER: usize = 4 * MAX_MESSAGE;
/// How long the guest may cache names and attributes: a change made on the host is seen
/// in the container within this time.
const CACHE_TIMEOUT: Duration = Duration::from_secs(1);

/// What one server shares, and with whom.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The host directory or file shared.
    pub source: PathBuf,
    /// Refuse every write.
    pub read_only: bool,
    /// An existing directory to mount the sandbox's root on (inside the server's own
    /// mount namespace; the host sees nothing there).
    pub scratch: PathBuf,
    /// Exit when this process (the VM's) exits.
    pub watch_pid: Option<i32>,
}

type SharedFs = Server<Arc<PassthroughFs<()>>>;

/// Confines the process, then serves connections from `listener` until the watched
/// process exits.
pub fn serve(options: &ServeOptions, listener: OwnedFd) -> Result<(), ShareError> {
    raise_open_file_limit();
    let config = Config {
        root_dir: sandbox::SHARE_PATH.into(),
        xattr: false,
        cache_policy: CachePolicy::Auto,
        entry_timeout: CACHE_TIMEOUT,
        attr_timeout: CACHE_TIMEOUT,
        writeback: false,
        do_import: true,
        ..Config::default()
    };
    // Opens /proc/self/fd, which the sandbox leaves no path to.
    let fs = PassthroughFs::<()>::new(config).map_err(ShareError::FileSystem)?;
    sandbox::enter(&options.source, options.read_only, &options.scratch)?;
    fs.import().map_err(ShareError::FileSystem)?;
    if let Some(pid) = options.watch_pid {
        exit_with(pid)?;
    }
    let server: Arc<SharedFs> = Arc::new(Server::new(Arc::new(fs)));
    loop {
        let connection = match accept(listener.as_raw_fd()) {
            Ok(fd) => {
                // SAFETY: accept returned a new descriptor that nothing else owns.
                unsafe { OwnedFd::from_raw_fd(fd) }
            }
            Err(nix::errno::Errno::EINTR | nix::errno::Errno::ECONNABORTED) => continue,
            Err(errno) => return Err(ShareError::Accept(errno.into())),
        };
        let _ = nix::sys::socket::setsockopt(
            &connection,
            nix::sys::socket::sockopt::SndBufForce,
            &SOCKET_BUFFER,
        );
        std::thread::scope(|scope| {
            for _ in 0..WORKERS {
                scope.spawn(|| serve_requests(&server, connection.as_raw_fd(), options.read_only));
            }
        });
    }
}

/// Serves requests on `connection` until it closes.
fn serve_requests(server: &SharedFs, connection: RawFd, read_only: bool) {
    let mut request = vec![0u8; MAX_MESSAGE];
    let mut reply = vec![0u8; MAX_MESSAGE];
    loop {
        let n = match recv(connection, &mut request, MsgFlags::empty()) {
            Ok(0) => return,
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return,
        };
        let message = &mut request[..n];
        let Ok(header) = wire::request_header(message) else {
            continue; // the engine checked it; nothing to answer to
        };
        if let Err(errno) = wire::screen_request(message, read_only) {
            if header.expects_reply() {
                let _ = send(
                    connection,
                    &wire::error_reply(header.unique, errno),
                    MsgFlags::empty(),
                );
            }
            continue;
        }
        let Ok(reader) = Reader::<()>::from_fuse_buffer(FuseBuf::new(message)) else {
            continue;
        };
        let Ok(writer) = FuseDevWriter::<()>::new(connection, &mut reply) else {
            continue;
        };
        if let Err(error) = server.handle_message(reader, writer.into(), None, None) {
            eprintln!("berth share-server: request {}: {error}", header.opcode);
        }
    }
}

/// Exits the process when `pid` exits (a thread waits on its pidfd).
fn exit_with(pid: i32) -> Result<(), ShareError> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(ShareError::Watch {
            pid,
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: the descriptor was just returned to us and nothing else owns it.
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    std::thread::spawn(move || loop {
        let mut poll = libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, alive for the call.
        let ready = unsafe { libc::poll(&mut poll, 1, -1) };
        if ready > 0 {
            std::process::exit(0);
        }
    });
    Ok(())
}

/// The passthrough file system holds a descriptor per inode the guest knows: raise the
/// soft limit to the hard one (a guest that exhausts it fails its own share only).
fn raise_open_file_limit() {
    if let Ok((_, hard)) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
    {
        let _ =
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard);
    }
}
