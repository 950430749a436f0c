//! The `sources` section: one entry per store to read token state from. The keys every source
//! takes are [`RawCommon`]; each store kind's own keys are its own struct ([`RawSql`],
//! [`RawRedis`], [`RawFile`], [`RawHttp`]), so a key of another kind is an unknown key of this
//! one, reported with the kinds that take it.

use super::common::{
    intern, parse_path, to_chrono, valid_name, HumanDuration, Problems, Schedule, SecretRef,
};
use super::defaults;
use super::fields::{self, Mapping, RawField, RawFields};
use super::presets::{self, Inference, Preset};
use crate::model::StoreKind;
use crate::provider::{ProviderKind, ProviderProfile};
use crate::secret::Secret;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// One validated source.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceConfig {
    pub name: String,
    /// What to read and how, per store kind.
    pub store: Store,
    pub mapping: Mapping,
    pub provider: ProviderProfile,
    pub schedule: Schedule,
    /// Cap on exported per-connection series (aggregates always cover every connection).
    pub max_connections: usize,
    /// With `fields.provider`: rows of providers the exporter has no profile for are exported
    /// with these lifetimes under their own name; `None`: they are left out.
    pub unknown_providers: Option<UnknownProviders>,
    /// This instance's shard: only the shard's connections are exported.
    pub shard: crate::config::Shard,
    /// The query itself returns only the shard's rows (the database computes the hash): rows
    /// are not filtered again, so the database's text of an id is the one that counts.
    pub shard_in_query: bool,
}

/// Lifetimes for rows of providers the exporter has no profile for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownProviders {
    pub access_token_lifetime: chrono::Duration,
    pub refresh_token_lifetime: chrono::Duration,
}

impl SourceConfig {
    pub fn kind(&self) -> StoreKind {
        self.store.kind()
    }
}

/// The SQL stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlKind {
    Sqlite,
    Postgres,
    Mysql,
}

impl SqlKind {
    pub fn store_kind(self) -> StoreKind {
        match self {
            SqlKind::Sqlite => StoreKind::Sqlite,
            SqlKind::Postgres => StoreKind::Postgres,
            SqlKind::Mysql => StoreKind::Mysql,
        }
    }

    fn of(kind: StoreKind) -> Option<SqlKind> {
        match kind {
            StoreKind::Sqlite => Some(SqlKind::Sqlite),
            StoreKind::Postgres => Some(SqlKind::Postgres),
            StoreKind::Mysql => Some(SqlKind::Mysql),
            StoreKind::Redis | StoreKind::File | StoreKind::Http => None,
        }
    }
}

/// A connection to an SQL store (sources and event tables).
#[derive(Debug, Clone, PartialEq)]
pub struct SqlConnection {
    pub kind: SqlKind,
    /// Connection string; for SQLite a path or a `sqlite:` URL.
    pub dsn: Secret,
    /// Deadline for a connection and a statement (the poll timeout).
    pub timeout: Duration,
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

impl FileLayout {
    pub fn as_str(self) -> &'static str {
        match self {
            FileLayout::Auto => "auto",
            FileLayout::Single => "single",
            FileLayout::List => "list",
            FileLayout::Map => "map",
        }
    }
}

/// Where and how a source reads, per store kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Store {
    Sql {
        connection: SqlConnection,
        query: String,
        /// The preset that wrote the query and the table it reads, to tell a table of another
        /// shape apart at the first poll.
        preset: Option<(Preset, String)>,
    },
    Redis(RedisStore),
    File(FileStore),
    Http(HttpStore),
}

