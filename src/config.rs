//! The configuration file: typed, strict (unknown keys rejected), validated once.
//!
//! [`parse`] returns a [`Config`] only when the whole file is valid; otherwise every problem
//! it found, each with the file, the key path (`sources[1].fields.last_refresh.format`) and
//! what was expected. The YAML is read into a tree first and each section is decoded on its
//! own, so one bad source never hides the problems of another.

use crate::provider::{ProviderKind, ProviderProfile};
use crate::secret::Secret;
use crate::sources::presets::{self, Preset};
use crate::state::Status;
use crate::timestamp::TimeFormat;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Defaults, in one place.
pub mod defaults {
    use std::time::Duration;
    pub const POLL_INTERVAL: Duration = Duration::from_secs(30);
    pub const POLL_TIMEOUT: Duration = Duration::from_secs(10);
    /// Backoff after failures doubles from the interval up to this multiple of it.
    pub const BACKOFF_MAX_FACTOR: u32 = 5;
    pub const MAX_CONNECTIONS_PER_SOURCE: usize = 10_000;
    pub const DETECT_WINDOW: Duration = Duration::from_secs(15 * 60);
    /// Most keys a Redis source reads per poll.
    pub const MAX_KEYS: usize = 100_000;
    pub const INGEST_MAX_BODY: usize = 1024 * 1024;
    pub const INGEST_MAX_EVENTS: usize = 10_000;
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it was read from (for messages).
    pub file: String,
    pub detect: Detect,
    pub sources: Vec<SourceConfig>,
    /// The ingest API (`POST /api/v1/events`), when configured.
    pub ingest: Option<Ingest>,
    /// The Nango webhook inlet (`POST /webhooks/nango`), when configured.
    pub nango_webhook: Option<NangoWebhook>,
    /// Event tables tailed with a cursor.
    pub event_tables: Vec<EventTable>,
    /// The reverse proxy in front of Xero, when configured.
    pub proxy: Option<Proxy>,
    /// Where the counters of the push inlets are saved across restarts, when configured.
    pub persistence: Option<Persistence>,
}

/// Saving the counters of the push inlets (ingest API, Nango webhooks, proxy), which have no
/// store to replay, so a restart continues them instead of starting from 0.
#[derive(Debug, Clone, PartialEq)]
pub struct Persistence {
    pub file: PathBuf,
    /// How often they are saved when they changed; on a clean shutdown they are saved last.
    pub interval: Duration,
}

impl Config {
    /// The push inlets' sources (ingest API, Nango webhooks, proxy), each with its config key:
    /// the sources whose counters `persistence` saves.
    pub fn push_inlet_sources(&self) -> Vec<(&'static str, &str)> {
        [
            (
                "ingest.source",
                self.ingest.as_ref().map(|i| i.source.as_str()),
            ),
            (
                "nango_webhook.source",
                self.nango_webhook.as_ref().map(|n| n.source.as_str()),
            ),
            (
                "proxy.source",
                self.proxy.as_ref().map(|p| p.source.as_str()),
            ),
        ]
        .into_iter()
        .filter_map(|(key, source)| Some((key, source?)))
        .collect()
    }

    /// Checks across sections, on the assembled config.
    fn check_names(&self, problems: &mut Problems) {
        // An event table's counters are its own: they are saved with its cursor, so no other
        // inlet may count under its name (a restart would restore the other's counts as the
        // table's).
        for (key, source) in self.push_inlet_sources() {
            if self.event_tables.iter().any(|t| t.name == source) {
                problems.add(
                    key,
                    format!("{source:?} is the name of an event table, whose counters are its own (saved with its cursor); give this inlet another source name"),
                );
            }
        }
        // The proxy reports its upstream's health as a source (`oauth_exporter_source_up`): it
        // cannot share the name of a source whose polls report there.
        if let Some(p) = self
            .proxy
            .as_ref()
            .filter(|p| self.sources.iter().any(|s| s.name == p.source))
        {
            problems.add(
                "proxy.source",
                format!("{:?} is the name of a source: the proxy reports its upstream's health under its own source name (oauth_exporter_source_up), so give it another", p.source),
            );
        }
        if self.persistence.is_some() && self.push_inlet_sources().is_empty() {
            problems.add(
                "persistence",
                "saves the counters of `ingest`, `nango_webhook` and `proxy`, and none is configured (event tables keep theirs in their own `state_file`)",
            );
        }
    }

    /// The event inlets configured, one line each (names, paths and addresses, never a
    /// secret): for `--config.check` and the landing page.
    pub fn inlets(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .event_tables
            .iter()
            .map(|t| format!("Event table: {}", t.name))
            .collect();
        if let Some(i) = &self.ingest {
            out.push(format!(
                "Ingest API: POST /api/v1/events (source {})",
                i.source
            ));
        }
        if let Some(n) = &self.nango_webhook {
            out.push(format!(
                "Nango webhooks: POST /webhooks/nango (source {})",
                n.source
            ));
        }
        if let Some(p) = &self.proxy {
            out.push(match &p.listen_address {
                Some(a) => format!("Reverse proxy on {a} (source {})", p.source),
                None => format!("Reverse proxy (source {})", p.source),
            });
        }
        out
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
            source: "proxy".into(),
            provider: ProviderKind::Xero,
            identity_url: "https://identity.xero.com".into(),
            api_url: "https://api.xero.com".into(),
            timeout: Duration::from_secs(60),
            web_config_file: None,
        }
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

/// An event table: rows the host app writes for each refresh and API call, tailed by an
/// increasing id kept in a state file.
#[derive(Debug, Clone)]
pub struct EventTable {
    /// The `source` label of its events (also its self-health series).
    pub name: String,
    /// Connection (a SQL source config: kind, DSN, timeout; its query is unused).
    pub store: SourceConfig,
    pub table: String,
    /// Increasing integer column: the cursor (with `time_column`: the tie-break among rows of
    /// one timestamp, any comparable type).
    pub id_column: String,
    /// A timestamp column that orders the rows, for tables without an increasing id: the
    /// cursor is then (time, id).
    pub time_column: Option<String>,
    /// Event field (`type`, `connection`, ...) to column.
    pub columns: Vec<(&'static str, String)>,
    pub state_file: PathBuf,
    pub start: EventStart,
    /// Most rows read per query.
    pub batch: usize,
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

/// Settings of the failure detectors.
#[derive(Debug, Clone)]
pub struct Detect {
    /// A connection whose last failure is younger than this counts in `oauth_connections_failing`.
    pub window: Duration,
    /// `invalid_grant` failures of one connection within the window that make a retry loop.
    pub retry_loop_failures: usize,
}

/// The kinds of store a source can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    Sqlite,
    Postgres,
    Mysql,
    Redis,
    File,
    Http,
}

impl StoreKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreKind::Sqlite => "sqlite",
            StoreKind::Postgres => "postgres",
            StoreKind::Mysql => "mysql",
            StoreKind::Redis => "redis",
            StoreKind::File => "file",
            StoreKind::Http => "http",
        }
    }

    /// SQL stores take a `query` or a `preset`; the others hold documents (hashes, JSON, YAML)
    /// whose keys are the columns.
    pub fn is_sql(self) -> bool {
        matches!(
            self,
            StoreKind::Sqlite | StoreKind::Postgres | StoreKind::Mysql
        )
    }
}

/// How a Redis source reads each key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RedisValue {
    /// A hash: its fields are the columns (`HGETALL`).
    Hash,
    /// A string holding a JSON object: its keys are the columns (`GET`).
    Json,
}

