//! `oauth-token-exporter demo`: a host app's SQLite store with a realistic Xero fleet that
//! keeps changing, exported live, so a newcomer sees real data with one command.
//!
//! The fleet: refresh-token ages spread from minutes to past 60 days, every tenth connection
//! idle. Every connection is authorised at a simulated Xero running in the same process. The
//! simulated host app ([`crate::sim::host_app`]) syncs connections *through the exporter's
//! reverse proxy*, stores the rotated tokens, writes a row per refresh and API call to its event
//! table (which the exporter tails), marks a connection for re-authorisation on `invalid_grant`,
//! deletes dead rows and authorises new tenants; now and then a user changes their Xero
//! password, two workers race, a worker writes a stale token back or retries a dead one. Both
//! the token-state gauges and the event counters move. `speed` runs the simulated world faster
//! than real time, so idle tenants cross 45, 55 and 60 days while you watch.

use crate::clock::{ScaledClock, SharedClock, SystemClock};
use crate::config;
use crate::secret::Secret;
use crate::sim::host_app::{EventSink, HostApp, HostAppOptions};
use crate::sim::store::SimStore;
use crate::sim::xero::SimXero;
use crate::{Exporter, ServerOptions};
use chrono::{DateTime, Duration, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::Path;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Demo settings.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub connections: usize,
    /// How often the simulated host app acts.
    pub tick: std::time::Duration,
    /// Poll interval of the exporter.
    pub poll_interval: std::time::Duration,
    /// How much faster than real time the simulated world runs (86400: a day per second).
    pub speed: f64,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            connections: 40,
            tick: std::time::Duration::from_millis(500),
            poll_interval: std::time::Duration::from_secs(5),
            speed: 1.0,
        }
    }
}

const NAMES: &[&str] = &[
    "Acme Plumbing",
    "Bluebird Cafe",
    "Harbour Dental",
    "Kauri Builders",
    "Northside Florist",
    "Pohutukawa Tours",
    "Summit Legal",
    "Tui Brewing",
    "Wattle Design",
    "Zest Catering",
];

/// The simulated Xero's app and users.
pub const CLIENT_ID: &str = "demo-app";
pub const CLIENT_SECRET: &str = "demo-secret-not-real";
const USERS: &[&str] = &["alice", "bob", "carol", "dave", "erin"];
/// A user who changed their password just before the demo starts: the app does not know yet,
/// so their connections meet `invalid_grant` at their next refresh.
const CHANGED_USER: &str = "frank";

fn tenant_name(i: usize) -> String {
    format!("{} #{}", NAMES[i % NAMES.len()], i / NAMES.len() + 1)
}

/// Seed the fleet: refresh tokens from minutes to 70 days old (the ones past 60 days are dead
/// at the simulated Xero), every tenth connection left idle (never synced, so it ages past 45,
/// 55 and 60 days with `--speed`), and some connections authorised by a user who has just
/// changed their password.
pub async fn seed(
    app: &HostApp,
    sim: &SimXero,
    n: usize,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    app.create_schema().await?;
    for i in 0..n {
        // Spread idle time from minutes to 70 days: most fleets are mostly fresh.
        let frac = i as f64 / n.max(1) as f64;
        let idle = Duration::seconds((frac.powf(2.2) * 70.0 * 86400.0) as i64 + 300);
        let user = if i % 7 == 3 {
            CHANGED_USER
        } else {
            USERS[i % USERS.len()]
        };
        let id = format!("conn-{i:04}");
        app.connect_tenant(&id, &tenant_name(i), user, Some(now - idle))
            .await?;
        if i % 10 == 9 {
            app.pause(&id);
        }
    }
    sim.change_password(CHANGED_USER);
    Ok(())
}

/// One action of the simulated host app: mostly well-behaved syncs, now and then a fault.
pub async fn act(app: &HostApp, sim: &SimXero, next_id: &mut usize) -> Result<(), sqlx::Error> {
    let mut rng = StdRng::from_rng(&mut rand::rng());
    let roll: f64 = rng.random();
    // A paused connection stays idle (never synced, never a fault's target): the demo's idle
    // tenants always reach their expiry, whatever the faults around them.
    let active: Vec<String> = app
        .ids("active")
        .await?
        .into_iter()
        .filter(|id| !app.is_paused(id))
        .collect();
    let dead: Vec<String> = [app.ids("needs_reauth").await?, app.ids("revoked").await?].concat();
    let pick = |v: &[String], rng: &mut StdRng| v.get(rng.random_range(0..v.len().max(1))).cloned();
    if roll < 0.05 {
        // A customer re-authorises: the dead row goes (some apps delete it) and a new one comes.
        if let Some(id) = pick(&dead, &mut rng) {
            app.delete(&id).await?;
            let i = *next_id;
            *next_id += 1;
            app.connect_tenant(
                &format!("conn-{i:04}"),
                &tenant_name(i),
                USERS[i % USERS.len()],
                None,
            )
            .await?;
        }
        return Ok(());
    }
    let Some(id) = pick(&active, &mut rng) else {
        return Ok(());
    };
    if roll < 0.06 {
        // A user changes their Xero password: all their connections fail at their next refresh.
        sim.change_password(USERS[rng.random_range(0..USERS.len())]);
    } else if roll < 0.08 {
        app.race(&id).await?;
    } else if roll < 0.09 {
        app.race_with_stale_worker(&id).await?;
    } else if roll < 0.10 {
        if let Some(stale) = app.stale_copy(&id).await? {
            app.refresh(&id).await?;
            app.write_back(&id, &stale).await?;
        }
    } else if roll < 0.11 {
        if let Some(d) = pick(&dead, &mut rng) {
            app.retry_loop(&d, 6).await?;
        }
    } else {
        app.sync(&id).await?;
    }
    Ok(())
}

