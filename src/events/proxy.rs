//! The reverse proxy in front of Xero: the host app points its identity and API base URLs at it.
//!
//! It never alters a request or a response (only the hop-by-hop headers of each hop and `Host`
//! change, as for any proxy), streams bodies, and counts: token-endpoint refreshes and their
//! outcome (by reading the error body), API calls with 401 by reason, 403 and 429 by limit, and
//! the last rate-limit headroom per tenant. Bodies are read only where the answer needs them:
//! the token request's form (to see `grant_type`), a refresh's answer (an error to classify,
//! or a new token set whose `id_token` says who authorised it: an API call carrying that
//! access token then tells whose its tenant is), and 401 bodies, all small; everything else
//! streams through. Tokens pass through and are kept nowhere (a keyed hash of each new access
//! token is, with its user).

use super::classify::classify_api;
use super::intercept::Interceptor;
use super::{Context, Inlet, Listener, Wired};
use crate::clock::SharedClock;
use crate::config::Proxy;
use crate::model::{label_value, CollectError, Event};
use crate::pipeline::{Health, Outcome, Sink, Subject};
use crate::provider::{classify_refresh_error, RefreshError};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures_util::TryStreamExt;
use http_body_util::BodyExt;
use std::sync::Arc;
use std::sync::Mutex;

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
    sink: Sink,
    /// The upstream's self-health: `up` is 1 until a call fails to reach it, 0 until one
    /// succeeds again; failures count as `connect` or `timeout`.
    health: Arc<Mutex<Health>>,
    clock: SharedClock,
    client: reqwest::Client,
    /// When a refused `CONNECT` was last logged (Unix seconds).
    connect_logged: Arc<std::sync::atomic::AtomicI64>,
    /// `CONNECT` interception, when configured.
    intercept: Option<Arc<Interceptor>>,
    /// Who authorised each access token seen in a token response.
    users: Arc<Mutex<TokenUsers>>,
}

/// Most access tokens whose authorising user is remembered (about 40 bytes each; the users
/// themselves are shared).
const MAX_TOKEN_USERS: usize = 100_000;

/// The authorising user (`xero_userid` of the `id_token`) of each access token the proxy saw
/// issued, keyed by a keyed hash of the token: the token itself is never kept. An API call
/// carrying the token then tells whose the tenant is.
#[derive(Default)]
struct TokenUsers {
    users: std::collections::HashMap<u64, Arc<str>>,
    hasher: std::collections::hash_map::RandomState,
}

impl TokenUsers {
    fn key(&self, access_token: &str) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(access_token)
    }

    /// Remember the user of a successful token response's body.
    fn learn(&mut self, body: &[u8]) {
        let Some((access_token, user)) = token_user(body) else {
            return;
        };
        if self.users.len() >= MAX_TOKEN_USERS {
            // Tokens live 30 minutes: the oldest are dead by the time the map is full.
            self.users.clear();
        }
        let key = self.key(&access_token);
        self.users.insert(key, Arc::from(user.as_str()));
    }

    fn user_of(&self, access_token: &str) -> Option<Arc<str>> {
        if self.users.is_empty() {
            return None;
        }
        self.users.get(&self.key(access_token)).cloned()
    }
}

