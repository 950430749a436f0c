//! Benchmark: latency the reverse proxy adds (median, p99) against calling the simulated Xero
//! directly, and the proxy's throughput. Loopback, keep-alive, `GET /connections` (not rate
//! limited by the simulator). Then the same over TLS, as an app on an SDK sees it: the
//! simulated Xero served over TLS (a test CA) called directly, through the reverse proxy (plain
//! HTTP in, verified TLS out) and through the `CONNECT` interception (`HTTPS_PROXY`: TLS
//! terminated in the tunnel, verified TLS out), each on kept-alive connections, so the
//! interception figure is per request once the tunnel is established.
//!
//! Run: `cargo bench --bench proxy -- [requests] [seconds] [clients]` (defaults 5000, 5, 8).

use oauth_token_exporter::clock::{SharedClock, SystemClock};
use oauth_token_exporter::sim::xero::SimXero;
use oauth_token_exporter::{config, Exporter};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The proxy as the exporter serves it (the hardened loop, with its limits).
async fn serve_as_exporter(router: axum::Router) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let opts = oauth_token_exporter::http::serve::ServeOptions {
        auth_header: oauth_token_exporter::http::serve::AuthHeader::ProxyAuthorization,
        ..Default::default()
    };
    tokio::spawn(oauth_token_exporter::http::serve::serve(
        l,
        router,
        opts,
        tokio_util::sync::CancellationToken::new(),
    ));
    url
}

async fn serve(router: axum::Router) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, router).await.unwrap() });
    url
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

async fn latencies(client: &reqwest::Client, url: &str, token: &str, n: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let r = client.get(url).bearer_auth(token).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let _ = r.bytes().await.unwrap();
        out.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    out.sort_by(|a, b| a.total_cmp(b));
    out
}

