//! `POST /api/v1/events`: the host app posts what it met, in batches.
//!
//! ```json
//! {"events": [
//!   {"type": "refresh", "connection": "c1", "tenant": "t1", "time": "2026-06-01T12:00:00Z",
//!    "outcome": "failure", "error": "invalid_grant", "status": 400},
//!   {"type": "api", "connection": "c1", "tenant": "t1", "status": 401,
//!    "detail": "TokenExpired: token expired at 06/01/2026 12:30:00"}
//! ]}
//! ```
//! Bearer-token auth (constant-time comparison; the token comes as `Authorization: Bearer`, or
//! as `X-Ingest-Token` when a web config's basic auth takes `Authorization`), a body size
//! limit, a batch size limit. Each
//! event is validated alone: an invalid one is listed in the answer with its index, field and
//! what was expected, and every valid one in the same batch is counted.

use super::classify::{EventFields, Refusal};
use super::{Context, Inlet, Wired};
use crate::config::Ingest;
use crate::model::{CollectError, Event};
use crate::pipeline::Sink;
use crate::provider::ProviderKind;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

#[derive(Clone)]
struct IngestState {
    cfg: Arc<Ingest>,
    sink: Sink,
    clock: crate::clock::SharedClock,
}

impl Inlet for Ingest {
    fn name(&self) -> String {
        "ingest API".into()
    }

    /// The route `POST /api/v1/events` on the web listener.
    fn wire(&self, ctx: &Context) -> Result<Wired, CollectError> {
        ctx.sink.init(self.provider, &self.source);
        let router = Router::new()
            .route("/api/v1/events", post(ingest))
            .layer(DefaultBodyLimit::max(self.max_body_bytes))
            .with_state(IngestState {
                cfg: Arc::new(self.clone()),
                sink: ctx.sink.clone(),
                clock: ctx.clock.clone(),
            });
        Ok(Wired {
            routes: Some(router),
            ..Wired::default()
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch {
    events: Vec<serde_json::Value>,
}

#[derive(Deserialize, Clone, Copy, PartialEq)]
#[serde(rename_all = "snake_case")]
enum Outcome {
    Success,
    Failure,
}

/// A refresh attempt and its outcome.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefreshEvent {
    #[serde(rename = "type")]
    _type: String,
    connection: String,
    tenant: Option<String>,
    /// RFC 3339; default: when it arrives.
    time: Option<String>,
    provider: Option<ProviderKind>,
    outcome: Outcome,
    /// The token endpoint's OAuth `error` (`invalid_grant`, ...), or `network` when there was
    /// no answer.
    error: Option<String>,
    /// The token endpoint's HTTP status.
    status: Option<u16>,
}

/// An API answer.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiEvent {
    #[serde(rename = "type")]
    _type: String,
    connection: String,
    tenant: Option<String>,
    time: Option<String>,
    provider: Option<ProviderKind>,
    /// The HTTP status.
    status: u16,
    /// Xero's `Detail` (401: `TokenExpired: ...`, `AuthorizationUnsuccessful`, ...).
    detail: Option<String>,
    /// The `X-Rate-Limit-Problem` header of a 429.
    rate_limit_problem: Option<String>,
}

#[derive(Serialize, Debug)]
struct Rejected {
    index: usize,
    field: String,
    error: String,
}

#[derive(Serialize)]
struct Answer {
    accepted: usize,
    rejected: Vec<Rejected>,
}

fn json_error(status: StatusCode, msg: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "error": msg }))).into_response()
}

/// Compare without leaking, through timing, how much of the token matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        diff |= usize::from(a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0xff));
    }
    diff == 0
}

fn decode<T: for<'de> Deserialize<'de>>(v: serde_json::Value) -> Result<T, Refusal> {
    serde_path_to_error::deserialize::<_, T>(v).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        // An unknown field's path is the sender's key: never echoed.
        let field = if message.starts_with("unknown field") {
            "<unknown field>".to_string()
        } else if path == "." {
            String::new()
        } else {
            path
        };
        (field, redact_values(&message))
    })
}

