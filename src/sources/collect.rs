//! One poll's rows, collected as they stream in: each row is mapped, checked for a duplicate
//! and folded into the snapshot ([`Accumulator`]: aggregates of every row, only the capped
//! connections kept) the moment the store yields it. Nothing the size of the fleet is held but
//! one 64-bit key per connection id (to find duplicates and, against the previous poll,
//! removals), so memory follows what is exported.

use super::mapping::{self, Rejection, Resolved};
use super::{KeySet, RowSink};
use crate::config::SourceConfig;
use crate::model::{Accumulator, MappedConnection, RejectReason, SourceSnapshot, Windows};
use crate::provider::{ProviderKind, ProviderProfile};
use crate::timestamp::Cell;
use chrono::{DateTime, Duration, Utc};
use std::collections::HashMap;

/// Most distinct provider names taken from stores (`unknown_providers: {export: true}`).
const MAX_STORE_PROVIDER_NAMES: usize = 256;
/// Most distinct provider names remembered per source (names beyond are looked up each time).
const MAX_CACHED_NAMES: usize = 4096;
/// Rejected rows kept with their details per poll (for the log); all are counted.
pub const MAX_REJECTION_DETAILS: usize = 1000;

/// The key of a connection id in a poll: the id's 64-bit hash with its low 8 bits replaced by
/// the row's provider index (indexes past 255 share 255), so that one set of 8-byte keys both
/// finds duplicate ids and says, for removals, which provider a vanished id had. A collision
/// of the remaining 56 bits (about 1 in 10^5 at a million connections) would hide one removal
/// or reject one row as a duplicate.
pub fn connection_key(id: &str, provider: usize) -> u64 {
    (super::id_hash(id) & !0xff) | provider.min(0xff) as u64
}

/// The provider index packed into a [`connection_key`].
pub fn key_provider(key: u64) -> usize {
    (key & 0xff) as usize
}

/// The profile of each row's provider: the source's own (with its overrides) when the row names
/// none or names it, a built-in profile for a name the exporter knows (`quickbooks-sandbox` is
/// QuickBooks), or, with `unknown_providers`, a custom profile under the row's own name.
struct Providers<'a> {
    cfg: &'a SourceConfig,
    /// Index 0 is the source's own.
    profiles: Vec<ProviderProfile>,
    by_name: HashMap<String, Option<usize>>,
}

impl<'a> Providers<'a> {
    fn new(cfg: &'a SourceConfig) -> Self {
        Providers {
            cfg,
            profiles: vec![cfg.provider.clone()],
            by_name: HashMap::new(),
        }
    }

    fn add(&mut self, p: ProviderProfile) -> usize {
        match self.profiles.iter().position(|q| q.name == p.name) {
            Some(i) => i,
            None => {
                self.profiles.push(p);
                self.profiles.len() - 1
            }
        }
    }

    /// The profile index for a row naming `name`; `None`: leave the row out.
    fn index(&mut self, name: Option<String>) -> Option<usize> {
        let Some(name) = name else { return Some(0) };
        if let Some(i) = self.by_name.get(&name) {
            return *i;
        }
        let own = self.cfg.provider.kind;
        let i = match ProviderKind::from_provider_name(&name) {
            Some(kind) if kind == own => Some(0),
            Some(kind) => Some(self.add(kind.profile())),
            None => self.cfg.unknown_providers.map(|u| {
                let label: String = name
                    .to_ascii_lowercase()
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                    .take(32)
                    .collect();
                let label = crate::config::common::intern_within(&label, MAX_STORE_PROVIDER_NAMES)
                    .unwrap_or("custom");
                let mut p = ProviderKind::Custom.profile();
                p.name = label;
                p.access_token_lifetime = u.access_token_lifetime;
                p.refresh_token_idle_lifetime = u.refresh_token_lifetime;
                self.add(p)
            }),
        };
        if self.by_name.len() < MAX_CACHED_NAMES {
            self.by_name.insert(name, i);
        }
        i
    }
}

