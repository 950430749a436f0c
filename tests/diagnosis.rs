//! Diagnosis per connection, end to end in the simulated world: the simulated host app keeps
//! its tokens in SQLite, talks to the simulated Xero through the exporter's reverse proxy and
//! posts every refresh outcome and API answer to the ingest API. Each cause of XERO.md is
//! driven on its own connections (a stale worker, 60 days idle, a password change of a user
//! with three connections, a user's only connection revoked and retried in a loop, a disconnect
//! of one of a user's two connections, an expired access token, a 403, a Xero incident, a
//! rotated client secret, a store that marks a connection without telling why, a connection
//! close to its idle expiry), and the test asserts that those connections, and only they, get
//! that cause with its evidence in `/metrics`, in `GET /api/v1/connections` (with its filters
//! and pages) and on the landing page.

mod common;
use chrono::Duration;
use common::*;
use oauth_token_exporter::clock::{Clock, ManualClock, SharedClock};
use oauth_token_exporter::model::StoreKind;
use oauth_token_exporter::secret::Secret;
use oauth_token_exporter::sim::host_app::{EventSink, HostApp, HostAppOptions, Refreshed, Synced};
use oauth_token_exporter::sim::store::SimStore;
use oauth_token_exporter::sim::xero::SimXero;
use oauth_token_exporter::Exporter;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

const INGEST_TOKEN: &str = "ingest-token-0123456789";

