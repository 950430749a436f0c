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
        let r = self
            .http
            .post(format!("{}/connect/token", self.proxy))
            .basic_auth("app", Some(secret))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("grant_type=refresh_token&refresh_token={rt}"))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    async fn api(&self, at: &str, tenant: &str) -> reqwest::Response {
        self.http
            .get(format!("{}/api.xro/2.0/Organisation", self.proxy))
            .bearer_auth(at)
            .header("xero-tenant-id", tenant)
            .send()
            .await
            .unwrap()
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
