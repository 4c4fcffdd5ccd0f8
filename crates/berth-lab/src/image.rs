//! The lab's initramfs, built for each run.
//!
//! Layout (uncompressed newc; the lab kernel unpacks it into its root tmpfs):
//!
//! ```text
//! /init                          the init script (crate docs)
//! /bin/busybox                   static; `--install` makes the applets at boot
//! /usr/local/bin/berth           this binary
//! /usr/local/bin/docker          the docker CLI, when the host has one
//! /usr/local/bin/<program>       mkfs.ext4, debugfs, qemu-img, ip, nft where present
//!                                (ahead of busybox's applets in PATH)
//! <library paths>                every shared library those programs load (ldd), at
//!                                their host paths
//! /lib/modules/lab/<m>.ko, order the KVM and network modules with their
//!                                dependencies, in load order
//! /var/cache/berth/...           the guest kernel, the modules its VMs load and the
//!                                guest initramfs, laid out as in Berth's cache, so
//!                                that `berth` inside finds them without fetching
//! /lab/command                   the command, shell-quoted
//! /lab/deadline                 seconds the command may run before the lab reports
//!                                what its processes are blocked in and stops it
//! /lab/daemon-args               the lab daemon's arguments, shell-quoted (if any)
//! /lab/images/<n>.tar            image archives the daemon loads
//! <extra files>                  `--file HOST:LAB` of `berth lab`
//! qemu-system-x86_64, its BIOS   with `--with-qemu`: QEMU (for side-by-side runs of
//!   and option ROMs              the qemu backend) and its data directories
//! ```

use std::collections::BTreeSet;
use std::fs;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use berth_guest::cpio::CpioWriter;
use berth_guest::GuestImage;

use crate::{LabError, LabSpec, INIT_SCRIPT};

/// Programs the daemon calls, included with their libraries when the host has them.
const DAEMON_PROGRAMS: &[&str] = &["mkfs.ext4", "debugfs", "qemu-img", "ip", "nft"];

/// Where Debian's QEMU finds its BIOS and option ROMs.
const QEMU_DATA_DIRS: &[&str] = &[
    "/usr/share/qemu",
    "/usr/share/seabios",
    "/usr/lib/ipxe/qemu",
];

/// The regular files directly in `dir` (symbolic links followed), at the same paths.
fn add_directory_files<W: std::io::Write>(
    image: &mut ImageWriter<W>,
    dir: &Path,
) -> Result<(), LabError> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_file() {
            image.host_file(&path, &path.display().to_string())?;
        }
    }
    Ok(())
}

/// Modules the lab loads: KVM (AMD's: the lab's CPU is TCG's `max`, with SVM), and what
/// the daemon's networks use (taps, bridges, veth, nftables with NAT).
const LAB_MODULES: &[&str] = &[
    "kvm_amd",
    "tun",
    "bridge",
    "veth",
    "nf_tables",
    "nft_chain_nat",
    "nft_masq",
    "nft_nat",
    "nft_ct",
    "nft_fib_inet",
    "nft_reject_inet",
];

/// Where the lab's `berth` finds its cache.
const LAB_CACHE: &str = "var/cache/berth";

struct ImageWriter<W: std::io::Write> {
    cpio: CpioWriter<W>,
    directories: BTreeSet<String>,
}

impl<W: std::io::Write> ImageWriter<W> {
    fn directories_for(&mut self, name: &str) -> std::io::Result<()> {
        let mut prefix = String::new();
        let parts: Vec<&str> = name.split('/').collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            if self.directories.insert(prefix.clone()) {
                self.cpio.directory(&prefix, 0o755)?;
            }
        }
        Ok(())
    }

    fn directory(&mut self, name: &str) -> std::io::Result<()> {
        self.directories_for(&format!("{name}/x"))
    }

    fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> std::io::Result<()> {
        let name = name.trim_start_matches('/');
        self.directories_for(name)?;
        self.cpio.file(name, mode, data)
    }

    fn host_file(&mut self, host: &Path, name: &str) -> Result<(), LabError> {
        let data = fs::read(host).map_err(LabError::io(host))?;
        let mode = fs::metadata(host)
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()))
            .unwrap_or(0o644);
        self.file(name, mode, &data).map_err(LabError::io(host))
    }
}

