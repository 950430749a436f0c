//! Provider profiles: token lifetimes and rotation rules per OAuth provider.
//!
//! Xero is built in (access token 30 min, refresh token 60 days from its last use, rotation
//! with a 30 min grace period for the previous token; see `../shared/XERO.md`). Every lifetime
//! can be overridden per source, which is also how an unverified lifetime is corrected.

use chrono::Duration;
use serde::Deserialize;

/// The providers the exporter knows. Adding one is a variant here plus its profile below;
/// the compiler finds every other place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    Xero,
}

impl ProviderKind {
    pub const ALL: &'static [ProviderKind] = &[ProviderKind::Xero];

    /// The value of the `provider` label.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Xero => "xero",
        }
    }

    /// The built-in profile.
    pub fn profile(self) -> ProviderProfile {
        match self {
            ProviderKind::Xero => ProviderProfile {
                kind: self,
                access_token_lifetime: Duration::minutes(30),
                refresh_token_idle_lifetime: Duration::days(60),
                rotates_refresh_token: true,
                rotation_grace_period: Duration::minutes(30),
            },
        }
    }
}

/// Lifetimes that turn stored timestamps into expiries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderProfile {
    pub kind: ProviderKind,
    /// How long an access token is valid after it is issued.
    pub access_token_lifetime: Duration,
    /// How long a refresh token stays valid without being used (the clock restarts at every
    /// successful refresh).
    pub refresh_token_idle_lifetime: Duration,
    /// Whether every refresh returns a new refresh token and retires the old one.
    pub rotates_refresh_token: bool,
    /// How long the previous refresh token may still be used after a rotation.
    pub rotation_grace_period: Duration,
}

impl ProviderProfile {
    pub fn name(&self) -> &'static str {
        self.kind.as_str()
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
}
