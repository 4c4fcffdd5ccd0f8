//! Flattening layer tars into one directory tree (the image's root filesystem).
//!
//! Contract: [`flatten`] applies uncompressed layer tars, bottom first, onto an existing
//! empty directory `dest`, the way overlayfs would stack them:
//!
//! * regular files, directories, symlinks, hard links, character/block devices and FIFOs
//!   are created with the entry's mode (incl. setuid/setgid/sticky), uid/gid, mtime and
//!   `SCHILY.xattr.*` extended attributes (best effort); the caller runs as root;
//! * an entry replaces whatever a lower layer had at its path, except that a directory
//!   entry over an existing directory keeps that directory's contents and only updates
//!   its metadata;
//! * OCI whiteouts: `<dir>/.wh.<name>` removes `<dir>/<name>` from lower layers and is not
//!   itself created; `<dir>/.wh..wh..opq` makes `<dir>` opaque: everything lower layers put
//!   in it is removed, while what the same layer adds is kept whatever the entry order;
//!   other `.wh..wh.*` names (aufs bookkeeping) are ignored.
//!
//! Safety against hostile tars (no entry ever touches anything outside `dest`):
//!
//! * an entry path or hard-link target with a `..` component is refused
//!   ([`ImageError::UnsafePath`]); a leading `/` is stripped (the path lands inside);
//! * parent directories are resolved one component at a time with `lstat`, inside `dest`
//!   only: a symlink met on the way is followed with chroot semantics (an absolute target
//!   restarts at `dest`, `..` stops at `dest`), exactly like Docker's chrooted extraction,
//!   so `evil -> /tmp/x` followed by `evil/file` writes `dest/tmp/x/file`; missing
//!   parents are created as directories (0755, root-owned) and a non-directory in the
//!   way is replaced by one;
//! * the final component is never followed: whatever exists there is removed first and
//!   files are opened with `O_CREAT|O_EXCL|O_NOFOLLOW`;
//! * hard-link targets are resolved the same way and must already exist in the tree and
//!   not be directories.
//!
//! Directory mtimes are applied after the last layer (creating children changes them).

use std::collections::{HashMap, HashSet};
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::sys::stat::{makedev, mknod, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use tar::EntryType;

use crate::error::ImageError;

/// Whiteout file-name prefix.
const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// Whiteout meta prefix (after [`WHITEOUT_PREFIX`]): `.wh..wh.`.
const WHITEOUT_META_PREFIX: &[u8] = b".wh.";
/// The opaque-directory marker, after [`WHITEOUT_PREFIX`].
const WHITEOUT_OPAQUE: &[u8] = b".wh..opq";
/// Most symlinks followed while resolving one path (as Linux's MAXSYMLINKS).
const MAX_SYMLINKS: usize = 40;

/// Applies `layers` (paths of uncompressed layer tars, bottom first) onto `dest`.
pub(crate) fn flatten(layers: &[PathBuf], dest: &Path) -> Result<(), ImageError> {
    let mut flattener = Flattener::new(dest);
    for layer in layers {
        let file = File::open(layer).map_err(ImageError::io(layer))?;
        flattener.apply_layer(BufReader::with_capacity(1 << 16, file), layer)?;
    }
    flattener.finish()
}

/// Extracts a build context (a tar, plain or compressed, from a client) into the empty
/// directory `dest` with the same safety as layers (nothing lands outside `dest`), but
/// as plain files: whiteout names are ordinary entries left out, and device nodes and
/// FIFOs are never created on the host. Returns the number of entries extracted.
///
/// A plain tar whose last entry's data is complete but whose padding and end-of-archive
/// blocks are missing is read as if they were there: the docker CLI sends such a tar
/// when it adds a Dockerfile given on stdin to the context, and Docker's own reader
/// accepts it. A tar truncated inside an entry's data is still an error.
pub fn extract_build_context(source: &Path, dest: &Path) -> Result<u64, ImageError> {
    let missing = missing_tar_tail(source).map_err(ImageError::io(source))?;
    let reader = crate::archive::open_decompressed(source, "the build context")?
        .chain(io::repeat(0).take(missing));
    let mut flattener = Flattener::new(dest);
    flattener.plain_files = true;
    flattener.apply_layer(BufReader::with_capacity(1 << 16, reader), source)?;
    let count = flattener.applied;
    flattener.finish()?;
    Ok(count)
}

/// How many zero bytes complete the plain tar at `path` whose last entry lacks only its
/// padding and the end-of-archive blocks (0 for a complete tar, a compressed one, or one
/// truncated inside an entry's data).
fn missing_tar_tail(path: &Path) -> io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut header = [0u8; 512];
    let mut offset = 0u64;
    while offset + 512 <= len {
        file.seek(SeekFrom::Start(offset))?;
        file.read_exact(&mut header)?;
        if offset == 0 && !header[257..262].eq(b"ustar") && header[156] == 0 {
            // Not a tar that this reader would complete (e.g. compressed, or v7).
            return Ok(0);
        }
        if header.iter().all(|&b| b == 0) {
            return Ok(0);
        }
        let Some(size) = header_size(&header[124..136]) else {
            return Ok(0);
        };
        let data_end = offset + 512 + size;
        let padded = offset + 512 + size.div_ceil(512) * 512;
        if padded <= len {
            offset = padded;
        } else if data_end <= len {
            return Ok(padded - len + 1024);
        } else {
            return Ok(0);
        }
    }
    // Every entry complete, no end-of-archive blocks.
    Ok(if offset == len && len > 0 { 1024 } else { 0 })
}

