//! The live part of the exposition: self-health and counters, updated by the pipeline and
//! encoded on every scrape. Event counters are generic over the catalogue's
//! [`EventCounter`] list: creating them at 0, saving and restoring them follow from it.

use super::catalogue::{
    EventCounter, EventLabels, ProviderSourceLabels, RateLimitLabels, SourceLabels,
    SourceReasonLabels, MAX_RATE_LIMIT_TENANTS,
};
use crate::model::{RejectReason, SourceErrorReason};
use crate::provider::ProviderKind;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

pub type FloatGauge = Gauge<f64, AtomicU64>;

/// Counts of one source's event counters, keyed `family|provider[|value]` (the form saved in
/// state files).
pub type Counts = BTreeMap<String, u64>;

/// Event counters: refresh outcomes and API answers, classified before they are counted.
#[derive(Debug)]
pub struct Events {
    /// One family per [`EventCounter`], in its order.
    families: Vec<Family<EventLabels, Counter>>,
    /// Last `X-*-Remaining` seen per tenant (proxy only).
    pub rate_limit_remaining: Family<RateLimitLabels, Gauge>,
    /// Tenants with a headroom series, bounded by [`MAX_RATE_LIMIT_TENANTS`].
    rate_limit_tenants: Mutex<HashSet<String>>,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            families: EventCounter::ALL
                .iter()
                .map(|_| Family::default())
                .collect(),
            rate_limit_remaining: Family::default(),
            rate_limit_tenants: Mutex::new(HashSet::new()),
        }
    }
}

fn labels(
    c: EventCounter,
    provider: &'static str,
    source: &str,
    value: Option<&'static str>,
) -> EventLabels {
    EventLabels {
        provider,
        source: source.to_string(),
        extra: c.label().zip(value),
    }
}

impl Events {
    /// The family of `c` (registered once in the live registry).
    pub fn family(&self, c: EventCounter) -> &Family<EventLabels, Counter> {
        &self.families[c as usize]
    }

    /// Add `n` to a series; `value` is the family's closed label value, if it has one.
    pub fn inc(
        &self,
        c: EventCounter,
        provider: &'static str,
        source: &str,
        value: Option<&'static str>,
        n: u64,
    ) {
        self.family(c)
            .get_or_create(&labels(c, provider, source, value))
            .inc_by(n);
    }

    /// A series' value (0 when it does not exist).
    pub fn get(
        &self,
        c: EventCounter,
        provider: &'static str,
        source: &str,
        value: Option<&'static str>,
    ) -> u64 {
        self.family(c)
            .get(&labels(c, provider, source, value))
            .map_or(0, |v| v.get())
    }

    /// Create every series of one family for an inlet at 0.
    pub fn init_family(&self, c: EventCounter, provider: &'static str, source: &str) {
        let values = c.values();
        if values.is_empty() {
            let _ = self
                .family(c)
                .get_or_create(&labels(c, provider, source, None));
        }
        for v in values {
            let _ = self
                .family(c)
                .get_or_create(&labels(c, provider, source, Some(v)));
        }
    }

    /// Create every series of an event inlet at 0, so rates work from the first scrape.
    pub fn init(&self, provider: &'static str, source: &str) {
        for c in EventCounter::ALL {
            self.init_family(*c, provider, source);
        }
    }

