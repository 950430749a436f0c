//! Per-connection diagnosis: for every exported connection, the likely cause of its failure or
//! risk, the evidence it rests on and the fix, from what the exporter knows — the connection's
//! state from the store, what the event inlets said about it ([`crate::detect::memory`]), the
//! rest of the fleet at the same time and the provider's windows.
//!
//! Where the data cannot separate two causes, the diagnosis names both (in order of likelihood)
//! and says which signal would separate them; it never guesses.

use crate::detect::memory::{Facts, Failure, Memory};
use crate::detect::Detector;
use crate::model::{Connection, SourceHandle, SourceSet, SourceSnapshot, Status};
use chrono::{DateTime, Duration, Utc};
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

/// Connections failing with a dead token within the detection window that make a mass failure
/// (the `OAuthManyConnectionsFailing` alert's threshold).
pub const MASS_FAILURE: usize = 5;

/// An active connection idle for this share (in percent) of its refresh token's lifetime is at
/// risk: the `OAuthRefreshTokenIdle` ticket's threshold (45 of Xero's 60 days), so that the
/// ticket's link lists the connection it is about.
pub const AT_RISK_PERCENT: i32 = 75;

/// Where the runbooks are.
pub const RUNBOOKS: &str =
    "https://github.com/oauth-token-exporter/oauth-token-exporter/blob/main/alerts/runbooks";

/// The closed list of causes (`oauth_connection_diagnosis{cause}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cause {
    Healthy,
    /// 60 days (the provider's idle lifetime) without a refresh, or close to it.
    IdleExpiry,
    /// A stale refresh token written back, or two workers refreshing at once.
    StaleToken,
    /// `invalid_grant` retried again and again on a dead token.
    RetryingDeadToken,
    /// The authorising user changed their password or was removed: every connection they
    /// authorised fails at once.
    UserRevoked,
    /// The app was disconnected in the provider (or kicked out by the two-app limit).
    Disconnected,
    /// The app's client credentials are refused (`invalid_client`): a rotated secret.
    ClientCredentials,
    /// The provider's side: server errors, network failures, or a spike across many tenants.
    ProviderIncident,
    /// An access token used past its lifetime (401 `TokenExpired`).
    AccessTokenExpired,
    /// 403: a disconnected tenant or a too restricted role.
    Forbidden,
    /// Failing or flagged by the store, but no event says why.
    Unknown,
}

