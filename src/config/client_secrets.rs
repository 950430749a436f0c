//! `client_secrets`: when the app's own client secrets expire (Microsoft Entra client secrets
//! do, at most two years after creation), exported as
//! `oauth_client_secret_expiry_timestamp_seconds{provider,client}` for the shipped 30-day and
//! 7-day alerts. The date comes from the config or from a file (a secret manager's metadata,
//! a deploy step's output) that is read again at every scrape.
//!
//! ```yaml
//! client_secrets:
//!   - provider: microsoft
//!     client: billing-app            # the app or client id; never the secret
//!     expires: 2027-03-01            # a date (midnight UTC) or an RFC 3339 time, or:
//!   - provider: xero
//!     client: main
//!     expires_file: /run/secrets/xero-client-secret-expiry
//! ```

use super::common::Problems;
use chrono::{DateTime, NaiveDate, Utc};
use serde::Deserialize;
use std::path::PathBuf;

/// Where a client secret's expiry comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Expiry {
    At(DateTime<Utc>),
    /// Read at every scrape (the last good value stays when the file cannot be read).
    File(PathBuf),
}

/// One client secret of the app.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientSecret {
    pub provider: String,
    pub client: String,
    pub expiry: Expiry,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    provider: String,
    client: String,
    expires: Option<String>,
    expires_file: Option<PathBuf>,
}

/// Read an expiry: a date (`2027-03-01`, midnight UTC) or an RFC 3339 time. The error never
/// repeats the text (a file pointed at by mistake may hold the secret itself).
pub fn parse_expiry(text: &str) -> Result<DateTime<Utc>, &'static str> {
    let t = text.trim();
    if let Ok(d) = NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc());
    }
    DateTime::parse_from_rfc3339(t)
        .map(|d| d.with_timezone(&Utc))
        .map_err(|_| "is not a date (2027-03-01) or an RFC 3339 time (2027-03-01T00:00:00Z)")
}

/// Read the first line of an expiry file.
pub fn read_expiry_file(path: &std::path::Path) -> Result<DateTime<Utc>, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("cannot be read: {}", e.kind()))?;
    parse_expiry(text.lines().next().unwrap_or("")).map_err(|e| format!("its first line {e}"))
}

/// Validate `client_secrets` (at `client_secrets[i]`).
pub(crate) fn validate(v: serde_json::Value, problems: &mut Problems) -> Vec<ClientSecret> {
    let serde_json::Value::Array(items) = v else {
        problems.add(
            "client_secrets",
            "expected a list of {provider, client, expires or expires_file}",
        );
        return Vec::new();
    };
    let mut out: Vec<ClientSecret> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, item) in items.into_iter().enumerate() {
        let at = format!("client_secrets[{i}]");
        let Some(raw) = problems.decode::<Raw>(&at, item) else {
            continue;
        };
        for (name, value) in [("provider", &raw.provider), ("client", &raw.client)] {
            if value.trim().is_empty() || value.len() > crate::model::MAX_LABEL_VALUE_BYTES {
                problems.add(
                    format!("{at}.{name}"),
                    format!("must be 1 to {} bytes", crate::model::MAX_LABEL_VALUE_BYTES),
                );
            }
        }
        let expiry = match (raw.expires, raw.expires_file) {
            (Some(text), None) => match parse_expiry(&text) {
                Ok(t) => Some(Expiry::At(t)),
                Err(e) => {
                    problems.add(format!("{at}.expires"), e);
                    None
                }
            },
            (None, Some(path)) => match read_expiry_file(&path) {
                Ok(_) => Some(Expiry::File(path)),
                Err(e) => {
                    problems.add(
                        format!("{at}.expires_file"),
                        format!("{}: {e}", path.display()),
                    );
                    None
                }
            },
            _ => {
                problems.add(&at, "give exactly one of `expires` and `expires_file`");
                None
            }
        };
        if !seen.insert((raw.provider.clone(), raw.client.clone())) {
            problems.add(
                &at,
                format!(
                    "a second entry for provider {:?} and client {:?}",
                    raw.provider, raw.client
                ),
            );
            continue;
        }
        if let Some(expiry) = expiry {
            out.push(ClientSecret {
                provider: raw.provider,
                client: raw.client,
                expiry,
            });
        }
    }
    out
}
