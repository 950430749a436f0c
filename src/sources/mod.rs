//! Sources read token state from the host app's store. One file per store kind, all with the
//! same two methods (`connect`, `fetch`), listed in [`Backend`]; adding a kind is a new file,
//! a variant here and a [`crate::config::StoreKind`] variant, and the compiler finds the rest.
//!
//! [`Poller`] runs one source: one poll at a time, a deadline on every poll, backoff after
//! failures, and an atomic replacement of the source's snapshot.

pub mod file;
pub mod http;
pub mod mapping;
pub mod mysql;
pub mod postgres;
pub mod presets;
pub mod redis;
pub mod sqlite;

use crate::clock::SharedClock;
use crate::config::{Mapping, SourceConfig, StoreKind};
use crate::exposition::Exposition;
use crate::metrics::{Live, RejectReason, SourceErrorReason, SourceLabels};
use crate::state::{MappedConnection, SourceSnapshot};
use crate::timestamp::Cell;
use futures_util::TryStreamExt;
use mapping::{Rejection, Resolved};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// What the rest of the exporter sees of a source: its name and its latest snapshot.
#[derive(Debug)]
pub struct SourceHandle {
    pub name: String,
    pub provider: &'static str,
    pub kind: StoreKind,
    /// Names of the extra `oauth_connection_info` labels, in config order.
    pub label_names: Vec<String>,
    /// The provider's windows as configured for this source, in seconds (exported so that
    /// alerts and dashboards use each provider's own window).
    pub refresh_window: f64,
    pub access_lifetime: f64,
    pub refresh_max_lifetime: Option<f64>,
    snapshot: RwLock<Arc<SourceSnapshot>>,
    ready: AtomicBool,
    up: AtomicBool,
}

impl SourceHandle {
    pub fn new(cfg: &SourceConfig) -> Self {
        SourceHandle {
            name: cfg.name.clone(),
            provider: cfg.provider.name(),
            kind: cfg.kind,
            label_names: cfg.mapping.labels.iter().map(|(n, _)| n.clone()).collect(),
            refresh_window: cfg.provider.refresh_token_idle_lifetime.num_seconds() as f64,
            access_lifetime: cfg.provider.access_token_lifetime.num_seconds() as f64,
            refresh_max_lifetime: cfg
                .provider
                .refresh_token_max_lifetime
                .map(|d| d.num_seconds() as f64),
            snapshot: RwLock::new(Arc::new(SourceSnapshot::default())),
            ready: AtomicBool::new(false),
            up: AtomicBool::new(false),
        }
    }

    /// The latest snapshot (cheap: a reference count).
    pub fn snapshot(&self) -> Arc<SourceSnapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn replace(&self, s: SourceSnapshot) {
        *self.snapshot.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(s);
    }

    /// True once a poll has succeeded.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// True when the last poll succeeded.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }
}

/// Why a poll failed. Messages name the source's problem, never a DSN or a token.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error("cannot connect to the store: {0}")]
    Connect(String),
    #[error("the poll did not finish within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    #[error("the store refused a write; the configured query must only read: {0}")]
    WriteRefused(String),
    #[error("the query failed: {0}")]
    Query(String),
    #[error("column {column:?} is not in the query result (it returned: {available})")]
    MissingColumn { column: String, available: String },
    #[error("column {column:?} has type {type_name}, which cannot be read; cast it to text, a number or a timestamp in the query")]
    Decode { column: String, type_name: String },
    #[error("{0}")]
    Document(String),
}

impl CollectError {
    pub fn reason(&self) -> SourceErrorReason {
        match self {
            CollectError::Connect(_) => SourceErrorReason::Connect,
            CollectError::Timeout(_) => SourceErrorReason::Timeout,
            CollectError::WriteRefused(_) => SourceErrorReason::WriteRefused,
            CollectError::Query(_) => SourceErrorReason::Query,
            CollectError::MissingColumn { .. } => SourceErrorReason::Mapping,
            CollectError::Decode { .. } | CollectError::Document(_) => SourceErrorReason::Decode,
        }
    }

