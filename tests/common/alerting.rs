//! A real Prometheus (Debian package `prometheus`) scraping the real binary and evaluating the
//! shipped rules, sending to a real Alertmanager (`prometheus-alertmanager`) with the shipped
//! routing and inhibition (examples/alertmanager.yml), which posts to a webhook receiver here.
//! Every `for:` of the shipped rules is divided by [`FOR_SCALE`] (promtool's unit tests check
//! the real durations).

use super::{free_port, root, serve, tool};
use axum::extract::{Path, State};
use axum::routing::post;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Every `for:` of the shipped rules is divided by this (5m becomes 10s).
pub const FOR_SCALE: u64 = 30;

pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub fn yaml_file(path: &std::path::Path) -> Value {
    serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

pub fn seconds(d: &str) -> u64 {
    let (n, unit) = d.split_at(d.len() - 1);
    let n: u64 = n.parse().unwrap_or_else(|_| panic!("duration {d}"));
    n * match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => panic!("duration {d}"),
    }
}

/// The shipped rules with every `for:` divided by [`FOR_SCALE`] (JSON is YAML to Prometheus).
pub fn scaled_rules() -> String {
    let mut rules = yaml_file(&root().join("alerts/oauth-token-exporter.rules.yml"));
    for g in rules["groups"].as_array_mut().unwrap() {
        for r in g["rules"].as_array_mut().unwrap() {
            if let Some(f) = r.get("for").and_then(Value::as_str) {
                r["for"] = format!("{}s", (seconds(f) / FOR_SCALE).max(1)).into();
            }
        }
    }
    rules.to_string()
}

/// The shipped Alertmanager config with every receiver posting to `hook/<receiver>` and the
/// waits shortened; routes and inhibition rules as shipped.
pub fn alertmanager_config(hook: &str) -> String {
    let mut am = yaml_file(&root().join("examples/alertmanager.yml"));
    for r in am["receivers"].as_array_mut().unwrap() {
        let name = r["name"].as_str().unwrap().to_string();
        *r = json!({"name": name, "webhook_configs": [{"url": format!("{hook}/{name}"), "send_resolved": true}]});
    }
    am["route"]["group_wait"] = "1s".into();
    am["route"]["group_interval"] = "1s".into();
    am["route"]["repeat_interval"] = "1h".into();
    for r in am["route"]["routes"].as_array_mut().unwrap() {
        if let Some(o) = r.as_object_mut() {
            o.remove("repeat_interval");
        }
    }
    am.to_string()
}

/// One notification as the webhook received it.
#[derive(Debug, Clone)]
pub struct Notification {
    pub receiver: String,
    pub status: String,
    pub alertname: String,
    pub labels: Value,
}

pub type Hook = Arc<Mutex<Vec<Notification>>>;

pub async fn receive(State(hook): State<Hook>, Path(receiver): Path<String>, body: String) {
    let v: Value = serde_json::from_str(&body).unwrap();
    let mut got = hook.lock().unwrap();
    for a in v["alerts"].as_array().unwrap() {
        got.push(Notification {
            receiver: receiver.clone(),
            status: a["status"].as_str().unwrap().to_string(),
            alertname: a["labels"]["alertname"].as_str().unwrap().to_string(),
            labels: a["labels"].clone(),
        });
    }
}

