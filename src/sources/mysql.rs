//! MySQL and MariaDB. Sessions are set `TRANSACTION READ ONLY` on connect and every poll runs
//! in a transaction that is rolled back, so a configured statement that writes fails.

use super::sql::{acquire, decode_by_type, read_rows, sql_error, Columns};
use crate::config::SqlConnection;
use crate::model::CollectError;
use crate::timestamp::Cell;
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions, MySqlRow};
use sqlx::{ConnectOptions, Executor};
use std::str::FromStr;

pub fn connect(cfg: &SqlConnection) -> Result<MySqlPool, CollectError> {
    let opts = MySqlConnectOptions::from_str(cfg.dsn.expose())
        .map_err(|_| CollectError::Connect("the MySQL DSN cannot be parsed".into()))?
        // Polls log their own duration (see the poll loop); sqlx's per-statement log would
        // warn on every large poll as "slow".
        .disable_statement_logging();
    Ok(MySqlPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .acquire_timeout(cfg.timeout / 2)
        .after_connect(|conn, _| {
            Box::pin(async move {
                conn.execute("SET SESSION TRANSACTION READ ONLY").await?;
                Ok(())
            })
        })
        .connect_lazy_with(opts))
}

pub async fn stream<S: Columns>(
    pool: &MySqlPool,
    query: &str,
    select: impl FnOnce(&[String]) -> Result<S, CollectError>,
    on_row: &mut (dyn FnMut(&S, &[Cell]) + Send),
) -> Result<Option<S>, CollectError> {
    let mut conn = acquire(pool).await?;
    let mut tx = sqlx::Connection::begin(&mut *conn)
        .await
        .map_err(sql_error)?;
    let out = read_rows(&mut *tx, query, select, decode, on_row).await;
    tx.rollback().await.map_err(sql_error)?;
    out
}

fn decode(row: &MySqlRow, i: usize) -> Result<Cell, CollectError> {
    decode_by_type!(row, i, |ty| match ty {
        "NULL" => None,
        "BOOLEAN" => get!(bool).map(Cell::Bool),
        // Without sqlx's type check, which refuses YEAR for i64 (sent as a 2-byte integer).
        "TINYINT" | "SMALLINT" | "MEDIUMINT" | "INT" | "BIGINT" | "YEAR" => {
            typed!(i64).map(Cell::Int)
        }
        t if t.ends_with("UNSIGNED") => get!(u64).map(|v| Cell::Int(v.min(i64::MAX as u64) as i64)),
        "FLOAT" => get!(f32).map(|v| Cell::Float(v.into())),
        "DOUBLE" => get!(f64).map(Cell::Float),
        // Sent as its digits: parsed as the f64 every number becomes here (sqlx's Decimal
        // stops at 28 digits, and its failure failed the whole poll).
        "DECIMAL" => typed!(&str).map(|s| Cell::Float(s.trim().parse().unwrap_or(f64::NAN))),
        "TIMESTAMP" => get!(DateTime<Utc>).map(Cell::Time),
        "DATETIME" => get!(NaiveDateTime).map(Cell::Naive),
        "DATE" => get!(NaiveDate)
            .map(|d| Cell::Time(d.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc())),
        "JSON" => get!(serde_json::Value).map(Cell::Json),
        "BINARY" | "VARBINARY" | "TINYBLOB" | "BLOB" | "MEDIUMBLOB" | "LONGBLOB" => {
            typed!(&[u8]).map(Cell::bytes)
        }
        _ => get!(String).map(Cell::Text),
    })
}
