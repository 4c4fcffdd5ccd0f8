//! A host side of the networks that records what it is asked instead of doing it.

use std::collections::BTreeSet;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use berth_net::dns::Resolver;
use berth_net::firewall::BridgeRule;
use berth_net::proxy::Protocol;
use berth_net::uplink::Uplink;
use berth_net::{NetError, Subnet};

use crate::lock;
use crate::network::{HostNetwork, HostTask};

/// What the fake host has: links (bridges and taps) and how often the ruleset was set.
#[derive(Default)]
pub(crate) struct FakeHost {
    links: Mutex<BTreeSet<String>>,
    /// Tap -> bridge.
    attached: Mutex<Vec<(String, String)>>,
    firewall_applies: Mutex<usize>,
    next_port: AtomicU16,
}

impl FakeHost {
    /// The taps (links named `bt...`) that exist now.
    pub fn taps(&self) -> Vec<String> {
        lock(&self.links)
            .iter()
            .filter(|l| l.starts_with("bt"))
            .cloned()
            .collect()
    }
}

#[async_trait]
impl HostNetwork for FakeHost {
    fn name(&self) -> &str {
        "berth-test"
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/nonexistent/netns/berth-test")
    }

    fn ensure_bridge(&self, bridge: &str, _: Ipv4Addr, _: u8) -> Result<(), NetError> {
        lock(&self.links).insert(bridge.to_owned());
        Ok(())
    }

    fn add_bridge_address6(&self, _: &str, _: std::net::Ipv6Addr, _: u8) -> Result<(), NetError> {
        Ok(())
    }

    fn start_dns(&self, _: Ipv4Addr, _: Arc<Resolver>, _: Vec<SocketAddr>) -> io::Result<HostTask> {
        Ok(Box::new(()))
    }

    fn create_tap(&self, name: &str) -> Result<(), NetError> {
        lock(&self.links).insert(name.to_owned());
        Ok(())
    }

    fn attach_tap(&self, tap: &str, bridge: &str) -> Result<(), NetError> {
        lock(&self.attached).push((tap.to_owned(), bridge.to_owned()));
        Ok(())
    }

    fn delete_link(&self, name: &str) -> Result<(), NetError> {
        lock(&self.links).remove(name);
        Ok(())
    }

    fn rename_tap(&self, tap: &str, name: &str) -> Result<(), NetError> {
        let mut links = lock(&self.links);
        if !links.remove(tap) {
            return Err(NetError::Invalid(format!("no link {tap}")));
        }
        links.insert(name.to_owned());
        Ok(())
    }

    fn links_with_prefix(&self, prefix: &str) -> Result<Vec<String>, NetError> {
        Ok(lock(&self.links)
            .iter()
            .filter(|l| l.starts_with(prefix))
            .cloned()
            .collect())
    }

    fn apply_firewall(&self, _: &[BridgeRule], _: Option<&str>) -> Result<(), NetError> {
        *lock(&self.firewall_applies) += 1;
        Ok(())
    }

    fn ensure_uplink(&self, _: Subnet) -> Result<Uplink, NetError> {
        Err(NetError::Invalid("the fake host has no uplink".into()))
    }

    fn remove_uplink(&self) -> Result<(), NetError> {
        Ok(())
    }

    async fn publish(
        &self,
        _: Protocol,
        host: SocketAddr,
        _: SocketAddr,
    ) -> io::Result<(SocketAddr, HostTask)> {
        let port = match host.port() {
            0 => 40000 + self.next_port.fetch_add(1, Ordering::Relaxed),
            port => port,
        };
        Ok((SocketAddr::new(host.ip(), port), Box::new(())))
    }

    async fn net_dev(&self) -> io::Result<String> {
        Ok(String::new())
    }
}
