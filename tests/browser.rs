//! The landing page in a real browser (Debian's chromium driven through chromedriver): the real
//! binary over a SQLite fleet with hostile connection ids, a source that is down, an ingest
//! inlet and a non-default telemetry path. Skipped by name without chromium and chromedriver
//! (mandatory under `CI=true`).

mod common;
use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Marker values in the token columns: they must never reach the page.
const MARKER: &str = "BROWSERCANARY";

/// chromedriver on a free port and a headless chromium session through it.
async fn browser(test: &str) -> Option<(Kill, Client, tempfile::TempDir)> {
    browser_with(test, false).await
}

/// The same, trusting any certificate when `insecure` (a test's self-signed one).
async fn browser_with(test: &str, insecure: bool) -> Option<(Kill, Client, tempfile::TempDir)> {
    let driver = tool(test, &["chromedriver"])?;
    let chrome = tool(test, &["chromium", "chromium-browser", "google-chrome"])?;
    let port = free_port();
    let child = Command::new(driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let driver = Kill(child);
    let url = format!("http://127.0.0.1:{port}");
    assert!(
        answers(&format!("{url}/status")).await,
        "chromedriver did not start"
    );
    let profile = tempfile::tempdir().unwrap();
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": chrome,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     format!("--user-data-dir={}", profile.path().display())],
        }),
    );
    caps.insert("acceptInsecureCerts".into(), serde_json::json!(insecure));
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&url)
        .await
        .expect("a chromium session through chromedriver");
    Some((driver, client, profile))
}

/// The real binary with `config` (and `args`), its stderr kept in `dir`; waits until `health`
/// (a URL) answers.
async fn exporter(dir: &std::path::Path, config: &str, args: &[String], health: &str) -> Kill {
    let path = dir.join("config.yml");
    std::fs::write(&path, config).unwrap();
    let child = Kill(
        Command::new(env!("CARGO_BIN_EXE_oauth-token-exporter"))
            .arg("--config.file")
            .arg(&path)
            .arg("--collector.relative-metrics")
            .args(args)
            .env("OTE_BROWSER_INGEST", "0123456789abcdef0123456789abcdef")
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.join("exporter.err")).unwrap(),
            ))
            .spawn()
            .unwrap(),
    );
    if !answers(health).await {
        panic!(
            "the exporter did not start: {}",
            std::fs::read_to_string(dir.join("exporter.err")).unwrap_or_default()
        );
    }
    child
}