/// Writes the lab initramfs for `spec` to `out`.
pub fn build(guest: &GuestImage, spec: &LabSpec, out: &Path) -> Result<(), LabError> {
    let file = fs::File::create(out).map_err(LabError::io(out))?;
    let mut image = ImageWriter {
        cpio: CpioWriter::new(BufWriter::new(file)),
        directories: BTreeSet::new(),
    };
    let result: Result<(), LabError> = (|| {
        for directory in [
            "dev", "proc", "sys", "run", "tmp", "root", "lab", "etc", "var/lib",
        ] {
            image.directory(directory).map_err(LabError::io(out))?;
        }
        image
            .cpio
            .char_device("dev/console", 0o600, 5, 1)
            .map_err(LabError::io(out))?;
        image
            .file("init", 0o755, INIT_SCRIPT.as_bytes())
            .map_err(LabError::io(out))?;
        image
            .file("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n")
            .map_err(LabError::io(out))?;
        image.host_file(Path::new("/bin/busybox"), "bin/busybox")?;

        let mut libraries = BTreeSet::new();
        let berth = std::env::current_exe().map_err(LabError::io(Path::new("/proc/self/exe")))?;
        add_program(&mut image, &berth, "usr/local/bin/berth", &mut libraries)?;
        if let Some(docker) = find_program("docker") {
            add_program(&mut image, &docker, "usr/local/bin/docker", &mut libraries)?;
        }
        for name in DAEMON_PROGRAMS {
            if let Some(path) = find_program(name) {
                // Ahead of busybox's applets of the same name (`ip`) in PATH.
                add_program(
                    &mut image,
                    &path,
                    &format!("usr/local/bin/{name}"),
                    &mut libraries,
                )?;
            }
        }
        if spec.with_qemu {
            if let Some(qemu) = find_program("qemu-system-x86_64") {
                // At its own path: QEMU finds its data relative to its executable.
                let inside = qemu.display().to_string();
                add_program(&mut image, &qemu, &inside, &mut libraries)?;
            }
            for dir in QEMU_DATA_DIRS {
                add_directory_files(&mut image, Path::new(dir))?;
            }
        }
        for library in &libraries {
            image.host_file(library, &library.display().to_string())?;
        }

        add_modules(&mut image, guest, spec)?;
        add_guest_cache(&mut image, guest, spec)?;
        for (host, inside) in &spec.files {
            image.host_file(host, inside)?;
        }
        for (index, archive) in spec.images.iter().enumerate() {
            image.host_file(archive, &format!("lab/images/{index}.tar"))?;
        }
        if let Some(arguments) = &spec.daemon_args {
            let words: Vec<String> = arguments.iter().map(|word| shell_quote(word)).collect();
            image
                .file("lab/daemon-args", 0o644, words.join(" ").as_bytes())
                .map_err(LabError::io(out))?;
        }
        let command = spec
            .command
            .iter()
            .map(|word| shell_quote(word))
            .collect::<Vec<_>>()
            .join(" ");
        image
            .file("lab/command", 0o644, format!("{command}\n").as_bytes())
            .map_err(LabError::io(out))?;
        image
            .file(
                "lab/deadline",
                0o644,
                format!("{}\n", command_deadline(spec.timeout).as_secs()).as_bytes(),
            )
            .map_err(LabError::io(out))?;
        image.cpio.finish().map_err(LabError::io(out))?;
        Ok(())
    })();
    result
}

/// How long the command may run inside the lab: the whole run's `timeout` less what the
/// lab's boot and its closing report need, so that a command that hangs is stopped inside
/// and the lab still prints its processes and logs before the host gives up on it.
fn command_deadline(timeout: Duration) -> Duration {
    timeout - (timeout / 3).min(Duration::from_secs(150))
}

fn add_program<W: std::io::Write>(
    image: &mut ImageWriter<W>,
    host: &Path,
    inside: &str,
    libraries: &mut BTreeSet<PathBuf>,
) -> Result<(), LabError> {
    image.host_file(host, inside)?;
    libraries.extend(shared_libraries(host));
    Ok(())
}

