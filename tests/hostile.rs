//! Hostile input, each refused with a clear error, and nothing else lost: a corpus of bad
//! configs (tests/fixtures/config) with the expected error text, and malformed, oversized,
//! deeply nested, wrongly typed and non-UTF-8 ingest bodies followed by a valid batch that still
//! counts.

mod common;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::*;
use tower::ServiceExt;

/// Every `bad-*` config is refused with the text of each of its `# expect:` lines (the file
/// name included where the parser cannot say more); every `good-*` one loads.
#[test]
fn every_bad_config_in_the_corpus_is_refused_with_its_expected_error() {
    let env = |v: &str| match v {
        "OTE_FIXTURE_SHORT_TOKEN" => Some("short".to_string()),
        _ => None,
    };
    let mut checked = 0;
    for entry in std::fs::read_dir(root().join("tests/fixtures/config")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let bytes = std::fs::read(&path).unwrap();
        let text = String::from_utf8_lossy(&bytes).to_string();
        let parsed = match String::from_utf8(bytes) {
            Ok(t) => {
                oauth_token_exporter::config::parse(&t, &name, &env).map_err(|e| e.to_string())
            }
            // What `config::load` says of a file that is not UTF-8.
            Err(_) => oauth_token_exporter::config::load(&path, &Default::default())
                .map_err(|e| e.to_string()),
        };
        if name.starts_with("good-") {
            assert!(parsed.is_ok(), "{name}: {}", parsed.err().unwrap());
        } else {
            let err = parsed
                .err()
                .unwrap_or_else(|| panic!("{name} was accepted"));
            let expects: Vec<&str> = text
                .lines()
                .filter_map(|l| l.strip_prefix("# expect: "))
                .collect();
            assert!(!expects.is_empty(), "{name} has no `# expect:` line");
            for want in expects {
                assert!(err.contains(want), "{name}: {want:?} not in {err}");
            }
            assert!(
                err.contains(&name),
                "{name}: the error names the file: {err}"
            );
        }
        checked += 1;
    }
    assert!(checked >= 15, "{checked}");
}

const TOKEN: &str = "0123456789abcdef0123";

fn app() -> (oauth_token_exporter::Exporter, axum::Router) {
    let cfg = oauth_token_exporter::config::parse(
        "ingest:\n  token_env: T\n  source: app\n  max_events: 1000\n  max_body_bytes: 65536\n",
        "hostile.yml",
        &|_| Some(TOKEN.to_string()),
    )
    .unwrap();
    let clock: oauth_token_exporter::clock::SharedClock =
        oauth_token_exporter::clock::ManualClock::new(fixed_now());
    let e = oauth_token_exporter::Exporter::new(&cfg, clock).unwrap();
    let r = e.router(&Default::default());
    (e, r)
}

async fn post(r: &axum::Router, body: Vec<u8>) -> (StatusCode, String) {
    let resp = r
        .clone()
        .oneshot(
            Request::post("/api/v1/events")
                .header("authorization", format!("Bearer {TOKEN}"))
                .header("content-type", "application/json")
                .body(Body::from(body))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status();
    let bytes = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    (status, String::from_utf8_lossy(&bytes).to_string())
}

#[tokio::test]
async fn hostile_ingest_bodies_are_refused_clearly_and_a_valid_batch_after_them_still_counts() {
    let (e, r) = app();
    let nested = format!(
        r#"{{"events":[{}1{}]}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let deep_event = format!(
        r#"{{"events":[{{"type":"api","connection":"c","status":200,"detail":{}1{}}}]}}"#,
        "[".repeat(5_000),
        "]".repeat(5_000)
    );
    let mut not_utf8 = br#"{"events":[{"type":"api","connection":""#.to_vec();
    not_utf8.extend_from_slice(&[0xff, 0xfe, 0xfd]);
    not_utf8.extend_from_slice(br#"","status":200}]}"#);
    let many = format!(
        r#"{{"events":[{}]}}"#,
        vec![r#"{"type":"api","connection":"c","status":200}"#; 1001].join(",")
    );
    let cases: Vec<(&str, Vec<u8>, StatusCode, &str)> = vec![
        (
            "nested 100,000 deep",
            nested.into_bytes(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "body",
        ),
        (
            "nested 5,000 deep inside an event",
            deep_event.into_bytes(),
            StatusCode::BAD_REQUEST,
            "recursion limit",
        ),
        (
            "invalid UTF-8",
            not_utf8,
            StatusCode::BAD_REQUEST,
            "invalid unicode code point (line 1, column 40)",
        ),
        (
            "events is an object",
            br#"{"events":{"type":"api"}}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "expected a sequence",
        ),
        (
            "the body is a list",
            br#"[{"type":"api"}]"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid type",
        ),
        (
            "an unknown top-level field",
            br#"{"events":[],"extra":1}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "unknown field",
        ),
        (
            "truncated JSON",
            br#"{"events":[{"type":"api","#.to_vec(),
            StatusCode::BAD_REQUEST,
            "EOF",
        ),
        (
            "1,001 events over a limit of 1,000",
            many.into_bytes(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "1001 events in one batch; at most 1000",
        ),
        ("an empty body", Vec::new(), StatusCode::BAD_REQUEST, "EOF"),
        (
            "a NUL byte",
            b"\0".to_vec(),
            StatusCode::BAD_REQUEST,
            "line 1",
        ),
    ];
    for (what, body, want, text) in cases {
        let (status, answer) = post(&r, body).await;
        assert_eq!(status, want, "{what}: {answer}");
        assert!(answer.contains(text), "{what}: {text:?} not in {answer}");
    }
    let text = scrape(&e);
    assert_eq!(
        value(&text, "oauth_api_requests_total", &[("source", "app")]),
        0.0,
        "nothing counted"
    );
    let (status, answer) = post(
        &r,
        br#"{"events":[{"type":"api","connection":"c","status":200},{"type":"api","connection":"c","status":401,"detail":"AuthorizationUnsuccessful"}]}"#.to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let text = scrape(&e);
    assert_eq!(
        value(&text, "oauth_api_requests_total", &[("source", "app")]),
        2.0
    );
    assert_eq!(
        value(
            &text,
            "oauth_api_unauthorized_total",
            &[("source", "app"), ("reason", "authorization_unsuccessful")]
        ),
        1.0
    );
}
