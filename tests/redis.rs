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

/// A CA and a server certificate for 127.0.0.1 signed by it: (CA PEM, cert PEM, key PEM).
fn private_ca() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "redis test CA");
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

#[tokio::test]
async fn redis_over_tls_is_read_with_a_private_ca_and_refused_without_it() {
    let test = "redis_over_tls_is_read_with_a_private_ca_and_refused_without_it";
    let Some(server) = tool(test, &["redis-server"]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = private_ca();
    for (name, pem) in [("ca.crt", &ca), ("server.crt", &cert), ("server.key", &key)] {
        std::fs::write(dir.path().join(name), pem).unwrap();
    }
    // A Redis of the test's own that speaks TLS only.
    let port = free_port();
    let _redis = Kill(
        std::process::Command::new(server)
            .current_dir(dir.path())
            .args([
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .args([
                "--tls-cert-file",
                "server.crt",
                "--tls-key-file",
                "server.key",
            ])
            .args(["--tls-ca-cert-file", "ca.crt", "--tls-auth-clients", "no"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let url = format!("rediss://127.0.0.1:{port}");
    oauth_token_exporter::sources::install_tls_provider();
    let client = redis::Client::build_with_tls(
        url.as_str(),
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(ca.clone().into_bytes()),
        },
    )
    .unwrap();
    let mut conn = None;
    for _ in 0..100 {
        if let Ok(c) = client.get_multiplexed_async_connection().await {
            conn = Some(c);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let mut conn = conn.expect("the TLS Redis started");
    let _: () = conn
        .hset_multiple(
            "qbo:777",
            &[
                ("realm_id", "777"),
                ("refreshed_at", "2026-05-31T12:00:00Z"),
            ],
        )
        .await
        .unwrap();
    let yaml = |ca_file: Option<&str>, url: &str| {
        format!(
            "sources:\n  - name: tls\n    kind: redis\n    provider: quickbooks\n    dsn: {url}\n\
             \x20   key_pattern: 'qbo:*'\n    fields: {{connection: realm_id, last_refresh: refreshed_at}}\n{}",
            ca_file.map_or(String::new(), |f| format!("    ca_file: {f}\n"))
        )
    };
    let ca_path = dir.path().join("ca.crt").display().to_string();

    // Trusting the private CA: read over TLS.
    let (mut e, _) = exporter(&yaml(Some(&ca_path), &url), fixed_now());
    assert_eq!(poll(&mut e).await, [true]);
    assert_eq!(connections(&scrape(&e), "tls"), ["777"]);

    // The system roots only: the certificate is refused and the source is down.
    let (mut e, _) = exporter(&yaml(None, &url), fixed_now());
    assert_eq!(poll(&mut e).await, [false]);
    let text = scrape(&e);
    assert_eq!(
        value(&text, "oauth_exporter_source_up", &[("source", "tls")]),
        0.0
    );
    assert!(connections(&text, "tls").is_empty());

    // A CA bundle with a plain redis:// URL is a mistake, named at start-up.
    let cfg = parse_config(&yaml(Some(&ca_path), "redis://127.0.0.1:6379"));
    let err = oauth_token_exporter::Exporter::new(
        &cfg,
        std::sync::Arc::new(oauth_token_exporter::clock::SystemClock),
    )
    .err()
    .expect("refused");
    assert!(
        matches!(&err, oauth_token_exporter::BuildError::Source { name, .. } if name == "tls"),
        "{err:?}"
    );
    assert!(
        err.to_string().starts_with("source tls: ")
            && err.to_string().contains("must start with rediss://"),
        "{err}"
    );
}
