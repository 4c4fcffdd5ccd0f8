//! A container's OCI resources (`linux.resources` of its spec at `Create`, or what
//! containerd's `Update` carries) as the limits of its cgroup in the guest
//! ([`Resources`]), the way runc maps them onto cgroup v2: memory limit to
//! `memory.max`, CPU quota and period to `cpu.max`, CPU shares to `cpu.weight`, the
//! pids limit to `pids.max`. Device rules, block I/O, huge pages and networking
//! priorities have no counterpart here and are left alone (the VM is the boundary).

use berth_engine::sandbox::Resources;
use oci_spec::runtime::{LinuxResources, Spec};

use crate::ShimError;

/// The type URL containerd marshals `Update`'s resources under (as JSON).
pub const LINUX_RESOURCES_TYPE: &str =
    "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources";

/// An OCI limit where 0 means "not set" and a negative value "no limit".
fn limit(value: i64) -> Option<u64> {
    match value {
        0 => None,
        v if v < 0 => Some(0),
        v => Some(v as u64),
    }
}

/// cgroup v1's CPU shares (2..262144) as cgroup v2's weight (1..10000), as runc does.
fn weight_of_shares(shares: u64) -> Option<u64> {
    (shares != 0).then(|| 1 + (shares.clamp(2, 262_144) - 2) * 9999 / 262_142)
}

pub fn of_linux(resources: &LinuxResources) -> Resources {
    let memory = resources.memory().as_ref();
    let cpu = resources.cpu().as_ref();
    Resources {
        memory_bytes: memory.and_then(|m| m.limit()).and_then(limit),
        cpu_quota_us: cpu.and_then(|c| c.quota()).and_then(limit),
        cpu_period_us: cpu.and_then(|c| c.period()).filter(|p| *p > 0),
        cpu_weight: cpu.and_then(|c| c.shares()).and_then(weight_of_shares),
        // The OCI spec says 0 or -1 is no limit.
        pids_max: resources
            .pids()
            .as_ref()
            .map(|p| u64::try_from(p.limit()).unwrap_or(0)),
    }
}

/// The resources of a task's spec (`linux.resources`).
pub fn of_spec(spec: &Spec) -> Resources {
    spec.linux()
        .as_ref()
        .and_then(|linux| linux.resources().as_ref())
        .map(of_linux)
        .unwrap_or_default()
}

/// Whether `resources` limit anything (memory, CPU time or processes), beyond a mere
/// CPU weight: a VM's first task gets a cgroup in the guest for limits only (a pod's
/// sandbox, whose spec has CPU shares alone, does not).
pub fn limit_anything(resources: &Resources) -> bool {
    [
        resources.memory_bytes,
        resources.cpu_quota_us,
        resources.pids_max,
    ]
    .iter()
    .any(|limit| limit.is_some_and(|value| value > 0))
}

/// The resources of `Update`'s `Any` (JSON of an OCI `LinuxResources`).
pub fn of_update(type_url: &str, value: &[u8]) -> Result<Resources, ShimError> {
    if type_url != LINUX_RESOURCES_TYPE {
        return Err(ShimError::Usage(format!(
            "resources of type {type_url:?}: only {LINUX_RESOURCES_TYPE} is supported"
        )));
    }
    let resources: LinuxResources = serde_json::from_slice(value)
        .map_err(|error| ShimError::Usage(format!("the update's resources: {error}")))?;
    Ok(of_linux(&resources))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oci_limits_become_cgroup_v2_limits() {
        let json = br#"{"memory":{"limit":33554432},"cpu":{"shares":1024,"quota":50000,"period":100000},"pids":{"limit":-1}}"#;
        let resources = of_update(LINUX_RESOURCES_TYPE, json).unwrap();
        assert_eq!(resources.memory_bytes, Some(32 << 20));
        assert_eq!(resources.cpu_quota_us, Some(50_000));
        assert_eq!(resources.cpu_period_us, Some(100_000));
        // runc's conversion: 1024 shares are weight 39.
        assert_eq!(resources.cpu_weight, Some(39));
        assert_eq!(resources.pids_max, Some(0));
        let unset = of_update(LINUX_RESOURCES_TYPE, b"{}").unwrap();
        assert_eq!(unset, Resources::default());
        let unlimited = of_update(LINUX_RESOURCES_TYPE, br#"{"memory":{"limit":-1}}"#).unwrap();
        assert_eq!(unlimited.memory_bytes, Some(0));
        assert!(of_update("types.containerd.io/other", b"{}").is_err());
        assert!(of_update(LINUX_RESOURCES_TYPE, b"{not json").is_err());
        assert!(limit_anything(&resources));
        let weight_only = of_update(LINUX_RESOURCES_TYPE, br#"{"cpu":{"shares":2}}"#).unwrap();
        assert!(!limit_anything(&weight_only));
        assert!(!limit_anything(&unlimited));
    }
}
