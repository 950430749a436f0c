//! The reverse proxy in front of the simulated Xero: answers pass through unchanged and every
//! outcome is counted.

mod common;
use chrono::Duration;
use common::*;
use oauth_token_exporter::clock::{ManualClock, SharedClock};
use oauth_token_exporter::sim::xero::{SimXero, TokenResponse};

struct Setup {
    x: SimXero,
    clock: std::sync::Arc<ManualClock>,
    e: oauth_token_exporter::Exporter,
    proxy: String,
    http: reqwest::Client,
    tenant: String,
}

async fn setup(upstream: Option<String>) -> Setup {
    oauth_token_exporter::sources::install_tls_provider();
    let clock = ManualClock::new(fixed_now());
    let shared: SharedClock = clock.clone();
    let x = SimXero::new(shared);
    x.add_client("app", "s3cret");
    let tenant = x.add_tenant("Acme", &["alice"]);
    let sim = match upstream {
        Some(u) => u,
        None => serve(x.router()).await,
    };
    let yaml = format!(
        "proxy:\n  source: proxy\n  identity_url: {sim}\n  api_url: {sim}/\n  timeout: 5s\n"
    );
    let (e, _) = exporter(&yaml, fixed_now());
    let proxy = serve(e.proxy_router().unwrap()).await;
    Setup {
        x,
        clock,
        e,
        proxy,
        http: reqwest::Client::new(),
        tenant,
    }
}

impl Setup {
    async fn refresh(&self, rt: &str, secret: &str) -> (u16, String) {
        xero_refresh(&self.http, &self.proxy, rt, secret).await
    }

    async fn api(&self, at: &str, tenant: &str) -> reqwest::Response {
        xero_api(&self.http, &self.proxy, at, tenant).await
    }

    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        value(&scrape(&self.e), name, labels)
    }
}

