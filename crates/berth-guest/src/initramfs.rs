//! The initramfs every container VM boots: Berth's agent as `/init` plus the kernel
//! modules it loads, in order.
//!
//! Contents: `/init` (the agent), `/dev/console`, empty `/proc /sys /dev /mnt /run /tmp`,
//! `/lib/modules/<name>.ko` and `/lib/modules/order` (one file name per line, load order).
//! The archive is uncompressed newc (the kernel unpacks it without a decompressor, which
//! is faster under emulation) and cached as `initramfs/<digest>.cpio`, where the digest is
//! a sha256 over the format version, the agent and every module (name and bytes): a
//! change to any of them gives a new archive.

use std::fs;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::cpio::CpioWriter;
use crate::GuestError;

/// Bumped when the layout above changes.
const LAYOUT_VERSION: &str = "berth-initramfs-1";

/// A built initramfs.
#[derive(Debug, Clone)]
pub struct BuiltInitramfs {
    pub path: PathBuf,
    pub digest: String,
}

/// Builds the archive for `agent` and `modules` (in load order) unless it is cached.
pub fn ensure_initramfs(
    cache: &Path,
    agent: &[u8],
    modules: &[PathBuf],
    kernel_identity: &str,
    progress: &dyn Fn(&str),
) -> Result<BuiltInitramfs, GuestError> {
    let mut module_images = Vec::new();
    let mut hasher = Sha256::new();
    hasher.update(LAYOUT_VERSION.as_bytes());
    hasher.update(kernel_identity.as_bytes());
    hasher.update((agent.len() as u64).to_le_bytes());
    hasher.update(agent);
    for path in modules {
        let name = path
            .file_name()
            .and_then(|name| name.to_str())
            .ok_or_else(|| GuestError::Module(format!("bad module path {}", path.display())))?
            .to_owned();
        let image = fs::read(path).map_err(GuestError::io(path))?;
        hasher.update(name.as_bytes());
        hasher.update((image.len() as u64).to_le_bytes());
        hasher.update(&image);
        module_images.push((name, image));
    }
    let digest = hex::encode(hasher.finalize());
    let dir = cache.join("initramfs");
    let path = dir.join(format!("{digest}.cpio"));
    if path.is_file() {
        return Ok(BuiltInitramfs { path, digest });
    }
    progress("building guest initramfs");
    fs::create_dir_all(&dir).map_err(GuestError::io(&dir))?;
    let staging = tempfile::NamedTempFile::new_in(&dir).map_err(GuestError::io(&dir))?;
    let mut writer = CpioWriter::new(BufWriter::new(staging.as_file()));
    let result: std::io::Result<()> = (move || {
        for directory in [
            "dev",
            "proc",
            "sys",
            "mnt",
            "run",
            "tmp",
            "lib",
            "lib/modules",
        ] {
            writer.directory(directory, 0o755)?;
        }
        writer.char_device("dev/console", 0o600, 5, 1)?;
        writer.file("init", 0o755, agent)?;
        let mut order = String::new();
        for (name, image) in &module_images {
            writer.file(&format!("lib/modules/{name}"), 0o644, image)?;
            order.push_str(name);
            order.push('\n');
        }
        writer.file("lib/modules/order", 0o644, order.as_bytes())?;
        writer.finish()?;
        Ok(())
    })();
    result.map_err(GuestError::io(&path))?;
    staging
        .as_file()
        .sync_all()
        .map_err(GuestError::io(&path))?;
    staging.persist(&path).map_err(|e| GuestError::Io {
        path: path.clone(),
        source: e.error,
    })?;
    Ok(BuiltInitramfs { path, digest })
}
