//! `docker update -m` of a running container whose VM has no balloon (a clone: its
//! memory is its template's): the container's processes go into a cgroup of the guest
//! with that memory limit, as under Docker, where `-m` is a cgroup limit too. Exceeding
//! it ends in the guest kernel's out-of-memory kill (137, `OOMKilled`).
//!
//! Contract: [`limit`] mounts cgroup v2 at [`CGROUP_ROOT`] (the agent's, never the
//! container's /sys), makes the group [`GROUP`], sets `memory.max` (and no swap), and
//! moves every process but the agent into it; from then on, [`join_path`] names the file
//! each new container process writes `0` to between fork and exec, so that it joins too.

use std::ffi::CString;
use std::fs;
use std::io;
use std::path::Path;
use std::sync::OnceLock;

use nix::mount::{mount, MsFlags};

/// Where the agent mounts the guest's cgroup v2 hierarchy.
const CGROUP_ROOT: &str = "/run/berth/cgroup";
/// The container's group.
const GROUP: &str = "/run/berth/cgroup/container";

/// Set once the group exists: the file new processes write `0` to.
static JOIN: OnceLock<CString> = OnceLock::new();

/// The file a new container process writes `0` to, to join the group, once it exists.
pub fn join_path() -> Option<CString> {
    JOIN.get().cloned()
}

fn write(path: &str, value: &str) -> io::Result<()> {
    fs::write(path, value)
        .map_err(|e| io::Error::new(e.kind(), format!("writing {value:?} to {path}: {e}")))
}

/// Limits the container's processes to `bytes` of memory (0: no limit).
pub fn limit(bytes: u64) -> io::Result<()> {
    if !Path::new(CGROUP_ROOT).join("cgroup.controllers").exists() {
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
    }
    write(&format!("{CGROUP_ROOT}/cgroup.subtree_control"), "+memory")?;
    fs::create_dir_all(GROUP)?;
    let value = if bytes == 0 {
        "max".to_owned()
    } else {
        bytes.to_string()
    };
    write(&format!("{GROUP}/memory.max"), &value)?;
    // A kernel without swap accounting has no such file: there is no swap anyway.
    let _ = fs::write(format!("{GROUP}/memory.swap.max"), "0");
    let procs = format!("{GROUP}/cgroup.procs");
    let _ = JOIN.set(CString::new(procs.clone()).map_err(io::Error::other)?);
    // Everything but the agent (PID 1); kernel threads refuse to move, which is fine.
    for entry in fs::read_dir("/proc")?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if pid != 1 {
            let _ = fs::write(&procs, pid.to_string());
        }
    }
    Ok(())
}
