//! `berth bench files`: file work inside a container on each kind of storage Berth
//! gives it (a bind mount and a shared volume, both served by the host's file server; a
//! disk volume, mounted by the guest's kernel), and the same work on the host itself,
//! side by side in one run, in a clone and in a cold boot.
//!
//! Every step is a busybox shell script over a directory `$T`, run with `docker exec`
//! in the container and with the host's busybox on the host; the time of an empty
//! `docker exec` (measured in the same run) is taken off the container's times.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};

use super::{median, Docker, RUNTIMES};

#[derive(clap::Args)]
pub struct FilesArgs {
    /// The daemon's socket.
    #[arg(long, default_value = "/run/berth/docker.sock")]
    pub socket: PathBuf,
    /// Image to run (it must be loaded and have busybox's tools).
    #[arg(long, default_value = "busybox")]
    pub image: String,
    /// Measurements per step and place (median reported).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Size of the sequential write and read, in MiB.
    #[arg(long, default_value_t = 1024)]
    pub size_mib: u64,
    /// Files in the tree that is untarred, found and removed.
    #[arg(long, default_value_t = 5000)]
    pub files: u64,
    /// Host directory for the bind mount and the host's own runs (made, then removed).
    #[arg(long, default_value = "/var/tmp/berth-bench-files")]
    pub dir: PathBuf,
}

/// The timed steps: a name and a script over `$T` (`$TREE` is the tar of the tree).
const STEPS: [(&str, &str); 5] = [
    (
        "write (dd, fsync)",
        "dd if=/dev/zero of=$T/big bs=1M count=$SIZE conv=fsync 2>/dev/null",
    ),
    ("read (dd)", "dd if=$T/big of=/dev/null bs=1M 2>/dev/null"),
    ("untar the tree", "mkdir $T/u && tar xf $TREE -C $T/u"),
    ("find over the tree", "find $T/u >/dev/null"),
    (
        "10,000 stats of one file",
        "i=0; while [ $i -lt 10000 ]; do [ -e $T/big ]; i=$((i+1)); done",
    ),
];

/// Run before each round of steps, untimed.
const CLEAN: &str = "rm -rf $T/big $T/u";

/// Makes the tree's tar at `$TREE`: `$FILES` small files in directories of 100.
const MAKE_TREE: &str = "mkdir -p /tmp/tree && cd /tmp/tree && n=0; d=0; \
     while [ $n -lt $FILES ]; do mkdir d$d; (cd d$d && seq 1 100 | xargs touch); \
     n=$((n+100)); d=$((d+1)); done; tar cf $TREE -C /tmp tree && rm -rf /tmp/tree";

/// Where a step runs.
enum Place {
    Host,
    /// In the container, on the directory at this path.
    Container {
        id: String,
        path: &'static str,
    },
}

struct Bench<'a> {
    docker: &'a Docker,
    args: &'a FilesArgs,
}

impl Bench<'_> {
    fn env(&self, dir: &str, tree: &str) -> String {
        format!(
            "T={dir}; TREE={tree}; SIZE={}; FILES={};",
            self.args.size_mib, self.args.files
        )
    }

    /// Runs `script` at `place`; returns its seconds.
    fn time(&self, place: &Place, script: &str) -> anyhow::Result<f64> {
        let started = Instant::now();
        match place {
            Place::Host => {
                let dir = self.args.dir.join("host");
                let tree = self.args.dir.join("tree.tar");
                let full = format!(
                    "{} {script}",
                    self.env(&dir.display().to_string(), &tree.display().to_string())
                );
                let status = Command::new("busybox")
                    .args(["sh", "-c", &full])
                    .status()
                    .context("running busybox sh on the host")?;
                if !status.success() {
                    bail!("on the host: {script}: {status}");
                }
            }
            Place::Container { id, path } => {
                let full = format!("{} {script}", self.env(path, "/tmp/tree.tar"));
                self.docker.run(&["exec", id, "sh", "-c", &full])?;
            }
        }
        Ok(started.elapsed().as_secs_f64())
    }

    /// Median seconds of each step at `place`.
    fn measure(&self, place: &Place) -> anyhow::Result<Vec<f64>> {
        let mut times = vec![Vec::new(); STEPS.len()];
        for _ in 0..self.args.runs {
            self.time(place, CLEAN)?;
            for (index, (_, script)) in STEPS.iter().enumerate() {
                times[index].push(self.time(place, script)?);
            }
        }
        self.time(place, CLEAN)?;
        Ok(times.iter_mut().map(|t| median(t)).collect())
    }
}

