//! Shared test helpers: real stores (skipped by name when unreachable, mandatory when
//! `CI=true`), a fault-injecting TCP proxy, and exposition assertions.
#![allow(dead_code)]

pub mod alerting;
pub mod intercept;
pub mod nango;

use chrono::{DateTime, TimeZone, Utc};
use oauth_token_exporter::clock::{ManualClock, SharedClock};
use oauth_token_exporter::config::{self, Config};
use oauth_token_exporter::telemetry::openmetrics_to_text;
use oauth_token_exporter::Exporter;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

pub const PG_URL_DEFAULT: &str = "postgres://postgres@127.0.0.1:5432/test";
pub const MYSQL_URL_DEFAULT: &str = "mysql://root@127.0.0.1:3306/test";

pub fn pg_url() -> String {
    std::env::var("OTE_TEST_PG_URL").unwrap_or_else(|_| PG_URL_DEFAULT.into())
}
pub fn mysql_url() -> String {
    std::env::var("OTE_TEST_MYSQL_URL").unwrap_or_else(|_| MYSQL_URL_DEFAULT.into())
}

pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Whether a server answers on host:port; when it does not, the test is skipped by name
/// (or fails under `CI=true`).
pub async fn server_or_skip(test: &str, what: &str, url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let hostport = rest
        .rsplit('@')
        .next()
        .unwrap_or(rest)
        .split('/')
        .next()
        .unwrap_or("");
    let up = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(hostport))
        .await
        .is_ok_and(|r| r.is_ok());
    if !up {
        if ci() {
            panic!("{test}: {what} is not reachable at {hostport} and CI=true makes it mandatory");
        }
        eprintln!("SKIPPED {test}: {what} not reachable at {hostport} (set CI=true to require it)");
    }
    up
}

/// Unique, SQL-safe name for a test's schema or table prefix.
pub fn unique(test: &str) -> String {
    format!("ote_{}_{}", test, std::process::id())
}

pub fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

pub fn fixed_now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0).unwrap()
}

/// A config as the tests read it: with `--collector.relative-metrics`, so values can be checked
/// as ages (tests/shards.rs checks the default leaves them out).
pub fn parse_config(yaml: &str) -> Config {
    let mut c = config::parse(yaml, "test.yml", &|_| None).unwrap_or_else(|e| panic!("{e}"));
    c.relative_metrics = true;
    c
}

/// An exporter on a manual clock.
pub fn exporter(yaml: &str, now: DateTime<Utc>) -> (Exporter, Arc<ManualClock>) {
    let clock = ManualClock::new(now);
    let shared: SharedClock = clock.clone();
    let e = Exporter::new(&parse_config(yaml), shared).unwrap_or_else(|e| panic!("{e}"));
    (e, clock)
}

/// Poll every source once (not the event tables); returns whether each succeeded.
pub async fn poll(e: &mut Exporter) -> Vec<bool> {
    let sources: Vec<String> = e.sources.get().iter().map(|s| s.name.clone()).collect();
    let mut out = Vec::new();
    for p in &mut e.pollers {
        if sources.iter().any(|s| s == p.source()) {
            out.push(p.poll_once().await);
        }
    }
    out
}

/// The classic-text exposition.
pub fn scrape(e: &Exporter) -> String {
    openmetrics_to_text(&e.exposition.render())
}

/// Value of the one sample of `name` carrying every label in `labels`.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        if labels
            .iter()
            .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        {
            let value: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
            assert!(
                found.is_none(),
                "more than one sample of {name} matches {labels:?}"
            );
            found = Some(value);
        }
    }
    found
}

/// Like [`sample`], panicking with the exposition when absent.
pub fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    sample(text, name, labels).unwrap_or_else(|| panic!("no sample {name} {labels:?} in:\n{text}"))
}

/// Connection ids exported by a source.
pub fn connections(text: &str, source: &str) -> Vec<String> {
    let mut ids: Vec<String> = text
        .lines()
        .filter(|l| {
            l.starts_with("oauth_refresh_token_last_refresh_timestamp_seconds{")
                && l.contains(&format!("source=\"{source}\""))
        })
        .map(|l| {
            let start = l.find("connection=\"").unwrap() + 12;
            let end = l[start..].find('"').unwrap() + start;
            l[start..end].to_string()
        })
        .collect();
    ids.sort();
    ids
}

/// A TCP proxy in front of a store that injects faults: `cut` (every connection closed, new ones
/// refused), `stall` (connections stay open but no byte passes: a hung server or a black-holed
/// network), `reset` (every connection reset by peer), and `restore`.
pub struct FaultProxy {
    pub addr: std::net::SocketAddr,
    up: Arc<AtomicBool>,
    cut: Arc<Notify>,
    stalled: Arc<tokio::sync::watch::Sender<bool>>,
    reset: Arc<Notify>,
}

