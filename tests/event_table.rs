//! Event tables tailed with a cursor: SQLite always, PostgreSQL and MariaDB when reachable.

mod common;
use common::*;
use oauth_token_exporter::model::StoreKind;
use oauth_token_exporter::Exporter;

const EVENTS: &str = "CREATE TABLE oauth_events (id INTEGER PRIMARY KEY, type TEXT, connection TEXT, tenant TEXT, time TEXT, outcome TEXT, error TEXT, status INTEGER, detail TEXT, rate_limit_problem TEXT)";

fn yaml(
    name: &str,
    kind: &str,
    dsn: &str,
    table: &str,
    state: &std::path::Path,
    extra: &str,
) -> String {
    format!("event_tables:\n  - name: {name}\n    kind: {kind}\n    dsn: {dsn}\n    table: {table}\n    state_file: {}\n    interval: 5s\n    timeout: 2s\n{extra}", state.display())
}

async fn poll_tables(e: &mut Exporter) -> Vec<bool> {
    let mut out = Vec::new();
    for t in &mut e.pollers {
        out.push(t.poll_once().await);
    }
    out
}

const FIVE: &str = "INSERT INTO oauth_events (type, connection, tenant, time, outcome, error, status, detail, rate_limit_problem) VALUES \
    ('refresh', 'c1', 't1', '2026-06-01T11:00:00Z', 'success', NULL, 200, NULL, NULL), \
    ('refresh', 'c2', 't2', '2026-06-01T11:00:01Z', 'failure', 'invalid_grant', 400, NULL, NULL), \
    ('api', 'c1', 't1', NULL, NULL, NULL, 401, 'TokenExpired: token expired at 06/01/2026 11:30:00', NULL), \
    ('api', 'c3', 't3', NULL, NULL, NULL, 429, NULL, 'day'), \
    ('api', 'c4', 't4', NULL, NULL, NULL, 403, 'AuthenticationUnsuccessful', NULL)";

#[tokio::test]
async fn a_restart_neither_loses_nor_double_counts_and_the_first_start_begins_at_the_end() {
    let (d, path, pool) = sqlite_db(&[
        EVENTS,
        "INSERT INTO oauth_events (type, connection, outcome) VALUES ('refresh', 'old', 'success')",
    ])
    .await;
    let state = d.path().join("events.cursor");
    let cfg = yaml(
        "app_events",
        "sqlite",
        &path.display().to_string(),
        "oauth_events",
        &state,
        "",
    );
    let (mut e, _) = exporter(&cfg, fixed_now());
    assert_eq!(poll_tables(&mut e).await, [true]);
    assert_eq!(
        value(
            &scrape(&e),
            "oauth_token_refreshes_total",
            &[("source", "app_events")]
        ),
        0.0,
        "events before the first start are not counted"
    );
    sqlx::query(FIVE).execute(&pool).await.unwrap();
    assert_eq!(poll_tables(&mut e).await, [true]);
    let text = scrape(&e);
    let l = |k: &'static str, v: &'static str| [("source", "app_events"), (k, v)];
    assert_eq!(
        value(
            &text,
            "oauth_token_refreshes_total",
            &[("source", "app_events")]
        ),
        2.0
    );
    assert_eq!(
        value(
            &text,
            "oauth_token_refresh_failures_total",
            &l("error", "invalid_grant")
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "oauth_api_requests_total",
            &[("source", "app_events")]
        ),
        3.0
    );
    assert_eq!(
        value(
            &text,
            "oauth_api_unauthorized_total",
            &l("reason", "token_expired")
        ),
        1.0
    );
    assert_eq!(
        value(&text, "oauth_api_rate_limited_total", &l("problem", "day")),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "oauth_api_forbidden_total",
            &[("source", "app_events")]
        ),
        1.0
    );
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert_eq!(saved["cursor"], 6);
    assert_eq!(saved["counters"]["refreshes|xero"], 2, "{saved}");
    assert_eq!(saved["counters"]["api_requests|xero"], 3, "{saved}");
    // Polling again counts nothing new.
    assert_eq!(poll_tables(&mut e).await, [true]);
    assert_eq!(
        value(
            &scrape(&e),
            "oauth_api_requests_total",
            &[("source", "app_events")]
        ),
        3.0
    );
    // Restart (as after kill -9): the counters continue from the state file, events written
    // while down are counted once, old ones never.
    drop(e);
    sqlx::query("INSERT INTO oauth_events (type, connection, outcome, error) VALUES ('refresh', 'c9', 'failure', 'invalid_client'), ('refresh', 'c9', 'failure', 'invalid_client')").execute(&pool).await.unwrap();
    let (mut e, _) = exporter(&cfg, fixed_now());
    assert_eq!(poll_tables(&mut e).await, [true]);
    let text = scrape(&e);
    assert_eq!(
        value(
            &text,
            "oauth_token_refreshes_total",
            &[("source", "app_events")]
        ),
        4.0
    );
    assert_eq!(
        value(
            &text,
            "oauth_token_refresh_failures_total",
            &l("error", "invalid_client")
        ),
        2.0
    );
    assert_eq!(
        value(
            &text,
            "oauth_token_refresh_failures_total",
            &l("error", "invalid_grant")
        ),
        1.0,
        "restored"
    );
    assert_eq!(
        value(
            &text,
            "oauth_api_requests_total",
            &[("source", "app_events")]
        ),
        3.0,
        "restored"
    );
}