#[derive(Debug, Clone, PartialEq)]
pub struct RedisStore {
    /// `redis://` or `rediss://` URL, with the password or ACL user.
    pub url: Secret,
    /// SCAN pattern, e.g. `qbo:tokens:*`.
    pub key_pattern: String,
    pub value: RedisValue,
    /// Most keys read per poll.
    pub max_keys: usize,
    /// PEM CA bundle to trust instead of the system roots (`rediss://` only).
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FileStore {
    pub path: PathBuf,
    pub layout: FileLayout,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HttpStore {
    pub url: String,
    /// Path of the list of token sets inside the answer (empty: the answer itself).
    pub items_path: Vec<String>,
    pub bearer_token: Option<Secret>,
    /// Extra request headers (not secrets: put those in `bearer_token_env`).
    pub headers: Vec<(String, String)>,
    /// PEM CA bundle to trust in addition to the system roots.
    pub ca_file: Option<PathBuf>,
    /// Deadline of one request.
    pub timeout: Duration,
}

impl Store {
    pub fn kind(&self) -> StoreKind {
        match self {
            Store::Sql { connection, .. } => connection.kind.store_kind(),
            Store::Redis(_) => StoreKind::Redis,
            Store::File(_) => StoreKind::File,
            Store::Http(_) => StoreKind::Http,
        }
    }

    /// The SQL query, for SQL stores.
    pub fn query(&self) -> Option<&str> {
        match self {
            Store::Sql { query, .. } => Some(query),
            _ => None,
        }
    }
}

/// Keys every source takes; the rest go to its kind's struct.
#[derive(Deserialize)]
struct RawCommon {
    /// Unique name, the `source` label.
    name: String,
    /// `sqlite`, `postgres`, `mysql`, `redis`, `file` or `http`.
    kind: StoreKind,
    /// Provider profile, default `xero`.
    provider: Option<ProviderKind>,
    /// The `provider` label of a `custom` profile (default `custom`).
    provider_name: Option<String>,
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
    /// The zone of naive timestamps (no offset) in this source: an IANA name, an offset,
    /// `UTC` (the default), or `session` (SQL servers: the server's default zone).
    timezone: Option<String>,
    /// With `fields.provider`: what to do with rows of providers without a profile.
    unknown_providers: Option<RawUnknownProviders>,
    /// The keys of the store kind.
    #[serde(flatten)]
    rest: serde_json::Map<String, serde_json::Value>,
}

/// `unknown_providers`: export rows of providers without a profile (with these lifetimes) or
/// leave them out (the default).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUnknownProviders {
    /// Export them under their own provider name (default false: left out).
    export: bool,
    access_token_lifetime: Option<HumanDuration>,
    refresh_token_lifetime: Option<HumanDuration>,
}

/// Keys of the SQL kinds (`sqlite`, `postgres`, `mysql`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSql {
    /// Inline connection string (SQLite paths; avoid for anything with a password).
    dsn: Option<String>,
    /// Environment variable holding the connection string.
    dsn_env: Option<String>,
    /// File holding the connection string (Kubernetes secrets).
    dsn_file: Option<PathBuf>,
    /// A known schema: `xero_tokens`, `nango`, `token_set_json`, `laravel_xero`, `frappe`.
    preset: Option<Preset>,
    /// Table for the preset, when not its default.
    table: Option<String>,
    /// A SELECT returning one row per connection.
    query: Option<String>,
}

/// Keys of `redis` sources.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRedis {
    dsn: Option<String>,
    dsn_env: Option<String>,
    dsn_file: Option<PathBuf>,
    /// SCAN pattern of the token keys.
    key_pattern: Option<String>,
    /// `hash` or `json`.
    value: Option<RedisValue>,
    /// Most keys read per poll (default 100000).
    max_keys: Option<usize>,
    /// PEM CA bundle to trust (`rediss://`).
    ca_file: Option<PathBuf>,
}

/// Keys of `file` sources.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    /// The token file (JSON or YAML).
    path: Option<PathBuf>,
    /// `auto`, `single`, `list` or `map`.
    layout: Option<FileLayout>,
}

/// Keys of `http` sources.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    /// The JSON endpoint.
    url: Option<String>,
    /// Dotted path of the list inside the answer.
    items_path: Option<String>,
    /// Environment variable holding a bearer token.
    bearer_token_env: Option<String>,
    /// File holding a bearer token.
    bearer_token_file: Option<PathBuf>,
    /// Extra request headers (not secrets).
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// PEM CA bundle to trust.
    ca_file: Option<PathBuf>,
}

/// The keys each kind takes besides the common ones, for messages about keys of another kind.
fn kind_keys(kind: StoreKind) -> &'static [&'static str] {
    match kind {
        StoreKind::Sqlite | StoreKind::Postgres | StoreKind::Mysql => {
            &["dsn", "dsn_env", "dsn_file", "preset", "table", "query"]
        }
        StoreKind::Redis => &[
            "dsn",
            "dsn_env",
            "dsn_file",
            "key_pattern",
            "value",
            "max_keys",
            "ca_file",
        ],
        StoreKind::File => &["path", "layout"],
        StoreKind::Http => &[
            "url",
            "items_path",
            "bearer_token_env",
            "bearer_token_file",
            "headers",
            "ca_file",
        ],
    }
}

