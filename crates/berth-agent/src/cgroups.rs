//! Containers' cgroups in the guest (cgroup v2): limits, usage and freezing of one
//! container's processes among the VM's.
//!
//! Contract: the agent mounts the hierarchy at [`CGROUP_ROOT`] (the agent's, never a
//! container's /sys) the first time a group is needed, with the memory, cpu and pids
//! controllers enabled for its children. A further container of the VM (a pod's,
//! `crate::pod`) gets the group `pod-<name>` when it is added, with the limits of its
//! spec; the VM's first container gets `container` only when it is first limited
//! (`docker update -m` of a VM without a balloon, containerd's `Update`), and then every
//! process of the root group but the agent moves into it. From then on [`join_path`]
//! names the `cgroup.procs` each new process of that container writes `0` to between
//! fork and exec. A memory limit exceeded ends in the guest kernel's out-of-memory kill
//! (137, `OOMKilled`), as under Docker, where `-m` is a cgroup limit too.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs;
use std::io;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use berth_agent_proto::{GroupMemory, Resources};
use nix::mount::{mount, MsFlags};

/// Where the agent mounts the guest's cgroup v2 hierarchy.
const CGROUP_ROOT: &str = "/run/berth/cgroup";

/// The `cgroup.procs` of every container that has a group (`None`: the VM's first).
static GROUPS: Mutex<Option<HashMap<Option<String>, CString>>> = Mutex::new(None);

fn groups() -> MutexGuard<'static, Option<HashMap<Option<String>, CString>>> {
    GROUPS.lock().unwrap_or_else(|p| p.into_inner())
}

fn key(container: Option<&str>) -> Option<String> {
    container.map(str::to_owned)
}

/// The directory of `container`'s group (names are checked by `crate::pod`).
fn directory(container: Option<&str>) -> String {
    match container {
        None => format!("{CGROUP_ROOT}/container"),
        Some(name) => format!("{CGROUP_ROOT}/pod-{name}"),
    }
}

/// The file a new process of `container` writes `0` to, to join its group, once it
/// has one.
pub fn join_path(container: Option<&str>) -> Option<CString> {
    groups().as_ref()?.get(&key(container)).cloned()
}

fn write(path: &str, value: &str) -> io::Result<()> {
    fs::write(path, value)
        .map_err(|e| io::Error::new(e.kind(), format!("writing {value:?} to {path}: {e}")))
}

fn mount_hierarchy() -> io::Result<()> {
    if Path::new(CGROUP_ROOT).join("cgroup.controllers").exists() {
        return Ok(());
    }
    fs::create_dir_all(CGROUP_ROOT)?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(
        Some("cgroup2"),
        CGROUP_ROOT,
        Some("cgroup2"),
        flags,
        None::<&str>,
    )
    .map_err(|e| io::Error::other(format!("mounting cgroup2: {e}")))?;
    write(&format!("{CGROUP_ROOT}/cgroup.subtree_control"), "+memory")?;
    // Limits of CPU and processes are asked for less; a kernel without them still
    // limits memory.
    for controller in ["+cpu", "+pids"] {
        if let Err(error) = write(&format!("{CGROUP_ROOT}/cgroup.subtree_control"), controller) {
            eprintln!("berth-agent: {error}");
        }
    }
    Ok(())
}

/// Makes `container`'s group (if it has none) with `resources`.
pub fn create(container: Option<&str>, resources: &Resources) -> io::Result<()> {
    mount_hierarchy()?;
    let directory = directory(container);
    fs::create_dir_all(&directory)?;
    // A kernel without swap accounting has no such file: there is no swap anyway.
    let _ = fs::write(format!("{directory}/memory.swap.max"), "0");
    apply(&directory, resources)?;
    let procs = CString::new(format!("{directory}/cgroup.procs")).map_err(io::Error::other)?;
    groups()
        .get_or_insert_with(HashMap::new)
        .insert(key(container), procs);
    Ok(())
}

fn limit_or_max(value: u64) -> String {
    if value == 0 {
        "max".to_owned()
    } else {
        value.to_string()
    }
}

