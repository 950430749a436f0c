//! A world for `CONNECT` interception: the simulated Xero over TLS (its own test CA), and the
//! real binary with a CA made by `oauth-token-exporter intercept-ca`, its proxy intercepting
//! `identity.xero.com` and `api.xero.com` and forwarding to the simulator over verified TLS.

use super::alerting::{wait_ready, Proc};
use super::{free_port, sample};
use oauth_token_exporter::sim::tls::{serve_tls, test_tls};
use oauth_token_exporter::sim::xero::SimXero;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

pub const BIN: &str = env!("CARGO_BIN_EXE_oauth-token-exporter");
pub const CLIENT_ID: &str = "app";
pub const CLIENT_SECRET: &str = "s3cret-sdk-client";

pub struct InterceptWorld {
    pub sim: SimXero,
    /// `https://localhost:<port>`: the simulator reached directly.
    pub sim_url: String,
    pub sim_port: u16,
    /// The simulator's test CA (PEM), and the interception CA the app trusts.
    pub sim_ca: String,
    pub intercept_ca: String,
    /// `ca.crt` of the interception CA, and a bundle of both CAs.
    pub intercept_ca_file: PathBuf,
    pub both_cas_file: PathBuf,
    /// `http://127.0.0.1:<port>`: the proxy listener (the app's `HTTPS_PROXY`).
    pub proxy: String,
    pub metrics_url: String,
    /// A client reaching the simulator directly over verified TLS.
    pub direct: reqwest::Client,
    pub exporter: Proc,
    pub dir: tempfile::TempDir,
}

impl InterceptWorld {
    pub async fn start(max_tunnels: usize) -> InterceptWorld {
        oauth_token_exporter::sources::install_tls_provider();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        let made = Command::new(BIN)
            .args(["intercept-ca", "--out-dir"])
            .arg(&d)
            .output()
            .unwrap();
        assert!(made.status.success(), "{made:?}");
        let intercept_ca = std::fs::read_to_string(d.join("ca.crt")).unwrap();

        let sim = SimXero::new(Arc::new(oauth_token_exporter::clock::SystemClock));
        sim.add_client(CLIENT_ID, CLIENT_SECRET);
        let tls = test_tls(&["localhost", "127.0.0.1"]);
        std::fs::write(d.join("sim-ca.crt"), &tls.ca_pem).unwrap();
        std::fs::write(
            d.join("both-cas.pem"),
            format!("{intercept_ca}{}", tls.ca_pem),
        )
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sim_port = listener.local_addr().unwrap().port();
        tokio::spawn(serve_tls(listener, sim.router(), tls.server.clone()));
        let sim_url = format!("https://localhost:{sim_port}");

        let (web, proxy_port) = (free_port(), free_port());
        let config = format!(
            "proxy:\n  source: proxy\n  identity_url: {sim_url}\n  api_url: {sim_url}\n  timeout: 5s\n\
             \x20 upstream_ca_file: {}\n  intercept:\n    ca_cert_file: {}\n    ca_key_file: {}\n    max_tunnels: {max_tunnels}\n",
            d.join("sim-ca.crt").display(),
            d.join("ca.crt").display(),
            d.join("ca.key").display(),
        );
        std::fs::write(d.join("exporter.yml"), config).unwrap();
        let exporter = Proc::start(
            Command::new(BIN)
                .arg("--config.file")
                .arg(d.join("exporter.yml"))
                .arg(format!("--web.listen-address=127.0.0.1:{web}"))
                .arg(format!("--proxy.listen-address=127.0.0.1:{proxy_port}"))
                .arg("--log.level=debug"),
            d.join("exporter.log"),
        );
        wait_ready(
            &reqwest::Client::new(),
            &format!("http://127.0.0.1:{web}/-/healthy"),
            &exporter,
        )
        .await;
        let direct = reqwest::Client::builder()
            .tls_certs_only(reqwest::Certificate::from_pem_bundle(tls.ca_pem.as_bytes()).unwrap())
            .build()
            .unwrap();
        InterceptWorld {
            sim,
            sim_url,
            sim_port,
            sim_ca: tls.ca_pem,
            intercept_ca,
            intercept_ca_file: d.join("ca.crt"),
            both_cas_file: d.join("both-cas.pem"),
            proxy: format!("http://127.0.0.1:{proxy_port}"),
            metrics_url: format!("http://127.0.0.1:{web}/metrics"),
            direct,
            exporter,
            dir,
        }
    }

