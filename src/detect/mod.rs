//! Detectors: what no single event shows, derived from the stream of events per connection.
//!
//! - distinct connections failing within `detect.window` (a password change, a removed user, a
//!   rotated secret or a Xero incident fails many at once) — `oauth_connections_failing`;
//! - connections retrying `invalid_grant` in a loop (at least `detect.retry_loop_failures`
//!   within the window) — `oauth_connections_retrying_invalid_grant`;
//! - refresh races: two successful refreshes of one connection inside the provider's grace
//!   period, or an `invalid_grant` right after a success — `oauth_token_refresh_races_total`.
//!
//! - stored refresh tokens that go back to an earlier value ([`regression`]).
//!
//! Memory bound of the event detectors ([`Detector`]): per tracked connection a 64-bit keyed
//! hash of its id (never the id, however long the sender made it), the last success, the last
//! failure and at most `retry_loop_failures` `invalid_grant` times — about 100 bytes plus 12 per
//! retained `invalid_grant` — dropped once they leave the window. At most [`MAX_TRACKED`]
//! connections per inlet: when full, entries outside the window are dropped first, and a new
//! connection is not tracked while every tracked one is inside it. A flood of failures, of
//! distinct ids or of long ids does not grow it past that.

pub mod memory;
pub mod regression;

use crate::clock::SharedClock;
use crate::provider::{ProviderKind, RefreshError};
use chrono::{DateTime, Duration, Utc};
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Mutex;

fn window_ms(window: std::time::Duration) -> i64 {
    i64::try_from(window.as_millis()).unwrap_or(15 * 60 * 1000)
}

/// Most connections tracked per inlet.
pub const MAX_TRACKED: usize = 1_000_000;

#[derive(Debug, Default)]
struct Conn {
    last_success: Option<DateTime<Utc>>,
    /// The latest failure (all a "failing in the window" needs).
    last_failure: Option<DateTime<Utc>>,
    invalid_grants: VecDeque<DateTime<Utc>>,
}

#[derive(Debug, Default)]
struct Inlet {
    /// By keyed hash of the connection id.
    conns: HashMap<u64, Conn>,
}

impl Inlet {
    /// The entry of `key`, or `None` when the inlet is full of connections inside the window.
    fn entry(&mut self, key: u64, since: DateTime<Utc>) -> Option<&mut Conn> {
        if self.conns.len() >= MAX_TRACKED && !self.conns.contains_key(&key) {
            self.conns.retain(|_, c| {
                c.last_success.is_some_and(|t| t >= since)
                    || c.last_failure.is_some_and(|t| t >= since)
            });
            if self.conns.len() >= MAX_TRACKED {
                return None;
            }
        }
        Some(self.conns.entry(key).or_default())
    }
}

/// Shared detector state for every event inlet.
#[derive(Debug)]
pub struct Detector {
    clock: SharedClock,
    /// `detect.window` in milliseconds and `detect.retry_loop_failures` (a reload may change
    /// them).
    window_ms: AtomicI64,
    retry_loop: AtomicUsize,
    inlets: Mutex<HashMap<(&'static str, String), Inlet>>,
    /// Keys the connection-id hashes (random per process).
    hasher: std::collections::hash_map::RandomState,
    /// Per-connection facts for the diagnosis, kept past the window.
    memory: Mutex<memory::Memory>,
}

/// Window in which a second success or an `invalid_grant` after a success means a race.
fn race_window(provider: &str) -> Duration {
    let grace = ProviderKind::ALL
        .into_iter()
        .find(|k| k.as_str() == provider)
        .map(|k| k.profile().rotation_grace_period)
        .unwrap_or_else(Duration::zero);
    grace.max(Duration::seconds(60))
}

fn prune(q: &mut VecDeque<DateTime<Utc>>, since: DateTime<Utc>) {
    while q.front().is_some_and(|t| *t < since) {
        q.pop_front();
    }
}

impl Detector {
    pub fn new(window: std::time::Duration, retry_loop: usize, clock: SharedClock) -> Self {
        Detector {
            clock,
            window_ms: AtomicI64::new(window_ms(window)),
            retry_loop: AtomicUsize::new(retry_loop.max(2)),
            inlets: Mutex::new(HashMap::new()),
            hasher: std::collections::hash_map::RandomState::new(),
            memory: Mutex::new(memory::Memory::default()),
        }
    }

    /// Take new settings (a config reload); what is tracked stays.
    pub fn reconfigure(&self, window: std::time::Duration, retry_loop: usize) {
        self.window_ms.store(window_ms(window), Ordering::Relaxed);
        self.retry_loop.store(retry_loop.max(2), Ordering::Relaxed);
    }

    fn window(&self) -> Duration {
        Duration::milliseconds(self.window_ms.load(Ordering::Relaxed))
    }

    fn retry_loop(&self) -> usize {
        self.retry_loop.load(Ordering::Relaxed)
    }