/// Rows rejected in one poll: counted by reason, the first [`MAX_REJECTION_DETAILS`] kept
/// with their row number for the log.
#[derive(Debug, Default)]
pub struct Rejections {
    pub counts: HashMap<RejectReason, u64>,
    pub details: Vec<(usize, Rejection)>,
}

impl Rejections {
    fn add(&mut self, row: usize, r: Rejection) {
        *self.counts.entry(r.reason).or_default() += 1;
        if self.details.len() < MAX_REJECTION_DETAILS {
            self.details.push((row, r));
        }
    }

    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }
}

/// What one poll collected, beyond the snapshot.
#[derive(Debug)]
pub struct Collected {
    pub snapshot: SourceSnapshot,
    pub rejections: Rejections,
    /// [`connection_key`]s of every connection id seen (rejected rows whose id could be read
    /// included), to count removals at the next poll.
    pub keys: KeySet,
    /// The provider of each index packed into the keys.
    pub providers: Vec<&'static str>,
    /// Rows left out: their provider has no profile and `unknown_providers` does not export
    /// them.
    pub skipped: u64,
    /// Extra labels no row had a value for (a key in no document, a column NULL in every row),
    /// when there were rows.
    pub empty_labels: Vec<String>,
}

/// Called with each connection that maps a stored refresh token: its key, the token's keyed
/// hash and the connection.
pub type TokenObserver<'a> = dyn FnMut(u64, u64, &MappedConnection) + Send + 'a;

/// Collects one poll's rows into a snapshot (see the module documentation).
pub struct PollRows<'a> {
    cfg: &'a SourceConfig,
    now: DateTime<Utc>,
    resolved: Option<Resolved>,
    providers: Providers<'a>,
    acc: Accumulator,
    keys: KeySet,
    rejections: Rejections,
    skipped: u64,
    row: usize,
    tokens: Option<Box<TokenObserver<'a>>>,
    labels_present: Vec<u64>,
}

impl<'a> PollRows<'a> {
    /// `expected` sizes the key set (the previous poll's count); `tokens` sees the stored
    /// refresh tokens.
    pub fn new(
        cfg: &'a SourceConfig,
        now: DateTime<Utc>,
        failing_window: Duration,
        expected: usize,
        tokens: Option<Box<TokenObserver<'a>>>,
    ) -> Self {
        PollRows {
            cfg,
            now,
            resolved: None,
            providers: Providers::new(cfg),
            acc: Accumulator::new(now, cfg.max_connections, failing_window),
            keys: KeySet::with_capacity_and_hasher(expected, Default::default()),
            rejections: Rejections::default(),
            skipped: 0,
            row: 0,
            tokens,
            labels_present: Vec::new(),
        }
    }

    /// Whether a connection id, by its key under provider 0, was already seen under any
    /// provider.
    fn seen(&self, base: u64) -> bool {
        (0..self.providers.profiles.len().min(0x100))
            .any(|p| self.keys.contains(&(base | p as u64)))
    }

    pub fn finish(self) -> Collected {
        let providers: Vec<(&'static str, Windows)> = self
            .providers
            .profiles
            .iter()
            .map(|p| (p.name(), Windows::of(p)))
            .collect();
        let empty_labels = if self.row == 0 {
            Vec::new()
        } else {
            self.cfg
                .mapping
                .labels
                .iter()
                .enumerate()
                .filter(|(i, _)| self.labels_present.get(*i).copied().unwrap_or(0) == 0)
                .map(|(_, (name, _))| name.clone())
                .collect()
        };
        Collected {
            empty_labels,
            providers: providers.iter().map(|p| p.0).collect(),
            snapshot: self.acc.finish(providers),
            rejections: self.rejections,
            keys: self.keys,
            skipped: self.skipped,
        }
    }
}

impl RowSink for PollRows<'_> {
    fn resolved(&mut self, r: Resolved) {
        self.resolved = Some(r);
    }

