//! PostgreSQL. Sessions start with `default_transaction_read_only=on` and every poll runs in a
//! `READ ONLY` transaction that is rolled back, so a configured statement that writes fails.

use super::sql::{acquire, decode_by_type, read_rows, sql_error, Columns};
use crate::config::SqlConnection;
use crate::model::CollectError;
use crate::timestamp::Cell;
use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Utc};
use rust_decimal::prelude::ToPrimitive;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow, PgValueFormat};
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
    // Each arm reads the type its name says without sqlx's check (the name is the check); a
    // domain is read as its base type and an enum as its label (text in binary form too).
    decode_by_type!(row, i, |_ty| match read_as(row, i) {
        "BOOL" => typed!(bool).map(Cell::Bool),
        "INT2" => typed!(i16).map(|v| Cell::Int(v.into())),
        "INT4" => typed!(i32).map(|v| Cell::Int(v.into())),
        "INT8" => typed!(i64).map(Cell::Int),
        "FLOAT4" => typed!(f32).map(|v| Cell::Float(v.into())),
        "FLOAT8" => typed!(f64).map(Cell::Float),
        "NUMERIC" => match raw_binary(row, i).map(|v| v.map(numeric)) {
            Some(None) => None,
            Some(Some(Some(f))) => Some(Cell::Float(f)),
            // Not the binary form, or not a well-formed one: sqlx says what is wrong.
            _ => typed!(rust_decimal::Decimal).map(|d| Cell::Float(d.to_f64().unwrap_or(f64::NAN))),
        },
        // Date-times from their binary form (see `timestamp`); text (never sent for a prepared
        // query, which asks for binary) through sqlx, whose text decoders do not panic.
        "TIMESTAMPTZ" => match binary::<8>(row, i) {
            Some(v) => v.map(|b| timestamp(i64::from_be_bytes(b), Cell::Time)),
            None => typed!(DateTime<Utc>).map(Cell::Time),
        },
        "TIMESTAMP" => match binary::<8>(row, i) {
            Some(v) => v.map(|b| timestamp(i64::from_be_bytes(b), |t| Cell::Naive(t.naive_utc()))),
            None => typed!(NaiveDateTime).map(Cell::Naive),
        },
        "DATE" => match binary::<4>(row, i) {
            Some(v) => v.map(|b| date(i32::from_be_bytes(b))),
            None => typed!(NaiveDate).map(|d| Cell::Time(d.and_time(NaiveTime::MIN).and_utc())),
        },
        "JSON" | "JSONB" => typed!(serde_json::Value).map(Cell::Json),
        "UUID" => typed!(uuid::Uuid).map(|u| {
            // Straight into a buffer (no formatter): tenant ids are UUIDs in every row.
            let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
            Cell::Text(u.hyphenated().encode_lower(&mut buf).to_owned())
        }),
        "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" => typed!(String).map(Cell::Text),
        // An encrypted token kept as bytes (pgcrypto, django-fernet-fields).
        "BYTEA" => typed!(&[u8]).map(Cell::bytes),
        // Anything else as text if sqlx can read it so, else a Decode error naming the type.
        _ => get!(String).map(Cell::Text),
    })
}

/// The type name column `i` is read as: a domain's base type (through nested domains), `TEXT`
/// for an enum (Rails and Django apps often keep a status in one) and for `citext`, else its
/// own.
fn read_as(row: &PgRow, i: usize) -> &str {
    use sqlx::postgres::PgTypeKind;
    use sqlx::{Column, Row, TypeInfo};
    let mut t = row.columns()[i].type_info();
    while let PgTypeKind::Domain(base) = t.kind() {
        t = base;
    }
    match t.name() {
        _ if matches!(t.kind(), PgTypeKind::Enum(_)) => "TEXT",
        // The citext extension's type, named with its schema when that is not on the search
        // path; text on the wire.
        n if n == "citext" || n.ends_with(".citext") => "TEXT",
        n => n,
    }
}

/// PostgreSQL's date-times are read from their binary form here, not by sqlx's chrono decoders:
/// those add the value to 2000-01-01 unchecked and panic on `infinity`, `-infinity` and years
/// past chrono's range (sqlx issue #2234, open in 0.8.6), which ended the source's poll task
/// on a single such row. Timestamps are microseconds since 2000-01-01 UTC (`infinity` is
/// `i64::MAX`), dates days since then (`i32::MAX`). A value chrono cannot hold becomes
/// an infinite number ([`beyond`]), which the mapping rejects for that row alone as an impossible
/// timestamp.
const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;
/// 2000-01-01 as days from 0001-01-01 (chrono's `num_days_from_ce`).
const PG_EPOCH_DAYS_FROM_CE: i32 = 730_120;

/// A timestamp's cell (`cell` of the instant), from microseconds since 2000-01-01.
fn timestamp(us: i64, cell: impl FnOnce(DateTime<Utc>) -> Cell) -> Cell {
    us.checked_add(PG_EPOCH_UNIX_MICROS)
        .and_then(DateTime::from_timestamp_micros)
        .map_or_else(|| beyond(us), cell)
}

