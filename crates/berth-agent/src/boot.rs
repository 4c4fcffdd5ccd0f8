//! Early boot: filesystems, kernel modules, the agent's port, and power-off.
//!
//! [`CONTAINER_ROOT`] is defined here, beside [`mount_container_root`] that mounts it:
//! `boot` uses no other module of the agent, so `process`, `volumes`, `changes` and the
//! others that work in the container root can all take the path from here without
//! depending on each other.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::{mount, MsFlags};

use berth_agent_proto::PORT_NAME;

/// Where container root filesystems are mounted.
pub const CONTAINER_ROOT: &str = "/mnt/root";

/// `_IO(0x12, 97)`: flush a block device's buffer cache.
const BLKFLSBUF: libc::c_ulong = 0x1261;

pub(crate) fn mount_fs(
    source: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> io::Result<()> {
    fs::create_dir_all(target)?;
    mount(Some(source), target, Some(fstype), flags, data).map_err(|errno| {
        io::Error::new(
            io::Error::from(errno).kind(),
            format!("mount {fstype} on {target}: {errno}"),
        )
    })
}

/// Mounts /proc, /sys and /dev in the initramfs.
pub fn mount_early_filesystems() -> io::Result<()> {
    let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount_fs("proc", "/proc", "proc", nodev, None)?;
    mount_fs("sysfs", "/sys", "sysfs", nodev, None)?;
    mount_fs(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    )?;
    mount_fs(
        "devpts",
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("ptmxmode=0666,mode=0620"),
    )?;
    Ok(())
}

/// Loads the modules named in /lib/modules/order, one file name per line, in that order.
pub fn load_modules() -> io::Result<()> {
    let order = fs::read_to_string("/lib/modules/order")?;
    for name in order.lines().map(str::trim).filter(|line| !line.is_empty()) {
        let path = Path::new("/lib/modules").join(name);
        let file = File::open(&path)?;
        let params = c"";
        // SAFETY: finit_module reads the open module file descriptor and a NUL-terminated
        // parameter string; both outlive the call.
        let rc =
            unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), params.as_ptr(), 0) };
        if rc != 0 {
            let error = io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::EEXIST) {
                return Err(io::Error::new(
                    error.kind(),
                    format!("loading {name}: {error}"),
                ));
            }
        }
    }
    Ok(())
}

fn find_port() -> Option<PathBuf> {
    for entry in fs::read_dir("/sys/class/virtio-ports").ok()?.flatten() {
        let name = fs::read_to_string(entry.path().join("name")).unwrap_or_default();
        if name.trim() == PORT_NAME {
            let device = Path::new("/dev").join(entry.file_name());
            if device.exists() {
                return Some(device);
            }
        }
    }
    None
}

/// Waits for the agent's virtio-serial port and opens it.
pub fn open_agent_port() -> io::Result<File> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(path) = find_port() {
            return OpenOptions::new().read(true).write(true).open(path);
        }
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no virtio port named {PORT_NAME}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits up to `timeout` for a device node to appear.
pub fn wait_for_device(path: &str, timeout: Duration) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    while !Path::new(path).exists() {
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("device {path} did not appear"),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Kills everything, flushes disks and powers the VM off. Never returns.
pub fn power_off() -> ! {
    // SAFETY: plain system calls without pointers; as PID 1, kill(-1) spares the agent.
    unsafe {
        libc::kill(-1, libc::SIGKILL);
        libc::sync();
    }
    let _ = nix::mount::umount2("/mnt/root", nix::mount::MntFlags::MNT_DETACH);
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Where the container's /proc, /sys and /dev wait, mounted and filled at boot, until
/// [`mount_container_root`] moves them into the container's root.
const STAGED: &str = "/run/berth/staged";

/// The size of the container's /dev/shm unless the engine asks for another (Docker's).
const DEFAULT_SHM_SIZE: u64 = 64 << 20;

/// Prepares the container's API filesystems at boot: /proc, /sys, a /dev with its device
/// nodes, links and /dev/shm. Done once per boot, before the agent says Hello, so that a
/// clone finds them ready in its template's memory and only moves them into place: every
/// kernel path a clone runs for the first time costs it time and memory (under TCG, its
/// translation), and nothing here depends on the container.
pub fn stage_container_api_filesystems() -> io::Result<()> {
    let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount_fs("proc", &format!("{STAGED}/proc"), "proc", nodev, None)?;
    mount_fs("sysfs", &format!("{STAGED}/sys"), "sysfs", nodev, None)?;
    let dev = format!("{STAGED}/dev");
    mount_fs(
        "tmpfs",
        &dev,
        "tmpfs",
        MsFlags::MS_NOSUID,
        Some("mode=755,size=65536k"),
    )?;
    // Docker's modes: anyone may use the common devices (a daemon that dropped root
    // must write /dev/null); the console only its owner and group.
    for (name, major, minor, mode) in [
        ("null", 1, 3, 0o666),
        ("zero", 1, 5, 0o666),
        ("full", 1, 7, 0o666),
        ("random", 1, 8, 0o666),
        ("urandom", 1, 9, 0o666),
        ("tty", 5, 0, 0o666),
        ("console", 5, 1, 0o620),
    ] {
        let path = format!("{dev}/{name}");
        nix::sys::stat::mknod(
            path.as_str(),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(mode),
            nix::sys::stat::makedev(major, minor),
        )
        .map_err(io::Error::from)?;
        // mknod's mode passes through the umask: set it as it is meant.
        fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
    }
    fs::create_dir_all(format!("{dev}/pts"))?;
    std::os::unix::fs::symlink("pts/ptmx", format!("{dev}/ptmx"))?;
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(target, format!("{dev}/{link}"))?;
    }
    mount_fs(
        "shm",
        &format!("{dev}/shm"),
        "tmpfs",
        nodev,
        Some(format!("mode=1777,size={DEFAULT_SHM_SIZE}").as_str()),
    )?;
    Ok(())
}

/// Moves a mount (with the mounts under it) from `source` to `target`.
fn move_mount(source: &str, target: &str) -> io::Result<()> {
    fs::create_dir_all(target)?;
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_MOVE,
        None::<&str>,
    )
    .map_err(|errno| {
        io::Error::new(
            io::Error::from(errno).kind(),
            format!("moving {source} to {target}: {errno}"),
        )
    })
}

