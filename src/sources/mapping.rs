//! From result columns to the contract: resolve the configured fields against the columns a
//! query returned, then map each row to a connection or a rejection.

use crate::config::{FieldRef, Inference, Mapping, TimeField};
use crate::model::{label_string, MappedConnection, RejectReason, Status};
use crate::provider::ProviderProfile;
use crate::timestamp::{self, Cell, TimeError, TimeFormat, Zone};
use chrono::{DateTime, Duration, Utc};
use std::borrow::Cow;

/// A field's position in the compact row of needed cells.
#[derive(Debug, Clone)]
struct Slot {
    pos: usize,
    json_path: Vec<String>,
}

/// The mapping resolved against one result's columns.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Result column indexes to decode, in order; a row's cells follow this order.
    pub needed: Vec<usize>,
    connection: Slot,
    tenant: Option<Slot>,
    user: Option<Slot>,
    last_refresh: Option<(Slot, Option<Slot>)>,
    access_expires: Option<(Slot, Option<Slot>)>,
    refresh_expires: Option<(Slot, Option<Slot>)>,
    last_failure: Option<(Slot, Option<Slot>)>,
    authorized_at: Option<(Slot, Option<Slot>)>,
    status: Option<Slot>,
    labels: Vec<Slot>,
    refresh_token: Option<Slot>,
    provider: Option<Slot>,
    /// The SQL session's zone, for time fields set to `timezone: session` (asked at each
    /// poll by the backend; UTC otherwise).
    pub session_zone: Zone,
}

/// A configured column that the query result does not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingColumn {
    pub column: String,
    pub available: Vec<String>,
}

struct Resolver<'a> {
    columns: &'a [String],
    needed: Vec<usize>,
}

impl Resolver<'_> {
    fn slot(&mut self, f: &FieldRef) -> Result<Slot, MissingColumn> {
        let idx = self
            .columns
            .iter()
            .position(|c| c == &f.column)
            .or_else(|| {
                self.columns
                    .iter()
                    .position(|c| c.eq_ignore_ascii_case(&f.column))
            })
            .ok_or_else(|| MissingColumn {
                column: f.column.clone(),
                available: self.columns.to_vec(),
            })?;
        let pos = match self.needed.iter().position(|&i| i == idx) {
            Some(p) => p,
            None => {
                self.needed.push(idx);
                self.needed.len() - 1
            }
        };
        Ok(Slot {
            pos,
            json_path: f.json_path.clone(),
        })
    }

    fn time(&mut self, f: &TimeField) -> Result<(Slot, Option<Slot>), MissingColumn> {
        let at = self.slot(&f.at)?;
        let rel = f.relative_to.as_ref().map(|r| self.slot(r)).transpose()?;
        Ok((at, rel))
    }
}

/// Resolve `mapping` against the column names of a result.
pub fn resolve(mapping: &Mapping, columns: &[String]) -> Result<Resolved, MissingColumn> {
    let mut r = Resolver {
        columns,
        needed: Vec::new(),
    };
    let connection = r.slot(&mapping.connection)?;
    let tenant = mapping.tenant.as_ref().map(|f| r.slot(f)).transpose()?;
    let user = mapping.user.as_ref().map(|f| r.slot(f)).transpose()?;
    let last_refresh = mapping
        .last_refresh
        .field
        .as_ref()
        .map(|f| r.time(f))
        .transpose()?;
    let access_expires = mapping
        .access_expires
        .as_ref()
        .map(|f| r.time(f))
        .transpose()?;
    let refresh_expires = mapping
        .refresh_expires
        .as_ref()
        .map(|f| r.time(f))
        .transpose()?;
    let last_failure = mapping
        .last_failure
        .as_ref()
        .map(|f| r.time(f))
        .transpose()?;
    let authorized_at = mapping
        .authorized_at
        .as_ref()
        .map(|f| r.time(f))
        .transpose()?;
    let status = mapping.status.as_ref().map(|f| r.slot(&f.at)).transpose()?;
    let labels = mapping
        .labels
        .iter()
        .map(|(_, f)| r.slot(f))
        .collect::<Result<Vec<_>, _>>()?;
    let refresh_token = mapping
        .refresh_token
        .as_ref()
        .map(|f| r.slot(f))
        .transpose()?;
    let provider = mapping.provider.as_ref().map(|f| r.slot(f)).transpose()?;
    Ok(Resolved {
        needed: r.needed,
        connection,
        tenant,
        user,
        last_refresh,
        access_expires,
        refresh_expires,
        last_failure,
        authorized_at,
        status,
        labels,
        refresh_token,
        provider,
        session_zone: Zone::Utc,
    })
}

