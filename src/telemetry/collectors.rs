//! Collectors and registries: the *state* registry (per-connection gauges and per-source
//! aggregates, encoded from the snapshots once per poll) and the *live* registry (self-health,
//! event counters and the detectors' gauges, encoded on every scrape).

use super::catalogue::{names, BuildLabels, EventCounter};
use super::live::Live;
use crate::detect::Detector;
use crate::model::{SourceSet, Status, Windows, EXPIRING_WINDOWS};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::sync::Arc;

/// Encodes the snapshots of every source.
#[derive(Debug)]
pub struct StateCollector {
    pub sources: SourceSet,
    /// Export `oauth_refresh_token_age_seconds` (`--collector.relative-metrics`).
    pub relative: bool,
}

type Lbl<'a> = (&'static str, &'a str);

fn family<'a>(
    enc: &'a mut DescriptorEncoder,
    (name, help): (&'a str, &str),
    kind: MetricType,
) -> Result<prometheus_client::encoding::MetricEncoder<'a>, std::fmt::Error> {
    enc.encode_descriptor(name, help, None, kind)
}

impl StateCollector {
    fn per_connection(
        &self,
        enc: &mut DescriptorEncoder,
        desc: (&str, &str),
        value: impl Fn(&crate::model::Connection) -> Option<f64>,
    ) -> Result<(), std::fmt::Error> {
        let mut f = family(enc, desc, MetricType::Gauge)?;
        for src in self.sources.get().iter() {
            let snap = src.snapshot();
            for c in &snap.connections {
                if let Some(v) = value(c) {
                    let labels: [Lbl; 4] = [
                        ("provider", c.provider),
                        ("source", &src.name),
                        ("connection", &c.id),
                        ("tenant", &c.tenant),
                    ];
                    ConstGauge::new(v).encode(f.encode_family(&labels)?)?;
                }
            }
        }
        Ok(())
    }

    fn per_source(
        &self,
        enc: &mut DescriptorEncoder,
        desc: (&str, &str),
        extra: Option<(&'static str, &[&str])>,
        value: impl Fn(&crate::model::Aggregates, usize) -> u64,
    ) -> Result<(), std::fmt::Error> {
        let mut f = family(enc, desc, MetricType::Gauge)?;
        for src in self.sources.get().iter() {
            let snap = src.snapshot();
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
}

impl Collector for StateCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use names::*;
        self.per_connection(&mut enc, LAST_REFRESH, |c| Some(c.last_refresh))?;
        if self.relative {
            self.per_connection(&mut enc, AGE, |c| Some(c.age))?;
        }
        self.per_connection(&mut enc, REFRESH_EXPIRY, |c| Some(c.refresh_expiry))?;
        self.per_connection(&mut enc, EXPIRED, |c| {
            Some(if c.expired { 1.0 } else { 0.0 })
        })?;
        self.per_connection(&mut enc, ACCESS_EXPIRY, |c| c.access_expiry)?;
        {
            let mut f = family(&mut enc, STATUS, MetricType::Gauge)?;
            for src in self.sources.get().iter() {
                let snap = src.snapshot();
                for c in &snap.connections {
                    for st in Status::ALL {
                        let labels: [Lbl; 5] = [
                            ("provider", c.provider),
                            ("source", &src.name),
                            ("connection", &c.id),
                            ("tenant", &c.tenant),
                            ("status", st.as_str()),
                        ];
                        ConstGauge::new(i64::from(c.status == st))
                            .encode(f.encode_family(&labels)?)?;
                    }
                }
            }
        }
        {
            let mut f = family(&mut enc, INFO, MetricType::Gauge)?;
            for src in self.sources.get().iter() {
                let snap = src.snapshot();
                for c in &snap.connections {
                    let mut labels: Vec<(&str, &str)> = Vec::with_capacity(4 + c.labels.len());
                    labels.extend([
                        ("provider", c.provider),
                        ("source", src.name.as_str()),
                        ("connection", c.id.as_str()),
                        ("tenant", c.tenant.as_str()),
                    ]);
                    for (name, v) in src.label_names.iter().zip(&c.labels) {
                        labels.push((name.as_str(), v.as_str()));
                    }
                    ConstGauge::new(1i64).encode(f.encode_family(&labels)?)?;
                }
            }
        }
        let statuses: Vec<&str> = Status::ALL.iter().map(|s| s.as_str()).collect();
        self.per_source(
            &mut enc,
            CONNECTIONS,
            Some(("status", &statuses)),
            |a, i| a.by_status[i],
        )?;
        let windows: Vec<&str> = EXPIRING_WINDOWS.iter().map(|(w, _)| *w).collect();
        self.per_source(&mut enc, EXPIRING, Some(("within", &windows)), |a, i| {
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
            let mut f = family(&mut enc, desc, MetricType::Gauge)?;
            for src in self.sources.get().iter() {
                for p in &src.snapshot().providers {
                    if let Some(v) = value(&p.windows) {
                        let labels: [Lbl; 2] = [("provider", p.provider), ("source", &src.name)];
                        ConstGauge::new(v).encode(f.encode_family(&labels)?)?;
                    }
                }
            }
        }
        {
            let mut f = family(&mut enc, TRUNCATED, MetricType::Gauge)?;
            for src in self.sources.get().iter() {
                let labels: [Lbl; 1] = [("source", &src.name)];
                ConstGauge::new(src.snapshot().truncated as i64)
                    .encode(f.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// The state registry: one collector over every source's snapshot.
pub fn state_registry(sources: SourceSet, relative: bool) -> Registry {
    let mut state = Registry::default();
    state.register_collector(Box::new(StateCollector { sources, relative }));
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
        let mut f = family(&mut enc, RETRYING, MetricType::Gauge)?;
        for (provider, source, _, looping) in &inlets {
            let labels: [Lbl; 2] = [("provider", provider), ("source", source)];
            ConstGauge::new(*looping as i64).encode(f.encode_family(&labels)?)?;
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
