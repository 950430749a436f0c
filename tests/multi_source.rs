//! One process watches a Xero fleet in PostgreSQL, a QuickBooks fleet in Redis and a token
//! file at once, with per-source health: the real binary, scraped over HTTP.

mod common;
use common::*;
use redis::AsyncCommands;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_oauth-token-exporter");

fn http_get(port: u16, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[tokio::test]
async fn one_process_watches_postgres_xero_redis_quickbooks_and_a_token_file_with_per_source_health(
) {
    let test = "one_process_watches_postgres_xero_redis_quickbooks_and_a_token_file_with_per_source_health";
    let redis_url =
        std::env::var("OTE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    if !server_or_skip(test, "PostgreSQL", &pg_url()).await
        || !server_or_skip(test, "Redis", &redis_url).await
    {
        return;
    }
    let now = chrono::Utc::now().timestamp();
    // Xero in PostgreSQL (the flat table).
    let pg = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&pg_url())
        .await
        .unwrap();
    let schema = unique("multi");
    for s in [
        format!("DROP SCHEMA IF EXISTS {schema} CASCADE"),
        format!("CREATE SCHEMA {schema}"),
        format!("CREATE TABLE {schema}.xero_tokens (id int, access_token text, refresh_token text, expires_at timestamptz, tenant_id text)"),
        format!("INSERT INTO {schema}.xero_tokens VALUES (1, 'AT', 'RT', now() - interval '40 days' + interval '30 minutes', 'xero-t1'), (2, 'AT', 'RT', now() + interval '20 minutes', 'xero-t2')"),
    ] {
        sqlx::query(&s).execute(&pg).await.unwrap();
    }
    // QuickBooks in Redis hashes.
    let mut r = redis::Client::open(redis_url.clone())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let prefix = unique("multi");
    let _: () = r
        .hset_multiple(
            format!("{prefix}:qbo:111"),
            &[
                ("realm", "111"),
                ("refreshed_at", &(now - 95 * 86400).to_string()),
            ],
        )
        .await
        .unwrap();
    let _: () = r
        .hset_multiple(
            format!("{prefix}:qbo:222"),
            &[
                ("realm", "222"),
                ("refreshed_at", &(now - 86400).to_string()),
            ],
        )
        .await
        .unwrap();
    // A xero-node token file.
    let d = tempfile::tempdir().unwrap();
    let token_file = d.path().join("shop.json");
    std::fs::write(
        &token_file,
        format!(
            r#"{{"access_token":"AT-f","refresh_token":"RT-f","expires_at":{}}}"#,
            now - 3600
        ),
    )
    .unwrap();
    let cfg = d.path().join("config.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  poll_interval: 1s\n  poll_timeout: 1s\nsources:\n  - name: xero_pg\n    kind: postgres\n    dsn_env: OTE_MULTI_PG_DSN\n    preset: xero_tokens\n    table: {schema}.xero_tokens\n  - name: qbo_redis\n    kind: redis\n    dsn: {redis_url}\n    provider: quickbooks\n    key_pattern: '{prefix}:qbo:*'\n    fields: {{connection: realm, last_refresh: refreshed_at}}\n  - name: token_file\n    kind: file\n    path: {}\n",
            token_file.display()
        ),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _child = Kill(
        Command::new(BIN)
            .args([
                "--collector.relative-metrics",
                "--config.file",
                cfg.to_str().unwrap(),
                "--web.listen-address",
                &format!("127.0.0.1:{port}"),
            ])
            .env("OTE_MULTI_PG_DSN", pg_url())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut ready = false;
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            && http_get(port, "/-/ready").starts_with("HTTP/1.1 200")
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "not ready: {}", http_get(port, "/-/ready"));
    let text = http_get(port, "/metrics");
    for src in ["xero_pg", "qbo_redis", "token_file"] {
        assert_eq!(
            value(&text, "oauth_exporter_source_up", &[("source", src)]),
            1.0,
            "{src}"
        );
    }
    let age = |src: &str, conn: &str| {
        value(
            &text,
            "oauth_refresh_token_age_seconds",
            &[("source", src), ("connection", conn)],
        )
    };
    assert!((age("xero_pg", "1") - 40.0 * 86400.0).abs() < 60.0);
    assert!((age("qbo_redis", "111") - 95.0 * 86400.0).abs() < 60.0);
    assert!((age("token_file", "shop") - 5400.0).abs() < 60.0);
    assert_eq!(
        value(
            &text,
            "oauth_connections",
            &[
                ("provider", "xero"),
                ("source", "xero_pg"),
                ("status", "active")
            ]
        ),
        2.0
    );
    assert_eq!(
        value(
            &text,
            "oauth_connections",
            &[
                ("provider", "quickbooks"),
                ("source", "qbo_redis"),
                ("status", "active")
            ]
        ),
        2.0
    );
    // Each source expires on its own provider's clock: QuickBooks 111 expires in ~5 days.
    assert_eq!(
        value(
            &text,
            "oauth_connections_expiring",
            &[("source", "qbo_redis"), ("within", "7d")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "oauth_connections_expiring",
            &[("source", "xero_pg"), ("within", "30d")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "oauth_provider_refresh_token_lifetime_seconds",
            &[("source", "qbo_redis")]
        ),
        100.0 * 86400.0
    );
    assert_eq!(
        value(
            &text,
            "oauth_provider_refresh_token_lifetime_seconds",
            &[("source", "xero_pg")]
        ),
        60.0 * 86400.0
    );
    assert!(!text.contains("AT-f") && !text.contains("RT-f"));

    // The token file goes away: only that source goes down; the others keep being polled.
    std::fs::remove_file(&token_file).unwrap();
    let _: () = r
        .hset_multiple(
            format!("{prefix}:qbo:333"),
            &[("realm", "333"), ("refreshed_at", &now.to_string())],
        )
        .await
        .unwrap();
    let mut seen = String::new();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        seen = http_get(port, "/metrics");
        if sample(
            &seen,
            "oauth_exporter_source_up",
            &[("source", "token_file")],
        ) == Some(0.0)
            && sample(
                &seen,
                "oauth_connections",
                &[("source", "qbo_redis"), ("status", "active")],
            ) == Some(3.0)
        {
            break;
        }
    }
    assert_eq!(
        value(
            &seen,
            "oauth_exporter_source_up",
            &[("source", "token_file")]
        ),
        0.0,
        "{seen}"
    );
    assert_eq!(
        value(&seen, "oauth_exporter_source_up", &[("source", "xero_pg")]),
        1.0
    );
    assert_eq!(
        value(
            &seen,
            "oauth_exporter_source_up",
            &[("source", "qbo_redis")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &seen,
            "oauth_connections",
            &[("source", "qbo_redis"), ("status", "active")]
        ),
        3.0
    );
    assert!(
        sample(
            &seen,
            "oauth_refresh_token_age_seconds",
            &[("source", "token_file"), ("connection", "shop")]
        )
        .is_some(),
        "last good values of the file stay"
    );
    let landing = http_get(port, "/");
    for src in ["xero_pg", "qbo_redis", "token_file"] {
        assert!(
            landing.contains(&format!("<td>{src}</td>")),
            "{src} on the landing page"
        );
    }

    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&pg)
        .await
        .unwrap();
    for k in ["111", "222", "333"] {
        let _: () = r.del(format!("{prefix}:qbo:{k}")).await.unwrap();
    }
}