/// The places measured in a container, by mount point.
const MOUNTS: [(&str, &str); 3] = [
    ("bind mount", "/bind"),
    ("shared volume", "/shared"),
    ("disk volume", "/disk"),
];

pub fn run(args: FilesArgs) -> anyhow::Result<()> {
    let docker = Docker::connect(&args.socket, &args.image)?;
    let bench = Bench {
        docker: &docker,
        args: &args,
    };
    let _ = std::fs::remove_dir_all(&args.dir);
    std::fs::create_dir_all(args.dir.join("host"))?;
    std::fs::create_dir_all(args.dir.join("bind"))?;
    eprintln!("host: making the tree and measuring");
    bench.time(&Place::Host, MAKE_TREE)?;
    let host = bench.measure(&Place::Host)?;

    // Columns: host, then per runtime each mount.
    let mut columns: Vec<(String, Vec<f64>)> = vec![("host".into(), host)];
    for runtime in RUNTIMES {
        let shared = format!("bench-files-shared-{runtime}");
        let disk = format!("bench-files-disk-{runtime}");
        docker.run(&["volume", "create", &shared])?;
        docker.run(&["volume", "create", "--opt", "type=disk", &disk])?;
        let bind = format!("{}:/bind", args.dir.join("bind").display());
        let shared_mount = format!("{shared}:/shared");
        let disk_mount = format!("{disk}:/disk");
        let id = docker.run(&[
            "run",
            "-d",
            "--runtime",
            runtime,
            "-v",
            &bind,
            "-v",
            &shared_mount,
            "-v",
            &disk_mount,
            &args.image,
            "sleep",
            "36000",
        ])?;
        let measured = (|| -> anyhow::Result<()> {
            let mut exec = Vec::new();
            for _ in 0..args.runs.max(3) {
                exec.push(docker.timed(&["exec", &id, "true"])?.as_secs_f64());
            }
            let exec = median(&mut exec);
            eprintln!("{runtime}: making the tree (docker exec itself: {exec:.3}s)");
            bench.time(
                &Place::Container {
                    id: id.clone(),
                    path: "/tmp",
                },
                MAKE_TREE,
            )?;
            for (name, path) in MOUNTS {
                eprintln!("{runtime}: {name}");
                let place = Place::Container {
                    id: id.clone(),
                    path,
                };
                let times = bench.measure(&place)?;
                let label = format!(
                    "{name} ({})",
                    if runtime == "berth" { "clone" } else { "cold" }
                );
                columns.push((label, times.iter().map(|t| (t - exec).max(0.0)).collect()));
            }
            Ok(())
        })();
        docker.run(&["rm", "-f", &id])?;
        docker.run(&["volume", "rm", &shared, &disk])?;
        measured?;
    }
    let _ = std::fs::remove_dir_all(&args.dir);

    println!(
        "berth bench files: {} MiB, {} files, median of {} runs; seconds, and (in brackets) the time over the host's",
        args.size_mib, args.files, args.runs
    );
    print!("{:<26}", "step");
    for (label, _) in &columns {
        print!(" | {label:>24}");
    }
    println!();
    for (index, (step, _)) in STEPS.iter().enumerate() {
        print!("{step:<26}");
        let host = columns[0].1[index];
        for (column, (_, times)) in columns.iter().enumerate() {
            let time = times[index];
            if column == 0 {
                print!(" | {time:>23.3}s");
            } else {
                print!(" | {:>14.3}s ({:>6.1}x)", time, time / host.max(1e-6));
            }
        }
        println!();
    }
    println!(
        "rerun: berth bench files --socket {} --runs {} --size-mib {} --files {}",
        args.socket.display(),
        args.runs,
        args.size_mib,
        args.files
    );
    Ok(())
}
