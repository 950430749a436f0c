//! Canary: secrets never leak. Access tokens, refresh tokens, client secrets, DSN passwords, the
//! ingest key, the Nango secret and a basic-auth password are unique marker strings (all
//! starting with `CANARY`), and they run through every source kind, every inlet and the proxy
//! of the real binary logging at trace level, in good rows and in bad ones, in good requests
//! and in hostile ones. The word `CANARY` then appears nowhere: not in `/metrics`, the landing
//! page, any API answer, any log line, nor any error message (`--config.check` included).

mod common;
use common::*;
use oauth_token_exporter::clock::{SharedClock, SystemClock};
use oauth_token_exporter::model::StoreKind;
use oauth_token_exporter::secret::Secret;
use oauth_token_exporter::sim::host_app::{EventSink, HostApp, HostAppOptions, Refreshed};
use oauth_token_exporter::sim::store::SimStore;
use oauth_token_exporter::sim::xero::SimXero;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

const ACCESS: &str = "CANARYACCESSd41d8";
const REFRESH: &str = "CANARYREFRESHb7e1";
const CLIENT_SECRET: &str = "CANARYCLIENTSECRET9f2c";
const PG_PASSWORD: &str = "CANARYPGPASS5a7b";
const MY_PASSWORD: &str = "CANARYMYPASS3c1d";
const REDIS_PASSWORD: &str = "CANARYREDISPASS8e4f";
const HTTP_BEARER: &str = "CANARYHTTPBEARER2b9a";
const INGEST_TOKEN: &str = "CANARYINGESTTOKEN6d0e";
const NANGO_SECRET: &str = "CANARYNANGOSECRET1f7c";
const BASIC_PASSWORD: &str = "CANARYBASICPASSWORD4a8b";
const SIM_TOKENS: &str = "CANARYSIMTOKEN";

fn basic(user: &str, pw: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"))
    )
}

/// Everything the exporter said, to be searched for the markers.
#[derive(Default)]
struct Said(Vec<(String, String)>);

impl Said {
    fn add(&mut self, what: impl Into<String>, text: impl Into<String>) {
        self.0.push((what.into(), text.into()));
    }

