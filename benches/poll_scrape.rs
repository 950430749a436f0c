//! Benchmark of the real binary polling a store and serving `/metrics`, side by side with the
//! raw query in the same run and with the Debian package `prometheus-sql-exporter` (0.4.5).
//!
//! Run: `cargo bench --bench poll_scrape -- [scenario ...]` with scenarios
//! `pg-100k` (100,000 connections, uncapped), `pg-100k-churn` (the same while 1% of the
//! connections are refreshed between two polls, as a live fleet is), `pg-1m` (1,000,000, cap 10,000), `sqlite-1m`
//! (1,000,000 in SQLite, cap 10,000), `pg-1m-uncapped` (the scrape that arrives during an
//! encode) and `peer-100k` (prometheus-sql-exporter on the 100,000 table); default: all. Needs
//! PostgreSQL on 127.0.0.1:5432, `psql`, `sqlite3`, and for the peer
//! `apt-get install prometheus-sql-exporter`. `OTE_BENCH_BIN` runs another build of the
//! exporter (an earlier commit's, for before/after figures; it implies `OTE_BENCH_WATCH=scrape` unless
//! `OTE_BENCH_WATCH=log` says the build has that line;
//! which sees poll ends by scraping, for builds without the "Source polled." line: compare
//! two builds both that way, as the scrapes cost CPU too); `OTE_BENCH_RUNS` sets the runs.
//!
//! For each scenario and run the exporter polls every few seconds; at each poll's end (its
//! "Source polled." debug line, or for builds without it sqlx's statement line) the harness
//! reads the process's CPU time and memory from /proc. Between two poll ends lies exactly one
//! poll and the encode + deflate it caused: that is the *CPU per poll cycle*. *Steady RSS* is
//! the resident memory at the end of the 6th poll (after 5 full cycles), *high-water* the
//! process's peak (VmHWM) at the end. Figures are medians over the cycles of a run, then over
//! runs; the raw query is timed in the same run, by psql's own `\timing` (and `sqlite3`'s
//! `.timer`) and as a whole `psql \copy` process.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const PG: &str = "postgres://postgres@127.0.0.1:5432/test";
const SCHEMA: &str = "ote_bench";
/// Poll cycles measured per run (the first poll is not one: it opens the connection).
const CYCLES: usize = 6;

