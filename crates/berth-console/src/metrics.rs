//! `GET /metrics`: OpenMetrics text for Prometheus (`application/openmetrics-text`).
//!
//! Besides the engine's own metrics (`berth_engine::metrics`), each scrape reads:
//!
//! ```text
//! berth_containers{state}                                   containers in each state
//! berth_container_cpu_seconds_total{id,name,image,runtime}  the VM process's CPU time
//! berth_container_memory_private_bytes{...}                 pages only the VM maps
//! berth_container_memory_shared_bytes{...}                  pages shared (a clone's template RAM)
//! berth_container_disk_read_bytes_total{...}, ..._disk_written_bytes_total{...}
//! berth_container_network_receive_bytes_total{...}, ..._network_transmit_bytes_total{...}
//! ```
//!
//! for every running (or paused) container: `id` is the short id, as `docker ps` shows
//! it, and the figures are those `docker stats` reads.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::Console;

/// Every state a container can be in, so that each series exists from the start.
const STATES: &[&str] = &[
    "created",
    "running",
    "paused",
    "restarting",
    "removing",
    "exited",
    "dead",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ContainerLabels {
    id: String,
    name: String,
    image: String,
    runtime: String,
}

/// The per-scrape families of container figures.
#[derive(Default)]
struct ContainerFamilies {
    cpu: Family<ContainerLabels, Counter<f64, AtomicU64>>,
    private: Family<ContainerLabels, Gauge>,
    shared: Family<ContainerLabels, Gauge>,
    disk_read: Family<ContainerLabels, Counter>,
    disk_written: Family<ContainerLabels, Counter>,
    received: Family<ContainerLabels, Counter>,
    transmitted: Family<ContainerLabels, Counter>,
}

impl ContainerFamilies {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "berth_container_cpu_seconds",
            "CPU time of the container's VM process",
            self.cpu.clone(),
        );
        registry.register(
            "berth_container_memory_private_bytes",
            "Memory only the container's VM maps (what a clone wrote)",
            self.private.clone(),
        );
        registry.register(
            "berth_container_memory_shared_bytes",
            "Memory the container's VM shares (a clone's template RAM it only read)",
            self.shared.clone(),
        );
        registry.register(
            "berth_container_disk_read_bytes",
            "Bytes the container's VM read from its disks",
            self.disk_read.clone(),
        );
        registry.register(
            "berth_container_disk_written_bytes",
            "Bytes the container's VM wrote to its disks",
            self.disk_written.clone(),
        );
        registry.register(
            "berth_container_network_receive_bytes",
            "Bytes the container received on its networks",
            self.received.clone(),
        );
        registry.register(
            "berth_container_network_transmit_bytes",
            "Bytes the container sent on its networks",
            self.transmitted.clone(),
        );
    }
}

/// Registers the families read at scrape time.
fn register_daemon_families(
    registry: &mut Registry,
    states: Family<StateLabels, Gauge>,
    containers: &ContainerFamilies,
) {
    registry.register("berth_containers", "Containers by state", states);
    containers.register(registry);
}

/// The metrics text, read now.
pub async fn render(console: &Console) -> String {
    let engine = &console.engine;
    let mut registry = Registry::default();
    engine.metrics().register(&mut registry);
    let states: Family<StateLabels, Gauge> = Family::default();
    for state in STATES {
        let _ = states.get_or_create(&StateLabels {
            state: (*state).to_owned(),
        });
    }
    let containers = ContainerFamilies::default();
    for record in engine.list_containers() {
        states
            .get_or_create(&StateLabels {
                state: record.state.status.as_str().to_owned(),
            })
            .inc();
        if !record.state.status.has_vm() || record.state.pid == 0 {
            continue;
        }
        let labels = ContainerLabels {
            id: record.id[..12].to_owned(),
            name: record.name.trim_start_matches('/').to_owned(),
            image: record.image_ref.clone(),
            runtime: record.runtime().to_owned(),
        };
        if let Some(nanos) = berth_engine::process_cpu_nanos(record.state.pid) {
            containers
                .cpu
                .get_or_create(&labels)
                .inc_by(nanos as f64 / 1e9);
        }
        if let Some(memory) = berth_engine::process_memory(record.state.pid) {
            containers
                .private
                .get_or_create(&labels)
                .set(memory.private as i64);
            containers
                .shared
                .get_or_create(&labels)
                .set(memory.shared as i64);
        }
        if let Ok(Some(io)) = engine.container_io(&record.id).await {
            containers
                .disk_read
                .get_or_create(&labels)
                .inc_by(io.block.read_bytes);
            containers
                .disk_written
                .get_or_create(&labels)
                .inc_by(io.block.write_bytes);
            let (received, sent) = io
                .interfaces
                .iter()
                .fold((0, 0), |(rx, tx), i| (rx + i.rx_bytes, tx + i.tx_bytes));
            containers.received.get_or_create(&labels).inc_by(received);
            containers.transmitted.get_or_create(&labels).inc_by(sent);
        }
    }
    register_daemon_families(&mut registry, states, &containers);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)
        .expect("writing to a String does not fail");
    text
}

/// `GET /metrics`.
pub(crate) async fn metrics(State(console): State<Arc<Console>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        render(&console).await,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    /// Every `berth_*` series the Grafana dashboard in docs/ queries is one the console
    /// serves (a family, or a histogram's or counter's sample of one).
    #[test]
    fn the_grafana_dashboard_asks_only_for_metrics_the_console_serves() {
        let mut registry = Registry::default();
        berth_engine::metrics::EngineMetrics::default().register(&mut registry);
        register_daemon_families(
            &mut registry,
            Family::default(),
            &ContainerFamilies::default(),
        );
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let served: HashSet<&str> = text
            .lines()
            .filter_map(|line| line.strip_prefix("# TYPE "))
            .filter_map(|line| line.split(' ').next())
            .collect();
        assert!(
            served.contains("berth_container_start_seconds"),
            "{served:?}"
        );

        let dashboard: serde_json::Value =
            serde_json::from_str(include_str!("../../../docs/grafana-dashboard.json")).unwrap();
        let panels = dashboard["panels"].as_array().unwrap();
        assert!(panels.len() >= 10);
        let mut asked = 0;
        for panel in panels {
            let targets = panel["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "{}", panel["title"]);
            for target in targets {
                let expr = target["expr"].as_str().unwrap();
                let mut rest = expr;
                while let Some(start) = rest.find("berth_") {
                    let name: String = rest[start..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    let family = ["_total", "_bucket", "_count", "_sum"]
                        .iter()
                        .find_map(|suffix| name.strip_suffix(suffix))
                        .filter(|base| served.contains(base))
                        .unwrap_or(&name);
                    assert!(
                        served.contains(family),
                        "{name} in {expr:?} is not served: {served:?}"
                    );
                    asked += 1;
                    rest = &rest[start + name.len()..];
                }
            }
        }
        assert!(
            asked >= served.len(),
            "the dashboard shows {asked} series of {} families",
            served.len()
        );
    }
}
