//! An OCI runtime spec's process (the bundle's `config.json`, or an exec's spec) as a
//! process of Berth's guest agent.
//!
//! What maps: args, env, cwd, the user (numeric uid:gid and additional gids, as the
//! spec gives them), the terminal and its size, rlimits, the bounding capabilities,
//! `noNewPrivileges`. The task's init runs as PID 1 of a PID namespace of its own
//! (as runc runs it); execs join it. Not mapped: the spec's umask, AppArmor and SELinux
//! labels and OOM score, which concern the host's kernel, not the guest's.
//!
//! The spec's mounts: see [`sandbox_mounts`].

use std::path::Path;

use berth_agent_proto::ProcessSpec;
use berth_engine::sandbox::{capability_number, rlimit_number, SandboxMount};
use berth_engine::EngineError;
use oci_spec::runtime::{Mount, Process};

/// The guest process for `process`; `init` for the task's first one.
pub fn guest_process(
    process: &Process,
    init: bool,
    stdin: bool,
) -> Result<ProcessSpec, EngineError> {
    let user = process.user();
    let capabilities = match process.capabilities() {
        Some(capabilities) => match capabilities.bounding() {
            Some(bounding) => {
                // A set in the spec: in numbers' order here.
                let mut numbers = bounding
                    .iter()
                    .map(|capability| capability_number(&capability.to_string()))
                    .collect::<Result<Vec<u8>, _>>()?;
                numbers.sort_unstable();
                Some(numbers)
            }
            None => Some(Vec::new()),
        },
        None => Some(Vec::new()),
    };
    let rlimits = process
        .rlimits()
        .iter()
        .flatten()
        .map(|limit| {
            let name = serde_json::to_value(limit.typ())
                .ok()
                .and_then(|value| value.as_str().map(str::to_owned))
                .unwrap_or_default();
            Ok((rlimit_number(&name)?, limit.soft(), limit.hard()))
        })
        .collect::<Result<Vec<_>, EngineError>>()?;
    let args = process.args().clone().unwrap_or_default();
    if args.is_empty() {
        return Err(EngineError::InvalidArgument(
            "the process has no args: nothing to run".into(),
        ));
    }
    Ok(ProcessSpec {
        argv: args,
        env: process.env().clone().unwrap_or_default(),
        cwd: process.cwd().display().to_string(),
        user: format!("{}:{}", user.uid(), user.gid()),
        tty: process.terminal().unwrap_or(false),
        stdin,
        tty_size: process
            .console_size()
            .map(|size| (size.height() as u16, size.width() as u16)),
        rlimits,
        capabilities,
        no_new_privileges: process.no_new_privileges().unwrap_or(false),
        agent_helper: false,
        extra_groups: user
            .additional_gids()
            .iter()
            .flatten()
            .map(|gid| gid.to_string())
            .collect(),
        own_pid_namespace: init,
        container: None,
    })
}

