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

use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};
use serde::Deserialize;
use std::borrow::Cow;

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
    /// A date-time without a zone (PostgreSQL `timestamp`, MySQL `DATETIME`): read in the
    /// field's [`Zone`].
    Naive(NaiveDateTime),
}

/// The zone a naive date-time is read in: UTC unless a source or field says otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Zone {
    #[default]
    Utc,
    /// An IANA zone: offsets follow its daylight-saving rules.
    Named(chrono_tz::Tz),
    /// A fixed offset (`+13:00`), as MySQL reports a session zone set by offset.
    Fixed(chrono::FixedOffset),
}

impl Zone {
    /// `UTC`, an IANA name (`Pacific/Auckland`) or an offset (`+13:00`, `-05:30`).
    pub fn parse(s: &str) -> Option<Zone> {
        let s = s.trim();
        if matches!(
            s,
            "UTC" | "utc" | "Etc/UTC" | "Z" | "GMT" | "Etc/GMT" | "+00:00" | "00:00"
        ) {
            return Some(Zone::Utc);
        }
        if s.starts_with(['+', '-']) {
            let (sign, rest) = s.split_at(1);
            let (h, m) = rest.split_once(':')?;
            let secs = h.parse::<i32>().ok()? * 3600 + m.parse::<i32>().ok()? * 60;
            let secs = if sign == "-" { -secs } else { secs };
            return chrono::FixedOffset::east_opt(secs).map(Zone::Fixed);
        }
        s.parse::<chrono_tz::Tz>().ok().map(Zone::Named)
    }

    /// The instant a wall-clock time in this zone stands for. In the hour a daylight-saving
    /// change repeats, the earlier; in the hour it skips, the offset from before the change
    /// (the time a clock that was not yet moved would show).
    pub fn localize(&self, n: NaiveDateTime) -> DateTime<Utc> {
        use chrono::{LocalResult, Offset};
        match self {
            Zone::Utc => n.and_utc(),
            Zone::Fixed(o) => (n - chrono::Duration::seconds(o.local_minus_utc().into())).and_utc(),
            Zone::Named(tz) => match tz.from_local_datetime(&n) {
                LocalResult::Single(t) => t.with_timezone(&Utc),
                LocalResult::Ambiguous(earlier, _) => earlier.with_timezone(&Utc),
                LocalResult::None => {
                    let before = tz
                        .offset_from_utc_datetime(&(n - chrono::Duration::days(1)))
                        .fix();
                    (n - chrono::Duration::seconds(before.local_minus_utc().into())).and_utc()
                }
            },
        }
    }
}

/// A time field's zone as configured: a fixed one (UTC unless set), or the SQL session's,
/// asked at each poll.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ZoneSetting {
    Fixed(Zone),
    Session,
}

impl Default for ZoneSetting {
    fn default() -> Self {
        ZoneSetting::Fixed(Zone::Utc)
    }
}

