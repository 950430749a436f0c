//! Benchmark: events ingested per second through `POST /api/v1/events`, over real HTTP on
//! loopback (keep-alive, batches), the server and the clients sharing this machine's cores.
//!
//! Run: `cargo bench --bench ingest -- [seconds] [batch] [clients]` (defaults 5, 500, 4).

use oauth_token_exporter::clock::{SharedClock, SystemClock};
use oauth_token_exporter::{config, Exporter, ServerOptions};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TOKEN: &str = "bench-ingest-token-0123456789";

fn batch(n: usize, seed: usize) -> String {
    let events: Vec<String> = (0..n)
        .map(|i| match (i + seed) % 4 {
            0 => format!(r#"{{"type":"refresh","connection":"c{i}","tenant":"t{i}","time":"2026-06-01T12:00:00Z","outcome":"success"}}"#),
            1 => format!(r#"{{"type":"refresh","connection":"c{i}","outcome":"failure","error":"invalid_grant","status":400}}"#),
            2 => format!(r#"{{"type":"api","connection":"c{i}","status":401,"detail":"TokenExpired: token expired at 06/01/2026 12:30:00"}}"#),
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
    let seconds = args.first().copied().unwrap_or(5);
    let batch_size = args.get(1).copied().unwrap_or(500) as usize;
    let clients = args.get(2).copied().unwrap_or(4) as usize;
    oauth_token_exporter::sources::install_tls_provider();
    let yaml =
        "ingest:\n  source: bench\n  token_env: OTE_BENCH_TOKEN\n  max_body_bytes: 10485760\n";
    let cfg = config::parse(yaml, "bench.yml", &|_| Some(TOKEN.into())).unwrap();
    let clock: SharedClock = Arc::new(SystemClock);
    let e = Exporter::new(&cfg, clock).unwrap_or_else(|e| panic!("{e}"));
    let router = e.router(&ServerOptions::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/api/v1/events", listener.local_addr().unwrap());
    tokio::spawn(oauth_token_exporter::http::serve::serve(
        listener,
        router,
        Default::default(),
        tokio_util::sync::CancellationToken::new(),
    ));
    let body = Arc::new(batch(batch_size, 0));
    let sent = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut latencies = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (url, body, sent) = (url.clone(), body.clone(), sent.clone());
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                let r = client
                    .post(&url)
                    .bearer_auth(TOKEN)
                    .header("content-type", "application/json")
                    .body(body.as_str().to_owned())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                let _ = r.bytes().await.unwrap();
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
                sent.fetch_add(batch_size as u64, Ordering::Relaxed);
            }
            lat
        }));
    }
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    latencies.sort_by(|a, b| a.total_cmp(b));
    let total = sent.load(Ordering::Relaxed);
    let counted = {
        let text = oauth_token_exporter::telemetry::openmetrics_to_text(&e.exposition.render());
        let sum = |name: &str| -> f64 {
            text.lines()
                .filter(|l| l.starts_with(name) && l.contains("source=\"bench\""))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        sum("oauth_token_refreshes_total{") + sum("oauth_api_requests_total{")
    };
    println!("ingest benchmark: {clients} clients, batches of {batch_size} events, {seconds} s, {} cores", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0));
    println!();
    println!(
        "| events sent | events counted | events/s | batches/s | batch latency median | p99 |"
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| {total} | {counted} | {:.0} | {:.0} | {:.2} ms | {:.2} ms |",
        total as f64 / seconds as f64,
        latencies.len() as f64 / seconds as f64,
        latencies[latencies.len() / 2],
        latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)]
    );
    assert_eq!(counted as u64, total, "every event sent is counted once");
}
