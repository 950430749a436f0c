//! The `nango_webhook` section: `POST /webhooks/nango`.

use super::{check_source_name, InletInfo};
use crate::config::common::{Problems, SecretRef};
use crate::config::defaults;
use crate::provider::ProviderKind;
use crate::secret::Secret;
use serde::Deserialize;
use std::path::PathBuf;

/// Settings of the Nango webhook inlet.
#[derive(Debug, Clone, PartialEq)]
pub struct NangoWebhook {
    /// The `source` label of its events.
    pub source: String,
    /// The provider whose series exist at 0 from start-up (webhooks count under their own
    /// provider; those of providers without a profile are not counted).
    pub provider: ProviderKind,
    /// The environment's webhook signing key: when set, `X-Nango-Hmac-Sha256` must match.
    pub signing_key: Option<Secret>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNangoWebhook {
    /// The `source` label (default `nango`).
    source: Option<String>,
    /// The provider whose series exist from start-up (default `xero`).
    provider: Option<ProviderKind>,
    /// Environment variable holding the environment's webhook signing key (Nango's
    /// Environment Settings; older environments were given their secret key as it).
    signing_key_env: Option<String>,
    /// File holding the webhook signing key.
    signing_key_file: Option<PathBuf>,
    /// Deprecated name of `signing_key_env`.
    secret_env: Option<String>,
    /// Deprecated name of `signing_key_file`.
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
        for (old, new, given) in [
            ("secret_env", "signing_key_env", raw.secret_env.is_some()),
            ("secret_file", "signing_key_file", raw.secret_file.is_some()),
        ] {
            if given {
                problems.warn(
                    format!("nango_webhook.{old}"),
                    format!("is deprecated: Nango signs webhooks with the environment's webhook signing key; name it `{new}`"),
                );
            }
        }
        let (env_var, file) = match (
            raw.signing_key_env.as_deref().or(raw.secret_env.as_deref()),
            raw.signing_key_file.as_ref().or(raw.secret_file.as_ref()),
        ) {
            (e, f)
                if (raw.signing_key_env.is_some() && raw.secret_env.is_some())
                    || (raw.signing_key_file.is_some() && raw.secret_file.is_some()) =>
            {
                problems.add(
                    "nango_webhook",
                    "give the signing key once: `signing_key_env` or `signing_key_file` (not their deprecated names as well)",
                );
                (e, f)
            }
            other => other,
        };
        let signing_key = SecretRef::new(None, env_var, file).read_optional(
            "nango_webhook",
            "signing_key",
            env,
            problems,
        );
        if !SecretRef::new(None, env_var, file).given() {
            problems.warn(
                "nango_webhook",
                "has no `signing_key_env` or `signing_key_file`: any client that reaches POST /webhooks/nango can move its counters; set the environment's webhook signing key",
            );
        }
        let source = raw.source.unwrap_or_else(|| defaults::NANGO_SOURCE.into());
        check_source_name("nango_webhook.source", &source, problems);
        Some(NangoWebhook {
            source,
            provider: raw.provider.unwrap_or(ProviderKind::Xero),
            signing_key,
        })
    }
}