struct World {
    app: HostApp,
    sim: SimXero,
    clock: Arc<ManualClock>,
    e: Exporter,
    web: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl World {
    /// With `map_user`, the source maps the store's `user_id` to the `user` field; without,
    /// the authorising user is only what the proxy reads from the id_tokens.
    async fn start(map_user: bool) -> World {
        oauth_token_exporter::sources::install_tls_provider();
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("host.db");
        let clock = ManualClock::new(fixed_now());
        let shared: SharedClock = clock.clone();
        let sim = SimXero::new(shared.clone());
        sim.add_client("app", "s3cret-client");
        let sim_url = serve(sim.router()).await;
        let yaml = format!(
            "global:\n  poll_interval: 30s\n  poll_timeout: 10s\n\
             detect:\n  window: 15m\n  retry_loop_failures: 5\n\
             sources:\n  - name: app\n    kind: sqlite\n    dsn: {}\n\
             \x20   query: SELECT id, tenant_id, tenant_name, user_id, refresh_token, expires_at, refreshed_at, status FROM xero_tokens\n\
             \x20   fields: {{connection: id, tenant: tenant_id, {user}last_refresh: refreshed_at, access_expires: expires_at, status: status, refresh_token: refresh_token}}\n\
             \x20   labels: {{tenant_name: tenant_name}}\n\
             ingest:\n  source: app_ingest\n  token_env: OTE_TEST_INGEST\n\
             proxy:\n  source: proxy\n  identity_url: {sim_url}\n  api_url: {sim_url}\n  timeout: 5s\n",
            db.display(),
            user = if map_user { "user: user_id, " } else { "" },
        );
        let cfg = oauth_token_exporter::config::parse(&yaml, "diagnosis.yml", &|v| {
            (v == "OTE_TEST_INGEST").then(|| INGEST_TOKEN.to_string())
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let e = Exporter::new(&cfg, shared.clone()).unwrap_or_else(|e| panic!("{e}"));
        let proxy_url = serve(e.proxy_router().unwrap()).await;
        let web = serve(e.router(&Default::default())).await;
        let store = SimStore::connect(StoreKind::Sqlite, &db.display().to_string())
            .await
            .unwrap();
        let app = HostApp::new(
            store,
            HostAppOptions {
                prefix: String::new(),
                xero_url: proxy_url,
                client_id: "app".into(),
                client_secret: Secret::new("s3cret-client"),
                sink: EventSink::Ingest {
                    url: format!("{web}/api/v1/events"),
                    token: Secret::new(INGEST_TOKEN),
                },
            },
            sim.clone(),
            shared,
        );
        app.create_schema().await.unwrap();
        World {
            app,
            sim,
            clock,
            e,
            web,
            http: reqwest::Client::new(),
            _dir: dir,
        }
    }

    async fn poll(&mut self) {
        for p in &mut self.e.pollers {
            assert!(p.poll_once().await, "{}", scrape(&self.e));
        }
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let r = self
            .http
            .get(format!("{}{path}", self.web))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    async fn list(&self, query: &str) -> Value {
        let (status, body) = self.get(&format!("/api/v1/connections{query}")).await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// The app reports an answer it met (an inlet event, as `call_api` would post it).
    async fn report_api(&self, id: &str, tenant: &str, status: u16) {
        let r = self
            .http
            .post(format!("{}/api/v1/events", self.web))
            .bearer_auth(INGEST_TOKEN)
            .json(&serde_json::json!({"events": [{
                "type": "api", "connection": id, "tenant": tenant, "status": status,
                "time": self.clock.now().to_rfc3339(),
            }]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
    }
}

/// Causes by connection, from the metric (healthy connections have no series).
fn metric_causes(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for l in text
        .lines()
        .filter(|l| l.starts_with("oauth_connection_diagnosis{"))
    {
        let label = |name: &str| {
            let start = l.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
            l[start..start + l[start..].find('"').unwrap()].to_string()
        };
        assert!(l.ends_with(" 1"), "{l}");
        out.entry(label("connection"))
            .or_default()
            .insert(label("cause"));
    }
    out
}

fn causes(list: &Value) -> BTreeMap<String, Vec<String>> {
    list["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["connection"].as_str().unwrap().to_string(),
                c["causes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_str().unwrap().to_string())
                    .collect(),
            )
        })
        .collect()
}

fn evidence(list: &Value, id: &str) -> String {
    let c = list["connections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["connection"] == id)
        .unwrap_or_else(|| panic!("{id} is listed"));
    c["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect::<Vec<_>>()
        .join(" | ")
}

#[tokio::test]
async fn each_cause_is_diagnosed_on_exactly_its_connections_in_metrics_api_and_page() {
    let mut w = World::start(true).await;
    let now = w.clock.now();
    for (id, user, refreshed) in [
        ("a1", "alice", None),
        ("b1", "bob", None),
        (
            "c1",
            "carol",
            Some(now - Duration::days(60) + Duration::hours(1)),
        ),
        ("d1", "dave", None),
        ("e1", "erin", None),
        ("e2", "erin", None),
        ("e3", "erin", None),
        ("g1", "gina", None),
        ("g2", "gina", None),
        ("x1", "heidi", None),
        ("f1", "ivan", None),
        ("n1", "judy", None),
        ("k1", "ken", None),
        ("u1", "uma", None),
        ("s1", "sam", Some(now - Duration::days(55))),
    ] {
        w.app
            .connect_tenant(id, &format!("Org {id}"), user, refreshed)
            .await
            .unwrap();
    }
    w.poll().await;
    let list = w.list("").await;
    assert_eq!(
        causes(&list)
            .into_iter()
            .filter(|(_, c)| c != &["healthy"])
            .collect::<BTreeMap<_, _>>(),
        BTreeMap::from([
            ("c1".to_string(), vec!["idle_expiry".to_string()]),
            ("s1".to_string(), vec!["idle_expiry".to_string()])
        ]),
        "before anything happens, only c1 and s1 (60 days less an hour, 55 days idle) are at risk"
    );

    // bob: a worker holding b1's token from before two rotations.
    assert_eq!(
        w.app.race_with_stale_worker("b1").await.unwrap(),
        Refreshed::Failed("invalid_grant".into())
    );
    // dave changes his password; a bad worker retries d1's dead token six times.
    w.clock.advance(Duration::minutes(20));
    w.sim.change_password("dave");
    assert_eq!(w.app.retry_loop("d1", 6).await.unwrap().len(), 6);
    // erin changes her password: her three connections fail within minutes.
    w.clock.advance(Duration::minutes(20));
    w.sim.change_password("erin");
    for id in ["e1", "e2", "e3"] {
        w.clock.advance(Duration::minutes(1));
        assert!(matches!(
            w.app.refresh(id).await.unwrap(),
            Refreshed::Failed(e) if e == "invalid_grant"
        ));
    }
    // One of gina's two tenants disconnects the app.
    w.clock.advance(Duration::minutes(20));
    let g1_tenant = w.app.read("g1").await.unwrap().unwrap().tenant_id;
    w.sim.disconnect(&g1_tenant, "app");
    assert!(matches!(
        w.app.refresh("g1").await.unwrap(),
        Refreshed::Failed(e) if e == "invalid_grant"
    ));
    assert!(matches!(
        w.app.refresh("g2").await.unwrap(),
        Refreshed::Ok(_)
    ));
    // carol's connection passes 60 days idle; her next refresh gets invalid_grant.
    w.clock.advance(Duration::minutes(20));
    assert_eq!(w.app.sync("c1").await.unwrap(), Synced::NeedsReauth);
    // heidi's worker calls the API with an access token past its 30 minutes.
    let (status, detail) = w.app.call_api("x1").await.unwrap();
    assert_eq!(status, 401);
    assert!(detail.unwrap().starts_with("TokenExpired"));
    // ivan's tenant refuses the app's calls (403), as the app reports.
    let f1_tenant = w.app.read("f1").await.unwrap().unwrap().tenant_id;
    w.report_api("f1", &f1_tenant, 403).await;
    // A Xero incident while judy's connection refreshes.
    w.clock.advance(Duration::minutes(20));
    w.sim.set_incident(true);
    assert!(!matches!(
        w.app.refresh("n1").await.unwrap(),
        Refreshed::Ok(_)
    ));
    w.sim.set_incident(false);
    // uma's row is marked by the app itself, with no event.
    w.app
        .store
        .execute(
            "UPDATE xero_tokens SET status = 'needs_reauth' WHERE id = ?",
            &["u1".into()],
        )
        .await
        .unwrap();
    // The developer rotates the client secret; ken's refresh is refused.
    w.clock.advance(Duration::minutes(20));
    w.sim.rotate_client_secret("app");
    assert!(matches!(
        w.app.refresh("k1").await.unwrap(),
        Refreshed::Failed(e) if e == "invalid_client"
    ));
    w.poll().await;

    let expected: BTreeMap<&str, &[&str]> = BTreeMap::from([
        ("a1", &["healthy"][..]),
        ("b1", &["stale_token"][..]),
        ("c1", &["idle_expiry"][..]),
        (
            "d1",
            &["disconnected", "user_revoked", "retrying_dead_token"][..],
        ),
        ("e1", &["user_revoked"][..]),
        ("e2", &["user_revoked"][..]),
        ("e3", &["user_revoked"][..]),
        ("g1", &["disconnected"][..]),
        ("g2", &["healthy"][..]),
        ("x1", &["access_token_expired"][..]),
        ("f1", &["forbidden"][..]),
        ("n1", &["provider_incident"][..]),
        ("k1", &["client_credentials"][..]),
        ("u1", &["unknown"][..]),
        ("s1", &["idle_expiry"][..]),
    ]);
    let list = w.list("?limit=1000").await;
    let got = causes(&list);
    let want: BTreeMap<String, Vec<String>> = expected
        .iter()
        .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
        .collect();
    assert_eq!(got, want, "causes in /api/v1/connections");
    assert_eq!(list["total"], 15);
    assert_eq!(list["next_offset"], Value::Null);

    // The evidence each rests on.
    for (id, says) in [
        ("b1", "a refresh race at"),
        ("c1", "age 60 d at the first failure"),
        ("d1", "6 invalid_grant answers since the first"),
        ("d1", "the only connection user dave authorised here"),
        (
            "e1",
            "3 of the 3 connections user erin authorised began failing within 15 min",
        ),
        (
            "g1",
            "the other 1 connection(s) user gina authorised are not failing",
        ),
        ("x1", "401 TokenExpired at"),
        ("f1", "403 at"),
        (
            "n1",
            "a server error or network failure at the token endpoint",
        ),
        (
            "k1",
            "invalid_client: the token endpoint refused the app's own credentials",
        ),
        ("u1", "the store says needs_reauth"),
        ("s1", "the refresh token expires in 5 d"),
    ] {
        let ev = evidence(&list, id);
        assert!(ev.contains(says), "{id}: {ev:?} does not say {says:?}");
    }
    let d1 = list["connections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["connection"] == "d1")
        .unwrap();
    assert!(d1["separate_by"]
        .as_str()
        .unwrap()
        .contains("other connection"));
    assert!(d1["runbook"]
        .as_str()
        .unwrap()
        .ends_with("/OAuthInvalidGrantSpike.md"));
    assert_eq!(d1["tenant_name"], "Org d1");
    let e1 = list["connections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["connection"] == "e1")
        .unwrap();
    assert_eq!(e1["since"].as_str().unwrap().len(), 20, "{e1}");
    assert_eq!(e1["status"], "needs_reauth");

    // The same in /metrics: only the failing and at-risk connections have series.
    let text = scrape(&w.e);
    let from_metric = metric_causes(&text);
    let want_metric: BTreeMap<String, BTreeSet<String>> = expected
        .iter()
        .filter(|(_, v)| **v != ["healthy"])
        .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
        .collect();
    assert_eq!(from_metric, want_metric, "causes in /metrics");
    for (cause, n) in [
        ("healthy", 2.0),
        ("user_revoked", 3.0),
        ("idle_expiry", 2.0),
        ("disconnected", 2.0),
        ("stale_token", 1.0),
        ("retrying_dead_token", 0.0),
        ("client_credentials", 1.0),
        ("provider_incident", 1.0),
        ("access_token_expired", 1.0),
        ("forbidden", 1.0),
        ("unknown", 1.0),
    ] {
        assert_eq!(
            value(
                &text,
                "oauth_connections_by_diagnosis",
                &[("source", "app"), ("cause", cause)]
            ),
            n,
            "oauth_connections_by_diagnosis{{cause={cause}}}"
        );
    }

    // Filters and pages.
    let revoked = w.list("?cause=user_revoked").await;
    assert_eq!(
        causes(&revoked).keys().cloned().collect::<Vec<_>>(),
        ["d1", "e1", "e2", "e3"],
        "a cause filter matches the second cause named too"
    );
    assert_eq!(revoked["by_cause"]["user_revoked"], 3);
    let needs = w.list("?status=needs_reauth&limit=2").await;
    assert_eq!(needs["connections"].as_array().unwrap().len(), 2);
    assert_eq!(needs["next_offset"], 2);
    let mut paged = BTreeSet::new();
    let mut offset = 0;
    loop {
        let page = w
            .list(&format!("?status=needs_reauth&limit=2&offset={offset}"))
            .await;
        paged.extend(causes(&page).into_keys());
        match page["next_offset"].as_u64() {
            Some(n) => offset = n,
            None => break,
        }
    }
    assert_eq!(paged.len() as u64, needs["total"].as_u64().unwrap());
    assert!(paged.contains("u1") && paged.contains("c1") && !paged.contains("a1"));
    for bad in [
        "?cause=bogus",
        "?status=nope",
        "?limit=0",
        "?limit=1001",
        "?colour=red",
    ] {
        let (status, body) = w.get(&format!("/api/v1/connections{bad}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
        let err: Value = serde_json::from_str(&body).unwrap();
        assert!(!err["error"].as_str().unwrap().is_empty());
    }
    assert_eq!(w.list("?source=elsewhere").await["total"], 0);

    // The landing page lists them with their causes; its counts add up; a filter narrows it.
    let (_, page) = w.get("/").await;
    assert!(
        page.contains("15 exported connection(s) by most likely cause"),
        "{page}"
    );
    for id in [
        "b1", "c1", "d1", "e1", "g1", "x1", "f1", "n1", "k1", "u1", "s1",
    ] {
        assert!(page.contains(&format!("<td>{id}</td>")), "{id} on the page");
    }
    assert!(!page.contains("<td>a1</td>") && !page.contains("<td>g2</td>"));
    assert!(
        page.contains("Org d1"),
        "tenant names where the store has them"
    );
    assert!(
        !page.contains("e+09") && !page.contains(".000000"),
        "human times"
    );
    let (_, filtered) = w.get("/?cause=forbidden").await;
    assert!(filtered.contains("<td>f1</td>") && !filtered.contains("<td>e1</td>"));
}

/// Without a `user` field in the store, the user comes from the id_tokens the proxy sees: a
/// refresh through it (a JWT with `xero_userid`) and an API call with that access token for
/// the tenant tell whose the tenant is; a password change then fails that user's connections
/// together (`user_revoked`), and one disconnect among another user's two is `disconnected`.
#[tokio::test]
async fn the_authorising_user_comes_from_the_id_tokens_the_proxy_sees_when_the_store_has_none() {
    let mut w = World::start(false).await;
    for (id, user) in [
        ("a1", "alice"),
        ("a2", "alice"),
        ("b1", "bob"),
        ("b2", "bob"),
    ] {
        w.app
            .connect_tenant(id, &format!("Org {id}"), user, None)
            .await
            .unwrap();
    }
    // The app's usual sync: a refresh through the proxy, then an API call with the new token.
    w.clock.advance(Duration::minutes(40));
    for id in ["a1", "a2", "b1", "b2"] {
        assert_eq!(w.app.sync(id).await.unwrap(), Synced::Ok);
    }
    w.poll().await;
    // Before anything fails, the list still names no cause, and no user needs the field.
    assert!(causes(&w.list("").await)
        .values()
        .all(|c| c == &["healthy"]));
    // alice changes her password; one of bob's tenants disconnects the app.
    w.clock.advance(Duration::minutes(40));
    w.sim.change_password("alice");
    let b1_tenant = w.app.read("b1").await.unwrap().unwrap().tenant_id;
    w.sim.disconnect(&b1_tenant, "app");
    for id in ["a1", "a2", "b1"] {
        w.clock.advance(Duration::minutes(1));
        assert!(matches!(
            w.app.refresh(id).await.unwrap(),
            Refreshed::Failed(e) if e == "invalid_grant"
        ));
    }
    w.poll().await;
    let list = w.list("").await;
    assert_eq!(
        causes(&list),
        BTreeMap::from([
            ("a1".to_string(), vec!["user_revoked".to_string()]),
            ("a2".to_string(), vec!["user_revoked".to_string()]),
            ("b1".to_string(), vec!["disconnected".to_string()]),
            ("b2".to_string(), vec!["healthy".to_string()]),
        ])
    );
    let alice = w.sim.xero_userid("alice");
    assert!(
        evidence(&list, "a1").contains(&format!("connections user {alice} authorised")),
        "{}",
        evidence(&list, "a1")
    );
    // No token reached the page, the API or the metrics through this.
    let (_, page) = w.get("/").await;
    let text = scrape(&w.e);
    for id in ["a1", "b2"] {
        let row = w.app.read(id).await.unwrap().unwrap();
        for secret in [row.access_token.expose(), row.refresh_token.expose()] {
            assert!(!page.contains(secret) && !text.contains(secret));
            assert!(!list.to_string().contains(secret));
        }
    }
}
