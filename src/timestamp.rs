//! Cells decoded from a store and the timestamp shapes real apps use.
//!
//! Shapes accepted with `format: auto` (the default):
//! - native database types (`timestamptz`, `timestamp`, `datetime`, `date`): naive values are UTC;
//! - integers and numeric strings: epoch seconds when below 10^11 (before the year 5138),
//!   otherwise epoch milliseconds;
//! - RFC 3339 strings (`2026-01-02T03:04:05Z`, `...+13:00`);
//! - naive strings read as UTC (`2026-01-02 03:04:05`, `2026-01-02T03:04:05.123`), with an
//!   optional numeric offset as PostgreSQL prints it (`2026-01-02 03:04:05+00`);
//! - the Microsoft JSON date Xero's own API returns (`/Date(1767322000000+0000)/`).
//!
//! A value outside 2000-01-01 .. 2200-01-01 is *impossible* (an epoch 0 default, a
//! milliseconds value read as seconds, a year typed wrong) and its row is rejected.

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use serde::Deserialize;

/// One value read from a store, before mapping.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
    Time(DateTime<Utc>),
    Json(serde_json::Value),
    /// A text value that is not valid UTF-8: the row it is in is rejected for it alone.
    NotUtf8,
}

impl Cell {
    /// A short name of the cell's kind, for error messages (never the value).
    pub fn kind(&self) -> &'static str {
        match self {
            Cell::Null => "null",
            Cell::Bool(_) => "boolean",
            Cell::Int(_) => "integer",
            Cell::Float(_) => "number",
            Cell::Text(_) => "string",
            Cell::Time(_) => "timestamp",
            Cell::Json(_) => "JSON",
            Cell::NotUtf8 => "invalid UTF-8 text",
        }
    }

    /// The cell as an identifier or label value (`connection`, `tenant`, extra labels).
    pub fn as_label(&self) -> Option<String> {
        match self {
            Cell::Null | Cell::NotUtf8 => None,
            Cell::Bool(b) => Some(b.to_string()),
            Cell::Int(i) => Some(i.to_string()),
            Cell::Float(f) => Some(f.to_string()),
            Cell::Text(s) => Some(s.clone()),
            Cell::Time(t) => Some(t.to_rfc3339()),
            Cell::Json(v) => match v {
                serde_json::Value::Null => None,
                serde_json::Value::String(s) => Some(s.clone()),
                other => Some(other.to_string()),
            },
        }
    }

    /// Follow a path of keys (and array indexes) into a JSON value. A text cell is parsed as
    /// JSON first (MySQL, MariaDB and SQLite return JSON columns as text).
    pub fn json_path(&self, path: &[String]) -> Result<Cell, TimeError> {
        let owned;
        let mut v: &serde_json::Value = match self {
            Cell::Null => return Ok(Cell::Null),
            Cell::NotUtf8 => return Err(TimeError::NotUtf8),
            Cell::Json(v) => v,
            Cell::Text(s) => {
                owned = serde_json::from_str::<serde_json::Value>(s)
                    .map_err(|_| TimeError::InvalidJson)?;
                &owned
            }
            _ => return Err(TimeError::InvalidJson),
        };
        for key in path {
            let next = match v {
                serde_json::Value::Object(m) => m.get(key.as_str()),
                serde_json::Value::Array(a) => key.parse::<usize>().ok().and_then(|i| a.get(i)),
                _ => None,
            };
            match next {
                Some(n) => v = n,
                None => return Ok(Cell::Null),
            }
        }
        Ok(Cell::from_json(v))
    }

    /// A JSON value as a cell: scalars become scalars, objects and arrays stay JSON.
    pub fn from_json(v: &serde_json::Value) -> Cell {
        match v {
            serde_json::Value::Null => Cell::Null,
            serde_json::Value::Bool(b) => Cell::Bool(*b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Cell::Int(i),
                None => Cell::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            serde_json::Value::String(s) => Cell::Text(s.clone()),
            other => Cell::Json(other.clone()),
        }
    }
}

/// How a timestamp field is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeFormat {
    /// Native types, epoch seconds or milliseconds, RFC 3339 or naive UTC, recognised per value.
    #[default]
    Auto,
    EpochSeconds,
    EpochMillis,
    Rfc3339,
    /// `YYYY-MM-DD HH:MM:SS[.fff]` (or with `T`), read as UTC.
    NaiveUtc,
    /// Seconds relative to another field (`expires_in` plus `fetched_at`).
    RelativeSeconds,
}

/// Why a value could not be read as a timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    #[error("value is not a timestamp in the configured format")]
    Unparseable,
    #[error("timestamp is outside 2000-01-01 .. 2200-01-01")]
    Impossible,
    #[error("value is not valid JSON")]
    InvalidJson,
    #[error("text is not valid UTF-8")]
    NotUtf8,
}

