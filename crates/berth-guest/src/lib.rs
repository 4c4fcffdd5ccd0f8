//! Berth's guest image: the kernel every container VM boots and the initramfs whose
//! PID 1 is Berth's agent.
//!
//! [`prepare`] is the entry point: it makes sure the kernel is in the cache (fetching
//! Debian's package on first use, see [`kernel`]), then builds or reuses the initramfs
//! (see [`initramfs`]), and returns the paths and a digest of everything a VM boots from.
//! The digest changes whenever the kernel, the modules or the agent change, so VM
//! templates keyed by it are rebuilt.

pub mod cpio;
pub mod initramfs;
pub mod kernel;
pub mod modules;

use std::path::{Path, PathBuf};

/// The agent binary, built static by this crate's build script.
pub static AGENT_BINARY: &[u8] = include_bytes!(env!("BERTH_AGENT_BINARY"));

/// Modules the agent loads, by name; dependencies are added and ordered automatically.
pub const GUEST_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "virtio_console",
    "virtio_net",
    "virtio_rng",
    // `docker update -m` of a running container, and free pages back to the host.
    "virtio_balloon",
    // Shared directories: FUSE file systems served by the host (see berth-agent's shares).
    "fuse",
];

/// Everything a VM boots from.
#[derive(Debug, Clone)]
pub struct GuestImage {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    /// The kernel's release string (`uname -r` in the guest).
    pub kernel_release: String,
    /// The Debian package and version the kernel came from.
    pub kernel_package: String,
    /// sha256 over kernel, modules and agent.
    pub digest: String,
}

/// Errors while preparing the guest image.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },
    #[error("I/O error on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("kernel package problem: {0}")]
    Kernel(String),
    #[error("kernel module problem: {0}")]
    Module(String),
}

impl GuestError {
    pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |source| Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// A guest kernel of the operator's choice instead of Debian's cloud kernel (e.g. one
/// built for PVM hosts, whose KVM runs only PVM-ready guests at native speed).
#[derive(Debug, Clone)]
pub struct CustomKernel {
    /// A bzImage.
    pub vmlinuz: PathBuf,
    /// Its modules (`lib/modules/<release>`), where the virtio drivers the agent loads
    /// are; `None` when they are built into the kernel.
    pub modules_dir: Option<PathBuf>,
}

/// Makes sure kernel and initramfs exist under `cache` and returns them. `progress`
/// receives one line per step that takes time (kernel fetch, initramfs build).
pub fn prepare(cache: &Path, progress: &dyn Fn(&str)) -> Result<GuestImage, GuestError> {
    prepare_with(cache, None, progress)
}

/// [`prepare`], with `custom` as the kernel when given.
pub fn prepare_with(
    cache: &Path,
    custom: Option<&CustomKernel>,
    progress: &dyn Fn(&str),
) -> Result<GuestImage, GuestError> {
    let Some(custom) = custom else {
        return prepare_debian(cache, progress);
    };
    let image = std::fs::read(&custom.vmlinuz).map_err(GuestError::io(&custom.vmlinuz))?;
    let release = kernel::bzimage_release(&image).ok_or_else(|| {
        GuestError::Kernel(format!(
            "{} is not a bzImage with a version string",
            custom.vmlinuz.display()
        ))
    })?;
    let module_paths = match &custom.modules_dir {
        Some(dir) => modules::resolve_load_order(dir, GUEST_MODULES)?,
        None => Vec::new(),
    };
    use sha2::{Digest, Sha256};
    let identity = format!("custom {} {}", release, hex::encode(Sha256::digest(&image)));
    let built =
        initramfs::ensure_initramfs(cache, AGENT_BINARY, &module_paths, &identity, progress)?;
    Ok(GuestImage {
        kernel: custom.vmlinuz.clone(),
        initramfs: built.path,
        kernel_release: release,
        kernel_package: format!("custom {}", custom.vmlinuz.display()),
        digest: built.digest,
    })
}

fn prepare_debian(cache: &Path, progress: &dyn Fn(&str)) -> Result<GuestImage, GuestError> {
    let kernel = kernel::ensure_kernel(cache, progress)?;
    let module_paths = modules::resolve_load_order(&kernel.modules_dir, GUEST_MODULES)?;
    let built = initramfs::ensure_initramfs(
        cache,
        AGENT_BINARY,
        &module_paths,
        &kernel.package,
        progress,
    )?;
    Ok(GuestImage {
        kernel: kernel.vmlinuz,
        initramfs: built.path,
        kernel_release: kernel.release,
        kernel_package: kernel.package,
        digest: built.digest,
    })
}
