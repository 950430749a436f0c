//! `--web.config.file` end to end: TLS with verified client certificates and allowed SANs,
//! bcrypt basic auth and security headers on every endpoint (ingest API and webhook included),
//! the proxy's own web config (basic auth by `Proxy-Authorization`, stripped before Xero sees
//! it), reloading a changed file, and the fixture corpus checked against `promtool check
//! web-config`.

mod common;
use common::*;
use oauth_token_exporter::http::web_config::WebConfigHandle;
use oauth_token_exporter::{Exporter, ServerOptions};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair,
};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// A CA, a server certificate for localhost, and client certificates.
struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "test CA");
        Pki {
            ca: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    /// A certificate signed by this CA: (cert PEM, key PEM).
    fn issue(&self, sans: &[&str], usage: ExtendedKeyUsagePurpose) -> (String, String) {
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Write ca.crt, server.crt and server.key into `dir`.
    fn write_server(&self, dir: &Path) {
        let (cert, key) = self.issue(
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        std::fs::write(dir.join("ca.crt"), self.ca.pem()).unwrap();
        std::fs::write(dir.join("server.crt"), cert).unwrap();
        std::fs::write(dir.join("server.key"), key).unwrap();
    }
}

/// An HTTPS client trusting `ca_pem`, presenting `identity` (cert PEM, key PEM) if given.
fn https_client(ca_pem: &str, identity: Option<&(String, String)>) -> reqwest::Client {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    oauth_token_exporter::sources::install_tls_provider();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let b = rustls::ClientConfig::builder().with_root_certificates(roots);
    let cfg = match identity {
        None => b.with_no_client_auth(),
        Some((cert, key)) => b
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(cert.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap(),
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    reqwest::Client::builder()
        .use_preconfigured_tls(cfg)
        .timeout(std::time::Duration::from_secs(5))
        .build()
        .unwrap()
}

/// The exporter (an SQLite source, the ingest API, the Nango webhook and a proxy to
/// `upstream`) served with the given web configs; returns (web URL, proxy URL, shutdown).
async fn start(
    dir: &Path,
    web: Option<&Path>,
    proxy_web: Option<&Path>,
    scheme: &str,
    upstream: &str,
) -> (String, String, CancellationToken) {
    let (_d, db, _pool) =
        sqlite_db(&["CREATE TABLE xero_tokens (id TEXT, tenant_id TEXT, expires_at INTEGER)"])
            .await;
    let db_path = dir.join("app.db");
    std::fs::copy(&db, &db_path).unwrap();
    let cfg = oauth_token_exporter::config::parse(
        &format!(
            "sources:\n  - {{name: app, kind: sqlite, dsn: {}, preset: xero_tokens}}\n\
             ingest:\n  token_env: T\nnango_webhook:\n  source: nango\n\
             proxy:\n  identity_url: {upstream}\n  api_url: {upstream}\n",
            db_path.display()
        ),
        "web.yml",
        &|_| Some("ingest-token-0123456789".into()),
    )
    .unwrap();
    let clock: oauth_token_exporter::clock::SharedClock =
        Arc::new(oauth_token_exporter::clock::SystemClock);
    let mut e = Exporter::new(&cfg, clock).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let proxy_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    e.listeners[0].address = Some(format!("127.0.0.1:{proxy_port}"));
    let opts = ServerOptions {
        web_config: web.map(|p| WebConfigHandle::open(p).unwrap()),
        proxy_web_config: proxy_web.map(|p| WebConfigHandle::open(p).unwrap()),
        ..Default::default()
    };
    let stop = CancellationToken::new();
    tokio::spawn(e.run(listener, opts, stop.clone()));
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    (
        format!("{scheme}://localhost:{port}"),
        format!("http://127.0.0.1:{proxy_port}"),
        stop,
    )
}

#[tokio::test]
async fn tls_with_verified_client_certificates_admits_only_allowed_sans() {
    let d = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    pki.write_server(d.path());
    let web = d.path().join("web.yml");
    std::fs::write(
        &web,
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n  client_allowed_sans: [prometheus.monitoring.svc]\n",
    )
    .unwrap();
    let (url, _, stop) = start(d.path(), Some(&web), None, "https", "http://127.0.0.1:9").await;
    let ca = pki.ca.pem();
    let allowed = pki.issue(
        &["prometheus.monitoring.svc"],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let other = pki.issue(&["intruder.example"], ExtendedKeyUsagePurpose::ClientAuth);
    let stranger_ca = Pki::new();
    let forged = stranger_ca.issue(
        &["prometheus.monitoring.svc"],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let ok = https_client(&ca, Some(&allowed))
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert!(ok
        .text()
        .await
        .unwrap()
        .contains("oauth_exporter_build_info"));
    for (what, client) in [
        ("no client certificate", https_client(&ca, None)),
        ("a SAN not allowed", https_client(&ca, Some(&other))),
        (
            "a certificate of another CA",
            https_client(&ca, Some(&forged)),
        ),
    ] {
        let r = client.get(format!("{url}/-/healthy")).send().await;
        assert!(r.is_err(), "{what}: {r:?}");
    }
    let plain = reqwest::Client::new()
        .get(url.replace("https://", "http://") + "/metrics")
        .send()
        .await;
    assert!(
        plain.is_err() || plain.unwrap().status() != 200,
        "plain HTTP to a TLS port"
    );
    stop.cancel();
}

fn basic(user: &str, pw: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"))
    )
}

#[tokio::test]
async fn basic_auth_and_security_headers_cover_every_endpoint() {
    let d = tempfile::tempdir().unwrap();
    let hash = bcrypt::hash("right-password", 4).unwrap();
    let web = d.path().join("web.yml");
    std::fs::write(
        &web,
        format!("http_server_config:\n  headers:\n    X-Frame-Options: deny\n    X-Content-Type-Options: nosniff\nbasic_auth_users:\n  prometheus: {hash}\n"),
    )
    .unwrap();
    let (url, _, stop) = start(d.path(), Some(&web), None, "http", "http://127.0.0.1:9").await;
    let http = reqwest::Client::new();
    let endpoints = [
        ("GET", "/metrics"),
        ("GET", "/"),
        ("GET", "/-/healthy"),
        ("GET", "/-/ready"),
        ("POST", "/api/v1/events"),
        ("POST", "/webhooks/nango"),
    ];
    for (method, path) in endpoints {
        for (what, auth) in [
            ("no credentials", None),
            ("a wrong password", Some(basic("prometheus", "wrong"))),
            ("an unknown user", Some(basic("mallory", "right-password"))),
        ] {
            let mut req = http.request(method.parse().unwrap(), format!("{url}{path}"));
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 401, "{method} {path} with {what}");
            assert_eq!(
                r.headers()["www-authenticate"],
                "Basic realm=\"oauth-token-exporter\""
            );
            assert_eq!(r.headers()["x-frame-options"], "deny", "{path}");
            assert_eq!(r.headers()["x-content-type-options"], "nosniff");
        }
    }
    let ok = |path: &str| {
        http.get(format!("{url}{path}"))
            .header("authorization", basic("prometheus", "right-password"))
    };
    let r = ok("/metrics").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-frame-options"], "deny");
    // The ingest API: basic auth passed, and its own token in X-Ingest-Token.
    let events = r#"{"events":[{"type":"refresh","connection":"c1","outcome":"success"}]}"#;
    let post = |token: Option<&str>| {
        let mut r = http
            .post(format!("{url}/api/v1/events"))
            .header("authorization", basic("prometheus", "right-password"))
            .header("content-type", "application/json")
            .body(events);
        if let Some(t) = token {
            r = r.header("x-ingest-token", t);
        }
        r
    };
    assert_eq!(
        post(None).send().await.unwrap().status(),
        401,
        "the ingest token is still needed"
    );
    assert_eq!(
        post(Some("ingest-token-0123456789"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let webhook = http
        .post(format!("{url}/webhooks/nango"))
        .header("authorization", basic("prometheus", "right-password"))
        .header("content-type", "application/json")
        .body(r#"{"type":"sync"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(webhook.status(), 200);
    stop.cancel();
}

/// An upstream that answers with the request headers it received.
async fn echo_upstream() -> String {
    use axum::http::HeaderMap;
    serve(axum::Router::new().fallback(|h: HeaderMap| async move {
        let mut names: Vec<String> = h.keys().map(|k| k.to_string()).collect();
        names.sort();
        names.join(",")
    }))
    .await
}

#[tokio::test]
async fn the_proxy_listener_has_its_own_basic_auth_by_proxy_authorization_which_xero_never_sees() {
    let d = tempfile::tempdir().unwrap();
    let hash = bcrypt::hash("proxy-password", 4).unwrap();
    let proxy_web = d.path().join("proxy-web.yml");
    std::fs::write(&proxy_web, format!("basic_auth_users:\n  app: {hash}\n")).unwrap();
    let upstream = echo_upstream().await;
    let (url, proxy, stop) = start(d.path(), None, Some(&proxy_web), "http", &upstream).await;
    let http = reqwest::Client::new();
    let r = http
        .get(format!("{proxy}/api.xro/2.0/Organisation"))
        .header("authorization", "Bearer access-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 407);
    assert_eq!(
        r.headers()["proxy-authenticate"],
        "Basic realm=\"oauth-token-exporter\""
    );
    let r = http
        .get(format!("{proxy}/api.xro/2.0/Organisation"))
        .header("authorization", "Bearer access-token")
        .header("proxy-authorization", basic("app", "proxy-password"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = r.text().await.unwrap();
    assert!(
        seen.contains("authorization"),
        "Xero gets the app's Authorization: {seen}"
    );
    assert!(
        !seen.contains("proxy-authorization"),
        "but never Proxy-Authorization: {seen}"
    );
    // The web listener has no web config here: open.
    assert_eq!(
        http.get(format!("{url}/-/healthy"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    stop.cancel();
}

#[tokio::test]
async fn a_changed_web_config_is_reloaded_by_content_and_an_empty_or_broken_one_never_lowers_protection(
) {
    let d = tempfile::tempdir().unwrap();
    let web = d.path().join("web.yml");
    let users = |u: &str, pw: &str| {
        format!(
            "basic_auth_users:\n  {u}: {}\n",
            bcrypt::hash(pw, 4).unwrap()
        )
    };
    std::fs::write(&web, users("first", "one")).unwrap();
    let (url, _, stop) = start(d.path(), Some(&web), None, "http", "http://127.0.0.1:9").await;
    let http = reqwest::Client::new();
    let status = |u: &'static str, pw: &'static str| {
        let http = http.clone();
        let url = url.clone();
        async move {
            let mut req = http.get(format!("{url}/-/healthy"));
            if !u.is_empty() {
                req = req.header("authorization", basic(u, pw));
            }
            req.send().await.unwrap().status().as_u16()
        }
    };
    // The file is read again at most once a second: wait for what a change should bring.
    let eventually = |u: &'static str, pw: &'static str, want: u16| {
        let status = &status;
        async move {
            for _ in 0..30 {
                if status(u, pw).await == want {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            panic!("{u}:{pw} never got {want}");
        }
    };
    assert_eq!(status("first", "one").await, 200);
    std::fs::write(&web, users("secnd-user", "two")).unwrap();
    eventually("secnd-user", "two", 200).await;
    assert_eq!(status("first", "one").await, 401);
    // A password rotated with `cp -p`: same size, same modification time. Content counts.
    let mtime = std::fs::metadata(&web).unwrap().modified().unwrap();
    let before = std::fs::metadata(&web).unwrap().len();
    std::fs::write(&web, users("third-user", "333")).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&web)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    assert_eq!(std::fs::metadata(&web).unwrap().len(), before, "same size");
    eventually("third-user", "333", 200).await;
    assert_eq!(status("secnd-user", "two").await, 401);
    // Truncated to 0 bytes, then broken: the last good config stays, authentication with it.
    std::fs::write(&web, "").unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(status("", "").await, 401, "no credentials after truncation");
    assert_eq!(
        status("intruder", "x").await,
        401,
        "wrong credentials after truncation"
    );
    assert_eq!(status("third-user", "333").await, 200);
    std::fs::write(&web, "basic_auth_users: [this is not a map]\n").unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(
        status("", "").await,
        401,
        "no credentials with a broken file"
    );
    assert_eq!(
        status("third-user", "333").await,
        200,
        "the last good config stays"
    );
    // A valid file that says so switches authentication off.
    std::fs::write(&web, "basic_auth_users: {}\n").unwrap();
    eventually("", "", 200).await;
    stop.cancel();
}

/// The fixtures in tests/fixtures/web: every `good-*` file passes `promtool check web-config`
/// and loads here; every `bad-*` file is refused by both, ours with the text after `# expect:`.
#[test]
fn the_fixture_corpus_agrees_with_promtool_check_web_config() {
    let test = "the_fixture_corpus_agrees_with_promtool_check_web_config";
    let promtool = tool(test, &["promtool"]);
    let d = tempfile::tempdir().unwrap();
    Pki::new().write_server(d.path());
    let mut checked = 0;
    for entry in std::fs::read_dir(root().join("tests/fixtures/web")).unwrap() {
        let src = entry.unwrap().path();
        let name = src.file_name().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(&src).unwrap();
        let file = d.path().join(&name);
        std::fs::write(&file, &text).unwrap();
        let ours = WebConfigHandle::open(&file);
        let theirs = promtool.as_ref().map(|p| {
            Command::new(p)
                .args(["check", "web-config"])
                .arg(&file)
                .output()
                .unwrap()
        });
        if name.starts_with("good-") {
            assert!(ours.is_ok(), "{name}: {}", ours.err().unwrap());
            if let Some(t) = theirs {
                assert!(
                    t.status.success(),
                    "{name}: promtool: {}",
                    String::from_utf8_lossy(&t.stdout)
                );
            }
        } else {
            let expect = text
                .lines()
                .find_map(|l| l.strip_prefix("# expect: "))
                .unwrap_or_else(|| panic!("{name} has no `# expect:` line"));
            let err = ours
                .err()
                .unwrap_or_else(|| panic!("{name} loaded"))
                .to_string();
            assert!(err.contains(expect), "{name}: {err}");
            assert!(
                err.contains(&name),
                "{name}: the error names the file: {err}"
            );
            if let Some(t) = theirs {
                assert!(!t.status.success(), "{name}: promtool accepted it");
            }
        }
        checked += 1;
    }
    assert!(checked >= 10, "{checked}");
}

/// ALPN over TLS: h2 when `http2` is on (the default), HTTP/1.1 only when it is off.
#[tokio::test]
async fn http2_is_offered_over_tls_unless_the_web_config_turns_it_off() {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let d = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    pki.write_server(d.path());
    for (http2, want) in [(true, &b"h2"[..]), (false, &b"http/1.1"[..])] {
        let web = d.path().join(format!("web-{http2}.yml"));
        std::fs::write(
            &web,
            format!("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\nhttp_server_config:\n  http2: {http2}\n"),
        )
        .unwrap();
        let (url, _, stop) = start(d.path(), Some(&web), None, "https", "http://127.0.0.1:9").await;
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(pki.ca.pem().as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let mut cfg = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let addr = url.trim_start_matches("https://localhost:");
        let tcp = tokio::net::TcpStream::connect(format!("127.0.0.1:{addr}"))
            .await
            .unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        assert_eq!(
            tls.get_ref().1.alpn_protocol(),
            Some(want),
            "http2: {http2}"
        );
        if http2 {
            let (mut send, conn) = hyper::client::conn::http2::handshake(
                hyper_util::rt::TokioExecutor::new(),
                hyper_util::rt::TokioIo::new(tls),
            )
            .await
            .unwrap();
            tokio::spawn(conn);
            let req = axum::http::Request::get(format!("{url}/-/healthy"))
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap();
            let resp = send.send_request(req).await.unwrap();
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.version(), axum::http::Version::HTTP_2);
        }
        stop.cancel();
    }
}
