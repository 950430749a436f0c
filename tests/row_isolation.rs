//! One bad value never hides more than it must (issue 14): a row whose text is not UTF-8 is
//! rejected alone, a garbage optional field omits only its own series, and an event stamped
//! far in the future is refused by every inlet that takes a time. Real SQLite files and, where
//! the server runs, PostgreSQL.

mod common;
use common::*;

fn rejected(text: &str, source: &str, reason: &str) -> f64 {
    value(
        text,
        "oauth_exporter_rows_rejected_total",
        &[("source", source), ("reason", reason)],
    )
}

#[tokio::test]
async fn a_row_of_text_that_is_not_utf8_is_rejected_alone_and_the_others_exported() {
    // SQLite keeps whatever bytes the app wrote as TEXT; x'ff' is never UTF-8.
    let (_d, path, _pool) = sqlite_db(&[
        "CREATE TABLE xero_tokens (id TEXT, updated_at TEXT)",
        "INSERT INTO xero_tokens VALUES ('good', '2026-05-31T12:00:00Z'), \
         ('bad_time', CAST(x'ff32303236' AS TEXT)), (CAST(x'61ff' AS TEXT), '2026-05-31T12:00:00Z'), \
         ('also_good', '2026-05-30T12:00:00Z')",
    ])
    .await;
    let yaml = format!(
        "sources:\n  - name: lite\n    kind: sqlite\n    dsn: {}\n    query: SELECT id, updated_at FROM xero_tokens\n    fields: {{connection: id, last_refresh: updated_at}}\n",
        path.display()
    );
    let (mut e, _) = exporter(&yaml, fixed_now());
    assert_eq!(poll(&mut e).await, [true], "the source stays up");
    let text = scrape(&e);
    assert_eq!(connections(&text, "lite"), ["also_good", "good"]);
    assert_eq!(rejected(&text, "lite", "invalid_utf8"), 2.0);
    assert_eq!(
        value(
            &text,
            "oauth_refresh_token_age_seconds",
            &[("connection", "good")]
        ),
        86400.0
    );
}

/// dcblogdev/laravel-xero's shape: `expires_in` a string counted from `updated_at`.
const GARBAGE_EXPIRES_IN: &str = "SELECT id, expires_in, updated_at FROM xero_tokens";

fn relative_source(name: &str, kind: &str, dsn: &str, query: &str) -> String {
    format!(
        "sources:\n  - name: {name}\n    kind: {kind}\n    dsn: '{dsn}'\n    query: {query}\n    fields:\n      connection: id\n      last_refresh: updated_at\n      access_expires: {{column: expires_in, format: relative_seconds, relative_to: updated_at}}\n"
    )
}

fn assert_only_the_access_expiry_is_lost(text: &str, source: &str) {
    assert_eq!(connections(text, source), ["fine", "garbage"]);
    // The garbage row keeps its refresh-token age; only its access-token expiry is missing.
    assert_eq!(
        value(
            text,
            "oauth_refresh_token_age_seconds",
            &[("source", source), ("connection", "garbage")]
        ),
        3600.0
    );
    assert_eq!(
        sample(
            text,
            "oauth_access_token_expiry_timestamp_seconds",
            &[("source", source), ("connection", "garbage")]
        ),
        None
    );
    assert_eq!(
        value(
            text,
            "oauth_access_token_expiry_timestamp_seconds",
            &[("source", source), ("connection", "fine")]
        ),
        fixed_now().timestamp() as f64 - 3600.0 + 1800.0
    );
    assert_eq!(rejected(text, source, "unparseable_timestamp"), 1.0);
}

#[tokio::test]
async fn a_garbage_optional_field_omits_only_its_own_series_in_sqlite() {
    let (_d, path, _pool) = sqlite_db(&[
        "CREATE TABLE xero_tokens (id TEXT, expires_in VARCHAR(255), updated_at TEXT)",
        "INSERT INTO xero_tokens VALUES ('fine', '1800', '2026-06-01 11:00:00'), ('garbage', 'abc', '2026-06-01 11:00:00')",
    ])
    .await;
    let yaml = relative_source(
        "lite",
        "sqlite",
        &path.display().to_string(),
        GARBAGE_EXPIRES_IN,
    );
    let (mut e, _) = exporter(&yaml, fixed_now());
    assert_eq!(poll(&mut e).await, [true]);
    assert_only_the_access_expiry_is_lost(&scrape(&e), "lite");
}

