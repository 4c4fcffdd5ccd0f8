//! `berth bench clone`: cold boot against clone, side by side in one run; with
//! `--docker SOCKET`, Docker Engine itself (any Docker-API daemon, e.g. dockerd with runc)
//! measured in the same rounds, so that the clone's times can be set beside it; with
//! `--compare LABEL=SOCKET`, any other daemon the same way (another Berth daemon, say one
//! without `--spare-vms`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::{median, Docker, RUNTIMES};

#[derive(clap::Args)]
pub struct CloneArgs {
    /// The daemon's socket.
    #[arg(long, default_value = "/run/berth/docker.sock")]
    pub socket: PathBuf,
    /// Image to run (it must be loaded).
    #[arg(long, default_value = "busybox")]
    pub image: String,
    /// Measurements per runtime (interleaved, so both see the same machine).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Idle containers per runtime whose memory is measured.
    #[arg(long, default_value_t = 3)]
    pub idle: usize,
    /// Also start this many idle clones at once and report their total memory.
    #[arg(long, default_value_t = 0)]
    pub density: usize,
    /// Also measure `docker run --rm` and `docker start` against this Docker-API socket
    /// (Docker Engine with runc, say; IMAGE must be loaded there), in the same rounds.
    #[arg(long)]
    pub docker: Option<PathBuf>,
    /// Also measure `docker run --rm` and `docker start` against another Docker-API
    /// daemon, named LABEL in the results, in the same rounds (repeatable), e.g.
    /// `--compare 'no spares=/run/berth-b/docker.sock'`: its default runtime runs.
    #[arg(long, value_name = "LABEL=SOCKET", value_parser = parse_compared)]
    pub compare: Vec<(String, PathBuf)>,
    /// Run every measured container with `--network MODE` on every daemon (`none`, say,
    /// to leave network setup out on all sides); default: each daemon's default network.
    #[arg(long, value_name = "MODE")]
    pub network: Option<String>,
}

/// `LABEL=SOCKET`.
fn parse_compared(text: &str) -> Result<(String, PathBuf), String> {
    match text.split_once('=') {
        Some((label, socket)) if !label.is_empty() && !socket.is_empty() => {
            Ok((label.to_owned(), PathBuf::from(socket)))
        }
        _ => Err(format!("{text:?} is not LABEL=SOCKET")),
    }
}

/// A daemon measured beside Berth's clones, and what it measured.
struct Compared {
    label: String,
    socket: PathBuf,
    docker: Docker,
    runs: Vec<f64>,
    starts: Vec<f64>,
    /// Private memory of its idle containers, MiB, if it reports it (a Berth daemon
    /// does, in `inspect`'s `Berth.Memory`; Docker does not).
    memory: Vec<f64>,
}

/// `docker run --rm IMAGE true` and `docker start` of a created container, once each,
/// with `runtime` and `network` if given; in seconds.
fn run_and_start(
    docker: &Docker,
    image: &str,
    runtime: Option<&str>,
    network: Option<&str>,
) -> anyhow::Result<(f64, f64)> {
    let with_runtime = |verb: &'static str| {
        let mut command = vec![verb];
        if let Some(runtime) = runtime {
            command.extend(["--runtime", runtime]);
        }
        if let Some(network) = network {
            command.extend(["--network", network]);
        }
        command
    };
    let mut run = with_runtime("run");
    run.extend(["--rm", image, "true"]);
    let run_time = docker.timed(&run)?.as_secs_f64();
    let mut create = with_runtime("create");
    create.extend([image, "sleep", "60"]);
    let id = docker.run(&create)?;
    let start_time = docker.timed(&["start", &id])?.as_secs_f64();
    docker.run(&["rm", "-f", &id])?;
    Ok((run_time, start_time))
}

