//! CPU controls of a VM's process on the host: Docker's `--cpus`, `--cpu-quota` and
//! `--cpu-period`, `--cpu-shares` and `--cpuset-cpus`, applied to every thread of the
//! VMM (its vCPU threads included) through a cgroup of its own.
//!
//! Contract: [`apply`] puts the process in `berth/NAME` (made if missing) with the given
//! limits, in cgroup v2's unified hierarchy, or in cgroup v1's `cpu` and `cpuset`
//! hierarchies where the host still mounts those; it can be called again on a running
//! process to change them (`docker update`). Threads the process makes later inherit
//! the group. [`remove`] deletes the group once the process has ended.
//!
//! Written here rather than with a cgroup crate: Berth writes five files of two
//! controllers, and the crates made for this (cgroups-rs) model all of an OCI runtime's
//! resources and hierarchies, far more than this needs to trust.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The host's cgroup file systems.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The group under which each VM's group is made.
const PARENT: &str = "berth";
/// Docker's default CFS period, in microseconds.
pub const DEFAULT_PERIOD_US: u64 = 100_000;

/// What a VM's process may use of the host's CPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuLimits {
    /// CPU time per period, in microseconds (`None`: unlimited).
    pub quota_us: Option<u64>,
    /// The period of the quota, in microseconds.
    pub period_us: u64,
    /// Relative weight, in Docker's `--cpu-shares` units (2..=262144; 1024 is normal).
    pub shares: Option<u64>,
    /// The host CPUs it may run on, in the kernel's list form (`0-2,4`).
    pub cpuset: Option<String>,
}

impl CpuLimits {
    /// Whether nothing is limited: the process can stay where it is.
    pub fn is_empty(&self) -> bool {
        self.quota_us.is_none() && self.shares.is_none() && self.cpuset.is_none()
    }
}

