//! The host side of Berth's networks behind one seam: Berth's network namespace, its
//! bridges and taps, its nftables ruleset, outbound NAT, the DNS servers on gateway
//! addresses and the relays of published ports. These need root (and a kernel with
//! namespaces); [`HostNetwork`] lets the engine's logic run without them in unit tests,
//! which use a recording implementation instead of [`NamespaceHost`].

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use berth_net::dns::{DnsServer, Resolver};
use berth_net::firewall::BridgeRule;
use berth_net::proxy::Protocol;
use berth_net::uplink::Uplink;
use berth_net::{firewall, links, Namespace, NetError, Subnet};

/// Something the host runs for a network or a container (a DNS server, a port relay);
/// it stops when dropped.
pub type HostTask = Box<dyn Send + Sync>;

/// The host operations Berth's networks need, all inside Berth's network namespace
/// (except the host's end of outbound NAT and the published ports' listeners).
#[async_trait]
pub trait HostNetwork: Send + Sync {
    /// The namespace's name (`ip netns` name).
    fn name(&self) -> &str;
    /// The namespace's file, which VM processes enter.
    fn path(&self) -> PathBuf;
    /// Makes sure the bridge exists, with the gateway's address and up.
    fn ensure_bridge(&self, bridge: &str, gateway: Ipv4Addr, prefix: u8) -> Result<(), NetError>;
    /// Gives the bridge its IPv6 gateway address (networks with `--ipv6`).
    fn add_bridge_address6(
        &self,
        bridge: &str,
        gateway: std::net::Ipv6Addr,
        prefix: u8,
    ) -> Result<(), NetError>;
    /// Starts a DNS server on `gateway`:53.
    fn start_dns(
        &self,
        gateway: Ipv4Addr,
        resolver: Arc<Resolver>,
        upstreams: Vec<SocketAddr>,
    ) -> io::Result<HostTask>;
    fn create_tap(&self, name: &str) -> Result<(), NetError>;
    fn attach_tap(&self, tap: &str, bridge: &str) -> Result<(), NetError>;
    fn delete_link(&self, name: &str) -> Result<(), NetError>;
    /// Renames a tap that is down and attached to nothing, replacing a link of the new
    /// name if there is one.
    fn rename_tap(&self, tap: &str, name: &str) -> Result<(), NetError>;
    fn links_with_prefix(&self, prefix: &str) -> Result<Vec<String>, NetError>;
    /// Replaces the namespace's ruleset with one for these bridges.
    fn apply_firewall(&self, bridges: &[BridgeRule], uplink: Option<&str>) -> Result<(), NetError>;
    /// Makes sure outbound NAT runs over the link subnet `link`.
    fn ensure_uplink(&self, link: Subnet) -> Result<Uplink, NetError>;
    /// Removes outbound NAT, if there is any.
    fn remove_uplink(&self) -> Result<(), NetError>;
    /// Starts relaying `host` (port 0: any free port) to `container`; returns where it
    /// listens.
    async fn publish(
        &self,
        protocol: Protocol,
        host: SocketAddr,
        container: SocketAddr,
    ) -> io::Result<(SocketAddr, HostTask)>;
    /// The namespace's `/proc/net/dev` (interface counters).
    async fn net_dev(&self) -> io::Result<String>;
}

/// The real host: a network namespace of Berth's own.
pub struct NamespaceHost {
    namespace: Namespace,
}

impl NamespaceHost {
    /// Opens the namespace `name`, making it if it is missing.
    pub fn ensure(name: &str) -> Result<Self, NetError> {
        Ok(Self {
            namespace: Namespace::ensure(name)?,
        })
    }
}

#[async_trait]
impl HostNetwork for NamespaceHost {
    fn name(&self) -> &str {
        self.namespace.name()
    }

    fn path(&self) -> PathBuf {
        self.namespace.path().to_path_buf()
    }

    fn ensure_bridge(&self, bridge: &str, gateway: Ipv4Addr, prefix: u8) -> Result<(), NetError> {
        links::ensure_bridge(&self.namespace, bridge, gateway, prefix)
    }

    fn add_bridge_address6(
        &self,
        bridge: &str,
        gateway: std::net::Ipv6Addr,
        prefix: u8,
    ) -> Result<(), NetError> {
        links::add_bridge_address6(&self.namespace, bridge, gateway, prefix)
    }

    fn start_dns(
        &self,
        gateway: Ipv4Addr,
        resolver: Arc<Resolver>,
        upstreams: Vec<SocketAddr>,
    ) -> io::Result<HostTask> {
        let server = DnsServer::start(&self.namespace, gateway, resolver, upstreams)?;
        Ok(Box::new(server))
    }

    fn create_tap(&self, name: &str) -> Result<(), NetError> {
        links::create_tap(&self.namespace, name)
    }

    fn attach_tap(&self, tap: &str, bridge: &str) -> Result<(), NetError> {
        links::attach_tap(&self.namespace, tap, bridge)
    }

    fn delete_link(&self, name: &str) -> Result<(), NetError> {
        links::delete_link(&self.namespace, name)
    }

    fn rename_tap(&self, tap: &str, name: &str) -> Result<(), NetError> {
        links::rename_tap(&self.namespace, tap, name)
    }

    fn links_with_prefix(&self, prefix: &str) -> Result<Vec<String>, NetError> {
        links::links_with_prefix(&self.namespace, prefix)
    }

    fn apply_firewall(&self, bridges: &[BridgeRule], uplink: Option<&str>) -> Result<(), NetError> {
        firewall::apply(&self.namespace, bridges, uplink)
    }

    fn ensure_uplink(&self, link: Subnet) -> Result<Uplink, NetError> {
        berth_net::uplink::ensure(&self.namespace, link)
    }

    fn remove_uplink(&self) -> Result<(), NetError> {
        berth_net::uplink::remove(&self.namespace)
    }

    async fn publish(
        &self,
        protocol: Protocol,
        host: SocketAddr,
        container: SocketAddr,
    ) -> io::Result<(SocketAddr, HostTask)> {
        let relay = berth_net::proxy::publish(&self.namespace, protocol, host, container).await?;
        Ok((relay.host, Box::new(relay)))
    }

    async fn net_dev(&self) -> io::Result<String> {
        let namespace = self.namespace.clone();
        tokio::task::spawn_blocking(move || {
            // /proc/thread-self/net is the namespace of the reading thread.
            namespace.run(|| std::fs::read_to_string("/proc/thread-self/net/dev"))
        })
        .await
        .map_err(io::Error::other)?
    }
}
