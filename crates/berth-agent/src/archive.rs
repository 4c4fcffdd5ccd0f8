//! `berth-archive`: the helper behind `docker cp`. The agent runs its own binary under this
//! name as a process chrooted in the container root (see `process::spawn`), so paths
//! resolve as the container sees them and nothing it does can reach outside that root.
//!
//! Operations (`argv[1]`), on `argv[2]`, a path in the container:
//!
//! * `stat`: one JSON line on stdout: `name`, `size`, `mode` (the Unix `st_mode`), `mtime`
//!   (Unix seconds), `link_target`. The path's parents are resolved (symlinks followed);
//!   the last component is not. (The engine turns this into Docker's PathStat.)
//! * `read`: the path's stat (as `stat` writes it, one line), then a tar of the path: entries named from the path's last component
//!   (`dir/…` for a directory, `./…` for `dir/.`, as Docker names them), owners, modes
//!   and times kept, symlinks stored as symlinks, device nodes and FIFOs as such.
//! * `export`: a tar of the whole container root (`docker export`), other filesystems
//!   mounted in it left out.
//! * `write`: a tar from stdin extracted into the path, which must be a directory.
//!   An entry with `..` in its name is refused (the whole copy fails, as in Docker), and
//!   links are never followed out of the target (and out of the chroot there is nothing
//!   to reach).
//!
//! Exit status: 0 on success; 2 when the path does not exist (stderr starts with
//! `not found:`); 3 when the write target is not a directory; 4 when extracting the
//! archive fails (a hostile or broken archive); 1 otherwise.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The program name the agent runs this helper under.
pub const HELPER_NAME: &str = "berth-archive";

/// Runs the helper; returns the process's exit status.
pub fn main(args: &[String]) -> i32 {
    let (Some(op), Some(path)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: {HELPER_NAME} stat|read|write PATH");
        return 1;
    };
    let result = match op.as_str() {
        "stat" => stat(path),
        "read" => read(path),
        "write" => write(path),
        "export" => export(path),
        other => Err(io::Error::other(format!("unknown operation {other}"))),
    };
    match result {
        Ok(()) => 0,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            eprintln!("not found: {path}");
            2
        }
        Err(error) if error.kind() == io::ErrorKind::NotADirectory => {
            eprintln!("not a directory: {path}");
            3
        }
        Err(error) if op == "write" => {
            eprintln!("{error}");
            4
        }
        Err(error) => {
            eprintln!("{error}");
            1
        }
    }
}

/// The path with its parent resolved (symlinks followed inside the chroot).
fn resolve(path: &str) -> io::Result<PathBuf> {
    let path = Path::new(path);
    let parent = path.parent().unwrap_or(Path::new("/"));
    let parent = fs::canonicalize(if parent.as_os_str().is_empty() {
        Path::new("/")
    } else {
        parent
    })?;
    Ok(match path.file_name() {
        Some(name) => parent.join(name),
        // `/`, or a path ending in `/.` or `..`.
        None => fs::canonicalize(path)?,
    })
}

fn stat(path: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    write_stat(path, &mut out)?;
    out.flush()
}

/// Writes the path's stat as one JSON line.
fn write_stat(path: &str, out: &mut impl Write) -> io::Result<()> {
    let resolved = resolve(path)?;
    let meta = fs::symlink_metadata(&resolved)?;
    let link_target = if meta.file_type().is_symlink() {
        fs::read_link(&resolved)?.display().to_string()
    } else {
        String::new()
    };
    let name = resolved
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "/".into());
    let stat = serde_json::json!({
        "name": name,
        "size": meta.size(),
        "mode": meta.mode(),
        "mtime": meta.mtime(),
        "link_target": link_target,
    });
    writeln!(out, "{stat}")
}

fn read(path: &str) -> io::Result<()> {
    let contents_only = path.ends_with("/.");
    let resolved = resolve(path)?;
    fs::symlink_metadata(&resolved)?;
    // Entry names as Docker writes them: from the path's last component, or `.` for
    // `dir/.` (then `./file`, which the CLI rebases onto the destination's name).
    let name = if contents_only {
        ".".to_owned()
    } else {
        resolved
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| ".".into())
    };
    let stdout = io::stdout().lock();
    let mut out = io::BufWriter::with_capacity(1 << 16, stdout);
    write_stat(path, &mut out)?;
    append_tree(&mut out, &resolved, &name, None)?;
    // Two empty blocks end a tar.
    out.write_all(&[0u8; 1024])?;
    out.flush()
}

/// `docker export`: the whole root filesystem of the container (the path given is `/`),
/// entries named without a leading `/` or `./`, as dockerd writes them. Other filesystems
/// mounted in it (/proc, /sys, /dev, volumes, tmpfs, the bind-mounted /etc/hosts) appear
/// as their mount points only, empty.
fn export(path: &str) -> io::Result<()> {
    let root = fs::canonicalize(path)?;
    let root_dev = fs::symlink_metadata(&root)?.dev();
    let stdout = io::stdout().lock();
    let mut out = io::BufWriter::with_capacity(1 << 16, stdout);
    let mut children: Vec<_> = fs::read_dir(&root)?.collect::<Result<_, _>>()?;
    children.sort_by_key(|entry| entry.file_name());
    for child in children {
        let name = child.file_name().to_string_lossy().into_owned();
        append_tree(&mut out, &child.path(), &name, Some(root_dev))?;
    }
    out.write_all(&[0u8; 1024])?;
    out.flush()
}