const ALL_KINDS: [StoreKind; 6] = [
    StoreKind::Sqlite,
    StoreKind::Postgres,
    StoreKind::Mysql,
    StoreKind::Redis,
    StoreKind::File,
    StoreKind::Http,
];

/// Report keys of `rest` that `kind` does not take: a key of other kinds names them.
fn foreign_keys(
    at: &str,
    kind: StoreKind,
    rest: &mut serde_json::Map<String, serde_json::Value>,
    problems: &mut Problems,
) {
    let own = kind_keys(kind);
    let foreign: Vec<String> = rest
        .keys()
        .filter(|k| !own.contains(&k.as_str()))
        .cloned()
        .collect();
    for key in foreign {
        rest.remove(&key);
        let takers: Vec<&str> = ALL_KINDS
            .iter()
            .filter(|k| kind_keys(**k).contains(&key.as_str()))
            .map(|k| k.as_str())
            .collect();
        if takers.is_empty() {
            problems.add(
                format!("{at}.{key}"),
                format!("unknown field `{key}`, expected one of the keys of every source (`name`, `kind`, `provider`, `fields`, `labels`, `interval`, ...) or of a {} source ({})", kind.as_str(), own.join(", ")),
            );
        } else {
            let sql = ["sqlite", "postgres", "mysql"];
            let mut who: Vec<&str> = takers
                .iter()
                .filter(|t| !sql.contains(t))
                .copied()
                .collect();
            if sql.iter().all(|k| takers.contains(k)) {
                who.insert(0, "SQL");
            }
            let who = who.join(" and ");
            problems.add(
                format!("{at}.{key}"),
                format!(
                    "only {who} sources take `{key}`; this one is {}",
                    kind.as_str()
                ),
            );
        }
    }
}

/// Defaults from `global`.
pub(crate) struct Global {
    pub(crate) interval: Duration,
    pub(crate) timeout: Duration,
    pub(crate) cap: usize,
}

/// What the store-kind keys give the rest of the source: the store (without the query), and
/// for SQL stores the query, fields and inference of a preset or a query.
struct KindParts {
    store: Option<Store>,
    /// For SQL: the query (`None` when neither a query nor a preset was given).
    query: Option<String>,
    fields: RawFields,
    infer: Option<Inference>,
    /// Extra labels a preset maps (label name, column); the user's `labels` come over them.
    labels: Vec<(&'static str, &'static str)>,
}

