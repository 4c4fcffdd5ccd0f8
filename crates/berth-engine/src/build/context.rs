//! A build's context: the client's tar, extracted by `berth-image` into the build's own
//! directory (no entry lands outside it; no device node is made), and what COPY and ADD
//! take from it.
//!
//! Contract:
//! * A source path is resolved inside the context, one component at a time: a symlink
//!   met on the way is followed with the context as its root (an absolute target starts
//!   again at the context, `..` stops there), as Docker resolves sources. Inside a
//!   directory being copied, symlinks are copied as symlinks and never followed.
//! * `.dockerignore` (read from the context) leaves paths out, as the client should have
//!   already; a source that is left out is "not found".
//! * Sources with `*`, `?` or `[` are patterns matched against every context path
//!   (`*` does not cross `/`).
//! * The layer a COPY makes is a tar of the copied entries at their destination paths
//!   (relative to `/`): mode and mtime from the context (or `--chmod`), owner 0:0 (or
//!   `--chown`). ADD extracts a local tar (plain, gzip, bzip2, xz) into the destination
//!   instead, with the archive's own owners, its entry names checked (no `..`).
//! * The checksum of a COPY's sources (for the cache and the history line) covers every
//!   entry's path, type, mode, link target and content.

use std::fs::{self, File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use berth_dockerfile::ignore::{clean_relative, compile_pattern, IgnoreRules};
use sha2::{Digest, Sha256};

use super::BuildError;

/// Largest Dockerfile read.
const MAX_DOCKERFILE: u64 = 4 << 20;
/// Symlinks followed while resolving one source path.
const MAX_SYMLINKS: usize = 40;

/// An extracted context.
#[derive(Debug)]
pub(crate) struct Context {
    root: PathBuf,
    ignore: IgnoreRules,
}

/// A source of a COPY or ADD: its path in the context and on the host (symlinks on the
/// way resolved).
#[derive(Debug, Clone)]
pub(crate) struct Source {
    /// Relative to the context root; empty for the root itself.
    pub rel: String,
    pub host: PathBuf,
    pub is_dir: bool,
}

/// One entry to copy: its path below the source (empty for the source itself).
struct Walked {
    rel: String,
    host: PathBuf,
    meta: Metadata,
}

/// Where a COPY or ADD puts its sources.
#[derive(Debug, Clone)]
pub(crate) struct CopyPlan {
    pub sources: Vec<Source>,
    /// Absolute, cleaned destination path.
    pub dest: String,
    /// The destination is a directory (it ends with `/`, exists as one, or there are
    /// several sources): each file goes in it under its own name.
    pub into_dir: bool,
    pub owner: Option<(u64, u64)>,
    pub chmod: Option<u32>,
    /// ADD: local archives are extracted into the destination.
    pub extract_archives: bool,
}

impl Context {
    /// The context in `root` (already extracted), with its `.dockerignore`.
    pub(crate) fn open(root: PathBuf) -> Result<Self, BuildError> {
        let ignore = match read_limited(&root.join(".dockerignore"), MAX_DOCKERFILE) {
            Ok(Some(text)) => IgnoreRules::parse(&String::from_utf8_lossy(&text))
                .map_err(|e| BuildError::Context(format!(".dockerignore: {e}")))?,
            _ => IgnoreRules::default(),
        };
        Ok(Self { root, ignore })
    }

    /// The Dockerfile at `name` in the context (never through a symlink out of it).
    pub(crate) fn dockerfile(&self, name: &str) -> Result<String, BuildError> {
        let rel = clean_relative(name);
        let not_found = || {
            BuildError::Context(format!(
                "Cannot locate specified Dockerfile: {name}: it must be in the build context"
            ))
        };
        let path = self.resolve_in_scope(&rel)?;
        let bytes = read_limited(&path, MAX_DOCKERFILE)
            .map_err(|e| BuildError::Context(format!("reading the Dockerfile {name}: {e}")))?
            .ok_or_else(not_found)?;
        String::from_utf8(bytes)
            .map_err(|_| BuildError::Context(format!("the Dockerfile {name} is not UTF-8 text")))
    }

    /// The host path of the context-relative `rel`, symlinks on the way followed inside
    /// the context. The path may not exist.
    fn resolve_in_scope(&self, rel: &str) -> Result<PathBuf, BuildError> {
        let mut pending: Vec<String> = rel
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .rev()
            .map(str::to_owned)
            .collect();
        let mut resolved: Vec<String> = Vec::new();
        let mut followed = 0;
        while let Some(component) = pending.pop() {
            if component == ".." {
                resolved.pop();
                continue;
            }
            let candidate = self.host_of(&resolved).join(&component);
            match fs::symlink_metadata(&candidate) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    followed += 1;
                    if followed > MAX_SYMLINKS {
                        return Err(BuildError::Context(format!(
                            "too many symlinks resolving {rel}"
                        )));
                    }
                    let target = fs::read_link(&candidate)
                        .map_err(|e| BuildError::Context(format!("reading link {rel}: {e}")))?;
                    let target = target.to_string_lossy().into_owned();
                    if target.starts_with('/') {
                        resolved.clear();
                    }
                    for part in target.split('/').rev() {
                        if !part.is_empty() && part != "." {
                            pending.push(part.to_owned());
                        }
                    }
                }
                _ => resolved.push(component),
            }
        }
        Ok(self.host_of(&resolved))
    }

    fn host_of(&self, components: &[String]) -> PathBuf {
        let mut path = self.root.clone();
        for c in components {
            path.push(c);
        }
        path
    }

    /// The sources a COPY or ADD names: each path, or each context path a pattern
    /// matches. `instruction` names the instruction in errors.
    pub(crate) fn sources(
        &self,
        patterns: &[String],
        instruction: &str,
    ) -> Result<Vec<Source>, BuildError> {
        let mut sources = Vec::new();
        for pattern in patterns {
            let rel = clean_relative(pattern);
            if pattern.contains(['*', '?', '[']) {
                let matcher = compile_pattern(&rel)
                    .map_err(|e| BuildError::Context(format!("{instruction}: {e}")))?;
                let mut matched = Vec::new();
                self.walk_all(&self.root, "", &mut |rel, meta| {
                    if matcher.is_match(rel) {
                        matched.push(Source {
                            rel: rel.to_owned(),
                            host: self.root.join(rel),
                            is_dir: meta.is_dir(),
                        });
                    }
                })?;
                if matched.is_empty() {
                    return Err(BuildError::Context(format!(
                        "{instruction} failed: no source files were specified"
                    )));
                }
                matched.sort_by(|a, b| a.rel.cmp(&b.rel));
                sources.extend(matched);
                continue;
            }
            let not_found = || {
                BuildError::Context(format!(
                    "{instruction} failed: file not found in build context or excluded by .dockerignore: stat {rel}: file does not exist"
                ))
            };
            if self.ignore.excludes(&rel) {
                return Err(not_found());
            }
            let host = self.resolve_in_scope(&rel)?;
            let meta = fs::symlink_metadata(&host).map_err(|_| not_found())?;
            sources.push(Source {
                rel,
                host,
                is_dir: meta.is_dir(),
            });
        }
        Ok(sources)
    }

    /// Calls `visit` with every context path below `dir` (relative `prefix`) that
    /// `.dockerignore` keeps, parents before children, symlinks not followed.
    fn walk_all(
        &self,
        dir: &Path,
        prefix: &str,
        visit: &mut dyn FnMut(&str, &Metadata),
    ) -> Result<(), BuildError> {
        let mut names: Vec<_> = fs::read_dir(dir)
            .map_err(|e| BuildError::Context(format!("reading the context: {e}")))?
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for name in names {
            let rel = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}/{name}")
            };
            let host = dir.join(&name);
            let Ok(meta) = fs::symlink_metadata(&host) else {
                continue;
            };
            let excluded = self.ignore.excludes(&rel);
            if !excluded {
                visit(&rel, &meta);
            }
            if meta.is_dir() && (!excluded || self.ignore.has_exceptions()) {
                self.walk_all(&host, &rel, visit)?;
            }
        }
        Ok(())
    }

    /// The entries of one source: itself (a file, or a directory's contents, excluded
    /// paths left out), sorted.
    fn walk_source(&self, source: &Source) -> Result<Vec<Walked>, BuildError> {
        let meta = fs::symlink_metadata(&source.host)
            .map_err(|e| BuildError::Context(format!("{}: {e}", source.rel)))?;
        if !meta.is_dir() {
            return Ok(vec![Walked {
                rel: String::new(),
                host: source.host.clone(),
                meta,
            }]);
        }
        let mut entries = Vec::new();
        let base = source.rel.clone();
        let mut paths = Vec::new();
        self.walk_all(&source.host, &base, &mut |rel, meta| {
            paths.push((rel.to_owned(), meta.clone()));
        })?;
        for (rel, meta) in paths {
            let inner = if base.is_empty() {
                rel.clone()
            } else {
                rel[base.len() + 1..].to_owned()
            };
            entries.push(Walked {
                host: source.host.join(&inner),
                rel: inner,
                meta,
            });
        }
        Ok(entries)
    }

    /// The checksum of the sources' entries, and the history word Docker writes for
    /// them: `file:<hex>`, `dir:<hex>` or `multi:<hex>`.
    pub(crate) fn checksum(&self, sources: &[Source]) -> Result<String, BuildError> {
        let mut hash = Sha256::new();
        for source in sources {
            hash.update(source.rel.as_bytes());
            hash.update([0]);
            for entry in self.walk_source(source)? {
                hash.update(entry.rel.as_bytes());
                hash.update(
                    format!(
                        "\0{:o}\0{}\0",
                        entry.meta.mode(),
                        if entry.meta.is_file() {
                            entry.meta.len()
                        } else {
                            0
                        }
                    )
                    .as_bytes(),
                );
                if entry.meta.file_type().is_symlink() {
                    if let Ok(target) = fs::read_link(&entry.host) {
                        hash.update(target.to_string_lossy().as_bytes());
                    }
                } else if entry.meta.is_file() {
                    let mut file = open_no_follow(&entry.host)?;
                    io::copy(&mut file, &mut hash)
                        .map_err(|e| BuildError::Context(format!("{}: {e}", entry.rel)))?;
                }
                hash.update([0]);
            }
        }
        let hex = hex::encode(hash.finalize());
        let kind = match sources {
            [one] if one.is_dir => "dir",
            [_] => "file",
            _ => "multi",
        };
        Ok(format!("{kind}:{hex}"))
    }

    /// Writes the layer a COPY or ADD makes (an uncompressed tar) to `out`.
    pub(crate) fn write_layer(&self, plan: &CopyPlan, out: impl Write) -> Result<(), BuildError> {
        let mut builder = tar::Builder::new(out);
        let failed = |e: io::Error| BuildError::Context(format!("writing the step's layer: {e}"));
        let dest = plan.dest.trim_start_matches('/');
        for source in &plan.sources {
            if plan.extract_archives && !source.is_dir && is_archive(&source.host) {
                extract_archive_into(&source.host, dest, &mut builder)?;
                continue;
            }
            let base = if source.is_dir || !plan.into_dir {
                dest.to_owned()
            } else {
                let name = Path::new(&source.rel)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                join(dest, &name)
            };
            for entry in self.walk_source(source)? {
                let path = join(&base, &entry.rel);
                if path.is_empty() {
                    continue;
                }
                let mut header = tar::Header::new_gnu();
                let (uid, gid) = plan.owner.unwrap_or((0, 0));
                header.set_uid(uid);
                header.set_gid(gid);
                header.set_mtime(entry.meta.mtime().max(0) as u64);
                let mode = plan
                    .chmod
                    .unwrap_or(entry.meta.permissions().mode() & 0o7777);
                header.set_mode(mode);
                let kind = entry.meta.file_type();
                if kind.is_dir() {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_size(0);
                    builder
                        .append_data(&mut header, format!("{path}/"), io::empty())
                        .map_err(failed)?;
                } else if kind.is_symlink() {
                    let target = fs::read_link(&entry.host).map_err(failed)?;
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_size(0);
                    builder
                        .append_link(&mut header, &path, &target)
                        .map_err(failed)?;
                } else if kind.is_file() {
                    let file = open_no_follow(&entry.host)?;
                    let size = file.metadata().map_err(failed)?.len();
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_size(size);
                    builder
                        .append_data(&mut header, &path, file.take(size))
                        .map_err(failed)?;
                }
                // Sockets and anything else a context cannot carry are left out.
            }
        }
        builder
            .into_inner()
            .map_err(failed)?
            .flush()
            .map_err(failed)?;
        Ok(())
    }
}

