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
    Sqlite(sqlite::SqliteStore),
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

    /// The zone the server gives the app's sessions, for `timezone: session` (the driver sets
    /// this exporter's own session to UTC, so that is not asked). PostgreSQL: the `timezone`
    /// set for the role and database (`ALTER ROLE/DATABASE ... SET timezone`, most specific
    /// first), else the server's `log_timezone` (initdb sets it with `timezone`, from the
    /// system's zone). MySQL/MariaDB: the global `time_zone`, `SYSTEM` resolved through
    /// `system_time_zone`.
    pub async fn session_zone(&self) -> Result<crate::timestamp::Zone, CollectError> {
        let query = match self {
            SqlPool::Postgres(_) => "SELECT COALESCE(\
                (SELECT substr(c, 10) FROM pg_db_role_setting s, unnest(s.setconfig) c \
                 WHERE lower(c) LIKE 'timezone=%' \
                   AND s.setrole IN (0, (SELECT oid FROM pg_roles WHERE rolname = current_user)) \
                   AND s.setdatabase IN (0, (SELECT oid FROM pg_database WHERE datname = current_database())) \
                 ORDER BY (s.setrole <> 0) DESC, (s.setdatabase <> 0) DESC LIMIT 1), \
                current_setting('log_timezone')) AS zone",
            SqlPool::Mysql(_) => "SELECT CAST(IF(@@global.time_zone = 'SYSTEM', @@system_time_zone, @@global.time_zone) AS CHAR) AS zone",
            SqlPool::Sqlite(_) => {
                return Err(CollectError::Query(
                    "SQLite has no session time zone; set `timezone` to the zone's name".into(),
                ))
            }
        };
        let rows = self.fetch(query, AllColumns::select).await?;
        let name = match rows.rows.first().and_then(|r| r.first()) {
            Some(Cell::Text(s)) => s.clone(),
            _ => {
                return Err(CollectError::Query(
                    "the server did not name its time zone".into(),
                ))
            }
        };
        crate::timestamp::Zone::parse(&name).ok_or_else(|| {
            CollectError::Query(format!(
                "the server's time zone {name:?} is not an IANA name or an offset; set `timezone` to the zone's IANA name"
            ))
        })
    }

    /// A preset's query failed on a column its table does not have: say which columns the
    /// table has (names only) and which preset, if any, reads that shape.
    pub async fn preset_mismatch(
        &self,
        e: CollectError,
        preset: crate::config::Preset,
        table: &str,
    ) -> CollectError {
        let (schema, name) = match table.rsplit_once('.') {
            Some((s, n)) => (Some(s), n),
            None => (None, table),
        };
        // `table` passed the preset's name check (letters, digits, `_`, one dot).
        let query = match (self, schema) {
            (SqlPool::Sqlite(_), _) => format!("SELECT name FROM pragma_table_info('{name}')"),
            (SqlPool::Postgres(_), Some(s)) => format!("SELECT column_name::text FROM information_schema.columns WHERE table_schema = '{s}' AND table_name = '{name}'"),
            (SqlPool::Postgres(_), None) => format!("SELECT column_name::text FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = '{name}'"),
            (SqlPool::Mysql(_), Some(s)) => format!("SELECT CAST(column_name AS CHAR) FROM information_schema.columns WHERE table_schema = '{s}' AND table_name = '{name}'"),
            (SqlPool::Mysql(_), None) => format!("SELECT CAST(column_name AS CHAR) FROM information_schema.columns WHERE table_schema = DATABASE() AND table_name = '{name}'"),
        };
        let columns: Vec<String> = match self.fetch(&query, AllColumns::select).await {
            Ok(rows) => rows
                .rows
                .into_iter()
                .filter_map(|r| match r.into_iter().next() {
                    Some(Cell::Text(c)) => Some(c.to_lowercase()),
                    _ => None,
                })
                .collect(),
            Err(_) => return e,
        };
        let has = |c: &&str| columns.iter().any(|x| x == c);
        let missing: Vec<&str> = preset
            .columns()
            .iter()
            .copied()
            .filter(|c| !has(c))
            .collect();
        if columns.is_empty() || missing.is_empty() {
            return e;
        }
        let fits: Vec<&str> = crate::config::Preset::TABLES
            .iter()
            .filter(|p| **p != preset && p.columns().iter().all(&has))
            .map(|p| p.as_str())
            .collect();
        let advice = match fits.as_slice() {
            [] => "no preset reads this shape: write a `query` and map its `fields`".to_string(),
            fits => format!("preset `{}` reads this shape", fits.join("` or `")),
        };
        CollectError::Query(format!(
            "{e}; table {table} is not the shape preset `{}` reads: it has no column {} (its columns: {}); {advice}",
            preset.as_str(),
            missing.join(", "),
            columns.join(", "),
        ))
    }

    pub async fn close(&self) {
        match self {
            SqlPool::Sqlite(_) => {}
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
/// ty { "INT8" => get!(i64).map(Cell::Int), ... })`. `get!(T)` reads an `Option<T>`, `typed!(T)`
/// the same without the driver's type check; a type the driver cannot read becomes
/// [`CollectError::Decode`] naming the column and its type.
macro_rules! decode_by_type {
    ($row:expr, $i:expr, |$ty:ident| $body:expr) => {{
        use sqlx::{Column, Row, TypeInfo};
        let row = $row;
        let i = $i;
        let col = &row.columns()[i];
        // Borrowed: a poll decodes every cell, and the name is only copied into an error.
        let type_name = col.type_info().name();
        let err = |_| CollectError::Decode {
            column: col.name().to_string(),
            type_name: type_name.to_string(),
        };
        #[allow(unused_macros)]
        macro_rules! get {
            ($t:ty) => {
                row.try_get::<Option<$t>, _>(i).map_err(err)?
            };
        }
        // Without sqlx's type check, for an arm whose type name already says what the value
        // is (a domain read as its base type, an enum as its label).
        #[allow(unused_macros)]
        macro_rules! typed {
            ($t:ty) => {
                row.try_get_unchecked::<Option<$t>, _>(i).map_err(err)?
            };
        }
        let $ty = type_name;
        let cell: Option<Cell> = $body;
        Ok(cell.unwrap_or(Cell::Null))
    }};
}
pub(crate) use decode_by_type;

/// A connection from `pool`. A pool retries failed connects until its acquire timeout (half
/// the poll's) and then says only that it timed out; one direct connect in the other half
/// finds out why: refused, DNS, TLS, authentication, or a server that never answers (a
/// timeout).
pub(crate) async fn acquire<DB: sqlx::Database>(
    pool: &sqlx::Pool<DB>,
) -> Result<sqlx::pool::PoolConnection<DB>, CollectError> {
    use sqlx::{ConnectOptions, Connection};
    match pool.acquire().await {
        Ok(c) => Ok(c),
        Err(sqlx::Error::PoolTimedOut) => {
            let wait = pool.options().get_acquire_timeout();
            match tokio::time::timeout(wait, pool.connect_options().connect()).await {
                Err(_) => Err(CollectError::Timeout(wait * 2)),
                Ok(Err(e)) => Err(sql_error(e)),
                Ok(Ok(c)) => {
                    let _ = c.close().await;
                    Err(CollectError::Connect(
                        "no connection could be opened in time (a direct one then succeeded: the store is slow to accept)".into(),
                    ))
                }
            }
        }
        Err(e) => Err(sql_error(e)),
    }
}

/// Classify a driver error. What it keeps of a server's message is only what cannot quote a
/// value read from the store (see [`db_error_text`]); transport errors keep their cause
/// (refused, DNS, TLS), which never holds data.
pub fn sql_error(e: sqlx::Error) -> CollectError {
    match e {
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.to_string()).unwrap_or_default();
            let text = db_error_text(&*db);
            // 25006: read_only_sql_transaction (PostgreSQL; MySQL/MariaDB 1792 maps to it);
            // SQLite reports SQLITE_READONLY (8) and its extended codes.
            let lower = db.message().to_lowercase();
            if code == "25006"
                || code == "8"
                || (code.len() > 2 && code.parse::<u32>().is_ok_and(|c| c & 0xff == 8))
                || lower.contains("read-only transaction")
                || lower.contains("read only transaction")
                || lower.contains("readonly database")
            {
                CollectError::WriteRefused(text)
            } else if matches!(code.as_str(), "28000" | "28P01" | "3D000" | "14")
                || is_connect_refusal(&*db)
            {
                CollectError::Connect(text)
            } else if code == "42703" || code == "42S22" || lower.starts_with("no such column") {
                // PostgreSQL undefined_column; MySQL/MariaDB 1054 (SQLSTATE 42S22); SQLite.
                CollectError::MissingTableColumn(text)
            } else {
                CollectError::Query(text)
            }
        }
        sqlx::Error::Io(e) => CollectError::Connect(io_cause(&e)),
        sqlx::Error::Tls(e) => CollectError::Connect(format!("TLS: {e}")),
        sqlx::Error::PoolTimedOut => CollectError::Connect(
            "no connection could be opened in time (the store did not answer)".into(),
        ),
        sqlx::Error::PoolClosed => CollectError::Connect("the connection pool is closed".into()),
        sqlx::Error::Configuration(e) => CollectError::Connect(format!("configuration: {e}")),
        sqlx::Error::Protocol(_) => {
            CollectError::Connect("the store answered outside its protocol".into())
        }
        sqlx::Error::ColumnDecode { index, .. } => {
            CollectError::Query(format!("column {index} could not be decoded"))
        }
        other => CollectError::Query(kind_only(&other)),
    }
}

