//! `docker build` with Docker's classic builder's behaviour, each step that changes
//! files run in a VM of its own.
//!
//! A build:
//! 1. extracts the context tar into `<root>/build/work/<random>/context` (see
//!    [`context`]; the directory is removed when the build ends, however it ends);
//! 2. reads the Dockerfile ([`berth_dockerfile`]) and splits it into the global ARGs and
//!    the stages (`--target` cuts the stages after the one named);
//! 3. runs each instruction as a step, printing `Step N/M : INSTRUCTION`. Every step
//!    makes an image (the classic builder's intermediate images, `Parent` the one
//!    before): metadata instructions (ENV, LABEL, CMD, ...) only change the config and
//!    add an `empty_layer` history entry; RUN, COPY and ADD run in a build VM (see
//!    [`step`]) and add the layer of its changes. A step whose cache key is known
//!    ([`cache`]) reuses its image (`---> Using cache`) unless the build says `nocache`;
//! 4. tags the last stage's image.
//!
//! A failing step ends the build with Docker's message (`The command '...' returned a
//! non-zero code: N`); the images already made stay as cache (as Docker's do), no tag
//! is written, and the step's VM and container are removed.
//!
//! Output goes to a [`BuildMessage`] channel (the API writes it as Docker's JSON
//! stream); a closed channel (the client went away) stops the build between steps.

mod cache;
mod cache_from;
mod context;
mod dispatch;
mod manage;
mod step;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_dockerfile::words::{Lexer, WordError};
use berth_dockerfile::{Instruction, ParseError};
use serde_json::{json, Map, Value};
use thiserror::Error;
use tokio::sync::mpsc;

pub(crate) use cache::BuildCache;
pub use cache::CacheEntry;
pub use manage::CacheUsage;

use crate::registry::{Credentials, Progress};
use crate::{Engine, EngineError};
use step::short_id;

