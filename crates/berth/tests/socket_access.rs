//! Who may use the API socket, as with dockerd: root, and the members of the socket's
//! group (`--group`, `docker` by default); the socket is mode 0660 whatever the umask.
//! The test makes a group and two users (one in it, one not) and removes them after.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::{Command, Output};

use common::{scratch, Daemon, BERTH};

/// A group and two users made for the test, gone on drop.
struct Accounts {
    group: String,
    member: String,
    outsider: String,
}

impl Accounts {
    fn make() -> Self {
        let tag = std::process::id();
        let accounts = Accounts {
            group: format!("bsock{tag}"),
            member: format!("bsin{tag}"),
            outsider: format!("bsout{tag}"),
        };
        run(&["groupadd", &accounts.group]);
        run(&["useradd", "-M", "-G", &accounts.group, &accounts.member]);
        run(&["useradd", "-M", &accounts.outsider]);
        accounts
    }
}

impl Drop for Accounts {
    fn drop(&mut self) {
        for user in [&self.member, &self.outsider] {
            let _ = Command::new("userdel").arg(user).output();
        }
        let _ = Command::new("groupdel").arg(&self.group).output();
    }
}

fn run(argv: &[&str]) {
    let output = Command::new(argv[0]).args(&argv[1..]).output().unwrap();
    assert!(
        output.status.success(),
        "{argv:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `docker version` as `user`, against `daemon`.
fn docker_as(user: &str, daemon: &Daemon) -> Output {
    let host = format!("unix://{}", daemon.socket.display());
    Command::new("runuser")
        .args([
            "-u",
            user,
            "--",
            "env",
            "DOCKER_CONFIG=/nonexistent",
            "docker",
        ])
        .args(["-H", &host, "version", "--format", "{{.Server.Os}}"])
        .output()
        .unwrap()
}

#[test]
fn the_socket_is_for_root_and_its_group() {
    let accounts = Accounts::make();
    let root = scratch().join("socket-access");
    let daemon = Daemon::start_with(&root, &["--group", &accounts.group]);
    let metadata = std::fs::metadata(&daemon.socket).unwrap();
    assert_eq!(metadata.permissions().mode() & 0o777, 0o660);
    let gid = nix::unistd::Group::from_name(&accounts.group)
        .unwrap()
        .unwrap()
        .gid
        .as_raw();
    assert_eq!(metadata.gid(), gid);

    let member = docker_as(&accounts.member, &daemon);
    assert!(
        member.status.success(),
        "{}",
        String::from_utf8_lossy(&member.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&member.stdout).trim(), "linux");
    let outsider = docker_as(&accounts.outsider, &daemon);
    assert!(!outsider.status.success());
    assert!(
        String::from_utf8_lossy(&outsider.stderr).contains("permission denied"),
        "{}",
        String::from_utf8_lossy(&outsider.stderr)
    );
}

#[test]
fn a_group_that_does_not_exist_is_refused_at_start() {
    let root = scratch().join("socket-no-group");
    let output = Command::new(BERTH)
        .args(["daemon", "--group", "berth-no-such-group"])
        .arg("--root")
        .arg(&root)
        .arg("--socket")
        .arg(root.with_extension("sock"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(said.contains("no such group"), "{said}");
    assert!(!root.with_extension("sock").exists());
}
