//! Operating the real binary as an SRE would: reading the config again (SIGHUP, `POST
//! /-/reload`) without losing counters, cursors or snapshots; every terminating signal saving
//! what was acknowledged; the exporter's own process metrics; several listen addresses.

mod common;
use common::*;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const TOKEN: &str = "operate-ingest-token-0123456789";

struct Binary {
    child: Option<Child>,
    port: u16,
}

impl Drop for Binary {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Binary {
    async fn start(config: &std::path::Path, args: &[&str]) -> Binary {
        oauth_token_exporter::sources::install_tls_provider();
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_oauth-token-exporter"))
            .arg("--config.file")
            .arg(config)
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .args(args)
            .env("OTE_OPERATE_INGEST", TOKEN)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let b = Binary {
            child: Some(child),
            port,
        };
        b.until("it answers", |t| !t.is_empty()).await;
        b
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    async fn metrics(&self) -> String {
        match reqwest::get(format!("http://127.0.0.1:{}/metrics", self.port)).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    async fn until(&self, what: &str, check: impl Fn(&str) -> bool) -> String {
        for _ in 0..200 {
            let text = self.metrics().await;
            if check(&text) {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{what}: not within 10 s:\n{}", self.metrics().await);
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig}");
    }

    /// Wait for the process to end; its exit code.
    fn exit(&mut self) -> Option<i32> {
        let mut c = self.child.take().unwrap();
        for _ in 0..200 {
            if let Some(s) = c.try_wait().unwrap() {
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        panic!("the exporter did not stop");
    }

    async fn post_failures(&self, n: usize) {
        let events: Vec<serde_json::Value> = (0..n)
            .map(|i| serde_json::json!({"type": "refresh", "connection": format!("c{i}"), "outcome": "failure", "error": "invalid_grant"}))
            .collect();
        let r = reqwest::Client::new()
            .post(format!("http://127.0.0.1:{}/api/v1/events", self.port))
            .bearer_auth(TOKEN)
            .json(&serde_json::json!({ "events": events }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
}

fn failures(text: &str, source: &str) -> Option<f64> {
    sample(
        text,
        "oauth_token_refresh_failures_total",
        &[("source", source), ("error", "invalid_grant")],
    )
}

/// A world: an SQLite store with token rows and an event table, and the config's pieces.
struct World {
    dir: tempfile::TempDir,
    db: String,
    pool: sqlx::SqlitePool,
}

impl World {
    async fn new() -> World {
        let (dir, path, pool) = sqlite_db(&[
            "CREATE TABLE tokens (id TEXT, expires_at TEXT)",
            "INSERT INTO tokens VALUES ('a1', '2099-01-01T00:00:00Z'), ('a2', '2099-01-01T00:00:00Z')",
            "CREATE TABLE oauth_events (id INTEGER PRIMARY KEY, type TEXT, connection TEXT, outcome TEXT, error TEXT)",
        ])
        .await;
        World {
            db: path.display().to_string(),
            dir,
            pool,
        }
    }

    fn source(&self, name: &str) -> String {
        format!(
            "  - {{name: {name}, kind: sqlite, dsn: {}, query: 'SELECT id, expires_at FROM tokens', infer_last_refresh: access_expires, fields: {{connection: id, access_expires: expires_at}}, interval: 200ms, timeout: 200ms}}\n",
            self.db
        )
    }

    /// Write the config: `sources`, the event table, the ingest API and persistence.
    fn write(&self, sources: &[&str]) -> std::path::PathBuf {
        let path = self.dir.path().join("config.yml");
        let srcs: String = sources.iter().map(|s| self.source(s)).collect();
        std::fs::write(
            &path,
            format!(
                "sources:\n{srcs}event_tables:\n  - {{name: app_events, kind: sqlite, dsn: {}, table: oauth_events, columns: {{outcome: outcome, error: error}}, state_file: {}, start: beginning, interval: 200ms, timeout: 200ms}}\n\
                 ingest:\n  source: app_ingest\n  token_env: OTE_OPERATE_INGEST\n\
                 persistence:\n  file: {}\n  interval: 100ms\n",
                self.db,
                self.dir.path().join("events.cursor").display(),
                self.dir.path().join("inlets.json").display()
            ),
        )
        .unwrap();
        path
    }

    async fn events(&self, n: usize) {
        for _ in 0..n {
            sqlx::query("INSERT INTO oauth_events (type, connection, outcome, error) VALUES ('refresh', 'c1', 'failure', 'invalid_grant')")
                .execute(&self.pool)
                .await
                .unwrap();
        }
    }
}

fn has_source(text: &str, source: &str) -> bool {
    sample(text, "oauth_exporter_source_up", &[("source", source)]) == Some(1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_adds_and_removes_a_source_keeping_counters_and_cursors_and_a_bad_config_keeps_the_old(
) {
    let w = World::new().await;
    let config = w.write(&["alpha"]);
    let b = Binary::start(&config, &[]).await;
    w.events(3).await;
    b.post_failures(2).await;
    b.until("the table and the API counted", |t| {
        failures(t, "app_events") == Some(3.0)
            && failures(t, "app_ingest") == Some(2.0)
            && has_source(t, "alpha")
    })
    .await;
    // Add beta, remove alpha.
    w.write(&["beta"]);
    b.signal("HUP");
    let text = b
        .until("beta polled, alpha gone", |t| {
            has_source(t, "beta") && !t.contains("source=\"alpha\"")
        })
        .await;
    assert_eq!(
        failures(&text, "app_events"),
        Some(3.0),
        "the table's counters kept"
    );
    assert_eq!(
        failures(&text, "app_ingest"),
        Some(2.0),
        "the API's counters kept"
    );
    assert_eq!(
        sample(&text, "oauth_exporter_config_last_reload_successful", &[]),
        Some(1.0)
    );
    // The cursor continues: new rows count once, old ones never again.
    w.events(2).await;
    b.until("two more table events", |t| {
        failures(t, "app_events") == Some(5.0)
    })
    .await;
    // A config with a problem is refused; the running one stays.
    std::fs::write(&config, "sources:\n  - {name: broken, kind: oracle}\n").unwrap();
    b.signal("HUP");
    let text = b
        .until("the reload refused", |t| {
            sample(t, "oauth_exporter_config_last_reload_successful", &[]) == Some(0.0)
        })
        .await;
    assert!(has_source(&text, "beta"), "{text}");
    b.post_failures(1).await;
    b.until("the API still counts", |t| {
        failures(t, "app_ingest") == Some(3.0)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        failures(&b.metrics().await, "app_events"),
        Some(5.0),
        "nothing counted twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_reload_answers_whether_the_config_applied_and_is_refused_without_the_lifecycle_flag()
{
    let w = World::new().await;
    let config = w.write(&["alpha"]);
    let b = Binary::start(&config, &["--web.enable-lifecycle"]).await;
    let http = reqwest::Client::new();
    let reload = || async {
        let r = http
            .post(format!("http://127.0.0.1:{}/-/reload", b.port))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    w.write(&["alpha", "beta"]);
    assert_eq!(reload().await, (200, "Reloaded\n".to_string()));
    b.until("beta polled", |t| {
        has_source(t, "beta") && has_source(t, "alpha")
    })
    .await;
    std::fs::write(&config, "sources:\n  - {name: broken, kind: oracle}\n").unwrap();
    let (status, body) = reload().await;
    assert_eq!(status, 500);
    assert!(
        body.contains("sources[0].kind: unknown variant `oracle`"),
        "{body}"
    );
    drop(b);
    let b = Binary::start(&w.write(&["alpha"]), &[]).await;
    let r = http
        .post(format!("http://127.0.0.1:{}/-/reload", b.port))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

/// Every signal that would end the process ends it cleanly: what the API acknowledged is in the
/// persistence file and comes back at the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_terminating_signal_saves_what_was_acknowledged() {
    let w = World::new().await;
    let config = w.write(&[]);
    let mut expected = 0.0;
    for sig in ["TERM", "INT", "QUIT", "USR1", "USR2", "ALRM"] {
        let mut b = Binary::start(&config, &[]).await;
        assert_eq!(
            failures(&b.metrics().await, "app_ingest"),
            Some(expected),
            "restored before {sig}"
        );
        b.post_failures(1).await;
        expected += 1.0;
        // At once: no save interval passes before the signal.
        b.signal(sig);
        assert_eq!(b.exit(), Some(0), "SIG{sig} ends the process cleanly");
    }
    let b = Binary::start(&config, &[]).await;
    assert_eq!(failures(&b.metrics().await, "app_ingest"), Some(6.0));
    // SIGHUP does not end it.
    b.signal("HUP");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!b.metrics().await.is_empty(), "still serving after SIGHUP");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_metrics_agree_with_proc_and_several_listen_addresses_serve() {
    let w = World::new().await;
    let config = w.write(&["alpha"]);
    let second = free_port();
    let b = Binary::start(
        &config,
        &[&format!("--web.listen-address=127.0.0.1:{second}")],
    )
    .await;
    let text = b.until("alpha polled", |t| has_source(t, "alpha")).await;
    let rss = sample(&text, "process_resident_memory_bytes", &[]).unwrap();
    let status = std::fs::read_to_string(format!("/proc/{}/status", b.pid())).unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .parse()
        .unwrap();
    let proc_rss = kb * 1024.0;
    assert!(
        (rss - proc_rss).abs() / proc_rss < 0.05,
        "process_resident_memory_bytes {rss} vs /proc {proc_rss}"
    );
    // CPU time is counted in clock ticks: scrape until one has passed, then compare with /proc.
    let mut cpu = sample(&text, "process_cpu_seconds_total", &[]).unwrap();
    for _ in 0..200 {
        if cpu > 0.0 {
            break;
        }
        cpu = sample(&b.metrics().await, "process_cpu_seconds_total", &[]).unwrap();
    }
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", b.pid())).unwrap();
    let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
    let ticks: Vec<f64> = after_comm
        .split(' ')
        .skip(11)
        .take(2)
        .map(|v| v.parse().unwrap())
        .collect();
    let proc_cpu = (ticks[0] + ticks[1]) / 100.0;
    assert!(
        cpu > 0.0 && cpu <= proc_cpu + 0.011,
        "process_cpu_seconds_total {cpu} vs /proc {proc_cpu}"
    );
    assert!(sample(&text, "process_open_fds", &[]).unwrap() > 3.0);
    assert!(sample(&text, "process_max_fds", &[]).unwrap() >= 1024.0);
    let start = sample(&text, "process_start_time_seconds", &[]).unwrap();
    let now = chrono::Utc::now().timestamp() as f64;
    assert!(
        now - start < 120.0 && now >= start - 2.0,
        "start {start} now {now}"
    );
    // The second address serves the same, and the first scrape was measured.
    let other = get_text(&format!("http://127.0.0.1:{second}/metrics")).await;
    assert!(
        other.contains("oauth_exporter_source_up{source=\"alpha\"} 1"),
        "{other}"
    );
    assert!(
        sample(&other, "oauth_exporter_scrape_duration_seconds_count", &[]).unwrap() >= 1.0,
        "{other}"
    );
}
