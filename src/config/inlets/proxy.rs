//! The `proxy` section: the reverse proxy in front of Xero.

use super::{check_source_name, InletInfo};
use crate::config::common::{HumanDuration, Problems};
use crate::config::defaults;
use crate::provider::ProviderKind;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// Settings of the reverse proxy.
#[derive(Debug, Clone, PartialEq)]
pub struct Proxy {
    /// Where the host app sends its Xero calls (`--proxy.listen-address` overrides).
    pub listen_address: Option<String>,
    /// The `source` label of its events.
    pub source: String,
    pub provider: ProviderKind,
    /// Base URL for `/connect/...` (token, revocation).
    pub identity_url: String,
    /// Base URL for everything else (API, `/connections`).
    pub api_url: String,
    /// Deadline for one upstream call.
    pub timeout: Duration,
    /// Web config of the proxy's own listener (`--proxy.web-config.file` overrides).
    pub web_config_file: Option<PathBuf>,
}

impl Default for Proxy {
    /// In front of the real Xero.
    fn default() -> Self {
        Proxy {
            listen_address: None,
            source: defaults::PROXY_SOURCE.into(),
            provider: ProviderKind::Xero,
            identity_url: defaults::PROXY_IDENTITY_URL.into(),
            api_url: defaults::PROXY_API_URL.into(),
            timeout: defaults::PROXY_TIMEOUT,
            web_config_file: None,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProxy {
    /// Listen address of the proxy.
    listen_address: Option<String>,
    /// The `source` label (default `proxy`).
    source: Option<String>,
    /// Provider (default `xero`).
    provider: Option<ProviderKind>,
    /// Default `https://identity.xero.com`.
    identity_url: Option<String>,
    /// Default `https://api.xero.com`.
    api_url: Option<String>,
    /// Default 60s.
    timeout: Option<HumanDuration>,
    /// Web config (TLS, client certificates, basic auth by `Proxy-Authorization`) of the
    /// proxy's listener.
    web_config_file: Option<PathBuf>,
}

impl Proxy {
    pub(super) fn info(&self) -> InletInfo {
        InletInfo {
            key: "proxy.source".into(),
            source: self.source.clone(),
            provider: self.provider,
            persisted: true,
            line: match &self.listen_address {
                Some(a) => format!("Reverse proxy on {a} (source {})", self.source),
                None => format!("Reverse proxy (source {})", self.source),
            },
        }
    }

    pub(super) fn validate(raw: RawProxy, problems: &mut Problems) -> Option<Proxy> {
        for (key, url) in [
            ("identity_url", &raw.identity_url),
            ("api_url", &raw.api_url),
        ] {
            if url
                .as_ref()
                .is_some_and(|u| !(u.starts_with("http://") || u.starts_with("https://")))
            {
                problems.add(
                    format!("proxy.{key}"),
                    "must be an http:// or https:// base URL",
                );
            }
        }
        let d = Proxy::default();
        let source = raw.source.unwrap_or(d.source);
        check_source_name("proxy.source", &source, problems);
        Some(Proxy {
            listen_address: raw.listen_address,
            source,
            provider: raw.provider.unwrap_or(d.provider),
            identity_url: raw
                .identity_url
                .unwrap_or(d.identity_url)
                .trim_end_matches('/')
                .to_string(),
            api_url: raw
                .api_url
                .unwrap_or(d.api_url)
                .trim_end_matches('/')
                .to_string(),
            timeout: raw.timeout.map_or(d.timeout, |t| t.0),
            web_config_file: raw.web_config_file,
        })
    }
}