/// Epoch seconds below this are seconds; at or above, milliseconds.
const MILLIS_THRESHOLD: f64 = 1e11;

fn earliest() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0).unwrap()
}
fn latest() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2200, 1, 1, 0, 0, 0).unwrap()
}

/// Reject values no token store can hold.
pub fn plausible(t: DateTime<Utc>) -> Result<DateTime<Utc>, TimeError> {
    if t < earliest() || t >= latest() {
        Err(TimeError::Impossible)
    } else {
        Ok(t)
    }
}

fn from_epoch(v: f64, format: TimeFormat) -> Result<DateTime<Utc>, TimeError> {
    if !v.is_finite() {
        return Err(TimeError::Unparseable);
    }
    let millis = match format {
        TimeFormat::EpochMillis => v,
        TimeFormat::EpochSeconds => v * 1000.0,
        _ if v.abs() >= MILLIS_THRESHOLD => v,
        _ => v * 1000.0,
    };
    if millis.abs() > 1e16 {
        return Err(TimeError::Impossible);
    }
    let t = Utc
        .timestamp_millis_opt(millis.round() as i64)
        .single()
        .ok_or(TimeError::Impossible)?;
    plausible(t)
}

const NAIVE_FORMATS: &[&str] = &["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"];
const OFFSET_FORMATS: &[&str] = &["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M:%S%.f%#z"];

