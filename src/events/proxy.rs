//! The reverse proxy in front of Xero: the host app points its identity and API base URLs at it.
//!
//! It never alters a request or a response (only the hop-by-hop headers of each hop and `Host`
//! change, as for any proxy), streams bodies, and counts: token-endpoint refreshes and their
//! outcome (by reading the error body), API calls with 401 by reason, 403 and 429 by limit, and
//! the last rate-limit headroom per tenant. Bodies are read only where the answer needs them:
//! the token request's form (to see `grant_type`), token-endpoint error bodies and 401 bodies,
//! all small; everything else streams through. Tokens pass through and are kept nowhere.

use super::classify::{classify_api, ApiOutcome, UnauthorizedReason};
use crate::config::Proxy;
use crate::metrics::{Live, RateLimitLabels};
use crate::provider::{classify_refresh_error, RefreshError};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures_util::TryStreamExt;
use http_body_util::BodyExt;
use std::sync::Arc;

/// Largest body read to classify an answer (Xero's error bodies are tiny).
const MAX_INSPECTED: usize = 64 * 1024;

/// Headers of one hop, never forwarded (RFC 9110 §7.6.1). `content-length` is end to end and
/// passes (so a body keeps its framing) unless the message is chunked: then it is not the length
/// of what is sent and is dropped, never trusted.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
];

#[derive(Clone)]
struct ProxyState {
    cfg: Arc<Proxy>,
    live: Arc<Live>,
    client: reqwest::Client,
}

/// The proxy's routes (every path), for its own listener.
pub fn router(cfg: Proxy, live: Arc<Live>) -> Router {
    crate::sources::install_tls_provider();
    live.events.init(cfg.provider.as_str(), &cfg.source);
    live.detector.init(cfg.provider.as_str(), &cfg.source);
    // Self-health of the upstream: `up` is 1 until a call fails to reach it, 0 until one
    // succeeds again; failures count as `connect` or `timeout`. (No last-success timestamp: an
    // idle proxy is not a stale one.)
    let labels = crate::metrics::SourceLabels {
        source: cfg.source.clone(),
    };
    live.up.get_or_create(&labels).set(1);
    for r in [
        crate::metrics::SourceErrorReason::Connect,
        crate::metrics::SourceErrorReason::Timeout,
    ] {
        let _ = live
            .errors
            .get_or_create(&crate::metrics::SourceReasonLabels {
                source: cfg.source.clone(),
                reason: r.as_str(),
            });
    }
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(cfg.timeout)
        .build()
        .expect("the proxy's HTTP client builds");
    Router::new().fallback(forward).with_state(ProxyState {
        cfg: Arc::new(cfg),
        live,
        client,
    })
}

/// The headers of `from` that pass to the next hop.
fn forwarded(from: &HeaderMap) -> HeaderMap {
    let chunked = from.contains_key(axum::http::header::TRANSFER_ENCODING);
    let mut out = HeaderMap::with_capacity(from.len());
    for (k, v) in from {
        let dropped = HOP_BY_HOP.contains(&k.as_str())
            || (chunked && k == axum::http::header::CONTENT_LENGTH);
        if !dropped {
            out.append(k.clone(), v.clone());
        }
    }
    out
}

fn bad_gateway(msg: &str) -> Response {
    (
        StatusCode::BAD_GATEWAY,
        format!("oauth-token-exporter proxy: {msg}\n"),
    )
        .into_response()
}

async fn read_limited(body: Body) -> Option<bytes::Bytes> {
    let limited = http_body_util::Limited::new(body, MAX_INSPECTED);
    limited.collect().await.ok().map(|c| c.to_bytes())
}

