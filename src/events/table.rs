//! Event tables: rows the host app writes for each refresh and API call, tailed with an
//! increasing id (or a timestamp and an id). The cursor and the table's counters are kept in a
//! state file (written atomically after each counted batch), so a restart, even `kill -9`,
//! neither loses nor double-counts an event and the counters continue where they were; the
//! first start begins at the current end of the table unless `start: beginning`. Reads go through the same
//! read-only connections as the sources.

use super::ingest::{count, event};
use crate::config::{EventTable, StoreKind};
use crate::metrics::{Live, RejectReason, SourceLabels};
use crate::sources::{Backend, CollectError};
use crate::timestamp::Cell;
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

/// Batches read in one poll at most (a backlog drains over several polls).
const MAX_BATCHES_PER_POLL: usize = 100;

pub struct TablePoller {
    pub cfg: EventTable,
    backend: Backend,
    live: Arc<Live>,
    cursor: Option<Cursor>,
    failures: u32,
    /// The cursor advanced in memory but is not yet in the state file: every poll tries to
    /// write it, and fails until it can.
    dirty: bool,
}

/// A value of the cursor, as the store gave it, so it is compared in the store's own terms.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CursorValue {
    Int(i64),
    Float(f64),
    Text(String),
    Time(chrono::DateTime<chrono::Utc>),
}

impl CursorValue {
    fn from_cell(c: &Cell) -> Option<CursorValue> {
        Some(match c {
            Cell::Int(i) => CursorValue::Int(*i),
            Cell::Float(f) if f.is_finite() => CursorValue::Float(*f),
            Cell::Text(s) => CursorValue::Text(s.clone()),
            Cell::Time(t) => CursorValue::Time(*t),
            _ => return None,
        })
    }

    /// The value as an SQL literal of the store's dialect. Text is quoted with doubled quotes;
    /// a backslash (which MySQL would read as an escape) is refused rather than guessed at.
    fn literal(&self, kind: StoreKind) -> Result<String, String> {
        Ok(match self {
            CursorValue::Int(i) => i.to_string(),
            CursorValue::Float(f) => format!("{f:?}"),
            CursorValue::Text(s) if s.contains('\\') || s.contains('\0') => {
                return Err("holds a backslash or NUL, which cannot be compared portably".into())
            }
            CursorValue::Text(s) => format!("'{}'", s.replace('\'', "''")),
            CursorValue::Time(t) => match kind {
                StoreKind::Postgres => format!("'{}'", t.format("%Y-%m-%d %H:%M:%S%.6f+00")),
                _ => format!("'{}'", t.format("%Y-%m-%d %H:%M:%S%.6f")),
            },
        })
    }
}

/// Where the next read starts: after an increasing integer id, or after a (time, id) pair.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum Cursor {
    Id {
        cursor: i64,
    },
    TimeId {
        time: Option<CursorValue>,
        id: Option<CursorValue>,
    },
}

/// The state file: where the next read starts, and this table's event counters as of that
/// point, so that a restart (even `kill -9`) continues the counters instead of resetting them.
#[derive(serde::Serialize, serde::Deserialize)]
struct State {
    #[serde(flatten)]
    cursor: Cursor,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    counters: std::collections::BTreeMap<String, u64>,
}

fn cell_json(c: &Cell) -> Option<serde_json::Value> {
    Some(match c {
        Cell::Null => return None,
        Cell::Bool(b) => (*b).into(),
        Cell::Int(i) => (*i).into(),
        Cell::Float(f) => serde_json::Number::from_f64(*f)?.into(),
        Cell::Text(s) => s.clone().into(),
        Cell::Time(t) => t.to_rfc3339().into(),
        Cell::Json(v) => v.clone(),
    })
}

impl TablePoller {
    pub fn new(cfg: EventTable, live: Arc<Live>) -> Result<Self, CollectError> {
        let provider = cfg.store.provider.name();
        live.init_source(&cfg.name, provider);
        live.events.init(provider, &cfg.name);
        let backend = Backend::connect(&cfg.store)?;
        Ok(TablePoller {
            cfg,
            backend,
            live,
            cursor: None,
            failures: 0,
            dirty: false,
        })
    }

    /// The id cursor as last persisted (for tests).
    pub fn cursor(&self) -> Option<i64> {
        match self.cursor {
            Some(Cursor::Id { cursor }) => Some(cursor),
            _ => None,
        }
    }

    /// The cursor as last persisted, whichever its kind.
    pub fn position(&self) -> Option<&Cursor> {
        self.cursor.as_ref()
    }