/// Writes `path` (not following a final symlink) and, for a directory, everything
/// under it, as tar entries named `name`, `name/child`, ... With `one_filesystem`, what
/// lies on another device is written as an empty entry and not entered.
fn append_tree(
    out: &mut impl Write,
    path: &Path,
    name: &str,
    one_filesystem: Option<u64>,
) -> io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    let foreign = one_filesystem.is_some_and(|dev| meta.dev() != dev);
    append_entry(out, path, &meta, name, foreign)?;
    if meta.is_dir() && !foreign {
        let mut children: Vec<_> = fs::read_dir(path)?.collect::<Result<_, _>>()?;
        children.sort_by_key(|entry| entry.file_name());
        for child in children {
            let child_name = format!("{name}/{}", child.file_name().to_string_lossy());
            append_tree(out, &child.path(), &child_name, one_filesystem)?;
        }
    }
    Ok(())
}

/// Writes one tar entry for `path` (its content too, for a regular file, unless `empty`).
pub(crate) fn append_entry(
    out: &mut impl Write,
    path: &Path,
    meta: &fs::Metadata,
    name: &str,
    empty: bool,
) -> io::Result<()> {
    let kind = meta.file_type();
    let mut header = tar::Header::new_gnu();
    header.set_metadata_in_mode(meta, tar::HeaderMode::Complete);
    if empty && kind.is_file() {
        header.set_size(0);
    }
    if kind.is_symlink() {
        let target = fs::read_link(path)?;
        let target = target.as_os_str().as_encoded_bytes();
        if target.len() >= 100 {
            write_long(out, b'K', target)?;
        }
        let short = &target[..target.len().min(99)];
        let link = &mut header.as_old_mut().linkname;
        link.fill(0);
        link[..short.len()].copy_from_slice(short);
    }
    let entry_name = if kind.is_dir() {
        format!("{name}/")
    } else {
        name.to_owned()
    };
    write_header(out, &mut header, entry_name.as_bytes())?;
    if kind.is_file() && !empty {
        let mut file = fs::File::open(path)?;
        let copied = io::copy(&mut (&mut file).take(meta.len()), out)?;
        if copied != meta.len() {
            return Err(io::Error::other(format!(
                "{} shrank while being read",
                path.display()
            )));
        }
        pad(out, copied)?;
    }
    Ok(())
}

/// Writes `header` with the entry name `name`, raw (the tar crate would drop a leading
/// `./`); a name of 100 bytes or more goes first in a GNU long-name entry.
pub(crate) fn write_header(
    out: &mut impl Write,
    header: &mut tar::Header,
    name: &[u8],
) -> io::Result<()> {
    if name.len() >= 100 {
        write_long(out, b'L', name)?;
    }
    let short = &name[..name.len().min(99)];
    let field = &mut header.as_old_mut().name;
    field.fill(0);
    field[..short.len()].copy_from_slice(short);
    header.set_cksum();
    out.write_all(header.as_bytes())
}

/// A GNU `././@LongLink` entry of type `kind` (`L` name, `K` link target).
fn write_long(out: &mut impl Write, kind: u8, value: &[u8]) -> io::Result<()> {
    let mut header = tar::Header::new_gnu();
    let field = &mut header.as_old_mut().name;
    field[..13].copy_from_slice(b"././@LongLink");
    header.set_mode(0o644);
    header.set_size(value.len() as u64 + 1);
    header.set_entry_type(tar::EntryType::new(kind));
    header.set_cksum();
    out.write_all(header.as_bytes())?;
    out.write_all(value)?;
    out.write_all(&[0])?;
    pad(out, value.len() as u64 + 1)
}

/// Zeroes up to the next 512-byte block.
pub(crate) fn pad(out: &mut impl Write, written: u64) -> io::Result<()> {
    let rest = (512 - written % 512) % 512;
    out.write_all(&vec![0u8; rest as usize])
}

fn write(path: &str) -> io::Result<()> {
    let resolved = fs::canonicalize(path)?;
    if !fs::metadata(&resolved)?.is_dir() {
        return Err(io::Error::from(io::ErrorKind::NotADirectory));
    }
    let mut archive = tar::Archive::new(io::stdin().lock());
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    archive.set_unpack_xattrs(false);
    // Whatever goes wrong in the archive is the archive's fault (exit 4), even where
    // the error is a missing file (a hard link to nothing).
    unpack_refusing_escapes(&mut archive, &resolved, path)
        .map_err(|error| io::Error::other(format!("extracting the archive: {error}")))
}

/// Unpacks `archive` into `target` (`shown` as the user named it). An entry that would
/// land outside the target (a `..` in its name) is refused, as Docker refuses it ("is
/// outside of"): the tar crate would skip it silently, and the copy would seem to have
/// worked. Directories get their metadata last, children first, as the tar crate's own
/// `unpack` does, so that a read-only directory does not stop its own entries.
fn unpack_refusing_escapes(
    archive: &mut tar::Archive<impl Read>,
    target: &Path,
    shown: &str,
) -> io::Result<()> {
    let mut directories = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let name = entry.path()?.into_owned();
        if name
            .components()
            .any(|part| part == std::path::Component::ParentDir)
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{:?} is outside of {shown:?}", name.display().to_string()),
            ));
        }
        if entry.header().entry_type() == tar::EntryType::Directory {
            directories.push(entry);
        } else if !entry.unpack_in(target)? {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{:?} cannot be placed inside {shown:?}",
                    name.display().to_string()
                ),
            ));
        }
    }
    // Children before their parents: a parent made read-only last stops nothing.
    directories.sort_by(|a, b| b.path_bytes().cmp(&a.path_bytes()));
    for mut directory in directories {
        directory.unpack_in(target)?;
    }
    Ok(())
}
