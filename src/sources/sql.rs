//! What the three SQL stores share: one read-only pool per store ([`SqlPool`]), rows streamed
//! and decoded only in the columns wanted ([`read_rows`]), and driver errors classified
//! ([`sql_error`]). Sources and event tables both read through it.

use super::{mysql, postgres, sqlite};
use crate::config::{SqlConnection, SqlKind};
use crate::model::CollectError;
use crate::timestamp::Cell;
use futures_util::TryStreamExt;

/// A lazily connecting, read-only pool of one connection to an SQL store.
#[derive(Debug)]
pub enum SqlPool {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
    Mysql(sqlx::MySqlPool),
}

/// A result: its column names and, per row, the cells of the columns selected.
#[derive(Debug, Default)]
pub struct Rows<S> {
    /// What `select` made of the column names (e.g. the resolved mapping), `None` when the
    /// result had no row.
    pub selected: Option<S>,
    pub rows: Vec<Vec<Cell>>,
}

impl SqlPool {
    /// Prepare a read-only pool. Connects lazily: a store that is down at start-up is a failed
    /// poll, not a failed start.
    pub fn connect(c: &SqlConnection) -> Result<SqlPool, CollectError> {
        Ok(match c.kind {
            SqlKind::Sqlite => SqlPool::Sqlite(sqlite::connect(c)?),
            SqlKind::Postgres => SqlPool::Postgres(postgres::connect(c)?),
            SqlKind::Mysql => SqlPool::Mysql(mysql::connect(c)?),
        })
    }

    /// Run `query` without writing anything and collect its rows. `select` sees the result's
    /// column names at the first row and says which columns to decode, in which order.
    pub async fn fetch<S: Columns>(
        &self,
        query: &str,
        select: impl FnOnce(&[String]) -> Result<S, CollectError> + Send,
    ) -> Result<Rows<S>, CollectError> {
        let mut rows = Vec::new();
        let selected = self
            .stream(query, select, &mut |_, cells: &[Cell]| {
                rows.push(cells.to_vec())
            })
            .await?;
        Ok(Rows { selected, rows })
    }

    /// Run `query` without writing anything, handing each row's decoded cells to `on_row` as
    /// the store yields them (nothing is collected: memory stays flat whatever the row count).
    /// Returns what `select` made of the column names, `None` when the result had no row.
    pub async fn stream<S: Columns>(
        &self,
        query: &str,
        select: impl FnOnce(&[String]) -> Result<S, CollectError> + Send,
        on_row: &mut (dyn FnMut(&S, &[Cell]) + Send),
    ) -> Result<Option<S>, CollectError> {
        match self {
            SqlPool::Sqlite(p) => sqlite::stream(p, query, select, on_row).await,
            SqlPool::Postgres(p) => postgres::stream(p, query, select, on_row).await,
            SqlPool::Mysql(p) => mysql::stream(p, query, select, on_row).await,
        }
    }

    pub async fn close(&self) {
        match self {
            SqlPool::Sqlite(p) => p.close().await,
            SqlPool::Postgres(p) => p.close().await,
            SqlPool::Mysql(p) => p.close().await,
        }
    }
}

/// What [`SqlPool::fetch`]'s `select` returns: the indexes of the columns to decode.
pub trait Columns: Send {
    fn needed(&self) -> &[usize];
}

/// Every column, in result order (event tables and cursor queries).
#[derive(Debug)]
pub struct AllColumns(pub Vec<usize>);

impl Columns for AllColumns {
    fn needed(&self) -> &[usize] {
        &self.0
    }
}

impl AllColumns {
    pub fn select(names: &[String]) -> Result<AllColumns, CollectError> {
        Ok(AllColumns((0..names.len()).collect()))
    }
}

/// Stream a query's rows, calling `select` on the first row's column names, decoding only
/// the columns it needs into one reused buffer and handing each row to `on_row`.
pub(crate) async fn read_rows<'c, DB, E, S>(
    executor: E,
    query: &'c str,
    select: impl FnOnce(&[String]) -> Result<S, CollectError>,
    decode: fn(&DB::Row, usize) -> Result<Cell, CollectError>,
    on_row: &mut (dyn FnMut(&S, &[Cell]) + Send),
) -> Result<Option<S>, CollectError>
where
    DB: sqlx::Database,
    E: sqlx::Executor<'c, Database = DB> + 'c,
    S: Columns,
    for<'q> <DB as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
{
    use sqlx::{Column, Row};
    let mut stream = sqlx::query::<DB>(query).fetch(executor);
    let mut selected = None;
    let mut select = Some(select);
    let mut cells: Vec<Cell> = Vec::new();
    while let Some(row) = stream.try_next().await.map_err(sql_error)? {
        if let Some(select) = select.take() {
            let names: Vec<String> = row.columns().iter().map(|c| c.name().to_string()).collect();
            selected = Some(select(&names)?);
        }
        let s = selected.as_ref().expect("selected at the first row");
        cells.clear();
        for &i in s.needed() {
            cells.push(decode(&row, i)?);
        }
        on_row(s, &cells);
    }
    Ok(selected)
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

/// Classify a driver error.
pub fn sql_error(e: sqlx::Error) -> CollectError {
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