    /// `SELECT <id> AS ote_id, <fields>, [<time> AS ote_cursor_time] FROM <table><tail>`; with
    /// `blank`, the fields are NULL (queries that only want the cursor).
    fn select(&self, id: &str, blank: bool, tail: &str) -> String {
        let mut cols: Vec<String> = self
            .cfg
            .columns
            .iter()
            .map(|(f, c)| {
                if blank {
                    format!("NULL AS ote_{f}")
                } else {
                    format!("{c} AS ote_{f}")
                }
            })
            .collect();
        if let Some(t) = &self.cfg.time_column {
            cols.push(format!("{t} AS ote_cursor_time"));
        }
        format!(
            "SELECT {id} AS ote_id, {} FROM {}{tail}",
            cols.join(", "),
            self.cfg.table
        )
    }

    /// The query for the next batch after `cursor`.
    fn next_batch(&self, cursor: &Cursor) -> Result<String, CollectError> {
        let id = &self.cfg.id_column;
        let limit = self.cfg.batch;
        let kind = self.cfg.store.kind;
        let lit = |v: &CursorValue, what: &str| {
            v.literal(kind).map_err(|e| {
                CollectError::Document(format!(
                    "the cursor's {what} ({}) {e}",
                    match what {
                        "time" => self.cfg.time_column.as_deref().unwrap_or(""),
                        _ => id,
                    }
                ))
            })
        };
        let tail = match (cursor, &self.cfg.time_column) {
            (Cursor::Id { cursor }, _) => {
                format!(" WHERE {id} > {cursor} ORDER BY {id} LIMIT {limit}")
            }
            (Cursor::TimeId { time, id: last }, Some(t)) => {
                let after = match (time, last) {
                    (Some(tv), Some(iv)) => {
                        let (tl, il) = (lit(tv, "time")?, lit(iv, "id")?);
                        format!(" WHERE ({t} > {tl} OR ({t} = {tl} AND {id} > {il}))")
                    }
                    (Some(tv), None) => format!(" WHERE {t} > {}", lit(tv, "time")?),
                    _ => format!(" WHERE {t} IS NOT NULL"),
                };
                format!("{after} AND {t} IS NOT NULL ORDER BY {t}, {id} LIMIT {limit}")
            }
            (Cursor::TimeId { .. }, None) => {
                return Err(CollectError::Document(format!(
                    "the state file {} holds a time cursor but time_column is not set; remove it to start again",
                    self.cfg.state_file.display()
                )))
            }
        };
        Ok(self.select(id, false, &tail))
    }

    fn persist(&self, cursor: &Cursor) -> Result<(), CollectError> {
        let path = &self.cfg.state_file;
        let state = State {
            cursor: cursor.clone(),
            counters: self.live.events.snapshot(&self.cfg.name),
        };
        super::persist::write_atomically(
            path,
            serde_json::to_string(&state)
                .expect("serialisable")
                .as_bytes(),
        )
        .map_err(|e| {
            CollectError::Document(format!(
                "cannot write the state file {}: {e}",
                path.display()
            ))
        })
    }