async fn forward(State(s): State<ProxyState>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let path_q = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_string();
    let identity = parts.uri.path().starts_with("/connect/");
    let token_call = parts.uri.path() == "/connect/token";
    let base = if identity {
        &s.cfg.identity_url
    } else {
        &s.cfg.api_url
    };
    let headers = forwarded(&parts.headers);
    let provider = s.cfg.provider.as_str();
    let source = s.cfg.source.as_str();
    // The token request is a small form: read it to tell refreshes from code exchanges.
    let (upstream_body, is_refresh) = if token_call {
        match read_limited(body).await {
            Some(b) => {
                let refresh = b
                    .split(|c| *c == b'&')
                    .any(|kv| kv == b"grant_type=refresh_token");
                (reqwest::Body::from(b), refresh)
            }
            None => {
                return (StatusCode::PAYLOAD_TOO_LARGE, "token request too large\n").into_response()
            }
        }
    } else {
        let stream = TryStreamExt::map_err(body.into_data_stream(), std::io::Error::other);
        (reqwest::Body::wrap_stream(stream), false)
    };
    let tenant = parts
        .headers
        .get("xero-tenant-id")
        .and_then(|v| v.to_str().ok())
        .map(|t| crate::metrics::label_value(t).into_owned())
        .unwrap_or_default();
    let sent = s
        .client
        .request(parts.method.clone(), format!("{base}{path_q}"))
        .headers(headers)
        .body(upstream_body)
        .send()
        .await;
    let resp = match sent {
        Ok(r) => r,
        Err(e) => {
            if is_refresh {
                s.live
                    .events
                    .refresh(provider, source, Some(RefreshError::Network));
            }
            let reason = if e.is_timeout() {
                crate::metrics::SourceErrorReason::Timeout
            } else {
                crate::metrics::SourceErrorReason::Connect
            };
            s.live.source_error(source, reason);
            s.live
                .up
                .get_or_create(&crate::metrics::SourceLabels {
                    source: source.to_string(),
                })
                .set(0);
            tracing::warn!(source, upstream = %base, reason = reason.as_str(), error = %e.without_url(), "The proxy could not reach the upstream.");
            return bad_gateway("upstream unreachable");
        }
    };
    s.live
        .up
        .get_or_create(&crate::metrics::SourceLabels {
            source: source.to_string(),
        })
        .set(1);
    let status = resp.status();
    let out_headers = forwarded(resp.headers());
    if !identity {
        for (header, window) in [
            ("x-daylimit-remaining", "day"),
            ("x-minlimit-remaining", "minute"),
            ("x-appminlimit-remaining", "app_minute"),
        ] {
            if let Some(v) = resp
                .headers()
                .get(header)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<i64>().ok())
            {
                let t = if window == "app_minute" {
                    String::new()
                } else {
                    tenant.clone()
                };
                s.live.events.set_rate_limit_remaining(
                    RateLimitLabels {
                        provider,
                        source: source.to_string(),
                        tenant: t,
                        window,
                    },
                    v,
                );
            }
        }
    }
    let inspect = (token_call && !status.is_success()) || (!identity && status.as_u16() == 401);
    let body = if inspect {
        let bytes = match resp.bytes().await {
            Ok(b) => b,
            Err(_) => return bad_gateway("upstream answer cut"),
        };
        if token_call && is_refresh {
            s.live.events.refresh(
                provider,
                source,
                Some(classify_refresh_error(status.as_u16(), &bytes)),
            );
        } else if !identity {
            let outcome = classify_api(401, &bytes, None);
            s.live.events.api(provider, source, outcome);
            if matches!(outcome, ApiOutcome::Unauthorized(r) if r != UnauthorizedReason::TokenExpired)
                && !tenant.is_empty()
            {
                s.live.detector.api_failure(provider, source, &tenant, None);
            }
        }
        Body::from(bytes)
    } else {
        if token_call && is_refresh {
            s.live.events.refresh(provider, source, None);
        } else if !identity {
            let problem = resp
                .headers()
                .get("x-rate-limit-problem")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            s.live.events.api(
                provider,
                source,
                classify_api(status.as_u16(), b"", problem.as_deref()),
            );
        }
        Body::from_stream(resp.bytes_stream())
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = out_headers;
    response
}
