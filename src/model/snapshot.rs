//! Token state as exported: one [`SourceSnapshot`] per source, replaced whole after each poll.

use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;

/// Connection status, exported as a state set (`oauth_connection_status{status}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Active,
    /// The last refresh failed and no later one succeeded; the provider may still accept a
    /// retry (it has not been marked for re-authorisation yet).
    Failing,
    NeedsReauth,
    Revoked,
    Unknown,
}

impl Status {
    pub const ALL: [Status; 5] = [
        Status::Active,
        Status::Failing,
        Status::NeedsReauth,
        Status::Revoked,
        Status::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Failing => "failing",
            Status::NeedsReauth => "needs_reauth",
            Status::Revoked => "revoked",
            Status::Unknown => "unknown",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// A store value equal to a status name (any case, `-` or ` ` for `_`).
    pub fn from_name(s: &str) -> Option<Status> {
        let norm = s.trim().to_lowercase().replace(['-', ' '], "_");
        Status::ALL.into_iter().find(|st| st.as_str() == norm)
    }
}

/// The `within` windows of `oauth_connections_expiring`.
pub const EXPIRING_WINDOWS: [(&str, i64); 4] = [("1d", 1), ("7d", 7), ("14d", 14), ("30d", 30)];

/// One row after mapping, before it is placed in a snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct MappedConnection {
    pub id: String,
    /// The `provider` label: the source's provider, or the row's own where the source maps
    /// one per row.
    pub provider: &'static str,
    pub tenant: Option<String>,
    /// Who authorised it, when the `user` field is mapped.
    pub user: Option<String>,
    /// Values of the configured extra labels, in config order ("" when NULL).
    pub labels: Vec<String>,
    pub last_refresh: DateTime<Utc>,
    pub refresh_expiry: DateTime<Utc>,
    pub access_expiry: Option<DateTime<Utc>>,
    pub last_failure: Option<DateTime<Utc>>,
    /// Status from the store, when a status field is mapped.
    pub stored_status: Option<Status>,
    /// Keyed hash of the stored refresh token, when the field is mapped (never the token).
    pub token_hash: Option<u64>,
}

/// One exported connection, values as of the poll.
#[derive(Debug, Clone, PartialEq)]
pub struct Connection {
    pub id: String,
    pub provider: &'static str,
    pub tenant: String,
    /// Who authorised it (the `user` field; not exported as a label).
    pub user: Option<String>,
    pub labels: Vec<String>,
    pub last_refresh: f64,
    pub age: f64,
    pub refresh_expiry: f64,
    pub expired: bool,
    pub access_expiry: Option<f64>,
    pub status: Status,
}

/// Counts over every connection of a source and provider (not capped).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Aggregates {
    pub by_status: [u64; 5],
    /// Cumulative counts per [`EXPIRING_WINDOWS`] entry (not yet expired, expiring within).
    pub expiring: [u64; 4],
    pub failing: u64,
}

/// A provider's windows as configured for a source, in seconds (exported so that alerts and
/// dashboards use each provider's own window).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Windows {
    pub refresh: f64,
    pub access: f64,
    pub max: Option<f64>,
}

impl Windows {
    pub fn of(p: &crate::provider::ProviderProfile) -> Windows {
        Windows {
            refresh: p.refresh_token_idle_lifetime.num_seconds() as f64,
            access: p.access_token_lifetime.num_seconds() as f64,
            max: p.refresh_token_max_lifetime.map(|d| d.num_seconds() as f64),
        }
    }
}

/// One provider of a source: its windows and the counts over its connections.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderState {
    pub provider: &'static str,
    pub windows: Windows,
    pub aggregates: Aggregates,
}

