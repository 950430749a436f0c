//! What an API answer means, as closed enums (`oauth_api_unauthorized_total{reason}`,
//! `oauth_api_rate_limited_total{problem}`). How bodies and headers are read into them is in
//! [`crate::events::classify`]; token-endpoint errors are [`crate::provider::RefreshError`].

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

impl ApiOutcome {
    /// A 401 that means the token set is dead (not merely an access token used too late): it
    /// feeds the failing-connections detector.
    pub fn is_dead_token(self) -> bool {
        matches!(self, ApiOutcome::Unauthorized(r) if r != UnauthorizedReason::TokenExpired)
    }
}
