//! End to end: the real binary, fed by the simulated Xero and the simulated host app, scraped
//! by a real Prometheus (Debian package `prometheus`) that evaluates the shipped rules and
//! sends to a real Alertmanager (`prometheus-alertmanager`) running the shipped routing and
//! inhibition (examples/alertmanager.yml), which posts to a webhook receiver in this test. For
//! each failure scenario of XERO.md, the expected alerts arrive at the expected receivers, and
//! no others; the affected connections, and only they, get the scenario's cause in the
//! binary's `GET /api/v1/connections` and in Prometheus (`oauth_connection_diagnosis`); and the
//! link of the firing alert's `connections` annotation lists exactly them.
//!
//! Time: Prometheus and the exporter run on real time. The shipped rules are used as they are,
//! except that every `for:` is divided by `FOR_SCALE` (promtool's unit tests check the real
//! durations; the stack is `tests/common/alerting.rs`). "Ten days pass" for an idle tenant is its stored last refresh moving ten days
//! back, which is all the exporter can see of time passing.

mod common;
use common::alerting::*;
use common::*;
use oauth_token_exporter::clock::{SharedClock, SystemClock};
use oauth_token_exporter::model::StoreKind;
use oauth_token_exporter::secret::Secret;
use oauth_token_exporter::sim::host_app::{EventSink, HostApp, HostAppOptions, Synced};
use oauth_token_exporter::sim::store::SimStore;
use oauth_token_exporter::sim::xero::SimXero;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

/// The store the scenario's host app keeps its tokens in.
enum Store {
    Sqlite,
    /// PostgreSQL; the exporter reads it through a fault proxy that can cut it.
    Postgres {
        schema: String,
        proxy: FaultProxy,
    },
}

struct Stack {
    app: HostApp,
    sim: SimXero,
    clock: SharedClock,
    store: Store,
    alerting: Alerting,
}

impl std::ops::Deref for Stack {
    type Target = Alerting;
    fn deref(&self) -> &Alerting {
        &self.alerting
    }
}

impl Stack {
    async fn start(test: &str, store: Store) -> Option<Stack> {
        tool(test, &["prometheus"])?;
        tool(test, &["prometheus-alertmanager", "alertmanager"])?;
        oauth_token_exporter::sources::install_tls_provider();
        let dir = tempfile::tempdir().unwrap();
        let clock: SharedClock = Arc::new(SystemClock);
        let sim = SimXero::new(clock.clone());
        sim.add_client("app", "s3cret-client");
        let sim_url = serve(sim.router()).await;
        let proxy_port = free_port();
        let (kind, app_dsn, exporter_dsn, prefix) = match &store {
            Store::Sqlite => {
                let db = dir.path().join("host.db").display().to_string();
                ("sqlite", db.clone(), db, String::new())
            }
            Store::Postgres { schema, proxy } => {
                let url = pg_url();
                let via_proxy = url.replace("127.0.0.1:5432", &proxy.addr.to_string());
                ("postgres", url, via_proxy, format!("{schema}."))
            }
        };
        let sim_store = SimStore::connect(
            if kind == "sqlite" {
                StoreKind::Sqlite
            } else {
                StoreKind::Postgres
            },
            &app_dsn,
        )
        .await
        .unwrap();
        if let Store::Postgres { schema, .. } = &store {
            sim_store
                .execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"), &[])
                .await
                .unwrap();
            sim_store
                .execute(&format!("CREATE SCHEMA {schema}"), &[])
                .await
                .unwrap();
        }
        let app = HostApp::new(
            sim_store,
            HostAppOptions {
                prefix: prefix.clone(),
                xero_url: format!("http://127.0.0.1:{proxy_port}"),
                client_id: "app".into(),
                client_secret: Secret::new("s3cret-client"),
                sink: EventSink::Table,
            },
            sim.clone(),
            clock.clone(),
        );
        app.create_schema().await.unwrap();
        // The exporter: the app's tokens, its event table and its Xero traffic.
        let config = format!(
                "global:\n  poll_interval: 1s\n  poll_timeout: 1s\n\
                 sources:\n  - name: app\n    kind: {kind}\n    dsn: {exporter_dsn}\n\
                 \x20   query: SELECT id, tenant_id, tenant_name, user_id, refresh_token, expires_at, refreshed_at, status FROM {prefix}xero_tokens\n\
                 \x20   fields: {{connection: id, tenant: tenant_id, user: user_id, last_refresh: refreshed_at, access_expires: expires_at, status: status, refresh_token: refresh_token}}\n\
                 \x20   labels: {{tenant_name: tenant_name}}\n\
                 event_tables:\n  - name: app_events\n    kind: {kind}\n    dsn: {exporter_dsn}\n    table: {prefix}oauth_events\n\
                 \x20   state_file: {}\n    start: beginning\n    interval: 1s\n    timeout: 1s\n\
                 proxy:\n  source: proxy\n  identity_url: {sim_url}\n  api_url: {sim_url}\n  timeout: 5s\n\
                 persistence:\n  file: {}\n\
                 client_secrets:\n  - {{provider: xero, client: app, expires: '2099-01-01'}}\n",
                dir.path().join("events.cursor").display(),
                dir.path().join("inlets.json").display()
            );
        let alerting = Alerting::start(
            test,
            dir,
            &config,
            &[format!("--proxy.listen-address=127.0.0.1:{proxy_port}")],
        )
        .await?;
        Some(Stack {
            app,
            sim,
            clock,
            store,
            alerting,
        })
    }

