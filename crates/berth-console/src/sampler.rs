//! CPU use over time: every [`INTERVAL`] the console reads the CPU time of each running
//! container's VM process and keeps the last [`KEPT`] samples, from which the page draws
//! a small chart. Samples of containers that stopped are dropped.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::Console;

/// How often CPU time is read.
pub const INTERVAL: Duration = Duration::from_secs(2);
/// Samples kept per container (two minutes).
pub const KEPT: usize = 60;

/// (when, the VM process's CPU nanoseconds so far), by container id.
#[derive(Default)]
pub struct CpuSamples {
    by_container: Mutex<HashMap<String, VecDeque<(Instant, u64)>>>,
}

impl CpuSamples {
    /// Records a sample of container `id`.
    pub fn record(&self, id: &str, at: Instant, cpu_nanos: u64) {
        let mut all = self.by_container.lock().unwrap_or_else(|p| p.into_inner());
        let samples = all.entry(id.to_owned()).or_default();
        samples.push_back((at, cpu_nanos));
        while samples.len() > KEPT {
            samples.pop_front();
        }
    }

    /// Forgets every container but `running`.
    pub fn keep_only(&self, running: &[String]) {
        self.by_container
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|id, _| running.contains(id));
    }

    /// CPU use between consecutive samples, as a share of one CPU (1.0 = one core busy).
    pub fn usage(&self, id: &str) -> Vec<f64> {
        let all = self.by_container.lock().unwrap_or_else(|p| p.into_inner());
        let Some(samples) = all.get(id) else {
            return Vec::new();
        };
        samples
            .iter()
            .zip(samples.iter().skip(1))
            .map(|((t0, c0), (t1, c1))| {
                let wall = t1.duration_since(*t0).as_nanos() as f64;
                if wall <= 0.0 {
                    0.0
                } else {
                    c1.saturating_sub(*c0) as f64 / wall
                }
            })
            .collect()
    }
}

/// Samples every running container's VM until the engine is gone.
pub(crate) fn start(console: Arc<Console>) {
    let console = Arc::downgrade(&console);
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(INTERVAL);
        loop {
            ticks.tick().await;
            let Some(console) = console.upgrade() else {
                return;
            };
            let running: Vec<_> = console
                .engine
                .list_containers()
                .into_iter()
                .filter(|record| record.state.status.has_vm() && record.state.pid != 0)
                .collect();
            let now = Instant::now();
            for record in &running {
                if let Some(nanos) = berth_engine::process_cpu_nanos(record.state.pid) {
                    console.samples.record(&record.id, now, nanos);
                }
            }
            let ids: Vec<String> = running.into_iter().map(|record| record.id).collect();
            console.samples.keep_only(&ids);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_cpu_time_over_wall_time_and_samples_are_bounded() {
        let samples = CpuSamples::default();
        let start = Instant::now();
        samples.record("a", start, 0);
        samples.record("a", start + Duration::from_secs(2), 1_000_000_000);
        samples.record("a", start + Duration::from_secs(4), 1_000_000_000);
        assert_eq!(samples.usage("a"), vec![0.5, 0.0]);
        for i in 0..100u64 {
            samples.record("b", start + Duration::from_secs(i), i);
        }
        assert_eq!(samples.usage("b").len(), KEPT - 1);
        samples.keep_only(&["b".to_owned()]);
        assert!(samples.usage("a").is_empty());
    }
}