    /// Classify a driver error.
    pub fn from_sqlx(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::Database(db) => {
                let code = db.code().map(|c| c.to_string()).unwrap_or_default();
                let msg = db.message().to_string();
                // 25006: read_only_sql_transaction (PostgreSQL; MySQL/MariaDB 1792 maps to it);
                // SQLite reports SQLITE_READONLY (8) and its extended codes.
                let lower = msg.to_lowercase();
                if code == "25006"
                    || code == "8"
                    || (code.len() > 2 && code.parse::<u32>().is_ok_and(|c| c & 0xff == 8))
                    || lower.contains("read-only transaction")
                    || lower.contains("read only transaction")
                    || lower.contains("readonly database")
                {
                    CollectError::WriteRefused(msg)
                } else if code == "28000" || code == "28P01" || code == "3D000" || code == "14" {
                    CollectError::Connect(msg)
                } else {
                    CollectError::Query(msg)
                }
            }
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Configuration(_)
            | sqlx::Error::Protocol(_) => CollectError::Connect(e.to_string()),
            other => CollectError::Query(other.to_string()),
        }
    }
}

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

/// Stream a query's rows, resolving the mapping on the first row and decoding only the
/// columns it needs.
pub(crate) async fn read_rows<'c, DB, E>(
    executor: E,
    query: &'c str,
    mapping: &Mapping,
    decode: fn(&DB::Row, usize) -> Result<Cell, CollectError>,
) -> Result<Fetched, CollectError>
where
    DB: sqlx::Database,
    E: sqlx::Executor<'c, Database = DB> + 'c,
    for<'q> <DB as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
{
    use sqlx::{Column, Row};
    let mut stream = sqlx::query::<DB>(query).fetch(executor);
    let mut out = Fetched::default();
    while let Some(row) = stream.try_next().await.map_err(CollectError::from_sqlx)? {
        if out.resolved.is_none() {
            let names: Vec<String> = row.columns().iter().map(|c| c.name().to_string()).collect();
            let r = mapping::resolve(mapping, &names).map_err(|m| CollectError::MissingColumn {
                column: m.column,
                available: m.available.join(", "),
            })?;
            out.resolved = Some(r);
        }
        let r = out.resolved.as_ref().expect("resolved above");
        let cells = r
            .needed
            .iter()
            .map(|&i| decode(&row, i))
            .collect::<Result<Vec<_>, _>>()?;
        out.rows.push(cells);
    }
    Ok(out)
}

/// Decode column `i` of `row` by its SQL type name: `decode_by_type!(row, i, |ty, get| match
/// ty { "INT8" => get!(i64).map(Cell::Int), ... })`. `get!(T)` reads an `Option<T>`; a type
/// the driver cannot read becomes [`CollectError::Decode`] naming the column and its type.
macro_rules! decode_by_type {
    ($row:expr, $i:expr, |$ty:ident| $body:expr) => {{
        use sqlx::{Column, Row, TypeInfo};
        let row = $row;
        let i = $i;
        let col = &row.columns()[i];
        let type_name = col.type_info().name().to_string();
        let err = |_| CollectError::Decode {
            column: col.name().to_string(),
            type_name: type_name.clone(),
        };
        #[allow(unused_macros)]
        macro_rules! get {
            ($t:ty) => {
                row.try_get::<Option<$t>, _>(i).map_err(err)?
            };
        }
        let $ty = type_name.as_str();
        let cell: Option<Cell> = $body;
        Ok(cell.unwrap_or(Cell::Null))
    }};
}
pub(crate) use decode_by_type;

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
    Sqlite(sqlx::SqlitePool, String),
    Postgres(sqlx::PgPool, String),
    Mysql(sqlx::MySqlPool, String),
    Redis(Box<redis::RedisSource>),
    File(file::FileSource),
    Http(http::HttpSource),
}