/// The exporter config the demo uses (printed at start so newcomers see a real one).
pub fn config_yaml(db: &Path, state_dir: &Path, opts: &DemoOptions) -> String {
    format!(
        r#"global:
  poll_interval: {interval}
  poll_timeout: {timeout}
sources:
  - name: demo
    kind: sqlite
    dsn: {db}
    provider: xero
    query: SELECT id, tenant_id, tenant_name, refresh_token, expires_at, refreshed_at, status FROM xero_tokens
    fields:
      connection: id
      tenant: tenant_id
      last_refresh: refreshed_at
      access_expires: expires_at
      status: status
      refresh_token: refresh_token
    labels:
      tenant_name: tenant_name
event_tables:
  - name: demo_events
    kind: sqlite
    dsn: {db}
    table: oauth_events
    state_file: {state}
    start: beginning
    interval: {interval}
    timeout: {timeout}
"#,
        interval = humantime::format_duration(opts.poll_interval),
        timeout =
            humantime::format_duration(opts.poll_interval.min(std::time::Duration::from_secs(5))),
        db = db.display(),
        state = state_dir.join("demo_events.cursor").display(),
    )
}

/// Seed the store, start the simulated host app and serve metrics until `shutdown`.
pub async fn run(
    listener: TcpListener,
    opts: DemoOptions,
    shutdown: CancellationToken,
) -> Result<(), String> {
    let dir =
        tempfile::tempdir().map_err(|e| format!("cannot create a temporary directory: {e}"))?;
    let db = dir.path().join("host-app.db");
    let clock: SharedClock = if opts.speed == 1.0 {
        Arc::new(SystemClock)
    } else {
        ScaledClock::new(Utc::now(), opts.speed)
    };
    crate::sources::install_tls_provider();
    let sim = SimXero::new(clock.clone());
    sim.add_client(CLIENT_ID, CLIENT_SECRET);
    let serve = |listener: TcpListener, router: axum::Router| {
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
        })
    };
    let bind = || async {
        let l = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("cannot listen on a local port: {e}"))?;
        let url = format!("http://{}", l.local_addr().map_err(|e| e.to_string())?);
        Ok::<_, String>((l, url))
    };
    let (sim_listener, sim_url) = bind().await?;
    serve(sim_listener, sim.router());
    // The proxy's port first: the host app sends every Xero call through it.
    let (proxy_listener, proxy_url) = bind().await?;
    let store = SimStore::connect(crate::model::StoreKind::Sqlite, &db.display().to_string())
        .await
        .map_err(|e| format!("cannot create the demo store: {e}"))?;
    let app = HostApp::new(
        store,
        HostAppOptions {
            prefix: String::new(),
            xero_url: proxy_url.clone(),
            client_id: CLIENT_ID.into(),
            client_secret: Secret::new(CLIENT_SECRET),
            sink: EventSink::Table,
        },
        sim.clone(),
        clock.clone(),
    );
    seed(&app, &sim, opts.connections, clock.now())
        .await
        .map_err(|e| format!("cannot create the demo store: {e}"))?;
    let yaml = format!(
        "{}proxy:\n  source: demo_proxy\n  identity_url: {sim_url}\n  api_url: {sim_url}\n",
        config_yaml(&db, dir.path(), &opts)
    );
    tracing::info!(store = %db.display(), connections = opts.connections, speed = opts.speed, "Demo store created; config follows.\n{yaml}");
    let mut cfg = config::parse(&yaml, "<demo>", &|_| None).map_err(|e| e.to_string())?;
    // The demo shows every series, the opt-in ones too.
    cfg.relative_metrics = true;
    let exporter = Exporter::new(&cfg, clock.clone()).map_err(|e| e.to_string())?;
    serve(
        proxy_listener,
        exporter
            .proxy_router()
            .expect("the demo config has a proxy"),
    );
    tracing::info!(proxy = %proxy_url, simulated_xero = %sim_url, "The simulated host app calls the simulated Xero through the exporter's proxy.");
    let app_stop = shutdown.clone();
    let tick = opts.tick;
    let mut next_id = opts.connections;
    let host_app = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = app_stop.cancelled() => break,
                _ = tokio::time::sleep(tick) => {
                    if let Err(e) = act(&app, &sim, &mut next_id).await {
                        tracing::warn!(error = %e, "The simulated host app failed to write.");
                    }
                }
            }
        }
        app.store.close().await;
    });
    let served = exporter
        .run(listener, ServerOptions::default(), shutdown)
        .await;
    let _ = host_app.await;
    drop(dir);
    served.map_err(|e| e.to_string())
}