/// A keyed hash of a stored refresh token: HMAC-SHA256 under a key made at random for this
/// process and never written anywhere, truncated to 64 bits. Equal tokens give equal values
/// within this process; the value says nothing about the token.
pub fn token_hash(token: &str) -> u64 {
    use hmac::{Hmac, Mac};
    use rand::RngCore;
    static KEY: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
    let key = KEY.get_or_init(|| {
        let mut k = [0u8; 32];
        rand::rng().fill_bytes(&mut k);
        k
    });
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).expect("any key length");
    mac.update(token.as_bytes());
    let out = mac.finalize().into_bytes();
    u64::from_le_bytes(out[..8].try_into().expect("32-byte digest"))
}

/// Every column the mapping reads, once each, in mapping order (document sources use these as
/// their columns).
pub fn columns(m: &Mapping) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut add = |f: &FieldRef| {
        if !out.contains(&f.column) {
            out.push(f.column.clone());
        }
    };
    add(&m.connection);
    let times = [
        m.last_refresh.field.as_ref(),
        m.access_expires.as_ref(),
        m.refresh_expires.as_ref(),
        m.last_failure.as_ref(),
        m.authorized_at.as_ref(),
    ];
    for t in times.into_iter().flatten() {
        add(&t.at);
        if let Some(r) = &t.relative_to {
            add(r);
        }
    }
    if let Some(t) = &m.tenant {
        add(t);
    }
    if let Some(u) = &m.user {
        add(u);
    }
    if let Some(s) = &m.status {
        add(&s.at);
    }
    for (_, f) in &m.labels {
        add(f);
    }
    if let Some(f) = &m.refresh_token {
        add(f);
    }
    if let Some(f) = &m.provider {
        add(f);
    }
    out
}

/// A row that could not be exported.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// The connection id, when it could be read.
    pub connection: Option<String>,
    pub reason: RejectReason,
    /// The contract field at fault (`last_refresh`, `access_expires`, ...).
    pub field: &'static str,
}

fn cell<'a>(cells: &'a [Cell], s: &Slot) -> Result<Cow<'a, Cell>, TimeError> {
    let c = &cells[s.pos];
    if s.json_path.is_empty() {
        Ok(Cow::Borrowed(c))
    } else {
        c.json_path(&s.json_path).map(Cow::Owned)
    }
}

fn reason(e: TimeError) -> RejectReason {
    match e {
        TimeError::Unparseable => RejectReason::UnparseableTimestamp,
        TimeError::Impossible => RejectReason::ImpossibleTimestamp,
        TimeError::InvalidJson => RejectReason::InvalidJson,
        TimeError::NotUtf8 => RejectReason::InvalidUtf8,
    }
}

fn read_time(
    cells: &[Cell],
    slots: &(Slot, Option<Slot>),
    tf: &TimeField,
    session: Zone,
) -> Result<Option<DateTime<Utc>>, RejectReason> {
    let (format, zone) = (tf.format, tf.zone.resolve(session));
    let value = cell(cells, &slots.0).map_err(reason)?;
    match (&slots.1, format) {
        (Some(rel), TimeFormat::RelativeSeconds) => {
            let secs = match timestamp::to_seconds(&value).map_err(reason)? {
                Some(s) => s,
                None => return Ok(None),
            };
            let base = cell(cells, rel).map_err(reason)?;
            let base = match timestamp::to_time_in(&base, TimeFormat::Auto, zone).map_err(reason)? {
                Some(b) => b,
                None => return Err(RejectReason::NullTimestamp),
            };
            let t = base + Duration::milliseconds((secs * 1000.0) as i64);
            timestamp::plausible(t).map(Some).map_err(reason)
        }
        _ => timestamp::to_time_in(&value, format, zone).map_err(reason),
    }
}

