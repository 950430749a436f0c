//! A simulated host app: the workers of an integration that sync Xero tenants, refresh tokens
//! through the simulated Xero (directly or through the exporter's proxy) and keep their state
//! in SQLite, PostgreSQL or MySQL, with the faults of `XERO.md` on demand.
//!
//! Its store holds two tables (names prefixed by [`HostAppOptions::prefix`]):
//! - `xero_tokens(id, tenant_id, tenant_name, user_id, access_token, refresh_token, expires_at,
//!   refreshed_at, status, updated_at)`, times in epoch seconds, `status` one of `active`,
//!   `needs_reauth`, `revoked`: what the exporter's sources read;
//! - `oauth_events(id, type, connection, tenant, time, outcome, error, status, detail,
//!   rate_limit_problem)`: a row per refresh and per API call, in the ingest API's shape, when
//!   the app reports to an event table ([`EventSink::Table`]).
//!
//! A well-behaved worker ([`HostApp::sync`]) refreshes shortly before the access token expires,
//! calls the API, refreshes once on `TokenExpired`, and marks the connection `needs_reauth` on
//! `invalid_grant` (and `revoked` on a 403) instead of retrying. The faults are what real apps
//! get wrong: [`HostApp::race`], [`HostApp::race_with_stale_worker`],
//! [`HostApp::stale_copy`] then [`HostApp::write_back`], [`HostApp::retry_loop`], and [`HostApp::pause`] for a tenant
//! left idle until its refresh token dies.

use super::store::{Arg, SimStore};
use super::xero::{SimXero, TokenResponse};
use crate::clock::SharedClock;
use crate::secret::Secret;
use chrono::{DateTime, SecondsFormat, Utc};
use std::collections::HashSet;
use std::sync::Mutex;

/// Where the app reports each refresh and API call (besides the proxy, which sees them anyway
/// when the app calls Xero through it).
#[derive(Debug, Clone)]
pub enum EventSink {
    /// Nowhere.
    None,
    /// A row in its `oauth_events` table.
    Table,
    /// `POST /api/v1/events` of the exporter.
    Ingest { url: String, token: Secret },
}

#[derive(Debug, Clone)]
pub struct HostAppOptions {
    /// Prefix of its table names (`app_` or `schema.`).
    pub prefix: String,
    /// Base URL of Xero's identity server and API (the simulated Xero or the proxy).
    pub xero_url: String,
    pub client_id: String,
    pub client_secret: Secret,
    pub sink: EventSink,
}

/// One stored token set, as a worker reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenRow {
    pub tenant_id: String,
    pub access_token: Secret,
    pub refresh_token: Secret,
    pub expires_at: i64,
    pub refreshed_at: i64,
    pub status: String,
}

/// What a refresh met.
#[derive(Debug, Clone, PartialEq)]
pub enum Refreshed {
    Ok(Box<TokenResponse>),
    /// The token endpoint's OAuth `error`.
    Failed(String),
    /// No answer (connection refused, 5xx without a body).
    Network,
}

/// What one [`HostApp::sync`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synced {
    /// The API answered 200.
    Ok,
    /// The connection is not active; nothing was sent.
    Skipped,
    /// Marked `needs_reauth` (`invalid_grant`, or a 401 that is not `TokenExpired`).
    NeedsReauth,
    /// Marked `revoked` (403: the tenant disconnected the app).
    Revoked,
    /// A failure the app cannot fix per connection (`invalid_client`, Xero down, 429).
    Failed,
}

/// The simulated host app.
pub struct HostApp {
    pub store: SimStore,
    opts: HostAppOptions,
    sim: SimXero,
    clock: SharedClock,
    http: reqwest::Client,
    paused: Mutex<HashSet<String>>,
    /// The client secret in use (an operator can fix it after a rotation).
    secret: Mutex<Secret>,
}

fn epoch(t: DateTime<Utc>) -> i64 {
    t.timestamp()
}

impl HostApp {
    pub fn new(store: SimStore, opts: HostAppOptions, sim: SimXero, clock: SharedClock) -> Self {
        HostApp {
            store,
            sim,
            clock,
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .build()
                .expect("a plain HTTP client builds"),
            paused: Mutex::new(HashSet::new()),
            secret: Mutex::new(opts.client_secret.clone()),
            opts,
        }
    }

