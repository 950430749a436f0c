//! The one sink: the only code that counts events and feeds the detectors. Every inlet (event
//! tables, the ingest API, Nango webhooks, the proxy) hands it [`Event`]s; the source poll loop
//! hands it the stored refresh-token hashes of each poll.

use crate::detect::regression::TokenHistory;
use crate::detect::Detector;
use crate::model::{ApiOutcome, Event, EventKind};
use crate::provider::ProviderKind;
use crate::telemetry::catalogue::RateLimitLabels;
use crate::telemetry::{EventCounter, Live};
use std::sync::Arc;

/// Counts events and feeds the detectors.
#[derive(Debug, Clone)]
pub struct Sink {
    live: Arc<Live>,
    detector: Arc<Detector>,
}

impl Sink {
    pub fn new(live: Arc<Live>, detector: Arc<Detector>) -> Self {
        Sink { live, detector }
    }

    /// New detector settings (a config reload).
    pub fn reconfigure(&self, window: std::time::Duration, retry_loop: usize) {
        self.detector.reconfigure(window, retry_loop);
    }

    /// The detectors (the diagnosis reads their per-connection facts).
    pub fn detector(&self) -> &Arc<Detector> {
        &self.detector
    }

    /// The counters (self-health, persistence).
    pub fn live(&self) -> &Arc<Live> {
        &self.live
    }

    /// Create every series of an event inlet at 0 (counters and the detectors' gauges), so
    /// rates work from the first scrape.
    pub fn init(&self, provider: ProviderKind, source: &str) {
        self.live.events.init(provider.as_str(), source);
        self.detector.init(provider.as_str(), source);
    }

    /// Count one event of `source` and feed the detectors with it.
    pub fn count(&self, source: &str, e: Event) {
        let provider = e.provider.as_str();
        // Ids and classified outcomes only: an event never carries a token.
        tracing::trace!(source, provider, connection = e.connection.as_deref().unwrap_or(""), kind = ?e.kind, "Event counted.");
        let events = &self.live.events;
        match e.kind {
            EventKind::Refresh(failure) => {
                events.inc(EventCounter::Refreshes, provider, source, None, 1);
                if let Some(err) = failure {
                    events.inc(
                        EventCounter::RefreshFailures,
                        provider,
                        source,
                        Some(err.as_str()),
                        1,
                    );
                }
                if let Some(connection) = &e.connection {
                    if self
                        .detector
                        .refresh(provider, source, connection, e.time, failure)
                    {
                        events.inc(EventCounter::Races, provider, source, None, 1);
                    }
                }
            }
            EventKind::Api(outcome) => {
                events.inc(EventCounter::ApiRequests, provider, source, None, 1);
                match outcome {
                    ApiOutcome::Unauthorized(r) => events.inc(
                        EventCounter::Unauthorized,
                        provider,
                        source,
                        Some(r.as_str()),
                        1,
                    ),
                    ApiOutcome::Forbidden => {
                        events.inc(EventCounter::Forbidden, provider, source, None, 1)
                    }
                    ApiOutcome::RateLimited(p) => events.inc(
                        EventCounter::RateLimited,
                        provider,
                        source,
                        Some(p.as_str()),
                        1,
                    ),
                    ApiOutcome::Ok | ApiOutcome::OtherStatus => {}
                }
                if let Some(connection) = &e.connection {
                    if outcome.is_dead_token() {
                        self.detector
                            .api_failure(provider, source, connection, e.time);
                    } else {
                        self.detector
                            .api_answer(provider, connection, e.time, outcome);
                    }
                }
            }
        }
    }

    /// The last rate-limit headroom seen for a tenant (`window`: `day`, `minute`,
    /// `app_minute`), bounded in tenants.
    pub fn rate_limit_remaining(
        &self,
        provider: ProviderKind,
        source: &str,
        tenant: String,
        window: &'static str,
        value: i64,
    ) {
        self.live.events.set_rate_limit_remaining(
            RateLimitLabels {
                provider: provider.as_str(),
                source: source.to_string(),
                tenant,
                window,
            },
            value,
        );
    }

    /// Create the regression counter of a source that maps its stored refresh token at 0.
    pub fn init_stored_tokens(&self, provider: &'static str, source: &str) {
        self.live
            .events
            .init_family(EventCounter::Regressions, provider, source);
    }

    /// Record one poll's stored refresh-token changes of `source` in its regression history
    /// (`changed`: `(connection key, token hash)`; `present`: whether a key was seen by the
    /// poll) and count (and log) the `reverted` connections (`(connection, provider label)`).
    pub fn stored_tokens(
        &self,
        history: &mut TokenHistory,
        source: &str,
        changed: Vec<(u64, u64)>,
        reverted: Vec<(String, &'static str)>,
        present: impl Fn(&u64) -> bool,
    ) {
        history.record(changed, present);
        for (connection, provider) in reverted {
            self.detector.reverted(provider, &connection);
            self.live
                .events
                .inc(EventCounter::Regressions, provider, source, None, 1);
            tracing::warn!(source, connection = %connection, "The stored refresh token went back to an earlier value: a stale token was written over a newer one.");
        }
    }
}
