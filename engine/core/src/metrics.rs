//! What the engine measures about itself: commands by definition, command and outcome; commit
//! latency; group-commit batch sizes; rule evaluation time. Plain atomics and one small map,
//! read as a [`MetricsSnapshot`] by [`crate::Engine::metrics`].
//!
//! This module knows no exposition format: the server renders snapshots for Prometheus.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// A histogram with fixed upper bounds; observations above the last bound land in `+Inf`.
#[derive(Debug)]
pub(crate) struct Histogram {
    bounds: &'static [u64],
    /// One count per bound, plus the `+Inf` bucket (not cumulative).
    counts: Box<[AtomicU64]>,
    sum: AtomicU64,
}

/// Commit latency and rule evaluation bounds, in microseconds.
const MICROS_BOUNDS: &[u64] = &[
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 10_000_000,
];
/// Batch size bounds, in commits.
const BATCH_BOUNDS: &[u64] = &[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024];

impl Histogram {
    fn new(bounds: &'static [u64]) -> Self {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }

    pub(crate) fn observe(&self, value: u64) {
        let bucket = self.bounds.partition_point(|b| *b < value);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    pub(crate) fn observe_duration(&self, elapsed: Duration) {
        self.observe(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX));
    }

    fn snapshot(&self) -> HistogramSnapshot {
        let mut running = 0;
        let mut buckets = Vec::with_capacity(self.bounds.len());
        for (bound, count) in self.bounds.iter().zip(self.counts.iter()) {
            running += count.load(Ordering::Relaxed);
            buckets.push((*bound, running));
        }
        let count = running + self.counts[self.bounds.len()].load(Ordering::Relaxed);
        HistogramSnapshot {
            buckets,
            count,
            sum: self.sum.load(Ordering::Relaxed),
        }
    }
}

/// A histogram's state: cumulative counts per upper bound, as Prometheus expects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// `(upper bound, observations ≤ bound)`, bounds ascending.
    pub buckets: Vec<(u64, u64)>,
    /// All observations (the `+Inf` bucket).
    pub count: u64,
    /// Sum of the observed values.
    pub sum: u64,
}

/// The engine's counters, shared by its clones and its committer thread.
#[derive(Debug)]
pub(crate) struct EngineMetrics {
    /// Submit to acknowledgement of one commit, µs.
    pub(crate) commit_latency: Histogram,
    /// Commits per group commit.
    pub(crate) batch_size: Histogram,
    /// One decider call, µs.
    pub(crate) rule_evaluation: Histogram,
    /// definition → command → outcome → count; looked up by `&str`, so counting allocates
    /// only for a new series.
    commands: Mutex<CommandCounts>,
}

#[derive(Debug, Default)]
struct CommandCounts {
    map: BTreeMap<String, BTreeMap<String, BTreeMap<&'static str, u64>>>,
    /// How many (definition, command, outcome) series `map` holds.
    series: usize,
}

impl Default for EngineMetrics {
    fn default() -> Self {
        EngineMetrics {
            commit_latency: Histogram::new(MICROS_BOUNDS),
            batch_size: Histogram::new(BATCH_BOUNDS),
            rule_evaluation: Histogram::new(MICROS_BOUNDS),
            commands: Mutex::default(),
        }
    }
}

/// Most distinct (definition, command, outcome) series kept; beyond it new series count under
/// `(other)`, so a caller sending made-up names cannot grow memory without bound.
const COMMAND_SERIES_MAX: usize = 10_000;

