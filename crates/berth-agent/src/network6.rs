//! IPv6 on an interface, for networks with `--ipv6`: turned on without duplicate address
//! detection, router advertisements or address autoconfiguration (the engine hands out
//! the addresses, on a network of Berth's own), then the address and the default route,
//! with the classic ioctls on an `AF_INET6` socket (as `network` does for IPv4, and for
//! the same reason: no netlink message building in a small static agent).

use std::fs;
use std::io;
use std::net::Ipv6Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `struct in6_ifreq` from <linux/ipv6.h>.
#[repr(C)]
struct In6Ifreq {
    address: libc::in6_addr,
    prefix_len: u32,
    ifindex: libc::c_int,
}

/// `struct in6_rtmsg` from <linux/ipv6_route.h>.
#[repr(C)]
struct In6Rtmsg {
    destination: libc::in6_addr,
    source: libc::in6_addr,
    gateway: libc::in6_addr,
    route_type: u32,
    destination_len: u16,
    source_len: u16,
    metric: u32,
    info: libc::c_ulong,
    flags: u32,
    ifindex: libc::c_int,
}

const RTF_UP: u32 = 0x0001;
const RTF_GATEWAY: u32 = 0x0002;

fn in6(address: Ipv6Addr) -> libc::in6_addr {
    libc::in6_addr {
        s6_addr: address.octets(),
    }
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what)
}

/// Runs `op` on `argument`; what is there already (EEXIST) is fine.
///
/// # Safety
/// `op` must read or write exactly one `T` through its argument.
unsafe fn ioctl<T>(
    socket: &OwnedFd,
    op: libc::c_ulong,
    argument: &mut T,
    what: &str,
) -> io::Result<()> {
    // SAFETY: the caller vouches that `op` takes one `T`, which lives across the call.
    if unsafe { libc::ioctl(socket.as_raw_fd(), op as _, argument as *mut T) } < 0 {
        let error = io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EEXIST) {
            return Err(io::Error::new(error.kind(), format!("{what}: {error}")));
        }
    }
    Ok(())
}

/// Gives interface `name` the IPv6 address `cidr` (`addr/prefix`) and, with `gateway`,
/// the default IPv6 route through it.
pub fn configure(name: &str, cidr: &str, gateway: Option<&str>) -> io::Result<()> {
    let (address, prefix) = cidr
        .split_once('/')
        .ok_or_else(|| invalid(format!("bad IPv6 address {cidr:?}")))?;
    let address: Ipv6Addr = address
        .parse()
        .map_err(|_| invalid(format!("bad IPv6 address {cidr:?}")))?;
    let prefix: u32 = prefix
        .parse()
        .ok()
        .filter(|p| *p <= 128)
        .ok_or_else(|| invalid(format!("bad IPv6 prefix in {cidr:?}")))?;
    let gateway: Option<Ipv6Addr> = gateway
        .map(|g| {
            g.parse()
                .map_err(|_| invalid(format!("bad IPv6 gateway {g:?}")))
        })
        .transpose()?;
    if name.is_empty() || name.contains('/') || name.contains("..") {
        return Err(invalid(format!("bad interface name {name:?}")));
    }
    for (key, value) in [
        ("accept_dad", "0"),
        ("accept_ra", "0"),
        ("autoconf", "0"),
        ("disable_ipv6", "0"),
    ] {
        fs::write(format!("/proc/sys/net/ipv6/conf/{name}/{key}"), value)
            .map_err(|e| io::Error::new(e.kind(), format!("setting IPv6 {key} on {name}: {e}")))?;
    }
    let ifindex: libc::c_int = fs::read_to_string(format!("/sys/class/net/{name}/ifindex"))?
        .trim()
        .parse()
        .map_err(|_| invalid(format!("no index for {name}")))?;
    // SAFETY: socket takes no pointers; the descriptor is owned by the result.
    let fd = unsafe { libc::socket(libc::AF_INET6, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket and is owned by nobody else.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut request = In6Ifreq {
        address: in6(address),
        prefix_len: prefix,
        ifindex,
    };
    // SAFETY: SIOCSIFADDR on an AF_INET6 socket reads one in6_ifreq.
    unsafe {
        ioctl(
            &socket,
            libc::SIOCSIFADDR,
            &mut request,
            "setting the IPv6 address",
        )?
    };
    if let Some(gateway) = gateway {
        let mut route = In6Rtmsg {
            destination: in6(Ipv6Addr::UNSPECIFIED),
            source: in6(Ipv6Addr::UNSPECIFIED),
            gateway: in6(gateway),
            route_type: 0,
            destination_len: 0,
            source_len: 0,
            metric: 1,
            info: 0,
            flags: RTF_UP | RTF_GATEWAY,
            ifindex,
        };
        // SAFETY: SIOCADDRT on an AF_INET6 socket reads one in6_rtmsg.
        unsafe {
            ioctl(
                &socket,
                libc::SIOCADDRT,
                &mut route,
                "adding the default IPv6 route",
            )?
        };
    }
    Ok(())
}