/// A date's cell (its midnight, UTC), from days since 2000-01-01.
fn date(d: i32) -> Cell {
    d.checked_add(PG_EPOCH_DAYS_FROM_CE)
        .and_then(NaiveDate::from_num_days_from_ce_opt)
        .map_or_else(
            || beyond(d.into()),
            |d| Cell::Time(d.and_time(NaiveTime::MIN).and_utc()),
        )
}

/// A date-time beyond chrono's range (PostgreSQL's `infinity` or `-infinity` among them): an
/// infinite number of the value's sign.
fn beyond(v: i64) -> Cell {
    Cell::Float(if v < 0 {
        f64::NEG_INFINITY
    } else {
        f64::INFINITY
    })
}

/// Column `i`'s bytes when it came in binary form (`Some(None)`: NULL); `None` when it came as
/// text (then sqlx decodes it, and reports what is wrong).
fn raw_binary(row: &PgRow, i: usize) -> Option<Option<&[u8]>> {
    use sqlx::{Row, ValueRef};
    let v = row.try_get_raw(i).ok()?;
    if v.is_null() {
        return Some(None);
    }
    if v.format() != PgValueFormat::Binary {
        return None;
    }
    v.as_bytes().ok().map(Some)
}

/// [`raw_binary`] of exactly `N` bytes (`None` for another length).
fn binary<const N: usize>(row: &PgRow, i: usize) -> Option<Option<[u8; N]>> {
    match raw_binary(row, i)? {
        None => Some(None),
        Some(b) => b.try_into().ok().map(Some),
    }
}

/// A `numeric` from its binary form (numeric_send: digit count, weight, sign, display scale,
/// then base-10000 digits) as the `f64` every number becomes here. sqlx's `Decimal` decoder
/// fails on `NaN`, on PostgreSQL 14's `Infinity` / `-Infinity` and past 28 digits, which failed
/// the whole poll for one such row; here `NaN` is an unparseable time and an infinity an
/// impossible one, of that row alone. `None` for bytes that are not a numeric.
fn numeric(b: &[u8]) -> Option<f64> {
    let word = |at: usize| b.get(at..at + 2).map(|w| u16::from_be_bytes([w[0], w[1]]));
    let (count, weight, sign) = (word(0)?, word(2)? as i16, word(4)?);
    match sign {
        0xC000 => return Some(f64::NAN),
        0xD000 => return Some(f64::INFINITY),
        0xF000 => return Some(f64::NEG_INFINITY),
        0x0000 | 0x4000 => {}
        _ => return None,
    }
    let mut v = 0.0;
    for k in 0..count {
        let digit = f64::from(word(8 + 2 * usize::from(k))?);
        v += digit * 10_000f64.powi(i32::from(weight) - i32::from(k));
    }
    Some(if sign == 0x4000 { -v } else { v })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// numeric_send's layout for `v`: base-10000 digits of its absolute value.
    fn send(count: u16, weight: i16, sign: u16, digits: &[u16]) -> Vec<u8> {
        let mut b = Vec::new();
        for w in [count, weight as u16, sign, 0] {
            b.extend_from_slice(&w.to_be_bytes());
        }
        for d in digits {
            b.extend_from_slice(&d.to_be_bytes());
        }
        b
    }

    #[test]
    fn numerics_are_read_from_their_binary_form_with_nan_and_infinities() {
        // 1777629600.25 = 17|7762|9600 . 2500
        assert_eq!(
            numeric(&send(4, 2, 0, &[17, 7762, 9600, 2500])),
            Some(1777629600.25)
        );
        assert_eq!(numeric(&send(1, 0, 0x4000, &[5])), Some(-5.0));
        assert_eq!(numeric(&send(0, 0, 0, &[])), Some(0.0));
        // 1e40: one digit 1 at weight 10.
        assert_eq!(numeric(&send(1, 10, 0, &[1])), Some(1e40));
        assert!(numeric(&send(0, 0, 0xC000, &[])).unwrap().is_nan());
        assert_eq!(numeric(&send(0, 0, 0xD000, &[])), Some(f64::INFINITY));
        assert_eq!(numeric(&send(0, 0, 0xF000, &[])), Some(f64::NEG_INFINITY));
        // Truncated or an unknown sign: not a numeric.
        assert_eq!(numeric(&send(2, 0, 0, &[1])), None);
        assert_eq!(numeric(&send(0, 0, 0x1234, &[])), None);
        assert_eq!(numeric(&[0, 1]), None);
    }

    #[test]
    fn infinite_and_out_of_range_date_times_become_infinite_numbers() {
        assert_eq!(timestamp(i64::MAX, Cell::Time), Cell::Float(f64::INFINITY));
        assert_eq!(
            timestamp(i64::MIN, Cell::Time),
            Cell::Float(f64::NEG_INFINITY)
        );
        assert_eq!(
            timestamp(0, Cell::Time),
            Cell::Time(DateTime::from_timestamp(946_684_800, 0).unwrap())
        );
        assert_eq!(date(i32::MAX), Cell::Float(f64::INFINITY));
        assert_eq!(
            date(0),
            Cell::Time(DateTime::from_timestamp(946_684_800, 0).unwrap())
        );
    }
}
