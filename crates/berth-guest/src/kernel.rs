//! Fetching Debian's cloud kernel into Berth's cache without installing it on the host.
//!
//! Layout under the cache directory:
//!
//! ```text
//! kernel/current                  name of the directory in use (one line)
//! kernel/<package>_<version>/     vmlinuz, config, modules/ (lib/modules/<release>)
//!                                 and package.json {package, version, release}
//! ```
//!
//! The kernel is the one that `linux-image-cloud-amd64` depends on when it is first
//! needed, as its `-unsigned` package (`apt-get download` + `dpkg-deb -x`). The choice is
//! recorded in `kernel/current` and kept until the directory is removed.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::GuestError;

/// The meta-package whose dependency names the current cloud kernel.
pub const META_PACKAGE: &str = "linux-image-cloud-amd64";

/// A kernel in the cache.
#[derive(Debug, Clone)]
pub struct CachedKernel {
    pub vmlinuz: PathBuf,
    pub modules_dir: PathBuf,
    pub release: String,
    /// `package=version`.
    pub package: String,
}

#[derive(Serialize, Deserialize)]
struct PackageRecord {
    package: String,
    version: String,
    release: String,
}

fn run(command: &mut Command, what: &str) -> Result<String, GuestError> {
    let output = command.output().map_err(|e| GuestError::Command {
        what: what.into(),
        detail: e.to_string(),
    })?;
    if !output.status.success() {
        return Err(GuestError::Command {
            what: what.into(),
            detail: format!(
                "{}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn load(dir: &Path) -> Result<CachedKernel, GuestError> {
    let record_path = dir.join("package.json");
    let text = fs::read_to_string(&record_path).map_err(GuestError::io(&record_path))?;
    let record: PackageRecord = serde_json::from_str(&text)
        .map_err(|e| GuestError::Kernel(format!("{}: {e}", record_path.display())))?;
    let vmlinuz = dir.join("vmlinuz");
    if !vmlinuz.is_file() {
        return Err(GuestError::Kernel(format!(
            "{} is missing",
            vmlinuz.display()
        )));
    }
    Ok(CachedKernel {
        vmlinuz,
        modules_dir: dir.join("modules"),
        release: record.release,
        package: format!("{}={}", record.package, record.version),
    })
}

/// Resolves the current cloud kernel package name (`linux-image-<release>-unsigned`).
pub fn resolve_package() -> Result<(String, String), GuestError> {
    let depends = run(
        Command::new("apt-cache").args(["depends", META_PACKAGE]),
        "apt-cache depends",
    )?;
    let image = depends
        .lines()
        .filter_map(|line| line.trim().strip_prefix("Depends: "))
        .find(|name| name.starts_with("linux-image-") && name.ends_with("-cloud-amd64"))
        .ok_or_else(|| {
            GuestError::Kernel(format!(
                "{META_PACKAGE} names no kernel; run `apt-get update` and try again"
            ))
        })?;
    let release = image.trim_start_matches("linux-image-").to_owned();
    Ok((format!("{image}-unsigned"), release))
}

/// The release (`uname -r`) a bzImage announces: the first word of the version string
/// its setup header points at (`kernel_version` at 0x20e, relative to 0x200).
pub fn bzimage_release(image: &[u8]) -> Option<String> {
    if image.get(0x202..0x206)? != b"HdrS" {
        return None;
    }
    let pointer = u16::from_le_bytes([*image.get(0x20e)?, *image.get(0x20f)?]) as usize;
    let start = pointer.checked_add(0x200)?;
    let text = image.get(start..start.checked_add(256)?.min(image.len()))?;
    let end = text.iter().position(|byte| *byte == 0)?;
    let version = std::str::from_utf8(&text[..end]).ok()?;
    version.split_whitespace().next().map(str::to_owned)
}

/// Returns the cached kernel, fetching it first if there is none.
pub fn ensure_kernel(cache: &Path, progress: &dyn Fn(&str)) -> Result<CachedKernel, GuestError> {
    let root = cache.join("kernel");
    let current = root.join("current");
    if let Ok(name) = fs::read_to_string(&current) {
        match load(&root.join(name.trim())) {
            Ok(kernel) => return Ok(kernel),
            Err(error) => tracing::warn!(%error, "cached kernel is unusable; fetching again"),
        }
    }
    fs::create_dir_all(&root).map_err(GuestError::io(&root))?;
    let (package, release) = resolve_package()?;
    progress(&format!("fetching guest kernel {package} (first use)"));
    let staging = tempfile::Builder::new()
        .prefix(".fetch-")
        .tempdir_in(&root)
        .map_err(GuestError::io(&root))?;
    run(
        Command::new("apt-get")
            .arg("download")
            .arg(&package)
            .current_dir(staging.path()),
        "apt-get download",
    )?;
    let deb = fs::read_dir(staging.path())
        .map_err(GuestError::io(staging.path()))?
        .flatten()
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|ext| ext == "deb"))
        .ok_or_else(|| {
            GuestError::Kernel(format!("apt-get download {package} produced no .deb"))
        })?;
    let version = run(
        Command::new("dpkg-deb").arg("-f").arg(&deb).arg("Version"),
        "dpkg-deb -f",
    )?
    .trim()
    .to_owned();
    let unpacked = staging.path().join("x");
    run(
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked),
        "dpkg-deb -x",
    )?;

    let dir_name = format!("{package}_{version}");
    let assembled = staging.path().join(&dir_name);
    fs::create_dir_all(&assembled).map_err(GuestError::io(&assembled))?;
    let source_vmlinuz = unpacked.join(format!("boot/vmlinuz-{release}"));
    fs::rename(&source_vmlinuz, assembled.join("vmlinuz"))
        .map_err(GuestError::io(&source_vmlinuz))?;
    let source_config = unpacked.join(format!("boot/config-{release}"));
    fs::rename(&source_config, assembled.join("config")).map_err(GuestError::io(&source_config))?;
    let source_modules = unpacked.join(format!("lib/modules/{release}"));
    fs::rename(&source_modules, assembled.join("modules"))
        .map_err(GuestError::io(&source_modules))?;
    let record = PackageRecord {
        package: package.clone(),
        version: version.clone(),
        release,
    };
    let record_path = assembled.join("package.json");
    fs::write(
        &record_path,
        serde_json::to_vec_pretty(&record).expect("record serializes"),
    )
    .map_err(GuestError::io(&record_path))?;

    let final_dir = root.join(&dir_name);
    if final_dir.exists() {
        fs::remove_dir_all(&final_dir).map_err(GuestError::io(&final_dir))?;
    }
    fs::rename(&assembled, &final_dir).map_err(GuestError::io(&final_dir))?;
    let tmp_current = root.join(".current.tmp");
    fs::write(&tmp_current, format!("{dir_name}\n")).map_err(GuestError::io(&tmp_current))?;
    fs::rename(&tmp_current, &current).map_err(GuestError::io(&current))?;
    progress(&format!("guest kernel {package}={version} ready"));
    load(&final_dir)
}

#[cfg(test)]
mod tests {
    use super::bzimage_release;

    #[test]
    fn bzimage_release_is_read_from_the_setup_header() {
        let mut image = vec![0u8; 0x1000];
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x20e..0x210].copy_from_slice(&0x300u16.to_le_bytes());
        let version = b"6.1.0-pvm (builder@host) #1\0";
        image[0x500..0x500 + version.len()].copy_from_slice(version);
        assert_eq!(bzimage_release(&image).as_deref(), Some("6.1.0-pvm"));
        image[0x202] = b'X';
        assert_eq!(bzimage_release(&image), None);
    }
}