    /// Every non-zero event counter of `source` (all providers, all label values): what an
    /// event table saves with its cursor and `persistence` saves for the push inlets.
    pub fn snapshot(&self, source: &str) -> Counts {
        let mut out = Counts::new();
        for c in EventCounter::ALL {
            let values: Vec<Option<&'static str>> = match c.values() {
                v if v.is_empty() => vec![None],
                v => v.into_iter().map(Some).collect(),
            };
            for kind in ProviderKind::ALL {
                let provider = kind.as_str();
                for value in &values {
                    let n = self.get(*c, provider, source, *value);
                    if n > 0 {
                        let key = match value {
                            Some(v) => format!("{}|{provider}|{v}", c.key()),
                            None => format!("{}|{provider}", c.key()),
                        };
                        out.insert(key, n);
                    }
                }
            }
        }
        out
    }

    /// Add the counts of a [`Events::snapshot`] back to `source`'s counters (after a restart).
    /// Keys this version does not know are ignored.
    pub fn restore(&self, source: &str, counts: &Counts) {
        for (key, n) in counts {
            let mut parts = key.split('|');
            let (Some(name), Some(p)) = (parts.next(), parts.next()) else {
                continue;
            };
            let Some(c) = EventCounter::ALL.iter().find(|c| c.key() == name) else {
                continue;
            };
            let Some(provider) = ProviderKind::ALL
                .into_iter()
                .map(|k| k.as_str())
                .find(|k| *k == p)
            else {
                continue;
            };
            let value = match (parts.next(), c.values()) {
                (None, values) if values.is_empty() => None,
                (Some(v), values) => match values.into_iter().find(|known| *known == v) {
                    Some(known) => Some(known),
                    None => continue,
                },
                (None, _) => continue,
            };
            // Saturating: a counter restored at the top of its range stays there, never wraps
            // to 0 (a reset that rate() would read as a huge increase).
            let now = self.get(*c, provider, source, value);
            self.inc(*c, provider, source, value, (*n).min(u64::MAX - now));
        }
    }

    /// Set a tenant's headroom; a tenant beyond [`MAX_RATE_LIMIT_TENANTS`] is left out.
    pub fn set_rate_limit_remaining(&self, labels: RateLimitLabels, value: i64) {
        {
            let mut tenants = self
                .rate_limit_tenants
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if !tenants.contains(&labels.tenant) {
                if tenants.len() >= MAX_RATE_LIMIT_TENANTS {
                    return;
                }
                tenants.insert(labels.tenant.clone());
            }
        }
        self.rate_limit_remaining.get_or_create(&labels).set(value);
    }
}

/// Self-health and counters, updated by the pipeline.
#[derive(Debug)]
pub struct Live {
    pub up: Family<SourceLabels, Gauge>,
    pub last_success: Family<SourceLabels, FloatGauge>,
    pub duration: Family<SourceLabels, FloatGauge>,
    pub errors: Family<SourceReasonLabels, Counter>,
    pub rejected: Family<SourceReasonLabels, Counter>,
    pub removed: Family<ProviderSourceLabels, Counter>,
    /// 1 on the instance that reads an event table (its lease holder, or every instance when
    /// it has no lease), 0 on the others.
    pub event_table_leader: Family<SourceLabels, Gauge>,
    /// This instance's shard (label `shard`), and the number of shards.
    pub shard_info: Family<Vec<(&'static str, String)>, Gauge>,
    pub shard_count: Gauge,
    pub events: Events,
    /// Failed writes of the push inlets' persistence file (exported when it is configured).
    pub state_write_errors: Counter,
    /// How long serving `/metrics` takes.
    pub scrape_duration: Histogram,
    /// 1 when the last config reload succeeded (or none was asked for).
    pub config_reload_ok: Gauge,
    /// When the config was last loaded successfully (at start or by a reload).
    pub config_reload_time: FloatGauge,
    /// Sources whose saved counters were already added back in this process: a source is
    /// restored at most once, however often a reload restarts its inlet.
    restored: Mutex<HashSet<String>>,
    /// The app's client secrets (`client_secrets`; replaced by a reload).
    pub client_secrets: Mutex<Vec<SecretExpiry>>,
}

/// One configured client secret and, for one read from a file, the last expiry read and the
/// last error logged.
#[derive(Debug)]
pub struct SecretExpiry {
    pub cfg: crate::config::client_secrets::ClientSecret,
    last_good: Option<f64>,
    last_error: Option<String>,
}

impl SecretExpiry {
    /// The expiry as of now, in epoch seconds: a file is read again (its last good value
    /// stays, and the failure is logged once, when it cannot be read or parsed).
    pub fn current(&mut self) -> Option<f64> {
        use crate::config::client_secrets::{read_expiry_file, Expiry};
        let epoch = |t: chrono::DateTime<chrono::Utc>| t.timestamp_millis() as f64 / 1000.0;
        match &self.cfg.expiry {
            Expiry::At(t) => Some(epoch(*t)),
            Expiry::File(path) => {
                match read_expiry_file(path) {
                    Ok(t) => {
                        self.last_good = Some(epoch(t));
                        self.last_error = None;
                    }
                    Err(e) => {
                        if self.last_error.as_ref() != Some(&e) {
                            tracing::warn!(file = %path.display(), provider = %self.cfg.provider, client = %self.cfg.client, error = %e, "The client secret's expiry file cannot be used; the last value read stays exported.");
                            self.last_error = Some(e);
                        }
                    }
                }
                self.last_good
            }
        }
    }
}

impl Default for Live {
    fn default() -> Self {
        Live {
            up: Family::default(),
            last_success: Family::default(),
            duration: Family::default(),
            errors: Family::default(),
            rejected: Family::default(),
            removed: Family::default(),
            event_table_leader: Family::default(),
            shard_info: Family::default(),
            shard_count: Gauge::default(),
            events: Events::default(),
            state_write_errors: Counter::default(),
            // 1 ms to ~16 s.
            scrape_duration: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            config_reload_ok: Gauge::default(),
            config_reload_time: FloatGauge::default(),
            restored: Mutex::new(HashSet::new()),
            client_secrets: Mutex::new(Vec::new()),
        }
    }
}

fn reason(source: &str, reason: &'static str) -> SourceReasonLabels {
    SourceReasonLabels {
        source: source.to_string(),
        reason,
    }
}

impl Live {
    pub fn new() -> Self {
        Live::default()
    }

