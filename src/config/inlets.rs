//! The event inlets' sections: `event_tables`, `ingest`, `nango_webhook`, `proxy`. Each
//! validated section says what the rest of the config needs to know of it ([`InletInfo`]): its
//! `source` label, its provider, whether `persistence` saves its counters, a line for
//! `--config.check` and the landing page.

use super::common::{
    valid_column, valid_name, valid_table, HumanDuration, Problems, Schedule, SecretRef,
};
use super::defaults;
use super::sources::{schedule, Global, SqlConnection, SqlKind};
use crate::model::StoreKind;
use crate::provider::ProviderKind;
use crate::secret::Secret;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

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
#[derive(Debug, Clone, Default)]
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
                    .decode::<RawEventTable>(&at, item)
                    .and_then(|raw| EventTable::validate(&at, raw, global, env, problems))
                {
                    inlets.event_tables.push(t);
                }
            }
        }
        inlets.ingest = top.remove("ingest").and_then(|v| {
            let raw = problems.decode::<RawIngest>("ingest", v)?;
            Ingest::validate(raw, env, problems)
        });
        inlets.nango_webhook = top.remove("nango_webhook").and_then(|v| {
            let raw = problems.decode::<RawNangoWebhook>("nango_webhook", v)?;
            NangoWebhook::validate(raw, env, problems)
        });
        inlets.proxy = top.remove("proxy").and_then(|v| {
            let raw = problems.decode::<RawProxy>("proxy", v)?;
            Proxy::validate(raw, problems)
        });
        inlets
    }
}

fn check_source_name(key: &str, source: &str, problems: &mut Problems) {
    if !valid_name(source) {
        problems.add(key, "use 1-64 letters, digits, `_`, `-` or `.`");
    }
}

/// Where a new event table starts the first time (no state file yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventStart {
    /// Count only events written from now on.
    #[default]
    End,
    /// Count every event already in the table.
    Beginning,
}

/// A field of an event row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventField {
    Type,
    Connection,
    Tenant,
    Time,
    Outcome,
    Error,
    Status,
    Detail,
    RateLimitProblem,
}

impl EventField {
    pub const ALL: [EventField; 9] = [
        EventField::Type,
        EventField::Connection,
        EventField::Tenant,
        EventField::Time,
        EventField::Outcome,
        EventField::Error,
        EventField::Status,
        EventField::Detail,
        EventField::RateLimitProblem,
    ];

    /// Its name, and the column it is read from unless `columns` says otherwise.
    pub fn as_str(self) -> &'static str {
        match self {
            EventField::Type => "type",
            EventField::Connection => "connection",
            EventField::Tenant => "tenant",
            EventField::Time => "time",
            EventField::Outcome => "outcome",
            EventField::Error => "error",
            EventField::Status => "status",
            EventField::Detail => "detail",
            EventField::RateLimitProblem => "rate_limit_problem",
        }
    }
}