impl Cause {
    pub const ALL: [Cause; 11] = [
        Cause::Healthy,
        Cause::IdleExpiry,
        Cause::StaleToken,
        Cause::RetryingDeadToken,
        Cause::UserRevoked,
        Cause::Disconnected,
        Cause::ClientCredentials,
        Cause::ProviderIncident,
        Cause::AccessTokenExpired,
        Cause::Forbidden,
        Cause::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Healthy => "healthy",
            Cause::IdleExpiry => "idle_expiry",
            Cause::StaleToken => "stale_token",
            Cause::RetryingDeadToken => "retrying_dead_token",
            Cause::UserRevoked => "user_revoked",
            Cause::Disconnected => "disconnected",
            Cause::ClientCredentials => "client_credentials",
            Cause::ProviderIncident => "provider_incident",
            Cause::AccessTokenExpired => "access_token_expired",
            Cause::Forbidden => "forbidden",
            Cause::Unknown => "unknown",
        }
    }

    pub fn from_name(s: &str) -> Option<Cause> {
        Cause::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// What to do.
    pub fn fix(self) -> &'static str {
        match self {
            Cause::Healthy => "Nothing.",
            Cause::IdleExpiry => "Refresh every connection well inside the idle lifetime (a scheduled refresh, not only on sync); once the refresh token has expired the user must re-authorise.",
            Cause::StaleToken => "Make refreshes single-flight per connection and write the new token set atomically (compare-and-set on the old refresh token); re-authorise the connections that already failed.",
            Cause::RetryingDeadToken => "Stop retrying invalid_grant: after one retry mark the connection as needing re-authorisation, pause its syncs and ask the customer to reconnect.",
            Cause::UserRevoked => "Ask the customer to reconnect under an active user (a password change or a removed user revokes every connection that user authorised).",
            Cause::Disconnected => "Ask the customer to reconnect the app (it was disconnected in the provider, or displaced by the two-app limit).",
            Cause::ClientCredentials => "Fix the app's client id and secret (a rotated secret must be deployed); re-authorising does not help.",
            Cause::ProviderIncident => "Wait and retry within the rotation grace period; check the provider's status page. Do not mark connections for re-authorisation yet.",
            Cause::AccessTokenExpired => "Refresh before the access token's lifetime ends (check expires_at before each call, with a margin).",
            Cause::Forbidden => "Check the tenant is still connected and the authorising user's role and the app's scopes.",
            Cause::Unknown => "Route refresh outcomes to an event inlet (event table, ingest API, Nango webhook or the proxy) so the exporter sees the error codes; check the host app's logs.",
        }
    }

    /// The runbook of the alert that covers it.
    pub fn runbook(self) -> Option<String> {
        let name = match self {
            Cause::Healthy => return None,
            Cause::IdleExpiry => "OAuthRefreshTokenExpired",
            Cause::StaleToken => "OAuthRefreshRace",
            Cause::RetryingDeadToken => "OAuthInvalidGrantRetryLoop",
            Cause::UserRevoked => "OAuthManyConnectionsFailing",
            Cause::Disconnected => "OAuthInvalidGrantSpike",
            Cause::ClientCredentials => "OAuthInvalidClient",
            Cause::ProviderIncident => "OAuthRefreshFailureSpike",
            Cause::AccessTokenExpired => "OAuthAccessTokenUsedAfterExpiry",
            Cause::Forbidden => "OAuthApiForbiddenSurge",
            Cause::Unknown => "OAuthConnectionsFailingRefresh",
        };
        Some(format!("{RUNBOOKS}/{name}.md"))
    }
}

/// The causes of one diagnosis, in order, inline (a fleet's diagnosis allocates nothing per
/// connection for them). Each cause at most once, so at most [`Cause::ALL`]'s length.
#[derive(Clone, Copy)]
pub struct Causes {
    len: u8,
    items: [Cause; Cause::ALL.len()],
}

impl Default for Causes {
    fn default() -> Self {
        Causes {
            len: 0,
            items: [Cause::Healthy; Cause::ALL.len()],
        }
    }
}

impl Causes {
    /// Add `cause` after the others (a cause already named is not named again).
    pub fn push(&mut self, cause: Cause) {
        if !self.contains(&cause) && usize::from(self.len) < self.items.len() {
            self.items[usize::from(self.len)] = cause;
            self.len += 1;
        }
    }
}

impl std::ops::Deref for Causes {
    type Target = [Cause];
    fn deref(&self) -> &[Cause] {
        &self.items[..usize::from(self.len)]
    }
}

impl PartialEq for Causes {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl std::hash::Hash for Causes {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (**self).hash(state)
    }
}

impl std::fmt::Debug for Causes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// The diagnosis of one connection.
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnosis {
    /// Most likely first; empty when the connection is healthy. Two root causes where the data
    /// cannot separate them; `RetryingDeadToken` comes after the root cause it aggravates.
    pub causes: Causes,
    /// What each cause rests on, in words.
    pub evidence: Vec<String>,
    /// Since when (the first failure of the current run, the expiry, the first 401/403).
    pub since: Option<DateTime<Utc>>,
    /// What would separate the causes named, when there are two.
    pub separate_by: Option<&'static str>,
}

impl Diagnosis {
    fn healthy() -> Diagnosis {
        Diagnosis {
            causes: Causes::default(),
            evidence: Vec::new(),
            since: None,
            separate_by: None,
        }
    }