/// A PostgreSQL table of `test`'s own, named from `id`, made by the statements `stmts` gives
/// for its name; `None` (reported skipped by name) without the server.
async fn pg_table(
    test: &str,
    id: &str,
    stmts: impl Fn(&str) -> Vec<String>,
) -> Option<(oauth_token_exporter::sim::store::SimStore, String)> {
    if !server_or_skip(test, "PostgreSQL", &pg_url()).await {
        return None;
    }
    let table = unique(id);
    let admin = oauth_token_exporter::sim::store::SimStore::connect(
        oauth_token_exporter::model::StoreKind::Postgres,
        &pg_url(),
    )
    .await
    .unwrap();
    let mut all = vec![format!("DROP TABLE IF EXISTS {table}")];
    all.extend(stmts(&table));
    for q in all {
        admin.execute(&q, &[]).await.unwrap();
    }
    Some((admin, table))
}

/// The exporter of `yaml` polled `polls` times, then `table` dropped: each poll's result and
/// the scrape after them.
async fn poll_then_drop(
    yaml: &str,
    polls: usize,
    admin: oauth_token_exporter::sim::store::SimStore,
    table: &str,
) -> (Vec<bool>, String) {
    let (mut e, _) = exporter(yaml, fixed_now());
    let mut polled = Vec::new();
    for _ in 0..polls {
        polled.extend(poll(&mut e).await);
    }
    admin
        .execute(&format!("DROP TABLE {table}"), &[])
        .await
        .unwrap();
    (polled, scrape(&e))
}

#[tokio::test]
async fn a_garbage_optional_field_omits_only_its_own_series_in_postgres() {
    let Some((admin, table)) = pg_table(
        "a_garbage_optional_field_omits_only_its_own_series_in_postgres",
        "garbage_expires_in",
        |table| vec![
            format!("CREATE TABLE {table} (id TEXT, expires_in VARCHAR(255), updated_at TIMESTAMP)"),
            format!("INSERT INTO {table} VALUES ('fine', '1800', '2026-06-01 11:00:00'), ('garbage', 'abc', '2026-06-01 11:00:00')"),
        ],
    )
    .await else { return };
    let yaml = relative_source(
        "pg",
        "postgres",
        &pg_url(),
        &GARBAGE_EXPIRES_IN.replace("xero_tokens", &table),
    );
    let (polled, text) = poll_then_drop(&yaml, 1, admin, &table).await;
    assert_eq!(polled, [true]);
    assert_only_the_access_expiry_is_lost(&text, "pg");
}

