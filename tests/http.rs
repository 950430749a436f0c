//! HTTP source against a real local HTTP server (the host app's admin endpoint).

mod common;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use common::*;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

/// Serve `body` at /admin/oauth when the bearer token is right; `status` overrides.
async fn admin_endpoint(body: &'static str, status: Arc<AtomicU16>) -> std::net::SocketAddr {
    let app = axum::Router::new().route(
        "/admin/oauth",
        get(move |headers: HeaderMap| {
            let status = status.clone();
            async move {
                let code = status.load(Ordering::SeqCst);
                if code != 200 {
                    return (StatusCode::from_u16(code).unwrap(), String::new());
                }
                if headers.get("authorization").and_then(|v| v.to_str().ok())
                    != Some("Bearer Canary-Admin-Key-5521")
                {
                    return (StatusCode::UNAUTHORIZED, String::new());
                }
                (StatusCode::OK, body.to_string())
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

const BODY: &str = r#"{"data":{"connections":[
  {"id":"c1","tenantId":"t-1","tokens":{"expiresAt":"2026-05-01T10:30:00Z"},"state":"connected"},
  {"id":"c2","tenantId":"t-2","tokens":{"expiresAt":"2026-05-31T12:30:00Z"},"state":"reconnect_required"},
  {"id":"c3","tenantId":"t-3","tokens":{}},
  "not an object"
]}}"#;

fn yaml(addr: std::net::SocketAddr, token_file: &std::path::Path) -> String {
    format!(
        "sources:\n  - name: admin\n    kind: http\n    url: http://{addr}/admin/oauth\n    bearer_token_file: {}\n    items_path: data.connections\n    headers: {{X-Requested-By: oauth-token-exporter}}\n    timeout: 2s\n    interval: 5s\n    infer_last_refresh: access_expires\n    fields:\n      connection: id\n      tenant: tenantId\n      access_expires: {{column: tokens, json_path: expiresAt}}\n      status: {{column: state, map: {{connected: active, reconnect_required: needs_reauth}}}}\n",
        token_file.display()
    )
}

#[tokio::test]
async fn an_admin_endpoint_is_read_by_field_paths_with_a_bearer_token() {
    let status = Arc::new(AtomicU16::new(200));
    let addr = admin_endpoint(BODY, status.clone()).await;
    let d = tempfile::tempdir().unwrap();
    let token = d.path().join("token");
    std::fs::write(&token, "Canary-Admin-Key-5521\n").unwrap();
    let (mut e, _) = exporter(&yaml(addr, &token), fixed_now());
    assert_eq!(poll(&mut e).await, [true], "{}", scrape(&e));
    let text = scrape(&e);
    assert_eq!(connections(&text, "admin"), ["c1", "c2"]);
    assert_eq!(
        value(
            &text,
            "oauth_refresh_token_last_refresh_timestamp_seconds",
            &[("connection", "c1"), ("tenant", "t-1")]
        ),
        1777629600.0
    );
    assert_eq!(
        value(
            &text,
            "oauth_connection_status",
            &[("connection", "c2"), ("status", "needs_reauth")]
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
    assert_eq!(
        value(
            &text,
            "oauth_exporter_rows_rejected_total",
            &[("reason", "invalid_json")]
        ),
        1.0
    );
    assert!(!text.contains("Canary-Admin-Key"));

    // The endpoint fails: up goes to 0, values stay, and it recovers.
    status.store(500, Ordering::SeqCst);
    assert_eq!(poll(&mut e).await, [false]);
    let text = scrape(&e);
    assert_eq!(
        value(
            &text,
            "oauth_exporter_source_errors_total",
            &[("source", "admin"), ("reason", "query")]
        ),
        1.0
    );
    assert_eq!(connections(&text, "admin"), ["c1", "c2"]);
    status.store(200, Ordering::SeqCst);
    assert_eq!(poll(&mut e).await, [true]);
}

#[tokio::test]
async fn a_wrong_bearer_token_is_a_failed_poll_that_never_shows_the_token() {
    let addr = admin_endpoint(BODY, Arc::new(AtomicU16::new(200))).await;
    let d = tempfile::tempdir().unwrap();
    let token = d.path().join("token");
    std::fs::write(&token, "Wrong-Key-Canary-9921").unwrap();
    let (mut e, _) = exporter(&yaml(addr, &token), fixed_now());
    assert_eq!(poll(&mut e).await, [false]);
    let text = scrape(&e);
    assert_eq!(
        value(&text, "oauth_exporter_source_up", &[("source", "admin")]),
        0.0
    );
    assert!(!text.contains("Wrong-Key-Canary"));
}

#[tokio::test]
async fn an_unreachable_endpoint_is_a_connect_failure() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let d = tempfile::tempdir().unwrap();
    let token = d.path().join("token");
    std::fs::write(&token, "x").unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (mut e, _) = exporter(&yaml(addr, &token), fixed_now());
    assert_eq!(poll(&mut e).await, [false]);
    assert_eq!(
        value(
            &scrape(&e),
            "oauth_exporter_source_errors_total",
            &[("source", "admin"), ("reason", "connect")]
        ),
        1.0
    );
}
