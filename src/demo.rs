//! `oauth-token-exporter demo`: a host app's SQLite store with a realistic Xero fleet that
//! keeps changing, exported live, so a newcomer sees real data with one command.
//!
//! The fleet: refresh-token ages spread from minutes to past 60 days, some connections marked
//! for re-authorisation. Every connection is authorised at a simulated Xero running in the same
//! process. A simulated host app refreshes connections and calls the API *through the
//! exporter's reverse proxy*, stores the rotated tokens, marks a connection for re-authorisation
//! on `invalid_grant`, deletes some dead rows (as some apps do), authorises new tenants, and now
//! and then one of its users changes their Xero password, so several connections fail at once.
//! Both the token-state gauges and the event counters move.

use crate::clock::{SharedClock, SystemClock};
use crate::config;
use crate::sim::xero::SimXero;
use crate::{Exporter, ServerOptions};
use chrono::{DateTime, Duration, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
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
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            connections: 40,
            tick: std::time::Duration::from_millis(500),
            poll_interval: std::time::Duration::from_secs(5),
        }
    }
}

const SCHEMA: &str = "CREATE TABLE xero_tokens (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    tenant_name TEXT NOT NULL,
    access_token TEXT NOT NULL,
    refresh_token TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'active',
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
)";

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

fn token(rng: &mut impl Rng) -> String {
    (0..32)
        .map(|_| format!("{:x}", rng.random_range(0..16u8)))
        .collect()
}

fn uuid_like(rng: &mut impl Rng) -> String {
    let h = token(rng);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The simulated Xero's app and users.
pub const CLIENT_ID: &str = "demo-app";
pub const CLIENT_SECRET: &str = "demo-secret-not-real";
const USERS: &[&str] = &["alice", "bob", "carol", "dave", "erin"];
/// The user whose connections were revoked before the demo starts (the `needs_reauth` rows).
const GONE_USER: &str = "zoe";
/// A user who changed their password just before the demo starts: the app does not know yet,
/// so their connections meet `invalid_grant` at their next refresh.
const CHANGED_USER: &str = "frank";

/// Create the store and seed the fleet (ages from minutes to 70 days); every connection is
/// authorised at `sim`, and the ones seeded as needing re-authorisation are revoked there.
pub async fn seed(
    path: &Path,
    n: usize,
    now: DateTime<Utc>,
    sim: Option<&SimXero>,
) -> Result<SqlitePool, sqlx::Error> {
    let opts = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal);
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(opts)
        .await?;
    sqlx::query(SCHEMA).execute(&pool).await?;
    let mut rng = StdRng::from_rng(&mut rand::rng());
    for i in 0..n {
        // Spread idle time from minutes to 70 days: most fleets are mostly fresh.
        let frac = i as f64 / n.max(1) as f64;
        let idle = Duration::seconds((frac.powf(2.2) * 70.0 * 86400.0) as i64 + 300);
        let status = if idle > Duration::days(60) || i % 13 == 5 {
            "needs_reauth"
        } else {
            "active"
        };
        let user = if status == "needs_reauth" {
            GONE_USER
        } else if i % 7 == 3 {
            CHANGED_USER
        } else {
            USERS[i % USERS.len()]
        };
        insert(&pool, &mut rng, i, now - idle, status, sim, user).await?;
    }
    if let Some(sim) = sim {
        sim.change_password(GONE_USER);
        sim.change_password(CHANGED_USER);
    }
    Ok(pool)
}

async fn insert(
    pool: &SqlitePool,
    rng: &mut impl Rng,
    i: usize,
    refreshed: DateTime<Utc>,
    status: &str,
    sim: Option<&SimXero>,
    user: &str,
) -> Result<(), sqlx::Error> {
    let name = format!("{} #{}", NAMES[i % NAMES.len()], i / NAMES.len() + 1);
    let (tenant, access, refresh) = match sim {
        Some(sim) => {
            let tenant = sim.add_tenant(&name, &[user]);
            let t = sim.authorize(CLIENT_ID, user, std::slice::from_ref(&tenant));
            (tenant, t.access_token, t.refresh_token)
        }
        None => (uuid_like(rng), token(rng), token(rng)),
    };
    sqlx::query("INSERT INTO xero_tokens (id, tenant_id, tenant_name, access_token, refresh_token, expires_at, status, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
        .bind(format!("conn-{i:04}"))
        .bind(tenant)
        .bind(name)
        .bind(access)
        .bind(refresh)
        .bind((refreshed + Duration::minutes(30)).to_rfc3339())
        .bind(status)
        .bind(refreshed.to_rfc3339())
        .bind(refreshed.to_rfc3339())
        .execute(pool)
        .await?;
    Ok(())
}

/// One action of the simulated host app, talking to Xero through `xero` (the proxy's URL).
pub async fn act(
    pool: &SqlitePool,
    sim: &SimXero,
    http: &reqwest::Client,
    xero: &str,
    now: DateTime<Utc>,
    next_id: &mut usize,
) -> Result<(), sqlx::Error> {
    let mut rng = StdRng::from_rng(&mut rand::rng());
    let roll: f64 = rng.random();
    let rows: Vec<(String, String, String, String, String)> = sqlx::query_as(
        "SELECT id, status, tenant_id, access_token, refresh_token FROM xero_tokens ORDER BY RANDOM() LIMIT 1",
    )
    .fetch_all(pool)
    .await?;
    let Some((id, status, tenant, access, refresh)) = rows.into_iter().next() else {
        return Ok(());
    };
    if status == "needs_reauth" {
        if roll < 0.3 {
            // Some apps delete the row after invalid_grant; a new tenant authorises.
            sqlx::query("DELETE FROM xero_tokens WHERE id = ?")
                .bind(&id)
                .execute(pool)
                .await?;
            let user = USERS[*next_id % USERS.len()];
            insert(pool, &mut rng, *next_id, now, "active", Some(sim), user).await?;
            *next_id += 1;
        }
        return Ok(());
    }
    if roll < 0.01 {
        // A user changes their Xero password: all their connections fail at their next refresh.
        sim.change_password(USERS[rng.random_range(0..USERS.len())]);
        return Ok(());
    }
    if roll < 0.35 {
        // An API call with the stored access token (a 401 TokenExpired once it is 30 min old).
        let _ = http
            .get(format!("{xero}/api.xro/2.0/Organisation"))
            .bearer_auth(&access)
            .header("xero-tenant-id", &tenant)
            .send()
            .await;
        return Ok(());
    }
    let answer = http
        .post(format!("{xero}/connect/token"))
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("grant_type=refresh_token&refresh_token={refresh}"))
        .send()
        .await;
    let Ok(answer) = answer else { return Ok(()) };
    if answer.status().is_success() {
        let Ok(body) = answer.bytes().await else {
            return Ok(());
        };
        let Ok(t) = serde_json::from_slice::<crate::sim::xero::TokenResponse>(&body) else {
            return Ok(());
        };
        sqlx::query("UPDATE xero_tokens SET access_token = ?, refresh_token = ?, expires_at = ?, updated_at = ? WHERE id = ?")
            .bind(&t.access_token)
            .bind(&t.refresh_token)
            .bind((now + Duration::seconds(t.expires_in)).to_rfc3339())
            .bind(now.to_rfc3339())
            .bind(&id)
            .execute(pool)
            .await?;
    } else if answer.status().as_u16() == 400 {
        sqlx::query("UPDATE xero_tokens SET status = 'needs_reauth', updated_at = ? WHERE id = ?")
            .bind(now.to_rfc3339())
            .bind(&id)
            .execute(pool)
            .await?;
    }
    Ok(())
}

