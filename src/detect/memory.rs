//! What the events said about each connection, kept longer than the detectors' window so that a
//! connection's diagnosis can say what failed, since when and how often.
//!
//! Keyed by a keyed hash of (provider, connection id), whatever inlet reported the event (an id
//! names one connection whichever way its events arrive); the id itself is not kept (the
//! diagnosis looks connections up from the store's rows, which carry it).
//!
//! Memory bound: about 120 bytes per remembered connection, at most [`MAX_REMEMBERED`]. When
//! full, connections with no failure since their last success are forgotten first; a new
//! connection is not remembered while every remembered one is failing.

use crate::provider::RefreshError;
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;

/// Most connections remembered.
pub const MAX_REMEMBERED: usize = 200_000;

/// What kind of failure a connection's current run of failures is (its latest failure).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// `invalid_grant` from the token endpoint.
    InvalidGrant,
    /// `invalid_client`: the app's credentials.
    InvalidClient,
    /// `server_error`, a network failure: the provider's side.
    ProviderError,
    /// Another token endpoint error (`unauthorized_client`, `unsupported_grant_type`, other).
    OtherRefresh,
    /// A 401 that means the token set is dead (not `TokenExpired`).
    Unauthorized,
}

impl Failure {
    pub fn of_refresh(e: RefreshError) -> Failure {
        match e {
            RefreshError::InvalidGrant => Failure::InvalidGrant,
            RefreshError::InvalidClient => Failure::InvalidClient,
            RefreshError::ServerError | RefreshError::Network => Failure::ProviderError,
            RefreshError::UnauthorizedClient
            | RefreshError::UnsupportedGrantType
            | RefreshError::Other => Failure::OtherRefresh,
        }
    }

    /// How the evidence names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::InvalidGrant => "invalid_grant",
            Failure::InvalidClient => "invalid_client",
            Failure::ProviderError => "a server error or network failure at the token endpoint",
            Failure::OtherRefresh => "a token endpoint error",
            Failure::Unauthorized => "401 on the API",
        }
    }

    /// A failure that says the token set is dead (the ones a revocation or an expiry leaves).
    pub fn is_dead_token(self) -> bool {
        matches!(self, Failure::InvalidGrant | Failure::Unauthorized)
    }
}

/// The failures since a connection's last success.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FailureRun {
    /// The latest failure's kind.
    pub kind: Failure,
    pub first: DateTime<Utc>,
    pub last: DateTime<Utc>,
    pub count: u32,
    /// Of which `invalid_grant`.
    pub invalid_grants: u32,
}

/// What the events said about one connection.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Facts {
    pub last_success: Option<DateTime<Utc>>,
    pub failing: Option<FailureRun>,
    /// The last refresh race seen (a second success inside the grace period, or
    /// `invalid_grant` right after a success).
    pub race: Option<DateTime<Utc>>,
    /// The last time the stored refresh token went back to an earlier value.
    pub reverted: Option<DateTime<Utc>>,
    /// The last 401 `TokenExpired` not followed by a successful API call.
    pub token_expired: Option<DateTime<Utc>>,
    /// The last 403 not followed by a successful API call.
    pub forbidden: Option<DateTime<Utc>>,
    /// The user who authorised it, as the proxy read it from the `id_token` of the token set
    /// whose access token the tenant's calls carry (Xero's `xero_userid`).
    pub user: Option<Arc<str>>,
}

impl Facts {
    fn failing_now(&self) -> bool {
        self.failing.is_some()
    }

    /// What two inlets said about one connection (the app's events by connection id, the
    /// proxy's by tenant): the later of each time; a run of failures that a later success in
    /// the other ended is over; counts are the larger (both may have seen the same answers).
    pub fn merge(&self, other: &Facts) -> Facts {
        let last_success = self.last_success.max(other.last_success);
        let runs = [self.failing, other.failing]
            .into_iter()
            .flatten()
            .filter(|r| last_success.is_none_or(|s| r.last > s));
        let failing = runs.reduce(|a, b| FailureRun {
            kind: if b.last > a.last { b.kind } else { a.kind },
            first: a.first.min(b.first),
            last: a.last.max(b.last),
            count: a.count.max(b.count),
            invalid_grants: a.invalid_grants.max(b.invalid_grants),
        });
        Facts {
            last_success,
            failing,
            race: self.race.max(other.race),
            reverted: self.reverted.max(other.reverted),
            token_expired: self.token_expired.max(other.token_expired),
            forbidden: self.forbidden.max(other.forbidden),
            user: self.user.clone().or_else(|| other.user.clone()),
        }
    }
}

/// What happened, as the memory records it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Seen {
    Refreshed,
    Failed(Failure),
    Race,
    Reverted,
    ApiOk,
    TokenExpired,
    Forbidden,
}

/// Per-connection facts (see the module documentation).
#[derive(Debug, Default)]
pub struct Memory {
    facts: HashMap<u64, Facts>,
    hasher: std::collections::hash_map::RandomState,
    /// New connections not remembered since the memory was last found full: a flood of new
    /// ids sweeps the map once per [`SWEEP_EVERY`] of them, not once each.
    refused: u64,
}

/// While full, new connections between two sweeps for healthy ones to forget.
const SWEEP_EVERY: u64 = 4096;

impl Memory {
    fn key(&self, provider: &str, connection: &str) -> u64 {
        self.hasher.hash_one((provider, connection))
    }

    /// The facts of a connection to update, unless the memory is full of failing ones.
    fn entry(&mut self, provider: &str, connection: &str) -> Option<&mut Facts> {
        let key = self.key(provider, connection);
        if self.facts.len() >= MAX_REMEMBERED && !self.facts.contains_key(&key) {
            if self.refused.is_multiple_of(SWEEP_EVERY) {
                self.facts.retain(|_, f| f.failing_now());
            }
            if self.facts.len() >= MAX_REMEMBERED {
                self.refused += 1;
                return None;
            }
            self.refused = 0;
        }
        Some(self.facts.entry(key).or_default())
    }