    fn say(&mut self, evidence: bool, text: impl FnOnce() -> String) {
        if evidence {
            self.evidence.push(text());
        }
    }

    pub fn cause(&self) -> Cause {
        self.causes.first().copied().unwrap_or(Cause::Healthy)
    }

    pub fn is_healthy(&self) -> bool {
        self.causes.is_empty()
    }

    /// The causes as listed to users: `[healthy]` for a healthy connection.
    pub fn listed(&self) -> &[Cause] {
        if self.causes.is_empty() {
            &[Cause::Healthy]
        } else {
            &self.causes
        }
    }
}

fn days(d: Duration) -> String {
    let h = d.num_minutes() as f64 / 60.0;
    if h.abs() < 48.0 {
        format!("{h:.0} h")
    } else {
        format!("{:.0} d", h / 24.0)
    }
}

fn human(d: Duration) -> String {
    let s = d.num_seconds().abs();
    if s < 120 {
        format!("{s} s")
    } else if s < 2 * 3600 {
        format!("{} min", s / 60)
    } else {
        days(d.abs())
    }
}

fn at(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn from_epoch(t: f64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis((t * 1000.0) as i64).unwrap_or_default()
}

/// What the inlets said about a connection: by its id (the app's events), merged with what
/// was said by its tenant (the proxy knows a call's tenant, not the app's connection id).
fn facts_of<'m>(m: &'m Memory, c: &Connection) -> Option<Cow<'m, Facts>> {
    let by_id = m.facts(c.provider, &c.id);
    let by_tenant = (!c.tenant.is_empty() && c.tenant != c.id)
        .then(|| m.facts(c.provider, &c.tenant))
        .flatten();
    match (by_id, by_tenant) {
        (Some(a), Some(b)) => Some(Cow::Owned(a.merge(b))),
        (Some(a), None) | (None, Some(a)) => Some(Cow::Borrowed(a)),
        (None, None) => None,
    }
}

/// Dead-token failures of the fleet by provider: the first failure time of each connection's
/// current run, sorted, to count how many failed around the same time.
#[derive(Debug, Default)]
pub struct Fleet<'a> {
    firsts: HashMap<&'static str, Vec<DateTime<Utc>>>,
    /// Per provider and authorising user (where the `user` field is mapped): the first
    /// dead-token failure of each of the user's connections (`None`: not failing).
    users: HashMap<(&'static str, &'a str), Vec<Option<DateTime<Utc>>>>,
    window: Duration,
}

impl Fleet<'_> {
    /// Connections of `provider` whose run of dead-token failures began within the window
    /// around `t` (this one included).
    fn around(&self, provider: &str, t: DateTime<Utc>) -> usize {
        let Some(v) = self.firsts.get(provider) else {
            return 0;
        };
        let lo = v.partition_point(|x| *x < t - self.window);
        let hi = v.partition_point(|x| *x <= t + self.window);
        hi - lo
    }

    /// Of the connections `user` authorised: how many there are, and how many began failing
    /// within the window around `t`.
    fn of_user(&self, provider: &'static str, user: &str, t: DateTime<Utc>) -> (usize, usize) {
        let Some(v) = self.users.get(&(provider, user)) else {
            return (0, 0);
        };
        let near = v
            .iter()
            .flatten()
            .filter(|x| (**x - t).abs() <= self.window)
            .count();
        (v.len(), near)
    }
}

/// What a diagnosis needs beyond the connection itself.
pub struct Context<'a> {
    pub now: DateTime<Utc>,
    pub window: Duration,
    pub retry_loop: usize,
    pub fleet: &'a Fleet<'a>,
    /// Whether to write the evidence out (the API and the page); the metrics need only the
    /// causes, and a scrape must not format words for every at-risk connection.
    pub evidence: bool,
}