/// PostgreSQL's `infinity`, `-infinity` and years past chrono's range (it holds dates to
/// 294276 AD) in typed columns: sqlx 0.8.6's chrono decoders panic on them (sqlx issue #2234),
/// which ended the source's poll task on one such row. Each is now an impossible timestamp of
/// its row alone; the poll succeeds and the other rows are exported.
#[tokio::test]
async fn infinite_and_out_of_range_postgres_date_times_reject_their_row_alone() {
    let Some((admin, table)) = pg_table(
        "infinite_and_out_of_range_postgres_date_times_reject_their_row_alone",
        "infinite_times",
        |table| vec![
            format!("CREATE TABLE {table} (id TEXT, lr TIMESTAMPTZ, at_exp TIMESTAMP, rt_exp DATE)"),
            format!(
                "INSERT INTO {table} VALUES \
                 ('fine', '2026-06-01 11:00:00+00', '2026-06-01 11:30:00', '2026-07-01'), \
                 ('lr_infinity', 'infinity', '2026-06-01 11:30:00', '2026-07-01'), \
                 ('lr_minus_infinity', '-infinity', '2026-06-01 11:30:00', '2026-07-01'), \
                 ('lr_year_270000', '270000-01-01 00:00:00+00', '2026-06-01 11:30:00', '2026-07-01'), \
                 ('access_infinity', '2026-06-01 11:00:00+00', 'infinity', '2026-07-01'), \
                 ('refresh_date_infinity', '2026-06-01 11:00:00+00', '2026-06-01 11:30:00', 'infinity')"
            ),
        ],
    )
    .await else { return };
    let yaml = format!(
        "sources:\n  - name: pg\n    kind: postgres\n    dsn: '{}'\n    query: SELECT id, lr, at_exp, rt_exp FROM {table}\n    fields: {{connection: id, last_refresh: lr, access_expires: at_exp, refresh_expires: rt_exp}}\n",
        pg_url()
    );
    let (polled, text) = poll_then_drop(&yaml, 2, admin, &table).await;
    assert_eq!(polled, [true, true], "both polls succeed");
    // The three rows whose last refresh cannot be read are left out; an infinite optional
    // field omits only its own series.
    assert_eq!(
        connections(&text, "pg"),
        ["access_infinity", "fine", "refresh_date_infinity"]
    );
    assert_eq!(
        sample(
            &text,
            "oauth_access_token_expiry_timestamp_seconds",
            &[("source", "pg"), ("connection", "access_infinity")]
        ),
        None
    );
    let at = |c: &str| {
        value(
            &text,
            "oauth_access_token_expiry_timestamp_seconds",
            &[("source", "pg"), ("connection", c)],
        )
    };
    assert_eq!(at("fine"), fixed_now().timestamp() as f64 - 1800.0);
    // The infinite stored refresh expiry does not bind: the 60-day idle expiry stands.
    let rt = |c: &str| {
        value(
            &text,
            "oauth_refresh_token_expiry_timestamp_seconds",
            &[("source", "pg"), ("connection", c)],
        )
    };
    let idle = (fixed_now() - chrono::Duration::hours(1) + chrono::Duration::days(60)).timestamp();
    assert_eq!(rt("refresh_date_infinity"), idle as f64);
    let stored = chrono::NaiveDate::from_ymd_opt(2026, 7, 1)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap();
    assert_eq!(rt("fine"), stored.and_utc().timestamp() as f64);
    // Counted per poll: 3 rows and 2 fields, twice.
    assert_eq!(rejected(&text, "pg", "impossible_timestamp"), 10.0);
    assert_eq!(
        value(
            &text,
            "oauth_exporter_source_errors_total",
            &[("source", "pg"), ("reason", "internal")]
        ),
        0.0
    );
}

/// A `numeric` epoch column with `NaN`, PostgreSQL 14's `Infinity` / `-Infinity` and a value
/// past 28 digits: sqlx's `Decimal` decoder fails on each, which failed the whole poll ("type
/// NUMERIC cannot be read"). Each now rejects its row alone.
#[tokio::test]
async fn numeric_nan_infinity_and_huge_values_reject_their_row_alone() {
    let epoch = fixed_now().timestamp() - 3600;
    let Some((admin, table)) = pg_table(
        "numeric_nan_infinity_and_huge_values_reject_their_row_alone",
        "numeric_epochs",
        |table| vec![
            format!("CREATE TABLE {table} (id TEXT, lr NUMERIC)"),
            format!(
                "INSERT INTO {table} VALUES ('fine', {epoch}.250), ('negative', -{epoch}), ('nan', 'NaN'), \
                 ('infinity', 'Infinity'), ('minus_infinity', '-Infinity'), ('huge', 1e40), ('ms', {epoch}250)"
            ),
        ],
    )
    .await else { return };
    let yaml = format!(
        "sources:\n  - name: pg\n    kind: postgres\n    dsn: '{}'\n    query: SELECT id, lr FROM {table}\n    fields: {{connection: id, last_refresh: lr}}\n",
        pg_url()
    );
    let (polled, text) = poll_then_drop(&yaml, 1, admin, &table).await;
    assert_eq!(polled, [true]);
    assert_eq!(connections(&text, "pg"), ["fine", "ms"]);
    for c in ["fine", "ms"] {
        assert_eq!(
            value(
                &text,
                "oauth_refresh_token_last_refresh_timestamp_seconds",
                &[("source", "pg"), ("connection", c)]
            ),
            epoch as f64 + 0.25,
            "{c}"
        );
    }
    assert_eq!(rejected(&text, "pg", "unparseable_timestamp"), 1.0);
    assert_eq!(rejected(&text, "pg", "impossible_timestamp"), 4.0);
}

