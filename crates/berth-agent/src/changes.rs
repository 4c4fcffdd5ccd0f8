//! `berth-changes`: the helper behind `docker diff` and `docker commit`. Unlike
//! `berth-archive` it runs outside the container root (it needs to see two trees): the
//! container's (`/mnt/root`) and its image's root filesystem, a read-only disk with serial
//! `berth-base` that the host attached, mounted here at `/run/berth-base`.
//!
//! The container's disk is a copy-on-write overlay of that same ext4 image, so a file the
//! container never touched has the same inode number, size, mtime and ctime in both trees;
//! anything else is a change. Only the container root's own filesystem is walked (what is
//! mounted in it — /proc, /sys, /dev, volumes, tmpfs — is not the container's layer), and
//! the files Berth bind-mounts (/etc/hosts, /etc/hostname, /etc/resolv.conf) are left out,
//! as Docker leaves them out.
//!
//! * `diff`: one JSON line per change, `{"Path": "/etc/x", "Kind": 0|1|2}` (Docker's
//!   modified, added, deleted), parents before children.
//! * `commit`: the changes as an image layer (tar on stdout): added and modified entries
//!   with their content, and an OCI whiteout (`.wh.NAME`) for each deleted one.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::mount::MsFlags;

use crate::archive::{append_entry, pad, write_header};
use crate::boot::CONTAINER_ROOT;

/// The program name the agent runs this helper under.
pub const HELPER_NAME: &str = "berth-changes";
/// Serial of the image's root filesystem disk.
const BASE_SERIAL: &str = "berth-base";
/// Where that disk is mounted, read-only.
const BASE_MOUNT: &str = "/run/berth-base";
/// Files Berth bind-mounts into every container: not part of its changes.
const BERTH_FILES: [&str; 3] = ["etc/hosts", "etc/hostname", "etc/resolv.conf"];

const MODIFIED: u8 = 0;
const ADDED: u8 = 1;
const DELETED: u8 = 2;

/// Runs the helper; returns the exit status (0, or 1 with the reason on stderr).
pub fn main(args: &[String]) -> i32 {
    let result = mount_base().and_then(|()| match args.get(1).map(String::as_str) {
        Some("diff") => diff(),
        Some("commit") => commit(),
        _ => Err(io::Error::other(format!(
            "usage: {HELPER_NAME} diff|commit"
        ))),
    });
    match result {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("{error}");
            1
        }
    }
}

/// Mounts the image's disk at [`BASE_MOUNT`] unless an earlier run did.
fn mount_base() -> io::Result<()> {
    fs::create_dir_all(BASE_MOUNT)?;
    let run_dev = fs::metadata("/run")?.dev();
    if fs::metadata(BASE_MOUNT)?.dev() != run_dev {
        return Ok(());
    }
    let device = crate::volumes::find_by_serial(BASE_SERIAL)?
        .display()
        .to_string();
    crate::volumes::mount_when_ready(&device, BASE_MOUNT, MsFlags::MS_RDONLY, Some("noload"))
}

fn same(container: &fs::Metadata, base: &fs::Metadata) -> bool {
    container.file_type() == base.file_type()
        && container.ino() == base.ino()
        && container.size() == base.size()
        && container.mtime() == base.mtime()
        && container.mtime_nsec() == base.mtime_nsec()
        && container.ctime() == base.ctime()
        && container.ctime_nsec() == base.ctime_nsec()
}

/// A change: its kind, its path relative to the root, and its metadata in the container
/// (none for a deletion).
type Change = (u8, String, Option<fs::Metadata>);

fn join(relative: &str, name: &std::ffi::OsStr) -> String {
    if relative.is_empty() {
        name.to_string_lossy().into_owned()
    } else {
        format!("{relative}/{}", name.to_string_lossy())
    }
}

