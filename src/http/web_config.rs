//! `--web.config.file`: the Prometheus exporter-toolkit web configuration (TLS with client
//! certificates, bcrypt basic auth, security headers), so that a file `promtool check
//! web-config` accepts works unchanged. No Rust crate implements the format; this module does,
//! on rustls (ring) and the `bcrypt` crate.
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: server.crt          # paths are relative to this file
//!   key_file: server.key
//!   client_auth_type: RequireAndVerifyClientCert
//!   client_ca_file: ca.crt
//!   client_allowed_sans: [prometheus.monitoring.svc]
//!   min_version: TLS12             # TLS10 and TLS11 are raised to TLS12 (rustls)
//!   max_version: TLS13
//!   cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]   # TLS 1.2; TLS 1.3 suites always on
//!   curve_preferences: [X25519, CurveP256]
//!   prefer_server_cipher_suites: true
//! http_server_config:
//!   http2: true
//!   headers: {Strict-Transport-Security: max-age=31536000, X-Frame-Options: deny}
//! basic_auth_users:
//!   prometheus: $2y$10$...          # bcrypt hash (htpasswd -nBC 10 "" | tr -d ':\n')
//! ```
//! The file is read again when it changes (checked at each new connection), so certificates
//! and users rotate without a restart; a changed file that does not load is logged and the last
//! good one stays in force.

use crate::secret::Secret;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Security headers the format allows, as exporter-toolkit does.
const ALLOWED_HEADERS: [&str; 5] = [
    "Strict-Transport-Security",
    "X-Content-Type-Options",
    "X-Frame-Options",
    "X-XSS-Protection",
    "Content-Security-Policy",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebConfig {
    tls_server_config: Option<RawTls>,
    http_server_config: Option<RawHttp>,
    basic_auth_users: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    client_auth_type: Option<String>,
    client_ca_file: Option<PathBuf>,
    client_allowed_sans: Option<Vec<String>>,
    min_version: Option<String>,
    max_version: Option<String>,
    cipher_suites: Option<Vec<String>>,
    curve_preferences: Option<Vec<String>>,
    prefer_server_cipher_suites: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    http2: Option<bool>,
    headers: Option<BTreeMap<String, String>>,
}

/// A loaded, validated web config.
pub struct WebConfig {
    /// TLS, when `tls_server_config` is set.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Whether HTTP/2 is offered (over TLS, by ALPN).
    pub http2: bool,
    /// Headers added to every response.
    pub headers: Vec<(axum::http::HeaderName, axum::http::HeaderValue)>,
    /// User to bcrypt hash; empty means no basic auth.
    pub users: BTreeMap<String, Secret>,
    /// A hash of the highest cost among the users', checked for unknown users so that they
    /// take as long as known ones.
    pub dummy_hash: Option<Secret>,
    /// The files it read besides itself (certificate, key, client CAs): a change to any of
    /// them reloads it.
    pub files: Vec<PathBuf>,
}

impl WebConfig {
    /// What it sets up, for `--config.check` (never a secret): `TLS, basic auth (2 users)`.
    pub fn describe(&self) -> String {
        format!(
            "{}{}",
            if self.tls.is_some() {
                "TLS"
            } else {
                "plain HTTP"
            },
            if self.users.is_empty() {
                String::new()
            } else {
                format!(", basic auth ({} users)", self.users.len())
            }
        )
    }
}

impl std::fmt::Debug for WebConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebConfig")
            .field("tls", &self.tls.is_some())
            .field("http2", &self.http2)
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Every problem of a web config file, each with its key.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {}", problems.join("; "))]
pub struct WebConfigError {
    pub file: String,
    pub problems: Vec<String>,
}

fn tls_version(v: &str) -> Option<u8> {
    match v {
        "TLS10" => Some(10),
        "TLS11" => Some(11),
        "TLS12" => Some(12),
        "TLS13" => Some(13),
        _ => None,
    }
}

/// Go's name of a TLS 1.2 cipher suite, mapped to rustls (ring); `Err` for suites Go knows and
/// rustls does not implement (CBC and static-RSA suites).
fn cipher_suite(name: &str) -> Option<Result<rustls::SupportedCipherSuite, ()>> {
    use rustls::crypto::ring::cipher_suite as cs;
    Some(Ok(match name {
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256" => cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384" => cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305"
        | "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256" => {
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        }
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256" => cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384" => cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305" | "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256" => {
            cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
        }
        n if n.starts_with("TLS_")
            && (n.contains("_CBC_")
                || n.starts_with("TLS_RSA_")
                || n.contains("RC4")
                || n.contains("3DES")) =>
        {
            return Some(Err(()))
        }
        _ => return None,
    }))
}