/// MySQL/MariaDB access-denied and unknown-database errors are connect failures.
fn is_connect_refusal(db: &dyn sqlx::error::DatabaseError) -> bool {
    db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
        .is_some_and(|m| matches!(m.number(), 1044 | 1045 | 1049 | 1698))
}

/// The cause of an I/O error, by kind, with the OS's own words (never data).
fn io_cause(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    let what = match e.kind() {
        K::ConnectionRefused => "connection refused",
        K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => "connection dropped",
        K::TimedOut => "timed out",
        K::NotFound => "not found",
        K::PermissionDenied => "permission denied",
        K::UnexpectedEof => "the store closed the connection",
        _ if e.to_string().contains("lookup") || e.to_string().contains("resolve") => {
            "DNS: the host name does not resolve"
        }
        _ => "I/O error",
    };
    format!("{what} ({e})")
}

/// An sqlx error's variant, without its text.
fn kind_only(e: &sqlx::Error) -> String {
    let d = format!("{e:?}");
    let name = d.split(['(', ' ', '{']).next().unwrap_or("error");
    format!("driver error ({name})")
}

/// What can be shown of a server error: its code, the column/table/type it names, and its
/// message only for the classes of error whose message names schema objects or the query
/// (syntax, unknown column, permission, connection), never for those that can quote a value
/// (PostgreSQL's data exceptions quote the text they could not cast, MySQL's user-defined
/// SIGNALs carry anything, SQLite quotes a JSON path taken from a row).
const WITHHELD: &str =
    "the server's message is withheld: errors of this class can quote values read from the store";

