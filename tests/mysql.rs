//! MySQL/MariaDB source against the real server (127.0.0.1:3306); each test its own tables.

mod common;
use common::*;
use sqlx::mysql::MySqlPoolOptions;
use sqlx::MySqlPool;

async fn setup(test: &str, id: &str, stmts: &[String]) -> Option<(MySqlPool, String)> {
    if !server_or_skip(test, "MySQL/MariaDB", &mysql_url()).await {
        return None;
    }
    let pool = MySqlPoolOptions::new()
        .max_connections(2)
        .connect(&mysql_url())
        .await
        .expect("connect to MariaDB");
    let p = unique(id);
    for s in stmts {
        let s = s.replace("{p}", &p);
        sqlx::query(&s)
            .execute(&pool)
            .await
            .unwrap_or_else(|e| panic!("{s}: {e}"));
    }
    Some((pool, p))
}

async fn teardown(pool: MySqlPool, tables: &[String]) {
    for t in tables {
        sqlx::query(&format!("DROP TABLE IF EXISTS {t}"))
            .execute(&pool)
            .await
            .unwrap();
    }
    pool.close().await;
}

fn my_source(name: &str, rest: &str) -> String {
    format!(
        "  - name: {name}\n    kind: mysql\n    dsn: {}\n{rest}",
        mysql_url()
    )
}

#[tokio::test]
async fn every_mysql_timestamp_type_gives_the_same_last_refresh() {
    let Some((pool, p)) = setup("every_mysql_timestamp_type_gives_the_same_last_refresh", "my_shapes", &[
        "DROP TABLE IF EXISTS {p}_t".into(),
        "CREATE TABLE {p}_t (id VARCHAR(64) PRIMARY KEY, dt DATETIME, ts TIMESTAMP NULL, d_epoch BIGINT, ms_epoch BIGINT UNSIGNED, dec_epoch DECIMAL(16,3), txt VARCHAR(40), token_set JSON, expires_in VARCHAR(10), fetched_at DATETIME(3))".into(),
        "SET time_zone = '+00:00'".into(),
        "INSERT INTO {p}_t VALUES ('c1', '2026-05-01 10:00:00', '2026-05-01 10:00:00', 1777629600, 1777629600000, 1777629600.000, '2026-05-01T10:00:00Z', '{\"access_token\":\"AT-m\",\"refresh_token\":\"RT-m\",\"expires_at\":1777631400}', '1800', '2026-05-01 10:00:00.000')".into(),
    ]).await else { return };
    let q = format!("    query: SELECT * FROM {p}_t\n");
    let mut yaml = String::from("sources:\n");
    for col in ["dt", "d_epoch", "ms_epoch", "dec_epoch", "txt"] {
        yaml.push_str(&my_source(
            col,
            &format!("{q}    fields: {{connection: id, last_refresh: {col}}}\n"),
        ));
    }
    yaml.push_str(&my_source("json", &format!("{q}    infer_last_refresh: access_expires\n    fields: {{connection: id, access_expires: {{column: token_set, json_path: expires_at}}}}\n")));
    yaml.push_str(&my_source("relative", &format!("{q}    infer_last_refresh: access_expires\n    fields: {{connection: id, access_expires: {{column: expires_in, format: relative_seconds, relative_to: fetched_at}}}}\n")));
    let (mut e, _) = exporter(&yaml, fixed_now());
    let ok = poll(&mut e).await;
    let text = scrape(&e);
    assert!(ok.iter().all(|o| *o), "{ok:?}\n{text}");
    for src in [
        "dt",
        "d_epoch",
        "ms_epoch",
        "dec_epoch",
        "txt",
        "json",
        "relative",
    ] {
        assert_eq!(
            value(
                &text,
                "oauth_refresh_token_last_refresh_timestamp_seconds",
                &[("source", src), ("connection", "c1")]
            ),
            1777629600.0,
            "source {src}"
        );
    }
    assert!(!text.contains("AT-m") && !text.contains("RT-m"));
    teardown(pool, &[format!("{p}_t")]).await;
}

