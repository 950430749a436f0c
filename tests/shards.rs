//! Shards (`--shard.index`, `--shard.total`, README "Running more than one"): three instances
//! split one store's connections by a stable hash of the id, each exactly once, with aggregates
//! that add up across the shards and rejected rows counted once. PostgreSQL and MariaDB compute
//! the hash in the query (checked against the exporter's own for ids of every shape); SQLite
//! rows are filtered after the read. Event tables are split the same way. And the default
//! exposition leaves out the derivable `oauth_refresh_token_age_seconds`.

mod common;
use common::*;
use oauth_token_exporter::app::Exporter;
use oauth_token_exporter::clock::{ManualClock, SharedClock};
use oauth_token_exporter::config::Shard;
use oauth_token_exporter::config::{self, Overrides, Store};
use std::collections::BTreeSet;

const TOTAL: u32 = 3;
const CONNECTIONS: usize = 300;

fn ids() -> Vec<String> {
    // Text of several shapes: numbers, UUID-like, non-ASCII, quotes.
    (0..CONNECTIONS)
        .map(|i| match i % 4 {
            0 => format!("{i}"),
            1 => format!("tenant-{i:04}"),
            2 => format!("ünïcode-{i}"),
            _ => format!("o'brien-{i}"),
        })
        .collect()
}

fn sharded(yaml: &str, index: u32) -> Exporter {
    let mut cfg = parse_config(yaml);
    cfg.apply(&Overrides {
        shard: Shard {
            index,
            total: TOTAL,
        },
        instance: format!("i{index}"),
        ..Overrides::default()
    });
    let clock = ManualClock::new(fixed_now());
    let shared: SharedClock = clock;
    Exporter::new(&cfg, shared).unwrap_or_else(|e| panic!("{e}"))
}

/// Every shard's scrape after one poll of everything (sources and event tables).
async fn scrape_shards(yaml: &str) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..TOTAL {
        let mut e = sharded(yaml, i);
        for p in &mut e.pollers {
            assert!(p.poll_once().await, "shard {i} polls");
        }
        out.push(scrape(&e));
    }
    out
}

/// The fleet's properties: each connection on exactly one shard (the one its hash names),
/// aggregates adding up, one rejection counted once, every shard exporting its identity.
fn check_split(texts: &[String], what: &str) {
    let mut all = BTreeSet::new();
    let mut active = 0.0;
    let mut rejected = 0.0;
    for (i, text) in texts.iter().enumerate() {
        let mine = connections(text, "app");
        assert!(!mine.is_empty(), "{what}: shard {i} has connections");
        for id in &mine {
            assert_eq!(Shard::of(id, TOTAL), i as u32, "{what}: {id} on shard {i}");
            assert!(all.insert(id.clone()), "{what}: {id} on two shards");
        }
        let a = value(
            text,
            "oauth_connections",
            &[("source", "app"), ("status", "active")],
        );
        assert_eq!(
            a,
            mine.len() as f64,
            "{what}: shard {i}'s aggregate is its own"
        );
        active += a;
        rejected += sample(
            text,
            "oauth_exporter_rows_rejected_total",
            &[("source", "app"), ("reason", "missing_connection")],
        )
        .unwrap_or(0.0);
        assert_eq!(value(text, "oauth_exporter_shards", &[]), TOTAL as f64);
        assert_eq!(
            value(
                text,
                "oauth_exporter_shard_info",
                &[("shard", &i.to_string())]
            ),
            1.0
        );
    }
    let want: BTreeSet<String> = ids().into_iter().collect();
    assert_eq!(all, want, "{what}: every connection exported once");
    assert_eq!(active, CONNECTIONS as f64, "{what}: the shards add up");
    assert_eq!(
        rejected, 1.0,
        "{what}: the row without an id is counted once"
    );
}

fn insert_rows(lr: &str) -> Vec<String> {
    let mut rows: Vec<String> = ids()
        .iter()
        .map(|id| format!("('{}', {lr})", id.replace('\'', "''")))
        .collect();
    rows.push(format!("(NULL, {lr})"));
    rows
}

#[tokio::test]
async fn sqlite_connections_are_split_across_shards_after_the_read() {
    let (_d, path, pool) = sqlite_db(&["CREATE TABLE t (id TEXT, lr INTEGER)"]).await;
    let lr = (fixed_now().timestamp() - 86400).to_string();
    sqlx::query(&format!(
        "INSERT INTO t VALUES {}",
        insert_rows(&lr).join(", ")
    ))
    .execute(&pool)
    .await
    .unwrap();
    let yaml = format!(
        "sources:\n  - name: app\n    kind: sqlite\n    dsn: {}\n    query: SELECT id, lr FROM t\n    fields: {{connection: id, last_refresh: lr}}\n",
        path.display()
    );
    check_split(&scrape_shards(&yaml).await, "sqlite");
}

