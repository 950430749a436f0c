//! Sources read token state from the host app's store. One file per store kind, all with the
//! same two methods (`connect`, `fetch`), listed in [`Backend`]; adding a kind is a new file,
//! a variant of [`crate::model::StoreKind`], its options in [`crate::config::sources`] and a
//! variant here, and the compiler finds the rest. [`map_rows`] turns the rows of a poll into
//! connections; the pipeline's poll loop runs them.

pub mod file;
pub mod http;
pub mod mapping;
pub mod mysql;
pub mod postgres;
pub mod redis;
pub mod sql;
pub mod sqlite;

use crate::config::{Mapping, SourceConfig, Store};
use crate::model::{CollectError, MappedConnection, RejectReason, Windows};
use crate::provider::{ProviderKind, ProviderProfile};
use crate::timestamp::Cell;
use mapping::{Rejection, Resolved};
use std::collections::HashMap;

/// The rows of one poll: the resolved mapping and, per row, the needed cells.
#[derive(Debug, Default)]
pub struct Fetched {
    pub resolved: Option<Resolved>,
    pub rows: Vec<Vec<Cell>>,
    /// Documents rejected before mapping (not JSON, wrong Redis type), with their row number.
    pub rejected: Vec<(usize, Rejection)>,
    /// The source stopped at its per-poll key limit: connections beyond it are missing.
    pub limit_hit: bool,
}

/// The key column of document sources: the Redis key, the map key, the list position, or the
/// file name.
pub const KEY_COLUMN: &str = "_key";

/// Rows from documents (hashes, JSON objects): the columns are the keys the mapping reads, a
/// missing key is NULL, and `_key` is the document's key.
pub struct DocumentRows {
    columns: Vec<String>,
    out: Fetched,
}

impl DocumentRows {
    pub fn new(mapping: &Mapping) -> Self {
        let columns = mapping::columns(mapping);
        let resolved =
            mapping::resolve(mapping, &columns).expect("the columns come from the mapping");
        DocumentRows {
            columns,
            out: Fetched {
                resolved: Some(resolved),
                ..Fetched::default()
            },
        }
    }

    /// Add one document; `get` looks a column up in it.
    pub fn push(&mut self, key: &str, get: impl Fn(&str) -> Option<Cell>) {
        let r = self.out.resolved.as_ref().expect("set in new");
        let cells = r
            .needed
            .iter()
            .map(|&i| {
                let col = &self.columns[i];
                if col == KEY_COLUMN {
                    Cell::Text(key.to_string())
                } else {
                    get(col).unwrap_or(Cell::Null)
                }
            })
            .collect();
        self.out.rows.push(cells);
    }

    /// Add a JSON document: an object's keys are its columns; anything else is rejected.
    pub fn push_json(&mut self, key: &str, doc: &serde_json::Value) {
        match doc {
            serde_json::Value::Object(m) => self.push(key, |c| m.get(c).map(Cell::from_json)),
            _ => self.reject(key, RejectReason::InvalidJson),
        }
    }

    pub fn reject(&mut self, key: &str, reason: RejectReason) {
        let row = self.out.rows.len() + self.out.rejected.len() + 1;
        self.out.rejected.push((
            row,
            Rejection {
                connection: Some(key.to_string()),
                reason,
                field: "connection",
            },
        ));
    }

    pub fn finish(mut self, limit_hit: bool) -> Fetched {
        self.out.limit_hit = limit_hit;
        self.out
    }
}

impl sql::Columns for Resolved {
    fn needed(&self) -> &[usize] {
        &self.needed
    }
}

/// The PEM bundle of a source's `ca_file` (HTTP and Redis sources).
pub(crate) fn read_ca_file(path: &std::path::Path) -> Result<Vec<u8>, CollectError> {
    std::fs::read(path)
        .map_err(|e| CollectError::Connect(format!("cannot read ca_file {}: {e}", path.display())))
}

/// Install the TLS provider (ring) once for the clients that use rustls.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The connection to one store, per kind.
#[derive(Debug)]
pub enum Backend {
    Sql(sql::SqlPool, String),
    Redis(Box<redis::RedisSource>),
    File(file::FileSource),
    Http(http::HttpSource),
}

