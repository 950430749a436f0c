//! HTTP endpoints: `/metrics` (or `--web.telemetry-path`), `/` landing page, `/-/healthy`,
//! `/-/ready`.

use crate::clock::SharedClock;
use crate::model::{SourceSet, Status};
use crate::telemetry::{Exposition, OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE};
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use std::convert::Infallible;
use std::fmt::Write;
use std::sync::Arc;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub exposition: Arc<Exposition>,
    pub sources: SourceSet,
    pub clock: SharedClock,
    /// Encodings of `/metrics` running at once (they use a CPU each; more scrapes wait).
    pub encoders: Arc<tokio::sync::Semaphore>,
    /// Where the metrics are served (`--web.telemetry-path`); the landing page links to it.
    pub telemetry_path: String,
    /// The event inlets configured, one line each, for the landing page (replaced by a
    /// reload).
    pub inlets: Arc<std::sync::RwLock<Vec<String>>>,
    /// `--web.enable-lifecycle`: where `POST /-/reload` asks for a reload, and what
    /// `POST /-/quit` cancels. `None`: both answer 403.
    pub lifecycle: Option<Lifecycle>,
    /// This instance's shard, for `/api/v1/shard`.
    pub shard: crate::config::Shard,
    /// The detectors' per-connection facts, for the diagnosis.
    pub detector: Arc<crate::detect::Detector>,
}

/// The lifecycle API's ends: reload requests and the shutdown.
#[derive(Clone)]
pub struct Lifecycle {
    pub reload: tokio::sync::mpsc::Sender<ReloadRequest>,
    pub shutdown: tokio_util::sync::CancellationToken,
}

/// A request to read the config again; the answer (an error names every problem) goes back
/// on the channel when there is one.
#[derive(Debug)]
pub struct ReloadRequest(pub Option<tokio::sync::oneshot::Sender<Result<(), String>>>);

/// Encodings of `/metrics` allowed at once: one per core, at least two. Hundreds of scrapes at
/// once then queue instead of each taking a thread and its buffers.
pub fn encoders() -> Arc<tokio::sync::Semaphore> {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    Arc::new(tokio::sync::Semaphore::new(cores.max(2)))
}

/// Longest time a handler may take to produce a response.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The router, testable without a socket.
pub fn router(state: AppState, telemetry_path: &str) -> Router {
    Router::new()
        .route("/", get(landing))
        .route("/-/healthy", get(healthy))
        .route("/-/ready", get(ready))
        .route("/-/reload", post(reload).put(reload))
        .route("/-/quit", post(quit).put(quit))
        .route(telemetry_path, get(metrics))
        .route("/api/v1/shard", get(shard_of))
        .route("/api/v1/connections", get(super::connections::list))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .with_state(state)
}

#[derive(serde::Deserialize)]
struct ShardQuery {
    connection: Option<String>,
}

/// `GET /api/v1/shard?connection=<id>`: which shard owns a connection, so a router (or the host
/// app) can send its events to an instance of that shard; without `connection`, this
/// instance's shard.
async fn shard_of(
    State(s): State<AppState>,
    axum::extract::Query(q): axum::extract::Query<ShardQuery>,
) -> Response {
    let mut body = serde_json::json!({
        "shard": s.shard.index,
        "shards": s.shard.total,
    });
    if let Some(c) = q.connection {
        let owner = crate::config::Shard::of(&c, s.shard.total);
        body["connection_shard"] = owner.into();
        body["owned"] = (owner == s.shard.index).into();
    }
    axum::Json(body).into_response()
}

/// OpenMetrics when the client accepts it (Prometheus does), else the classic text format.
fn wants_openmetrics(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"))
}

fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|enc| {
            let mut parts = enc.split(';').map(str::trim);
            parts.next() == Some("gzip") && !parts.any(|p| p.replace(' ', "") == "q=0")
        })
}

fn failed(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "Encoding the metrics failed.");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        "encoding the metrics failed\n",
    )
        .into_response()
}

/// `/metrics`: gzip bodies come mostly precompressed; plain bodies stream as they inflate.
async fn metrics(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let openmetrics = wants_openmetrics(&headers);
    let content_type = if openmetrics {
        OPENMETRICS_CONTENT_TYPE
    } else {
        TEXT_CONTENT_TYPE
    };
    let exposition = s.exposition.clone();
    let started = std::time::Instant::now();
    let Ok(permit) = s.encoders.clone().acquire_owned().await else {
        return failed("the encoder pool is closed");
    };
    if accepts_gzip(&headers) {
        let chunks = match tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let body = exposition.gzip_body(openmetrics);
            exposition
                .live
                .scrape_duration
                .observe(started.elapsed().as_secs_f64());
            body
        })
        .await
        {
            Ok(c) => c,
            Err(e) => return failed(e),
        };
        let length: usize = chunks.iter().map(Bytes::len).sum();
        tracing::trace!(
            openmetrics,
            gzip = true,
            bytes = length,
            seconds = started.elapsed().as_secs_f64(),
            "Scrape served."
        );
        let stream = futures_util::stream::iter(chunks.into_iter().map(Ok::<_, Infallible>));
        return (
            [
                (header::CONTENT_TYPE, content_type.to_string()),
                (header::CONTENT_ENCODING, "gzip".to_string()),
                (header::CONTENT_LENGTH, length.to_string()),
                (header::VARY, "Accept-Encoding".to_string()),
            ],
            Body::from_stream(stream),
        )
            .into_response();
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        exposition.plain_body(openmetrics, |b| tx.blocking_send(b).is_ok());
        tracing::trace!(
            openmetrics,
            gzip = false,
            seconds = started.elapsed().as_secs_f64(),
            "Scrape served."
        );
        exposition
            .live
            .scrape_duration
            .observe(started.elapsed().as_secs_f64());
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::VARY, "Accept-Encoding"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

