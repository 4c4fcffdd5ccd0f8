//! Network interfaces inside the guest: find a NIC by PCI slot, rename it, give it its
//! MAC address and IPv4 address, bring it up (IPv6 off unless its network has IPv6:
//! see `network6`), and add the default route.
//!
//! Done with the kernel's classic `SIOC*` interface ioctls on a datagram socket. They
//! are stable, need no netlink message building, and keep the agent a small static binary
//! without an async runtime (the netlink crates are built around one).
//!
//! Setting the MAC address goes through the virtio-net driver, which tells the device
//! (`VIRTIO_NET_CTRL_MAC_ADDR_SET`): the VMM's receive filter then accepts the new
//! address, and a clone stops answering to its template's.

use std::ffi::CString;
use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use berth_agent_proto::InterfaceSpec;

const RTF_UP: libc::c_ushort = 0x0001;
const RTF_GATEWAY: libc::c_ushort = 0x0002;

/// `struct rtentry` from <net/route.h> (the libc crate has it only for musl).
#[repr(C)]
struct RouteEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

fn control_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket takes no pointers; the descriptor is owned by the result.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn request(name: &str) -> io::Result<libc::ifreq> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad interface name {name:?}"),
        ));
    }
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut ifreq: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in ifreq.ifr_name.iter_mut().zip(name.bytes()) {
        *slot = byte as libc::c_char;
    }
    Ok(ifreq)
}

fn ioctl(
    socket: &OwnedFd,
    op: libc::c_ulong,
    ifreq: &mut libc::ifreq,
    what: &str,
) -> io::Result<()> {
    // SAFETY: every op used here reads or writes one ifreq, which lives across the call.
    if unsafe { libc::ioctl(socket.as_raw_fd(), op as _, ifreq as *mut libc::ifreq) } < 0 {
        let error = io::Error::last_os_error();
        return Err(io::Error::new(error.kind(), format!("{what}: {error}")));
    }
    Ok(())
}

fn inet_sockaddr(address: Ipv4Addr) -> libc::sockaddr {
    let inet = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(address).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size (16 bytes); the kernel reads
    // it back as sockaddr_in because of its family.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(inet) }
}

fn set_flags(socket: &OwnedFd, name: &str, up: bool) -> io::Result<()> {
    let mut ifreq = request(name)?;
    ioctl(
        socket,
        libc::SIOCGIFFLAGS,
        &mut ifreq,
        "reading interface flags",
    )?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { ifreq.ifr_ifru.ifru_flags };
    let wanted = if up {
        flags | libc::IFF_UP as libc::c_short
    } else {
        flags & !(libc::IFF_UP as libc::c_short)
    };
    if wanted == flags {
        return Ok(());
    }
    ifreq.ifr_ifru.ifru_flags = wanted;
    ioctl(
        socket,
        libc::SIOCSIFFLAGS,
        &mut ifreq,
        "setting interface flags",
    )
}

/// Brings the loopback interface up.
pub fn loopback_up() -> io::Result<()> {
    set_flags(&control_socket()?, "lo", true)
}

/// A NIC present at boot: its PCI slot, the name the kernel gave it, its index.
struct BootNic {
    slot: u8,
    name: String,
    index: i32,
}

/// The NICs found by [`remember_boot_nics`], each taken by the first [`configure`] of
/// its slot.
static BOOT_NICS: std::sync::Mutex<Vec<BootNic>> = std::sync::Mutex::new(Vec::new());

/// Readies the NICs present at boot: notes which interface sits in which PCI slot, turns
/// IPv6 off on it (Berth's networks are IPv4; as Docker does for such networks) and
/// brings it up, without an address. A clone's NICs are its template's, so the clone
/// finds its interface here, up, and only gives it its MAC and address: it skips the
/// sysfs walk and the bring-up (kernel paths a clone would run for the first time,
/// which under TCG it must first translate). With IPv6 off before the interface is up,
/// no link-local address is ever made from the template's MAC, so clones share none.
/// Best effort: a NIC not ready here is found in sysfs and brought up by [`configure`].
pub fn prepare_boot_nics() {
    let Ok(entries) = fs::read_dir("/sys/class/net") else {
        return;
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        // .../0000:00:08.0/virtio1 for a virtio NIC: the PCI address is its parent.
        let Ok(device) = fs::canonicalize(entry.path().join("device")) else {
            continue;
        };
        let slot = device
            .parent()
            .and_then(|pci| pci.file_name())
            .and_then(|pci| pci.to_str())
            .and_then(|pci| pci.strip_prefix("0000:00:"))
            .and_then(|rest| rest.strip_suffix(".0"))
            .and_then(|slot| u8::from_str_radix(slot, 16).ok());
        let index = fs::read_to_string(entry.path().join("ifindex"))
            .ok()
            .and_then(|text| text.trim().parse().ok());
        if let (Some(slot), Some(index)) = (slot, index) {
            let up = disable_ipv6(&name).is_ok()
                && control_socket()
                    .and_then(|socket| set_flags(&socket, &name, true))
                    .is_ok();
            if up {
                found.push(BootNic { slot, name, index });
            }
        }
    }
    *BOOT_NICS.lock().unwrap_or_else(|e| e.into_inner()) = found;
}

