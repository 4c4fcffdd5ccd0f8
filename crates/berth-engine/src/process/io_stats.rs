//! Network and disk I/O of a running container's VM, for `docker stats`: each NIC's
//! counters from its tap (in Berth's namespace; what the tap sends, the container
//! receives) and the VM's disk counters from the backend.

use std::sync::Arc;

use berth_vm::BlockStats;

use crate::error::EngineError;
use crate::Engine;

/// One interface's counters, as the container sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceStats {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
}

/// A container's I/O.
#[derive(Debug, Clone, Default)]
pub struct IoStats {
    pub interfaces: Vec<InterfaceStats>,
    pub block: BlockStats,
}

/// The counters of `/proc/net/dev` for `interface`: (rx bytes, rx packets, tx bytes,
/// tx packets) as the interface itself counts them.
pub fn parse_net_dev(text: &str, interface: &str) -> Option<(u64, u64, u64, u64)> {
    let line = text
        .lines()
        .find(|line| line.trim_start().starts_with(&format!("{interface}:")))?;
    let fields: Vec<u64> = line
        .split_once(':')?
        .1
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    Some((
        *fields.first()?,
        *fields.get(1)?,
        *fields.get(8)?,
        *fields.get(9)?,
    ))
}

impl Engine {
    /// The I/O of a running container; `None` when it is not running.
    pub async fn container_io(
        self: &Arc<Self>,
        reference: &str,
    ) -> Result<Option<IoStats>, EngineError> {
        let handle = self.lookup(reference)?;
        let Some(runtime) = handle.runtime() else {
            return Ok(None);
        };
        let record = handle.snapshot();
        let block = runtime.control.block_stats().await.unwrap_or_default();
        let taps: Vec<(String, String)> = record
            .networks
            .values()
            .filter_map(|endpoint| {
                let index = usize::from(endpoint.nic_slot?.checked_sub(berth_vm::FIRST_NIC_SLOT)?);
                endpoint.ip?;
                Some((
                    format!("eth{index}"),
                    berth_net::links::tap_name(&record.id, index),
                ))
            })
            .collect();
        let net_dev = self.networks.host().net_dev().await.unwrap_or_default();
        let mut interfaces: Vec<InterfaceStats> = taps
            .into_iter()
            .filter_map(|(name, tap)| {
                let (tap_rx_bytes, tap_rx_packets, tap_tx_bytes, tap_tx_packets) =
                    parse_net_dev(&net_dev, &tap)?;
                Some(InterfaceStats {
                    name,
                    rx_bytes: tap_tx_bytes,
                    rx_packets: tap_tx_packets,
                    tx_bytes: tap_rx_bytes,
                    tx_packets: tap_rx_packets,
                })
            })
            .collect();
        interfaces.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Some(IoStats { interfaces, block }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_dev_lines_parse() {
        let text = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0\nbt0123456789ab0:  1500      10    0    0    0     0          0         0     3000      20    0    0    0     0       0          0\n";
        assert_eq!(
            parse_net_dev(text, "bt0123456789ab0"),
            Some((1500, 10, 3000, 20))
        );
        assert_eq!(parse_net_dev(text, "bt0"), None);
    }
}
