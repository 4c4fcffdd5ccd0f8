//! Pods: the containers of a Kubernetes pod share one VM.
//!
//! containerd's CRI plugin runs a pod as its sandbox task (the pause container, whose
//! `config.json` says `io.kubernetes.cri.container-type: sandbox`) and then each of its
//! containers as a task (`container`, with `io.kubernetes.cri.sandbox-id` naming the
//! sandbox). The sandbox task makes the pod's VM (its network namespace becomes the
//! VM's NIC); `start` of a container's task answers with the address of its sandbox's
//! shim (as runc's shim groups a pod), and `Create` there adds the container to the
//! VM: its own root filesystem and mounts, its own mount namespace and cgroup in the
//! guest, the pod's network and hostname shared (its PID namespace too, when its spec
//! asks).

use std::collections::HashMap;

/// The annotation that says what a CRI task is (`sandbox` or `container`).
pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// The annotation naming a CRI container's pod sandbox.
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

/// The sandbox id of the pod a task belongs to, when it is a pod's container (not its
/// sandbox) by its spec's `annotations`.
pub fn sandbox_of(annotations: &HashMap<String, String>) -> Option<String> {
    match annotations.get(CONTAINER_TYPE).map(String::as_str) {
        Some("container") => annotations
            .get(SANDBOX_ID)
            .filter(|id| !id.is_empty())
            .cloned(),
        _ => None,
    }
}

/// The name of task `id`'s container in its pod's VM: the id with what a guest name
/// cannot hold replaced, cut to 64 characters (CRI's ids are 64 hex digits).
pub fn guest_name(id: &str) -> String {
    let name: String = id
        .chars()
        .map(
            |c| match c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                true => c,
                false => '_',
            },
        )
        .take(64)
        .collect();
    match name.is_empty() {
        true => "_".into(),
        false => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pods_container_names_its_sandbox_and_nothing_else_does() {
        let pod_member = HashMap::from([
            (CONTAINER_TYPE.to_owned(), "container".to_owned()),
            (SANDBOX_ID.to_owned(), "abc".to_owned()),
        ]);
        assert_eq!(sandbox_of(&pod_member).as_deref(), Some("abc"));
        let sandbox = HashMap::from([
            (CONTAINER_TYPE.to_owned(), "sandbox".to_owned()),
            (SANDBOX_ID.to_owned(), "abc".to_owned()),
        ]);
        assert_eq!(sandbox_of(&sandbox), None);
        assert_eq!(sandbox_of(&HashMap::new()), None);
    }

    #[test]
    fn guest_names_are_valid_for_the_agent() {
        for id in ["a".repeat(64), "x/../y".into(), "".into(), "é".repeat(70)] {
            let name = guest_name(&id);
            assert!(berth_agent_proto::valid_container_name(&name), "{name:?}");
        }
        assert_eq!(guest_name(&"f".repeat(80)).len(), 64);
    }
}
