//! What a container's start does to its tap, done in-process with the kernel's ioctls
//! from a thread inside the namespace ([`Namespace::run`]): whether a link exists, make a
//! persistent tap, remove an unused one, rename one, and make one a bridge's port and
//! bring it up.
//!
//! Why not `ip`: each run of it forks the daemon (a few ms apiece on these machines,
//! several times a start, and far more in the KVM lab, where every host instruction is
//! emulated), which was a measurable part of a clone's start. Why by hand: a handful of
//! ioctls is all it takes, and no netlink library makes a tap (taps are the tun driver's
//! own ioctls; rtnetlink also wants an async runtime per namespace). Deleting a link that
//! is not an unused tap still runs `ip link delete` (see `links`).
//!
//! Every function here runs on the namespace's thread and takes the names already
//! checked by `links::check_name`.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

/// `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// `_IOW('T', 203, int)`.
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
/// The VMs read and write frames with virtio-net's header (`ip tuntap add ... vnet_hdr`).
const IFF_VNET_HDR: libc::c_short = 0x4000;
/// `linux/sockios.h`: add an interface to a bridge (`ifr_name` the bridge, `ifr_ifindex`
/// the port).
const SIOCBRADDIF: libc::c_ulong = 0x89a2;

/// An `ifreq` naming `name`, everything else zero.
fn request(name: &str) -> io::Result<libc::ifreq> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad interface name {name:?}"),
        ));
    }
    // SAFETY: ifreq is plain old data (a name and a union of plain fields); all zeroes
    // is a valid value.
    let mut ifreq: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in ifreq.ifr_name.iter_mut().zip(name.bytes()) {
        *slot = byte as libc::c_char;
    }
    Ok(ifreq)
}

fn ioctl(fd: &impl AsRawFd, code: libc::c_ulong, ifreq: &mut libc::ifreq) -> io::Result<()> {
    // SAFETY: every request used here reads or writes one ifreq through the pointer,
    // which is valid and exclusive for the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), code, ifreq as *mut libc::ifreq) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A datagram socket for interface ioctls, in the calling thread's namespace.
fn control_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket takes no pointers; the descriptor it returns is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The interface index of `name`, or `None` if there is no such link.
pub(crate) fn link_index(name: &str) -> io::Result<Option<i32>> {
    let socket = control_socket()?;
    let mut ifreq = request(name)?;
    match ioctl(&socket, libc::SIOCGIFINDEX, &mut ifreq) {
        // SAFETY: SIOCGIFINDEX filled the union's index.
        Ok(()) => Ok(Some(unsafe { ifreq.ifr_ifru.ifru_ifindex })),
        Err(error) if error.raw_os_error() == Some(libc::ENODEV) => Ok(None),
        Err(error) => Err(error),
    }
}

/// Opens the tun driver and attaches to (or makes) the tap `name`.
fn attach_to_tap(name: &str) -> io::Result<std::fs::File> {
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    let mut ifreq = request(name)?;
    ifreq.ifr_ifru.ifru_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
    ioctl(&tun, TUNSETIFF, &mut ifreq)?;
    Ok(tun)
}

fn set_persistent(tun: &std::fs::File, persistent: bool) -> io::Result<()> {
    // SAFETY: TUNSETPERSIST takes its flag by value; no pointer is passed.
    if unsafe {
        libc::ioctl(
            tun.as_raw_fd(),
            TUNSETPERSIST,
            libc::c_int::from(persistent),
        )
    } < 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes the persistent tap `name` (no link of that name may exist), down and attached
/// to nothing: a VM opens it by name later. As `ip tuntap add dev NAME mode tap vnet_hdr`.
pub(crate) fn make_persistent_tap(name: &str) -> io::Result<()> {
    let tun = attach_to_tap(name)?;
    set_persistent(&tun, true)
    // Closing `tun` leaves the tap: it is persistent.
}

/// Removes the tap `name` if no VM has it open: attached to, made non-persistent, and
/// gone when the descriptor closes. `Ok(false)`: it is open elsewhere or is no tap, and
/// is still there.
pub(crate) fn remove_unused_tap(name: &str) -> io::Result<bool> {
    let tun = match attach_to_tap(name) {
        Ok(tun) => tun,
        // EBUSY: a VM has it open; EINVAL: a link of another kind.
        Err(error) if matches!(error.raw_os_error(), Some(libc::EBUSY | libc::EINVAL)) => {
            return Ok(false)
        }
        Err(error) => return Err(error),
    };
    set_persistent(&tun, false)?;
    // The tun driver unregisters a non-persistent tap as its last descriptor closes,
    // within this close.
    drop(tun);
    Ok(true)
}

/// Renames the link `from` (down) to `to` (no link of that name may exist).
pub(crate) fn rename(from: &str, to: &str) -> io::Result<()> {
    let socket = control_socket()?;
    let mut ifreq = request(from)?;
    ifreq.ifr_ifru.ifru_newname = request(to)?.ifr_name;
    ioctl(&socket, libc::SIOCSIFNAME, &mut ifreq)
}

/// Makes `port` a port of `bridge` and brings it up, as `ip link set dev PORT master
/// BRIDGE up`. An error of `EBUSY` means the port is some bridge's port already.
pub(crate) fn attach_and_bring_up(port: &str, bridge: &str) -> io::Result<()> {
    let socket = control_socket()?;
    let index = link_index(port)?.ok_or_else(|| io::Error::from_raw_os_error(libc::ENODEV))?;
    let mut ifreq = request(bridge)?;
    ifreq.ifr_ifru.ifru_ifindex = index;
    ioctl(&socket, SIOCBRADDIF, &mut ifreq)?;
    let mut ifreq = request(port)?;
    ioctl(&socket, libc::SIOCGIFFLAGS, &mut ifreq)?;
    // SAFETY: SIOCGIFFLAGS filled the union's flags.
    let flags = unsafe { ifreq.ifr_ifru.ifru_flags };
    ifreq.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    ioctl(&socket, libc::SIOCSIFFLAGS, &mut ifreq)
}

/// The names of the namespace's links (`if_nameindex`, which asks the kernel over
/// netlink from this thread's namespace).
pub(crate) fn link_names() -> io::Result<Vec<String>> {
    // SAFETY: if_nameindex takes no arguments; its result is freed below.
    let list = unsafe { libc::if_nameindex() };
    if list.is_null() {
        return Err(io::Error::last_os_error());
    }
    let mut names = Vec::new();
    let mut entry = list;
    // SAFETY: the array ends with an entry whose index is 0 and name null; every
    // entry before it has a NUL-terminated name; the array is freed once, after the
    // last read.
    unsafe {
        while (*entry).if_index != 0 && !(*entry).if_name.is_null() {
            names.push(
                std::ffi::CStr::from_ptr((*entry).if_name)
                    .to_string_lossy()
                    .into_owned(),
            );
            entry = entry.add(1);
        }
        libc::if_freenameindex(list);
    }
    Ok(names)
}