/// A strftime format compiled once (parsing the format string on every value cost more than
/// parsing the value: a million rows of text timestamps are a million parses).
struct Compiled(std::sync::OnceLock<Vec<Vec<chrono::format::Item<'static>>>>);

impl Compiled {
    const fn new() -> Self {
        Compiled(std::sync::OnceLock::new())
    }

    fn get(&self, formats: &[&str]) -> &[Vec<chrono::format::Item<'static>>] {
        self.0.get_or_init(|| {
            formats
                .iter()
                .map(|f| {
                    chrono::format::StrftimeItems::new(f)
                        .parse_to_owned()
                        .expect("a valid format")
                })
                .collect()
        })
    }
}

static NAIVE: Compiled = Compiled::new();
static OFFSET: Compiled = Compiled::new();

/// Parse `s` with one compiled format.
fn parsed(s: &str, items: &[chrono::format::Item<'static>]) -> Option<chrono::format::Parsed> {
    let mut p = chrono::format::Parsed::new();
    chrono::format::parse(&mut p, s, items.iter()).ok()?;
    Some(p)
}

fn parse_naive(s: &str) -> Option<DateTime<Utc>> {
    for items in NAIVE.get(NAIVE_FORMATS) {
        if let Some(n) = parsed(s, items).and_then(|p| p.to_naive_datetime_with_offset(0).ok()) {
            return Some(n.and_utc());
        }
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|n| n.and_utc())
}

fn parse_offset(s: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    for items in OFFSET.get(OFFSET_FORMATS) {
        if let Some(t) = parsed(s, items).and_then(|p| p.to_datetime().ok()) {
            return Some(t.with_timezone(&Utc));
        }
    }
    None
}

/// Whether a date-time string carries a zone after its date (`Z` or a numeric offset): such
/// strings are read by [`parse_offset`], the others by [`parse_naive`] (each would refuse the
/// other's shape, after parsing all of it).
fn has_offset(s: &str) -> bool {
    let tail = s.get(10..).unwrap_or("");
    tail.ends_with(['Z', 'z']) || tail.contains(['+', '-'])
}

/// `/Date(1767322000000+0000)/`: milliseconds since the epoch, offset informational.
fn parse_ms_json_date(s: &str) -> Option<f64> {
    let inner = s.strip_prefix("/Date(")?.strip_suffix(")/")?;
    // The offset starts at a sign after the first character (which may itself be a sign).
    let end = inner
        .char_indices()
        .skip(1)
        .find(|(_, c)| matches!(c, '+' | '-'))
        .map_or(inner.len(), |(i, _)| i);
    inner[..end].parse::<f64>().ok()
}

fn parse_text(s: &str, format: TimeFormat) -> Result<DateTime<Utc>, TimeError> {
    let s = s.trim();
    match format {
        TimeFormat::Auto => {
            if let Ok(v) = s.parse::<f64>() {
                return from_epoch(v, format);
            }
            if let Some(ms) = parse_ms_json_date(s) {
                return from_epoch(ms, TimeFormat::EpochMillis);
            }
            let t = if has_offset(s) {
                parse_offset(s)
            } else {
                parse_naive(s)
            }
            .ok_or(TimeError::Unparseable)?;
            plausible(t)
        }
        TimeFormat::EpochSeconds | TimeFormat::EpochMillis => {
            let v = s.parse::<f64>().map_err(|_| TimeError::Unparseable)?;
            from_epoch(v, format)
        }
        TimeFormat::Rfc3339 => DateTime::parse_from_rfc3339(s)
            .map_err(|_| TimeError::Unparseable)
            .and_then(|t| plausible(t.with_timezone(&Utc))),
        TimeFormat::NaiveUtc => parse_naive(s)
            .ok_or(TimeError::Unparseable)
            .and_then(plausible),
        TimeFormat::RelativeSeconds => Err(TimeError::Unparseable),
    }
}

/// Read a cell as an absolute timestamp. `Ok(None)` is a NULL.
pub fn to_time(cell: &Cell, format: TimeFormat) -> Result<Option<DateTime<Utc>>, TimeError> {
    let t = match cell {
        Cell::Null => return Ok(None),
        Cell::Time(t) => match format {
            TimeFormat::Auto | TimeFormat::Rfc3339 | TimeFormat::NaiveUtc => plausible(*t)?,
            _ => return Err(TimeError::Unparseable),
        },
        Cell::Int(i) => match format {
            TimeFormat::Auto | TimeFormat::EpochSeconds | TimeFormat::EpochMillis => {
                from_epoch(*i as f64, format)?
            }
            _ => return Err(TimeError::Unparseable),
        },
        Cell::Float(f) => match format {
            TimeFormat::Auto | TimeFormat::EpochSeconds | TimeFormat::EpochMillis => {
                from_epoch(*f, format)?
            }
            _ => return Err(TimeError::Unparseable),
        },
        Cell::Text(s) => parse_text(s, format)?,
        Cell::Json(v) => {
            return match v {
                serde_json::Value::Null => Ok(None),
                serde_json::Value::Number(n) => {
                    to_time(&Cell::Float(n.as_f64().unwrap_or(f64::NAN)), format)
                }
                serde_json::Value::String(s) => to_time(&Cell::Text(s.clone()), format),
                _ => Err(TimeError::Unparseable),
            }
        }
        Cell::Bool(_) => return Err(TimeError::Unparseable),
        Cell::NotUtf8 => return Err(TimeError::NotUtf8),
    };
    Ok(Some(t))
}

/// Read a cell as a number of seconds (`expires_in`, sometimes stored as a string).
pub fn to_seconds(cell: &Cell) -> Result<Option<f64>, TimeError> {
    let v = match cell {
        Cell::Null => return Ok(None),
        Cell::Int(i) => *i as f64,
        Cell::Float(f) => *f,
        Cell::Text(s) => s
            .trim()
            .parse::<f64>()
            .map_err(|_| TimeError::Unparseable)?,
        Cell::Json(serde_json::Value::Number(n)) => n.as_f64().unwrap_or(f64::NAN),
        Cell::Json(serde_json::Value::String(s)) => s
            .trim()
            .parse::<f64>()
            .map_err(|_| TimeError::Unparseable)?,
        Cell::Json(serde_json::Value::Null) => return Ok(None),
        Cell::NotUtf8 => return Err(TimeError::NotUtf8),
        _ => return Err(TimeError::Unparseable),
    };
    // A token lifetime is never negative and never longer than ten years.
    if !v.is_finite() || !(0.0..=315_576_000.0).contains(&v) {
        return Err(TimeError::Impossible);
    }
    Ok(Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }
    fn auto(c: Cell) -> Result<Option<DateTime<Utc>>, TimeError> {
        to_time(&c, TimeFormat::Auto)
    }
    const WANT: &str = "2026-03-01T10:20:30Z";

    #[test]
    fn native_timestamp_is_taken_as_is() {
        assert_eq!(auto(Cell::Time(t(WANT))), Ok(Some(t(WANT))));
    }

    #[test]
    fn epoch_seconds_and_milliseconds_are_told_apart_by_magnitude() {
        assert_eq!(auto(Cell::Int(1772360430)), Ok(Some(t(WANT))));
        assert_eq!(auto(Cell::Int(1772360430000)), Ok(Some(t(WANT))));
        assert_eq!(auto(Cell::Float(1772360430.0)), Ok(Some(t(WANT))));
        assert_eq!(auto(Cell::Text("1772360430".into())), Ok(Some(t(WANT))));
        assert_eq!(
            auto(Cell::Text(" 1772360430000 ".into())),
            Ok(Some(t(WANT)))
        );
    }

    #[test]
    fn explicit_epoch_format_overrides_the_heuristic() {
        assert_eq!(
            to_time(&Cell::Int(1772360430000), TimeFormat::EpochMillis),
            Ok(Some(t(WANT)))
        );
        // Milliseconds read as seconds land in the year 58000: impossible, not silently wrong.
        assert_eq!(
            to_time(&Cell::Int(1772360430000), TimeFormat::EpochSeconds),
            Err(TimeError::Impossible)
        );
    }

    #[test]
    fn rfc3339_with_any_offset_is_converted_to_utc() {
        assert_eq!(auto(Cell::Text(WANT.into())), Ok(Some(t(WANT))));
        assert_eq!(
            auto(Cell::Text("2026-03-01T23:20:30+13:00".into())),
            Ok(Some(t(WANT)))
        );
        assert_eq!(
            to_time(
                &Cell::Text("2026-03-01T10:20:30.000Z".into()),
                TimeFormat::Rfc3339
            ),
            Ok(Some(t(WANT)))
        );
    }

    #[test]
    fn naive_strings_are_utc() {
        for s in [
            "2026-03-01 10:20:30",
            "2026-03-01T10:20:30",
            "2026-03-01 10:20:30.000",
        ] {
            assert_eq!(auto(Cell::Text(s.into())), Ok(Some(t(WANT))), "{s}");
            assert_eq!(
                to_time(&Cell::Text(s.into()), TimeFormat::NaiveUtc),
                Ok(Some(t(WANT))),
                "{s}"
            );
        }
        assert_eq!(
            auto(Cell::Text("2026-03-01 10:20:30+00".into())),
            Ok(Some(t(WANT)))
        );
    }

    #[test]
    fn microsoft_json_date_from_xero_api_is_read() {
        assert_eq!(
            auto(Cell::Text("/Date(1772360430000+0000)/".into())),
            Ok(Some(t(WANT)))
        );
    }

    #[test]
    fn null_is_not_an_error() {
        assert_eq!(auto(Cell::Null), Ok(None));
        assert_eq!(auto(Cell::Json(serde_json::Value::Null)), Ok(None));
    }

    #[test]
    fn garbage_and_impossible_values_are_told_apart() {
        assert_eq!(
            auto(Cell::Text("yesterday".into())),
            Err(TimeError::Unparseable)
        );
        assert_eq!(auto(Cell::Text("".into())), Err(TimeError::Unparseable));
        assert_eq!(auto(Cell::Bool(true)), Err(TimeError::Unparseable));
        assert_eq!(auto(Cell::Int(0)), Err(TimeError::Impossible));
        assert_eq!(auto(Cell::Int(-5)), Err(TimeError::Impossible));
        assert_eq!(
            auto(Cell::Text("9999-12-31 23:59:59".into())),
            Err(TimeError::Impossible)
        );
        assert_eq!(auto(Cell::Float(f64::NAN)), Err(TimeError::Unparseable));
        assert_eq!(
            to_time(&Cell::Text(WANT.into()), TimeFormat::NaiveUtc),
            Err(TimeError::Unparseable)
        );
    }

    #[test]
    fn json_paths_reach_into_token_sets() {
        let set = serde_json::json!({"access_token": "x", "expires_at": 1772360430, "nested": {"list": [{"at": "2026-03-01T10:20:30Z"}]}});
        let cell = Cell::Json(set.clone());
        let p = |s: &str| s.split('.').map(String::from).collect::<Vec<_>>();
        assert_eq!(cell.json_path(&p("expires_at")), Ok(Cell::Int(1772360430)));
        assert_eq!(
            cell.json_path(&p("nested.list.0.at")),
            Ok(Cell::Text(WANT.into()))
        );
        assert_eq!(cell.json_path(&p("missing")), Ok(Cell::Null));
        let text = Cell::Text(set.to_string());
        assert_eq!(text.json_path(&p("expires_at")), Ok(Cell::Int(1772360430)));
        assert_eq!(
            Cell::Text("{not json".into()).json_path(&p("a")),
            Err(TimeError::InvalidJson)
        );
    }

    #[test]
    fn relative_seconds_accept_numbers_and_numeric_strings() {
        assert_eq!(to_seconds(&Cell::Int(1800)), Ok(Some(1800.0)));
        assert_eq!(to_seconds(&Cell::Text("1800".into())), Ok(Some(1800.0)));
        assert_eq!(to_seconds(&Cell::Null), Ok(None));
        assert_eq!(
            to_seconds(&Cell::Text("soon".into())),
            Err(TimeError::Unparseable)
        );
        assert_eq!(to_seconds(&Cell::Int(-1)), Err(TimeError::Impossible));
    }

    /// Found by `fuzz/run.sh` (target timestamp): slicing a JSON date by byte offset panicked on
    /// an empty or multi-byte body.
    #[test]
    fn malformed_json_dates_are_refused_not_panicked_on() {
        for s in [
            "/Date()/",
            "/Date(\u{25b}t/D0+0000)/",
            "/Date(-)/",
            "/Date(\u{1F980})/",
        ] {
            assert!(auto(Cell::Text(s.into())).is_err(), "{s}");
        }
        assert!(
            auto(Cell::Text("/Date(-1000+0000)/".into())).is_err(),
            "before 2000"
        );
    }
}