#[tokio::test]
async fn start_beginning_counts_the_backlog_in_batches_and_bad_rows_are_rejected_alone() {
    let (d, path, pool) = sqlite_db(&[EVENTS]).await;
    for _ in 0..5 {
        sqlx::query(FIVE).execute(&pool).await.unwrap();
    }
    sqlx::query("INSERT INTO oauth_events (type, connection, status) VALUES ('api', 'c1', 999), ('logout', 'c1', NULL), ('api', NULL, 200)").execute(&pool).await.unwrap();
    let state = d.path().join("events.cursor");
    let (mut e, _) = exporter(
        &yaml(
            "backlog",
            "sqlite",
            &path.display().to_string(),
            "oauth_events",
            &state,
            "    start: beginning\n    batch: 4\n",
        ),
        fixed_now(),
    );
    assert_eq!(poll_tables(&mut e).await, [true]);
    let text = scrape(&e);
    assert_eq!(
        value(&text, "oauth_api_requests_total", &[("source", "backlog")]),
        15.0
    );
    assert_eq!(
        value(
            &text,
            "oauth_token_refreshes_total",
            &[("source", "backlog")]
        ),
        10.0
    );
    assert_eq!(
        value(
            &text,
            "oauth_exporter_rows_rejected_total",
            &[("source", "backlog"), ("reason", "invalid_event")]
        ),
        3.0
    );
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert_eq!(saved["cursor"], 28);
}

#[tokio::test]
async fn an_unwritable_state_file_fails_the_poll_without_counting_twice() {
    let (d, path, pool) = sqlite_db(&[EVENTS]).await;
    let state = d.path().join("missing-dir").join("events.cursor");
    let (mut e, _) = exporter(
        &yaml(
            "nostate",
            "sqlite",
            &path.display().to_string(),
            "oauth_events",
            &state,
            "    start: beginning\n",
        ),
        fixed_now(),
    );
    sqlx::query(FIVE).execute(&pool).await.unwrap();
    assert_eq!(
        poll_tables(&mut e).await,
        [false],
        "the cursor cannot be kept"
    );
    let text = scrape(&e);
    assert_eq!(
        value(&text, "oauth_exporter_source_up", &[("source", "nostate")]),
        0.0
    );
    assert_eq!(
        value(
            &text,
            "oauth_exporter_source_errors_total",
            &[("source", "nostate"), ("reason", "decode")]
        ),
        1.0
    );
    std::fs::create_dir_all(state.parent().unwrap()).unwrap();
    assert_eq!(poll_tables(&mut e).await, [true]);
    sqlx::query(FIVE).execute(&pool).await.unwrap();
    assert_eq!(poll_tables(&mut e).await, [true]);
    assert_eq!(
        value(
            &scrape(&e),
            "oauth_api_requests_total",
            &[("source", "nostate")]
        ),
        6.0,
        "each event counted once"
    );
}

