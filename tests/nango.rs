//! Nango as it really is: the `nango` preset against Nango's own schema (every knex migration
//! applied; see `tests/common/nango.rs` for the files and commit followed) with rows written as
//! Nango's code writes them, and `POST /webhooks/nango` with webhooks built and signed as Nango
//! builds and signs them.

mod common;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use chrono::Duration;
use common::nango::*;
use common::*;
use oauth_token_exporter::ServerOptions;
use tower::ServiceExt;

const HALF_HOUR: Duration = Duration::minutes(30);

async fn nango(test: &str) -> Option<NangoDb> {
    if !server_or_skip(test, "PostgreSQL", &pg_url()).await {
        return None;
    }
    Some(NangoDb::load(&pg_url(), &unique(test)).await)
}

fn config(db: &NangoDb, extra: &str) -> String {
    format!(
        "sources:\n  - name: nango\n    kind: postgres\n    dsn: {}\n    preset: nango\n    table: {}._nango_connections\n{extra}",
        pg_url(),
        db.schema
    )
}

async fn scrape_of(db: &NangoDb, extra: &str) -> String {
    let (mut e, _) = exporter(&config(db, extra), fixed_now());
    assert_eq!(poll(&mut e).await, [true], "{}", scrape(&e));
    scrape(&e)
}

fn status(text: &str, connection: &str) -> String {
    ["active", "failing", "needs_reauth", "revoked", "unknown"]
        .into_iter()
        .find(|s| {
            value(
                text,
                "oauth_connection_status",
                &[("connection", connection), ("status", s)],
            ) == 1.0
        })
        .unwrap()
        .to_string()
}

fn epoch(t: chrono::DateTime<chrono::Utc>) -> f64 {
    t.timestamp() as f64
}

#[tokio::test]
async fn a_transient_failure_on_an_old_connection_keeps_its_last_refresh_from_the_access_expiry() {
    let Some(db) = nango("nango_transient_failure").await else {
        return;
    };
    let now = fixed_now();
    let prod = db.environment("prod").await;
    let xero = db.integration(prod, "xero", "xero").await;
    let old = db
        .create(
            prod,
            xero,
            "xero",
            "acme",
            Some("tenant-acme"),
            now - Duration::days(200),
            HALF_HOUR,
        )
        .await;
    db.refreshed(old, now - Duration::minutes(40), HALF_HOUR)
        .await;
    db.refresh_failed(old, now - Duration::minutes(10)).await;
    let text = scrape_of(&db, "").await;
    let c = [("connection", "prod/xero/acme"), ("tenant", "tenant-acme")];
    // Nango set last_refresh_success to NULL; the expiry it kept says 40 minutes, not 200 days.
    assert_eq!(
        value(
            &text,
            "oauth_refresh_token_last_refresh_timestamp_seconds",
            &c
        ),
        epoch(now - Duration::minutes(40))
    );
    assert_eq!(value(&text, "oauth_refresh_token_age_seconds", &c), 2400.0);
    assert_eq!(value(&text, "oauth_refresh_token_expired", &c), 0.0);
    assert_eq!(status(&text, "prod/xero/acme"), "failing");
    assert_eq!(
        value(
            &text,
            "oauth_connections",
            &[
                ("source", "nango"),
                ("provider", "xero"),
                ("status", "failing")
            ]
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "oauth_connections_failing",
            &[("source", "nango"), ("provider", "xero")]
        ),
        1.0,
        "a failure 10 minutes ago is inside the detect window"
    );
    // The next successful refresh makes it active again.
    db.refreshed(old, now - Duration::minutes(1), HALF_HOUR)
        .await;
    let text = scrape_of(&db, "").await;
    assert_eq!(status(&text, "prod/xero/acme"), "active");
    assert_eq!(value(&text, "oauth_refresh_token_age_seconds", &c), 60.0);
    db.drop_schema().await;
}

