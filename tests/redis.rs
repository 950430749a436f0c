//! Redis source against the real server (127.0.0.1:6379), each test under its own key prefix.

mod common;
use common::*;
use redis::AsyncCommands;

fn redis_url() -> String {
    std::env::var("OTE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

async fn setup(test: &str, id: &str) -> Option<(redis::aio::MultiplexedConnection, String)> {
    if !server_or_skip(test, "Redis", &redis_url()).await {
        return None;
    }
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect to Redis");
    let prefix = unique(id);
    cleanup(&mut conn, &prefix).await;
    Some((conn, prefix))
}

async fn cleanup(conn: &mut redis::aio::MultiplexedConnection, prefix: &str) {
    let keys: Vec<String> = conn.keys(format!("{prefix}:*")).await.unwrap();
    for k in keys {
        let _: () = conn.del(k).await.unwrap();
    }
}

#[tokio::test]
async fn quickbooks_tokens_in_redis_hashes_are_exported_with_their_100_day_window() {
    let Some((mut conn, p)) = setup(
        "quickbooks_tokens_in_redis_hashes_are_exported_with_their_100_day_window",
        "rd_hash",
    )
    .await
    else {
        return;
    };
    let now = fixed_now().timestamp();
    // Laravel-style hashes: realm id, tokens, and timestamps in several shapes.
    let _: () = conn
        .hset_multiple(
            format!("{p}:qbo:9130350"),
            &[
                ("realm_id", "9130350"),
                ("access_token", "AT-qbo"),
                ("refresh_token", "RT-qbo"),
                ("refreshed_at", &(now - 95 * 86400).to_string()),
                ("authorized_at", "2024-01-01T00:00:00Z"),
            ],
        )
        .await
        .unwrap();
    let _: () = conn
        .hset_multiple(
            format!("{p}:qbo:9130351"),
            &[
                ("realm_id", "9130351"),
                ("refreshed_at", "2026-05-31 12:00:00"),
            ],
        )
        .await
        .unwrap();
    let _: () = conn
        .hset_multiple(
            format!("{p}:qbo:9130352"),
            &[("realm_id", "9130352"), ("refreshed_at", "never")],
        )
        .await
        .unwrap();
    // A key of the wrong type under the pattern, and one outside it.
    let _: () = conn
        .set(format!("{p}:qbo:broken"), "not a hash")
        .await
        .unwrap();
    let _: () = conn
        .hset(format!("{p}:other:1"), "refreshed_at", now)
        .await
        .unwrap();
    let yaml = format!(
        "sources:\n  - name: qbo\n    kind: redis\n    dsn: {}\n    provider: quickbooks\n    key_pattern: '{p}:qbo:*'\n    value: hash\n    fields:\n      connection: realm_id\n      last_refresh: refreshed_at\n      authorized_at: authorized_at\n",
        redis_url()
    );
    let (mut e, _) = exporter(&yaml, fixed_now());
    assert_eq!(poll(&mut e).await, [true], "{}", scrape(&e));
    let text = scrape(&e);
    assert_eq!(connections(&text, "qbo"), ["9130350", "9130351"]);
    let l = [("provider", "quickbooks"), ("connection", "9130350")];
    assert_eq!(
        value(&text, "oauth_refresh_token_age_seconds", &l),
        95.0 * 86400.0
    );
    assert_eq!(
        value(&text, "oauth_refresh_token_expiry_timestamp_seconds", &l),
        (now + 5 * 86400) as f64,
        "100 days rolling"
    );
    assert_eq!(
        value(
            &text,
            "oauth_connections_expiring",
            &[("source", "qbo"), ("within", "7d")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "oauth_provider_refresh_token_lifetime_seconds",
            &[("source", "qbo")]
        ),
        100.0 * 86400.0
    );
    assert_eq!(
        value(
            &text,
            "oauth_provider_refresh_token_max_lifetime_seconds",
            &[("source", "qbo")]
        ),
        1825.0 * 86400.0
    );
    assert_eq!(
        value(
            &text,
            "oauth_exporter_rows_rejected_total",
            &[("source", "qbo"), ("reason", "unparseable_timestamp")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "oauth_exporter_rows_rejected_total",
            &[("source", "qbo"), ("reason", "wrong_type")]
        ),
        1.0
    );
    assert!(!text.contains("AT-qbo") && !text.contains("RT-qbo"));
    cleanup(&mut conn, &p).await;
}

#[tokio::test]
async fn json_token_sets_in_redis_strings_use_the_key_as_connection() {
    let Some((mut conn, p)) = setup(
        "json_token_sets_in_redis_strings_use_the_key_as_connection",
        "rd_json",
    )
    .await
    else {
        return;
    };
    let _: () = conn.set(format!("{p}:xero:tenant-a"), r#"{"access_token":"AT-j","refresh_token":"RT-j","expires_at":1777631400,"token_type":"Bearer"}"#).await.unwrap();
    let _: () = conn
        .set(format!("{p}:xero:tenant-b"), "{broken")
        .await
        .unwrap();
    let yaml = format!("sources:\n  - name: rj\n    kind: redis\n    dsn: {}\n    key_pattern: '{p}:xero:*'\n    value: json\n", redis_url());
    let (mut e, _) = exporter(&yaml, fixed_now());
    assert_eq!(poll(&mut e).await, [true]);
    let text = scrape(&e);
    let key = format!("{p}:xero:tenant-a");
    assert_eq!(connections(&text, "rj"), std::slice::from_ref(&key));
    assert_eq!(
        value(
            &text,
            "oauth_refresh_token_last_refresh_timestamp_seconds",
            &[("connection", &key)]
        ),
        1777629600.0
    );
    assert_eq!(
        value(
            &text,
            "oauth_exporter_rows_rejected_total",
            &[("source", "rj"), ("reason", "invalid_json")]
        ),
        1.0
    );
    cleanup(&mut conn, &p).await;
}

#[tokio::test]
async fn the_key_bound_stops_the_scan_and_is_reported() {
    let Some((mut conn, p)) =
        setup("the_key_bound_stops_the_scan_and_is_reported", "rd_bound").await
    else {
        return;
    };
    for i in 0..30 {
        let _: () = conn
            .hset(format!("{p}:k:{i}"), "t", 1777629600)
            .await
            .unwrap();
    }
    let yaml = format!("sources:\n  - name: rb\n    kind: redis\n    dsn: {}\n    key_pattern: '{p}:k:*'\n    max_keys: 10\n    fields: {{connection: _key, last_refresh: t}}\n", redis_url());
    let (mut e, _) = exporter(&yaml, fixed_now());
    assert_eq!(poll(&mut e).await, [true]);
    let text = scrape(&e);
    assert_eq!(connections(&text, "rb").len(), 10);
    assert_eq!(
        value(
            &text,
            "oauth_exporter_source_errors_total",
            &[("source", "rb"), ("reason", "key_limit")]
        ),
        1.0
    );
    cleanup(&mut conn, &p).await;
}

#[tokio::test]
async fn redis_going_away_keeps_last_values_and_the_source_recovers() {
    let Some((mut conn, p)) = setup(
        "redis_going_away_keeps_last_values_and_the_source_recovers",
        "rd_outage",
    )
    .await
    else {
        return;
    };
    let _: () = conn
        .hset(format!("{p}:k:1"), "t", 1777629600)
        .await
        .unwrap();
    let target = redis_url().trim_start_matches("redis://").to_string();
    let proxy = FaultProxy::start(target).await;
    let yaml = format!("sources:\n  - name: ro\n    kind: redis\n    dsn: redis://{}\n    timeout: 1s\n    interval: 5s\n    key_pattern: '{p}:k:*'\n    fields: {{connection: _key, last_refresh: t}}\n", proxy.addr);
    let (mut e, _) = exporter(&yaml, fixed_now());
    assert_eq!(poll(&mut e).await, [true]);
    proxy.cut();
    assert_eq!(poll(&mut e).await, [false]);
    let text = scrape(&e);
    assert_eq!(
        value(&text, "oauth_exporter_source_up", &[("source", "ro")]),
        0.0
    );
    assert_eq!(
        connections(&text, "ro").len(),
        1,
        "last good values stay exported"
    );
    proxy.restore();
    assert_eq!(poll(&mut e).await, [true]);
    assert_eq!(
        value(&scrape(&e), "oauth_exporter_source_up", &[("source", "ro")]),
        1.0
    );
    cleanup(&mut conn, &p).await;
}