/// What one successful poll of a source produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SourceSnapshot {
    pub polled_at: Option<DateTime<Utc>>,
    /// Exported connections: the ones closest to expiry, up to the cap, in query order.
    pub connections: Vec<Connection>,
    /// Per provider, by name: the source's own always, and every other one its rows named.
    pub providers: Vec<ProviderState>,
    /// Connections left out by the cap.
    pub truncated: u64,
    /// Rows the poll rejected (each counted in `oauth_exporter_rows_rejected_total`).
    pub rejected: u64,
}

fn epoch(t: DateTime<Utc>) -> f64 {
    t.timestamp_millis() as f64 / 1000.0
}

impl SourceSnapshot {
    /// The snapshot before the first poll: the source's own provider with no connection.
    pub fn empty(provider: &'static str, windows: Windows) -> SourceSnapshot {
        SourceSnapshot {
            providers: vec![ProviderState {
                provider,
                windows,
                aggregates: Aggregates::default(),
            }],
            ..SourceSnapshot::default()
        }
    }

    /// Counts over every provider.
    pub fn totals(&self) -> Aggregates {
        let mut t = Aggregates::default();
        for p in &self.providers {
            for (a, b) in t.by_status.iter_mut().zip(p.aggregates.by_status) {
                *a += b;
            }
            for (a, b) in t.expiring.iter_mut().zip(p.aggregates.expiring) {
                *a += b;
            }
            t.failing += p.aggregates.failing;
        }
        t
    }

    /// Build a snapshot as of `now` from every row at once (see [`Accumulator`], which builds
    /// it row by row).
    pub fn build(
        rows: Vec<MappedConnection>,
        now: DateTime<Utc>,
        cap: usize,
        failing_window: Duration,
        providers: Vec<(&'static str, Windows)>,
    ) -> SourceSnapshot {
        let mut acc = Accumulator::new(now, cap, failing_window);
        for (row, r) in rows.into_iter().enumerate() {
            let i = providers
                .iter()
                .position(|p| p.0 == r.provider)
                .unwrap_or(0);
            acc.add(i, row, r);
        }
        acc.finish(providers)
    }
}

/// Builds a [`SourceSnapshot`] one row at a time, holding only what is exported: the
/// aggregates of every row, and the `cap` connections closest to expiry (a bounded heap), so
/// that memory follows the cap, not the fleet.
#[derive(Debug)]
pub struct Accumulator {
    now: DateTime<Utc>,
    cap: usize,
    failing_window: Duration,
    /// Aggregates per provider index (as the caller numbers its providers).
    aggregates: Vec<Aggregates>,
    /// The kept connections in row order while fewer than the cap (no heap to maintain for a
    /// fleet under its cap) ...
    filling: Vec<Kept>,
    /// ... then a heap whose top is the one expiring last, the first to leave.
    kept: std::collections::BinaryHeap<Kept>,
    total: u64,
}

/// A kept connection, ordered by expiry then id (the order the cap keeps by), with its row.
#[derive(Debug)]
struct Kept {
    expiry: DateTime<Utc>,
    row: usize,
    connection: Connection,
}

impl PartialEq for Kept {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == std::cmp::Ordering::Equal
    }
}
impl Eq for Kept {}
impl PartialOrd for Kept {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Kept {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.expiry
            .cmp(&other.expiry)
            .then_with(|| self.connection.id.cmp(&other.connection.id))
    }
}

impl Accumulator {
    pub fn new(now: DateTime<Utc>, cap: usize, failing_window: Duration) -> Self {
        Accumulator {
            now,
            cap,
            failing_window,
            aggregates: Vec::new(),
            filling: Vec::with_capacity(cap.min(1 << 16)),
            kept: std::collections::BinaryHeap::new(),
            total: 0,
        }
    }

