//! Berth's container networks, below the engine and beside the VM backends.
//!
//! Everything lives in a network namespace the daemon owns ([`netns`]): one Linux bridge
//! per container network with the network's gateway address ([`links`]), one tap device
//! per VM NIC attached to its network's bridge, an nftables table that keeps networks
//! apart ([`firewall`]), a DNS server per network on its gateway address ([`dns`]), and
//! userspace relays from the host's addresses for published ports ([`proxy`]). Address
//! management is pure logic ([`ipam`]); which addresses are taken is the engine's to say.
//!
//! Nothing here knows about containers or Docker's types: the engine maps Docker's
//! networks and endpoints onto these parts.

pub mod dns;
pub mod firewall;
pub mod ipam;
mod link_ioctls;
pub mod links;
pub mod netns;
pub mod proxy;
pub mod uplink;

pub use ipam::{Subnet, Subnet6};
pub use netns::Namespace;

/// Errors from network set-up.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Io(String, #[source] std::io::Error),
    #[error("{command} failed: {stderr}")]
    Command { command: String, stderr: String },
}