pub fn db_error_text(db: &dyn sqlx::error::DatabaseError) -> String {
    if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
        let code = pg.code();
        let mut out = format!("SQLSTATE {code}");
        if let Some(name) = sqlstate_name(code) {
            out += &format!(" ({name})");
        }
        let safe = matches!(
            &code[..2.min(code.len())],
            "08" | "0A" | "25" | "28" | "3D" | "3F" | "42" | "53" | "57"
        );
        out += ": ";
        out += if safe { pg.message() } else { WITHHELD };
        for (what, v) in [
            ("schema", pg.schema()),
            ("table", pg.table()),
            ("column", pg.column()),
            ("type", pg.data_type()),
        ] {
            if let Some(v) = v {
                out += &format!("; {what} {v:?}");
            }
        }
        return out;
    }
    if let Some(my) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
        let safe = matches!(
            my.number(),
            1044 | 1045
                | 1046
                | 1049
                | 1051
                | 1054
                | 1064
                | 1142
                | 1143
                | 1146
                | 1149
                | 1227
                | 1290
                | 1305
                | 1370
                | 1698
                | 1792
        );
        return format!(
            "error {}{}: {}",
            my.number(),
            my.code()
                .map(|c| format!(" (SQLSTATE {c})"))
                .unwrap_or_default(),
            if safe { my.message() } else { WITHHELD }
        );
    }
    let code = db.code().map(|c| c.to_string()).unwrap_or_default();
    sqlite_error_text(&code, db.message())
}

/// What can be shown of a SQLite error: its messages are keyed by what they say; only those
/// naming the schema or the query's syntax are shown.
pub(crate) fn sqlite_error_text(code: &str, msg: &str) -> String {
    const SAFE_PREFIXES: [&str; 12] = [
        "no such table",
        "no such column",
        "no such function",
        "near \"",
        "incomplete input",
        "ambiguous column",
        "attempt to write a readonly database",
        "unable to open database file",
        "database is locked",
        "file is not a database",
        "database disk image is malformed",
        "wrong number of arguments",
    ];
    if SAFE_PREFIXES.iter().any(|p| msg.starts_with(p)) {
        format!("SQLite error {code}: {msg}")
    } else {
        format!("SQLite error {code}: {WITHHELD}")
    }
}

/// Names of the SQLSTATEs a poll meets most, for the log.
fn sqlstate_name(code: &str) -> Option<&'static str> {
    Some(match code {
        "22P02" => "invalid_text_representation",
        "22003" => "numeric_value_out_of_range",
        "22007" => "invalid_datetime_format",
        "22008" => "datetime_field_overflow",
        "22012" => "division_by_zero",
        "22023" => "invalid_parameter_value",
        "22021" => "character_not_in_repertoire",
        "22P05" => "untranslatable_character",
        "2202E" => "array_subscript_error",
        "25006" => "read_only_sql_transaction",
        "28000" => "invalid_authorization_specification",
        "28P01" => "invalid_password",
        "3D000" => "invalid_catalog_name",
        "42501" => "insufficient_privilege",
        "42601" => "syntax_error",
        "42703" => "undefined_column",
        "42883" => "undefined_function",
        "42P01" => "undefined_table",
        "42804" => "datatype_mismatch",
        "57014" => "query_canceled",
        "P0001" => "raise_exception",
        _ => return None,
    })
}
