//! What the container's processes may do inside their VM: capabilities (Docker's default
//! set, `--cap-add`, `--cap-drop`, `--privileged`) and resource limits (`--ulimit`),
//! turned into the numbers the agent applies before `exec`.
//!
//! The VM is the isolation boundary; these make a process inside it see what it would
//! see in a Docker container (a default `docker run` cannot, for instance, change the
//! network configuration).

use bollard_stubs::models::HostConfig;

use crate::error::EngineError;

/// Linux capability names, by number.
const CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Docker's default capabilities.
const DEFAULT_CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// A capability's number, by its name with or without `CAP_`, in any case.
pub fn capability_number(name: &str) -> Result<u8, EngineError> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    CAPABILITIES
        .iter()
        .position(|known| *known == bare)
        .map(|n| n as u8)
        .ok_or_else(|| EngineError::InvalidArgument(format!("unknown capability: \"{name}\"")))
}

/// The capabilities a container's processes keep (numbers), or `None` for all of them
/// (`--privileged`, or `--cap-add ALL`).
pub fn capabilities(host: &HostConfig) -> Result<Option<Vec<u8>>, EngineError> {
    if host.privileged == Some(true) {
        return Ok(None);
    }
    let add = host.cap_add.clone().unwrap_or_default();
    let drop = host.cap_drop.clone().unwrap_or_default();
    let all = |list: &[String]| list.iter().any(|c| c.eq_ignore_ascii_case("ALL"));
    let mut kept: Vec<u8> = if all(&add) {
        (0..CAPABILITIES.len() as u8).collect()
    } else {
        DEFAULT_CAPABILITIES
            .iter()
            .map(|name| capability_number(name))
            .collect::<Result<_, _>>()?
    };
    if all(&drop) {
        kept.clear();
    }
    for name in drop.iter().filter(|c| !c.eq_ignore_ascii_case("ALL")) {
        let number = capability_number(name)?;
        kept.retain(|n| *n != number);
    }
    for name in add.iter().filter(|c| !c.eq_ignore_ascii_case("ALL")) {
        let number = capability_number(name)?;
        if !kept.contains(&number) {
            kept.push(number);
        }
    }
    kept.sort_unstable();
    if kept.len() == CAPABILITIES.len() {
        return Ok(None);
    }
    Ok(Some(kept))
}

/// `--security-opt no-new-privileges`.
pub fn no_new_privileges(host: &HostConfig) -> bool {
    host.security_opt.iter().flatten().any(|option| {
        matches!(
            option.as_str(),
            "no-new-privileges" | "no-new-privileges:true" | "no-new-privileges=true"
        )
    })
}

/// `--ulimit` names and their `RLIMIT_*` numbers.
const RLIMITS: &[(&str, u32)] = &[
    ("cpu", 0),
    ("fsize", 1),
    ("data", 2),
    ("stack", 3),
    ("core", 4),
    ("rss", 5),
    ("nproc", 6),
    ("nofile", 7),
    ("memlock", 8),
    ("as", 9),
    ("locks", 10),
    ("sigpending", 11),
    ("msgqueue", 12),
    ("nice", 13),
    ("rtprio", 14),
    ("rttime", 15),
];

/// An `RLIMIT_*` resource's number, by Docker's name (`nofile`) or the kernel's
/// (`RLIMIT_NOFILE`, as OCI runtime specs name them).
pub fn rlimit_number(name: &str) -> Result<u32, EngineError> {
    let lower = name.to_ascii_lowercase();
    let bare = lower.strip_prefix("rlimit_").unwrap_or(&lower);
    RLIMITS
        .iter()
        .find(|(known, _)| *known == bare)
        .map(|(_, n)| *n)
        .ok_or_else(|| EngineError::InvalidArgument(format!("invalid rlimit type: {name}")))
}

/// `--ulimit`s as (resource number, soft, hard); -1 is "unlimited".
pub fn rlimits(host: &HostConfig) -> Result<Vec<(u32, u64, u64)>, EngineError> {
    let mut limits = Vec::new();
    for ulimit in host.ulimits.iter().flatten() {
        let name = ulimit.name.clone().unwrap_or_default();
        let resource = RLIMITS
            .iter()
            .find(|(known, _)| *known == name)
            .map(|(_, n)| *n)
            .ok_or_else(|| EngineError::InvalidArgument(format!("invalid ulimit type: {name}")))?;
        let value = |v: Option<i64>| match v {
            Some(-1) | None => u64::MAX,
            Some(v) if v >= 0 => v as u64,
            Some(_) => u64::MAX,
        };
        let (soft, hard) = (value(ulimit.soft), value(ulimit.hard));
        if soft > hard {
            return Err(EngineError::InvalidArgument(format!(
                "ulimit soft limit must be less than or equal to hard limit: {soft} > {hard}"
            )));
        }
        limits.push((resource, soft, hard));
    }
    Ok(limits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard_stubs::models::ResourcesUlimits;

    #[test]
    fn capabilities_follow_dockers_rules() {
        let default = capabilities(&HostConfig::default()).unwrap().unwrap();
        assert_eq!(default.len(), DEFAULT_CAPABILITIES.len());
        assert!(!default.contains(&capability_number("NET_ADMIN").unwrap()));
        let host = HostConfig {
            cap_add: Some(vec!["NET_ADMIN".into()]),
            cap_drop: Some(vec!["cap_chown".into()]),
            ..Default::default()
        };
        let kept = capabilities(&host).unwrap().unwrap();
        assert!(kept.contains(&12));
        assert!(!kept.contains(&0));
        let none = HostConfig {
            cap_drop: Some(vec!["ALL".into()]),
            ..Default::default()
        };
        assert_eq!(capabilities(&none).unwrap(), Some(vec![]));
        let privileged = HostConfig {
            privileged: Some(true),
            ..Default::default()
        };
        assert_eq!(capabilities(&privileged).unwrap(), None);
        let bad = HostConfig {
            cap_add: Some(vec!["FLY".into()]),
            ..Default::default()
        };
        assert!(capabilities(&bad).is_err());
    }

    #[test]
    fn ulimits_are_named_as_docker_names_them() {
        let host = HostConfig {
            ulimits: Some(vec![ResourcesUlimits {
                name: Some("nofile".into()),
                soft: Some(1024),
                hard: Some(2048),
            }]),
            ..Default::default()
        };
        assert_eq!(rlimits(&host).unwrap(), vec![(7, 1024, 2048)]);
        let bad = HostConfig {
            ulimits: Some(vec![ResourcesUlimits {
                name: Some("files".into()),
                soft: Some(1),
                hard: Some(1),
            }]),
            ..Default::default()
        };
        assert!(rlimits(&bad).is_err());
    }
}
