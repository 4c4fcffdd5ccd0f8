//! A hostile guest against the host's file server: `berth share-server`, started as the
//! daemon starts it, is sent FUSE requests that a guest kernel would never make (names
//! with `..` and `/`, symlinks out of the share opened as files, forged node ids and file
//! handles, device nodes, writes to a read-only share). Each must fail; nothing outside
//! the share may be read, and nothing may be written to a read-only one.

mod common;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

const BERTH: &str = env!("CARGO_BIN_EXE_berth");
const SECRET: &[u8] = b"host secret, outside the share\n";

const LOOKUP: u32 = 1;
const GETATTR: u32 = 3;
const READLINK: u32 = 5;
const MKNOD: u32 = 8;
const LINK: u32 = 13;
const OPEN: u32 = 14;
const READ: u32 = 15;
const INIT: u32 = 26;
const CREATE: u32 = 35;

/// A connection to a share server, speaking raw FUSE.
struct Guest {
    socket: OwnedFd,
    next_unique: u64,
    server: Child,
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// A reply: the error (0 or a negative errno) and the body.
struct Reply {
    error: i32,
    body: Vec<u8>,
}

impl Reply {
    fn u64_at(&self, at: usize) -> u64 {
        u64::from_le_bytes(self.body[at..at + 8].try_into().unwrap())
    }
}

fn seqpacket() -> OwnedFd {
    // SAFETY: socket takes no pointers; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: a new descriptor nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn address(path: &Path) -> libc::sockaddr_un {
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
    let mut address: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    address.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (slot, byte) in address
        .sun_path
        .iter_mut()
        .zip(path.to_str().unwrap().bytes())
    {
        *slot = byte as libc::c_char;
    }
    address
}

impl Guest {
    /// Starts a server for `source` and connects to it as the engine would.
    fn connect(work: &Path, source: &Path, read_only: bool) -> Guest {
        let socket_path = work.join(if read_only { "ro.sock" } else { "rw.sock" });
        let scratch = work.join(if read_only {
            "ro-scratch"
        } else {
            "rw-scratch"
        });
        std::fs::create_dir_all(&scratch).unwrap();
        let listener = seqpacket();
        let addr = address(&socket_path);
        let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
        // SAFETY: addr is a valid sockaddr_un of `len` bytes.
        let bound = unsafe {
            libc::bind(
                listener.as_raw_fd(),
                &addr as *const _ as *const libc::sockaddr,
                len,
            )
        };
        assert_eq!(bound, 0);
        // SAFETY: no pointers.
        assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 4) }, 0);
        let mut command = Command::new(BERTH);
        command
            .args(["share-server", "--source"])
            .arg(source)
            .arg("--scratch")
            .arg(&scratch)
            .arg("--watch-pid")
            .arg(std::process::id().to_string())
            .stdin(Stdio::from(listener));
        if read_only {
            command.arg("--read-only");
        }
        let server = command.spawn().unwrap();
        let socket = seqpacket();
        // SAFETY: addr is a valid sockaddr_un of `len` bytes.
        let connected = unsafe {
            libc::connect(
                socket.as_raw_fd(),
                &addr as *const _ as *const libc::sockaddr,
                len,
            )
        };
        assert_eq!(connected, 0, "{}", std::io::Error::last_os_error());
        let mut guest = Guest {
            socket,
            next_unique: 1,
            server,
        };
        // FUSE 7.31: no extended INIT.
        let mut init = Vec::new();
        for word in [7u32, 31, 128 * 1024, 0] {
            init.extend_from_slice(&word.to_le_bytes());
        }
        let reply = guest.request(INIT, 0, &init);
        assert_eq!(reply.error, 0, "INIT failed");
        guest
    }

    fn request(&mut self, opcode: u32, nodeid: u64, body: &[u8]) -> Reply {
        let unique = self.next_unique;
        self.next_unique += 1;
        let mut message = Vec::new();
        message.extend_from_slice(&((40 + body.len()) as u32).to_le_bytes());
        message.extend_from_slice(&opcode.to_le_bytes());
        message.extend_from_slice(&unique.to_le_bytes());
        message.extend_from_slice(&nodeid.to_le_bytes());
        message.extend_from_slice(&[0u8; 16]); // uid, gid, pid: root; extlen, padding
        message.extend_from_slice(body);
        // SAFETY: a valid buffer of its length.
        let sent = unsafe {
            libc::send(
                self.socket.as_raw_fd(),
                message.as_ptr().cast(),
                message.len(),
                0,
            )
        };
        assert_eq!(sent as usize, message.len());
        let mut buffer = vec![0u8; 256 * 1024];
        // SAFETY: a valid buffer of its length.
        let n = unsafe {
            libc::recv(
                self.socket.as_raw_fd(),
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                0,
            )
        };
        assert!(n >= 16, "no reply to opcode {opcode}");
        let n = n as usize;
        assert_eq!(
            u32::from_le_bytes(buffer[0..4].try_into().unwrap()) as usize,
            n
        );
        assert_eq!(
            u64::from_le_bytes(buffer[8..16].try_into().unwrap()),
            unique
        );
        Reply {
            error: i32::from_le_bytes(buffer[4..8].try_into().unwrap()),
            body: buffer[16..n].to_vec(),
        }
    }

    fn lookup(&mut self, parent: u64, name: &str) -> Reply {
        let mut body = name.as_bytes().to_vec();
        body.push(0);
        self.request(LOOKUP, parent, &body)
    }

    /// Opens `nodeid` for reading and reads it; `Err(errno)` where either fails.
    fn read_file(&mut self, nodeid: u64) -> Result<Vec<u8>, i32> {
        let opened = self.request(OPEN, nodeid, &[0u8; 8]);
        if opened.error != 0 {
            return Err(opened.error);
        }
        let fh = opened.u64_at(0);
        let mut read = Vec::new();
        read.extend_from_slice(&fh.to_le_bytes());
        read.extend_from_slice(&0u64.to_le_bytes()); // offset
        read.extend_from_slice(&4096u32.to_le_bytes());
        read.extend_from_slice(&[0u8; 20]); // read_flags, lock_owner, flags, padding
        let data = self.request(READ, nodeid, &read);
        if data.error != 0 {
            return Err(data.error);
        }
        Ok(data.body)
    }
}

