//! PostgreSQL. Sessions start with `default_transaction_read_only=on` and every poll runs in a
//! `READ ONLY` transaction that is rolled back, so a configured statement that writes fails.

use super::sql::{acquire, decode_by_type, read_rows, sql_error, Columns};
use crate::config::SqlConnection;
use crate::model::CollectError;
use crate::timestamp::Cell;
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use rust_decimal::prelude::ToPrimitive;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::ConnectOptions;
use std::str::FromStr;

pub fn connect(cfg: &SqlConnection) -> Result<PgPool, CollectError> {
    let timeout_ms = cfg.timeout.as_millis().to_string();
    let opts = PgConnectOptions::from_str(cfg.dsn.expose())
        .map_err(|_| CollectError::Connect("the PostgreSQL DSN cannot be parsed".into()))?
        .application_name("oauth-token-exporter")
        .options([
            ("default_transaction_read_only", "on"),
            ("statement_timeout", timeout_ms.as_str()),
        ])
        // Polls log their own duration (see the poll loop); sqlx's per-statement log would
        // warn on every large poll as "slow".
        .disable_statement_logging();
    Ok(PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .acquire_timeout(cfg.timeout / 2)
        .connect_lazy_with(opts))
}

pub async fn stream<S: Columns>(
    pool: &PgPool,
    query: &str,
    select: impl FnOnce(&[String]) -> Result<S, CollectError>,
    on_row: &mut (dyn FnMut(&S, &[Cell]) + Send),
) -> Result<Option<S>, CollectError> {
    let mut conn = acquire(pool).await?;
    let mut tx = sqlx::Connection::begin(&mut *conn)
        .await
        .map_err(sql_error)?;
    sqlx::query("SET TRANSACTION READ ONLY")
        .execute(&mut *tx)
        .await
        .map_err(sql_error)?;
    let out = read_rows(&mut *tx, query, select, decode, on_row).await;
    tx.rollback().await.map_err(sql_error)?;
    out
}

fn decode(row: &PgRow, i: usize) -> Result<Cell, CollectError> {
    decode_by_type!(row, i, |ty| match ty {
        "BOOL" => get!(bool).map(Cell::Bool),
        "INT2" => get!(i16).map(|v| Cell::Int(v.into())),
        "INT4" => get!(i32).map(|v| Cell::Int(v.into())),
        "INT8" => get!(i64).map(Cell::Int),
        "FLOAT4" => get!(f32).map(|v| Cell::Float(v.into())),
        "FLOAT8" => get!(f64).map(Cell::Float),
        "NUMERIC" => {
            get!(rust_decimal::Decimal).map(|d| Cell::Float(d.to_f64().unwrap_or(f64::NAN)))
        }
        "TIMESTAMPTZ" => get!(DateTime<Utc>).map(Cell::Time),
        "TIMESTAMP" => get!(NaiveDateTime).map(Cell::Naive),
        "DATE" => get!(NaiveDate)
            .map(|d| Cell::Time(d.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc())),
        "JSON" | "JSONB" => get!(serde_json::Value).map(Cell::Json),
        "UUID" => get!(uuid::Uuid).map(|u| {
            // Straight into a buffer (no formatter): tenant ids are UUIDs in every row.
            let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
            Cell::Text(u.hyphenated().encode_lower(&mut buf).to_owned())
        }),
        _ => get!(String).map(Cell::Text),
    })
}