#[tokio::test]
async fn failing_on_1_2_and_3_days_is_failing_and_on_4_days_needs_reauth() {
    let Some(db) = nango("nango_failing_days").await else {
        return;
    };
    let now = fixed_now();
    let prod = db.environment("prod").await;
    let xero = db.integration(prod, "xero", "xero").await;
    let refreshed = now - Duration::days(4) - Duration::hours(1);
    for days in 1..=4 {
        let id = db
            .create(
                prod,
                xero,
                "xero",
                &format!("d{days}"),
                None,
                now - Duration::days(30),
                HALF_HOUR,
            )
            .await;
        db.refreshed(id, refreshed, HALF_HOUR).await;
        // Nango retries through the day; attempts count once per day.
        for day in (0..days).rev() {
            for hour in [9, 3, 1] {
                db.refresh_failed(id, now - Duration::days(day) - Duration::hours(hour))
                    .await;
            }
        }
    }
    let text = scrape_of(&db, "").await;
    for (id, want) in [
        ("prod/xero/d1", "failing"),
        ("prod/xero/d2", "failing"),
        ("prod/xero/d3", "failing"),
        ("prod/xero/d4", "needs_reauth"),
    ] {
        assert_eq!(status(&text, id), want, "{id}");
        assert_eq!(
            value(
                &text,
                "oauth_refresh_token_last_refresh_timestamp_seconds",
                &[("connection", id)]
            ),
            epoch(refreshed),
            "{id}: the last success, recovered from the access expiry"
        );
    }
    let rows: Vec<(String, i16, bool)> = sqlx::query_as(&format!(
        "SELECT connection_id, refresh_attempts, refresh_exhausted FROM {}._nango_connections ORDER BY connection_id",
        db.schema
    ))
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        rows,
        [
            ("d1".into(), 1, false),
            ("d2".into(), 2, false),
            ("d3".into(), 3, false),
            ("d4".into(), 4, true)
        ],
        "the rows are as Nango's setRefreshFailure leaves them"
    );
    db.drop_schema().await;
}

#[tokio::test]
async fn dev_and_prod_twins_are_two_connections_labelled_with_their_environment() {
    let Some(db) = nango("nango_twins").await else {
        return;
    };
    let now = fixed_now();
    for (env, tenant) in [("dev", "tenant-dev"), ("prod", "tenant-prod")] {
        let e = db.environment(env).await;
        let xero = db.integration(e, "xero", "xero").await;
        db.create(
            e,
            xero,
            "xero",
            "acme",
            Some(tenant),
            now - Duration::hours(2),
            HALF_HOUR,
        )
        .await;
    }
    let text = scrape_of(&db, "").await;
    assert_eq!(
        connections(&text, "nango"),
        ["dev/xero/acme", "prod/xero/acme"]
    );
    for (id, env, tenant) in [
        ("dev/xero/acme", "dev", "tenant-dev"),
        ("prod/xero/acme", "prod", "tenant-prod"),
    ] {
        assert_eq!(
            value(
                &text,
                "oauth_connection_info",
                &[("connection", id), ("environment", env), ("tenant", tenant)]
            ),
            1.0
        );
    }
    assert_eq!(
        value(
            &text,
            "oauth_exporter_rows_rejected_total",
            &[("source", "nango"), ("reason", "duplicate_connection")]
        ),
        0.0
    );
    db.drop_schema().await;
}

#[tokio::test]
async fn integrations_are_exported_under_their_own_provider_and_unknown_ones_only_by_choice() {
    let Some(db) = nango("nango_providers").await else {
        return;
    };
    let now = fixed_now();
    let prod = db.environment("prod").await;
    for (key, provider, id) in [
        ("xero", "xero", "x1"),
        ("qbo", "quickbooks-sandbox", "q1"),
        ("crm", "hubspot", "h1"),
    ] {
        let config = db.integration(prod, key, provider).await;
        db.create(
            prod,
            config,
            key,
            id,
            None,
            now - Duration::days(10),
            Duration::hours(1),
        )
        .await;
    }
    let text = scrape_of(&db, "").await;
    assert_eq!(
        connections(&text, "nango"),
        ["prod/qbo/q1", "prod/xero/x1"],
        "HubSpot has no profile: left out"
    );
    let window = |provider: &str| {
        value(
            &text,
            "oauth_provider_refresh_token_lifetime_seconds",
            &[("source", "nango"), ("provider", provider)],
        )
    };
    assert_eq!(window("xero"), 60.0 * 86400.0);
    assert_eq!(window("quickbooks"), 100.0 * 86400.0);
    assert_eq!(
        value(
            &text,
            "oauth_refresh_token_expiry_timestamp_seconds",
            &[("connection", "prod/qbo/q1"), ("provider", "quickbooks")]
        ),
        epoch(now - Duration::days(10) + Duration::days(100)),
        "QuickBooks' 100-day window, from its own access lifetime (1 h)"
    );
    assert_eq!(
        value(
            &text,
            "oauth_connections",
            &[("provider", "quickbooks"), ("status", "active")]
        ),
        1.0
    );
    // Exported by choice, under HubSpot's own name and the lifetimes given.
    let text = scrape_of(
        &db,
        "    unknown_providers: {export: true, access_token_lifetime: 1h, refresh_token_lifetime: 180d}\n",
    )
    .await;
    assert_eq!(
        value(
            &text,
            "oauth_refresh_token_expiry_timestamp_seconds",
            &[("connection", "prod/crm/h1"), ("provider", "hubspot")]
        ),
        epoch(now - Duration::days(10) + Duration::days(180))
    );
    db.drop_schema().await;
}

