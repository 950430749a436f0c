//! The simulated Xero over TLS: a test CA made on the spot, a certificate from it for the names
//! the simulator is reached by, and a server loop (HTTP/1.1, as Xero's clients speak to it
//! here). Clients trust the test CA's certificate (PEM) to reach it over verified TLS.

use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// A test CA and a server certificate from it.
pub struct TestTls {
    /// The CA certificate clients trust (PEM).
    pub ca_pem: String,
    /// The server's TLS config (its certificate and the CA's, HTTP/1.1).
    pub server: Arc<rustls::ServerConfig>,
}

/// A new test CA and a certificate for `names` (DNS names or IP addresses).
pub fn test_tls(names: &[&str]) -> TestTls {
    crate::sources::install_tls_provider();
    let ca_key = KeyPair::generate().expect("a P-256 key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("no names");
    ca.distinguished_name
        .push(DnType::CommonName, "simulated Xero test CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).expect("self-signed");
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().expect("a P-256 key");
    let mut leaf = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
        .expect("valid names");
    leaf.distinguished_name.push(
        DnType::CommonName,
        names.first().copied().unwrap_or("localhost"),
    );
    let cert = leaf.signed_by(&key, &issuer).expect("signed");
    let mut server = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone(), ca_cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .expect("a valid certificate and key");
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    TestTls {
        ca_pem: ca_cert.pem(),
        server: Arc::new(server),
    }
}

/// Serve `router` over TLS on `listener` until the task is dropped (the exporter's own
/// handshake and header deadlines).
pub async fn serve_tls(listener: TcpListener, router: Router, tls: Arc<rustls::ServerConfig>) {
    use crate::http::serve::{accept_tls, http1_with};
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let (tls, service) = (tls.clone(), TowerToHyperService::new(router.clone()));
        tokio::spawn(async move {
            let Ok(stream) = accept_tls(tls, tcp, Duration::from_secs(10)).await else {
                return;
            };
            let _ = http1_with(Duration::from_secs(30))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