#[tokio::main]
async fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .filter_map(|a| a.parse().ok())
        .collect();
    let n = args.first().copied().unwrap_or(5000) as usize;
    let seconds = args.get(1).copied().unwrap_or(5);
    let clients = args.get(2).copied().unwrap_or(8) as usize;
    oauth_token_exporter::sources::install_tls_provider();
    let clock: SharedClock = Arc::new(SystemClock);
    let x = SimXero::new(clock.clone());
    x.add_client("app", "s3cret");
    let tenant = x.add_tenant("Acme", &["alice"]);
    let tokens = x.authorize("app", "alice", &[tenant]);
    let sim = serve(x.router()).await;
    let yaml = format!("proxy:\n  identity_url: {sim}\n  api_url: {sim}\n");
    let cfg = config::parse(&yaml, "bench.yml", &|_| None).unwrap();
    let e = Exporter::new(&cfg, clock).unwrap_or_else(|e| panic!("{e}"));
    let proxy = serve_as_exporter(e.proxy_router().unwrap()).await;
    let client = reqwest::Client::new();
    let direct_url = format!("{sim}/connections");
    let proxy_url = format!("{proxy}/connections");
    // Warm up both paths, then alternate blocks to share any drift.
    latencies(&client, &direct_url, &tokens.access_token, 500).await;
    latencies(&client, &proxy_url, &tokens.access_token, 500).await;
    let (mut direct, mut proxied) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        direct.extend(latencies(&client, &direct_url, &tokens.access_token, n / 5).await);
        proxied.extend(latencies(&client, &proxy_url, &tokens.access_token, n / 5).await);
    }
    direct.sort_by(|a, b| a.total_cmp(b));
    proxied.sort_by(|a, b| a.total_cmp(b));
    // Throughput through the proxy.
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (url, token, done) = (proxy_url.clone(), tokens.access_token.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let c = reqwest::Client::new();
            while Instant::now() < deadline {
                let r = c.get(&url).bearer_auth(&token).send().await.unwrap();
                let _ = r.bytes().await.unwrap();
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let text = oauth_token_exporter::telemetry::openmetrics_to_text(&e.exposition.render());
    let counted: f64 = text
        .lines()
        .filter(|l| l.starts_with("oauth_api_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    println!("proxy benchmark: {n} sequential requests each way, then {clients} clients for {seconds} s, {} cores", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0));
    println!();
    println!("| path | median | p99 |");
    println!("|---|---|---|");
    println!(
        "| simulated Xero directly | {:.3} ms | {:.3} ms |",
        pct(&direct, 0.5),
        pct(&direct, 0.99)
    );
    println!(
        "| through the proxy | {:.3} ms | {:.3} ms |",
        pct(&proxied, 0.5),
        pct(&proxied, 0.99)
    );
    println!(
        "| added by the proxy | {:.3} ms | {:.3} ms |",
        pct(&proxied, 0.5) - pct(&direct, 0.5),
        pct(&proxied, 0.99) - pct(&direct, 0.99)
    );
    println!();
    println!(
        "throughput through the proxy: {:.0} requests/s ({} requests counted by the proxy)",
        done.load(Ordering::Relaxed) as f64 / seconds as f64,
        counted
    );
    tls_paths(&x, &tokens.access_token, n).await;
}

/// Direct TLS, the reverse proxy in front of TLS, and the interception, alternated in blocks.
async fn tls_paths(x: &SimXero, token: &str, n: usize) {
    use oauth_token_exporter::sim::tls::{serve_tls, test_tls};
    let dir = tempfile::tempdir().unwrap();
    let tls = test_tls(&["localhost"]);
    std::fs::write(dir.path().join("sim-ca.crt"), &tls.ca_pem).unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sim = format!("https://localhost:{}", l.local_addr().unwrap().port());
    tokio::spawn(serve_tls(l, x.router(), tls.server.clone()));
    let (ca, key) = oauth_token_exporter::events::intercept::create_ca(
        &["identity.xero.com".into(), "api.xero.com".into()],
        1,
    )
    .unwrap();
    std::fs::write(dir.path().join("ca.crt"), &ca).unwrap();
    std::fs::write(dir.path().join("ca.key"), key).unwrap();
    let d = dir.path().display();
    let yaml = format!(
        "proxy:\n  identity_url: {sim}\n  api_url: {sim}\n  upstream_ca_file: {d}/sim-ca.crt\n  intercept:\n    ca_cert_file: {d}/ca.crt\n    ca_key_file: {d}/ca.key\n"
    );
    let cfg = config::parse(&yaml, "bench.yml", &|_| None).unwrap();
    let clock: SharedClock = Arc::new(SystemClock);
    let e = Exporter::new(&cfg, clock).unwrap_or_else(|e| panic!("{e}"));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = format!("http://{}", l.local_addr().unwrap());
    let opts = oauth_token_exporter::http::serve::ServeOptions {
        auth_header: oauth_token_exporter::http::serve::AuthHeader::ProxyAuthorization,
        upgrades: true,
        ..Default::default()
    };
    tokio::spawn(oauth_token_exporter::http::serve::serve(
        l,
        e.proxy_router().unwrap(),
        opts,
        tokio_util::sync::CancellationToken::new(),
    ));
    let trusting = |pem: &str| {
        reqwest::Client::builder()
            .tls_certs_only(reqwest::Certificate::from_pem_bundle(pem.as_bytes()).unwrap())
    };
    let direct = trusting(&tls.ca_pem).build().unwrap();
    let reverse = reqwest::Client::new();
    let intercepted = trusting(&ca)
        .proxy(reqwest::Proxy::https(&proxy).unwrap())
        .build()
        .unwrap();
    let paths = [
        (&direct, format!("{sim}/connections")),
        (&reverse, format!("{proxy}/connections")),
        (&intercepted, "https://api.xero.com/connections".to_string()),
    ];
    for (c, url) in &paths {
        latencies(c, url, token, 500).await;
    }
    let mut got = [Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..5 {
        for (i, (c, url)) in paths.iter().enumerate() {
            got[i].extend(latencies(c, url, token, n / 5).await);
        }
    }
    for v in &mut got {
        v.sort_by(|a, b| a.total_cmp(b));
    }
    println!();
    println!("over TLS: {n} sequential keep-alive requests per path, alternated in blocks");
    println!();
    println!("| path | median | p99 | added to direct TLS, median | added, p99 |");
    println!("|---|---|---|---|---|");
    for (i, name) in [
        "simulated Xero over TLS, directly",
        "reverse proxy (plain in, TLS out)",
        "interception (HTTPS_PROXY, TLS in the tunnel and out)",
    ]
    .iter()
    .enumerate()
    {
        println!(
            "| {name} | {:.3} ms | {:.3} ms | {:.3} ms | {:.3} ms |",
            pct(&got[i], 0.5),
            pct(&got[i], 0.99),
            pct(&got[i], 0.5) - pct(&got[0], 0.5),
            pct(&got[i], 0.99) - pct(&got[0], 0.99)
        );
    }
}
