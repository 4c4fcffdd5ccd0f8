//! Bridges and tap devices inside Berth's namespace: bridges made with iproute2, taps
//! made, renamed and attached with the kernel's ioctls (`link_ioctls`), which spares a
//! start several runs of `ip`.
//!
//! Names: a network's bridge is `br-<first 12 hex of its id>` (Docker's own scheme), the
//! default network's is `berth0`; a VM's tap is `bt<first 12 hex of its container id><n>`
//! for its n-th NIC. All fit Linux's 15-byte interface names.

use std::net::Ipv4Addr;

use crate::netns::Namespace;
use crate::{link_ioctls, NetError};

/// Linux's longest interface name.
const MAX_NAME: usize = 15;

fn check_name(name: &str) -> Result<(), NetError> {
    if name.is_empty()
        || name.len() > MAX_NAME
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(NetError::Invalid(format!("bad interface name {name:?}")));
    }
    Ok(())
}

/// The tap of a container VM's `index`-th NIC.
pub fn tap_name(container_id: &str, index: usize) -> String {
    format!(
        "bt{}{}",
        &container_id[..12.min(container_id.len())],
        index % 10
    )
}

/// Creates (or keeps) a bridge with `gateway/prefix` as its address, and brings it up.
pub fn ensure_bridge(
    namespace: &Namespace,
    name: &str,
    gateway: Ipv4Addr,
    prefix: u8,
) -> Result<(), NetError> {
    check_name(name)?;
    if namespace.ip(&["link", "show", "dev", name]).is_err() {
        // No spanning tree and no forwarding delay: ports forward as soon as they are up.
        namespace.ip(&[
            "link",
            "add",
            "name",
            name,
            "type",
            "bridge",
            "forward_delay",
            "0",
            "stp_state",
            "0",
        ])?;
    }
    namespace.ip(&[
        "addr",
        "replace",
        &format!("{gateway}/{prefix}"),
        "dev",
        name,
    ])?;
    namespace.ip(&["link", "set", "dev", name, "up"])?;
    // The br_netfilter module may have been loaded since the namespace was opened.
    namespace.bridged_traffic_bypasses_netfilter();
    Ok(())
}

/// Gives bridge `name` the IPv6 gateway address (no duplicate address detection: the
/// namespace is Berth's own).
pub fn add_bridge_address6(
    namespace: &Namespace,
    name: &str,
    gateway: std::net::Ipv6Addr,
    prefix: u8,
) -> Result<(), NetError> {
    check_name(name)?;
    namespace.ip(&[
        "-6",
        "addr",
        "replace",
        &format!("{gateway}/{prefix}"),
        "dev",
        name,
        "nodad",
    ])?;
    Ok(())
}

/// Deletes a link if it exists: an unused tap by the tun driver's ioctls, anything else
/// (or a tap a VM holds open) with `ip link delete`.
pub fn delete_link(namespace: &Namespace, name: &str) -> Result<(), NetError> {
    check_name(name)?;
    let owned = name.to_owned();
    let removed = namespace
        .run(move || match link_ioctls::link_index(&owned)? {
            None => Ok(true),
            Some(_) => link_ioctls::remove_unused_tap(&owned),
        })
        .map_err(|e| NetError::Io(format!("deleting link {name}"), e))?;
    if !removed {
        namespace.ip(&["link", "delete", "dev", name])?;
    }
    Ok(())
}

/// Creates a persistent tap device, down and attached to nothing (a VM opens it by name
/// from inside the namespace). An old tap of the same name is replaced.
pub fn create_tap(namespace: &Namespace, name: &str) -> Result<(), NetError> {
    delete_link(namespace, name)?;
    let owned = name.to_owned();
    namespace
        .run(move || link_ioctls::make_persistent_tap(&owned))
        .map_err(|e| NetError::Io(format!("creating tap {name}"), e))
}

/// Attaches a tap to a bridge and brings it up.
pub fn attach_tap(namespace: &Namespace, tap: &str, bridge: &str) -> Result<(), NetError> {
    check_name(tap)?;
    check_name(bridge)?;
    let (port, master) = (tap.to_owned(), bridge.to_owned());
    match namespace.run(move || link_ioctls::attach_and_bring_up(&port, &master)) {
        Ok(()) => Ok(()),
        // A port of a bridge already (this one, say): `ip` moves it or leaves it, as it
        // always did.
        Err(error) if error.raw_os_error() == Some(libc::EBUSY) => {
            namespace.ip(&["link", "set", "dev", tap, "master", bridge, "up"])?;
            Ok(())
        }
        Err(error) => Err(NetError::Io(
            format!("attaching tap {tap} to bridge {bridge}"),
            error,
        )),
    }
}

/// Gives the tap `tap` (down, attached to nothing) the name `name`, in place of a link
/// of that name if there is one: how a VM restored ahead of demand, which has its tap
/// open, takes a container's tap name. A VM keeps its tap's descriptor, not its name.
pub fn rename_tap(namespace: &Namespace, tap: &str, name: &str) -> Result<(), NetError> {
    check_name(tap)?;
    delete_link(namespace, name)?;
    let (from, to) = (tap.to_owned(), name.to_owned());
    namespace
        .run(move || link_ioctls::rename(&from, &to))
        .map_err(|e| NetError::Io(format!("renaming tap {tap} to {name}"), e))
}

/// Lists the namespace's links whose names start with `prefix`.
pub fn links_with_prefix(namespace: &Namespace, prefix: &str) -> Result<Vec<String>, NetError> {
    let names = namespace
        .run(link_ioctls::link_names)
        .map_err(|e| NetError::Io("listing the namespace's links".into(), e))?;
    Ok(names
        .into_iter()
        .filter(|name| name.starts_with(prefix))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_and_are_checked() {
        let tap = tap_name(&"ab".repeat(32), 3);
        assert_eq!(tap, "btabababababab3");
        assert!(check_name(&tap).is_ok());
        assert!(check_name("br-0123456789ab").is_ok());
        assert!(check_name("a-name-that-is-too-long").is_err());
        assert!(check_name("x;rm").is_err());
        assert!(check_name("").is_err());
    }
}
