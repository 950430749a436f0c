//! Events are never lost or double counted: across `kill -9` of the real binary the event
//! table's cursor and counters continue from the state file; a state file on a full disk fails
//! the poll (the process keeps serving) and recovers without counting anything twice.

mod common;
use common::*;
use std::process::{Command, Stdio};
use std::time::Duration;

const EVENTS: &str = "CREATE TABLE oauth_events (id INTEGER PRIMARY KEY, type TEXT, connection TEXT, tenant TEXT, time TEXT, outcome TEXT, error TEXT, status INTEGER, detail TEXT, rate_limit_problem TEXT)";

fn insert(n: usize, error: &str) -> String {
    let rows: Vec<String> = (0..n)
        .map(|i| format!("('refresh', 'c{i}', 'failure', '{error}')"))
        .collect();
    format!(
        "INSERT INTO oauth_events (type, connection, outcome, error) VALUES {}",
        rows.join(", ")
    )
}

async fn metric(port: u16, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    sample(&text, name, labels)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_the_event_counters_continue_and_nothing_is_counted_twice() {
    oauth_token_exporter::sources::install_tls_provider();
    let (d, db, pool) = sqlite_db(&[EVENTS]).await;
    let config = d.path().join("c.yml");
    std::fs::write(
        &config,
        format!(
            "event_tables:\n  - {{name: ev, kind: sqlite, dsn: {}, table: oauth_events, state_file: {}, start: beginning, interval: 1s, timeout: 1s, batch: 7}}\n",
            db.display(),
            d.path().join("ev.cursor").display()
        ),
    )
    .unwrap();
    let start = || {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(env!("CARGO_BIN_EXE_oauth-token-exporter"))
            .arg("--config.file")
            .arg(&config)
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        (child, port)
    };
    let grants = [("source", "ev"), ("error", "invalid_grant")];
    let wait_for = |port: u16, want: f64| async move {
        for _ in 0..100 {
            if metric(port, "oauth_token_refresh_failures_total", &grants).await == Some(want) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "never reached {want}: {:?}",
            metric(port, "oauth_token_refresh_failures_total", &grants).await
        );
    };
    sqlx::query(&insert(30, "invalid_grant"))
        .execute(&pool)
        .await
        .unwrap();
    let (mut first, port) = start();
    wait_for(port, 30.0).await;
    // More events land while the exporter is counting; kill -9 at once, whatever it was doing.
    sqlx::query(&insert(25, "invalid_grant"))
        .execute(&pool)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    first.kill().unwrap();
    first.wait().unwrap();
    sqlx::query(&insert(20, "invalid_grant"))
        .execute(&pool)
        .await
        .unwrap();
    let (mut second, port) = start();
    wait_for(port, 75.0).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        metric(port, "oauth_token_refresh_failures_total", &grants).await,
        Some(75.0),
        "every event exactly once"
    );
    assert_eq!(
        metric(port, "oauth_token_refreshes_total", &[("source", "ev")]).await,
        Some(75.0)
    );
    second.kill().unwrap();
    second.wait().unwrap();
}