impl ZoneSetting {
    /// The zone to read with, given the session's zone where one was asked.
    pub fn resolve(self, session: Zone) -> Zone {
        match self {
            ZoneSetting::Fixed(z) => z,
            ZoneSetting::Session => session,
        }
    }
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
            Cell::Naive(_) => "timestamp without time zone",
        }
    }

    /// The cell as an identifier or label value (`connection`, `tenant`, extra labels).
    pub fn as_label(&self) -> Option<String> {
        self.label_text().map(Cow::into_owned)
    }

    /// The value of a binary column (PostgreSQL `bytea`, MySQL `BLOB` / `VARBINARY`, an SQLite
    /// blob): its text when it is UTF-8 (base64 or JSON an app keeps there), else `\x` and its
    /// bytes in hex, as PostgreSQL prints them. Two different values never read as the same
    /// text: an encrypted refresh token's hash changes with its ciphertext (a lossy UTF-8
    /// reading turned most ciphertext bytes into one replacement character).
    pub fn bytes(b: &[u8]) -> Cell {
        match std::str::from_utf8(b) {
            Ok(s) => Cell::Text(s.to_owned()),
            Err(_) => Cell::Text(format!("\\x{}", hex::encode(b))),
        }
    }

    /// [`Cell::as_label`] borrowed where the cell holds the text already (a poll reads ids,
    /// tenants and labels of every row: one copy, not two).
    pub fn label_text(&self) -> Option<Cow<'_, str>> {
        match self {
            Cell::Null | Cell::NotUtf8 => None,
            Cell::Bool(b) => Some(Cow::Owned(b.to_string())),
            Cell::Int(i) => Some(Cow::Owned(i.to_string())),
            Cell::Float(f) => Some(Cow::Owned(f.to_string())),
            Cell::Text(s) => Some(Cow::Borrowed(s)),
            Cell::Time(t) => Some(Cow::Owned(t.to_rfc3339())),
            Cell::Naive(n) => Some(Cow::Owned(n.format("%Y-%m-%dT%H:%M:%S%.f").to_string())),
            Cell::Json(v) => match v {
                serde_json::Value::Null => None,
                serde_json::Value::String(s) => Some(Cow::Borrowed(s)),
                other => Some(Cow::Owned(other.to_string())),
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

/// 2000-01-01T00:00:00Z and 2200-01-01T00:00:00Z, the range of plausible token times.
const EARLIEST: DateTime<Utc> = DateTime::from_timestamp(946_684_800, 0).unwrap();
const LATEST: DateTime<Utc> = DateTime::from_timestamp(7_258_118_400, 0).unwrap();

/// Reject values no token store can hold.
pub fn plausible(t: DateTime<Utc>) -> Result<DateTime<Utc>, TimeError> {
    if t < EARLIEST || t >= LATEST {
        Err(TimeError::Impossible)
    } else {
        Ok(t)
    }
}

fn from_epoch(v: f64, format: TimeFormat) -> Result<DateTime<Utc>, TimeError> {
    if v.is_nan() {
        return Err(TimeError::Unparseable);
    }
    if v.is_infinite() {
        // "infinity" as text, or a store's infinite date-time (PostgreSQL's `infinity`).
        return Err(TimeError::Impossible);
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

/// `YYYY-MM-DD HH:MM:SS` (or `T` between), with up to nine fraction digits: the layout
/// SQLite's `datetime()`, MySQL and most apps write, read by position. chrono's general
/// parser, tried after it, costs several times more per value (a million rows a poll).
pub fn parse_naive_fast(s: &str) -> Option<NaiveDateTime> {
    let b = s.as_bytes();
    if b.len() < 19
        || b[4] != b'-'
        || b[7] != b'-'
        || !(b[10] == b' ' || b[10] == b'T')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let digits = |d: &[u8]| -> Option<u32> {
        d.iter().try_fold(0u32, |v, &c| {
            c.is_ascii_digit().then(|| v * 10 + u32::from(c - b'0'))
        })
    };
    let nanos = match &b[19..] {
        [] => 0,
        [b'.', frac @ ..] if (1..=9).contains(&frac.len()) => {
            digits(frac)? * 10u32.pow(9 - frac.len() as u32)
        }
        _ => return None,
    };
    NaiveDate::from_ymd_opt(
        digits(&b[0..4])? as i32,
        digits(&b[5..7])?,
        digits(&b[8..10])?,
    )?
    .and_hms_nano_opt(
        digits(&b[11..13])?,
        digits(&b[14..16])?,
        digits(&b[17..19])?,
        nanos,
    )
}

fn parse_naive(s: &str) -> Option<NaiveDateTime> {
    if let Some(n) = parse_naive_fast(s) {
        return Some(n);
    }
    for items in NAIVE.get(NAIVE_FORMATS) {
        if let Some(n) = parsed(s, items).and_then(|p| p.to_naive_datetime_with_offset(0).ok()) {
            return Some(n);
        }
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
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

fn parse_text(s: &str, format: TimeFormat, zone: Zone) -> Result<DateTime<Utc>, TimeError> {
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
                parse_naive(s).map(|n| zone.localize(n))
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
            .map(|n| n.and_utc())
            .ok_or(TimeError::Unparseable)
            .and_then(plausible),
        TimeFormat::RelativeSeconds => Err(TimeError::Unparseable),
    }
}

/// Read a cell as an absolute timestamp, naive values in UTC. `Ok(None)` is a NULL.
pub fn to_time(cell: &Cell, format: TimeFormat) -> Result<Option<DateTime<Utc>>, TimeError> {
    to_time_in(cell, format, Zone::Utc)
}

/// Read a cell as an absolute timestamp, naive values (native or text) in `zone`. `Ok(None)`
/// is a NULL.
pub fn to_time_in(
    cell: &Cell,
    format: TimeFormat,
    zone: Zone,
) -> Result<Option<DateTime<Utc>>, TimeError> {
    let t = match cell {
        Cell::Naive(n) => match format {
            TimeFormat::Auto | TimeFormat::Rfc3339 => plausible(zone.localize(*n))?,
            TimeFormat::NaiveUtc => plausible(n.and_utc())?,
            _ => return Err(TimeError::Unparseable),
        },
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
        // An infinite date-time (PostgreSQL's `infinity`, read from a typed column) whatever
        // the format.
        Cell::Float(f) if f.is_infinite() => return Err(TimeError::Impossible),
        Cell::Float(f) => match format {
            TimeFormat::Auto | TimeFormat::EpochSeconds | TimeFormat::EpochMillis => {
                from_epoch(*f, format)?
            }
            _ => return Err(TimeError::Unparseable),
        },
        Cell::Text(s) => parse_text(s, format, zone)?,
        Cell::Json(v) => {
            return match v {
                serde_json::Value::Null => Ok(None),
                serde_json::Value::Number(n) => {
                    to_time_in(&Cell::Float(n.as_f64().unwrap_or(f64::NAN)), format, zone)
                }
                serde_json::Value::String(s) => to_time_in(&Cell::Text(s.clone()), format, zone),
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

    #[test]
    fn bytes_read_as_their_text_when_utf8_else_as_hex() {
        assert_eq!(Cell::bytes(b"eyJhbGci"), Cell::Text("eyJhbGci".into()));
        assert_eq!(Cell::bytes(&[0xff, 0xff]), Cell::Text("\\xffff".into()));
        assert_ne!(Cell::bytes(&[0xff, 0xff]), Cell::bytes(&[0xff, 0xfe]));
    }

    #[test]
    fn plausible_times_run_from_2000_to_before_2200_and_infinity_is_impossible() {
        assert_eq!(EARLIEST, Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0).unwrap());
        assert_eq!(LATEST, Utc.with_ymd_and_hms(2200, 1, 1, 0, 0, 0).unwrap());
        assert!(plausible(EARLIEST).is_ok());
        assert!(plausible(EARLIEST - chrono::Duration::seconds(1)).is_err());
        assert!(plausible(LATEST).is_err());
        for cell in [Cell::Float(f64::INFINITY), Cell::Float(f64::NEG_INFINITY)] {
            for format in [
                TimeFormat::Auto,
                TimeFormat::Rfc3339,
                TimeFormat::EpochSeconds,
            ] {
                assert_eq!(
                    to_time_in(&cell, format, Zone::Utc),
                    Err(TimeError::Impossible)
                );
            }
        }
        for text in ["infinity", "-infinity", "Infinity"] {
            assert_eq!(
                to_time_in(&Cell::Text(text.into()), TimeFormat::Auto, Zone::Utc),
                Err(TimeError::Impossible),
                "{text}"
            );
        }
        assert_eq!(
            to_time_in(&Cell::Text("NaN".into()), TimeFormat::Auto, Zone::Utc),
            Err(TimeError::Unparseable)
        );
    }

    #[test]
    fn the_positional_parser_agrees_with_chrono_and_refuses_what_chrono_would() {
        for s in [
            "2026-05-01 10:00:00",
            "2026-05-01T10:00:00",
            "2026-05-01 10:00:00.5",
            "2026-05-01 10:00:00.123456",
            "2026-05-01 10:00:00.123456789",
            "2024-02-29 23:59:59",
        ] {
            let chrono =
                NaiveDateTime::parse_from_str(&s.replace('T', " "), "%Y-%m-%d %H:%M:%S%.f")
                    .unwrap();
            assert_eq!(parse_naive_fast(s), Some(chrono), "{s}");
        }
        for s in [
            "2026-02-30 10:00:00",
            "2026-05-01 24:00:00",
            "2026-05-01 10:00:00.",
            "2026-05-01 10:00:00.1234567890",
            "2026-05-01 10:00:00Z",
            "2026-05-01 1a:00:00",
            "2026-05-01",
        ] {
            assert_eq!(parse_naive_fast(s), None, "{s}");
        }
    }

    #[test]
    fn zones_parse_by_name_and_offset() {
        assert_eq!(Zone::parse("UTC"), Some(Zone::Utc));
        assert_eq!(
            Zone::parse("Pacific/Auckland"),
            Some(Zone::Named(chrono_tz::Pacific::Auckland))
        );
        let n = NaiveDateTime::parse_from_str("2026-06-01 12:00:00", "%Y-%m-%d %H:%M:%S").unwrap();
        assert_eq!(
            Zone::parse("-05:30").unwrap().localize(n),
            Utc.with_ymd_and_hms(2026, 6, 1, 17, 30, 0).unwrap()
        );
        assert_eq!(Zone::parse("Mars/Olympus"), None);
        assert_eq!(Zone::parse("+5"), None);
    }

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