fn join(base: &str, rel: &str) -> String {
    match (base.is_empty(), rel.is_empty()) {
        (true, _) => rel.to_owned(),
        (_, true) => base.to_owned(),
        _ => format!("{base}/{rel}"),
    }
}

/// Opens a context file without following a symlink at its last component.
fn open_no_follow(path: &Path) -> Result<File, BuildError> {
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| BuildError::Context(format!("{}: {e}", path.display())))
}

/// Reads a regular file of at most `limit` bytes; `None` when it does not exist.
fn read_limited(path: &Path, limit: u64) -> io::Result<Option<Vec<u8>>> {
    let file = match fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if !file.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(io::Error::other(format!("larger than {limit} bytes")));
    }
    Ok(Some(bytes))
}

/// Whether ADD extracts this file: a tar, plain or compressed.
fn is_archive(path: &Path) -> bool {
    let Ok(reader) = berth_image::open_decompressed(path, "an ADD source") else {
        return false;
    };
    let mut archive = tar::Archive::new(reader);
    let Ok(mut entries) = archive.entries() else {
        return false;
    };
    matches!(entries.next(), Some(Ok(_)))
}

/// Appends the archive entry `entry` to `builder` as `target`, with `header` (the
/// entry's, adjusted); a hard link's target, another entry of the same archive, is
/// renamed by `rename`. Entries other than files, directories, links, devices and FIFOs
/// (PAX and GNU long-name records, which the tar reader applies itself) are left out.
pub(crate) fn append_renamed<R: Read>(
    builder: &mut tar::Builder<impl Write>,
    entry: &mut tar::Entry<'_, R>,
    mut header: tar::Header,
    target: &str,
    rename: impl Fn(&str) -> String,
) -> io::Result<()> {
    match header.entry_type() {
        tar::EntryType::Symlink | tar::EntryType::Link => {
            let link = entry
                .link_name()?
                .map(|l| l.to_string_lossy().into_owned())
                .unwrap_or_default();
            let link = if header.entry_type() == tar::EntryType::Link {
                rename(&link)
            } else {
                link
            };
            builder.append_link(&mut header, target, link)
        }
        tar::EntryType::Regular
        | tar::EntryType::Continuous
        | tar::EntryType::Directory
        | tar::EntryType::Char
        | tar::EntryType::Block
        | tar::EntryType::Fifo => {
            let size = header.size()?;
            builder.append_data(&mut header, target, entry.take(size))
        }
        _ => Ok(()),
    }
}

