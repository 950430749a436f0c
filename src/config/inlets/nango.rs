//! The `nango_webhook` section: `POST /webhooks/nango`.

use super::{check_source_name, InletInfo};
use crate::config::common::{Problems, SecretRef};
use crate::config::defaults;
use crate::provider::ProviderKind;
use crate::secret::Secret;
use serde::Deserialize;
use std::path::PathBuf;

/// Settings of the Nango webhook inlet.
#[derive(Debug, Clone)]
pub struct NangoWebhook {
    /// The `source` label of its events.
    pub source: String,
    /// Provider of webhooks whose `provider` the exporter has no profile for.
    pub provider: ProviderKind,
    /// Nango's secret key: when set, `X-Nango-Hmac-Sha256` must match.
    pub secret: Option<Secret>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNangoWebhook {
    /// The `source` label (default `nango`).
    source: Option<String>,
    /// Default provider (default `xero`).
    provider: Option<ProviderKind>,
    /// Environment variable holding Nango's secret key.
    secret_env: Option<String>,
    /// File holding Nango's secret key.
    secret_file: Option<PathBuf>,
}

impl NangoWebhook {
    pub(super) fn info(&self) -> InletInfo {
        InletInfo {
            key: "nango_webhook.source".into(),
            source: self.source.clone(),
            provider: self.provider,
            persisted: true,
            line: format!(
                "Nango webhooks: POST /webhooks/nango (source {})",
                self.source
            ),
        }
    }

    pub(super) fn validate(
        raw: RawNangoWebhook,
        env: &dyn Fn(&str) -> Option<String>,
        problems: &mut Problems,
    ) -> Option<NangoWebhook> {
        let secret = SecretRef::new(None, raw.secret_env.as_deref(), raw.secret_file.as_ref())
            .read_optional("nango_webhook", "secret", env, problems);
        let source = raw.source.unwrap_or_else(|| defaults::NANGO_SOURCE.into());
        check_source_name("nango_webhook.source", &source, problems);
        Some(NangoWebhook {
            source,
            provider: raw.provider.unwrap_or(ProviderKind::Xero),
            secret,
        })
    }
}
