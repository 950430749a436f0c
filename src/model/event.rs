//! The one event type every inlet produces (event tables, the ingest API, Nango webhooks, the
//! reverse proxy) and the pipeline's sink counts.

use super::outcome::ApiOutcome;
use crate::provider::{ProviderKind, RefreshError};
use chrono::{DateTime, Utc};

/// A refresh attempt or an API answer the host app met, classified.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub provider: ProviderKind,
    /// The connection it belongs to, when the inlet knows it (the proxy does not know it at the
    /// token endpoint). Events without one are counted but feed no per-connection detector.
    pub connection: Option<String>,
    /// When it happened; `None`: now (as the injected clock says).
    pub time: Option<DateTime<Utc>>,
    pub kind: EventKind,
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum EventKind {
    /// A refresh attempt: `None` when it succeeded, the token endpoint's error otherwise.
    Refresh(Option<RefreshError>),
    /// An API answer.
    Api(ApiOutcome),
}

impl Event {
    pub fn refresh(
        provider: ProviderKind,
        connection: Option<String>,
        failure: Option<RefreshError>,
    ) -> Self {
        Event {
            provider,
            connection,
            time: None,
            kind: EventKind::Refresh(failure),
        }
    }

    pub fn api(provider: ProviderKind, connection: Option<String>, outcome: ApiOutcome) -> Self {
        Event {
            provider,
            connection,
            time: None,
            kind: EventKind::Api(outcome),
        }
    }

    pub fn at(mut self, time: Option<DateTime<Utc>>) -> Self {
        self.time = time;
        self
    }
}
