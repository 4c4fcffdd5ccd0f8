//! Shared directories and files: FUSE file systems whose server is on the host.
//!
//! For each [`ShareMount`] the agent opens `/dev/fuse`, mounts a `fuse` file system on
//! that connection inside the container root (`default_permissions`: this kernel checks
//! modes and owners, as for a local file system; `allow_other`: every user of the
//! container may use it) and starts a thread that reads the kernel's requests and sends
//! each one to the host as one [`FrameKind::Fuse`] frame on the share's stream. The port
//! reader hands the host's replies to [`Shares::deliver`], which writes each to the
//! connection it belongs to.
//!
//! The agent keeps the unique ids of the requests still waiting for their reply. If the
//! engine goes away and a new one reattaches, those replies may never come (the old
//! engine may have dropped them): [`Shares::fail_outstanding`] answers each with `EIO`,
//! so that no process in the container waits forever on a share.
//!
//! A volume's share that is empty receives the image's content at the mount point first
//! (as Docker copies it into a new volume): mounted at a staging path, filled, then moved
//! into place.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use berth_agent_proto::fuse::{error_reply, expects_reply, IN_HEADER_LEN, OUT_HEADER_LEN};
use berth_agent_proto::{FrameKind, ShareMount, MAX_FUSE_MESSAGE, SHARE_STREAM_BASE};
use nix::mount::MsFlags;

use crate::channel::Channel;

/// One mounted share.
struct Share {
    connection: File,
    /// Unique ids of requests sent to the host and not answered yet.
    outstanding: Mutex<HashSet<u64>>,
}

/// The container's shares, by stream id.
#[derive(Clone, Default)]
pub struct Shares {
    by_stream: Arc<Mutex<HashMap<u32, Arc<Share>>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

impl Shares {
    /// Writes the host's reply to the share it belongs to. A reply for an unknown share
    /// or a request the kernel no longer waits for is dropped.
    pub fn deliver(&self, stream: u32, reply: &[u8]) {
        let Some(share) = lock(&self.by_stream).get(&stream).cloned() else {
            return;
        };
        if reply.len() < OUT_HEADER_LEN {
            return;
        }
        let unique = u64::from_le_bytes(reply[8..16].try_into().expect("8 bytes"));
        lock(&share.outstanding).remove(&unique);
        // ENOENT: the request was interrupted meanwhile; nothing else to do.
        let _ = (&share.connection).write(reply);
    }

    /// Answers every request still waiting for the host with `EIO` (see the module docs).
    pub fn fail_outstanding(&self) {
        let shares: Vec<Arc<Share>> = lock(&self.by_stream).values().cloned().collect();
        for share in shares {
            let waiting: Vec<u64> = lock(&share.outstanding).drain().collect();
            for unique in waiting {
                let _ = (&share.connection).write(&error_reply(unique, libc::EIO));
            }
        }
    }

    /// Mounts each share in the container root, in order.
    pub fn mount_all(&self, shares: &[ShareMount], channel: &Channel) -> io::Result<()> {
        self.mount_all_in(crate::boot::CONTAINER_ROOT, shares, channel)
    }

    /// Mounts each share in the container whose root is `root` (the guest's path), in
    /// order.
    pub fn mount_all_in(
        &self,
        root: &str,
        shares: &[ShareMount],
        channel: &Channel,
    ) -> io::Result<()> {
        for share in shares {
            self.mount_one(root, share, channel)?;
        }
        Ok(())
    }

    /// Forgets the shares on `streams` (their file systems were unmounted): their
    /// relays end when the kernel ends their connections, and late replies are dropped.
    pub fn forget(&self, streams: &[u32]) {
        let mut by_stream = lock(&self.by_stream);
        for stream in streams {
            by_stream.remove(stream);
        }
    }

    fn mount_one(&self, root: &str, spec: &ShareMount, channel: &Channel) -> io::Result<()> {
        if spec.stream < SHARE_STREAM_BASE || lock(&self.by_stream).contains_key(&spec.stream) {
            return Err(invalid(format!("invalid share stream {}", spec.stream)));
        }
        let target = crate::volumes::mount_point_in(root, &spec.target, spec.file)?;
        let connection = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open("/dev/fuse")
            .map_err(|e| io::Error::new(e.kind(), format!("opening /dev/fuse: {e}")))?;
        let share = Arc::new(Share {
            connection,
            outstanding: Mutex::default(),
        });
        let root_mode = if spec.file { "100000" } else { "40000" };
        let data = format!(
            "fd={},rootmode={root_mode},user_id=0,group_id=0,allow_other,default_permissions",
            share.connection.as_raw_fd()
        );
        let mut flags = MsFlags::empty();
        if spec.read_only {
            flags |= MsFlags::MS_RDONLY;
        }
        // A new volume's content is copied in at a staging path, then moved into place.
        let staging = (spec.populate && !spec.read_only && !spec.file)
            .then(|| format!("/run/berth-share-{}", spec.stream - SHARE_STREAM_BASE));
        let mount_at = match &staging {
            Some(path) => {
                fs::create_dir_all(path)?;
                path.clone()
            }
            None => target.display().to_string(),
        };
        nix::mount::mount(
            Some("berth-share"),
            mount_at.as_str(),
            Some("fuse"),
            flags,
            Some(data.as_str()),
        )
        .map_err(|e| io::Error::other(format!("mounting the share at {}: {e}", spec.target)))?;
        lock(&self.by_stream).insert(spec.stream, share.clone());
        {
            let (share, channel, stream) = (share.clone(), channel.clone(), spec.stream);
            std::thread::spawn(move || relay_requests(&share, &channel, stream));
        }
        if let Some(staging) = staging {
            let filled = fill_if_empty(Path::new(&staging), &target);
            let moved = nix::mount::mount(
                Some(staging.as_str()),
                &target,
                None::<&str>,
                MsFlags::MS_MOVE,
                None::<&str>,
            )
            .map_err(|e| io::Error::other(format!("moving the share to {}: {e}", spec.target)));
            filled?;
            moved?;
        }
        Ok(())
    }
}

/// A new (empty) volume receives what the image has at its mount point.
fn fill_if_empty(share_root: &Path, image_content: &Path) -> io::Result<()> {
    if fs::read_dir(share_root)?.next().is_some() {
        return Ok(());
    }
    if image_content.is_dir() {
        crate::volumes::copy_tree(image_content, share_root)?;
    }
    Ok(())
}

/// Carries the kernel's requests on one share to the host until it is unmounted.
fn relay_requests(share: &Share, channel: &Channel, stream: u32) {
    let mut buffer = vec![0u8; MAX_FUSE_MESSAGE];
    loop {
        let n = match (&share.connection).read(&mut buffer) {
            Ok(n) => n,
            Err(error) => match error.raw_os_error() {
                Some(libc::EINTR) | Some(libc::ENOENT) | Some(libc::EAGAIN) => continue,
                // ENODEV: unmounted; anything else: the connection is unusable.
                _ => return,
            },
        };
        if n < IN_HEADER_LEN {
            continue;
        }
        let opcode = u32::from_le_bytes(buffer[4..8].try_into().expect("4 bytes"));
        let unique = u64::from_le_bytes(buffer[8..16].try_into().expect("8 bytes"));
        if expects_reply(opcode) {
            lock(&share.outstanding).insert(unique);
        }
        if channel
            .send_message(stream, FrameKind::Fuse, &buffer[..n])
            .is_err()
        {
            // No host right now: the request waits in `outstanding` for a reattach.
            continue;
        }
    }
}