pub fn run(args: CloneArgs) -> anyhow::Result<()> {
    let docker = Docker::connect(&args.socket, &args.image)?;
    let mut compared = Vec::new();
    let named = args
        .docker
        .iter()
        .map(|socket| ("Docker".to_owned(), socket.clone()))
        .chain(args.compare.iter().cloned());
    for (label, socket) in named {
        compared.push(Compared {
            docker: Docker::connect(&socket, &args.image)?,
            label,
            socket,
            runs: Vec::new(),
            starts: Vec::new(),
            memory: Vec::new(),
        });
    }
    let network = args.network.as_deref();
    // Warm up: templates built, caches filled.
    for runtime in RUNTIMES {
        run_and_start(&docker, &args.image, Some(runtime), network)?;
    }
    for other in &compared {
        run_and_start(&other.docker, &args.image, None, network)?;
    }
    let mut run_times = [Vec::new(), Vec::new()];
    let mut start_times = [Vec::new(), Vec::new()];
    for round in 0..args.runs {
        eprintln!("round {}/{}", round + 1, args.runs);
        for (index, runtime) in RUNTIMES.iter().enumerate() {
            let (run, start) = run_and_start(&docker, &args.image, Some(runtime), network)?;
            run_times[index].push(run);
            start_times[index].push(start);
        }
        for other in &mut compared {
            let (run, start) = run_and_start(&other.docker, &args.image, None, network)?;
            other.runs.push(run);
            other.starts.push(start);
        }
    }
    let mut memory = [Vec::new(), Vec::new()];
    for (index, runtime) in RUNTIMES.iter().enumerate() {
        memory[index] = idle_private_memory(&docker, &args.image, Some(runtime), args.idle)?;
    }
    for other in &mut compared {
        other.memory = idle_private_memory(&other.docker, &args.image, None, args.idle)?;
    }
    let run = [median(&mut run_times[0]), median(&mut run_times[1])];
    let start = [median(&mut start_times[0]), median(&mut start_times[1])];
    let mem = [median(&mut memory[0]), median(&mut memory[1])];
    println!(
        "berth bench clone: {} runs per runtime, {} idle VMs each, image {}, network {}",
        args.runs,
        args.idle,
        args.image,
        network.unwrap_or("each daemon's default")
    );
    println!(
        "{:<44} {:>12} {:>12} {:>14}",
        "measure (median)", "cold boot", "clone", "clone/cold"
    );
    println!(
        "{:<44} {:>11.3}s {:>11.3}s {:>14.3}",
        "docker run --rm IMAGE true (end to end)",
        run[0],
        run[1],
        run[1] / run[0]
    );
    println!(
        "{:<44} {:>11.3}s {:>11.3}s {:>14.3}",
        "docker start (until the process runs)",
        start[0],
        start[1],
        start[1] / start[0]
    );
    println!(
        "{:<44} {:>9.1}MiB {:>9.1}MiB {:>14.3}",
        "private memory of an idle VM",
        mem[0],
        mem[1],
        mem[1] / mem[0]
    );
    println!(
        "speed-up: run {:.1}x, start {:.1}x",
        run[0] / run[1],
        start[0] / start[1]
    );
    for other in &mut compared {
        let reference = [median(&mut other.runs), median(&mut other.starts)];
        let label = &other.label;
        println!(
            "against {label} at {} (same rounds):",
            other.socket.display()
        );
        println!(
            "{:<44} {:>12} {:>12} {:>14}",
            "measure (median)",
            label,
            "Berth clone",
            format!("clone/{label}")
        );
        for (label, docker_time, clone_time) in [
            (
                "docker run --rm IMAGE true (end to end)",
                reference[0],
                run[1],
            ),
            (
                "docker start (until the process runs)",
                reference[1],
                start[1],
            ),
        ] {
            println!(
                "{label:<44} {docker_time:>11.3}s {clone_time:>11.3}s {:>14.3}",
                clone_time / docker_time
            );
        }
        if !other.memory.is_empty() {
            let reference = median(&mut other.memory);
            println!(
                "{:<44} {reference:>9.1}MiB {:>9.1}MiB {:>14.3}",
                "private memory of an idle VM",
                mem[1],
                mem[1] / reference
            );
        }
    }

    if args.density > 0 {
        density(&docker, &args)?;
    }
    let compared: String = args
        .docker
        .iter()
        .map(|socket| format!(" --docker {}", socket.display()))
        .chain(
            args.compare
                .iter()
                .map(|(label, socket)| format!(" --compare '{label}={}'", socket.display())),
        )
        .chain(network.map(|network| format!(" --network {network}")))
        .collect();
    println!(
        "rerun: berth bench clone --socket {} --runs {} --idle {} --density {}{compared}",
        args.socket.display(),
        args.runs,
        args.idle,
        args.density
    );
    Ok(())
}

