//! Self-health of a polled thing (a source, an event table) or of the proxy's upstream: the one
//! place where its outcomes are both counted (`oauth_exporter_source_*`) and logged, so logs
//! and metrics never drift.

use crate::model::{CollectError, SourceErrorReason};
use crate::telemetry::catalogue::SourceLabels;
use crate::telemetry::Live;
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::time::Duration;

/// What the series describe, for the log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    /// A source read with a poll loop.
    Source,
    /// An event table tailed with a poll loop.
    EventTable,
    /// The upstream of the reverse proxy, judged by the calls that pass.
    Upstream,
}

/// What a successful poll did, for its log line and self-health.
#[derive(Debug, Clone, Copy, Default)]
pub struct Outcome {
    /// Connections exported (sources).
    pub connections: Option<usize>,
    /// Connections left out by the cap (sources).
    pub truncated: Option<u64>,
    /// Events counted (event tables).
    pub events: Option<usize>,
    /// The poll succeeded with part of what it should read (a source's key limit).
    pub partial: Option<SourceErrorReason>,
}

/// The self-health series of one `source` name.
#[derive(Debug)]
pub struct Health {
    live: Arc<Live>,
    source: String,
    subject: Subject,
    /// Consecutive failures.
    failures: u32,
    succeeded_once: bool,
}

impl Health {
    /// The series of `source`, created at their start values: every series of a polled thing,
    /// or for an upstream `up` at 1 (it is up until a call fails to reach it) and the errors it
    /// can have (no last-success timestamp: an idle proxy is not a stale one).
    pub fn new(live: Arc<Live>, source: &str, subject: Subject, provider: &'static str) -> Self {
        match subject {
            Subject::Source | Subject::EventTable => live.init_source(source, provider),
            Subject::Upstream => {
                live.set_up(source, true);
                for r in [SourceErrorReason::Connect, SourceErrorReason::Timeout] {
                    live.source_error_init(source, r);
                }
            }
        }
        Health {
            live,
            source: source.to_string(),
            subject,
            failures: 0,
            succeeded_once: false,
        }
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    fn duration(&self, took: Duration) {
        self.live
            .duration
            .get_or_create(&SourceLabels {
                source: self.source.clone(),
            })
            .set(took.as_secs_f64());
    }

    /// A poll (or a call through the proxy) succeeded at `at`.
    pub fn succeeded(&mut self, at: DateTime<Utc>, took: Option<Duration>, o: Outcome) {
        let source = self.source.as_str();
        if self.subject == Subject::Source {
            tracing::debug!(
                source,
                connections = o.connections,
                truncated = o.truncated,
                seconds = took.map(|t| t.as_secs_f64()),
                "Source polled."
            );
        }
        if let Some(t) = took {
            self.duration(t);
        }
        if let Some(reason) = o.partial {
            self.live.source_error(source, reason);
            tracing::warn!(source, reason = reason.as_str(), "The source reached its per-poll key limit (max_keys); connections beyond it are not exported.");
        }
        self.live.set_up(source, true);
        if self.subject != Subject::Upstream {
            self.live
                .last_success
                .get_or_create(&SourceLabels {
                    source: source.to_string(),
                })
                .set(at.timestamp_millis() as f64 / 1000.0);
        }
        if self.failures > 0 || !self.succeeded_once {
            match self.subject {
                Subject::Source => tracing::info!(
                    source,
                    connections = o.connections,
                    truncated = o.truncated,
                    "Source polled successfully."
                ),
                Subject::EventTable => {
                    tracing::info!(source, events = o.events, "Event table read successfully.")
                }
                Subject::Upstream if self.failures > 0 => {
                    tracing::info!(source, "The proxy reaches its upstream again.")
                }
                Subject::Upstream => {}
            }
        }
        self.failures = 0;
        self.succeeded_once = true;
    }

    /// A poll (or a call through the proxy) failed.
    pub fn failed(&mut self, e: &CollectError, took: Option<Duration>) {
        self.failures += 1;
        let source = self.source.as_str();
        if let Some(t) = took {
            self.duration(t);
        }
        let reason = e.reason();
        self.live.source_error(source, reason);
        self.live.set_up(source, false);
        let failures = self.failures;
        match self.subject {
            Subject::Source => {
                tracing::warn!(source, reason = reason.as_str(), consecutive_failures = failures, error = %e, "Polling the source failed; the last good values stay exported.")
            }
            Subject::EventTable => {
                tracing::warn!(source, reason = reason.as_str(), consecutive_failures = failures, error = %e, "Reading the event table failed; it is read again at the next poll.")
            }
            Subject::Upstream => {
                tracing::warn!(source, reason = reason.as_str(), error = %e, "The proxy could not reach the upstream.")
            }
        }
    }
}