    /// Create every series of a polled source at its start value, so rates work from the
    /// first scrape.
    /// Take the configured client secrets (start, reload); an entry that stays keeps what was
    /// last read from its file.
    pub fn set_client_secrets(&self, list: &[crate::config::client_secrets::ClientSecret]) {
        let mut cur = self
            .client_secrets
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut old = std::mem::take(&mut *cur);
        for cfg in list {
            match old.iter().position(|o| o.cfg == *cfg) {
                Some(i) => cur.push(old.swap_remove(i)),
                None => cur.push(SecretExpiry {
                    cfg: cfg.clone(),
                    last_good: None,
                    last_error: None,
                }),
            }
        }
    }

    pub fn init_source(&self, source: &str, provider: &'static str) {
        let s = SourceLabels {
            source: source.to_string(),
        };
        self.up.get_or_create(&s).set(0);
        self.last_success.get_or_create(&s).set(0.0);
        self.duration.get_or_create(&s).set(0.0);
        for r in SourceErrorReason::ALL {
            let _ = self.errors.get_or_create(&reason(source, r.as_str()));
        }
        for r in RejectReason::ALL {
            let _ = self.rejected.get_or_create(&reason(source, r.as_str()));
        }
        let _ = self.removed.get_or_create(&ProviderSourceLabels {
            provider,
            source: source.to_string(),
        });
    }

    /// Create one error series at 0.
    pub fn source_error_init(&self, source: &str, r: SourceErrorReason) {
        let _ = self.errors.get_or_create(&reason(source, r.as_str()));
    }

    pub fn source_error(&self, source: &str, r: SourceErrorReason) {
        self.errors.get_or_create(&reason(source, r.as_str())).inc();
    }

    pub fn row_rejected(&self, source: &str, r: RejectReason, n: u64) {
        self.rejected
            .get_or_create(&reason(source, r.as_str()))
            .inc_by(n);
    }

    pub fn set_up(&self, source: &str, up: bool) {
        self.up
            .get_or_create(&SourceLabels {
                source: source.to_string(),
            })
            .set(i64::from(up));
    }

    /// Whether `source`'s saved counters may be added back now: true the first time only.
    pub fn restore_once(&self, source: &str) -> bool {
        self.restored
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(source.to_string())
    }

