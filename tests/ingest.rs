//! `POST /api/v1/events` end to end through the router, with Xero's real answers from the
//! simulated Xero.

mod common;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::*;
use http_body_util::BodyExt;
use oauth_token_exporter::ServerOptions;
use tower::ServiceExt;

const TOKEN: &str = "Canary-Ingest-Key-8842-abcdef";

fn app(max_events: usize) -> (oauth_token_exporter::Exporter, axum::Router) {
    let d = tempfile::tempdir().unwrap();
    let token = d.path().join("ingest-token");
    std::fs::write(&token, TOKEN).unwrap();
    let yaml = format!("ingest:\n  source: app\n  token_file: {}\n  max_events: {max_events}\n  max_body_bytes: 65536\n", token.display());
    let (e, _) = exporter(&yaml, fixed_now());
    let r = e.router(&ServerOptions::default());
    (e, r)
}

async fn post(
    r: &axum::Router,
    token: Option<&str>,
    content_type: &str,
    body: String,
) -> (StatusCode, serde_json::Value, axum::http::HeaderMap) {
    let mut req = Request::post("/api/v1/events").header("content-type", content_type);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = r
        .clone()
        .oneshot(req.body(Body::from(body)).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&bytes).to_string();
    assert!(
        !text.contains(TOKEN),
        "the ingest key leaked into an answer"
    );
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::String(text)),
        headers,
    )
}

fn counter(e: &oauth_token_exporter::Exporter, name: &str, labels: &[(&str, &str)]) -> f64 {
    value(&scrape(e), name, labels)
}

#[tokio::test]
async fn every_event_counter_exists_at_zero_from_start_up() {
    let (e, _) = app(100);
    let text = scrape(&e);
    for (name, label, values) in [
        (
            "oauth_token_refresh_failures_total",
            "error",
            &[
                "invalid_grant",
                "invalid_client",
                "unauthorized_client",
                "unsupported_grant_type",
                "server_error",
                "network",
                "other",
            ][..],
        ),
        (
            "oauth_api_unauthorized_total",
            "reason",
            &[
                "token_expired",
                "authorization_unsuccessful",
                "authentication_unsuccessful",
                "other",
            ][..],
        ),
        (
            "oauth_api_rate_limited_total",
            "problem",
            &["minute", "day", "concurrent", "app_minute", "other"][..],
        ),
    ] {
        for v in values {
            assert_eq!(
                value(
                    &text,
                    name,
                    &[("provider", "xero"), ("source", "app"), (label, v)]
                ),
                0.0,
                "{name} {v}"
            );
        }
    }
    for name in [
        "oauth_token_refreshes_total",
        "oauth_api_requests_total",
        "oauth_api_forbidden_total",
        "oauth_refresh_token_regressions_total",
        "oauth_token_refresh_races_total",
    ] {
        assert_eq!(
            value(&text, name, &[("provider", "xero"), ("source", "app")]),
            0.0,
            "{name}"
        );
    }
}

#[tokio::test]
async fn a_missing_or_wrong_bearer_token_is_refused_and_nothing_is_counted() {
    let (e, r) = app(100);
    let body =
        r#"{"events":[{"type":"refresh","connection":"c1","outcome":"success"}]}"#.to_string();
    let (status, _, headers) = post(&r, None, "application/json", body.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers["www-authenticate"], "Bearer");
    let (status, _, _) = post(
        &r,
        Some("Canary-Ingest-Key-8842-abcdeX"),
        "application/json",
        body,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        counter(&e, "oauth_token_refreshes_total", &[("source", "app")]),
        0.0
    );
}