/// Takes away the boot NICs no [`configure`] took (a container on the `none` network has
/// its template's NIC but no interface to use): their virtio device is unbound from its
/// driver, so the interface is gone and the container sees only `lo`, as under Docker.
/// The VM is the container's alone and a NIC never comes back to a `none` container.
pub fn release_unused_boot_nics() -> io::Result<()> {
    let unused = std::mem::take(&mut *BOOT_NICS.lock().unwrap_or_else(|e| e.into_inner()));
    for nic in unused {
        // /sys/class/net/NAME/device is the virtio device (virtioN) the driver binds.
        let device = PathBuf::from(format!("/sys/class/net/{}/device", nic.name));
        let virtio = fs::canonicalize(&device)?;
        let Some(name) = virtio.file_name().and_then(|name| name.to_str()) else {
            continue;
        };
        fs::write(device.join("driver/unbind"), name)?;
    }
    Ok(())
}

/// Turns IPv6 off on interface `name` (a kernel without IPv6 has nothing to turn off).
fn disable_ipv6(name: &str) -> io::Result<()> {
    request(name)?;
    match fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1") {
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Sets the IPv4 address and netmask of interface (or alias) `name`.
fn set_address(socket: &OwnedFd, name: &str, address: Ipv4Addr, prefix: u8) -> io::Result<()> {
    let mut ifreq = request(name)?;
    ifreq.ifr_ifru.ifru_addr = inet_sockaddr(address);
    ioctl(socket, libc::SIOCSIFADDR, &mut ifreq, "setting the address")?;
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    let mut ifreq = request(name)?;
    ifreq.ifr_ifru.ifru_netmask = inet_sockaddr(Ipv4Addr::from(mask));
    ioctl(
        socket,
        libc::SIOCSIFNETMASK,
        &mut ifreq,
        "setting the netmask",
    )
}

/// The boot NIC of `slot`, if it is still the interface the kernel named at boot.
fn take_boot_nic(socket: &OwnedFd, slot: u8) -> Option<String> {
    let nic = {
        let mut nics = BOOT_NICS.lock().unwrap_or_else(|e| e.into_inner());
        let position = nics.iter().position(|nic| nic.slot == slot)?;
        nics.swap_remove(position)
    };
    let mut ifreq = request(&nic.name).ok()?;
    ioctl(
        socket,
        libc::SIOCGIFINDEX,
        &mut ifreq,
        "finding the interface",
    )
    .ok()?;
    // SAFETY: SIOCGIFINDEX filled the index member of the union.
    (unsafe { ifreq.ifr_ifru.ifru_ifindex } == nic.index).then_some(nic.name)
}

/// The name of the network interface of the PCI device in `slot`, once it appears.
fn interface_in_slot(slot: u8, timeout: Duration) -> io::Result<String> {
    let device = PathBuf::from(format!("/sys/bus/pci/devices/0000:00:{slot:02x}.0"));
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(entries) = fs::read_dir(&device) {
            for entry in entries.flatten() {
                if !entry.file_name().to_string_lossy().starts_with("virtio") {
                    continue;
                }
                if let Some(name) = fs::read_dir(entry.path().join("net"))
                    .ok()
                    .and_then(|mut names| names.next())
                    .and_then(|name| name.ok())
                {
                    return Ok(name.file_name().to_string_lossy().into_owned());
                }
            }
        }
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no network interface in PCI slot {slot:#04x}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn parse_mac(mac: &str) -> io::Result<[u8; 6]> {
    let bytes: Vec<u8> = mac
        .split(':')
        .map(|part| u8::from_str_radix(part, 16))
        .collect::<Result<_, _>>()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("bad MAC {mac:?}")))?;
    let bytes: [u8; 6] = bytes
        .try_into()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("bad MAC {mac:?}")))?;
    if bytes[0] & 1 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("MAC {mac:?} is a multicast address"),
        ));
    }
    Ok(bytes)
}

fn parse_cidr(text: &str) -> io::Result<(Ipv4Addr, u8)> {
    let invalid = || io::Error::new(io::ErrorKind::InvalidInput, format!("bad address {text:?}"));
    let (address, prefix) = text.split_once('/').ok_or_else(invalid)?;
    let address: Ipv4Addr = address.parse().map_err(|_| invalid())?;
    let prefix: u8 = prefix.parse().map_err(|_| invalid())?;
    if prefix > 32 {
        return Err(invalid());
    }
    Ok((address, prefix))
}