/// How a token file holds its token sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileLayout {
    /// A list is many token sets; an object holding `access_token`, `refresh_token`,
    /// `expires_at` or the connection column is one token set; any other object maps ids to
    /// token sets.
    #[default]
    Auto,
    /// The whole document is one token set (`_key` is the file name without extension).
    Single,
    /// A list of token sets (`_key` is the position, from 0).
    List,
    /// An object of id to token set (`_key` is the id).
    Map,
}

/// Where and how a source reads, per store kind.
#[derive(Debug, Clone)]
pub enum Store {
    Sql {
        query: String,
    },
    Redis {
        /// SCAN pattern, e.g. `qbo:tokens:*`.
        key_pattern: String,
        value: RedisValue,
        /// Most keys read per poll.
        max_keys: usize,
        /// PEM CA bundle to trust instead of the system roots (`rediss://` only).
        ca_file: Option<PathBuf>,
    },
    File {
        path: PathBuf,
        layout: FileLayout,
    },
    Http {
        url: String,
        /// Path of the list of token sets inside the answer (empty: the answer itself).
        items_path: Vec<String>,
        bearer_token: Option<Secret>,
        /// Extra request headers (not secrets: put those in `bearer_token_env`).
        headers: Vec<(String, String)>,
        /// PEM CA bundle to trust in addition to the system roots.
        ca_file: Option<PathBuf>,
    },
}

impl Store {
    /// The SQL query, for SQL stores.
    pub fn query(&self) -> Option<&str> {
        match self {
            Store::Sql { query } => Some(query),
            _ => None,
        }
    }
}

/// One validated source.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    pub name: String,
    pub kind: StoreKind,
    /// Connection string (SQL stores and Redis); for SQLite a path or a `sqlite:` URL.
    pub dsn: Option<Secret>,
    /// What to read and how, per store kind.
    pub store: Store,
    pub mapping: Mapping,
    pub provider: ProviderProfile,
    pub interval: Duration,
    pub timeout: Duration,
    pub backoff_max: Duration,
    /// Cap on exported per-connection series (aggregates always cover every connection).
    pub max_connections: usize,
}

/// Where a value lives in a result row: a column, optionally a path inside a JSON column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldRef {
    pub column: String,
    pub json_path: Vec<String>,
}

/// A timestamp field.
#[derive(Debug, Clone, PartialEq)]
pub struct TimeField {
    pub at: FieldRef,
    pub format: TimeFormat,
    /// For `relative_seconds`: the timestamp the seconds count from.
    pub relative_to: Option<FieldRef>,
}

/// The status field with its value map.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusField {
    pub at: FieldRef,
    /// Store value (lower-cased) to status. Values equal to a status name map to it.
    pub map: BTreeMap<String, Status>,
    /// Status for values not in the map.
    pub default: Status,
}

/// How the last refresh time is obtained when no field holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Inference {
    /// Access-token expiry minus the provider's access-token lifetime.
    AccessExpires,
}

/// How the last refresh is found.
#[derive(Debug, Clone, PartialEq)]
pub enum LastRefresh {
    Field(TimeField),
    Infer(Inference),
}

/// Result fields mapped onto the metric contract.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapping {
    pub connection: FieldRef,
    pub tenant: Option<FieldRef>,
    pub last_refresh: LastRefresh,
    pub access_expires: Option<TimeField>,
    pub refresh_expires: Option<TimeField>,
    pub last_failure: Option<TimeField>,
    /// When the connection was first authorised (for providers with a hard maximum lifetime).
    pub authorized_at: Option<TimeField>,
    pub status: Option<StatusField>,
    /// Extra labels of `oauth_connection_info`, by label name.
    pub labels: Vec<(String, FieldRef)>,
    /// The stored refresh token, read only to keep a keyed hash of it in memory (regression
    /// detection); never stored, logged or exported.
    pub refresh_token: Option<FieldRef>,
}

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Why a config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {file}: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("config file {file} is not valid YAML: {message}")]
    Syntax { file: String, message: String },
    #[error("config file {file} has {} problem(s):{}", problems.len(), render(problems))]
    Invalid {
        file: String,
        problems: Vec<Problem>,
    },
}

fn render(problems: &[Problem]) -> String {
    problems.iter().map(|p| format!("\n  - {p}")).collect()
}

impl ConfigError {
    /// Every problem, for tests and `--config.check`.
    pub fn problems(&self) -> Vec<Problem> {
        match self {
            ConfigError::Invalid { problems, .. } => problems.clone(),
            other => vec![Problem {
                path: String::new(),
                message: other.to_string(),
            }],
        }
    }
}

/// A duration written like `30s`, `5m`, `60d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration with a unit, like 30s, 5m, 12h or 60d")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<HumanDuration, E> {
                humantime::parse_duration(s.trim())
                    .map(HumanDuration)
                    .map_err(|_| E::invalid_value(de::Unexpected::Str(s), &self))
            }
        }
        d.deserialize_str(V)
    }
}

