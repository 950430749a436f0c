//! The configuration file: typed, strict (unknown keys rejected), validated once.
//!
//! [`parse`] returns a [`Config`] only when the whole file is valid; otherwise every problem
//! it found, each with the file, the key path (`sources[1].fields.last_refresh.format`) and
//! what was expected. The YAML is read into a tree first and each section is decoded on its
//! own, so one bad source never hides the problems of another.
//!
//! One file per section: [`sources`] (with its [`fields`] mapping and [`presets`]),
//! [`inlets`] (event tables, ingest API, Nango webhooks, proxy), and here `global`, `detect`
//! and `persistence`; [`defaults`] holds every default.

pub mod client_secrets;
pub(crate) mod common;
pub mod defaults;
pub mod fields;
pub mod inlets;
pub mod presets;
pub mod shard;
pub mod sources;
#[cfg(test)]
mod tests;

pub use common::{HumanDuration, Schedule};
pub use fields::{FieldRef, LastRefresh, Mapping, StatusField, TimeField};
pub use inlets::{
    EventField, EventStart, EventTable, Ingest, InletInfo, Inlets, Intercept, NangoWebhook, Proxy,
};
pub use presets::{Inference, Preset};
pub use shard::{host_name, Shard};
pub use sources::{
    FileLayout, FileStore, HttpStore, RedisStore, RedisValue, SourceConfig, SqlConnection, SqlKind,
    Store,
};

use common::Problems;
use serde::Deserialize;
use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where it was read from (for messages).
    pub file: String,
    pub detect: Detect,
    pub sources: Vec<SourceConfig>,
    /// The event inlets.
    pub inlets: Inlets,
    /// Where the counters of the push inlets are saved across restarts, when configured.
    pub persistence: Option<Persistence>,
    /// What is valid but deserves attention (deprecated names, an unsigned webhook inlet):
    /// printed by `--config.check` and logged at start-up.
    pub warnings: Vec<Problem>,
    /// This instance's shard (`--shard.index`, `--shard.total`; one shard by default).
    pub shard: crate::config::Shard,
    /// `--collector.relative-metrics`: also export the gauges that change on every poll but
    /// follow from a timestamp (`oauth_refresh_token_age_seconds`).
    pub relative_metrics: bool,
    /// When the app's own client secrets expire (`client_secrets`).
    pub client_secrets: Vec<client_secrets::ClientSecret>,
}

/// Settings of the failure detectors.
#[derive(Debug, Clone, PartialEq)]
pub struct Detect {
    /// A connection whose last failure is younger than this counts in `oauth_connections_failing`.
    pub window: Duration,
    /// `invalid_grant` failures of one connection within the window that make a retry loop.
    pub retry_loop_failures: usize,
}

/// Saving the counters of the push inlets (ingest API, Nango webhooks, proxy), which have no
/// store to replay, so a restart continues them instead of starting from 0.
#[derive(Debug, Clone, PartialEq)]
pub struct Persistence {
    pub file: PathBuf,
    /// How often they are saved when they changed; on a clean shutdown they are saved last.
    pub interval: Duration,
}

/// Command-line flags that override the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--proxy.listen-address`: enables the proxy with its defaults when the file has none.
    pub proxy_listen_address: Option<String>,
    /// `--proxy.web-config.file`.
    pub proxy_web_config_file: Option<PathBuf>,
    /// `--shard.index`, `--shard.total`.
    pub shard: crate::config::Shard,
    /// `--collector.relative-metrics`.
    pub relative_metrics: bool,
    /// `--instance.name`: this instance's name in shared event-table state files.
    pub instance: String,
}

