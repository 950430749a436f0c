//! `CONNECT` interception with the real binary: an app that sets only `HTTPS_PROXY` (here
//! reqwest's proxy setting, which opens a `CONNECT` tunnel as urllib3 does) and trusts the
//! interception CA made by `oauth-token-exporter intercept-ca` reaches
//! `https://identity.xero.com` and `https://api.xero.com` through the exporter, which
//! terminates TLS, counts as its reverse proxy does and forwards over verified TLS to the
//! simulated Xero (served over TLS with a test CA, `upstream_ca_file`). A host that is not
//! Xero's is tunnelled untouched (the client sees its own certificate) and not counted. The
//! answers the app gets are byte-identical to direct calls, random values masked.

mod common;
use common::intercept::*;
use common::{free_port, get_json};
use oauth_token_exporter::sim::xero::TokenResponse;
use std::process::Command;

async fn raw_connect(proxy: &str, target: &str) -> (tokio::net::TcpStream, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = tokio::net::TcpStream::connect(proxy.trim_start_matches("http://"))
        .await
        .unwrap();
    c.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if c.read(&mut byte).await.unwrap() == 0 {
            break;
        }
        head.push(byte[0]);
    }
    (c, String::from_utf8_lossy(&head).to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_with_only_https_proxy_and_the_ca_is_intercepted_for_xero_and_tunnelled_elsewhere() {
    let w = InterceptWorld::start(3).await;
    let d = w.dir.path();

    // The key is its owner's only, and intercept-ca never overwrites.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "ca.key is 0600");
    }
    let again = Command::new(BIN)
        .args(["intercept-ca", "--out-dir"])
        .arg(d)
        .output()
        .unwrap();
    assert!(!again.status.success());
    let said = String::from_utf8_lossy(&again.stderr);
    assert!(
        said.contains("ca.key") && said.contains("never overwritten"),
        "{said}"
    );

    let via = w.app(&w.intercept_ca);
    let alice_tenant = w.sim.add_tenant("Acme", &["alice"]);
    let bob_tenant = w.sim.add_tenant("Bluebird", &["bob"]);
    let alice = w
        .sim
        .authorize(CLIENT_ID, "alice", std::slice::from_ref(&alice_tenant));
    let bob = w
        .sim
        .authorize(CLIENT_ID, "bob", std::slice::from_ref(&bob_tenant));
    let identity = "https://identity.xero.com";

    // A successful refresh through the interception, and the same directly.
    let r = w.refresh(&via, identity, &alice.refresh_token).await;
    assert_eq!(r.status(), 200);
    let through = r.text().await.unwrap();
    let (_, straight) = w.direct_refresh(&bob.refresh_token).await;
    assert_eq!(
        masked(&through, &token_values(&through)),
        masked(&straight, &token_values(&straight)),
        "the refresh answer through the interception is the direct one"
    );
    let alice1: TokenResponse = serde_json::from_str(&through).unwrap();
    let bob1: TokenResponse = serde_json::from_str(&straight).unwrap();
    // A second rotation, then the token two rotations old: invalid_grant, byte for byte.
    let alice2: TokenResponse = w
        .refresh(&via, identity, &alice1.refresh_token)
        .await
        .json()
        .await
        .unwrap();
    let bob2: TokenResponse =
        serde_json::from_str(&w.direct_refresh(&bob1.refresh_token).await.1).unwrap();
    let r = w.refresh(&via, identity, &alice.refresh_token).await;
    assert_eq!(r.status(), 400);
    let through = r.text().await.unwrap();
    let (_, straight) = w.direct_refresh(&bob.refresh_token).await;
    assert_eq!(through, r#"{"error":"invalid_grant"}"#);
    assert_eq!(through, straight);

    // An API call with an expired access token (an hour passes for both grants): 401
    // TokenExpired, the same as directly.
    w.sim.age_grants(&alice_tenant, chrono::Duration::hours(1));
    w.sim.age_grants(&bob_tenant, chrono::Duration::hours(1));
    let r = w
        .api(
            &via,
            "https://api.xero.com",
            &alice2.access_token,
            &alice_tenant,
        )
        .await;
    assert_eq!(r.status(), 401);
    let through = r.text().await.unwrap();
    w.assert_token_expired_as_directly(&through, &bob2.access_token, &bob_tenant)
        .await;

    // The discovery document xero-node's openid-client fetches goes to the identity server.
    let r = via
        .get(format!("{identity}/.well-known/openid-configuration"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let doc: serde_json::Value = r.json().await.unwrap();
    assert_eq!(doc["issuer"], identity);

    // Another host through the same proxy: tunnelled untouched. The app sees the host's own
    // certificate (it trusts the simulator's CA and not the interception CA for this call).
    let elsewhere = w.app(&w.sim_ca);
    let jwks = format!("{}/.well-known/openid-configuration/jwks", w.sim_url);
    assert_eq!(elsewhere.get(&jwks).send().await.unwrap().status(), 200);
    assert!(
        via.get(&jwks).send().await.is_err(),
        "the interception CA's certificate is not what this host presents"
    );

    // Counted exactly as the reverse proxy counts: 3 refreshes (1 invalid_grant), 1 API call
    // (401 token_expired); the discovery document and the tunnelled calls are not counted.
    assert_eq!(w.counter("oauth_token_refreshes_total", &[]).await, 3.0);
    assert_eq!(
        w.counter(
            "oauth_token_refresh_failures_total",
            &[("error", "invalid_grant")]
        )
        .await,
        1.0
    );
    assert_eq!(w.counter("oauth_api_requests_total", &[]).await, 1.0);
    assert_eq!(
        w.counter(
            "oauth_api_unauthorized_total",
            &[("reason", "token_expired")]
        )
        .await,
        1.0
    );

    // Tunnels are bounded: with 3 open, the next is refused; closing one lets the next in.
    drop((via, elsewhere));
    let target = format!("localhost:{}", w.sim_port);
    let mut open = Vec::new();
    let mut refused = None;
    for _ in 0..10 {
        let (c, head) = raw_connect(&w.proxy, &target).await;
        if head.starts_with("HTTP/1.1 200") {
            open.push(c);
        } else {
            refused = Some(head);
            break;
        }
    }
    let refused = refused.expect("a CONNECT beyond max_tunnels is refused");
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(open.len() <= 3, "{} tunnels open", open.len());
    open.pop();
    let mut admitted = false;
    for _ in 0..50 {
        let (c, head) = raw_connect(&w.proxy, &target).await;
        if head.starts_with("HTTP/1.1 200") {
            open.push(c);
            admitted = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(admitted, "a tunnel closed makes room");

    // Nothing that passed is in the log (debug level).
    let log = w.log();
    for secret in [
        alice.refresh_token.as_str(),
        &alice1.refresh_token,
        &alice1.access_token,
        &alice2.access_token,
        &alice1.id_token,
        CLIENT_SECRET,
    ] {
        assert!(!log.contains(secret), "a token in the log");
    }
}

#[tokio::test]
async fn an_interception_ca_whose_key_does_not_match_stops_the_start_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for sub in ["a", "b"] {
        let made = Command::new(BIN)
            .args(["intercept-ca", "--out-dir"])
            .arg(d.join(sub))
            .output()
            .unwrap();
        assert!(made.status.success());
    }
    std::fs::write(
        d.join("exporter.yml"),
        format!(
            "proxy:\n  listen_address: 127.0.0.1:{}\n  intercept:\n    ca_cert_file: {}\n    ca_key_file: {}\n",
            free_port(),
            d.join("a/ca.crt").display(),
            d.join("b/ca.key").display()
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("--config.file")
        .arg(d.join("exporter.yml"))
        .arg(format!("--web.listen-address=127.0.0.1:{}", free_port()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("proxy.intercept")
            && said.contains("b/ca.key")
            && said.contains("is not the key"),
        "{said}"
    );
}

/// `oauth-token-exporter sim-xero --tls-dir D`: the simulated Xero on its own, over TLS with a
/// test CA written to `D/sim-ca.crt`, printing the token sets it authorised; a client trusting
/// that CA refreshes one (`client_secret_post`) and reads the discovery document.
#[tokio::test]
async fn sim_xero_runs_on_its_own_over_tls_and_prints_token_sets_an_app_can_refresh() {
    use std::io::BufRead;
    oauth_token_exporter::sources::install_tls_provider();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = Command::new(BIN)
        .args([
            "sim-xero",
            "--connections",
            "2",
            "--client-secret",
            "try-me",
        ])
        .arg(format!("--listen-address=127.0.0.1:{port}"))
        .arg("--tls-dir")
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let sets: Vec<serde_json::Value> = (0..2)
        .map(|_| serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap())
        .collect();
    assert_eq!(sets[1]["connection"], 2);
    let ca = dir.path().join("sim-ca.crt");
    for _ in 0..100 {
        if ca.is_file() && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let client = reqwest::Client::builder()
        .tls_certs_only(
            reqwest::Certificate::from_pem_bundle(&std::fs::read(&ca).unwrap()).unwrap(),
        )
        .build()
        .unwrap();
    let base = format!("https://localhost:{port}");
    let rt = sets[0]["token_set"]["refresh_token"].as_str().unwrap();
    let r = client
        .post(format!("{base}/connect/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "grant_type=refresh_token&refresh_token={rt}&client_id=app&client_secret=try-me"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let doc = get_json(&client, &format!("{base}/.well-known/openid-configuration")).await;
    assert_eq!(doc["issuer"], "https://identity.xero.com");
    let _ = child.kill();
    let _ = child.wait();
}