/// A field as written: a column name, or a map with details.
#[derive(Debug, Clone, Default, PartialEq)]
struct RawField {
    column: String,
    json_path: Option<String>,
    format: Option<TimeFormat>,
    relative_to: Option<String>,
    map: Option<BTreeMap<String, Status>>,
    default: Option<Status>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFieldMap {
    /// Column of the query result.
    column: String,
    /// Dotted path inside a JSON column (`expires_at`, `token.expires_at`).
    json_path: Option<String>,
    /// Timestamp format (timestamp fields only).
    format: Option<TimeFormat>,
    /// For `format: relative_seconds`, the column holding the time the seconds count from.
    relative_to: Option<String>,
    /// Store values to statuses (status field only).
    map: Option<BTreeMap<String, Status>>,
    /// Status for values missing from `map` (status field only).
    default: Option<Status>,
}

impl<'de> Deserialize<'de> for RawField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawField;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a column name, or a map with `column` and optional `json_path`, `format`, `relative_to`, `map`, `default`")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<RawField, E> {
                Ok(RawField {
                    column: s.to_string(),
                    ..RawField::default()
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawField, A::Error> {
                let m = RawFieldMap::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(RawField {
                    column: m.column,
                    json_path: m.json_path,
                    format: m.format,
                    relative_to: m.relative_to,
                    map: m.map,
                    default: m.default,
                })
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawFields {
    connection: Option<RawField>,
    tenant: Option<RawField>,
    last_refresh: Option<RawField>,
    access_expires: Option<RawField>,
    refresh_expires: Option<RawField>,
    last_failure: Option<RawField>,
    authorized_at: Option<RawField>,
    status: Option<RawField>,
    refresh_token: Option<RawField>,
}

impl RawFields {
    /// Fields of `over` replace those of `self`.
    fn overlay(mut self, over: RawFields) -> RawFields {
        macro_rules! take {
            ($($f:ident),*) => { $( if over.$f.is_some() { self.$f = over.$f; } )* };
        }
        take!(
            connection,
            tenant,
            last_refresh,
            access_expires,
            refresh_expires,
            last_failure,
            authorized_at,
            status,
            refresh_token
        );
        self
    }

    /// Builder used by presets.
    pub fn preset(pairs: &[(&str, &str)]) -> RawFields {
        let mut f = RawFields::default();
        for (name, column) in pairs {
            let field = Some(RawField {
                column: column.to_string(),
                ..RawField::default()
            });
            match *name {
                "connection" => f.connection = field,
                "tenant" => f.tenant = field,
                "last_refresh" => f.last_refresh = field,
                "access_expires" => f.access_expires = field,
                "refresh_expires" => f.refresh_expires = field,
                "last_failure" => f.last_failure = field,
                "authorized_at" => f.authorized_at = field,
                "refresh_token" => f.refresh_token = field,
                "status" => f.status = field,
                other => unreachable!("preset names unknown field {other}"),
            }
        }
        f
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawGlobal {
    /// How often each source is polled.
    poll_interval: Option<HumanDuration>,
    /// Deadline for one poll.
    poll_timeout: Option<HumanDuration>,
    /// Cap on per-connection series per source.
    max_connections_per_source: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDetect {
    /// Window for `oauth_connections_failing` and retry loops.
    window: Option<HumanDuration>,
    /// `invalid_grant` failures of one connection within the window that make a retry loop
    /// (default 5).
    retry_loop_failures: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    /// Unique name, the `source` label.
    name: String,
    /// `sqlite`, `postgres`, `mysql`, `redis`, `file` or `http`.
    kind: StoreKind,
    /// Inline connection string (SQLite paths; avoid for anything with a password).
    dsn: Option<String>,
    /// Environment variable holding the connection string.
    dsn_env: Option<String>,
    /// File holding the connection string (Kubernetes secrets).
    dsn_file: Option<PathBuf>,
    /// Provider profile, default `xero`.
    provider: Option<ProviderKind>,
    /// The `provider` label of a `custom` profile (default `custom`).
    provider_name: Option<String>,
    /// Redis: SCAN pattern of the token keys.
    key_pattern: Option<String>,
    /// Redis: `hash` or `json`.
    value: Option<RedisValue>,
    /// Redis: most keys read per poll (default 100000).
    max_keys: Option<usize>,
    /// File: the token file (JSON or YAML).
    path: Option<PathBuf>,
    /// File: `auto`, `single`, `list` or `map`.
    layout: Option<FileLayout>,
    /// HTTP: the JSON endpoint.
    url: Option<String>,
    /// HTTP: dotted path of the list inside the answer.
    items_path: Option<String>,
    /// HTTP: environment variable holding a bearer token.
    bearer_token_env: Option<String>,
    /// HTTP: file holding a bearer token.
    bearer_token_file: Option<PathBuf>,
    /// HTTP: extra request headers (not secrets).
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// HTTP: PEM CA bundle to trust.
    ca_file: Option<PathBuf>,
    /// A known schema: `xero_tokens`, `nango`, `token_set_json`.
    preset: Option<Preset>,
    /// Table for the preset, when not its default.
    table: Option<String>,
    /// A SELECT returning one row per connection.
    query: Option<String>,
    /// Result fields mapped onto the contract.
    #[serde(default)]
    fields: Option<RawFields>,
    /// How to find the last refresh when no field holds it.
    infer_last_refresh: Option<Inference>,
    /// Extra labels for `oauth_connection_info`: label name to field.
    #[serde(default)]
    labels: BTreeMap<String, RawField>,
    /// Override of the provider's access-token lifetime.
    access_token_lifetime: Option<HumanDuration>,
    /// Override of the provider's refresh-token inactivity window.
    refresh_token_lifetime: Option<HumanDuration>,
    /// Poll interval for this source.
    interval: Option<HumanDuration>,
    /// Deadline for one poll of this source.
    timeout: Option<HumanDuration>,
    /// Longest wait between retries after failures.
    backoff_max: Option<HumanDuration>,
    /// Cap on per-connection series for this source.
    max_connections: Option<usize>,
}

const TOP_LEVEL_KEYS: &[&str] = &[
    "global",
    "detect",
    "ingest",
    "nango_webhook",
    "event_tables",
    "proxy",
    "persistence",
    "sources",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPersistence {
    /// Where the counters are saved.
    file: PathBuf,
    /// How often they are saved when they changed (default 1s).
    interval: Option<HumanDuration>,
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

/// Event fields an event table maps, with their default column names.
pub const EVENT_FIELDS: [&str; 9] = [
    "type",
    "connection",
    "tenant",
    "time",
    "outcome",
    "error",
    "status",
    "detail",
    "rate_limit_problem",
];

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
const RESERVED_LABELS: &[&str] = &[
    "provider",
    "source",
    "connection",
    "tenant",
    "status",
    "le",
    "quantile",
    "within",
];

struct Problems {
    list: Vec<Problem>,
}

impl Problems {
    fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.list.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    /// Decode one section of the tree, recording its problem (with the full key path) if any.
    fn decode<T: for<'de> Deserialize<'de>>(
        &mut self,
        prefix: &str,
        value: serde_json::Value,
    ) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(v) => Some(v),
            Err(e) => {
                let inner = e.path().to_string();
                let path = match (prefix.is_empty(), inner.as_str()) {
                    (_, ".") => prefix.to_string(),
                    (true, _) => inner,
                    (false, _) => format!("{prefix}.{inner}"),
                };
                self.add(path, e.into_inner().to_string());
                None
            }
        }
    }
}

/// Read and validate a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        file: file.clone(),
        source,
    })?;
    parse(&text, &file, &|k| std::env::var(k).ok())
}

/// Validate config text. `file` names it in messages; `env` looks up environment variables.
pub fn parse(
    text: &str,
    file: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    // YAML 1.2 booleans: `n`, `y`, `on`, `off` stay strings (a column named `y` is a column).
    let options = serde_saphyr::options! { strict_booleans: true };
    let tree: serde_json::Value =
        serde_saphyr::from_str_with_options(text, options).map_err(|e| ConfigError::Syntax {
            file: file.to_string(),
            message: e.to_string(),
        })?;
    let mut problems = Problems { list: Vec::new() };
    let mut top = match tree {
        serde_json::Value::Object(m) => m,
        serde_json::Value::Null => serde_json::Map::new(),
        _ => {
            problems.add("", "the top level must be a map with `sources`");
            serde_json::Map::new()
        }
    };
    for key in top.keys() {
        if !TOP_LEVEL_KEYS.contains(&key.as_str()) {
            problems.add(
                key.clone(),
                format!("unknown key, expected one of {}", TOP_LEVEL_KEYS.join(", ")),
            );
        }
    }
    let global: RawGlobal = match top.remove("global") {
        Some(v) => problems.decode("global", v).unwrap_or_default(),
        None => RawGlobal::default(),
    };
    let detect: RawDetect = match top.remove("detect") {
        Some(v) => problems.decode("detect", v).unwrap_or_default(),
        None => RawDetect::default(),
    };
    let raw_sources: Vec<(usize, RawSource)> = match top.remove("sources") {
        Some(serde_json::Value::Array(items)) => items
            .into_iter()
            .enumerate()
            .filter_map(|(i, v)| problems.decode(&format!("sources[{i}]"), v).map(|s| (i, s)))
            .collect(),
        Some(serde_json::Value::Null) | None => {
            if !["ingest", "nango_webhook", "event_tables", "proxy"]
                .iter()
                .any(|k| top.contains_key(*k))
            {
                problems.add(
                    "sources",
                    "at least one source, event table or inlet (`ingest`, `nango_webhook`, `proxy`) is required",
                );
            }
            Vec::new()
        }
        Some(_) => {
            problems.add("sources", "expected a list of sources");
            Vec::new()
        }
    };

    let interval = global
        .poll_interval
        .map_or(defaults::POLL_INTERVAL, |d| d.0);
    let timeout = global.poll_timeout.map_or(defaults::POLL_TIMEOUT, |d| d.0);
    let cap = global
        .max_connections_per_source
        .unwrap_or(defaults::MAX_CONNECTIONS_PER_SOURCE);
    if interval.is_zero() {
        problems.add("global.poll_interval", "must be greater than 0");
    }
    if cap == 0 {
        problems.add("global.max_connections_per_source", "must be at least 1");
    }
    let ingest = match top.remove("ingest") {
        Some(v) => problems.decode::<RawIngest>("ingest", v).and_then(|raw| {
            let token = secret_from(
                "ingest",
                "token",
                None,
                raw.token_env.as_deref(),
                raw.token_file.as_deref(),
                true,
                env,
                &mut problems,
            )?;
            let source = raw.source.unwrap_or_else(|| "ingest".into());
            if !valid_name(&source) {
                problems.add("ingest.source", "use 1-64 letters, digits, `_`, `-` or `.`");
            }
            if token.expose().len() < 16 {
                problems.add(
                    "ingest.token_env",
                    "the ingest token must be at least 16 characters",
                );
            }
            Some(Ingest {
                source,
                provider: raw.provider.unwrap_or(ProviderKind::Xero),
                token,
                max_body_bytes: raw.max_body_bytes.unwrap_or(defaults::INGEST_MAX_BODY),
                max_events: raw.max_events.unwrap_or(defaults::INGEST_MAX_EVENTS),
            })
        }),
        None => None,
    };
    let nango_webhook = match top.remove("nango_webhook") {
        Some(v) => problems
            .decode::<RawNangoWebhook>("nango_webhook", v)
            .map(|raw| {
                let wanted = raw.secret_env.is_some() || raw.secret_file.is_some();
                let secret = if wanted {
                    secret_from(
                        "nango_webhook",
                        "secret",
                        None,
                        raw.secret_env.as_deref(),
                        raw.secret_file.as_deref(),
                        true,
                        env,
                        &mut problems,
                    )
                } else {
                    None
                };
                NangoWebhook {
                    source: raw.source.unwrap_or_else(|| "nango".into()),
                    provider: raw.provider.unwrap_or(ProviderKind::Xero),
                    secret,
                }
            }),
        None => None,
    };
    let proxy = match top.remove("proxy") {
        Some(v) => problems.decode::<RawProxy>("proxy", v).map(|raw| {
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
            Proxy {
                listen_address: raw.listen_address,
                source: raw.source.unwrap_or_else(|| "proxy".into()),
                provider: raw.provider.unwrap_or(ProviderKind::Xero),
                identity_url: raw
                    .identity_url
                    .unwrap_or_else(|| "https://identity.xero.com".into())
                    .trim_end_matches('/')
                    .to_string(),
                api_url: raw
                    .api_url
                    .unwrap_or_else(|| "https://api.xero.com".into())
                    .trim_end_matches('/')
                    .to_string(),
                timeout: raw
                    .timeout
                    .map_or(std::time::Duration::from_secs(60), |d| d.0),
                web_config_file: raw.web_config_file,
            }
        }),
        None => None,
    };
    let persistence = top.remove("persistence").and_then(|v| {
        let raw = problems.decode::<RawPersistence>("persistence", v)?;
        let interval = raw.interval.map_or(Duration::from_secs(1), |d| d.0);
        if interval < Duration::from_millis(100) {
            problems.add("persistence.interval", "must be at least 100ms");
        }
        Some(Persistence {
            file: raw.file,
            interval,
        })
    });
    let mut event_tables = Vec::new();
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
            let Some(raw) = problems.decode::<RawEventTable>(&at, item) else {
                continue;
            };
            if let Some(t) = validate_event_table(&at, raw, interval, timeout, env, &mut problems) {
                event_tables.push((at, t));
            }
        }
    }
    if detect.retry_loop_failures.is_some_and(|n| n < 2) {
        problems.add("detect.retry_loop_failures", "must be at least 2");
    }
    let detect = Detect {
        window: detect.window.map_or(defaults::DETECT_WINDOW, |d| d.0),
        retry_loop_failures: detect.retry_loop_failures.unwrap_or(5),
    };

    let mut names = HashSet::new();
    let mut sources = Vec::new();
    for (i, raw) in raw_sources {
        let at = format!("sources[{i}]");
        if !names.insert(raw.name.clone()) {
            problems.add(
                format!("{at}.name"),
                format!("duplicate source name {:?}; names must be unique", raw.name),
            );
        }
        if let Some(s) = validate_source(&at, raw, interval, timeout, cap, env, &mut problems) {
            sources.push(s);
        }
    }

    let event_tables: Vec<EventTable> = event_tables
        .into_iter()
        .map(|(at, t)| {
            if !names.insert(t.name.clone()) {
                problems.add(
                    format!("{at}.name"),
                    format!(
                        "duplicate name {:?}; sources and event tables share names",
                        t.name
                    ),
                );
            }
            t
        })
        .collect();
    let config = Config {
        file: file.to_string(),
        detect,
        sources,
        ingest,
        nango_webhook,
        event_tables,
        proxy,
        persistence,
    };
    config.check_names(&mut problems);
    if problems.list.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError::Invalid {
            file: file.to_string(),
            problems: problems.list,
        })
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn valid_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with("__")
}

fn validate_source(
    at: &str,
    raw: RawSource,
    global_interval: Duration,
    global_timeout: Duration,
    global_cap: usize,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Problems,
) -> Option<SourceConfig> {
    let before = problems.list.len();
    if !valid_name(&raw.name) {
        problems.add(
            format!("{at}.name"),
            format!(
                "{:?} is not a valid source name: use 1-64 letters, digits, `_`, `-` or `.`",
                raw.name
            ),
        );
    }

    let takes_dsn = raw.kind.is_sql() || raw.kind == StoreKind::Redis;
    let dsn = secret_from(
        at,
        "dsn",
        raw.dsn.as_deref(),
        raw.dsn_env.as_deref(),
        raw.dsn_file.as_deref(),
        takes_dsn,
        env,
        problems,
    );
    let store = store_options(at, &raw, env, problems);

    // Preset or query (SQL), or the token-set shape (documents).
    let (query, mut fields, mut infer) = match (raw.preset, &raw.query) {
        _ if !raw.kind.is_sql() => {
            for (key, given) in [
                ("preset", raw.preset.is_some()),
                ("query", raw.query.is_some()),
                ("table", raw.table.is_some()),
            ] {
                if given {
                    problems.add(format!("{at}.{key}"), format!("only SQL sources take `{key}`; a {} source maps the keys of its documents with `fields`", raw.kind.as_str()));
                }
            }
            (
                Some(String::new()),
                RawFields::preset(&[("connection", "_key"), ("access_expires", "expires_at")]),
                Some(Inference::AccessExpires),
            )
        }
        (Some(_), Some(_)) => {
            problems.add(
                format!("{at}.query"),
                "`query` and `preset` are mutually exclusive: a preset writes the query",
            );
            (None, RawFields::default(), None)
        }
        (Some(preset), None) => match presets::build(preset, raw.kind, raw.table.as_deref()) {
            Ok(p) => (Some(p.query), p.fields, p.infer_last_refresh),
            Err(msg) => {
                problems.add(format!("{at}.preset"), msg);
                (None, RawFields::default(), None)
            }
        },
        (None, Some(q)) => {
            if raw.table.is_some() {
                problems.add(
                    format!("{at}.table"),
                    "`table` is only used with a `preset`",
                );
            }
            if q.trim().is_empty() {
                problems.add(format!("{at}.query"), "must not be empty");
            }
            (Some(q.clone()), RawFields::default(), None)
        }
        (None, None) => {
            problems.add(at, "one of `query` or `preset` is required");
            (None, RawFields::default(), None)
        }
    };
    if let Some(user) = raw.fields {
        if user.last_refresh.is_some() {
            infer = None;
        }
        fields = fields.overlay(user);
    }
    if raw.infer_last_refresh.is_some() {
        infer = raw.infer_last_refresh;
        fields.last_refresh = None;
    }

    let fat = format!("{at}.fields");
    let connection = match &fields.connection {
        Some(f) => field_ref(&format!("{fat}.connection"), f, FieldKind::Plain, problems),
        None => {
            if query.is_some() {
                problems.add(
                    format!("{fat}.connection"),
                    "is required: the column holding the connection id",
                );
            }
            None
        }
    };
    let tenant = fields
        .tenant
        .as_ref()
        .and_then(|f| field_ref(&format!("{fat}.tenant"), f, FieldKind::Plain, problems));
    let time = |name: &str, f: &Option<RawField>, problems: &mut Problems| {
        f.as_ref()
            .and_then(|f| time_field(&format!("{fat}.{name}"), f, problems))
    };
    let access_expires = time("access_expires", &fields.access_expires, problems);
    let refresh_expires = time("refresh_expires", &fields.refresh_expires, problems);
    let last_failure = time("last_failure", &fields.last_failure, problems);
    let authorized_at = time("authorized_at", &fields.authorized_at, problems);
    let refresh_token = fields.refresh_token.as_ref().and_then(|f| {
        field_ref(
            &format!("{fat}.refresh_token"),
            f,
            FieldKind::Plain,
            problems,
        )
    });
    let last_refresh = match (&fields.last_refresh, infer) {
        (Some(_), _) => {
            time("last_refresh", &fields.last_refresh, problems).map(LastRefresh::Field)
        }
        (None, Some(Inference::AccessExpires)) => {
            if fields.access_expires.is_none() {
                problems.add(
                    format!("{at}.infer_last_refresh"),
                    "`access_expires` inference needs `fields.access_expires`",
                );
            }
            Some(LastRefresh::Infer(Inference::AccessExpires))
        }
        (None, None) => {
            if query.is_some() {
                problems.add(
                    format!("{fat}.last_refresh"),
                    "is required (e.g. `updated_at`), or set `infer_last_refresh: access_expires`",
                );
            }
            None
        }
    };
    let status = fields.status.as_ref().and_then(|f| {
        let p = format!("{fat}.status");
        let at_ref = field_ref(&p, f, FieldKind::Status, problems)?;
        let map = f
            .map
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k.trim().to_lowercase(), v))
            .collect();
        Some(StatusField {
            at: at_ref,
            map,
            default: f.default.unwrap_or(Status::Unknown),
        })
    });
    let mut labels = Vec::new();
    for (name, f) in &raw.labels {
        let p = format!("{at}.labels.{name}");
        if !valid_label_name(name) {
            problems.add(
                &p,
                "not a valid Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*, no leading __)",
            );
        } else if RESERVED_LABELS.contains(&name.as_str()) {
            problems.add(
                &p,
                format!("`{name}` is set by the exporter; choose another label name"),
            );
        }
        if let Some(r) = field_ref(&p, f, FieldKind::Plain, problems) {
            labels.push((name.clone(), r));
        }
    }

    let provider_kind = raw.provider.unwrap_or(ProviderKind::Xero);
    let mut provider = provider_kind.profile();
    if provider_kind == ProviderKind::Custom {
        for (key, given) in [
            ("access_token_lifetime", raw.access_token_lifetime.is_some()),
            (
                "refresh_token_lifetime",
                raw.refresh_token_lifetime.is_some(),
            ),
        ] {
            if !given {
                problems.add(format!("{at}.{key}"), "is required with `provider: custom`");
            }
        }
        if let Some(name) = &raw.provider_name {
            if name.is_empty()
                || name.len() > 32
                || !name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                problems.add(
                    format!("{at}.provider_name"),
                    "use 1-32 lower-case letters, digits or `_`",
                );
            } else {
                provider.name = intern(name);
            }
        }
    } else if raw.provider_name.is_some() {
        problems.add(
            format!("{at}.provider_name"),
            "only a `custom` provider takes a name",
        );
    }
    if let Some(d) = raw.access_token_lifetime {
        provider.access_token_lifetime = to_chrono(d.0);
        if d.0.is_zero() {
            problems.add(
                format!("{at}.access_token_lifetime"),
                "must be greater than 0",
            );
        }
    }
    if let Some(d) = raw.refresh_token_lifetime {
        provider.refresh_token_idle_lifetime = to_chrono(d.0);
        if d.0.is_zero() {
            problems.add(
                format!("{at}.refresh_token_lifetime"),
                "must be greater than 0",
            );
        }
    }
    let interval = raw.interval.map_or(global_interval, |d| d.0);
    let timeout = raw.timeout.map_or(global_timeout, |d| d.0);
    if interval.is_zero() {
        problems.add(format!("{at}.interval"), "must be greater than 0");
    }
    if timeout.is_zero() {
        problems.add(format!("{at}.timeout"), "must be greater than 0");
    } else if timeout > interval {
        problems.add(
            format!("{at}.timeout"),
            format!(
                "the poll timeout ({}) must not exceed the poll interval ({})",
                humantime::format_duration(timeout),
                humantime::format_duration(interval)
            ),
        );
    }
    let backoff_max = raw
        .backoff_max
        .map_or(interval * defaults::BACKOFF_MAX_FACTOR, |d| {
            d.0.max(interval)
        });
    let max_connections = raw.max_connections.unwrap_or(global_cap);
    if max_connections == 0 {
        problems.add(format!("{at}.max_connections"), "must be at least 1");
    }

    if problems.list.len() != before {
        return None;
    }
    let store = match (store, query) {
        (Some(Store::Sql { .. }), Some(q)) => Some(Store::Sql { query: q }),
        (other, _) => other,
    };
    Some(SourceConfig {
        name: raw.name,
        kind: raw.kind,
        dsn,
        store: store?,
        mapping: Mapping {
            connection: connection?,
            tenant,
            last_refresh: last_refresh?,
            access_expires,
            refresh_expires,
            last_failure,
            authorized_at,
            status,
            labels,
            refresh_token,
        },
        provider,
        interval,
        timeout,
        backoff_max,
        max_connections,
    })
}