/// An event table: rows the host app writes for each refresh and API call, tailed by an
/// increasing id (or a timestamp and an id) kept in a state file.
#[derive(Debug, Clone)]
pub struct EventTable {
    /// The `source` label of its events (also its self-health series).
    pub name: String,
    pub connection: SqlConnection,
    /// Provider of its events.
    pub provider: ProviderKind,
    pub table: String,
    /// Increasing integer column: the cursor (with `time_column`: the tie-break among rows of
    /// one timestamp, any comparable type).
    pub id_column: String,
    /// A timestamp column that orders the rows, for tables without an increasing id: the
    /// cursor is then (time, id).
    pub time_column: Option<String>,
    /// Event field to column, for the fields read.
    pub columns: Vec<(EventField, String)>,
    pub state_file: PathBuf,
    pub start: EventStart,
    /// Most rows read per query.
    pub batch: usize,
    pub schedule: Schedule,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEventTable {
    /// The `source` label.
    name: String,
    /// `sqlite`, `postgres` or `mysql`.
    kind: StoreKind,
    dsn: Option<String>,
    dsn_env: Option<String>,
    dsn_file: Option<PathBuf>,
    /// Default provider of its events.
    provider: Option<ProviderKind>,
    /// The table (or `schema.table`).
    table: String,
    /// Increasing integer id column (default `id`); with `time_column`, the tie-break.
    id_column: Option<String>,
    /// A timestamp column ordering the rows (cursor: time, then id).
    time_column: Option<String>,
    /// Event field to column, for columns not named like the fields.
    #[serde(default)]
    columns: BTreeMap<String, String>,
    /// Where the cursor is kept between restarts.
    state_file: PathBuf,
    /// `end` (default) or `beginning`, for the first start.
    start: Option<EventStart>,
    /// Rows per query (default 1000).
    batch: Option<usize>,
    interval: Option<HumanDuration>,
    timeout: Option<HumanDuration>,
}

impl EventTable {
    fn info(&self, i: usize) -> InletInfo {
        InletInfo {
            key: format!("event_tables[{i}].name"),
            source: self.name.clone(),
            provider: self.provider,
            persisted: false,
            line: format!("Event table: {}", self.name),
        }
    }

    fn validate(
        at: &str,
        raw: RawEventTable,
        global: &Global,
        env: &dyn Fn(&str) -> Option<String>,
        problems: &mut Problems,
    ) -> Option<EventTable> {
        let mark = problems.mark();
        let kind = match raw.kind {
            StoreKind::Sqlite => Some(SqlKind::Sqlite),
            StoreKind::Postgres => Some(SqlKind::Postgres),
            StoreKind::Mysql => Some(SqlKind::Mysql),
            StoreKind::Redis | StoreKind::File | StoreKind::Http => {
                problems.add(
                    format!("{at}.kind"),
                    "event tables are read from sqlite, postgres or mysql",
                );
                None
            }
        };
        check_source_name(&format!("{at}.name"), &raw.name, problems);
        if !valid_table(&raw.table) {
            problems.add(
                format!("{at}.table"),
                format!("{:?} is not a valid table name", raw.table),
            );
        }
        let id_column = raw
            .id_column
            .unwrap_or_else(|| defaults::EVENT_TABLE_ID_COLUMN.into());
        if !valid_column(&id_column) {
            problems.add(
                format!("{at}.id_column"),
                format!("{id_column:?} is not a valid column name"),
            );
        }
        if let Some(t) = &raw.time_column {
            if !valid_column(t) {
                problems.add(
                    format!("{at}.time_column"),
                    format!("{t:?} is not a valid column name"),
                );
            }
            if *t == id_column {
                problems.add(
                    format!("{at}.time_column"),
                    "must differ from id_column (the id breaks ties among rows of one timestamp)",
                );
            }
        }
        let names: Vec<&str> = EventField::ALL.iter().map(|f| f.as_str()).collect();
        for (k, v) in &raw.columns {
            if !names.contains(&k.as_str()) {
                problems.add(
                    format!("{at}.columns.{k}"),
                    format!("unknown event field, expected one of {}", names.join(", ")),
                );
            }
            if !valid_column(v) {
                problems.add(
                    format!("{at}.columns.{k}"),
                    format!("{v:?} is not a valid column name"),
                );
            }
        }
        // No `columns`: every field from the column of its name. With `columns`: the listed
        // fields, plus `type` and `connection` (from columns of those names unless listed).
        let columns: Vec<(EventField, String)> = EventField::ALL
            .into_iter()
            .filter(|f| {
                raw.columns.is_empty()
                    || raw.columns.contains_key(f.as_str())
                    || matches!(f, EventField::Type | EventField::Connection)
            })
            .map(|f| {
                let column = raw
                    .columns
                    .get(f.as_str())
                    .cloned()
                    .unwrap_or_else(|| f.as_str().to_string());
                (f, column)
            })
            .collect();
        let dsn = SecretRef::new(
            raw.dsn.as_deref(),
            raw.dsn_env.as_deref(),
            raw.dsn_file.as_ref(),
        )
        .read(at, "dsn", env, problems);
        let batch = raw.batch.unwrap_or(defaults::EVENT_TABLE_BATCH);
        if batch == 0 {
            problems.add(format!("{at}.batch"), "must be at least 1");
        }
        let schedule = schedule(at, raw.interval, raw.timeout, None, global, problems);
        if problems.since(mark) {
            return None;
        }
        Some(EventTable {
            name: raw.name,
            connection: SqlConnection {
                kind: kind?,
                dsn: dsn?,
                timeout: schedule.timeout,
            },
            provider: raw.provider.unwrap_or(ProviderKind::Xero),
            table: raw.table,
            id_column,
            time_column: raw.time_column,
            columns,
            state_file: raw.state_file,
            start: raw.start.unwrap_or_default(),
            batch,
            schedule,
        })
    }
}

/// Settings of the ingest API.
#[derive(Debug, Clone)]
pub struct Ingest {
    /// The `source` label of ingested events.
    pub source: String,
    /// Provider of events that name none.
    pub provider: ProviderKind,
    /// Bearer token the host app must send.
    pub token: Secret,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// Most events in one batch.
    pub max_events: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIngest {
    /// The `source` label of ingested events (default `ingest`).
    source: Option<String>,
    /// Provider of events that name none (default `xero`).
    provider: Option<ProviderKind>,
    /// Environment variable holding the bearer token.
    token_env: Option<String>,
    /// File holding the bearer token.
    token_file: Option<PathBuf>,
    /// Largest request body (default 1 MiB).
    max_body_bytes: Option<usize>,
    /// Most events per batch (default 10000).
    max_events: Option<usize>,
}

impl Ingest {
    fn info(&self) -> InletInfo {
        InletInfo {
            key: "ingest.source".into(),
            source: self.source.clone(),
            provider: self.provider,
            persisted: true,
            line: format!("Ingest API: POST /api/v1/events (source {})", self.source),
        }
    }