    /// The operator deploys a new client secret (after a rotation).
    pub fn set_client_secret(&self, secret: Secret) {
        *self.secret.lock().unwrap_or_else(|e| e.into_inner()) = secret;
    }

    pub fn tokens_table(&self) -> String {
        format!("{}xero_tokens", self.opts.prefix)
    }

    pub fn events_table(&self) -> String {
        format!("{}oauth_events", self.opts.prefix)
    }

    /// Create both tables (dropping earlier ones of the same names).
    pub async fn create_schema(&self) -> Result<(), sqlx::Error> {
        self.drop_schema().await?;
        let (tokens, events) = (self.tokens_table(), self.events_table());
        self.store
            .execute(
                &format!(
                    "CREATE TABLE {tokens} (id VARCHAR(64) PRIMARY KEY, tenant_id VARCHAR(64) NOT NULL, \
                     tenant_name VARCHAR(200) NOT NULL, user_id VARCHAR(64) NOT NULL, \
                     access_token VARCHAR(200) NOT NULL, refresh_token VARCHAR(200) NOT NULL, \
                     expires_at BIGINT NOT NULL, refreshed_at BIGINT NOT NULL, \
                     status VARCHAR(20) NOT NULL, updated_at BIGINT NOT NULL)"
                ),
                &[],
            )
            .await?;
        self.store
            .execute(
                &format!(
                    "CREATE TABLE {events} (id {}, type VARCHAR(10) NOT NULL, connection VARCHAR(64) NOT NULL, \
                     tenant VARCHAR(64), time VARCHAR(40), outcome VARCHAR(10), error VARCHAR(40), \
                     status INT, detail VARCHAR(300), rate_limit_problem VARCHAR(20))",
                    self.store.serial_key()
                ),
                &[],
            )
            .await?;
        Ok(())
    }

    pub async fn drop_schema(&self) -> Result<(), sqlx::Error> {
        for t in [self.tokens_table(), self.events_table()] {
            self.store
                .execute(&format!("DROP TABLE IF EXISTS {t}"), &[])
                .await?;
        }
        Ok(())
    }

    /// A user of organisation `tenant_name` connects the app: a tenant at the simulated Xero,
    /// a consent by `user`, and the row. `refreshed_at` (default now) back-dates the consent,
    /// to seed a fleet of refresh tokens of every age.
    pub async fn connect_tenant(
        &self,
        id: &str,
        tenant_name: &str,
        user: &str,
        refreshed_at: Option<DateTime<Utc>>,
    ) -> Result<String, sqlx::Error> {
        let at = refreshed_at.unwrap_or_else(|| self.clock.now());
        let tenant = self.sim.add_tenant(tenant_name, &[user]);
        let t = self.sim.authorize_at(
            &self.opts.client_id,
            user,
            std::slice::from_ref(&tenant),
            at,
        );
        let now = epoch(self.clock.now());
        self.store
            .execute(
                &format!(
                    "INSERT INTO {} (id, tenant_id, tenant_name, user_id, access_token, refresh_token, \
                     expires_at, refreshed_at, status, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'active', ?)",
                    self.tokens_table()
                ),
                &[
                    id.into(),
                    (&tenant).into(),
                    tenant_name.into(),
                    user.into(),
                    t.access_token.into(),
                    t.refresh_token.into(),
                    (epoch(at) + t.expires_in).into(),
                    epoch(at).into(),
                    now.into(),
                ],
            )
            .await?;
        Ok(tenant)
    }

    /// Delete a connection's row (some apps do after `invalid_grant`).
    pub async fn delete(&self, id: &str) -> Result<(), sqlx::Error> {
        self.store
            .execute(
                &format!("DELETE FROM {} WHERE id = ?", self.tokens_table()),
                &[id.into()],
            )
            .await
            .map(|_| ())
    }

    /// Read one connection's row.
    pub async fn read(&self, id: &str) -> Result<Option<TokenRow>, sqlx::Error> {
        let rows: Vec<(String, String, String, i64, i64, String)> = self
            .store
            .fetch(
                &format!(
                    "SELECT tenant_id, access_token, refresh_token, expires_at, refreshed_at, status FROM {} WHERE id = ?",
                    self.tokens_table()
                ),
                &[id.into()],
            )
            .await?;
        Ok(rows.into_iter().next().map(|r| TokenRow {
            tenant_id: r.0,
            access_token: Secret::new(r.1),
            refresh_token: Secret::new(r.2),
            expires_at: r.3,
            refreshed_at: r.4,
            status: r.5,
        }))
    }

