//! The field mapping of a source: which result column (or key, or JSON path inside one) holds
//! each value of the metric contract, with its timestamp format and the status value map.

use super::common::{parse_path, valid_label_name, Problems};
use super::presets::Inference;
use crate::model::Status;
use crate::timestamp::{TimeFormat, Zone, ZoneSetting};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;

/// Where a value lives in a result row: a column, optionally a path inside a JSON column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldRef {
    pub column: String,
    pub json_path: Vec<String>,
}

/// A timestamp field.
#[derive(Debug, Clone, PartialEq)]
pub struct TimeField {
    pub at: FieldRef,
    pub format: TimeFormat,
    /// For `relative_seconds`: the timestamp the seconds count from.
    pub relative_to: Option<FieldRef>,
    /// The zone naive values (no offset) are read in.
    pub zone: ZoneSetting,
}

/// The status field with its value map.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusField {
    pub at: FieldRef,
    /// Store value (lower-cased) to status. Values equal to a status name map to it.
    pub map: BTreeMap<String, Status>,
    /// Status for values not in the map.
    pub default: Status,
}

/// How the last refresh is found.
/// How the last refresh is found: a field, an inference from the access expiry, or both (the
/// field first, the inference where the field is NULL; Nango sets its last success to NULL on a
/// failed refresh but keeps the access expiry).
#[derive(Debug, Clone, PartialEq)]
pub struct LastRefresh {
    pub field: Option<TimeField>,
    pub infer: Option<Inference>,
}

/// Result fields mapped onto the metric contract.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapping {
    pub connection: FieldRef,
    pub tenant: Option<FieldRef>,
    /// The user who authorised the connection (never exported as a label: the diagnosis uses
    /// it to tell one user's revocation from a single disconnect).
    pub user: Option<FieldRef>,
    pub last_refresh: LastRefresh,
    pub access_expires: Option<TimeField>,
    pub refresh_expires: Option<TimeField>,
    pub last_failure: Option<TimeField>,
    /// When the connection was first authorised (for providers with a hard maximum lifetime).
    pub authorized_at: Option<TimeField>,
    pub status: Option<StatusField>,
    /// Extra labels of `oauth_connection_info`, by label name.
    pub labels: Vec<(String, FieldRef)>,
    /// The stored refresh token, read only to keep a keyed hash of it in memory (regression
    /// detection); never stored, logged or exported.
    pub refresh_token: Option<FieldRef>,
    /// The provider of each row (a name like `xero`, `quickbooks-sandbox`, `hubspot`), for
    /// sources holding several providers' connections.
    pub provider: Option<FieldRef>,
}

impl Mapping {
    fn time_fields(&self) -> impl Iterator<Item = &TimeField> {
        [
            self.last_refresh.field.as_ref(),
            self.access_expires.as_ref(),
            self.refresh_expires.as_ref(),
            self.last_failure.as_ref(),
            self.authorized_at.as_ref(),
        ]
        .into_iter()
        .flatten()
    }

    /// Whether a time field reads naive values in the SQL session's zone (asked each poll).
    pub fn uses_session_zone(&self) -> bool {
        self.time_fields().any(|t| t.zone == ZoneSetting::Session)
    }
}

/// Read a `timezone` setting at `at`: an IANA name, an offset, `UTC`, or (where `session` is
/// allowed, SQL servers) `session`.
pub(crate) fn zone_setting(
    at: &str,
    s: &str,
    session_allowed: bool,
    problems: &mut Problems,
) -> Option<ZoneSetting> {
    if s.trim() == "session" {
        if session_allowed {
            return Some(ZoneSetting::Session);
        }
        problems.add(
            at,
            "`session` is the zone of a PostgreSQL or MySQL/MariaDB session; name the zone (e.g. `Pacific/Auckland`)",
        );
        return None;
    }
    match Zone::parse(s) {
        Some(z) => Some(ZoneSetting::Fixed(z)),
        None => {
            problems.add(
                at,
                format!("{s:?} is not a time zone: use an IANA name (`Pacific/Auckland`), an offset (`+13:00`), `UTC`, or `session`"),
            );
            None
        }
    }
}

/// A field as written: a column name, or a map with details.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct RawField {
    pub(crate) column: String,
    json_path: Option<String>,
    format: Option<TimeFormat>,
    relative_to: Option<String>,
    map: Option<BTreeMap<String, Status>>,
    default: Option<Status>,
    timezone: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFieldMap {
    /// Column of the query result.
    column: String,
    /// Dotted path inside a JSON column (`expires_at`, `token.expires_at`).
    json_path: Option<String>,
    /// Timestamp format (timestamp fields only).
    format: Option<TimeFormat>,
    /// For `format: relative_seconds`, the column holding the time the seconds count from.
    relative_to: Option<String>,
    /// Store values to statuses (status field only).
    map: Option<BTreeMap<String, Status>>,
    /// Status for values missing from `map` (status field only).
    default: Option<Status>,
    /// The zone of naive values (timestamp fields only).
    timezone: Option<String>,
}