/// The exporter config the demo uses (printed at start so newcomers see a real one).
pub fn config_yaml(db: &Path, opts: &DemoOptions) -> String {
    format!(
        r#"global:
  poll_interval: {interval}
  poll_timeout: {timeout}
sources:
  - name: demo
    kind: sqlite
    dsn: {db}
    provider: xero
    query: SELECT id, tenant_id, tenant_name, expires_at, status FROM xero_tokens
    infer_last_refresh: access_expires
    fields:
      connection: id
      tenant: tenant_id
      access_expires: expires_at
      status: status
    labels:
      tenant_name: tenant_name
"#,
        interval = humantime::format_duration(opts.poll_interval),
        timeout =
            humantime::format_duration(opts.poll_interval.min(std::time::Duration::from_secs(5))),
        db = db.display(),
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
    let clock: SharedClock = Arc::new(SystemClock);
    crate::sources::install_tls_provider();
    let sim = SimXero::new(clock.clone());
    sim.add_client(CLIENT_ID, CLIENT_SECRET);
    let sim_listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("cannot start the simulated Xero: {e}"))?;
    let sim_url = format!(
        "http://{}",
        sim_listener.local_addr().map_err(|e| e.to_string())?
    );
    let sim_router = sim.router();
    let sim_stop = shutdown.clone();
    tokio::spawn(async move {
        let _ = axum::serve(sim_listener, sim_router)
            .with_graceful_shutdown(async move { sim_stop.cancelled().await })
            .await;
    });
    let pool = seed(&db, opts.connections, clock.now(), Some(&sim))
        .await
        .map_err(|e| format!("cannot create the demo store: {e}"))?;
    let yaml = format!(
        "{}proxy:\n  source: demo_proxy\n  identity_url: {sim_url}\n  api_url: {sim_url}\n",
        config_yaml(&db, &opts)
    );
    tracing::info!(store = %db.display(), connections = opts.connections, "Demo store created; config follows.\n{yaml}");
    let cfg = config::parse(&yaml, "<demo>", &|_| None).map_err(|e| e.to_string())?;
    let exporter =
        Exporter::new(&cfg, clock.clone()).map_err(|(s, e)| format!("source {s}: {e}"))?;
    // The proxy on its own port; the host app sends every Xero call through it.
    let proxy_listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("cannot start the proxy: {e}"))?;
    let proxy_url = format!(
        "http://{}",
        proxy_listener.local_addr().map_err(|e| e.to_string())?
    );
    let proxy_router = exporter
        .proxy_router()
        .expect("the demo config has a proxy");
    let proxy_stop = shutdown.clone();
    tokio::spawn(async move {
        let _ = axum::serve(proxy_listener, proxy_router)
            .with_graceful_shutdown(async move { proxy_stop.cancelled().await })
            .await;
    });
    tracing::info!(proxy = %proxy_url, simulated_xero = %sim_url, "The simulated host app calls the simulated Xero through the exporter's proxy.");
    let app_stop = shutdown.clone();
    let tick = opts.tick;
    let mut next_id = opts.connections;
    let host_app = tokio::spawn(async move {
        let http = reqwest::Client::new();
        loop {
            tokio::select! {
                _ = app_stop.cancelled() => break,
                _ = tokio::time::sleep(tick) => {
                    if let Err(e) = act(&pool, &sim, &http, &proxy_url, clock.now(), &mut next_id).await {
                        tracing::warn!(error = %e, "The simulated host app failed to write.");
                    }
                }
            }
        }
        pool.close().await;
    });
    let served = exporter
        .run(listener, ServerOptions::default(), shutdown)
        .await;
    let _ = host_app.await;
    drop(dir);
    served.map_err(|e| format!("server failed: {e}"))
}
