//! The parts of the FUSE wire format (`linux/fuse.h`, protocol 7.x) that Berth checks or
//! changes itself, before fuse-backend-rs's server decodes a request:
//!
//! - every message's header: its length field must be the message's length
//!   ([`request_header`], [`reply_header`]);
//! - the requests a share refuses whatever the file system would say
//!   ([`screen_request`]): lookups of `.` and `..` (which the passthrough file system
//!   would answer, for NFS export; `..` of the root leaves the share), writes of any kind to a read-only share (`EROFS`), device
//!   nodes (`EPERM`), extended attributes being set (`EOPNOTSUPP`: `security.capability`
//!   would grant file capabilities on the host); and the setuid and setgid bits, which are
//!   cleared from the modes of files being made or changed;
//! - the `INIT` reply, whose largest write and read are lowered to
//!   [`berth_agent_proto`]'s `MAX_FUSE_IO`-sized messages ([`limit_init_reply`]).
//!
//! Layouts (little-endian, offsets in bytes): `fuse_in_header` is `len u32 @0,
//! opcode u32 @4, unique u64 @8, nodeid u64 @16, uid u32 @24, gid u32 @28, pid u32 @32`
//! (40 bytes); `fuse_out_header` is `len u32 @0, error i32 @4, unique u64 @8` (16 bytes).
//! Written by hand because these few fields are all Berth touches; fuse-backend-rs
//! decodes the rest.

pub use berth_agent_proto::fuse::{error_reply, IN_HEADER_LEN, OUT_HEADER_LEN};

/// The opcodes named here.
pub mod opcode {
    pub use berth_agent_proto::fuse::{BATCH_FORGET, FORGET, INTERRUPT};
    pub const LOOKUP: u32 = 1;
    pub const SETATTR: u32 = 4;
    pub const SYMLINK: u32 = 6;
    pub const MKNOD: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const UNLINK: u32 = 10;
    pub const RMDIR: u32 = 11;
    pub const RENAME: u32 = 12;
    pub const LINK: u32 = 13;
    pub const OPEN: u32 = 14;
    pub const WRITE: u32 = 16;
    pub const SETXATTR: u32 = 21;
    pub const REMOVEXATTR: u32 = 24;
    pub const INIT: u32 = 26;
    pub const CREATE: u32 = 35;
    pub const FALLOCATE: u32 = 43;
    pub const RENAME2: u32 = 45;
    pub const COPY_FILE_RANGE: u32 = 47;
    pub const TMPFILE: u32 = 51;
}

/// Requests the guest kernel may keep in the background (read-ahead, writes of its page
/// cache, releases), told in the `INIT` reply; the relay queues at most a fixed number.
pub const MAX_BACKGROUND: u16 = 64;

/// `FATTR_MODE` in `fuse_setattr_in.valid`.
const FATTR_MODE: u32 = 1;
/// `FUSE_BIG_WRITES` and `FUSE_MAX_PAGES` in `fuse_init_out.flags`.
const FUSE_BIG_WRITES: u32 = 1 << 5;
const FUSE_MAX_PAGES: u32 = 1 << 22;
const SETUID_SETGID: u32 = libc::S_ISUID | libc::S_ISGID;

/// Why a message was refused before anything decoded it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("a FUSE message of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("a FUSE message's header says {said} bytes, the message has {actual}")]
    LengthMismatch { said: u32, actual: usize },
}

/// What Berth reads of a request's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader {
    pub opcode: u32,
    pub unique: u64,
}