const LIFECYCLE_OFF: &str = "Lifecycle API is not enabled (--web.enable-lifecycle).\n";

/// `POST /-/reload`: read the config again; 200 when it was applied, 500 naming its problems.
async fn reload(State(s): State<AppState>) -> Response {
    let Some(l) = &s.lifecycle else {
        return (StatusCode::FORBIDDEN, LIFECYCLE_OFF).into_response();
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    if l.reload.send(ReloadRequest(Some(tx))).await.is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    match rx.await {
        Ok(Ok(())) => (StatusCode::OK, "Reloaded\n").into_response(),
        Ok(Err(e)) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("failed to reload config: {e}\n"),
        )
            .into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response(),
    }
}

/// `POST /-/quit`: a graceful shutdown, as SIGTERM.
async fn quit(State(s): State<AppState>) -> Response {
    let Some(l) = &s.lifecycle else {
        return (StatusCode::FORBIDDEN, LIFECYCLE_OFF).into_response();
    };
    tracing::info!("Shutting down (POST /-/quit).");
    l.shutdown.cancel();
    (StatusCode::OK, "Requesting termination... Goodbye!\n").into_response()
}

async fn healthy() -> &'static str {
    "Healthy\n"
}

async fn ready(State(s): State<AppState>) -> Response {
    let sources = s.sources.get();
    let waiting: Vec<&str> = sources
        .iter()
        .filter(|h| !h.is_ready())
        .map(|h| h.name.as_str())
        .collect();
    if waiting.is_empty() {
        (StatusCode::OK, "Ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "Not ready: no successful poll yet of {}\n",
                waiting.join(", ")
            ),
        )
            .into_response()
    }
}

/// Escape text for HTML.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The landing page runs no script and loads nothing: a strict policy makes any escaping slip
/// inert. `headers` of `--web.config.file` override it.
const LANDING_CSP: &str =
    "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

#[derive(serde::Deserialize)]
struct LandingQuery {
    cause: Option<String>,
}

async fn landing(
    State(s): State<AppState>,
    q: Result<axum::extract::Query<LandingQuery>, axum::extract::rejection::QueryRejection>,
) -> impl IntoResponse {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>OAuth Token Exporter</title>\
         <style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}.down{{color:#b00}}</style></head><body>\
         <h1>OAuth Token Exporter</h1><p>Version {}</p>\
         <ul><li><a href=\"{}\">Metrics</a></li><li><a href=\"-/healthy\">Health</a></li><li><a href=\"-/ready\">Readiness</a></li></ul>\
         <h2>Sources</h2><table><tr><th>source</th><th>store</th><th>provider</th><th>up</th><th>last success</th><th>connections</th><th>needs re-auth</th><th>expiring within 7d</th><th>not exported (cap)</th><th>rows rejected (last poll)</th></tr>",
        env!("CARGO_PKG_VERSION"),
        // Relative to `/`, so the link also works behind a reverse proxy that adds a prefix.
        esc(s.telemetry_path.trim_start_matches('/'))
    );
    for src in s.sources.get().iter() {
        let snap = src.snapshot();
        let totals = snap.totals();
        let total: u64 = totals.by_status.iter().sum();
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&src.name),
            src.kind.as_str(),
            snap.providers
                .iter()
                .map(|p| p.provider)
                .collect::<Vec<_>>()
                .join(", "),
            if src.is_up() { "" } else { "down" },
            if src.is_up() { "yes" } else { "no" },
            snap.polled_at
                .map(|t| super::connections::human_time(t, s.clock.now()))
                .unwrap_or_else(|| "never".into()),
            total,
            totals.by_status[Status::NeedsReauth.index()],
            totals.expiring[1],
            snap.truncated,
            snap.rejected,
        );
    }
    h.push_str("</table><h2>Event inlets</h2>");
    let inlets = s.inlets.read().unwrap_or_else(|e| e.into_inner()).clone();
    if inlets.is_empty() {
        h.push_str("<p>None configured: refresh outcomes and API 401s are not counted.</p>");
    } else {
        h.push_str("<ul>");
        for i in &inlets {
            let _ = write!(h, "<li>{}</li>", esc(i));
        }
        h.push_str("</ul>");
    }
    super::connections::page_section(&s, q.ok().and_then(|q| q.0.cause), &mut h);
    h.push_str("</body></html>");
    (
        [
            (header::CONTENT_SECURITY_POLICY, LANDING_CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        Html(h),
    )
}