/// A tar header's size field: octal, or base-256 when its first bit is set.
fn header_size(field: &[u8]) -> Option<u64> {
    if field[0] & 0x80 != 0 {
        let mut value = u64::from(field[0] & 0x7f);
        for &byte in &field[1..] {
            value = value.checked_mul(256)?.checked_add(u64::from(byte))?;
        }
        return Some(value);
    }
    let text = std::str::from_utf8(field).ok()?;
    let text = text.trim_matches(|c: char| c == '\0' || c == ' ');
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(text, 8).ok()
}

/// Metadata an entry's PAX extended header may override or add.
#[derive(Default)]
struct PaxOverrides {
    uid: Option<u64>,
    gid: Option<u64>,
    mtime: Option<TimeSpec>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// The metadata applied to a created entry.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: TimeSpec,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Layer-application state shared across layers.
pub(crate) struct Flattener {
    root: PathBuf,
    /// Directory mtimes to apply at the end, by host path.
    dir_times: HashMap<PathBuf, TimeSpec>,
    /// A build context, not a layer: no whiteouts, no device nodes or FIFOs.
    plain_files: bool,
    /// Entries created so far.
    applied: u64,
}

impl Flattener {
    pub(crate) fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
            dir_times: HashMap::new(),
            plain_files: false,
            applied: 0,
        }
    }

    /// Applies one uncompressed layer tar read from `reader`; `layer` names it in errors.
    pub(crate) fn apply_layer(
        &mut self,
        reader: impl Read,
        layer: &Path,
    ) -> Result<(), ImageError> {
        let mut archive = tar::Archive::new(reader);
        // Host paths this layer created (and their ancestors): kept by opaque markers.
        let mut unpacked: HashSet<PathBuf> = HashSet::new();
        let entries = archive.entries().map_err(ImageError::io(layer))?;
        for entry in entries {
            let mut entry = entry.map_err(ImageError::io(layer))?;
            self.apply_entry(&mut entry, layer, &mut unpacked)?;
        }
        Ok(())
    }

    /// Applies one tar entry of `layer`: the root's metadata, a whiteout, or an entry
    /// created inside the root (and then recorded in `unpacked`).
    fn apply_entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        layer: &Path,
        unpacked: &mut HashSet<PathBuf>,
    ) -> Result<(), ImageError> {
        let raw_path = entry.path().map_err(ImageError::io(layer))?.into_owned();
        let components = sanitize(&raw_path)?;
        let pax = read_pax(entry, layer)?;
        let header = entry.header();
        let kind = header.entry_type();
        if matches!(
            kind,
            EntryType::XGlobalHeader
                | EntryType::XHeader
                | EntryType::GNULongName
                | EntryType::GNULongLink
        ) {
            return Ok(());
        }
        let meta = entry_meta(header, pax, &raw_path, layer)?;
        let dev = device_number(header, kind, layer)?;

        let Some((name, parents)) = components.split_last() else {
            // The tree's root itself ("./"): only its mode and mtime matter.
            if kind == EntryType::Directory {
                set_mode(&self.root, meta.mode)?;
                self.dir_times.insert(self.root.clone(), meta.mtime);
            }
            return Ok(());
        };

        if self.plain_files
            && (name.as_bytes().starts_with(WHITEOUT_PREFIX)
                || matches!(kind, EntryType::Char | EntryType::Block | EntryType::Fifo))
        {
            tracing::debug!(path = %raw_path.display(), "leaving out a special entry of a build context");
            return Ok(());
        }
        if let Some(whiteout) = name.as_bytes().strip_prefix(WHITEOUT_PREFIX) {
            return self.apply_whiteout(whiteout, parents, &raw_path, layer, unpacked);
        }

        let Some(parent) = self.resolve_dir(parents, true, unpacked)? else {
            return Err(ImageError::InvalidArchive(format!(
                "{}: cannot create the parent of {}",
                layer.display(),
                raw_path.display()
            )));
        };
        let target = parent.join(name);
        match kind {
            EntryType::Directory => self.create_or_update_dir(&target, &meta)?,
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                create_file(entry, &target, &meta)?;
            }
            EntryType::Symlink => {
                let link = link_name(entry, "symlink", &raw_path, layer)?;
                create_symlink(&link, &target, &meta)?;
            }
            EntryType::Link => {
                let link = link_name(entry, "hard link", &raw_path, layer)?;
                self.create_hard_link(&link, &target, layer, unpacked)?;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                create_node(kind, &target, &meta, dev)?;
            }
            other => {
                tracing::debug!(path = %raw_path.display(), kind = ?other, "skipping unsupported tar entry type");
                return Ok(());
            }
        }
        mark_unpacked(unpacked, &self.root, &target);
        self.applied += 1;
        Ok(())
    }

    /// Applies the whiteout entry `<parents>/.wh.<whiteout>`: an opaque marker clears what
    /// lower layers put in the directory, other `.wh..wh.*` names are ignored, and any other
    /// whiteout removes the sibling it names.
    fn apply_whiteout(
        &self,
        whiteout: &[u8],
        parents: &[OsString],
        raw_path: &Path,
        layer: &Path,
        unpacked: &mut HashSet<PathBuf>,
    ) -> Result<(), ImageError> {
        if whiteout == WHITEOUT_OPAQUE {
            if let Some(dir) = self.resolve_dir(parents, false, unpacked)? {
                clear_lower(&dir, unpacked)?;
            }
        } else if whiteout.starts_with(WHITEOUT_META_PREFIX) {
            tracing::debug!(path = %raw_path.display(), "ignoring whiteout metadata entry");
        } else {
            if whiteout.is_empty() || whiteout == b"." || whiteout == b".." {
                return Err(ImageError::UnsafePath(format!(
                    "{}: whiteout of {:?}",
                    layer.display(),
                    raw_path
                )));
            }
            if let Some(dir) = self.resolve_dir(parents, false, unpacked)? {
                remove_any(&dir.join(OsStr::from_bytes(whiteout)))?;
            }
        }
        Ok(())
    }

    /// Makes `target` a directory with `meta`: an existing directory keeps its contents,
    /// anything else there is replaced. Its mtime is applied by [`Self::finish`].
    fn create_or_update_dir(&mut self, target: &Path, meta: &Meta) -> Result<(), ImageError> {
        match fs::symlink_metadata(target) {
            Ok(existing) if existing.is_dir() => {}
            Ok(_) => {
                remove_any(target)?;
                make_dir(target)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => make_dir(target)?,
            Err(e) => return Err(ImageError::io(target)(e)),
        }
        set_owner(target, meta)?;
        set_mode(target, meta.mode)?;
        set_xattrs(target, &meta.xattrs);
        self.dir_times.insert(target.to_path_buf(), meta.mtime);
        Ok(())
    }

    /// Replaces whatever is at `target` with a hard link to the tree's `link` (resolved
    /// inside the root by [`Self::resolve_link_target`]); a link to itself is left alone.
    fn create_hard_link(
        &self,
        link: &Path,
        target: &Path,
        layer: &Path,
        unpacked: &mut HashSet<PathBuf>,
    ) -> Result<(), ImageError> {
        let source = self.resolve_link_target(link, layer, unpacked)?;
        if source != target {
            remove_any(target)?;
            fs::hard_link(&source, target).map_err(ImageError::io(target))?;
        }
        Ok(())
    }

    /// Applies the recorded directory mtimes. Call once after the last layer.
    pub(crate) fn finish(self) -> Result<(), ImageError> {
        for (dir, mtime) in &self.dir_times {
            if fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir()) {
                set_mtime(dir, *mtime)?;
            }
        }
        Ok(())
    }

    /// Resolves `components` (already free of `..`) to a real directory inside the root,
    /// following symlinks with chroot semantics (see the module docs). With `create`,
    /// missing components are created as directories and non-directories in the way are
    /// replaced (and recorded in `unpacked`); without it, `Ok(None)` if the path does not
    /// lead to a directory.
    fn resolve_dir(
        &self,
        components: &[OsString],
        create: bool,
        unpacked: &mut HashSet<PathBuf>,
    ) -> Result<Option<PathBuf>, ImageError> {
        // `pending` is consumed from the back; `resolved` are verified real directories.
        let mut pending: Vec<OsString> = components.iter().rev().cloned().collect();
        let mut resolved: Vec<OsString> = Vec::new();
        let mut followed = 0usize;
        while let Some(component) = pending.pop() {
            if component == "." || component.is_empty() {
                continue;
            }
            if component == ".." {
                resolved.pop();
                continue;
            }
            let mut candidate = self.root.clone();
            candidate.extend(&resolved);
            candidate.push(&component);
            match fs::symlink_metadata(&candidate) {
                Ok(meta) if meta.is_dir() => resolved.push(component),
                Ok(meta) if meta.file_type().is_symlink() => {
                    followed += 1;
                    if followed > MAX_SYMLINKS {
                        return Err(ImageError::InvalidArchive(format!(
                            "too many levels of symbolic links at {}",
                            candidate.display()
                        )));
                    }
                    let target = fs::read_link(&candidate).map_err(ImageError::io(&candidate))?;
                    if target.is_absolute() {
                        resolved.clear();
                    }
                    // Interpret the link's own components (they may contain `..`, which
                    // is clamped at the root above) before what remained of the path.
                    for part in target.components().rev() {
                        match part {
                            Component::Normal(name) => pending.push(name.to_os_string()),
                            Component::ParentDir => pending.push(OsString::from("..")),
                            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
                        }
                    }
                }
                Ok(_) => {
                    if !create {
                        return Ok(None);
                    }
                    remove_any(&candidate)?;
                    make_dir(&candidate)?;
                    mark_unpacked(unpacked, &self.root, &candidate);
                    resolved.push(component);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if !create {
                        return Ok(None);
                    }
                    make_dir(&candidate)?;
                    mark_unpacked(unpacked, &self.root, &candidate);
                    resolved.push(component);
                }
                Err(e) => return Err(ImageError::io(&candidate)(e)),
            }
        }
        let mut dir = self.root.clone();
        dir.extend(&resolved);
        Ok(Some(dir))
    }

    /// The host path a hard link's target names: inside the root, existing, not a directory.
    fn resolve_link_target(
        &self,
        link: &Path,
        layer: &Path,
        unpacked: &mut HashSet<PathBuf>,
    ) -> Result<PathBuf, ImageError> {
        let components = sanitize(link)?;
        let missing = || {
            ImageError::InvalidArchive(format!(
                "{}: hard link target {} does not exist",
                layer.display(),
                link.display()
            ))
        };
        let (name, parents) = components.split_last().ok_or_else(missing)?;
        let dir = self
            .resolve_dir(parents, false, unpacked)?
            .ok_or_else(missing)?;
        let source = dir.join(name);
        match fs::symlink_metadata(&source) {
            Ok(meta) if meta.is_dir() => Err(ImageError::InvalidArchive(format!(
                "{}: hard link to directory {}",
                layer.display(),
                link.display()
            ))),
            Ok(_) => Ok(source),
            Err(_) => Err(missing()),
        }
    }
}