#[tokio::test]
async fn a_state_file_on_a_full_disk_fails_the_poll_and_recovers_without_counting_twice() {
    let test = "a_state_file_on_a_full_disk_fails_the_poll_and_recovers_without_counting_twice";
    let (d, db, pool) = sqlite_db(&[EVENTS]).await;
    let mnt = d.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16k", "tmpfs"])
        .arg(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        if ci() {
            panic!("{test}: cannot mount a small tmpfs and CI=true makes this test mandatory");
        }
        eprintln!("SKIPPED {test}: cannot mount a small tmpfs (needs root)");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mnt.clone());
    let state = mnt.join("ev.cursor");
    let (mut e, _) = exporter(
        &format!(
            "event_tables:\n  - {{name: ev, kind: sqlite, dsn: {}, table: oauth_events, state_file: {}, start: beginning}}\n",
            db.display(),
            state.display()
        ),
        fixed_now(),
    );
    sqlx::query(&insert(3, "invalid_grant"))
        .execute(&pool)
        .await
        .unwrap();
    assert!(e.pollers[0].poll_once().await);
    // Fill the disk.
    let filler = mnt.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    use std::io::Write;
    while f.write_all(&[0u8; 4096]).is_ok() {}
    drop(f);
    assert!(
        std::fs::write(mnt.join("probe"), "x").is_err(),
        "the disk is full: {:?}",
        std::fs::read_dir(&mnt)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .collect::<Vec<_>>()
    );
    sqlx::query(&insert(4, "invalid_grant"))
        .execute(&pool)
        .await
        .unwrap();
    let ok = e.pollers[0].poll_once().await;
    assert!(
        !ok,
        "the cursor cannot be kept: {:?} {}",
        std::fs::read_to_string(&state),
        scrape(&e)
            .lines()
            .filter(|l| l.contains("invalid_grant") || l.contains("source_up"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let text = scrape(&e);
    assert_eq!(
        value(&text, "oauth_exporter_source_up", &[("source", "ev")]),
        0.0
    );
    assert_eq!(
        value(
            &text,
            "oauth_exporter_source_errors_total",
            &[("source", "ev"), ("reason", "decode")]
        ),
        1.0
    );
    let grants = [("source", "ev"), ("error", "invalid_grant")];
    let counted = value(&text, "oauth_token_refresh_failures_total", &grants);
    assert_eq!(
        counted, 7.0,
        "counted once in memory, though not yet persisted"
    );
    assert!(!e.pollers[0].poll_once().await);
    assert_eq!(
        value(&scrape(&e), "oauth_token_refresh_failures_total", &grants),
        7.0,
        "not again"
    );
    std::fs::remove_file(&filler).unwrap();
    assert!(
        e.pollers[0].poll_once().await,
        "recovers once there is room"
    );
    sqlx::query(&insert(2, "invalid_grant"))
        .execute(&pool)
        .await
        .unwrap();
    assert!(e.pollers[0].poll_once().await);
    assert_eq!(
        value(&scrape(&e), "oauth_token_refresh_failures_total", &grants),
        9.0
    );
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert_eq!(saved["cursor"], 9);
    assert_eq!(saved["counters"]["refresh_failures|xero|invalid_grant"], 9);
}

const INGEST_TOKEN: &str = "restart-ingest-token-0123456789";

/// POST `n` refresh failures (`invalid_grant`) to the ingest API of the exporter on `port`.
async fn post_failures(port: u16, n: usize) {
    let events: Vec<serde_json::Value> = (0..n)
        .map(|i| serde_json::json!({"type": "refresh", "connection": format!("c{i}"), "outcome": "failure", "error": "invalid_grant"}))
        .collect();
    let resp = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/api/v1/events"))
        .bearer_auth(INGEST_TOKEN)
        .json(&serde_json::json!({ "events": events }))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
}

/// The real binary with `config`; its port, once it answers.
async fn start_binary(config: &std::path::Path) -> (std::process::Child, u16) {
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_oauth-token-exporter"))
        .arg("--config.file")
        .arg(config)
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .env("OTE_RESTART_INGEST", INGEST_TOKEN)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if metric(port, "oauth_token_refreshes_total", &[])
            .await
            .is_some()
        {
            return (child, port);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the exporter did not start");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_inlet_counters_continue_after_kill_9_and_after_a_clean_stop() {
    oauth_token_exporter::sources::install_tls_provider();
    let d = tempfile::tempdir().unwrap();
    let config = d.path().join("c.yml");
    let counters = d.path().join("inlets.json");
    std::fs::write(
        &config,
        format!(
            "ingest:\n  source: app_events\n  token_env: OTE_RESTART_INGEST\n\
             persistence:\n  file: {}\n  interval: 200ms\n",
            counters.display()
        ),
    )
    .unwrap();
    let failures = [("source", "app_events"), ("error", "invalid_grant")];
    let count = |port| metric(port, "oauth_token_refresh_failures_total", &failures);

    // First run: 30 events, saved within the interval, then kill -9.
    let (mut first, port) = start_binary(&config).await;
    assert_eq!(count(port).await, Some(0.0), "a first start begins at 0");
    post_failures(port, 30).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    first.kill().unwrap();
    first.wait().unwrap();

    // Second run: they are there before anything new arrives; 20 more, then SIGTERM at once
    // (no interval passes: the clean stop writes them).
    let (second, port) = start_binary(&config).await;
    assert_eq!(count(port).await, Some(30.0), "restored after kill -9");
    assert_eq!(
        metric(
            port,
            "oauth_token_refreshes_total",
            &[("source", "app_events")]
        )
        .await,
        Some(30.0)
    );
    post_failures(port, 20).await;
    let status = Command::new("kill")
        .args(["-TERM", &second.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = second.wait_with_output().unwrap();
    assert!(out.status.success(), "a clean stop: {:?}", out.status);

    let (mut third, port) = start_binary(&config).await;
    assert_eq!(count(port).await, Some(50.0), "restored after a clean stop");
    assert_eq!(
        metric(port, "oauth_exporter_state_write_errors_total", &[]).await,
        Some(0.0)
    );
    third.kill().unwrap();
    third.wait().unwrap();

    // A file that is not ours is named, and the exporter does not start over it.
    std::fs::write(&counters, "{not json").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_oauth-token-exporter"))
        .arg("--config.file")
        .arg(&config)
        .arg(format!("--web.listen-address=127.0.0.1:{}", free_port()))
        .env("OTE_RESTART_INGEST", INGEST_TOKEN)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "the persistence file {} is not a counter file",
            counters.display()
        )),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_persistence_file_is_counted_and_counting_goes_on() {
    oauth_token_exporter::sources::install_tls_provider();
    let d = tempfile::tempdir().unwrap();
    let config = d.path().join("c.yml");
    std::fs::write(
        &config,
        format!(
            "ingest:\n  source: app_events\n  token_env: OTE_RESTART_INGEST\n\
             persistence:\n  file: {}\n  interval: 100ms\n",
            d.path().join("no-such-dir").join("inlets.json").display()
        ),
    )
    .unwrap();
    let (mut child, port) = start_binary(&config).await;
    post_failures(port, 3).await;
    let mut errors = 0.0;
    for _ in 0..50 {
        errors = metric(port, "oauth_exporter_state_write_errors_total", &[])
            .await
            .unwrap();
        if errors >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(errors >= 1.0, "the failed writes are counted");
    assert_eq!(
        metric(
            port,
            "oauth_token_refresh_failures_total",
            &[("source", "app_events"), ("error", "invalid_grant")]
        )
        .await,
        Some(3.0)
    );
    child.kill().unwrap();
    child.wait().unwrap();
}
