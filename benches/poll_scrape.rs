//! Benchmark: one poll and one scrape for N connections in PostgreSQL, side by side with the
//! Debian package `prometheus-sql-exporter` (0.4.5) on the same table and an equivalent query,
//! and with `psql \copy` of the raw query.
//!
//! Run: `cargo bench --bench poll_scrape -- 1000 10000 100000` (needs PostgreSQL on
//! 127.0.0.1:5432, `psql`, and optionally `prometheus-sql-exporter` on PATH).
//! Prints a table; figures are medians of `RUNS` runs.

use oauth_token_exporter::clock::{SharedClock, SystemClock};
use oauth_token_exporter::config;
use oauth_token_exporter::Exporter;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const RUNS: usize = 5;
const PG: &str = "postgres://postgres@127.0.0.1:5432/test";
const SCHEMA: &str = "ote_bench";

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn psql(sql: &str) {
    let out = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "test",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ])
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn load(n: usize) {
    psql(&format!("DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"));
    psql(&format!("CREATE SCHEMA {SCHEMA}"));
    psql(&format!(
        "CREATE TABLE {SCHEMA}.xero_tokens (id bigserial PRIMARY KEY, access_token text, refresh_token text, \
         expires_at timestamptz, tenant_id uuid, created_at timestamptz, updated_at timestamptz)"
    ));
    // Ages spread over 0..70 days; realistic token lengths (Xero access tokens are ~1.2 kB JWTs).
    psql(&format!(
        "INSERT INTO {SCHEMA}.xero_tokens (access_token, refresh_token, expires_at, tenant_id, created_at, updated_at) \
         SELECT repeat(md5(g::text), 36), md5(g::text || 'r'), now() - (g % 70) * interval '1 day' - (g % 1440) * interval '1 minute' + interval '30 minutes', \
         md5(g::text)::uuid, now() - interval '100 days', now() FROM generate_series(1, {n}) g"
    ));
    psql(&format!("VACUUM ANALYZE {SCHEMA}.xero_tokens"));
}

fn raw_copy() -> f64 {
    let t = Instant::now();
    psql(&format!(
        "\\copy (SELECT id, tenant_id, expires_at FROM {SCHEMA}.xero_tokens) TO '/dev/null'"
    ));
    ms(t.elapsed())
}

/// GET a path, reading the whole body; returns (milliseconds, body bytes).
fn http_get(port: u16, path: &str, headers: &str) -> (f64, usize) {
    let t = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n{headers}\r\n"
    )
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    (ms(t.elapsed()), buf.len())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn rss_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (kb("VmRSS:"), kb("VmHWM:"))
}

