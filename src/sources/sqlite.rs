//! SQLite, the embedded default. Opened with `mode=ro`: the driver refuses every write.

use super::sql::{acquire, read_rows, sql_error, Columns};
use crate::config::SqlConnection;
use crate::model::CollectError;
use crate::timestamp::{parse_naive_fast, Cell};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions, SqliteRow};
use sqlx::{ConnectOptions, Row, TypeInfo, ValueRef};
use std::str::FromStr;

pub fn connect(cfg: &SqlConnection) -> Result<SqlitePool, CollectError> {
    let dsn = cfg.dsn.expose();
    let opts = if dsn.starts_with("sqlite:") {
        SqliteConnectOptions::from_str(dsn).map_err(sql_error)?
    } else {
        SqliteConnectOptions::new().filename(dsn)
    };
    let opts = opts
        .read_only(true)
        .create_if_missing(false)
        .busy_timeout(cfg.timeout)
        // Polls log their own duration (see the poll loop); sqlx's per-statement log would
        // warn on every large poll as "slow".
        .disable_statement_logging();
    Ok(SqlitePoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .acquire_timeout(cfg.timeout / 2)
        .connect_lazy_with(opts))
}

pub async fn stream<S: Columns>(
    pool: &SqlitePool,
    query: &str,
    select: impl FnOnce(&[String]) -> Result<S, CollectError>,
    on_row: &mut (dyn FnMut(&S, &[Cell]) + Send),
) -> Result<Option<S>, CollectError> {
    let mut conn = acquire(pool).await?;
    read_rows(&mut *conn, query, select, decode, on_row).await
}

/// SQLite types values, not columns: decode by each value's storage class. Text is read as
/// bytes: a value that is not UTF-8 rejects its row alone ([`Cell::NotUtf8`]).
fn decode(row: &SqliteRow, i: usize) -> Result<Cell, CollectError> {
    let raw = row.try_get_raw(i).map_err(sql_error)?;
    if raw.is_null() {
        return Ok(Cell::Null);
    }
    let ty = raw.type_info();
    let err = |_| CollectError::Decode {
        column: row.columns()[i].name().to_string(),
        type_name: ty.name().to_string(),
    };
    use sqlx::Column;
    Ok(match ty.name() {
        "INTEGER" | "BOOLEAN" | "INT8" => {
            Cell::Int(row.try_get_unchecked::<i64, _>(i).map_err(err)?)
        }
        "REAL" | "NUMERIC" => Cell::Float(row.try_get_unchecked::<f64, _>(i).map_err(err)?),
        "BLOB" => {
            let b = row.try_get_unchecked::<&[u8], _>(i).map_err(err)?;
            Cell::Text(String::from_utf8_lossy(b).into_owned())
        }
        _ => match std::str::from_utf8(row.try_get_unchecked::<&[u8], _>(i).map_err(err)?) {
            // A column declared as a date-time holding the usual naive layout is decoded in
            // place, without a string (a million rows a poll); other text is read as text.
            Ok(s) => match datetime_column(row, i)
                .then(|| parse_naive_fast(s))
                .flatten()
            {
                Some(n) => Cell::Naive(n),
                None => Cell::Text(s.to_owned()),
            },
            Err(_) => Cell::NotUtf8,
        },
    })
}

/// Whether column `i` is declared as a date-time (`DATETIME`, `TIMESTAMP`, `DATE`).
fn datetime_column(row: &SqliteRow, i: usize) -> bool {
    use sqlx::Column;
    matches!(
        row.columns()[i].type_info().name(),
        "DATETIME" | "DATE" | "TIMESTAMP"
    )
}
