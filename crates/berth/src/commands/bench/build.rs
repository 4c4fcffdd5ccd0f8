//! `berth bench build`: `docker build` of a 10-step Dockerfile (two COPYs and two RUNs,
//! each in a VM of its own) cold (`--no-cache`), fully cached, and with one source
//! file changed (its COPY and every step after it run again); and what one RUN step
//! costs, broken down into the engine verbs it is made of, each timed through the docker
//! CLI in the same run: a clone started and removed (`docker run -d` + `docker rm -f`),
//! the command as an exec (`docker exec`), and reading the changes into an image
//! (`docker commit`).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;

use super::{median, Docker};

#[derive(clap::Args)]
pub struct BuildArgs {
    /// The daemon's socket.
    #[arg(long, default_value = "/run/berth/docker.sock")]
    pub socket: PathBuf,
    /// Base image of the Dockerfile (it must be loaded and have busybox's tools).
    #[arg(long, default_value = "busybox")]
    pub image: String,
    /// Measurements of each (median reported).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
}

const DOCKERFILE: &str = r#"FROM {IMAGE}
ARG VERSION=1
ENV APP=/app
WORKDIR /app
COPY deps.txt ./
RUN wc -l deps.txt > deps.count
COPY src/ ./src/
RUN ls src > manifest.txt
LABEL bench=build
CMD ["cat", "manifest.txt"]
"#;

pub fn run(args: BuildArgs) -> anyhow::Result<()> {
    let docker = Docker::connect(&args.socket, &args.image)?;
    let dir = std::env::temp_dir().join(format!("berth-bench-build-{}", std::process::id()));
    let result = measure(&docker, &args, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn measure(docker: &Docker, args: &BuildArgs, dir: &std::path::Path) -> anyhow::Result<()> {
    let context = dir;
    std::fs::create_dir_all(context.join("src")).context("a directory for the build context")?;
    std::fs::write(
        context.join("Dockerfile"),
        DOCKERFILE.replace("{IMAGE}", &args.image),
    )?;
    std::fs::write(context.join("deps.txt"), "one\ntwo\nthree\n")?;
    for i in 0..20 {
        std::fs::write(
            context.join(format!("src/file{i}.txt")),
            format!("source {i}\n"),
        )?;
    }
    let context_arg = context.to_str().context("a UTF-8 temporary path")?;
    let tag = "berth-bench-build:latest";
    let runs = args.runs.max(1);
    let (mut cold, mut cached, mut changed) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        eprintln!("build: run {}/{runs}", run + 1);
        cold.push(
            docker
                .timed(&["build", "-q", "--no-cache", "-t", tag, context_arg])?
                .as_secs_f64(),
        );
        cached.push(
            docker
                .timed(&["build", "-q", "-t", tag, context_arg])?
                .as_secs_f64(),
        );
        std::fs::write(
            context.join("src/file0.txt"),
            format!("changed in run {run} at {:?}\n", Instant::now()),
        )?;
        changed.push(
            docker
                .timed(&["build", "-q", "-t", tag, context_arg])?
                .as_secs_f64(),
        );
    }

    // One RUN step's parts, through the same engine verbs.
    let (mut step, mut clone, mut exec, mut commit) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let one_run = context.join("one-run");
    std::fs::create_dir_all(&one_run)?;
    std::fs::write(
        one_run.join("Dockerfile"),
        format!("FROM {}\nRUN echo step > /step.txt\n", args.image),
    )?;
    let one_run_arg = one_run.to_str().context("a UTF-8 temporary path")?;
    for run in 0..runs {
        eprintln!("one RUN step: run {}/{runs}", run + 1);
        step.push(
            docker
                .timed(&["build", "-q", "--no-cache", one_run_arg])?
                .as_secs_f64(),
        );
        let started = Instant::now();
        let id = docker.run(&["run", "-d", &args.image, "sleep", "600"])?;
        let started_at = started.elapsed();
        exec.push(
            docker
                .timed(&["exec", &id, "sh", "-c", "echo step > /step.txt"])?
                .as_secs_f64(),
        );
        let committed = Instant::now();
        let image = docker.run(&["commit", &id])?;
        commit.push(committed.elapsed().as_secs_f64());
        let removed = docker.timed(&["rm", "-f", &id])?;
        clone.push((started_at + removed).as_secs_f64());
        docker.run(&["rmi", &image])?;
    }
    let _ = docker.run(&["rmi", tag]);

    let cold = median(&mut cold);
    let cached = median(&mut cached);
    let changed = median(&mut changed);
    println!(
        "docker build of a 10-step Dockerfile (2 COPY + 2 RUN steps in VMs), median of {runs}:"
    );
    println!("  cold (--no-cache)          {cold:8.2} s");
    println!(
        "  fully cached               {cached:8.2} s   {:6.1}x faster than cold",
        cold / cached
    );
    println!(
        "  one source file changed    {changed:8.2} s   {:6.2} of cold",
        changed / cold
    );
    let step = median(&mut step);
    let clone = median(&mut clone);
    let exec = median(&mut exec);
    let commit = median(&mut commit);
    println!(
        "one RUN step (`FROM {}` + `RUN echo`, --no-cache), median of {runs}:",
        args.image
    );
    println!("  the whole build            {step:8.2} s");
    println!(
        "  clone started and removed  {clone:8.2} s   {:5.2} of it",
        clone / step
    );
    println!(
        "  the command (exec)         {exec:8.2} s   {:5.2} of it",
        exec / step
    );
    println!(
        "  changes into an image      {commit:8.2} s   {:5.2} of it",
        commit / step
    );
    Ok(())
}