#[tokio::test]
async fn a_postgres_event_table_with_its_own_column_names_is_tailed_read_only() {
    let test = "a_postgres_event_table_with_its_own_column_names_is_tailed_read_only";
    if !server_or_skip(test, "PostgreSQL", &pg_url()).await {
        return;
    }
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&pg_url())
        .await
        .unwrap();
    let s = unique("pg_events");
    for q in [
        format!("DROP SCHEMA IF EXISTS {s} CASCADE"),
        format!("CREATE SCHEMA {s}"),
        format!("CREATE TABLE {s}.xero_log (event_id bigserial PRIMARY KEY, kind text, conn_id uuid, happened_at timestamptz DEFAULT now(), ok boolean, oauth_error text, http_status text, xero_detail text)"),
    ] {
        sqlx::query(&q).execute(&pool).await.unwrap();
    }
    let d = tempfile::tempdir().unwrap();
    let state = d.path().join("c");
    let extra = "    id_column: event_id\n    start: beginning\n    columns: {type: kind, connection: conn_id, time: happened_at, outcome: oauth_outcome, error: oauth_error, status: http_status, detail: xero_detail}\n";
    // oauth_outcome does not exist: the poll fails with a clear reason, then the config is fixed.
    let (mut bad, _) = exporter(
        &yaml(
            "pg_log",
            "postgres",
            &pg_url(),
            &format!("{s}.xero_log"),
            &state,
            extra,
        ),
        fixed_now(),
    );
    assert_eq!(poll_tables(&mut bad).await, [false]);
    assert_eq!(
        value(
            &scrape(&bad),
            "oauth_exporter_source_errors_total",
            &[("source", "pg_log"), ("reason", "query")]
        ),
        1.0
    );
    sqlx::query(&format!(
        "ALTER TABLE {s}.xero_log ADD COLUMN oauth_outcome text"
    ))
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(&format!("INSERT INTO {s}.xero_log (kind, conn_id, happened_at, oauth_outcome, oauth_error, http_status, xero_detail) VALUES \
        ('refresh', '6f1c2f6e-0000-4000-8000-000000000001', '2026-06-01T11:00:00Z', 'failure', 'invalid_grant', '400', NULL), \
        ('api', '6f1c2f6e-0000-4000-8000-000000000001', '2026-06-01T11:00:01Z', NULL, NULL, '401', 'AuthorizationUnsuccessful')")).execute(&pool).await.unwrap();
    let (mut e, _) = exporter(
        &yaml(
            "pg_log",
            "postgres",
            &pg_url(),
            &format!("{s}.xero_log"),
            &state,
            extra,
        ),
        fixed_now(),
    );
    assert_eq!(poll_tables(&mut e).await, [true], "{}", scrape(&e));
    let text = scrape(&e);
    assert_eq!(
        value(
            &text,
            "oauth_token_refresh_failures_total",
            &[("source", "pg_log"), ("error", "invalid_grant")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "oauth_api_unauthorized_total",
            &[
                ("source", "pg_log"),
                ("reason", "authorization_unsuccessful")
            ]
        ),
        1.0
    );
    sqlx::query(&format!("DROP SCHEMA {s} CASCADE"))
        .execute(&pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_mariadb_event_table_is_tailed() {
    let test = "a_mariadb_event_table_is_tailed";
    if !server_or_skip(test, "MySQL/MariaDB", &mysql_url()).await {
        return;
    }
    let pool = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(1)
        .connect(&mysql_url())
        .await
        .unwrap();
    let t = unique("my_events");
    for q in [
        format!("DROP TABLE IF EXISTS {t}"),
        format!("CREATE TABLE {t} (id BIGINT AUTO_INCREMENT PRIMARY KEY, type VARCHAR(10), connection VARCHAR(64), tenant VARCHAR(64), time DATETIME, outcome VARCHAR(10), error VARCHAR(40), status INT, detail TEXT, rate_limit_problem VARCHAR(20))"),
        format!("INSERT INTO {t} (type, connection, outcome, error) VALUES ('refresh', 'c1', 'failure', 'invalid_grant')"),
    ] {
        sqlx::query(&q).execute(&pool).await.unwrap();
    }
    let d = tempfile::tempdir().unwrap();
    let (mut e, _) = exporter(
        &yaml(
            "my_log",
            "mysql",
            &mysql_url(),
            &t,
            &d.path().join("c"),
            "    start: beginning\n",
        ),
        fixed_now(),
    );
    assert_eq!(poll_tables(&mut e).await, [true], "{}", scrape(&e));
    assert_eq!(
        value(
            &scrape(&e),
            "oauth_token_refresh_failures_total",
            &[("source", "my_log"), ("error", "invalid_grant")]
        ),
        1.0
    );
    sqlx::query(&format!("DROP TABLE {t}"))
        .execute(&pool)
        .await
        .unwrap();
}

/// A table without an increasing id, tailed by (time, id): ties on one timestamp split across
/// batches, rows written while the exporter is down, and a restart.
async fn tail_by_time_and_id(kind: StoreKind, dsn: &str, table: &str) {
    use oauth_token_exporter::sim::store::SimStore;
    let kind_name = match kind {
        StoreKind::Sqlite => "sqlite",
        StoreKind::Postgres => "postgres",
        _ => "mysql",
    };
    let ts_type = match kind {
        StoreKind::Sqlite => "TEXT",
        StoreKind::Postgres => "TIMESTAMPTZ",
        _ => "DATETIME(6)",
    };
    // A timestamp literal each store reads as UTC.
    let ts = |s: &str| match kind {
        StoreKind::Sqlite => format!("'2026-06-01T{s}Z'"),
        StoreKind::Postgres => format!("'2026-06-01 {s}+00'"),
        _ => format!("'2026-06-01 {s}'"),
    };
    let db = SimStore::connect(kind, dsn).await.unwrap();
    db.execute(&format!("DROP TABLE IF EXISTS {table}"), &[])
        .await
        .unwrap();
    db.execute(&format!("CREATE TABLE {table} (uid VARCHAR(40) PRIMARY KEY, type VARCHAR(10), connection VARCHAR(64), outcome VARCHAR(10), error VARCHAR(40), created_at {ts_type})"), &[]).await.unwrap();
    let insert = |rows: Vec<(&str, String, &str)>| {
        let values: Vec<String> = rows
            .iter()
            .map(|(uid, at, error)| {
                format!("('{uid}', 'refresh', 'c-{uid}', 'failure', '{error}', {at})")
            })
            .collect();
        format!(
            "INSERT INTO {table} (uid, type, connection, outcome, error, created_at) VALUES {}",
            values.join(", ")
        )
    };
    db.execute(
        &insert(vec![("old", ts("11:00:00.000000"), "invalid_grant")]),
        &[],
    )
    .await
    .unwrap();
    let d = tempfile::tempdir().unwrap();
    let state = d.path().join("events.cursor");
    let cfg = yaml(
        "by_time",
        kind_name,
        dsn,
        table,
        &state,
        "    id_column: uid\n    time_column: created_at\n    batch: 2\n    columns: {outcome: outcome, error: error}\n",
    );
    let failures = |e: &Exporter, error: &str| {
        value(
            &scrape(e),
            "oauth_token_refresh_failures_total",
            &[("source", "by_time"), ("error", error)],
        )
    };
    let (mut e, _) = exporter(&cfg, fixed_now());
    assert_eq!(poll_tables(&mut e).await, [true], "{}", scrape(&e));
    assert_eq!(
        failures(&e, "invalid_grant"),
        0.0,
        "the first start begins at the end"
    );
    // Five rows on one timestamp (ids out of insertion order), one just before, one without time.
    let same = ts("12:00:01.250000");
    db.execute(
        &insert(vec![
            ("e", same.clone(), "invalid_client"),
            ("b", same.clone(), "invalid_client"),
            ("d", same.clone(), "invalid_client"),
            ("a", same.clone(), "invalid_client"),
            ("c", same.clone(), "invalid_client"),
            ("z", ts("12:00:00.000000"), "invalid_grant"),
            ("untimed", "NULL".into(), "invalid_grant"),
        ]),
        &[],
    )
    .await
    .unwrap();
    assert_eq!(poll_tables(&mut e).await, [true], "{}", scrape(&e));
    assert_eq!(
        failures(&e, "invalid_client"),
        5.0,
        "ties split across batches of 2"
    );
    assert_eq!(
        failures(&e, "invalid_grant"),
        1.0,
        "rows without a time are not read"
    );
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert_eq!(saved["id"], serde_json::json!({"text": "e"}), "{saved}");
    // Restart (as after kill -9): what was written while down counts once, nothing twice.
    drop(e);
    db.execute(
        &insert(vec![
            ("f", same.clone(), "invalid_client"),
            ("a2", ts("12:00:02.000000"), "invalid_client"),
        ]),
        &[],
    )
    .await
    .unwrap();
    let (mut e, _) = exporter(&cfg, fixed_now());
    assert_eq!(poll_tables(&mut e).await, [true], "{}", scrape(&e));
    assert_eq!(failures(&e, "invalid_client"), 7.0, "5 restored and 2 new");
    assert_eq!(failures(&e, "invalid_grant"), 1.0, "restored");
    assert_eq!(poll_tables(&mut e).await, [true]);
    assert_eq!(
        failures(&e, "invalid_client"),
        7.0,
        "polling again counts nothing"
    );
    db.execute(&format!("DROP TABLE {table}"), &[])
        .await
        .unwrap();
}

#[tokio::test]
async fn an_sqlite_table_without_an_increasing_id_is_tailed_by_time_and_id() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("app.db");
    tail_by_time_and_id(
        StoreKind::Sqlite,
        &path.display().to_string(),
        "events_by_time",
    )
    .await;
}

#[tokio::test]
async fn a_postgres_table_without_an_increasing_id_is_tailed_by_time_and_id() {
    let test = "a_postgres_table_without_an_increasing_id_is_tailed_by_time_and_id";
    if !server_or_skip(test, "PostgreSQL", &pg_url()).await {
        return;
    }
    tail_by_time_and_id(StoreKind::Postgres, &pg_url(), &unique("pg_by_time")).await;
}

#[tokio::test]
async fn a_mariadb_table_without_an_increasing_id_is_tailed_by_time_and_id() {
    let test = "a_mariadb_table_without_an_increasing_id_is_tailed_by_time_and_id";
    if !server_or_skip(test, "MySQL/MariaDB", &mysql_url()).await {
        return;
    }
    tail_by_time_and_id(StoreKind::Mysql, &mysql_url(), &unique("my_by_time")).await;
}

/// A table truncated with its ids restarted (issue 14): the new events have ids below the saved
/// cursor. Before, they were skipped until the ids passed it again; now the reset is seen at
/// the next empty poll, counted and logged, and the table is read from its start.
#[tokio::test]
async fn a_table_whose_ids_restart_below_the_cursor_is_read_again_from_its_start() {
    let test = "a_table_whose_ids_restart_below_the_cursor_is_read_again_from_its_start";
    if !server_or_skip(test, "PostgreSQL", &pg_url()).await {
        return;
    }
    let t = unique("restarted_events");
    let admin = oauth_token_exporter::sim::store::SimStore::connect(StoreKind::Postgres, &pg_url())
        .await
        .unwrap();
    for q in [
        format!("DROP TABLE IF EXISTS {t}"),
        format!("CREATE TABLE {t} (id bigserial PRIMARY KEY, type text, connection text, tenant text, time timestamptz, outcome text, error text, status int, detail text, rate_limit_problem text)"),
        FIVE.replace("oauth_events", &t),
    ] {
        admin.execute(&q, &[]).await.unwrap();
    }
    let d = tempfile::tempdir().unwrap();
    let state = d.path().join("c");
    let cfg = yaml(
        "pg_ev",
        "postgres",
        &pg_url(),
        &t,
        &state,
        "    start: beginning\n",
    );
    let (mut e, _) = exporter(&cfg, fixed_now());
    let refreshes = |e: &Exporter| {
        value(
            &scrape(e),
            "oauth_token_refreshes_total",
            &[("source", "pg_ev")],
        )
    };
    assert_eq!(poll_tables(&mut e).await, [true]);
    assert_eq!(refreshes(&e), 2.0);
    // The app empties the table and restarts its ids, then writes three refreshes (ids 1-3,
    // below the cursor at 5).
    for q in [
        format!("TRUNCATE {t} RESTART IDENTITY"),
        format!("INSERT INTO {t} (type, connection, outcome) VALUES ('refresh', 'c1', 'success'), ('refresh', 'c2', 'success'), ('refresh', 'c3', 'success')"),
    ] {
        admin.execute(&q, &[]).await.unwrap();
    }
    assert_eq!(poll_tables(&mut e).await, [true]);
    let text = scrape(&e);
    admin
        .execute(&format!("DROP TABLE {t}"), &[])
        .await
        .unwrap();
    assert_eq!(refreshes(&e), 5.0, "the three new refreshes are counted");
    assert_eq!(
        value(
            &text,
            "oauth_exporter_source_errors_total",
            &[("source", "pg_ev"), ("reason", "cursor_reset")]
        ),
        1.0
    );
    assert!(std::fs::read_to_string(&state)
        .unwrap()
        .contains("\"cursor\":3"));
}
