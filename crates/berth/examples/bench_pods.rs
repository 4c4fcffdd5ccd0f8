//! A pod's start through the CRI, as the kubelet starts one: `RunPodSandbox`, then
//! `CreateContainer` and `StartContainer` of its first container, timed from the first
//! request until the container runs, on each runtime handler in turn in the same rounds
//! (after one untimed round), as medians and ratios to the first handler. Each pod is
//! stopped and removed after its round (not timed).
//!
//! An example rather than a `berth bench` verb: its CRI client (gRPC, Kubernetes' CRI
//! API) is a test dependency, kept out of the `berth` binary. `scripts/bench-pods.sh`
//! starts a containerd with the handlers `runc`, `berth` and `berth-cold` and runs it:
//!
//! ```text
//! bench_pods --address SOCKET --image IMAGE --runs N --handlers runc,berth,berth-cold \
//!     --logs DIR
//! ```
//!
//! The pods' logs go under `--logs` (by default `berth-bench-pods` in the temporary
//! directory), which the caller removes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[path = "../tests/cri_client/mod.rs"]
mod cri_client;

use cri_client::*;
use tonic::transport::Channel;

struct Options {
    address: String,
    image: String,
    runs: usize,
    handlers: Vec<String>,
    logs: PathBuf,
}

fn options() -> Result<Options, String> {
    let mut options = Options {
        address: "/run/containerd/containerd.sock".into(),
        image: "docker.io/library/busybox:latest".into(),
        runs: 5,
        handlers: vec!["runc".into(), "berth".into(), "berth-cold".into()],
        logs: std::env::temp_dir().join("berth-bench-pods"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--address" => options.address = value,
            "--image" => options.image = value,
            "--runs" => options.runs = value.parse().map_err(|e| format!("--runs: {e}"))?,
            "--handlers" => options.handlers = value.split(',').map(str::to_owned).collect(),
            "--logs" => options.logs = value.into(),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(options)
}

/// Starts a pod with one container on `handler`: (time to the sandbox, time to the
/// container running); then stops and removes it.
async fn one_pod(
    client: &mut RuntimeServiceClient<Channel>,
    image: &str,
    handler: &str,
    name: &str,
    logs: &Path,
) -> Result<(Duration, Duration), tonic::Status> {
    let sandbox_config = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: name.into(),
            namespace: "bench".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: logs.join(name).display().to_string(),
        linux: Some(LinuxPodSandboxConfig::default()),
        ..Default::default()
    };
    let started = Instant::now();
    let pod = client
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(sandbox_config.clone()),
            runtime_handler: handler.into(),
        })
        .await?
        .into_inner()
        .pod_sandbox_id;
    let sandbox_ready = started.elapsed();
    let container = client
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(ContainerConfig {
                metadata: Some(ContainerMetadata {
                    name: "first".into(),
                    attempt: 0,
                }),
                image: Some(ImageSpec {
                    image: image.into(),
                    ..Default::default()
                }),
                command: vec!["sleep".into(), "600".into()],
                log_path: "first.log".into(),
                linux: Some(LinuxContainerConfig::default()),
                ..Default::default()
            }),
            sandbox_config: Some(sandbox_config),
        })
        .await?
        .into_inner()
        .container_id;
    client
        .start_container(StartContainerRequest {
            container_id: container,
        })
        .await?;
    let running = started.elapsed();
    client
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await?;
    client
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod,
        })
        .await?;
    Ok((sandbox_ready, running))
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let options = options()?;
    let mut client = RuntimeServiceClient::new(connect(options.address.as_ref()).await?);
    let handlers = &options.handlers;
    let mut sandbox_times = vec![Vec::new(); handlers.len()];
    let mut running_times = vec![Vec::new(); handlers.len()];
    for round in 0..=options.runs {
        for (index, handler) in handlers.iter().enumerate() {
            let name = format!("bench-{}-{round}-{index}", std::process::id());
            let (sandbox, running) =
                one_pod(&mut client, &options.image, handler, &name, &options.logs)
                    .await
                    .map_err(|status| format!("handler {handler}: {}", status.message()))?;
            if round > 0 {
                sandbox_times[index].push(sandbox.as_secs_f64());
                running_times[index].push(running.as_secs_f64());
            }
        }
        if round > 0 {
            eprintln!("round {round}/{} done", options.runs);
        }
    }
    let sandboxes: Vec<f64> = sandbox_times.iter_mut().map(|t| median(t)).collect();
    let running: Vec<f64> = running_times.iter_mut().map(|t| median(t)).collect();
    println!(
        "a pod through the CRI: RunPodSandbox, then its first container created and started; median of {} rounds",
        options.runs
    );
    println!(
        "| handler | RunPodSandbox | to the first container running | vs {} |",
        handlers[0]
    );
    println!("|---|---|---|---|");
    for (index, handler) in handlers.iter().enumerate() {
        println!(
            "| {handler} | {:.3} s | {:.3} s | {:.2}x |",
            sandboxes[index],
            running[index],
            running[index] / running[0]
        );
    }
    Ok(())
}