/// Column shapes of real MySQL apps: a status in an ENUM, flags in a SET, a YEAR, a TINYINT(1)
/// boolean, an unsigned id, a DECIMAL of 40 digits, as labels and fields. sqlx refused YEAR as
/// an integer (its type check) and a DECIMAL past 28 digits, either of which failed the poll.
#[tokio::test]
async fn enum_set_year_and_tinyint_columns_are_read() {
    let Some((pool, p)) = setup("enum_set_year_and_tinyint_columns_are_read", "my_udt", &[
        "DROP TABLE IF EXISTS {p}_t".into(),
        "CREATE TABLE {p}_t (id BIGINT UNSIGNED PRIMARY KEY, lr DATETIME, st ENUM('active', 'needs_reauth', 'revoked'), flags SET('sync', 'payroll'), yr YEAR, beta TINYINT(1), big DECIMAL(40,0))".into(),
        "INSERT INTO {p}_t VALUES (1, '2026-05-31 12:00:00', 'active', 'sync,payroll', 2026, 1, 1), (2, '2026-05-30 12:00:00', 'needs_reauth', 'sync', 2025, 0, 1234567890123456789012345678901234567890)".into(),
    ]).await else { return };
    let yaml = format!(
        "sources:\n{}",
        my_source(
            "udt",
            &format!("    query: SELECT * FROM {p}_t\n    fields: {{connection: id, last_refresh: lr, status: st}}\n    labels: {{flags: flags, year: yr, beta: beta, big: big}}\n")
        )
    );
    let (mut e, _) = exporter(&yaml, fixed_now());
    let polled = poll(&mut e).await;
    let text = scrape(&e);
    teardown(pool, &[format!("{p}_t")]).await;
    assert_eq!(polled, [true], "{text}");
    let status = |st: &str| {
        value(
            &text,
            "oauth_connections",
            &[("source", "udt"), ("status", st)],
        )
    };
    assert_eq!((status("active"), status("needs_reauth")), (1.0, 1.0));
    let big = format!("{}", 1234567890123456789012345678901234567890f64);
    for (c, flags, year, beta, big) in [
        ("1", "sync,payroll", "2026", "true", "1"),
        ("2", "sync", "2025", "false", big.as_str()),
    ] {
        assert_eq!(
            value(
                &text,
                "oauth_connection_info",
                &[
                    ("source", "udt"),
                    ("connection", c),
                    ("flags", flags),
                    ("year", year),
                    ("beta", beta),
                    ("big", big)
                ]
            ),
            1.0,
            "{text}"
        );
    }
}

#[tokio::test]
async fn xero_tokens_and_token_set_json_presets_on_mariadb() {
    let Some((pool, p)) = setup("xero_tokens_and_token_set_json_presets_on_mariadb", "my_presets", &[
        "DROP TABLE IF EXISTS {p}_xero_tokens".into(),
        "DROP TABLE IF EXISTS {p}_sets".into(),
        "CREATE TABLE {p}_xero_tokens (id INT AUTO_INCREMENT PRIMARY KEY, access_token TEXT, refresh_token TEXT, expires_at DATETIME, tenant_id CHAR(36), created_at DATETIME, updated_at DATETIME)".into(),
        "INSERT INTO {p}_xero_tokens (access_token, refresh_token, expires_at, tenant_id) VALUES ('a','r','2026-04-03 12:30:00','t-1'), ('a','r',NULL,'t-2'), ('a','r','2026-05-31 12:30:00','t-3')".into(),
        "CREATE TABLE {p}_sets (id VARCHAR(10), tenant_id VARCHAR(36), token_set LONGTEXT, updated_at DATETIME)".into(),
        "INSERT INTO {p}_sets VALUES ('ok', 't-1', '{\"access_token\":\"AT\",\"expires_at\":1777631400}', NULL), ('broken', 't-2', '{\"expires_at\": 17', NULL)".into(),
    ]).await else { return };
    let yaml = format!(
        "sources:\n{}{}",
        my_source(
            "flat",
            &format!("    preset: xero_tokens\n    table: {p}_xero_tokens\n")
        ),
        my_source(
            "sets",
            &format!("    preset: token_set_json\n    table: {p}_sets\n")
        )
    );
    let (mut e, _) = exporter(&yaml, fixed_now());
    assert_eq!(poll(&mut e).await, [true, true], "{}", scrape(&e));
    let text = scrape(&e);
    assert_eq!(connections(&text, "flat"), ["1", "3"]);
    assert_eq!(
        value(
            &text,
            "oauth_refresh_token_age_seconds",
            &[("source", "flat"), ("connection", "1"), ("tenant", "t-1")]
        ),
        59.0 * 86400.0
    );
    assert_eq!(
        value(
            &text,
            "oauth_exporter_rows_rejected_total",
            &[("source", "flat"), ("reason", "null_timestamp")]
        ),
        1.0
    );
    assert_eq!(connections(&text, "sets"), ["ok"]);
    assert_eq!(
        value(
            &text,
            "oauth_exporter_rows_rejected_total",
            &[("source", "sets"), ("reason", "unparseable_timestamp")]
        ),
        1.0
    );
    teardown(pool, &[format!("{p}_xero_tokens"), format!("{p}_sets")]).await;
}