impl RawField {
    /// A plain column.
    pub(crate) fn column(column: &str) -> RawField {
        RawField {
            column: column.to_string(),
            ..RawField::default()
        }
    }
}

impl<'de> Deserialize<'de> for RawField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawField;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a column name, or a map with `column` and optional `json_path`, `format`, `relative_to`, `map`, `default`")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<RawField, E> {
                Ok(RawField {
                    column: s.to_string(),
                    ..RawField::default()
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawField, A::Error> {
                let m = RawFieldMap::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(RawField {
                    column: m.column,
                    json_path: m.json_path,
                    format: m.format,
                    relative_to: m.relative_to,
                    map: m.map,
                    default: m.default,
                    timezone: m.timezone,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// The `fields` of a source as written (a preset's fields, then the user's over them).
#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawFields {
    pub(crate) connection: Option<RawField>,
    tenant: Option<RawField>,
    user: Option<RawField>,
    pub(crate) last_refresh: Option<RawField>,
    pub(crate) access_expires: Option<RawField>,
    refresh_expires: Option<RawField>,
    last_failure: Option<RawField>,
    authorized_at: Option<RawField>,
    status: Option<RawField>,
    refresh_token: Option<RawField>,
    pub(crate) provider: Option<RawField>,
}

impl RawFields {
    /// Fields of `over` replace those of `self`.
    pub(crate) fn overlay(mut self, over: RawFields) -> RawFields {
        macro_rules! take {
            ($($f:ident),*) => { $( if over.$f.is_some() { self.$f = over.$f; } )* };
        }
        take!(
            connection,
            tenant,
            user,
            last_refresh,
            access_expires,
            refresh_expires,
            last_failure,
            authorized_at,
            status,
            refresh_token,
            provider
        );
        self
    }

    /// Builder used by presets.
    /// A preset's access expiry as seconds (`expires_in`, a number or numeric string) counted
    /// from another column: read per row, so a garbage value omits that row's expiry only.
    pub(crate) fn access_expires_relative(mut self, seconds: &str, from: &str) -> RawFields {
        self.access_expires = Some(RawField {
            column: seconds.to_string(),
            format: Some(TimeFormat::RelativeSeconds),
            relative_to: Some(from.to_string()),
            ..RawField::default()
        });
        self
    }

    pub fn preset(pairs: &[(&str, &str)]) -> RawFields {
        let mut f = RawFields::default();
        for (name, column) in pairs {
            let field = Some(RawField {
                column: column.to_string(),
                ..RawField::default()
            });
            match *name {
                "connection" => f.connection = field,
                "tenant" => f.tenant = field,
                "user" => f.user = field,
                "last_refresh" => f.last_refresh = field,
                "access_expires" => f.access_expires = field,
                "refresh_expires" => f.refresh_expires = field,
                "last_failure" => f.last_failure = field,
                "authorized_at" => f.authorized_at = field,
                "refresh_token" => f.refresh_token = field,
                "status" => f.status = field,
                "provider" => f.provider = field,
                other => unreachable!("preset names unknown field {other}"),
            }
        }
        f
    }
}

/// Label names the exporter sets itself.
const RESERVED_LABELS: &[&str] = &[
    "provider",
    "source",
    "connection",
    "tenant",
    "status",
    "le",
    "quantile",
    "within",
];

/// Validate the fields (at `at.fields`) and extra labels (at `at.labels`) of a source. `rows`
/// says whether rows come from a query (SQL), where `connection` and `last_refresh` are
/// required; `infer` is how the last refresh is found when no field holds it.
pub(crate) fn mapping(
    at: &str,
    fields: &RawFields,
    infer: Option<Inference>,
    raw_labels: &BTreeMap<String, RawField>,
    rows: bool,
    zones: Zones,
    problems: &mut Problems,
) -> Option<Mapping> {
    let mark = problems.mark();
    let fat = format!("{at}.fields");
    let connection = match &fields.connection {
        Some(f) => field_ref(&format!("{fat}.connection"), f, FieldKind::Plain, problems),
        None => {
            if rows {
                problems.add(
                    format!("{fat}.connection"),
                    "is required: the column holding the connection id",
                );
            }
            None
        }
    };
    let plain = |name: &str, f: &Option<RawField>, problems: &mut Problems| {
        f.as_ref()
            .and_then(|f| field_ref(&format!("{fat}.{name}"), f, FieldKind::Plain, problems))
    };
    let tenant = plain("tenant", &fields.tenant, problems);
    let user = plain("user", &fields.user, problems);
    let provider = plain("provider", &fields.provider, problems);
    let refresh_token = plain("refresh_token", &fields.refresh_token, problems);
    let time = |name: &str, f: &Option<RawField>, problems: &mut Problems| {
        f.as_ref()
            .and_then(|f| time_field(&format!("{fat}.{name}"), f, zones, problems))
    };
    let access_expires = time("access_expires", &fields.access_expires, problems);
    let refresh_expires = time("refresh_expires", &fields.refresh_expires, problems);
    let last_failure = time("last_failure", &fields.last_failure, problems);
    let authorized_at = time("authorized_at", &fields.authorized_at, problems);
    if infer == Some(Inference::AccessExpires) && fields.access_expires.is_none() {
        problems.add(
            format!("{at}.infer_last_refresh"),
            "`access_expires` inference needs `fields.access_expires`",
        );
    }
    let last_refresh = match (&fields.last_refresh, infer) {
        (Some(_), infer) => {
            time("last_refresh", &fields.last_refresh, problems).map(|f| LastRefresh {
                field: Some(f),
                infer,
            })
        }
        (None, Some(infer)) => Some(LastRefresh {
            field: None,
            infer: Some(infer),
        }),
        (None, None) => {
            if rows {
                problems.add(
                    format!("{fat}.last_refresh"),
                    "is required (e.g. `updated_at`), or set `infer_last_refresh: access_expires`",
                );
            }
            None
        }
    };
    let status = fields.status.as_ref().and_then(|f| {
        let p = format!("{fat}.status");
        let at_ref = field_ref(&p, f, FieldKind::Status, problems)?;
        let map = f
            .map
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k.trim().to_lowercase(), v))
            .collect();
        Some(StatusField {
            at: at_ref,
            map,
            default: f.default.unwrap_or(Status::Unknown),
        })
    });
    let mut labels = Vec::new();
    for (name, f) in raw_labels {
        let p = format!("{at}.labels.{name}");
        if !valid_label_name(name) {
            problems.add(
                &p,
                "not a valid Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*, no leading __)",
            );
        } else if RESERVED_LABELS.contains(&name.as_str()) {
            problems.add(
                &p,
                format!("`{name}` is set by the exporter; choose another label name"),
            );
        }
        if let Some(r) = field_ref(&p, f, FieldKind::Plain, problems) {
            labels.push((name.clone(), r));
        }
    }
    if problems.since(mark) {
        return None;
    }
    Some(Mapping {
        connection: connection?,
        tenant,
        user,
        last_refresh: last_refresh?,
        access_expires,
        refresh_expires,
        last_failure,
        authorized_at,
        status,
        labels,
        refresh_token,
        provider,
    })
}

#[derive(PartialEq)]
enum FieldKind {
    Plain,
    Time,
    Status,
}

fn field_ref(at: &str, f: &RawField, kind: FieldKind, problems: &mut Problems) -> Option<FieldRef> {
    let before = problems.mark();
    if f.column.trim().is_empty() {
        problems.add(
            format!("{at}.column"),
            "must name a column of the query result",
        );
    }
    if kind != FieldKind::Time {
        if f.format.is_some() {
            problems.add(
                format!("{at}.format"),
                "only timestamp fields take a `format`",
            );
        }
        if f.relative_to.is_some() {
            problems.add(
                format!("{at}.relative_to"),
                "only timestamp fields take `relative_to`",
            );
        }
        if f.timezone.is_some() {
            problems.add(
                format!("{at}.timezone"),
                "only timestamp fields take a `timezone`",
            );
        }
    }
    if kind != FieldKind::Status {
        if f.map.is_some() {
            problems.add(
                format!("{at}.map"),
                "only the `status` field takes a value `map`",
            );
        }
        if f.default.is_some() {
            problems.add(
                format!("{at}.default"),
                "only the `status` field takes a `default`",
            );
        }
    }
    let json_path = match &f.json_path {
        None => Vec::new(),
        Some(p) => match parse_path(p) {
            Some(v) => v,
            None => {
                problems.add(
                    format!("{at}.json_path"),
                    format!("{p:?} is not a dotted path of keys like `expires_at` or `token.expires_at`"),
                );
                Vec::new()
            }
        },
    };
    if problems.since(before) {
        return None;
    }
    Some(FieldRef {
        column: f.column.trim().to_string(),
        json_path,
    })
}

/// The source's default zone for its time fields, and whether `session` may be named.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Zones {
    pub(crate) default: ZoneSetting,
    pub(crate) session_allowed: bool,
}

fn time_field(at: &str, f: &RawField, zones: Zones, problems: &mut Problems) -> Option<TimeField> {
    let zone = match &f.timezone {
        Some(s) => zone_setting(
            &format!("{at}.timezone"),
            s,
            zones.session_allowed,
            problems,
        )?,
        None => zones.default,
    };
    let r = field_ref(at, f, FieldKind::Time, problems)?;
    let format = f.format.unwrap_or_default();
    let relative_to = match (format, &f.relative_to) {
        (TimeFormat::RelativeSeconds, Some(col)) => Some(FieldRef {
            column: col.trim().to_string(),
            json_path: Vec::new(),
        }),
        (TimeFormat::RelativeSeconds, None) => {
            problems.add(
                format!("{at}.relative_to"),
                "`format: relative_seconds` needs `relative_to`: the column with the time the seconds count from (e.g. `fetched_at`)",
            );
            return None;
        }
        (_, Some(_)) => {
            problems.add(
                format!("{at}.relative_to"),
                "is only used with `format: relative_seconds`",
            );
            return None;
        }
        (_, None) => None,
    };
    Some(TimeField {
        at: r,
        format,
        relative_to,
        zone,
    })
}
