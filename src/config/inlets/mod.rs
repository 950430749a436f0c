//! The event inlets' sections: `event_tables`, `ingest`, `nango_webhook`, `proxy`. Each
//! validated section says what the rest of the config needs to know of it ([`InletInfo`]): its
//! `source` label, its provider, whether `persistence` saves its counters, a line for
//! `--config.check` and the landing page.

mod event_table;
mod ingest;
mod nango;
mod proxy;

pub use event_table::{EventField, EventStart, EventTable};
pub use ingest::Ingest;
pub use nango::NangoWebhook;
pub use proxy::{Intercept, Proxy};

use super::common::{valid_name, Problems};
use super::sources::Global;
use crate::provider::ProviderKind;

/// What the rest of the config and the landing page know of an inlet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InletInfo {
    /// The key its source name is set at (`ingest.source`, `event_tables[0].name`).
    pub key: String,
    /// Its `source` label.
    pub source: String,
    pub provider: ProviderKind,
    /// Whether `persistence` saves its counters (push inlets); an event table saves its own.
    pub persisted: bool,
    /// One line naming it (never a secret).
    pub line: String,
}

/// The inlets configured, by section.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Inlets {
    /// Event tables tailed with a cursor.
    pub event_tables: Vec<EventTable>,
    /// The ingest API (`POST /api/v1/events`).
    pub ingest: Option<Ingest>,
    /// The Nango webhook inlet (`POST /webhooks/nango`).
    pub nango_webhook: Option<NangoWebhook>,
    /// The reverse proxy in front of Xero.
    pub proxy: Option<Proxy>,
}

impl Inlets {
    /// Every inlet configured, in a fixed order. A new inlet section adds one line here.
    pub fn all(&self) -> Vec<InletInfo> {
        let mut out: Vec<InletInfo> = self
            .event_tables
            .iter()
            .enumerate()
            .map(|(i, t)| t.info(i))
            .collect();
        out.extend(self.ingest.as_ref().map(Ingest::info));
        out.extend(self.nango_webhook.as_ref().map(NangoWebhook::info));
        out.extend(self.proxy.as_ref().map(Proxy::info));
        out
    }

    /// The top-level keys of the inlet sections.
    pub const KEYS: &'static [&'static str] = &["event_tables", "ingest", "nango_webhook", "proxy"];

    /// Decode and validate the inlet sections found in `top`.
    pub(crate) fn parse(
        top: &mut serde_json::Map<String, serde_json::Value>,
        global: &Global,
        env: &dyn Fn(&str) -> Option<String>,
        problems: &mut Problems,
    ) -> Inlets {
        let mut inlets = Inlets::default();
        if let Some(v) = top.remove("event_tables") {
            let items = match v {
                serde_json::Value::Array(items) => items,
                _ => {
                    problems.add("event_tables", "expected a list of event tables");
                    Vec::new()
                }
            };
            for (i, item) in items.into_iter().enumerate() {
                let at = format!("event_tables[{i}]");
                if let Some(t) = problems
                    .decode(&at, item)
                    .and_then(|raw| EventTable::validate(&at, raw, global, env, problems))
                {
                    inlets.event_tables.push(t);
                }
            }
        }
        inlets.ingest = top.remove("ingest").and_then(|v| {
            let raw = problems.decode("ingest", v)?;
            Ingest::validate(raw, env, problems)
        });
        inlets.nango_webhook = top.remove("nango_webhook").and_then(|v| {
            let raw = problems.decode("nango_webhook", v)?;
            NangoWebhook::validate(raw, env, problems)
        });
        inlets.proxy = top.remove("proxy").and_then(|v| {
            let raw = problems.decode("proxy", v)?;
            Proxy::validate(raw, problems)
        });
        inlets
    }
}

pub(crate) fn check_source_name(key: &str, source: &str, problems: &mut Problems) {
    if !valid_name(source) {
        problems.add(key, "use 1-64 letters, digits, `_`, `-` or `.`");
    }
}
