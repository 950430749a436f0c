//! The HTTP source over TLS: an internal CA given in `ca_file` is trusted; without it the
//! certificate is refused.

mod common;
use common::*;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BODY: &str = r#"[{"id":"c1","expires_at":1777631400}]"#;

/// A TLS server for `localhost` answering every request with `BODY`; returns its port and the
/// certificate in PEM.
async fn tls_server() -> (u16, String) {
    oauth_token_exporter::sources::install_tls_provider();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let pem = ck.cert.pem();
    let cert = CertificateDer::from(ck.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                break;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let resp = format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{BODY}", BODY.len());
                let _ = tls.write_all(resp.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (port, pem)
}

#[tokio::test]
async fn an_https_endpoint_signed_by_the_configured_ca_is_read_and_an_unknown_one_is_refused() {
    let (port, pem) = tls_server().await;
    let d = tempfile::tempdir().unwrap();
    let ca = d.path().join("internal-ca.pem");
    std::fs::write(&ca, pem).unwrap();
    let yaml = |ca_line: &str| {
        format!("sources:\n  - name: admin\n    kind: http\n    url: https://localhost:{port}/tokens\n    timeout: 3s\n    interval: 5s\n    fields: {{connection: id}}\n{ca_line}")
    };
    let (mut e, _) = exporter(
        &yaml(&format!("    ca_file: {}\n", ca.display())),
        fixed_now(),
    );
    assert_eq!(poll(&mut e).await, [true], "{}", scrape(&e));
    assert_eq!(connections(&scrape(&e), "admin"), ["c1"]);
    let (mut untrusted, _) = exporter(&yaml(""), fixed_now());
    assert_eq!(poll(&mut untrusted).await, [false]);
    assert_eq!(
        value(
            &scrape(&untrusted),
            "oauth_exporter_source_errors_total",
            &[("source", "admin"), ("reason", "connect")]
        ),
        1.0
    );
}