/// A decoder's message without the values it quotes (they may be tokens): what was expected
/// stays, what was sent goes. "unknown variant `x`, expected `a` or `b`" becomes "unknown
/// variant, expected `a` or `b`"; "invalid type: string \"x\", expected u16" becomes "invalid
/// type: string, expected u16".
pub(crate) fn redact_values(message: &str) -> String {
    // A missing field's name is ours, not the sender's.
    if message.starts_with("missing field") {
        return message.to_string();
    }
    // What was expected comes last and is ours (field names, enum values, types); anything the
    // sender sent sits before it, quoted, and may itself contain `, expected` or quotes: keep
    // only the words before the first quote.
    let (sent, expected) = match message.rfind(", expected") {
        Some(i) => message.split_at(i),
        None => (message, ""),
    };
    let cut = sent.find(['`', '"']).unwrap_or(sent.len());
    let mut words: Vec<&str> = sent[..cut].split_whitespace().collect();
    // "invalid type: integer 5" and the like: drop a trailing literal after the kind.
    if (sent.starts_with("invalid type:") || sent.starts_with("invalid value:")) && words.len() > 3
    {
        words.truncate(3);
    }
    format!("{}{expected}", words.join(" "))
}

/// The ingest API's decoder without the HTTP around it (fuzzed in `fuzz/`): the batch's
/// rejections as the API would answer them (field, error), or the body's error. Nothing is
/// counted.
pub fn check_batch(
    body: &[u8],
    default_provider: ProviderKind,
) -> Result<Vec<(String, String)>, String> {
    let batch: Batch = serde_json::from_slice(body).map_err(|e| {
        let message = e.to_string();
        redact_values(message.split(" at line ").next().unwrap_or_default())
    })?;
    Ok(batch
        .events
        .into_iter()
        .filter_map(|v| event(v, default_provider, chrono::Utc::now()).err())
        .collect())
}

