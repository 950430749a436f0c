//! Collectors and registries: the *state* registry (per-connection gauges and per-source
//! aggregates, encoded from the snapshots once per poll) and the *live* registry (self-health,
//! event counters and the detectors' gauges, encoded on every scrape).

use super::catalogue::{names, BuildLabels, EventCounter};
use super::live::Live;
use crate::detect::Detector;
use crate::model::{
    Connection, SourceHandle, SourceSet, SourceSnapshot, Status, Windows, EXPIRING_WINDOWS,
};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::hash::{Hash, Hasher};
use std::ops::Range;
use std::sync::{Arc, Mutex};

/// One source as an encode sees it: its handle and the snapshot it had when the encode began
/// (every part of one encode reads the same snapshot).
pub type SourceView = (Arc<SourceHandle>, Arc<SourceSnapshot>);

/// The per-connection families, in exposition order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnFamily {
    LastRefresh,
    Age,
    RefreshExpiry,
    Expired,
    AccessExpiry,
    Status,
    Info,
}

impl ConnFamily {
    const ALL: [ConnFamily; 7] = [
        ConnFamily::LastRefresh,
        ConnFamily::Age,
        ConnFamily::RefreshExpiry,
        ConnFamily::Expired,
        ConnFamily::AccessExpiry,
        ConnFamily::Status,
        ConnFamily::Info,
    ];

    /// The families exported; `relative` adds the age (`--collector.relative-metrics`).
    pub fn exported(relative: bool) -> impl Iterator<Item = ConnFamily> {
        Self::ALL
            .into_iter()
            .filter(move |f| relative || *f != ConnFamily::Age)
    }

    fn desc(self) -> (&'static str, &'static str) {
        use names::*;
        match self {
            ConnFamily::LastRefresh => LAST_REFRESH,
            ConnFamily::Age => AGE,
            ConnFamily::RefreshExpiry => REFRESH_EXPIRY,
            ConnFamily::Expired => EXPIRED,
            ConnFamily::AccessExpiry => ACCESS_EXPIRY,
            ConnFamily::Status => STATUS,
            ConnFamily::Info => INFO,
        }
    }

    /// Feed what this family exports of `c` (besides its identity) to `h`: two connections
    /// with the same identity and the same feed encode to the same lines.
    pub fn hash_value(self, c: &Connection, h: &mut impl Hasher) {
        match self {
            ConnFamily::LastRefresh => h.write_u64(c.last_refresh.to_bits()),
            ConnFamily::Age => h.write_u64(c.age.to_bits()),
            ConnFamily::RefreshExpiry => h.write_u64(c.refresh_expiry.to_bits()),
            ConnFamily::Expired => h.write_u8(u8::from(c.expired)),
            ConnFamily::AccessExpiry => c.access_expiry.map(f64::to_bits).hash(h),
            ConnFamily::Status => h.write_usize(c.status.index()),
            ConnFamily::Info => c.labels.hash(h),
        }
    }
}

/// What the [`StateCollector`] encodes when the registry is encoded next: the exposition
/// encodes the state in parts, so that a block of connections whose lines have not changed
/// since the last encode is not encoded again.
#[derive(Debug, Default)]
pub enum Part {
    #[default]
    Nothing,
    /// A per-connection family's `# HELP` and `# TYPE` lines alone.
    Descriptor(ConnFamily),
    /// A per-connection family's descriptor, then its lines for the connections of one
    /// source whose indexes `order[range]` lists (the caller drops the descriptor).
    Block {
        family: ConnFamily,
        source: SourceView,
        order: Arc<Vec<u32>>,
        range: Range<usize>,
    },
    /// The per-source families, whole.
    Aggregates(Arc<Vec<SourceView>>),
    /// The diagnosis of every exported connection, as of the encode.
    Diagnosis(Arc<Vec<crate::diagnosis::SourceDiagnosis>>),
}

/// Encodes the [`Part`] it is given of the snapshots of every source.
#[derive(Debug)]
pub struct StateCollector {
    pub part: Arc<Mutex<Part>>,
}

type Lbl<'a> = (&'static str, &'a str);