impl Backend {
    /// Prepare a read-only connection. Connects lazily: a store that is down at start-up is a
    /// failed poll, not a failed start.
    pub fn connect(cfg: &SourceConfig) -> Result<Backend, CollectError> {
        let query = cfg.store.query().unwrap_or_default().to_string();
        Ok(match cfg.kind {
            StoreKind::Sqlite => Backend::Sqlite(sqlite::connect(cfg)?, query),
            StoreKind::Postgres => Backend::Postgres(postgres::connect(cfg)?, query),
            StoreKind::Mysql => Backend::Mysql(mysql::connect(cfg)?, query),
            StoreKind::Redis => Backend::Redis(Box::new(redis::RedisSource::connect(cfg)?)),
            StoreKind::File => Backend::File(file::FileSource::new(cfg)?),
            StoreKind::Http => Backend::Http(http::HttpSource::new(cfg)?),
        })
    }

    /// Run `query` instead of the source's own (SQL stores only; event tables use it).
    pub async fn fetch_query(
        &self,
        query: &str,
        mapping: &Mapping,
    ) -> Result<Fetched, CollectError> {
        match self {
            Backend::Sqlite(p, _) => sqlite::fetch(p, query, mapping).await,
            Backend::Postgres(p, _) => postgres::fetch(p, query, mapping).await,
            Backend::Mysql(p, _) => mysql::fetch(p, query, mapping).await,
            _ => Err(CollectError::Query("only SQL stores run queries".into())),
        }
    }

    /// Read every connection once, without writing anything.
    pub async fn fetch(&self, mapping: &Mapping) -> Result<Fetched, CollectError> {
        match self {
            Backend::Sqlite(p, q) => sqlite::fetch(p, q, mapping).await,
            Backend::Postgres(p, q) => postgres::fetch(p, q, mapping).await,
            Backend::Mysql(p, q) => mysql::fetch(p, q, mapping).await,
            Backend::Redis(r) => r.fetch(mapping).await,
            Backend::File(f) => f.fetch(mapping).await,
            Backend::Http(h) => h.fetch(mapping).await,
        }
    }

    pub async fn close(&self) {
        match self {
            Backend::Sqlite(p, _) => p.close().await,
            Backend::Postgres(p, _) => p.close().await,
            Backend::Mysql(p, _) => p.close().await,
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
    /// to count removals between polls without keeping a copy of every id.
    pub ids: HashSet<u64>,
}

/// A 64-bit hash of a connection id (a collision would only hide one removal).
fn id_hash(id: &str) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault};
    BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(id)
}

/// Map every row; a bad row is rejected alone. A second row for the same connection is
/// rejected as a duplicate.
pub fn map_rows(
    fetched: &Fetched,
    cfg: &SourceConfig,
    now: chrono::DateTime<chrono::Utc>,
) -> Mapped {
    let mut out = Mapped::default();
    for (row, rej) in &fetched.rejected {
        if let Some(id) = &rej.connection {
            out.ids.insert(id_hash(id));
        }
        out.rejections.push((*row, rej.clone()));
    }
    let Some(r) = &fetched.resolved else {
        return out;
    };
    for (i, cells) in fetched.rows.iter().enumerate() {
        match mapping::map_row(r, &cfg.mapping, cells, &cfg.provider, now) {
            Ok(c) => {
                if out.ids.insert(id_hash(&c.id)) {
                    out.connections.push(c);
                } else {
                    out.rejections.push((
                        i + 1,
                        Rejection {
                            connection: Some(c.id),
                            reason: RejectReason::DuplicateConnection,
                            field: "connection",
                        },
                    ));
                }
            }
            Err(rej) => {
                if let Some(id) = &rej.connection {
                    out.ids.insert(id_hash(id));
                }
                out.rejections.push((i + 1, rej));
            }
        }
    }
    out
}

/// Wait before the next poll: the interval after a success; after consecutive failures the
/// interval doubled per failure, up to `backoff_max`.
pub(crate) fn next_delay(cfg: &SourceConfig, ok: bool, failures: u32) -> Duration {
    if ok {
        return cfg.interval;
    }
    let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(16));
    cfg.interval.saturating_mul(factor).min(cfg.backoff_max)
}

