//! PostgreSQL source against the real server (127.0.0.1:5432); each test in its own schema.

mod common;
use common::*;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

async fn setup(test: &str, id: &str, stmts: &[String]) -> Option<(PgPool, String)> {
    if !server_or_skip(test, "PostgreSQL", &pg_url()).await {
        return None;
    }
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&pg_url())
        .await
        .expect("connect to PostgreSQL");
    let schema = unique(id);
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&pool)
        .await
        .unwrap();
    for s in stmts {
        let s = s.replace("{s}", &schema);
        sqlx::query(&s)
            .execute(&pool)
            .await
            .unwrap_or_else(|e| panic!("{s}: {e}"));
    }
    Some((pool, schema))
}

async fn teardown(pool: PgPool, schema: &str) {
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
}

fn pg_source(name: &str, dsn: &str, rest: &str) -> String {
    format!("  - name: {name}\n    kind: postgres\n    dsn: {dsn}\n{rest}")
}

#[tokio::test]
async fn every_postgres_timestamp_type_gives_the_same_last_refresh() {
    let Some((pool, s)) = setup("every_postgres_timestamp_type_gives_the_same_last_refresh", "pg_shapes", &[
        "CREATE TABLE {s}.t (id uuid PRIMARY KEY, tz timestamptz, naive timestamp, d_epoch bigint, ms_epoch bigint, num_epoch numeric, f_epoch double precision, txt text, txt_epoch varchar(20), token_set jsonb, token_text json)".into(),
        "INSERT INTO {s}.t VALUES ('6f1c2f6e-0000-4000-8000-000000000001', '2026-05-01 22:00:00+12', '2026-05-01 10:00:00', 1777629600, 1777629600000, \
           extract(epoch from timestamptz '2026-05-01 10:00:00+00'), 1777629600, '2026-05-01T10:00:00Z', '1777629600', \
           '{\"access_token\":\"AT-x\",\"refresh_token\":\"RT-x\",\"expires_at\":1777631400}', '{\"expires_at\":\"2026-05-01T10:30:00Z\"}')".into(),
    ]).await else { return };
    let dsn = pg_url();
    let q = format!("    query: SELECT * FROM {s}.t\n");
    let mut yaml = String::from("sources:\n");
    for col in [
        "tz",
        "naive",
        "d_epoch",
        "ms_epoch",
        "num_epoch",
        "f_epoch",
        "txt",
        "txt_epoch",
    ] {
        yaml.push_str(&pg_source(
            col,
            &dsn,
            &format!("{q}    fields: {{connection: id, last_refresh: {col}}}\n"),
        ));
    }
    for col in ["token_set", "token_text"] {
        yaml.push_str(&pg_source(col, &dsn, &format!("{q}    infer_last_refresh: access_expires\n    fields: {{connection: id, access_expires: {{column: {col}, json_path: expires_at}}}}\n")));
    }
    let (mut e, _) = exporter(&yaml, fixed_now());
    assert!(poll(&mut e).await.iter().all(|ok| *ok), "{}", scrape(&e));
    let text = scrape(&e);
    for src in [
        "tz",
        "naive",
        "d_epoch",
        "ms_epoch",
        "num_epoch",
        "f_epoch",
        "txt",
        "txt_epoch",
        "token_set",
        "token_text",
    ] {
        let v = value(
            &text,
            "oauth_refresh_token_last_refresh_timestamp_seconds",
            &[
                ("source", src),
                ("connection", "6f1c2f6e-0000-4000-8000-000000000001"),
            ],
        );
        assert_eq!(v, 1777629600.0, "source {src}");
    }
    assert!(!text.contains("AT-x") && !text.contains("RT-x"));
    teardown(pool, &s).await;
}

