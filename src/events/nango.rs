//! `POST /webhooks/nango`: Nango's auth webhooks. A refresh that failed
//! (`"operation": "refresh", "success": false`) counts as a refresh failure, classified from
//! Nango's error (which carries the provider's OAuth error); a successful refresh (the recovery
//! webhook) counts as a refresh. Other webhooks are acknowledged and not counted. With a secret
//! configured, `X-Nango-Hmac-Sha256` (HMAC-SHA256 of the body with Nango's secret key) must
//! match, compared in constant time.

use super::{Context, Inlet, Wired};
use crate::config::NangoWebhook;
use crate::model::{CollectError, Event};
use crate::pipeline::Sink;
use crate::provider::{ProviderKind, RefreshError};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use std::sync::Arc;

/// Nango's webhooks are small; anything bigger is not one.
const MAX_BODY: usize = 256 * 1024;

#[derive(Clone)]
struct NangoState {
    cfg: Arc<NangoWebhook>,
    sink: Sink,
}

impl Inlet for NangoWebhook {
    fn name(&self) -> String {
        "Nango webhook".into()
    }

    /// The route `POST /webhooks/nango` on the web listener.
    fn wire(&self, ctx: &Context) -> Result<Wired, CollectError> {
        ctx.sink.init(self.provider, &self.source);
        let router = Router::new()
            .route("/webhooks/nango", post(webhook))
            .layer(DefaultBodyLimit::max(MAX_BODY))
            .with_state(NangoState {
                cfg: Arc::new(self.clone()),
                sink: ctx.sink.clone(),
            });
        Ok(Wired {
            routes: Some(router),
            ..Wired::default()
        })
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AuthWebhook {
    #[serde(rename = "type")]
    kind: String,
    operation: Option<String>,
    success: Option<bool>,
    provider: Option<String>,
    connection_id: Option<String>,
    provider_config_key: Option<String>,
    error: Option<NangoError>,
}

#[derive(Deserialize)]
struct NangoError {
    #[serde(rename = "type")]
    kind: Option<String>,
    description: Option<String>,
}

/// The provider's OAuth error inside Nango's error, or `other`.
fn classify(e: Option<&NangoError>) -> RefreshError {
    let text = e
        .map(|e| {
            format!(
                "{} {}",
                e.kind.as_deref().unwrap_or(""),
                e.description.as_deref().unwrap_or("")
            )
        })
        .unwrap_or_default()
        .to_lowercase();
    for (needle, err) in [
        ("invalid_grant", RefreshError::InvalidGrant),
        ("invalid_client", RefreshError::InvalidClient),
        ("unauthorized_client", RefreshError::UnauthorizedClient),
        ("unsupported_grant_type", RefreshError::UnsupportedGrantType),
        ("server_error", RefreshError::ServerError),
        ("temporarily_unavailable", RefreshError::ServerError),
        ("timeout", RefreshError::Network),
        ("econnrefused", RefreshError::Network),
        ("network", RefreshError::Network),
    ] {
        if text.contains(needle) {
            return err;
        }
    }
    RefreshError::Other
}

fn provider(name: Option<&str>, default: ProviderKind) -> ProviderKind {
    let name = name.unwrap_or("").to_lowercase();
    ProviderKind::ALL
        .into_iter()
        .filter(|k| *k != ProviderKind::Custom)
        .find(|k| name == k.as_str() || name.starts_with(&format!("{}-", k.as_str())))
        .unwrap_or(default)
}

fn signature_ok(secret: &str, body: &[u8], header: Option<&str>) -> bool {
    let Some(sig) = header.and_then(|h| hex::decode(h.trim()).ok()) else {
        return false;
    };
    let mut mac =
        Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

async fn webhook(State(s): State<NangoState>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(secret) = &s.cfg.secret {
        let header = headers
            .get("x-nango-hmac-sha256")
            .and_then(|v| v.to_str().ok());
        if !signature_ok(secret.expose(), &body, header) {
            tracing::warn!(source = %s.cfg.source, "Refused a Nango webhook with a missing or wrong signature.");
            return (
                StatusCode::UNAUTHORIZED,
                "missing or wrong X-Nango-Hmac-Sha256\n",
            )
                .into_response();
        }
    }
    let hook: AuthWebhook = match serde_json::from_slice(&body) {
        Ok(h) => h,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!(
                    "not a Nango webhook: line {}, column {}: {:?}\n",
                    e.line(),
                    e.column(),
                    e.classify()
                ),
            )
                .into_response()
        }
    };
    if hook.kind != "auth" || hook.operation.as_deref() != Some("refresh") {
        return (StatusCode::OK, "ignored\n").into_response();
    }
    let provider = provider(hook.provider.as_deref(), s.cfg.provider);
    let failure = match hook.success {
        Some(true) => None,
        _ => Some(classify(hook.error.as_ref())),
    };
    // The same connection id as the `nango` preset: providerConfigKey/connectionId.
    let connection = format!(
        "{}/{}",
        hook.provider_config_key.as_deref().unwrap_or(""),
        hook.connection_id.as_deref().unwrap_or("")
    );
    s.sink.count(
        &s.cfg.source,
        Event::refresh(provider, Some(connection), failure),
    );
    (StatusCode::OK, "counted\n").into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nango_errors_are_classified_by_the_oauth_error_they_carry() {
        let e = |t: &str, d: &str| NangoError {
            kind: Some(t.into()),
            description: Some(d.into()),
        };
        assert_eq!(classify(Some(&e("refresh_token_external_error", "The external API returned an error when trying to refresh the access token. Please try again later. {\"error\":\"invalid_grant\"}"))), RefreshError::InvalidGrant);
        assert_eq!(
            classify(Some(&e(
                "refresh_token_external_error",
                "invalid_client: client secret is wrong"
            ))),
            RefreshError::InvalidClient
        );
        assert_eq!(
            classify(Some(&e("unknown", "socket hang up"))),
            RefreshError::Other
        );
        assert_eq!(classify(None), RefreshError::Other);
    }

    #[test]
    fn providers_map_to_profiles_or_the_default() {
        assert_eq!(
            provider(Some("xero"), ProviderKind::Xero),
            ProviderKind::Xero
        );
        assert_eq!(
            provider(Some("quickbooks-sandbox"), ProviderKind::Xero),
            ProviderKind::Quickbooks
        );
        assert_eq!(
            provider(Some("hubspot"), ProviderKind::Xero),
            ProviderKind::Xero
        );
    }
}