fn family<'a>(
    enc: &'a mut DescriptorEncoder,
    (name, help): (&'a str, &str),
    kind: MetricType,
) -> Result<prometheus_client::encoding::MetricEncoder<'a>, std::fmt::Error> {
    enc.encode_descriptor(name, help, None, kind)
}

fn block(
    enc: &mut DescriptorEncoder,
    fam: ConnFamily,
    (src, snap): &SourceView,
    indexes: &[u32],
) -> Result<(), std::fmt::Error> {
    let mut f = family(enc, fam.desc(), MetricType::Gauge)?;
    for c in indexes.iter().map(|i| &snap.connections[*i as usize]) {
        let id: [Lbl; 4] = [
            ("provider", c.provider),
            ("source", &src.name),
            ("connection", &c.id),
            ("tenant", &c.tenant),
        ];
        let value = match fam {
            ConnFamily::LastRefresh => c.last_refresh,
            ConnFamily::Age => c.age,
            ConnFamily::RefreshExpiry => c.refresh_expiry,
            ConnFamily::Expired => f64::from(u8::from(c.expired)),
            ConnFamily::AccessExpiry => match c.access_expiry {
                Some(v) => v,
                None => continue,
            },
            ConnFamily::Status => {
                for st in Status::ALL {
                    let labels: [Lbl; 5] = [id[0], id[1], id[2], id[3], ("status", st.as_str())];
                    ConstGauge::new(i64::from(c.status == st)).encode(f.encode_family(&labels)?)?;
                }
                continue;
            }
            ConnFamily::Info => {
                let mut labels: Vec<(&str, &str)> = Vec::with_capacity(4 + c.labels.len());
                labels.extend(id);
                for (name, v) in src.label_names.iter().zip(&c.labels) {
                    labels.push((name.as_str(), v.as_str()));
                }
                ConstGauge::new(1i64).encode(f.encode_family(&labels)?)?;
                continue;
            }
        };
        ConstGauge::new(value).encode(f.encode_family(&id)?)?;
    }
    Ok(())
}