    fn assert_clean(&self) {
        let leaks: Vec<String> = self
            .0
            .iter()
            .filter(|(_, t)| t.contains("CANARY"))
            .map(|(w, t)| {
                let line = t.lines().find(|l| l.contains("CANARY")).unwrap_or_default();
                format!("{w}: {}", &line[..line.len().min(400)])
            })
            .collect();
        assert!(leaks.is_empty(), "secrets leaked:\n{}", leaks.join("\n"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_secret_or_password_appears_in_metrics_pages_answers_logs_or_errors() {
    let test = "no_token_secret_or_password_appears_in_metrics_pages_answers_logs_or_errors";
    oauth_token_exporter::sources::install_tls_provider();
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let mut said = Said::default();
    let mut sources = String::new();

    // SQLite: tokens in the rows (one mapped as refresh_token), a bad timestamp holding a token.
    let (_k, db, pool) = sqlite_db(&[
        "CREATE TABLE xero_tokens (id TEXT, tenant_id TEXT, access_token TEXT, refresh_token TEXT, expires_at TEXT)",
        "CREATE TABLE oauth_events (id INTEGER PRIMARY KEY, type TEXT, connection TEXT, tenant TEXT, time TEXT, outcome TEXT, error TEXT, status TEXT, detail TEXT, rate_limit_problem TEXT)",
    ])
    .await;
    sqlx::query(&format!("INSERT INTO xero_tokens VALUES ('c1', 't1', '{ACCESS}', '{REFRESH}', strftime('%s','now') + 900), ('c2', 't2', '{ACCESS}', '{REFRESH}', '{ACCESS}')")).execute(&pool).await.unwrap();
    sqlx::query(&format!("INSERT INTO oauth_events (type, connection, outcome, error, status, detail) VALUES ('refresh', 'c1', 'failure', '{REFRESH}', '400', NULL), ('api', 'c1', NULL, NULL, '{ACCESS}', '{ACCESS}'), ('{ACCESS}', 'c1', NULL, NULL, '200', NULL), ('refresh', 'c1', '{REFRESH}', NULL, NULL, NULL)")).execute(&pool).await.unwrap();
    sources += &format!(
        "  - name: lite\n    kind: sqlite\n    dsn: {}\n    query: SELECT id, tenant_id, access_token, refresh_token, expires_at FROM xero_tokens\n    infer_last_refresh: access_expires\n    fields: {{connection: id, tenant: tenant_id, access_expires: expires_at, refresh_token: refresh_token}}\n",
        db.display()
    );
    // Store errors that quote a value read from a row (issue 14): SQLite quotes a JSON path it
    // could not follow, here one taken from a token column.
    sources += &format!(
        "  - {{name: lite_leak, kind: sqlite, dsn: {}, query: \"SELECT id, json_extract('{{}}', access_token) AS lr FROM xero_tokens\", fields: {{connection: id, last_refresh: lr}}}}\n",
        db.display()
    );
    let leak_table = unique("canary_leak");
    let mut pg_admin = None;
    // PostgreSQL: the password in the DSN (trust auth accepts it), and a DSN to nowhere.
    if server_or_skip(test, "PostgreSQL", &pg_url()).await {
        // A cast of a token column: PostgreSQL's 22P02 message quotes the text it could not cast.
        let admin = SimStore::connect(StoreKind::Postgres, &pg_url())
            .await
            .unwrap();
        admin
            .execute(&format!("DROP TABLE IF EXISTS {leak_table}"), &[])
            .await
            .unwrap();
        admin
            .execute(
                &format!("CREATE TABLE {leak_table} (id TEXT, access_token TEXT)"),
                &[],
            )
            .await
            .unwrap();
        admin
            .execute(
                &format!("INSERT INTO {leak_table} VALUES ('c1', '{ACCESS}')"),
                &[],
            )
            .await
            .unwrap();
        sources += &format!(
            "  - {{name: pg_leak, kind: postgres, dsn: '{}', query: 'SELECT id, CAST(access_token AS bigint) AS lr FROM {leak_table}', fields: {{connection: id, last_refresh: lr}}}}\n",
            pg_url()
        );
        pg_admin = Some(admin);
        let url = pg_url().replace("postgres@", &format!("postgres:{PG_PASSWORD}@"));
        let down = format!(
            "postgres://postgres:{PG_PASSWORD}@127.0.0.1:{}/test",
            free_port()
        );
        sources += &format!(
            "  - {{name: pg, kind: postgres, dsn: '{url}', query: 'SELECT ''c9'' AS id, now() AS refreshed', fields: {{connection: id, last_refresh: refreshed}}}}\n\
             \x20 - {{name: pg_down, kind: postgres, dsn: '{down}', preset: xero_tokens}}\n"
        );
    }
    let mut my_admin = None;
    // MariaDB: a user whose password is a marker, and the same user with a wrong one.
    if server_or_skip(test, "MySQL/MariaDB", &mysql_url()).await {
        let admin = SimStore::connect(StoreKind::Mysql, &mysql_url())
            .await
            .unwrap();
        for q in [
            "DROP USER IF EXISTS 'ote_canary'@'%'".to_string(),
            format!("CREATE USER 'ote_canary'@'%' IDENTIFIED BY '{MY_PASSWORD}'"),
            "GRANT SELECT ON test.* TO 'ote_canary'@'%'".to_string(),
            // A host-app function that raises with a row's value (MySQL/MariaDB SIGNAL, 1644).
            format!("DROP TABLE IF EXISTS {leak_table}"),
            format!("CREATE TABLE {leak_table} (id TEXT, access_token TEXT)"),
            format!("INSERT INTO {leak_table} VALUES ('c1', '{ACCESS}')"),
            format!("DROP FUNCTION IF EXISTS {leak_table}_fn"),
            format!("CREATE FUNCTION {leak_table}_fn(t TEXT) RETURNS INT DETERMINISTIC BEGIN SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = t; RETURN 0; END"),
            format!("GRANT EXECUTE ON FUNCTION test.{leak_table}_fn TO 'ote_canary'@'%'"),
        ] {
            admin.execute(&q, &[]).await.unwrap();
        }
        sources += &format!(
            "  - {{name: my_leak, kind: mysql, dsn: 'mysql://ote_canary:{MY_PASSWORD}@127.0.0.1:3306/test', query: 'SELECT id, {leak_table}_fn(access_token) AS lr FROM {leak_table}', fields: {{connection: id, last_refresh: lr}}}}\n"
        );
        my_admin = Some(admin);
        sources += &format!(
            "  - {{name: my, kind: mysql, dsn: 'mysql://ote_canary:{MY_PASSWORD}@127.0.0.1:3306/test', query: 'SELECT ''c8'' AS id, NOW() AS refreshed', fields: {{connection: id, last_refresh: refreshed}}}}\n\
             \x20 - {{name: my_wrong, kind: mysql, dsn: 'mysql://ote_canary:{MY_PASSWORD}x@127.0.0.1:3306/test', preset: xero_tokens}}\n"
        );
    }
    // Redis: token sets holding markers, and a password the server does not expect.
    let redis_url =
        std::env::var("OTE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = unique("canary");
    if server_or_skip(test, "Redis", &redis_url).await {
        let client = redis::Client::open(redis_url.as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let _: () = redis::cmd("SET")
            .arg(format!("{prefix}:c7"))
            .arg(format!(
                r#"{{"access_token":"{ACCESS}","refresh_token":"{REFRESH}","expires_at":{}}}"#,
                chrono::Utc::now().timestamp() + 900
            ))
            .query_async(&mut conn)
            .await
            .unwrap();
        let _: () = redis::cmd("SET")
            .arg(format!("{prefix}:bad"))
            .arg(format!("not json {ACCESS}"))
            .query_async(&mut conn)
            .await
            .unwrap();
        let with_password = redis_url.replace("redis://", &format!("redis://:{REDIS_PASSWORD}@"));
        sources += &format!(
            "  - {{name: rds, kind: redis, dsn: '{redis_url}', key_pattern: '{prefix}:*', value: json}}\n\
             \x20 - {{name: rds_auth, kind: redis, dsn: '{with_password}', key_pattern: '{prefix}:*', value: json}}\n"
        );
    }
    // Token files: a xero-node token set, and a broken file around a token.
    std::fs::write(
        dir.join("token.json"),
        format!(r#"{{"access_token":"{ACCESS}","refresh_token":"{REFRESH}","expires_at":{},"id_token":"{ACCESS}"}}"#, chrono::Utc::now().timestamp() + 900),
    )
    .unwrap();
    std::fs::write(
        dir.join("broken.json"),
        format!(r#"{{"access_token":"{ACCESS}", "#),
    )
    .unwrap();
    sources += &format!(
        "  - {{name: file, kind: file, path: {}}}\n  - {{name: file_broken, kind: file, path: {}}}\n",
        dir.join("token.json").display(),
        dir.join("broken.json").display()
    );
    // An HTTP endpoint that needs a bearer token and answers tokens, and one failing with a
    // token in its error body.
    let admin = serve(
        axum::Router::new()
            .route(
                "/tokens",
                axum::routing::get(|h: axum::http::HeaderMap| async move {
                    if h.get("authorization").and_then(|v| v.to_str().ok()) != Some(&format!("Bearer {HTTP_BEARER}")) {
                        return (axum::http::StatusCode::UNAUTHORIZED, format!("bad token, expected {HTTP_BEARER}")).into_response();
                    }
                    format!(r#"[{{"id":"c6","access_token":"{ACCESS}","refresh_token":"{REFRESH}","expires_at":{}}}]"#, chrono::Utc::now().timestamp() + 900).into_response()
                }),
            )
            .route(
                "/failing",
                axum::routing::get(|| async { (axum::http::StatusCode::INTERNAL_SERVER_ERROR, format!("token {ACCESS} rejected")) }),
            ),
    )
    .await;
    use axum::response::IntoResponse;
    sources += &format!(
        "  - {{name: admin, kind: http, url: '{admin}/tokens', bearer_token_env: OTE_CANARY_BEARER, fields: {{connection: id}}}}\n\
         \x20 - {{name: admin_failing, kind: http, url: '{admin}/failing', bearer_token_env: OTE_CANARY_BEARER, fields: {{connection: id}}}}\n"
    );

    // The simulated Xero behind the proxy, issuing marked tokens to a marked client secret.
    let clock: SharedClock = Arc::new(SystemClock);
    let sim = SimXero::new(clock.clone());
    sim.set_token_marker(SIM_TOKENS);
    sim.add_client("app", CLIENT_SECRET);
    let sim_url = serve(sim.router()).await;
    let (web, proxy_port) = (free_port(), free_port());
    let config = format!(
        "global:\n  poll_interval: 1s\n  poll_timeout: 1s\nsources:\n{sources}\
         event_tables:\n  - {{name: ev, kind: sqlite, dsn: {db}, table: oauth_events, state_file: {state}, start: beginning, interval: 1s, timeout: 1s}}\n\
         ingest:\n  token_env: OTE_CANARY_INGEST\n\
         nango_webhook:\n  signing_key_env: OTE_CANARY_NANGO\n\
         proxy:\n  identity_url: {sim_url}\n  api_url: {sim_url}\n",
        db = db.display(),
        state = dir.join("ev.cursor").display(),
    );
    std::fs::write(dir.join("config.yml"), &config).unwrap();
    std::fs::write(
        dir.join("web.yml"),
        format!(
            "basic_auth_users:\n  prometheus: {}\n",
            bcrypt::hash(BASIC_PASSWORD, 4).unwrap()
        ),
    )
    .unwrap();
    let log_path = dir.join("exporter.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_oauth-token-exporter"))
        .arg("--config.file")
        .arg(dir.join("config.yml"))
        .arg("--web.config.file")
        .arg(dir.join("web.yml"))
        .args([
            format!("--web.listen-address=127.0.0.1:{web}"),
            format!("--proxy.listen-address=127.0.0.1:{proxy_port}"),
            "--log.level=trace".into(),
        ])
        .env("OTE_CANARY_BEARER", HTTP_BEARER)
        .env("OTE_CANARY_INGEST", INGEST_TOKEN)
        .env("OTE_CANARY_NANGO", NANGO_SECRET)
        .stdout(Stdio::from(std::fs::File::create(&log_path).unwrap()))
        .stderr(Stdio::from(
            std::fs::File::create(dir.join("exporter.err")).unwrap(),
        ))
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{web}");
    let proxy = format!("http://127.0.0.1:{proxy_port}");
    let http = reqwest::Client::new();
    let auth = basic("prometheus", BASIC_PASSWORD);
    for _ in 0..100 {
        if http
            .get(format!("{url}/-/healthy"))
            .header("authorization", &auth)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The host app through the proxy: refreshes (marked client secret and refresh tokens in the
    // request, marked tokens in the answer), API calls with marked access tokens, a rotated
    // secret (invalid_client), a dead token (invalid_grant).
    let (_a, app_db, _p) = sqlite_db(&[]).await;
    let app = HostApp::new(
        SimStore::connect(StoreKind::Sqlite, &app_db.display().to_string())
            .await
            .unwrap(),
        HostAppOptions {
            prefix: String::new(),
            xero_url: proxy.clone(),
            client_id: "app".into(),
            client_secret: Secret::new(CLIENT_SECRET),
            sink: EventSink::None,
        },
        sim.clone(),
        clock.clone(),
    );
    app.create_schema().await.unwrap();
    app.connect_tenant(
        "p1",
        "Org",
        "alice",
        Some(chrono::Utc::now() - chrono::Duration::hours(1)),
    )
    .await
    .unwrap();
    app.connect_tenant("p2", "Org 2", "bob", None)
        .await
        .unwrap();
    assert!(matches!(app.refresh("p1").await.unwrap(), Refreshed::Ok(_)));
    assert_eq!(app.call_api("p1").await.unwrap().0, 200);
    sim.change_password("bob");
    assert_eq!(app.call_api("p2").await.unwrap().0, 401);
    assert_eq!(
        app.refresh("p2").await.unwrap(),
        Refreshed::Failed("invalid_grant".into())
    );
    app.set_client_secret(Secret::new(format!("{CLIENT_SECRET}-old")));
    assert_eq!(
        app.refresh("p1").await.unwrap(),
        Refreshed::Failed("invalid_client".into())
    );

    // Hostile and wrong requests carrying markers.
    let answers = [
        http.get(format!("{url}/metrics")).header("authorization", basic("prometheus", &format!("{BASIC_PASSWORD}-wrong"))),
        http.get(format!("{url}/metrics")).header("authorization", basic(ACCESS, BASIC_PASSWORD)),
        http.post(format!("{url}/api/v1/events")).header("authorization", &auth).header("x-ingest-token", ACCESS).header("content-type", "application/json").body("{}"),
        http.post(format!("{url}/api/v1/events")).header("authorization", &auth).header("x-ingest-token", INGEST_TOKEN).header("content-type", "application/json")
            .body(format!(r#"{{"events":[{{"type":"refresh","connection":"c1","outcome":"{REFRESH}"}},{{"type":"api","connection":"c1","status":"{ACCESS}"}},{{"type":"api","connection":"c1","status":401,"{ACCESS}":1}},{{"type":"{ACCESS}","connection":"c1"}},{{"type":"refresh","connection":"c1","outcome":"failure","error":"{REFRESH}"}},{{"type":"refresh","connection":"c1","outcome":"failure","time":"{ACCESS}"}}]}}"#)),
        http.post(format!("{url}/api/v1/events")).header("authorization", &auth).header("x-ingest-token", INGEST_TOKEN).header("content-type", "application/json").body(format!(r#"{{"events": [{ACCESS}"#)),
        http.post(format!("{url}/webhooks/nango")).header("authorization", &auth).header("x-nango-hmac-sha256", ACCESS).header("content-type", "application/json").body(format!(r#"{{"type":"auth","operation":"refresh","success":false,"connectionId":"n1","providerConfigKey":"xero","provider":"xero","error":{{"type":"refresh_token_external_error","description":"invalid_grant {REFRESH}"}}}}"#)),
    ];
    for (i, req) in answers.into_iter().enumerate() {
        let r = req.send().await.unwrap();
        let status = r.status();
        said.add(format!("answer {i} ({status})"), r.text().await.unwrap());
    }
    // A correctly signed Nango webhook carrying a token in its error description.
    let body = format!(
        r#"{{"type":"auth","operation":"refresh","success":false,"connectionId":"n1","providerConfigKey":"xero","provider":"xero","environment":"prod","error":{{"type":"refresh_token_external_error","description":"invalid_grant for {REFRESH}"}}}}"#
    );
    let sig = {
        use hmac::Mac;
        let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(NANGO_SECRET.as_bytes()).unwrap();
        m.update(body.as_bytes());
        hex::encode(m.finalize().into_bytes())
    };
    let r = http
        .post(format!("{url}/webhooks/nango"))
        .header("authorization", &auth)
        .header("x-nango-hmac-sha256", sig)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    said.add("signed webhook answer", r.text().await.unwrap());

    // Let every source poll a few times (failures included), then read what it says.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let metrics = http
        .get(format!("{url}/metrics"))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let landing = http
        .get(format!("{url}/"))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let ready = http
        .get(format!("{url}/-/ready"))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // The markers really went through: proxied refreshes and API calls, sources polled and
    // failed, rows and events rejected, the ingest batch and the webhook counted.
    let v = |name: &str, labels: &[(&str, &str)]| sample(&metrics, name, labels).unwrap_or(-1.0);
    assert!(
        v("oauth_token_refreshes_total", &[("source", "proxy")]) >= 3.0,
        "{metrics}"
    );
    assert_eq!(
        v(
            "oauth_token_refresh_failures_total",
            &[("source", "proxy"), ("error", "invalid_client")]
        ),
        1.0
    );
    assert!(v("oauth_api_requests_total", &[("source", "proxy")]) >= 2.0);
    assert_eq!(v("oauth_exporter_source_up", &[("source", "lite")]), 1.0);
    assert_eq!(
        v("oauth_exporter_source_up", &[("source", "file_broken")]),
        0.0
    );
    assert_eq!(v("oauth_exporter_source_up", &[("source", "admin")]), 1.0);
    assert_eq!(
        v("oauth_exporter_source_up", &[("source", "admin_failing")]),
        0.0
    );
    assert!(
        v(
            "oauth_exporter_rows_rejected_total",
            &[("source", "lite"), ("reason", "unparseable_timestamp")]
        ) >= 1.0
    );
    assert!(
        v(
            "oauth_exporter_rows_rejected_total",
            &[("source", "ev"), ("reason", "invalid_event")]
        ) >= 1.0
    );
    assert!(v("oauth_token_refreshes_total", &[("source", "nango")]) >= 1.0);
    if sources.contains("rds_auth") {
        assert_eq!(
            v("oauth_exporter_source_up", &[("source", "rds_auth")]),
            0.0
        );
        assert_eq!(v("oauth_exporter_source_up", &[("source", "rds")]), 1.0);
    }
    if sources.contains("my_wrong") {
        assert_eq!(v("oauth_exporter_source_up", &[("source", "my")]), 1.0);
        assert_eq!(
            v("oauth_exporter_source_up", &[("source", "my_wrong")]),
            0.0
        );
    }
    if sources.contains("pg_down") {
        assert_eq!(v("oauth_exporter_source_up", &[("source", "pg")]), 1.0);
        assert_eq!(v("oauth_exporter_source_up", &[("source", "pg_down")]), 0.0);
    }
    said.add("/metrics", metrics);
    said.add("/", landing);
    said.add("/-/ready", ready);
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(&log_path).unwrap()
        + &std::fs::read_to_string(dir.join("exporter.err")).unwrap();
    assert!(
        log.contains("level=trace") || log.contains("TRACE"),
        "logging at trace level"
    );
    // The exporter's own trace events (each counted event, each scrape) are in it too, and
    // are searched for secrets like every other line.
    assert!(
        log.contains("message=\"Event counted.\"") && log.contains("message=\"Scrape served.\""),
        "{log}"
    );
    assert!(log.lines().count() > 20, "{log}");
    // The store errors that quoted a token were logged, by code, without the server's text.
    assert!(log.contains("SQLite error 1: the server"), "{log}");
    if let Some(admin) = pg_admin {
        assert!(
            log.contains("SQLSTATE 22P02 (invalid_text_representation): the server"),
            "{log}"
        );
        admin
            .execute(&format!("DROP TABLE {leak_table}"), &[])
            .await
            .unwrap();
    }
    if let Some(admin) = my_admin {
        assert!(
            log.contains("error 1644 (SQLSTATE 45000): the server"),
            "{log}"
        );
        for q in [
            format!("DROP FUNCTION {leak_table}_fn"),
            format!("DROP TABLE {leak_table}"),
        ] {
            admin.execute(&q, &[]).await.unwrap();
        }
    }
    said.add("the log", log);

    // Configuration errors: an inline DSN password and an unknown key; a missing variable.
    let bad = dir.join("bad.yml");
    std::fs::write(&bad, format!("sources:\n  - {{name: x, kind: postgres, dsn: 'postgres://u:{PG_PASSWORD}@h/d', query: 'SELECT 1', colour: blue, fields: {{connection: '{ACCESS}'}}}}\n")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_oauth-token-exporter"))
        .arg("--config.file")
        .arg(&bad)
        .arg("--config.check")
        .output()
        .unwrap();
    assert!(!out.status.success());
    said.add(
        "--config.check",
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    );
    said.assert_clean();
    let _ = pool;
}