    fn row(&mut self, cells: &[Cell]) {
        self.row += 1;
        let Some(r) = &self.resolved else { return };
        mapping::count_labels_present(r, cells, &mut self.labels_present);
        let Some(p) = self.providers.index(mapping::row_provider(r, cells)) else {
            self.skipped += 1;
            return;
        };
        let profile = &self.providers.profiles[p];
        let (row, rejections) = (self.row, &mut self.rejections);
        let mut field_rejected = |rej| rejections.add(row, rej);
        let mapped = mapping::map_row(
            r,
            &self.cfg.mapping,
            cells,
            profile,
            self.now,
            &mut field_rejected,
        );
        // Another shard's row (already left out by the query where the store computes the
        // hash); a rejected row without an id is shard 0's.
        let id = match &mapped {
            Ok(c) => Some(c.id.as_str()),
            Err(rej) => rej.connection.as_deref(),
        };
        if !self.cfg.shard_in_query && !self.cfg.shard.owns_row(id) {
            return;
        }
        match mapped {
            Ok(c) => {
                let base = connection_key(&c.id, 0);
                if self.seen(base) {
                    self.rejections.add(
                        self.row,
                        Rejection {
                            connection: Some(c.id),
                            reason: RejectReason::DuplicateConnection,
                            field: "connection",
                        },
                    );
                    return;
                }
                let key = base | p.min(0xff) as u64;
                self.keys.insert(key);
                if let (Some(observe), Some(h)) = (self.tokens.as_deref_mut(), c.token_hash) {
                    observe(key, h, &c);
                }
                self.acc.add(p, self.row, c);
            }
            Err(rej) => {
                if let Some(id) = &rej.connection {
                    self.keys.insert(connection_key(id, p));
                }
                self.rejections.add(self.row, rej);
            }
        }
    }

