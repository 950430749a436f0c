//! SQLite source against real database files.

mod common;
use common::*;

const T: &str = "2026-05-01T10:00:00Z";

fn source(name: &str, path: &std::path::Path, rest: &str) -> String {
    format!(
        "sources:\n  - name: {name}\n    kind: sqlite\n    dsn: {}\n{rest}",
        path.display()
    )
}

#[tokio::test]
async fn every_timestamp_shape_in_sqlite_gives_the_same_last_refresh() {
    let (_d, path, _pool) = sqlite_db(&[
        "CREATE TABLE shapes (id TEXT, lr)",
        "INSERT INTO shapes VALUES ('epoch_seconds', 1777629600), ('epoch_millis', 1777629600000), \
         ('epoch_real', 1777629600.0), ('epoch_text', '1777629600'), ('rfc3339_z', '2026-05-01T10:00:00Z'), \
         ('rfc3339_offset', '2026-05-01T22:00:00+12:00'), ('naive_space', '2026-05-01 10:00:00'), \
         ('naive_t_millis', '2026-05-01T10:00:00.000'), ('pg_text', '2026-05-01 10:00:00+00'), \
         ('ms_json_date', '/Date(1777629600000+0000)/')",
    ])
    .await;
    let yaml = source(
        "shapes",
        &path,
        "    query: SELECT id, lr FROM shapes\n    fields: {connection: id, last_refresh: lr}\n",
    );
    let (mut e, _) = exporter(&yaml, fixed_now());
    assert_eq!(poll(&mut e).await, [true]);
    let text = scrape(&e);
    let ids = connections(&text, "shapes");
    assert_eq!(ids.len(), 10, "{text}");
    for id in ids {
        let v = value(
            &text,
            "oauth_refresh_token_last_refresh_timestamp_seconds",
            &[("connection", &id)],
        );
        assert_eq!(v, t(T).timestamp() as f64, "shape {id}");
    }
    assert_eq!(
        value(
            &text,
            "oauth_exporter_rows_rejected_total",
            &[("reason", "unparseable_timestamp")]
        ),
        0.0
    );
}

#[tokio::test]
async fn expires_in_relative_to_fetched_at_and_json_token_set_are_read() {
    let (_d, path, _pool) = sqlite_db(&[
        "CREATE TABLE rel (id INTEGER, expires_in TEXT, fetched_at TEXT)",
        "INSERT INTO rel VALUES (1, '1800', '2026-05-01 10:00:00'), (2, 1800, 1777629600)",
        "CREATE TABLE sets (id TEXT, token_set TEXT)",
        "INSERT INTO sets VALUES ('a', '{\"access_token\":\"AT-secret\",\"refresh_token\":\"RT-secret\",\"expires_at\":1777631400,\"scope\":\"offline_access\"}')",
    ])
    .await;
    let yaml = format!(
        "{}\n  - name: json\n    kind: sqlite\n    dsn: {}\n    query: SELECT id, token_set FROM sets\n    infer_last_refresh: access_expires\n    fields:\n      connection: id\n      access_expires: {{column: token_set, json_path: expires_at}}\n",
        source("rel", &path, "    query: SELECT id, expires_in, fetched_at FROM rel\n    infer_last_refresh: access_expires\n    fields:\n      connection: id\n      access_expires: {column: expires_in, format: relative_seconds, relative_to: fetched_at}").trim_end(),
        path.display()
    );
    let (mut e, _) = exporter(&yaml, fixed_now());
    assert_eq!(poll(&mut e).await, [true, true]);
    let text = scrape(&e);
    for (src, id) in [("rel", "1"), ("rel", "2"), ("json", "a")] {
        let l = [("source", src), ("connection", id)];
        assert_eq!(
            value(&text, "oauth_access_token_expiry_timestamp_seconds", &l),
            1777631400.0,
            "{src}/{id}"
        );
        assert_eq!(
            value(
                &text,
                "oauth_refresh_token_last_refresh_timestamp_seconds",
                &l
            ),
            1777629600.0
        );
        assert_eq!(
            value(&text, "oauth_refresh_token_expiry_timestamp_seconds", &l),
            1777629600.0 + 60.0 * 86400.0
        );
    }
    assert!(
        !text.contains("secret"),
        "a token value leaked into the exposition"
    );
}

