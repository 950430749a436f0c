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
    /// A CA certificate (PEM) trusted for the upstream besides the system's roots.
    pub upstream_ca_file: Option<PathBuf>,
    /// `CONNECT` interception; without it a `CONNECT` is refused.
    pub intercept: Option<Intercept>,
}

/// `CONNECT` interception: the proxy as the app's `HTTPS_PROXY`.
#[derive(Debug, Clone, PartialEq)]
pub struct Intercept {
    /// The CA that issues the intercepted hosts' certificates (PEM), which the app trusts.
    pub ca_cert_file: PathBuf,
    /// Its private key (PEM; a secret: readable by the exporter only).
    pub ca_key_file: PathBuf,
    /// Hosts intercepted on port 443 (lower case); every other `CONNECT` is tunnelled.
    pub hosts: Vec<String>,
    /// Lifetime of each leaf certificate issued.
    pub leaf_lifetime: Duration,
    /// Most tunnels open at once.
    pub max_tunnels: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIntercept {
    ca_cert_file: PathBuf,
    ca_key_file: PathBuf,
    hosts: Option<Vec<String>>,
    leaf_lifetime: Option<HumanDuration>,
    max_tunnels: Option<usize>,
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
            upstream_ca_file: None,
            intercept: None,
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
    /// Extra CA trusted for the upstream.
    upstream_ca_file: Option<PathBuf>,
    /// `CONNECT` interception.
    intercept: Option<RawIntercept>,
}

impl Proxy {
    pub(super) fn info(&self) -> InletInfo {
        InletInfo {
            key: "proxy.source".into(),
            source: self.source.clone(),
            provider: self.provider,
            persisted: true,
            line: match &self.listen_address {
                Some(a) if self.intercept.is_some() => format!(
                    "Reverse proxy on {a}, intercepting CONNECT to {} (source {})",
                    self.intercept
                        .iter()
                        .flat_map(|i| &i.hosts)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", "),
                    self.source
                ),
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
        let intercept = raw.intercept.map(|i| {
            let hosts: Vec<String> = i.hosts.unwrap_or_else(|| {
                defaults::INTERCEPT_HOSTS
                    .iter()
                    .map(|h| h.to_string())
                    .collect()
            });
            for h in &hosts {
                let valid = !h.is_empty()
                    && h.len() <= 253
                    && h.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-'
                    });
                if !valid {
                    problems.add(
                        "proxy.intercept.hosts",
                        format!("{h:?} is not a lower-case DNS name"),
                    );
                }
            }
            if hosts.is_empty() {
                problems.add("proxy.intercept.hosts", "must name at least one host");
            }
            let leaf_lifetime = i
                .leaf_lifetime
                .map_or(defaults::INTERCEPT_LEAF_LIFETIME, |t| t.0);
            if !(Duration::from_secs(3600)..=Duration::from_secs(30 * 86400))
                .contains(&leaf_lifetime)
            {
                problems.add(
                    "proxy.intercept.leaf_lifetime",
                    "must be between 1h and 30d (leaf certificates are meant to be short-lived)",
                );
            }
            let max_tunnels = i.max_tunnels.unwrap_or(defaults::INTERCEPT_MAX_TUNNELS);
            if max_tunnels == 0 {
                problems.add("proxy.intercept.max_tunnels", "must be at least 1");
            }
            Intercept {
                ca_cert_file: i.ca_cert_file,
                ca_key_file: i.ca_key_file,
                hosts,
                leaf_lifetime,
                max_tunnels,
            }
        });
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
            upstream_ca_file: raw.upstream_ca_file,
            intercept,
        })
    }
}
