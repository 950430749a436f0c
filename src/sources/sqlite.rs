//! SQLite, the embedded default. Opened read-only (`SQLITE_OPEN_READONLY`): SQLite refuses
//! every write.
//!
//! A poll reads on one blocking thread with rusqlite and hands rows to the async side in
//! batches. (sqlx's SQLite driver runs each statement on a worker thread that sends every row
//! through a channel; at a million rows a third of a poll went to those hand-offs.) The
//! connection is opened per read: it costs well under a millisecond, holds nothing between
//! polls, and a store that is down is a failed poll, never a failed start.

use super::sql::Columns;
use crate::config::SqlConnection;
use crate::model::CollectError;
use crate::timestamp::{parse_naive_fast, Cell};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Rows per batch handed from the reading thread to the poll.
const BATCH_ROWS: usize = 1024;
/// Batches in flight between the two (memory stays bounded whatever the row count).
const BATCHES_IN_FLIGHT: usize = 2;
/// SQLite virtual-machine steps between two checks whether the poll was abandoned.
const CANCEL_CHECK_STEPS: i32 = 10_000;

/// Where a SQLite store is and how long a read waits for a writer's lock.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    path: PathBuf,
    busy_timeout: Duration,
}

/// A store path or an sqlx-style URL (`sqlite://path`, `sqlite:path?mode=ro`): both are read
/// the same, read-only.
pub fn connect(cfg: &SqlConnection) -> Result<SqliteStore, CollectError> {
    let dsn = cfg.dsn.expose();
    let path = if dsn.starts_with("sqlite:") {
        sqlx::sqlite::SqliteConnectOptions::from_str(dsn)
            .map_err(super::sql::sql_error)?
            .get_filename()
            .to_path_buf()
    } else {
        PathBuf::from(dsn)
    };
    Ok(SqliteStore {
        path,
        busy_timeout: cfg.timeout,
    })
}

/// What the reading thread sends the poll.
enum Msg {
    /// The result's column names, at its first row; answered with the columns to decode.
    Columns(Vec<String>),
    /// Up to [`BATCH_ROWS`] rows, their selected cells one after the other.
    Rows {
        cells: Vec<Cell>,
        rows: usize,
    },
    Failed(CollectError),
}

/// Sets its flag when dropped: the poll was abandoned (a timeout, a shutdown) or is done.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

pub async fn stream<S: Columns>(
    store: &SqliteStore,
    query: &str,
    select: impl FnOnce(&[String]) -> Result<S, CollectError>,
    on_row: &mut (dyn FnMut(&S, &[Cell]) + Send),
) -> Result<Option<S>, CollectError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel(BATCHES_IN_FLIGHT);
    let (needed_tx, needed_rx) = std::sync::mpsc::channel::<Vec<usize>>();
    let cancelled = Arc::new(AtomicBool::new(false));
    let _cancel = CancelOnDrop(cancelled.clone());
    let (store, owned_query) = (store.clone(), query.to_owned());
    let reader = tokio::task::spawn_blocking(move || {
        if let Err(e) = read(&store, &owned_query, &tx, &needed_rx, cancelled) {
            let _ = tx.blocking_send(Msg::Failed(e));
        }
    });
    let mut select = Some(select);
    let mut selected: Option<S> = None;
    let mut width = 0;
    while let Some(msg) = rx.recv().await {
        match msg {
            Msg::Columns(names) => {
                let s = (select.take().expect("columns are sent once"))(&names)?;
                width = s.needed().len();
                // The reader waits for this answer; if it has gone, the next recv says why.
                let _ = needed_tx.send(s.needed().to_vec());
                selected = Some(s);
            }
            Msg::Rows { cells, rows } => {
                let s = selected.as_ref().expect("columns precede rows");
                if width == 0 {
                    // A select of no column: one empty row per row read.
                    (0..rows).for_each(|_| on_row(s, &[]));
                } else {
                    cells.chunks_exact(width).for_each(|row| on_row(s, row));
                }
            }
            Msg::Failed(e) => return Err(e),
        }
    }
    if let Err(e) = reader.await {
        return Err(CollectError::Query(format!(
            "the SQLite reader stopped: {e}"
        )));
    }
    Ok(selected)
}