#[tokio::test]
async fn null_garbage_impossible_duplicate_and_idless_rows_are_rejected_alone() {
    let (_d, path, _pool) = sqlite_db(&[
        "CREATE TABLE t (id TEXT, lr)",
        "INSERT INTO t VALUES ('good1', '2026-05-01T10:00:00Z'), ('null', NULL), ('garbage', 'last tuesday'), \
         ('zero', 0), ('future', '2030-01-01T00:00:00Z'), ('good2', 1777629600), ('good1', 1777629600), (NULL, 1777629600), ('good3', '2026-05-02 00:00:00')",
    ])
    .await;
    let yaml = source(
        "bad",
        &path,
        "    query: SELECT id, lr FROM t\n    fields: {connection: id, last_refresh: lr}\n",
    );
    let (mut e, _) = exporter(&yaml, fixed_now());
    assert_eq!(poll(&mut e).await, [true]);
    let text = scrape(&e);
    assert_eq!(connections(&text, "bad"), ["good1", "good2", "good3"]);
    let rejected = |r: &str| {
        value(
            &text,
            "oauth_exporter_rows_rejected_total",
            &[("source", "bad"), ("reason", r)],
        )
    };
    assert_eq!(rejected("null_timestamp"), 1.0);
    assert_eq!(rejected("unparseable_timestamp"), 1.0);
    assert_eq!(rejected("impossible_timestamp"), 2.0);
    assert_eq!(rejected("duplicate_connection"), 1.0);
    assert_eq!(rejected("missing_connection"), 1.0);
    assert_eq!(
        value(&text, "oauth_exporter_source_up", &[("source", "bad")]),
        1.0
    );
    // Counted again on every poll while the rows stay bad.
    poll(&mut e).await;
    assert_eq!(
        value(
            &scrape(&e),
            "oauth_exporter_rows_rejected_total",
            &[("reason", "null_timestamp")]
        ),
        2.0
    );
}