    /// Add row number `row` (its query order) of provider index `provider`.
    pub fn add(&mut self, provider: usize, row: usize, r: MappedConnection) {
        let now = self.now;
        if self.aggregates.len() <= provider {
            self.aggregates.resize(provider + 1, Aggregates::default());
        }
        let agg = &mut self.aggregates[provider];
        let expired = r.refresh_expiry <= now;
        let status = status_of(&r, expired);
        agg.by_status[status.index()] += 1;
        if !expired {
            let left = r.refresh_expiry - now;
            for (i, (_, days)) in EXPIRING_WINDOWS.iter().enumerate() {
                if left <= Duration::days(*days) {
                    agg.expiring[i] += 1;
                }
            }
        }
        if let Some(f) = r.last_failure {
            if f > r.last_refresh && now - f <= self.failing_window {
                agg.failing += 1;
            }
        }
        self.total += 1;
        if self.filling.len() >= self.cap {
            // The cap is reached: from now on the farthest expiry leaves first.
            self.kept = std::collections::BinaryHeap::from(std::mem::take(&mut self.filling));
        }
        if self.kept.len() >= self.cap {
            // Full: keep it only if it expires before the last kept one.
            match self.kept.peek() {
                Some(last)
                    if (r.refresh_expiry, r.id.as_str())
                        < (last.expiry, last.connection.id.as_str()) =>
                {
                    self.kept.pop();
                }
                _ => return,
            }
        }
        let kept = Kept {
            expiry: r.refresh_expiry,
            row,
            connection: Connection {
                provider: r.provider,
                status,
                tenant: r.tenant.unwrap_or_default(),
                user: r.user,
                labels: r.labels,
                last_refresh: epoch(r.last_refresh),
                age: (now - r.last_refresh).num_milliseconds() as f64 / 1000.0,
                refresh_expiry: epoch(r.refresh_expiry),
                expired,
                access_expiry: r.access_expiry.map(epoch),
                id: r.id,
            },
        };
        if self.kept.is_empty() {
            self.filling.push(kept);
        } else {
            self.kept.push(kept);
        }
    }

