//! `POST /webhooks/nango`: Nango's auth webhooks, as Nango builds and signs them
//! (NangoHQ/nango `packages/webhooks/lib/auth.ts` and `utils.ts`, 2026-08): a JSON body with
//! `type`, `operation`, `connectionId`, `providerConfigKey`, `provider`, `environment`,
//! `success` and, on failure, `error: {type, description}`; the header `X-Nango-Hmac-Sha256` is
//! the HMAC-SHA256 of the body keyed with the environment's webhook signing key.
//!
//! Counted: a failed refresh (`"type": "auth", "operation": "refresh", "success": false`) as a
//! refresh failure of its connection (`environment/providerConfigKey/connectionId`, the `nango`
//! preset's id). Nango's `error.description` for a failed refresh is a fixed sentence and its
//! `error.type` (`refresh_token_external_error`) does not say which OAuth error the provider
//! gave, so such a failure counts as `error="other"` unless the error names an OAuth error.
//! Nango sends no webhook for a successful refresh; one marked `success: true` would count as
//! a refresh. Webhooks of other types or operations (creation, override, sync) and of
//! providers the exporter has no profile for are acknowledged and not counted.

use super::classify::MAX_ID;
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

/// The fields of Nango's auth webhook the exporter reads (`NangoAuthWebhookBody` of
/// `@nangohq/types`); the others (`from`, `authMode`, `tags`, `endUser`) are ignored.
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
    environment: Option<String>,
    error: Option<NangoError>,
}

#[derive(Deserialize)]
struct NangoError {
    #[serde(rename = "type")]
    kind: Option<String>,
    description: Option<String>,
}

/// A failed refresh's error: an OAuth error named in Nango's error (none is, in the Nango of
/// 2026: its `refresh_token_external_error` carries a fixed sentence), else `other`.
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
    ] {
        if text.contains(needle) {
            return err;
        }
    }
    RefreshError::Other
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

fn refuse(status: StatusCode, message: String) -> Response {
    (status, format!("{message}\n")).into_response()
}

/// The connection of a webhook, as the `nango` preset names it: `environment/key/id`. Each
/// part is required and at most [`MAX_ID`] characters (they feed detector state).
fn connection(hook: &AuthWebhook) -> Result<String, String> {
    let mut parts = Vec::with_capacity(3);
    for (field, value) in [
        ("environment", &hook.environment),
        ("providerConfigKey", &hook.provider_config_key),
        ("connectionId", &hook.connection_id),
    ] {
        match value {
            Some(v) if !v.is_empty() && v.chars().count() <= MAX_ID => parts.push(v.as_str()),
            _ => {
                return Err(format!(
                    "{field} must be a non-empty string of at most {MAX_ID} characters"
                ))
            }
        }
    }
    Ok(parts.join("/"))
}

async fn webhook(State(s): State<NangoState>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(key) = &s.cfg.signing_key {
        let header = headers
            .get("x-nango-hmac-sha256")
            .and_then(|v| v.to_str().ok());
        if !signature_ok(key.expose(), &body, header) {
            tracing::warn!(source = %s.cfg.source, "Refused a Nango webhook with a missing or wrong signature.");
            return refuse(
                StatusCode::UNAUTHORIZED,
                "missing or wrong X-Nango-Hmac-Sha256".into(),
            );
        }
    }
    let hook: AuthWebhook = match serde_json::from_slice(&body) {
        Ok(h) => h,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!(
                    "not a Nango webhook: line {}, column {}: {:?}",
                    e.line(),
                    e.column(),
                    e.classify()
                ),
            )
        }
    };
    if hook.kind != "auth" || hook.operation.as_deref() != Some("refresh") {
        return (StatusCode::OK, "ignored\n").into_response();
    }
    let connection = match connection(&hook) {
        Ok(c) => c,
        Err(message) => return refuse(StatusCode::BAD_REQUEST, message),
    };
    let Some(provider) = hook
        .provider
        .as_deref()
        .and_then(ProviderKind::from_provider_name)
    else {
        tracing::debug!(source = %s.cfg.source, "Ignored a Nango webhook of a provider without a profile.");
        return (StatusCode::OK, "ignored: no profile for this provider\n").into_response();
    };
    let failure = match hook.success {
        Some(true) => None,
        _ => Some(classify(hook.error.as_ref())),
    };
    s.sink.count(
        &s.cfg.source,
        Event::refresh(provider, Some(connection), failure),
    );
    (StatusCode::OK, "counted\n").into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nango's refresh failure, as `refresh.ts` and `NangoError` build it.
    #[test]
    fn nangos_refresh_failure_is_other_and_an_oauth_error_it_names_is_read() {
        let e = |t: &str, d: &str| NangoError {
            kind: Some(t.into()),
            description: Some(d.into()),
        };
        assert_eq!(
            classify(Some(&e(
                "refresh_token_external_error",
                "The external API returned an error when trying to refresh the access token. Please try again later."
            ))),
            RefreshError::Other
        );
        assert_eq!(
            classify(Some(&e("invalid_client", "client secret is wrong"))),
            RefreshError::InvalidClient
        );
        assert_eq!(classify(None), RefreshError::Other);
    }
}