#[tokio::test]
async fn valid_events_are_counted_even_when_siblings_are_invalid_and_each_error_names_its_event_and_field(
) {
    let (e, r) = app(100);
    // 401 bodies as the simulated Xero sends them.
    let body = serde_json::json!({"events": [
        {"type": "refresh", "connection": "c1", "tenant": "t1", "time": "2026-06-01T12:00:00Z", "outcome": "success"},
        {"type": "refresh", "connection": "c2", "outcome": "failure", "error": "invalid_grant", "status": 400},
        {"type": "refresh", "connection": "c3", "outcome": "failure", "error": "invalid_client"},
        {"type": "refresh", "connection": "c4", "outcome": "failure"},
        {"type": "api", "connection": "c1", "status": 200},
        {"type": "api", "connection": "c1", "status": 401, "detail": "TokenExpired: token expired at 06/01/2026 12:30:00"},
        {"type": "api", "connection": "c2", "status": 401, "detail": "AuthorizationUnsuccessful"},
        {"type": "api", "connection": "c5", "status": 403, "detail": "AuthenticationUnsuccessful"},
        {"type": "api", "connection": "c6", "status": 429, "rate_limit_problem": "minute"},
        // Invalid ones:
        {"type": "api", "connection": "c7", "status": "401"},
        {"type": "refresh", "connection": "", "outcome": "success"},
        {"type": "refresh", "connection": "c8", "outcome": "maybe"},
        {"type": "logout", "connection": "c9"},
        {"type": "api", "connection": "c10", "status": 200, "token": "AT-should-not-be-here"},
        {"type": "refresh", "connection": "c11", "outcome": "success", "time": "yesterday"},
        {"type": "api", "connection": "c12", "status": 999},
        "not an object"
    ]});
    let (status, answer, _) = post(&r, Some(TOKEN), "application/json", body.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["accepted"], 9, "{answer}");
    let rejected: Vec<(u64, String)> = answer["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["index"].as_u64().unwrap(),
                r["field"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        rejected,
        [
            (9, "status".into()),
            (10, "connection".into()),
            (11, "outcome".into()),
            (12, "type".into()),
            (13, "<unknown field>".into()),
            (14, "time".into()),
            (15, "status".into()),
            (16, "type".into())
        ],
        "{answer}"
    );
    assert!(answer
        .to_string()
        .contains("unknown field, expected one of"));
    assert!(
        !answer.to_string().contains("`token`"),
        "nor an unknown field's name (it could be a token)"
    );
    assert!(
        !answer.to_string().contains("AT-should-not-be-here"),
        "an event's values are not echoed"
    );
    let l = |k: &'static str, v: &'static str| [("source", "app"), (k, v)];
    assert_eq!(
        counter(&e, "oauth_token_refreshes_total", &[("source", "app")]),
        4.0
    );
    assert_eq!(
        counter(
            &e,
            "oauth_token_refresh_failures_total",
            &l("error", "invalid_grant")
        ),
        1.0
    );
    assert_eq!(
        counter(
            &e,
            "oauth_token_refresh_failures_total",
            &l("error", "invalid_client")
        ),
        1.0
    );
    assert_eq!(
        counter(
            &e,
            "oauth_token_refresh_failures_total",
            &l("error", "network")
        ),
        1.0
    );
    assert_eq!(
        counter(&e, "oauth_api_requests_total", &[("source", "app")]),
        5.0
    );
    assert_eq!(
        counter(
            &e,
            "oauth_api_unauthorized_total",
            &l("reason", "token_expired")
        ),
        1.0
    );
    assert_eq!(
        counter(
            &e,
            "oauth_api_unauthorized_total",
            &l("reason", "authorization_unsuccessful")
        ),
        1.0
    );
    assert_eq!(
        counter(&e, "oauth_api_forbidden_total", &[("source", "app")]),
        1.0
    );
    assert_eq!(
        counter(&e, "oauth_api_rate_limited_total", &l("problem", "minute")),
        1.0
    );
}

#[tokio::test]
async fn malformed_oversized_and_wrongly_typed_bodies_are_refused_with_a_clear_error() {
    let (e, r) = app(3);
    let (status, answer, _) = post(&r, Some(TOKEN), "text/plain", "{}".into()).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{answer}");
    let (status, answer, _) = post(
        &r,
        Some(TOKEN),
        "application/json",
        r#"{"events": [}"#.into(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("line 1, column 13"),
        "{answer}"
    );
    let (status, _, _) = post(
        &r,
        Some(TOKEN),
        "application/json",
        r#"{"evnts": []}"#.into(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let four = r#"{"events":[{"type":"api","connection":"a","status":200},{"type":"api","connection":"a","status":200},{"type":"api","connection":"a","status":200},{"type":"api","connection":"a","status":200}]}"#;
    let (status, answer, _) = post(&r, Some(TOKEN), "application/json", four.into()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("4 events in one batch; at most 3"),
        "{answer}"
    );
    let huge = format!(
        r#"{{"events":[{{"type":"api","connection":"{}","status":200}}]}}"#,
        "x".repeat(70_000)
    );
    let (status, _, _) = post(&r, Some(TOKEN), "application/json", huge).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let (status, answer, _) = post(
        &r,
        Some(TOKEN),
        "application/json",
        r#"{"events":[{"type":"api"}]}"#.into(),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "a batch with no valid event is a 400"
    );
    assert_eq!(answer["accepted"], 0);
    assert_eq!(
        counter(&e, "oauth_api_requests_total", &[("source", "app")]),
        0.0
    );
}

#[tokio::test]
async fn detectors_see_a_mass_failure_a_retry_loop_and_a_refresh_race() {
    let d = tempfile::tempdir().unwrap();
    let token = d.path().join("t");
    std::fs::write(&token, TOKEN).unwrap();
    let yaml = format!("detect:\n  window: 15m\n  retry_loop_failures: 5\ningest:\n  source: app\n  token_file: {}\n", token.display());
    let (e, clock) = exporter(&yaml, fixed_now());
    let r = e.router(&ServerOptions::default());
    let send = |events: Vec<serde_json::Value>| {
        let r = r.clone();
        async move {
            let (status, answer, _) = post(
                &r,
                Some(TOKEN),
                "application/json",
                serde_json::json!({ "events": events }).to_string(),
            )
            .await;
            assert_eq!(status, StatusCode::OK, "{answer}");
            assert_eq!(answer["rejected"], serde_json::json!([]), "{answer}");
        }
    };
    // A password change: eight connections of one user fail at once; one API 401 elsewhere.
    let mut events: Vec<serde_json::Value> = (0..8)
        .map(|i| serde_json::json!({"type": "refresh", "connection": format!("u1-c{i}"), "outcome": "failure", "error": "invalid_grant"}))
        .collect();
    events.push(serde_json::json!({"type": "api", "connection": "other", "status": 401, "detail": "AuthorizationUnsuccessful"}));
    // An expired access token is not a failing connection.
    events.push(serde_json::json!({"type": "api", "connection": "fine", "status": 401, "detail": "TokenExpired: token expired at 06/01/2026 11:59:00"}));
    send(events).await;
    let l = [("provider", "xero"), ("source", "app")];
    assert_eq!(counter(&e, "oauth_connections_failing", &l), 9.0);
    assert_eq!(
        counter(&e, "oauth_connections_retrying_invalid_grant", &l),
        0.0
    );
    // A worker retrying invalid_grant on one connection.
    send((0..5).map(|_| serde_json::json!({"type": "refresh", "connection": "stuck", "outcome": "failure", "error": "invalid_grant"})).collect()).await;
    assert_eq!(
        counter(&e, "oauth_connections_retrying_invalid_grant", &l),
        1.0
    );
    assert_eq!(counter(&e, "oauth_connections_failing", &l), 10.0);
    // Two workers refresh one connection: a success, then the stale token gets invalid_grant.
    send(vec![
        serde_json::json!({"type": "refresh", "connection": "raced", "outcome": "success", "time": "2026-06-01T11:58:00Z"}),
        serde_json::json!({"type": "refresh", "connection": "raced", "outcome": "failure", "error": "invalid_grant", "time": "2026-06-01T11:58:02Z"}),
    ])
    .await;
    assert_eq!(counter(&e, "oauth_token_refresh_races_total", &l), 1.0);
    // The window passes: nothing is failing any more; counters keep their totals.
    clock.advance(chrono::Duration::minutes(20));
    assert_eq!(counter(&e, "oauth_connections_failing", &l), 0.0);
    assert_eq!(
        counter(&e, "oauth_connections_retrying_invalid_grant", &l),
        0.0
    );
    assert_eq!(
        counter(
            &e,
            "oauth_token_refresh_failures_total",
            &[("source", "app"), ("error", "invalid_grant")]
        ),
        14.0
    );
}