#[tokio::test]
async fn a_re_authorised_connection_after_a_soft_delete_is_exported_once_from_its_new_row() {
    let Some(db) = nango("nango_soft_delete").await else {
        return;
    };
    let now = fixed_now();
    let prod = db.environment("prod").await;
    let xero = db.integration(prod, "xero", "xero").await;
    let first = db
        .create(
            prod,
            xero,
            "xero",
            "acme",
            Some("t1"),
            now - Duration::days(100),
            HALF_HOUR,
        )
        .await;
    db.auth_failed(first, now - Duration::days(3)).await;
    db.soft_delete(first, now - Duration::days(2)).await;
    db.create(
        prod,
        xero,
        "xero",
        "acme",
        Some("t1"),
        now - Duration::days(1),
        HALF_HOUR,
    )
    .await;
    // An older connection whose row predates Nango's health columns.
    let legacy = db
        .create(
            prod,
            xero,
            "xero",
            "legacy",
            None,
            now - Duration::days(20),
            HALF_HOUR,
        )
        .await;
    db.clear_health_columns(legacy).await;
    let text = scrape_of(&db, "").await;
    assert_eq!(
        connections(&text, "nango"),
        ["prod/xero/acme", "prod/xero/legacy"]
    );
    assert_eq!(status(&text, "prod/xero/acme"), "active");
    assert_eq!(
        value(
            &text,
            "oauth_refresh_token_age_seconds",
            &[("connection", "prod/xero/acme")]
        ),
        86400.0
    );
    assert_eq!(
        value(
            &text,
            "oauth_refresh_token_age_seconds",
            &[("connection", "prod/xero/legacy")]
        ),
        20.0 * 86400.0,
        "no success and no expiry recorded: its creation"
    );
    db.drop_schema().await;
}

#[tokio::test]
async fn a_connection_whose_credentials_failed_verification_needs_reauth() {
    let Some(db) = nango("nango_auth_failed").await else {
        return;
    };
    let now = fixed_now();
    let prod = db.environment("prod").await;
    let xero = db.integration(prod, "xero", "xero").await;
    let id = db
        .create(
            prod,
            xero,
            "xero",
            "acme",
            None,
            now - Duration::days(5),
            HALF_HOUR,
        )
        .await;
    db.auth_failed(id, now - Duration::hours(1)).await;
    let text = scrape_of(&db, "").await;
    assert_eq!(status(&text, "prod/xero/acme"), "needs_reauth");
    db.drop_schema().await;
}

// ---- Webhooks ----------------------------------------------------------------------------

const KEY: &str = "nango-webhook-signing-key-5be1";

