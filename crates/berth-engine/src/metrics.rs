//! What the engine counts as it works, for Prometheus (prometheus-client's types,
//! registered by whoever serves `/metrics`: the daemon's console):
//!
//! ```text
//! berth_container_start_seconds{kind}      histogram: request to the process running;
//!                                          kind = clone | spare | cold_boot
//! berth_template_builds_total              templates built (boot once, snapshot)
//! berth_template_build_failures_total      template builds that failed
//! berth_agent_errors_total{kind}           kind = reported (an agent's Error message) |
//!                                          protocol (a message out of protocol, a broken
//!                                          stream: the run ends)
//! berth_api_requests_total{method,path,status}  Docker API requests answered, by route
//!                                          (its pattern, `/containers/{id}/start`) and
//!                                          status; counted by the API layer
//! ```
//!
//! Figures of each running container (CPU, memory, disk and network bytes) are not kept
//! here: the console reads them from the VM processes when it is scraped.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// `kind` of a start.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StartLabels {
    pub kind: &'static str,
}

/// `kind` of an agent error.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AgentErrorLabels {
    pub kind: &'static str,
}

/// An API request's route and answer.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiRequestLabels {
    pub method: String,
    pub path: String,
    pub status: String,
}

/// Start kinds.
pub const START_CLONE: &str = "clone";
pub const START_SPARE: &str = "spare";
pub const START_COLD_BOOT: &str = "cold_boot";

/// Agent error kinds.
pub const AGENT_REPORTED: &str = "reported";
pub const AGENT_PROTOCOL: &str = "protocol";

type HistogramMaker = fn() -> Histogram;

/// The engine's counters and histograms (cheap to clone: each is shared).
#[derive(Clone)]
pub struct EngineMetrics {
    pub starts: Family<StartLabels, Histogram, HistogramMaker>,
    pub template_builds: Counter,
    pub template_build_failures: Counter,
    pub agent_errors: Family<AgentErrorLabels, Counter>,
    pub api_requests: Family<ApiRequestLabels, Counter>,
}

impl Default for EngineMetrics {
    fn default() -> Self {
        Self {
            // 10 ms to ~80 s: a clone on KVM to a cold boot under software emulation.
            starts: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.01, 2.0, 14))
            }),
            template_builds: Counter::default(),
            template_build_failures: Counter::default(),
            agent_errors: Family::default(),
            api_requests: Family::default(),
        }
    }
}

impl EngineMetrics {
    /// Registers every metric under `registry` (names as in the module's docs).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "berth_container_start_seconds",
            "Time from a start request until the container's process runs",
            self.starts.clone(),
        );
        registry.register(
            "berth_template_builds",
            "VM templates built (booted once and snapshotted)",
            self.template_builds.clone(),
        );
        registry.register(
            "berth_template_build_failures",
            "VM template builds that failed",
            self.template_build_failures.clone(),
        );
        registry.register(
            "berth_agent_errors",
            "Errors from guest agents: reported by the agent, or breaches of the protocol",
            self.agent_errors.clone(),
        );
        registry.register(
            "berth_api_requests",
            "Docker API requests answered, by method, route and status",
            self.api_requests.clone(),
        );
    }

    /// Counts an answered API request (`path`: the route's pattern).
    pub fn api_request(&self, method: &str, path: &str, status: u16) {
        self.api_requests
            .get_or_create(&ApiRequestLabels {
                method: method.to_owned(),
                path: path.to_owned(),
                status: status.to_string(),
            })
            .inc();
    }

    pub(crate) fn agent_error(&self, kind: &'static str) {
        self.agent_errors
            .get_or_create(&AgentErrorLabels { kind })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_encode_as_openmetrics_with_their_names() {
        let metrics = EngineMetrics::default();
        metrics
            .starts
            .get_or_create(&StartLabels { kind: START_SPARE })
            .observe(0.3);
        metrics.template_builds.inc();
        metrics.agent_error(AGENT_PROTOCOL);
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("berth_container_start_seconds_count{kind=\"spare\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("berth_container_start_seconds_bucket{le=\"0.32\",kind=\"spare\"} 1"),
            "{text}"
        );
        assert!(text.contains("berth_template_builds_total 1"), "{text}");
        assert!(
            text.contains("berth_template_build_failures_total 0"),
            "{text}"
        );
        assert!(
            text.contains("berth_agent_errors_total{kind=\"protocol\"} 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
