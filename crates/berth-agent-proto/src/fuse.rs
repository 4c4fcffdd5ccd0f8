//! The few parts of FUSE messages (`linux/fuse.h`) both ends of a share read: the header
//! sizes, which requests get no reply, and an error reply. `fuse_in_header` is `len u32
//! @0, opcode u32 @4, unique u64 @8, ...` (40 bytes); `fuse_out_header` is `len u32 @0,
//! error i32 @4, unique u64 @8` (16 bytes).

/// Bytes of `struct fuse_in_header`.
pub const IN_HEADER_LEN: usize = 40;
/// Bytes of `struct fuse_out_header`.
pub const OUT_HEADER_LEN: usize = 16;

/// Opcodes of the requests the kernel expects no reply to.
pub const FORGET: u32 = 2;
pub const INTERRUPT: u32 = 36;
pub const BATCH_FORGET: u32 = 42;

/// Whether the kernel waits for a reply to a request with `opcode`.
pub fn expects_reply(opcode: u32) -> bool {
    !matches!(opcode, FORGET | BATCH_FORGET | INTERRUPT)
}

/// A reply carrying only an error (`errno` > 0).
pub fn error_reply(unique: u64, errno: i32) -> [u8; OUT_HEADER_LEN] {
    let mut reply = [0u8; OUT_HEADER_LEN];
    reply[0..4].copy_from_slice(&(OUT_HEADER_LEN as u32).to_le_bytes());
    reply[4..8].copy_from_slice(&(-errno).to_le_bytes());
    reply[8..16].copy_from_slice(&unique.to_le_bytes());
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_replies_are_fuse_out_headers() {
        let reply = error_reply(0x0102_0304_0506_0708, 5);
        assert_eq!(u32::from_le_bytes(reply[0..4].try_into().unwrap()), 16);
        assert_eq!(i32::from_le_bytes(reply[4..8].try_into().unwrap()), -5);
        assert_eq!(
            u64::from_le_bytes(reply[8..16].try_into().unwrap()),
            0x0102_0304_0506_0708
        );
        assert!(expects_reply(1) && !expects_reply(FORGET) && !expects_reply(INTERRUPT));
    }
}