    fn validate(
        raw: RawIngest,
        env: &dyn Fn(&str) -> Option<String>,
        problems: &mut Problems,
    ) -> Option<Ingest> {
        let token = SecretRef::new(None, raw.token_env.as_deref(), raw.token_file.as_ref())
            .read("ingest", "token", env, problems)?;
        let source = raw.source.unwrap_or_else(|| defaults::INGEST_SOURCE.into());
        check_source_name("ingest.source", &source, problems);
        if token.expose().len() < defaults::INGEST_MIN_TOKEN {
            problems.add(
                "ingest.token_env",
                format!(
                    "the ingest token must be at least {} characters",
                    defaults::INGEST_MIN_TOKEN
                ),
            );
        }
        Some(Ingest {
            source,
            provider: raw.provider.unwrap_or(ProviderKind::Xero),
            token,
            max_body_bytes: raw.max_body_bytes.unwrap_or(defaults::INGEST_MAX_BODY),
            max_events: raw.max_events.unwrap_or(defaults::INGEST_MAX_EVENTS),
        })
    }
}

/// Settings of the Nango webhook inlet.
#[derive(Debug, Clone)]
pub struct NangoWebhook {
    /// The `source` label of its events.
    pub source: String,
    /// Provider of webhooks whose `provider` the exporter has no profile for.
    pub provider: ProviderKind,
    /// Nango's secret key: when set, `X-Nango-Hmac-Sha256` must match.
    pub secret: Option<Secret>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNangoWebhook {
    /// The `source` label (default `nango`).
    source: Option<String>,
    /// Default provider (default `xero`).
    provider: Option<ProviderKind>,
    /// Environment variable holding Nango's secret key.
    secret_env: Option<String>,
    /// File holding Nango's secret key.
    secret_file: Option<PathBuf>,
}

impl NangoWebhook {
    fn info(&self) -> InletInfo {
        InletInfo {
            key: "nango_webhook.source".into(),
            source: self.source.clone(),
            provider: self.provider,
            persisted: true,
            line: format!(
                "Nango webhooks: POST /webhooks/nango (source {})",
                self.source
            ),
        }
    }