fn add_modules<W: std::io::Write>(
    image: &mut ImageWriter<W>,
    guest: &GuestImage,
    spec: &LabSpec,
) -> Result<(), LabError> {
    let modules_dir = modules_dir(guest, spec)?;
    let mut order = String::new();
    for module in berth_guest::modules::resolve_load_order(&modules_dir, LAB_MODULES)? {
        let name = module
            .file_name()
            .and_then(|name| name.to_str())
            .ok_or_else(|| LabError::Missing(format!("bad module path {}", module.display())))?
            .to_owned();
        image.host_file(&module, &format!("lib/modules/lab/{name}"))?;
        order.push_str(&name);
        order.push('\n');
    }
    image
        .file("lib/modules/lab/order", 0o644, order.as_bytes())
        .map_err(LabError::io(&modules_dir))
}

/// The cached kernel's module directory (next to its vmlinuz).
fn modules_dir(guest: &GuestImage, spec: &LabSpec) -> Result<PathBuf, LabError> {
    let dir = guest
        .kernel
        .parent()
        .map(|kernel_dir| kernel_dir.join("modules"))
        .filter(|dir| dir.is_dir())
        .ok_or_else(|| {
            LabError::Missing(format!(
                "no kernel modules next to {} (remove {} to fetch the kernel again)",
                guest.kernel.display(),
                spec.cache.join("kernel").display()
            ))
        })?;
    Ok(dir)
}

/// Copies what `berth_guest::prepare` reads inside the lab: the kernel record, the
/// kernel, the guest's modules and the built initramfs, at their cache-relative paths.
fn add_guest_cache<W: std::io::Write>(
    image: &mut ImageWriter<W>,
    guest: &GuestImage,
    spec: &LabSpec,
) -> Result<(), LabError> {
    let kernel_dir = guest
        .kernel
        .parent()
        .ok_or_else(|| LabError::Missing("the guest kernel has no directory".into()))?;
    let mut files = vec![
        spec.cache.join("kernel/current"),
        kernel_dir.join("package.json"),
        guest.kernel.clone(),
        guest.initramfs.clone(),
    ];
    files.extend(berth_guest::modules::resolve_load_order(
        &modules_dir(guest, spec)?,
        berth_guest::GUEST_MODULES,
    )?);
    for file in files {
        let relative = file.strip_prefix(&spec.cache).map_err(|_| {
            LabError::Missing(format!(
                "{} is not under the cache {}",
                file.display(),
                spec.cache.display()
            ))
        })?;
        image.host_file(&file, &format!("{LAB_CACHE}/{}", relative.display()))?;
    }
    Ok(())
}

/// `name` looked up in PATH (and the sbin directories, which a user's PATH may lack).
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|dir| Path::new(dir).join(name))
        .find(|candidate| candidate.is_file());
    found
}

/// The shared libraries `program` loads, from `ldd` (none for a static program).
fn shared_libraries(program: &Path) -> Vec<PathBuf> {
    let Ok(output) = Command::new("ldd").arg(program).output() else {
        return Vec::new();
    };
    if !output.status.success() {
        return Vec::new();
    }
    parse_ldd(&String::from_utf8_lossy(&output.stdout))
}

fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let candidate = match line.split_once("=>") {
                Some((_, resolved)) => resolved.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            candidate.starts_with('/').then(|| PathBuf::from(candidate))
        })
        .collect()
}

/// `word` quoted for a POSIX shell.
fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_library_paths() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n\
                    \tlibmissing.so => not found\n";
        assert_eq!(
            parse_ldd(text),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }

    #[test]
    fn the_command_stops_before_the_lab_is_killed() {
        assert_eq!(command_deadline(Duration::from_secs(900)).as_secs(), 750);
        assert_eq!(command_deadline(Duration::from_secs(90)).as_secs(), 60);
    }

    #[test]
    fn words_are_quoted_for_the_shell() {
        assert_eq!(shell_quote("uname -r"), "'uname -r'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