    /// Connections added so far.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The snapshot: the kept connections in query order, and per provider (`providers`, in
    /// the caller's numbering, the source's own first) its windows and aggregates.
    pub fn finish(self, providers: Vec<(&'static str, Windows)>) -> SourceSnapshot {
        let mut kept = if self.kept.is_empty() {
            self.filling
        } else {
            self.kept.into_vec()
        };
        if !kept.is_sorted_by_key(|k| k.row) {
            kept.sort_unstable_by_key(|k| k.row);
        }
        let connections: Vec<Connection> = kept.into_iter().map(|k| k.connection).collect();
        let mut aggregates = self.aggregates;
        let mut states: Vec<ProviderState> = providers
            .into_iter()
            .enumerate()
            .map(|(i, (provider, windows))| ProviderState {
                provider,
                windows,
                aggregates: aggregates
                    .get_mut(i)
                    .map(std::mem::take)
                    .unwrap_or_default(),
            })
            .collect();
        states.sort_by_key(|p| p.provider);
        SourceSnapshot {
            polled_at: Some(self.now),
            truncated: self.total - connections.len() as u64,
            connections,
            providers: states,
            // Set by the poll, which knows its rejections.
            rejected: 0,
        }
    }
}

/// The store's status when mapped; otherwise derived: expired means re-authorisation is
/// needed, a failure after the last refresh means failing.
fn status_of(r: &MappedConnection, expired: bool) -> Status {
    match r.stored_status {
        Some(s) => s,
        None if expired => Status::NeedsReauth,
        None if r.last_failure.is_some_and(|f| f > r.last_refresh) => Status::Failing,
        None => Status::Active,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn xero() -> Vec<(&'static str, Windows)> {
        vec![(
            "xero",
            Windows::of(&crate::provider::ProviderKind::Xero.profile()),
        )]
    }

    fn conn(id: &str, idle_days: i64, now: DateTime<Utc>) -> MappedConnection {
        let last = now - Duration::days(idle_days);
        MappedConnection {
            id: id.into(),
            provider: "xero",
            tenant: Some(format!("t-{id}")),
            user: None,
            labels: vec![],
            last_refresh: last,
            refresh_expiry: last + Duration::days(60),
            access_expiry: Some(last + Duration::minutes(30)),
            last_failure: None,
            stored_status: None,
            token_hash: None,
        }
    }

    #[test]
    fn idle_59_days_expires_within_1d_and_idle_61_days_is_expired() {
        let now = Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap();
        let rows = vec![
            conn("a", 59, now),
            conn("b", 61, now),
            conn("c", 1, now),
            conn("d", 40, now),
        ];
        let s = SourceSnapshot::build(rows, now, 100, Duration::minutes(15), xero());
        assert_eq!(s.totals().expiring, [1, 1, 1, 2]);
        assert_eq!(s.totals().by_status[Status::Active.index()], 3);
        assert_eq!(s.totals().by_status[Status::NeedsReauth.index()], 1);
        let b = s.connections.iter().find(|c| c.id == "b").unwrap();
        assert!(b.expired);
        assert_eq!(b.status, Status::NeedsReauth);
        assert_eq!(b.age, 61.0 * 86400.0);
    }

    #[test]
    fn cap_keeps_the_connections_closest_to_expiry_and_counts_the_rest() {
        let now = Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap();
        let rows = (0..10)
            .map(|i| conn(&format!("c{i}"), i * 5, now))
            .collect();
        let s = SourceSnapshot::build(rows, now, 3, Duration::minutes(15), xero());
        let mut ids: Vec<_> = s.connections.iter().map(|c| c.id.as_str()).collect();
        ids.sort();
        assert_eq!(ids, ["c7", "c8", "c9"]);
        assert_eq!(s.truncated, 7);
        assert_eq!(s.totals().by_status.iter().sum::<u64>(), 10);
    }

    #[test]
    fn failing_counts_failures_after_the_last_refresh_within_the_window() {
        let now = Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap();
        let mut a = conn("a", 2, now);
        a.last_failure = Some(now - Duration::minutes(5));
        let mut b = conn("b", 2, now);
        b.last_failure = Some(now - Duration::hours(5));
        let mut c = conn("c", 0, now);
        c.last_failure = Some(now - Duration::days(1));
        let s = SourceSnapshot::build(vec![a, b, c], now, 10, Duration::minutes(15), xero());
        assert_eq!(s.totals().failing, 1);
    }

    #[test]
    fn a_failure_after_the_last_refresh_is_failing_and_counts_per_provider() {
        let now = Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap();
        let mut a = conn("a", 2, now);
        a.last_failure = Some(now - Duration::days(1));
        let mut b = conn("b", 2, now);
        b.last_failure = Some(now - Duration::days(3));
        let mut q = conn("q", 2, now);
        q.provider = "quickbooks";
        let windows = Windows::of(&crate::provider::ProviderKind::Quickbooks.profile());
        let mut providers = xero();
        providers.push(("quickbooks", windows));
        let s = SourceSnapshot::build(vec![a, b, q], now, 10, Duration::minutes(15), providers);
        let status = |id: &str| s.connections.iter().find(|c| c.id == id).unwrap().status;
        assert_eq!(status("a"), Status::Failing);
        assert_eq!(
            status("b"),
            Status::Active,
            "failed before the last refresh"
        );
        let names: Vec<&str> = s.providers.iter().map(|p| p.provider).collect();
        assert_eq!(names, ["quickbooks", "xero"]);
        assert_eq!(
            s.providers[0].aggregates.by_status[Status::Active.index()],
            1
        );
        assert_eq!(
            s.providers[1].aggregates.by_status[Status::Failing.index()],
            1
        );
        assert_eq!(s.providers[0].windows.refresh, 100.0 * 86400.0);
    }

    #[test]
    fn status_names_are_read_loosely() {
        assert_eq!(Status::from_name("Needs-Reauth"), Some(Status::NeedsReauth));
        assert_eq!(Status::from_name(" ACTIVE "), Some(Status::Active));
        assert_eq!(Status::from_name("paused"), None);
    }
}
