//! `CONNECT` interception: the proxy as an app's `HTTPS_PROXY`, so that an app built on an SDK
//! that cannot be pointed at another base URL (xero-python, xero-node) is watched by setting
//! environment variables only.
//!
//! For a `CONNECT` to one of the configured hosts on port 443 the proxy answers 200, terminates
//! TLS on the tunnel with a leaf certificate for that host issued on the fly from the
//! operator's CA (cached, short-lived), and serves the requests inside with the reverse proxy's
//! own router: they are counted exactly as the reverse proxy counts, and forwarded over
//! verified TLS to the upstream. A `CONNECT` to any other host is tunnelled untouched (bytes
//! copied both ways, nothing read, nothing counted). Tunnels are bounded; TLS handshakes and
//! upstream connects have deadlines. Nothing that passes is logged.

use crate::config::Intercept;
use crate::http::serve::{accept_tls, http1_with};
use axum::body::Body;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
    GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose, NameConstraints, PublicKeyData,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Deadline for the TLS handshake inside an intercepted tunnel, and for reaching the target of
/// a tunnelled one.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Deadline for a request's headers inside an intercepted tunnel (and for an idle keep-alive).
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the interception cannot start: names the file and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum InterceptError {
    #[error("{path}: {cause}")]
    File { path: String, cause: String },
}

/// The CA, the leaf certificates issued from it, and the bound on tunnels.
pub struct Interceptor {
    hosts: Vec<String>,
    issuer: Issuer<'static, KeyPair>,
    ca: CertificateDer<'static>,
    leaf_lifetime: Duration,
    /// Per host: its TLS config and when to issue a new leaf (half its lifetime).
    leaves: Mutex<HashMap<String, (Arc<rustls::ServerConfig>, Instant)>>,
    tunnels: Arc<Semaphore>,
}

impl std::fmt::Debug for Interceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interceptor")
            .field("hosts", &self.hosts)
            .finish_non_exhaustive()
    }
}

fn read(path: &std::path::Path) -> Result<String, InterceptError> {
    std::fs::read_to_string(path).map_err(|e| InterceptError::File {
        path: path.display().to_string(),
        cause: e.to_string(),
    })
}

impl Interceptor {
    /// Load the CA of `cfg`. The key is checked to be the certificate's (a leaf is issued
    /// and verified against the certificate), so a mismatch fails here, not in a client.
    pub fn load(cfg: &Intercept) -> Result<Interceptor, InterceptError> {
        let bad = |path: &std::path::Path, cause: String| InterceptError::File {
            path: path.display().to_string(),
            cause,
        };
        let cert_pem = read(&cfg.ca_cert_file)?;
        let key_pem = read(&cfg.ca_key_file)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| {
            bad(
                &cfg.ca_key_file,
                format!("not a PEM private key rcgen can sign with ({e})"),
            )
        })?;
        let ca_public = key.subject_public_key_info();
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)
            .map_err(|e| bad(&cfg.ca_cert_file, format!("not a PEM certificate ({e})")))?;
        let ca: CertificateDer<'static> = rustls_pemfile_first(&cert_pem)
            .ok_or_else(|| bad(&cfg.ca_cert_file, "no CERTIFICATE block".into()))?;
        let (_, parsed) = x509_parser::parse_x509_certificate(&ca)
            .map_err(|e| bad(&cfg.ca_cert_file, format!("unreadable certificate ({e})")))?;
        if parsed.public_key().raw != ca_public.as_slice() {
            return Err(bad(
                &cfg.ca_key_file,
                format!(
                    "is not the key of the certificate in {}",
                    cfg.ca_cert_file.display()
                ),
            ));
        }
        Ok(Interceptor {
            hosts: cfg.hosts.clone(),
            issuer,
            ca,
            leaf_lifetime: cfg.leaf_lifetime,
            leaves: Mutex::new(HashMap::new()),
            tunnels: Arc::new(Semaphore::new(cfg.max_tunnels)),
        })
    }

    fn intercepts(&self, host: &str, port: u16) -> bool {
        port == 443 && self.hosts.iter().any(|h| h == host)
    }

    /// The TLS config presenting a leaf certificate for `host`, issued now or cached.
    fn server_config(&self, host: &str) -> Result<Arc<rustls::ServerConfig>, String> {
        let mut leaves = self.leaves.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((cfg, renew)) = leaves.get(host) {
            if Instant::now() < *renew {
                return Ok(cfg.clone());
            }
        }
        let key = KeyPair::generate().map_err(|e| e.to_string())?;
        let mut params =
            CertificateParams::new(vec![host.to_string()]).map_err(|e| e.to_string())?;
        let now = time::OffsetDateTime::now_utc();
        // A few minutes back for clients whose clock runs behind.
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = now + self.leaf_lifetime;
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, host);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let leaf = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| e.to_string())?;
        let mut cfg = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone(), self.ca.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .map_err(|e| e.to_string())?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let cfg = Arc::new(cfg);
        leaves.insert(
            host.to_string(),
            (cfg.clone(), Instant::now() + self.leaf_lifetime / 2),
        );
        Ok(cfg)
    }
}