fn sql_parts(
    at: &str,
    kind: SqlKind,
    raw: RawSql,
    timeout: Duration,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Problems,
) -> KindParts {
    let dsn = SecretRef::new(
        raw.dsn.as_deref(),
        raw.dsn_env.as_deref(),
        raw.dsn_file.as_ref(),
    )
    .read(at, "dsn", env, problems);
    let mut labels = Vec::new();
    let (query, fields, infer) = match (raw.preset, &raw.query) {
        (Some(_), Some(_)) => {
            problems.add(
                format!("{at}.query"),
                "`query` and `preset` are mutually exclusive: a preset writes the query",
            );
            (None, RawFields::default(), None)
        }
        (Some(preset), None) => {
            match presets::build(preset, kind.store_kind(), raw.table.as_deref()) {
                Ok(p) => {
                    labels = p.labels;
                    (Some(p.query), p.fields, p.infer_last_refresh)
                }
                Err(msg) => {
                    problems.add(format!("{at}.preset"), msg);
                    (None, RawFields::default(), None)
                }
            }
        }
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
    KindParts {
        store: dsn.zip(query.clone()).map(|(dsn, query)| Store::Sql {
            connection: SqlConnection { kind, dsn, timeout },
            query,
            preset: raw.preset.map(|p| {
                let table = raw.table.clone().unwrap_or(p.default_table().to_string());
                (p, table)
            }),
        }),
        query,
        fields,
        infer,
        labels,
    }
}

/// Documents (hashes, JSON objects) default to the token-set shape: the key is the connection,
/// `expires_at` the access expiry.
fn document_parts(store: Option<Store>) -> KindParts {
    KindParts {
        store,
        query: Some(String::new()),
        fields: RawFields::preset(&[("connection", "_key"), ("access_expires", "expires_at")]),
        infer: Some(Inference::AccessExpires),
        labels: Vec::new(),
    }
}

fn redis_store(
    at: &str,
    raw: RawRedis,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Problems,
) -> Option<Store> {
    let url = SecretRef::new(
        raw.dsn.as_deref(),
        raw.dsn_env.as_deref(),
        raw.dsn_file.as_ref(),
    )
    .read(at, "dsn", env, problems);
    let key_pattern = raw.key_pattern.unwrap_or_default();
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
    Some(Store::Redis(RedisStore {
        url: url?,
        key_pattern,
        value: raw.value.unwrap_or(RedisValue::Hash),
        max_keys,
        ca_file: raw.ca_file,
    }))
}

fn file_store(at: &str, raw: RawFile, problems: &mut Problems) -> Option<Store> {
    match raw.path {
        Some(path) => Some(Store::File(FileStore {
            path,
            layout: raw.layout.unwrap_or_default(),
        })),
        None => {
            problems.add(format!("{at}.path"), "is required: the token file");
            None
        }
    }
}

fn http_store(
    at: &str,
    raw: RawHttp,
    timeout: Duration,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Problems,
) -> Option<Store> {
    let url = raw.url.unwrap_or_default();
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
    let bearer_token = SecretRef::new(
        None,
        raw.bearer_token_env.as_deref(),
        raw.bearer_token_file.as_ref(),
    )
    .read_optional(at, "bearer_token", env, problems);
    for name in raw.headers.keys() {
        if name.eq_ignore_ascii_case("authorization") {
            problems.add(
                format!("{at}.headers.{name}"),
                "put credentials in `bearer_token_env` or `bearer_token_file`, not in the config",
            );
        }
    }
    Some(Store::Http(HttpStore {
        url,
        items_path,
        bearer_token,
        headers: raw.headers.into_iter().collect(),
        ca_file: raw.ca_file,
        timeout,
    }))
}

/// The provider profile of a source, with its overrides.
fn provider(at: &str, raw: &RawCommon, problems: &mut Problems) -> ProviderProfile {
    let kind = raw.provider.unwrap_or(ProviderKind::Xero);
    let mut provider = kind.profile();
    if kind == ProviderKind::Custom {
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
    for (key, value, target) in [
        (
            "access_token_lifetime",
            raw.access_token_lifetime,
            &mut provider.access_token_lifetime,
        ),
        (
            "refresh_token_lifetime",
            raw.refresh_token_lifetime,
            &mut provider.refresh_token_idle_lifetime,
        ),
    ] {
        if let Some(d) = value {
            *target = to_chrono(d.0);
            if d.0.is_zero() {
                problems.add(format!("{at}.{key}"), "must be greater than 0");
            }
        }
    }
    provider
}

/// The poll schedule of a source or event table: its own interval and timeout, or the global
/// ones; the timeout at most the interval.
pub(crate) fn schedule(
    at: &str,
    interval: Option<HumanDuration>,
    timeout: Option<HumanDuration>,
    backoff_max: Option<HumanDuration>,
    global: &Global,
    problems: &mut Problems,
) -> Schedule {
    let interval = interval.map_or(global.interval, |d| d.0);
    let timeout = timeout.map_or(global.timeout, |d| d.0);
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
    let backoff_max = backoff_max.map_or(interval * defaults::BACKOFF_MAX_FACTOR, |d| {
        d.0.max(interval)
    });
    Schedule {
        interval,
        timeout,
        backoff_max,
    }
}

/// Validate one source at `at` (`sources[i]`).
pub(crate) fn validate(
    at: &str,
    value: serde_json::Value,
    global: &Global,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Problems,
) -> Option<SourceConfig> {
    let mut raw: RawCommon = problems.decode(at, value)?;
    let mark = problems.mark();
    if !valid_name(&raw.name) {
        problems.add(
            format!("{at}.name"),
            format!(
                "{:?} is not a valid source name: use 1-64 letters, digits, `_`, `-` or `.`",
                raw.name
            ),
        );
    }
    let schedule = schedule(
        at,
        raw.interval,
        raw.timeout,
        raw.backoff_max,
        global,
        problems,
    );
    foreign_keys(at, raw.kind, &mut raw.rest, problems);
    let rest = serde_json::Value::Object(std::mem::take(&mut raw.rest));
    let parts = match raw.kind {
        StoreKind::Sqlite | StoreKind::Postgres | StoreKind::Mysql => {
            let kind = SqlKind::of(raw.kind).expect("an SQL kind");
            problems
                .decode::<RawSql>(at, rest)
                .map(|r| sql_parts(at, kind, r, schedule.timeout, env, problems))
        }
        StoreKind::Redis => problems
            .decode::<RawRedis>(at, rest)
            .map(|r| document_parts(redis_store(at, r, env, problems))),
        StoreKind::File => problems
            .decode::<RawFile>(at, rest)
            .map(|r| document_parts(file_store(at, r, problems))),
        StoreKind::Http => problems
            .decode::<RawHttp>(at, rest)
            .map(|r| document_parts(http_store(at, r, schedule.timeout, env, problems))),
    }?;
    let KindParts {
        store,
        query,
        mut fields,
        mut infer,
        labels: preset_labels,
    } = parts;
    let mut labels = raw.labels.clone();
    for (name, column) in preset_labels {
        labels
            .entry(name.to_string())
            .or_insert_with(|| RawField::column(column));
    }
    if let Some(user) = raw.fields.clone() {
        // A document source's default mapping infers the last refresh from an `expires_at`
        // key; with the user's own fields and none of the freshness ones, say so (an SQL
        // source is told `last_refresh` is required).
        let document = query.as_deref() == Some("");
        if document
            && user.last_refresh.is_none()
            && user.access_expires.is_none()
            && raw.infer_last_refresh.is_none()
        {
            problems.warn(
                format!("{at}.fields"),
                "maps neither `last_refresh` nor `access_expires`: the last refresh is inferred from each document's `expires_at` key (minus the access-token lifetime); a document without it is rejected as `null_timestamp`",
            );
        }
        if user.last_refresh.is_some() {
            infer = None;
        }
        fields = fields.overlay(user);
    }
    if raw.infer_last_refresh.is_some() {
        infer = raw.infer_last_refresh;
        // Alone, the inference replaces a preset's field; with the user's own field, it is the
        // fallback where that field is NULL.
        if raw.fields.as_ref().is_none_or(|f| f.last_refresh.is_none()) {
            fields.last_refresh = None;
        }
    }
    let session_allowed = matches!(raw.kind, StoreKind::Postgres | StoreKind::Mysql);
    let zones = fields::Zones {
        default: match &raw.timezone {
            None => Default::default(),
            Some(s) => {
                fields::zone_setting(&format!("{at}.timezone"), s, session_allowed, problems)
                    .unwrap_or_default()
            }
        },
        session_allowed,
    };
    let mapping = fields::mapping(
        at,
        &fields,
        infer,
        &labels,
        query.is_some(),
        zones,
        problems,
    );
    let provider = provider(at, &raw, problems);
    let unknown_providers = match &raw.unknown_providers {
        None => None,
        Some(u) => {
            let key = format!("{at}.unknown_providers");
            if fields.provider.is_none() {
                problems.add(
                    &key,
                    "is only used with `fields.provider` (the column naming each row's provider)",
                );
            }
            match (u.export, u.access_token_lifetime, u.refresh_token_lifetime) {
                (false, None, None) => None,
                (false, _, _) => {
                    problems.add(&key, "lifetimes are only used with `export: true`");
                    None
                }
                (true, Some(a), Some(r)) if !a.0.is_zero() && !r.0.is_zero() => {
                    Some(UnknownProviders {
                        access_token_lifetime: to_chrono(a.0),
                        refresh_token_lifetime: to_chrono(r.0),
                    })
                }
                (true, _, _) => {
                    problems.add(&key, "`export: true` needs `access_token_lifetime` and `refresh_token_lifetime` (greater than 0): the exporter has no profile to take them from");
                    None
                }
            }
        }
    };
    let max_connections = raw.max_connections.unwrap_or(global.cap);
    if max_connections == 0 {
        problems.add(format!("{at}.max_connections"), "must be at least 1");
    }
    if problems.since(mark) {
        return None;
    }
    Some(SourceConfig {
        name: raw.name,
        store: store?,
        mapping: mapping?,
        provider,
        schedule,
        max_connections,
        unknown_providers,
        shard: crate::config::Shard::default(),
        shard_in_query: false,
    })
}