fn curve(name: &str) -> Option<Result<&'static dyn rustls::crypto::SupportedKxGroup, ()>> {
    use rustls::crypto::ring::kx_group;
    Some(Ok(match name {
        "X25519" => kx_group::X25519,
        "CurveP256" => kx_group::SECP256R1,
        "CurveP384" => kx_group::SECP384R1,
        "CurveP521" => return Some(Err(())),
        _ => return None,
    }))
}

/// Subject alternative names of a certificate: DNS names, IP addresses, emails and URIs.
fn sans(cert: &CertificateDer<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, c)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return Vec::new();
    };
    let Ok(Some(ext)) = c.subject_alternative_name() else {
        return Vec::new();
    };
    ext.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(s) | GeneralName::RFC822Name(s) | GeneralName::URI(s) => {
                Some(s.to_string())
            }
            GeneralName::IPAddress(b) => match b.len() {
                4 => Some(std::net::IpAddr::from(<[u8; 4]>::try_from(*b).ok()?).to_string()),
                16 => Some(std::net::IpAddr::from(<[u8; 16]>::try_from(*b).ok()?).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// Client certificates: verified against the CA (or only requested, as Go's
/// `RequestClientCert` and `RequireAnyClientCert` do), then checked against the allowed SANs.
#[derive(Debug)]
struct ClientVerifier {
    /// `None`: certificates are requested but not verified.
    inner: Option<Arc<dyn ClientCertVerifier>>,
    mandatory: bool,
    allowed_sans: Vec<String>,
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner
            .as_ref()
            .map(|i| i.root_hint_subjects())
            .unwrap_or(&[])
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if let Some(inner) = &self.inner {
            inner.verify_client_cert(end_entity, intermediates, now)?;
        }
        if !self.allowed_sans.is_empty()
            && !sans(end_entity)
                .iter()
                .any(|s| self.allowed_sans.contains(s))
        {
            return Err(rustls::Error::General(
                "the client certificate has no allowed subject alternative name".into(),
            ));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Load and validate a web config file; every problem is reported.
pub fn load(path: &Path) -> Result<WebConfig, WebConfigError> {
    let file = path.display().to_string();
    let fail = |problems: Vec<String>| WebConfigError {
        file: file.clone(),
        problems,
    };
    let text =
        std::fs::read_to_string(path).map_err(|e| fail(vec![format!("cannot read: {e}")]))?;
    parse(&text, path.parent().unwrap_or(Path::new(".")), &file)
}

/// Parse a web config; relative paths are resolved against `dir`.
pub fn parse(text: &str, dir: &Path, file: &str) -> Result<WebConfig, WebConfigError> {
    let fail = |problems: Vec<String>| WebConfigError {
        file: file.to_string(),
        problems,
    };
    let raw: RawWebConfig = if text.trim().is_empty() {
        RawWebConfig {
            tls_server_config: None,
            http_server_config: None,
            basic_auth_users: None,
        }
    } else {
        let options = serde_saphyr::options! { strict_booleans: true };
        serde_saphyr::from_str_with_options(text, options).map_err(|e| fail(vec![e.to_string()]))?
    };
    let mut problems = Vec::new();
    let http2 = raw
        .http_server_config
        .as_ref()
        .and_then(|h| h.http2)
        .unwrap_or(true);
    let mut headers = Vec::new();
    for (k, v) in raw
        .http_server_config
        .as_ref()
        .and_then(|h| h.headers.clone())
        .unwrap_or_default()
    {
        if !ALLOWED_HEADERS.iter().any(|a| a.eq_ignore_ascii_case(&k)) {
            problems.push(format!(
                "http_server_config.headers.{k}: this header can not be configured (allowed: {})",
                ALLOWED_HEADERS.join(", ")
            ));
            continue;
        }
        match (
            axum::http::HeaderName::try_from(k.as_str()),
            axum::http::HeaderValue::try_from(v.as_str()),
        ) {
            (Ok(n), Ok(v)) => headers.push((n, v)),
            _ => problems.push(format!(
                "http_server_config.headers.{k}: not a valid header value"
            )),
        }
    }
    let mut users = BTreeMap::new();
    let mut max_cost = 0;
    for (user, hash) in raw.basic_auth_users.unwrap_or_default() {
        match hash.parse::<bcrypt::HashParts>() {
            Ok(parts) => {
                max_cost = max_cost.max(parts.get_cost());
                users.insert(user, Secret::new(hash));
            }
            Err(_) => problems.push(format!(
                "basic_auth_users.{user}: not a bcrypt hash (create one with `htpasswd -nBC 10 \"\" | tr -d ':\\n'`)"
            )),
        }
    }
    let dummy_hash = (max_cost > 0)
        .then(|| bcrypt::hash("oauth-token-exporter unknown user", max_cost).ok())
        .flatten()
        .map(Secret::new);
    let mut files = Vec::new();
    let tls = match raw.tls_server_config {
        None => None,
        Some(t) => {
            for p in [&t.cert_file, &t.key_file, &t.client_ca_file]
                .into_iter()
                .flatten()
            {
                files.push(if p.is_absolute() {
                    p.clone()
                } else {
                    dir.join(p)
                });
            }
            tls(t, dir, http2, &mut problems)
        }
    };
    if !problems.is_empty() {
        return Err(fail(problems));
    }
    Ok(WebConfig {
        tls,
        http2,
        headers,
        users,
        dummy_hash,
        files,
    })
}

fn tls(
    t: RawTls,
    dir: &Path,
    http2: bool,
    problems: &mut Vec<String>,
) -> Option<Arc<rustls::ServerConfig>> {
    let before = problems.len();
    let path = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            dir.join(p)
        }
    };
    let certs: Vec<CertificateDer<'static>> = match &t.cert_file {
        None => {
            problems.push("tls_server_config.cert_file: is required".into());
            Vec::new()
        }
        Some(p) => match CertificateDer::pem_file_iter(path(p))
            .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        {
            Ok(c) if !c.is_empty() => c,
            Ok(_) => {
                problems.push(format!(
                    "tls_server_config.cert_file: {} holds no PEM certificate",
                    p.display()
                ));
                Vec::new()
            }
            Err(e) => {
                problems.push(format!(
                    "tls_server_config.cert_file: cannot read {}: {e}",
                    p.display()
                ));
                Vec::new()
            }
        },
    };
    let key = match &t.key_file {
        None => {
            problems.push("tls_server_config.key_file: is required".into());
            None
        }
        // The key's error never carries its content.
        Some(p) => match PrivateKeyDer::from_pem_file(path(p)) {
            Ok(k) => Some(k),
            Err(e) => {
                problems.push(format!(
                    "tls_server_config.key_file: cannot read a PEM private key from {}: {}",
                    p.display(),
                    match e {
                        rustls::pki_types::pem::Error::Io(io) => io.to_string(),
                        _ => "no valid key in the file".into(),
                    }
                ));
                None
            }
        },
    };
    let min = t.min_version.as_deref().unwrap_or("TLS12");
    let max = t.max_version.as_deref().unwrap_or("TLS13");
    let (min_v, max_v) = (tls_version(min), tls_version(max));
    if min_v.is_none() {
        problems.push(format!(
            "tls_server_config.min_version: unknown TLS version {min:?} (TLS10, TLS11, TLS12, TLS13)"
        ));
    }
    match max_v {
        None => problems.push(format!(
            "tls_server_config.max_version: unknown TLS version {max:?} (TLS10, TLS11, TLS12, TLS13)"
        )),
        Some(v) if v < 12 => problems.push(format!(
            "tls_server_config.max_version: {max} is not supported: rustls implements TLS 1.2 and 1.3"
        )),
        _ => {}
    }
    if let (Some(a), Some(b)) = (min_v, max_v) {
        if a > b {
            problems.push("tls_server_config.min_version: is above max_version".into());
        }
    }
    if min_v.is_some_and(|v| v < 12) {
        tracing::warn!(
            min_version = min,
            "rustls implements TLS 1.2 and 1.3 only: the minimum is TLS12."
        );
    }
    let versions: Vec<&'static rustls::SupportedProtocolVersion> =
        [(12, &rustls::version::TLS12), (13, &rustls::version::TLS13)]
            .into_iter()
            .filter(|(v, _)| min_v.is_none_or(|m| *v >= m.max(12)) && max_v.is_none_or(|m| *v <= m))
            .map(|(_, p)| p)
            .collect();
    let mut provider = rustls::crypto::ring::default_provider();
    if let Some(names) = &t.cipher_suites {
        let mut tls12 = Vec::new();
        for n in names {
            match cipher_suite(n) {
                Some(Ok(s)) => tls12.push(s),
                Some(Err(())) => {
                    tracing::warn!(cipher_suite = %n, "rustls does not implement this cipher suite; it is left out.")
                }
                None => problems.push(format!(
                    "tls_server_config.cipher_suites: unknown cipher suite {n:?}"
                )),
            }
        }
        if tls12.is_empty() && !names.is_empty() && versions.contains(&&rustls::version::TLS12) {
            problems.push("tls_server_config.cipher_suites: none of the listed suites is implemented by rustls (ECDHE with AES-GCM or ChaCha20-Poly1305 are)".into());
        }
        provider
            .cipher_suites
            .retain(|s| s.version() == &rustls::version::TLS13 || tls12.contains(s));
    }
    if let Some(names) = &t.curve_preferences {
        let mut groups = Vec::new();
        for n in names {
            match curve(n) {
                Some(Ok(g)) => groups.push(g),
                Some(Err(())) => {
                    tracing::warn!(curve = %n, "rustls (ring) does not implement this curve; it is left out.")
                }
                None => problems.push(format!(
                    "tls_server_config.curve_preferences: unknown curve {n:?}"
                )),
            }
        }
        if groups.is_empty() && !names.is_empty() {
            problems.push("tls_server_config.curve_preferences: none of the listed curves is implemented (X25519, CurveP256, CurveP384 are)".into());
        }
        if !groups.is_empty() {
            provider.kx_groups = groups;
        }
    }
    let provider = Arc::new(provider);
    let auth = t.client_auth_type.as_deref().unwrap_or("NoClientCert");
    let (verify, mandatory) = match auth {
        "" | "NoClientCert" => (None, false),
        "RequestClientCert" => (Some(false), false),
        "RequireAnyClientCert" | "RequireClientCert" => (Some(false), true),
        "VerifyClientCertIfGiven" => (Some(true), false),
        "RequireAndVerifyClientCert" => (Some(true), true),
        other => {
            problems.push(format!("tls_server_config.client_auth_type: invalid {other:?} (NoClientCert, RequestClientCert, RequireAnyClientCert, VerifyClientCertIfGiven, RequireAndVerifyClientCert)"));
            (None, false)
        }
    };
    if t.client_ca_file.is_some() && verify.is_none() && problems.len() == before {
        problems.push("tls_server_config.client_ca_file: client CAs are configured without a client_auth_type".into());
    }
    if verify == Some(true) && t.client_ca_file.is_none() {
        problems.push(format!(
            "tls_server_config.client_ca_file: is required with client_auth_type {auth}"
        ));
    }
    let allowed_sans = t.client_allowed_sans.unwrap_or_default();
    if !allowed_sans.is_empty() && verify != Some(true) {
        problems.push("tls_server_config.client_allowed_sans: needs client certificates that are verified (VerifyClientCertIfGiven or RequireAndVerifyClientCert)".into());
    }
    let mut inner: Option<Arc<dyn ClientCertVerifier>> = None;
    if let (Some(true), Some(ca)) = (verify, &t.client_ca_file) {
        let mut roots = rustls::RootCertStore::empty();
        match CertificateDer::pem_file_iter(path(ca)).and_then(|i| i.collect::<Result<Vec<_>, _>>())
        {
            Ok(cas) => {
                for c in cas {
                    if roots.add(c).is_err() {
                        problems.push(format!(
                            "tls_server_config.client_ca_file: {} holds a certificate that is not a valid CA",
                            ca.display()
                        ));
                    }
                }
                if roots.is_empty() {
                    problems.push(format!(
                        "tls_server_config.client_ca_file: {} holds no PEM certificate",
                        ca.display()
                    ));
                }
            }
            Err(e) => problems.push(format!(
                "tls_server_config.client_ca_file: cannot read {}: {e}",
                ca.display()
            )),
        }
        if !roots.is_empty() {
            let b = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            let b = if mandatory {
                b
            } else {
                b.allow_unauthenticated()
            };
            match b.build() {
                Ok(v) => inner = Some(v),
                Err(e) => problems.push(format!("tls_server_config.client_ca_file: {e}")),
            }
        }
    }
    if problems.len() != before {
        return None;
    }
    let builder = match rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
    {
        Ok(b) => b,
        Err(e) => {
            problems.push(format!("tls_server_config: {e}"));
            return None;
        }
    };
    let builder = match verify {
        None => builder.with_no_client_auth(),
        Some(_) => builder.with_client_cert_verifier(Arc::new(ClientVerifier {
            inner,
            mandatory,
            allowed_sans,
            provider: provider.clone(),
        })),
    };
    let mut config = match builder.with_single_cert(certs, key?) {
        Ok(c) => c,
        Err(e) => {
            problems.push(format!(
                "tls_server_config.key_file: the certificate and key do not make a usable pair: {e}"
            ));
            return None;
        }
    };
    config.ignore_client_order = t.prefer_server_cipher_suites.unwrap_or(true);
    config.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Some(Arc::new(config))
}

/// How often the files are read again to see whether they changed.
const RECHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// SHA-256 of the web config's bytes and of every file it read (`None` where a file cannot be
/// read): a change of content is a change, whatever the modification time and size say (a
/// password rotated with `cp -p` keeps both).
fn fingerprint(path: &Path, files: &[PathBuf]) -> Option<[u8; 32]> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(std::fs::read(path).ok()?);
    for f in files {
        h.update(f.as_os_str().as_encoded_bytes());
        match std::fs::read(f) {
            Ok(b) => h.update(b),
            Err(_) => h.update(b"\0unreadable"),
        }
    }
    Some(h.finalize().into())
}