#[tokio::test]
async fn xero_tokens_preset_reads_the_flat_table_without_reading_tokens() {
    let (_d, path, _pool) = sqlite_db(&[
        "CREATE TABLE xero_tokens (id INTEGER PRIMARY KEY, access_token TEXT, refresh_token TEXT, expires_at DATETIME, tenant_id TEXT, created_at DATETIME, updated_at DATETIME)",
        // Refreshed 59 days ago, 1 day ago, and 61 days ago (expired).
        "INSERT INTO xero_tokens VALUES (1, 'AT-one', 'RT-one', '2026-04-03 12:30:00', 'tenant-a', '2025-01-01 00:00:00', '2026-05-31 12:00:00'), \
         (2, 'AT-two', 'RT-two', '2026-05-31 12:30:00', 'tenant-b', '2025-01-01 00:00:00', '2026-05-31 12:00:00'), \
         (3, 'AT-three', 'RT-three', '2026-04-01 12:30:00', 'tenant-c', '2025-01-01 00:00:00', '2026-04-01 12:00:00')",
    ])
    .await;
    let yaml = source("flat", &path, "    preset: xero_tokens\n");
    let (mut e, _) = exporter(&yaml, fixed_now());
    assert_eq!(poll(&mut e).await, [true]);
    let text = scrape(&e);
    let day = 86400.0;
    assert_eq!(
        value(
            &text,
            "oauth_refresh_token_age_seconds",
            &[("connection", "1"), ("tenant", "tenant-a")]
        ),
        59.0 * day
    );
    assert_eq!(
        value(
            &text,
            "oauth_refresh_token_age_seconds",
            &[("connection", "2")]
        ),
        day
    );
    assert_eq!(
        value(&text, "oauth_refresh_token_expired", &[("connection", "3")]),
        1.0
    );
    assert_eq!(
        value(&text, "oauth_refresh_token_expired", &[("connection", "1")]),
        0.0
    );
    assert_eq!(
        value(
            &text,
            "oauth_connection_status",
            &[("connection", "3"), ("status", "needs_reauth")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "oauth_connections_expiring",
            &[("source", "flat"), ("within", "1d")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "oauth_connections_expiring",
            &[("source", "flat"), ("within", "30d")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "oauth_connections",
            &[("source", "flat"), ("status", "needs_reauth")]
        ),
        1.0
    );
    assert!(!text.contains("AT-") && !text.contains("RT-"));
}

#[tokio::test]
async fn token_set_json_preset_reads_expires_at_and_rejects_broken_json_alone() {
    let (_d, path, _pool) = sqlite_db(&[
        "CREATE TABLE xero_token_sets (id TEXT, tenant_id TEXT, token_set TEXT, updated_at TEXT)",
        "INSERT INTO xero_token_sets VALUES ('ok', 't1', '{\"access_token\":\"AT\",\"refresh_token\":\"RT\",\"expires_at\":1777631400,\"id_token\":\"x\",\"scope\":\"openid offline_access\"}', ''), \
         ('broken', 't2', '{\"expires_at\": 17776', ''), ('no_expiry', 't3', '{\"access_token\":\"AT\"}', '')",
    ])
    .await;
    let yaml = source("sets", &path, "    preset: token_set_json\n");
    let (mut e, _) = exporter(&yaml, fixed_now());
    assert_eq!(poll(&mut e).await, [true]);
    let text = scrape(&e);
    assert_eq!(connections(&text, "sets"), ["ok"]);
    assert_eq!(
        value(
            &text,
            "oauth_refresh_token_last_refresh_timestamp_seconds",
            &[("connection", "ok")]
        ),
        1777629600.0
    );
    assert_eq!(
        value(
            &text,
            "oauth_exporter_rows_rejected_total",
            &[("reason", "unparseable_timestamp")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "oauth_exporter_rows_rejected_total",
            &[("reason", "null_timestamp")]
        ),
        1.0
    );
}

#[tokio::test]
async fn a_configured_query_that_writes_is_refused_by_the_read_only_sqlite_connection() {
    let (_d, path, pool) = sqlite_db(&[
        "CREATE TABLE t (id TEXT, lr INTEGER)",
        "INSERT INTO t VALUES ('a', 1777629600)",
    ])
    .await;
    let yaml = source("w", &path, "    query: INSERT INTO t VALUES ('injected', 1777629600) RETURNING id, lr\n    fields: {connection: id, last_refresh: lr}\n");
    let (mut e, _) = exporter(&yaml, fixed_now());
    assert_eq!(poll(&mut e).await, [false]);
    let text = scrape(&e);
    assert_eq!(
        value(
            &text,
            "oauth_exporter_source_errors_total",
            &[("source", "w"), ("reason", "write_refused")]
        ),
        1.0
    );
    assert_eq!(
        value(&text, "oauth_exporter_source_up", &[("source", "w")]),
        0.0
    );
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM t")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 1, "the write reached the store");
}

#[tokio::test]
async fn a_deleted_row_stops_being_exported_and_is_counted_as_removed() {
    let (_d, path, pool) = sqlite_db(&[
        "CREATE TABLE t (id TEXT, lr INTEGER)",
        "INSERT INTO t VALUES ('a', 1777629600), ('b', 1777629600), ('c', 1777629600)",
    ])
    .await;
    let yaml = source(
        "del",
        &path,
        "    query: SELECT id, lr FROM t\n    fields: {connection: id, last_refresh: lr}\n",
    );
    let (mut e, _) = exporter(&yaml, fixed_now());
    poll(&mut e).await;
    assert_eq!(
        value(
            &scrape(&e),
            "oauth_connections_removed_total",
            &[("source", "del")]
        ),
        0.0
    );
    sqlx::query("DELETE FROM t WHERE id IN ('a', 'b')")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO t VALUES ('d', 1777629600)")
        .execute(&pool)
        .await
        .unwrap();
    poll(&mut e).await;
    let text = scrape(&e);
    assert_eq!(connections(&text, "del"), ["c", "d"]);
    assert_eq!(
        value(
            &text,
            "oauth_connections_removed_total",
            &[("source", "del"), ("provider", "xero")]
        ),
        2.0
    );
}

#[tokio::test]
async fn per_connection_series_are_capped_while_aggregates_count_every_connection() {
    let mut stmts = vec!["CREATE TABLE t (id TEXT, lr INTEGER)".to_string()];
    for i in 0..50 {
        // Connection i refreshed 2i days ago: c30..c49 are past 60 days.
        stmts.push(format!(
            "INSERT INTO t VALUES ('c{i:02}', {})",
            fixed_now().timestamp() - 2 * i * 86400
        ));
    }
    let refs: Vec<&str> = stmts.iter().map(String::as_str).collect();
    let (_d, path, _pool) = sqlite_db(&refs).await;
    let yaml = source("cap", &path, "    max_connections: 10\n    query: SELECT id, lr FROM t\n    fields: {connection: id, last_refresh: lr}\n");
    let (mut e, _) = exporter(&yaml, fixed_now());
    poll(&mut e).await;
    let text = scrape(&e);
    let ids = connections(&text, "cap");
    assert_eq!(
        ids,
        (40..50).map(|i| format!("c{i}")).collect::<Vec<_>>(),
        "keeps those closest to expiry"
    );
    assert_eq!(
        value(
            &text,
            "oauth_exporter_connections_truncated",
            &[("source", "cap")]
        ),
        40.0
    );
    assert_eq!(
        value(
            &text,
            "oauth_connections",
            &[("source", "cap"), ("status", "active")]
        ),
        30.0
    );
    assert_eq!(
        value(
            &text,
            "oauth_connections",
            &[("source", "cap"), ("status", "needs_reauth")]
        ),
        20.0
    );
}

#[tokio::test]
async fn a_locked_store_times_out_keeps_the_last_values_and_recovers_by_itself() {
    let (_d, path, pool) = sqlite_db(&[
        "CREATE TABLE t (id TEXT, lr INTEGER)",
        "INSERT INTO t VALUES ('a', 1777629600)",
    ])
    .await;
    let yaml = source("locked", &path, "    interval: 2s\n    timeout: 300ms\n    query: SELECT id, lr FROM t\n    fields: {connection: id, last_refresh: lr}\n");
    let (mut e, clock) = exporter(&yaml, fixed_now());
    assert_eq!(poll(&mut e).await, [true]);
    let first_success = value(
        &scrape(&e),
        "oauth_exporter_source_last_success_timestamp_seconds",
        &[("source", "locked")],
    );
    // The host app holds an exclusive lock: the store is there but does not answer.
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut *conn)
        .await
        .unwrap();
    clock.advance(chrono::Duration::minutes(1));
    assert_eq!(poll(&mut e).await, [false]);
    let text = scrape(&e);
    assert_eq!(
        value(&text, "oauth_exporter_source_up", &[("source", "locked")]),
        0.0
    );
    let errors: f64 = ["timeout", "query"]
        .iter()
        .map(|r| {
            value(
                &text,
                "oauth_exporter_source_errors_total",
                &[("source", "locked"), ("reason", r)],
            )
        })
        .sum();
    assert_eq!(errors, 1.0, "{text}");
    assert_eq!(
        connections(&text, "locked"),
        ["a"],
        "last good values stay exported"
    );
    assert_eq!(
        value(
            &text,
            "oauth_exporter_source_last_success_timestamp_seconds",
            &[("source", "locked")]
        ),
        first_success
    );
    sqlx::query("COMMIT").execute(&mut *conn).await.unwrap();
    drop(conn);
    clock.advance(chrono::Duration::minutes(1));
    assert_eq!(poll(&mut e).await, [true]);
    let text = scrape(&e);
    assert_eq!(
        value(&text, "oauth_exporter_source_up", &[("source", "locked")]),
        1.0
    );
    assert!(
        value(
            &text,
            "oauth_exporter_source_last_success_timestamp_seconds",
            &[("source", "locked")]
        ) > first_success
    );
}

#[tokio::test]
async fn a_missing_column_fails_the_poll_with_the_mapping_reason() {
    let (_d, path, _pool) = sqlite_db(&[
        "CREATE TABLE t (id TEXT, lr INTEGER)",
        "INSERT INTO t VALUES ('a', 1)",
    ])
    .await;
    let yaml = source(
        "m",
        &path,
        "    query: SELECT id, lr FROM t\n    fields: {connection: id, last_refresh: updated_at}\n",
    );
    let (mut e, _) = exporter(&yaml, fixed_now());
    assert_eq!(poll(&mut e).await, [false]);
    assert_eq!(
        value(
            &scrape(&e),
            "oauth_exporter_source_errors_total",
            &[("reason", "mapping")]
        ),
        1.0
    );
}

#[tokio::test]
async fn a_stored_refresh_token_reverting_to_an_earlier_value_counts_as_a_regression() {
    let (_d, path, pool) = sqlite_db(&[
        "CREATE TABLE t (id TEXT, lr INTEGER, refresh_token TEXT)",
        "INSERT INTO t VALUES ('a', 1777629600, 'Canary-RT-one'), ('b', 1777629600, 'Canary-RT-b')",
    ])
    .await;
    let yaml = source("reg", &path, "    query: SELECT id, lr, refresh_token FROM t\n    fields: {connection: id, last_refresh: lr, refresh_token: refresh_token}\n");
    let (mut e, _) = exporter(&yaml, fixed_now());
    poll(&mut e).await;
    let regressions = |e: &oauth_token_exporter::Exporter| {
        value(
            &scrape(e),
            "oauth_refresh_token_regressions_total",
            &[("provider", "xero"), ("source", "reg")],
        )
    };
    assert_eq!(regressions(&e), 0.0, "exists at 0 from the first scrape");
    // A normal rotation.
    sqlx::query("UPDATE t SET refresh_token = 'Canary-RT-two' WHERE id = 'a'")
        .execute(&pool)
        .await
        .unwrap();
    poll(&mut e).await;
    assert_eq!(regressions(&e), 0.0);
    // A worker writes the old token back over the new one.
    sqlx::query("UPDATE t SET refresh_token = 'Canary-RT-one' WHERE id = 'a'")
        .execute(&pool)
        .await
        .unwrap();
    poll(&mut e).await;
    assert_eq!(regressions(&e), 1.0);
    poll(&mut e).await;
    assert_eq!(
        regressions(&e),
        1.0,
        "an unchanged value is not a new regression"
    );
    let text = scrape(&e);
    assert!(
        !text.contains("Canary-RT"),
        "no token value in the exposition"
    );
}