/// Build arguments Docker lets a build use without an ARG (and leaves out of history).
const PREDEFINED_ARGS: &[&str] = &[
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// The PATH Docker gives a stage whose image sets none.
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Why a build failed.
#[derive(Debug, Error)]
pub enum BuildError {
    #[error(transparent)]
    Dockerfile(#[from] ParseError),
    #[error("Dockerfile line {line}: {source}")]
    Word {
        line: usize,
        #[source]
        source: WordError,
    },
    #[error("Dockerfile line {line}: {message}")]
    Instruction { line: usize, message: String },
    #[error("{0}")]
    Context(String),
    /// A RUN's command exited with a non-zero code.
    #[error("The command '{command}' returned a non-zero code: {code}")]
    StepFailed { command: String, code: i64 },
    #[error("the build was cancelled: the client went away")]
    Cancelled,
}

impl BuildError {
    /// The code Docker puts in the stream's `errorDetail` (the CLI exits with it).
    pub fn code(&self) -> Option<i64> {
        match self {
            Self::StepFailed { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// What `POST /build` asks for.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// The Dockerfile's path in the context (`Dockerfile` when empty).
    pub dockerfile: String,
    pub tags: Vec<String>,
    /// `--build-arg NAME=value` (`None`: `--build-arg NAME` without a value).
    pub build_args: BTreeMap<String, Option<String>>,
    pub target: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub no_cache: bool,
    pub pull: bool,
    /// Remove a step's container after the step (the default).
    pub remove: bool,
    pub network_mode: Option<String>,
    pub extra_hosts: Vec<String>,
    pub shm_size: Option<i64>,
    pub memory: Option<i64>,
    pub memory_swap: Option<i64>,
    pub cpu_shares: Option<i64>,
    pub cpu_period: Option<i64>,
    pub cpu_quota: Option<i64>,
    pub cpuset_cpus: Option<String>,
    pub platform: Option<String>,
    /// Images the build may take steps from by their history (`--cache-from`), besides
    /// the daemon's own cache.
    pub cache_from: Vec<String>,
    /// Credentials for the registries FROM pulls from, by registry domain.
    pub registry_credentials: HashMap<String, Credentials>,
}

/// One message of a build's output.
#[derive(Debug, Clone)]
pub enum BuildMessage {
    /// Text for the user (`{"stream": ...}`).
    Stream(String),
    /// A pull's progress (FROM an image the store does not have).
    Progress(Progress),
    /// `{"aux": ...}`: the built image's id.
    Aux(Value),
}

/// Where a build writes its output.
#[derive(Clone)]
pub(crate) struct Output(mpsc::UnboundedSender<BuildMessage>);

impl Output {
    pub(crate) fn line(&self, text: impl Into<String>) {
        let mut text = text.into();
        if !text.ends_with('\n') {
            text.push('\n');
        }
        let _ = self.0.send(BuildMessage::Stream(text));
    }

    pub(crate) fn raw(&self, text: String) {
        let _ = self.0.send(BuildMessage::Stream(text));
    }

    fn closed(&self) -> bool {
        self.0.is_closed()
    }
}

/// A stage while it is built.
#[derive(Debug, Clone)]
pub(crate) struct Stage {
    /// `AS name`, lower case.
    pub name: Option<String>,
    /// The image so far (`None`: `FROM scratch` and no step yet).
    pub image: Option<String>,
    /// Docker's container config of the image being made.
    pub config: Map<String, Value>,
    pub author: String,
    /// ARGs in scope with their values, in declaration order.
    pub args: Vec<(String, String)>,
    /// The shell of RUN, CMD and ENTRYPOINT's shell forms (`SHELL`).
    pub shell: Vec<String>,
    /// CMD was set in this stage (ENTRYPOINT then keeps it).
    pub cmd_set: bool,
}

impl Stage {
    /// What substitution reads: the stage's ARGs, then its ENV (ENV wins).
    pub(crate) fn variables(&self) -> Vec<(String, String)> {
        let mut vars = self.args.clone();
        vars.extend(env_pairs(&self.config));
        vars
    }

    /// The environment a RUN sees: the config's, plus build arguments ENV does not set.
    pub(crate) fn run_env(&self) -> (Vec<String>, Vec<String>) {
        let env: Vec<String> = self
            .config
            .get("Env")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let mut with_args = env.clone();
        let mut history_args = Vec::new();
        for (name, value) in &self.args {
            if env
                .iter()
                .any(|e| e.split('=').next() == Some(name.as_str()))
            {
                continue;
            }
            with_args.push(format!("{name}={value}"));
            if !PREDEFINED_ARGS.contains(&name.as_str()) {
                history_args.push(format!("{name}={value}"));
            }
        }
        (with_args, history_args)
    }
}

/// The `NAME=value` pairs of a config's Env.
fn env_pairs(config: &Map<String, Value>) -> Vec<(String, String)> {
    config
        .get("Env")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(|e| {
                    let (k, v) = e.split_once('=').unwrap_or((e, ""));
                    (k.to_owned(), v.to_owned())
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The build's own directory, removed when the build ends.
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A build in progress: what every step needs.
pub(crate) struct Build<'a> {
    pub engine: &'a Arc<Engine>,
    pub options: &'a BuildOptions,
    pub output: Output,
    pub context: context::Context,
    pub lexer: Lexer,
    pub work: PathBuf,
    /// Build arguments some ARG (or the predefined set) used.
    pub consumed: std::collections::HashSet<String>,
    /// Finished stages: (name, image).
    pub stages: Vec<(Option<String>, Option<String>)>,
}

impl Engine {
    /// `POST /build`: builds the context tar at `context_tar`. Returns the image id; the
    /// output goes to `messages` as it happens.
    pub async fn build_image(
        self: &Arc<Self>,
        context_tar: &Path,
        options: BuildOptions,
        messages: mpsc::UnboundedSender<BuildMessage>,
    ) -> Result<String, EngineError> {
        if let Some(platform) = options.platform.as_deref().filter(|p| !p.is_empty()) {
            check_platform(platform)?;
        }
        let work = self
            .config
            .root
            .join("build")
            .join("work")
            .join(format!("{:016x}", rand::random::<u64>()));
        let context_dir = work.join("context");
        std::fs::create_dir_all(&context_dir).map_err(EngineError::io(&context_dir))?;
        let _work_guard = WorkDir(work.clone());
        let source = context_tar.to_path_buf();
        let dest = context_dir.clone();
        tokio::task::spawn_blocking(move || berth_image::extract_build_context(&source, &dest))
            .await
            .map_err(EngineError::panicked("extracting the build context"))?
            .map_err(|e| {
                BuildError::Context(format!(
                    "reading the build context: {}",
                    crate::error_chain(&e)
                ))
            })?;
        let context = context::Context::open(context_dir)?;
        let dockerfile_name = if options.dockerfile.is_empty() {
            "Dockerfile"
        } else {
            options.dockerfile.as_str()
        };
        let text = context.dockerfile(dockerfile_name)?;
        let dockerfile = berth_dockerfile::parse(&text).map_err(BuildError::from)?;
        let mut build = Build {
            engine: self,
            options: &options,
            output: Output(messages),
            context,
            lexer: Lexer::new(dockerfile.escape),
            work,
            consumed: Default::default(),
            stages: Vec::new(),
        };
        for note in &dockerfile.notes {
            build.output.line(format!("[Note] {note}"));
        }
        build.run(dockerfile.instructions).await
    }
}

/// Only linux/amd64 images run in Berth's VMs.
fn check_platform(platform: &str) -> Result<(), BuildError> {
    let normalized = platform.to_ascii_lowercase();
    match normalized.as_str() {
        "linux" | "linux/amd64" | "linux/x86_64" | "amd64" => Ok(()),
        other => Err(BuildError::Context(format!(
            "the platform {other} is not available: Berth's VMs run linux/amd64"
        ))),
    }
}

impl Build<'_> {
    async fn run(&mut self, instructions: Vec<Instruction>) -> Result<String, EngineError> {
        // Global ARGs, then stages, each from its FROM.
        let first_from = instructions
            .iter()
            .position(|i| i.keyword == "FROM")
            .ok_or_else(|| BuildError::Instruction {
                line: instructions.first().map_or(1, |i| i.line),
                message: "no build stage in current context: the Dockerfile needs a FROM".into(),
            })?;
        let (globals, rest) = instructions.split_at(first_from);
        if let Some(other) = globals.iter().find(|i| i.keyword != "ARG") {
            return Err(BuildError::Instruction {
                line: other.line,
                message: format!(
                    "{} before the first FROM: only ARG may come before it",
                    other.keyword
                ),
            }
            .into());
        }
        let mut stages: Vec<Vec<Instruction>> = Vec::new();
        for instruction in rest {
            if instruction.keyword == "FROM" {
                stages.push(Vec::new());
            }
            if let Some(stage) = stages.last_mut() {
                stage.push(instruction.clone());
            }
        }
        if let Some(target) = self.options.target.as_deref().filter(|t| !t.is_empty()) {
            let names: Vec<Option<String>> = stages
                .iter()
                .map(|s| dispatch::stage_name(&s[0].rest))
                .collect();
            let index = names
                .iter()
                .position(|n| n.as_deref() == Some(&target.to_ascii_lowercase()))
                .ok_or_else(|| {
                    BuildError::Context(format!(
                        "failed to reach build target {target} in Dockerfile"
                    ))
                })?;
            stages.truncate(index + 1);
        }
        if !self.options.labels.is_empty() {
            // As dockerd: `--label`s are a LABEL step at the end of the last stage.
            let rest = self
                .options
                .labels
                .iter()
                .map(|(k, v)| format!("{}={}", quote(k), quote(v)))
                .collect::<Vec<_>>()
                .join(" ");
            if let Some(last) = stages.last_mut() {
                let line = last.last().map_or(0, |i| i.line);
                last.push(Instruction {
                    keyword: "LABEL".into(),
                    rest,
                    line,
                });
            }
        }
        let total = globals.len() + stages.iter().map(Vec::len).sum::<usize>();
        let mut step = 0;
        let mut global_args: Vec<(String, Option<String>)> = Vec::new();
        for instruction in globals {
            step += 1;
            self.output
                .line(format!("Step {step}/{total} : {}", instruction.display()));
            let known: Vec<(String, String)> = global_args
                .iter()
                .filter_map(|(k, v)| v.clone().map(|v| (k.clone(), v)))
                .collect();
            for (name, default) in
                dispatch::arg_pairs(&instruction.rest, instruction.line, &self.lexer, &known)?
            {
                let value = self.arg_value(&name, default);
                global_args.push((name, value));
            }
        }
        let mut last_image = None;
        for stage_instructions in stages {
            let from = &stage_instructions[0];
            step += 1;
            self.output
                .line(format!("Step {step}/{total} : {}", from.display()));
            let mut stage = self.from(from, &global_args).await?;
            let triggers = dispatch::onbuild_triggers(&mut stage.config);
            if !triggers.is_empty() {
                let count = triggers.len();
                let plural = if count == 1 { "" } else { "s" };
                self.output
                    .line(format!("# Executing {count} build trigger{plural}"));
            }
            for trigger in triggers {
                let parsed = berth_dockerfile::parse(&trigger).map_err(BuildError::from)?;
                for instruction in parsed.instructions {
                    self.step(&mut stage, &instruction, &global_args).await?;
                }
            }
            for instruction in &stage_instructions[1..] {
                if self.output.closed() {
                    return Err(BuildError::Cancelled.into());
                }
                step += 1;
                self.output
                    .line(format!("Step {step}/{total} : {}", instruction.display()));
                self.step(&mut stage, instruction, &global_args).await?;
            }
            // A stage with no step after FROM scratch has no image: make its empty one.
            if stage.image.is_none() {
                let id = self.engine.images.derive_image(berth_image::DeriveSpec {
                    parent: None,
                    config: Value::Object(stage.config.clone()),
                    created_by: String::new(),
                    layer: None,
                    tag: None,
                    existing_layer: None,
                    author: None,
                })?;
                stage.image = Some(id);
            }
            last_image = stage.image.clone();
            self.stages.push((stage.name.clone(), stage.image.clone()));
        }
        let image = last_image.ok_or_else(|| BuildError::Context("nothing was built".into()))?;
        let unused: Vec<&String> = self
            .options
            .build_args
            .keys()
            .filter(|k| !self.consumed.contains(*k) && !PREDEFINED_ARGS.contains(&k.as_str()))
            .collect();
        if !unused.is_empty() {
            let names: Vec<&str> = unused.iter().map(|s| s.as_str()).collect();
            self.output.line(format!(
                "[Warning] One or more build-args [{}] were not consumed",
                names.join(" ")
            ));
        }
        let _ = self
            .output
            .0
            .send(BuildMessage::Aux(json!({ "ID": image })));
        self.output
            .line(format!("Successfully built {}", short_id(&image)));
        for tag in &self.options.tags {
            let reference = berth_image::reference::normalize(tag)?;
            let shown = self.engine.images.tag(&image, &reference.canonical())?;
            self.engine.events.emit(
                "image",
                "tag",
                &image,
                HashMap::from([("name".to_owned(), shown.clone())]),
            );
            self.output.line(format!("Successfully tagged {shown}"));
        }
        Ok(image)
    }

    /// A build argument's value: the build's `--build-arg` (marked consumed), else the
    /// ARG's default.
    fn arg_value(&mut self, name: &str, default: Option<String>) -> Option<String> {
        match self.options.build_args.get(name) {
            Some(given) => {
                self.consumed.insert(name.to_owned());
                given.clone().or(default)
            }
            None => default,
        }
    }

    /// FROM: the stage's base image (a previous stage, the store's, or pulled).
    async fn from(
        &mut self,
        from: &Instruction,
        global_args: &[(String, Option<String>)],
    ) -> Result<Stage, EngineError> {
        let vars: Vec<(String, String)> = global_args
            .iter()
            .filter_map(|(k, v)| v.clone().map(|v| (k.clone(), v)))
            .collect();
        let parsed = dispatch::parse_from(&from.rest, from.line, &self.lexer, &vars)?;
        if let Some(platform) = &parsed.platform {
            check_platform(platform)?;
        }
        let mut stage = Stage {
            name: parsed.name.clone(),
            image: None,
            config: Map::new(),
            author: String::new(),
            args: Vec::new(),
            shell: vec!["/bin/sh".into(), "-c".into()],
            cmd_set: false,
        };
        let base = parsed.image.to_ascii_lowercase();
        let previous = self
            .stages
            .iter()
            .rev()
            .find(|(name, _)| name.as_deref() == Some(base.as_str()))
            .map(|(_, image)| image.clone());
        let image_id = match previous {
            Some(image) => image,
            None if base == "scratch" => None,
            None => Some(self.base_image(&parsed.image).await?),
        };
        if let Some(id) = &image_id {
            let raw = self.engine.images.raw_config(id)?;
            if let Some(config) = raw.get("config").and_then(Value::as_object) {
                stage.config = config.clone();
            }
            stage.author = raw
                .get("author")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            if let Some(shell) = stage.config.get("Shell").and_then(Value::as_array) {
                let shell: Vec<String> = shell
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect();
                if !shell.is_empty() {
                    stage.shell = shell;
                }
            }
            self.output.line(format!(" ---> {}", short_id(id)));
        }
        if !env_pairs(&stage.config).iter().any(|(k, _)| k == "PATH") {
            let mut env = stage
                .config
                .get("Env")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            env.push(json!(DEFAULT_PATH));
            stage.config.insert("Env".into(), Value::Array(env));
        }
        stage.image = image_id;
        Ok(stage)
    }

    /// The image a FROM names: the store's (pulled first with `--pull`), or pulled.
    async fn base_image(&mut self, reference: &str) -> Result<String, EngineError> {
        if !self.options.pull {
            if let Ok(image) = self.engine.images.resolve(reference) {
                return Ok(image.id);
            }
        }
        let output = self.output.clone();
        let progress = move |p: Progress| {
            let _ = output.0.send(BuildMessage::Progress(p));
        };
        let domain = berth_image::reference::normalize(reference)?.domain;
        let credentials = self
            .options
            .registry_credentials
            .get(&domain)
            .cloned()
            .unwrap_or(Credentials::Anonymous);
        let (normalized, _) = self
            .engine
            .pull_image(reference, &credentials, &progress)
            .await?;
        Ok(self.engine.images.resolve(&normalized.canonical())?.id)
    }

    /// One instruction of a stage.
    async fn step(
        &mut self,
        stage: &mut Stage,
        instruction: &Instruction,
        global_args: &[(String, Option<String>)],
    ) -> Result<(), EngineError> {
        match instruction.keyword.as_str() {
            "RUN" => self.run_step(stage, instruction).await,
            "COPY" | "ADD" => self.copy_step(stage, instruction).await,
            "FROM" => Err(BuildError::Instruction {
                line: instruction.line,
                message: "FROM starts a stage; it cannot be a build trigger".into(),
            }
            .into()),
            "ARG" => {
                let vars = stage.variables();
                let pairs =
                    dispatch::arg_pairs(&instruction.rest, instruction.line, &self.lexer, &vars)?;
                for (name, default) in pairs {
                    // A stage's `ARG NAME` brings a global ARG's value in.
                    let inherited = global_args
                        .iter()
                        .find(|(n, _)| *n == name)
                        .and_then(|(_, v)| v.clone());
                    let value = self.arg_value(&name, default.or(inherited));
                    stage.args.retain(|(n, _)| *n != name);
                    if let Some(value) = value {
                        stage.args.push((name, value));
                    }
                }
                let created_by = dispatch::nop(stage, &instruction.display());
                self.commit_config(stage, created_by).await
            }
            _ => {
                let created_by = dispatch::apply_metadata(stage, instruction, &self.lexer)?;
                self.commit_config(stage, created_by).await
            }
        }
    }

    /// A step that changes only the config: a new image (or the cached one).
    async fn commit_config(
        &mut self,
        stage: &mut Stage,
        created_by: String,
    ) -> Result<(), EngineError> {
        let config = Value::Object(stage.config.clone());
        let parent = stage.image.clone().unwrap_or_default();
        let (key, cached) = self.lookup_step(stage, &parent, &created_by, &[]);
        if let Some(image) = cached {
            stage.image = Some(image);
            return Ok(());
        }
        let id = self.engine.images.derive_image(berth_image::DeriveSpec {
            parent: stage.image.as_deref(),
            config,
            created_by: created_by.clone(),
            layer: None,
            tag: None,
            existing_layer: None,
            author: Some(&stage.author),
        })?;
        self.engine
            .build_cache
            .insert(key, &id, &parent, &created_by)?;
        self.output.line(format!(" ---> {}", short_id(&id)));
        stage.image = Some(id);
        Ok(())
    }

    /// The cache key of a step on `parent` that leaves the stage's config, and (unless
    /// the build says `nocache`) the image cached under it, announced.
    pub(crate) fn lookup_step(
        &self,
        stage: &Stage,
        parent: &str,
        created_by: &str,
        run_env: &[String],
    ) -> (String, Option<String>) {
        let config = Value::Object(stage.config.clone());
        let key = cache::StepKey {
            parent,
            created_by,
            config: &config,
            run_env,
            author: &stage.author,
        }
        .digest();
        let mut cached = self.cached(&key);
        if cached.is_none() && !self.options.no_cache {
            match self.step_from_cache_sources(parent, created_by, &config, &stage.author) {
                Ok(Some(image)) => {
                    if let Err(error) =
                        self.engine
                            .build_cache
                            .insert(key.clone(), &image, parent, created_by)
                    {
                        tracing::warn!(error = %crate::error_chain(&error), "could not record a cached step");
                    }
                    self.output.line(" ---> Using cache");
                    self.output.line(format!(" ---> {}", short_id(&image)));
                    cached = Some(image);
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(error = %crate::error_chain(&error), "a --cache-from image could not serve a step");
                }
            }
        }
        (key, cached)
    }

    /// The image cached under `key`, announced, unless the build says `nocache`.
    fn cached(&self, key: &str) -> Option<String> {
        if self.options.no_cache {
            return None;
        }
        let image = self.engine.build_cache.lookup(key)?;
        if self.engine.images.resolve(&image).is_err() {
            let _ = self.engine.build_cache.forget(key);
            return None;
        }
        self.output.line(" ---> Using cache");
        self.output.line(format!(" ---> {}", short_id(&image)));
        Some(image)
    }
}

/// A label key or value quoted for a LABEL line.
fn quote(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A word error at an instruction's line.
pub(crate) fn at_line(line: usize) -> impl FnOnce(WordError) -> BuildError {
    move |source| BuildError::Word { line, source }
}
