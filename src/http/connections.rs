//! `GET /api/v1/connections`: every exported connection with its diagnosis (cause, evidence,
//! fix and runbook), filtered and paginated, for the host app's support tooling; and the
//! landing page's connections view built from the same list.

use super::server::{esc, AppState};
use crate::diagnosis::{diagnose_all, Cause, Diagnosis};
use crate::model::{Connection, Status};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use std::fmt::Write;

/// Page size when none is asked for, and the largest one.
pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;

/// The filters and page of a request (query parameters, each optional).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    pub cause: Option<String>,
    pub status: Option<String>,
    pub source: Option<String>,
    pub limit: Option<usize>,
    pub offset: Option<usize>,
}

/// A filter made of known values.
pub struct Checked {
    cause: Option<Cause>,
    status: Option<Status>,
    source: Option<String>,
    limit: usize,
    offset: usize,
}

impl Filter {
    /// Check every value; the error names the parameter and what it takes.
    pub fn check(self) -> Result<Checked, String> {
        let cause = match self.cause.as_deref() {
            None | Some("") => None,
            Some(c) => Some(Cause::from_name(c).ok_or_else(|| {
                format!(
                    "cause: not a known cause; one of {}",
                    Cause::ALL.map(Cause::as_str).join(", ")
                )
            })?),
        };
        let status = match self.status.as_deref() {
            None | Some("") => None,
            Some(s) => Some(
                Status::ALL
                    .into_iter()
                    .find(|x| x.as_str() == s)
                    .ok_or_else(|| {
                        format!(
                            "status: not a known status; one of {}",
                            Status::ALL.map(Status::as_str).join(", ")
                        )
                    })?,
            ),
        };
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT);
        if limit == 0 || limit > MAX_LIMIT {
            return Err(format!("limit: must be 1 to {MAX_LIMIT}"));
        }
        Ok(Checked {
            cause,
            status,
            source: self.source.filter(|s| !s.is_empty()),
            limit,
            offset: self.offset.unwrap_or(0),
        })
    }
}

/// One listed connection: borrowed from the snapshot it came from.
pub struct Listed<'a> {
    pub source: &'a str,
    pub c: &'a Connection,
    pub tenant_name: Option<&'a str>,
    pub d: &'a Diagnosis,
}

fn time(t: f64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis((t * 1000.0) as i64)
}

