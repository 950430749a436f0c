//! One poll of a source: stream the rows through mapping into the snapshot (a bad row is
//! rejected alone; only the capped connections and the aggregates are kept), count removals
//! and rejections, feed the stored refresh tokens to the sink, publish the snapshot and encode
//! the new state off the async threads.

use super::health::Outcome;
use super::runner::Polled;
use super::sink::Sink;
use crate::clock::SharedClock;
use crate::config::{Schedule, SourceConfig};
use crate::detect::regression::{TokenHistory, TokenSeen};
use crate::model::{CollectError, MappedConnection, RejectReason, SourceErrorReason, SourceHandle};
use crate::sources::collect::{key_provider, Collected, PollRows, Rejections, TokenObserver};
use crate::sources::Backend;
use crate::telemetry::Exposition;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// Polls one source.
pub struct SourcePoller {
    pub cfg: SourceConfig,
    backend: Backend,
    handle: Arc<SourceHandle>,
    exposition: Arc<Exposition>,
    sink: Sink,
    clock: SharedClock,
    failing_window: chrono::Duration,
    /// The previous poll's connection keys and the provider of each key's index.
    known: Option<(crate::sources::KeySet, Vec<&'static str>)>,
    /// Rows left out for their provider, as last logged.
    skipped: u64,
    /// The extra labels last reported as empty in every row (warned when that changes).
    empty_labels: Vec<String>,
    logged_rejections: HashSet<(String, RejectReason)>,
    tokens: TokenHistory,
}

impl SourcePoller {
    pub fn new(
        cfg: SourceConfig,
        handle: Arc<SourceHandle>,
        exposition: Arc<Exposition>,
        sink: Sink,
        clock: SharedClock,
        failing_window: Duration,
    ) -> Result<SourcePoller, CollectError> {
        let backend = Backend::connect(&cfg.store)?;
        if cfg.mapping.refresh_token.is_some() {
            sink.init_stored_tokens(handle.provider, &cfg.name);
        }
        Ok(SourcePoller {
            cfg,
            backend,
            handle,
            exposition,
            sink,
            clock,
            failing_window: chrono::Duration::from_std(failing_window)
                .unwrap_or(chrono::Duration::MAX),
            known: None,
            skipped: 0,
            empty_labels: Vec::new(),
            logged_rejections: HashSet::new(),
            tokens: TokenHistory::default(),
        })
    }

    /// The source's store (benchmarks time a bare fetch through it).
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    async fn poll_source(&mut self) -> Result<Outcome, CollectError> {
        let now = self.clock.now();
        let expected = self.known.as_ref().map_or(0, |k| k.0.len());
        let mut changed: Vec<(u64, u64)> = Vec::new();
        let mut reverted: Vec<(String, &'static str)> = Vec::new();
        let history = &self.tokens;
        let mut observe = |key: u64, h: u64, c: &MappedConnection| match history.classify(key, h) {
            TokenSeen::Same => {}
            TokenSeen::New => changed.push((key, h)),
            TokenSeen::Reverted => {
                changed.push((key, h));
                reverted.push((c.id.clone(), c.provider));
            }
        };
        let tokens: Option<Box<TokenObserver>> = self
            .cfg
            .mapping
            .refresh_token
            .is_some()
            .then(|| Box::new(&mut observe) as Box<TokenObserver>);
        let mut rows = PollRows::new(&self.cfg, now, self.failing_window, expected, tokens);
        let limit_hit = self.backend.fetch(&self.cfg.mapping, &mut rows).await?;
        let Collected {
            snapshot: mut snap,
            rejections,
            keys,
            providers,
            skipped,
            empty_labels,
        } = rows.finish();
        if empty_labels != self.empty_labels {
            if !empty_labels.is_empty() {
                tracing::warn!(source = %self.cfg.name, labels = %empty_labels.join(", "), "No row has a value for these extra labels (a key no document has, or a column NULL in every row); they are exported empty. Check the `labels` mapping.");
            }
            self.empty_labels = empty_labels;
        }
        self.record_rejections(&rejections);
        snap.rejected = rejections.total();
        self.sink
            .stored_tokens(&mut self.tokens, &self.cfg.name, changed, reverted, |k| {
                keys.contains(k)
            });
        if let Some((prev, names)) = &self.known {
            let mut removed: HashMap<&'static str, u64> = HashMap::new();
            for key in prev.iter().filter(|k| !keys.contains(k)) {
                let provider = names.get(key_provider(*key)).copied().unwrap_or(names[0]);
                *removed.entry(provider).or_default() += 1;
            }
            for (provider, n) in removed {
                tracing::info!(source = %self.cfg.name, provider, removed = n, "Connections disappeared from the store since the last poll.");
                self.sink.live().removed(provider, &self.cfg.name, n);
            }
        }
        self.known = Some((keys, providers));
        for p in &snap.providers {
            // Every provider of the source has its removal counter from its first poll.
            self.sink.live().removed(p.provider, &self.cfg.name, 0);
        }
        if skipped != self.skipped {
            self.skipped = skipped;
            if skipped > 0 {
                tracing::info!(source = %self.cfg.name, rows = skipped, "Rows of providers the exporter has no profile for are left out (`unknown_providers: {{export: true}}` exports them).");
            }
        }
        let outcome = Outcome {
            connections: Some(snap.connections.len()),
            truncated: Some(snap.truncated),
            events: None,
            partial: limit_hit.then_some(SourceErrorReason::KeyLimit),
        };
        self.handle.publish(snap);
        // Encode the new state now, off the async threads, so scrapes find it ready.
        self.exposition.advance_in_background();
        Ok(outcome)
    }

    /// The one place rejected rows are counted and logged; each (connection, reason) is
    /// logged once while it persists (up to the details a poll keeps; the rest are summed up).
    fn record_rejections(&mut self, rejections: &Rejections) {
        for (reason, n) in &rejections.counts {
            self.sink.live().row_rejected(&self.cfg.name, *reason, *n);
        }
        let mut seen = HashSet::new();
        for (row, rej) in &rejections.details {
            let key = (
                rej.connection
                    .clone()
                    .unwrap_or_else(|| format!("row {row}")),
                rej.reason,
            );
            if !self.logged_rejections.contains(&key) {
                tracing::warn!(
                    source = %self.cfg.name,
                    connection = rej.connection.as_deref().unwrap_or("<none>"),
                    row,
                    field = rej.field,
                    reason = rej.reason.as_str(),
                    "Row rejected; the other rows are exported."
                );
            }
            seen.insert(key);
        }
        let more = rejections.total() - rejections.details.len() as u64;
        if more > 0 {
            let by_reason: Vec<String> = rejections
                .counts
                .iter()
                .map(|(r, n)| format!("{}={n}", r.as_str()))
                .collect();
            tracing::warn!(source = %self.cfg.name, rejected = rejections.total(), by_reason = %by_reason.join(","), "{more} more rows rejected than are logged one by one; the other rows are exported.");
        }
        self.logged_rejections = seen;
    }
}

impl Polled for SourcePoller {
    fn source(&self) -> &str {
        &self.cfg.name
    }

    fn schedule(&self) -> Schedule {
        self.cfg.schedule
    }

    fn poll(&mut self) -> impl std::future::Future<Output = Result<Outcome, CollectError>> + Send {
        self.poll_source()
    }

    fn failed(&mut self) {
        self.handle.set_down();
    }

    async fn close(&mut self) {
        self.backend.close().await;
    }
}