/// The private memory (MiB) of `count` idle containers of `image` started with
/// `runtime` (the daemon's default if `None`), read 2 s after they start; empty if the
/// daemon does not report it (Docker).
fn idle_private_memory(
    docker: &Docker,
    image: &str,
    runtime: Option<&str>,
    count: usize,
) -> anyhow::Result<Vec<f64>> {
    let mut run = vec!["run", "-d"];
    if let Some(runtime) = runtime {
        run.extend(["--runtime", runtime]);
    }
    run.extend([image, "sleep", "3600"]);
    let ids: Vec<String> = (0..count)
        .map(|_| docker.run(&run))
        .collect::<Result<_, _>>()?;
    std::thread::sleep(Duration::from_secs(2));
    let memory: Result<Vec<f64>, _> = ids
        .iter()
        .map(|id| {
            docker
                .private_bytes(id)
                .map(|b| b as f64 / (1024.0 * 1024.0))
        })
        .collect();
    let mut rm = vec!["rm", "-f"];
    rm.extend(ids.iter().map(String::as_str));
    docker.run(&rm)?;
    match (memory, runtime) {
        (Ok(memory), _) => Ok(memory),
        // A Berth runtime must report it; another daemon may not.
        (Err(error), Some(_)) => Err(error),
        (Err(_), None) => Ok(Vec::new()),
    }
}

fn density(docker: &Docker, args: &CloneArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut ids = Vec::new();
    for index in 0..args.density {
        ids.push(docker.run(&["run", "-d", &args.image, "sleep", "3600"])?);
        if (index + 1) % 10 == 0 {
            eprintln!("{} clones running", index + 1);
        }
    }
    let elapsed = started.elapsed();
    let running = docker
        .run(&["ps", "-q", "--filter", "status=running"])?
        .lines()
        .count();
    let answering = ids
        .iter()
        .filter(|id| docker.run(&["exec", id, "true"]).is_ok())
        .count();
    let mut pids = Vec::new();
    let (mut private, mut pss) = (0u64, 0u64);
    for id in &ids {
        let pid: u32 = docker
            .run(&["inspect", "-f", "{{.State.Pid}}", id])?
            .parse()?;
        pids.push(pid);
        if let Some(memory) = berth_vm::process_memory(pid) {
            private += memory.private;
            pss += memory.pss;
        }
    }
    let info = docker.run(&["info", "--format", "{{json .DriverStatus}}"])?;
    let mut rm = vec!["rm", "-f"];
    rm.extend(ids.iter().map(String::as_str));
    docker.run(&rm)?;
    let left = pids
        .iter()
        .filter(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists())
        .count();
    println!(
        "density: {} clones started in {:.1}s, {running} running, {answering} answered docker exec; private {:.0} MiB in all ({:.1} MiB each), PSS {:.0} MiB in all; after rm -f: {left} VM processes left",
        args.density,
        elapsed.as_secs_f64(),
        private as f64 / 1048576.0,
        private as f64 / 1048576.0 / args.density as f64,
        pss as f64 / 1048576.0,
    );
    println!("docker info while they ran: {info}");
    Ok(())
}
