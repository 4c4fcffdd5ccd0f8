//! A container's CPU controls (`--cpus`, `--cpu-quota`/`--cpu-period`, `--cpu-shares`,
//! `--cpuset-cpus`): checked as dockerd checks them, at create and update, and turned
//! into the limits of its VM's process on the host (`berth_vm::cpu_limits`). `--cpus`
//! also sizes the VM (its vCPUs, rounded up, fixed for a run); its exact value is the
//! VM's CPU quota, so `docker update --cpus` takes effect on a running container.

use berth_vm::cpu_limits::{self, CpuLimits, DEFAULT_PERIOD_US};
use bollard_stubs::models::HostConfig;

use crate::error::EngineError;
use crate::records::ContainerRecord;
use crate::Engine;

impl Engine {
    /// Puts a starting container's VM process `pid` under its CPU limits, if it has any.
    pub(crate) fn apply_cpu_limits(
        &self,
        record: &ContainerRecord,
        pid: u32,
    ) -> Result<(), EngineError> {
        let limits = limits(&record.host_config);
        if limits.is_empty() {
            return Ok(());
        }
        cpu_limits::apply(pid, &record.id, &limits)
            .map_err(|error| EngineError::StartFailed(format!("applying CPU limits: {error}")))
    }
}

fn set(value: Option<i64>) -> Option<i64> {
    value.filter(|v| *v > 0)
}

/// Refuses what dockerd refuses, with its words.
pub(crate) fn validate(host: &HostConfig) -> Result<(), EngineError> {
    let invalid = |message: String| Err(EngineError::InvalidArgument(message));
    if set(host.nano_cpus).is_some() {
        if set(host.cpu_period).is_some() {
            return invalid(
                "Conflicting options: Nano CPUs and CPU Period cannot both be set".into(),
            );
        }
        if set(host.cpu_quota).is_some() {
            return invalid(
                "Conflicting options: Nano CPUs and CPU Quota cannot both be set".into(),
            );
        }
    }
    if let Some(period) = set(host.cpu_period) {
        if !(1000..=1_000_000).contains(&period) {
            return invalid(
                "CPU cfs period can not be less than 1ms (i.e. 1000) or larger than 1s (i.e. 1000000)"
                    .into(),
            );
        }
    }
    if set(host.cpu_quota).is_some_and(|quota| quota < 1000) {
        return invalid("CPU cfs quota can not be less than 1ms (i.e. 1000)".into());
    }
    if let Some(cpus) = host.cpuset_cpus.as_deref().filter(|c| !c.is_empty()) {
        let Some(requested) = cpu_limits::parse_cpu_list(cpus) else {
            return invalid(format!("Invalid value {cpus} for cpuset cpus"));
        };
        let available = cpu_limits::host_cpus().unwrap_or_default();
        if !available.is_empty() && requested.iter().any(|cpu| !available.contains(cpu)) {
            let online =
                std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap_or_default();
            return invalid(format!(
                "Requested CPUs are not available - requested {cpus}, available: {}",
                online.trim()
            ));
        }
    }
    Ok(())
}

/// The limits of the container's VM process.
pub(crate) fn limits(host: &HostConfig) -> CpuLimits {
    let (quota_us, period_us) = match (set(host.nano_cpus), set(host.cpu_quota)) {
        (Some(nano), _) => (
            Some((nano as u64 * DEFAULT_PERIOD_US).div_ceil(1_000_000_000)),
            DEFAULT_PERIOD_US,
        ),
        (None, Some(quota)) => (
            Some(quota as u64),
            set(host.cpu_period).map_or(DEFAULT_PERIOD_US, |p| p as u64),
        ),
        (None, None) => (
            None,
            set(host.cpu_period).map_or(DEFAULT_PERIOD_US, |p| p as u64),
        ),
    };
    CpuLimits {
        quota_us,
        period_us,
        shares: set(host.cpu_shares).map(|s| s as u64),
        cpuset: host.cpuset_cpus.clone().filter(|c| !c.is_empty()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpus_become_a_quota_and_conflict_with_one() {
        let host = HostConfig {
            nano_cpus: Some(1_500_000_000),
            cpu_shares: Some(512),
            cpuset_cpus: Some("0".into()),
            ..Default::default()
        };
        validate(&host).unwrap();
        let limits = limits(&host);
        assert_eq!(limits.quota_us, Some(150_000));
        assert_eq!(limits.period_us, 100_000);
        assert_eq!(limits.shares, Some(512));
        assert_eq!(limits.cpuset.as_deref(), Some("0"));
        let both = HostConfig {
            nano_cpus: Some(1_000_000_000),
            cpu_quota: Some(50_000),
            ..Default::default()
        };
        assert!(validate(&both)
            .unwrap_err()
            .to_string()
            .contains("Nano CPUs and CPU Quota"));
    }

    #[test]
    fn quotas_periods_and_cpu_sets_are_checked() {
        let quota = HostConfig {
            cpu_quota: Some(50_000),
            cpu_period: Some(200_000),
            ..Default::default()
        };
        validate(&quota).unwrap();
        assert_eq!(limits(&quota).quota_us, Some(50_000));
        assert_eq!(limits(&quota).period_us, 200_000);
        for bad in [
            HostConfig {
                cpu_period: Some(500),
                ..Default::default()
            },
            HostConfig {
                cpu_quota: Some(10),
                ..Default::default()
            },
            HostConfig {
                cpuset_cpus: Some("0-x".into()),
                ..Default::default()
            },
            HostConfig {
                cpuset_cpus: Some("4095".into()),
                ..Default::default()
            },
        ] {
            assert!(validate(&bad).is_err(), "{bad:?}");
        }
        assert!(limits(&HostConfig::default()).is_empty());
    }
}