/// cgroup v2's `cpu.weight` for Docker's shares (runc's conversion).
fn weight(shares: u64) -> u64 {
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

fn write(path: &Path, value: &str) -> io::Result<()> {
    fs::write(path, value).map_err(|error| {
        io::Error::new(
            error.kind(),
            format!("writing {value:?} to {}: {error}", path.display()),
        )
    })
}

fn is_unified() -> bool {
    Path::new(CGROUP_ROOT).join("cgroup.controllers").exists()
}

/// The v1 hierarchy that has `controller` (`cpu` may be mounted as `cpu,cpuacct`).
fn v1_hierarchy(controller: &str) -> io::Result<PathBuf> {
    for candidate in [controller.to_owned(), format!("{controller},cpuacct")] {
        let path = Path::new(CGROUP_ROOT).join(candidate);
        if path.join("tasks").exists() {
            return Ok(path);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("the host has no cgroup hierarchy with the {controller} controller"),
    ))
}

/// Puts process `pid` in the group of VM `name` with `limits`.
pub fn apply(pid: u32, name: &str, limits: &CpuLimits) -> io::Result<()> {
    if is_unified() {
        apply_unified(pid, name, limits)
    } else {
        apply_v1(pid, name, limits)
    }
}

fn apply_unified(pid: u32, name: &str, limits: &CpuLimits) -> io::Result<()> {
    let root = Path::new(CGROUP_ROOT);
    let parent = root.join(PARENT);
    fs::create_dir_all(&parent)?;
    // Controllers reach a group only through its parents' subtree_control.
    let wanted = if limits.cpuset.is_some() {
        "+cpu +cpuset"
    } else {
        "+cpu"
    };
    write(&root.join("cgroup.subtree_control"), wanted)?;
    write(&parent.join("cgroup.subtree_control"), wanted)?;
    let group = parent.join(name);
    fs::create_dir_all(&group)?;
    let quota = limits
        .quota_us
        .map_or_else(|| "max".to_owned(), |q| q.to_string());
    write(
        &group.join("cpu.max"),
        &format!("{quota} {}", limits.period_us),
    )?;
    write(
        &group.join("cpu.weight"),
        &weight(limits.shares.unwrap_or(1024)).to_string(),
    )?;
    if let Some(cpus) = &limits.cpuset {
        write(&group.join("cpuset.cpus"), cpus)?;
    }
    write(&group.join("cgroup.procs"), &pid.to_string())
}

fn apply_v1(pid: u32, name: &str, limits: &CpuLimits) -> io::Result<()> {
    let cpu = v1_hierarchy("cpu")?.join(PARENT).join(name);
    fs::create_dir_all(&cpu)?;
    write(
        &cpu.join("cpu.cfs_period_us"),
        &limits.period_us.to_string(),
    )?;
    let quota = limits.quota_us.map_or(-1, |q| q as i64);
    write(&cpu.join("cpu.cfs_quota_us"), &quota.to_string())?;
    write(
        &cpu.join("cpu.shares"),
        &limits.shares.unwrap_or(1024).to_string(),
    )?;
    write(&cpu.join("cgroup.procs"), &pid.to_string())?;

    let cpuset_root = v1_hierarchy("cpuset")?;
    let parent = cpuset_root.join(PARENT);
    let group = parent.join(name);
    // A v1 cpuset takes no task until its CPUs and memory nodes are set: a new group
    // starts with its parent's.
    for (dir, above) in [(&parent, &cpuset_root), (&group, &parent)] {
        if !dir.exists() {
            fs::create_dir_all(dir)?;
        }
        for file in ["cpuset.cpus", "cpuset.mems"] {
            if fs::read_to_string(dir.join(file))?.trim().is_empty() {
                write(
                    &dir.join(file),
                    fs::read_to_string(above.join(file))?.trim(),
                )?;
            }
        }
    }
    let cpus = match &limits.cpuset {
        Some(cpus) => cpus.clone(),
        None => fs::read_to_string(parent.join("cpuset.cpus"))?
            .trim()
            .to_owned(),
    };
    write(&group.join("cpuset.cpus"), &cpus)?;
    write(&group.join("cgroup.procs"), &pid.to_string())
}

/// Deletes the group of VM `name` (its process has ended). Nothing to delete is fine.
pub fn remove(name: &str) {
    let groups: Vec<PathBuf> = if is_unified() {
        vec![Path::new(CGROUP_ROOT).join(PARENT).join(name)]
    } else {
        ["cpu", "cpuset"]
            .iter()
            .filter_map(|c| v1_hierarchy(c).ok())
            .map(|h| h.join(PARENT).join(name))
            .collect()
    };
    for group in groups {
        // A cgroup directory is removed with rmdir, its files going with it.
        let _ = fs::remove_dir(group);
    }
}

/// The host CPUs, as the kernel lists them (`/sys/devices/system/cpu/online`).
pub fn host_cpus() -> io::Result<Vec<u32>> {
    let text = fs::read_to_string("/sys/devices/system/cpu/online")?;
    parse_cpu_list(text.trim())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("odd CPU list {text:?}")))
}

/// Parses the kernel's CPU list form (`0-2,4`).
pub fn parse_cpu_list(text: &str) -> Option<Vec<u32>> {
    let mut cpus = Vec::new();
    for part in text.split(',') {
        match part.split_once('-') {
            Some((first, last)) => {
                let (first, last): (u32, u32) = (first.parse().ok()?, last.parse().ok()?);
                if first > last || last - first > 4096 {
                    return None;
                }
                cpus.extend(first..=last);
            }
            None => cpus.push(part.parse().ok()?),
        }
    }
    Some(cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_become_runc_weights() {
        assert_eq!(weight(2), 1);
        assert_eq!(weight(1024), 39);
        assert_eq!(weight(262_144), 10_000);
    }

    #[test]
    fn cpu_lists_parse_as_the_kernel_writes_them() {
        assert_eq!(parse_cpu_list("0-2,4"), Some(vec![0, 1, 2, 4]));
        assert_eq!(parse_cpu_list("1"), Some(vec![1]));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("a"), None);
        assert_eq!(parse_cpu_list(""), None);
    }
}
