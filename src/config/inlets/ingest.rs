//! The `ingest` section: `POST /api/v1/events`.

use super::{check_source_name, InletInfo};
use crate::config::common::{Problems, SecretRef};
use crate::config::defaults;
use crate::provider::ProviderKind;
use crate::secret::Secret;
use serde::Deserialize;
use std::path::PathBuf;

/// Settings of the ingest API.
#[derive(Debug, Clone, PartialEq)]
pub struct Ingest {
    /// The `source` label of ingested events.
    pub source: String,
    /// Provider of events that name none.
    pub provider: ProviderKind,
    /// Bearer token the host app must send.
    pub token: Secret,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// Most events in one batch.
    pub max_events: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIngest {
    /// The `source` label of ingested events (default `ingest`).
    source: Option<String>,
    /// Provider of events that name none (default `xero`).
    provider: Option<ProviderKind>,
    /// Environment variable holding the bearer token.
    token_env: Option<String>,
    /// File holding the bearer token.
    token_file: Option<PathBuf>,
    /// Largest request body (default 1 MiB).
    max_body_bytes: Option<usize>,
    /// Most events per batch (default 10000).
    max_events: Option<usize>,
}

impl Ingest {
    pub(super) fn info(&self) -> InletInfo {
        InletInfo {
            key: "ingest.source".into(),
            source: self.source.clone(),
            provider: self.provider,
            persisted: true,
            line: format!("Ingest API: POST /api/v1/events (source {})", self.source),
        }
    }

    pub(super) fn validate(
        raw: RawIngest,
        env: &dyn Fn(&str) -> Option<String>,
        problems: &mut Problems,
    ) -> Option<Ingest> {
        let token = SecretRef::new(None, raw.token_env.as_deref(), raw.token_file.as_ref())
            .read("ingest", "token", env, problems)?;
        let source = raw.source.unwrap_or_else(|| defaults::INGEST_SOURCE.into());
        check_source_name("ingest.source", &source, problems);
        if token.expose().len() < defaults::INGEST_MIN_TOKEN {
            problems.add(
                "ingest.token_env",
                format!(
                    "the ingest token must be at least {} characters",
                    defaults::INGEST_MIN_TOKEN
                ),
            );
        }
        Some(Ingest {
            source,
            provider: raw.provider.unwrap_or(ProviderKind::Xero),
            token,
            max_body_bytes: raw.max_body_bytes.unwrap_or(defaults::INGEST_MAX_BODY),
            max_events: raw.max_events.unwrap_or(defaults::INGEST_MAX_EVENTS),
        })
    }
}