/// Configures one NIC as `spec` says and brings it up.
pub fn configure(spec: &InterfaceSpec) -> io::Result<()> {
    let mac = parse_mac(&spec.mac)?;
    let (address, prefix) = parse_cidr(&spec.address)?;
    let gateway = spec
        .gateway
        .as_deref()
        .map(|g| {
            g.parse::<Ipv4Addr>().map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("bad gateway {g:?}"))
            })
        })
        .transpose()?;
    let socket = control_socket()?;
    // A boot NIC that already has its name is up (IPv6 off): its MAC can change live.
    let (current, ready) = match take_boot_nic(&socket, spec.pci_slot) {
        Some(name) => {
            let ready = name == spec.name;
            (name, ready)
        }
        None => (
            interface_in_slot(spec.pci_slot, Duration::from_secs(10))?,
            false,
        ),
    };
    if !ready {
        set_flags(&socket, &current, false)?;
    }
    if current != spec.name {
        let mut ifreq = request(&current)?;
        let wanted = request(&spec.name)?;
        ifreq.ifr_ifru.ifru_newname = wanted.ifr_name;
        ioctl(
            &socket,
            libc::SIOCSIFNAME,
            &mut ifreq,
            "renaming the interface",
        )?;
    }
    let name = spec.name.as_str();
    let mut ifreq = request(name)?;
    // SAFETY: sockaddr is plain old data; all zeroes is a valid value.
    let mut hardware: libc::sockaddr = unsafe { std::mem::zeroed() };
    hardware.sa_family = libc::ARPHRD_ETHER;
    for (slot, byte) in hardware.sa_data.iter_mut().zip(mac) {
        *slot = byte as libc::c_char;
    }
    ifreq.ifr_ifru.ifru_hwaddr = hardware;
    ioctl(
        &socket,
        libc::SIOCSIFHWADDR,
        &mut ifreq,
        "setting the MAC address",
    )?;
    set_address(&socket, name, address, prefix)?;
    // `--link-local-ip`: more addresses, each on an alias of the interface (`eth0:0`).
    for (index, extra) in spec.link_local.iter().enumerate() {
        let (extra, extra_prefix) = parse_cidr(extra)?;
        set_address(&socket, &format!("{name}:{index}"), extra, extra_prefix)?;
    }
    if !ready {
        disable_ipv6(name)?;
        set_flags(&socket, name, true)?;
    }
    if let Some(gateway) = gateway {
        let device =
            CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let mut route = RouteEntry {
            rt_pad1: 0,
            rt_dst: inet_sockaddr(Ipv4Addr::UNSPECIFIED),
            rt_gateway: inet_sockaddr(gateway),
            rt_genmask: inet_sockaddr(Ipv4Addr::UNSPECIFIED),
            rt_flags: RTF_UP | RTF_GATEWAY,
            rt_pad2: 0,
            rt_pad3: 0,
            rt_pad4: std::ptr::null_mut(),
            rt_metric: 0,
            rt_dev: device.as_ptr() as *mut libc::c_char,
            rt_mtu: 0,
            rt_window: 0,
            rt_irtt: 0,
        };
        // SAFETY: SIOCADDRT reads one rtentry; it and the device name it points to live
        // across the call.
        let rc = unsafe {
            libc::ioctl(
                socket.as_raw_fd(),
                libc::SIOCADDRT as _,
                &mut route as *mut RouteEntry,
            )
        };
        if rc < 0 {
            let error = io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::EEXIST) {
                return Err(io::Error::new(
                    error.kind(),
                    format!("adding the default route: {error}"),
                ));
            }
        }
    }
    if let Some(address6) = &spec.address6 {
        crate::network6::configure(name, address6, spec.gateway6.as_deref())?;
    }
    Ok(())
}

/// Takes an interface down (before its NIC is unplugged).
pub fn take_down(name: &str) -> io::Result<()> {
    set_flags(&control_socket()?, name, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsing_rejects_bad_input() {
        assert_eq!(
            parse_mac("02:42:ac:11:00:02").unwrap(),
            [2, 0x42, 0xac, 0x11, 0, 2]
        );
        assert!(parse_mac("03:42:ac:11:00:02").is_err());
        assert!(parse_mac("02:42:ac:11:00").is_err());
        assert!(parse_mac("zz:42:ac:11:00:02").is_err());
        assert_eq!(
            parse_cidr("172.17.0.2/16").unwrap(),
            (Ipv4Addr::new(172, 17, 0, 2), 16)
        );
        assert!(parse_cidr("172.17.0.2/33").is_err());
        assert!(parse_cidr("172.17.0.2").is_err());
        assert!(request("a-name-far-too-long").is_err());
    }
}