    /// Stop exporting every series of `source` (a source or inlet a config reload removed).
    pub fn forget(&self, source: &str) {
        let s = SourceLabels {
            source: source.to_string(),
        };
        self.up.remove(&s);
        self.last_success.remove(&s);
        self.duration.remove(&s);
        for r in SourceErrorReason::ALL {
            self.errors.remove(&reason(source, r.as_str()));
        }
        for r in RejectReason::ALL {
            self.rejected.remove(&reason(source, r.as_str()));
        }
        for kind in ProviderKind::ALL {
            let provider = kind.as_str();
            self.removed.remove(&ProviderSourceLabels {
                provider,
                source: source.to_string(),
            });
            for c in EventCounter::ALL {
                let values: Vec<Option<&'static str>> = match c.values() {
                    v if v.is_empty() => vec![None],
                    v => v.into_iter().map(Some).collect(),
                };
                for v in values {
                    self.events
                        .family(*c)
                        .remove(&labels(*c, provider, source, v));
                }
            }
        }
    }

    pub fn removed(&self, provider: &'static str, source: &str, n: u64) {
        self.removed
            .get_or_create(&ProviderSourceLabels {
                provider,
                source: source.to_string(),
            })
            .inc_by(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_series_are_bounded_by_tenant() {
        let e = Events::default();
        let l = |t: String| RateLimitLabels {
            provider: "xero",
            source: "proxy".into(),
            tenant: t,
            window: "day",
        };
        for i in 0..MAX_RATE_LIMIT_TENANTS + 50 {
            e.set_rate_limit_remaining(l(format!("t{i}")), 1);
        }
        e.set_rate_limit_remaining(l("t0".into()), 7);
        let tenants = e.rate_limit_tenants.lock().unwrap().len();
        assert_eq!(tenants, MAX_RATE_LIMIT_TENANTS);
        assert_eq!(
            e.rate_limit_remaining.get_or_create(&l("t0".into())).get(),
            7
        );
    }

    /// Every family of the catalogue goes through the codec: a counter added to the list is
    /// saved and restored without another change.
    #[test]
    fn every_event_counter_family_survives_a_snapshot_and_restore() {
        let a = Events::default();
        for (i, c) in EventCounter::ALL.iter().enumerate() {
            let value = c.values().last().copied();
            a.inc(*c, "xero", "app", value, i as u64 + 1);
            a.inc(*c, "quickbooks", "app", value, 100);
            a.inc(*c, "xero", "other", value, 7);
        }
        let saved = a.snapshot("app");
        assert_eq!(saved.len(), EventCounter::ALL.len() * 2, "{saved:?}");
        let b = Events::default();
        b.restore("app", &saved);
        for (i, c) in EventCounter::ALL.iter().enumerate() {
            let value = c.values().last().copied();
            assert_eq!(b.get(*c, "xero", "app", value), i as u64 + 1, "{c:?}");
            assert_eq!(b.get(*c, "quickbooks", "app", value), 100, "{c:?}");
            assert_eq!(b.get(*c, "xero", "other", value), 0, "{c:?}");
        }
        // Keys of an older or newer version are skipped, not misread.
        let mut odd = Counts::new();
        odd.insert("refreshes|nosuchprovider".into(), 5);
        odd.insert("no_such_family|xero".into(), 5);
        odd.insert("refresh_failures|xero|no_such_error".into(), 5);
        odd.insert("refresh_failures|xero".into(), 5);
        let c = Events::default();
        c.restore("app", &odd);
        assert!(c.snapshot("app").is_empty());
    }

    #[test]
    fn a_restored_counter_at_the_top_of_its_range_saturates_instead_of_wrapping() {
        let e = Events::default();
        let mut c = Counts::new();
        c.insert("refreshes|xero".into(), u64::MAX);
        e.restore("s", &c);
        e.restore("s", &c);
        assert_eq!(e.get(EventCounter::Refreshes, "xero", "s", None), u64::MAX);
    }

    /// The keys saved before the catalogue existed still restore (state files outlive versions).
    #[test]
    fn keys_saved_by_earlier_versions_are_read() {
        let e = Events::default();
        let mut old = Counts::new();
        old.insert("refreshes|xero".into(), 3);
        old.insert("refresh_failures|xero|invalid_grant".into(), 2);
        old.insert("unauthorized|xero|token_expired".into(), 4);
        old.insert("rate_limited|xero|minute".into(), 1);
        e.restore("t", &old);
        assert_eq!(e.snapshot("t"), old);
    }
}
