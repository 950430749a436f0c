//! One reader per event table across replicas (README "Running more than one"): two instances
//! of the real binary share an event table with `lease: true` and one state file; events keep
//! landing while the leader is killed with `kill -9`; the other takes the lease over from the
//! saved cursor; the killed one comes back as a follower with its own counters. Every event is
//! counted exactly once across the two, for each store: PostgreSQL (advisory lock), MariaDB
//! (`GET_LOCK`) and SQLite (a lock file beside the shared state file).

mod common;
use common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

enum Db {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
    Mysql(sqlx::MySqlPool),
}

impl Db {
    async fn run(&self, sql: &str) {
        let r = match self {
            Db::Sqlite(p) => sqlx::query(sql).execute(p).await.map(|_| ()),
            Db::Postgres(p) => sqlx::query(sql).execute(p).await.map(|_| ()),
            Db::Mysql(p) => sqlx::query(sql).execute(p).await.map(|_| ()),
        };
        r.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

async fn scrape_port(port: u16) -> Option<String> {
    reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()
}

async fn leader(port: u16) -> Option<f64> {
    sample(
        &scrape_port(port).await?,
        "oauth_exporter_event_table_leader",
        &[("source", "ev")],
    )
}

async fn counted(port: u16) -> f64 {
    let text = scrape_port(port).await.expect("answers");
    sample(&text, "oauth_token_refreshes_total", &[("source", "ev")]).unwrap_or(0.0)
}

fn start(config: &std::path::Path, name: &str, port: u16) -> Kill {
    Kill(
        Command::new(env!("CARGO_BIN_EXE_oauth-token-exporter"))
            .arg("--config.file")
            .arg(config)
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg(format!("--instance.name={name}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

async fn until(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) {
    let t = Instant::now();
    while t.elapsed() < limit {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

/// The failover scenario on one store; `dsn` is what the config reads, `table` exists.
async fn failover(db: Db, kind: &str, dsn: &str, table: &str) {
    oauth_token_exporter::sources::install_tls_provider();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.yml");
    std::fs::write(
        &config,
        format!(
            "event_tables:\n  - {{name: ev, kind: {kind}, dsn: '{dsn}', table: {table}, columns: {{outcome: outcome, error: error}}, state_file: {}, start: beginning, lease: true, interval: 1s, timeout: 1s, batch: 7}}\n",
            dir.path().join("shared.state").display()
        ),
    )
    .unwrap();
    let (pa, pb) = (free_port(), free_port());
    let mut a = start(&config, "a", pa);
    until("a to lead", Duration::from_secs(20), async || {
        leader(pa).await == Some(1.0)
    })
    .await;
    let b = start(&config, "b", pb);
    until("b to answer", Duration::from_secs(20), async || {
        leader(pb).await.is_some()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(leader(pb).await, Some(0.0), "one leader at a time");
    assert_eq!(leader(pa).await, Some(1.0));

    // 40 batches of 10 events, one every 75 ms; the leader is killed a third of the way in.
    let mut inserted = 0usize;
    for round in 0..40 {
        let rows: Vec<String> = (0..10)
            .map(|i| format!("('refresh', 'c{}', 'success', NULL)", round * 10 + i))
            .collect();
        db.run(&format!(
            "INSERT INTO {table} (type, connection, outcome, error) VALUES {}",
            rows.join(", ")
        ))
        .await;
        inserted += 10;
        if round == 13 {
            let counted_by_a = counted(pa).await;
            assert!(counted_by_a > 0.0, "a counts before it dies");
            a.0.kill().unwrap();
            a.0.wait().unwrap();
        }
        tokio::time::sleep(Duration::from_millis(75)).await;
    }
    until("b to take over", Duration::from_secs(20), async || {
        leader(pb).await == Some(1.0)
    })
    .await;
    until(
        "b to read every event",
        Duration::from_secs(30),
        async || counted(pb).await > 0.0,
    )
    .await;
    // a comes back: a follower, with the counters it had saved.
    let pa2 = free_port();
    let a2 = start(&config, "a", pa2);
    until("a to answer again", Duration::from_secs(20), async || {
        leader(pa2).await.is_some()
    })
    .await;
    let mut last = (0.0, 0.0);
    until(
        "the counts to settle",
        Duration::from_secs(30),
        async || {
            tokio::time::sleep(Duration::from_millis(1200)).await;
            let now = (counted(pa2).await, counted(pb).await);
            let settled = now == last && now.0 + now.1 >= inserted as f64;
            last = now;
            settled
        },
    )
    .await;
    let (by_a, by_b) = last;
    assert_eq!(
        by_a + by_b,
        inserted as f64,
        "{kind}: every event exactly once across the replicas (a {by_a}, b {by_b})"
    );
    assert!(
        by_a > 0.0 && by_b > 0.0,
        "both read a part: a {by_a}, b {by_b}"
    );
    assert_eq!(
        leader(pa2).await,
        Some(0.0),
        "the returning instance follows"
    );
    assert_eq!(leader(pb).await, Some(1.0));
    drop((a2, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_leader_killed_mid_stream_every_event_counted_once() {
    let (dir, path, pool) = sqlite_db(&["CREATE TABLE ev (id INTEGER PRIMARY KEY, type TEXT, connection TEXT, outcome TEXT, error TEXT)"]).await;
    failover(
        Db::Sqlite(pool),
        "sqlite",
        &path.display().to_string(),
        "ev",
    )
    .await;
    drop(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_leader_killed_mid_stream_every_event_counted_once() {
    let test = "postgres_leader_killed_mid_stream_every_event_counted_once";
    if !server_or_skip(test, "PostgreSQL", &pg_url()).await {
        return;
    }
    let pool = sqlx::PgPool::connect(&pg_url()).await.unwrap();
    let table = unique("lease_ev");
    let db = Db::Postgres(pool.clone());
    db.run(&format!("DROP TABLE IF EXISTS {table}")).await;
    db.run(&format!("CREATE TABLE {table} (id BIGSERIAL PRIMARY KEY, type TEXT, connection TEXT, outcome TEXT, error TEXT)")).await;
    failover(db, "postgres", &pg_url(), &table).await;
    sqlx::query(&format!("DROP TABLE {table}"))
        .execute(&pool)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_leader_killed_mid_stream_every_event_counted_once() {
    let test = "mysql_leader_killed_mid_stream_every_event_counted_once";
    if !server_or_skip(test, "MariaDB", &mysql_url()).await {
        return;
    }
    let pool = sqlx::MySqlPool::connect(&mysql_url()).await.unwrap();
    let table = unique("lease_ev");
    let db = Db::Mysql(pool.clone());
    db.run(&format!("DROP TABLE IF EXISTS {table}")).await;
    db.run(&format!("CREATE TABLE {table} (id BIGINT AUTO_INCREMENT PRIMARY KEY, type VARCHAR(32), connection VARCHAR(64), outcome VARCHAR(16), error VARCHAR(32))")).await;
    failover(db, "mysql", &mysql_url(), &table).await;
    sqlx::query(&format!("DROP TABLE {table}"))
        .execute(&pool)
        .await
        .unwrap();
}