fn per_source(
    enc: &mut DescriptorEncoder,
    views: &[SourceView],
    desc: (&str, &str),
    extra: Option<(&'static str, &[&str])>,
    value: impl Fn(&crate::model::Aggregates, usize) -> u64,
) -> Result<(), std::fmt::Error> {
    let mut f = family(enc, desc, MetricType::Gauge)?;
    for (src, snap) in views {
        for p in &snap.providers {
            match extra {
                Some((key, values)) => {
                    for (i, v) in values.iter().enumerate() {
                        let labels: [Lbl; 3] =
                            [("provider", p.provider), ("source", &src.name), (key, v)];
                        ConstGauge::new(value(&p.aggregates, i) as i64)
                            .encode(f.encode_family(&labels)?)?;
                    }
                }
                None => {
                    let labels: [Lbl; 2] = [("provider", p.provider), ("source", &src.name)];
                    ConstGauge::new(value(&p.aggregates, 0) as i64)
                        .encode(f.encode_family(&labels)?)?;
                }
            }
        }
    }
    Ok(())
}

fn aggregates(enc: &mut DescriptorEncoder, views: &[SourceView]) -> Result<(), std::fmt::Error> {
    use names::*;
    let statuses: Vec<&str> = Status::ALL.iter().map(|s| s.as_str()).collect();
    per_source(
        enc,
        views,
        CONNECTIONS,
        Some(("status", &statuses)),
        |a, i| a.by_status[i],
    )?;
    let windows: Vec<&str> = EXPIRING_WINDOWS.iter().map(|(w, _)| *w).collect();
    per_source(enc, views, EXPIRING, Some(("within", &windows)), |a, i| {
        a.expiring[i]
    })?;
    for (desc, value) in [
        (
            REFRESH_WINDOW,
            (|w: &Windows| Some(w.refresh)) as fn(&Windows) -> Option<f64>,
        ),
        (ACCESS_LIFETIME, |w: &Windows| Some(w.access)),
        (MAX_LIFETIME, |w: &Windows| w.max),
    ] {
        let mut f = family(enc, desc, MetricType::Gauge)?;
        for (src, snap) in views {
            for p in &snap.providers {
                if let Some(v) = value(&p.windows) {
                    let labels: [Lbl; 2] = [("provider", p.provider), ("source", &src.name)];
                    ConstGauge::new(v).encode(f.encode_family(&labels)?)?;
                }
            }
        }
    }
    let mut f = family(enc, TRUNCATED, MetricType::Gauge)?;
    for (src, snap) in views {
        let labels: [Lbl; 1] = [("source", &src.name)];
        ConstGauge::new(snap.truncated as i64).encode(f.encode_family(&labels)?)?;
    }
    Ok(())
}

/// `oauth_connection_diagnosis` (failing and at-risk connections) and
/// `oauth_connections_by_diagnosis` (every source and provider, every cause).
fn diagnosis(
    enc: &mut DescriptorEncoder,
    diagnosed: &[crate::diagnosis::SourceDiagnosis],
) -> Result<(), std::fmt::Error> {
    use names::*;
    {
        let mut f = family(enc, DIAGNOSIS, MetricType::Gauge)?;
        for s in diagnosed {
            // By id, so that a store returning its rows in another order changes nothing.
            let mut listed: Vec<_> = s
                .snapshot
                .connections
                .iter()
                .zip(&s.diagnoses)
                .filter(|(_, d)| !d.is_healthy())
                .collect();
            listed.sort_unstable_by(|a, b| (&a.0.id, a.0.provider).cmp(&(&b.0.id, b.0.provider)));
            for (c, d) in listed {
                for cause in d.causes.iter() {
                    let labels: [Lbl; 5] = [
                        ("provider", c.provider),
                        ("source", &s.source.name),
                        ("connection", &c.id),
                        ("tenant", &c.tenant),
                        ("cause", cause.as_str()),
                    ];
                    ConstGauge::new(1).encode(f.encode_family(&labels)?)?;
                }
            }
        }
    }
    let mut f = family(enc, BY_DIAGNOSIS, MetricType::Gauge)?;
    for s in diagnosed {
        for p in &s.snapshot.providers {
            let mut counts = [0i64; crate::diagnosis::Cause::ALL.len()];
            for (c, d) in s.snapshot.connections.iter().zip(&s.diagnoses) {
                if c.provider == p.provider {
                    counts[d.cause() as usize] += 1;
                }
            }
            for cause in crate::diagnosis::Cause::ALL {
                let labels: [Lbl; 3] = [
                    ("provider", p.provider),
                    ("source", &s.source.name),
                    ("cause", cause.as_str()),
                ];
                ConstGauge::new(counts[cause as usize]).encode(f.encode_family(&labels)?)?;
            }
        }
    }
    Ok(())
}

impl Collector for StateCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let part = self.part.lock().unwrap_or_else(|e| e.into_inner());
        match &*part {
            Part::Nothing => Ok(()),
            Part::Descriptor(f) => family(&mut enc, f.desc(), MetricType::Gauge).map(drop),
            Part::Block {
                family,
                source,
                order,
                range,
            } => block(&mut enc, *family, source, &order[range.clone()]),
            Part::Aggregates(views) => aggregates(&mut enc, views),
            Part::Diagnosis(diagnosed) => diagnosis(&mut enc, diagnosed),
        }
    }
}

/// The state registry: one collector, encoding the [`Part`] `part` holds.
pub fn state_registry(part: Arc<Mutex<Part>>) -> Registry {
    let mut state = Registry::default();
    state.register_collector(Box::new(StateCollector { part }));
    state
}

/// Gauges computed at scrape time: failing connections (sources from their last poll, event
/// inlets from the detector over the window as of now) and retry loops.
#[derive(Debug)]
pub struct DetectCollector {
    sources: SourceSet,
    detector: Arc<Detector>,
}