/// The first certificate of a PEM text, as DER.
fn rustls_pemfile_first(pem: &str) -> Option<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes()).next()?.ok()
}

fn refuse(status: StatusCode, msg: &str) -> Response {
    (status, format!("oauth-token-exporter proxy: {msg}\n")).into_response()
}

/// Answer a `CONNECT`: intercept it (a configured host on 443) by serving `inner` inside the
/// TLS it terminates, or tunnel it to its target. `upstream_timeout` bounds reaching a
/// tunnel's target.
pub async fn connect(i: Arc<Interceptor>, inner: Router, req: Request) -> Response {
    let Some(authority) = req.uri().authority().cloned() else {
        return refuse(StatusCode::BAD_REQUEST, "CONNECT needs host:port");
    };
    let host = authority
        .host()
        .trim_matches(['[', ']'])
        .to_ascii_lowercase();
    let Some(port) = authority.port_u16() else {
        return refuse(StatusCode::BAD_REQUEST, "CONNECT needs host:port");
    };
    let Ok(permit) = i.tunnels.clone().try_acquire_owned() else {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "too many tunnels open");
    };
    let on_upgrade = hyper::upgrade::on(req);
    if i.intercepts(&host, port) {
        let tls = match i.server_config(&host) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(host = %host, error = %e, "Issuing a certificate for an intercepted host failed.");
                return refuse(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "certificate issuance failed",
                );
            }
        };
        tokio::spawn(async move {
            let _permit = permit;
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            let io = TokioIo::new(upgraded);
            let stream = match accept_tls(tls, io, HANDSHAKE_TIMEOUT).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(host = %host, error = %e, "No TLS in an intercepted tunnel (does the client trust the interception CA?).");
                    return;
                }
            };
            let conn = http1_with(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(inner));
            if let Err(e) = conn.await {
                tracing::debug!(host = %host, error = %e, "An intercepted connection ended with an error.");
            }
        });
        return Response::new(Body::empty());
    }
    // Not ours: reach the target first, so that the client learns of a failure as a status.
    let target = match tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    {
        Ok(Ok(t)) => t,
        Ok(Err(_)) | Err(_) => return refuse(StatusCode::BAD_GATEWAY, "tunnel target unreachable"),
    };
    let _ = target.set_nodelay(true);
    tokio::spawn(async move {
        let _permit = permit;
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut client = TokioIo::new(upgraded);
        let mut target = target;
        let _ = tokio::io::copy_bidirectional(&mut client, &mut target).await;
    });
    Response::new(Body::empty())
}

/// A new interception CA for `hosts`: a self-signed certificate (PEM) constrained to issue for
/// those names only (X.509 name constraints, which OpenSSL, Node, Python and rustls enforce),
/// valid `days`, and its private key (PEM, ECDSA P-256).
pub fn create_ca(hosts: &[String], days: u32) -> Result<(String, String), rcgen::Error> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::days(days.into());
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(
        DnType::CommonName,
        format!(
            "oauth-token-exporter interception CA {}",
            now.unix_timestamp()
        ),
    );
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.name_constraints = Some(NameConstraints {
        permitted_subtrees: hosts
            .iter()
            .map(|h| GeneralSubtree::DnsName(h.clone()))
            .collect(),
        excluded_subtrees: Vec::new(),
    });
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &std::path::Path, hosts: &[String]) -> Intercept {
        let (cert, key) = create_ca(hosts, 30).unwrap();
        std::fs::write(dir.join("ca.crt"), cert).unwrap();
        std::fs::write(dir.join("ca.key"), key).unwrap();
        Intercept {
            ca_cert_file: dir.join("ca.crt"),
            ca_key_file: dir.join("ca.key"),
            hosts: hosts.to_vec(),
            leaf_lifetime: Duration::from_secs(3600),
            max_tunnels: 2,
        }
    }

    #[test]
    fn a_leaf_is_issued_once_per_host_and_a_key_of_another_ca_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = vec!["identity.xero.com".to_string()];
        let cfg = files(dir.path(), &hosts);
        let i = Interceptor::load(&cfg).unwrap();
        let a = i.server_config("identity.xero.com").unwrap();
        let b = i.server_config("identity.xero.com").unwrap();
        assert!(Arc::ptr_eq(&a, &b), "cached");
        assert!(i.intercepts("identity.xero.com", 443));
        assert!(!i.intercepts("identity.xero.com", 8443));
        assert!(!i.intercepts("example.com", 443));
        // The key of another CA beside this certificate.
        let (_, other_key) = create_ca(&hosts, 30).unwrap();
        std::fs::write(dir.path().join("ca.key"), other_key).unwrap();
        let err = Interceptor::load(&cfg).unwrap_err().to_string();
        assert!(
            err.contains("ca.key") && err.contains("is not the key of the certificate"),
            "{err}"
        );
        std::fs::write(dir.path().join("ca.key"), "nonsense").unwrap();
        let err = Interceptor::load(&cfg).unwrap_err().to_string();
        assert!(
            err.contains("ca.key") && err.contains("PEM private key"),
            "{err}"
        );
        let err = Interceptor::load(&Intercept {
            ca_cert_file: dir.path().join("missing.crt"),
            ..cfg
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("missing.crt"), "{err}");
    }
}