/// A child process killed when dropped; its output goes to a file kept for failures.
pub struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    pub fn start(cmd: &mut Command, log: PathBuf) -> Proc {
        let out = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        Proc { child, log }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn wait_ready(http: &reqwest::Client, url: &str, what: &Proc) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http.get(url).send().await {
            if r.status().is_success() {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{url} never became ready:\n{}",
            what.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The exporter (with `config` and `args`), Alertmanager and Prometheus, running.
pub struct Alerting {
    pub http: reqwest::Client,
    pub exporter_url: String,
    pub prom_url: String,
    pub hook: Hook,
    /// The exporter, Alertmanager, Prometheus.
    pub procs: Vec<Proc>,
    pub dir: tempfile::TempDir,
}

impl Alerting {
    /// Start the three in `dir` (the exporter's config is written there); `None` (skipped by
    /// name) when Prometheus or Alertmanager is not installed.
    pub async fn start(
        test: &str,
        dir: tempfile::TempDir,
        config: &str,
        args: &[String],
    ) -> Option<Alerting> {
        let prometheus = tool(test, &["prometheus"])?;
        let alertmanager = tool(test, &["prometheus-alertmanager", "alertmanager"])?;
        oauth_token_exporter::sources::install_tls_provider();
        let http = reqwest::Client::new();
        let web = free_port();
        let config_path = dir.path().join("exporter.yml");
        std::fs::write(&config_path, config).unwrap();
        let exporter = Proc::start(
            Command::new(env!("CARGO_BIN_EXE_oauth-token-exporter"))
                .arg("--config.file")
                .arg(&config_path)
                .arg(format!("--web.listen-address=127.0.0.1:{web}"))
                .args(args),
            dir.path().join("exporter.log"),
        );
        let exporter_url = format!("http://127.0.0.1:{web}");
        let hook: Hook = Arc::default();
        let hook_url = serve(
            axum::Router::new()
                .route("/{receiver}", post(receive))
                .with_state(hook.clone()),
        )
        .await;
        let am_port = free_port();
        let am_config = dir.path().join("alertmanager.yml");
        std::fs::write(&am_config, alertmanager_config(&hook_url)).unwrap();
        let am = Proc::start(
            Command::new(alertmanager)
                .arg(format!("--config.file={}", am_config.display()))
                .arg(format!(
                    "--storage.path={}",
                    dir.path().join("am").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{am_port}"))
                .arg("--cluster.listen-address="),
            dir.path().join("alertmanager.log"),
        );
        let prom_port = free_port();
        std::fs::write(dir.path().join("rules.yml"), scaled_rules()).unwrap();
        let prom_config = dir.path().join("prometheus.yml");
        std::fs::write(
            &prom_config,
            json!({
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [dir.path().join("rules.yml")],
                "alerting": {"alertmanagers": [{"static_configs": [{"targets": [format!("127.0.0.1:{am_port}")]}]}]},
                "scrape_configs": [{"job_name": "oauth-token-exporter", "static_configs": [{"targets": [format!("127.0.0.1:{web}")]}]}]
            })
            .to_string(),
        )
        .unwrap();
        let prom = Proc::start(
            Command::new(prometheus)
                .arg(format!("--config.file={}", prom_config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("prom").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{prom_port}")),
            dir.path().join("prometheus.log"),
        );
        let prom_url = format!("http://127.0.0.1:{prom_port}");
        wait_ready(&http, &format!("{exporter_url}/-/healthy"), &exporter).await;
        wait_ready(&http, &format!("http://127.0.0.1:{am_port}/-/ready"), &am).await;
        wait_ready(&http, &format!("{prom_url}/-/ready"), &prom).await;
        Some(Alerting {
            http,
            exporter_url,
            prom_url,
            hook,
            procs: vec![exporter, am, prom],
            dir,
        })
    }

    pub async fn query(&self, promql: &str) -> Vec<Value> {
        let r: Value = self
            .http
            .get(format!(
                "{}/api/v1/query?query={}",
                self.prom_url,
                percent_encode(promql)
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(r["status"], "success", "{promql}: {r}");
        r["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// Alerts firing in Prometheus (before Alertmanager's inhibition).
    pub async fn prometheus_firing(&self) -> BTreeSet<String> {
        let r: Value = self
            .http
            .get(format!("{}/api/v1/alerts", self.prom_url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        r["data"]["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["state"] == "firing")
            .map(|a| a["labels"]["alertname"].as_str().unwrap().to_string())
            .collect()
    }

    pub fn notifications(&self) -> Vec<Notification> {
        self.hook.lock().unwrap().clone()
    }

    pub fn delivered(&self, status: &str) -> BTreeSet<String> {
        self.notifications()
            .iter()
            .filter(|n| n.status == status)
            .map(|n| n.alertname.clone())
            .collect()
    }

    pub async fn until<F, Fut>(&self, what: &str, limit: Duration, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + limit;
        while !check().await {
            if Instant::now() > deadline {
                let firing = self.prometheus_firing().await;
                panic!(
                    "{what}: not within {limit:?}\nnotifications: {:#?}\nfiring in Prometheus: {firing:?}\nexporter log:\n{}\nprometheus log:\n{}",
                    self.notifications(),
                    self.procs[0].log_tail(),
                    self.procs[2].log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Wait for `expected` to be delivered firing, let a few more evaluations pass, and
    /// check that nothing else was.
    pub async fn expect_alerts(&self, expected: &[(&str, &str)]) {
        let want: BTreeSet<String> = expected.iter().map(|(a, _)| a.to_string()).collect();
        self.until(
            &format!("alerts {want:?} delivered"),
            Duration::from_secs(90),
            || async { want.is_subset(&self.delivered("firing")) },
        )
        .await;
        // Longer than every scaled `for` of an alert that could wrongly follow.
        tokio::time::sleep(Duration::from_secs(12)).await;
        assert_eq!(
            self.delivered("firing"),
            want,
            "the alerts delivered, and no others: {:#?}",
            self.notifications()
        );
        for (alert, receiver) in expected {
            assert!(
                self.notifications()
                    .iter()
                    .filter(|n| n.alertname == *alert && n.status == "firing")
                    .all(|n| n.receiver == *receiver),
                "{alert} goes to {receiver}: {:#?}",
                self.notifications()
            );
        }
    }

    /// Like [`Stack::expect_alerts`], and each of `inhibited` fired in Prometheus but was
    /// silenced by the shipped inhibition rules.
    pub async fn expect_inhibiting(&self, expected: &[(&str, &str)], inhibited: &[&str]) {
        self.expect_alerts(expected).await;
        let firing = self.prometheus_firing().await;
        for a in inhibited {
            assert!(
                firing.contains(*a),
                "{a} fired in Prometheus (and was inhibited): {firing:?}"
            );
        }
    }

    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.exporter_url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}