/// Diagnose one connection from its state and its facts.
pub fn diagnose(
    c: &Connection,
    idle_lifetime: f64,
    facts: Option<&Facts>,
    cx: &Context<'_>,
) -> Diagnosis {
    let mut d = Diagnosis::healthy();
    let expiry = from_epoch(c.refresh_expiry);
    let last_refresh = from_epoch(c.last_refresh);
    let idle = Duration::seconds(idle_lifetime as i64);
    let empty = Facts::default();
    let f = facts.unwrap_or(&empty);
    if let Some(run) = f.failing {
        d.since = Some(run.first);
        d.say(cx.evidence, || {
            format!(
                "{} failure(s) since {}, the latest {} at {}",
                run.count,
                at(run.first),
                run.kind.as_str(),
                at(run.last)
            )
        });
        match run.kind {
            Failure::InvalidClient => {
                d.causes.push(Cause::ClientCredentials);
                d.say(cx.evidence, || {
                    "invalid_client: the token endpoint refused the app's own credentials".into()
                });
            }
            Failure::ProviderError => {
                d.causes.push(Cause::ProviderIncident);
                d.evidence
                    .push("the provider answered with a server error or did not answer".into());
            }
            Failure::OtherRefresh => {
                d.causes.push(Cause::Unknown);
                d.say(cx.evidence, || {
                    "a token endpoint error other than invalid_grant or invalid_client".into()
                });
            }
            Failure::InvalidGrant | Failure::Unauthorized => {
                dead_token(&mut d, c, f, run.first, expiry, last_refresh, idle, cx)
            }
        }
        if run.invalid_grants as usize >= cx.retry_loop {
            d.causes.push(Cause::RetryingDeadToken);
            d.say(cx.evidence, || {
                format!(
                    "{} invalid_grant answers since the first: the dead token is being retried",
                    run.invalid_grants
                )
            });
        }
        return d;
    }
    if let Some(t) = f.token_expired {
        d.causes.push(Cause::AccessTokenExpired);
        d.since = Some(t);
        d.say(cx.evidence, || {
            format!(
                "401 TokenExpired at {}: an access token was used after its lifetime",
                at(t)
            )
        });
    }
    if let Some(t) = f.forbidden {
        d.causes.push(Cause::Forbidden);
        d.since = d.since.min(Some(t)).or(Some(t));
        d.say(cx.evidence, || {
            format!("403 at {}: the tenant or the role refused the call", at(t))
        });
    }
    if let Some(t) = f.race.max(f.reverted).filter(|t| cx.now - *t <= cx.window) {
        d.causes.push(Cause::StaleToken);
        d.since = d.since.or(Some(t));
        d.say(cx.evidence, || stale_evidence(f, t));
    }
    if c.expired {
        d.causes.push(Cause::IdleExpiry);
        d.since = d.since.or(Some(expiry));
        d.say(cx.evidence, || {
            format!(
            "the refresh token expired at {}: no refresh for {} (it lives {} from its last use)",
            at(expiry),
            days(cx.now - last_refresh),
            days(idle)
        )
        });
    } else if cx.now - last_refresh >= idle * AT_RISK_PERCENT / 100 && c.status == Status::Active {
        d.causes.push(Cause::IdleExpiry);
        d.since = d.since.or(Some(last_refresh));
        d.say(cx.evidence, || {
            format!(
                "no refresh for {}: the refresh token expires in {} (at {})",
                days(cx.now - last_refresh),
                days(expiry - cx.now),
                at(expiry)
            )
        });
    }
    if d.causes.is_empty() && c.status != Status::Active {
        d.causes.push(Cause::Unknown);
        d.say(cx.evidence, || {
            format!(
                "the store says {}; no failure of this connection reached an event inlet",
                c.status.as_str()
            )
        });
        d.separate_by = Some("the refresh outcomes of this connection in an event inlet (event table, ingest API, Nango webhook or the proxy)");
    }
    if d.causes.is_empty() {
        return Diagnosis::healthy();
    }
    d
}