/// The spec's mounts that the guest needs from the shim: bind mounts (served as
/// shares) and tmpfs mounts. The guest's own `/proc`, `/sys`, `/dev` (and `/dev/pts`,
/// `/dev/shm`, `/dev/mqueue`, cgroups) are its kernel's, already in place: the spec's
/// are left out, as are types this runtime does not mount (named in the log).
pub fn sandbox_mounts(mounts: &[Mount], bundle: &Path) -> Vec<SandboxMount> {
    let mut wanted = Vec::new();
    for mount in mounts {
        let target = mount.destination().display().to_string();
        let kind = mount.typ().as_deref().unwrap_or("");
        let options = mount.options().clone().unwrap_or_default();
        let bind = kind == "bind" || options.iter().any(|o| o == "bind" || o == "rbind");
        if bind {
            let Some(source) = mount.source() else {
                tracing::warn!("bind mount at {target} has no source: left out");
                continue;
            };
            let source = match source.is_absolute() {
                true => source.clone(),
                false => bundle.join(source),
            };
            wanted.push(SandboxMount::Share {
                source,
                target,
                read_only: options.iter().any(|o| o == "ro"),
            });
            continue;
        }
        match kind {
            "tmpfs" if target == "/dev" || target == "/dev/shm" => {}
            "tmpfs" => wanted.push(SandboxMount::Tmpfs { target, options }),
            "proc" | "sysfs" | "devpts" | "mqueue" | "cgroup" | "cgroup2" => {}
            other => tracing::warn!("mount of type {other:?} at {target}: left out"),
        }
    }
    wanted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_become_shares_tmpfs_stays_and_the_guests_own_are_left_out() {
        let mounts: Vec<Mount> = serde_json::from_value(serde_json::json!([
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm"},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup"},
            {"destination": "/data", "type": "bind", "source": "/srv/data", "options": ["rbind", "ro"]},
            {"destination": "/etc/hosts", "source": "hosts", "options": ["bind"]},
            {"destination": "/scratch", "type": "tmpfs", "source": "tmpfs", "options": ["size=1m"]}
        ]))
        .unwrap();
        assert_eq!(
            sandbox_mounts(&mounts, Path::new("/bundle")),
            [
                SandboxMount::Share {
                    source: "/srv/data".into(),
                    target: "/data".into(),
                    read_only: true
                },
                SandboxMount::Share {
                    source: "/bundle/hosts".into(),
                    target: "/etc/hosts".into(),
                    read_only: false
                },
                SandboxMount::Tmpfs {
                    target: "/scratch".into(),
                    options: vec!["size=1m".into()]
                },
            ]
        );
    }

    fn process(json: serde_json::Value) -> Process {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn a_ctr_default_process_maps() {
        let spec = guest_process(
            &process(serde_json::json!({
                "terminal": false,
                "user": {"uid": 1000, "gid": 100, "additionalGids": [10, 20]},
                "args": ["sh", "-c", "id"],
                "env": ["PATH=/bin", "A=b"],
                "cwd": "/work",
                "capabilities": {"bounding": ["CAP_CHOWN", "CAP_KILL"]},
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 512}],
                "noNewPrivileges": true
            })),
            true,
            false,
        )
        .unwrap();
        assert_eq!(spec.argv, ["sh", "-c", "id"]);
        assert_eq!(spec.env, ["PATH=/bin", "A=b"]);
        assert_eq!(spec.cwd, "/work");
        assert_eq!(spec.user, "1000:100");
        assert_eq!(spec.extra_groups, ["10", "20"]);
        assert_eq!(
            spec.capabilities,
            Some(vec![
                capability_number("CHOWN").unwrap(),
                capability_number("KILL").unwrap()
            ])
        );
        assert_eq!(spec.rlimits, [(7, 512, 1024)]);
        assert!(spec.no_new_privileges);
        assert!(spec.own_pid_namespace);
        assert!(!spec.tty);
    }

    #[test]
    fn a_terminal_keeps_its_size_and_an_exec_joins_the_namespace() {
        let spec = guest_process(
            &process(serde_json::json!({
                "terminal": true,
                "consoleSize": {"height": 40, "width": 120},
                "user": {"uid": 0, "gid": 0},
                "args": ["sh"],
                "cwd": "/"
            })),
            false,
            true,
        )
        .unwrap();
        assert!(spec.tty && spec.stdin);
        assert_eq!(spec.tty_size, Some((40, 120)));
        assert!(!spec.own_pid_namespace);
        assert_eq!(
            spec.capabilities,
            Some(Vec::new()),
            "no capabilities listed: none kept"
        );
    }

    #[test]
    fn nothing_to_run_or_unknown_names_are_refused() {
        let empty =
            process(serde_json::json!({"user": {"uid": 0, "gid": 0}, "cwd": "/", "args": []}));
        assert!(guest_process(&empty, true, false).is_err());
        assert!(rlimit_number("RLIMIT_BOGUS").is_err());
    }
}