/// Run `query` on a fresh read-only connection, sending rows in batches until the result ends
/// or the poll stops listening.
fn read(
    store: &SqliteStore,
    query: &str,
    tx: &tokio::sync::mpsc::Sender<Msg>,
    needed_rx: &std::sync::mpsc::Receiver<Vec<usize>>,
    cancelled: Arc<AtomicBool>,
) -> Result<(), CollectError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(&store.path, flags).map_err(sqlite_error)?;
    conn.busy_timeout(store.busy_timeout)
        .map_err(sqlite_error)?;
    // A long statement before its first row is interrupted once the poll is abandoned.
    conn.progress_handler(
        CANCEL_CHECK_STEPS,
        Some(move || cancelled.load(Ordering::Relaxed)),
    );
    let mut stmt = conn.prepare(query).map_err(sqlite_error)?;
    let names: Vec<String> = (0..stmt.column_count())
        .map(|i| stmt.column_name(i).map(str::to_owned))
        .collect::<Result<_, _>>()
        .map_err(sqlite_error)?;
    // Declared types, read once: a DATETIME/TIMESTAMP/DATE column's text is decoded in place.
    let datetime: Vec<bool> = stmt
        .columns()
        .iter()
        .map(|c| {
            c.decl_type().is_some_and(|t| {
                matches!(
                    t.trim().to_ascii_lowercase().as_str(),
                    "datetime" | "timestamp" | "date"
                )
            })
        })
        .collect();
    let mut rows = stmt.query([]).map_err(sqlite_error)?;
    let mut needed: Option<Vec<usize>> = None;
    let mut batch: Vec<Cell> = Vec::new();
    let mut in_batch = 0;
    while let Some(row) = rows.next().map_err(sqlite_error)? {
        let needed = match &needed {
            Some(n) => n,
            None => {
                if tx.blocking_send(Msg::Columns(names.clone())).is_err() {
                    return Ok(());
                }
                match needed_rx.recv() {
                    Ok(n) => {
                        batch = Vec::with_capacity(BATCH_ROWS * n.len());
                        needed.insert(n)
                    }
                    // The poll refused the columns (its error is already returned) or stopped.
                    Err(_) => return Ok(()),
                }
            }
        };
        for &i in needed.iter() {
            batch.push(decode(row.get_ref(i).map_err(sqlite_error)?, datetime[i]));
        }
        in_batch += 1;
        if in_batch == BATCH_ROWS {
            let cells =
                std::mem::replace(&mut batch, Vec::with_capacity(BATCH_ROWS * needed.len()));
            if tx
                .blocking_send(Msg::Rows {
                    cells,
                    rows: in_batch,
                })
                .is_err()
            {
                return Ok(());
            }
            in_batch = 0;
        }
    }
    if in_batch > 0 {
        let _ = tx.blocking_send(Msg::Rows {
            cells: batch,
            rows: in_batch,
        });
    }
    Ok(())
}

/// SQLite types values, not columns: decode by each value's storage class. Text is read as
/// bytes: a value that is not UTF-8 rejects its row alone ([`Cell::NotUtf8`]).
fn decode(v: ValueRef<'_>, datetime_column: bool) -> Cell {
    match v {
        ValueRef::Null => Cell::Null,
        ValueRef::Integer(i) => Cell::Int(i),
        ValueRef::Real(f) => Cell::Float(f),
        ValueRef::Blob(b) => Cell::bytes(b),
        ValueRef::Text(b) => match std::str::from_utf8(b) {
            // A column declared as a date-time holding the usual naive layout is decoded in
            // place, without a string (a million rows a poll); other text is read as text.
            Ok(s) => match datetime_column.then(|| parse_naive_fast(s)).flatten() {
                Some(n) => Cell::Naive(n),
                None => Cell::Text(s.to_owned()),
            },
            Err(_) => Cell::NotUtf8,
        },
    }
}