/// The changes under `relative` (a directory in both trees), parents before children.
/// A directory counts as modified when its owner or mode changed or anything under it
/// did (as a layered filesystem copies it up); what is mounted in the container root
/// (/proc, /sys, /dev, volumes) is not the container's and is left out.
fn walk(relative: &str, root_dev: u64) -> io::Result<Vec<Change>> {
    let container_dir = Path::new(CONTAINER_ROOT).join(relative);
    let base_dir = Path::new(BASE_MOUNT).join(relative);
    let mut names: Vec<_> = fs::read_dir(&container_dir)?
        .map(|entry| entry.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    names.sort();
    let mut changes = Vec::new();
    for name in &names {
        let child = join(relative, name);
        if BERTH_FILES.contains(&child.as_str()) {
            continue;
        }
        let meta = fs::symlink_metadata(container_dir.join(name))?;
        if meta.dev() != root_dev {
            continue;
        }
        match fs::symlink_metadata(base_dir.join(name)).ok() {
            None => {
                let is_dir = meta.is_dir();
                changes.push((ADDED, child.clone(), Some(meta)));
                if is_dir {
                    walk_added(&child, root_dev, &mut changes)?;
                }
            }
            Some(base) if meta.is_dir() && base.is_dir() => {
                let below = walk(&child, root_dev)?;
                let own = meta.mode() != base.mode()
                    || meta.uid() != base.uid()
                    || meta.gid() != base.gid();
                if own || !below.is_empty() {
                    changes.push((MODIFIED, child, Some(meta)));
                }
                changes.extend(below);
            }
            Some(_) if meta.is_dir() => {
                changes.push((MODIFIED, child.clone(), Some(meta)));
                walk_added(&child, root_dev, &mut changes)?;
            }
            Some(base) => {
                if !same(&meta, &base) {
                    changes.push((MODIFIED, child, Some(meta)));
                }
            }
        }
    }
    if let Ok(entries) = fs::read_dir(&base_dir) {
        let mut gone: Vec<_> = entries
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .filter(|name| !names.contains(name))
            .collect();
        gone.sort();
        for name in gone {
            changes.push((DELETED, join(relative, &name), None));
        }
    }
    Ok(changes)
}

/// Everything under a directory the image does not have is added.
fn walk_added(relative: &str, root_dev: u64, changes: &mut Vec<Change>) -> io::Result<()> {
    let dir = Path::new(CONTAINER_ROOT).join(relative);
    let mut names: Vec<_> = fs::read_dir(&dir)?
        .map(|entry| entry.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    names.sort();
    for name in names {
        let child = join(relative, &name);
        let meta = fs::symlink_metadata(dir.join(&name))?;
        if meta.dev() != root_dev {
            continue;
        }
        let is_dir = meta.is_dir();
        changes.push((ADDED, child.clone(), Some(meta)));
        if is_dir {
            walk_added(&child, root_dev, changes)?;
        }
    }
    Ok(())
}

fn root_dev() -> io::Result<u64> {
    Ok(fs::metadata(CONTAINER_ROOT)?.dev())
}

fn diff() -> io::Result<()> {
    let stdout = io::stdout().lock();
    let mut out = io::BufWriter::new(stdout);
    for (kind, path, _) in walk("", root_dev()?)? {
        let line = serde_json::json!({ "Path": format!("/{path}"), "Kind": kind });
        writeln!(out, "{line}")?;
    }
    out.flush()
}

fn commit() -> io::Result<()> {
    let stdout = io::stdout().lock();
    let mut out = io::BufWriter::with_capacity(1 << 16, stdout);
    for (kind, path, meta) in walk("", root_dev()?)? {
        match (kind, meta) {
            (DELETED, _) | (_, None) => {
                let (parent, name) = path.rsplit_once('/').unwrap_or(("", path.as_str()));
                let whiteout = if parent.is_empty() {
                    format!(".wh.{name}")
                } else {
                    format!("{parent}/.wh.{name}")
                };
                let mut header = tar::Header::new_gnu();
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(0o644);
                header.set_size(0);
                header.set_mtime(0);
                header.set_uid(0);
                header.set_gid(0);
                write_header(&mut out, &mut header, whiteout.as_bytes())?;
                pad(&mut out, 0)?;
            }
            (_, Some(meta)) => {
                let source = Path::new(CONTAINER_ROOT).join(&path);
                append_entry(&mut out, &source, &meta, &path, false)?;
            }
        }
    }
    out.write_all(&[0u8; 1024])?;
    out.flush()
}
