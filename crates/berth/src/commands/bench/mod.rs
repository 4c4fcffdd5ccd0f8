//! `berth bench`: measurements side by side in one run, through the real docker CLI
//! against a running daemon (or `ctr` against containerd). Each prints medians and ratios; none asserts anything.

mod build;
mod clone;
mod containerd;
mod files;

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

pub use build::BuildArgs;
pub use clone::CloneArgs;
pub use containerd::ContainerdArgs;
pub use files::FilesArgs;

#[derive(clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: BenchCommand,
}

#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// Clone vs cold boot: `docker run --rm IMAGE true` end to end, `docker start` (time
    /// until the process runs), private memory of idle VMs, and optionally density.
    Clone(CloneArgs),
    /// Files inside a container: sequential write and read, untar of a tree of small
    /// files, find over it, repeated stats; on a bind mount, a shared volume, a disk
    /// volume and the host itself, in a clone and a cold boot.
    Files(FilesArgs),
    /// `docker build` of a 10-step Dockerfile cold, fully cached and with one source
    /// changed; and one RUN step broken down into clone, exec and commit.
    Build(BuildArgs),
    /// containerd: `ctr run --rm IMAGE ID true` on runc, on Berth's runtime that clones
    /// and on Berth's runtime that boots cold, in the same rounds.
    Containerd(ContainerdArgs),
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.command {
        BenchCommand::Clone(args) => clone::run(args),
        BenchCommand::Files(args) => files::run(args),
        BenchCommand::Build(args) => build::run(args),
        BenchCommand::Containerd(args) => containerd::run(args),
    }
}

/// The runtimes compared: cold boot, then clone.
const RUNTIMES: [&str; 2] = ["berth-coldboot", "berth"];

/// The docker CLI against one daemon.
pub(crate) struct Docker {
    pub host: String,
}

impl Docker {
    /// The docker CLI against the daemon on `socket`, which must have `image` loaded.
    pub fn connect(socket: &std::path::Path, image: &str) -> anyhow::Result<Docker> {
        let docker = Docker {
            host: format!("unix://{}", socket.display()),
        };
        docker
            .run(&["image", "inspect", "-f", "{{.Id}}", image])
            .with_context(|| {
                format!(
                    "is a daemon (`berth daemon`, or Docker for --docker) running on {} with {image} loaded?",
                    socket.display()
                )
            })?;
        Ok(docker)
    }

    pub fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = Command::new("docker")
            .arg("-H")
            .arg(&self.host)
            .args(args)
            .output()
            .context("running the docker CLI")?;
        if !output.status.success() {
            bail!(
                "docker {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    pub fn timed(&self, args: &[&str]) -> anyhow::Result<Duration> {
        let started = Instant::now();
        self.run(args)?;
        Ok(started.elapsed())
    }

    pub fn private_bytes(&self, id: &str) -> anyhow::Result<u64> {
        let text = self.run(&["inspect", "-f", "{{.Berth.Memory.PrivateBytes}}", id])?;
        text.parse()
            .with_context(|| format!("reading the memory of {id}: {text}"))
    }
}

pub(crate) fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