/// Splits an entry path into its normal components: leading `/` and `.` are dropped,
/// `..` is refused.
fn sanitize(path: &Path) -> Result<Vec<OsString>, ImageError> {
    let mut components = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(name) => components.push(name.to_os_string()),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(ImageError::UnsafePath(path.display().to_string()));
            }
        }
    }
    Ok(components)
}

/// Reads the PAX overrides we honour from `entry`'s extended header, if any.
fn read_pax<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    layer: &Path,
) -> Result<PaxOverrides, ImageError> {
    let mut overrides = PaxOverrides::default();
    let Some(extensions) = entry.pax_extensions().map_err(ImageError::io(layer))? else {
        return Ok(overrides);
    };
    for extension in extensions {
        let extension = extension.map_err(ImageError::io(layer))?;
        let key = extension.key_bytes();
        let value = extension.value_bytes();
        let text = std::str::from_utf8(value).ok();
        match key {
            b"uid" => overrides.uid = text.and_then(|v| v.parse().ok()),
            b"gid" => overrides.gid = text.and_then(|v| v.parse().ok()),
            b"mtime" => overrides.mtime = text.and_then(parse_pax_time),
            _ => {
                if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                    overrides.xattrs.push((name.to_vec(), value.to_vec()));
                }
            }
        }
    }
    Ok(overrides)
}