    fn validate(
        raw: RawNangoWebhook,
        env: &dyn Fn(&str) -> Option<String>,
        problems: &mut Problems,
    ) -> Option<NangoWebhook> {
        let secret = SecretRef::new(None, raw.secret_env.as_deref(), raw.secret_file.as_ref())
            .read_optional("nango_webhook", "secret", env, problems);
        let source = raw.source.unwrap_or_else(|| defaults::NANGO_SOURCE.into());
        check_source_name("nango_webhook.source", &source, problems);
        Some(NangoWebhook {
            source,
            provider: raw.provider.unwrap_or(ProviderKind::Xero),
            secret,
        })
    }
}

/// Settings of the reverse proxy.
#[derive(Debug, Clone, PartialEq)]
pub struct Proxy {
    /// Where the host app sends its Xero calls (`--proxy.listen-address` overrides).
    pub listen_address: Option<String>,
    /// The `source` label of its events.
    pub source: String,
    pub provider: ProviderKind,
    /// Base URL for `/connect/...` (token, revocation).
    pub identity_url: String,
    /// Base URL for everything else (API, `/connections`).
    pub api_url: String,
    /// Deadline for one upstream call.
    pub timeout: Duration,
    /// Web config of the proxy's own listener (`--proxy.web-config.file` overrides).
    pub web_config_file: Option<PathBuf>,
}

impl Default for Proxy {
    /// In front of the real Xero.
    fn default() -> Self {
        Proxy {
            listen_address: None,
            source: defaults::PROXY_SOURCE.into(),
            provider: ProviderKind::Xero,
            identity_url: defaults::PROXY_IDENTITY_URL.into(),
            api_url: defaults::PROXY_API_URL.into(),
            timeout: defaults::PROXY_TIMEOUT,
            web_config_file: None,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawProxy {
    /// Listen address of the proxy.
    listen_address: Option<String>,
    /// The `source` label (default `proxy`).
    source: Option<String>,
    /// Provider (default `xero`).
    provider: Option<ProviderKind>,
    /// Default `https://identity.xero.com`.
    identity_url: Option<String>,
    /// Default `https://api.xero.com`.
    api_url: Option<String>,
    /// Default 60s.
    timeout: Option<HumanDuration>,
    /// Web config (TLS, client certificates, basic auth by `Proxy-Authorization`) of the
    /// proxy's listener.
    web_config_file: Option<PathBuf>,
}

impl Proxy {
    fn info(&self) -> InletInfo {
        InletInfo {
            key: "proxy.source".into(),
            source: self.source.clone(),
            provider: self.provider,
            persisted: true,
            line: match &self.listen_address {
                Some(a) => format!("Reverse proxy on {a} (source {})", self.source),
                None => format!("Reverse proxy (source {})", self.source),
            },
        }
    }

    fn validate(raw: RawProxy, problems: &mut Problems) -> Option<Proxy> {
        for (key, url) in [
            ("identity_url", &raw.identity_url),
            ("api_url", &raw.api_url),
        ] {
            if url
                .as_ref()
                .is_some_and(|u| !(u.starts_with("http://") || u.starts_with("https://")))
            {
                problems.add(
                    format!("proxy.{key}"),
                    "must be an http:// or https:// base URL",
                );
            }
        }
        let d = Proxy::default();
        let source = raw.source.unwrap_or(d.source);
        check_source_name("proxy.source", &source, problems);
        Some(Proxy {
            listen_address: raw.listen_address,
            source,
            provider: raw.provider.unwrap_or(d.provider),
            identity_url: raw
                .identity_url
                .unwrap_or(d.identity_url)
                .trim_end_matches('/')
                .to_string(),
            api_url: raw
                .api_url
                .unwrap_or(d.api_url)
                .trim_end_matches('/')
                .to_string(),
            timeout: raw.timeout.map_or(d.timeout, |t| t.0),
            web_config_file: raw.web_config_file,
        })
    }
}