#[tokio::test]
async fn refreshes_through_the_proxy_pass_unchanged_and_their_outcomes_are_counted() {
    let s = setup(None).await;
    let first =
        s.x.authorize("app", "alice", std::slice::from_ref(&s.tenant));
    let (st, body) = s.refresh(&first.refresh_token, "s3cret").await;
    assert_eq!(st, 200);
    let second: TokenResponse = serde_json::from_str(&body).unwrap();
    assert_ne!(second.refresh_token, first.refresh_token);
    s.clock.advance(Duration::minutes(31));
    assert_eq!(
        s.refresh(&first.refresh_token, "s3cret").await,
        (400, r#"{"error":"invalid_grant"}"#.into()),
        "Xero's body, byte for byte"
    );
    let new_secret = s.x.rotate_client_secret("app");
    assert_eq!(
        s.refresh(&second.refresh_token, "s3cret").await.1,
        r#"{"error":"invalid_client"}"#
    );
    assert_eq!(s.refresh(&second.refresh_token, &new_secret).await.0, 200);
    let l = |k: &'static str, v: &'static str| [("source", "proxy"), (k, v)];
    assert_eq!(
        s.metric("oauth_token_refreshes_total", &[("source", "proxy")]),
        4.0
    );
    assert_eq!(
        s.metric(
            "oauth_token_refresh_failures_total",
            &l("error", "invalid_grant")
        ),
        1.0
    );
    assert_eq!(
        s.metric(
            "oauth_token_refresh_failures_total",
            &l("error", "invalid_client")
        ),
        1.0
    );
    let text = scrape(&s.e);
    assert!(
        !text.contains(&first.refresh_token)
            && !text.contains(&second.access_token)
            && !text.contains("s3cret")
    );
}

#[tokio::test]
async fn api_answers_pass_unchanged_and_401_403_429_and_headroom_are_counted() {
    let s = setup(None).await;
    let t =
        s.x.authorize("app", "alice", std::slice::from_ref(&s.tenant));
    for _ in 0..3 {
        let ok = s.api(&t.access_token, &s.tenant).await;
        assert_eq!(ok.status().as_u16(), 200);
        assert!(
            ok.headers().contains_key("x-daylimit-remaining"),
            "headers pass through"
        );
    }
    let l = |k: &'static str, v: &'static str| [("source", "proxy"), (k, v)];
    assert_eq!(
        s.metric(
            "oauth_api_rate_limit_remaining",
            &[("tenant", s.tenant.as_str()), ("window", "minute")]
        ),
        57.0
    );
    assert_eq!(
        s.metric(
            "oauth_api_rate_limit_remaining",
            &[("tenant", s.tenant.as_str()), ("window", "day")]
        ),
        4997.0
    );
    assert_eq!(
        s.metric(
            "oauth_api_rate_limit_remaining",
            &[("tenant", ""), ("window", "app_minute")]
        ),
        9997.0
    );
    let other = s.x.add_tenant("Other", &["bob"]);
    assert_eq!(s.api(&t.access_token, &other).await.status().as_u16(), 403);
    for _ in 0..60 {
        s.api(&t.access_token, &s.tenant).await;
    }
    let limited = s.api(&t.access_token, &s.tenant).await;
    assert_eq!(limited.status().as_u16(), 429);
    assert_eq!(limited.headers()["x-rate-limit-problem"], "minute");
    s.clock.advance(Duration::minutes(31));
    let expired = s.api(&t.access_token, &s.tenant).await;
    assert_eq!(expired.status().as_u16(), 401);
    let body: serde_json::Value = serde_json::from_str(&expired.text().await.unwrap()).unwrap();
    assert!(body["Detail"]
        .as_str()
        .unwrap()
        .starts_with("TokenExpired: token expired at"));
    s.x.change_password("alice");
    assert_eq!(
        s.api(&t.access_token, &s.tenant).await.status().as_u16(),
        401
    );
    assert_eq!(
        s.metric("oauth_api_forbidden_total", &[("source", "proxy")]),
        1.0
    );
    assert!(s.metric("oauth_api_rate_limited_total", &l("problem", "minute")) >= 1.0);
    assert_eq!(
        s.metric(
            "oauth_api_unauthorized_total",
            &l("reason", "token_expired")
        ),
        1.0
    );
    assert_eq!(
        s.metric("oauth_api_unauthorized_total", &l("reason", "other"))
            + s.metric(
                "oauth_api_unauthorized_total",
                &l("reason", "authorization_unsuccessful")
            ),
        1.0
    );
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_502_and_a_network_failure() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let s = setup(Some(format!("http://127.0.0.1:{port}"))).await;
    assert_eq!(
        s.metric("oauth_exporter_source_up", &[("source", "proxy")]),
        1.0
    );
    let (st, _) = s.refresh("rt_whatever", "s3cret").await;
    assert_eq!(st, 502);
    assert_eq!(
        s.metric(
            "oauth_token_refresh_failures_total",
            &[("source", "proxy"), ("error", "network")]
        ),
        1.0
    );
    assert_eq!(
        s.metric("oauth_exporter_source_up", &[("source", "proxy")]),
        0.0,
        "the upstream's health shows"
    );
    assert_eq!(
        s.metric(
            "oauth_exporter_source_errors_total",
            &[("source", "proxy"), ("reason", "connect")]
        ),
        1.0
    );
    // The upstream comes back on its address: the proxy recovers without a restart.
    let l = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let router = s.x.router();
    tokio::spawn(async move { axum::serve(l, router).await.unwrap() });
    let (st, _) = s.refresh("rt_unknown", "s3cret").await;
    assert_eq!(st, 400, "answered by Xero again");
    assert_eq!(
        s.metric("oauth_exporter_source_up", &[("source", "proxy")]),
        1.0
    );
}

/// An upstream speaking raw HTTP/1.1: it sends the head (and body) of each request it gets on
/// `seen`, and answers `hello` with a Content-Length.
async fn raw_upstream() -> (
    String,
    tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (mut c, _) = l.accept().await.unwrap();
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match c.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let mut rest = buf.split_off(end + 4);
                    let body_done = |rest: &[u8]| {
                        if let Some(n) = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length: "))
                        {
                            rest.len() >= n.trim().parse::<usize>().unwrap()
                        } else if head.contains("transfer-encoding: chunked") {
                            rest.ends_with(b"0\r\n\r\n")
                        } else {
                            true
                        }
                    };
                    while !body_done(&rest) {
                        match c.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => rest.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let _ = tx.send((head, rest));
                    buf.clear();
                    c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Mark: 1\r\n\r\nhello")
                        .await
                        .unwrap();
                }
            });
        }
    });
    (url, rx)
}

