//! Provider profiles: token lifetimes, rotation rules and error classification per OAuth
//! provider.
//!
//! Lifetimes come from `../shared/XERO.md`. Every lifetime can be overridden per source, which
//! is also how an unverified one is corrected; the README marks which are documented by the
//! provider and which are not.

use chrono::Duration;
use serde::Deserialize;

/// The providers the exporter knows. Adding one is a variant here plus its profile below;
/// the compiler finds every other place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    Xero,
    Quickbooks,
    Sage,
    Microsoft,
    Google,
    Box,
    /// Lifetimes given in the config (`access_token_lifetime`, `refresh_token_lifetime`).
    Custom,
}

impl ProviderKind {
    pub const ALL: [ProviderKind; 7] = [
        ProviderKind::Xero,
        ProviderKind::Quickbooks,
        ProviderKind::Sage,
        ProviderKind::Microsoft,
        ProviderKind::Google,
        ProviderKind::Box,
        ProviderKind::Custom,
    ];

    /// The value of the `provider` label (a custom profile may be renamed in the config).
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Xero => "xero",
            ProviderKind::Quickbooks => "quickbooks",
            ProviderKind::Sage => "sage",
            ProviderKind::Microsoft => "microsoft",
            ProviderKind::Google => "google",
            ProviderKind::Box => "box",
            ProviderKind::Custom => "custom",
        }
    }

    /// The profile for a provider named by another system (Nango's `provider`, an app's
    /// column): its name exactly, or its name followed by `-` (`quickbooks-sandbox`,
    /// `google-calendar`, `microsoft-teams`), any case. `None` for names the exporter has no
    /// profile for (never `Custom`).
    pub fn from_provider_name(name: &str) -> Option<ProviderKind> {
        let name = name.trim().to_ascii_lowercase();
        ProviderKind::ALL
            .into_iter()
            .filter(|k| *k != ProviderKind::Custom)
            .find(|k| name == k.as_str() || name.starts_with(&format!("{}-", k.as_str())))
    }

    /// The built-in profile. `Custom` has no lifetimes of its own: the config must give both.
    pub fn profile(self) -> ProviderProfile {
        let p = |access: Duration,
                 idle: Duration,
                 max: Option<Duration>,
                 rotates: bool,
                 grace: Duration,
                 verified: bool| ProviderProfile {
            kind: self,
            name: self.as_str(),
            access_token_lifetime: access,
            refresh_token_idle_lifetime: idle,
            refresh_token_max_lifetime: max,
            rotates_refresh_token: rotates,
            rotation_grace_period: grace,
            lifetimes_documented: verified,
        };
        match self {
            // 30 min access; refresh 60 days from last use; rotation with a 30 min grace period.
            ProviderKind::Xero => p(
                Duration::minutes(30),
                Duration::days(60),
                None,
                true,
                Duration::minutes(30),
                true,
            ),
            // 1 h access; refresh 100 days rolling; 5-year hard maximum from authorisation.
            ProviderKind::Quickbooks => p(
                Duration::hours(1),
                Duration::days(100),
                Some(Duration::days(5 * 365)),
                true,
                Duration::zero(),
                true,
            ),
            // 5 min access; refresh 31 days.
            ProviderKind::Sage => p(
                Duration::minutes(5),
                Duration::days(31),
                None,
                true,
                Duration::zero(),
                false,
            ),
            // ~1 h access; refresh 90 days (24 h for single-page apps: override per source).
            ProviderKind::Microsoft => p(
                Duration::hours(1),
                Duration::days(90),
                None,
                true,
                Duration::zero(),
                true,
            ),
            // 1 h access; refresh invalid after 6 months unused (7 days for apps in testing).
            ProviderKind::Google => p(
                Duration::hours(1),
                Duration::days(183),
                None,
                false,
                Duration::zero(),
                true,
            ),
            // 60 min access; refresh 60 days, single use.
            ProviderKind::Box => p(
                Duration::minutes(60),
                Duration::days(60),
                None,
                true,
                Duration::zero(),
                true,
            ),
            ProviderKind::Custom => p(
                Duration::zero(),
                Duration::zero(),
                None,
                true,
                Duration::zero(),
                false,
            ),
        }
    }
}

/// Lifetimes that turn stored timestamps into expiries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderProfile {
    pub kind: ProviderKind,
    /// The `provider` label value.
    pub name: &'static str,
    /// How long an access token is valid after it is issued.
    pub access_token_lifetime: Duration,
    /// How long a refresh token stays valid without being used (the clock restarts at every
    /// successful refresh).
    pub refresh_token_idle_lifetime: Duration,
    /// Longest a refresh-token chain lives from the first authorisation, however often it is
    /// used (QuickBooks: 5 years). Needs the `authorized_at` field.
    pub refresh_token_max_lifetime: Option<Duration>,
    /// Whether every refresh returns a new refresh token and retires the old one.
    pub rotates_refresh_token: bool,
    /// How long the previous refresh token may still be used after a rotation.
    pub rotation_grace_period: Duration,
    /// Whether the provider documents these lifetimes (else: configurable, marked in docs).
    pub lifetimes_documented: bool,
}

impl ProviderProfile {
    pub fn name(&self) -> &'static str {
        self.name
    }
}

/// Outcome of a failed refresh, as the closed `error` label of
/// `oauth_token_refresh_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefreshError {
    InvalidGrant,
    InvalidClient,
    UnauthorizedClient,
    UnsupportedGrantType,
    ServerError,
    Network,
    Other,
}