/// Columns of user-defined types as Rails and Django apps declare them: a status kept in an
/// enum, ids and times in domains, a case-insensitive `citext` name. Each is read as its label
/// or its base type; a type with no reading (a range) still fails the poll naming the column
/// and its type.
#[tokio::test]
async fn enums_domains_and_citext_are_read_and_an_unreadable_type_is_named() {
    let Some((pool, s)) = setup("enums_domains_and_citext_are_read_and_an_unreadable_type_is_named", "pg_udt", &[
        "CREATE EXTENSION IF NOT EXISTS citext SCHEMA {s}".into(),
        "CREATE TYPE {s}.token_status AS ENUM ('active', 'needs_reauth', 'revoked')".into(),
        "CREATE DOMAIN {s}.conn_id AS bigint".into(),
        "CREATE DOMAIN {s}.stamp AS timestamptz".into(),
        "CREATE DOMAIN {s}.stamp2 AS {s}.stamp".into(),
        "CREATE DOMAIN {s}.tenant_id AS uuid".into(),
        "CREATE TABLE {s}.t (id {s}.conn_id, tenant {s}.tenant_id, name {s}.citext, lr {s}.stamp2, status {s}.token_status, r int4range)".into(),
        "INSERT INTO {s}.t VALUES \
           (1, '6f1c2f6e-0000-4000-8000-000000000001', 'Acme Ltd', '2026-05-31 12:00:00+00', 'active', '[1,2)'), \
           (2, '6f1c2f6e-0000-4000-8000-000000000002', 'Beta', '2026-05-30 12:00:00+00', 'revoked', '[1,2)')".into(),
    ]).await else { return };
    let dsn = pg_url();
    let q = format!("    query: SELECT * FROM {s}.t\n");
    let fields = "    fields: {connection: id, tenant: tenant, last_refresh: lr, status: status}\n";
    let yaml = format!(
        "sources:\n{}{}",
        pg_source(
            "udt",
            &dsn,
            &format!("{q}{fields}    labels: {{tenant_name: name}}\n")
        ),
        pg_source(
            "range",
            &dsn,
            &format!("{q}{fields}    labels: {{range: r}}\n")
        ),
    );
    let (mut e, _) = exporter(&yaml, fixed_now());
    let polled = poll(&mut e).await;
    let text = scrape(&e);
    teardown(pool, &s).await;
    assert_eq!(polled, [true, false], "{text}");
    assert_eq!(connections(&text, "udt"), ["1", "2"]);
    let status = |st: &str| {
        value(
            &text,
            "oauth_connections",
            &[("source", "udt"), ("status", st)],
        )
    };
    assert_eq!((status("active"), status("revoked")), (1.0, 1.0));
    assert_eq!(
        value(
            &text,
            "oauth_refresh_token_last_refresh_timestamp_seconds",
            &[("source", "udt"), ("connection", "2")]
        ),
        (fixed_now() - chrono::Duration::days(2)).timestamp() as f64
    );
    assert_eq!(
        value(
            &text,
            "oauth_connection_info",
            &[
                ("source", "udt"),
                ("connection", "1"),
                ("tenant", "6f1c2f6e-0000-4000-8000-000000000001"),
                ("tenant_name", "Acme Ltd")
            ]
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "oauth_exporter_source_errors_total",
            &[("source", "range"), ("reason", "decode")]
        ),
        1.0
    );
}

/// A refresh token kept encrypted as `bytea` (pgcrypto, django-fernet-fields): the column is
/// read (it failed the poll with `reason="decode"`), and two ciphertexts read differently even
/// where neither is UTF-8 (a lossy reading made `\xffff` and `\xfffe` the same text, so a
/// rotation and the stale write-back after it went unseen).
#[tokio::test]
async fn an_encrypted_bytea_refresh_token_is_watched_for_regressions() {
    let Some((pool, s)) = setup("an_encrypted_bytea_refresh_token_is_watched_for_regressions", "pg_bytea", &[
        "CREATE TABLE {s}.t (id text, lr timestamptz, rt bytea)".into(),
        "INSERT INTO {s}.t VALUES ('a', '2026-05-31 12:00:00+00', '\\xffff'), ('b', '2026-05-31 12:00:00+00', NULL)".into(),
    ]).await else { return };
    let yaml = format!(
        "sources:\n{}",
        pg_source(
            "enc",
            &pg_url(),
            &format!("    query: SELECT id, lr, rt FROM {s}.t\n    fields: {{connection: id, last_refresh: lr, refresh_token: rt}}\n")
        )
    );
    let (mut e, _) = exporter(&yaml, fixed_now());
    let regressions = |e: &oauth_token_exporter::Exporter| {
        value(
            &scrape(e),
            "oauth_refresh_token_regressions_total",
            &[("provider", "xero"), ("source", "enc")],
        )
    };
    let set = |v: &'static str| {
        let (pool, s) = (pool.clone(), s.clone());
        async move {
            sqlx::query(&format!("UPDATE {s}.t SET rt = '{v}' WHERE id = 'a'"))
                .execute(&pool)
                .await
                .unwrap();
        }
    };
    let mut polled = poll(&mut e).await;
    set("\\xfffe").await; // a rotation
    polled.extend(poll(&mut e).await);
    let after_rotation = regressions(&e);
    set("\\xffff").await; // the old ciphertext written back
    polled.extend(poll(&mut e).await);
    let after_write_back = regressions(&e);
    let text = scrape(&e);
    teardown(pool, &s).await;
    assert_eq!(polled, [true, true, true], "{text}");
    assert_eq!(connections(&text, "enc"), ["a", "b"]);
    assert_eq!((after_rotation, after_write_back), (0.0, 1.0));
    assert!(!text.contains("ffff") && !text.contains("fffe"));
}