fn apply(directory: &str, resources: &Resources) -> io::Result<()> {
    if let Some(bytes) = resources.memory_bytes {
        write(&format!("{directory}/memory.max"), &limit_or_max(bytes))?;
    }
    if resources.cpu_quota_us.is_some() || resources.cpu_period_us.is_some() {
        let quota = resources.cpu_quota_us.map(limit_or_max);
        let value = match (quota, resources.cpu_period_us) {
            (Some(quota), Some(period)) => format!("{quota} {period}"),
            (Some(quota), None) => quota,
            // The period alone keeps the quota the group has.
            (None, Some(period)) => {
                let now = fs::read_to_string(format!("{directory}/cpu.max"))?;
                let quota = now.split_whitespace().next().unwrap_or("max").to_owned();
                format!("{quota} {period}")
            }
            (None, None) => unreachable!("one of them is set"),
        };
        write(&format!("{directory}/cpu.max"), &value)?;
    }
    if let Some(weight) = resources.cpu_weight {
        write(
            &format!("{directory}/cpu.weight"),
            &weight.clamp(1, 10_000).to_string(),
        )?;
    }
    if let Some(pids) = resources.pids_max {
        write(&format!("{directory}/pids.max"), &limit_or_max(pids))?;
    }
    Ok(())
}

/// Sets `resources` on `container`'s group. The VM's first container gets its group
/// here, and its running processes (every process of the root group but the agent)
/// move into it; a further container has had its group since it was added.
pub fn update(container: Option<&str>, resources: &Resources) -> io::Result<()> {
    if join_path(container).is_some() {
        return apply(&directory(container), resources);
    }
    if container.is_some() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "the container has no cgroup",
        ));
    }
    create(None, resources)?;
    let procs = format!("{}/cgroup.procs", directory(None));
    // Kernel threads refuse to move, which is fine; further containers' processes are
    // in their own groups and stay.
    for entry in fs::read_dir("/proc")?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let in_root_group = fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .is_ok_and(|groups| groups.trim_end() == "0::/");
        if pid != 1 && in_root_group {
            let _ = fs::write(&procs, pid.to_string());
        }
    }
    Ok(())
}

/// Freezes (or thaws) the further container `name`'s processes, and waits until the
/// kernel says they are (at most a few seconds).
pub fn freeze(name: &str, frozen: bool) -> io::Result<()> {
    if join_path(Some(name)).is_none() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no container {name:?} in this VM"),
        ));
    }
    let directory = directory(Some(name));
    write(
        &format!("{directory}/cgroup.freeze"),
        if frozen { "1" } else { "0" },
    )?;
    let wanted = if frozen { "frozen 1" } else { "frozen 0" };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let events = fs::read_to_string(format!("{directory}/cgroup.events"))?;
        if events.lines().any(|line| line == wanted) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the container's processes did not reach \"{wanted}\""),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether `container`'s processes are frozen (`freeze`): a process started in its
/// group would freeze before it runs, and the agent's thread that spawns it with it.
pub fn frozen(container: Option<&str>) -> bool {
    join_path(container).is_some()
        && fs::read_to_string(format!("{}/cgroup.freeze", directory(container)))
            .is_ok_and(|value| value.trim() == "1")
}

/// Kills whatever is left in the further container `name`'s group and removes it.
pub fn remove(name: &str) {
    let Some(_) = groups()
        .as_mut()
        .and_then(|groups| groups.remove(&Some(name.to_owned())))
    else {
        return;
    };
    let directory = directory(Some(name));
    let _ = fs::write(format!("{directory}/cgroup.freeze"), "0");
    let _ = fs::write(format!("{directory}/cgroup.kill"), "1");
    // The killed processes leave the group as they are reaped.
    let deadline = Instant::now() + Duration::from_secs(2);
    while fs::remove_dir(&directory).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// What a container's group counts.
pub struct GroupUsage {
    pub processes: u64,
    /// CPU time, nanoseconds.
    pub user_ns: u64,
    pub system_ns: u64,
    /// Anonymous memory (`memory.stat`'s `anon`), bytes.
    pub anon_bytes: u64,
    pub memory: GroupMemory,
}

/// What `container`'s group counts; `None` when the container has no group.
pub fn usage(container: Option<&str>) -> Option<GroupUsage> {
    join_path(container)?;
    let directory = directory(container);
    let read = |file: &str| fs::read_to_string(format!("{directory}/{file}")).unwrap_or_default();
    let number = |text: &str| text.trim().parse::<u64>().unwrap_or(0);
    let keyed = |text: &str, key: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix(' '))
            .map(number)
            .unwrap_or(0)
    };
    let processes = read("cgroup.procs").lines().count() as u64;
    let cpu = read("cpu.stat");
    let stat = read("memory.stat");
    let memory = GroupMemory {
        usage: number(&read("memory.current")),
        cache: keyed(&stat, "file"),
        inactive_file: keyed(&stat, "inactive_file"),
        limit: number(&read("memory.max")),
    };
    Some(GroupUsage {
        processes,
        user_ns: keyed(&cpu, "user_usec").saturating_mul(1000),
        system_ns: keyed(&cpu, "system_usec").saturating_mul(1000),
        anon_bytes: keyed(&stat, "anon"),
        memory,
    })
}
