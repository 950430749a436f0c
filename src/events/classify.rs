//! Classification of what the host app meets into the closed enums of the catalogue, before
//! anything is counted. Token-endpoint errors: [`crate::provider::classify_refresh_error`].

/// Why an API call was refused with 401 (`oauth_api_unauthorized_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnauthorizedReason {
    TokenExpired,
    AuthorizationUnsuccessful,
    AuthenticationUnsuccessful,
    Other,
}

impl UnauthorizedReason {
    pub const ALL: [UnauthorizedReason; 4] = [
        UnauthorizedReason::TokenExpired,
        UnauthorizedReason::AuthorizationUnsuccessful,
        UnauthorizedReason::AuthenticationUnsuccessful,
        UnauthorizedReason::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UnauthorizedReason::TokenExpired => "token_expired",
            UnauthorizedReason::AuthorizationUnsuccessful => "authorization_unsuccessful",
            UnauthorizedReason::AuthenticationUnsuccessful => "authentication_unsuccessful",
            UnauthorizedReason::Other => "other",
        }
    }

    /// From Xero's `Detail` (or the whole problem body): the prefix tells the cause.
    pub fn from_detail(detail: &str) -> Self {
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

    /// From a whole 401 body: Xero's problem JSON (`Detail`), or the text itself.
    pub fn from_body(body: &[u8]) -> Self {
        let detail = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("Detail").and_then(|d| d.as_str()).map(str::to_string));
        match detail {
            Some(d) => Self::from_detail(&d),
            None => Self::from_detail(&String::from_utf8_lossy(body)),
        }
    }
}

/// Which limit a 429 hit (`oauth_api_rate_limited_total{problem}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RateLimitProblem {
    Minute,
    Day,
    Concurrent,
    AppMinute,
    Other,
}

impl RateLimitProblem {
    pub const ALL: [RateLimitProblem; 5] = [
        RateLimitProblem::Minute,
        RateLimitProblem::Day,
        RateLimitProblem::Concurrent,
        RateLimitProblem::AppMinute,
        RateLimitProblem::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RateLimitProblem::Minute => "minute",
            RateLimitProblem::Day => "day",
            RateLimitProblem::Concurrent => "concurrent",
            RateLimitProblem::AppMinute => "app_minute",
            RateLimitProblem::Other => "other",
        }
    }

    /// From Xero's `X-Rate-Limit-Problem` header (`minute`, `day`; others unverified).
    pub fn from_header(v: Option<&str>) -> Self {
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
}

/// What one API response means for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiOutcome {
    Ok,
    Unauthorized(UnauthorizedReason),
    Forbidden,
    RateLimited(RateLimitProblem),
    /// Any other status: counted as a request only.
    OtherStatus,
}

/// Classify an API response by status, Xero's problem body and the rate-limit header.
pub fn classify_api(status: u16, body: &[u8], rate_limit_problem: Option<&str>) -> ApiOutcome {
    match status {
        200..=299 => ApiOutcome::Ok,
        401 => ApiOutcome::Unauthorized(UnauthorizedReason::from_body(body)),
        403 => ApiOutcome::Forbidden,
        429 => ApiOutcome::RateLimited(RateLimitProblem::from_header(rate_limit_problem)),
        _ => ApiOutcome::OtherStatus,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
