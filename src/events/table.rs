//! Event tables: rows the host app writes for each refresh and API call, tailed with an
//! increasing id (or a timestamp and an id). The cursor and the table's counters are kept in a
//! state file (written atomically after each counted batch), so a restart, even `kill -9`,
//! neither loses nor double-counts an event and the counters continue where they were; the
//! first start begins at the current end of the table unless `start: beginning`. Reads go
//! through the same read-only connections as the sources; each row becomes an
//! [`crate::model::Event`] (a bad row is rejected alone) and goes to the sink.

use super::classify::EventFields;
use super::lease::Lease;
use super::{Context, Inlet, Wired};
use crate::config::{EventField, EventStart, EventTable, Schedule, SqlKind};
use crate::model::{CollectError, CursorError, RejectReason, SourceErrorReason};
use crate::pipeline::{Health, Outcome, Polled, Runner, Sink, Subject};
use crate::sources::sql::{AllColumns, SqlPool};
use crate::telemetry::catalogue::SourceLabels;
use crate::telemetry::live::Counts;
use crate::telemetry::persist::write_atomically;
use crate::timestamp::{self, Cell, TimeFormat};

/// Batches read in one poll at most (a backlog drains over several polls).
const MAX_BATCHES_PER_POLL: usize = 100;

pub struct TablePoller {
    pub cfg: EventTable,
    pool: SqlPool,
    sink: Sink,
    clock: crate::clock::SharedClock,
    cursor: Option<Cursor>,
    /// The cursor advanced in memory but is not yet in the state file: every poll tries to
    /// write it, and fails until it can.
    dirty: bool,
    /// With `lease`: the lease while this instance holds it.
    lease: Option<Lease>,
    /// With `lease`: the other instances' counters in the shared state file, kept as read.
    others: std::collections::BTreeMap<String, Counts>,
    /// With shards, the condition for the shard's rows where the store computes the hash
    /// (PostgreSQL, MySQL); `None` otherwise (SQLite's events are filtered after the read).
    shard_predicate: Option<String>,
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
            // Compared in the column's own (naive) terms: the literal's offset is ignored.
            Cell::Naive(n) => CursorValue::Time(n.and_utc()),
            _ => return None,
        })
    }

    /// The value as an SQL literal of the store's dialect. Text is quoted with doubled quotes;
    /// a backslash (which MySQL would read as an escape) is refused rather than guessed at.
    fn literal(&self, kind: SqlKind) -> Result<String, &'static str> {
        Ok(match self {
            CursorValue::Int(i) => i.to_string(),
            CursorValue::Float(f) => format!("{f:?}"),
            CursorValue::Text(s) if s.contains('\\') || s.contains('\0') => {
                return Err("holds a backslash or NUL, which cannot be compared portably")
            }
            CursorValue::Text(s) => format!("'{}'", s.replace('\'', "''")),
            CursorValue::Time(t) => match kind {
                SqlKind::Postgres => format!("'{}'", t.format("%Y-%m-%d %H:%M:%S%.6f+00")),
                SqlKind::Sqlite | SqlKind::Mysql => {
                    format!("'{}'", t.format("%Y-%m-%d %H:%M:%S%.6f"))
                }
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
    counters: Counts,
    /// With `lease`, the file is shared: each instance's counters under its name.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    instances: std::collections::BTreeMap<String, Counts>,
}

impl Inlet for EventTable {
    fn name(&self) -> String {
        format!("event table {}", self.name)
    }

    /// A poll loop tailing the table.
    fn wire(&self, ctx: &Context) -> Result<Wired, CollectError> {
        let health = Health::new(
            ctx.sink.live().clone(),
            &self.name,
            Subject::EventTable,
            self.provider.as_str(),
        );
        let poller = TablePoller::new(self.clone(), ctx.sink.clone(), ctx.clock.clone())?;
        Ok(Wired {
            polls: vec![Box::new(Runner::new(poller, health, ctx.clock.clone()))],
            ..Wired::default()
        })
    }
}

impl TablePoller {
    pub fn new(
        cfg: EventTable,
        sink: Sink,
        clock: crate::clock::SharedClock,
    ) -> Result<Self, CollectError> {
        sink.init(cfg.provider, &cfg.name);
        // 0 until the first poll knows whether this instance reads the table.
        sink.live()
            .event_table_leader
            .get_or_create(&SourceLabels {
                source: cfg.name.clone(),
            })
            .set(0);
        let pool = SqlPool::connect(&cfg.connection)?;
        let shard_predicate = cfg
            .columns
            .iter()
            .find(|(f, _)| *f == EventField::Connection)
            .filter(|_| cfg.shard.is_sharded())
            .and_then(|(_, column)| cfg.shard.sql_predicate(cfg.connection.kind, column));
        Ok(TablePoller {
            cfg,
            pool,
            sink,
            clock,
            cursor: None,
            dirty: false,
            lease: None,
            others: Default::default(),
            shard_predicate,
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
                let f = f.as_str();
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
        let kind = self.cfg.connection.kind;
        let lit = |v: &CursorValue, what: &str| {
            v.literal(kind).map_err(|problem| {
                CollectError::from(CursorError::Unportable {
                    column: match what {
                        "time" => self.cfg.time_column.clone().unwrap_or_default(),
                        _ => id.to_string(),
                    },
                    problem,
                })
            })
        };
        let shard = self
            .shard_predicate
            .as_ref()
            .map_or(String::new(), |p| format!(" AND {p}"));
        let tail = match (cursor, &self.cfg.time_column) {
            (Cursor::Id { cursor }, _) => {
                format!(" WHERE {id} > {cursor}{shard} ORDER BY {id} LIMIT {limit}")
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
                format!("{after} AND {t} IS NOT NULL{shard} ORDER BY {t}, {id} LIMIT {limit}")
            }
            (Cursor::TimeId { .. }, None) => {
                return Err(CursorError::KindChanged {
                    path: self.cfg.state_file.clone(),
                    holds: "a time",
                    time_column_set: false,
                }
                .into())
            }
        };
        Ok(self.select(id, false, &tail))
    }

    /// Whether this instance counts an event of `connection` (with shards: its shard's, when
    /// the query could not select them).
    fn owns(&self, connection: Option<&str>) -> bool {
        self.shard_predicate.is_some() || self.cfg.shard.owns_row(connection)
    }

    fn persist(&self, cursor: &Cursor) -> Result<(), CollectError> {
        let path = &self.cfg.state_file;
        let counters = self.sink.live().events.snapshot(&self.cfg.name);
        let state = if self.cfg.lease {
            let mut instances = self.others.clone();
            instances.insert(self.cfg.instance.clone(), counters);
            State {
                cursor: cursor.clone(),
                counters: Counts::new(),
                instances,
            }
        } else {
            State {
                cursor: cursor.clone(),
                counters,
                instances: Default::default(),
            }
        };
        write_atomically(
            path,
            serde_json::to_string(&state)
                .expect("serialisable")
                .as_bytes(),
        )
        .map_err(|cause| {
            CursorError::Write {
                path: path.clone(),
                cause,
            }
            .into()
        })
    }

    async fn initial_cursor(&mut self) -> Result<Cursor, CollectError> {
        match std::fs::read_to_string(&self.cfg.state_file) {
            Ok(text) => {
                let state = serde_json::from_str::<State>(&text)
                    .map_err(|_| CursorError::NotACursor(self.cfg.state_file.clone()))?;
                let c = state.cursor;
                if matches!(c, Cursor::Id { .. }) && self.cfg.time_column.is_some() {
                    return Err(CursorError::KindChanged {
                        path: self.cfg.state_file.clone(),
                        holds: "an id",
                        time_column_set: true,
                    }
                    .into());
                }
                // The counters continue from where they were when the cursor was written (once
                // per process: a reload that restarts the table finds them counted already).
                // With a lease, this instance's own were restored at its first poll.
                if self.cfg.lease {
                    self.others = state.instances;
                    self.others.remove(&self.cfg.instance);
                } else {
                    let live = self.sink.live();
                    if live.restore_once(&self.cfg.name) {
                        live.events.restore(&self.cfg.name, &state.counters);
                    }
                }
                return Ok(c);
            }
            Err(cause) if cause.kind() != std::io::ErrorKind::NotFound => {
                return Err(CursorError::Read {
                    path: self.cfg.state_file.clone(),
                    cause,
                }
                .into())
            }
            Err(_) => {}
        }
        let id = &self.cfg.id_column;
        let cursor = match (self.cfg.start, &self.cfg.time_column) {
            (EventStart::Beginning, None) => Cursor::Id { cursor: 0 },
            (EventStart::Beginning, Some(_)) => Cursor::TimeId {
                time: None,
                id: None,
            },
            (EventStart::End, None) => {
                let q = self.select(&format!("COALESCE(MAX({id}), 0)"), true, "");
                let f = self.pool.fetch(&q, AllColumns::select).await?;
                Cursor::Id {
                    cursor: f.rows.first().and_then(|r| id_of(&r[0])).unwrap_or(0),
                }
            }
            (EventStart::End, Some(t)) => {
                let q = self.select(
                    id,
                    true,
                    &format!(" WHERE {t} IS NOT NULL ORDER BY {t} DESC, {id} DESC LIMIT 1"),
                );
                let f = self.pool.fetch(&q, AllColumns::select).await?;
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
        let fields = self.cfg.columns.len();
        let mut counted = 0;
        for batch in 0..MAX_BATCHES_PER_POLL {
            let q = self.next_batch(&cursor)?;
            let fetched = self.pool.fetch(&q, AllColumns::select).await?;
            let n = fetched.rows.len();
            // Counted only while the lease is held, checked after each read: a successor
            // starts from the last cursor written, so nothing is counted twice.
            if n > 0 && !self.still_leader().await {
                tracing::warn!(source = %self.cfg.name, "Lost the event table's lease while reading; another replica continues from the saved cursor.");
                self.cursor = None;
                break;
            }
            if n == 0 && batch == 0 {
                if let Some(reset) = self.cursor_ahead(&cursor).await? {
                    cursor = reset;
                    continue;
                }
            }
            for row in &fetched.rows {
                let row_id = row[0].as_label().unwrap_or_default();
                let next = match &cursor {
                    Cursor::Id { cursor } => match id_of(&row[0]) {
                        Some(id) => Cursor::Id {
                            cursor: (*cursor).max(id),
                        },
                        None => {
                            return Err(
                                CursorError::NotAnIntegerId(self.cfg.id_column.clone()).into()
                            )
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
                                return Err(CursorError::Unorderable {
                                    row: row_id,
                                    time_column: self.cfg.time_column.clone().unwrap_or_default(),
                                    id_column: self.cfg.id_column.clone(),
                                }
                                .into())
                            }
                        }
                    }
                };
                let cells = self
                    .cfg
                    .columns
                    .iter()
                    .map(|(f, _)| *f)
                    .zip(&row[1..=fields]);
                match event_fields(cells).validate(self.cfg.provider, self.clock.now()) {
                    Ok(e) if !self.owns(e.connection.as_deref()) => {}
                    Ok(e) => {
                        self.sink.count(&self.cfg.name, e);
                        counted += 1;
                    }
                    Err((field, error)) => {
                        self.sink.live().row_rejected(
                            &self.cfg.name,
                            RejectReason::InvalidEvent,
                            1,
                        );
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
}

impl TablePoller {
    fn set_leader(&self, leader: bool) {
        self.sink
            .live()
            .event_table_leader
            .get_or_create(&SourceLabels {
                source: self.cfg.name.clone(),
            })
            .set(i64::from(leader));
    }

    /// With a lease: this instance's counters as the shared state file last saved them, once
    /// per process (before it first exports them, leader or not).
    fn restore_own_counters(&mut self) -> Result<(), CollectError> {
        let live = self.sink.live();
        if !live.restore_once(&self.cfg.name) {
            return Ok(());
        }
        match std::fs::read_to_string(&self.cfg.state_file) {
            Ok(text) => {
                let state = serde_json::from_str::<State>(&text)
                    .map_err(|_| CursorError::NotACursor(self.cfg.state_file.clone()))?;
                if let Some(own) = state.instances.get(&self.cfg.instance) {
                    live.events.restore(&self.cfg.name, own);
                }
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(cause) => Err(CursorError::Read {
                path: self.cfg.state_file.clone(),
                cause,
            }
            .into()),
        }
    }

    /// Keep or take the lease; whether this instance is the reader now. A lease whose
    /// connection broke is lost; a new one starts from the cursor in the shared state file.
    async fn hold_lease(&mut self) -> Result<bool, CollectError> {
        if self.still_leader().await {
            return Ok(true);
        }
        match Lease::try_acquire(&self.pool, &self.cfg).await? {
            Some(l) => {
                tracing::info!(source = %self.cfg.name, instance = %self.cfg.instance, "Took the event table's lease; reading from the saved cursor.");
                self.lease = Some(l);
                self.cursor = None;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Whether this instance still holds the lease (always, for a table without one).
    async fn still_leader(&mut self) -> bool {
        if !self.cfg.lease {
            return true;
        }
        let Some(l) = self.lease.as_mut() else {
            return false;
        };
        if l.held().await {
            return true;
        }
        tracing::warn!(source = %self.cfg.name, "Lost the event table's lease (its connection to the store broke); another replica may take over.");
        self.lease = None;
        self.cursor = None;
        false
    }

    /// Nothing new past an id cursor: check that the table's ids did not go back below it
    /// (`TRUNCATE ... RESTART IDENTITY`, a restore from a backup), which would hide every event
    /// written since until the ids pass the cursor again. If they did, the cursor goes back
    /// to the start of the table (every row now in it is read: a truncated table's new events
    /// are counted, a restored table's old ones again), the state file with it, and the reset
    /// is logged and counted (`oauth_exporter_source_errors_total{reason="cursor_reset"}`).
    async fn cursor_ahead(&mut self, cursor: &Cursor) -> Result<Option<Cursor>, CollectError> {
        let Cursor::Id { cursor: at } = *cursor else {
            return Ok(None);
        };
        if at <= 0 {
            return Ok(None);
        }
        let id = &self.cfg.id_column;
        let q = self.select(&format!("COALESCE(MAX({id}), 0)"), true, "");
        let f = self.pool.fetch(&q, AllColumns::select).await?;
        let max = f.rows.first().and_then(|r| id_of(&r[0])).unwrap_or(0);
        if max >= at {
            return Ok(None);
        }
        tracing::warn!(source = %self.cfg.name, cursor = at, max_id = max, "The event table's ids are below the saved cursor (truncated with its ids restarted, or restored from a backup); reading it again from the start.");
        self.sink
            .live()
            .source_error(&self.cfg.name, SourceErrorReason::CursorReset);
        let reset = Cursor::Id { cursor: 0 };
        self.cursor = Some(reset.clone());
        self.persist(&reset)?;
        Ok(Some(reset))
    }
}

impl Polled for TablePoller {
    fn source(&self) -> &str {
        &self.cfg.name
    }

    fn schedule(&self) -> Schedule {
        self.cfg.schedule
    }

    async fn poll(&mut self) -> Result<Outcome, CollectError> {
        if self.cfg.lease {
            self.restore_own_counters()?;
            let leader = self.hold_lease().await;
            self.set_leader(matches!(leader, Ok(true)));
            if !leader? {
                return Ok(Outcome {
                    events: Some(0),
                    ..Outcome::default()
                });
            }
        } else {
            self.set_leader(true);
        }
        let events = self.drain().await?;
        Ok(Outcome {
            events: Some(events),
            ..Outcome::default()
        })
    }

    async fn close(&mut self) {
        if let Some(l) = self.lease.take() {
            l.release().await;
        }
        self.pool.close().await;
    }
}

/// An event's fields from a row's cells.
fn event_fields<'a>(cells: impl Iterator<Item = (EventField, &'a Cell)>) -> EventFields {
    let mut e = EventFields::default();
    for (field, cell) in cells {
        if matches!(cell, Cell::Null) {
            continue;
        }
        let text = || cell.as_label();
        match field {
            EventField::Type => e.kind = text(),
            EventField::Connection => e.connection = text(),
            EventField::Tenant => e.tenant = text(),
            EventField::Time => {
                e.time = Some(match timestamp::to_time(cell, TimeFormat::Auto) {
                    Ok(Some(t)) => Ok(t),
                    _ => Err("must be a timestamp (a time column, RFC 3339 text or epoch seconds)"),
                })
            }
            EventField::Outcome => e.outcome = text().map(|s| s.trim().to_lowercase()),
            EventField::Error => e.error = text(),
            EventField::Status => {
                e.status = match cell {
                    Cell::Int(i) => u16::try_from(*i).ok().or(Some(0)),
                    Cell::Float(f) if f.fract() == 0.0 && *f >= 0.0 && *f < 65536.0 => {
                        Some(*f as u16)
                    }
                    other => other
                        .as_label()
                        .and_then(|s| s.trim().parse::<u16>().ok())
                        .or(Some(0)),
                }
            }
            EventField::Detail => e.detail = text(),
            EventField::RateLimitProblem => e.rate_limit_problem = text(),
        }
    }
    e
}

fn id_of(c: &Cell) -> Option<i64> {
    match c {
        Cell::Int(i) => Some(*i),
        Cell::Float(f) if f.fract() == 0.0 => Some(*f as i64),
        Cell::Text(s) => s.trim().parse().ok(),
        _ => None,
    }
}