/// Whether the container's root filesystem is mounted (a setup has run).
pub fn container_root_mounted() -> bool {
    std::fs::read_to_string("/proc/self/mounts").is_ok_and(|mounts| {
        mounts
            .lines()
            .any(|line| line.split(' ').nth(1) == Some(CONTAINER_ROOT))
    })
}

/// Mounts the container's root filesystem at /mnt/root and moves the API filesystems
/// staged at boot into it (once: a VM serves one container). `shm_size` is /dev/shm's
/// size in bytes (0: 64 MiB). The container's /sys is read-only unless `sys_writable`
/// (Docker's rule: writable only for `--privileged`); the agent's own /sys stays as it is.
pub fn mount_container_root(device: &str, shm_size: u64, sys_writable: bool) -> io::Result<()> {
    wait_for_device(device, Duration::from_secs(10))?;
    // A clone's kernel may hold blocks it read from the template's placeholder disk
    // (partition probing at boot): drop them before mounting the container's own disk.
    let disk = File::open(device)?;
    // SAFETY: BLKFLSBUF takes no argument; the descriptor is an open block device.
    unsafe {
        libc::ioctl(disk.as_raw_fd(), BLKFLSBUF, 0);
    }
    drop(disk);
    // No background zeroing of inode tables (ext4's lazy init thread): the image's
    // filesystem marks what is uninitialised, and on one vCPU that thread would compete
    // with the container's first process.
    mount_fs(
        device,
        "/mnt/root",
        "ext4",
        MsFlags::empty(),
        Some("noinit_itable"),
    )?;
    finish_container_root(shm_size, sys_writable)
}

/// Moves the API filesystems staged at boot into the container root mounted at
/// /mnt/root (a disk, or a share: see [`mount_container_root`]), and sizes /dev/shm.
pub fn finish_container_root(shm_size: u64, sys_writable: bool) -> io::Result<()> {
    for name in ["proc", "sys", "dev"] {
        let target = format!("/mnt/root/{name}");
        // A root filesystem without them (a bare snapshot) gets the directories.
        std::fs::create_dir_all(&target)?;
        move_mount(&format!("{STAGED}/{name}"), &target)?;
    }
    if !sys_writable {
        // A bind remount changes this mount only, not the sysfs superblock the agent's
        // own /sys shares.
        let flags = MsFlags::MS_REMOUNT
            | MsFlags::MS_BIND
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC;
        mount(
            None::<&str>,
            "/mnt/root/sys",
            None::<&str>,
            flags,
            None::<&str>,
        )
        .map_err(|errno| io::Error::other(format!("making /sys read-only: {errno}")))?;
    }
    mount(
        Some("/dev/pts"),
        "/mnt/root/dev/pts",
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(io::Error::from)?;
    if shm_size != 0 && shm_size != DEFAULT_SHM_SIZE {
        let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        mount(
            None::<&str>,
            "/mnt/root/dev/shm",
            None::<&str>,
            MsFlags::MS_REMOUNT | nodev,
            Some(format!("mode=1777,size={shm_size}").as_str()),
        )
        .map_err(|errno| io::Error::other(format!("sizing /dev/shm: {errno}")))?;
    }
    Ok(())
}