/// A provider name as a `&'static str` (label values are static): each distinct name is
/// allocated once for the life of the process, however often configs are parsed.
fn intern(name: &str) -> &'static str {
    static NAMES: std::sync::Mutex<BTreeSet<&'static str>> = std::sync::Mutex::new(BTreeSet::new());
    let mut names = NAMES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(n) = names.get(name) {
        return n;
    }
    let n: &'static str = Box::leak(name.to_string().into_boxed_str());
    names.insert(n);
    n
}

fn validate_event_table(
    at: &str,
    raw: RawEventTable,
    interval: Duration,
    timeout: Duration,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Problems,
) -> Option<EventTable> {
    let before = problems.list.len();
    if !raw.kind.is_sql() {
        problems.add(
            format!("{at}.kind"),
            "event tables are read from sqlite, postgres or mysql",
        );
    }
    if !valid_name(&raw.name) {
        problems.add(
            format!("{at}.name"),
            "use 1-64 letters, digits, `_`, `-` or `.`",
        );
    }
    let ident = presets::valid_table;
    if !ident(&raw.table) {
        problems.add(
            format!("{at}.table"),
            format!("{:?} is not a valid table name", raw.table),
        );
    }
    let id_column = raw.id_column.unwrap_or_else(|| "id".into());
    if !ident(&id_column) || id_column.contains('.') {
        problems.add(
            format!("{at}.id_column"),
            format!("{id_column:?} is not a valid column name"),
        );
    }
    if let Some(t) = &raw.time_column {
        if !ident(t) || t.contains('.') {
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
    for (k, v) in &raw.columns {
        if !EVENT_FIELDS.contains(&k.as_str()) {
            problems.add(
                format!("{at}.columns.{k}"),
                format!(
                    "unknown event field, expected one of {}",
                    EVENT_FIELDS.join(", ")
                ),
            );
        }
        if !ident(v) || v.contains('.') {
            problems.add(
                format!("{at}.columns.{k}"),
                format!("{v:?} is not a valid column name"),
            );
        }
    }
    // No `columns`: every field from the column of its name. With `columns`: the listed fields,
    // plus `type` and `connection` (from columns of those names unless listed).
    let columns: Vec<(&'static str, String)> = EVENT_FIELDS
        .iter()
        .filter(|f| {
            raw.columns.is_empty()
                || raw.columns.contains_key(**f)
                || matches!(**f, "type" | "connection")
        })
        .map(|f| {
            (
                *f,
                raw.columns
                    .get(*f)
                    .cloned()
                    .unwrap_or_else(|| f.to_string()),
            )
        })
        .collect();
    let dsn = secret_from(
        at,
        "dsn",
        raw.dsn.as_deref(),
        raw.dsn_env.as_deref(),
        raw.dsn_file.as_deref(),
        true,
        env,
        problems,
    );
    let batch = raw.batch.unwrap_or(1000);
    if batch == 0 {
        problems.add(format!("{at}.batch"), "must be at least 1");
    }
    let interval = raw.interval.map_or(interval, |d| d.0);
    let timeout = raw.timeout.map_or(timeout, |d| d.0);
    if timeout > interval || timeout.is_zero() {
        problems.add(
            format!("{at}.timeout"),
            "must be greater than 0 and at most the interval",
        );
    }
    if problems.list.len() != before {
        return None;
    }
    let provider = raw.provider.unwrap_or(ProviderKind::Xero).profile();
    let store = SourceConfig {
        name: raw.name.clone(),
        kind: raw.kind,
        dsn,
        store: Store::Sql {
            query: String::new(),
        },
        mapping: Mapping {
            connection: FieldRef {
                column: "ote_id".into(),
                json_path: Vec::new(),
            },
            tenant: None,
            last_refresh: LastRefresh::Infer(Inference::AccessExpires),
            access_expires: None,
            refresh_expires: None,
            last_failure: None,
            authorized_at: None,
            status: None,
            refresh_token: None,
            labels: columns
                .iter()
                .map(|(f, _)| {
                    (
                        f.to_string(),
                        FieldRef {
                            column: format!("ote_{f}"),
                            json_path: Vec::new(),
                        },
                    )
                })
                // The cursor's time, read last.
                .chain(raw.time_column.iter().map(|_| {
                    (
                        "cursor_time".to_string(),
                        FieldRef {
                            column: "ote_cursor_time".into(),
                            json_path: Vec::new(),
                        },
                    )
                }))
                .collect(),
        },
        provider,
        interval,
        timeout,
        backoff_max: interval * defaults::BACKOFF_MAX_FACTOR,
        max_connections: batch,
    };
    Some(EventTable {
        name: raw.name,
        store,
        table: raw.table,
        id_column,
        time_column: raw.time_column,
        columns,
        state_file: raw.state_file,
        start: raw.start.unwrap_or_default(),
        batch,
    })
}

/// A secret given inline, by environment variable or by file (exactly one when `wanted`, none
/// otherwise).
#[allow(clippy::too_many_arguments)]
fn secret_from(
    at: &str,
    key: &str,
    inline: Option<&str>,
    var: Option<&str>,
    file: Option<&Path>,
    wanted: bool,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Problems,
) -> Option<Secret> {
    let given = [inline.is_some(), var.is_some(), file.is_some()]
        .iter()
        .filter(|g| **g)
        .count();
    if !wanted {
        if given > 0 {
            problems.add(at, format!("this kind of source takes no `{key}`"));
        }
        return None;
    }
    match (inline, var, file) {
        (Some(d), None, None) => Some(Secret::new(d)),
        (None, Some(var), None) => match env(var) {
            Some(v) if !v.trim().is_empty() => Some(Secret::new(v.trim())),
            _ => {
                problems.add(
                    format!("{at}.{key}_env"),
                    format!("environment variable {var} is not set or empty"),
                );
                None
            }
        },
        (None, None, Some(path)) => match std::fs::read_to_string(path) {
            Ok(v) if !v.trim().is_empty() => Some(Secret::new(v.trim())),
            Ok(_) => {
                problems.add(
                    format!("{at}.{key}_file"),
                    format!("{} is empty", path.display()),
                );
                None
            }
            Err(e) => {
                problems.add(
                    format!("{at}.{key}_file"),
                    format!("cannot read {}: {e}", path.display()),
                );
                None
            }
        },
        (None, None, None) => {
            problems.add(
                at,
                format!("one of `{key}`, `{key}_env` or `{key}_file` is required"),
            );
            None
        }
        _ => {
            problems.add(
                at,
                format!("give only one of `{key}`, `{key}_env` and `{key}_file`"),
            );
            None
        }
    }
}

/// Options of the store kind; options of other kinds are problems.
fn store_options(
    at: &str,
    raw: &RawSource,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Problems,
) -> Option<Store> {
    let before = problems.list.len();
    let kind = raw.kind;
    let only = |key: &str, given: bool, for_kind: StoreKind, problems: &mut Problems| {
        if given && kind != for_kind {
            problems.add(
                format!("{at}.{key}"),
                format!("only {} sources take `{key}`", for_kind.as_str()),
            );
        }
    };
    only(
        "key_pattern",
        raw.key_pattern.is_some(),
        StoreKind::Redis,
        problems,
    );
    only("value", raw.value.is_some(), StoreKind::Redis, problems);
    only(
        "max_keys",
        raw.max_keys.is_some(),
        StoreKind::Redis,
        problems,
    );
    only("path", raw.path.is_some(), StoreKind::File, problems);
    only("layout", raw.layout.is_some(), StoreKind::File, problems);
    only("url", raw.url.is_some(), StoreKind::Http, problems);
    only(
        "items_path",
        raw.items_path.is_some(),
        StoreKind::Http,
        problems,
    );
    only(
        "bearer_token_env",
        raw.bearer_token_env.is_some(),
        StoreKind::Http,
        problems,
    );
    only(
        "bearer_token_file",
        raw.bearer_token_file.is_some(),
        StoreKind::Http,
        problems,
    );
    only(
        "headers",
        !raw.headers.is_empty(),
        StoreKind::Http,
        problems,
    );
    if raw.ca_file.is_some() && !matches!(kind, StoreKind::Http | StoreKind::Redis) {
        problems.add(
            format!("{at}.ca_file"),
            "only http and redis sources take `ca_file`",
        );
    }
    let store = match kind {
        StoreKind::Sqlite | StoreKind::Postgres | StoreKind::Mysql => Store::Sql {
            query: String::new(),
        },
        StoreKind::Redis => {
            let key_pattern = raw.key_pattern.clone().unwrap_or_default();
            if key_pattern.trim().is_empty() {
                problems.add(
                    format!("{at}.key_pattern"),
                    "is required: the SCAN pattern of the token keys, e.g. `qbo:tokens:*`",
                );
            }
            let max_keys = raw.max_keys.unwrap_or(defaults::MAX_KEYS);
            if max_keys == 0 {
                problems.add(format!("{at}.max_keys"), "must be at least 1");
            }
            Store::Redis {
                key_pattern,
                value: raw.value.unwrap_or(RedisValue::Hash),
                max_keys,
                ca_file: raw.ca_file.clone(),
            }
        }
        StoreKind::File => match &raw.path {
            Some(path) => Store::File {
                path: path.clone(),
                layout: raw.layout.unwrap_or_default(),
            },
            None => {
                problems.add(format!("{at}.path"), "is required: the token file");
                return None;
            }
        },
        StoreKind::Http => {
            let url = raw.url.clone().unwrap_or_default();
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                problems.add(
                    format!("{at}.url"),
                    "is required: an http:// or https:// URL",
                );
            }
            let items_path = match raw.items_path.as_deref() {
                None | Some("") => Vec::new(),
                Some(p) => parse_path(p).unwrap_or_else(|| {
                    problems.add(
                        format!("{at}.items_path"),
                        format!("{p:?} is not a dotted path like `data.connections`"),
                    );
                    Vec::new()
                }),
            };
            let bearer_token = if raw.bearer_token_env.is_some() || raw.bearer_token_file.is_some()
            {
                secret_from(
                    at,
                    "bearer_token",
                    None,
                    raw.bearer_token_env.as_deref(),
                    raw.bearer_token_file.as_deref(),
                    true,
                    env,
                    problems,
                )
            } else {
                None
            };
            for name in raw.headers.keys() {
                if name.eq_ignore_ascii_case("authorization") {
                    problems.add(format!("{at}.headers.{name}"), "put credentials in `bearer_token_env` or `bearer_token_file`, not in the config");
                }
            }
            Store::Http {
                url,
                items_path,
                bearer_token,
                headers: raw
                    .headers
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                ca_file: raw.ca_file.clone(),
            }
        }
    };
    (problems.list.len() == before).then_some(store)
}

fn to_chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

#[derive(PartialEq)]
enum FieldKind {
    Plain,
    Time,
    Status,
}

fn parse_path(p: &str) -> Option<Vec<String>> {
    let parts: Vec<String> = p.split('.').map(|s| s.trim().to_string()).collect();
    if parts.iter().any(|s| s.is_empty()) {
        None
    } else {
        Some(parts)
    }
}

fn field_ref(at: &str, f: &RawField, kind: FieldKind, problems: &mut Problems) -> Option<FieldRef> {
    let before = problems.list.len();
    if f.column.trim().is_empty() {
        problems.add(
            format!("{at}.column"),
            "must name a column of the query result",
        );
    }
    if kind != FieldKind::Time {
        if f.format.is_some() {
            problems.add(
                format!("{at}.format"),
                "only timestamp fields take a `format`",
            );
        }
        if f.relative_to.is_some() {
            problems.add(
                format!("{at}.relative_to"),
                "only timestamp fields take `relative_to`",
            );
        }
    }
    if kind != FieldKind::Status {
        if f.map.is_some() {
            problems.add(
                format!("{at}.map"),
                "only the `status` field takes a value `map`",
            );
        }
        if f.default.is_some() {
            problems.add(
                format!("{at}.default"),
                "only the `status` field takes a `default`",
            );
        }
    }
    let json_path = match &f.json_path {
        None => Vec::new(),
        Some(p) => match parse_path(p) {
            Some(v) => v,
            None => {
                problems.add(
                    format!("{at}.json_path"),
                    format!("{p:?} is not a dotted path of keys like `expires_at` or `token.expires_at`"),
                );
                Vec::new()
            }
        },
    };
    if problems.list.len() != before {
        return None;
    }
    Some(FieldRef {
        column: f.column.trim().to_string(),
        json_path,
    })
}

fn time_field(at: &str, f: &RawField, problems: &mut Problems) -> Option<TimeField> {
    let r = field_ref(at, f, FieldKind::Time, problems)?;
    let format = f.format.unwrap_or_default();
    let relative_to = match (format, &f.relative_to) {
        (TimeFormat::RelativeSeconds, Some(col)) => Some(FieldRef {
            column: col.trim().to_string(),
            json_path: Vec::new(),
        }),
        (TimeFormat::RelativeSeconds, None) => {
            problems.add(
                format!("{at}.relative_to"),
                "`format: relative_seconds` needs `relative_to`: the column with the time the seconds count from (e.g. `fetched_at`)",
            );
            return None;
        }
        (_, Some(_)) => {
            problems.add(
                format!("{at}.relative_to"),
                "is only used with `format: relative_seconds`",
            );
            return None;
        }
        (_, None) => None,
    };
    Some(TimeField {
        at: r,
        format,
        relative_to,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(k: &str) -> Option<String> {
        match k {
            "PG_DSN" => Some("postgres://exporter:s3cr3t@db/app".into()),
            _ => None,
        }
    }

    fn ok(text: &str) -> Config {
        parse(text, "test.yml", &env).unwrap_or_else(|e| panic!("{e}"))
    }

    fn problems(text: &str) -> Vec<String> {
        parse(text, "test.yml", &env)
            .expect_err("config should be invalid")
            .problems()
            .into_iter()
            .map(|p| p.to_string())
            .collect()
    }

    #[test]
    fn minimal_query_source_gets_the_defaults() {
        let c = ok(r#"
sources:
  - name: app
    kind: sqlite
    dsn: /var/lib/app/app.db
    query: SELECT id, updated_at FROM xero_tokens
    fields:
      connection: id
      last_refresh: updated_at
"#);
        let s = &c.sources[0];
        assert_eq!(s.interval, defaults::POLL_INTERVAL);
        assert_eq!(s.timeout, defaults::POLL_TIMEOUT);
        assert_eq!(s.max_connections, defaults::MAX_CONNECTIONS_PER_SOURCE);
        assert_eq!(s.provider.name(), "xero");
        assert_eq!(s.mapping.connection.column, "id");
        assert!(
            matches!(s.mapping.last_refresh, LastRefresh::Field(ref f) if f.at.column == "updated_at")
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_key_path() {
        let p = problems(
            r#"
global:
  poll_interval: soon
sources:
  - name: a
    kind: sqlite
    dsn: x.db
    query: SELECT 1
    fields:
      connection: id
      last_refresh: {column: t, format: weekly}
  - name: b
    kind: oracle
  - name: c
    kind: postgres
    dsn_env: MISSING_VAR
    query: SELECT 1
    colour: blue
  - name: d
    kind: postgres
    dsn_env: MISSING_VAR
    query: SELECT 1
    fields: {connection: id}
extra: 1
"#,
        );
        let joined = p.join("\n");
        assert!(joined.contains("extra: unknown key"), "{joined}");
        assert!(
            joined.contains(
                "global.poll_interval: invalid value: string \"soon\", expected a duration"
            ),
            "{joined}"
        );
        assert!(
            joined.contains("sources[0].fields.last_refresh"),
            "{joined}"
        );
        assert!(joined.contains("weekly"), "{joined}");
        assert!(
            joined.contains("sources[1].kind: unknown variant `oracle`"),
            "{joined}"
        );
        assert!(
            joined.contains("sources[2].colour: unknown field `colour`"),
            "{joined}"
        );
        assert!(
            joined.contains("sources[3].dsn_env: environment variable MISSING_VAR is not set"),
            "{joined}"
        );
        assert!(
            joined.contains("sources[3].fields.last_refresh: is required"),
            "{joined}"
        );
        assert!(p.len() >= 6, "{joined}");
    }

    #[test]
    fn an_event_table_time_column_must_be_a_column_other_than_the_id() {
        let p = problems(
            r#"
event_tables:
  - {name: a, kind: sqlite, dsn: x.db, table: ev, state_file: a.cursor, time_column: id}
  - {name: b, kind: sqlite, dsn: x.db, table: ev, state_file: b.cursor, time_column: "t; DROP"}
"#,
        );
        let joined = p.join("\n");
        assert!(
            joined.contains("event_tables[0].time_column: must differ from id_column"),
            "{joined}"
        );
        assert!(
            joined.contains("event_tables[1].time_column: \"t; DROP\" is not a valid column name"),
            "{joined}"
        );
        let c = ok(
            "event_tables:\n  - {name: a, kind: sqlite, dsn: x.db, table: ev, state_file: a.cursor, time_column: created_at, id_column: uid}\n",
        );
        assert_eq!(c.event_tables[0].time_column.as_deref(), Some("created_at"));
    }

    /// Found by `fuzz/run.sh` (target config, LeakSanitizer): every parse leaked a fresh copy of
    /// each custom provider name.
    #[test]
    fn custom_provider_names_are_allocated_once_however_often_configs_are_parsed() {
        let yaml = "sources:\n  - {name: s, kind: sqlite, dsn: x.db, provider: custom, provider_name: salesforce, access_token_lifetime: 2h, refresh_token_lifetime: 90d, query: SELECT 1, fields: {connection: id, last_refresh: t}}\n";
        let a = ok(yaml).sources[0].provider.name;
        let b = ok(yaml).sources[0].provider.name;
        assert_eq!(a, "salesforce");
        assert!(std::ptr::eq(a, b));
    }

    #[test]
    fn error_message_names_the_file() {
        let e = parse("sources: 3", "/etc/ote/config.yml", &env).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("config file /etc/ote/config.yml has 1 problem(s)"),
            "{e}"
        );
        let e = parse("sources: [\n  - {", "/etc/ote/config.yml", &env).unwrap_err();
        assert!(matches!(e, ConfigError::Syntax { .. }), "{e}");
        assert!(e.to_string().contains("/etc/ote/config.yml"), "{e}");
    }

    #[test]
    fn dsn_comes_from_the_environment_and_never_prints() {
        let c = ok(r#"
sources:
  - name: pg
    kind: postgres
    dsn_env: PG_DSN
    preset: xero_tokens
"#);
        assert_eq!(
            c.sources[0].dsn.as_ref().unwrap().expose(),
            "postgres://exporter:s3cr3t@db/app"
        );
        assert!(!format!("{c:?}").contains("s3cr3t"));
    }

    #[test]
    fn field_options_are_checked_against_the_field_kind() {
        let p = problems(
            r#"
sources:
  - name: a
    kind: sqlite
    dsn: x.db
    query: SELECT 1
    fields:
      connection: {column: id, format: rfc3339}
      tenant: {column: t, map: {a: active}}
      last_refresh: {column: expires_in, format: relative_seconds}
      access_expires: {column: e, relative_to: x}
      status: {column: s, json_path: "a..b"}
"#,
        );
        let joined = p.join("\n");
        assert!(
            joined.contains("fields.connection.format: only timestamp fields"),
            "{joined}"
        );
        assert!(
            joined.contains("fields.tenant.map: only the `status` field"),
            "{joined}"
        );
        assert!(
            joined.contains("fields.last_refresh.relative_to: `format: relative_seconds` needs"),
            "{joined}"
        );
        assert!(
            joined.contains("fields.access_expires.relative_to: is only used with"),
            "{joined}"
        );
        assert!(joined.contains("fields.status.json_path"), "{joined}");
    }

    #[test]
    fn timeout_longer_than_interval_and_duplicate_names_are_rejected() {
        let p = problems(
            r#"
sources:
  - {name: a, kind: sqlite, dsn: x.db, preset: xero_tokens, interval: 5s, timeout: 10s}
  - {name: a, kind: sqlite, dsn: x.db, preset: xero_tokens}
"#,
        );
        let joined = p.join("\n");
        assert!(
            joined.contains(
                "sources[0].timeout: the poll timeout (10s) must not exceed the poll interval (5s)"
            ),
            "{joined}"
        );
        assert!(
            joined.contains("sources[1].name: duplicate source name"),
            "{joined}"
        );
    }

    #[test]
    fn reserved_and_invalid_label_names_are_rejected() {
        let p = problems(
            r#"
sources:
  - name: a
    kind: sqlite
    dsn: x.db
    preset: xero_tokens
    labels:
      tenant: tenant_name
      "bad-name": x
      __meta: zed
"#,
        );
        let joined = p.join("\n");
        assert!(
            joined.contains("labels.tenant: `tenant` is set by the exporter"),
            "{joined}"
        );
        assert!(
            joined.contains("labels.bad-name: not a valid Prometheus label name"),
            "{joined}"
        );
        assert!(joined.contains("labels.__meta: not a valid"), "{joined}");
    }

    #[test]
    fn user_fields_override_preset_fields() {
        let c = ok(r#"
sources:
  - name: a
    kind: sqlite
    dsn: x.db
    preset: xero_tokens
    table: app_xero_tokens
    fields:
      last_refresh: updated_at
"#);
        let s = &c.sources[0];
        let q = s.store.query().unwrap();
        assert!(q.contains("app_xero_tokens"), "{q}");
        assert!(
            matches!(s.mapping.last_refresh, LastRefresh::Field(ref f) if f.at.column == "updated_at")
        );
    }

    #[test]
    fn preset_and_store_kind_must_fit() {
        let p = problems("sources: [{name: n, kind: sqlite, dsn: x.db, preset: nango}]");
        assert!(
            p[0].contains("sources[0].preset: the nango preset reads Nango's PostgreSQL schema"),
            "{p:?}"
        );
        let p = problems("sources: [{name: n, kind: sqlite, dsn: x.db, preset: xero_tokens, table: \"x; drop\"}]");
        assert!(p[0].contains("not a valid table name"), "{p:?}");
    }

    #[test]
    fn options_of_other_store_kinds_and_missing_kind_options_are_reported() {
        let p = problems(
            r#"
sources:
  - {name: a, kind: sqlite, dsn: x.db, preset: xero_tokens, key_pattern: "x:*", url: "http://h/"}
  - {name: b, kind: redis, dsn: "redis://h", query: SELECT 1}
  - {name: c, kind: file}
  - {name: d, kind: http, url: "ftp://h", headers: {Authorization: Bearer x}}
  - {name: e, kind: file, path: /x.json, dsn: secret}
"#,
        );
        let joined = p.join("\n");
        assert!(
            joined.contains("sources[0].key_pattern: only redis sources take `key_pattern`"),
            "{joined}"
        );
        assert!(
            joined.contains("sources[0].url: only http sources take `url`"),
            "{joined}"
        );
        assert!(
            joined.contains("sources[1].query: only SQL sources take `query`"),
            "{joined}"
        );
        assert!(
            joined.contains("sources[1].key_pattern: is required"),
            "{joined}"
        );
        assert!(joined.contains("sources[2].path: is required"), "{joined}");
        assert!(
            joined.contains("sources[3].url: is required: an http:// or https:// URL"),
            "{joined}"
        );
        assert!(
            joined.contains(
                "sources[3].headers.Authorization: put credentials in `bearer_token_env`"
            ),
            "{joined}"
        );
        assert!(
            joined.contains("sources[4]: this kind of source takes no `dsn`"),
            "{joined}"
        );
    }

    #[test]
    fn custom_provider_needs_both_lifetimes_and_may_be_named() {
        let p = problems("sources: [{name: a, kind: file, path: /t.json, provider: custom}, {name: b, kind: file, path: /t.json, provider: xero, provider_name: x}]");
        let joined = p.join("\n");
        assert!(
            joined
                .contains("sources[0].access_token_lifetime: is required with `provider: custom`"),
            "{joined}"
        );
        assert!(
            joined
                .contains("sources[0].refresh_token_lifetime: is required with `provider: custom`"),
            "{joined}"
        );
        assert!(
            joined.contains("sources[1].provider_name: only a `custom` provider takes a name"),
            "{joined}"
        );
        let c = ok("sources: [{name: a, kind: file, path: /t.json, provider: custom, provider_name: salesforce, access_token_lifetime: 2h, refresh_token_lifetime: 90d}]");
        assert_eq!(c.sources[0].provider.name(), "salesforce");
        assert_eq!(
            c.sources[0].provider.refresh_token_idle_lifetime.num_days(),
            90
        );
    }

    #[test]
    fn document_sources_default_to_the_token_set_shape() {
        let c = ok("sources: [{name: a, kind: file, path: /t.json}]");
        let m = &c.sources[0].mapping;
        assert_eq!(m.connection.column, "_key");
        assert_eq!(m.access_expires.as_ref().unwrap().at.column, "expires_at");
        assert_eq!(m.last_refresh, LastRefresh::Infer(Inference::AccessExpires));
    }
}