async fn post(r: &axum::Router, body: &str, signed: bool) -> (StatusCode, String) {
    let mut req = Request::post("/webhooks/nango").header("content-type", "application/json");
    if signed {
        let (hmac, legacy) = nango_signatures(KEY, body);
        req = req
            .header("x-nango-hmac-sha256", hmac)
            .header("x-nango-signature", legacy);
    }
    let resp = r
        .clone()
        .oneshot(req.body(Body::from(body.to_string())).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

fn webhook_exporter(
    section: &str,
) -> (
    oauth_token_exporter::Exporter,
    axum::Router,
    tempfile::TempDir,
) {
    let d = tempfile::tempdir().unwrap();
    let key = d.path().join("signing-key");
    std::fs::write(&key, KEY).unwrap();
    let (e, _) = exporter(
        &section.replace("{key}", &key.display().to_string()),
        fixed_now(),
    );
    let r = e.router(&ServerOptions::default());
    (e, r, d)
}

#[tokio::test]
async fn nangos_refresh_failure_webhooks_count_as_other_failures_of_their_provider_and_feed_the_detector(
) {
    let (e, r, _d) =
        webhook_exporter("nango_webhook:\n  source: nango_webhooks\n  signing_key_file: {key}\n");
    for (id, provider) in [
        ("acme", "xero"),
        ("globex", "xero"),
        ("initech", "quickbooks-sandbox"),
    ] {
        let body = refresh_failed_webhook("prod", "xero", id, provider);
        assert_eq!(post(&r, &body, true).await.0, StatusCode::OK);
    }
    // Not counted: another provider without a profile, a new connection, a sync.
    for body in [
        refresh_failed_webhook("prod", "crm", "h1", "hubspot"),
        creation_webhook("prod", "xero", "acme", "xero"),
        r#"{"connectionId":"acme","from":"nango","model":"Invoice","providerConfigKey":"xero","success":true,"syncName":"invoices","type":"sync"}"#.to_string(),
    ] {
        assert_eq!(post(&r, &body, true).await.0, StatusCode::OK, "{body}");
    }
    let text = scrape(&e);
    let l = |provider, error| {
        [
            ("source", "nango_webhooks"),
            ("provider", provider),
            ("error", error),
        ]
    };
    assert_eq!(
        value(
            &text,
            "oauth_token_refresh_failures_total",
            &l("xero", "other")
        ),
        2.0
    );
    assert_eq!(
        value(
            &text,
            "oauth_token_refresh_failures_total",
            &l("xero", "invalid_grant")
        ),
        0.0
    );
    assert_eq!(
        value(
            &text,
            "oauth_token_refresh_failures_total",
            &l("quickbooks", "other")
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "oauth_token_refreshes_total",
            &[("source", "nango_webhooks"), ("provider", "xero")]
        ),
        2.0
    );
    assert_eq!(
        value(
            &text,
            "oauth_connections_failing",
            &[("source", "nango_webhooks"), ("provider", "xero")]
        ),
        2.0
    );
    assert!(!text.contains("hubspot"), "{text}");
}

#[tokio::test]
async fn unsigned_wrongly_signed_and_oversized_webhooks_are_refused_and_count_nothing() {
    let (e, r, _d) = webhook_exporter("nango_webhook:\n  signing_key_file: {key}\n");
    let body = refresh_failed_webhook("prod", "xero", "acme", "xero");
    assert_eq!(post(&r, &body, false).await.0, StatusCode::UNAUTHORIZED);
    let mut req = Request::post("/webhooks/nango").header("content-type", "application/json");
    req = req.header(
        "x-nango-hmac-sha256",
        nango_signatures("another key", &body).0,
    );
    let resp = r
        .clone()
        .oneshot(req.body(Body::from(body.clone())).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // Ids feed detector state: the ingest API's limit of 256 characters applies.
    let long = "x".repeat(100 * 1024);
    for _ in 0..200 {
        let body = refresh_failed_webhook("prod", "xero", &long, "xero");
        let (status, answer) = post(&r, &body, true).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            answer.contains("connectionId must be a non-empty string of at most 256 characters"),
            "{answer}"
        );
        assert!(!answer.contains("xxxx"), "the id is not echoed");
    }
    let body = refresh_failed_webhook(&"e".repeat(257), "xero", "acme", "xero");
    assert!(post(&r, &body, true)
        .await
        .1
        .contains("environment must be"));
    let text = scrape(&e);
    assert_eq!(
        value(
            &text,
            "oauth_token_refreshes_total",
            &[("source", "nango"), ("provider", "xero")]
        ),
        0.0
    );
}

#[test]
fn the_old_secret_key_names_still_work_with_a_deprecation_warning_and_no_key_warns() {
    let env = |k: &str| (k == "NANGO_KEY").then(|| KEY.to_string());
    let cfg = oauth_token_exporter::config::parse(
        "nango_webhook:\n  secret_env: NANGO_KEY\n",
        "t.yml",
        &env,
    )
    .unwrap();
    let key = cfg
        .inlets
        .nango_webhook
        .as_ref()
        .unwrap()
        .signing_key
        .as_ref()
        .unwrap();
    assert_eq!(key.expose(), KEY);
    let warnings: Vec<String> = cfg.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].starts_with("nango_webhook.secret_env: is deprecated"),
        "{warnings:?}"
    );
    let cfg = oauth_token_exporter::config::parse("nango_webhook: {}\n", "t.yml", &env).unwrap();
    assert!(
        cfg.warnings[0]
            .to_string()
            .starts_with("nango_webhook: has no `signing_key_env` or `signing_key_file`"),
        "{:?}",
        cfg.warnings
    );
    let cfg = oauth_token_exporter::config::parse(
        "nango_webhook:\n  signing_key_env: NANGO_KEY\n",
        "t.yml",
        &env,
    )
    .unwrap();
    assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
}