/// A request body: little-endian words, then a NUL-terminated name if any.
fn body(words: &[u32], name: Option<&str>) -> Vec<u8> {
    let mut bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    if let Some(name) = name {
        bytes.extend_from_slice(name.as_bytes());
        bytes.push(0);
    }
    bytes
}

/// `fuse_create_in` for a new regular file of `mode`, opened for writing.
fn create_body(mode: u32, name: &str) -> Vec<u8> {
    let flags = (libc::O_WRONLY | libc::O_CREAT) as u32;
    body(&[flags, libc::S_IFREG | mode, 0, 0], Some(name))
}

/// `work/outside/secret`, and `work/share` with a file, a directory and symlinks out.
fn layout(name: &str) -> (PathBuf, PathBuf) {
    let work = common::scratch().join(name);
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(work.join("outside")).unwrap();
    std::fs::write(work.join("outside/secret"), SECRET).unwrap();
    let share = work.join("share");
    std::fs::create_dir_all(share.join("dir")).unwrap();
    std::fs::write(share.join("file"), b"shared\n").unwrap();
    std::os::unix::fs::symlink("../outside/secret", share.join("relative-out")).unwrap();
    std::os::unix::fs::symlink(work.join("outside/secret"), share.join("absolute-out")).unwrap();
    (work, share)
}

#[test]
fn names_symlinks_and_forged_ids_never_leave_the_share() {
    let (work, share) = layout("hostile-rw");
    let mut guest = Guest::connect(&work, &share, false);

    // The share itself works.
    let file = guest.lookup(1, "file");
    assert_eq!(file.error, 0);
    assert_eq!(guest.read_file(file.u64_at(0)).unwrap(), b"shared\n");

    // Names that climb or carry a path are refused.
    for name in [
        "..",
        "../outside",
        "dir/../../outside/secret",
        "/etc/passwd",
        ".",
    ] {
        let reply = guest.lookup(1, name);
        assert_ne!(reply.error, 0, "lookup of {name:?} succeeded");
    }
    let dir = guest.lookup(1, "dir");
    assert_eq!(dir.error, 0);
    assert_ne!(guest.lookup(dir.u64_at(0), "..").error, 0);

    // Symlinks out of the share are links: read as links, never opened through.
    for name in ["relative-out", "absolute-out"] {
        let link = guest.lookup(1, name);
        assert_eq!(link.error, 0, "{name}");
        let read = guest.read_file(link.u64_at(0));
        assert!(
            read.as_ref().map_or(true, |data| data != SECRET),
            "{name}: read the host's secret through a symlink"
        );
        assert_eq!(guest.request(READLINK, link.u64_at(0), &[]).error, 0);
    }

    // Forged node ids and file handles.
    assert_ne!(guest.request(GETATTR, 0xdead_beef, &[0u8; 16]).error, 0);
    let mut forged_read = Vec::new();
    forged_read.extend_from_slice(&0x4242u64.to_le_bytes());
    forged_read.extend_from_slice(&[0u8; 32]);
    assert_ne!(guest.request(READ, file.u64_at(0), &forged_read).error, 0);
    let mut link = 0xdead_beefu64.to_le_bytes().to_vec();
    link.extend_from_slice(b"stolen\0");
    assert_ne!(guest.request(LINK, 1, &link).error, 0);
    assert!(!share.join("stolen").exists());

    // Device nodes are refused; a FIFO is not.
    let mknod = body(&[libc::S_IFBLK | 0o600, 0x0800, 0, 0], Some("disk"));
    assert_eq!(guest.request(MKNOD, 1, &mknod).error, -libc::EPERM);
    assert!(!share.join("disk").exists());

    // A set-uid file is made without its set-uid bit.
    let create = create_body(0o4755, "suid");
    assert_eq!(guest.request(CREATE, 1, &create).error, 0);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(share.join("suid")).unwrap().permissions(),
    );
    assert_eq!(mode & 0o7777, 0o755);

    // Nothing outside the share changed.
    assert_eq!(std::fs::read(work.join("outside/secret")).unwrap(), SECRET);
    assert_eq!(std::fs::read_dir(work.join("outside")).unwrap().count(), 1);
}

#[test]
fn a_read_only_share_refuses_writes_on_the_host_side() {
    let (work, share) = layout("hostile-ro");
    let mut guest = Guest::connect(&work, &share, true);
    let file = guest.lookup(1, "file");
    assert_eq!(file.error, 0);
    assert_eq!(guest.read_file(file.u64_at(0)).unwrap(), b"shared\n");
    // Opening for writing, creating: refused whatever the guest's mount flags say.
    let open_rw = body(&[libc::O_RDWR as u32, 0], None);
    assert_eq!(
        guest.request(OPEN, file.u64_at(0), &open_rw).error,
        -libc::EROFS
    );
    let create = create_body(0o644, "new");
    assert_eq!(guest.request(CREATE, 1, &create).error, -libc::EROFS);
    assert!(!share.join("new").exists());
    assert_eq!(std::fs::read(share.join("file")).unwrap(), b"shared\n");
}
