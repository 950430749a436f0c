//! The simulated host app against the simulated Xero, with its state in SQLite, PostgreSQL and
//! MariaDB: each fault of XERO.md moves exactly the counters it should, through every inlet
//! that sees it (the event table the app writes, the ingest API it posts to, and the reverse
//! proxy its calls go through), and no other.

mod common;
use chrono::Duration;
use common::*;
use oauth_token_exporter::clock::{ManualClock, SharedClock};
use oauth_token_exporter::model::StoreKind;
use oauth_token_exporter::secret::Secret;
use oauth_token_exporter::sim::host_app::{EventSink, HostApp, HostAppOptions, Refreshed, Synced};
use oauth_token_exporter::sim::store::SimStore;
use oauth_token_exporter::sim::xero::SimXero;
use oauth_token_exporter::Exporter;
use std::collections::BTreeMap;
use std::sync::Arc;

const INGEST_TOKEN: &str = "ingest-token-0123456789";

/// How the app reports its events in a scenario (the proxy sees its calls in every one).
#[derive(Clone, Copy, PartialEq)]
enum Report {
    Table,
    Ingest,
}

struct World {
    app: HostApp,
    sim: SimXero,
    clock: Arc<ManualClock>,
    e: Exporter,
    /// The `source` label of the inlet the app reports to.
    inlet: &'static str,
    last: BTreeMap<String, f64>,
    _dir: tempfile::TempDir,
}

/// The series a fault may move: event counters, detector gauges, statuses, expiry, self-health
/// counters. Keys are the series without the `provider` label.
fn watched(text: &str) -> BTreeMap<String, f64> {
    const NAMES: &[&str] = &[
        "oauth_token_refreshes_total",
        "oauth_token_refresh_failures_total",
        "oauth_api_requests_total",
        "oauth_api_unauthorized_total",
        "oauth_api_forbidden_total",
        "oauth_api_rate_limited_total",
        "oauth_refresh_token_regressions_total",
        "oauth_token_refresh_races_total",
        "oauth_connections_failing",
        "oauth_connections_retrying_invalid_grant",
        "oauth_connections_removed_total",
        "oauth_connections",
        "oauth_refresh_token_expired",
        "oauth_exporter_source_errors_total",
        "oauth_exporter_rows_rejected_total",
    ];
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, v) = l.rsplit_once(' ')?;
            let name = series.split('{').next()?;
            NAMES.contains(&name).then(|| {
                let mut key = series.replace("provider=\"xero\",", "");
                // Tenant ids are random: leave them out of the key.
                if let Some(i) = key.find(",tenant=\"") {
                    let end = key[i + 9..].find('"').unwrap() + i + 10;
                    key.replace_range(i..end, "");
                }
                (key, v.parse::<f64>().unwrap())
            })
        })
        .collect()
}