fn wait_for(port: u16, path: &str, needle: &str, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
            );
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf);
            if String::from_utf8_lossy(&buf).contains(needle) {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn config_yaml(n: usize) -> String {
    format!(
        "global:\n  poll_interval: 1h\n  poll_timeout: 60s\nsources:\n  - name: bench\n    kind: postgres\n    dsn: {PG}\n    preset: xero_tokens\n    table: {SCHEMA}.xero_tokens\n    max_connections: {n}\n"
    )
}

struct Figures {
    fetch: f64,
    poll: f64,
    encode_cold: f64,
    scrape_plain: f64,
    scrape_gzip: f64,
    bytes: usize,
    rss: (f64, f64),
}

async fn ours(n: usize, dir: &std::path::Path) -> Figures {
    // In process: poll and encode.
    let cfg = config::parse(&config_yaml(n), "bench.yml", &|_| None).unwrap();
    let clock: SharedClock = Arc::new(SystemClock);
    let mut e = Exporter::new(&cfg, clock).unwrap_or_else(|e| panic!("{e}"));
    let (mut polls, mut encodes, mut fetches) = (vec![], vec![], vec![]);
    let source = &cfg.sources[0];
    let backend = oauth_token_exporter::sources::Backend::connect(&source.store).expect("connect");
    for _ in 0..RUNS {
        let t = Instant::now();
        let fetched = backend.fetch(&source.mapping).await.expect("fetch");
        fetches.push(ms(t.elapsed()));
        drop(fetched);
        let t = Instant::now();
        assert!(e.pollers[0].poll_once().await, "poll failed");
        polls.push(ms(t.elapsed()));
        let t = Instant::now();
        let _ = e.exposition.state();
        encodes.push(ms(t.elapsed()));
    }
    drop(e);
    // As a process: HTTP scrapes and memory.
    let path = dir.join(format!("ote-{n}.yml"));
    std::fs::write(&path, config_yaml(n)).unwrap();
    let port = free_port();
    let child = Killed(
        Command::new(env!("CARGO_BIN_EXE_oauth-token-exporter"))
            .args([
                "--config.file",
                path.to_str().unwrap(),
                "--web.listen-address",
                &format!("127.0.0.1:{port}"),
                "--log.level",
                "warn",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert!(
        wait_for(port, "/-/ready", "200 OK", Duration::from_secs(120)),
        "exporter not ready"
    );
    let (mut plain, mut gz) = (vec![], vec![]);
    let mut bytes = 0;
    for _ in 0..RUNS {
        let (t, b) = http_get(port, "/metrics", "");
        plain.push(t);
        bytes = b;
        gz.push(http_get(port, "/metrics", GZIP).0);
    }
    let rss = rss_mib(child.0.id());
    Figures {
        fetch: median(fetches),
        poll: median(polls),
        encode_cold: median(encodes),
        scrape_plain: median(plain),
        scrape_gzip: median(gz),
        bytes,
        rss,
    }
}

const GZIP: &str = "Accept-Encoding: gzip\r\nAccept: application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.4\r\n";

/// The peer's query: `age` only (1 series per connection), or every value we export per
/// connection that SQL can express (5 series per connection).
fn peer_query(full: bool) -> String {
    if full {
        format!("    labels: [connection, tenant]\n    values: [last_refresh, age, expiry, expired, access_expiry]\n    query: |\n      SELECT id::text AS connection, tenant_id::text AS tenant, extract(epoch from expires_at - interval '30 minutes')::float8 AS last_refresh, extract(epoch from now() - (expires_at - interval '30 minutes'))::float8 AS age, extract(epoch from expires_at - interval '30 minutes' + interval '60 days')::float8 AS expiry, (expires_at - interval '30 minutes' + interval '60 days' < now())::int::float8 AS expired, extract(epoch from expires_at)::float8 AS access_expiry FROM {SCHEMA}.xero_tokens\n")
    } else {
        format!("    labels: [connection, tenant]\n    values: [age]\n    query: |\n      SELECT id::text AS connection, tenant_id::text AS tenant, extract(epoch from now() - (expires_at - interval '30 minutes'))::float8 AS age FROM {SCHEMA}.xero_tokens\n")
    }
}

struct Peer {
    plain: f64,
    gzip: f64,
    bytes: usize,
    rss: (f64, f64),
}

/// prometheus-sql-exporter on the same table.
fn peer(n: usize, dir: &std::path::Path, full: bool) -> Option<Peer> {
    if std::env::var("OTE_BENCH_PEER").is_ok_and(|v| v == "0") {
        return None;
    }
    if Command::new("prometheus-sql-exporter")
        .arg("-version")
        .output()
        .is_err()
    {
        eprintln!("prometheus-sql-exporter not installed (apt-get install prometheus-sql-exporter); skipping the peer");
        return None;
    }
    let path = dir.join(format!("sql-{n}.yml"));
    std::fs::write(
        &path,
        format!(
            "jobs:\n- name: xero\n  interval: 1h\n  connections:\n  - '{PG}?sslmode=disable'\n  queries:\n  - name: refresh_token\n    help: Refresh-token state\n{}",
            peer_query(full)
        ),
    )
    .unwrap();
    let port = free_port();
    let child = Killed(
        Command::new("prometheus-sql-exporter")
            .args([
                "-config.file",
                path.to_str().unwrap(),
                "-web.listen-address",
                &format!("127.0.0.1:{port}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    if !wait_for(
        port,
        "/metrics",
        "sql_refresh_token{",
        Duration::from_secs(180),
    ) {
        eprintln!("prometheus-sql-exporter never exported the query");
        return None;
    }
    let (mut plain, mut gzip) = (vec![], vec![]);
    let mut bytes = 0;
    for _ in 0..RUNS {
        let (t, b) = http_get(port, "/metrics", "");
        plain.push(t);
        bytes = b;
        gzip.push(http_get(port, "/metrics", GZIP).0);
    }
    Some(Peer {
        plain: median(plain),
        gzip: median(gzip),
        bytes,
        rss: rss_mib(child.0.id()),
    })
}

#[tokio::main]
async fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![1_000, 10_000, 100_000]
    } else {
        sizes
    };
    let dir = tempfile::tempdir().unwrap();
    println!("oauth-token-exporter benchmark: PostgreSQL, preset xero_tokens, medians of {RUNS} runs, {} cores", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0));
    println!("Scrapes are Prometheus-like (gzip, OpenMetrics accepted) unless marked plain.");
    let mut ours_rows = vec![];
    let mut peer_rows = vec![];
    for n in sizes {
        load(n);
        let raw = median((0..RUNS).map(|_| raw_copy()).collect());
        let o = ours(n, dir.path()).await;
        ours_rows.push(format!(
            "| {n} | {raw:.0} ms | {:.0} ms | {:.0} ms | {:.2}x | {:.0} ms | {:.1} ms | {:.1} ms | {:.1} MiB | {:.0} MiB ({:.0}) |",
            o.fetch, o.poll, o.poll / raw, o.encode_cold, o.scrape_gzip, o.scrape_plain,
            o.bytes as f64 / 1048576.0, o.rss.0, o.rss.1,
        ));
        for (full, what) in [(false, "1 series/conn (age)"), (true, "5 series/conn")] {
            if let Some(p) = peer(n, dir.path(), full) {
                peer_rows.push(format!(
                    "| {n} | {what} | {:.0} ms | {:.0} ms | {:.1} MiB | {:.0} MiB ({:.0}) | {:.0}x | {:.0}x | 1/{:.1} |",
                    p.gzip, p.plain, p.bytes as f64 / 1048576.0, p.rss.0, p.rss.1,
                    p.gzip / o.scrape_gzip, p.plain / o.scrape_plain, p.rss.0 / o.rss.0,
                ));
            }
        }
    }
    println!();
    println!("oauth-token-exporter (10 series per connection):");
    println!();
    println!("| connections | raw psql \\copy | fetch (rows decoded) | poll (fetch + map + swap) | poll / raw | encode+deflate per poll | scrape | scrape plain | plain body | RSS (peak) |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in ours_rows {
        println!("{r}");
    }
    println!();
    println!("prometheus-sql-exporter 0.4.5 on the same table, and our advantage:");
    println!();
    println!("| connections | query | scrape | scrape plain | plain body | RSS (peak) | scrape: ours faster | plain: ours faster | our RSS |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in peer_rows {
        println!("{r}");
    }
    psql(&format!("DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"));
}