/// Send `raw` to the proxy on its own connection and return the response head, lower-cased.
async fn raw_request(proxy: &str, raw: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = tokio::net::TcpStream::connect(proxy.trim_start_matches("http://"))
        .await
        .unwrap();
    c.write_all(raw.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), c.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).to_ascii_lowercase()
}

#[tokio::test]
async fn bodies_keep_their_framing_both_ways_and_a_chunked_message_never_carries_a_length() {
    let (upstream, mut seen) = raw_upstream().await;
    let s = setup(Some(upstream)).await;
    let send = |req: &'static str| raw_request(&s.proxy, req);

    // A body with a length reaches Xero with that length, not re-chunked; the answer's length
    // reaches the app.
    let resp = send("POST /api.xro/2.0/Invoices HTTP/1.1\r\nHost: p\r\nContent-Type: application/json\r\nContent-Length: 7\r\nConnection: close\r\n\r\n{\"a\":1}").await;
    let (head, body) = seen.recv().await.unwrap();
    assert!(head.contains("content-length: 7"), "{head}");
    assert!(!head.contains("transfer-encoding"), "{head}");
    assert_eq!(body, b"{\"a\":1}");
    assert!(resp.starts_with("http/1.1 200"), "{resp}");
    assert!(
        resp.contains("content-length: 5") && resp.contains("x-mark: 1"),
        "{resp}"
    );
    assert!(!resp.contains("transfer-encoding"), "{resp}");
    assert!(resp.ends_with("hello"), "{resp}");

    // A chunked body stays chunked and carries no length.
    let resp = send("POST /api.xro/2.0/Invoices HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n").await;
    let (head, body) = seen.recv().await.unwrap();
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    assert!(!head.contains("content-length"), "{head}");
    assert!(body.starts_with(b"3\r\nabc\r\n"), "{body:?}");
    assert!(resp.starts_with("http/1.1 200"), "{resp}");

    // Both at once (a smuggling attempt): refused, or forwarded chunked without the length.
    let resp = send("POST /api.xro/2.0/Invoices HTTP/1.1\r\nHost: p\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n").await;
    if resp.starts_with("http/1.1 200") {
        let (head, _) = seen.recv().await.unwrap();
        assert!(!head.contains("content-length"), "{head}");
    } else {
        assert!(resp.starts_with("http/1.1 400"), "{resp}");
        assert!(seen.try_recv().is_err(), "nothing reached Xero");
    }
}

/// An SDK given the reverse proxy as its `HTTPS_PROXY` opens a `CONNECT` tunnel: refused with a
/// 405 that says how to route it, never forwarded upstream, never counted as an API call.
#[tokio::test]
async fn a_connect_is_refused_with_how_to_route_the_sdk_and_is_neither_forwarded_nor_counted() {
    let (upstream, mut seen) = raw_upstream().await;
    let s = setup(Some(upstream)).await;
    let resp = raw_request(
        &s.proxy,
        "CONNECT identity.xero.com:443 HTTP/1.1\r\nHost: identity.xero.com:443\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("http/1.1 405"), "{resp}");
    assert!(
        resp.contains("connect is refused") && resp.contains("base urls"),
        "{resp}"
    );
    // A real client configured the usual way (reqwest's proxy setting, as HTTPS_PROXY does)
    // fails at the tunnel, before any request is sent.
    let client = reqwest::Client::builder()
        .proxy(reqwest::Proxy::https(&s.proxy).unwrap())
        .build()
        .unwrap();
    let err = client
        .post("https://identity.xero.com/connect/token")
        .send()
        .await
        .unwrap_err();
    assert!(err.is_connect(), "{err:?}");
    assert!(seen.try_recv().is_err(), "nothing reached the upstream");
    let text = scrape(&s.e);
    for family in ["oauth_api_requests_total", "oauth_token_refreshes_total"] {
        assert!(
            sample(&text, family, &[("source", "proxy")]).unwrap_or(0.0) == 0.0,
            "{family}: {text}"
        );
    }
}