/// The diagnosed connections of every source, visited in the order listed: failing and at-risk
/// ones first (by refresh-token expiry), then healthy ones (by expiry); with the counts by cause
/// of those the source and status filters let through.
pub fn visit(
    s: &AppState,
    f: &Checked,
    mut each: impl FnMut(usize, &Listed<'_>),
) -> (usize, [usize; Cause::ALL.len()]) {
    let diagnosed = diagnose_all(&s.sources, &s.detector, s.clock.now(), true);
    let mut all: Vec<Listed<'_>> = Vec::new();
    let mut counts = [0; Cause::ALL.len()];
    for sd in &diagnosed {
        if f.source.as_deref().is_some_and(|n| n != sd.source.name) {
            continue;
        }
        let tenant_name = sd
            .source
            .label_names
            .iter()
            .position(|n| n == "tenant_name");
        for (c, d) in sd.snapshot.connections.iter().zip(&sd.diagnoses) {
            if f.status.is_some_and(|st| st != c.status) {
                continue;
            }
            counts[d.cause() as usize] += 1;
            if f.cause.is_some_and(|want| !d.listed().contains(&want)) {
                continue;
            }
            all.push(Listed {
                source: &sd.source.name,
                c,
                tenant_name: tenant_name
                    .and_then(|i| c.labels.get(i))
                    .map(String::as_str)
                    .filter(|n| !n.is_empty()),
                d,
            });
        }
    }
    all.sort_by(|a, b| {
        (a.d.is_healthy(), a.c.refresh_expiry)
            .partial_cmp(&(b.d.is_healthy(), b.c.refresh_expiry))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let total = all.len();
    for (i, l) in all.iter().enumerate().skip(f.offset).take(f.limit) {
        each(i, l);
    }
    (total, counts)
}

fn json(l: &Listed<'_>) -> serde_json::Value {
    let rfc =
        |t: Option<DateTime<Utc>>| t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    serde_json::json!({
        "source": l.source,
        "provider": l.c.provider,
        "connection": l.c.id,
        "tenant": l.c.tenant,
        "tenant_name": l.tenant_name,
        "status": l.c.status.as_str(),
        "last_refresh": rfc(time(l.c.last_refresh)),
        "refresh_token_expires": rfc(time(l.c.refresh_expiry)),
        "refresh_token_expired": l.c.expired,
        "access_token_expires": rfc(l.c.access_expiry.and_then(time)),
        "cause": l.d.cause().as_str(),
        "causes": l.d.listed().iter().map(|c| c.as_str()).collect::<Vec<_>>(),
        "since": rfc(l.d.since),
        "evidence": l.d.evidence,
        "separate_by": l.d.separate_by,
        "fix": l.d.cause().fix(),
        "runbook": l.d.cause().runbook(),
    })
}

fn bad_request(message: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(serde_json::json!({ "error": message })),
    )
        .into_response()
}

/// `GET /api/v1/connections?cause=&status=&source=&limit=&offset=`.
pub async fn list(
    State(s): State<AppState>,
    q: Result<Query<Filter>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let f = match q {
        Ok(Query(f)) => f,
        Err(e) => return bad_request(format!("query: {}", e.body_text())),
    };
    let f = match f.check() {
        Ok(f) => f,
        Err(e) => return bad_request(e),
    };
    let mut items = Vec::new();
    let (total, counts) = visit(&s, &f, |_, l| items.push(json(l)));
    let next = f.offset.saturating_add(f.limit);
    let by_cause: serde_json::Map<String, serde_json::Value> = Cause::ALL
        .iter()
        .map(|c| (c.as_str().to_string(), counts[*c as usize].into()))
        .collect();
    axum::Json(serde_json::json!({
        "total": total,
        "offset": f.offset,
        "limit": f.limit,
        "next_offset": if next < total { Some(next) } else { None },
        "by_cause": by_cause,
        "connections": items,
    }))
    .into_response()
}

/// A time for people: `2026-06-01 12:00 UTC (3 d ago)`.
pub fn human_time(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let d = now - t;
    let (n, unit, past) = {
        let s = d.num_seconds();
        let a = s.unsigned_abs();
        let (n, unit) = if a < 120 {
            (a, "s")
        } else if a < 7200 {
            (a / 60, "min")
        } else if a < 2 * 86400 {
            (a / 3600, "h")
        } else {
            (a / 86400, "d")
        };
        (n, unit, s >= 0)
    };
    format!(
        "{} ({})",
        t.format("%Y-%m-%d %H:%M UTC"),
        if past {
            format!("{n} {unit} ago")
        } else {
            format!("in {n} {unit}")
        }
    )
}

/// Rows the landing page lists.
pub const PAGE_ROWS: usize = 50;

/// The landing page's connections view: counts by cause (each a link that filters the view),
/// then the failing and at-risk connections of the filter.
pub fn page_section(s: &AppState, cause: Option<String>, h: &mut String) {
    let now = s.clock.now();
    let f = Filter {
        cause,
        ..Filter::default()
    };
    let f = match f.check() {
        Ok(f) => f,
        Err(e) => {
            let _ = write!(h, "<p class=\"down\">{}</p>", esc(&e));
            Filter::default()
                .check()
                .expect("the default filter is valid")
        }
    };
    let f = Checked {
        limit: PAGE_ROWS,
        ..f
    };
    let mut rows = String::new();
    let mut listed = 0;
    let (total, counts) = visit(s, &f, |_, l| {
        if l.d.is_healthy() {
            return;
        }
        listed += 1;
        let tenant = match l.tenant_name {
            Some(n) => format!("{} ({})", esc(n), esc(&l.c.tenant)),
            None => esc(&l.c.tenant),
        };
        let causes: Vec<&str> = l.d.listed().iter().map(|c| c.as_str()).collect();
        let runbook =
            l.d.cause()
                .runbook()
                .map(|u| format!(" <a href=\"{}\">runbook</a>", esc(&u)))
                .unwrap_or_default();
        let _ = write!(
            rows,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}{}</td></tr>",
            esc(l.source),
            esc(&l.c.id),
            tenant,
            l.c.status.as_str(),
            esc(&causes.join(" or ")),
            l.d.since.map(|t| human_time(t, now)).unwrap_or_default(),
            time(l.c.refresh_expiry)
                .map(|t| human_time(t, now))
                .unwrap_or_default(),
            esc(&l.d.evidence.join("; ")),
            esc(l.d.cause().fix()),
            runbook
        );
    });
    let diagnosed: usize = counts.iter().sum();
    let _ = write!(
        h,
        "<h2>Connections</h2><p>{diagnosed} exported connection(s) by most likely cause:</p><ul class=\"causes\">"
    );
    for c in Cause::ALL {
        let n = counts[c as usize];
        if n == 0 && c != Cause::Healthy {
            continue;
        }
        let _ = write!(
            h,
            "<li><a href=\"?cause={0}\">{0}</a>: {1}</li>",
            c.as_str(),
            n
        );
    }
    h.push_str("</ul>");
    if let Some(c) = f.cause {
        let _ = write!(
            h,
            "<p>Showing <b>{}</b> ({} connection(s)). <a href=\"./\">Show all</a></p>",
            c.as_str(),
            total
        );
    }
    if listed == 0 {
        h.push_str("<p>No failing or at-risk connection in this view.</p>");
    } else {
        let _ = write!(
            h,
            "<table id=\"connections\"><tr><th>source</th><th>connection</th><th>tenant</th><th>status</th><th>cause</th><th>since</th><th>refresh token expires</th><th>evidence</th><th>fix</th></tr>{rows}</table>"
        );
        if total > PAGE_ROWS {
            let _ = write!(
                h,
                "<p>The first {PAGE_ROWS} of {total}; the full list is at <a href=\"api/v1/connections\">api/v1/connections</a>.</p>"
            );
        }
    }
}
