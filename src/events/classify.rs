//! Reading what the host app meets into the closed enums of the model, before anything is
//! counted: Xero's API answers ([`classify_api`]) and the fields of an event, as the ingest API
//! receives them and as an event table holds them ([`EventFields::validate`]). Token-endpoint
//! errors: [`crate::provider::classify_refresh_error`].

use crate::model::{ApiOutcome, Event, EventKind, RateLimitProblem, UnauthorizedReason};
use crate::provider::{classify_refresh_error, ProviderKind, RefreshError};
use chrono::{DateTime, Utc};

/// A 401's reason from Xero's `Detail` (or the whole problem body): the prefix tells the cause.
pub fn unauthorized_reason(detail: &str) -> UnauthorizedReason {
    let d = detail.trim();
    if d.starts_with("TokenExpired") {
        UnauthorizedReason::TokenExpired
    } else if d.starts_with("AuthorizationUnsuccessful") {
        UnauthorizedReason::AuthorizationUnsuccessful
    } else if d.starts_with("AuthenticationUnsuccessful") {
        UnauthorizedReason::AuthenticationUnsuccessful
    } else {
        UnauthorizedReason::Other
    }
}

/// A 401's reason from a whole body: Xero's problem JSON (`Detail`), or the text itself.
pub fn unauthorized_from_body(body: &[u8]) -> UnauthorizedReason {
    let detail = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("Detail").and_then(|d| d.as_str()).map(str::to_string));
    match detail {
        Some(d) => unauthorized_reason(&d),
        None => unauthorized_reason(&String::from_utf8_lossy(body)),
    }
}

/// Which limit a 429 hit, from Xero's `X-Rate-Limit-Problem` header (`minute`, `day`; others
/// unverified).
pub fn rate_limit_problem(v: Option<&str>) -> RateLimitProblem {
    match v
        .map(|s| s.trim().to_ascii_lowercase().replace(['-', '_'], ""))
        .as_deref()
    {
        Some("minute") => RateLimitProblem::Minute,
        Some("day") => RateLimitProblem::Day,
        Some("concurrent") => RateLimitProblem::Concurrent,
        Some("appminute") => RateLimitProblem::AppMinute,
        _ => RateLimitProblem::Other,
    }
}

/// Classify an API response by status, Xero's problem body and the rate-limit header.
pub fn classify_api(
    status: u16,
    body: &[u8],
    rate_limit_problem_header: Option<&str>,
) -> ApiOutcome {
    match status {
        200..=299 => ApiOutcome::Ok,
        401 => ApiOutcome::Unauthorized(unauthorized_from_body(body)),
        403 => ApiOutcome::Forbidden,
        429 => ApiOutcome::RateLimited(rate_limit_problem(rate_limit_problem_header)),
        _ => ApiOutcome::OtherStatus,
    }
}

/// Longest connection or tenant id accepted, in characters.
pub const MAX_ID: usize = 256;

/// Why an event was refused: the field at fault and what was expected (never what was sent).
pub type Refusal = (String, String);

/// The fields of one event as sent, before validation (the ingest API's JSON, an event
/// table's row).
#[derive(Debug, Default, Clone)]
pub struct EventFields {
    /// `refresh` or `api`.
    pub kind: Option<String>,
    pub connection: Option<String>,
    pub tenant: Option<String>,
    /// When it happened, or why the value sent is not a time.
    pub time: Option<Result<DateTime<Utc>, &'static str>>,
    pub provider: Option<ProviderKind>,
    /// `success` or `failure` (refresh).
    pub outcome: Option<String>,
    /// The token endpoint's OAuth `error`, or `network` when there was no answer (refresh).
    pub error: Option<String>,
    /// The HTTP status (the token endpoint's, or the API's).
    pub status: Option<u16>,
    /// Xero's `Detail` of a 401 (api).
    pub detail: Option<String>,
    /// The `X-Rate-Limit-Problem` header of a 429 (api).
    pub rate_limit_problem: Option<String>,
}

fn refuse<T>(field: &str, message: impl Into<String>) -> Result<T, Refusal> {
    Err((field.to_string(), message.into()))
}