/// Parses a PAX time (`seconds[.fraction]`).
fn parse_pax_time(value: &str) -> Option<TimeSpec> {
    let (secs, frac) = value.split_once('.').unwrap_or((value, ""));
    let secs: i64 = secs.parse().ok()?;
    let digits: String = frac
        .chars()
        .take_while(char::is_ascii_digit)
        .chain(std::iter::repeat('0'))
        .take(9)
        .collect();
    let nanos: i64 = digits.parse().ok()?;
    Some(TimeSpec::new(secs, nanos))
}

/// Mode, owner, mtime and xattrs for an entry, PAX overrides winning over the header.
fn entry_meta(
    header: &tar::Header,
    pax: PaxOverrides,
    raw_path: &Path,
    layer: &Path,
) -> Result<Meta, ImageError> {
    let bad = |what: &str| {
        ImageError::InvalidArchive(format!(
            "{}: bad {what} for {}",
            layer.display(),
            raw_path.display()
        ))
    };
    // As Go's archive/tar (which made most images) reads them, a numeric field that is
    // all NULs or spaces is 0.
    let blank = |field: &[u8]| field.iter().all(|byte| *byte == 0 || *byte == b' ');
    let old = header.as_old();
    let mode = header.mode().map_err(|_| bad("mode"))? & 0o7777;
    let uid = match pax.uid {
        Some(uid) => uid,
        None if blank(&old.uid) => 0,
        None => header.uid().map_err(|_| bad("uid"))?,
    };
    let gid = match pax.gid {
        Some(gid) => gid,
        None if blank(&old.gid) => 0,
        None => header.gid().map_err(|_| bad("gid"))?,
    };
    let mtime = match pax.mtime {
        Some(mtime) => mtime,
        None if blank(&old.mtime) => TimeSpec::new(0, 0),
        None => {
            let secs = header.mtime().map_err(|_| bad("mtime"))?;
            TimeSpec::new(i64::try_from(secs).map_err(|_| bad("mtime"))?, 0)
        }
    };
    Ok(Meta {
        mode,
        uid: u32::try_from(uid).map_err(|_| bad("uid"))?,
        gid: u32::try_from(gid).map_err(|_| bad("gid"))?,
        mtime,
        xattrs: pax.xattrs,
    })
}

