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

use super::classify::{classify_api, ApiOutcome, RateLimitProblem, UnauthorizedReason};
use crate::config::Ingest;
use crate::metrics::Live;
use crate::provider::{classify_refresh_error, ProviderKind, RefreshError};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Longest connection or tenant id accepted.
const MAX_ID: usize = 256;

#[derive(Clone)]
struct IngestState {
    cfg: Arc<Ingest>,
    live: Arc<Live>,
}

/// The routes of the ingest API.
pub fn router(cfg: Ingest, live: Arc<Live>) -> Router {
    live.events.init(cfg.provider.as_str(), &cfg.source);
    let limit = cfg.max_body_bytes;
    Router::new()
        .route("/api/v1/events", post(ingest))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(IngestState {
            cfg: Arc::new(cfg),
            live,
        })
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

pub(crate) struct Counted {
    provider: &'static str,
    connection: String,
    time: Option<chrono::DateTime<chrono::Utc>>,
    kind: CountedKind,
}

enum CountedKind {
    Refresh(Option<RefreshError>),
    Api(ApiOutcome),
}

impl Counted {
    pub(crate) fn refresh(
        provider: &'static str,
        connection: &str,
        failure: Option<RefreshError>,
    ) -> Self {
        Counted {
            provider,
            connection: connection.to_string(),
            time: None,
            kind: CountedKind::Refresh(failure),
        }
    }
}

fn parse_time(t: Option<&str>) -> Option<chrono::DateTime<chrono::Utc>> {
    t.and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
}

fn check_common(
    connection: &str,
    tenant: Option<&str>,
    time: Option<&str>,
) -> Result<(), (String, String)> {
    // Characters, as documented (and as JSON Schema's maxLength counts), not bytes.
    if connection.trim().is_empty() || connection.chars().count() > MAX_ID {
        return Err((
            "connection".into(),
            format!("must be a non-empty id of at most {MAX_ID} characters"),
        ));
    }
    if tenant.is_some_and(|t| t.chars().count() > MAX_ID) {
        return Err((
            "tenant".into(),
            format!("must be at most {MAX_ID} characters"),
        ));
    }
    if let Some(t) = time {
        if chrono::DateTime::parse_from_rfc3339(t).is_err() {
            return Err((
                "time".into(),
                "must be an RFC 3339 timestamp like 2026-06-01T12:00:00Z".into(),
            ));
        }
    }
    Ok(())
}

fn decode<T: for<'de> Deserialize<'de>>(v: serde_json::Value) -> Result<T, (String, String)> {
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
        .filter_map(|v| event(v, default_provider).err())
        .collect())
}

/// Validate and classify one event; nothing is counted here.
pub(crate) fn event(
    v: serde_json::Value,
    default_provider: ProviderKind,
) -> Result<Counted, (String, String)> {
    let kind = v.get("type").and_then(|t| t.as_str()).map(str::to_string);
    match kind.as_deref() {
        Some("refresh") => {
            let e: RefreshEvent = decode(v)?;
            check_common(&e.connection, e.tenant.as_deref(), e.time.as_deref())?;
            if e.status.is_some_and(|s| !(100..=599).contains(&s)) {
                return Err((
                    "status".into(),
                    "must be an HTTP status between 100 and 599".into(),
                ));
            }
            let provider = e.provider.unwrap_or(default_provider).as_str();
            let failure = match (e.outcome, e.error.as_deref(), e.status) {
                (Outcome::Success, None, _) => None,
                (Outcome::Success, Some(_), _) => {
                    return Err(("error".into(), "a successful refresh has no `error`".into()))
                }
                (Outcome::Failure, Some("network"), _) => Some(RefreshError::Network),
                (Outcome::Failure, Some(err), status) => {
                    let body = serde_json::json!({ "error": err }).to_string();
                    Some(classify_refresh_error(
                        status.unwrap_or(400),
                        body.as_bytes(),
                    ))
                }
                (Outcome::Failure, None, Some(status)) => Some(classify_refresh_error(status, b"")),
                (Outcome::Failure, None, None) => Some(RefreshError::Network),
            };
            Ok(Counted {
                provider,
                connection: e.connection,
                time: parse_time(e.time.as_deref()),
                kind: CountedKind::Refresh(failure),
            })
        }
        Some("api") => {
            let e: ApiEvent = decode(v)?;
            check_common(&e.connection, e.tenant.as_deref(), e.time.as_deref())?;
            if !(100..=599).contains(&e.status) {
                return Err((
                    "status".into(),
                    "must be an HTTP status between 100 and 599".into(),
                ));
            }
            let provider = e.provider.unwrap_or(default_provider).as_str();
            let outcome = match e.status {
                401 => ApiOutcome::Unauthorized(UnauthorizedReason::from_detail(
                    e.detail.as_deref().unwrap_or(""),
                )),
                429 => ApiOutcome::RateLimited(RateLimitProblem::from_header(
                    e.rate_limit_problem.as_deref(),
                )),
                s => classify_api(s, b"", None),
            };
            Ok(Counted {
                provider,
                connection: e.connection,
                time: parse_time(e.time.as_deref()),
                kind: CountedKind::Api(outcome),
            })
        }
        Some(_) => Err((
            "type".into(),
            "unknown event type, expected `refresh` or `api`".into(),
        )),
        None => Err(("type".into(), "is required: `refresh` or `api`".into())),
    }
}

/// Count a validated event and feed the detectors.
pub(crate) fn count(live: &Live, source: &str, c: Counted) {
    match c.kind {
        CountedKind::Refresh(failure) => {
            live.events.refresh(c.provider, source, failure);
            if live
                .detector
                .refresh(c.provider, source, &c.connection, c.time, failure)
            {
                live.events
                    .races
                    .get_or_create(&crate::metrics::EventLabels {
                        provider: c.provider,
                        source: source.to_string(),
                    })
                    .inc();
            }
        }
        CountedKind::Api(outcome) => {
            live.events.api(c.provider, source, outcome);
            if matches!(outcome, ApiOutcome::Unauthorized(r) if r != UnauthorizedReason::TokenExpired)
            {
                live.detector
                    .api_failure(c.provider, source, &c.connection, c.time);
            }
        }
    }
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
    for (index, v) in batch.events.into_iter().enumerate() {
        match event(v, s.cfg.provider) {
            Ok(c) => {
                count(&s.live, &s.cfg.source, c);
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