#[tokio::test]
async fn xero_tokens_preset_on_postgres_with_garbage_rows_rejected_alone() {
    let Some((pool, s)) = setup("xero_tokens_preset_on_postgres_with_garbage_rows_rejected_alone", "pg_flat", &[
        "CREATE TABLE {s}.xero_tokens (id bigserial PRIMARY KEY, access_token text, refresh_token text, expires_at timestamp, tenant_id uuid, created_at timestamp, updated_at timestamp)".into(),
        "INSERT INTO {s}.xero_tokens (access_token, refresh_token, expires_at, tenant_id) VALUES \
           ('a', 'r', '2026-04-03 12:30:00', '00000000-0000-4000-8000-00000000000a'), ('a', 'r', NULL, '00000000-0000-4000-8000-00000000000b'), \
           ('a', 'r', '1970-01-01 00:30:00', '00000000-0000-4000-8000-00000000000c'), ('a', 'r', '2026-05-31 12:30:00', NULL)".into(),
    ]).await else { return };
    let yaml = format!(
        "sources:\n{}",
        pg_source(
            "flat",
            &pg_url(),
            &format!("    preset: xero_tokens\n    table: {s}.xero_tokens\n")
        )
    );
    let (mut e, _) = exporter(&yaml, fixed_now());
    assert_eq!(poll(&mut e).await, [true]);
    let text = scrape(&e);
    assert_eq!(connections(&text, "flat"), ["1", "4"]);
    assert_eq!(
        value(
            &text,
            "oauth_refresh_token_age_seconds",
            &[
                ("connection", "1"),
                ("tenant", "00000000-0000-4000-8000-00000000000a")
            ]
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
    assert_eq!(
        value(
            &text,
            "oauth_exporter_rows_rejected_total",
            &[("source", "flat"), ("reason", "impossible_timestamp")]
        ),
        1.0
    );
    teardown(pool, &s).await;
}

#[tokio::test]
async fn a_configured_statement_that_writes_is_refused_by_postgres() {
    let Some((pool, s)) = setup(
        "a_configured_statement_that_writes_is_refused_by_postgres",
        "pg_write",
        &[
            "CREATE TABLE {s}.t (id text, lr timestamptz)".into(),
            "INSERT INTO {s}.t VALUES ('a', now())".into(),
        ],
    )
    .await
    else {
        return;
    };
    let mut yaml = String::from("sources:\n");
    yaml.push_str(&pg_source("cte", &pg_url(), &format!("    query: WITH d AS (DELETE FROM {s}.t RETURNING id, lr) SELECT id, lr FROM d\n    fields: {{connection: id, last_refresh: lr}}\n")));
    yaml.push_str(&pg_source("upd", &pg_url(), &format!("    query: UPDATE {s}.t SET lr = now() RETURNING id, lr\n    fields: {{connection: id, last_refresh: lr}}\n")));
    let (mut e, _) = exporter(&yaml, fixed_now());
    assert_eq!(poll(&mut e).await, [false, false]);
    let text = scrape(&e);
    assert_poll_errors(&text, &["cte", "upd"], "write_refused", 1.0);
    let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {s}.t"))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 1);
    teardown(pool, &s).await;
}

/// A source `name` reading `{schema}.t (id, lr)` through a fault-injecting proxy in front of
/// PostgreSQL (1 s timeout): the proxy and the config.
async fn behind_fault_proxy(name: &str, schema: &str) -> (FaultProxy, String) {
    let target = pg_url()
        .split('@')
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let proxy = FaultProxy::start(target).await;
    let dsn = format!("postgres://postgres@{}/test", proxy.addr);
    let yaml = format!("sources:\n{}", pg_source(name, &dsn, &format!("    interval: 5s\n    timeout: 1s\n    query: SELECT id, lr FROM {schema}.t\n    fields: {{connection: id, last_refresh: lr}}\n")));
    (proxy, yaml)
}

#[tokio::test]
async fn postgres_going_away_keeps_last_values_and_the_source_recovers_by_itself() {
    let Some((pool, s)) = setup("postgres_going_away_keeps_last_values_and_the_source_recovers_by_itself", "pg_outage", &[
        "CREATE TABLE {s}.t (id text, lr timestamptz)".into(),
        "INSERT INTO {s}.t VALUES ('a', '2026-05-01 10:00:00+00'), ('b', '2026-05-02 10:00:00+00')".into(),
    ]).await else { return };
    let (proxy, yaml) = behind_fault_proxy("flaky", &s).await;
    let (mut e, clock) = exporter(&yaml, fixed_now());
    assert_eq!(poll(&mut e).await, [true]);
    proxy.cut();
    clock.advance(chrono::Duration::minutes(1));
    assert_eq!(poll(&mut e).await, [false]);
    assert_eq!(poll(&mut e).await, [false]);
    let text = scrape(&e);
    assert_eq!(
        value(&text, "oauth_exporter_source_up", &[("source", "flaky")]),
        0.0
    );
    let failures: f64 = ["connect", "timeout", "query"]
        .iter()
        .map(|r| {
            value(
                &text,
                "oauth_exporter_source_errors_total",
                &[("source", "flaky"), ("reason", r)],
            )
        })
        .sum();
    assert_eq!(failures, 2.0, "{text}");
    assert_eq!(
        connections(&text, "flaky"),
        ["a", "b"],
        "last good values stay exported"
    );
    assert_eq!(
        value(
            &text,
            "oauth_exporter_source_last_success_timestamp_seconds",
            &[("source", "flaky")]
        ),
        fixed_now().timestamp() as f64
    );
    proxy.restore();
    clock.advance(chrono::Duration::minutes(1));
    assert_eq!(poll(&mut e).await, [true]);
    let text = scrape(&e);
    assert_eq!(
        value(&text, "oauth_exporter_source_up", &[("source", "flaky")]),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "oauth_exporter_source_last_success_timestamp_seconds",
            &[("source", "flaky")]
        ),
        fixed_now().timestamp() as f64 + 120.0
    );
    assert_eq!(
        value(
            &text,
            "oauth_connections_removed_total",
            &[("source", "flaky")]
        ),
        0.0,
        "an outage is not a removal"
    );
    teardown(pool, &s).await;
}

#[tokio::test]
async fn postgres_stalling_times_out_and_a_reset_fails_the_poll_and_the_source_recovers_from_both()
{
    let Some((pool, s)) = setup(
        "postgres_stalling_times_out_and_a_reset_fails_the_poll_and_the_source_recovers_from_both",
        "pg_stall",
        &[
            "CREATE TABLE {s}.t (id text, lr timestamptz)".into(),
            "INSERT INTO {s}.t VALUES ('a', '2026-05-01 10:00:00+00')".into(),
        ],
    )
    .await
    else {
        return;
    };
    let (proxy, yaml) = behind_fault_proxy("hung", &s).await;
    let (mut e, _) = exporter(&yaml, fixed_now());
    assert_eq!(poll(&mut e).await, [true]);
    let errors = |e: &oauth_token_exporter::Exporter, reason: &str| {
        value(
            &scrape(e),
            "oauth_exporter_source_errors_total",
            &[("source", "hung"), ("reason", reason)],
        )
    };
    // A stalled server: the poll gives up at its deadline; the exposition is served meanwhile.
    proxy.stall();
    let started = std::time::Instant::now();
    assert_eq!(poll(&mut e).await, [false]);
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
    // The pool's health check or the query hits the deadline first: connect or timeout.
    assert_eq!(errors(&e, "timeout") + errors(&e, "connect"), 1.0);
    assert_eq!(connections(&scrape(&e), "hung"), ["a"], "last values stay");
    proxy.restore();
    let mut recovered = false;
    for _ in 0..3 {
        if poll(&mut e).await == [true] {
            recovered = true;
            break;
        }
    }
    assert!(recovered, "recovers from a stall: {}", scrape(&e));
    // A connection reset by peer.
    proxy.reset();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let mut failed = 0;
    let mut recovered = false;
    for _ in 0..4 {
        if poll(&mut e).await == [true] {
            recovered = true;
            break;
        }
        failed += 1;
    }
    assert!(recovered, "recovers from a reset: {}", scrape(&e));
    assert!(
        failed <= 1,
        "at most the poll on the reset connection fails"
    );
    assert_eq!(
        value(
            &scrape(&e),
            "oauth_exporter_source_up",
            &[("source", "hung")]
        ),
        1.0
    );
    teardown(pool, &s).await;
}