/// Count, per extra label, whether this row holds a value for it (`present[i] += 1`): a label
/// whose key no document has, or whose column is NULL in every row, is reported.
pub fn count_labels_present(r: &Resolved, cells: &[Cell], present: &mut Vec<u64>) {
    present.resize(r.labels.len(), 0);
    for (n, s) in present.iter_mut().zip(&r.labels) {
        if cell(cells, s).is_ok_and(|c| !matches!(*c, Cell::Null)) {
            *n += 1;
        }
    }
}

/// The provider a row names, when the mapping has a provider field and the cell holds one.
pub fn row_provider(r: &Resolved, cells: &[Cell]) -> Option<String> {
    r.provider
        .as_ref()
        .and_then(|s| cell(cells, s).ok())
        .and_then(|c| c.as_label())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Map one row of needed cells (in [`Resolved::needed`] order) with the row's provider profile.
/// A row without a readable connection id or last refresh is rejected whole; an optional field
/// that cannot be read (a garbage `expires_in`, an unparseable failure time) omits only its
/// own series and is reported to `field_rejected`, the rest of the row is exported.
pub fn map_row(
    r: &Resolved,
    m: &Mapping,
    cells: &[Cell],
    provider: &ProviderProfile,
    now: DateTime<Utc>,
    field_rejected: &mut dyn FnMut(Rejection),
) -> Result<MappedConnection, Rejection> {
    let id_cell = cell(cells, &r.connection);
    let id = id_cell
        .as_ref()
        .ok()
        .and_then(|c| c.label_text())
        .filter(|s| !s.trim().is_empty())
        .map(label_string);
    let without_id = |reason| Rejection {
        connection: None,
        reason,
        field: "connection",
    };
    let id = match (id, id_cell) {
        (Some(v), _) => v,
        (None, Err(e)) => return Err(without_id(reason(e))),
        (None, Ok(c)) if matches!(*c, Cell::NotUtf8) => {
            return Err(without_id(RejectReason::InvalidUtf8))
        }
        (None, Ok(_)) => return Err(without_id(RejectReason::MissingConnection)),
    };
    let reject = |reason, field| Rejection {
        connection: Some(id.clone()),
        reason,
        field,
    };
    let time = |slots: &Option<(Slot, Option<Slot>)>,
                tf: Option<&TimeField>,
                name: &'static str| match (slots, tf) {
        (Some(s), Some(tf)) => read_time(cells, s, tf, r.session_zone).map_err(|e| reject(e, name)),
        _ => Ok(None),
    };
    // The required field first, so that a row whose last refresh is NULL is rejected for
    // that, not for a field computed from the same column.
    let stored_last_refresh = time(
        &r.last_refresh,
        m.last_refresh.field.as_ref(),
        "last_refresh",
    )?;
    let inferring = stored_last_refresh.is_none()
        && matches!(m.last_refresh.infer, Some(Inference::AccessExpires));
    let mut optional =
        |slots: &Option<(Slot, Option<Slot>)>, tf: Option<&TimeField>, name: &'static str| {
            time(slots, tf, name).unwrap_or_else(|rej| {
                field_rejected(rej);
                None
            })
        };
    let access_expiry = if inferring {
        time(
            &r.access_expires,
            m.access_expires.as_ref(),
            "access_expires",
        )?
    } else {
        optional(
            &r.access_expires,
            m.access_expires.as_ref(),
            "access_expires",
        )
    };
    let stored_refresh_expiry = optional(
        &r.refresh_expires,
        m.refresh_expires.as_ref(),
        "refresh_expires",
    );
    let last_failure = optional(&r.last_failure, m.last_failure.as_ref(), "last_failure");
    let authorized_at = optional(&r.authorized_at, m.authorized_at.as_ref(), "authorized_at");
    let last_refresh = match (stored_last_refresh, m.last_refresh.infer) {
        (Some(t), _) => Some(t),
        (None, Some(Inference::AccessExpires)) => {
            access_expiry.map(|a| a - provider.access_token_lifetime)
        }
        (None, None) => None,
    };
    let last_refresh = match last_refresh {
        Some(t) => t,
        None => return Err(reject(RejectReason::NullTimestamp, "last_refresh")),
    };
    if last_refresh > now + Duration::seconds(crate::model::MAX_CLOCK_SKEW_SECONDS) {
        return Err(reject(RejectReason::ImpossibleTimestamp, "last_refresh"));
    }
    let idle_expiry = last_refresh + provider.refresh_token_idle_lifetime;
    let hard_expiry = match (authorized_at, provider.refresh_token_max_lifetime) {
        (Some(a), Some(max)) => Some(a + max),
        _ => None,
    };
    let refresh_expiry = [Some(idle_expiry), stored_refresh_expiry, hard_expiry]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(idle_expiry);
    let stored_status = match (&r.status, &m.status) {
        (Some(slot), Some(sf)) => {
            let v = cell(cells, slot).ok().and_then(|c| c.as_label());
            Some(match v {
                None => sf.default,
                Some(v) => {
                    let key = v.trim().to_lowercase();
                    sf.map
                        .get(&key)
                        .copied()
                        .or_else(|| Status::from_name(&key))
                        .unwrap_or(sf.default)
                }
            })
        }
        _ => None,
    };
    let tenant = r
        .tenant
        .as_ref()
        .and_then(|s| cell(cells, s).ok())
        .and_then(|c| c.label_text().map(label_string));
    let user = r
        .user
        .as_ref()
        .and_then(|s| cell(cells, s).ok())
        .and_then(|c| c.label_text().map(label_string))
        .filter(|u| !u.is_empty());
    let labels = r
        .labels
        .iter()
        .map(|s| {
            cell(cells, s)
                .ok()
                .and_then(|c| c.label_text().map(label_string))
                .unwrap_or_default()
        })
        .collect();
    let token_hash = r
        .refresh_token
        .as_ref()
        .and_then(|s| cell(cells, s).ok())
        .and_then(|c| match c.as_ref() {
            Cell::Text(t) if !t.is_empty() => Some(token_hash(t)),
            _ => None,
        });
    Ok(MappedConnection {
        token_hash,
        provider: provider.name(),
        id,
        tenant,
        user,
        labels,
        last_refresh,
        refresh_expiry,
        access_expiry,
        last_failure,
        stored_status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use crate::provider::ProviderKind;
    use chrono::TimeZone;

    fn mapping(yaml_fields: &str) -> Mapping {
        let text = format!(
            "sources:\n  - name: t\n    kind: sqlite\n    dsn: x.db\n    query: SELECT 1\n{yaml_fields}"
        );
        config::parse(&text, "t.yml", &|_| None)
            .unwrap_or_else(|e| panic!("{e}"))
            .sources
            .remove(0)
            .mapping
    }

    fn cols(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0).unwrap()
    }

    #[test]
    fn relative_expires_in_plus_fetched_at_gives_access_expiry() {
        let m = mapping(
            "    infer_last_refresh: access_expires\n    fields:\n      connection: id\n      access_expires: {column: expires_in, format: relative_seconds, relative_to: fetched_at}\n",
        );
        let r = resolve(&m, &cols(&["id", "fetched_at", "expires_in"])).unwrap();
        let cells: Vec<Cell> = r
            .needed
            .iter()
            .map(|&i| match i {
                0 => Cell::Int(7),
                1 => Cell::Text("2026-05-01 10:00:00".into()),
                _ => Cell::Text("1800".into()),
            })
            .collect();
        let c = map_row(
            &r,
            &m,
            &cells,
            &ProviderKind::Xero.profile(),
            now(),
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(c.id, "7");
        assert_eq!(
            c.access_expiry,
            Some(Utc.with_ymd_and_hms(2026, 5, 1, 10, 30, 0).unwrap())
        );
        assert_eq!(
            c.last_refresh,
            Utc.with_ymd_and_hms(2026, 5, 1, 10, 0, 0).unwrap()
        );
        assert_eq!(
            c.refresh_expiry,
            Utc.with_ymd_and_hms(2026, 6, 30, 10, 0, 0).unwrap()
        );
        assert!(m.last_refresh.field.is_none() && m.last_refresh.infer.is_some());
    }

    #[test]
    fn stored_refresh_expiry_wins_only_when_earlier() {
        let m = mapping("    fields:\n      connection: id\n      last_refresh: lr\n      refresh_expires: re\n");
        let r = resolve(&m, &cols(&["id", "lr", "re"])).unwrap();
        let p = ProviderKind::Xero.profile();
        let row = |re: &str| {
            vec![
                Cell::Text("a".into()),
                Cell::Text("2026-05-01T00:00:00Z".into()),
                Cell::Text(re.into()),
            ]
        };
        let early = map_row(&r, &m, &row("2026-05-10T00:00:00Z"), &p, now(), &mut |_| {}).unwrap();
        assert_eq!(
            early.refresh_expiry,
            Utc.with_ymd_and_hms(2026, 5, 10, 0, 0, 0).unwrap()
        );
        let late = map_row(&r, &m, &row("2027-01-01T00:00:00Z"), &p, now(), &mut |_| {}).unwrap();
        assert_eq!(
            late.refresh_expiry,
            Utc.with_ymd_and_hms(2026, 6, 30, 0, 0, 0).unwrap()
        );
    }

    #[test]
    fn status_map_then_status_names_then_default() {
        let m = mapping("    fields:\n      connection: id\n      last_refresh: lr\n      status: {column: st, map: {REAUTH_REQUIRED: needs_reauth, ok: active}, default: unknown}\n");
        let r = resolve(&m, &cols(&["id", "lr", "st"])).unwrap();
        let p = ProviderKind::Xero.profile();
        let status = |v: Cell| {
            map_row(
                &r,
                &m,
                &[Cell::Text("a".into()), Cell::Int(1780000000), v],
                &p,
                now(),
                &mut |_| {},
            )
            .unwrap()
            .stored_status
        };
        assert_eq!(
            status(Cell::Text("reauth_required".into())),
            Some(Status::NeedsReauth)
        );
        assert_eq!(status(Cell::Text("OK".into())), Some(Status::Active));
        assert_eq!(status(Cell::Text("revoked".into())), Some(Status::Revoked));
        assert_eq!(status(Cell::Text("paused".into())), Some(Status::Unknown));
        assert_eq!(status(Cell::Null), Some(Status::Unknown));
    }

    #[test]
    fn bad_rows_are_rejected_with_reason_field_and_connection() {
        let m = mapping("    fields:\n      connection: id\n      last_refresh: lr\n      access_expires: {column: tok, json_path: expires_at}\n");
        let r = resolve(&m, &cols(&["id", "lr", "tok"])).unwrap();
        let p = ProviderKind::Xero.profile();
        let run =
            |id: Cell, lr: Cell, tok: Cell| map_row(&r, &m, &[id, lr, tok], &p, now(), &mut |_| {});
        let ok_tok = || Cell::Text(r#"{"expires_at": 1780000000}"#.into());
        let e = run(Cell::Text("a".into()), Cell::Null, ok_tok()).unwrap_err();
        assert_eq!(
            (e.reason, e.field, e.connection.as_deref()),
            (RejectReason::NullTimestamp, "last_refresh", Some("a"))
        );
        let e = run(
            Cell::Text("b".into()),
            Cell::Text("garbage".into()),
            ok_tok(),
        )
        .unwrap_err();
        assert_eq!(
            (e.reason, e.field),
            (RejectReason::UnparseableTimestamp, "last_refresh")
        );
        let e = run(Cell::Text("c".into()), Cell::Int(0), ok_tok()).unwrap_err();
        assert_eq!(e.reason, RejectReason::ImpossibleTimestamp);
        let e = run(
            Cell::Text("d".into()),
            Cell::Text("2026-06-03T00:00:00Z".into()),
            ok_tok(),
        )
        .unwrap_err();
        assert_eq!(
            (e.reason, e.field),
            (RejectReason::ImpossibleTimestamp, "last_refresh"),
            "future last refresh"
        );
        // A broken optional field omits its own series only, and is reported for that field.
        let mut fields = vec![];
        let c = map_row(
            &r,
            &m,
            &[
                Cell::Text("e".into()),
                Cell::Int(1780000000),
                Cell::Text("{oops".into()),
            ],
            &p,
            now(),
            &mut |rej| fields.push(rej),
        )
        .unwrap();
        assert_eq!((c.id.as_str(), c.access_expiry), ("e", None));
        assert_eq!(c.last_refresh.timestamp(), 1780000000);
        assert_eq!(
            fields,
            [Rejection {
                connection: Some("e".into()),
                reason: RejectReason::InvalidJson,
                field: "access_expires"
            }]
        );
        let e = run(Cell::Null, Cell::Int(1780000000), ok_tok()).unwrap_err();
        assert_eq!(
            (e.reason, e.connection),
            (RejectReason::MissingConnection, None)
        );
        // Text that is not UTF-8 rejects the row for it, naming the field.
        let e = run(Cell::NotUtf8, Cell::Int(1780000000), ok_tok()).unwrap_err();
        assert_eq!(
            (e.reason, e.field),
            (RejectReason::InvalidUtf8, "connection")
        );
        let e = run(Cell::Text("f".into()), Cell::NotUtf8, ok_tok()).unwrap_err();
        assert_eq!(
            (e.reason, e.field, e.connection.as_deref()),
            (RejectReason::InvalidUtf8, "last_refresh", Some("f"))
        );
    }

    #[test]
    fn an_access_expiry_the_last_refresh_is_inferred_from_is_required() {
        let m = mapping(
            "    infer_last_refresh: access_expires
    fields:
      connection: id
      access_expires: exp
",
        );
        let r = resolve(&m, &cols(&["id", "exp"])).unwrap();
        let p = ProviderKind::Xero.profile();
        let e = map_row(
            &r,
            &m,
            &[Cell::Text("a".into()), Cell::Text("abc".into())],
            &p,
            now(),
            &mut |_| panic!("not a field rejection: the row is rejected"),
        )
        .unwrap_err();
        assert_eq!(
            (e.reason, e.field),
            (RejectReason::UnparseableTimestamp, "access_expires")
        );
    }

    #[test]
    fn quickbooks_hard_maximum_caps_expiry_five_years_after_authorisation() {
        let text = "sources:\n  - name: t\n    kind: sqlite\n    dsn: x.db\n    provider: quickbooks\n    query: SELECT 1\n    fields: {connection: id, last_refresh: lr, authorized_at: auth}\n";
        let cfg = config::parse(text, "t.yml", &|_| None)
            .unwrap()
            .sources
            .remove(0);
        let r = resolve(&cfg.mapping, &cols(&["id", "lr", "auth"])).unwrap();
        let row = |auth: &str| {
            vec![
                Cell::Text("a".into()),
                Cell::Text("2026-05-01T00:00:00Z".into()),
                Cell::Text(auth.into()),
            ]
        };
        // Authorised 5 years minus 30 days ago: the hard maximum comes before the 100-day window.
        let c = map_row(
            &r,
            &cfg.mapping,
            &row("2021-06-02T00:00:00Z"),
            &cfg.provider,
            now(),
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(
            c.refresh_expiry,
            Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap()
        );
        let c = map_row(
            &r,
            &cfg.mapping,
            &row("2025-01-01T00:00:00Z"),
            &cfg.provider,
            now(),
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(
            c.refresh_expiry,
            Utc.with_ymd_and_hms(2026, 8, 9, 0, 0, 0).unwrap(),
            "100 days after the last refresh"
        );
    }

    #[test]
    fn missing_column_names_what_is_available() {
        let m = mapping("    fields:\n      connection: id\n      last_refresh: updated_at\n");
        let e = resolve(&m, &cols(&["id", "created_at"])).unwrap_err();
        assert_eq!(e.column, "updated_at");
        assert_eq!(e.available, ["id", "created_at"]);
        // Column names match case-insensitively when there is no exact match.
        assert!(resolve(&m, &cols(&["ID", "UPDATED_AT"])).is_ok());
    }
}
