//! The official Xero SDKs as real clients of the exporter's proxy, against the simulated Xero
//! over TLS: xero-python 15.2.0 from PyPI (pinned by `tests/sdk/python-requirements.txt`) and
//! xero-node 20.0.0 from npm (pinned by `tests/sdk/node/package-lock.json`), which `.ci/run`
//! installs into `target/xero-sdks/`, unmodified, each driven by a host app that configures
//! nothing about Xero (`tests/sdk/xero_python_app.py`, `tests/sdk/xero_node_app.js`).
//!
//! Both ways in are run: the interception mode (the app's HTTPS proxy is the exporter's proxy
//! listener and it trusts the interception CA; the SDK calls `https://identity.xero.com` and
//! `https://api.xero.com` as shipped) and the reverse proxy (the README's overrides of the
//! token URL and the API base). Each run: a successful refresh, a refresh with a token two
//! rotations old (`invalid_grant`), an API call with an expired access token (401
//! `TokenExpired`), and (interception) a call to another host through the same proxy. Each
//! asserts the exact counter deltas and that the SDK saw what a direct call gets, random
//! values masked.

mod common;
use common::intercept::*;
use common::{ci, root};
use oauth_token_exporter::sim::xero::TokenResponse;
use serde_json::{json, Value};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// An installed SDK and how to run its app.
enum Sdk {
    /// The venv's Python.
    Python(PathBuf),
    /// The `node_modules` holding xero-node and global-agent.
    Node(PathBuf),
}

/// The SDK `name` installed under `target/xero-sdks`, or `None` (skipped by name; mandatory
/// with CI=true).
fn sdk(test: &str, name: &str) -> Option<Sdk> {
    let base = root().join("target/xero-sdks");
    let found = match name {
        "xero-python" => {
            let python = base.join("python/bin/python");
            (python.is_file()
                && Command::new(&python)
                    .args(["-c", "import xero_python"])
                    .status()
                    .is_ok_and(|s| s.success()))
            .then_some(Sdk::Python(python))
        }
        _ => {
            let modules = base.join("node/node_modules");
            (modules.join("xero-node/package.json").is_file()
                && modules.join("global-agent/bootstrap.js").is_file())
            .then_some(Sdk::Node(modules))
        }
    };
    if found.is_none() {
        assert!(
            !ci(),
            "{test}: {name} is not installed in target/xero-sdks and CI=true makes it mandatory"
        );
        eprintln!(
            "SKIPPED {test}: {name} is not installed (.ci/run installs it into target/xero-sdks)"
        );
    }
    found
}