#[tokio::test]
async fn an_event_stamped_in_the_future_is_refused_by_the_event_table_and_the_ingest_api() {
    // The event table: a refresh failure stamped 2199 is rejected as an invalid event; the
    // one beside it is counted.
    let (_d, path, _pool) = sqlite_db(&[
        "CREATE TABLE oauth_events (id INTEGER PRIMARY KEY, type TEXT, connection TEXT, tenant TEXT, time TEXT, outcome TEXT, error TEXT, status INTEGER, detail TEXT, rate_limit_problem TEXT)",
        "INSERT INTO oauth_events (type, connection, time, outcome, error) VALUES \
         ('refresh', 'c1', '2199-01-01T00:00:00Z', 'failure', 'invalid_grant'), \
         ('refresh', 'c2', '2026-06-01T11:59:00Z', 'failure', 'invalid_grant')",
    ])
    .await;
    let state = path.with_extension("cursor");
    let yaml = format!(
        "event_tables:\n  - {{name: ev, kind: sqlite, dsn: {}, table: oauth_events, state_file: {}, start: beginning}}\n",
        path.display(),
        state.display()
    );
    let (mut e, _) = exporter(&yaml, fixed_now());
    for p in &mut e.pollers {
        assert!(p.poll_once().await);
    }
    let text = scrape(&e);
    assert_eq!(rejected(&text, "ev", "invalid_event"), 1.0);
    assert_eq!(
        value(
            &text,
            "oauth_token_refresh_failures_total",
            &[("source", "ev"), ("error", "invalid_grant")]
        ),
        1.0
    );

    // The ingest API's check: the same event is refused for its `time`, saying why.
    let body = serde_json::json!({"events": [
        {"type": "refresh", "connection": "c1", "outcome": "failure", "error": "invalid_grant", "time": "2199-01-01T00:00:00Z"},
        {"type": "refresh", "connection": "c1", "outcome": "failure", "error": "invalid_grant", "time": chrono::Utc::now().to_rfc3339()},
    ]});
    let refused = oauth_token_exporter::events::ingest::check_batch(
        body.to_string().as_bytes(),
        oauth_token_exporter::provider::ProviderKind::Xero,
    )
    .unwrap();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].0, "time");
    assert!(
        refused[0].1.contains("ahead of this exporter's clock"),
        "{}",
        refused[0].1
    );
}

/// The cause of a failed connect is kept (issue 14): a refused port says so and counts as
/// `connect`; a server that accepts and never answers counts as `timeout`, not as a pool
/// that "timed out waiting for an open connection".
#[tokio::test]
async fn a_refused_store_and_a_hung_one_are_told_apart() {
    use oauth_token_exporter::config::{SqlConnection, SqlKind};
    use oauth_token_exporter::model::CollectError;
    use oauth_token_exporter::sources::sql::{AllColumns, SqlPool};
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hung_port = hung.local_addr().unwrap().port();
    let refused_port = free_port();
    let attempt = |port: u16| async move {
        let pool = SqlPool::connect(&SqlConnection {
            kind: SqlKind::Postgres,
            dsn: oauth_token_exporter::secret::Secret::new(format!(
                "postgres://u@127.0.0.1:{port}/d"
            )),
            timeout: std::time::Duration::from_millis(600),
        })
        .unwrap();
        pool.fetch("SELECT 1", AllColumns::select)
            .await
            .unwrap_err()
    };
    let refused = attempt(refused_port).await;
    assert!(
        matches!(&refused, CollectError::Connect(m) if m.contains("connection refused")),
        "{refused}"
    );
    let timed_out = attempt(hung_port).await;
    assert!(matches!(timed_out, CollectError::Timeout(_)), "{timed_out}");
    drop(hung);
}