/// Copies the entries of the archive at `path` into `builder` under `dest`; entry names
/// with `..` are refused and a leading `/` is dropped.
fn extract_archive_into(
    path: &Path,
    dest: &str,
    builder: &mut tar::Builder<impl Write>,
) -> Result<(), BuildError> {
    let bad = |e: io::Error| BuildError::Context(format!("ADD {}: {e}", path.display()));
    let reader = berth_image::open_decompressed(path, "an ADD source")
        .map_err(|e| BuildError::Context(format!("ADD: {e}")))?;
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let name = entry.path().map_err(bad)?.into_owned();
        let mut parts = Vec::new();
        for component in name.components() {
            match component {
                Component::Normal(part) => parts.push(part.to_string_lossy().into_owned()),
                Component::CurDir | Component::RootDir => {}
                Component::ParentDir | Component::Prefix(_) => {
                    return Err(BuildError::Context(format!(
                        "ADD {}: the archive's entry {} leaves its directory",
                        path.display(),
                        name.display()
                    )))
                }
            }
        }
        let target = join(dest, &parts.join("/"));
        if target.is_empty() {
            continue;
        }
        let header = entry.header().clone();
        append_renamed(builder, &mut entry, header, &target, |link| {
            join(dest, &clean_relative(link))
        })
        .map_err(bad)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(files: &[(&str, &str)], links: &[(&str, &str)]) -> (tempfile::TempDir, Context) {
        let dir = tempfile::tempdir().unwrap();
        for (path, content) in files {
            let host = dir.path().join(path);
            fs::create_dir_all(host.parent().unwrap()).unwrap();
            fs::write(host, content).unwrap();
        }
        for (link, target) in links {
            std::os::unix::fs::symlink(target, dir.path().join(link)).unwrap();
        }
        let ctx = Context::open(dir.path().to_path_buf()).unwrap();
        (dir, ctx)
    }

    fn layer_entries(ctx: &Context, plan: &CopyPlan) -> Vec<(String, u64, String)> {
        let mut out = Vec::new();
        ctx.write_layer(plan, &mut out).unwrap();
        let mut archive = tar::Archive::new(out.as_slice());
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let path = e.path().unwrap().to_string_lossy().into_owned();
                let uid = e.header().uid().unwrap();
                let mut body = String::new();
                e.read_to_string(&mut body).unwrap();
                (path, uid, body)
            })
            .collect()
    }

    fn plan(sources: Vec<Source>, dest: &str, into_dir: bool) -> CopyPlan {
        CopyPlan {
            sources,
            dest: dest.into(),
            into_dir,
            owner: None,
            chmod: None,
            extract_archives: false,
        }
    }

    #[test]
    fn copies_files_and_directory_contents_to_their_destination() {
        let (_dir, ctx) = context(
            &[
                ("a.txt", "A"),
                ("src/main.rs", "fn main"),
                ("src/lib/x.rs", "x"),
                (".dockerignore", "src/lib\n"),
            ],
            &[],
        );
        let sources = ctx
            .sources(&["a.txt".into(), "src".into()], "COPY")
            .unwrap();
        let entries = layer_entries(&ctx, &plan(sources, "/app", true));
        let paths: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(paths, vec!["app/a.txt", "app/main.rs"]);
        // One file to a file path.
        let sources = ctx.sources(&["a.txt".into()], "COPY").unwrap();
        let mut renamed = plan(sources, "/etc/renamed", false);
        renamed.owner = Some((1000, 1000));
        let entries = layer_entries(&ctx, &renamed);
        assert_eq!(entries, vec![("etc/renamed".into(), 1000, "A".into())]);
    }

    #[test]
    fn excluded_and_missing_sources_are_not_found_and_patterns_match() {
        let (_dir, ctx) = context(
            &[
                ("a.txt", "A"),
                ("b.txt", "B"),
                ("d/c.txt", "C"),
                ("secret", "S"),
                (".dockerignore", "secret\n"),
            ],
            &[],
        );
        assert!(ctx.sources(&["secret".into()], "COPY").is_err());
        assert!(ctx.sources(&["nope".into()], "COPY").is_err());
        let found = ctx.sources(&["*.txt".into()], "COPY").unwrap();
        let rels: Vec<&str> = found.iter().map(|s| s.rel.as_str()).collect();
        assert_eq!(rels, vec!["a.txt", "b.txt"]);
        assert!(ctx.sources(&["*.none".into()], "COPY").is_err());
    }

    #[test]
    fn symlinks_stay_inside_the_context() {
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("host-secret"), "root").unwrap();
        let escape = outside.path().join("host-secret");
        let (_dir, ctx) = context(
            &[("real/inner.txt", "in")],
            &[
                ("abs", escape.to_str().unwrap()),
                ("up", "../../../../../../.."),
                ("dirlink", "real"),
            ],
        );
        // A source through an absolute link resolves inside the context (and is absent).
        assert!(ctx.sources(&["abs".into()], "COPY").is_err());
        // `..` stops at the context's root.
        let root = ctx.sources(&["up".into()], "COPY").unwrap();
        assert!(root[0].host.starts_with(&ctx.root));
        let via_link = ctx.sources(&["dirlink/inner.txt".into()], "COPY").unwrap();
        let entries = layer_entries(&ctx, &plan(via_link, "/x", false));
        assert_eq!(entries, vec![("x".into(), 0, "in".into())]);
        // Inside a copied directory a symlink is copied as a link, never followed.
        let all = ctx.sources(&[".".into()], "COPY").unwrap();
        let mut out = Vec::new();
        ctx.write_layer(&plan(all, "/c", true), &mut out).unwrap();
        let text = String::from_utf8_lossy(&out);
        assert!(
            !text.contains("root\0"),
            "the host file's content never enters the layer"
        );
        assert!(ctx.dockerfile("abs").is_err());
    }

    #[test]
    fn checksums_follow_content() {
        let (dir, ctx) = context(&[("a.txt", "A")], &[]);
        let sources = ctx.sources(&["a.txt".into()], "COPY").unwrap();
        let first = ctx.checksum(&sources).unwrap();
        assert!(first.starts_with("file:"));
        assert_eq!(first, ctx.checksum(&sources).unwrap());
        fs::write(dir.path().join("a.txt"), "B").unwrap();
        assert_ne!(first, ctx.checksum(&sources).unwrap());
    }

    #[test]
    fn add_extracts_a_local_tar_and_refuses_escapes() {
        let dir = tempfile::tempdir().unwrap();
        let make = |name: &str, entry: &str| {
            let mut builder = tar::Builder::new(Vec::new());
            let mut header = tar::Header::new_gnu();
            header.set_size(2);
            header.set_mode(0o644);
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(0);
            header.set_entry_type(tar::EntryType::Regular);
            // Written raw so that `..` reaches the archive.
            header.as_gnu_mut().unwrap().name[..entry.len()].copy_from_slice(entry.as_bytes());
            header.set_cksum();
            builder.append(&header, &b"hi"[..]).unwrap();
            let bytes = builder.into_inner().unwrap();
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&bytes).unwrap();
            fs::write(dir.path().join(name), gz.finish().unwrap()).unwrap();
        };
        make("good.tar.gz", "pkg/file");
        make("evil.tar.gz", "../../etc/passwd");
        let ctx = Context::open(dir.path().to_path_buf()).unwrap();
        let mut add = plan(
            ctx.sources(&["good.tar.gz".into()], "ADD").unwrap(),
            "/opt",
            true,
        );
        add.extract_archives = true;
        let entries = layer_entries(&ctx, &add);
        assert_eq!(entries, vec![("opt/pkg/file".into(), 0, "hi".into())]);
        let mut evil = plan(
            ctx.sources(&["evil.tar.gz".into()], "ADD").unwrap(),
            "/opt",
            true,
        );
        evil.extract_archives = true;
        assert!(ctx.write_layer(&evil, Vec::new()).is_err());
    }
}
