//! HTTP endpoints through the router (no socket), and the whole server on a real socket.

mod common;
use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use common::*;
use http_body_util::BodyExt;
use oauth_token_exporter::ServerOptions;
use tower::ServiceExt;

async fn get(
    router: &axum::Router,
    uri: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let mut req = Request::get(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = router
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let h = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, h, body)
}

async fn fleet() -> (tempfile::TempDir, String) {
    let (d, path, _pool) = sqlite_db(&[
        "CREATE TABLE t (id TEXT, tenant TEXT, lr TEXT)",
        "INSERT INTO t VALUES ('ok', 'Fine Ltd', '2026-05-31T12:00:00Z'), ('old', '<script>alert(1)</script>', '2026-04-02T12:00:00Z')",
    ])
    .await;
    let yaml = format!("sources:\n  - name: app\n    kind: sqlite\n    dsn: {}\n    query: SELECT id, tenant, lr FROM t\n    fields: {{connection: id, tenant: tenant, last_refresh: lr}}\n", path.display());
    (d, yaml)
}

#[tokio::test]
async fn ready_waits_for_the_first_successful_poll_of_every_source() {
    let (_d, yaml) = fleet().await;
    let (mut e, _) = exporter(&yaml, fixed_now());
    let r = e.router(&ServerOptions::default());
    let (status, _, body) = get(&r, "/-/ready", &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(String::from_utf8(body).unwrap().contains("app"));
    assert_eq!(get(&r, "/-/healthy", &[]).await.0, StatusCode::OK);
    poll(&mut e).await;
    assert_eq!(get(&r, "/-/ready", &[]).await.0, StatusCode::OK);
}

#[tokio::test]
async fn metrics_negotiates_openmetrics_and_gzip() {
    let (_d, yaml) = fleet().await;
    let (mut e, _) = exporter(&yaml, fixed_now());
    poll(&mut e).await;
    let r = e.router(&ServerOptions::default());
    let (status, h, body) = get(&r, "/metrics", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        h[header::CONTENT_TYPE],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let plain = String::from_utf8(body).unwrap();
    assert!(plain.contains("# TYPE oauth_connections_removed_total counter"));
    assert!(!plain.contains("# EOF"));

    let accept = "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.4";
    let (_, h, body) = get(&r, "/metrics", &[("accept", accept)]).await;
    assert_eq!(
        h[header::CONTENT_TYPE],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let om = String::from_utf8(body).unwrap();
    assert!(om.ends_with("# EOF\n"));
    assert!(om.contains("# TYPE oauth_connections_removed counter"));

    let (_, h, body) = get(&r, "/metrics", &[("accept-encoding", "gzip")]).await;
    assert_eq!(h[header::CONTENT_ENCODING], "gzip");
    let mut unzipped = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&body[..]), &mut unzipped)
        .unwrap();
    // The same exposition, but for what changes between two scrapes: the process's own figures
    // and the scrape-duration histogram (each scrape is measured).
    let stable = |t: &str| {
        t.lines()
            .filter(|l| {
                !l.starts_with("process_")
                    && !l.starts_with("oauth_exporter_scrape_duration_seconds")
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(stable(&unzipped), stable(&plain));
    assert!(unzipped.contains("# TYPE process_resident_memory_bytes gauge"));
}

#[tokio::test]
async fn telemetry_path_is_configurable() {
    let (_d, yaml) = fleet().await;
    let (e, _) = exporter(&yaml, fixed_now());
    let r = e.router(&ServerOptions {
        telemetry_path: "/probe/metrics".into(),
        ..Default::default()
    });
    assert_eq!(get(&r, "/probe/metrics", &[]).await.0, StatusCode::OK);
    assert_eq!(get(&r, "/metrics", &[]).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn landing_page_lists_sources_and_connections_at_risk_escaped() {
    let (_d, yaml) = fleet().await;
    let (mut e, _) = exporter(&yaml, fixed_now());
    poll(&mut e).await;
    let r = e.router(&ServerOptions::default());
    let (status, h, body) = get(&r, "/", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(h[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = String::from_utf8(body).unwrap();
    assert!(html.contains("<td>app</td>"));
    assert!(
        html.contains("<td>old</td>"),
        "the 60-day-old connection is at risk:\n{html}"
    );
    assert!(
        !html.contains("<td>ok</td>"),
        "a fresh connection is not at risk"
    );
    assert!(html.contains("&lt;script&gt;") && !html.contains("<script>"));
    assert!(html.contains("href=\"metrics\""));
    assert!(
        h[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .starts_with("default-src 'none'"),
        "the page runs no script and loads nothing"
    );
    assert!(html.contains("<h2>Event inlets</h2><p>None configured"));
}

#[tokio::test]
async fn landing_page_links_to_the_configured_telemetry_path() {
    let (_d, yaml) = fleet().await;
    let (e, _) = exporter(&yaml, fixed_now());
    let r = e.router(&ServerOptions {
        telemetry_path: "/internal/prom".into(),
        ..Default::default()
    });
    let html = String::from_utf8(get(&r, "/", &[]).await.2).unwrap();
    assert!(html.contains("href=\"internal/prom\""), "{html}");
}

#[tokio::test]
async fn the_server_polls_serves_on_a_socket_and_stops_on_shutdown() {
    let (_d, yaml) = fleet().await;
    let cfg = parse_config(&yaml.replace(
        "    query:",
        "    interval: 1s\n    timeout: 1s\n    query:",
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let clock: oauth_token_exporter::clock::SharedClock =
        std::sync::Arc::new(oauth_token_exporter::clock::SystemClock);
    let server = tokio::spawn(oauth_token_exporter::run(
        cfg,
        listener,
        ServerOptions::default(),
        clock,
        shutdown.clone(),
    ));
    let mut ready = false;
    for _ in 0..50 {
        if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            s.write_all(b"GET /-/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut buf = String::new();
            s.read_to_string(&mut buf).await.unwrap();
            if buf.starts_with("HTTP/1.1 200") {
                ready = true;
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(ready, "the server never became ready");
    shutdown.cancel();
    let result = tokio::time::timeout(std::time::Duration::from_secs(5), server)
        .await
        .expect("graceful shutdown hung");
    assert!(result.unwrap().is_ok());
}