/// The device number of a character or block device entry; 0 for any other kind.
fn device_number(
    header: &tar::Header,
    kind: EntryType,
    layer: &Path,
) -> Result<libc::dev_t, ImageError> {
    Ok(match kind {
        EntryType::Char | EntryType::Block => {
            let major = header.device_major().map_err(ImageError::io(layer))?;
            let minor = header.device_minor().map_err(ImageError::io(layer))?;
            makedev(u64::from(major.unwrap_or(0)), u64::from(minor.unwrap_or(0)))
        }
        _ => 0,
    })
}

/// The target of a link entry; `what` (`symlink` or `hard link`) names it in the error
/// when it has none.
fn link_name<R: Read>(
    entry: &tar::Entry<'_, R>,
    what: &str,
    raw_path: &Path,
    layer: &Path,
) -> Result<PathBuf, ImageError> {
    Ok(entry
        .link_name()
        .map_err(ImageError::io(layer))?
        .ok_or_else(|| {
            ImageError::InvalidArchive(format!(
                "{}: {what} {} has no target",
                layer.display(),
                raw_path.display()
            ))
        })?
        .into_owned())
}

/// Replaces whatever is at `target` with a new regular file holding `contents`, never
/// following a symlink there, and applies `meta`.
fn create_file(contents: &mut impl Read, target: &Path, meta: &Meta) -> Result<(), ImageError> {
    remove_any(target)?;
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(target)
        .map_err(ImageError::io(target))?;
    io::copy(contents, &mut file).map_err(ImageError::io(target))?;
    drop(file);
    set_owner(target, meta)?;
    set_mode(target, meta.mode)?;
    set_xattrs(target, &meta.xattrs);
    set_mtime(target, meta.mtime)
}

/// Replaces whatever is at `target` with a symlink to `link` and applies `meta` (but the
/// mode, which a symlink does not have).
fn create_symlink(link: &Path, target: &Path, meta: &Meta) -> Result<(), ImageError> {
    remove_any(target)?;
    std::os::unix::fs::symlink(link, target).map_err(ImageError::io(target))?;
    set_owner(target, meta)?;
    set_xattrs(target, &meta.xattrs);
    set_mtime(target, meta.mtime)
}

/// Replaces whatever is at `target` with a character device, block device (`dev`) or
/// FIFO, as `kind` says, and applies `meta`.
fn create_node(
    kind: EntryType,
    target: &Path,
    meta: &Meta,
    dev: libc::dev_t,
) -> Result<(), ImageError> {
    let flag = match kind {
        EntryType::Char => SFlag::S_IFCHR,
        EntryType::Block => SFlag::S_IFBLK,
        _ => SFlag::S_IFIFO,
    };
    remove_any(target)?;
    mknod(
        target,
        flag,
        Mode::from_bits_truncate(meta.mode & 0o777),
        dev,
    )
    .map_err(|errno| ImageError::io(target)(io::Error::from(errno)))?;
    set_owner(target, meta)?;
    set_mode(target, meta.mode)?;
    set_xattrs(target, &meta.xattrs);
    set_mtime(target, meta.mtime)
}

