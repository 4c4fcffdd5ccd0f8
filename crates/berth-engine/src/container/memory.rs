//! A container's memory settings, checked and filled in as dockerd does. `--memory` is
//! its VM's memory; the VM has no swap device, so `--memory-swap` (the most memory and
//! swap together) never lets it use more, and `--memory-reservation` (a soft limit
//! under memory pressure) is kept and shown. Both are accepted because Docker's rules
//! hold for them: what they allow is never more than the VM gives.

use bollard_stubs::models::{ContainerUpdateBody, HostConfig};

use crate::error::EngineError;

/// dockerd's smallest memory limit and reservation.
const MINIMUM: i64 = 6 * 1024 * 1024;

/// Refuses what dockerd refuses, with its words.
pub(crate) fn validate(host: &HostConfig) -> Result<(), EngineError> {
    let invalid = |message: &str| Err(EngineError::InvalidArgument(message.to_owned()));
    let memory = host.memory.unwrap_or(0);
    let swap = host.memory_swap.unwrap_or(0);
    let reservation = host.memory_reservation.unwrap_or(0);
    if memory != 0 && memory < MINIMUM {
        return invalid("Minimum memory limit allowed is 6MB");
    }
    if swap > 0 && memory == 0 {
        return invalid(
            "You should always set the Memory limit when using Memoryswap limit, see usage",
        );
    }
    if memory > 0 && swap > 0 && swap < memory {
        return invalid("Minimum memoryswap limit should be larger than memory limit, see usage");
    }
    if reservation != 0 && reservation < MINIMUM {
        return invalid("Minimum memory reservation allowed is 6MB");
    }
    if memory > 0 && reservation > memory {
        return invalid(
            "Minimum memory limit can not be less than memory reservation limit, see usage",
        );
    }
    Ok(())
}

/// The host config with `update`'s memory settings, checked: dockerd's rules, and its
/// refusal of a new limit above the swap limit already set unless that changes too.
pub(crate) fn updated(
    current: &HostConfig,
    update: &ContainerUpdateBody,
    id: &str,
) -> Result<HostConfig, EngineError> {
    let mut host = current.clone();
    if let Some(memory) = update.memory.filter(|m| *m != 0) {
        host.memory = Some(memory);
        let swap = current.memory_swap.unwrap_or(0);
        if update.memory_swap.unwrap_or(0) == 0 && swap > 0 && memory > swap {
            return Err(EngineError::Conflict(format!(
                "Cannot update container {id}: Memory limit should be smaller than already set memoryswap limit, update the memoryswap at the same time"
            )));
        }
    }
    if let Some(swap) = update.memory_swap.filter(|s| *s != 0) {
        host.memory_swap = Some(swap);
    }
    if let Some(reservation) = update.memory_reservation.filter(|r| *r != 0) {
        host.memory_reservation = Some(reservation);
    }
    validate(&host)?;
    Ok(host)
}

/// dockerd's default: a memory limit without a swap limit may swap as much again.
pub(crate) fn fill_defaults(host: &mut HostConfig) {
    let memory = host.memory.unwrap_or(0);
    if memory > 0 && host.memory_swap.unwrap_or(0) == 0 {
        host.memory_swap = Some(memory * 2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(memory: i64, swap: i64, reservation: i64) -> HostConfig {
        HostConfig {
            memory: Some(memory),
            memory_swap: Some(swap),
            memory_reservation: Some(reservation),
            ..Default::default()
        }
    }

    #[test]
    fn memory_rules_are_dockerds() {
        validate(&host(128 << 20, 256 << 20, 64 << 20)).unwrap();
        validate(&host(128 << 20, -1, 0)).unwrap();
        for (bad, words) in [
            (host(3 << 20, 0, 0), "Minimum memory limit allowed is 6MB"),
            (host(0, 256 << 20, 0), "always set the Memory limit"),
            (
                host(128 << 20, 64 << 20, 0),
                "memoryswap limit should be larger",
            ),
            (
                host(128 << 20, 0, 256 << 20),
                "less than memory reservation",
            ),
        ] {
            assert!(
                validate(&bad).unwrap_err().to_string().contains(words),
                "{bad:?}"
            );
        }
        let mut filled = host(128 << 20, 0, 0);
        fill_defaults(&mut filled);
        assert_eq!(filled.memory_swap, Some(256 << 20));
    }
}
