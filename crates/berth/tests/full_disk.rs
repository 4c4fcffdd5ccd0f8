//! A full disk under the daemon's `--root` (a small ext4 filesystem that the test makes
//! on a loop device): every verb that needs space there fails with an error that says
//! the disk is full and what to do, the daemon serves on, nothing half-written is
//! recorded, and once space returns everything works again, without a restart, and after
//! one.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{busybox_archive, scratch, write_archive, Daemon};

/// The size of the test's filesystem: the busybox image and a few containers fit.
const FILESYSTEM_BYTES: u64 = 256 << 20;
/// What the daemon's errors say when the disk is full (berth_api::error::DISK_FULL_HINT).
const DISK_FULL: &str = "the disk is full: free space where the daemon keeps its data";

/// A filesystem mounted from an image file; unmounted when dropped.
struct LoopMount(PathBuf);

impl LoopMount {
    fn new(image: &Path, at: &Path) -> LoopMount {
        std::fs::File::create(image)
            .unwrap()
            .set_len(FILESYSTEM_BYTES)
            .unwrap();
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0"])
            .arg(image));
        std::fs::create_dir_all(at).unwrap();
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(image)
            .arg(at));
        LoopMount(at.to_path_buf())
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn run(command: &mut Command) {
    let output = command.output().expect("the command runs");
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Takes every free block of the filesystem at `root` into files under `root/filler`.
fn fill(root: &Path) -> PathBuf {
    let filler = root.join("filler");
    std::fs::create_dir_all(&filler).unwrap();
    // One big file, then small ones for what is left (the last blocks, and inodes).
    let free = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(root)
        .output()
        .unwrap();
    let free: u64 = String::from_utf8_lossy(&free.stdout)
        .lines()
        .last()
        .and_then(|line| line.trim().parse().ok())
        .expect("df tells the free space");
    let _ = Command::new("fallocate")
        .args(["-l", &(free - (256 << 10)).to_string()])
        .arg(filler.join("big"))
        .status();
    let mut index = 0;
    for size in [64 << 10, 4 << 10, 1 << 10] {
        let chunk = vec![0xa5u8; size];
        while std::fs::write(filler.join(format!("small{index}")), &chunk).is_ok() {
            index += 1;
        }
    }
    filler
}

fn random_bytes(count: u64) -> Vec<u8> {
    let mut bytes = Vec::new();
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .take(count)
        .read_to_end(&mut bytes)
        .unwrap();
    bytes
}

/// A tar of one file of `size` random bytes.
fn layer_of(size: u64) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(size);
    header.set_mode(0o644);
    header.set_cksum();
    builder
        .append_data(&mut header, "blob", random_bytes(size).as_slice())
        .unwrap();
    builder.into_inner().unwrap()
}

fn assert_full_disk_error(daemon: &Daemon, args: &[&str]) {
    let output = daemon.docker(args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains(DISK_FULL),
        "docker {args:?} on a full disk: status {:?}, stdout {:?}, stderr {stderr}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout)
    );
}

fn names(daemon: &Daemon, what: &[&str]) -> String {
    let mut names: Vec<String> = daemon.docker_ok(what).lines().map(str::to_owned).collect();
    names.sort();
    names.join(" ")
}

#[test]
fn a_full_disk_under_root_gives_clear_errors_and_berth_recovers_when_space_returns() {
    let dir = tempfile::tempdir_in(scratch()).unwrap();
    let root = dir.path().join("root");
    let _mount = LoopMount::new(&dir.path().join("root.ext4"), &root);
    let import = dir.path().join("import.tar");
    std::fs::write(&import, layer_of(8 << 20)).unwrap();
    let archive = dir.path().join("other.tar");
    write_archive(&archive, "other:1", &[layer_of(8 << 20)], &["/bin/sh"]);

    let daemon = Daemon::start(&root);
    daemon.docker_ok(&["load", "-i", busybox_archive().to_str().unwrap()]);
    daemon.docker_ok(&[
        "run",
        "--name",
        "kept",
        "busybox",
        "sh",
        "-c",
        // A change of 2 MiB: committing it needs the space.
        "echo before > /f; head -c 2097152 /dev/urandom > /g",
    ]);
    daemon.docker_ok(&["volume", "create", "keptvol"]);
    let listed = |daemon: &Daemon| {
        (
            names(daemon, &["ps", "-a", "--format", "{{.Names}}"]),
            names(daemon, &["images", "--format", "{{.Repository}}:{{.Tag}}"]),
            names(daemon, &["volume", "ls", "--format", "{{.Name}}"]),
        )
    };
    let before = listed(&daemon);

    let filler = fill(&root);
    assert_full_disk_error(&daemon, &["run", "--rm", "busybox", "true"]);
    assert_full_disk_error(&daemon, &["create", "--name", "new", "busybox"]);
    assert_full_disk_error(&daemon, &["load", "-i", archive.to_str().unwrap()]);
    assert_full_disk_error(&daemon, &["import", import.to_str().unwrap(), "imported"]);
    assert_full_disk_error(&daemon, &["commit", "kept", "committed"]);
    assert_full_disk_error(&daemon, &["volume", "create", "fullvol"]);
    // The daemon serves on, and nothing that failed is recorded.
    assert_eq!(listed(&daemon), before);
    assert_eq!(
        daemon.docker_ok(&["inspect", "-f", "{{.State.Status}}", "kept"]),
        "exited"
    );

    // Space returns: everything works again, without a restart.
    std::fs::remove_dir_all(&filler).unwrap();
    assert_eq!(
        daemon.docker_ok(&["run", "--rm", "busybox", "echo", "back"]),
        "back"
    );
    daemon.docker_ok(&["load", "-i", archive.to_str().unwrap()]);
    daemon.docker_ok(&["import", import.to_str().unwrap(), "imported"]);
    daemon.docker_ok(&["commit", "kept", "committed"]);
    daemon.docker_ok(&["volume", "create", "fullvol"]);
    assert_eq!(
        daemon.docker_ok(&["run", "--rm", "committed", "cat", "/f"]),
        "before"
    );
    let after = listed(&daemon);
    daemon.stop();
    // And after a restart, the same.
    let daemon = Daemon::start(&root);
    assert_eq!(listed(&daemon), after);
    assert_eq!(
        after.1,
        "busybox:latest committed:latest imported:latest other:1"
    );
    daemon.docker_ok(&["rm", "kept"]);
    daemon.stop();
}