    fn reject(&mut self, r: Rejection) {
        self.row += 1;
        if !self.cfg.shard_in_query && !self.cfg.shard.owns_row(r.connection.as_deref()) {
            return;
        }
        if let Some(id) = &r.connection {
            self.keys.insert(connection_key(id, 0));
        }
        self.rejections.add(self.row, r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use crate::model::Status;
    use chrono::TimeZone;

    fn source(extra: &str) -> SourceConfig {
        let text = format!(
            "sources:\n  - name: t\n    kind: sqlite\n    dsn: x.db\n    query: SELECT 1\n    fields:\n      connection: id\n      last_refresh: lr\n      provider: p\n{extra}"
        );
        config::parse(&text, "t.yml", &|_| None)
            .unwrap_or_else(|e| panic!("{e}"))
            .sources
            .remove(0)
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0).unwrap()
    }

    fn collect(cfg: &SourceConfig, rows: &[(&str, i64, &str)]) -> Collected {
        let cols: Vec<String> = ["id", "lr", "p"].iter().map(|s| s.to_string()).collect();
        let resolved = mapping::resolve(&cfg.mapping, &cols).unwrap();
        let mut c = PollRows::new(cfg, now(), Duration::minutes(15), 0, None);
        c.resolved(resolved.clone());
        for (id, idle_days, provider) in rows {
            let lr = (now() - Duration::days(*idle_days)).to_rfc3339();
            let cells = [
                Cell::Text(id.to_string()),
                Cell::Text(lr),
                Cell::Text(provider.to_string()),
            ];
            let cells: Vec<Cell> = resolved.needed.iter().map(|&i| cells[i].clone()).collect();
            c.row(&cells);
        }
        c.finish()
    }

    #[test]
    fn a_second_row_for_an_id_is_a_duplicate_whatever_its_provider_and_the_first_one_stays() {
        let cfg = source("");
        let got = collect(
            &cfg,
            &[
                ("a", 1, "xero"),
                ("b", 2, "xero"),
                ("a", 50, "quickbooks"),
                ("a", 55, "xero"),
            ],
        );
        let ids: Vec<&str> = got
            .snapshot
            .connections
            .iter()
            .map(|c| c.id.as_str())
            .collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(
            got.snapshot.connections[0].age, 86400.0,
            "the first row of a"
        );
        assert_eq!(got.rejections.counts[&RejectReason::DuplicateConnection], 2);
        let rows: Vec<usize> = got.rejections.details.iter().map(|d| d.0).collect();
        assert_eq!(rows, [3, 4]);
        assert_eq!(got.snapshot.totals().by_status[Status::Active.index()], 2);
        assert_eq!(got.keys.len(), 2);
    }

    #[test]
    fn keys_carry_the_provider_so_removals_are_counted_under_it() {
        let cfg = source("");
        let got = collect(&cfg, &[("a", 1, "xero"), ("q", 1, "quickbooks")]);
        let providers: Vec<&str> = got
            .keys
            .iter()
            .map(|k| got.providers[key_provider(*k)])
            .collect();
        assert!(
            providers.contains(&"xero") && providers.contains(&"quickbooks"),
            "{providers:?}"
        );
        assert!(got.keys.contains(&connection_key("q", 1)));
    }

    #[test]
    fn rejections_are_all_counted_but_only_the_first_ones_kept_in_detail() {
        let cfg = source("");
        let cols: Vec<String> = ["id", "lr", "p"].iter().map(|s| s.to_string()).collect();
        let resolved = mapping::resolve(&cfg.mapping, &cols).unwrap();
        let mut c = PollRows::new(&cfg, now(), Duration::minutes(15), 0, None);
        c.resolved(resolved);
        let n = MAX_REJECTION_DETAILS + 500;
        for i in 0..n {
            c.row(&[Cell::Text(format!("c{i}")), Cell::Null, Cell::Null]);
        }
        let got = c.finish();
        assert_eq!(got.rejections.total(), n as u64);
        assert_eq!(
            got.rejections.counts[&RejectReason::NullTimestamp],
            n as u64
        );
        assert_eq!(got.rejections.details.len(), MAX_REJECTION_DETAILS);
        assert_eq!(got.keys.len(), n, "a rejected row's id is not a removal");
    }

    #[test]
    fn only_the_cap_is_kept_while_every_row_is_counted() {
        let cfg = source("    max_connections: 3\n");
        let rows: Vec<(String, i64)> = (0..1000)
            .map(|i| (format!("c{i}"), (i * 7919) % 70))
            .collect();
        let rows: Vec<(&str, i64, &str)> = rows
            .iter()
            .map(|(id, d)| (id.as_str(), *d, "xero"))
            .collect();
        let got = collect(&cfg, &rows);
        assert_eq!(got.snapshot.connections.len(), 3);
        assert_eq!(got.snapshot.truncated, 997);
        assert_eq!(got.snapshot.totals().by_status.iter().sum::<u64>(), 1000);
        // The kept ones are the three idle longest (closest to expiry), in row order.
        let mut reference = rows.clone();
        reference.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        let mut want: Vec<&str> = reference[..3].iter().map(|r| r.0).collect();
        want.sort_by_key(|id| rows.iter().position(|r| r.0 == *id));
        let ids: Vec<&str> = got
            .snapshot
            .connections
            .iter()
            .map(|c| c.id.as_str())
            .collect();
        assert_eq!(ids, want);
    }

    #[test]
    fn a_label_no_row_has_a_value_for_is_reported_and_one_that_some_rows_have_is_not() {
        // `p` (the provider) is set in every row, `id` too; the labels point at them and at a
        // column the rows below never fill (as a key missing from every document reads NULL).
        let cfg = source("    labels: {org: p, never: lr_missing}\n");
        let cols: Vec<String> = ["id", "lr", "p", "lr_missing"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let resolved = mapping::resolve(&cfg.mapping, &cols).unwrap();
        let mut c = PollRows::new(&cfg, now(), Duration::minutes(15), 0, None);
        c.resolved(resolved.clone());
        let all = [
            Cell::Text("a".into()),
            Cell::Text(now().to_rfc3339()),
            Cell::Text("xero".into()),
            Cell::Null,
        ];
        let cells: Vec<Cell> = resolved.needed.iter().map(|&i| all[i].clone()).collect();
        c.row(&cells);
        assert_eq!(c.finish().empty_labels, ["never"]);
        // No rows: nothing to say.
        let c = PollRows::new(&cfg, now(), Duration::minutes(15), 0, None);
        assert!(c.finish().empty_labels.is_empty());
    }
}
