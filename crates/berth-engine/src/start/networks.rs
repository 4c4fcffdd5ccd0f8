//! The host side of a starting container's networks, and its NICs beyond the first.

use std::sync::Arc;

use berth_agent_proto::{GuestMessage, HostMessage};

use crate::agent::AgentError;
use crate::error::EngineError;
use crate::{lock, ContainerHandle, Engine};

impl Engine {
    /// Plugs in and configures a starting container's networks beyond the first (the
    /// agent must be serving: after setup).
    pub(super) async fn connect_extra_nics(
        self: &Arc<Self>,
        handle: &Arc<ContainerHandle>,
        plan: &crate::network::NetworkPlan,
    ) -> Result<(), EngineError> {
        let runtime = handle
            .runtime()
            .ok_or(AgentError::VmEnded("while starting"))?;
        for (nic, interface) in &plan.extra {
            // Without hot-plug the NIC has been in the VM since boot.
            if self.config.backend.supports_hotplug() {
                runtime.control.add_nic(nic).await?;
            }
            match self
                .agent_request(handle, HostMessage::AddInterface(interface.clone()))
                .await?
            {
                GuestMessage::InterfaceReady { .. } => {}
                other => {
                    let during = format!("configuring {}", interface.name);
                    return Err(AgentError::unexpected(during, &other).into());
                }
            }
        }
        Ok(())
    }

    /// The host side of a starting container's networks: taps on their bridges, names
    /// in the networks' DNS, published ports. Done before its process is sent.
    pub(super) async fn activate_networks(
        self: &Arc<Self>,
        handle: &Arc<ContainerHandle>,
        plan: &crate::network::NetworkPlan,
    ) -> Result<(), EngineError> {
        let mut record = handle.snapshot();
        self.networks.activate(&record, &plan.attach)?;
        for endpoint in record.networks.values().filter(|e| e.ip.is_some()) {
            if let Ok(network) = self.networks.lookup(&endpoint.network_id) {
                self.network_event(&network, "connect", Some(&record.id));
            }
        }
        self.networks.publish(&mut record).await?;
        lock(&handle.record).ports = record.ports;
        Ok(())
    }
}