    async fn initial_cursor(&mut self) -> Result<Cursor, CollectError> {
        match std::fs::read_to_string(&self.cfg.state_file) {
            Ok(text) => {
                let state = serde_json::from_str::<State>(&text).map_err(|_| {
                    CollectError::Document(format!(
                        "the state file {} is not a cursor; remove it to start again",
                        self.cfg.state_file.display()
                    ))
                })?;
                let c = state.cursor;
                if matches!(c, Cursor::Id { .. }) && self.cfg.time_column.is_some() {
                    return Err(CollectError::Document(format!(
                        "the state file {} holds an id cursor but time_column is set; remove it to start again",
                        self.cfg.state_file.display()
                    )));
                }
                // The counters continue from where they were when the cursor was written.
                self.live.events.restore(&self.cfg.name, &state.counters);
                return Ok(c);
            }
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(CollectError::Document(format!(
                    "cannot read the state file {}: {e}",
                    self.cfg.state_file.display()
                )))
            }
            Err(_) => {}
        }
        let id = &self.cfg.id_column;
        let cursor = match (self.cfg.start, &self.cfg.time_column) {
            (crate::config::EventStart::Beginning, None) => Cursor::Id { cursor: 0 },
            (crate::config::EventStart::Beginning, Some(_)) => Cursor::TimeId {
                time: None,
                id: None,
            },
            (crate::config::EventStart::End, None) => {
                let q = self.select(&format!("COALESCE(MAX({id}), 0)"), true, "");
                let f = self
                    .backend
                    .fetch_query(&q, &self.cfg.store.mapping)
                    .await?;
                Cursor::Id {
                    cursor: f.rows.first().and_then(|r| id_of(&r[0])).unwrap_or(0),
                }
            }
            (crate::config::EventStart::End, Some(t)) => {
                let q = self.select(
                    id,
                    true,
                    &format!(" WHERE {t} IS NOT NULL ORDER BY {t} DESC, {id} DESC LIMIT 1"),
                );
                let f = self
                    .backend
                    .fetch_query(&q, &self.cfg.store.mapping)
                    .await?;
                let last = f.rows.first();
                Cursor::TimeId {
                    time: last.and_then(|r| r.last()).and_then(CursorValue::from_cell),
                    id: last.and_then(|r| CursorValue::from_cell(&r[0])),
                }
            }
        };
        self.persist(&cursor)?;
        Ok(cursor)
    }

    /// Read and count every new event (up to the per-poll limit).
    async fn drain(&mut self) -> Result<usize, CollectError> {
        let mut cursor = match self.cursor.clone() {
            Some(c) => c,
            None => {
                let c = self.initial_cursor().await?;
                self.cursor = Some(c.clone());
                c
            }
        };
        let provider = self.cfg.store.provider.kind;
        let fields = self.cfg.columns.len();
        let mut counted = 0;
        for _ in 0..MAX_BATCHES_PER_POLL {
            let q = self.next_batch(&cursor)?;
            let fetched = self
                .backend
                .fetch_query(&q, &self.cfg.store.mapping)
                .await?;
            let n = fetched.rows.len();
            for row in &fetched.rows {
                let row_id = row[0].as_label().unwrap_or_default();
                let next = match &cursor {
                    Cursor::Id { cursor } => match id_of(&row[0]) {
                        Some(id) => Cursor::Id {
                            cursor: (*cursor).max(id),
                        },
                        None => {
                            return Err(CollectError::Document(format!(
                                "{} is not an integer id column (add time_column to order by a timestamp)",
                                self.cfg.id_column
                            )))
                        }
                    },
                    Cursor::TimeId { .. } => {
                        match (
                            CursorValue::from_cell(&row[fields + 1]),
                            CursorValue::from_cell(&row[0]),
                        ) {
                            (Some(t), Some(i)) => Cursor::TimeId {
                                time: Some(t),
                                id: Some(i),
                            },
                            _ => {
                                return Err(CollectError::Document(format!(
                                    "row {row_id:?}: {} and {} must be a timestamp, number or string",
                                    self.cfg.time_column.as_deref().unwrap_or(""),
                                    self.cfg.id_column
                                )))
                            }
                        }
                    }
                };
                let mut obj = serde_json::Map::new();
                for ((field, _), cell) in self.cfg.columns.iter().zip(&row[1..=fields]) {
                    if let Some(mut v) = cell_json(cell) {
                        if *field == "status" {
                            if let Some(n) = v.as_str().and_then(|s| s.trim().parse::<u16>().ok()) {
                                v = n.into();
                            }
                        }
                        obj.insert(field.to_string(), v);
                    }
                }
                match event(serde_json::Value::Object(obj), provider) {
                    Ok(c) => {
                        count(&self.live, &self.cfg.name, c);
                        counted += 1;
                    }
                    Err((field, error)) => {
                        self.live
                            .row_rejected(&self.cfg.name, RejectReason::InvalidEvent, 1);
                        tracing::warn!(source = %self.cfg.name, row_id = %row_id, field = %field, error = %error, "Event row rejected; the other rows are counted.");
                    }
                }
                cursor = next;
            }
            // Advance in memory first: a state file that cannot be written must not make the
            // same rows count twice in this process.
            self.cursor = Some(cursor.clone());
            if n > 0 || self.dirty {
                self.dirty = true;
                self.persist(&cursor)?;
                self.dirty = false;
            }
            if n < self.cfg.batch {
                break;
            }
        }
        Ok(counted)
    }

    /// One poll; returns whether it succeeded.
    pub async fn poll_once(&mut self) -> bool {
        let started = Instant::now();
        let timeout = self.cfg.store.timeout;
        let result = match tokio::time::timeout(timeout, self.drain()).await {
            Ok(r) => r,
            Err(_) => Err(CollectError::Timeout(timeout)),
        };
        let labels = SourceLabels {
            source: self.cfg.name.clone(),
        };
        self.live
            .duration
            .get_or_create(&labels)
            .set(started.elapsed().as_secs_f64());
        match result {
            Ok(_) => {
                self.failures = 0;
                self.live.up.get_or_create(&labels).set(1);
                self.live.last_success.get_or_create(&labels).set(
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs_f64())
                        .unwrap_or(0.0),
                );
                true
            }
            Err(e) => {
                self.failures += 1;
                self.live.source_error(&self.cfg.name, e.reason());
                self.live.up.get_or_create(&labels).set(0);
                tracing::warn!(source = %self.cfg.name, reason = e.reason().as_str(), error = %e, "Reading the event table failed; it is read again at the next poll.");
                false
            }
        }
    }

    pub async fn run(mut self, shutdown: CancellationToken) {
        loop {
            let ok = self.poll_once().await;
            let delay = crate::sources::next_delay(&self.cfg.store, ok, self.failures);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
        }
        self.backend.close().await;
    }
}

fn id_of(c: &Cell) -> Option<i64> {
    match c {
        Cell::Int(i) => Some(*i),
        Cell::Float(f) if f.fract() == 0.0 => Some(*f as i64),
        Cell::Text(s) => s.trim().parse().ok(),
        _ => None,
    }
}