struct State {
    fingerprint: Option<[u8; 32]>,
    checked: std::time::Instant,
    config: Arc<WebConfig>,
}

/// A web config file, read again when its content (or a file it names) changes. A file that
/// becomes unreadable, empty or invalid never replaces the config in force: protection is only
/// lowered by a valid file that says so.
pub struct WebConfigHandle {
    path: PathBuf,
    state: Mutex<State>,
}

impl WebConfigHandle {
    /// Load the file; fails (with every problem) when it does not load.
    pub fn open(path: &Path) -> Result<Arc<WebConfigHandle>, WebConfigError> {
        let cfg = load(path)?;
        Ok(Arc::new(WebConfigHandle {
            path: path.to_path_buf(),
            state: Mutex::new(State {
                fingerprint: fingerprint(path, &cfg.files),
                checked: std::time::Instant::now(),
                config: Arc::new(cfg),
            }),
        }))
    }

    /// The config in force, reloaded first if its content changed (checked at most once a
    /// second).
    pub fn current(&self) -> Arc<WebConfig> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.checked.elapsed() >= RECHECK {
            state.checked = std::time::Instant::now();
            let now = fingerprint(&self.path, &state.config.files);
            if now != state.fingerprint {
                state.fingerprint = now;
                self.reload(&mut state);
            }
        }
        state.config.clone()
    }

    fn reload(&self, state: &mut State) {
        let file = self.path.display().to_string();
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(file, error = %e, "The web config cannot be read; the previous one stays in force.");
                return;
            }
        };
        if text.trim().is_empty() {
            tracing::error!(file, "The web config became empty; the previous one stays in force (to turn TLS and authentication off, write a valid file that says so).");
            return;
        }
        match parse(&text, self.path.parent().unwrap_or(Path::new(".")), &file) {
            Ok(c) => {
                let old = &state.config;
                if !old.users.is_empty() && c.users.is_empty() {
                    tracing::warn!(
                        file,
                        "Basic authentication is switched off by the new web config."
                    );
                }
                if old.tls.is_some() && c.tls.is_none() {
                    tracing::warn!(file, "TLS is switched off by the new web config.");
                }
                tracing::info!(file, "Web config reloaded.");
                // The files it reads now are the ones watched.
                state.fingerprint = fingerprint(&self.path, &c.files);
                state.config = Arc::new(c);
            }
            Err(e) => {
                tracing::error!(error = %e, "The changed web config does not load; the previous one stays in force.");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(yaml: &str) -> String {
        parse(yaml, Path::new("/nonexistent"), "web.yml")
            .map(|_| String::new())
            .unwrap_or_else(|e| e.to_string())
    }

    #[test]
    fn an_empty_file_means_plain_http_without_auth() {
        let c = parse("", Path::new("."), "web.yml").unwrap();
        assert!(c.tls.is_none() && c.users.is_empty() && c.http2);
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let p = problems(
            "tls_server_config:\n  client_auth_type: Bogus\n  min_version: TLS9\n  cipher_suites: [NOPE]\nhttp_server_config:\n  headers: {Foo: bar}\nbasic_auth_users:\n  u: notbcrypt\n",
        );
        for want in [
            "web.yml:",
            "tls_server_config.cert_file: is required",
            "tls_server_config.key_file: is required",
            "tls_server_config.client_auth_type: invalid \"Bogus\"",
            "tls_server_config.min_version: unknown TLS version \"TLS9\"",
            "tls_server_config.cipher_suites: unknown cipher suite \"NOPE\"",
            "http_server_config.headers.Foo: this header can not be configured",
            "basic_auth_users.u: not a bcrypt hash",
        ] {
            assert!(p.contains(want), "{want:?} in {p}");
        }
    }

    #[test]
    fn unknown_keys_are_refused_as_promtool_does() {
        let p = problems("tls_server_config:\n  cert: x\n");
        assert!(p.contains("cert"), "{p}");
    }

    #[test]
    fn client_cas_without_a_client_auth_type_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(d.path().join("c.pem"), cert.cert.pem()).unwrap();
        std::fs::write(d.path().join("k.pem"), cert.signing_key.serialize_pem()).unwrap();
        let e = parse(
            "tls_server_config:\n  cert_file: c.pem\n  key_file: k.pem\n  client_ca_file: c.pem\n",
            d.path(),
            "web.yml",
        )
        .unwrap_err();
        assert!(e.to_string().contains("without a client_auth_type"), "{e}");
        let ok = parse(
            "tls_server_config:\n  cert_file: c.pem\n  key_file: k.pem\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: c.pem\n  client_allowed_sans: [prometheus]\n  min_version: TLS10\n  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA, TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256]\n  curve_preferences: [CurveP521, X25519]\n",
            d.path(),
            "web.yml",
        )
        .unwrap();
        assert!(ok.tls.is_some());
    }

    #[test]
    fn a_bad_key_file_error_never_shows_its_content() {
        let d = tempfile::tempdir().unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(d.path().join("c.pem"), cert.cert.pem()).unwrap();
        std::fs::write(
            d.path().join("k.pem"),
            "-----BEGIN PRIVATE KEY-----\nS3CRETMARKERS3CRETMARKER\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let e = parse(
            "tls_server_config:\n  cert_file: c.pem\n  key_file: k.pem\n",
            d.path(),
            "web.yml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("key_file"), "{e}");
        assert!(!e.contains("S3CRETMARKER"), "{e}");
    }
}