/// Runs one source.
pub struct Poller {
    pub cfg: SourceConfig,
    backend: Backend,
    handle: Arc<SourceHandle>,
    exposition: Arc<Exposition>,
    live: Arc<Live>,
    clock: SharedClock,
    generation: Arc<AtomicU64>,
    failing_window: chrono::Duration,
    known_ids: Option<HashSet<u64>>,
    logged_rejections: HashSet<(String, RejectReason)>,
    failures: u32,
    /// Keyed hashes of each connection's recent stored refresh tokens (oldest first).
    token_history: std::collections::HashMap<u64, std::collections::VecDeque<u64>>,
}

/// Stored refresh-token values remembered per connection.
const TOKEN_HISTORY: usize = 8;

impl Poller {
    pub fn new(
        cfg: SourceConfig,
        handle: Arc<SourceHandle>,
        exposition: Arc<Exposition>,
        clock: SharedClock,
        generation: Arc<AtomicU64>,
        failing_window: Duration,
    ) -> Result<Poller, CollectError> {
        let backend = Backend::connect(&cfg)?;
        if cfg.mapping.refresh_token.is_some() {
            let _ =
                exposition
                    .live
                    .events
                    .regressions
                    .get_or_create(&crate::metrics::EventLabels {
                        provider: handle.provider,
                        source: cfg.name.clone(),
                    });
        }
        Ok(Poller {
            cfg,
            backend,
            handle,
            live: exposition.live.clone(),
            exposition,
            clock,
            generation,
            failing_window: chrono::Duration::from_std(failing_window)
                .unwrap_or(chrono::Duration::MAX),
            known_ids: None,
            logged_rejections: HashSet::new(),
            failures: 0,
            token_history: std::collections::HashMap::new(),
        })
    }