#[test]
fn a_source_and_a_webhook_inlet_under_one_name_are_refused() {
    let err = oauth_token_exporter::config::parse(
        "sources:\n  - {name: nango, kind: postgres, dsn: postgres://h/d, preset: nango}\nnango_webhook:\n  signing_key_env: K\n",
        "t.yml",
        &|_| Some("k".into()),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("nango_webhook.source: \"nango\" is also the source name of sources[0].name"),
        "{err}"
    );
}

// ---- End to end ---------------------------------------------------------------------------

/// Nango-shaped rows and Nango-signed webhooks into the real binary, a real Prometheus with the
/// shipped rules and a real Alertmanager with the shipped routes: a provider failure across six
/// Xero connections pages once (the unnamed-error spike is inhibited by the mass failure), the
/// still-failing connections open a ticket, and the 200-day-old connection that failed once
/// after refreshing 40 minutes ago raises nothing about expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nango_rows_and_webhooks_page_a_mass_failure_and_ticket_the_failing_connections_and_nothing_else(
) {
    use common::alerting::Alerting;
    let test = "nango_rows_and_webhooks_end_to_end";
    let Some(db) = nango(test).await else { return };
    oauth_token_exporter::sources::install_tls_provider();
    let now = chrono::Utc::now();
    let prod = db.environment("prod").await;
    let xero = db.integration(prod, "xero", "xero").await;
    let crm = db.integration(prod, "crm", "hubspot").await;
    let mut ids = Vec::new();
    for i in 0..8 {
        let created = if i == 0 {
            now - Duration::days(200)
        } else {
            now - Duration::days(20)
        };
        let id = db
            .create(
                prod,
                xero,
                "xero",
                &format!("org{i}"),
                Some(&format!("tenant-{i}")),
                created,
                HALF_HOUR,
            )
            .await;
        db.refreshed(id, now - Duration::minutes(40), HALF_HOUR)
            .await;
        ids.push(id);
    }
    db.create(
        prod,
        crm,
        "crm",
        "h1",
        None,
        now - Duration::days(300),
        Duration::hours(1),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("signing-key");
    std::fs::write(&key, KEY).unwrap();
    let config = format!(
        "global:\n  poll_interval: 1s\n  poll_timeout: 1s\n\
         sources:\n  - name: nango\n    kind: postgres\n    dsn: {}\n    preset: nango\n    table: {}._nango_connections\n\
         nango_webhook:\n  source: nango_webhooks\n  signing_key_file: {}\n",
        pg_url(),
        db.schema,
        key.display()
    );
    let Some(s) = Alerting::start(test, dir, &config, &[]).await else {
        db.drop_schema().await;
        return;
    };
    s.until(
        "Prometheus has the Nango connections",
        std::time::Duration::from_secs(30),
        || async {
            s.query("count(oauth_refresh_token_last_refresh_timestamp_seconds{source=\"nango\"})")
                .await
                .first()
                .and_then(|v| v["value"][1].as_str()?.parse::<usize>().ok())
                == Some(8)
        },
    )
    .await;
    // The provider refuses six refreshes: Nango records each failure and sends its webhook.
    let http = reqwest::Client::new();
    for (i, id) in ids.iter().enumerate().take(6) {
        db.refresh_failed(*id, chrono::Utc::now()).await;
        let body = refresh_failed_webhook("prod", "xero", &format!("org{i}"), "xero");
        let (hmac, legacy) = nango_signatures(KEY, &body);
        let r = http
            .post(format!("{}/webhooks/nango", s.exporter_url))
            .header("content-type", "application/json")
            .header("x-nango-hmac-sha256", hmac)
            .header("x-nango-signature", legacy)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    s.expect_inhibiting(
        &[
            ("OAuthManyConnectionsFailing", "pager"),
            ("OAuthConnectionsFailingRefresh", "ticket"),
        ],
        &["OAuthRefreshFailureSpike"],
    )
    .await;
    let expired = s
        .query("oauth_refresh_token_expired{source=\"nango\", connection=\"prod/xero/org0\"}")
        .await;
    assert_eq!(
        expired[0]["value"][1], "0",
        "the 200-day-old connection refreshed 40 minutes ago"
    );
    db.drop_schema().await;
}
