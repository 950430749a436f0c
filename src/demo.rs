//! `oauth-token-exporter demo`: a host app's SQLite store with a realistic Xero fleet that
//! keeps changing, exported live, so a newcomer sees real data with one command.
//!
//! The fleet: refresh-token ages spread from minutes to past 60 days, some connections marked
//! for re-authorisation. A simulated host app refreshes connections (rotating both tokens and
//! moving `expires_at`), occasionally meets `invalid_grant` and marks the connection, deletes
//! some dead rows (as some apps do) and authorises new tenants.

use crate::clock::{SharedClock, SystemClock};
use crate::config;
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
            tick: std::time::Duration::from_secs(2),
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

/// Create the store and seed the fleet (ages from minutes to 70 days).
pub async fn seed(path: &Path, n: usize, now: DateTime<Utc>) -> Result<SqlitePool, sqlx::Error> {
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
        insert(&pool, &mut rng, i, now - idle, status).await?;
    }
    Ok(pool)
}

async fn insert(
    pool: &SqlitePool,
    rng: &mut impl Rng,
    i: usize,
    refreshed: DateTime<Utc>,
    status: &str,
) -> Result<(), sqlx::Error> {
    let name = format!("{} #{}", NAMES[i % NAMES.len()], i / NAMES.len() + 1);
    sqlx::query("INSERT INTO xero_tokens (id, tenant_id, tenant_name, access_token, refresh_token, expires_at, status, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
        .bind(format!("conn-{i:04}"))
        .bind(uuid_like(rng))
        .bind(name)
        .bind(token(rng))
        .bind(token(rng))
        .bind((refreshed + Duration::minutes(30)).to_rfc3339())
        .bind(status)
        .bind(refreshed.to_rfc3339())
        .bind(refreshed.to_rfc3339())
        .execute(pool)
        .await?;
    Ok(())
}

/// One action of the simulated host app.
pub async fn act(
    pool: &SqlitePool,
    now: DateTime<Utc>,
    next_id: &mut usize,
) -> Result<(), sqlx::Error> {
    let mut rng = StdRng::from_rng(&mut rand::rng());
    let roll: f64 = rng.random();
    let ids: Vec<(String, String)> =
        sqlx::query_as("SELECT id, status FROM xero_tokens ORDER BY RANDOM() LIMIT 1")
            .fetch_all(pool)
            .await?;
    let Some((id, status)) = ids.into_iter().next() else {
        return Ok(());
    };
    if status == "needs_reauth" {
        if roll < 0.5 {
            // Some apps delete the row after invalid_grant; a new tenant authorises.
            sqlx::query("DELETE FROM xero_tokens WHERE id = ?")
                .bind(&id)
                .execute(pool)
                .await?;
            insert(pool, &mut rng, *next_id, now, "active").await?;
            *next_id += 1;
        }
        return Ok(());
    }
    if roll < 0.08 {
        sqlx::query("UPDATE xero_tokens SET status = 'needs_reauth', updated_at = ? WHERE id = ?")
            .bind(now.to_rfc3339())
            .bind(&id)
            .execute(pool)
            .await?;
    } else {
        // A successful refresh: both tokens rotate, the access token lives 30 minutes.
        sqlx::query("UPDATE xero_tokens SET access_token = ?, refresh_token = ?, expires_at = ?, updated_at = ? WHERE id = ? AND status = 'active'")
            .bind(token(&mut rng))
            .bind(token(&mut rng))
            .bind((now + Duration::minutes(30)).to_rfc3339())
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
    let pool = seed(&db, opts.connections, clock.now())
        .await
        .map_err(|e| format!("cannot create the demo store: {e}"))?;
    let yaml = config_yaml(&db, &opts);
    tracing::info!(store = %db.display(), connections = opts.connections, "Demo store created; config follows.\n{yaml}");
    let cfg = config::parse(&yaml, "<demo>", &|_| None).map_err(|e| e.to_string())?;
    let exporter =
        Exporter::new(&cfg, clock.clone()).map_err(|(s, e)| format!("source {s}: {e}"))?;
    let app_stop = shutdown.clone();
    let tick = opts.tick;
    let mut next_id = opts.connections;
    let host_app = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = app_stop.cancelled() => break,
                _ = tokio::time::sleep(tick) => {
                    if let Err(e) = act(&pool, clock.now(), &mut next_id).await {
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