/// Decode, validate and classify one event of a batch; nothing is counted here.
pub(crate) fn event(
    v: serde_json::Value,
    default_provider: ProviderKind,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Event, Refusal> {
    let kind = v.get("type").and_then(|t| t.as_str()).map(str::to_string);
    let time = |t: Option<String>| {
        t.map(|t| {
            chrono::DateTime::parse_from_rfc3339(&t)
                .map(|t| t.with_timezone(&chrono::Utc))
                .map_err(|_| "must be an RFC 3339 timestamp like 2026-06-01T12:00:00Z")
        })
    };
    let fields = match kind.as_deref() {
        Some("refresh") => {
            let e: RefreshEvent = decode(v)?;
            EventFields {
                kind,
                connection: Some(e.connection),
                tenant: e.tenant,
                time: time(e.time),
                provider: e.provider,
                outcome: Some(
                    match e.outcome {
                        Outcome::Success => "success",
                        Outcome::Failure => "failure",
                    }
                    .into(),
                ),
                error: e.error,
                status: e.status,
                ..EventFields::default()
            }
        }
        Some("api") => {
            let e: ApiEvent = decode(v)?;
            EventFields {
                kind,
                connection: Some(e.connection),
                tenant: e.tenant,
                time: time(e.time),
                provider: e.provider,
                status: Some(e.status),
                detail: e.detail,
                rate_limit_problem: e.rate_limit_problem,
                ..EventFields::default()
            }
        }
        _ => EventFields {
            kind,
            ..EventFields::default()
        },
    };
    fields.validate(default_provider, now)
}

/// Header carrying the ingest token when `Authorization` carries basic-auth credentials (a web
/// config with `basic_auth_users`).
pub const TOKEN_HEADER: &str = "x-ingest-token";

async fn ingest(State(s): State<IngestState>, headers: HeaderMap, body: Bytes) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| headers.get(TOKEN_HEADER).and_then(|v| v.to_str().ok()))
        .unwrap_or("");
    if !constant_time_eq(token.as_bytes(), s.cfg.token.expose().as_bytes()) {
        let mut r = json_error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("ASCII"));
        return r;
    }
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !is_json {
        return json_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the body must be application/json",
        );
    }
    let batch: Batch = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            // serde_json's message without its position (given apart) and without any value.
            let message = e.to_string();
            let message = message.split(" at line ").next().unwrap_or_default();
            return json_error(
                StatusCode::BAD_REQUEST,
                &format!(
                    "the body must be a JSON object with an `events` list: {} (line {}, column {})",
                    redact_values(message),
                    e.line(),
                    e.column(),
                ),
            );
        }
    };
    if batch.events.len() > s.cfg.max_events {
        return json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!(
                "{} events in one batch; at most {} are accepted",
                batch.events.len(),
                s.cfg.max_events
            ),
        );
    }
    let mut answer = Answer {
        accepted: 0,
        rejected: Vec::new(),
    };
    let now = s.clock.now();
    for (index, v) in batch.events.into_iter().enumerate() {
        match event(v, s.cfg.provider, now) {
            Ok(e) => {
                s.sink.count(&s.cfg.source, e);
                answer.accepted += 1;
            }
            Err((field, error)) => answer.rejected.push(Rejected {
                index,
                field,
                error,
            }),
        }
    }
    if !answer.rejected.is_empty() {
        tracing::debug!(source = %s.cfg.source, accepted = answer.accepted, rejected = answer.rejected.len(), "Ingested a batch with invalid events.");
    }
    let status = if answer.accepted == 0 && !answer.rejected.is_empty() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    (status, axum::Json(answer)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoder_messages_keep_what_was_expected_and_drop_what_was_sent() {
        for (m, want) in [
            (
                "unknown variant `S3CRET`, expected `success` or `failure`",
                "unknown variant, expected `success` or `failure`",
            ),
            (
                "invalid type: string \"S3C\\\"RET\", expected u16",
                "invalid type: string, expected u16",
            ),
            (
                "invalid type: integer `12345`, expected a string",
                "invalid type: integer, expected a string",
            ),
            (
                "invalid value: integer `70000`, expected u16",
                "invalid value: integer, expected u16",
            ),
            (
                "unknown field `S3CRET`, expected one of `type`, `connection`",
                "unknown field, expected one of `type`, `connection`",
            ),
            ("missing field `connection`", "missing field `connection`"),
            // Found by `fuzz/run.sh` (target ingest): a sent key holding a backtick and
            // ", expected" ended the quote early and leaked the rest of the key.
            (
                "unknown field `S3C`RET, expected x`, expected one of `type`",
                "unknown field, expected one of `type`",
            ),
            (
                "unknown variant `a\"S3CRET, expected b`, expected `success` or `failure`",
                "unknown variant, expected `success` or `failure`",
            ),
        ] {
            let got = redact_values(m);
            assert_eq!(got, want);
            assert!(!got.contains("S3C"), "{got}");
        }
    }

    #[test]
    fn ids_are_limited_in_characters_and_statuses_to_http_ones() {
        let refresh = |connection: String, status: u16| {
            event(
                serde_json::json!({"type": "refresh", "connection": connection, "outcome": "failure", "status": status}),
                ProviderKind::Xero,
                chrono::Utc::now(),
            )
            .map(|_| ())
            .map_err(|(field, _)| field)
        };
        // 256 three-byte characters are 768 bytes: still one id of 256 characters.
        assert_eq!(refresh("€".repeat(256), 400), Ok(()));
        assert_eq!(refresh("€".repeat(257), 400), Err("connection".into()));
        assert_eq!(refresh("c1".into(), 600), Err("status".into()));
        assert_eq!(refresh("c1".into(), 99), Err("status".into()));
    }

    #[test]
    fn constant_time_eq_compares_whole_values() {
        assert!(constant_time_eq(b"abcdef", b"abcdef"));
        assert!(!constant_time_eq(b"abcdef", b"abcdeg"));
        assert!(!constant_time_eq(b"abc", b"abcdef"));
        assert!(!constant_time_eq(b"", b"a"));
    }
}
