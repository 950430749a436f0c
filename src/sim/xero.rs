//! A simulated Xero: identity server and API, on an injected clock, with the failure modes of
//! `../shared/XERO.md`. Start it with [`SimXero::router`] on any listener; drive it with the
//! operator actions ([`SimXero::change_password`], [`SimXero::remove_user`],
//! [`SimXero::disconnect`], [`SimXero::rotate_client_secret`], [`SimXero::set_incident`]).

use crate::clock::SharedClock;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use chrono::{DateTime, Duration, Utc};
use rand::Rng;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

/// Xero's figures (XERO.md).
pub const ACCESS_LIFETIME: i64 = 1800;
pub const REFRESH_IDLE_DAYS: i64 = 60;
pub const GRACE_MINUTES: i64 = 30;
pub const TENANT_MINUTE_LIMIT: u32 = 60;
pub const TENANT_DAY_LIMIT: u32 = 5000;
pub const APP_MINUTE_LIMIT: u32 = 10_000;

/// A token response, as Xero sends it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct TokenResponse {
    pub id_token: String,
    pub access_token: String,
    pub expires_in: i64,
    pub token_type: String,
    pub refresh_token: String,
    pub scope: String,
}

#[derive(Debug)]
struct Grant {
    client_id: String,
    user_id: String,
    tenants: Vec<String>,
    refresh: String,
    refreshed_at: DateTime<Utc>,
    /// The refresh token retired by the last rotation, when, and the answer it got.
    previous: Option<(String, DateTime<Utc>)>,
    last: TokenResponse,
    access_expires: DateTime<Utc>,
    revoked: bool,
    /// The consent's session (`sid`, `global_session_id`) and time (`auth_time`).
    session: String,
    authorised_at: DateTime<Utc>,
}

#[derive(Debug, Default)]
struct Limits {
    minute: HashMap<(String, i64), u32>,
    day: HashMap<(String, i64), u32>,
    app_minute: HashMap<i64, u32>,
}

#[derive(Debug, Default)]
struct World {
    clients: HashMap<String, String>,
    grants: Vec<Grant>,
    by_refresh: HashMap<String, usize>,
    by_access: HashMap<String, usize>,
    tenant_names: HashMap<String, String>,
    /// Members of each tenant (organisation).
    members: HashMap<String, HashSet<String>>,
    incident: bool,
    limits: Limits,
    /// Token-endpoint calls seen, by outcome, for tests.
    refreshes: HashMap<&'static str, u64>,
    /// Prefix of every token issued (canary tests mark tokens to find leaks).
    marker: String,
    /// The issuer its discovery document and `id_token`s name (empty: Xero's own).
    issuer: String,
    /// Each user's stable Xero user id (`xero_userid`, `sub`).
    user_ids: HashMap<String, String>,
}

/// Xero's identity server, the issuer the simulator names unless told otherwise.
pub const XERO_ISSUER: &str = "https://identity.xero.com";

impl World {
    fn issuer(&self) -> &str {
        if self.issuer.is_empty() {
            XERO_ISSUER
        } else {
            &self.issuer
        }
    }

    fn user_id(&mut self, user: &str) -> String {
        self.user_ids
            .entry(user.to_string())
            .or_insert_with(uuid)
            .clone()
    }

    /// A new token set for grant `idx` at `now`: opaque access and refresh tokens (with the
    /// marker) and an `id_token` signed as Xero signs it (RS256, Xero's claims).
    fn issue(&mut self, idx: usize, now: DateTime<Utc>) -> TokenResponse {
        let access_token = random_token(&format!("{}at_", self.marker));
        let g = &self.grants[idx];
        let (user, client, session, auth_time) = (
            g.user_id.clone(),
            g.client_id.clone(),
            g.session.clone(),
            g.authorised_at.timestamp(),
        );
        let xero_userid = self.user_id(&user);
        let t = now.timestamp();
        let id_token = super::jwt::sign(&serde_json::json!({
            "nbf": t, "exp": t + 300, "iss": self.issuer(), "aud": client, "iat": t,
            "at_hash": super::jwt::at_hash(&access_token), "sid": session,
            "sub": xero_userid.replace('-', ""), "auth_time": auth_time, "idp": "xero",
            "xero_userid": xero_userid, "global_session_id": session,
            "preferred_username": format!("{user}@example.com"), "email": format!("{user}@example.com"),
            "given_name": user, "family_name": "Example", "amr": ["pwd"],
        }));
        TokenResponse {
            id_token,
            access_token,
            expires_in: ACCESS_LIFETIME,
            token_type: "Bearer".into(),
            refresh_token: random_token(&format!("{}rt_", self.marker)),
            scope: "openid profile email accounting.transactions offline_access".into(),
        }
    }
}