/// Records `path` and its ancestors up to `root` as created by the current layer.
fn mark_unpacked(unpacked: &mut HashSet<PathBuf>, root: &Path, path: &Path) {
    let mut current = Some(path);
    while let Some(p) = current {
        if p == root || !p.starts_with(root) || !unpacked.insert(p.to_path_buf()) {
            break;
        }
        current = p.parent();
    }
}

/// Removes from `dir` (recursively) everything not created by the current layer.
fn clear_lower(dir: &Path, unpacked: &HashSet<PathBuf>) -> Result<(), ImageError> {
    for child in fs::read_dir(dir).map_err(ImageError::io(dir))? {
        let child = child.map_err(ImageError::io(dir))?;
        let path = child.path();
        if unpacked.contains(&path) {
            let is_dir = child.file_type().map_err(ImageError::io(&path))?.is_dir();
            if is_dir {
                clear_lower(&path, unpacked)?;
            }
        } else {
            remove_any(&path)?;
        }
    }
    Ok(())
}

/// Removes whatever is at `path` (never following a symlink); nothing there is fine.
fn remove_any(path: &Path) -> Result<(), ImageError> {
    let result = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => Err(e),
    };
    result.map_err(ImageError::io(path))
}

/// Creates one directory, mode 0755 whatever the umask.
fn make_dir(path: &Path) -> Result<(), ImageError> {
    fs::create_dir(path).map_err(ImageError::io(path))?;
    set_mode(path, 0o755)
}

/// chmod; never called on a symlink.
fn set_mode(path: &Path, mode: u32) -> Result<(), ImageError> {
    fs::set_permissions(path, Permissions::from_mode(mode)).map_err(ImageError::io(path))
}

/// lchown (before chmod, which it would otherwise undo for setuid bits).
fn set_owner(path: &Path, meta: &Meta) -> Result<(), ImageError> {
    std::os::unix::fs::lchown(path, Some(meta.uid), Some(meta.gid)).map_err(ImageError::io(path))
}

/// Sets atime and mtime without following a symlink.
fn set_mtime(path: &Path, mtime: TimeSpec) -> Result<(), ImageError> {
    utimensat(None, path, &mtime, &mtime, UtimensatFlags::NoFollowSymlink)
        .map_err(|errno| ImageError::io(path)(io::Error::from(errno)))
}