    /// Ids of the connections with `status`.
    pub async fn ids(&self, status: &str) -> Result<Vec<String>, sqlx::Error> {
        let rows: Vec<(String,)> = self
            .store
            .fetch(
                &format!(
                    "SELECT id FROM {} WHERE status = ? ORDER BY id",
                    self.tokens_table()
                ),
                &[status.into()],
            )
            .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// Leave a connection idle: [`HostApp::sync_all`] skips it (a seasonal business, a paused
    /// sync) until [`HostApp::resume`].
    pub fn pause(&self, id: &str) {
        self.paused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_string());
    }

    pub fn resume(&self, id: &str) {
        self.paused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// Whether [`HostApp::pause`] left the connection idle.
    pub fn is_paused(&self, id: &str) -> bool {
        self.paused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(id)
    }

    async fn set_status(&self, id: &str, status: &str) -> Result<(), sqlx::Error> {
        self.store
            .execute(
                &format!(
                    "UPDATE {} SET status = ?, updated_at = ? WHERE id = ?",
                    self.tokens_table()
                ),
                &[status.into(), epoch(self.clock.now()).into(), id.into()],
            )
            .await
            .map(|_| ())
    }

    /// Write a worker's copy of the token set (after a refresh, or stale).
    async fn write_tokens(
        &self,
        id: &str,
        access: &str,
        refresh: &str,
        expires_at: i64,
        refreshed_at: i64,
    ) -> Result<(), sqlx::Error> {
        self.store
            .execute(
                &format!(
                    "UPDATE {} SET access_token = ?, refresh_token = ?, expires_at = ?, refreshed_at = ?, \
                     status = 'active', updated_at = ? WHERE id = ?",
                    self.tokens_table()
                ),
                &[
                    access.into(),
                    refresh.into(),
                    expires_at.into(),
                    refreshed_at.into(),
                    epoch(self.clock.now()).into(),
                    id.into(),
                ],
            )
            .await
            .map(|_| ())
    }

    async fn store_refreshed(&self, id: &str, t: &TokenResponse) -> Result<(), sqlx::Error> {
        let now = epoch(self.clock.now());
        self.write_tokens(
            id,
            &t.access_token,
            &t.refresh_token,
            now + t.expires_in,
            now,
        )
        .await
    }

    /// Report one event to the sink, in the ingest API's shape.
    async fn report(&self, event: serde_json::Value) -> Result<(), sqlx::Error> {
        match &self.opts.sink {
            EventSink::None => Ok(()),
            EventSink::Table => {
                let s = |k: &str| -> Arg { event.get(k).and_then(|v| v.as_str()).into() };
                let status: Arg = event.get("status").and_then(|v| v.as_i64()).into();
                self.store
                    .execute(
                        &format!(
                            "INSERT INTO {} (type, connection, tenant, time, outcome, error, status, detail, rate_limit_problem) \
                             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            self.events_table()
                        ),
                        &[
                            s("type"),
                            s("connection"),
                            s("tenant"),
                            s("time"),
                            s("outcome"),
                            s("error"),
                            status,
                            s("detail"),
                            s("rate_limit_problem"),
                        ],
                    )
                    .await
                    .map(|_| ())
            }
            EventSink::Ingest { url, token } => {
                let sent = self
                    .http
                    .post(url)
                    .bearer_auth(token.expose())
                    .header("content-type", "application/json")
                    .body(serde_json::json!({ "events": [event] }).to_string())
                    .send()
                    .await;
                if let Err(e) = sent.and_then(|r| r.error_for_status()) {
                    tracing::warn!(error = %e.without_url(), "The simulated host app could not post an event.");
                }
                Ok(())
            }
        }
    }

    fn now_text(&self) -> String {
        self.clock
            .now()
            .to_rfc3339_opts(SecondsFormat::Millis, true)
    }

    /// One call to the token endpoint with `refresh_token`, reported.
    pub async fn refresh_with(
        &self,
        id: &str,
        tenant: &str,
        refresh_token: &Secret,
    ) -> Result<Refreshed, sqlx::Error> {
        let secret = self
            .secret
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let answer = self
            .http
            .post(format!("{}/connect/token", self.opts.xero_url))
            .basic_auth(&self.opts.client_id, Some(secret.expose()))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!(
                "grant_type=refresh_token&refresh_token={}",
                refresh_token.expose()
            ))
            .send()
            .await;
        let time = self.now_text();
        let mut event = serde_json::json!({
            "type": "refresh", "connection": id, "tenant": tenant, "time": time,
        });
        let outcome = match answer {
            Err(_) => Refreshed::Network,
            Ok(r) => {
                let status = r.status().as_u16();
                event["status"] = status.into();
                let body = r.bytes().await.unwrap_or_default();
                if status == 200 {
                    match serde_json::from_slice::<TokenResponse>(&body) {
                        Ok(t) => Refreshed::Ok(Box::new(t)),
                        Err(_) => Refreshed::Network,
                    }
                } else {
                    match serde_json::from_slice::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|v| v.get("error")?.as_str().map(str::to_string))
                    {
                        Some(e) => Refreshed::Failed(e),
                        None => Refreshed::Network,
                    }
                }
            }
        };
        match &outcome {
            Refreshed::Ok(_) => event["outcome"] = "success".into(),
            Refreshed::Failed(e) => {
                event["outcome"] = "failure".into();
                event["error"] = e.as_str().into();
            }
            Refreshed::Network => {
                event["outcome"] = "failure".into();
                if event.get("status").is_none() {
                    event["error"] = "network".into();
                } else {
                    event["error"] = "server_error".into();
                }
            }
        }
        self.report(event).await?;
        Ok(outcome)
    }

    /// A well-behaved refresh of one connection: read, refresh, store; `invalid_grant` marks it
    /// `needs_reauth`.
    pub async fn refresh(&self, id: &str) -> Result<Refreshed, sqlx::Error> {
        let Some(row) = self.read(id).await? else {
            return Ok(Refreshed::Failed("missing".into()));
        };
        let out = self
            .refresh_with(id, &row.tenant_id, &row.refresh_token)
            .await?;
        match &out {
            Refreshed::Ok(t) => self.store_refreshed(id, t).await?,
            Refreshed::Failed(e) if e == "invalid_grant" => {
                self.set_status(id, "needs_reauth").await?
            }
            _ => {}
        }
        Ok(out)
    }

    /// One API call with the stored access token, reported; returns the status (0: no answer).
    pub async fn call_api(&self, id: &str) -> Result<(u16, Option<String>), sqlx::Error> {
        let Some(row) = self.read(id).await? else {
            return Ok((0, None));
        };
        let answer = self
            .http
            .get(format!("{}/api.xro/2.0/Organisation", self.opts.xero_url))
            .bearer_auth(row.access_token.expose())
            .header("xero-tenant-id", &row.tenant_id)
            .send()
            .await;
        let Ok(r) = answer else {
            return Ok((0, None));
        };
        let status = r.status().as_u16();
        let problem = r
            .headers()
            .get("x-rate-limit-problem")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = r.bytes().await.unwrap_or_default();
        let detail = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("Detail")?.as_str().map(str::to_string));
        let mut event = serde_json::json!({
            "type": "api", "connection": id, "tenant": row.tenant_id, "time": self.now_text(),
            "status": status,
        });
        if let Some(d) = &detail {
            event["detail"] = d.as_str().into();
        }
        if let Some(p) = problem {
            event["rate_limit_problem"] = p.into();
        }
        self.report(event).await?;
        Ok((status, detail))
    }

    /// A well-behaved worker's sync of one connection: refresh when the access token expires
    /// within 2 minutes, call the API, refresh once on `TokenExpired`; `invalid_grant` or a 401
    /// that is not `TokenExpired` marks it `needs_reauth`, a 403 `revoked`. Never retries
    /// `invalid_grant`.
    pub async fn sync(&self, id: &str) -> Result<Synced, sqlx::Error> {
        let Some(row) = self.read(id).await? else {
            return Ok(Synced::Skipped);
        };
        if row.status != "active" {
            return Ok(Synced::Skipped);
        }
        if epoch(self.clock.now()) >= row.expires_at - 120 {
            match self.refresh(id).await? {
                Refreshed::Ok(_) => {}
                Refreshed::Failed(e) if e == "invalid_grant" => return Ok(Synced::NeedsReauth),
                _ => return Ok(Synced::Failed),
            }
        }
        for attempt in 0..2 {
            let (status, detail) = self.call_api(id).await?;
            match status {
                200 => return Ok(Synced::Ok),
                401 if attempt == 0
                    && detail
                        .as_deref()
                        .is_some_and(|d| d.starts_with("TokenExpired")) =>
                {
                    match self.refresh(id).await? {
                        Refreshed::Ok(_) => continue,
                        Refreshed::Failed(e) if e == "invalid_grant" => {
                            return Ok(Synced::NeedsReauth)
                        }
                        _ => return Ok(Synced::Failed),
                    }
                }
                401 => {
                    self.set_status(id, "needs_reauth").await?;
                    return Ok(Synced::NeedsReauth);
                }
                403 => {
                    self.set_status(id, "revoked").await?;
                    return Ok(Synced::Revoked);
                }
                _ => return Ok(Synced::Failed),
            }
        }
        Ok(Synced::Failed)
    }

    /// Sync every active connection that is not paused, one after another.
    pub async fn sync_all(&self) -> Result<Vec<(String, Synced)>, sqlx::Error> {
        let mut out = Vec::new();
        for id in self.ids("active").await? {
            if self.is_paused(&id) {
                continue;
            }
            let s = self.sync(&id).await?;
            out.push((id, s));
        }
        Ok(out)
    }

    /// Fault: two workers take the same connection at once and both refresh with the token
    /// they read. Xero answers the second inside its grace period, so both succeed: two
    /// refreshes inside the grace period.
    pub async fn race(&self, id: &str) -> Result<(Refreshed, Refreshed), sqlx::Error> {
        let Some(row) = self.read(id).await? else {
            return Ok((Refreshed::Network, Refreshed::Network));
        };
        let (a, b) = tokio::join!(
            self.refresh_with(id, &row.tenant_id, &row.refresh_token),
            self.refresh_with(id, &row.tenant_id, &row.refresh_token)
        );
        let (a, b) = (a?, b?);
        for r in [&a, &b] {
            if let Refreshed::Ok(t) = r {
                self.store_refreshed(id, t).await?;
            }
        }
        Ok((a, b))
    }

    /// Fault: a third worker read the row before two others refreshed it in turn; its
    /// refresh token is two rotations old, so its refresh gets `invalid_grant` right after
    /// the others' successes, and it wrongly marks the connection `needs_reauth`.
    pub async fn race_with_stale_worker(&self, id: &str) -> Result<Refreshed, sqlx::Error> {
        let Some(stale) = self.read(id).await? else {
            return Ok(Refreshed::Network);
        };
        self.refresh(id).await?;
        self.refresh(id).await?;
        let out = self
            .refresh_with(id, &stale.tenant_id, &stale.refresh_token)
            .await?;
        if matches!(&out, Refreshed::Failed(e) if e == "invalid_grant") {
            self.set_status(id, "needs_reauth").await?;
        }
        Ok(out)
    }

    /// Fault, first half: worker A reads the row and works slowly (meanwhile another worker
    /// refreshes the token set).
    pub async fn stale_copy(&self, id: &str) -> Result<Option<TokenRow>, sqlx::Error> {
        self.read(id).await
    }

    /// Fault, second half: A saves its whole stale copy over the newer token set. The stored
    /// refresh token goes back to a value Xero has rotated out (it still works inside the
    /// 30-minute grace period, and gets `invalid_grant` after it).
    pub async fn write_back(&self, id: &str, stale: &TokenRow) -> Result<(), sqlx::Error> {
        self.write_tokens(
            id,
            stale.access_token.expose(),
            stale.refresh_token.expose(),
            stale.expires_at,
            stale.refreshed_at,
        )
        .await
    }

    /// Fault: a worker that retries a failing refresh `attempts` times and never marks the
    /// connection (a dead token retried forever).
    pub async fn retry_loop(
        &self,
        id: &str,
        attempts: usize,
    ) -> Result<Vec<Refreshed>, sqlx::Error> {
        let Some(row) = self.read(id).await? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::with_capacity(attempts);
        for _ in 0..attempts {
            let r = self
                .refresh_with(id, &row.tenant_id, &row.refresh_token)
                .await?;
            if let Refreshed::Ok(t) = &r {
                self.store_refreshed(id, t).await?;
                out.push(r);
                break;
            }
            out.push(r);
        }
        Ok(out)
    }
}