/// One run of the SDK's app: `req` on stdin, its JSON answer. The environment is all that
/// routes it through the exporter (see each app's header).
fn run_app(sdk: &Sdk, w: &InterceptWorld, req: Value) -> Value {
    let mut cmd = match sdk {
        Sdk::Python(python) => {
            let mut c = Command::new(python);
            c.arg(root().join("tests/sdk/xero_python_app.py"))
                .env("SSL_CERT_FILE", &w.both_cas_file);
            c
        }
        Sdk::Node(modules) => {
            let mut c = Command::new("node");
            c.arg(root().join("tests/sdk/xero_node_app.js"))
                .env("NODE_PATH", modules)
                .env("NODE_EXTRA_CA_CERTS", &w.both_cas_file)
                .env(
                    "NODE_OPTIONS",
                    format!(
                        "--require {}",
                        modules.join("global-agent/bootstrap.js").display()
                    ),
                )
                .env("GLOBAL_AGENT_HTTP_PROXY", &w.proxy)
                // axios sends its requests to the proxy itself; those are not proxied again.
                .env("GLOBAL_AGENT_NO_PROXY", "127.0.0.1");
            c
        }
    };
    let mut child = cmd
        .env("HTTPS_PROXY", &w.proxy)
        .env_remove("HTTP_PROXY")
        .env_remove("NO_PROXY")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(req.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "{e}: stdout {stdout:?}, stderr {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// A token answer with its random values masked.
fn masked_tokens(mut v: Value) -> Value {
    for k in ["id_token", "access_token", "refresh_token"] {
        if v.get(k).is_some() {
            v[k] = "<masked>".into();
        }
    }
    v
}

fn token_json(t: &TokenResponse) -> Value {
    serde_json::to_value(t).unwrap()
}

async fn sdk_scenarios(test: &str, name: &str, reverse: bool) {
    let Some(app) = sdk(test, name) else {
        return;
    };
    let w = InterceptWorld::start(64).await;
    let alice_tenant = w.sim.add_tenant("Acme", &["alice"]);
    let bob_tenant = w.sim.add_tenant("Bluebird", &["bob"]);
    let alice0 = w
        .sim
        .authorize(CLIENT_ID, "alice", std::slice::from_ref(&alice_tenant));
    let bob0 = w
        .sim
        .authorize(CLIENT_ID, "bob", std::slice::from_ref(&bob_tenant));
    let req = |action: &str, tokens: &TokenResponse| {
        let mut r = json!({
            "action": action, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
            "token_set": token_json(tokens), "tenant": alice_tenant,
        });
        if reverse {
            r["reverse_proxy"] = w.proxy.clone().into();
        }
        r
    };
    let count = |name: &'static str, labels: &'static [(&'static str, &'static str)]| {
        w.counter(name, labels)
    };

    // 1. A successful refresh: the SDK gets what a direct refresh gets.
    let mut out = run_app(&app, &w, req("refresh", &alice0));
    assert_eq!(out["ok"], true, "{out}");
    if matches!(app, Sdk::Node(_)) {
        // openid-client keeps `expires_at` and recomputes `expires_in` from the clock.
        let left = out["token_set"]["expires_in"].as_i64().unwrap();
        assert!((1795..=1800).contains(&left), "{out}");
        out["token_set"]["expires_in"] = 1800.into();
    }
    let alice1: TokenResponse = serde_json::from_value(out["token_set"].clone()).unwrap();
    let direct: Value =
        serde_json::from_str(&w.direct_refresh(&bob0.refresh_token).await.1).unwrap();
    let bob1: TokenResponse = serde_json::from_value(direct.clone()).unwrap();
    assert_eq!(
        masked_tokens(out["token_set"].clone()),
        masked_tokens(direct)
    );
    assert_eq!(count("oauth_token_refreshes_total", &[]).await, 1.0);

    // 2. A second rotation, then the token two rotations old: invalid_grant.
    let out = run_app(&app, &w, req("refresh", &alice1));
    assert_eq!(out["ok"], true, "{out}");
    let alice2 = TokenResponse {
        expires_in: 1800,
        ..serde_json::from_value(out["token_set"].clone()).unwrap()
    };
    let bob2: TokenResponse =
        serde_json::from_str(&w.direct_refresh(&bob1.refresh_token).await.1).unwrap();
    let out = run_app(&app, &w, req("refresh", &alice0));
    assert_eq!(out["ok"], false, "{out}");
    // The SDK raised the answer with its status and body (xero-python: ApiException; xero-node:
    // openid-client OPError or the axios error).
    assert_eq!(out["status"], 400, "{out}");
    let (status, straight) = w.direct_refresh(&bob0.refresh_token).await;
    assert_eq!(status, 400);
    assert_eq!(straight, r#"{"error":"invalid_grant"}"#);
    assert_eq!(
        out["body"].as_str().unwrap_or_else(|| panic!("{out}")),
        straight,
        "byte for byte"
    );
    assert_eq!(count("oauth_token_refreshes_total", &[]).await, 3.0);
    assert_eq!(
        count(
            "oauth_token_refresh_failures_total",
            &[("error", "invalid_grant")]
        )
        .await,
        1.0
    );

    // 3. An API call with an access token Xero sees as expired (the app believes it valid):
    // 401 TokenExpired, the body the SDK got is the direct one.
    w.sim.age_grants(&alice_tenant, chrono::Duration::hours(1));
    w.sim.age_grants(&bob_tenant, chrono::Duration::hours(1));
    let out = run_app(&app, &w, req("api", &alice2));
    assert_eq!(out["ok"], false, "{out}");
    assert_eq!(out["status"], 401, "{out}");
    w.assert_token_expired_as_directly(
        out["body"].as_str().unwrap(),
        &bob2.access_token,
        &bob_tenant,
    )
    .await;
    assert_eq!(count("oauth_api_requests_total", &[]).await, 1.0);
    assert_eq!(
        count(
            "oauth_api_unauthorized_total",
            &[("reason", "token_expired")]
        )
        .await,
        1.0
    );

    // 4. Another host through the same HTTPS proxy: tunnelled, neither intercepted nor counted
    // (had it been intercepted, this 401 would count as an API call).
    if !reverse {
        let mut r = req("elsewhere", &alice2);
        r["url"] = format!("{}/connections", w.sim_url).into();
        let out = run_app(&app, &w, r);
        assert_eq!(out["ok"], true, "{out}");
        assert_eq!(out["status"], 401, "{out}");
        assert_eq!(count("oauth_api_requests_total", &[]).await, 1.0);
        assert_eq!(
            count(
                "oauth_api_unauthorized_total",
                &[("reason", "authentication_unsuccessful")]
            )
            .await,
            0.0
        );
    }
    assert_eq!(count("oauth_token_refreshes_total", &[]).await, 3.0);
    let log = w.log();
    for secret in [
        &alice0.refresh_token,
        &alice1.refresh_token,
        &alice2.access_token,
    ] {
        assert!(!log.contains(secret.as_str()), "a token in the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xero_python_with_only_its_proxy_and_ca_settings_is_intercepted_and_counted() {
    sdk_scenarios(
        "xero_python_with_only_its_proxy_and_ca_settings_is_intercepted_and_counted",
        "xero-python",
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xero_python_with_the_reverse_proxy_recipe_is_counted() {
    sdk_scenarios(
        "xero_python_with_the_reverse_proxy_recipe_is_counted",
        "xero-python",
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xero_node_with_environment_variables_only_is_intercepted_and_counted() {
    sdk_scenarios(
        "xero_node_with_environment_variables_only_is_intercepted_and_counted",
        "xero-node",
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xero_node_with_the_reverse_proxy_recipe_is_counted() {
    sdk_scenarios(
        "xero_node_with_the_reverse_proxy_recipe_is_counted",
        "xero-node",
        true,
    )
    .await;
}
