//! A task's usage as containerd's metrics (`Stats`): cgroups v1's `Metrics` message,
//! which containerd's CRI plugin reads for `ContainerStats` (CPU time, memory in use,
//! processes), filled from what the guest counts for the task's container
//! ([`berth_engine::sandbox::ContainerUsage`]). A container with a cgroup in the guest
//! (every further container of a pod; the VM's first once limited) reports its
//! cgroup's memory, page cache included (the CRI's working set is usage less
//! `total_inactive_file`, as for runc's containers); otherwise memory in use is the
//! processes' resident memory.

use berth_engine::sandbox::ContainerUsage;
use containerd_shim_protos::cgroups::metrics::{
    CPUStat, CPUUsage, MemoryEntry, MemoryStat, Metrics, PidsStat,
};

/// The type URL containerd registers cgroups v1's metrics under.
pub const METRICS_TYPE: &str = "io.containerd.cgroups.v1.Metrics";

pub fn metrics(usage: &ContainerUsage) -> Metrics {
    let mut cpu_usage = CPUUsage::new();
    cpu_usage.user = usage.user_ns;
    cpu_usage.kernel = usage.system_ns;
    cpu_usage.total = usage.user_ns.saturating_add(usage.system_ns);
    let mut cpu = CPUStat::new();
    cpu.usage = Some(cpu_usage).into();
    let mut in_use = MemoryEntry::new();
    let mut memory = MemoryStat::new();
    memory.rss = usage.rss_bytes;
    memory.total_rss = usage.rss_bytes;
    match usage.memory {
        Some(group) => {
            in_use.usage = group.usage;
            in_use.limit = group.limit;
            memory.cache = group.cache;
            memory.total_cache = group.cache;
            memory.inactive_file = group.inactive_file;
            memory.total_inactive_file = group.inactive_file;
        }
        None => in_use.usage = usage.rss_bytes,
    }
    memory.usage = Some(in_use).into();
    let mut pids = PidsStat::new();
    pids.current = usage.processes;
    let mut metrics = Metrics::new();
    metrics.cpu = Some(cpu).into();
    metrics.memory = Some(memory).into();
    metrics.pids = Some(pids).into();
    metrics
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_engine::sandbox::GroupMemory;
    use containerd_shim_protos::protobuf::Message;

    #[test]
    fn usage_becomes_cgroups_metrics_and_the_type_is_containerds() {
        let usage = ContainerUsage {
            processes: 3,
            user_ns: 2_000_000,
            system_ns: 1_000_000,
            rss_bytes: 5 << 20,
            memory: None,
        };
        let bytes = metrics(&usage).write_to_bytes().unwrap();
        let back = Metrics::parse_from_bytes(&bytes).unwrap();
        assert_eq!(back.cpu.usage.total, 3_000_000);
        assert_eq!(back.cpu.usage.kernel, 1_000_000);
        assert_eq!(back.memory.usage.usage, 5 << 20);
        assert_eq!(back.pids.current, 3);
        let grouped = ContainerUsage {
            memory: Some(GroupMemory {
                usage: 9 << 20,
                cache: 4 << 20,
                inactive_file: 3 << 20,
                limit: 32 << 20,
            }),
            ..usage
        };
        let back = metrics(&grouped);
        assert_eq!(back.memory.usage.usage, 9 << 20);
        assert_eq!(back.memory.usage.limit, 32 << 20);
        assert_eq!(back.memory.total_inactive_file, 3 << 20);
        assert_eq!(back.memory.rss, 5 << 20);
        assert_eq!(
            format!("io.containerd.cgroups.v1.{}", Metrics::NAME),
            METRICS_TYPE
        );
    }
}