/// The access token and the authorising user of a token response: the `id_token`'s
/// `xero_userid` claim (`sub` where there is none). The id_token is not verified: it came
/// from the upstream over verified TLS, and only names whose tenant is whose.
fn token_user(body: &[u8]) -> Option<(String, String)> {
    use base64::Engine;
    #[derive(serde::Deserialize)]
    struct Answer {
        access_token: String,
        id_token: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Claims {
        xero_userid: Option<String>,
        sub: Option<String>,
    }
    let answer: Answer = serde_json::from_slice(body).ok()?;
    let payload = answer.id_token?.split('.').nth(1)?.to_string();
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: Claims = serde_json::from_slice(&raw).ok()?;
    let user = claims.xero_userid.or(claims.sub)?;
    let user = label_value(&user).into_owned();
    (!user.is_empty()).then_some((answer.access_token, user))
}

impl Inlet for Proxy {
    fn name(&self) -> String {
        "proxy".into()
    }

    /// Its own listener, in front of the identity and API base URLs.
    fn wire(&self, ctx: &Context) -> Result<Wired, CollectError> {
        let intercept = match &self.intercept {
            Some(i) => {
                Some(Arc::new(Interceptor::load(i).map_err(|e| {
                    CollectError::Setup(format!("proxy.intercept: {e}"))
                })?))
            }
            None => None,
        };
        Ok(Wired {
            listeners: vec![Listener {
                name: "proxy",
                address: self.listen_address.clone(),
                router: router(self.clone(), ctx, intercept)?,
                web_config_file: self.web_config_file.clone(),
                proxy_auth: true,
            }],
            ..Wired::default()
        })
    }
}

/// The proxy's routes (every path), for its own listener.
fn router(
    cfg: Proxy,
    ctx: &Context,
    intercept: Option<Arc<Interceptor>>,
) -> Result<Router, CollectError> {
    crate::sources::install_tls_provider();
    ctx.sink.init(cfg.provider, &cfg.source);
    let health = Health::new(
        ctx.sink.live().clone(),
        &cfg.source,
        Subject::Upstream,
        cfg.provider.as_str(),
    );
    let mut client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(cfg.timeout);
    if let Some(path) = &cfg.upstream_ca_file {
        let setup = |cause: String| {
            CollectError::Setup(format!(
                "proxy.upstream_ca_file: {}: {cause}",
                path.display()
            ))
        };
        let pem = std::fs::read(path).map_err(|e| setup(e.to_string()))?;
        let certs =
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| setup(e.to_string()))?;
        if certs.is_empty() {
            return Err(setup("no CERTIFICATE block".into()));
        }
        client = client.tls_certs_merge(certs);
    }
    let client = client.build().expect("the proxy's HTTP client builds");
    Ok(Router::new().fallback(entry).with_state(ProxyState {
        cfg: Arc::new(cfg),
        sink: ctx.sink.clone(),
        health: Arc::new(Mutex::new(health)),
        clock: ctx.clock.clone(),
        client,
        connect_logged: Arc::new(std::sync::atomic::AtomicI64::new(i64::MIN / 2)),
        intercept,
        users: Arc::default(),
    }))
}

impl ProxyState {
    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }
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

/// Seconds between two log lines about refused `CONNECT`s (an SDK retries each one).
const CONNECT_LOG_EVERY: i64 = 60;

/// A `CONNECT` (the SDK was given this listener as its `HTTPS_PROXY`): refused with a clear
/// answer and a log line saying how to route the SDK; never forwarded, never counted.
fn refuse_connect(s: &ProxyState, authority: &str) -> Response {
    let now = s.clock.now().timestamp();
    let last = s.connect_logged.load(std::sync::atomic::Ordering::Relaxed);
    if now - last >= CONNECT_LOG_EVERY
        && s.connect_logged
            .compare_exchange(
                last,
                now,
                std::sync::atomic::Ordering::Relaxed,
                std::sync::atomic::Ordering::Relaxed,
            )
            .is_ok()
    {
        tracing::warn!(
            source = %s.cfg.source,
            target = %label_value(authority),
            "A client sent CONNECT to the reverse proxy (it was given as HTTPS_PROXY); refused. Point the app's identity and API base URLs at this listener instead (README: \"Routing the Xero SDKs\"). Logged at most once a minute."
        );
    }
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [(axum::http::header::ALLOW, "GET, POST, PUT, DELETE, PATCH")],
        "oauth-token-exporter proxy: CONNECT is refused: this listener is a reverse proxy, not a forward proxy. Do not set it as HTTPS_PROXY; point the app's identity and API base URLs at it.\n",
    )
        .into_response()
}

