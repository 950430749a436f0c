//! Sources read token state from the host app's store. One file per store kind, all with the
//! same two methods (`connect`, `fetch`), listed in [`Backend`]; adding a kind is a new file,
//! a variant of [`crate::model::StoreKind`], its options in [`crate::config::sources`] and a
//! variant here, and the compiler finds the rest. A fetch hands its rows one at a time to a
//! [`RowSink`]; [`collect::PollRows`] maps them into a snapshot as they come; the pipeline's
//! poll loop runs them.

pub mod collect;
pub mod file;
pub mod http;
pub mod mapping;
pub mod mysql;
pub mod postgres;
pub mod redis;
pub mod sql;
pub mod sqlite;

use crate::config::{Mapping, Store};
use crate::model::{CollectError, RejectReason};
use crate::timestamp::Cell;
use mapping::{Rejection, Resolved};

/// Where a fetch hands its rows, one at a time, as the store yields them.
pub trait RowSink: Send {
    /// The mapping resolved against the result's columns, before the first row (never called
    /// when the result has no row).
    fn resolved(&mut self, r: Resolved);
    /// One row: the needed cells, in [`Resolved::needed`] order.
    fn row(&mut self, cells: &[Cell]);
    /// A document rejected before mapping (not JSON, wrong Redis type).
    fn reject(&mut self, r: Rejection);
}

/// The key column of document sources: the Redis key, the map key, the list position, or the
/// file name.
pub const KEY_COLUMN: &str = "_key";

/// The pseudo-column of file sources holding the file's modification time (for apps that
/// rewrite a token file on every refresh, such as Singer's tap-xero with its `config.json`).
pub const MTIME_COLUMN: &str = "_mtime";

/// Rows from documents (hashes, JSON objects): the columns are the keys the mapping reads, a
/// missing key is NULL, and `_key` is the document's key.
pub struct DocumentRows<'s> {
    columns: Vec<String>,
    needed: Vec<usize>,
    sink: &'s mut dyn RowSink,
    cells: Vec<Cell>,
    /// What [`MTIME_COLUMN`] reads (file sources); NULL elsewhere.
    pub modified: Option<chrono::DateTime<chrono::Utc>>,
}

impl<'s> DocumentRows<'s> {
    pub fn new(mapping: &Mapping, sink: &'s mut dyn RowSink) -> Self {
        let columns = mapping::columns(mapping);
        let resolved =
            mapping::resolve(mapping, &columns).expect("the columns come from the mapping");
        let needed = resolved.needed.clone();
        sink.resolved(resolved);
        DocumentRows {
            columns,
            needed,
            sink,
            cells: Vec::new(),
            modified: None,
        }
    }

    /// Add one document; `get` looks a column up in it.
    pub fn push(&mut self, key: &str, get: impl Fn(&str) -> Option<Cell>) {
        self.cells.clear();
        for &i in &self.needed {
            let col = &self.columns[i];
            self.cells.push(if col == KEY_COLUMN {
                Cell::Text(key.to_string())
            } else if let (MTIME_COLUMN, Some(t)) = (col.as_str(), self.modified) {
                Cell::Time(t)
            } else {
                get(col).unwrap_or(Cell::Null)
            });
        }
        self.sink.row(&self.cells);
    }

    /// Add a JSON document: an object's keys are its columns; anything else is rejected.
    pub fn push_json(&mut self, key: &str, doc: &serde_json::Value) {
        match doc {
            serde_json::Value::Object(m) => self.push(key, |c| m.get(c).map(Cell::from_json)),
            _ => self.reject(key, RejectReason::InvalidJson),
        }
    }

    pub fn reject(&mut self, key: &str, reason: RejectReason) {
        self.sink.reject(Rejection {
            connection: Some(key.to_string()),
            reason,
            // The stored value as a whole (not JSON, not the configured type).
            field: "value",
        });
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
    Sql(
        sql::SqlPool,
        String,
        Option<(crate::config::Preset, String)>,
    ),
    Redis(Box<redis::RedisSource>),
    File(file::FileSource),
    Http(http::HttpSource),
}

impl Backend {
    /// Prepare a read-only connection. Connects lazily: a store that is down at start-up is a
    /// failed poll, not a failed start.
    pub fn connect(store: &Store) -> Result<Backend, CollectError> {
        Ok(match store {
            Store::Sql {
                connection,
                query,
                preset,
            } => Backend::Sql(
                sql::SqlPool::connect(connection)?,
                query.clone(),
                preset.clone(),
            ),
            Store::Redis(r) => Backend::Redis(Box::new(redis::RedisSource::connect(r)?)),
            Store::File(f) => Backend::File(file::FileSource::new(f)),
            Store::Http(h) => Backend::Http(http::HttpSource::new(h)?),
        })
    }

    /// Read every connection once, without writing anything, handing each row to `sink` as it
    /// comes. Returns whether the source stopped at its per-poll key limit (connections beyond
    /// it are missing).
    pub async fn fetch(
        &self,
        mapping: &Mapping,
        sink: &mut dyn RowSink,
    ) -> Result<bool, CollectError> {
        match self {
            Backend::Sql(pool, query, preset) => {
                let session_zone = if mapping.uses_session_zone() {
                    pool.session_zone().await?
                } else {
                    crate::timestamp::Zone::Utc
                };
                let mut resolved = false;
                let streamed = pool
                    .stream(
                        query,
                        |names| {
                            let mut r = mapping::resolve(mapping, names).map_err(|m| {
                                CollectError::MissingColumn {
                                    column: m.column,
                                    available: m.available.join(", "),
                                }
                            })?;
                            r.session_zone = session_zone;
                            Ok(r)
                        },
                        &mut |r: &Resolved, cells: &[Cell]| {
                            if !resolved {
                                resolved = true;
                                sink.resolved(r.clone());
                            }
                            sink.row(cells);
                        },
                    )
                    .await
                    .map_err(|e| (e, preset));
                match streamed {
                    Ok(_) => Ok(false),
                    Err((e @ CollectError::MissingTableColumn(_), Some((preset, table)))) => {
                        Err(pool.preset_mismatch(e, *preset, table).await)
                    }
                    Err((e, _)) => Err(e),
                }
            }
            Backend::Redis(r) => r.fetch(mapping, sink).await,
            Backend::File(f) => f.fetch(mapping, sink).await.map(|()| false),
            Backend::Http(h) => h.fetch(mapping, sink).await.map(|()| false),
        }
    }

    pub async fn close(&self) {
        match self {
            Backend::Sql(pool, _, _) => pool.close().await,
            Backend::Redis(_) | Backend::File(_) | Backend::Http(_) => {}
        }
    }
}

/// The hasher of connection ids and of sets of their keys: foldhash with a fixed seed, the same
/// in every poll of a process (nothing hashed is kept across restarts). Ids come from the
/// host's own store, not from the network, so flooding resistance is not what it must have.
pub type IdHasher = foldhash::fast::FixedState;

/// A set of [`collect::connection_key`]s.
pub type KeySet = std::collections::HashSet<u64, IdHasher>;

/// A 64-bit hash of a connection id (a collision would only hide one removal).
pub fn id_hash(id: &str) -> u64 {
    use std::hash::BuildHasher;
    IdHasher::default().hash_one(id)
}