impl World {
    async fn start(kind: StoreKind, dsn: &str, prefix: &str, report: Report) -> World {
        oauth_token_exporter::sources::install_tls_provider();
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(fixed_now());
        let shared: SharedClock = clock.clone();
        let sim = SimXero::new(shared.clone());
        sim.add_client("app", "s3cret-client");
        let sim_url = serve(sim.router()).await;
        let kind_name = match kind {
            StoreKind::Sqlite => "sqlite",
            StoreKind::Postgres => "postgres",
            _ => "mysql",
        };
        let tokens = format!("{prefix}xero_tokens");
        let events = format!("{prefix}oauth_events");
        let mut yaml = format!(
            "global:\n  poll_interval: 30s\n  poll_timeout: 10s\n\
             detect:\n  window: 15m\n  retry_loop_failures: 5\n\
             sources:\n  - name: app\n    kind: {kind_name}\n    dsn: {dsn}\n\
             \x20   query: SELECT id, tenant_id, refresh_token, expires_at, refreshed_at, status FROM {tokens}\n\
             \x20   fields: {{connection: id, tenant: tenant_id, last_refresh: refreshed_at, access_expires: expires_at, status: status, refresh_token: refresh_token}}\n\
             proxy:\n  source: proxy\n  identity_url: {sim_url}\n  api_url: {sim_url}\n  timeout: 5s\n"
        );
        let inlet = match report {
            Report::Table => {
                yaml += &format!(
                    "event_tables:\n  - name: app_events\n    kind: {kind_name}\n    dsn: {dsn}\n    table: {events}\n\
                     \x20   state_file: {}\n    start: beginning\n    interval: 30s\n    timeout: 10s\n",
                    dir.path().join("events.cursor").display()
                );
                "app_events"
            }
            Report::Ingest => {
                yaml += "ingest:\n  source: app_ingest\n  token_env: OTE_TEST_INGEST\n";
                "app_ingest"
            }
        };
        let cfg = oauth_token_exporter::config::parse(&yaml, "faults.yml", &|v| {
            (v == "OTE_TEST_INGEST").then(|| INGEST_TOKEN.to_string())
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let e = Exporter::new(&cfg, shared.clone()).unwrap_or_else(|e| panic!("{e}"));
        let proxy_url = serve(e.proxy_router().unwrap()).await;
        let sink = match report {
            Report::Table => EventSink::Table,
            Report::Ingest => EventSink::Ingest {
                url: format!(
                    "{}/api/v1/events",
                    serve(e.router(&Default::default())).await
                ),
                token: Secret::new(INGEST_TOKEN),
            },
        };
        let store = SimStore::connect(kind, dsn).await.unwrap();
        let app = HostApp::new(
            store,
            HostAppOptions {
                prefix: prefix.to_string(),
                xero_url: proxy_url,
                client_id: "app".into(),
                client_secret: Secret::new("s3cret-client"),
                sink,
            },
            sim.clone(),
            shared,
        );
        app.create_schema().await.unwrap();
        let mut w = World {
            app,
            sim,
            clock,
            e,
            inlet,
            last: BTreeMap::new(),
            _dir: dir,
        };
        w.settle().await;
        w
    }

    /// Poll every source and event table; the watched series.
    async fn observe(&mut self) -> BTreeMap<String, f64> {
        for p in &mut self.e.pollers {
            assert!(p.poll_once().await, "{}", scrape(&self.e));
        }
        watched(&scrape(&self.e))
    }

    async fn settle(&mut self) {
        self.last = self.observe().await;
    }

    /// Assert that exactly `expected` moved since the last observation (by the given deltas),
    /// with `{inlet}` standing for the inlet the app reports to.
    async fn moved(&mut self, what: &str, expected: &[Vec<(String, f64)>]) {
        let now = self.observe().await;
        let mut got = BTreeMap::new();
        for (k, v) in &now {
            let d = v - self.last.get(k).copied().unwrap_or(0.0);
            if d != 0.0 {
                got.insert(k.clone(), d);
            }
        }
        let want: BTreeMap<String, f64> = expected
            .iter()
            .flatten()
            .map(|(k, v)| (k.replace("{inlet}", self.inlet), *v))
            .collect();
        assert_eq!(got, want, "{what}: the series that moved");
        self.last = now;
    }
}

/// One series expected to move by `delta`; `{inlet}` stands for the inlet the app reports to.
fn one(series: &str, delta: f64) -> Vec<(String, f64)> {
    vec![(series.to_string(), delta)]
}

/// `name` moving by `delta` both on the inlet the app reports to and on the proxy; `extra`
/// holds the labels after `source`.
fn both(name: &str, extra: &str, delta: f64) -> Vec<(String, f64)> {
    ["{inlet}", "proxy"]
        .iter()
        .map(|s| (format!("{name}{{source=\"{s}\"{extra}}}"), delta))
        .collect()
}

/// `n` refreshes that got `invalid_grant`, seen by both the inlet and the proxy.
fn invalid_grants(n: f64) -> Vec<(String, f64)> {
    [
        both("oauth_token_refreshes_total", "", n),
        both(
            "oauth_token_refresh_failures_total",
            r#",error="invalid_grant""#,
            n,
        ),
    ]
    .concat()
}

/// `n` connections the app marked `needs_reauth`, as the source reads them.
fn marked_for_reauth(n: f64) -> Vec<(String, f64)> {
    [
        one(r#"oauth_connections{source="app",status="active"}"#, -n),
        one(
            r#"oauth_connections{source="app",status="needs_reauth"}"#,
            n,
        ),
    ]
    .concat()
}

/// Every fault of XERO.md, in one story per store.
async fn every_fault_moves_exactly_its_counters(w: &mut World) {
    let app = &w.app;
    for (id, user) in [
        ("c1", "alice"),
        ("c2", "bob"),
        ("c3", "carol"),
        ("c4", "dave"),
        ("c5", "erin"),
        ("c6", "erin"),
        ("c7", "erin"),
    ] {
        app.connect_tenant(id, &format!("Org {id}"), user, None)
            .await
            .unwrap();
    }
    w.moved(
        "seven tenants connect",
        &[one(
            r#"oauth_connections{source="app",status="active"}"#,
            7.0,
        )],
    )
    .await;

    // Normal operation: fresh access tokens, one API call each, nothing fails.
    let synced = w.app.sync_all().await.unwrap();
    assert!(synced.iter().all(|(_, s)| *s == Synced::Ok), "{synced:?}");
    w.moved(
        "a normal sync",
        &[both("oauth_api_requests_total", "", 7.0)],
    )
    .await;

    // Two workers refresh c1 at once: both succeed (the second inside the grace period).
    let (a, b) = w.app.race("c1").await.unwrap();
    assert!(matches!((a, b), (Refreshed::Ok(_), Refreshed::Ok(_))));
    w.moved(
        "two workers racing on c1",
        &[
            both("oauth_token_refreshes_total", "", 2.0),
            one(r#"oauth_token_refresh_races_total{source="{inlet}"}"#, 1.0),
        ],
    )
    .await;

    // A worker holding c2's token from before two rotations: invalid_grant right after a
    // success, and it wrongly marks c2 for re-authorisation.
    w.clock.advance(Duration::minutes(1));
    let out = w.app.race_with_stale_worker("c2").await.unwrap();
    assert_eq!(out, Refreshed::Failed("invalid_grant".into()));
    w.moved(
        "a stale worker on c2",
        &[
            both("oauth_token_refreshes_total", "", 3.0),
            both(
                "oauth_token_refresh_failures_total",
                r#",error="invalid_grant""#,
                1.0,
            ),
            // The second success inside the grace period, and invalid_grant right after it.
            one(r#"oauth_token_refresh_races_total{source="{inlet}"}"#, 2.0),
            one(r#"oauth_connections_failing{source="{inlet}"}"#, 1.0),
            marked_for_reauth(1.0),
        ],
    )
    .await;

    // c3: worker A reads, B refreshes (the exporter polls in between), A writes its stale copy
    // back: the stored refresh token reverts.
    w.clock.advance(Duration::minutes(20));
    let stale = w.app.stale_copy("c3").await.unwrap().unwrap();
    assert!(matches!(
        w.app.refresh("c3").await.unwrap(),
        Refreshed::Ok(_)
    ));
    w.moved(
        "worker B refreshes c3 (the c2 failure has left the 15-minute window)",
        &[
            both("oauth_token_refreshes_total", "", 1.0),
            one(r#"oauth_connections_failing{source="{inlet}"}"#, -1.0),
        ],
    )
    .await;
    w.app.write_back("c3", &stale).await.unwrap();
    w.moved(
        "worker A writes its stale copy of c3 back",
        &[one(
            r#"oauth_refresh_token_regressions_total{source="app"}"#,
            1.0,
        )],
    )
    .await;
    // Inside the grace period the reverted token still refreshes; 31 minutes later it does not.
    w.clock.advance(Duration::minutes(31));
    assert_eq!(w.app.sync("c3").await.unwrap(), Synced::NeedsReauth);
    w.moved(
        "c3 refreshes with the reverted token after the grace period",
        &[
            invalid_grants(1.0),
            one(r#"oauth_connections_failing{source="{inlet}"}"#, 1.0),
            marked_for_reauth(1.0),
        ],
    )
    .await;

    // dave changes his password; a bad worker retries c4's dead token six times.
    w.clock.advance(Duration::minutes(16));
    w.sim.change_password("dave");
    let tries = w.app.retry_loop("c4", 6).await.unwrap();
    assert_eq!(tries.len(), 6);
    w.moved(
        "a retry loop on c4 (c3's failure has left the window)",
        &[
            invalid_grants(6.0),
            one(
                r#"oauth_connections_retrying_invalid_grant{source="{inlet}"}"#,
                1.0,
            ),
        ],
    )
    .await;

    // erin changes her password: her three connections fail at their next refresh.
    w.clock.advance(Duration::minutes(16));
    w.sim.change_password("erin");
    // c4 is still active (the bad worker never marked it); pause it so only erin's fail.
    w.app.pause("c4");
    w.app.pause("c1");
    let synced = w.app.sync_all().await.unwrap();
    assert_eq!(
        synced,
        [
            ("c5".to_string(), Synced::NeedsReauth),
            ("c6".to_string(), Synced::NeedsReauth),
            ("c7".to_string(), Synced::NeedsReauth)
        ]
    );
    w.moved(
        "a password change fails three connections at once (c4's loop has left the window)",
        &[
            invalid_grants(3.0),
            one(r#"oauth_connections_failing{source="{inlet}"}"#, 2.0),
            one(
                r#"oauth_connections_retrying_invalid_grant{source="{inlet}"}"#,
                -1.0,
            ),
            marked_for_reauth(3.0),
        ],
    )
    .await;

    // An idle tenant: c8 was last refreshed 60 days less an hour ago and is left alone.
    w.app.resume("c1");
    let at = w.clock_now() - Duration::days(60) + Duration::hours(1);
    w.app
        .connect_tenant("c8", "Seasonal Org", "frank", Some(at))
        .await
        .unwrap();
    w.app.pause("c8");
    w.clock.advance(Duration::minutes(16));
    w.moved(
        "an idle tenant appears (erin's failures have left the window)",
        &[
            one(r#"oauth_connections{source="app",status="active"}"#, 1.0),
            one(r#"oauth_connections_failing{source="{inlet}"}"#, -3.0),
        ],
    )
    .await;
    w.clock.advance(Duration::hours(1));
    w.moved(
        "c8 passes 60 days without a refresh",
        &[one(
            r#"oauth_refresh_token_expired{source="app",connection="c8"}"#,
            1.0,
        )],
    )
    .await;
    w.app.resume("c8");
    assert_eq!(w.app.sync("c8").await.unwrap(), Synced::NeedsReauth);
    w.moved(
        "c8's next refresh gets invalid_grant",
        &[
            invalid_grants(1.0),
            one(r#"oauth_connections_failing{source="{inlet}"}"#, 1.0),
            marked_for_reauth(1.0),
        ],
    )
    .await;

    // The developer rotates the client secret without telling the app: every refresh fails
    // with invalid_client, and the app (rightly) marks nothing.
    w.clock.advance(Duration::minutes(16));
    w.sim.rotate_client_secret("app");
    let synced = w.app.sync_all().await.unwrap();
    assert_eq!(synced, [("c1".to_string(), Synced::Failed)]);
    w.moved(
        "a rotated client secret (c8's failure has left the window)",
        &[
            both("oauth_token_refreshes_total", "", 1.0),
            both(
                "oauth_token_refresh_failures_total",
                r#",error="invalid_client""#,
                1.0,
            ),
        ],
    )
    .await;

    // A Xero incident: the refresh rotates the token but the answer is lost (500); the app
    // retries within the grace period and gets the answer it missed.
    w.clock.advance(Duration::minutes(16));
    let secret = w.sim.rotate_client_secret("app");
    w.app.set_client_secret(Secret::new(secret));
    w.sim.set_incident(true);
    assert_eq!(w.app.sync("c1").await.unwrap(), Synced::Failed);
    w.moved(
        "a Xero incident loses the refresh answer",
        &[
            both("oauth_token_refreshes_total", "", 1.0),
            both(
                "oauth_token_refresh_failures_total",
                r#",error="server_error""#,
                1.0,
            ),
        ],
    )
    .await;
    w.sim.set_incident(false);
    assert_eq!(w.app.sync("c1").await.unwrap(), Synced::Ok);
    w.moved(
        "the retry inside the grace period gets the lost answer",
        &[
            both("oauth_token_refreshes_total", "", 1.0),
            both("oauth_api_requests_total", "", 1.0),
        ],
    )
    .await;
}

impl World {
    fn clock_now(&self) -> chrono::DateTime<chrono::Utc> {
        use oauth_token_exporter::clock::Clock;
        self.clock.now()
    }
}

#[tokio::test]
async fn every_fault_moves_exactly_its_counters_with_the_app_state_in_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("host.db");
    let mut w = World::start(
        StoreKind::Sqlite,
        &db.display().to_string(),
        "",
        Report::Table,
    )
    .await;
    every_fault_moves_exactly_its_counters(&mut w).await;
}

#[tokio::test]
async fn every_fault_moves_exactly_its_counters_with_the_app_state_in_postgres() {
    let test = "every_fault_moves_exactly_its_counters_with_the_app_state_in_postgres";
    if !server_or_skip(test, "PostgreSQL", &pg_url()).await {
        return;
    }
    let schema = unique("faults");
    let admin = SimStore::connect(StoreKind::Postgres, &pg_url())
        .await
        .unwrap();
    for q in [
        format!("DROP SCHEMA IF EXISTS {schema} CASCADE"),
        format!("CREATE SCHEMA {schema}"),
    ] {
        admin.execute(&q, &[]).await.unwrap();
    }
    let mut w = World::start(
        StoreKind::Postgres,
        &pg_url(),
        &format!("{schema}."),
        Report::Table,
    )
    .await;
    every_fault_moves_exactly_its_counters(&mut w).await;
    admin
        .execute(&format!("DROP SCHEMA {schema} CASCADE"), &[])
        .await
        .unwrap();
}

#[tokio::test]
async fn every_fault_moves_exactly_its_counters_with_the_app_state_in_mariadb() {
    let test = "every_fault_moves_exactly_its_counters_with_the_app_state_in_mariadb";
    if !server_or_skip(test, "MySQL/MariaDB", &mysql_url()).await {
        return;
    }
    let prefix = format!("{}_", unique("faults"));
    let mut w = World::start(StoreKind::Mysql, &mysql_url(), &prefix, Report::Table).await;
    every_fault_moves_exactly_its_counters(&mut w).await;
    w.app.drop_schema().await.unwrap();
}

#[tokio::test]
async fn every_fault_moves_exactly_its_counters_when_the_app_posts_to_the_ingest_api() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("host.db");
    let mut w = World::start(
        StoreKind::Sqlite,
        &db.display().to_string(),
        "",
        Report::Ingest,
    )
    .await;
    every_fault_moves_exactly_its_counters(&mut w).await;
}