    /// The user who authorised a connection (see [`Facts::user`]).
    pub fn set_user(&mut self, provider: &str, connection: &str, user: Arc<str>) {
        if let Some(f) = self.entry(provider, connection) {
            if f.user.as_deref() != Some(&*user) {
                f.user = Some(user);
            }
        }
    }

    /// Record what happened to a connection at `at`.
    pub fn record(&mut self, provider: &str, connection: &str, at: DateTime<Utc>, seen: Seen) {
        let Some(f) = self.entry(provider, connection) else {
            return;
        };
        let later = |t: &mut Option<DateTime<Utc>>| *t = (*t).max(Some(at));
        match seen {
            Seen::Refreshed => {
                later(&mut f.last_success);
                // A success ends the run of failures before it (events may arrive out of
                // order: an older success does not).
                if f.failing.is_some_and(|r| r.last <= at) {
                    f.failing = None;
                }
            }
            Seen::Failed(kind) => {
                if f.last_success.is_some_and(|s| s > at) {
                    return;
                }
                let ig = u32::from(kind == Failure::InvalidGrant);
                f.failing = Some(match f.failing {
                    Some(r) => FailureRun {
                        kind: if at >= r.last { kind } else { r.kind },
                        first: r.first.min(at),
                        last: r.last.max(at),
                        count: r.count.saturating_add(1),
                        invalid_grants: r.invalid_grants.saturating_add(ig),
                    },
                    None => FailureRun {
                        kind,
                        first: at,
                        last: at,
                        count: 1,
                        invalid_grants: ig,
                    },
                });
            }
            Seen::Race => later(&mut f.race),
            Seen::Reverted => later(&mut f.reverted),
            Seen::ApiOk => {
                if f.token_expired.is_some_and(|t| t <= at) {
                    f.token_expired = None;
                }
                if f.forbidden.is_some_and(|t| t <= at) {
                    f.forbidden = None;
                }
            }
            Seen::TokenExpired => later(&mut f.token_expired),
            Seen::Forbidden => later(&mut f.forbidden),
        }
    }

    /// What is known of a connection.
    pub fn facts(&self, provider: &str, connection: &str) -> Option<&Facts> {
        if self.facts.is_empty() {
            return None;
        }
        self.facts.get(&self.key(provider, connection))
    }

    pub fn len(&self) -> usize {
        self.facts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.facts.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone};

    fn t(min: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0).unwrap() + Duration::minutes(min)
    }

    #[test]
    fn a_run_of_failures_ends_with_a_later_success_only() {
        let mut m = Memory::default();
        m.record("xero", "c", t(0), Seen::Failed(Failure::InvalidGrant));
        m.record("xero", "c", t(2), Seen::Failed(Failure::InvalidGrant));
        m.record("xero", "c", t(1), Seen::Failed(Failure::Unauthorized));
        let run = m.facts("xero", "c").unwrap().failing.unwrap();
        assert_eq!(
            (run.first, run.last, run.count, run.invalid_grants),
            (t(0), t(2), 3, 2)
        );
        assert_eq!(run.kind, Failure::InvalidGrant, "the latest failure's kind");
        // An older success (arriving late) does not end the run; a newer one does.
        m.record("xero", "c", t(-5), Seen::Refreshed);
        assert!(m.facts("xero", "c").unwrap().failing.is_some());
        m.record("xero", "c", t(3), Seen::Refreshed);
        assert!(m.facts("xero", "c").unwrap().failing.is_none());
        // A failure older than the last success is history.
        m.record("xero", "c", t(2), Seen::Failed(Failure::InvalidGrant));
        assert!(m.facts("xero", "c").unwrap().failing.is_none());
        // Another provider's connection of the same id is another connection.
        assert!(m.facts("quickbooks", "c").is_none());
    }

    #[test]
    fn api_answers_clear_what_an_earlier_401_or_403_said() {
        let mut m = Memory::default();
        m.record("xero", "c", t(0), Seen::TokenExpired);
        m.record("xero", "c", t(0), Seen::Forbidden);
        m.record("xero", "c", t(-1), Seen::ApiOk);
        assert!(m.facts("xero", "c").unwrap().token_expired.is_some());
        m.record("xero", "c", t(1), Seen::ApiOk);
        let f = m.facts("xero", "c").unwrap();
        assert!(f.token_expired.is_none() && f.forbidden.is_none());
    }

    #[test]
    fn when_full_healthy_connections_are_forgotten_first() {
        let mut m = Memory::default();
        for i in 0..MAX_REMEMBERED {
            let seen = if i % 2 == 0 {
                Seen::Refreshed
            } else {
                Seen::Failed(Failure::InvalidGrant)
            };
            m.record("xero", &i.to_string(), t(0), seen);
        }
        m.record("xero", "new", t(1), Seen::Failed(Failure::InvalidClient));
        assert_eq!(m.len(), MAX_REMEMBERED / 2 + 1);
        assert!(m.facts("xero", "1").is_some() && m.facts("xero", "0").is_none());
        assert!(m.facts("xero", "new").is_some());
        // Full of failing connections: a flood of new ones is refused, sweeping rarely.
        for i in 0..MAX_REMEMBERED {
            m.record(
                "xero",
                &format!("f{i}"),
                t(2),
                Seen::Failed(Failure::InvalidGrant),
            );
        }
        assert_eq!(m.len(), MAX_REMEMBERED);
        assert!(m.refused > 0 && m.facts("xero", "new").is_some());
    }
}