fn stale_evidence(f: &Facts, t: DateTime<Utc>) -> String {
    if f.reverted == Some(t) {
        format!(
            "the stored refresh token went back to an earlier value at {}",
            at(t)
        )
    } else {
        format!(
            "a refresh race at {}: two refreshes inside the rotation grace period, or invalid_grant right after a success",
            at(t)
        )
    }
}

/// The root cause of a run of `invalid_grant` / dead-token 401s.
#[allow(clippy::too_many_arguments)]
fn dead_token(
    d: &mut Diagnosis,
    c: &Connection,
    f: &Facts,
    first: DateTime<Utc>,
    expiry: DateTime<Utc>,
    last_refresh: DateTime<Utc>,
    idle: Duration,
    cx: &Context<'_>,
) {
    if first >= expiry || (c.expired && f.last_success.is_none_or(|s| s <= last_refresh)) {
        d.causes.push(Cause::IdleExpiry);
        d.say(cx.evidence, || format!(
            "age {} at the first failure: the refresh token had expired at {} ({} from its last use)",
            days(first - last_refresh),
            at(expiry),
            days(idle)
        ));
        return;
    }
    let stale = f
        .race
        .max(f.reverted)
        .filter(|t| *t <= first + cx.window && first - *t <= cx.window);
    if let Some(t) = stale {
        d.causes.push(Cause::StaleToken);
        d.say(cx.evidence, || {
            format!(
                "{} ({} before the first failure)",
                stale_evidence(f, t),
                human(first - t)
            )
        });
        return;
    }
    let around = cx.fleet.around(c.provider, first);
    let window = human(cx.window);
    if let Some(user) = c.user.as_deref().or(f.user.as_deref()) {
        let (total, near) = cx.fleet.of_user(c.provider, user, first);
        if near >= 2 {
            d.causes.push(Cause::UserRevoked);
            d.say(cx.evidence, || format!(
                "{near} of the {total} connections user {user} authorised began failing within {window}"
            ));
        } else if around >= MASS_FAILURE {
            d.causes.push(Cause::ProviderIncident);
            d.say(cx.evidence, || {
                format!(
                    "{around} connections of {} began failing within {window}, across users",
                    c.provider
                )
            });
        } else if total <= 1 {
            d.causes.push(Cause::Disconnected);
            d.causes.push(Cause::UserRevoked);
            d.say(cx.evidence, || format!(
                "the only connection user {user} authorised here; {} before its refresh token would expire",
                days(expiry - first)
            ));
            d.separate_by = Some("the user has no other connection to compare with: ask the customer whether the app was disconnected, or their password changed or they left the organisation");
        } else {
            d.causes.push(Cause::Disconnected);
            d.say(cx.evidence, || {
                format!(
                    "the other {} connection(s) user {user} authorised are not failing",
                    total - 1
                )
            });
        }
        return;
    }
    if around >= MASS_FAILURE {
        d.causes.push(Cause::UserRevoked);
        d.causes.push(Cause::ProviderIncident);
        d.say(cx.evidence, || {
            format!(
                "{around} connections of {} began failing within {window} of this one",
                c.provider
            )
        });
        d.separate_by = Some("the authorising user of each connection (map the `user` field, or route refreshes and API calls through the proxy, which reads it from the id_token): one user's connections fail together after a password change or removal, unrelated users' in an incident");
    } else {
        d.causes.push(Cause::Disconnected);
        d.causes.push(Cause::UserRevoked);
        d.say(cx.evidence, || format!(
            "only {around} connection(s) of {} began failing within {window} of this one, {} before its refresh token would expire",
            c.provider,
            days(expiry - first)
        ));
        d.separate_by = Some("the authorising user (map the `user` field, or route refreshes and API calls through the proxy, which reads it from the id_token): if the user's other connections fail too, a password change or a removed user; if not, a disconnect");
    }
}