fn runs() -> usize {
    std::env::var("OTE_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn psql_out(args: &[&str], sql: &str) -> String {
    let out = Command::new("psql")
        .args([
            "-X",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "test",
            "-q",
        ])
        .args(["-v", "ON_ERROR_STOP=1"])
        .args(args)
        .arg("-c")
        .arg(sql)
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn psql(sql: &str) {
    psql_out(&[], sql);
}

/// `n` rows of the flat table of XERO.md, ages spread over 0..70 days, realistic token lengths
/// (Xero access tokens are ~1.2 kB JWTs).
fn load_pg(n: usize) {
    psql(&format!("DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"));
    psql(&format!("CREATE SCHEMA {SCHEMA}"));
    psql(&format!(
        "CREATE TABLE {SCHEMA}.xero_tokens (id bigserial PRIMARY KEY, access_token text, refresh_token text, \
         expires_at timestamptz, tenant_id uuid, created_at timestamptz, updated_at timestamptz)"
    ));
    psql(&format!(
        "INSERT INTO {SCHEMA}.xero_tokens (access_token, refresh_token, expires_at, tenant_id, created_at, updated_at) \
         SELECT repeat(md5(g::text), 36), md5(g::text || 'r'), now() - (g % 70) * interval '1 day' - (g % 1440) * interval '1 minute' + interval '30 minutes', \
         md5(g::text)::uuid, now() - interval '100 days', now() FROM generate_series(1, {n}) g"
    ));
    psql(&format!("VACUUM ANALYZE {SCHEMA}.xero_tokens"));
}

const QUERY: &str = "SELECT id, tenant_id, expires_at FROM";

/// The preset's query, timed by psql's `\timing` (the query and the transfer of its rows; not
/// psql's start or its printing), in ms.
fn raw_pg_timing() -> f64 {
    let out = psql_out(
        &["-c", "\\timing on", "-c", "\\o /dev/null"],
        &format!("{QUERY} {SCHEMA}.xero_tokens"),
    );
    out.lines()
        .find_map(|l| l.strip_prefix("Time: "))
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .expect("psql printed its timing")
}

/// The preset's query as a whole `psql \copy` to /dev/null (process start included), in ms.
fn raw_pg_copy() -> f64 {
    let t = Instant::now();
    psql(&format!(
        "\\copy ({QUERY} {SCHEMA}.xero_tokens) TO '/dev/null'"
    ));
    ms(t.elapsed())
}

/// `n` rows in SQLite as an app writes them: text timestamps, text tenant ids.
fn load_sqlite(path: &std::path::Path, n: usize) {
    let _ = std::fs::remove_file(path);
    let sql = format!(
        "PRAGMA journal_mode=WAL;\n\
         CREATE TABLE xero_tokens (id INTEGER PRIMARY KEY, access_token TEXT, refresh_token TEXT, expires_at DATETIME, tenant_id TEXT, created_at DATETIME, updated_at DATETIME);\n\
         WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < {n})\n\
         INSERT INTO xero_tokens SELECT i, printf('%.1200c', 'a'), hex(randomblob(16)), \
         strftime('%Y-%m-%d %H:%M:%S', 'now', '-' || (i % 70) || ' days', '-' || (i % 1440) || ' minutes', '+30 minutes'), \
         lower(hex(randomblob(16))), datetime('now', '-100 days'), datetime('now') FROM g;\n"
    );
    let mut child = Command::new("sqlite3")
        .arg(path)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("sqlite3 (apt-get install sqlite3)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(sql.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
}

/// The preset's query by `sqlite3`'s own `.timer` (output to /dev/null), and as a whole
/// process, in ms.
fn raw_sqlite(path: &std::path::Path) -> (f64, f64) {
    let t = Instant::now();
    let mut child = Command::new("sqlite3")
        .arg(path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!(".timer on\n.output /dev/null\n{QUERY} xero_tokens;\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let wall = ms(t.elapsed());
    let text = String::from_utf8_lossy(&out.stdout);
    let real = text
        .lines()
        .find_map(|l| l.strip_prefix("Run Time: real "))
        .and_then(|t| t.split_whitespace().next()?.parse::<f64>().ok())
        .expect("sqlite3 printed its timer")
        * 1000.0;
    (real, wall)
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

const GZIP: &str = "Accept-Encoding: gzip\r\nAccept: application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.4\r\n";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// (VmRSS, VmHWM) in MiB.
fn memory(pid: u32) -> (f64, f64) {
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

/// User + system CPU time of a process and its threads, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at state (field 3).
    let rest = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime is field 14, stime 15: indexes 11 and 12 after the state.
    (ticks(11) + ticks(12)) / clock_ticks()
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        let out = Command::new("getconf").arg("CLK_TCK").output();
        out.ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
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

fn binary() -> String {
    std::env::var("OTE_BENCH_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_oauth-token-exporter").into())
}

/// One run of the exporter as a process.
#[derive(Default)]
struct Run {
    /// The exporter's own poll durations (fetch + map + swap), ms.
    polls: Vec<f64>,
    /// CPU per poll cycle (a poll and the encode it caused), ms.
    cycles: Vec<f64>,
    /// Resident memory at each poll's end, MiB.
    rss: Vec<f64>,
    hwm: f64,
    warm_gzip: f64,
    gzip_bytes: usize,
    /// A gzip scrape sent the moment a poll ended (its encode running), ms.
    during_encode: Option<f64>,
}

/// A poll's end in the log: the "Source polled." debug line, with its duration.
fn poll_end(line: &str) -> Option<Option<f64>> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let fields = &v["fields"];
    (fields["message"] == "Source polled.").then(|| fields["seconds"].as_f64().map(|s| s * 1000.0))
}

/// A gauge of source `bench` in an exposition.
fn gauge(text: &str, name: &str) -> Option<f64> {
    let prefix = format!("{name}{{source=\"bench\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

/// For builds without the "Source polled." line (`OTE_BENCH_BIN`): a poll's end is seen by
/// scraping (gzip, as Prometheus does) every 100 ms until the last-success time moves; the
/// poll's duration is the exported one. Sends (poll ms, scrape ms) per poll end.
fn watch_by_scraping(port: u16, tx: mpsc::Sender<(Option<f64>, f64)>) {
    let mut last = None;
    loop {
        let t = Instant::now();
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
            return;
        };
        let _ = write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n{GZIP}\r\n"
        );
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        let took = ms(t.elapsed());
        let Some(split) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        let mut text = String::new();
        let _ = flate2::read::GzDecoder::new(&buf[split + 4..]).read_to_string(&mut text);
        let success = gauge(
            &text,
            "oauth_exporter_source_last_success_timestamp_seconds",
        );
        if success.is_some() && success != last {
            last = success;
            let poll = gauge(&text, "oauth_exporter_source_duration_seconds").map(|s| s * 1000.0);
            if tx.send((poll, took)).is_err() {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Refreshes `n` random connections of the PostgreSQL table every `interval` until `stop`
/// (their expiry and update time move, as the host app's refresh writes them).
fn churn(
    n: usize,
    rows: usize,
    interval: Duration,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    std::thread::spawn(move || {
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            // Not asserted: the table may be dropped under the last one.
            let _ = Command::new("psql")
                .args(["-X", "-q", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-c"])
                .arg(format!(
                    "UPDATE {SCHEMA}.xero_tokens SET expires_at = now() + interval '30 minutes', updated_at = now() \
                     WHERE id IN (SELECT 1 + (random() * {})::bigint FROM generate_series(1, {n}))",
                    rows - 1
                ))
                .stdout(Stdio::null())
                .status();
            std::thread::sleep(interval);
        }
    });
}

fn run_exporter(
    config: &str,
    dir: &std::path::Path,
    interval: Duration,
    scrape_during: bool,
    churned: Option<(usize, usize)>,
) -> Run {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    struct Stop(std::sync::Arc<std::sync::atomic::AtomicBool>);
    impl Drop for Stop {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
    let _stop = Stop(stop.clone());
    if let Some((n, rows)) = churned {
        churn(n, rows, interval, stop);
    }
    let path = dir.join("ote.yml");
    std::fs::write(&path, config).unwrap();
    let port = free_port();
    let mut child = Command::new(binary())
        .args(["--config.file", path.to_str().unwrap()])
        .args(["--web.listen-address", &format!("127.0.0.1:{port}")])
        .args(["--log.level", "debug", "--log.format", "json"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let child = Killed(child);
    let pid = child.0.id();
    let (tx, rx) = mpsc::channel();
    let by_scraping = match std::env::var("OTE_BENCH_WATCH").as_deref() {
        Ok("scrape") => true,
        Ok("log") => false,
        _ => std::env::var("OTE_BENCH_BIN").is_ok(),
    };
    if by_scraping {
        assert!(wait_for(
            port,
            "/-/healthy",
            "200 OK",
            Duration::from_secs(60)
        ));
        std::thread::spawn(move || watch_by_scraping(port, tx));
        std::thread::spawn(move || {
            std::io::copy(&mut BufReader::new(stderr), &mut std::io::sink())
        });
    } else {
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(took) = poll_end(&line) {
                    if tx.send((took, 0.0)).is_err() {
                        break;
                    }
                }
            }
        });
    }
    let mut run = Run::default();
    let mut last_cpu = None;
    let mut slowest_watch: f64 = 0.0;
    for n in 0..=CYCLES {
        let (took, watch_scrape) = rx
            .recv_timeout(interval * 4 + Duration::from_secs(600))
            .expect("the exporter polls");
        let cpu = cpu_seconds(pid);
        let (rss, _) = memory(pid);
        if n >= 1 {
            if let Some(t) = took {
                run.polls.push(t);
            }
            slowest_watch = slowest_watch.max(watch_scrape);
        }
        if let Some(prev) = last_cpu {
            run.cycles.push((cpu - prev) * 1000.0);
        }
        last_cpu = Some(cpu);
        run.rss.push(rss);
        if scrape_during && n == 2 && !by_scraping {
            run.during_encode = Some(http_get(port, "/metrics", GZIP).0);
        }
    }
    if scrape_during && by_scraping {
        // The watcher's scrape that saw a poll's end arrived during its encode.
        run.during_encode = Some(slowest_watch);
    }
    let (mut warm, mut bytes) = (vec![], 0);
    for _ in 0..5 {
        let (t, b) = http_get(port, "/metrics", GZIP);
        warm.push(t);
        bytes = b;
    }
    run.warm_gzip = median(warm);
    run.gzip_bytes = bytes;
    run.hwm = memory(pid).1;
    run
}

fn exporter_config(kind: &str, dsn: &str, table: &str, cap: usize, interval: Duration) -> String {
    format!(
        "global:\n  poll_interval: {0}s\n  poll_timeout: {0}s\nsources:\n  - name: bench\n    kind: {kind}\n    dsn: {dsn}\n    preset: xero_tokens\n    table: {table}\n    max_connections: {cap}\n",
        interval.as_secs()
    )
}

/// Medians over runs of each run's median (or single value).
struct Figures {
    raw_timing: f64,
    raw_wall: f64,
    poll: f64,
    cycle_cpu: f64,
    rss_steady: f64,
    hwm: f64,
    warm_gzip: f64,
    gzip_mib: f64,
    during_encode: Option<f64>,
}

fn measure(
    runs: usize,
    raw: &dyn Fn() -> (f64, f64),
    config: &str,
    dir: &std::path::Path,
    interval: Duration,
    scrape_during: bool,
    churned: Option<(usize, usize)>,
) -> Figures {
    let (mut rt, mut rw, mut poll, mut cyc, mut rss, mut hwm, mut warm, mut during) = (
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
    );
    let mut bytes = 0;
    for r in 0..runs {
        let (t, w) = raw();
        rt.push(t);
        rw.push(w);
        let run = run_exporter(config, dir, interval, scrape_during, churned);
        eprintln!(
            "  run {}: polls {:?} ms, cycle CPU {:?} ms, RSS at poll ends {:?} MiB, high-water {:.0} MiB, raw {t:.0} ms",
            r + 1,
            run.polls.iter().map(|v| v.round()).collect::<Vec<_>>(),
            run.cycles.iter().map(|v| v.round()).collect::<Vec<_>>(),
            run.rss.iter().map(|v| v.round()).collect::<Vec<_>>(),
            run.hwm
        );
        poll.push(median(run.polls.clone()));
        cyc.push(median(run.cycles.clone()));
        rss.push(*run.rss.get(CYCLES).unwrap_or(&f64::NAN));
        hwm.push(run.hwm);
        warm.push(run.warm_gzip);
        bytes = run.gzip_bytes;
        if let Some(d) = run.during_encode {
            during.push(d);
        }
    }
    Figures {
        raw_timing: median(rt),
        raw_wall: median(rw),
        poll: median(poll),
        cycle_cpu: median(cyc),
        rss_steady: median(rss),
        hwm: median(hwm),
        warm_gzip: median(warm),
        gzip_mib: bytes as f64 / 1048576.0,
        during_encode: (!during.is_empty()).then(|| median(during)),
    }
}

fn print_row(name: &str, f: &Figures) {
    println!(
        "| {name} | {:.0} ms | {:.0} ms | {:.0} ms | {:.2}x | {:.0} ms | {:.2}x | {:.0} MiB | {:.0} MiB | {:.1} ms | {:.1} MiB | {} |",
        f.raw_timing,
        f.raw_wall,
        f.poll,
        f.poll / f.raw_timing,
        f.cycle_cpu,
        f.cycle_cpu / f.raw_timing,
        f.rss_steady,
        f.hwm,
        f.warm_gzip,
        f.gzip_mib,
        f.during_encode
            .map(|d| format!("{d:.1} ms ({:.2}x warm)", d / f.warm_gzip))
            .unwrap_or_else(|| "-".into()),
    );
}

/// The peer's query: every value we export per connection that SQL can express (5 series per
/// connection).
fn peer_query() -> String {
    format!("    labels: [connection, tenant]\n    values: [last_refresh, age, expiry, expired, access_expiry]\n    query: |\n      SELECT id::text AS connection, tenant_id::text AS tenant, extract(epoch from expires_at - interval '30 minutes')::float8 AS last_refresh, extract(epoch from now() - (expires_at - interval '30 minutes'))::float8 AS age, extract(epoch from expires_at - interval '30 minutes' + interval '60 days')::float8 AS expiry, (expires_at - interval '30 minutes' + interval '60 days' < now())::int::float8 AS expired, extract(epoch from expires_at)::float8 AS access_expiry FROM {SCHEMA}.xero_tokens\n")
}

/// prometheus-sql-exporter on the same table: (gzip scrape ms, RSS MiB).
fn peer(dir: &std::path::Path) -> Option<(f64, f64)> {
    if Command::new("prometheus-sql-exporter")
        .arg("-version")
        .output()
        .is_err()
    {
        eprintln!("prometheus-sql-exporter not installed (apt-get install prometheus-sql-exporter); skipping the peer");
        return None;
    }
    let path = dir.join("sql.yml");
    std::fs::write(
        &path,
        format!(
            "jobs:\n- name: xero\n  interval: 1h\n  connections:\n  - '{PG}?sslmode=disable'\n  queries:\n  - name: refresh_token\n    help: Refresh-token state\n{}",
            peer_query()
        ),
    )
    .unwrap();
    let port = free_port();
    let child = Killed(
        Command::new("prometheus-sql-exporter")
            .args(["-config.file", path.to_str().unwrap()])
            .args(["-web.listen-address", &format!("127.0.0.1:{port}")])
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
    let gzip = median((0..5).map(|_| http_get(port, "/metrics", GZIP).0).collect());
    Some((gzip, memory(child.0.id()).0))
}

fn main() {
    let all = [
        "pg-100k",
        "pg-100k-churn",
        "pg-1m",
        "sqlite-1m",
        "pg-1m-uncapped",
        "peer-100k",
    ];
    let mut wanted: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if wanted.is_empty() {
        wanted = all.iter().map(|s| s.to_string()).collect();
    }
    for w in &wanted {
        assert!(
            all.contains(&w.as_str()),
            "unknown scenario {w}; one of {all:?}"
        );
    }
    let runs = runs();
    let dir = tempfile::tempdir().unwrap();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    println!("oauth-token-exporter poll_scrape benchmark: {} ({runs} runs, {CYCLES} poll cycles each, {cores} cores)", binary());
    let mut rows = vec![];
    let mut loaded = 0;
    let pg = |n: usize, loaded: &mut usize| {
        if *loaded != n {
            load_pg(n);
            *loaded = n;
        }
    };
    let table = format!("{SCHEMA}.xero_tokens");
    let raw_pg = || (raw_pg_timing(), raw_pg_copy());
    let mut ours_100k = None;
    for w in &wanted {
        eprintln!("{w}:");
        match w.as_str() {
            "pg-100k" => {
                pg(100_000, &mut loaded);
                let interval = Duration::from_secs(3);
                let cfg = exporter_config("postgres", PG, &table, 100_000, interval);
                let f = measure(runs, &raw_pg, &cfg, dir.path(), interval, false, None);
                ours_100k = Some(f.warm_gzip);
                rows.push(("PostgreSQL, 100,000, uncapped".to_string(), f));
            }
            "pg-100k-churn" => {
                pg(100_000, &mut loaded);
                let interval = Duration::from_secs(3);
                let cfg = exporter_config("postgres", PG, &table, 100_000, interval);
                let churned = Some((1_000, 100_000));
                let f = measure(runs, &raw_pg, &cfg, dir.path(), interval, false, churned);
                rows.push((
                    "PostgreSQL, 100,000, uncapped, 1% refreshed between polls".to_string(),
                    f,
                ));
                // The table is no longer as loaded.
                loaded = 0;
            }
            "pg-1m" => {
                pg(1_000_000, &mut loaded);
                let interval = Duration::from_secs(6);
                let cfg = exporter_config("postgres", PG, &table, 10_000, interval);
                let f = measure(runs, &raw_pg, &cfg, dir.path(), interval, false, None);
                rows.push(("PostgreSQL, 1,000,000, cap 10,000".to_string(), f));
            }
            "sqlite-1m" => {
                let db = dir.path().join("bench.db");
                load_sqlite(&db, 1_000_000);
                let interval = Duration::from_secs(4);
                let cfg = exporter_config(
                    "sqlite",
                    db.to_str().unwrap(),
                    "xero_tokens",
                    10_000,
                    interval,
                );
                let raw = || raw_sqlite(&db);
                let f = measure(runs, &raw, &cfg, dir.path(), interval, false, None);
                rows.push(("SQLite, 1,000,000, cap 10,000".to_string(), f));
            }
            "pg-1m-uncapped" => {
                pg(1_000_000, &mut loaded);
                let interval = Duration::from_secs(30);
                let cfg = exporter_config("postgres", PG, &table, 1_000_000, interval);
                let f = measure(1, &raw_pg, &cfg, dir.path(), interval, true, None);
                rows.push(("PostgreSQL, 1,000,000, uncapped".to_string(), f));
            }
            "peer-100k" => {
                pg(100_000, &mut loaded);
                if let Some((gzip, rss)) = peer(dir.path()) {
                    let ours = ours_100k
                        .map(|o| format!("{:.0}x faster", gzip / o))
                        .unwrap_or_else(|| "(run pg-100k too)".into());
                    println!("\nprometheus-sql-exporter 0.4.5, 100,000 connections, 5 series per connection: gzip scrape {gzip:.0} ms, RSS {rss:.0} MiB; our gzip scrape: {ours}");
                }
            }
            _ => unreachable!(),
        }
    }
    println!();
    println!("| scenario | raw query (own timer) | raw query (whole psql/sqlite3) | our poll | poll / raw | CPU per poll cycle (poll + encode) | CPU / raw | steady RSS (after 5 polls) | high-water | warm gzip scrape | gzip body | gzip scrape during an encode |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (name, f) in &rows {
        print_row(name, f);
    }
    psql(&format!("DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"));
}