impl EventFields {
    /// Validate and classify; nothing is counted here.
    /// `now` bounds the event's time: one later than the clock skew allows is refused (it
    /// would keep failing-connection gauges up until then).
    pub fn validate(
        self,
        default_provider: ProviderKind,
        now: DateTime<Utc>,
    ) -> Result<Event, Refusal> {
        let refresh = match self.kind.as_deref() {
            Some("refresh") => true,
            Some("api") => false,
            Some(_) => return refuse("type", "unknown event type, expected `refresh` or `api`"),
            None => return refuse("type", "is required: `refresh` or `api`"),
        };
        let connection = match self.connection {
            Some(c) if !c.trim().is_empty() && c.chars().count() <= MAX_ID => c,
            Some(_) => {
                return refuse(
                    "connection",
                    format!("must be a non-empty id of at most {MAX_ID} characters"),
                )
            }
            None => return refuse("connection", "missing field `connection`"),
        };
        if self
            .tenant
            .as_ref()
            .is_some_and(|t| t.chars().count() > MAX_ID)
        {
            return refuse("tenant", format!("must be at most {MAX_ID} characters"));
        }
        let time = match self.time {
            None => None,
            Some(Ok(t)) if t > now + chrono::Duration::seconds(crate::model::MAX_CLOCK_SKEW_SECONDS) => {
                return refuse(
                    "time",
                    format!(
                        "is {} s ahead of this exporter's clock; at most {} s of clock skew is accepted",
                        (t - now).num_seconds(),
                        crate::model::MAX_CLOCK_SKEW_SECONDS
                    ),
                )
            }
            Some(Ok(t)) => Some(t),
            Some(Err(why)) => return refuse("time", why),
        };
        if self.status.is_some_and(|s| !(100..=599).contains(&s)) {
            return refuse("status", "must be an HTTP status between 100 and 599");
        }
        let provider = self.provider.unwrap_or(default_provider);
        let kind = if refresh {
            let success = match self.outcome.as_deref() {
                Some("success") => true,
                Some("failure") => false,
                Some(_) => {
                    return refuse(
                        "outcome",
                        "unknown variant, expected `success` or `failure`",
                    )
                }
                None => return refuse("outcome", "missing field `outcome`"),
            };
            let failure = match (success, self.error.as_deref(), self.status) {
                (true, None, _) => None,
                (true, Some(_), _) => {
                    return refuse("error", "a successful refresh has no `error`")
                }
                (false, Some("network"), _) => Some(RefreshError::Network),
                (false, Some(err), status) => {
                    let body = serde_json::json!({ "error": err }).to_string();
                    Some(classify_refresh_error(
                        status.unwrap_or(400),
                        body.as_bytes(),
                    ))
                }
                (false, None, Some(status)) => Some(classify_refresh_error(status, b"")),
                (false, None, None) => Some(RefreshError::Network),
            };
            EventKind::Refresh(failure)
        } else {
            let status = match self.status {
                Some(s) => s,
                None => return refuse("status", "missing field `status`"),
            };
            EventKind::Api(match status {
                401 => ApiOutcome::Unauthorized(unauthorized_reason(
                    self.detail.as_deref().unwrap_or(""),
                )),
                429 => {
                    ApiOutcome::RateLimited(rate_limit_problem(self.rate_limit_problem.as_deref()))
                }
                s => classify_api(s, b"", None),
            })
        };
        Ok(Event {
            provider,
            connection: Some(connection),
            time,
            kind,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{RateLimitProblem, UnauthorizedReason};

    #[test]
    fn xero_401_bodies_are_classified_by_the_detail_prefix() {
        let body = |d: &str| {
            format!(
                r#"{{"Type":null,"Title":"Unauthorized","Status":401,"Detail":"{d}","Instance":"6b4f3c0e-5a1a-4a55-9c1e-1c9f1f0b2e11","Extensions":{{}}}}"#
            )
        };
        let c = |d: &str| classify_api(401, body(d).as_bytes(), None);
        assert_eq!(
            c("TokenExpired: token expired at 04/09/2023 05:16:59"),
            ApiOutcome::Unauthorized(UnauthorizedReason::TokenExpired)
        );
        assert_eq!(
            c("AuthorizationUnsuccessful"),
            ApiOutcome::Unauthorized(UnauthorizedReason::AuthorizationUnsuccessful)
        );
        assert_eq!(
            c("AuthenticationUnsuccessful"),
            ApiOutcome::Unauthorized(UnauthorizedReason::AuthenticationUnsuccessful)
        );
        assert_eq!(
            c("Something new"),
            ApiOutcome::Unauthorized(UnauthorizedReason::Other)
        );
        // The seeds' variant with typographic quotes is not JSON: the text itself is read.
        assert_eq!(
            classify_api(
                401,
                "AuthenticationUnsuccessful: Status 401 — Unauthorized".as_bytes(),
                None
            ),
            ApiOutcome::Unauthorized(UnauthorizedReason::AuthenticationUnsuccessful)
        );
        assert_eq!(
            classify_api(401, b"", None),
            ApiOutcome::Unauthorized(UnauthorizedReason::Other)
        );
    }

    #[test]
    fn forbidden_rate_limits_and_other_statuses() {
        assert_eq!(
            classify_api(
                403,
                br#"{"Title":"Forbidden","Status":403,"Detail":"AuthenticationUnsuccessful"}"#,
                None
            ),
            ApiOutcome::Forbidden
        );
        assert_eq!(
            classify_api(429, b"", Some("minute")),
            ApiOutcome::RateLimited(RateLimitProblem::Minute)
        );
        assert_eq!(
            classify_api(429, b"", Some("Day")),
            ApiOutcome::RateLimited(RateLimitProblem::Day)
        );
        assert_eq!(
            classify_api(429, b"", Some("appminute")),
            ApiOutcome::RateLimited(RateLimitProblem::AppMinute)
        );
        assert_eq!(
            classify_api(429, b"", None),
            ApiOutcome::RateLimited(RateLimitProblem::Other)
        );
        assert_eq!(classify_api(200, b"{}", None), ApiOutcome::Ok);
        assert_eq!(classify_api(500, b"", None), ApiOutcome::OtherStatus);
    }
}