impl Config {
    /// The push inlets' sources, whose counters `persistence` saves (sorted, once each).
    pub fn persisted_sources(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .inlets
            .all()
            .into_iter()
            .filter(|i| i.persisted)
            .map(|i| i.source)
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// The event inlets configured, one line each (names, paths and addresses, never a
    /// secret): for `--config.check` and the landing page.
    pub fn inlet_lines(&self) -> Vec<String> {
        self.inlets.all().into_iter().map(|i| i.line).collect()
    }

    /// What `--config.check` prints after "OK": the sources, the inlets, persistence.
    pub fn summary(&self) -> Vec<String> {
        let mut parts = vec![format!(
            "{} source(s): {}",
            self.sources.len(),
            self.sources
                .iter()
                .map(|s| format!("{} ({})", s.name, s.kind().as_str()))
                .collect::<Vec<_>>()
                .join(", ")
        )];
        parts.extend(self.inlet_lines());
        if let Some(p) = &self.persistence {
            parts.push(format!(
                "push-inlet counters saved to {} every {}",
                p.file.display(),
                humantime::format_duration(p.interval)
            ));
        }
        if self.shard.is_sharded() {
            parts.push(format!(
                "shard {} of 0..{}",
                self.shard.index,
                self.shard.total - 1
            ));
        }
        parts
    }

    /// Apply command-line overrides.
    pub fn apply(&mut self, o: &Overrides) {
        if let Some(addr) = &o.proxy_listen_address {
            self.inlets
                .proxy
                .get_or_insert_with(Default::default)
                .listen_address = Some(addr.clone());
        }
        if let Some(f) = &o.proxy_web_config_file {
            self.inlets
                .proxy
                .get_or_insert_with(Default::default)
                .web_config_file = Some(f.clone());
        }
        self.relative_metrics = o.relative_metrics;
        self.shard = o.shard;
        for s in &mut self.sources {
            s.shard = o.shard;
            if let Store::Sql {
                connection, query, ..
            } = &mut s.store
            {
                if s.mapping.connection.json_path.is_empty() {
                    let narrowed =
                        o.shard
                            .sql_query(connection.kind, query, &s.mapping.connection.column);
                    s.shard_in_query = narrowed != *query;
                    *query = narrowed;
                }
            }
        }
        for t in &mut self.inlets.event_tables {
            t.shard = o.shard;
            t.instance = o.instance.clone();
            if o.shard.is_sharded() {
                // Each shard has its own cursor.
                let mut p = t.state_file.clone().into_os_string();
                p.push(format!(".shard-{}-of-{}", o.shard.index, o.shard.total));
                t.state_file = p.into();
            }
        }
    }

    /// Checks across sections, on the assembled config.
    fn check_names(&self, problems: &mut Problems) {
        // Every source, event table and inlet exports under its own `source` name: two with
        // one name would export the same series (Prometheus keeps one of them).
        let mut seen: Vec<(String, String, &'static str)> = self
            .sources
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("sources[{i}].name"), s.name.clone(), "source"))
            .collect();
        for inlet in self.inlets.all() {
            let what = if inlet.key.starts_with("event_tables") {
                "event table"
            } else {
                "inlet"
            };
            let earlier = seen.iter().find(|(_, name, _)| *name == inlet.source);
            if let Some((key, _, earlier_what)) = earlier {
                let message = match (*earlier_what, what, inlet.key.as_str()) {
                    ("event table", "inlet", _) => format!("{:?} is the name of an event table, whose counters are its own (saved with its cursor); give this inlet another source name", inlet.source),
                    ("source", _, "proxy.source") => format!("{:?} is the name of a source: the proxy reports its upstream's health under its own source name (oauth_exporter_source_up), so give it another", inlet.source),
                    ("source", "event table", _) => format!("duplicate name {:?}; sources and event tables share names", inlet.source),
                    _ => format!("{:?} is also the source name of {key}: each source, event table and inlet exports its series under its own name, and two under one name would export the same series; give this one another name", inlet.source),
                };
                problems.add(inlet.key.clone(), message);
            } else {
                seen.push((inlet.key.clone(), inlet.source.clone(), what));
            }
        }
        if self.persistence.is_some() && self.persisted_sources().is_empty() {
            problems.add(
                "persistence",
                "saves the counters of `ingest`, `nango_webhook` and `proxy`, and none is configured (event tables keep theirs in their own `state_file`)",
            );
        }
    }
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
struct RawPersistence {
    /// Where the counters are saved.
    file: PathBuf,
    /// How often they are saved when they changed (default 1s).
    interval: Option<HumanDuration>,
}

/// The top-level keys.
fn top_level_keys() -> Vec<&'static str> {
    let mut keys = vec![
        "global",
        "detect",
        "persistence",
        "sources",
        "client_secrets",
    ];
    keys.extend(Inlets::KEYS);
    keys
}