    /// A client as an app configured with only `HTTPS_PROXY` and `trusted` CAs (PEM); it keeps
    /// no connection, so each call is one tunnel.
    pub fn app(&self, trusted: &str) -> reqwest::Client {
        reqwest::Client::builder()
            .proxy(reqwest::Proxy::https(&self.proxy).unwrap())
            .tls_certs_only(reqwest::Certificate::from_pem_bundle(trusted.as_bytes()).unwrap())
            .pool_max_idle_per_host(0)
            .build()
            .unwrap()
    }

    /// The value of a counter of the proxy's source (0 when absent).
    pub async fn counter(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = reqwest::get(&self.metrics_url)
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let mut all = vec![("source", "proxy")];
        all.extend_from_slice(labels);
        sample(&text, name, &all).unwrap_or(0.0)
    }

    /// The exporter's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("exporter.log")).unwrap()
    }

    /// A refresh with the form xero-python sends (`client_secret_post`).
    pub async fn refresh(
        &self,
        client: &reqwest::Client,
        base: &str,
        rt: &str,
    ) -> reqwest::Response {
        client
            .post(format!("{base}/connect/token"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!(
                "grant_type=refresh_token&refresh_token={rt}&client_id={CLIENT_ID}&client_secret={CLIENT_SECRET}"
            ))
            .send()
            .await
            .unwrap()
    }

    /// A refresh of `rt` directly at the simulator: status and body.
    pub async fn direct_refresh(&self, rt: &str) -> (u16, String) {
        let r = self.refresh(&self.direct, &self.sim_url, rt).await;
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// `through` (the API answer the app got) is a 401 `TokenExpired`, and the direct answer
    /// for `at` and `tenant`, random values masked.
    pub async fn assert_token_expired_as_directly(&self, through: &str, at: &str, tenant: &str) {
        let straight = self
            .api(&self.direct, &self.sim_url, at, tenant)
            .await
            .text()
            .await
            .unwrap();
        assert!(through.contains("TokenExpired"), "{through}");
        assert_eq!(
            masked(through, &problem_values(through)),
            masked(&straight, &problem_values(&straight))
        );
    }

    /// An accounting API call.
    pub async fn api(
        &self,
        client: &reqwest::Client,
        base: &str,
        at: &str,
        tenant: &str,
    ) -> reqwest::Response {
        client
            .get(format!("{base}/api.xro/2.0/Organisation"))
            .bearer_auth(at)
            .header("xero-tenant-id", tenant)
            .send()
            .await
            .unwrap()
    }
}

/// `text` with each of `values` replaced by a placeholder.
pub fn masked(text: &str, values: &[String]) -> String {
    let mut out = text.to_string();
    for v in values.iter().filter(|v| !v.is_empty()) {
        out = out.replace(v.as_str(), "<masked>");
    }
    out
}

/// The random values of a token response.
pub fn token_values(body: &str) -> Vec<String> {
    let t: oauth_token_exporter::sim::xero::TokenResponse =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    vec![t.id_token, t.access_token, t.refresh_token]
}

/// The random values of an API problem body: its `Instance` id and the date in `Detail`.
pub fn problem_values(body: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    let detail = v["Detail"].as_str().unwrap_or("");
    vec![
        v["Instance"].as_str().unwrap_or("").to_string(),
        detail
            .split_once(" at ")
            .map(|(_, d)| d.to_string())
            .unwrap_or_default(),
    ]
}
