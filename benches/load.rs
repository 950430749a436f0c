//! Load benchmark of the real binary (release build): many concurrent scrapes, slow clients
//! trickling headers and an ingest flood at once must not stall the poll loop or the other
//! endpoints, and memory must stay bounded. Then the cost of basic auth: a right password, a
//! wrong one and an unknown user.
//!
//! Run: `cargo bench --bench load -- [seconds] [scrapers] [slow] [connections]` (defaults 10,
//! 500, 200, 1000). Prints scrapes/s, scrape latency (p50, p99, max), ingested events/s, the
//! oldest poll seen during the load, slow clients cut, and the exporter's RSS.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

const TOKEN: &str = "bench-load-ingest-token-0123";

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Exporter {
    child: std::process::Child,
    url: String,
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start(
    dir: &std::path::Path,
    db: &std::path::Path,
    web: Option<&std::path::Path>,
) -> Exporter {
    let config = dir.join("load.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  poll_interval: 1s\n  poll_timeout: 1s\nsources:\n  - {{name: app, kind: sqlite, dsn: {}, preset: xero_tokens}}\ningest:\n  token_env: OTE_LOAD_TOKEN\n  max_body_bytes: 10485760\n",
            db.display()
        ),
    )
    .unwrap();
    let port = free_port();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_oauth-token-exporter"));
    cmd.arg("--config.file")
        .arg(&config)
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--log.level=warn")
        .env("OTE_LOAD_TOKEN", TOKEN)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    if let Some(w) = web {
        cmd.arg("--web.config.file").arg(w);
    }
    let child = cmd.spawn().unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    for _ in 0..100 {
        if http.get(format!("{url}/-/healthy")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Exporter { child, url }
}

fn batch(n: usize) -> String {
    let events: Vec<String> = (0..n)
        .map(|i| match i % 3 {
            0 => format!(r#"{{"type":"refresh","connection":"c{i}","outcome":"failure","error":"invalid_grant","status":400}}"#),
            1 => format!(r#"{{"type":"api","connection":"c{i}","status":401,"detail":"AuthorizationUnsuccessful"}}"#),
            _ => format!(r#"{{"type":"api","connection":"c{i}","status":200}}"#),
        })
        .collect();
    format!(r#"{{"events":[{}]}}"#, events.join(","))
}

#[tokio::main]
async fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .filter_map(|a| a.parse().ok())
        .collect();
    let seconds = args.first().copied().unwrap_or(10);
    let scrapers = args.get(1).copied().unwrap_or(500) as usize;
    let slow = args.get(2).copied().unwrap_or(200) as usize;
    let connections = args.get(3).copied().unwrap_or(1000) as usize;
    oauth_token_exporter::sources::install_tls_provider();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    {
        use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
        let pool = SqlitePoolOptions::new()
            .connect_with(
                SqliteConnectOptions::new()
                    .filename(&db)
                    .create_if_missing(true),
            )
            .await
            .unwrap();
        sqlx::query("CREATE TABLE xero_tokens (id TEXT, tenant_id TEXT, expires_at INTEGER)")
            .execute(&pool)
            .await
            .unwrap();
        let mut tx = pool.begin().await.unwrap();
        for i in 0..connections {
            sqlx::query("INSERT INTO xero_tokens VALUES (?, ?, strftime('%s','now') + ?)")
                .bind(format!("conn-{i}"))
                .bind(format!("tenant-{i}"))
                .bind((i % 1800) as i64)
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
    }
    let e = start(dir.path(), &db, None).await;
    let pid = e.child.id();
    let (rss_idle, _) = rss_kib(pid);
    println!(
        "oauth-token-exporter load: {connections} connections, poll every 1 s, {seconds} s of load"
    );
    println!("load: {scrapers} clients scraping /metrics without pause (OpenMetrics, gzip; one scrape in ten plain), {slow} clients trickling headers, 2 clients posting 500-event batches\n");

    let deadline = Instant::now() + Duration::from_secs(seconds);
    let scrapes = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let oldest_poll = Arc::new(std::sync::Mutex::new(0f64));
    // Slow clients: one header byte a second, each on its own connection.
    let cut = Arc::new(AtomicU64::new(0));
    for _ in 0..slow {
        let (url, cut) = (e.url.clone(), cut.clone());
        tokio::spawn(async move {
            let addr = url.trim_start_matches("http://").to_string();
            let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
                return;
            };
            let _ = s
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .await;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if s.write_all(b"a").await.is_err() {
                    cut.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        });
    }
    // Ingest flood.
    let events = Arc::new(AtomicU64::new(0));
    let body = Arc::new(batch(500));
    for _ in 0..2 {
        let (url, body, events) = (e.url.clone(), body.clone(), events.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            while Instant::now() < deadline {
                if let Ok(r) = http
                    .post(format!("{url}/api/v1/events"))
                    .bearer_auth(TOKEN)
                    .header("content-type", "application/json")
                    .body(body.as_str().to_owned())
                    .send()
                    .await
                {
                    if r.status().is_success() {
                        events.fetch_add(500, Ordering::Relaxed);
                    }
                }
            }
        });
    }
    // Scrapers.
    let mut tasks = Vec::new();
    for _ in 0..scrapers {
        let (url, scrapes, failures, oldest) = (
            e.url.clone(),
            scrapes.clone(),
            failures.clone(),
            oldest_poll.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap();
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                // As Prometheus scrapes: OpenMetrics, gzip. Every tenth scrape is a plain one
                // (a curl), read for the age of the last successful poll.
                let plain = scrapes.load(Ordering::Relaxed) % 10 == 0;
                let r = http
                    .get(format!("{url}/metrics"))
                    .header("accept", "application/openmetrics-text; version=1.0.0")
                    .header("accept-encoding", if plain { "identity" } else { "gzip" })
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status().is_success() => {
                        let body = r.bytes().await.unwrap_or_default();
                        lat.push(t.elapsed().as_secs_f64() * 1000.0);
                        scrapes.fetch_add(1, Ordering::Relaxed);
                        let text = if plain {
                            String::from_utf8_lossy(&body).to_string()
                        } else {
                            String::new()
                        };
                        if let Some(ts) = text
                            .lines()
                            .find(|l| {
                                l.starts_with(
                                    "oauth_exporter_source_last_success_timestamp_seconds{",
                                )
                            })
                            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                        {
                            let now = std::time::SystemTime::now()
                                .duration_since(std::time::UNIX_EPOCH)
                                .unwrap()
                                .as_secs_f64();
                            let mut o = oldest.lock().unwrap();
                            *o = o.max(now - ts);
                        }
                    }
                    _ => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            lat
        }));
    }
    let mut peak_during = 0;
    let sampler = {
        tokio::spawn(async move {
            let mut peak = 0;
            while Instant::now() < deadline {
                peak = peak.max(rss_kib(pid).0);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            peak
        })
    };
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    peak_during = peak_during.max(sampler.await.unwrap());
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = scrapes.load(Ordering::Relaxed);
    // Slow clients are cut by the header deadline (10 s): wait it out.
    tokio::time::sleep(Duration::from_secs(14u64.saturating_sub(seconds).max(4))).await;
    let (rss_after, rss_peak) = rss_kib(pid);
    println!("| measure | value |\n|---|---|");
    println!(
        "| scrapes | {n} ({:.0}/s), {} failed |",
        n as f64 / seconds as f64,
        failures.load(Ordering::Relaxed)
    );
    println!(
        "| scrape latency | p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms |",
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        lat.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "| ingested events | {:.0}/s |",
        events.load(Ordering::Relaxed) as f64 / seconds as f64
    );
    println!(
        "| oldest successful poll seen by a scrape | {:.1} s (poll interval 1 s) |",
        *oldest_poll.lock().unwrap()
    );
    println!(
        "| slow clients cut by the header deadline | {} of {slow} |",
        cut.load(Ordering::Relaxed)
    );
    println!(
        "| exporter RSS | {} MiB idle, {} MiB peak during the load, {} MiB after (high-water {} MiB) |",
        rss_idle / 1024,
        peak_during / 1024,
        rss_after / 1024,
        rss_peak / 1024
    );
    drop(e);

    // Basic auth: the price of bcrypt (cost 10), and the same price whatever is wrong.
    let web = dir.path().join("web.yml");
    std::fs::write(
        &web,
        format!(
            "basic_auth_users:\n  prometheus: {}\n",
            bcrypt::hash("right-password", 10).unwrap()
        ),
    )
    .unwrap();
    let e = start(dir.path(), &db, Some(&web)).await;
    let http = reqwest::Client::new();
    let mut rows = Vec::new();
    for (what, user, pw) in [
        ("right password", "prometheus", "right-password"),
        ("wrong password", "prometheus", "wrong-password"),
        ("unknown user", "mallory", "right-password"),
    ] {
        let mut lat = Vec::new();
        for _ in 0..40 {
            let t = Instant::now();
            let r = http
                .get(format!("{}/-/healthy", e.url))
                .basic_auth(user, Some(pw))
                .send()
                .await
                .unwrap();
            let _ = r.bytes().await;
            lat.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
        rows.push(format!(
            "| {what} | {:.1} ms | {:.1} ms |",
            pct(&lat, 0.5),
            pct(&lat, 0.99)
        ));
    }
    println!("\nbasic auth (bcrypt cost 10), 40 sequential requests each:\n\n| credentials | p50 | p99 |\n|---|---|---|");
    for r in rows {
        println!("{r}");
    }
}