    /// Connect tenants `(id, user)`, last refreshed `ago` (their access tokens are expired
    /// when `ago` is over 30 minutes, so the next sync refreshes).
    async fn fleet(&self, tenants: &[(&str, &str)], ago: chrono::Duration) {
        for (id, user) in tenants {
            self.app
                .connect_tenant(id, &format!("Org {id}"), user, Some(self.clock.now() - ago))
                .await
                .unwrap();
        }
    }

    /// Wait until Prometheus has scraped every connection and the source is up.
    async fn settled(&self, connections: usize) {
        self.until("the first scrapes", Duration::from_secs(30), || async {
            let v = self
                .query("count(oauth_refresh_token_last_refresh_timestamp_seconds) and on() oauth_exporter_source_up{source=\"app\"} == 1")
                .await;
            v.first()
                .and_then(|s| s["value"][1].as_str()?.parse::<usize>().ok())
                == Some(connections)
        })
        .await;
    }
}

impl Stack {
    /// The exporter's diagnosis, in its API and (through a real scrape) in Prometheus: the
    /// connections of `expected` get exactly those causes, every other connection is healthy
    /// (listed so by the API, without a series in Prometheus).
    async fn expect_diagnosis(&self, expected: &[(&str, &[&str])]) {
        let want: BTreeMap<String, Vec<String>> = expected
            .iter()
            .map(|(id, causes)| {
                (
                    id.to_string(),
                    causes.iter().map(|c| c.to_string()).collect(),
                )
            })
            .collect();
        let api = || async {
            let list = get_json(
                &self.http,
                &format!("{}/api/v1/connections?limit=1000", self.exporter_url),
            )
            .await;
            list["connections"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| {
                    let causes: Vec<String> = c["causes"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|x| x.as_str().unwrap().to_string())
                        .collect();
                    (c["connection"].as_str().unwrap().to_string(), causes)
                })
                .filter(|(_, causes)| causes != &["healthy"])
                .collect::<BTreeMap<_, _>>()
        };
        eventually("the diagnosis in /api/v1/connections", api, &want).await;
        let want_sets: BTreeMap<String, BTreeSet<String>> = want
            .iter()
            .map(|(id, causes)| (id.clone(), causes.iter().cloned().collect()))
            .collect();
        let prometheus = || async {
            let mut got: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            for s in self.query("oauth_connection_diagnosis == 1").await {
                let label = |l: &str| s["metric"][l].as_str().unwrap().to_string();
                got.entry(label("connection"))
                    .or_default()
                    .insert(label("cause"));
            }
            got
        };
        eventually("the diagnosis in Prometheus", prometheus, &want_sets).await;
    }