/// Every request to the proxy's listener: a `CONNECT` is intercepted or tunnelled (with
/// `proxy.intercept`) or refused; anything else is forwarded.
async fn entry(State(s): State<ProxyState>, req: Request) -> Response {
    if req.method() == axum::http::Method::CONNECT {
        if let Some(i) = &s.intercept {
            // The requests inside an intercepted tunnel are forwarded like any other.
            let inner = Router::new().fallback(forward).with_state(s.clone());
            return super::intercept::connect(i.clone(), inner, req).await;
        }
        let authority = req
            .uri()
            .authority()
            .map(|a| a.as_str().to_string())
            .unwrap_or_default();
        return refuse_connect(&s, &authority);
    }
    forward(State(s), req).await
}

async fn forward(State(s): State<ProxyState>, req: Request) -> Response {
    if req.method() == axum::http::Method::CONNECT {
        // A CONNECT inside an intercepted tunnel.
        return (StatusCode::METHOD_NOT_ALLOWED, "CONNECT inside a tunnel\n").into_response();
    }
    let (parts, body) = req.into_parts();
    let path_q = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_string();
    // Xero's identity server: the token and revocation endpoints, and the OpenID discovery
    // document and JWKS that openid-client (xero-node) fetches.
    let identity =
        parts.uri.path().starts_with("/connect/") || parts.uri.path().starts_with("/.well-known/");
    let token_call = parts.uri.path() == "/connect/token";
    let base = if identity {
        &s.cfg.identity_url
    } else {
        &s.cfg.api_url
    };
    let headers = forwarded(&parts.headers);
    let provider = s.cfg.provider;
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
        .map(|t| label_value(t).into_owned())
        .unwrap_or_default();
    if !identity && !tenant.is_empty() {
        // Whose tenant this is, where the proxy saw its access token issued.
        let bearer = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let user =
            bearer.and_then(|t| s.users.lock().unwrap_or_else(|e| e.into_inner()).user_of(t));
        if let Some(user) = user {
            s.sink
                .detector()
                .authorised_by(provider.as_str(), &tenant, user);
        }
    }
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
                s.sink.count(
                    source,
                    Event::refresh(provider, None, Some(RefreshError::Network)),
                );
            }
            let err = if e.is_timeout() {
                CollectError::Timeout(s.cfg.timeout)
            } else {
                CollectError::Connect(format!("{base}: {}", e.without_url()))
            };
            s.health().failed(&err, None);
            return bad_gateway("upstream unreachable");
        }
    };
    s.health()
        .succeeded(s.clock.now(), None, Outcome::default());
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
                s.sink.rate_limit_remaining(provider, source, t, window, v);
            }
        }
    }
    // A refresh's answer is read whole (small): an error to classify, a success for whose
    // token set it is.
    let inspect = (token_call && (is_refresh || !status.is_success()))
        || (!identity && status.as_u16() == 401);
    let body = if inspect {
        let bytes = match resp.bytes().await {
            Ok(b) => b,
            Err(_) => return bad_gateway("upstream answer cut"),
        };
        if token_call && is_refresh && status.is_success() {
            s.users
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .learn(&bytes);
            s.sink.count(source, Event::refresh(provider, None, None));
        } else if token_call && is_refresh {
            s.sink.count(
                source,
                Event::refresh(
                    provider,
                    None,
                    Some(classify_refresh_error(status.as_u16(), &bytes)),
                ),
            );
        } else if !identity {
            // The tenant is the connection as far as the proxy can tell (one token set per
            // tenant); without one the 401 is counted but feeds no detector.
            let connection = (!tenant.is_empty()).then(|| tenant.clone());
            s.sink.count(
                source,
                Event::api(provider, connection, classify_api(401, &bytes, None)),
            );
        }
        Body::from(bytes)
    } else {
        if token_call && is_refresh {
            s.sink.count(source, Event::refresh(provider, None, None));
        } else if !identity {
            let problem = resp
                .headers()
                .get("x-rate-limit-problem")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let connection = (!tenant.is_empty()).then(|| tenant.clone());
            s.sink.count(
                source,
                Event::api(
                    provider,
                    connection,
                    classify_api(status.as_u16(), b"", problem.as_deref()),
                ),
            );
        }
        Body::from_stream(resp.bytes_stream())
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = out_headers;
    response
}
