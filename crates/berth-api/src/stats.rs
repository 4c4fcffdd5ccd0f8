//! `GET /containers/{id}/stats`: what `docker stats` shows, measured on the container's
//! VM process: memory is the VM's private memory (what the host spends on it beyond the
//! template it shares), the limit is the VM's memory size, CPU is the VM process's.

use std::collections::HashMap;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use berth_engine::{ContainerRecord, Engine};
use bollard_stubs::models::{
    ContainerBlkioStatEntry, ContainerBlkioStats, ContainerCpuStats, ContainerCpuUsage,
    ContainerMemoryStats, ContainerNetworkStats, ContainerPidsStats, ContainerStatsResponse,
};

use crate::containers::flag;
use crate::error::ApiResult;
use crate::AppState;

fn cpu_stats(record: &ContainerRecord, vcpus: u32) -> ContainerCpuStats {
    let used = (record.state.pid != 0)
        .then(|| berth_engine::process_cpu_nanos(record.state.pid))
        .flatten();
    ContainerCpuStats {
        cpu_usage: Some(ContainerCpuUsage {
            total_usage: Some(used.unwrap_or(0)),
            ..Default::default()
        }),
        system_cpu_usage: berth_engine::host_cpu_nanos(),
        online_cpus: Some(vcpus),
        throttling_data: None,
    }
}

async fn sample(
    engine: &std::sync::Arc<Engine>,
    id: &str,
    previous: Option<&ContainerStatsResponse>,
) -> ApiResult<ContainerStatsResponse> {
    let record = engine.inspect_container(id)?;
    let io = engine.container_io(id).await?;
    let pids = engine.container_pids(id).await;
    let networks: Option<HashMap<String, ContainerNetworkStats>> = io.as_ref().map(|io| {
        io.interfaces
            .iter()
            .map(|i| {
                (
                    i.name.clone(),
                    ContainerNetworkStats {
                        rx_bytes: Some(i.rx_bytes),
                        rx_packets: Some(i.rx_packets),
                        tx_bytes: Some(i.tx_bytes),
                        tx_packets: Some(i.tx_packets),
                        ..Default::default()
                    },
                )
            })
            .collect()
    });
    let blkio = io.as_ref().map(|io| {
        let entry = |op: &str, value: u64| ContainerBlkioStatEntry {
            major: Some(253),
            minor: Some(0),
            op: Some(op.to_owned()),
            value: Some(value),
        };
        ContainerBlkioStats {
            io_service_bytes_recursive: Some(vec![
                entry("read", io.block.read_bytes),
                entry("write", io.block.write_bytes),
            ]),
            io_serviced_recursive: Some(vec![
                entry("read", io.block.read_operations),
                entry("write", io.block.write_operations),
            ]),
            ..Default::default()
        }
    });
    let (vcpus, memory_mib) = record.vm_shape(engine.default_memory_mib());
    let running = record.state.status.is_running() && record.state.pid != 0;
    let memory = running
        .then(|| berth_engine::process_memory(record.state.pid))
        .flatten();
    let mut memory_detail = HashMap::new();
    if let Some(memory) = memory {
        memory_detail.insert("private".to_owned(), memory.private);
        memory_detail.insert("shared".to_owned(), memory.shared);
        memory_detail.insert("pss".to_owned(), memory.pss);
        memory_detail.insert("rss".to_owned(), memory.rss);
    }
    Ok(ContainerStatsResponse {
        id: Some(record.id.clone()),
        name: Some(format!("/{}", record.name)),
        os_type: Some("linux".into()),
        read: Some(berth_engine::now_rfc3339()),
        preread: Some(
            previous
                .and_then(|p| p.read.clone())
                .unwrap_or_else(|| berth_engine::ZERO_TIME.into()),
        ),
        cpu_stats: Some(if running {
            cpu_stats(&record, vcpus)
        } else {
            ContainerCpuStats::default()
        }),
        precpu_stats: Some(
            previous
                .and_then(|p| p.cpu_stats.clone())
                .unwrap_or_default(),
        ),
        memory_stats: Some(if running {
            ContainerMemoryStats {
                usage: memory.map(|m| m.private),
                limit: Some(u64::from(memory_mib) << 20),
                stats: Some(memory_detail),
                ..Default::default()
            }
        } else {
            ContainerMemoryStats::default()
        }),
        pids_stats: Some(ContainerPidsStats {
            current: pids,
            limit: None,
        }),
        blkio_stats: Some(blkio.unwrap_or_default()),
        num_procs: Some(0),
        networks,
        storage_stats: None,
    })
}

/// `GET /containers/{id}/stats?stream=&one-shot=`.
pub async fn stats(
    State(engine): State<AppState>,
    Path(id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let stream = params.get("stream").is_none_or(|_| flag(&params, "stream"));
    let one_shot = flag(&params, "one-shot");
    let mut first = sample(&engine, &id, None).await?;
    if !stream {
        if !one_shot {
            // Without one-shot, Docker samples twice so that the CPU delta is meaningful.
            tokio::time::sleep(Duration::from_secs(1)).await;
            first = sample(&engine, &id, Some(&first)).await?;
        }
        let mut body = serde_json::to_vec(&first).unwrap_or_default();
        body.push(b'\n');
        return Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response());
    }
    let body = futures_util::stream::unfold(
        (engine, id, Some(first), true),
        |(engine, id, previous, first)| async move {
            if !first {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let current = if first {
                previous.clone()?
            } else {
                sample(&engine, &id, previous.as_ref()).await.ok()?
            };
            let mut line = serde_json::to_vec(&current).ok()?;
            line.push(b'\n');
            Some((
                Ok::<_, std::io::Error>(bytes::Bytes::from(line)),
                (engine, id, Some(current), false),
            ))
        },
    );
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(body),
    )
        .into_response())
}