/// Copy one direction until end of stream, holding bytes while stalled.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut stalled: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while *stalled.borrow() {
            if stalled.changed().await.is_err() {
                return;
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl FaultProxy {
    pub async fn start(target: String) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let cut = Arc::new(Notify::new());
        let reset = Arc::new(Notify::new());
        let (stall_tx, _) = tokio::sync::watch::channel(false);
        let stalled = Arc::new(stall_tx);
        let (up2, cut2, reset2, stalled2) =
            (up.clone(), cut.clone(), reset.clone(), stalled.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    break;
                };
                if !up2.load(Ordering::SeqCst) {
                    let _ = client.shutdown().await;
                    continue;
                }
                let target = target.clone();
                let (cut, reset, stalled) = (cut2.clone(), reset2.clone(), stalled2.clone());
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&target).await else {
                        return;
                    };
                    let client_std = client.into_std().unwrap();
                    let server_std = server.into_std().unwrap();
                    let (c2, s2) = (
                        client_std.try_clone().unwrap(),
                        server_std.try_clone().unwrap(),
                    );
                    let client = TcpStream::from_std(client_std).unwrap();
                    let server = TcpStream::from_std(server_std).unwrap();
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let up = tokio::spawn(pump(cr, sw, stalled.subscribe()));
                    let down = tokio::spawn(pump(sr, cw, stalled.subscribe()));
                    let aborts = [up.abort_handle(), down.abort_handle()];
                    tokio::select! {
                        _ = async { let _ = tokio::join!(up, down); } => {}
                        _ = cut.notified() => {}
                        _ = reset.notified() => {
                            // SO_LINGER 0: closing sends RST instead of FIN.
                            for s in [&c2, &s2] {
                                let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
                            }
                        }
                    }
                    for a in aborts {
                        a.abort();
                    }
                    drop((c2, s2));
                });
            }
        });
        FaultProxy {
            addr,
            up,
            cut,
            stalled,
            reset,
        }
    }

    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cut.notify_waiters();
    }

    /// Hold every byte in both directions until [`FaultProxy::restore`].
    pub fn stall(&self) {
        self.stalled.send_replace(true);
    }

    /// Reset every open connection (new ones still pass).
    pub fn reset(&self) {
        self.reset.notify_waiters();
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
        self.stalled.send_replace(false);
    }
}

/// A writable SQLite file (the host app's side) created with `stmts`.
pub async fn sqlite_db(
    stmts: &[&str],
) -> (tempfile::TempDir, std::path::PathBuf, sqlx::SqlitePool) {
    use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(
            SqliteConnectOptions::new()
                .filename(&path)
                .create_if_missing(true),
        )
        .await
        .unwrap();
    for s in stmts {
        sqlx::query(s)
            .execute(&pool)
            .await
            .unwrap_or_else(|e| panic!("{s}: {e}"));
    }
    (dir, path, pool)
}

/// Serve `router` on a fresh local port; its base URL.
pub async fn serve(router: axum::Router) -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, router).await.unwrap() });
    url
}

/// A free local port for a child process to listen on, taken from below Linux's ephemeral range
/// (32768-60999): a port the kernel hands out (bind to 0) can be given again a moment later as
/// the local port of an outgoing connection (an exporter's to PostgreSQL, an agent's remote
/// write), and the server started on it then fails to bind (the suspected cause of one CI run
/// in which a Prometheus never answered).
pub fn free_port() -> u16 {
    use rand::Rng;
    // Never the same port twice in one test binary (tests run in parallel threads).
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let mut rng = rand::rng();
    for _ in 0..1000 {
        let port = rng.random_range(20_000..32_000);
        if !given.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
    panic!("no free port in 20000-31999 after 1000 tries")
}

/// A child process killed (and reaped) when the test ends, passing or failing.
pub struct Kill(pub std::process::Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A refresh at the (simulated or proxied) Xero token endpoint under `base`, as client `app`:
/// the status and body.
pub async fn xero_refresh(
    http: &reqwest::Client,
    base: &str,
    rt: &str,
    secret: &str,
) -> (u16, String) {
    let r = http
        .post(format!("{base}/connect/token"))
        .basic_auth("app", Some(secret))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("grant_type=refresh_token&refresh_token={rt}"))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// An accounting API call under `base` with access token `at` for `tenant`.
pub async fn xero_api(
    http: &reqwest::Client,
    base: &str,
    at: &str,
    tenant: &str,
) -> reqwest::Response {
    http.get(format!("{base}/api.xro/2.0/Organisation"))
        .bearer_auth(at)
        .header("xero-tenant-id", tenant)
        .send()
        .await
        .unwrap()
}

/// Each of `sources` failed its poll `n` times for `reason`.
pub fn assert_poll_errors(text: &str, sources: &[&str], reason: &str, n: f64) {
    for src in sources {
        assert_eq!(
            value(
                text,
                "oauth_exporter_source_errors_total",
                &[("source", src), ("reason", reason)]
            ),
            n,
            "{src}: {text}"
        );
    }
}

/// Whether `url` answers within 10 s with anything but a server error (a 401 of basic auth
/// counts; a self-signed certificate is accepted).
pub async fn answers(url: &str) -> bool {
    oauth_token_exporter::sources::install_tls_provider();
    let http = reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    for _ in 0..200 {
        if http
            .get(url)
            .send()
            .await
            .is_ok_and(|r| !r.status().is_server_error())
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// The body of a GET of `url` (plain HTTP, no credentials).
pub async fn get_text(url: &str) -> String {
    oauth_token_exporter::sources::install_tls_provider();
    reqwest::get(url).await.unwrap().text().await.unwrap()
}

/// The JSON body of a GET of `url` with `http`.
#[allow(dead_code)]
pub async fn get_json(http: &reqwest::Client, url: &str) -> serde_json::Value {
    let r = http.get(url).send().await.unwrap();
    r.json().await.unwrap()
}

/// The repository's root.
pub fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The first of `names` on the PATH, or `None`: the test is skipped by name (mandatory under
/// `CI=true`).
pub fn tool(test: &str, names: &[&str]) -> Option<std::path::PathBuf> {
    let found = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .flat_map(|d| names.iter().map(move |n| d.join(n)))
            .find(|f| f.is_file())
    });
    if found.is_none() {
        if ci() {
            panic!("{test}: {names:?} is not installed and CI=true makes it mandatory");
        }
        eprintln!(
            "SKIPPED {test}: {} is not installed (.ci/run installs it from Debian's packages)",
            names[0]
        );
    }
    found
}
