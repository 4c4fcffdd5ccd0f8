//! `Rehearse`: what a VM restored ahead of demand does before any container claims it
//! (see the engine's `vm::spares`). It runs the guest code of a container's setup and
//! first process once, and undoes it: mounts the first disk (the spare's placeholder,
//! an ext4 file system made for this) read-only without its journal, reads its root
//! directory and unmounts it; then starts a process of its own binary in a PID
//! namespace of its own, which exits at once, and waits for it. Nothing of it stays:
//! the setup later drops the disk's cached blocks (`BLKFLSBUF`) before it mounts the
//! container's disk, which has taken the placeholder's place by then.
//!
//! Why: under software emulation (QEMU's TCG) a VM translates guest code the first time
//! it runs it, per VM process; a spare that ran these paths already starts its
//! container without translating them. Under KVM it costs a few milliseconds, before
//! any container asks.

use std::io;
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use nix::mount::{umount2, MntFlags, MsFlags};

/// What the rehearsal's process runs as: it exits at once with status 0.
pub const HELPER_NAME: &str = "berth-rehearsal";

/// Where the first disk is mounted for the rehearsal.
const MOUNT_POINT: &str = "/run/berth/rehearsal";

/// The first disk.
const DISK: &str = "/dev/vda";

/// The rehearsal's steps and how long each took (microseconds), as `SetupDone`'s.
pub fn rehearse() -> io::Result<Vec<(String, u64)>> {
    let mut steps = Vec::new();
    let mut clock = Instant::now();
    let mut done = |name: &str, clock: &mut Instant| {
        steps.push((name.to_owned(), clock.elapsed().as_micros() as u64));
        *clock = Instant::now();
    };
    std::fs::create_dir_all(MOUNT_POINT)?;
    nix::mount::mount(
        Some(DISK),
        MOUNT_POINT,
        Some("ext4"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOATIME,
        Some("noload"),
    )
    .map_err(|errno| io::Error::other(format!("mounting {DISK} read-only: {errno}")))?;
    let listed = std::fs::read_dir(MOUNT_POINT).map(|entries| entries.count());
    umount2(MOUNT_POINT, MntFlags::MNT_DETACH)
        .map_err(|errno| io::Error::other(format!("unmounting {DISK}: {errno}")))?;
    listed?;
    done("mount", &mut clock);
    let namespace = crate::pid_namespace::ForChildren::enter(true, None)?;
    let child = std::process::Command::new("/proc/self/exe")
        .arg0(HELPER_NAME)
        .spawn();
    drop(namespace);
    let pid = child?.id() as i32;
    // The agent's reaper may collect it first: wait until it is gone either way.
    let deadline = Instant::now() + Duration::from_secs(10);
    while nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(2));
    }
    done("process", &mut clock);
    Ok(steps)
}