    /// The source's store (benchmarks time a bare fetch through it).
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Poll until `shutdown`; after a failure wait the interval doubled per consecutive
    /// failure, up to `backoff_max`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        loop {
            let ok = self.poll_once().await;
            let delay = next_delay(&self.cfg, ok, self.failures);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
        }
        self.backend.close().await;
    }

    /// One poll. Returns whether it succeeded.
    pub async fn poll_once(&mut self) -> bool {
        let started = Instant::now();
        let result =
            match tokio::time::timeout(self.cfg.timeout, self.backend.fetch(&self.cfg.mapping))
                .await
            {
                Ok(r) => r,
                Err(_) => Err(CollectError::Timeout(self.cfg.timeout)),
            };
        let labels = SourceLabels {
            source: self.cfg.name.clone(),
        };
        let result = match result {
            Ok(fetched) => {
                if fetched.limit_hit {
                    self.live
                        .source_error(&self.cfg.name, SourceErrorReason::KeyLimit);
                    tracing::warn!(source = %self.cfg.name, reason = SourceErrorReason::KeyLimit.as_str(), "The source reached its per-poll key limit (max_keys); connections beyond it are not exported.");
                }
                let now = self.clock.now();
                let cfg = self.cfg.clone();
                let window = self.failing_window;
                let built = tokio::task::spawn_blocking(move || {
                    let mapped = map_rows(&fetched, &cfg, now);
                    let rejections = mapped.rejections;
                    let ids = mapped.ids;
                    let hashes: Vec<(u64, u64, String)> = mapped
                        .connections
                        .iter()
                        .filter_map(|c| c.token_hash.map(|h| (id_hash(&c.id), h, c.id.clone())))
                        .collect();
                    let snap =
                        SourceSnapshot::build(mapped.connections, now, cfg.max_connections, window);
                    (snap, rejections, ids, hashes)
                })
                .await;
                match built {
                    Ok(b) => Ok((now, b)),
                    Err(e) => Err(CollectError::Query(format!("mapping task failed: {e}"))),
                }
            }
            Err(e) => Err(e),
        };
        self.live
            .duration
            .get_or_create(&labels)
            .set(started.elapsed().as_secs_f64());
        match result {
            Ok((now, (snap, rejections, ids, hashes))) => {
                self.record_rejections(&rejections);
                self.record_token_hashes(hashes, &ids);
                if let Some(prev) = &self.known_ids {
                    let removed = prev.difference(&ids).count() as u64;
                    if removed > 0 {
                        tracing::info!(source = %self.cfg.name, removed, "Connections disappeared from the store since the last poll.");
                        self.live
                            .removed
                            .get_or_create(&crate::metrics::ProviderSourceLabels {
                                provider: self.handle.provider,
                                source: self.cfg.name.clone(),
                            })
                            .inc_by(removed);
                    }
                }
                self.known_ids = Some(ids);
                let exported = snap.connections.len();
                let truncated = snap.truncated;
                self.handle.replace(snap);
                self.generation.fetch_add(1, Ordering::AcqRel);
                // Encode the new state now, off the async threads, so scrapes find it ready.
                let exposition = self.exposition.clone();
                tokio::task::spawn_blocking(move || {
                    exposition.state();
                });
                self.live.up.get_or_create(&labels).set(1);
                self.live
                    .last_success
                    .get_or_create(&labels)
                    .set(now.timestamp_millis() as f64 / 1000.0);
                if self.failures > 0 || !self.handle.is_ready() {
                    tracing::info!(source = %self.cfg.name, connections = exported, truncated, "Source polled successfully.");
                }
                self.failures = 0;
                self.handle.up.store(true, Ordering::Release);
                self.handle.ready.store(true, Ordering::Release);
                true
            }
            Err(e) => {
                self.failures += 1;
                self.record_error(&e);
                self.live.up.get_or_create(&labels).set(0);
                self.handle.up.store(false, Ordering::Release);
                false
            }
        }
    }

    /// The one place a poll failure is both logged and counted.
    fn record_error(&self, e: &CollectError) {
        let reason = e.reason();
        self.live.source_error(&self.cfg.name, reason);
        tracing::warn!(
            source = %self.cfg.name,
            reason = reason.as_str(),
            consecutive_failures = self.failures,
            error = %e,
            "Polling the source failed; the last good values stay exported."
        );
    }

    /// Regression detection: a stored refresh token that goes back to a value seen before (a
    /// worker wrote a stale token over the new one). Only keyed hashes are kept.
    fn record_token_hashes(&mut self, hashes: Vec<(u64, u64, String)>, present: &HashSet<u64>) {
        if hashes.is_empty() {
            return;
        }
        for (id, h, connection) in hashes {
            let history = self.token_history.entry(id).or_default();
            if history.back() == Some(&h) {
                continue;
            }
            if history.contains(&h) {
                self.live
                    .events
                    .regressions
                    .get_or_create(&crate::metrics::EventLabels {
                        provider: self.handle.provider,
                        source: self.cfg.name.clone(),
                    })
                    .inc();
                tracing::warn!(source = %self.cfg.name, connection = %connection, "The stored refresh token went back to an earlier value: a stale token was written over a newer one.");
            }
            history.push_back(h);
            if history.len() > TOKEN_HISTORY {
                history.pop_front();
            }
        }
        self.token_history.retain(|id, _| present.contains(id));
    }

    /// The one place rejected rows are counted and logged; each (connection, reason) is
    /// logged once while it persists.
    fn record_rejections(&mut self, rejections: &[(usize, Rejection)]) {
        let mut seen = HashSet::new();
        for (row, rej) in rejections {
            self.live.row_rejected(&self.cfg.name, rej.reason, 1);
            let key = (
                rej.connection
                    .clone()
                    .unwrap_or_else(|| format!("row {row}")),
                rej.reason,
            );
            if !self.logged_rejections.contains(&key) {
                tracing::warn!(
                    source = %self.cfg.name,
                    connection = rej.connection.as_deref().unwrap_or("<none>"),
                    row,
                    field = rej.field,
                    reason = rej.reason.as_str(),
                    "Row rejected; the other rows are exported."
                );
            }
            seen.insert(key);
        }
        self.logged_rejections = seen;
    }
}