/// The simulated Xero. Cheap to clone; every clone is the same world.
#[derive(Clone)]
pub struct SimXero {
    world: Arc<Mutex<World>>,
    clock: SharedClock,
}

fn random_token(prefix: &str) -> String {
    let mut rng = rand::rng();
    let body: String = (0..40)
        .map(|_| format!("{:x}", rng.random_range(0..16u8)))
        .collect();
    format!("{prefix}{body}")
}

fn uuid() -> String {
    let h = random_token("");
    format!(
        "{}-{}-4{}-8{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

/// A token-endpoint error as Xero sends it: `{"error":"..."}`, no description.
fn oauth_error(status: StatusCode, error: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        format!(r#"{{"error":"{error}"}}"#),
    )
        .into_response()
}

/// An API problem as Xero sends it.
fn api_problem(status: StatusCode, title: &str, detail: &str) -> Response {
    let body = serde_json::json!({
        "Type": null, "Title": title, "Status": status.as_u16(), "Detail": detail,
        "Instance": uuid(), "Extensions": {}
    });
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

impl SimXero {
    pub fn new(clock: SharedClock) -> Self {
        SimXero {
            world: Arc::new(Mutex::new(World::default())),
            clock,
        }
    }

    fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Start every token issued from now on with `marker` (canary tests search for it).
    pub fn set_token_marker(&self, marker: &str) {
        self.world().marker = marker.to_string();
    }

    /// The issuer named by the discovery document, its endpoints and every `id_token` (the
    /// URL clients reach the identity server at; Xero's own by default, right for clients
    /// whose traffic the exporter intercepts).
    pub fn set_issuer(&self, issuer: &str) {
        self.world().issuer = issuer.trim_end_matches('/').to_string();
    }

    /// The stable Xero user id (`xero_userid` claim) of a user.
    pub fn xero_userid(&self, user: &str) -> String {
        self.world().user_id(user)
    }

    /// Register an app (client id and secret).
    pub fn add_client(&self, client_id: &str, secret: &str) {
        self.world().clients.insert(client_id.into(), secret.into());
    }

    /// Create an organisation with its members; returns its tenant id.
    pub fn add_tenant(&self, name: &str, members: &[&str]) -> String {
        let id = uuid();
        let mut w = self.world();
        w.tenant_names.insert(id.clone(), name.into());
        w.members
            .insert(id.clone(), members.iter().map(|m| m.to_string()).collect());
        id
    }

    /// A user consents: a new token set for `client_id` covering `tenants`.
    pub fn authorize(&self, client_id: &str, user_id: &str, tenants: &[String]) -> TokenResponse {
        self.authorize_at(client_id, user_id, tenants, self.clock.now())
    }

    /// Like [`SimXero::authorize`], as if the consent (or the last refresh) happened at `now`:
    /// seeds a fleet whose refresh tokens are already days old.
    pub fn authorize_at(
        &self,
        client_id: &str,
        user_id: &str,
        tenants: &[String],
        now: DateTime<Utc>,
    ) -> TokenResponse {
        let mut w = self.world();
        let idx = w.grants.len();
        w.grants.push(Grant {
            client_id: client_id.into(),
            user_id: user_id.into(),
            tenants: tenants.to_vec(),
            refresh: String::new(),
            refreshed_at: now,
            previous: None,
            last: TokenResponse {
                id_token: String::new(),
                access_token: String::new(),
                expires_in: 0,
                token_type: String::new(),
                refresh_token: String::new(),
                scope: String::new(),
            },
            access_expires: now + Duration::seconds(ACCESS_LIFETIME),
            revoked: false,
            session: uuid().replace('-', ""),
            authorised_at: now,
        });
        let resp = w.issue(idx, now);
        w.by_refresh.insert(resp.refresh_token.clone(), idx);
        w.by_access.insert(resp.access_token.clone(), idx);
        let g = &mut w.grants[idx];
        g.refresh = resp.refresh_token.clone();
        g.last = resp.clone();
        resp
    }

    /// Time passes for the token sets covering `tenant_id` (and nobody refreshes them): their
    /// last refresh moves `by` into the past, so a test can age one grant past 60 days.
    pub fn age_grants(&self, tenant_id: &str, by: Duration) {
        for g in self
            .world()
            .grants
            .iter_mut()
            .filter(|g| g.tenants.iter().any(|t| t == tenant_id))
        {
            g.refreshed_at -= by;
            g.access_expires -= by;
        }
    }

    /// The user changes their password: every token set they authorised is revoked.
    pub fn change_password(&self, user_id: &str) {
        for g in self
            .world()
            .grants
            .iter_mut()
            .filter(|g| g.user_id == user_id)
        {
            g.revoked = true;
        }
    }

    /// The user is removed from the organisation: their token sets lose it (and die if it
    /// was their last).
    pub fn remove_user(&self, user_id: &str, tenant_id: &str) {
        let mut w = self.world();
        if let Some(m) = w.members.get_mut(tenant_id) {
            m.remove(user_id);
        }
        for g in w.grants.iter_mut().filter(|g| g.user_id == user_id) {
            g.tenants.retain(|t| t != tenant_id);
            if g.tenants.is_empty() {
                g.revoked = true;
            }
        }
    }

    /// The organisation disconnects the app (or a third uncertified app kicks it out).
    pub fn disconnect(&self, tenant_id: &str, client_id: &str) {
        for g in self
            .world()
            .grants
            .iter_mut()
            .filter(|g| g.client_id == client_id)
        {
            g.tenants.retain(|t| t != tenant_id);
            if g.tenants.is_empty() {
                g.revoked = true;
            }
        }
    }

    /// The developer rotates the client secret; the old one stops working at once.
    pub fn rotate_client_secret(&self, client_id: &str) -> String {
        let secret = random_token("secret_");
        self.world()
            .clients
            .insert(client_id.into(), secret.clone());
        secret
    }

    /// A platform incident: refreshes rotate the token but the answer is lost (HTTP 500).
    pub fn set_incident(&self, on: bool) {
        self.world().incident = on;
    }

    /// Token-endpoint outcomes so far (`ok`, `invalid_grant`, ...), for tests.
    pub fn refresh_outcomes(&self) -> HashMap<&'static str, u64> {
        self.world().refreshes.clone()
    }

    /// Routes: identity and API on one listener (Xero serves them on two hosts).
    pub fn router(&self) -> Router {
        Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/.well-known/openid-configuration/jwks", get(jwks))
            .route("/connect/token", post(token))
            .route("/connect/revocation", post(revocation))
            .route("/connections", get(connections))
            .route("/connections/{id}", delete(delete_connection))
            .route("/api.xro/2.0/Organisation", get(organisation))
            .with_state(self.clone())
    }

    /// The client a token-endpoint request authenticates as: `client_secret_basic` (the
    /// `Authorization: Basic` header, as xero-node and most apps send) or `client_secret_post`
    /// (`client_id` and `client_secret` in the form, as xero-python sends), both of which
    /// Xero's discovery document lists. Both at once is refused, as RFC 6749 §2.3 asks.
    fn client_ok(&self, headers: &HeaderMap, form: &HashMap<String, String>) -> Option<String> {
        use base64::Engine;
        let posted = form.get("client_id").zip(form.get("client_secret"));
        let (id, secret) = match (headers.get(header::AUTHORIZATION), posted) {
            (Some(auth), None) => {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(auth.to_str().ok()?.strip_prefix("Basic ")?.trim())
                    .ok()?;
                let creds = String::from_utf8(raw).ok()?;
                let (id, secret) = creds.split_once(':')?;
                (id.to_string(), secret.to_string())
            }
            (None, Some((id, secret))) => (id.clone(), secret.clone()),
            _ => return None,
        };
        (self.world().clients.get(&id) == Some(&secret)).then_some(id)
    }

    fn count(&self, outcome: &'static str) {
        *self.world().refreshes.entry(outcome).or_default() += 1;
    }
}

fn form(body: &str) -> HashMap<String, String> {
    serde_urlencoded::from_str(body).unwrap_or_default()
}

async fn discovery(State(x): State<SimXero>) -> Response {
    let issuer = x.world().issuer().to_string();
    axum::Json(super::jwt::discovery(&issuer)).into_response()
}

async fn jwks() -> Response {
    axum::Json(super::jwt::jwks()).into_response()
}

async fn token(State(x): State<SimXero>, headers: HeaderMap, body: String) -> Response {
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        x.count("unsupported_grant_type");
        return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type");
    }
    let f = form(&body);
    let Some(client_id) = x.client_ok(&headers, &f) else {
        x.count("invalid_client");
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_client");
    };
    if f.get("grant_type").map(String::as_str) != Some("refresh_token") {
        x.count("unsupported_grant_type");
        return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type");
    }
    let rt = f.get("refresh_token").cloned().unwrap_or_default();
    let now = x.clock.now();
    let mut w = x.world();
    let incident = w.incident;
    let Some(&idx) = w.by_refresh.get(&rt) else {
        drop(w);
        x.count("invalid_grant");
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
    };
    let g = &w.grants[idx];
    let dead = g.revoked
        || g.client_id != client_id
        || (g.refresh == rt && now - g.refreshed_at > Duration::days(REFRESH_IDLE_DAYS));
    let in_grace = matches!(&g.previous, Some((prev, at)) if *prev == rt && now - *at <= Duration::minutes(GRACE_MINUTES));
    if dead || (g.refresh != rt && !in_grace) {
        drop(w);
        x.count("invalid_grant");
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
    }
    if in_grace {
        // The previous token within the grace period gets the answer it would have had.
        let resp = w.grants[idx].last.clone();
        drop(w);
        x.count("ok");
        return axum::Json(resp).into_response();
    }
    let mut resp = w.issue(idx, now);
    resp.scope = w.grants[idx].last.scope.clone();
    w.by_refresh.insert(resp.refresh_token.clone(), idx);
    w.by_access.insert(resp.access_token.clone(), idx);
    let g = &mut w.grants[idx];
    g.previous = Some((
        std::mem::replace(&mut g.refresh, resp.refresh_token.clone()),
        now,
    ));
    g.refreshed_at = now;
    g.access_expires = now + Duration::seconds(ACCESS_LIFETIME);
    g.last = resp.clone();
    drop(w);
    if incident {
        x.count("incident");
        return (StatusCode::INTERNAL_SERVER_ERROR, "").into_response();
    }
    x.count("ok");
    axum::Json(resp).into_response()
}

async fn revocation(State(x): State<SimXero>, headers: HeaderMap, body: String) -> Response {
    let f = form(&body);
    if x.client_ok(&headers, &f).is_none() {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_client");
    }
    let token = f.get("token").cloned().unwrap_or_default();
    let mut w = x.world();
    if let Some(&idx) = w.by_refresh.get(&token) {
        w.grants[idx].revoked = true;
    }
    StatusCode::OK.into_response()
}

/// The grant behind a bearer token, or the 401 Xero would send.
fn bearer(x: &SimXero, headers: &HeaderMap) -> Result<usize, Box<Response>> {
    let unauthorized = |d: &str| Box::new(api_problem(StatusCode::UNAUTHORIZED, "Unauthorized", d));
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| unauthorized("AuthenticationUnsuccessful"))?;
    let w = x.world();
    let idx = *w
        .by_access
        .get(token)
        .ok_or_else(|| unauthorized("AuthorizationUnsuccessful"))?;
    let g = &w.grants[idx];
    if g.revoked || g.last.access_token != token {
        return Err(unauthorized("AuthorizationUnsuccessful"));
    }
    let now = x.clock.now();
    if now > g.access_expires {
        let at = g.access_expires.format("%m/%d/%Y %H:%M:%S");
        return Err(unauthorized(&format!(
            "TokenExpired: token expired at {at}"
        )));
    }
    Ok(idx)
}