impl RequestHeader {
    /// Whether the kernel waits for a reply to this request.
    pub fn expects_reply(&self) -> bool {
        berth_agent_proto::fuse::expects_reply(self.opcode)
    }
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

fn put_u32(bytes: &mut [u8], at: usize, value: u32) {
    if let Some(slot) = bytes.get_mut(at..at + 4) {
        slot.copy_from_slice(&value.to_le_bytes());
    }
}

fn checked_len(message: &[u8], header_len: usize) -> Result<(), WireError> {
    if message.len() < header_len {
        return Err(WireError::Short(message.len()));
    }
    let said = u32_at(message, 0).expect("length checked");
    if said as usize != message.len() {
        return Err(WireError::LengthMismatch {
            said,
            actual: message.len(),
        });
    }
    Ok(())
}

/// A request's header, once its length field is checked against the message.
pub fn request_header(message: &[u8]) -> Result<RequestHeader, WireError> {
    checked_len(message, IN_HEADER_LEN)?;
    Ok(RequestHeader {
        opcode: u32_at(message, 4).expect("length checked"),
        unique: u64_at(message, 8).expect("length checked"),
    })
}

/// A reply's unique id, once its length field is checked against the message.
pub fn reply_header(message: &[u8]) -> Result<u64, WireError> {
    checked_len(message, OUT_HEADER_LEN)?;
    Ok(u64_at(message, 8).expect("length checked"))
}

/// Checks a request (whose header [`request_header`] accepted) against the share's
/// rules; clears setuid and setgid bits in place. `Err(errno)`: answer with that error
/// and do not pass the request on.
pub fn screen_request(message: &mut [u8], read_only: bool) -> Result<(), i32> {
    let Some(opcode) = u32_at(message, 4) else {
        return Err(libc::EINVAL);
    };
    let body = IN_HEADER_LEN;
    let writes = matches!(
        opcode,
        opcode::SETATTR
            | opcode::SYMLINK
            | opcode::MKNOD
            | opcode::MKDIR
            | opcode::UNLINK
            | opcode::RMDIR
            | opcode::RENAME
            | opcode::LINK
            | opcode::WRITE
            | opcode::SETXATTR
            | opcode::REMOVEXATTR
            | opcode::CREATE
            | opcode::FALLOCATE
            | opcode::RENAME2
            | opcode::COPY_FILE_RANGE
            | opcode::TMPFILE
    );
    if read_only && writes {
        return Err(libc::EROFS);
    }
    match opcode {
        // fuse-backend-rs answers `.` and `..` (for NFS export, which no guest does):
        // `..` of the share's root would be a directory outside the share.
        opcode::LOOKUP => {
            let name = message[body..].split(|b| *b == 0).next().unwrap_or(&[]);
            if name == b"." || name == b".." {
                return Err(libc::EINVAL);
            }
        }
        opcode::OPEN if read_only => {
            let flags = u32_at(message, body).ok_or(libc::EINVAL)? as i32;
            if flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0 {
                return Err(libc::EROFS);
            }
        }
        opcode::SETXATTR => return Err(libc::EOPNOTSUPP),
        opcode::MKNOD => {
            let mode = u32_at(message, body).ok_or(libc::EINVAL)?;
            let kind = mode & libc::S_IFMT;
            if kind == libc::S_IFCHR || kind == libc::S_IFBLK {
                return Err(libc::EPERM);
            }
            put_u32(message, body, mode & !SETUID_SETGID);
        }
        // fuse_create_in (CREATE, TMPFILE): flags @0, mode @4.
        opcode::CREATE | opcode::TMPFILE => {
            let mode = u32_at(message, body + 4).ok_or(libc::EINVAL)?;
            put_u32(message, body + 4, mode & !SETUID_SETGID);
        }
        // fuse_setattr_in: valid @0, mode @68.
        opcode::SETATTR => {
            let valid = u32_at(message, body).ok_or(libc::EINVAL)?;
            if valid & FATTR_MODE != 0 {
                let mode = u32_at(message, body + 68).ok_or(libc::EINVAL)?;
                put_u32(message, body + 68, mode & !SETUID_SETGID);
            }
        }
        _ => {}
    }
    Ok(())
}

/// Sets the background requests the kernel may keep in an `INIT` reply to
/// [`MAX_BACKGROUND`] (the server offers 65535), and the largest write and the pages a
/// request may carry (`FUSE_BIG_WRITES`, `FUSE_MAX_PAGES`) to `max_io` bytes. The server offers 8 KiB writes unless the file system asks for big ones, and
/// 1 MiB when it does: too little for speed, too much for a frame. `fuse_init_out`
/// follows the header: `flags u32 @12, max_background u16 @16, congestion_threshold u16
/// @18, max_write u32 @20, max_pages u16 @28`.
pub fn limit_init_reply(reply: &mut [u8], max_io: u32) {
    let body = OUT_HEADER_LEN;
    if reply.len() < body + 24 {
        return; // an error reply, or a pre-7.23 layout without these fields
    }
    let flags = u32_at(reply, body + 12).unwrap_or(0);
    reply[body + 16..body + 18].copy_from_slice(&MAX_BACKGROUND.to_le_bytes());
    reply[body + 18..body + 20].copy_from_slice(&(MAX_BACKGROUND / 4 * 3).to_le_bytes());
    put_u32(reply, body + 20, max_io);
    // The kernel offers both flags in every INIT of this protocol (7.28 on): without
    // BIG_WRITES it writes a page per request, without MAX_PAGES at most 32 pages.
    if reply.len() >= body + 30 {
        put_u32(reply, body + 12, flags | FUSE_BIG_WRITES | FUSE_MAX_PAGES);
        let pages = (max_io / 4096) as u16;
        reply[body + 28..body + 30].copy_from_slice(&pages.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request: header with `opcode`, then `body`.
    fn request(opcode: u32, body: &[u8]) -> Vec<u8> {
        let mut message = vec![0u8; IN_HEADER_LEN];
        message.extend_from_slice(body);
        let len = message.len() as u32;
        put_u32(&mut message, 0, len);
        put_u32(&mut message, 4, opcode);
        message[8..16].copy_from_slice(&77u64.to_le_bytes());
        message
    }

    fn words(values: &[(usize, u32)], len: usize) -> Vec<u8> {
        let mut body = vec![0u8; len];
        for (at, value) in values {
            put_u32(&mut body, *at, *value);
        }
        body
    }

    #[test]
    fn headers_must_state_the_message_length() {
        let good = request(opcode::OPEN, &[0u8; 8]);
        assert_eq!(
            request_header(&good).unwrap(),
            RequestHeader {
                opcode: opcode::OPEN,
                unique: 77
            }
        );
        let mut lying = good.clone();
        put_u32(&mut lying, 0, 4096);
        assert!(matches!(
            request_header(&lying),
            Err(WireError::LengthMismatch { said: 4096, .. })
        ));
        assert_eq!(request_header(&good[..20]), Err(WireError::Short(20)));
        assert_eq!(reply_header(&error_reply(9, libc::EIO)), Ok(9));
        assert_eq!(reply_header(&[1, 2, 3]), Err(WireError::Short(3)));
    }

    #[test]
    fn read_only_shares_refuse_every_write() {
        for op in [
            opcode::WRITE,
            opcode::MKDIR,
            opcode::UNLINK,
            opcode::RENAME2,
            opcode::LINK,
            opcode::SETATTR,
            opcode::CREATE,
            opcode::SYMLINK,
        ] {
            let mut message = request(op, &[0u8; 96]);
            assert_eq!(screen_request(&mut message, true), Err(libc::EROFS), "{op}");
            assert_eq!(screen_request(&mut message, false), Ok(()), "{op}");
        }
        let mut for_writing = request(opcode::OPEN, &words(&[(0, libc::O_RDWR as u32)], 8));
        assert_eq!(screen_request(&mut for_writing, true), Err(libc::EROFS));
        let truncating = (libc::O_RDONLY | libc::O_TRUNC) as u32;
        let mut truncate = request(opcode::OPEN, &words(&[(0, truncating)], 8));
        assert_eq!(screen_request(&mut truncate, true), Err(libc::EROFS));
        let mut for_reading = request(opcode::OPEN, &words(&[(0, libc::O_RDONLY as u32)], 8));
        assert_eq!(screen_request(&mut for_reading, true), Ok(()));
    }

    #[test]
    fn device_nodes_and_xattrs_are_refused_and_setuid_bits_cleared() {
        let device = libc::S_IFBLK | 0o600;
        let mut block = request(opcode::MKNOD, &words(&[(0, device)], 16));
        assert_eq!(screen_request(&mut block, false), Err(libc::EPERM));
        let mut fifo = request(opcode::MKNOD, &words(&[(0, libc::S_IFIFO | 0o6644)], 16));
        assert_eq!(screen_request(&mut fifo, false), Ok(()));
        assert_eq!(u32_at(&fifo, IN_HEADER_LEN), Some(libc::S_IFIFO | 0o644));

        let mut xattr = request(opcode::SETXATTR, &[0u8; 32]);
        assert_eq!(screen_request(&mut xattr, false), Err(libc::EOPNOTSUPP));

        let mut create = request(opcode::CREATE, &words(&[(4, 0o104755)], 16));
        assert_eq!(screen_request(&mut create, false), Ok(()));
        assert_eq!(u32_at(&create, IN_HEADER_LEN + 4), Some(0o100755));

        let mut chmod = request(
            opcode::SETATTR,
            &words(&[(0, FATTR_MODE), (68, 0o6755)], 88),
        );
        assert_eq!(screen_request(&mut chmod, false), Ok(()));
        assert_eq!(u32_at(&chmod, IN_HEADER_LEN + 68), Some(0o755));

        // A truncated body is refused, not read past.
        let mut short = request(opcode::SETATTR, &words(&[(0, FATTR_MODE)], 8));
        assert_eq!(screen_request(&mut short, false), Err(libc::EINVAL));
    }

    #[test]
    fn dot_and_dot_dot_lookups_are_refused() {
        for name in [&b".\0"[..], b"..\0", b".."] {
            let mut lookup = request(opcode::LOOKUP, name);
            assert_eq!(screen_request(&mut lookup, false), Err(libc::EINVAL));
        }
        let mut fine = request(opcode::LOOKUP, b"..hidden\0");
        assert_eq!(screen_request(&mut fine, false), Ok(()));
    }

    #[test]
    fn init_replies_are_limited() {
        let mut reply = vec![0u8; OUT_HEADER_LEN + 64];
        put_u32(&mut reply, OUT_HEADER_LEN + 12, FUSE_MAX_PAGES);
        put_u32(&mut reply, OUT_HEADER_LEN + 20, 1 << 20);
        reply[OUT_HEADER_LEN + 28..OUT_HEADER_LEN + 30].copy_from_slice(&256u16.to_le_bytes());
        limit_init_reply(&mut reply, 128 * 1024);
        assert_eq!(u32_at(&reply, OUT_HEADER_LEN + 20), Some(128 * 1024));
        assert_eq!(
            &reply[OUT_HEADER_LEN + 28..OUT_HEADER_LEN + 30],
            &32u16.to_le_bytes()
        );
        let mut small = vec![0u8; OUT_HEADER_LEN + 64];
        put_u32(&mut small, OUT_HEADER_LEN + 20, 8112);
        limit_init_reply(&mut small, 128 * 1024);
        assert_eq!(u32_at(&small, OUT_HEADER_LEN + 20), Some(128 * 1024));
        assert_eq!(
            u32_at(&small, OUT_HEADER_LEN + 12),
            Some(FUSE_BIG_WRITES | FUSE_MAX_PAGES)
        );
        let mut error = error_reply(1, libc::EIO).to_vec();
        limit_init_reply(&mut error, 4096);
        assert_eq!(error, error_reply(1, libc::EIO).to_vec());
    }
}