/// The facts of one source's connections that have any, by ascending index.
struct Sparse<'m>(Vec<(u32, Cow<'m, Facts>)>);

impl<'m> Sparse<'m> {
    /// The facts of connection `i`; `cursor` moves forward with ascending `i`.
    fn get(&self, cursor: &mut usize, i: u32) -> Option<&Cow<'m, Facts>> {
        while self.0.get(*cursor).is_some_and(|(j, _)| *j < i) {
            *cursor += 1;
        }
        self.0.get(*cursor).filter(|(j, _)| *j == i).map(|(_, f)| f)
    }
}

/// Every exported connection of one source, diagnosed (in the snapshot's order).
#[derive(Debug)]
pub struct SourceDiagnosis {
    pub source: Arc<SourceHandle>,
    pub snapshot: Arc<SourceSnapshot>,
    pub diagnoses: Vec<Diagnosis>,
}

/// Diagnose every exported connection of every source, as of now; `evidence`: with the
/// evidence in words.
pub fn diagnose_all(
    sources: &SourceSet,
    detector: &Detector,
    now: DateTime<Utc>,
    evidence: bool,
) -> Vec<SourceDiagnosis> {
    let window = detector.current_window();
    let retry_loop = detector.current_retry_loop();
    let handles = sources.get();
    let views: Vec<(Arc<SourceHandle>, Arc<SourceSnapshot>)> =
        handles.iter().map(|h| (h.clone(), h.snapshot())).collect();
    detector.with_memory(|m: &Memory| {
        // What the inlets said of each connection, looked up once.
        // Sparse: most connections have none, and a dense vector of them would be the
        // largest allocation of the diagnosis.
        let facts: Vec<Sparse> = views
            .iter()
            .map(|(_, snap)| {
                Sparse(
                    snap.connections
                        .iter()
                        .enumerate()
                        .filter_map(|(i, c)| Some((i as u32, facts_of(m, c)?)))
                        .collect(),
                )
            })
            .collect();
        let mut fleet = Fleet {
            window,
            ..Fleet::default()
        };
        for ((_, snap), facts) in views.iter().zip(&facts) {
            let mut cursor = 0;
            for (i, c) in snap.connections.iter().enumerate() {
                let f = facts.get(&mut cursor, i as u32);
                let first = f
                    .and_then(|f| f.failing)
                    .filter(|run| run.kind.is_dead_token())
                    .map(|run| run.first);
                if let Some(t) = first {
                    fleet.firsts.entry(c.provider).or_default().push(t);
                }
                // The store's `user` field, else the user the proxy read from an id_token.
                let user = c
                    .user
                    .as_deref()
                    .or_else(|| f.and_then(|f| f.user.as_deref()));
                if let Some(u) = user {
                    fleet.users.entry((c.provider, u)).or_default().push(first);
                }
            }
        }
        for v in fleet.firsts.values_mut() {
            v.sort();
        }
        let cx = Context {
            now,
            window,
            retry_loop,
            fleet: &fleet,
            evidence,
        };
        let diagnosed: Vec<Vec<Diagnosis>> = views
            .iter()
            .zip(&facts)
            .map(|((_, snapshot), facts)| {
                let mut cursor = 0;
                snapshot
                    .connections
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        let idle = snapshot
                            .providers
                            .iter()
                            .find(|p| p.provider == c.provider)
                            .map_or(60.0 * 86400.0, |p| p.windows.refresh);
                        let f = facts.get(&mut cursor, i as u32);
                        diagnose(c, idle, f.map(|f| &**f), &cx)
                    })
                    .collect()
            })
            .collect();
        views
            .into_iter()
            .zip(diagnosed)
            .map(|((source, snapshot), diagnoses)| SourceDiagnosis {
                source,
                snapshot,
                diagnoses,
            })
            .collect()
    })
}