impl Backend {
    /// Prepare a read-only connection. Connects lazily: a store that is down at start-up is a
    /// failed poll, not a failed start.
    pub fn connect(store: &Store) -> Result<Backend, CollectError> {
        Ok(match store {
            Store::Sql { connection, query } => {
                Backend::Sql(sql::SqlPool::connect(connection)?, query.clone())
            }
            Store::Redis(r) => Backend::Redis(Box::new(redis::RedisSource::connect(r)?)),
            Store::File(f) => Backend::File(file::FileSource::new(f)),
            Store::Http(h) => Backend::Http(http::HttpSource::new(h)?),
        })
    }

    /// Read every connection once, without writing anything.
    pub async fn fetch(&self, mapping: &Mapping) -> Result<Fetched, CollectError> {
        match self {
            Backend::Sql(pool, query) => {
                let rows = pool
                    .fetch(query, |names| {
                        mapping::resolve(mapping, names).map_err(|m| CollectError::MissingColumn {
                            column: m.column,
                            available: m.available.join(", "),
                        })
                    })
                    .await?;
                Ok(Fetched {
                    resolved: rows.selected,
                    rows: rows.rows,
                    ..Fetched::default()
                })
            }
            Backend::Redis(r) => r.fetch(mapping).await,
            Backend::File(f) => f.fetch(mapping).await,
            Backend::Http(h) => h.fetch(mapping).await,
        }
    }

    pub async fn close(&self) {
        match self {
            Backend::Sql(pool, _) => pool.close().await,
            Backend::Redis(_) | Backend::File(_) | Backend::Http(_) => {}
        }
    }
}

/// The outcome of mapping one poll's rows.
#[derive(Debug, Default)]
pub struct Mapped {
    pub connections: Vec<MappedConnection>,
    pub rejections: Vec<(usize, Rejection)>,
    /// Hashes of every connection id seen (including rejected rows whose id could be read),
    /// with the row's provider label, to count removals between polls without keeping a copy
    /// of every id.
    pub ids: HashMap<u64, &'static str>,
    /// The providers to report (the source's own first) and their windows.
    pub providers: Vec<(&'static str, Windows)>,
    /// Rows left out: their provider has no profile and `unknown_providers` does not export
    /// them.
    pub skipped: u64,
}

/// A 64-bit hash of a connection id (a collision would only hide one removal).
pub fn id_hash(id: &str) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault};
    BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(id)
}

/// Most distinct provider names taken from stores (`unknown_providers: {export: true}`).
const MAX_STORE_PROVIDER_NAMES: usize = 256;

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
        self.by_name.insert(name, i);
        i
    }
}

/// Map every row; a bad row is rejected alone. A second row for the same connection is
/// rejected as a duplicate.
pub fn map_rows(
    fetched: &Fetched,
    cfg: &SourceConfig,
    now: chrono::DateTime<chrono::Utc>,
) -> Mapped {
    let mut out = Mapped::default();
    let own = cfg.provider.name();
    for (row, rej) in &fetched.rejected {
        if let Some(id) = &rej.connection {
            out.ids.insert(id_hash(id), own);
        }
        out.rejections.push((*row, rej.clone()));
    }
    let mut providers = Providers::new(cfg);
    if let Some(r) = &fetched.resolved {
        for (i, cells) in fetched.rows.iter().enumerate() {
            let Some(p) = providers.index(mapping::row_provider(r, cells)) else {
                out.skipped += 1;
                continue;
            };
            let profile = &providers.profiles[p];
            match mapping::map_row(r, &cfg.mapping, cells, profile, now) {
                Ok(c) => match out.ids.entry(id_hash(&c.id)) {
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert(c.provider);
                        out.connections.push(c);
                    }
                    std::collections::hash_map::Entry::Occupied(_) => {
                        out.rejections.push((
                            i + 1,
                            Rejection {
                                connection: Some(c.id),
                                reason: RejectReason::DuplicateConnection,
                                field: "connection",
                            },
                        ));
                    }
                },
                Err(rej) => {
                    if let Some(id) = &rej.connection {
                        out.ids.insert(id_hash(id), profile.name());
                    }
                    out.rejections.push((i + 1, rej));
                }
            }
        }
    }
    out.providers = providers
        .profiles
        .iter()
        .map(|p| (p.name(), Windows::of(p)))
        .collect();
    out
}
