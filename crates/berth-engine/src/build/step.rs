//! The steps that change files: RUN, COPY and ADD, each in a build VM.
//!
//! A build VM is an ordinary container (so `docker ps` shows it while it runs, as
//! Docker shows a step's container) of the stage's image so far, marked as a build step:
//! its first process is the agent's hold helper, and the step's work runs beside it (the
//! RUN command as an exec with the stage's user, working directory and environment plus
//! the build arguments; COPY's files through the same path as `docker cp`). When the
//! work is done, the agent's changes helper reads the container's changes in the same VM
//! and they become the new image's layer; then the container and its anonymous volumes
//! are removed. A [`StepVm`] that is dropped without being removed (a failed step, a
//! cancelled build) removes its container in the background.

use std::sync::Arc;

use berth_dockerfile::words::{exec_form, split_flags};
use berth_dockerfile::Instruction;
use bollard_stubs::models::{ContainerCreateBody, ExecConfig, HealthConfig, HostConfig};
use serde_json::Value;

use super::context::CopyPlan;
use super::{at_line, dispatch, Build, BuildError, Stage};
use crate::process::output::OutputChunk;
use crate::{lock, Engine, EngineError};

/// A step's container, removed when dropped unless [`StepVm::remove`] ran.
pub(crate) struct StepVm {
    engine: Arc<Engine>,
    pub id: String,
    removed: bool,
}

impl StepVm {
    /// Removes the container (its VM stopped) and its anonymous volumes.
    pub(crate) async fn remove(mut self) -> Result<(), EngineError> {
        self.removed = true;
        self.engine
            .remove_container_and_volumes(&self.id, true, true)
            .await
    }
}

impl Drop for StepVm {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        let engine = self.engine.clone();
        let id = self.id.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(error) = engine.remove_container_and_volumes(&id, true, true).await {
                    tracing::warn!(container = %id, error = %crate::error_chain(&error), "could not remove a build step's container");
                }
            });
        }
    }
}

/// A short id as the builder prints it (12 hex digits).
pub(crate) fn short_id(id: &str) -> &str {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    &hex[..12.min(hex.len())]
}

