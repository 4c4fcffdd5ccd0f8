//! The shim's two short-lived actions.
//!
//! `start` (containerd runs it in the task's bundle directory): starts the serving shim
//! process, detached in a session of its own, and prints the ttrpc address it serves on
//! (`unix:///run/containerd/s/<sha256 of address/namespace/id>`, where containerd's own
//! shims put theirs) once it serves: the serving process closes its standard output
//! then. containerd reads the whole output of `start` as the address, so nothing else
//! is printed. A shim already serving that address is reused.
//!
//! `delete` (after a shim died): unmounts the bundle's rootfs, kills the task's VM if it
//! outlived its shim, and prints a `DeleteResponse` (status 137: killed).

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use containerd_shim_protos::protobuf::Message;
use sha2::{Digest, Sha256};

use crate::flags::Flags;
use crate::{ShimConfig, ShimError, BINARY_NAME, COLD_BINARY_NAME};

/// Where containerd's shims listen.
const SOCKET_DIR: &str = "/run/containerd/s";

/// The socket of the shim for `flags`'s task, which serves the tasks of the group
/// `group` (a pod's sandbox id, or the task's own id).
pub(crate) fn socket_path(flags: &Flags, group: &str) -> PathBuf {
    let grouping = Path::new(&flags.address).join(&flags.namespace).join(group);
    let digest = Sha256::digest(grouping.as_os_str().as_encoded_bytes());
    Path::new(SOCKET_DIR).join(hex::encode(digest))
}

/// The group of the task whose bundle is `bundle`: a pod's container (the CRI's
/// annotations say so) goes to the shim of its pod's sandbox, whose VM it joins; any
/// other task has a shim of its own.
fn group_of(bundle: &Path, id: &str) -> String {
    let annotations = oci_spec::runtime::Spec::load(bundle.join("config.json"))
        .ok()
        .and_then(|spec| spec.annotations().clone())
        .unwrap_or_default();
    crate::pod::sandbox_of(&annotations).unwrap_or_else(|| id.to_owned())
}

pub(crate) fn start(flags: &Flags, config: &ShimConfig) -> Result<(), ShimError> {
    let bundle = match flags.bundle.is_empty() {
        true => std::env::current_dir().map_err(ShimError::io("the bundle directory"))?,
        false => PathBuf::from(&flags.bundle),
    };
    let socket = socket_path(flags, &group_of(&bundle, &flags.id));
    let address = format!("unix://{}", socket.display());
    if std::os::unix::net::UnixStream::connect(&socket).is_err() {
        let _ = std::fs::remove_file(&socket);
        std::fs::create_dir_all(SOCKET_DIR).map_err(ShimError::io(SOCKET_DIR))?;
        let program = std::env::current_exe().map_err(ShimError::io("finding this program"))?;
        let mut command = Command::new(program);
        command
            .arg0(match config.clone {
                true => BINARY_NAME,
                false => COLD_BINARY_NAME,
            })
            .args(["-namespace", &flags.namespace])
            .args(["-id", &flags.id])
            .args(["-address", &flags.address])
            .args(["-publish-binary", &flags.publish_binary])
            .args(["-socket", &address])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if flags.debug {
            command.arg("-debug");
        }
        // SAFETY: setsid is async-signal-safe and touches no memory of the parent; the
        // shim must outlive this process and not share containerd's session.
        unsafe {
            command.pre_exec(|| {
                nix::unistd::setsid().map_err(std::io::Error::from)?;
                Ok(())
            });
        }
        let mut child = command
            .spawn()
            .map_err(ShimError::io("starting the serving shim"))?;
        // It closes its standard output once it serves (or when it dies).
        let mut ignored = Vec::new();
        if let Some(mut output) = child.stdout.take() {
            let _ = output.read_to_end(&mut ignored);
        }
        if std::os::unix::net::UnixStream::connect(&socket).is_err() {
            let _ = child.kill();
            return Err(ShimError::Io {
                what: format!(
                    "the serving shim did not listen at {} (its log is the bundle's `log`)",
                    socket.display()
                ),
                source: std::io::Error::from(std::io::ErrorKind::NotConnected),
            });
        }
    }
    std::fs::write("address", &address).map_err(ShimError::io("writing the address file"))?;
    std::io::stdout()
        .write_all(address.as_bytes())
        .map_err(ShimError::io("printing the address"))?;
    Ok(())
}

pub(crate) fn delete(flags: &Flags, config: &ShimConfig) -> Result<(), ShimError> {
    let bundle = match flags.bundle.is_empty() {
        true => std::env::current_dir().map_err(ShimError::io("the bundle directory"))?,
        false => PathBuf::from(&flags.bundle),
    };
    crate::rootfs::unmount(&bundle.join("rootfs"));
    let run_dir = crate::rootfs::vm_run_dir(config, &flags.namespace, &flags.id);
    for pid in berth_vm::process::vm_processes_under(&run_dir) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = std::fs::remove_dir_all(&run_dir);
    let mut response = containerd_shim_protos::api::DeleteResponse::new();
    response.exit_status = 137;
    response.exited_at = Some(crate::service::timestamp_now()).into();
    let bytes = response.write_to_bytes()?;
    std::io::stdout()
        .write_all(&bytes)
        .map_err(ShimError::io("printing the delete response"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_is_containerds_hash_of_address_namespace_and_id() {
        let flags = Flags {
            namespace: "default".into(),
            id: "t1".into(),
            address: "/run/containerd/containerd.sock".into(),
            ..Flags::default()
        };
        let expected = hex::encode(Sha256::digest(
            b"/run/containerd/containerd.sock/default/t1",
        ));
        assert_eq!(
            socket_path(&flags, "t1"),
            Path::new(SOCKET_DIR).join(expected)
        );
        assert_ne!(socket_path(&flags, "t1"), socket_path(&flags, "t2"));
    }
}