/// The database's hash of each id, by the exporter's own predicate, against [`Shard::of`].
fn predicate_agrees(kind: config::SqlKind, hashed: &[(String, i64)]) {
    assert_eq!(hashed.len(), CONNECTIONS);
    for (id, shard) in hashed {
        assert_eq!(
            *shard,
            i64::from(Shard::of(id, TOTAL)),
            "{kind:?} hashes {id:?} to another shard"
        );
    }
}

/// The shard expression alone (the predicate compares it with the index).
fn hash_expr(kind: config::SqlKind, column: &str) -> String {
    let p = Shard {
        index: 0,
        total: TOTAL,
    }
    .sql_predicate(kind, column)
    .unwrap();
    p.strip_suffix(" = 0").unwrap().to_string()
}

/// A table of the fleet on an SQL server through `pool`: the server's hash of each id agrees
/// with the exporter's, the source's query is narrowed to the shard, and the split holds.
macro_rules! split_in_the_query {
    ($pool:expr, $kind:expr, $url:expr, $what:literal, $ddl:literal, $lr:literal, $cast:literal) => {{
        let pool = $pool;
        let table = unique("shards");
        for s in [
            format!("DROP TABLE IF EXISTS {table}"),
            format!("CREATE TABLE {table} {}", $ddl),
            format!("INSERT INTO {table} VALUES {}", insert_rows($lr).join(", ")),
        ] {
            sqlx::query(&s).execute(&pool).await.unwrap();
        }
        let hashed: Vec<(String, i64)> = sqlx::query_as(&format!(
            "SELECT id, CAST({} AS {}) FROM {table} WHERE id IS NOT NULL",
            hash_expr($kind, "id"),
            $cast
        ))
        .fetch_all(&pool)
        .await
        .unwrap();
        predicate_agrees($kind, &hashed);
        let yaml = format!(
            "sources:\n  - name: app\n    kind: {}\n    dsn: {}\n    query: SELECT id, lr FROM {table};\n    fields: {{connection: id, last_refresh: lr}}\n",
            $what, $url
        );
        let mut cfg = parse_config(&yaml);
        cfg.apply(&Overrides {
            shard: Shard {
                index: 1,
                total: TOTAL,
            },
            ..Overrides::default()
        });
        let Store::Sql { query, .. } = &cfg.sources[0].store else {
            panic!()
        };
        assert!(query.to_uppercase().contains("SHA"), "narrowed in the query: {query}");
        assert!(cfg.sources[0].shard_in_query);
        check_split(&scrape_shards(&yaml).await, $what);
        sqlx::query(&format!("DROP TABLE {table}"))
            .execute(&pool)
            .await
            .unwrap();
    }};
}

#[tokio::test]
async fn postgres_computes_the_shard_in_the_query() {
    let test = "postgres_computes_the_shard_in_the_query";
    if !server_or_skip(test, "PostgreSQL", &pg_url()).await {
        return;
    }
    split_in_the_query!(
        sqlx::PgPool::connect(&pg_url()).await.unwrap(),
        config::SqlKind::Postgres,
        pg_url(),
        "postgres",
        "(id text, lr timestamptz)",
        "TIMESTAMPTZ '2026-05-31 12:00:00+00'",
        "bigint"
    );
}

#[tokio::test]
async fn mysql_computes_the_shard_in_the_query() {
    let test = "mysql_computes_the_shard_in_the_query";
    if !server_or_skip(test, "MariaDB", &mysql_url()).await {
        return;
    }
    split_in_the_query!(
        sqlx::MySqlPool::connect(&mysql_url()).await.unwrap(),
        config::SqlKind::Mysql,
        mysql_url(),
        "mysql",
        "(id VARCHAR(64) CHARACTER SET utf8mb4, lr DATETIME)",
        "'2026-05-31 12:00:00'",
        "SIGNED"
    );
}