/// Best-effort lsetxattr of each attribute; failures (e.g. `user.*` on a symlink, or a
/// namespace the host file system refuses) are logged and ignored.
fn set_xattrs(path: &Path, xattrs: &[(Vec<u8>, Vec<u8>)]) {
    if xattrs.is_empty() {
        return;
    }
    let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
        return;
    };
    for (name, value) in xattrs {
        let Ok(c_name) = CString::new(name.as_slice()) else {
            continue;
        };
        // SAFETY: both strings are NUL-terminated CStrings that outlive the call, and
        // `value` is a live slice whose pointer and length are passed together; lsetxattr
        // only reads from them.
        let rc = unsafe {
            libc::lsetxattr(
                c_path.as_ptr(),
                c_name.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        if rc != 0 {
            tracing::debug!(
                path = %path.display(),
                name = %String::from_utf8_lossy(name),
                error = %io::Error::last_os_error(),
                "could not set extended attribute"
            );
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// One entry of a test layer.
    pub(crate) enum E<'a> {
        Dir(&'a str, u32),
        File(&'a str, &'a [u8]),
        Symlink(&'a str, &'a str),
        HardLink(&'a str, &'a str),
        Fifo(&'a str),
        /// A regular file whose raw header name is written verbatim (for hostile paths).
        RawFile(&'a [u8], &'a [u8]),
    }

    /// Builds an uncompressed layer tar from `entries`.
    pub(crate) fn layer_tar(entries: &[E<'_>]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for entry in entries {
            let mut header = tar::Header::new_gnu();
            header.set_mtime(1_600_000_000);
            header.set_uid(1000);
            header.set_gid(1000);
            match entry {
                E::Dir(path, mode) => {
                    header.set_entry_type(EntryType::Directory);
                    header.set_mode(*mode);
                    header.set_size(0);
                    builder
                        .append_data(&mut header, path, io::empty())
                        .expect("append dir");
                }
                E::File(path, data) => {
                    header.set_entry_type(EntryType::Regular);
                    header.set_mode(0o644);
                    header.set_size(data.len() as u64);
                    builder
                        .append_data(&mut header, path, *data)
                        .expect("append file");
                }
                E::Symlink(path, target) => {
                    header.set_entry_type(EntryType::Symlink);
                    header.set_mode(0o777);
                    header.set_size(0);
                    builder
                        .append_link(&mut header, path, target)
                        .expect("append symlink");
                }
                E::HardLink(path, target) => {
                    header.set_entry_type(EntryType::Link);
                    header.set_mode(0o644);
                    header.set_size(0);
                    builder
                        .append_link(&mut header, path, target)
                        .expect("append hard link");
                }
                E::Fifo(path) => {
                    header.set_entry_type(EntryType::Fifo);
                    header.set_mode(0o600);
                    header.set_size(0);
                    builder
                        .append_data(&mut header, path, io::empty())
                        .expect("append fifo");
                }
                E::RawFile(name, data) => {
                    header.set_entry_type(EntryType::Regular);
                    header.set_mode(0o644);
                    header.set_size(data.len() as u64);
                    let raw = header.as_old_mut();
                    raw.name[..name.len()].copy_from_slice(name);
                    header.set_cksum();
                    builder.append(&header, *data).expect("append raw");
                }
            }
        }
        builder.into_inner().expect("finish tar")
    }

    fn apply(dest: &Path, layers: &[Vec<u8>]) -> Result<(), ImageError> {
        let mut flattener = Flattener::new(dest);
        for layer in layers {
            flattener.apply_layer(layer.as_slice(), Path::new("test-layer"))?;
        }
        flattener.finish()
    }

    #[test]
    fn whiteouts_and_opaque_dirs() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dest = tmp.path().join("rootfs");
        fs::create_dir(&dest).expect("mkdir");
        let lower = layer_tar(&[
            E::Dir("etc/", 0o755),
            E::File("etc/keep", b"keep"),
            E::File("etc/gone", b"gone"),
            E::Dir("etc/gonedir/", 0o755),
            E::File("etc/gonedir/x", b"x"),
            E::Dir("opaque/", 0o755),
            E::File("opaque/old", b"old"),
            E::Dir("opaque/sub/", 0o755),
            E::File("opaque/sub/old2", b"old2"),
            E::Dir("replace/", 0o700),
            E::File("replace/inner", b"inner"),
            E::Fifo("fifo"),
        ]);
        let upper = layer_tar(&[
            // The layer's own file comes before the opaque marker: it must survive.
            E::File("opaque/sub/new", b"new"),
            E::File("opaque/.wh..wh..opq", b""),
            E::File("opaque/new2", b"new2"),
            E::File("etc/.wh.gone", b""),
            E::File("etc/.wh.gonedir", b""),
            E::File("etc/.wh.never-existed", b""),
            E::File(".wh.missing-dir/.wh.x", b""),
            E::File("replace", b"now a file"),
            E::Dir("etc/", 0o750),
        ]);
        apply(&dest, &[lower, upper]).expect("flatten");

        assert_eq!(fs::read(dest.join("etc/keep")).expect("keep"), b"keep");
        assert!(!dest.join("etc/gone").exists());
        assert!(!dest.join("etc/gonedir").exists());
        assert!(!dest.join("etc/.wh.gone").exists());
        assert!(!dest.join("opaque/old").exists());
        assert!(!dest.join("opaque/sub/old2").exists());
        assert!(!dest.join("opaque/.wh..wh..opq").exists());
        assert_eq!(fs::read(dest.join("opaque/sub/new")).expect("new"), b"new");
        assert_eq!(fs::read(dest.join("opaque/new2")).expect("new2"), b"new2");
        assert_eq!(
            fs::read(dest.join("replace")).expect("replace"),
            b"now a file"
        );

        let etc = fs::metadata(dest.join("etc")).expect("etc");
        assert_eq!(etc.mode() & 0o7777, 0o750);
        assert_eq!((etc.uid(), etc.gid()), (1000, 1000));
        assert_eq!(etc.mtime(), 1_600_000_000);
        let keep = fs::metadata(dest.join("etc/keep")).expect("keep");
        assert_eq!(keep.mode() & 0o7777, 0o644);
        assert_eq!(keep.mtime(), 1_600_000_000);
        let fifo = fs::symlink_metadata(dest.join("fifo")).expect("fifo");
        assert!(std::os::unix::fs::FileTypeExt::is_fifo(&fifo.file_type()));
    }

    #[test]
    fn links() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dest = tmp.path().join("rootfs");
        fs::create_dir(&dest).expect("mkdir");
        let layer = layer_tar(&[
            E::Dir("bin/", 0o755),
            E::File("bin/busybox", b"#!"),
            E::HardLink("bin/sh", "bin/busybox"),
            E::Symlink("bin/ls", "busybox"),
            // Absolute symlink in a parent: followed inside the tree (chroot semantics).
            E::Symlink("lib", "/usr/lib"),
            E::File("lib/libc.so", b"elf"),
        ]);
        apply(&dest, &[layer]).expect("flatten");
        let a = fs::metadata(dest.join("bin/busybox")).expect("busybox");
        let b = fs::metadata(dest.join("bin/sh")).expect("sh");
        assert_eq!(a.ino(), b.ino());
        assert_eq!(
            fs::read_link(dest.join("bin/ls")).expect("ls"),
            PathBuf::from("busybox")
        );
        assert_eq!(
            fs::read(dest.join("usr/lib/libc.so")).expect("libc"),
            b"elf"
        );
        assert!(fs::symlink_metadata(dest.join("lib"))
            .expect("lib")
            .file_type()
            .is_symlink());
    }

    #[test]
    fn hostile_paths() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dest = tmp.path().join("a/b/rootfs");
        fs::create_dir_all(&dest).expect("mkdir");

        // `..` is refused.
        let layer = layer_tar(&[E::RawFile(b"../escape", b"x")]);
        assert!(matches!(
            apply(&dest, &[layer]),
            Err(ImageError::UnsafePath(_))
        ));
        assert!(!tmp.path().join("a/b/escape").exists());
        let layer = layer_tar(&[E::RawFile(b"ok/../../escape2", b"x")]);
        assert!(matches!(
            apply(&dest, &[layer]),
            Err(ImageError::UnsafePath(_))
        ));

        // Absolute paths land inside.
        let layer = layer_tar(&[E::RawFile(b"/abs/path", b"inside")]);
        apply(&dest, &[layer]).expect("absolute path");
        assert_eq!(fs::read(dest.join("abs/path")).expect("abs"), b"inside");

        // A symlink to an outside directory, then a file through it.
        let outside = tmp.path().join("outside");
        let outside_str = outside.to_str().expect("utf-8 tempdir");
        let layer = layer_tar(&[
            E::Symlink("evil", outside_str),
            E::File("evil/file", b"pwned"),
            E::Symlink("up", "../../../../../../../.."),
            E::File("up/file2", b"pwned"),
        ]);
        apply(&dest, &[layer]).expect("symlinked parents stay inside");
        assert!(!outside.exists(), "wrote outside the tree");
        assert!(!outside.join("file").exists());
        assert!(!tmp.path().join("file2").exists());
        assert_eq!(
            fs::read(dest.join(outside_str.trim_start_matches('/')).join("file")).expect("inside"),
            b"pwned"
        );
        assert_eq!(fs::read(dest.join("file2")).expect("clamped"), b"pwned");

        // A file entry over an existing symlink replaces the link, never writes through it.
        let victim = tmp.path().join("victim");
        fs::write(&victim, b"original").expect("victim");
        let layer = layer_tar(&[
            E::Symlink("target", victim.to_str().expect("utf-8")),
            E::File("target", b"overwritten"),
        ]);
        apply(&dest, &[layer]).expect("replace symlink");
        assert_eq!(fs::read(&victim).expect("victim"), b"original");
        assert_eq!(
            fs::read(dest.join("target")).expect("target"),
            b"overwritten"
        );

        // Hard links out of the tree are refused.
        let layer = layer_tar(&[E::HardLink("passwd", "../../etc/passwd")]);
        assert!(matches!(
            apply(&dest, &[layer]),
            Err(ImageError::UnsafePath(_))
        ));
        assert!(!dest.join("passwd").exists());
        // ... including through a symlink (resolved inside: no such file there).
        let layer = layer_tar(&[
            E::Symlink("etcl", "/etc"),
            E::HardLink("passwd2", "etcl/passwd"),
        ]);
        assert!(matches!(
            apply(&dest, &[layer]),
            Err(ImageError::InvalidArchive(_))
        ));
        assert!(!dest.join("passwd2").exists());
    }

    #[test]
    fn a_context_without_its_tail_is_read_and_a_truncated_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let full = layer_tar(&[
            E::File("a.txt", b"hello"),
            E::File("Dockerfile", b"FROM x\n"),
        ]);
        // What the docker CLI sends with `-f -`: the last entry's data, then nothing.
        let cut = &full[..512 + 512 + 512 + 7];
        for (name, bytes, ok) in [
            ("full", &full[..], true),
            ("no-tail", cut, true),
            ("inside-data", &full[..512 + 512 + 512 + 3], false),
        ] {
            let tar = dir.path().join(format!("{name}.tar"));
            fs::write(&tar, bytes).unwrap();
            let dest = dir.path().join(name);
            fs::create_dir(&dest).unwrap();
            let result = extract_build_context(&tar, &dest);
            assert_eq!(result.is_ok(), ok, "{name}: {result:?}");
            if ok {
                assert_eq!(fs::read(dest.join("Dockerfile")).unwrap(), b"FROM x\n");
            }
        }
    }
}
