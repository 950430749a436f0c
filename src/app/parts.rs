//! The parts of a running exporter, each built from one piece of the config: a source (its
//! handle and poll loop) or an inlet (its routes, poll loops and listeners). A config reload
//! keeps the parts whose piece did not change and rebuilds the others.

use super::BuildError;
use crate::clock::SharedClock;
use crate::config::{Config, EventTable, Ingest, NangoWebhook, Proxy, SourceConfig};
use crate::events::{Context, Inlet, Listener};
use crate::model::SourceHandle;
use crate::pipeline::{Health, Poll, Runner, Sink, SourcePoller, Subject};
use crate::telemetry::Exposition;
use std::sync::Arc;
use std::time::Duration;

/// An inlet's config section, comparable so that a reload sees what changed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum InletConfig {
    EventTable(EventTable),
    Ingest(Ingest),
    NangoWebhook(NangoWebhook),
    Proxy(Proxy),
}

impl InletConfig {
    fn inlet(&self) -> &dyn Inlet {
        match self {
            InletConfig::EventTable(t) => t,
            InletConfig::Ingest(i) => i,
            InletConfig::NangoWebhook(n) => n,
            InletConfig::Proxy(p) => p,
        }
    }

    /// The `source` name the inlet counts under.
    pub(crate) fn source(&self) -> &str {
        match self {
            InletConfig::EventTable(t) => &t.name,
            InletConfig::Ingest(i) => &i.source,
            InletConfig::NangoWebhook(n) => &n.source,
            InletConfig::Proxy(p) => &p.source,
        }
    }

    /// What identifies it across reloads: its kind and its source name.
    pub(crate) fn key(&self) -> (&'static str, String) {
        let kind = match self {
            InletConfig::EventTable(_) => "event_table",
            InletConfig::Ingest(_) => "ingest",
            InletConfig::NangoWebhook(_) => "nango_webhook",
            InletConfig::Proxy(_) => "proxy",
        };
        (kind, self.source().to_string())
    }
}

/// Every inlet configured, in a fixed order. A new inlet adds one line here.
pub(crate) fn inlets(c: &Config) -> Vec<InletConfig> {
    let i = &c.inlets;
    let mut v: Vec<InletConfig> = Vec::new();
    v.extend(i.event_tables.iter().cloned().map(InletConfig::EventTable));
    v.extend(i.ingest.iter().cloned().map(InletConfig::Ingest));
    v.extend(
        i.nango_webhook
            .iter()
            .cloned()
            .map(InletConfig::NangoWebhook),
    );
    v.extend(i.proxy.iter().cloned().map(InletConfig::Proxy));
    v
}

/// What outlives any config: the counters, the detectors, the exposition.
#[derive(Clone)]
pub(crate) struct Core {
    pub(crate) sink: Sink,
    pub(crate) exposition: Arc<Exposition>,
    pub(crate) clock: SharedClock,
}

/// A source, built.
pub(crate) struct SourcePart {
    pub(crate) cfg: SourceConfig,
    pub(crate) handle: Arc<SourceHandle>,
    pub(crate) poll: Box<dyn Poll>,
}

/// Build a source's handle and poll loop (connecting lazily).
pub(crate) fn source(
    cfg: &SourceConfig,
    core: &Core,
    window: Duration,
) -> Result<SourcePart, BuildError> {
    let labels = cfg.mapping.labels.iter().map(|(n, _)| n.clone()).collect();
    let handle = Arc::new(SourceHandle::new(
        &cfg.name,
        cfg.kind(),
        &cfg.provider,
        labels,
    ));
    let health = Health::new(
        core.sink.live().clone(),
        &cfg.name,
        Subject::Source,
        handle.provider,
    );
    let poller = SourcePoller::new(
        cfg.clone(),
        handle.clone(),
        core.exposition.clone(),
        core.sink.clone(),
        core.clock.clone(),
        window,
    )
    .map_err(|cause| BuildError::Source {
        name: cfg.name.clone(),
        cause,
    })?;
    Ok(SourcePart {
        cfg: cfg.clone(),
        handle,
        poll: Box::new(Runner::new(poller, health, core.clock.clone())),
    })
}

/// An inlet, built.
pub(crate) struct InletPart {
    pub(crate) cfg: InletConfig,
    pub(crate) routes: Option<axum::Router>,
    pub(crate) polls: Vec<Box<dyn Poll>>,
    pub(crate) listeners: Vec<Listener>,
}

/// Build an inlet: its series at 0, its routes, poll loops and listeners.
pub(crate) fn inlet(cfg: &InletConfig, core: &Core) -> Result<InletPart, BuildError> {
    let ctx = Context {
        sink: core.sink.clone(),
        clock: core.clock.clone(),
    };
    let inlet = cfg.inlet();
    let wired = inlet.wire(&ctx).map_err(|cause| BuildError::Inlet {
        part: inlet.name(),
        cause,
    })?;
    Ok(InletPart {
        cfg: cfg.clone(),
        routes: wired.routes,
        polls: wired.polls,
        listeners: wired.listeners,
    })
}