/// Classify a SQLite error as [`super::sql::sql_error`] does a driver's: a refused write, a
/// database that cannot be opened, a missing column, or a query error; the message kept only
/// where it cannot quote a value ([`super::sql::sqlite_error_text`]).
fn sqlite_error(e: rusqlite::Error) -> CollectError {
    match e {
        rusqlite::Error::SqliteFailure(f, msg) => {
            let msg = msg.unwrap_or_else(|| f.to_string());
            let text = super::sql::sqlite_error_text(&f.extended_code.to_string(), &msg);
            match f.code {
                rusqlite::ErrorCode::ReadOnly => CollectError::WriteRefused(text),
                rusqlite::ErrorCode::CannotOpen
                | rusqlite::ErrorCode::NotADatabase
                | rusqlite::ErrorCode::PermissionDenied => CollectError::Connect(text),
                _ if msg.starts_with("no such column") => CollectError::MissingTableColumn(text),
                _ => CollectError::Query(text),
            }
        }
        rusqlite::Error::Utf8Error(_) => {
            CollectError::Query("a column name is not valid UTF-8".into())
        }
        other => {
            let d = format!("{other:?}");
            let name = d.split(['(', ' ', '{']).next().unwrap_or("error");
            CollectError::Query(format!("SQLite error ({name})"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::sql::AllColumns;

    fn store(dir: &tempfile::TempDir, setup: &str) -> SqliteStore {
        let path = dir.path().join("t.db");
        let c = Connection::open(&path).unwrap();
        c.execute_batch(setup).unwrap();
        SqliteStore {
            path,
            busy_timeout: Duration::from_secs(1),
        }
    }

    #[tokio::test]
    async fn rows_arrive_in_order_across_batches_and_decode_by_storage_class() {
        let dir = tempfile::tempdir().unwrap();
        let n = BATCH_ROWS * 2 + 7;
        let s = store(
            &dir,
            &format!(
                "CREATE TABLE t (i INTEGER, at DATETIME, r REAL, b BLOB);
                 WITH RECURSIVE k(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM k WHERE x < {})
                 INSERT INTO t SELECT x, '2026-01-02 03:04:05', x / 2.0, x'ff41' FROM k;",
                n - 1
            ),
        );
        let mut seen = vec![];
        let selected = stream(
            &s,
            "SELECT i, at, r, b FROM t ORDER BY i",
            AllColumns::select,
            &mut |_, cells| seen.push(cells.to_vec()),
        )
        .await
        .unwrap();
        assert_eq!(selected.unwrap().0, vec![0, 1, 2, 3]);
        assert_eq!(seen.len(), n);
        for (k, row) in seen.iter().enumerate() {
            assert_eq!(row[0], Cell::Int(k as i64));
        }
        assert!(matches!(seen[5][1], Cell::Naive(_)), "{:?}", seen[5][1]);
        assert_eq!(seen[5][2], Cell::Float(2.5));
        // A blob that is not UTF-8: `\x` and its hex, as PostgreSQL prints bytes.
        assert_eq!(seen[5][3], Cell::Text("\\xff41".into()));
    }

    #[tokio::test]
    async fn no_row_selects_nothing_and_errors_are_classified_without_values() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir, "CREATE TABLE t (i INTEGER, tok TEXT);");
        let none = stream(&s, "SELECT i FROM t", AllColumns::select, &mut |_, _| {
            panic!("no row")
        })
        .await
        .unwrap();
        assert!(none.is_none());
        let write = stream(
            &s,
            "INSERT INTO t VALUES (1, 'x') RETURNING i",
            AllColumns::select,
            &mut |_, _| {},
        )
        .await;
        assert!(
            matches!(write, Err(CollectError::WriteRefused(_))),
            "{write:?}"
        );
        let col = stream(&s, "SELECT nope FROM t", AllColumns::select, &mut |_, _| {}).await;
        assert!(
            matches!(col, Err(CollectError::MissingTableColumn(_))),
            "{col:?}"
        );
        let missing = SqliteStore {
            path: dir.path().join("absent.db"),
            busy_timeout: Duration::from_secs(1),
        };
        let open = stream(&missing, "SELECT 1", AllColumns::select, &mut |_, _| {}).await;
        assert!(matches!(open, Err(CollectError::Connect(_))), "{open:?}");
    }

    #[tokio::test]
    async fn an_abandoned_poll_stops_the_reader() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(
            &dir,
            "CREATE TABLE t (i INTEGER); INSERT INTO t VALUES (1);",
        );
        // An endless statement reading `t`: only the cancel flag ends it. While it runs it
        // holds a shared lock on the file.
        let endless = "WITH RECURSIVE k(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM k) \
                       SELECT count(*) FROM k, t";
        let mut ignore = |_: &AllColumns, _: &[Cell]| {};
        let poll = stream(&s, endless, AllColumns::select, &mut ignore);
        let r = tokio::time::timeout(Duration::from_millis(300), poll).await;
        assert!(r.is_err(), "the endless query ran until the timeout");
        // An exclusive lock is granted only once no reader holds the file.
        let writer = Connection::open(&s.path).unwrap();
        writer.busy_timeout(Duration::from_secs(10)).unwrap();
        writer
            .execute_batch("BEGIN EXCLUSIVE; COMMIT;")
            .expect("the abandoned reader let go of the file");
    }
}