/// Read and validate a config file, apply the command-line overrides and check that what must
/// listen has an address.
pub fn load(path: &Path, overrides: &Overrides) -> Result<Config, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        file: file.clone(),
        source,
    })?;
    let mut config = parse(&text, &file, &|k| std::env::var(k).ok())?;
    config.apply(overrides);
    if config
        .inlets
        .proxy
        .as_ref()
        .is_some_and(|p| p.listen_address.is_none())
    {
        return Err(ConfigError::Invalid {
            file,
            problems: vec![Problem {
                path: "proxy.listen_address".into(),
                message: "is required (or --proxy.listen-address): where the host app sends its Xero calls".into(),
            }],
        });
    }
    Ok(config)
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
    let mut problems = Problems::new();
    let mut top = match tree {
        serde_json::Value::Object(m) => m,
        serde_json::Value::Null => serde_json::Map::new(),
        _ => {
            problems.add("", "the top level must be a map with `sources`");
            serde_json::Map::new()
        }
    };
    let keys = top_level_keys();
    for key in top.keys() {
        if !keys.contains(&key.as_str()) {
            problems.add(
                key.clone(),
                format!("unknown key, expected one of {}", keys.join(", ")),
            );
        }
    }
    let global: RawGlobal = match top.remove("global") {
        Some(v) => problems.decode("global", v).unwrap_or_default(),
        None => RawGlobal::default(),
    };
    let global = sources::Global {
        interval: global
            .poll_interval
            .map_or(defaults::POLL_INTERVAL, |d| d.0),
        timeout: global.poll_timeout.map_or(defaults::POLL_TIMEOUT, |d| d.0),
        cap: global
            .max_connections_per_source
            .unwrap_or(defaults::MAX_CONNECTIONS_PER_SOURCE),
    };
    if global.interval.is_zero() {
        problems.add("global.poll_interval", "must be greater than 0");
    }
    if global.cap == 0 {
        problems.add("global.max_connections_per_source", "must be at least 1");
    }
    let detect: RawDetect = match top.remove("detect") {
        Some(v) => problems.decode("detect", v).unwrap_or_default(),
        None => RawDetect::default(),
    };
    if detect.retry_loop_failures.is_some_and(|n| n < 2) {
        problems.add("detect.retry_loop_failures", "must be at least 2");
    }
    let detect = Detect {
        window: detect.window.map_or(defaults::DETECT_WINDOW, |d| d.0),
        retry_loop_failures: detect
            .retry_loop_failures
            .unwrap_or(defaults::RETRY_LOOP_FAILURES),
    };
    let mut sources = Vec::new();
    match top.remove("sources") {
        Some(serde_json::Value::Array(items)) => {
            let mut names = HashSet::new();
            for (i, item) in items.into_iter().enumerate() {
                let at = format!("sources[{i}]");
                if let Some(name) = item.get("name").and_then(|n| n.as_str()) {
                    if !names.insert(name.to_string()) {
                        problems.add(
                            format!("{at}.name"),
                            format!("duplicate source name {name:?}; names must be unique"),
                        );
                    }
                }
                if let Some(s) = sources::validate(&at, item, &global, env, &mut problems) {
                    sources.push(s);
                }
            }
        }
        Some(serde_json::Value::Null) | None => {
            if !Inlets::KEYS.iter().any(|k| top.contains_key(*k))
                && !top.contains_key("client_secrets")
            {
                problems.add(
                    "sources",
                    "at least one source, event table or inlet (`ingest`, `nango_webhook`, `proxy`) is required",
                );
            }
        }
        Some(_) => problems.add("sources", "expected a list of sources"),
    }
    let inlets = Inlets::parse(&mut top, &global, env, &mut problems);
    let persistence = top.remove("persistence").and_then(|v| {
        let raw = problems.decode::<RawPersistence>("persistence", v)?;
        let interval = raw.interval.map_or(defaults::PERSISTENCE_INTERVAL, |d| d.0);
        if interval < defaults::PERSISTENCE_MIN_INTERVAL {
            problems.add("persistence.interval", "must be at least 100ms");
        }
        Some(Persistence {
            file: raw.file,
            interval,
        })
    });
    let client_secrets = top
        .remove("client_secrets")
        .map(|v| client_secrets::validate(v, &mut problems))
        .unwrap_or_default();
    let mut config = Config {
        file: file.to_string(),
        client_secrets,
        detect,
        sources,
        inlets,
        persistence,
        warnings: Vec::new(),
        shard: crate::config::Shard::default(),
        relative_metrics: false,
    };
    config.check_names(&mut problems);
    config.warnings = problems.warnings;
    if problems.list.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError::Invalid {
            file: file.to_string(),
            problems: problems.list,
        })
    }
}