impl RefreshError {
    pub const ALL: [RefreshError; 7] = [
        RefreshError::InvalidGrant,
        RefreshError::InvalidClient,
        RefreshError::UnauthorizedClient,
        RefreshError::UnsupportedGrantType,
        RefreshError::ServerError,
        RefreshError::Network,
        RefreshError::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RefreshError::InvalidGrant => "invalid_grant",
            RefreshError::InvalidClient => "invalid_client",
            RefreshError::UnauthorizedClient => "unauthorized_client",
            RefreshError::UnsupportedGrantType => "unsupported_grant_type",
            RefreshError::ServerError => "server_error",
            RefreshError::Network => "network",
            RefreshError::Other => "other",
        }
    }
}

/// Classify a token-endpoint answer by its OAuth `error` field (RFC 6749 §5.2), never by the
/// HTTP status alone: providers send `invalid_grant` with 400, 401 or 403. A 5xx or a body that
/// is not an OAuth error is `server_error` (5xx) or `other`. Never looks at token values.
pub fn classify_refresh_error(status: u16, body: &[u8]) -> RefreshError {
    #[derive(Deserialize)]
    struct OAuthError {
        error: Option<String>,
    }
    let error = serde_json::from_slice::<OAuthError>(body)
        .ok()
        .and_then(|e| e.error)
        .or_else(|| {
            // Some endpoints answer form-encoded or plain text: `error=invalid_grant`.
            std::str::from_utf8(body).ok().and_then(|s| {
                s.split('&')
                    .find_map(|kv| kv.trim().strip_prefix("error="))
                    .map(str::to_string)
            })
        });
    match error.as_deref().map(str::trim) {
        Some("invalid_grant") => RefreshError::InvalidGrant,
        Some("invalid_client") => RefreshError::InvalidClient,
        Some("unauthorized_client") => RefreshError::UnauthorizedClient,
        Some("unsupported_grant_type") => RefreshError::UnsupportedGrantType,
        Some("server_error") | Some("temporarily_unavailable") => RefreshError::ServerError,
        Some(_) => RefreshError::Other,
        None if status >= 500 => RefreshError::ServerError,
        None => RefreshError::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xero_profile_matches_the_documented_lifetimes() {
        let p = ProviderKind::Xero.profile();
        assert_eq!(p.access_token_lifetime.num_seconds(), 1800);
        assert_eq!(p.refresh_token_idle_lifetime.num_days(), 60);
        assert!(p.rotates_refresh_token);
        assert_eq!(p.rotation_grace_period.num_minutes(), 30);
        assert_eq!(p.name(), "xero");
    }

    #[test]
    fn other_profiles_carry_their_own_windows() {
        let days = |k: ProviderKind| k.profile().refresh_token_idle_lifetime.num_days();
        assert_eq!(days(ProviderKind::Quickbooks), 100);
        assert_eq!(
            ProviderKind::Quickbooks
                .profile()
                .refresh_token_max_lifetime
                .map(|d| d.num_days()),
            Some(1825)
        );
        assert_eq!(days(ProviderKind::Sage), 31);
        assert_eq!(
            ProviderKind::Sage
                .profile()
                .access_token_lifetime
                .num_minutes(),
            5
        );
        assert_eq!(days(ProviderKind::Microsoft), 90);
        assert_eq!(days(ProviderKind::Google), 183);
        assert!(!ProviderKind::Google.profile().rotates_refresh_token);
        assert_eq!(days(ProviderKind::Box), 60);
        for k in ProviderKind::ALL {
            assert_eq!(k.profile().name(), k.as_str());
        }
    }

    #[test]
    fn token_endpoint_errors_of_real_providers_are_classified_by_the_oauth_error_field() {
        let c = |status, body: &str| classify_refresh_error(status, body.as_bytes());
        // Xero: no error_description.
        assert_eq!(
            c(400, r#"{"error":"invalid_grant"}"#),
            RefreshError::InvalidGrant
        );
        assert_eq!(
            c(400, r#"{"error":"invalid_client"}"#),
            RefreshError::InvalidClient
        );
        assert_eq!(
            c(400, r#"{"error":"unsupported_grant_type"}"#),
            RefreshError::UnsupportedGrantType
        );
        assert_eq!(
            c(400, r#"{"error":"unauthorized_client"}"#),
            RefreshError::UnauthorizedClient
        );
        // Google.
        assert_eq!(
            c(
                400,
                r#"{"error": "invalid_grant", "error_description": "Token has been expired or revoked."}"#
            ),
            RefreshError::InvalidGrant
        );
        // Microsoft Entra ID, inactivity expiry (AADSTS700082).
        assert_eq!(
            c(
                400,
                r#"{"error":"invalid_grant","error_description":"AADSTS700082: The refresh token has expired due to inactivity.","error_codes":[700082]}"#
            ),
            RefreshError::InvalidGrant
        );
        // QuickBooks (Intuit) sends invalid_grant with 400; some providers with 401 or 403.
        assert_eq!(
            c(401, r#"{"error":"invalid_grant"}"#),
            RefreshError::InvalidGrant
        );
        assert_eq!(
            c(403, r#"{"error":"invalid_grant"}"#),
            RefreshError::InvalidGrant
        );
        // Form-encoded answers, outages, and bodies that are not OAuth errors.
        assert_eq!(
            c(400, "error=invalid_grant&error_description=expired"),
            RefreshError::InvalidGrant
        );
        assert_eq!(
            c(503, "<html>Service Unavailable</html>"),
            RefreshError::ServerError
        );
        assert_eq!(
            c(503, r#"{"error":"temporarily_unavailable"}"#),
            RefreshError::ServerError
        );
        assert_eq!(c(400, r#"{"error":"invalid_scope"}"#), RefreshError::Other);
        assert_eq!(c(401, "Unauthorized"), RefreshError::Other);
    }
}
