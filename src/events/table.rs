//! Event tables: rows the host app writes for each refresh and API call, tailed with an
//! increasing id. The cursor is kept in a state file (written atomically after each counted
//! batch), so a restart neither loses nor double-counts an event; the first start begins at
//! the current end of the table unless `start: beginning`. Reads go through the same
//! read-only connections as the sources.

use super::ingest::{count, event};
use crate::config::EventTable;
use crate::metrics::{Live, RejectReason, SourceLabels};
use crate::sources::{Backend, CollectError};
use crate::timestamp::Cell;
use std::io::Write;
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

/// Batches read in one poll at most (a backlog drains over several polls).
const MAX_BATCHES_PER_POLL: usize = 100;

pub struct TablePoller {
    pub cfg: EventTable,
    backend: Backend,
    live: Arc<Live>,
    cursor: Option<i64>,
    failures: u32,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct State {
    cursor: i64,
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
        })
    }

    /// The cursor as last persisted (for tests and the landing page).
    pub fn cursor(&self) -> Option<i64> {
        self.cursor
    }

    fn select(&self, what_id: &str, tail: &str) -> String {
        let cols: Vec<String> = self
            .cfg
            .columns
            .iter()
            .map(|(f, c)| {
                if what_id.starts_with("COALESCE") {
                    format!("NULL AS ote_{f}")
                } else {
                    format!("{c} AS ote_{f}")
                }
            })
            .collect();
        format!(
            "SELECT {what_id} AS ote_id, {} FROM {}{tail}",
            cols.join(", "),
            self.cfg.table
        )
    }

    fn persist(&self, cursor: i64) -> Result<(), CollectError> {
        let path = &self.cfg.state_file;
        let tmp = path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(
                serde_json::to_string(&State { cursor })
                    .expect("serialisable")
                    .as_bytes(),
            )?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|e| {
            CollectError::Document(format!(
                "cannot write the state file {}: {e}",
                path.display()
            ))
        })
    }

    async fn initial_cursor(&mut self) -> Result<i64, CollectError> {
        match std::fs::read_to_string(&self.cfg.state_file) {
            Ok(text) => {
                return serde_json::from_str::<State>(&text)
                    .map(|s| s.cursor)
                    .map_err(|_| {
                        CollectError::Document(format!(
                            "the state file {} is not a cursor; remove it to start again",
                            self.cfg.state_file.display()
                        ))
                    })
            }
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(CollectError::Document(format!(
                    "cannot read the state file {}: {e}",
                    self.cfg.state_file.display()
                )))
            }
            Err(_) => {}
        }
        let cursor = match self.cfg.start {
            crate::config::EventStart::Beginning => 0,
            crate::config::EventStart::End => {
                let q = self.select(&format!("COALESCE(MAX({}), 0)", self.cfg.id_column), "");
                let f = self
                    .backend
                    .fetch_query(&q, &self.cfg.store.mapping)
                    .await?;
                f.rows.first().and_then(|r| id_of(&r[0])).unwrap_or(0)
            }
        };
        self.persist(cursor)?;
        Ok(cursor)
    }

    /// Read and count every new event (up to the per-poll limit).
    async fn drain(&mut self) -> Result<usize, CollectError> {
        let mut cursor = match self.cursor {
            Some(c) => c,
            None => {
                let c = self.initial_cursor().await?;
                self.cursor = Some(c);
                c
            }
        };
        let provider = self.cfg.store.provider.kind;
        let mut counted = 0;
        for _ in 0..MAX_BATCHES_PER_POLL {
            let q = self.select(
                &self.cfg.id_column,
                &format!(
                    " WHERE {id} > {cursor} ORDER BY {id} LIMIT {}",
                    self.cfg.batch,
                    id = self.cfg.id_column
                ),
            );
            let fetched = self
                .backend
                .fetch_query(&q, &self.cfg.store.mapping)
                .await?;
            let n = fetched.rows.len();
            for row in &fetched.rows {
                let Some(id) = id_of(&row[0]) else {
                    return Err(CollectError::Document(format!(
                        "{} is not an integer id column",
                        self.cfg.id_column
                    )));
                };
                let mut obj = serde_json::Map::new();
                for ((field, _), cell) in self.cfg.columns.iter().zip(&row[1..]) {
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
                        tracing::warn!(source = %self.cfg.name, row_id = id, field = %field, error = %error, "Event row rejected; the other rows are counted.");
                    }
                }
                cursor = cursor.max(id);
            }
            // Advance in memory first: a state file that cannot be written must not make the
            // same rows count twice in this process.
            self.cursor = Some(cursor);
            if n > 0 {
                self.persist(cursor)?;
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
