//! Token state as exported: one [`SourceSnapshot`] per source, replaced whole after each poll.

use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;

/// Connection status, exported as a state set (`oauth_connection_status{status}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Active,
    NeedsReauth,
    Revoked,
    Unknown,
}

impl Status {
    pub const ALL: [Status; 4] = [
        Status::Active,
        Status::NeedsReauth,
        Status::Revoked,
        Status::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
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
    pub tenant: Option<String>,
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
    pub tenant: String,
    pub labels: Vec<String>,
    pub last_refresh: f64,
    pub age: f64,
    pub refresh_expiry: f64,
    pub expired: bool,
    pub access_expiry: Option<f64>,
    pub status: Status,
}

/// Counts over every connection of a source (not capped).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Aggregates {
    pub by_status: [u64; 4],
    /// Cumulative counts per [`EXPIRING_WINDOWS`] entry (not yet expired, expiring within).
    pub expiring: [u64; 4],
    pub failing: u64,
}

/// What one successful poll of a source produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SourceSnapshot {
    pub polled_at: Option<DateTime<Utc>>,
    /// Exported connections: the ones closest to expiry, up to the cap, in query order.
    pub connections: Vec<Connection>,
    pub aggregates: Aggregates,
    /// Connections left out by the cap.
    pub truncated: u64,
}

fn epoch(t: DateTime<Utc>) -> f64 {
    t.timestamp_millis() as f64 / 1000.0
}

impl SourceSnapshot {
    /// Build a snapshot as of `now`, keeping at most `cap` connections (those expiring first).
    pub fn build(
        mut rows: Vec<MappedConnection>,
        now: DateTime<Utc>,
        cap: usize,
        failing_window: Duration,
    ) -> SourceSnapshot {
        let mut agg = Aggregates::default();
        for r in &rows {
            let expired = r.refresh_expiry <= now;
            agg.by_status[status_of(r, expired).index()] += 1;
            if !expired {
                let left = r.refresh_expiry - now;
                for (i, (_, days)) in EXPIRING_WINDOWS.iter().enumerate() {
                    if left <= Duration::days(*days) {
                        agg.expiring[i] += 1;
                    }
                }
            }
            if let Some(f) = r.last_failure {
                if f > r.last_refresh && now - f <= failing_window {
                    agg.failing += 1;
                }
            }
        }
        let total = rows.len();
        if total > cap {
            rows.select_nth_unstable_by(cap, |a, b| {
                a.refresh_expiry
                    .cmp(&b.refresh_expiry)
                    .then_with(|| a.id.cmp(&b.id))
            });
            rows.truncate(cap);
        }
        let connections = rows
            .into_iter()
            .map(|r| {
                let expired = r.refresh_expiry <= now;
                Connection {
                    status: status_of(&r, expired),
                    tenant: r.tenant.unwrap_or_default(),
                    labels: r.labels,
                    last_refresh: epoch(r.last_refresh),
                    age: (now - r.last_refresh).num_milliseconds() as f64 / 1000.0,
                    refresh_expiry: epoch(r.refresh_expiry),
                    expired,
                    access_expiry: r.access_expiry.map(epoch),
                    id: r.id,
                }
            })
            .collect();
        SourceSnapshot {
            polled_at: Some(now),
            connections,
            aggregates: agg,
            truncated: (total.saturating_sub(cap)) as u64,
        }
    }
}

/// The store's status when mapped; otherwise derived: expired means re-authorisation is needed.
fn status_of(r: &MappedConnection, expired: bool) -> Status {
    match r.stored_status {
        Some(s) => s,
        None if expired => Status::NeedsReauth,
        None => Status::Active,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn conn(id: &str, idle_days: i64, now: DateTime<Utc>) -> MappedConnection {
        let last = now - Duration::days(idle_days);
        MappedConnection {
            id: id.into(),
            tenant: Some(format!("t-{id}")),
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
        let s = SourceSnapshot::build(rows, now, 100, Duration::minutes(15));
        assert_eq!(s.aggregates.expiring, [1, 1, 1, 2]);
        assert_eq!(s.aggregates.by_status[Status::Active.index()], 3);
        assert_eq!(s.aggregates.by_status[Status::NeedsReauth.index()], 1);
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
        let s = SourceSnapshot::build(rows, now, 3, Duration::minutes(15));
        let mut ids: Vec<_> = s.connections.iter().map(|c| c.id.as_str()).collect();
        ids.sort();
        assert_eq!(ids, ["c7", "c8", "c9"]);
        assert_eq!(s.truncated, 7);
        assert_eq!(s.aggregates.by_status.iter().sum::<u64>(), 10);
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
        let s = SourceSnapshot::build(vec![a, b, c], now, 10, Duration::minutes(15));
        assert_eq!(s.aggregates.failing, 1);
    }

    #[test]
    fn status_names_are_read_loosely() {
        assert_eq!(Status::from_name("Needs-Reauth"), Some(Status::NeedsReauth));
        assert_eq!(Status::from_name(" ACTIVE "), Some(Status::Active));
        assert_eq!(Status::from_name("paused"), None);
    }
}
