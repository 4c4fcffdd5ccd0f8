//! A tap device opened by name (the engine creates it, persistent and with `vnet_hdr`,
//! in the VM's network namespace, which the VMM process runs in).
//!
//! The tap is opened with `IFF_VNET_HDR` and a 12-byte header, the size of virtio 1.x's
//! `virtio_net_hdr`: frames pass between the tap and the virtqueues with their header
//! as they are. No offloads are enabled on the tap, so it never hands over a segmented
//! (GSO) frame the guest did not ask for.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

/// `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// `_IOW('T', 208, unsigned int)`.
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
/// `_IOW('T', 216, int)`.
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
/// Bytes of the virtio-net header on every frame.
pub const VNET_HEADER_SIZE: usize = 12;

#[repr(C)]
struct InterfaceRequest {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _padding: [u8; 22],
}

/// An open tap.
pub struct Tap {
    pub file: File,
}

impl Tap {
    /// Attaches to the existing tap `name`, non-blocking.
    pub fn open(name: &str) -> io::Result<Self> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad tap name {name:?}"),
            ));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")?;
        let mut request = InterfaceRequest {
            name: [0; libc::IFNAMSIZ],
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
            _padding: [0; 22],
        };
        for (slot, byte) in request.name.iter_mut().zip(name.bytes()) {
            *slot = byte as libc::c_char;
        }
        // SAFETY: TUNSETIFF reads an ifreq; `request` is one, alive for the call.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut request) } < 0 {
            let error = io::Error::last_os_error();
            return Err(io::Error::new(
                error.kind(),
                format!("attaching to tap {name}: {error}"),
            ));
        }
        let header_size: libc::c_int = VNET_HEADER_SIZE as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which is valid.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETVNETHDRSZ, &header_size) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: TUNSETOFFLOAD takes its flags by value; no pointer is passed.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETOFFLOAD, 0 as libc::c_uint) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { file })
    }
}