impl Build<'_> {
    /// The image a stage's step runs on: its image so far, or an empty one for a step
    /// right after `FROM scratch`.
    async fn parent_image(&self, stage: &mut Stage) -> Result<String, EngineError> {
        if let Some(image) = &stage.image {
            return Ok(image.clone());
        }
        let id = self.engine.images.derive_image(berth_image::DeriveSpec {
            parent: None,
            config: Value::Object(Default::default()),
            created_by: String::new(),
            layer: None,
            tag: None,
            existing_layer: None,
            author: None,
        })?;
        Ok(id)
    }

    /// Creates and starts a step's VM on `image` with the stage's identity.
    async fn start_vm(
        &self,
        image: &str,
        stage: &Stage,
        env: Vec<String>,
        shown_command: Vec<String>,
    ) -> Result<StepVm, EngineError> {
        let options = self.options;
        let text = |key: &str| {
            stage
                .config
                .get(key)
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let body = ContainerCreateBody {
            image: Some(image.to_owned()),
            cmd: Some(shown_command),
            entrypoint: Some(Vec::new()),
            env: Some(env),
            user: text("User"),
            working_dir: text("WorkingDir"),
            // A step runs no health check.
            healthcheck: Some(HealthConfig {
                test: Some(vec!["NONE".into()]),
                ..Default::default()
            }),
            host_config: Some(HostConfig {
                network_mode: options.network_mode.clone().filter(|m| !m.is_empty()),
                extra_hosts: (!options.extra_hosts.is_empty()).then(|| options.extra_hosts.clone()),
                shm_size: options.shm_size.filter(|s| *s > 0),
                memory: options.memory.filter(|m| *m > 0),
                memory_swap: options.memory_swap.filter(|m| *m != 0),
                cpu_shares: options.cpu_shares.filter(|c| *c > 0),
                cpu_period: options.cpu_period.filter(|c| *c > 0),
                cpu_quota: options.cpu_quota.filter(|c| *c > 0),
                cpuset_cpus: options.cpuset_cpus.clone().filter(|c| !c.is_empty()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let created = self.engine.create_container(None, body).await?;
        let handle = self.engine.lookup(&created.id)?;
        lock(&handle.record).build_step = true;
        let vm = StepVm {
            engine: self.engine.clone(),
            id: created.id.clone(),
            removed: false,
        };
        self.engine.persist(&handle)?;
        self.engine.start_container(&created.id).await?;
        Ok(vm)
    }

    /// Reads the VM's changes into a new image on `parent`; removes the VM.
    async fn commit_step(
        &self,
        vm: StepVm,
        parent: &str,
        stage: &Stage,
        created_by: &str,
    ) -> Result<String, EngineError> {
        let layer = self.engine.read_commit_layer(&vm.id).await?;
        let engine = self.engine.clone();
        let spec_parent = parent.to_owned();
        let config = Value::Object(stage.config.clone());
        let author = stage.author.clone();
        let created_by_owned = created_by.to_owned();
        let id = tokio::task::spawn_blocking(move || {
            engine.images.derive_image(berth_image::DeriveSpec {
                parent: Some(&spec_parent),
                config,
                created_by: created_by_owned,
                layer: Some(layer.path()),
                tag: None,
                existing_layer: None,
                author: Some(&author),
            })
        })
        .await
        .map_err(EngineError::panicked("recording a build step's image"))??;
        let short = short_id(&vm.id).to_owned();
        if self.options.remove {
            vm.remove().await?;
            self.output
                .line(format!("Removing intermediate container {short}"));
        } else {
            // Kept (`--rm=false`): stopped, as Docker leaves it.
            let mut vm = vm;
            vm.removed = true;
            self.engine.stop_container(&vm.id, Some(10)).await?;
        }
        Ok(id)
    }

    /// Records the step's image in the cache and the stage.
    fn finish_step(
        &self,
        stage: &mut Stage,
        key: String,
        parent: &str,
        created_by: &str,
        id: String,
    ) -> Result<(), EngineError> {
        self.engine
            .build_cache
            .insert(key, &id, parent, created_by)?;
        self.output.line(format!(" ---> {}", short_id(&id)));
        stage.image = Some(id);
        Ok(())
    }

    /// RUN: the command in a VM of the stage's image; its changes are the new layer.
    pub(super) async fn run_step(
        &mut self,
        stage: &mut Stage,
        instruction: &Instruction,
    ) -> Result<(), EngineError> {
        let (argv, _) = dispatch::command(stage, &instruction.rest);
        if argv.is_empty() || argv.iter().all(|a| a.trim().is_empty()) {
            return Err(BuildError::Instruction {
                line: instruction.line,
                message: "RUN requires at least one argument".into(),
            }
            .into());
        }
        let (env, history_args) = stage.run_env();
        let mut created_by = argv.join(" ");
        if !history_args.is_empty() {
            created_by = format!(
                "|{} {} {created_by}",
                history_args.len(),
                history_args.join(" ")
            );
        }
        let parent = self.parent_image(stage).await?;
        let (key, cached) = self.lookup_step(stage, &parent, &created_by, &env);
        if let Some(image) = cached {
            stage.image = Some(image);
            return Ok(());
        }
        let vm = self.start_vm(&parent, stage, env, argv.clone()).await?;
        self.output
            .line(format!(" ---> Running in {}", short_id(&vm.id)));
        let code = self.exec_streaming(&vm.id, argv.clone()).await?;
        if code != 0 {
            // Removed before the build reports, so that it is gone when the client hears.
            vm.remove().await?;
            return Err(BuildError::StepFailed {
                command: argv.join(" "),
                code,
            }
            .into());
        }
        let id = self.commit_step(vm, &parent, stage, &created_by).await?;
        self.finish_step(stage, key, &parent, &created_by, id)
    }

    /// Runs `argv` in the step's container, its output going to the build's; returns
    /// its exit code.
    async fn exec_streaming(&self, id: &str, argv: Vec<String>) -> Result<i64, EngineError> {
        let config = ExecConfig {
            cmd: Some(argv),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            ..Default::default()
        };
        let exec_id = self.engine.create_exec_as(id, config, false)?;
        let exec = self.engine.exec(&exec_id)?;
        let mut state = exec.state.subscribe();
        let mut attachment = self.engine.start_exec(&exec_id).await?;
        while let Some(OutputChunk { data, .. }) = attachment.output.recv().await {
            self.output.raw(String::from_utf8_lossy(&data).into_owned());
        }
        let code = loop {
            if let Some(code) = state.borrow().exit_code {
                break code;
            }
            if state.changed().await.is_err() {
                break -1;
            }
        };
        Ok(code)
    }

    /// COPY and ADD: files from the context (or another stage's image) into a VM of the
    /// stage's image; its changes are the new layer.
    pub(super) async fn copy_step(
        &mut self,
        stage: &mut Stage,
        instruction: &Instruction,
    ) -> Result<(), EngineError> {
        let line = instruction.line;
        let keyword = instruction.keyword.as_str();
        let vars = stage.variables();
        let (flags, rest) = split_flags(&instruction.rest);
        let mut chown = None;
        let mut chmod = None;
        let mut from = None;
        for flag in flags {
            let value = self.lexer.word(&flag.value, &vars).map_err(at_line(line))?;
            match flag.name.as_str() {
                "chown" => chown = Some(value),
                "chmod" => {
                    let mode = u32::from_str_radix(&value, 8)
                        .ok()
                        .filter(|m| *m <= 0o7777)
                        .ok_or_else(|| BuildError::Instruction {
                            line,
                            message: format!("invalid chmod parameter: {value}"),
                        })?;
                    chmod = Some(mode);
                }
                "from" if keyword == "COPY" => from = Some(value),
                other => {
                    return Err(BuildError::Instruction {
                        line,
                        message: format!("Unknown flag: {other} (on {keyword})"),
                    }
                    .into())
                }
            }
        }
        let mut args = match exec_form(rest) {
            Some(list) => list
                .iter()
                .map(|a| self.lexer.word(a, &vars))
                .collect::<Result<Vec<_>, _>>()
                .map_err(at_line(line))?,
            None => self.lexer.words(rest, &vars).map_err(at_line(line))?,
        };
        if args.len() < 2 {
            return Err(BuildError::Instruction {
                line,
                message: format!("{keyword} requires at least two arguments, but only one was provided. Destination could not be determined."),
            }
            .into());
        }
        let dest_arg = args.pop().unwrap_or_default();
        if let Some(url) = args.iter().find(|a| a.contains("://")) {
            return Err(BuildError::Instruction {
                line,
                message: if keyword == "COPY" {
                    format!("source can't be a URL for COPY: {url}")
                } else {
                    format!("ADD {url}: Berth builds without reaching the network for sources; download it into the build context and ADD or COPY it from there")
                },
            }
            .into());
        }
        let workdir = stage
            .config
            .get("WorkingDir")
            .and_then(Value::as_str)
            .unwrap_or("/")
            .to_owned();
        let mut dest = if dest_arg.starts_with('/') {
            dest_arg.clone()
        } else {
            format!("{workdir}/{dest_arg}")
        };
        let trailing_slash = dest_arg.ends_with('/') || dest_arg == "." || dest_arg.ends_with("/.");
        dest = format!("/{}", berth_dockerfile::ignore::clean_relative(&dest));

        let parent = self.parent_image(stage).await?;
        let (history_word, from_image) = match &from {
            Some(name) => {
                let image = self.copy_from_image(name).await?;
                (format!("--from={image} {}", args.join(" ")), Some(image))
            }
            None => {
                let sources = self.context.sources(&args, keyword)?;
                let context = &self.context;
                (
                    tokio::task::block_in_place(|| context.checksum(&sources))?,
                    None,
                )
            }
        };
        let created_by = format!(
            "{} #(nop) {keyword} {history_word} in {dest} ",
            stage.shell.join(" ")
        );
        let flags_key = [
            format!("chown={}", chown.clone().unwrap_or_default()),
            format!("chmod={chmod:?}"),
        ];
        let (key, cached) = self.lookup_step(stage, &parent, &created_by, &flags_key);
        if let Some(image) = cached {
            stage.image = Some(image);
            return Ok(());
        }
        let (env, _) = stage.run_env();
        let shown = vec![
            "/bin/sh".to_owned(),
            "-c".to_owned(),
            format!("#(nop) {keyword} {} in {dest}", args.join(" ")),
        ];
        let vm = self.start_vm(&parent, stage, env, shown).await?;
        let dest_is_dir = match self.engine.stat_container_path(&vm.id, &dest).await {
            Ok(stat) => stat["mode"]
                .as_u64()
                .is_some_and(|mode| mode & (1 << 31) != 0),
            Err(_) => false,
        };
        let owner = match &chown {
            Some(spec) => Some(self.resolve_owner(&vm.id, spec, line).await?),
            None => None,
        };
        let layer_path = self
            .work
            .join(format!("copy-{:016x}.tar", rand::random::<u64>()));
        match from_image {
            Some(image) => {
                self.copy_between_images(
                    &image,
                    &args,
                    &dest,
                    trailing_slash || dest_is_dir,
                    owner,
                    chmod,
                    &layer_path,
                )
                .await?
            }
            None => {
                let sources = self.context.sources(&args, keyword)?;
                let into_dir = trailing_slash || dest_is_dir || sources.len() > 1;
                if sources.len() > 1 && !trailing_slash && !dest_is_dir {
                    return Err(BuildError::Instruction {
                        line,
                        message: format!("When using {keyword} with more than one source file, the destination must be a directory and end with a /"),
                    }
                    .into());
                }
                let plan = CopyPlan {
                    sources,
                    dest: dest.clone(),
                    into_dir,
                    owner,
                    chmod,
                    extract_archives: keyword == "ADD",
                };
                let file =
                    std::fs::File::create(&layer_path).map_err(EngineError::io(&layer_path))?;
                let context = &self.context;
                tokio::task::block_in_place(|| {
                    context.write_layer(&plan, std::io::BufWriter::new(file))
                })?;
            }
        }
        let file = tokio::fs::File::open(&layer_path)
            .await
            .map_err(EngineError::io(&layer_path))?;
        let body = tokio_util_stream(file);
        self.engine
            .write_container_archive(&vm.id, "/", body)
            .await?;
        let _ = std::fs::remove_file(&layer_path);
        let id = self.commit_step(vm, &parent, stage, &created_by).await?;
        self.finish_step(stage, key, &parent, &created_by, id)
    }

    /// COPY --from's image: a stage of this build (by name or index), or an image
    /// (pulled if missing).
    async fn copy_from_image(&mut self, name: &str) -> Result<String, EngineError> {
        let lower = name.to_ascii_lowercase();
        if let Some((_, Some(image))) = self
            .stages
            .iter()
            .find(|(stage, _)| stage.as_deref() == Some(lower.as_str()))
        {
            return Ok(image.clone());
        }
        if let Ok(index) = name.parse::<usize>() {
            return match self.stages.get(index) {
                Some((_, Some(image))) => Ok(image.clone()),
                _ => Err(BuildError::Context(format!(
                    "COPY --from={index}: there is no earlier stage {index}"
                ))
                .into()),
            };
        }
        self.base_image(name).await
    }

    /// COPY --from: each source read from a VM of `image` (as `docker cp` reads it),
    /// renamed to its destination, into the tar at `out`.
    #[allow(clippy::too_many_arguments)]
    async fn copy_between_images(
        &self,
        image: &str,
        sources: &[String],
        dest: &str,
        into_dir: bool,
        owner: Option<(u64, u64)>,
        chmod: Option<u32>,
        out: &std::path::Path,
    ) -> Result<(), EngineError> {
        let stage = Stage {
            name: None,
            image: Some(image.to_owned()),
            config: Default::default(),
            author: String::new(),
            args: Vec::new(),
            shell: Vec::new(),
            cmd_set: false,
        };
        let vm = self
            .start_vm(image, &stage, Vec::new(), vec!["#(nop) COPY --from".into()])
            .await?;
        let file = std::fs::File::create(out).map_err(EngineError::io(out))?;
        let mut builder = tar::Builder::new(std::io::BufWriter::new(file));
        let into_dir = into_dir || sources.len() > 1;
        for source in sources {
            if source.contains(['*', '?', '[']) {
                self.copy_matches(&vm.id, image, source, dest, owner, chmod, &mut builder)
                    .await?;
                continue;
            }
            let path = format!("/{}", berth_dockerfile::ignore::clean_relative(source));
            let (stat, stream) = self
                .engine
                .read_container_archive(&vm.id, &path)
                .await
                .map_err(|_| {
                    BuildError::Context(format!(
                        "COPY --from failed: {path} not found in the image {}",
                        short_id(image)
                    ))
                })?;
            let is_dir = stat["mode"].as_u64().is_some_and(|m| m & (1 << 31) != 0);
            let bytes = collect(stream).await?;
            let dest = dest.trim_start_matches('/').to_owned();
            tokio::task::block_in_place(|| {
                rename_entries(&bytes, is_dir, into_dir, &dest, owner, chmod, &mut builder)
            })?;
        }
        builder
            .into_inner()
            .and_then(|mut w| std::io::Write::flush(&mut w))
            .map_err(EngineError::io(out))?;
        vm.remove().await?;
        Ok(())
    }

    /// COPY --from of a pattern: the directory before its first wildcard is read from
    /// the source VM, and every path the pattern matches goes into `dest` (a file under
    /// its own name, a directory's contents).
    #[allow(clippy::too_many_arguments)]
    async fn copy_matches(
        &self,
        vm: &str,
        image: &str,
        source: &str,
        dest: &str,
        owner: Option<(u64, u64)>,
        chmod: Option<u32>,
        builder: &mut tar::Builder<impl std::io::Write>,
    ) -> Result<(), EngineError> {
        let pattern = berth_dockerfile::ignore::clean_relative(source);
        let components: Vec<&str> = pattern.split('/').collect();
        let literal: Vec<&str> = components
            .iter()
            .take_while(|c| !c.contains(['*', '?', '[']))
            .copied()
            .collect();
        if literal.is_empty() {
            return Err(BuildError::Context(format!(
                "COPY --from {source}: a pattern needs a directory before its first wildcard"
            ))
            .into());
        }
        let matcher = berth_dockerfile::ignore::compile_pattern(&pattern)
            .map_err(|e| BuildError::Context(format!("COPY --from {source}: {e}")))?;
        let dir = format!("/{}", literal.join("/"));
        let (_, stream) = self
            .engine
            .read_container_archive(vm, &dir)
            .await
            .map_err(|_| {
                BuildError::Context(format!(
                    "COPY --from failed: {dir} not found in the image {}",
                    short_id(image)
                ))
            })?;
        let bytes = collect(stream).await?;
        let parent = literal[..literal.len() - 1].join("/");
        let dest = dest.trim_start_matches('/').to_owned();
        let matched = tokio::task::block_in_place(|| {
            copy_matched_entries(
                &bytes,
                &parent,
                components.len(),
                &matcher,
                &dest,
                (owner, chmod),
                builder,
            )
        })?;
        if matched == 0 {
            return Err(BuildError::Context(format!(
                "COPY --from failed: no source files were specified ({source} matches nothing in the image {})",
                short_id(image)
            ))
            .into());
        }
        Ok(())
    }

    /// `--chown`'s `user[:group]`: numbers, or names from the step's own /etc/passwd
    /// and /etc/group (a missing group is the user's name looked up as a group).
    async fn resolve_owner(
        &self,
        id: &str,
        spec: &str,
        line: usize,
    ) -> Result<(u64, u64), EngineError> {
        let (user, group) = match spec.split_once(':') {
            Some((u, g)) => (u, g),
            None => (spec, spec),
        };
        let lookup = |file: &str, name: &str| -> Option<u64> {
            file.lines().find_map(|l| {
                let fields: Vec<&str> = l.split(':').collect();
                (fields.len() > 2 && fields[0] == name)
                    .then(|| fields[2].parse().ok())
                    .flatten()
            })
        };
        let uid = match user.parse::<u64>() {
            Ok(uid) => uid,
            Err(_) => {
                let text = self.read_small_file(id, "/etc/passwd").await;
                lookup(&text, user).ok_or_else(|| BuildError::Instruction {
                    line,
                    message: format!("unable to convert uid/gid chown string to host mapping: can't find uid for user {user}: no such user: {user}"),
                })?
            }
        };
        let gid = match group.parse::<u64>() {
            Ok(gid) => gid,
            Err(_) => {
                let text = self.read_small_file(id, "/etc/group").await;
                lookup(&text, group).ok_or_else(|| BuildError::Instruction {
                    line,
                    message: format!("unable to convert uid/gid chown string to host mapping: can't find gid for group {group}: no such group: {group}"),
                })?
            }
        };
        Ok((uid, gid))
    }

    /// A small text file of the step's container (empty when it cannot be read).
    async fn read_small_file(&self, id: &str, path: &str) -> String {
        let Ok((_, stream)) = self.engine.read_container_archive(id, path).await else {
            return String::new();
        };
        let Ok(bytes) = collect(stream).await else {
            return String::new();
        };
        let mut archive = tar::Archive::new(bytes.as_slice());
        let mut text = String::new();
        if let Ok(mut entries) = archive.entries() {
            if let Some(Ok(mut entry)) = entries.next() {
                let _ = std::io::Read::read_to_string(
                    &mut std::io::Read::take(&mut entry, 1 << 20),
                    &mut text,
                );
            }
        }
        text
    }
}

/// Gathers a stream of bytes (at most 1 GiB: what COPY --from carries is held in memory
/// while it is renamed).
async fn collect(
    stream: impl futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>>,
) -> Result<Vec<u8>, EngineError> {
    use futures_util::StreamExt;
    let mut stream = std::pin::pin!(stream);
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| BuildError::Context(format!("reading from a step's VM: {e}")))?;
        out.extend_from_slice(&chunk);
        if out.len() > 1 << 30 {
            return Err(BuildError::Context(
                "COPY --from of more than 1 GiB is not available in Berth yet".into(),
            )
            .into());
        }
    }
    Ok(out)
}

/// Moves the entries of a `docker cp`-style tar (named from the source's last component)
/// to `dest`: a directory's contents into it, a file into it (`into_dir`) or as it.
fn rename_entries(
    tar_bytes: &[u8],
    is_dir: bool,
    into_dir: bool,
    dest: &str,
    owner: Option<(u64, u64)>,
    chmod: Option<u32>,
    builder: &mut tar::Builder<impl std::io::Write>,
) -> Result<(), BuildError> {
    let bad = |e: std::io::Error| BuildError::Context(format!("COPY --from: {e}"));
    // An entry's name in the copy tar, at its destination.
    let destination = |name: &str| -> String {
        let name = berth_dockerfile::ignore::clean_relative(name);
        let (first, rest) = name.split_once('/').unwrap_or((name.as_str(), ""));
        if is_dir {
            match (dest.is_empty(), rest.is_empty()) {
                (_, true) => dest.to_owned(),
                (true, false) => rest.to_owned(),
                (false, false) => format!("{dest}/{rest}"),
            }
        } else if into_dir {
            format!("{dest}/{first}")
        } else {
            dest.to_owned()
        }
    };
    let mut archive = tar::Archive::new(tar_bytes);
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let name = entry.path().map_err(bad)?.to_string_lossy().into_owned();
        let target = destination(&name);
        if target.is_empty() {
            continue;
        }
        let header = owned_header(entry.header(), owner, chmod);
        super::context::append_renamed(builder, &mut entry, header, &target, destination)
            .map_err(bad)?;
    }
    Ok(())
}

/// Copies the entries of a `docker cp`-style tar of a directory (whose parent is
/// `parent`, relative to `/`) that a pattern of `depth` components matches, into `dest`:
/// a matched file under its own name, a matched directory's contents. Returns how many
/// paths matched.
fn copy_matched_entries(
    tar_bytes: &[u8],
    parent: &str,
    depth: usize,
    matcher: &globset::GlobMatcher,
    dest: &str,
    (owner, chmod): (Option<(u64, u64)>, Option<u32>),
    builder: &mut tar::Builder<impl std::io::Write>,
) -> Result<usize, BuildError> {
    let bad = |e: std::io::Error| BuildError::Context(format!("COPY --from: {e}"));
    let join = |a: &str, b: &str| match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_owned(),
        (_, true) => a.to_owned(),
        _ => format!("{a}/{b}"),
    };
    // A path in the image, at its destination (None: not matched).
    let destination = |name: &str| -> Option<String> {
        let full = join(parent, &berth_dockerfile::ignore::clean_relative(name));
        let parts: Vec<&str> = full.split('/').collect();
        if parts.len() < depth || !matcher.is_match(parts[..depth].join("/")) {
            return None;
        }
        Some(if parts.len() == depth {
            join(dest, parts[depth - 1])
        } else {
            join(dest, &parts[depth..].join("/"))
        })
    };
    let mut matched = std::collections::HashSet::new();
    let mut archive = tar::Archive::new(tar_bytes);
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let name = entry.path().map_err(bad)?.to_string_lossy().into_owned();
        let Some(target) = destination(&name) else {
            continue;
        };
        let full = join(parent, &berth_dockerfile::ignore::clean_relative(&name));
        let parts: Vec<&str> = full.split('/').collect();
        matched.insert(parts[..depth].join("/"));
        // A matched directory itself: its contents go into `dest`, not the directory.
        if parts.len() == depth && entry.header().entry_type() == tar::EntryType::Directory {
            continue;
        }
        let header = owned_header(entry.header(), owner, chmod);
        let rename = |link: &str| destination(link).unwrap_or_else(|| link.to_owned());
        super::context::append_renamed(builder, &mut entry, header, &target, rename)
            .map_err(bad)?;
    }
    Ok(matched.len())
}

/// A copy of an entry's header with `--chown`'s owner and `--chmod`'s mode, if given.
fn owned_header(
    header: &tar::Header,
    owner: Option<(u64, u64)>,
    chmod: Option<u32>,
) -> tar::Header {
    let mut header = header.clone();
    if let Some((uid, gid)) = owner {
        header.set_uid(uid);
        header.set_gid(gid);
    }
    if let Some(mode) = chmod {
        header.set_mode(mode);
    }
    header
}

/// A file as a stream of byte chunks.
fn tokio_util_stream(
    file: tokio::fs::File,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send + Unpin {
    use futures_util::StreamExt;
    let reader = tokio::io::BufReader::with_capacity(1 << 16, file);
    futures_util::stream::unfold(reader, |mut reader| async move {
        use tokio::io::AsyncReadExt;
        let mut buffer = vec![0u8; 1 << 16];
        match reader.read(&mut buffer).await {
            Ok(0) => None,
            Ok(n) => {
                buffer.truncate(n);
                Some((Ok(bytes::Bytes::from(buffer)), reader))
            }
            Err(e) => Some((Err(e), reader)),
        }
    })
    .boxed()
}