    /// The connections listed by the exporter at the link a firing alert carries in its
    /// `connections` annotation (as Prometheus expanded it).
    async fn linked(&self, alertname: &str) -> BTreeSet<String> {
        let alerts = get_json(&self.http, &format!("{}/api/v1/alerts", self.prom_url)).await;
        let link = alerts["data"]["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["labels"]["alertname"] == alertname && a["state"] == "firing")
            .and_then(|a| a["annotations"]["connections"].as_str())
            .unwrap_or_else(|| panic!("{alertname} fires with a connections link: {alerts}"))
            .to_string();
        let list = get_json(
            &self.http,
            &format!("{}{link}&limit=1000", self.exporter_url),
        )
        .await;
        list["connections"]
            .as_array()
            .unwrap_or_else(|| panic!("{link}: {list}"))
            .iter()
            .map(|c| c["connection"].as_str().unwrap().to_string())
            .collect()
    }
}

/// Poll `get` until it returns `want` (30 s at most), then assert it.
async fn eventually<T, F, Fut>(what: &str, mut get: F, want: &T)
where
    T: PartialEq + std::fmt::Debug,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let got = get().await;
        if &got == want || std::time::Instant::now() > deadline {
            assert_eq!(&got, want, "{what}");
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn ids(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

impl Drop for Stack {
    fn drop(&mut self) {
        if let Store::Postgres { schema, .. } = &self.store {
            let url = pg_url();
            let schema = schema.clone();
            // A fresh runtime on its own thread: Drop may run inside the test's runtime.
            std::thread::spawn(move || {
                tokio::runtime::Runtime::new().unwrap().block_on(async {
                    if let Ok(s) = SimStore::connect(StoreKind::Postgres, &url).await {
                        let _ = s
                            .execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"), &[])
                            .await;
                    }
                })
            })
            .join()
            .unwrap();
        }
    }
}

const HOUR: chrono::Duration = chrono::Duration::hours(1);

/// A stack whose app has connections `c1..cN` authorised by `users` (one each), last refreshed
/// an hour ago (so their next sync refreshes), once Prometheus has scraped them.
async fn scenario(test: &str, store: Store, users: &[&str]) -> Option<Stack> {
    let s = Stack::start(test, store).await?;
    let ids: Vec<String> = (1..=users.len()).map(|i| format!("c{i}")).collect();
    let tenants: Vec<(&str, &str)> = ids
        .iter()
        .map(String::as_str)
        .zip(users.iter().copied())
        .collect();
    s.fleet(&tenants, HOUR).await;
    s.settled(users.len()).await;
    Some(s)
}

const FOUR_USERS: &[&str] = &["alice", "bob", "carol", "dave"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tenant_crossing_45_then_55_days_then_expiring_raises_a_ticket_a_page_and_a_ticket()
{
    let test =
        "an_idle_tenant_crossing_45_then_55_days_then_expiring_raises_a_ticket_a_page_and_a_ticket";
    let Some(s) = Stack::start(test, Store::Sqlite).await else {
        return;
    };
    s.fleet(
        &[("c1", "alice"), ("c2", "bob")],
        chrono::Duration::minutes(5),
    )
    .await;
    // c9 crosses 45 days idle five seconds from now.
    s.fleet(
        &[("c9", "carol")],
        chrono::Duration::days(45) - chrono::Duration::seconds(5),
    )
    .await;
    s.settled(3).await;
    s.expect_alerts(&[("OAuthRefreshTokenIdle", "ticket")])
        .await;
    let idle = s
        .notifications()
        .into_iter()
        .find(|n| n.alertname == "OAuthRefreshTokenIdle")
        .unwrap();
    assert_eq!(idle.labels["connection"], "c9");
    s.expect_diagnosis(&[("c9", &["idle_expiry"])]).await;
    assert_eq!(s.linked("OAuthRefreshTokenIdle").await, ids(&["c9"]));
    // Ten more days pass for c9 (its last refresh recedes, in the store and at Xero): 55 days.
    let tokens = s.app.tokens_table();
    let tenant = s.app.read("c9").await.unwrap().unwrap().tenant_id;
    let age_by = |days: i64| {
        let app = &s.app;
        let tokens = tokens.clone();
        s.sim.age_grants(&tenant, chrono::Duration::days(days));
        async move {
            app.store
                .execute(
                    &format!("UPDATE {tokens} SET refreshed_at = refreshed_at - ? WHERE id = 'c9'"),
                    &[(days * 86400).into()],
                )
                .await
                .unwrap();
        }
    };
    age_by(10).await;
    s.expect_alerts(&[
        ("OAuthRefreshTokenIdle", "ticket"),
        ("OAuthRefreshTokenNearExpiry", "pager"),
    ])
    .await;
    assert!(
        s.delivered("resolved").contains("OAuthRefreshTokenIdle"),
        "the 45-day ticket resolves once the page takes over"
    );
    assert_eq!(s.linked("OAuthRefreshTokenNearExpiry").await, ids(&["c9"]));
    // Six more days: the refresh token is past its 60 days.
    age_by(6).await;
    s.expect_alerts(&[
        ("OAuthRefreshTokenIdle", "ticket"),
        ("OAuthRefreshTokenNearExpiry", "pager"),
        ("OAuthRefreshTokenExpired", "ticket"),
    ])
    .await;
    assert!(s
        .delivered("resolved")
        .contains("OAuthRefreshTokenNearExpiry"));
    // The next sync of c9 gets invalid_grant and marks it: the expired alert resolves.
    assert_eq!(s.app.sync("c9").await.unwrap(), Synced::NeedsReauth);
    s.until(
        "the expired alert resolves",
        Duration::from_secs(60),
        || async { s.delivered("resolved").contains("OAuthRefreshTokenExpired") },
    )
    .await;
    s.expect_diagnosis(&[("c9", &["idle_expiry"])]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_change_failing_many_connections_pages_once_and_opens_a_reauth_ticket() {
    let test = "a_password_change_failing_many_connections_pages_once_and_opens_a_reauth_ticket";
    let users = [
        "erin", "erin", "erin", "erin", "erin", "erin", "alice", "bob",
    ];
    let Some(s) = scenario(test, Store::Sqlite, &users).await else {
        return;
    };
    s.sim.change_password("erin");
    let synced = s.app.sync_all().await.unwrap();
    assert_eq!(
        synced
            .iter()
            .filter(|(_, r)| *r == Synced::NeedsReauth)
            .count(),
        6,
        "{synced:?}"
    );
    s.expect_inhibiting(
        &[
            ("OAuthManyConnectionsFailing", "pager"),
            ("OAuthConnectionsNeedingReauthGrowing", "ticket"),
        ],
        &["OAuthInvalidGrantSpike"],
    )
    .await;
    let erin: &[(&str, &[&str])] = &[
        ("c1", &["user_revoked"]),
        ("c2", &["user_revoked"]),
        ("c3", &["user_revoked"]),
        ("c4", &["user_revoked"]),
        ("c5", &["user_revoked"]),
        ("c6", &["user_revoked"]),
    ];
    s.expect_diagnosis(erin).await;
    let six = ids(&["c1", "c2", "c3", "c4", "c5", "c6"]);
    assert_eq!(s.linked("OAuthManyConnectionsFailing").await, six);
    assert_eq!(s.linked("OAuthConnectionsNeedingReauthGrowing").await, six);
    // While this fleet has every kind of series: every dashboard query returns data, and every
    // metric the rules and dashboards use is one the real binary exports.
    dashboards_return_data(&s, "c7").await;
    metric_names_are_exported(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_client_secret_pages_invalid_client_and_nothing_else() {
    let test = "a_rotated_client_secret_pages_invalid_client_and_nothing_else";
    let Some(s) = scenario(
        test,
        Store::Sqlite,
        &["alice", "bob", "carol", "dave", "erin", "frank"],
    )
    .await
    else {
        return;
    };
    s.sim.rotate_client_secret("app");
    let synced = s.app.sync_all().await.unwrap();
    assert!(
        synced.iter().all(|(_, r)| *r == Synced::Failed),
        "{synced:?}"
    );
    s.expect_inhibiting(
        &[("OAuthInvalidClient", "pager")],
        &["OAuthManyConnectionsFailing"],
    )
    .await;
    let all = ["c1", "c2", "c3", "c4", "c5", "c6"];
    let expected: Vec<(&str, &[&str])> = all
        .iter()
        .map(|id| (*id, &["client_credentials"][..]))
        .collect();
    s.expect_diagnosis(&expected).await;
    assert_eq!(s.linked("OAuthInvalidClient").await, ids(&all));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_workers_and_a_stale_write_back_open_tickets() {
    let test = "racing_workers_and_a_stale_write_back_open_tickets";
    let Some(s) = scenario(test, Store::Sqlite, FOUR_USERS).await else {
        return;
    };
    // A worker holding c1's token from before two rotations: invalid_grant right after a success.
    let out = s.app.race_with_stale_worker("c1").await.unwrap();
    assert_eq!(
        out,
        oauth_token_exporter::sim::host_app::Refreshed::Failed("invalid_grant".into())
    );
    // c2: a slow worker writes its stale copy back after the exporter saw the new token.
    let stale = s.app.stale_copy("c2").await.unwrap().unwrap();
    s.app.refresh("c2").await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    s.app.write_back("c2", &stale).await.unwrap();
    s.expect_alerts(&[
        ("OAuthRefreshRace", "ticket"),
        ("OAuthRefreshTokenRegression", "ticket"),
    ])
    .await;
    s.expect_diagnosis(&[("c1", &["stale_token"]), ("c2", &["stale_token"])])
        .await;
    assert_eq!(s.linked("OAuthRefreshRace").await, ids(&["c1", "c2"]));
    assert_eq!(
        s.linked("OAuthRefreshTokenRegression").await,
        ids(&["c1", "c2"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_loop_on_one_connection_opens_a_ticket_not_a_page() {
    let test = "a_retry_loop_on_one_connection_opens_a_ticket_not_a_page";
    let Some(s) = scenario(test, Store::Sqlite, FOUR_USERS).await else {
        return;
    };
    s.sim.change_password("dave");
    let tries = s.app.retry_loop("c4", 8).await.unwrap();
    assert_eq!(tries.len(), 8);
    s.expect_inhibiting(
        &[("OAuthInvalidGrantRetryLoop", "ticket")],
        &["OAuthInvalidGrantSpike"],
    )
    .await;
    // c4 is dave's only connection: a password change and a disconnect look the same.
    s.expect_diagnosis(&[(
        "c4",
        &["disconnected", "user_revoked", "retrying_dead_token"],
    )])
    .await;
    assert_eq!(s.linked("OAuthInvalidGrantRetryLoop").await, ids(&["c4"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_xero_incident_across_unrelated_tenants_pages_token_endpoint_errors() {
    let test = "a_xero_incident_across_unrelated_tenants_pages_token_endpoint_errors";
    let Some(s) = scenario(
        test,
        Store::Sqlite,
        &["u1", "u2", "u3", "u4", "u5", "u6", "u7", "u8"],
    )
    .await
    else {
        return;
    };
    s.sim.set_incident(true);
    let synced = s.app.sync_all().await.unwrap();
    assert!(
        synced.iter().all(|(_, r)| *r == Synced::Failed),
        "{synced:?}"
    );
    s.expect_inhibiting(
        &[("OAuthTokenEndpointErrors", "pager")],
        &["OAuthManyConnectionsFailing"],
    )
    .await;
    let all = ["c1", "c2", "c3", "c4", "c5", "c6", "c7", "c8"];
    let expected: Vec<(&str, &[&str])> = all
        .iter()
        .map(|id| (*id, &["provider_incident"][..]))
        .collect();
    s.expect_diagnosis(&expected).await;
    assert_eq!(s.linked("OAuthTokenEndpointErrors").await, ids(&all));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_tenants_disconnecting_the_app_open_a_reauth_ticket_diagnosed_as_disconnects() {
    let test = "three_tenants_disconnecting_the_app_open_a_reauth_ticket_diagnosed_as_disconnects";
    let users = ["alice", "alice", "bob", "bob", "carol", "carol"];
    let Some(s) = scenario(test, Store::Sqlite, &users).await else {
        return;
    };
    // One tenant of each user disconnects the app; each user's other connection still works.
    for id in ["c1", "c3", "c5"] {
        let tenant = s.app.read(id).await.unwrap().unwrap().tenant_id;
        s.sim.disconnect(&tenant, "app");
    }
    let synced = s.app.sync_all().await.unwrap();
    let reauth: Vec<&str> = synced
        .iter()
        .filter(|(_, r)| *r == Synced::NeedsReauth)
        .map(|(id, _)| id.as_str())
        .collect();
    assert_eq!(reauth, ["c1", "c3", "c5"], "{synced:?}");
    s.expect_alerts(&[("OAuthConnectionsNeedingReauthGrowing", "ticket")])
        .await;
    s.expect_diagnosis(&[
        ("c1", &["disconnected"]),
        ("c3", &["disconnected"]),
        ("c5", &["disconnected"]),
    ])
    .await;
    assert_eq!(
        s.linked("OAuthConnectionsNeedingReauthGrowing").await,
        ids(&["c1", "c3", "c5"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_calls_with_expired_access_tokens_open_a_ticket_diagnosed_as_refreshing_too_late() {
    let test =
        "api_calls_with_expired_access_tokens_open_a_ticket_diagnosed_as_refreshing_too_late";
    let Some(s) = scenario(test, Store::Sqlite, FOUR_USERS).await else {
        return;
    };
    // A worker that never refreshes first: every stored access token is an hour old.
    for id in ["c1", "c2", "c3", "c4"] {
        for _ in 0..3 {
            let (status, detail) = s.app.call_api(id).await.unwrap();
            assert_eq!(status, 401);
            assert!(detail.unwrap().starts_with("TokenExpired"));
        }
    }
    s.expect_alerts(&[("OAuthAccessTokenUsedAfterExpiry", "ticket")])
        .await;
    let all = ["c1", "c2", "c3", "c4"];
    let expected: Vec<(&str, &[&str])> = all
        .iter()
        .map(|id| (*id, &["access_token_expired"][..]))
        .collect();
    s.expect_diagnosis(&expected).await;
    assert_eq!(s.linked("OAuthAccessTokenUsedAfterExpiry").await, ids(&all));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_refused_with_403_open_a_ticket_diagnosed_as_forbidden() {
    let test = "calls_refused_with_403_open_a_ticket_diagnosed_as_forbidden";
    let Some(s) = scenario(test, Store::Sqlite, &["u1", "u2", "u3", "u4", "u5", "u6"]).await else {
        return;
    };
    assert!(s
        .app
        .sync_all()
        .await
        .unwrap()
        .iter()
        .all(|(_, r)| *r == Synced::Ok));
    // The app calls with a tenant id its grant does not hold for five connections (a tenant
    // that disconnected the app keeps the token valid and refuses the calls the same way).
    let tokens = s.app.tokens_table();
    s.app
        .store
        .execute(
            &format!("UPDATE {tokens} SET tenant_id = tenant_id || '-gone' WHERE id <> 'c6'"),
            &[],
        )
        .await
        .unwrap();
    for id in ["c1", "c2", "c3", "c4", "c5"] {
        assert_eq!(s.app.call_api(id).await.unwrap().0, 403);
    }
    assert_eq!(s.app.call_api("c6").await.unwrap().0, 200);
    s.expect_alerts(&[("OAuthApiForbiddenSurge", "ticket")])
        .await;
    let five = ["c1", "c2", "c3", "c4", "c5"];
    let expected: Vec<(&str, &[&str])> = five.iter().map(|id| (*id, &["forbidden"][..])).collect();
    s.expect_diagnosis(&expected).await;
    assert_eq!(s.linked("OAuthApiForbiddenSurge").await, ids(&five));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_opens_a_source_ticket_that_resolves_when_the_store_returns() {
    let test = "a_store_outage_opens_a_source_ticket_that_resolves_when_the_store_returns";
    if !server_or_skip(test, "PostgreSQL", &pg_url()).await {
        return;
    }
    let proxy = FaultProxy::start("127.0.0.1:5432".into()).await;
    let store = Store::Postgres {
        schema: unique("e2e_outage"),
        proxy,
    };
    let Some(s) = scenario(test, store, &["alice", "bob", "carol"]).await else {
        return;
    };
    s.app.sync_all().await.unwrap();
    let refreshes = |text: &str| {
        value(
            text,
            "oauth_token_refreshes_total",
            &[("source", "app_events")],
        )
    };
    s.until(
        "the refreshes are counted",
        Duration::from_secs(20),
        || async { refreshes(&s.metrics().await) == 3.0 },
    )
    .await;
    let Store::Postgres { proxy, .. } = &s.store else {
        unreachable!()
    };
    proxy.cut();
    s.expect_alerts(&[("OAuthExporterSourceDown", "ticket")])
        .await;
    let down: BTreeSet<String> = s
        .notifications()
        .iter()
        .map(|n| n.labels["source"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        down,
        BTreeSet::from(["app".to_string(), "app_events".to_string()])
    );
    let during = s.metrics().await;
    assert_eq!(refreshes(&during), 3.0, "counters survive the outage");
    assert!(
        sample(
            &during,
            "oauth_refresh_token_last_refresh_timestamp_seconds",
            &[("connection", "c1")]
        )
        .is_some(),
        "the last good values stay exported"
    );
    proxy.restore();
    s.until(
        "the source ticket resolves",
        Duration::from_secs(60),
        || async { s.delivered("resolved").contains("OAuthExporterSourceDown") },
    )
    .await;
    assert_eq!(refreshes(&s.metrics().await), 3.0, "nothing counted twice");
}

/// Every dashboard panel query, with its variables set to match everything (and `$connection`
/// to `connection`), returns data from the end-to-end Prometheus.
async fn dashboards_return_data(s: &Stack, connection: &str) {
    let mut empty = Vec::new();
    let mut checked = 0;
    for path in std::fs::read_dir(root().join("dashboards")).unwrap() {
        let path = path.unwrap().path();
        let d: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let mut panels = Vec::new();
        for p in d["panels"].as_array().unwrap() {
            panels.push(p.clone());
            panels.extend(p["panels"].as_array().cloned().unwrap_or_default());
        }
        for p in panels {
            for t in p["targets"].as_array().into_iter().flatten() {
                let expr = t["expr"]
                    .as_str()
                    .unwrap()
                    .replace("$connection", connection)
                    .replace("$__rate_interval", "1m")
                    .replace("$__range", "1h")
                    .replace("$__interval", "15s")
                    .replace("$job", ".*")
                    .replace("$provider", ".*")
                    .replace("$source", ".*");
                assert!(!expr.contains('$'), "an unknown variable in {expr}");
                checked += 1;
                if s.query(&expr).await.is_empty() {
                    empty.push(format!(
                        "{} / {}: {expr}",
                        d["title"].as_str().unwrap(),
                        p["title"].as_str().unwrap()
                    ));
                }
            }
        }
    }
    assert!(checked > 30, "{checked}");
    assert!(empty.is_empty(), "queries without data: {empty:#?}");
}

/// Every `oauth_*` metric used by the shipped rules and dashboards is in the real binary's
/// `/metrics`.
async fn metric_names_are_exported(s: &Stack) {
    let text = s.metrics().await;
    let exported: BTreeSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let mut sources =
        vec![
            std::fs::read_to_string(root().join("alerts/oauth-token-exporter.rules.yml")).unwrap(),
        ];
    for p in std::fs::read_dir(root().join("dashboards")).unwrap() {
        sources.push(std::fs::read_to_string(p.unwrap().path()).unwrap());
    }
    let mut missing = BTreeSet::new();
    for text in sources {
        let b = text.as_bytes();
        let mut i = 0;
        while let Some(pos) = text[i..].find("oauth_") {
            let start = i + pos;
            let mut end = start;
            while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
                end += 1;
            }
            let prev = if start == 0 { b' ' } else { b[start - 1] };
            let is_metric = !(prev.is_ascii_alphanumeric()
                || prev == b'_'
                || prev == b':'
                || prev == b'-'
                || prev == b'/')
                && b.get(end) != Some(&b':')
                && !text[start..end].starts_with("oauth_token_exporter");
            if is_metric && !exported.contains(&text[start..end]) {
                missing.insert(text[start..end].to_string());
            }
            i = end;
        }
    }
    assert!(
        missing.is_empty(),
        "used but not exported by the binary: {missing:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_values_with_quotes_backslashes_newlines_and_control_characters_reach_prometheus_intact(
) {
    let test = "label_values_with_quotes_backslashes_newlines_and_control_characters_reach_prometheus_intact";
    let Some(s) = Stack::start(test, Store::Sqlite).await else {
        return;
    };
    let long = "x".repeat(300) + "-tail";
    let names = [
        "quote\"d".to_string(),
        "back\\slash".to_string(),
        "new\nline".to_string(),
        "tab\there".to_string(),
        "carriage\rreturn".to_string(),
        "bell\u{7}and\u{1}ctrl".to_string(),
        "Ünïcødé ✓ 🦀".to_string(),
        "{braces}=,\"quoted\" \\\"both\\\"".to_string(),
        long.clone(),
    ];
    for (i, name) in names.iter().enumerate() {
        let id = format!("{name}#{i}");
        s.app
            .connect_tenant(&id, name, "alice", None)
            .await
            .unwrap();
    }
    s.settled(names.len()).await;
    let info = s.query("oauth_connection_info").await;
    let got: BTreeSet<(String, String)> = info
        .iter()
        .map(|v| {
            (
                v["metric"]["connection"].as_str().unwrap().to_string(),
                v["metric"]["tenant_name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: BTreeSet<(String, String)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            (
                oauth_token_exporter::model::label_value(&format!("{n}#{i}")).into_owned(),
                oauth_token_exporter::model::label_value(n).into_owned(),
            )
        })
        .collect();
    assert_eq!(got, want);
    // The documented rule for long values: cut, with a digest that keeps them unique.
    let cut = oauth_token_exporter::model::label_value(&long);
    assert!(cut.len() <= oauth_token_exporter::model::MAX_LABEL_VALUE_BYTES);
    assert!(
        cut.starts_with("xxxxxxxx") && !cut.ends_with("-tail"),
        "{cut}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_app_marks_failing_without_an_event_opens_a_ticket_diagnosed_unknown() {
    let test =
        "a_connection_the_app_marks_failing_without_an_event_opens_a_ticket_diagnosed_unknown";
    let Some(s) = scenario(test, Store::Sqlite, &["u1", "u2", "u3"]).await else {
        return;
    };
    // The app marks c2 failing in its table; no inlet hears why.
    let tokens = s.app.tokens_table();
    s.app
        .store
        .execute(
            &format!("UPDATE {tokens} SET status = 'failing' WHERE id = 'c2'"),
            &[],
        )
        .await
        .unwrap();
    s.expect_alerts(&[("OAuthConnectionsFailingRefresh", "ticket")])
        .await;
    s.expect_diagnosis(&[("c2", &["unknown"])]).await;
    assert_eq!(
        s.linked("OAuthConnectionsFailingRefresh").await,
        ids(&["c2"])
    );
}