#[tokio::test]
async fn postgres_event_tables_are_split_by_the_connection_of_each_event() {
    let test = "postgres_event_tables_are_split_by_the_connection_of_each_event";
    if !server_or_skip(test, "PostgreSQL", &pg_url()).await {
        return;
    }
    let pool = sqlx::PgPool::connect(&pg_url()).await.unwrap();
    let table = unique("shard_events");
    let rows: Vec<String> = ids()
        .iter()
        .map(|id| format!("('refresh', '{}', 'success')", id.replace('\'', "''")))
        .chain(["('refresh', NULL, 'success')".to_string()])
        .collect();
    for s in [
        format!("DROP TABLE IF EXISTS {table}"),
        format!("CREATE TABLE {table} (id BIGSERIAL PRIMARY KEY, type text, connection text, outcome text)"),
        format!(
            "INSERT INTO {table} (type, connection, outcome) VALUES {}",
            rows.join(", ")
        ),
    ] {
        sqlx::query(&s).execute(&pool).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "event_tables:\n  - {{name: ev, kind: postgres, dsn: '{}', table: {table}, columns: {{outcome: outcome}}, state_file: {}, start: beginning}}\n",
        pg_url(),
        dir.path().join("ev.state").display()
    );
    let texts = scrape_shards(&yaml).await;
    let per: Vec<f64> = texts
        .iter()
        .map(|t| value(t, "oauth_token_refreshes_total", &[("source", "ev")]))
        .collect();
    let mut want = [0.0; TOTAL as usize];
    for id in ids() {
        want[Shard::of(&id, TOTAL) as usize] += 1.0;
    }
    assert_eq!(per, want, "each shard counts its connections' events");
    // The event without a connection is rejected once in the fleet, by shard 0.
    let rejected: Vec<f64> = texts
        .iter()
        .map(|t| {
            sample(
                t,
                "oauth_exporter_rows_rejected_total",
                &[("source", "ev"), ("reason", "invalid_event")],
            )
            .unwrap_or(0.0)
        })
        .collect();
    assert_eq!(rejected, [1.0, 0.0, 0.0]);
    for i in 0..TOTAL {
        let state = dir.path().join(format!("ev.state.shard-{i}-of-{TOTAL}"));
        assert!(state.exists(), "each shard keeps its own cursor: {state:?}");
    }
    sqlx::query(&format!("DROP TABLE {table}"))
        .execute(&pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn the_age_gauge_is_opt_in_and_the_timestamp_it_follows_from_is_always_there() {
    let (_d, path, pool) = sqlite_db(&["CREATE TABLE t (id TEXT, lr INTEGER)"]).await;
    sqlx::query(&format!(
        "INSERT INTO t VALUES ('c1', {})",
        fixed_now().timestamp() - 3600
    ))
    .execute(&pool)
    .await
    .unwrap();
    let yaml = format!(
        "sources:\n  - name: app\n    kind: sqlite\n    dsn: {}\n    query: SELECT id, lr FROM t\n    fields: {{connection: id, last_refresh: lr}}\n",
        path.display()
    );
    for relative in [false, true] {
        let mut cfg = config::parse(&yaml, "t.yml", &|_| None).unwrap();
        cfg.apply(&Overrides {
            relative_metrics: relative,
            ..Overrides::default()
        });
        let clock = ManualClock::new(fixed_now());
        let shared: SharedClock = clock;
        let mut e = Exporter::new(&cfg, shared).unwrap();
        poll(&mut e).await;
        let text = scrape(&e);
        let labels = [("source", "app"), ("connection", "c1")];
        assert_eq!(
            value(
                &text,
                "oauth_refresh_token_last_refresh_timestamp_seconds",
                &labels
            ),
            (fixed_now().timestamp() - 3600) as f64
        );
        assert_eq!(
            sample(&text, "oauth_refresh_token_age_seconds", &labels),
            relative.then_some(3600.0),
            "relative metrics {relative}"
        );
    }
}

#[tokio::test]
async fn the_shard_endpoint_names_the_shard_that_owns_a_connection() {
    oauth_token_exporter::sources::install_tls_provider();
    let (_d, path, _pool) = sqlite_db(&["CREATE TABLE t (id TEXT, lr INTEGER)"]).await;
    let yaml = format!(
        "sources:\n  - name: app\n    kind: sqlite\n    dsn: {}\n    query: SELECT id, lr FROM t\n    fields: {{connection: id, last_refresh: lr}}\n",
        path.display()
    );
    let e = sharded(&yaml, 1);
    let base = serve(e.router(&oauth_token_exporter::app::ServerOptions::default())).await;
    let get = |q: String| {
        let url = format!("{base}/api/v1/shard{q}");
        async move {
            reqwest::get(url)
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        }
    };
    let me = get(String::new()).await;
    assert_eq!(me, serde_json::json!({"shard": 1, "shards": TOTAL}));
    for id in ids().iter().take(40) {
        let v = get(format!(
            "?connection={}",
            common::alerting::percent_encode(id)
        ))
        .await;
        let owner = Shard::of(id, TOTAL);
        assert_eq!(v["connection_shard"], owner, "{id}");
        assert_eq!(v["owned"], owner == 1, "{id}");
        assert!(!v.to_string().contains(id.as_str()), "the id is not echoed");
    }
}
