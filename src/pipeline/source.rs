//! One poll of a source: fetch, map every row (a bad row is rejected alone), build the
//! snapshot, count removals and rejections, feed the stored refresh tokens to the sink, publish
//! the snapshot and encode the new state off the async threads.

use super::health::Outcome;
use super::runner::Polled;
use super::sink::Sink;
use crate::clock::SharedClock;
use crate::config::{Schedule, SourceConfig};
use crate::detect::regression::TokenHistory;
use crate::model::{CollectError, RejectReason, SourceErrorReason, SourceHandle, SourceSnapshot};
use crate::sources::mapping::Rejection;
use crate::sources::{id_hash, map_rows, Backend};
use crate::telemetry::{Exposition, Generation};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
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
    generation: Generation,
    failing_window: chrono::Duration,
    known_ids: Option<HashMap<u64, &'static str>>,
    /// Rows left out for their provider, as last logged.
    skipped: u64,
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
        generation: Generation,
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
            generation,
            failing_window: chrono::Duration::from_std(failing_window)
                .unwrap_or(chrono::Duration::MAX),
            known_ids: None,
            skipped: 0,
            logged_rejections: HashSet::new(),
            tokens: TokenHistory::default(),
        })
    }

    /// The source's store (benchmarks time a bare fetch through it).
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    async fn poll_source(&mut self) -> Result<Outcome, CollectError> {
        let fetched = self.backend.fetch(&self.cfg.mapping).await?;
        let limit_hit = fetched.limit_hit;
        let now = self.clock.now();
        let cfg = self.cfg.clone();
        let window = self.failing_window;
        let (snap, rejections, ids, tokens, skipped) = tokio::task::spawn_blocking(move || {
            let mapped = map_rows(&fetched, &cfg, now);
            let tokens: Vec<(u64, u64, (String, &'static str))> = mapped
                .connections
                .iter()
                .filter_map(|c| {
                    c.token_hash
                        .map(|h| (id_hash(&c.id), h, (c.id.clone(), c.provider)))
                })
                .collect();
            let snap = SourceSnapshot::build(
                mapped.connections,
                now,
                cfg.max_connections,
                window,
                mapped.providers,
            );
            (snap, mapped.rejections, mapped.ids, tokens, mapped.skipped)
        })
        .await
        .map_err(|e| CollectError::Query(format!("mapping task failed: {e}")))?;
        self.record_rejections(&rejections);
        self.sink
            .stored_tokens(&mut self.tokens, &self.cfg.name, tokens, |id| {
                ids.contains_key(id)
            });
        if let Some(prev) = &self.known_ids {
            let mut removed: HashMap<&'static str, u64> = HashMap::new();
            for (id, provider) in prev {
                if !ids.contains_key(id) {
                    *removed.entry(provider).or_default() += 1;
                }
            }
            for (provider, n) in removed {
                tracing::info!(source = %self.cfg.name, provider, removed = n, "Connections disappeared from the store since the last poll.");
                self.sink.live().removed(provider, &self.cfg.name, n);
            }
        }
        self.known_ids = Some(ids);
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
        self.generation.fetch_add(1, Ordering::AcqRel);
        // Encode the new state now, off the async threads, so scrapes find it ready.
        let exposition = self.exposition.clone();
        tokio::task::spawn_blocking(move || {
            exposition.state();
        });
        Ok(outcome)
    }

    /// The one place rejected rows are counted and logged; each (connection, reason) is
    /// logged once while it persists.
    fn record_rejections(&mut self, rejections: &[(usize, Rejection)]) {
        let mut seen = HashSet::new();
        for (row, rej) in rejections {
            self.sink.live().row_rejected(&self.cfg.name, rej.reason, 1);
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