#[tokio::test]
async fn a_configured_statement_that_writes_is_refused_by_mariadb() {
    let Some((pool, p)) = setup(
        "a_configured_statement_that_writes_is_refused_by_mariadb",
        "my_write",
        &[
            "DROP TABLE IF EXISTS {p}_t".into(),
            "CREATE TABLE {p}_t (id VARCHAR(10), lr DATETIME)".into(),
            "INSERT INTO {p}_t VALUES ('a', '2026-05-01 10:00:00')".into(),
        ],
    )
    .await
    else {
        return;
    };
    let mut yaml = String::from("sources:\n");
    yaml.push_str(&my_source("ret", &format!("    query: DELETE FROM {p}_t RETURNING id, lr\n    fields: {{connection: id, last_refresh: lr}}\n")));
    yaml.push_str(&my_source("ins", &format!("    query: INSERT INTO {p}_t SELECT 'b', lr FROM {p}_t\n    fields: {{connection: id, last_refresh: lr}}\n")));
    let (mut e, _) = exporter(&yaml, fixed_now());
    assert_eq!(poll(&mut e).await, [false, false]);
    let text = scrape(&e);
    assert_poll_errors(&text, &["ret", "ins"], "write_refused", 1.0);
    let n: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {p}_t"))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 1);
    teardown(pool, &[format!("{p}_t")]).await;
}

#[tokio::test]
async fn mariadb_going_away_keeps_last_values_and_the_source_recovers_by_itself() {
    let Some((pool, p)) = setup(
        "mariadb_going_away_keeps_last_values_and_the_source_recovers_by_itself",
        "my_outage",
        &[
            "DROP TABLE IF EXISTS {p}_t".into(),
            "CREATE TABLE {p}_t (id VARCHAR(10), lr BIGINT)".into(),
            "INSERT INTO {p}_t VALUES ('a', 1777629600)".into(),
        ],
    )
    .await
    else {
        return;
    };
    let target = mysql_url()
        .split('@')
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let proxy = FaultProxy::start(target).await;
    let yaml = format!(
        "sources:\n  - name: flaky\n    kind: mysql\n    dsn: mysql://root@{}/test\n    interval: 5s\n    timeout: 1s\n    query: SELECT id, lr FROM {p}_t\n    fields: {{connection: id, last_refresh: lr}}\n",
        proxy.addr
    );
    let (mut e, clock) = exporter(&yaml, fixed_now());
    assert_eq!(poll(&mut e).await, [true]);
    proxy.cut();
    clock.advance(chrono::Duration::minutes(1));
    assert_eq!(poll(&mut e).await, [false]);
    let text = scrape(&e);
    assert_eq!(
        value(&text, "oauth_exporter_source_up", &[("source", "flaky")]),
        0.0
    );
    assert_eq!(connections(&text, "flaky"), ["a"]);
    proxy.restore();
    assert_eq!(poll(&mut e).await, [true]);
    assert_eq!(
        value(
            &scrape(&e),
            "oauth_exporter_source_up",
            &[("source", "flaky")]
        ),
        1.0
    );
    teardown(pool, &[format!("{p}_t")]).await;
}
