//! `POST /webhooks/nango` with Nango's real auth webhook payloads and signatures.

mod common;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::*;
use hmac::{Hmac, Mac};
use oauth_token_exporter::ServerOptions;
use tower::ServiceExt;

const SECRET: &str = "nango-secret-key-canary-4410";

fn sign(body: &str) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

async fn post(r: &axum::Router, body: &str, sig: Option<String>) -> StatusCode {
    let mut req = Request::post("/webhooks/nango").header("content-type", "application/json");
    if let Some(s) = sig {
        req = req.header("x-nango-hmac-sha256", s);
    }
    r.clone()
        .oneshot(req.body(Body::from(body.to_string())).unwrap())
        .await
        .unwrap()
        .status()
}

fn failed_refresh(connection: &str, provider: &str) -> String {
    format!(
        r#"{{"type":"auth","operation":"refresh","connectionId":"{connection}","providerConfigKey":"{provider}-prod","provider":"{provider}","environment":"prod","success":false,"error":{{"type":"refresh_token_external_error","description":"The external API returned an error when trying to refresh the access token. Please try again later. {{\"error\":\"invalid_grant\"}}"}}}}"#
    )
}

#[tokio::test]
async fn signed_failed_refreshes_count_by_provider_and_the_recovery_webhook_counts_a_refresh() {
    let d = tempfile::tempdir().unwrap();
    let secret = d.path().join("nango-secret");
    std::fs::write(&secret, SECRET).unwrap();
    let (e, _) = exporter(
        &format!(
            "nango_webhook:\n  source: nango\n  secret_file: {}\n",
            secret.display()
        ),
        fixed_now(),
    );
    let r = e.router(&ServerOptions::default());
    let body = failed_refresh("tenant-a", "xero");
    assert_eq!(post(&r, &body, Some(sign(&body))).await, StatusCode::OK);
    let body = failed_refresh("realm-1", "quickbooks");
    assert_eq!(post(&r, &body, Some(sign(&body))).await, StatusCode::OK);
    let recovered = r#"{"type":"auth","operation":"refresh","connectionId":"tenant-a","providerConfigKey":"xero-prod","provider":"xero","environment":"prod","success":true}"#;
    assert_eq!(
        post(&r, recovered, Some(sign(recovered))).await,
        StatusCode::OK
    );
    let sync = r#"{"type":"sync","connectionId":"tenant-a","providerConfigKey":"xero-prod","syncName":"invoices","model":"Invoice","success":true}"#;
    assert_eq!(post(&r, sync, Some(sign(sync))).await, StatusCode::OK);
    let text = scrape(&e);
    assert_eq!(
        value(
            &text,
            "oauth_token_refresh_failures_total",
            &[
                ("provider", "xero"),
                ("source", "nango"),
                ("error", "invalid_grant")
            ]
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "oauth_token_refresh_failures_total",
            &[
                ("provider", "quickbooks"),
                ("source", "nango"),
                ("error", "invalid_grant")
            ]
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "oauth_token_refreshes_total",
            &[("provider", "xero"), ("source", "nango")]
        ),
        2.0,
        "the failure and the recovery"
    );
}

#[tokio::test]
async fn a_missing_or_wrong_signature_is_refused_and_nothing_is_counted() {
    let d = tempfile::tempdir().unwrap();
    let secret = d.path().join("nango-secret");
    std::fs::write(&secret, SECRET).unwrap();
    let (e, _) = exporter(
        &format!("nango_webhook:\n  secret_file: {}\n", secret.display()),
        fixed_now(),
    );
    let r = e.router(&ServerOptions::default());
    let body = failed_refresh("tenant-a", "xero");
    assert_eq!(post(&r, &body, None).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        post(&r, &body, Some(sign("another body"))).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        post(&r, &body, Some("zz-not-hex".into())).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        post(&r, "{not json", Some(sign("{not json"))).await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        value(
            &scrape(&e),
            "oauth_token_refreshes_total",
            &[("source", "nango")]
        ),
        0.0
    );
}

#[tokio::test]
async fn without_a_secret_unsigned_webhooks_are_accepted() {
    let (e, _) = exporter("nango_webhook: {}\n", fixed_now());
    let r = e.router(&ServerOptions::default());
    assert_eq!(
        post(&r, &failed_refresh("t", "xero"), None).await,
        StatusCode::OK
    );
    assert_eq!(
        value(
            &scrape(&e),
            "oauth_token_refresh_failures_total",
            &[("source", "nango"), ("error", "invalid_grant")]
        ),
        1.0
    );
}
