//! `berth bench containerd`: `ctr run --rm IMAGE ID true` end to end on containerd's
//! runc runtime, Berth's runtime that clones (`io.containerd.berth.v2`) and Berth's
//! runtime that boots cold (`io.containerd.berth-cold.v2`), in the same rounds against
//! one containerd, as medians and ratios. containerd must have the image, and both
//! Berth shims on its PATH (`scripts/bench-containerd.sh` starts one so).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::median;

#[derive(clap::Args)]
pub struct ContainerdArgs {
    /// containerd's socket.
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    pub address: PathBuf,
    /// containerd's namespace.
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// The image to run (`true` must be in it).
    #[arg(long, default_value = "docker.io/library/busybox:latest")]
    pub image: String,
    /// Rounds; each runs every runtime once, in turn.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
}

/// The runtimes compared, the reference first.
const RUNTIMES: [(&str, &str); 3] = [
    ("runc", "io.containerd.runc.v2"),
    ("berth clone", "io.containerd.berth.v2"),
    ("berth cold boot", "io.containerd.berth-cold.v2"),
];

fn ctr(args: &ContainerdArgs, words: &[&str]) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let output = Command::new("ctr")
        .arg("--address")
        .arg(&args.address)
        .args(["--namespace", &args.namespace])
        .args(words)
        .stdin(std::process::Stdio::null())
        .output()
        .context("running ctr")?;
    if !output.status.success() {
        bail!(
            "ctr {}: {}",
            words.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(started.elapsed())
}

pub fn run(args: ContainerdArgs) -> anyhow::Result<()> {
    ctr(
        &args,
        &["images", "check", &format!("name=={}", args.image)],
    )
    .with_context(|| {
        format!(
            "is containerd serving on {} with {} in namespace {}?",
            args.address.display(),
            args.image,
            args.namespace
        )
    })?;
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); RUNTIMES.len()];
    // One untimed run each first: templates built, caches warm.
    for round in 0..=args.runs {
        for (index, (label, runtime)) in RUNTIMES.iter().enumerate() {
            let id = format!("berth-bench-{}-{round}-{index}", std::process::id());
            let took = ctr(
                &args,
                &[
                    "run",
                    "--rm",
                    "--runtime",
                    runtime,
                    &args.image,
                    &id,
                    "true",
                ],
            )
            .with_context(|| format!("{label} ({runtime}): is its shim on containerd's PATH?"))?;
            if round > 0 {
                times[index].push(took.as_secs_f64());
            }
        }
        if round > 0 {
            eprintln!("round {round}/{} done", args.runs);
        }
    }
    let medians: Vec<f64> = times.iter_mut().map(|t| median(t)).collect();
    println!(
        "ctr run --rm {} true, median of {} rounds (containerd {})",
        args.image,
        args.runs,
        args.address.display()
    );
    println!("| runtime | median | vs runc |");
    println!("|---|---|---|");
    for ((label, runtime), median) in RUNTIMES.iter().zip(&medians) {
        println!(
            "| {label} (`{runtime}`) | {median:.3} s | {:.2}x |",
            median / medians[0]
        );
    }
    println!("cold boot / clone: {:.1}x", medians[2] / medians[1]);
    Ok(())
}