async fn connections(State(x): State<SimXero>, headers: HeaderMap) -> Response {
    let idx = match bearer(&x, &headers) {
        Ok(i) => i,
        Err(r) => return *r,
    };
    let w = x.world();
    let list: Vec<serde_json::Value> = w.grants[idx]
        .tenants
        .iter()
        .map(|t| serde_json::json!({
            "id": t, "authEventId": uuid(), "tenantId": t, "tenantType": "ORGANISATION",
            "tenantName": w.tenant_names.get(t).cloned().unwrap_or_default(),
            "createdDateUtc": "2026-01-01T00:00:00.0000000", "updatedDateUtc": "2026-01-01T00:00:00.0000000"
        }))
        .collect();
    axum::Json(list).into_response()
}

async fn delete_connection(
    State(x): State<SimXero>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let idx = match bearer(&x, &headers) {
        Ok(i) => i,
        Err(r) => return *r,
    };
    let client = x.world().grants[idx].client_id.clone();
    x.disconnect(&id, &client);
    StatusCode::NO_CONTENT.into_response()
}

async fn organisation(State(x): State<SimXero>, headers: HeaderMap) -> Response {
    let idx = match bearer(&x, &headers) {
        Ok(i) => i,
        Err(r) => return *r,
    };
    let tenant = headers
        .get("xero-tenant-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let now = x.clock.now();
    let minute = now.timestamp() / 60;
    let day = now.timestamp() / 86400;
    let mut w = x.world();
    if !w.grants[idx].tenants.contains(&tenant) {
        drop(w);
        return api_problem(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "AuthenticationUnsuccessful",
        );
    }
    let m = *w
        .limits
        .minute
        .entry((tenant.clone(), minute))
        .and_modify(|c| *c += 1)
        .or_insert(1);
    let d = *w
        .limits
        .day
        .entry((tenant.clone(), day))
        .and_modify(|c| *c += 1)
        .or_insert(1);
    let a = *w
        .limits
        .app_minute
        .entry(minute)
        .and_modify(|c| *c += 1)
        .or_insert(1);
    let name = w.tenant_names.get(&tenant).cloned().unwrap_or_default();
    drop(w);
    let remaining = |limit: u32, used: u32| limit.saturating_sub(used).to_string();
    let mut headers = vec![
        ("X-DayLimit-Remaining", remaining(TENANT_DAY_LIMIT, d)),
        ("X-MinLimit-Remaining", remaining(TENANT_MINUTE_LIMIT, m)),
        ("X-AppMinLimit-Remaining", remaining(APP_MINUTE_LIMIT, a)),
    ];
    let problem = if d > TENANT_DAY_LIMIT {
        Some(("day", 86400 - now.timestamp() % 86400))
    } else if m > TENANT_MINUTE_LIMIT {
        Some(("minute", 60 - now.timestamp() % 60))
    } else if a > APP_MINUTE_LIMIT {
        Some(("appminute", 60 - now.timestamp() % 60))
    } else {
        None
    };
    let mut resp = match problem {
        Some((which, retry)) => {
            headers.push(("Retry-After", retry.to_string()));
            headers.push(("X-Rate-Limit-Problem", which.to_string()));
            (StatusCode::TOO_MANY_REQUESTS, "").into_response()
        }
        None => axum::Json(serde_json::json!({"Status": "OK", "Organisations": [{"Name": name, "OrganisationID": tenant}]})).into_response(),
    };
    for (k, v) in headers {
        resp.headers_mut()
            .insert(k, v.parse().expect("header values are ASCII"));
    }
    resp
}