impl EngineMetrics {
    /// Counts one request; `outcome` is `ok` or a [`crate::CommandError::code`].
    pub(crate) fn count_command(&self, definition: &str, command: &str, outcome: &'static str) {
        let mut counts = self.commands.lock().expect("metrics lock poisoned");
        let CommandCounts { map, series } = &mut *counts;
        if let Some(count) = map
            .get_mut(definition)
            .and_then(|c| c.get_mut(command))
            .and_then(|o| o.get_mut(outcome))
        {
            *count += 1;
            return;
        }
        let (definition, command) = if *series >= COMMAND_SERIES_MAX {
            ("(other)", "(other)")
        } else {
            (definition, command)
        };
        let count = map
            .entry(definition.to_string())
            .or_default()
            .entry(command.to_string())
            .or_default()
            .entry(outcome)
            .or_insert(0);
        if *count == 0 {
            *series += 1;
        }
        *count += 1;
    }

    pub(crate) fn snapshot(&self) -> (Vec<CommandCount>, [HistogramSnapshot; 3]) {
        let commands = self
            .commands
            .lock()
            .expect("metrics lock poisoned")
            .map
            .iter()
            .flat_map(|(definition, commands)| {
                commands.iter().flat_map(move |(command, outcomes)| {
                    outcomes.iter().map(move |(outcome, count)| CommandCount {
                        definition: definition.clone(),
                        command: command.clone(),
                        outcome,
                        count: *count,
                    })
                })
            })
            .collect();
        (
            commands,
            [
                self.commit_latency.snapshot(),
                self.batch_size.snapshot(),
                self.rule_evaluation.snapshot(),
            ],
        )
    }
}

/// Requests counted by definition, command and outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandCount {
    /// Definition name (`(unknown)` when the request failed before it was known).
    pub definition: String,
    /// Command name; `$start` and `$cancel` for starts and cancels.
    pub command: String,
    /// `ok`, or the error's [`crate::CommandError::code`].
    pub outcome: &'static str,
    /// How many.
    pub count: u64,
}

/// The engine's measurements at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct MetricsSnapshot {
    /// Requests by definition, command and outcome, since the engine opened.
    pub commands: Vec<CommandCount>,
    /// Submit-to-acknowledgement time of each commit, in µs.
    pub commit_latency_micros: HistogramSnapshot,
    /// Commits per group commit (one flush each).
    pub batch_size: HistogramSnapshot,
    /// Time of each decider call, in µs.
    pub rule_evaluation_micros: HistogramSnapshot,
    /// The last feed offset assigned.
    pub feed_head: u64,
    /// The last feed offset made durable (delivered to subscribers).
    pub feed_durable: u64,
    /// Open subscriptions in this process.
    pub feed_subscribers: usize,
    /// Durable feed offset minus the slowest open subscription's position (0 without one).
    pub feed_lag: u64,
    /// Jobs waiting for a worker or leased (not finished, not incidents), counted up to
    /// [`JOB_BACKLOG_COUNT_MAX`].
    pub job_backlog: u64,
    /// Commits waiting for the committer.
    pub commit_queue: usize,
    /// Rule evaluations queued or running on the rule pool.
    pub rule_pool_pending: usize,
}

/// Where [`MetricsSnapshot::job_backlog`] stops counting, so a scrape stays cheap.
pub const JOB_BACKLOG_COUNT_MAX: usize = 100_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_with_an_infinite_bucket() {
        let h = Histogram::new(&[10, 100]);
        for v in [1, 10, 11, 100, 101, 5000] {
            h.observe(v);
        }
        let s = h.snapshot();
        assert_eq!(s.buckets, vec![(10, 2), (100, 4)]);
        assert_eq!(s.count, 6);
        assert_eq!(s.sum, 1 + 10 + 11 + 100 + 101 + 5000);
    }

    #[test]
    fn command_series_are_bounded() {
        let m = EngineMetrics::default();
        for i in 0..COMMAND_SERIES_MAX + 5 {
            m.count_command("d", &format!("c{i}"), "ok");
        }
        let (commands, _) = m.snapshot();
        assert_eq!(commands.len(), COMMAND_SERIES_MAX + 1);
        let other = commands.iter().find(|c| c.definition == "(other)").unwrap();
        assert_eq!(other.count, 5);
    }
}