impl Collector for DetectCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use names::*;
        let inlets = self.detector.snapshot();
        {
            let mut f = family(&mut enc, FAILING, MetricType::Gauge)?;
            for src in self.sources.get().iter() {
                for p in &src.snapshot().providers {
                    let labels: [Lbl; 2] = [("provider", p.provider), ("source", &src.name)];
                    ConstGauge::new(p.aggregates.failing as i64)
                        .encode(f.encode_family(&labels)?)?;
                }
            }
            for (provider, source, failing, _) in &inlets {
                let labels: [Lbl; 2] = [("provider", provider), ("source", source)];
                ConstGauge::new(*failing as i64).encode(f.encode_family(&labels)?)?;
            }
        }
        {
            let mut f = family(&mut enc, RETRYING, MetricType::Gauge)?;
            for (provider, source, _, looping) in &inlets {
                let labels: [Lbl; 2] = [("provider", provider), ("source", source)];
                ConstGauge::new(*looping as i64).encode(f.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// The app's client secrets' expiry (`client_secrets`), files read at scrape time.
#[derive(Debug)]
struct ClientSecretCollector {
    live: Arc<Live>,
}

impl Collector for ClientSecretCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut secrets = self
            .live
            .client_secrets
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if secrets.is_empty() {
            return Ok(());
        }
        let mut f = family(&mut enc, names::CLIENT_SECRET_EXPIRY, MetricType::Gauge)?;
        for s in secrets.iter_mut() {
            let Some(t) = s.current() else { continue };
            let labels: [Lbl; 2] = [("provider", &s.cfg.provider), ("client", &s.cfg.client)];
            ConstGauge::new(t).encode(f.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// The live registry over `live` (series are created at their start values by whoever owns
/// them: `pipeline::Health` for self-health, `pipeline::Sink::init` for event counters);
/// `persistence` adds the persistence file's write errors.
pub fn live_registry(
    live: &Arc<Live>,
    sources: &SourceSet,
    detector: Arc<Detector>,
    persistence: bool,
) -> Registry {
    let mut r = Registry::default();
    use names::*;
    r.register(UP.0, UP.1, live.up.clone());
    r.register(LAST_SUCCESS.0, LAST_SUCCESS.1, live.last_success.clone());
    r.register(DURATION.0, DURATION.1, live.duration.clone());
    r.register(ERRORS.0, ERRORS.1, live.errors.clone());
    r.register(REJECTED.0, REJECTED.1, live.rejected.clone());
    r.register(REMOVED.0, REMOVED.1, live.removed.clone());
    for c in EventCounter::ALL {
        let (name, help) = c.desc();
        r.register(name, help, live.events.family(*c).clone());
    }
    r.register(
        RATE_LIMIT_REMAINING.0,
        RATE_LIMIT_REMAINING.1,
        live.events.rate_limit_remaining.clone(),
    );
    let build: Family<BuildLabels, Gauge> = Family::default();
    build
        .get_or_create(&BuildLabels {
            version: env!("CARGO_PKG_VERSION"),
            revision: env!("OAUTH_EXPORTER_REVISION"),
            rustversion: env!("OAUTH_EXPORTER_RUSTC"),
        })
        .set(1);
    r.register(BUILD_INFO.0, BUILD_INFO.1, build);
    r.register_collector(Box::new(DetectCollector {
        sources: sources.clone(),
        detector,
    }));
    r.register_collector(Box::new(ClientSecretCollector { live: live.clone() }));
    r.register(
        CONFIG_RELOAD_OK.0,
        CONFIG_RELOAD_OK.1,
        live.config_reload_ok.clone(),
    );
    r.register(
        CONFIG_RELOAD_TIME.0,
        CONFIG_RELOAD_TIME.1,
        live.config_reload_time.clone(),
    );
    r.register(
        SCRAPE_DURATION.0,
        SCRAPE_DURATION.1,
        live.scrape_duration.clone(),
    );
    r.register(
        EVENT_TABLE_LEADER.0,
        EVENT_TABLE_LEADER.1,
        live.event_table_leader.clone(),
    );
    r.register(SHARD_INFO.0, SHARD_INFO.1, live.shard_info.clone());
    r.register(SHARD_COUNT.0, SHARD_COUNT.1, live.shard_count.clone());
    r.register_collector(Box::new(super::process::ProcessCollector));
    if persistence {
        let (name, help) = STATE_WRITE_ERRORS;
        r.register(name, help, live.state_write_errors.clone());
    }
    r
}