    fn remember(&self, provider: &str, connection: &str, at: DateTime<Utc>, seen: memory::Seen) {
        self.memory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(provider, connection, at, seen);
    }

    /// Run `f` over the per-connection facts (one lock for a whole diagnosis).
    pub fn with_memory<T>(&self, f: impl FnOnce(&memory::Memory) -> T) -> T {
        f(&self.memory.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Now, as the exporter's clock says.
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// `detect.window` as configured now.
    pub fn current_window(&self) -> Duration {
        self.window()
    }

    /// `detect.retry_loop_failures` as configured now.
    pub fn current_retry_loop(&self) -> usize {
        self.retry_loop()
    }

    /// Observe a refresh; returns whether it reveals a race.
    pub fn refresh(
        &self,
        provider: &'static str,
        source: &str,
        connection: &str,
        at: Option<DateTime<Utc>>,
        failure: Option<RefreshError>,
    ) -> bool {
        let at = at.unwrap_or_else(|| self.clock.now());
        let race = self.refresh_in_window(provider, source, connection, at, failure);
        let seen = match failure {
            None => memory::Seen::Refreshed,
            Some(e) => memory::Seen::Failed(memory::Failure::of_refresh(e)),
        };
        self.remember(provider, connection, at, seen);
        if race {
            self.remember(provider, connection, at, memory::Seen::Race);
        }
        race
    }

    /// An API answer other than a dead-token 401 (see [`Detector::api_failure`]): a success
    /// clears an earlier 401 `TokenExpired` or 403; those two are remembered.
    pub fn api_answer(
        &self,
        provider: &'static str,
        connection: &str,
        at: Option<DateTime<Utc>>,
        outcome: crate::model::ApiOutcome,
    ) {
        use crate::model::{ApiOutcome, UnauthorizedReason};
        let seen = match outcome {
            ApiOutcome::Ok => memory::Seen::ApiOk,
            ApiOutcome::Unauthorized(UnauthorizedReason::TokenExpired) => {
                memory::Seen::TokenExpired
            }
            ApiOutcome::Forbidden => memory::Seen::Forbidden,
            _ => return,
        };
        let at = at.unwrap_or_else(|| self.clock.now());
        self.remember(provider, connection, at, seen);
    }

    /// The user who authorised a connection (a tenant, for the proxy), as an `id_token` said.
    pub fn authorised_by(
        &self,
        provider: &'static str,
        connection: &str,
        user: std::sync::Arc<str>,
    ) {
        self.memory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set_user(provider, connection, user);
    }

    /// The stored refresh token of a connection went back to an earlier value.
    pub fn reverted(&self, provider: &'static str, connection: &str) {
        let at = self.clock.now();
        self.remember(provider, connection, at, memory::Seen::Reverted);
    }

    fn refresh_in_window(
        &self,
        provider: &'static str,
        source: &str,
        connection: &str,
        at: DateTime<Utc>,
        failure: Option<RefreshError>,
    ) -> bool {
        let key = self.hasher.hash_one(connection);
        let mut inlets = self.inlets.lock().unwrap_or_else(|e| e.into_inner());
        let inlet = inlets.entry((provider, source.to_string())).or_default();
        let Some(c) = inlet.entry(key, at - self.window()) else {
            return false;
        };
        let recent_success = c
            .last_success
            .is_some_and(|t| at >= t && at - t <= race_window(provider));
        match failure {
            None => {
                c.last_success = Some(at);
                recent_success
            }
            Some(err) => {
                c.last_failure = c.last_failure.max(Some(at));
                let invalid_grant = err == RefreshError::InvalidGrant;
                if invalid_grant {
                    // The latest `retry_loop` are all a loop needs: memory stays bounded
                    // however many failures arrive within the window.
                    c.invalid_grants.push_back(at);
                    while c.invalid_grants.len() > self.retry_loop() {
                        c.invalid_grants.pop_front();
                    }
                }
                invalid_grant && recent_success
            }
        }
    }

    /// Observe an API answer that means the token set is dead (401 not `TokenExpired`).
    pub fn api_failure(
        &self,
        provider: &'static str,
        source: &str,
        connection: &str,
        at: Option<DateTime<Utc>>,
    ) {
        let at = at.unwrap_or_else(|| self.clock.now());
        self.remember(
            provider,
            connection,
            at,
            memory::Seen::Failed(memory::Failure::Unauthorized),
        );
        let key = self.hasher.hash_one(connection);
        let mut inlets = self.inlets.lock().unwrap_or_else(|e| e.into_inner());
        let inlet = inlets.entry((provider, source.to_string())).or_default();
        if let Some(c) = inlet.entry(key, at - self.window()) {
            c.last_failure = c.last_failure.max(Some(at));
        }
    }

    /// Make sure an inlet is reported (at 0) before any event.
    pub fn init(&self, provider: &'static str, source: &str) {
        self.inlets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((provider, source.to_string()))
            .or_default();
    }

    /// Per inlet: (provider, source, connections failing in the window, connections in a retry
    /// loop). Drops what has left the window.
    pub fn snapshot(&self) -> Vec<(&'static str, String, u64, u64)> {
        let now = self.clock.now();
        let since = now - self.window();
        let (window, retry_loop) = (self.window(), self.retry_loop());
        let mut inlets = self.inlets.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for ((provider, source), inlet) in inlets.iter_mut() {
            let (mut failing, mut looping) = (0, 0);
            inlet.conns.retain(|_, c| {
                if c.last_failure.is_some_and(|t| t < since) {
                    c.last_failure = None;
                }
                prune(&mut c.invalid_grants, since);
                if c.last_failure.is_some() {
                    failing += 1;
                }
                if c.invalid_grants.len() >= retry_loop {
                    looping += 1;
                }
                c.last_failure.is_some()
                    || c.last_success
                        .is_some_and(|t| now - t <= race_window(provider).max(window))
            });
            out.push((*provider, source.clone(), failing, looping));
        }
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0).unwrap()
    }

    fn detector() -> (Detector, std::sync::Arc<crate::clock::ManualClock>) {
        let clock = crate::clock::ManualClock::new(t0());
        (
            Detector::new(std::time::Duration::from_secs(900), 5, clock.clone()),
            clock,
        )
    }

    #[test]
    fn many_connections_failing_at_once_are_counted_within_the_window_only() {
        let (d, clock) = detector();
        for i in 0..12 {
            d.refresh(
                "xero",
                "app",
                &format!("c{i}"),
                None,
                Some(RefreshError::InvalidGrant),
            );
        }
        d.api_failure("xero", "app", "c99", Some(t0()));
        clock.advance(Duration::minutes(1));
        assert_eq!(d.snapshot(), [("xero", "app".to_string(), 13, 0)]);
        clock.advance(Duration::minutes(15));
        assert_eq!(d.snapshot(), [("xero", "app".to_string(), 0, 0)]);
    }

    #[test]
    fn a_connection_retrying_invalid_grant_is_a_loop_from_the_fifth_failure() {
        let (d, clock) = detector();
        for i in 0..4 {
            d.refresh(
                "xero",
                "app",
                "stuck",
                Some(t0() + Duration::seconds(i * 30)),
                Some(RefreshError::InvalidGrant),
            );
        }
        clock.advance(Duration::minutes(2));
        assert_eq!(d.snapshot()[0].3, 0);
        d.refresh(
            "xero",
            "app",
            "stuck",
            None,
            Some(RefreshError::InvalidGrant),
        );
        assert_eq!(d.snapshot()[0].3, 1);
    }

    #[test]
    fn a_flood_of_failures_keeps_a_bounded_state_per_connection() {
        let (d, _) = detector();
        for i in 0..10_000 {
            d.refresh(
                "xero",
                "app",
                "flood",
                Some(t0() + Duration::milliseconds(i)),
                Some(RefreshError::InvalidGrant),
            );
        }
        let inlets = d.inlets.lock().unwrap();
        let c = &inlets[&("xero", "app".to_string())].conns[&d.hasher.hash_one("flood")];
        assert_eq!(c.invalid_grants.len(), 5);
        drop(inlets);
        assert_eq!(d.snapshot(), [("xero", "app".to_string(), 1, 1)]);
    }

    /// Distinct, long ids (a hostile sender) cost a hash each, and at most [`MAX_TRACKED`].
    #[test]
    fn distinct_long_ids_are_kept_as_hashes_and_bounded() {
        let (d, _) = detector();
        let long = "x".repeat(100_000);
        for i in 0..MAX_TRACKED + 10 {
            d.api_failure("xero", "proxy", &format!("{i}{long:.1}"), None);
        }
        d.api_failure("xero", "proxy", &long, None);
        let inlets = d.inlets.lock().unwrap();
        assert_eq!(
            inlets[&("xero", "proxy".to_string())].conns.len(),
            MAX_TRACKED
        );
    }

    #[test]
    fn races_are_two_successes_inside_the_grace_or_invalid_grant_right_after_a_success() {
        let (d, _) = detector();
        let at = |m: i64| Some(t0() + Duration::minutes(m));
        assert!(!d.refresh("xero", "app", "a", at(0), None));
        assert!(
            d.refresh("xero", "app", "a", at(10), None),
            "second success inside 30 min"
        );
        assert!(
            !d.refresh("xero", "app", "a", at(50), None),
            "40 min later is a normal refresh"
        );
        assert!(
            d.refresh("xero", "app", "a", at(51), Some(RefreshError::InvalidGrant)),
            "stale token right after"
        );
        assert!(
            !d.refresh("xero", "app", "b", at(0), Some(RefreshError::InvalidGrant)),
            "no success before: not a race"
        );
    }
}