/// The visible text of the page's body.
async fn body(c: &Client) -> String {
    c.find(Locator::Css("body"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Follow the link named `text` and return the body of the page it leads to.
async fn follow(c: &Client, text: &str) -> String {
    c.find(Locator::LinkText(text))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    body(c).await
}

/// The text of every cell of the table under the heading `h2`, row by row (header row left out).
async fn table(c: &Client, h2: &str) -> Vec<Vec<String>> {
    let rows = c
        .execute(
            "const h = [...document.querySelectorAll('h2')].find(e => e.textContent === arguments[0]);
             let t = h.nextElementSibling;
             while (t && t.tagName !== 'TABLE') t = t.nextElementSibling;
             return [...t.rows].slice(1).map(r => [...r.cells].map(c => c.textContent));",
            vec![serde_json::json!(h2)],
        )
        .await
        .unwrap();
    serde_json::from_value(rows).unwrap()
}

#[tokio::test]
async fn the_landing_page_in_a_real_browser_shows_sources_inlets_and_connections_at_risk_as_text() {
    let test =
        "the_landing_page_in_a_real_browser_shows_sources_inlets_and_connections_at_risk_as_text";
    let Some((_driver, c, _profile)) = browser(test).await else {
        return;
    };
    let day = 86400;
    let ago = |days: i64| (chrono::Utc::now() - chrono::Duration::seconds(days * day)).to_rfc3339();
    let hostile_img = r#"<img src=x onerror="window.__pwned=1">"#;
    let hostile_script = "</td><script>window.__pwned=2</script>";
    let (dir, db, _pool) = sqlite_db(&[
        "CREATE TABLE tokens (id TEXT, tenant TEXT, lr TEXT, access_token TEXT, refresh_token TEXT)",
        &format!(
            "INSERT INTO tokens VALUES \
             ('fresh', 'Fresh Ltd', '{}', '{MARKER}-at-1', '{MARKER}-rt-1'), \
             ('idle-58', 'Idle & \"Sons\"', '{}', '{MARKER}-at-2', '{MARKER}-rt-2'), \
             ('gone-61', 'Gone Ltd', '{}', '{MARKER}-at-3', '{MARKER}-rt-3'), \
             ('{}', '{}', '{}', '{MARKER}-at-4', '{MARKER}-rt-4')",
            ago(1),
            ago(58),
            ago(61),
            hostile_img.replace('\'', "''"),
            hostile_script,
            ago(57),
        ),
    ])
    .await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let _exporter = exporter(
        dir.path(),
        &format!(
            "sources:\n\
             \x20 - name: app\n    kind: sqlite\n    dsn: {db}\n    interval: 1s\n    timeout: 1s\n\
             \x20   query: SELECT id, tenant, lr FROM tokens\n\
             \x20   fields: {{connection: id, tenant: tenant, last_refresh: lr}}\n\
             \x20 - name: billing\n    kind: sqlite\n    dsn: {missing}\n    interval: 1s\n    timeout: 1s\n\
             \x20   query: SELECT id, lr FROM tokens\n\
             \x20   fields: {{connection: id, last_refresh: lr}}\n\
             ingest:\n  source: app-events\n  token_env: OTE_BROWSER_INGEST\n",
            db = db.display(),
            missing = dir.path().join("missing.db").display(),
        ),
        &[
            format!("--web.listen-address=127.0.0.1:{port}"),
            "--web.telemetry-path=/internal/metrics".into(),
        ],
        &format!("{base}/-/healthy"),
    )
    .await;
    // The first poll of `app` has landed once its connections are exported.
    for _ in 0..100 {
        let m = get_text(&format!("{base}/internal/metrics")).await;
        if m.contains("connection=\"fresh\"") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    c.goto(&format!("{base}/")).await.unwrap();
    assert_eq!(c.title().await.unwrap(), "OAuth Token Exporter");

    // Sources: one row each, `billing` down and shown in the page's red.
    let sources = table(&c, "Sources").await;
    let row = |name: &str| {
        sources
            .iter()
            .find(|r| r[0] == name)
            .unwrap_or_else(|| panic!("no row for {name}: {sources:?}"))
            .clone()
    };
    let app = row("app");
    assert_eq!(&app[1..5], ["sqlite", "xero", "yes", app[4].as_str()]);
    assert_ne!(app[4], "never", "app has polled");
    assert_eq!(app[5], "4", "connections of app");
    assert_eq!(
        app[7], "2",
        "not yet expired, expiring within 7 days: 58 and 57 days idle"
    );
    let billing = row("billing");
    assert_eq!((billing[3].as_str(), billing[4].as_str()), ("no", "never"));
    let colour = c
        .execute(
            "return [...document.querySelectorAll('td.down')].map(e => getComputedStyle(e).color)",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        colour,
        serde_json::json!(["rgb(187, 0, 0)"]),
        "the down source in red: the inline style survives the page's CSP"
    );

    // Connections: failing and at-risk ones with their cause, closest to expiry first, hostile
    // ids shown as text, times for people.
    let at_risk = table(&c, "Connections").await;
    let ids: Vec<&str> = at_risk.iter().map(|r| r[1].as_str()).collect();
    assert_eq!(ids, ["gone-61", "idle-58", hostile_img], "{at_risk:?}");
    assert_eq!(at_risk[2][2], hostile_script, "tenant shown verbatim");
    assert_eq!(at_risk[1][2], "Idle & \"Sons\"");
    for r in &at_risk {
        assert_eq!(r[4], "idle_expiry", "{r:?}");
        assert!(
            r[8].starts_with("Refresh every connection"),
            "the fix: {r:?}"
        );
    }
    assert!(
        at_risk[0][6].ends_with(" ago)"),
        "expired: {:?}",
        at_risk[0]
    );
    assert!(at_risk[1][6].contains(" UTC (in "), "{:?}", at_risk[1]);
    assert!(
        at_risk[0][7].contains("the refresh token expired at") && at_risk[0][7].contains("61 d"),
        "evidence: {:?}",
        at_risk[0]
    );
    assert!(
        at_risk[1][7].contains("no refresh for 58 d"),
        "{:?}",
        at_risk[1]
    );
    assert!(
        !app[4].contains("+00:00") && app[4].ends_with(" ago)"),
        "last success for people: {:?}",
        app[4]
    );
    // Counts by cause that add up to the connections, each a link that filters the view.
    let counts = c
        .execute(
            "return [...document.querySelectorAll('ul.causes li')].map(e => e.textContent)",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(counts, serde_json::json!(["healthy: 1", "idle_expiry: 3"]));
    let filtered = follow(&c, "healthy").await;
    assert!(
        c.current_url()
            .await
            .unwrap()
            .as_str()
            .ends_with("/?cause=healthy"),
        "the cause links filter the page"
    );
    assert!(
        filtered.contains("Showing healthy (1 connection(s))"),
        "{filtered}"
    );
    assert!(filtered.contains("No failing or at-risk connection in this view."));
    let all = follow(&c, "Show all").await;
    assert!(all.contains("idle-58"), "{all}");
    let injected = c
        .execute(
            "return [document.scripts.length, document.images.length, typeof window.__pwned]",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        injected,
        serde_json::json!([0, 0, "undefined"]),
        "no element or script from the store"
    );

    // Inlets.
    let inlets = c
        .execute(
            "const h = [...document.querySelectorAll('h2')].find(e => e.textContent === 'Event inlets');
             return [...h.nextElementSibling.querySelectorAll('li')].map(e => e.textContent)",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        inlets,
        serde_json::json!(["Ingest API: POST /api/v1/events (source app-events)"])
    );
    let source = c.source().await.unwrap();
    assert!(!source.contains(MARKER), "a token value reached the page");
    assert!(source.contains("4 exported connection(s) by most likely cause"));
    assert!(
        !source.contains("0123456789abcdef"),
        "the ingest token reached the page"
    );

    // The links: metrics at the configured path, health, readiness naming the source it waits for.
    let metrics = follow(&c, "Metrics").await;
    assert_eq!(
        c.current_url().await.unwrap().as_str(),
        format!("{base}/internal/metrics")
    );
    assert!(
        metrics.contains("oauth_refresh_token_age_seconds{"),
        "{}",
        &metrics[..metrics.len().min(500)]
    );
    c.back().await.unwrap();
    let body = follow(&c, "Health").await;
    assert_eq!(body.trim(), "Healthy");
    c.back().await.unwrap();
    let body = follow(&c, "Readiness").await;
    assert!(
        body.contains("billing"),
        "readiness names the source not yet up: {body}"
    );
    c.close().await.unwrap();
}

#[tokio::test]
async fn behind_tls_and_basic_auth_the_browser_gets_the_page_and_its_links_only_with_the_password()
{
    let test =
        "behind_tls_and_basic_auth_the_browser_gets_the_page_and_its_links_only_with_the_password";
    let Some((_driver, c, _profile)) = browser_with(test, true).await else {
        return;
    };
    let (dir, db, _pool) = sqlite_db(&[
        "CREATE TABLE tokens (id TEXT, lr TEXT)",
        &format!(
            "INSERT INTO tokens VALUES ('c1', '{}')",
            chrono::Utc::now().to_rfc3339()
        ),
    ])
    .await;
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    std::fs::write(dir.path().join("server.crt"), cert.cert.pem()).unwrap();
    std::fs::write(
        dir.path().join("server.key"),
        cert.signing_key.serialize_pem(),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("web.yml"),
        format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n\
             basic_auth_users:\n  admin: {}\n",
            bcrypt::hash("correct horse", 4).unwrap()
        ),
    )
    .unwrap();
    let port = free_port();
    let _exporter = exporter(
        dir.path(),
        &format!(
            "sources:\n  - name: app\n    kind: sqlite\n    dsn: {}\n\
             \x20   query: SELECT id, lr FROM tokens\n\
             \x20   fields: {{connection: id, last_refresh: lr}}\n",
            db.display()
        ),
        &[
            format!("--web.listen-address=127.0.0.1:{port}"),
            format!("--web.config.file={}", dir.path().join("web.yml").display()),
        ],
        &format!("https://127.0.0.1:{port}/-/healthy"),
    )
    .await;

    // The HTTP status of the page the browser is showing (the Navigation Timing entry).
    let status = |c: &Client| {
        let c = c.clone();
        async move {
            c.execute(
                "return performance.getEntriesByType('navigation')[0].responseStatus",
                vec![],
            )
            .await
            .unwrap()
        }
    };

    // No password, or a wrong one: 401 and nothing of the page.
    for url in [
        format!("https://127.0.0.1:{port}/"),
        format!("https://admin:wrong@127.0.0.1:{port}/"),
    ] {
        c.goto(&url).await.unwrap();
        assert_eq!(status(&c).await, serde_json::json!(401), "{url}");
        assert_ne!(c.title().await.unwrap(), "OAuth Token Exporter");
        assert!(!body(&c).await.contains("Sources"));
    }

    // The password: the page, and its links with the same credentials.
    c.goto(&format!("https://admin:correct%20horse@127.0.0.1:{port}/"))
        .await
        .unwrap();
    assert_eq!(c.title().await.unwrap(), "OAuth Token Exporter");
    assert_eq!(status(&c).await, serde_json::json!(200));
    assert_eq!(
        table(&c, "Sources").await[0][..4],
        ["app", "sqlite", "xero", "yes"]
    );
    assert!(follow(&c, "Metrics")
        .await
        .contains("oauth_refresh_token_age_seconds{"));
    c.close().await.unwrap();
}
