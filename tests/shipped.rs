//! The shipped alerts, dashboards and Alertmanager example, checked with the real tools
//! (`promtool`, `amtool`) and against what the exporter exports:
//! - `promtool check rules` and `promtool test rules` on alerts/;
//! - every alert: `OAuth` CamelCase name, a severity of critical/warning/info, a summary, a
//!   templated description, a runbook in alerts/runbooks/, and promtool cases that fire and that
//!   do not fire yet; the list of names is alerts/ALERTS.txt (a ratchet);
//! - alerts/kubernetes/prometheusrule.yaml is generated from the rules file
//!   (`UPDATE_GENERATED=1 cargo test --test shipped` rewrites it);
//! - every dashboard: importable JSON with a stable uid, a datasource variable, no hard-coded
//!   instance;
//! - every `oauth_*` metric a rule or dashboard uses is one the exporter exports;
//! - `amtool check-config` and `amtool config routes test` on examples/alertmanager.yml;
//! - `promtool check config` on examples/prometheus.yml.

mod common;
use common::{root, scrape, serve, tool};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_saphyr::from_str::<Value>(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

const RULES: &str = "alerts/oauth-token-exporter.rules.yml";

/// Run a tool; its standard output (the test fails with both outputs if it fails).
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Every rule of the rules file: (group, rule).
fn rules() -> Vec<Value> {
    yaml(&root().join(RULES))["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().clone())
        .collect()
}

fn alerts() -> Vec<Value> {
    rules()
        .into_iter()
        .filter(|r| r.get("alert").is_some())
        .collect()
}

#[test]
fn promtool_accepts_the_rules_and_every_unit_test_passes() {
    let test = "promtool_accepts_the_rules_and_every_unit_test_passes";
    let Some(promtool) = tool(test, &["promtool"]) else {
        return;
    };
    run(Command::new(&promtool)
        .args(["check", "rules", RULES])
        .current_dir(root()));
    let tests = promtool_tests();
    assert!(!tests.is_empty());
    let out = run(Command::new(&promtool).args(["test", "rules"]).args(&tests));
    assert!(!out.contains("FAILED"), "{out}");
}

#[test]
fn every_alert_has_a_name_severity_summary_description_and_runbook() {
    let mut problems = Vec::new();
    for a in alerts() {
        let name = a["alert"].as_str().unwrap();
        let ok_name = name.starts_with("OAuth")
            && name.chars().all(|c| c.is_ascii_alphanumeric())
            && name.chars().nth(5).is_some_and(|c| c.is_ascii_uppercase());
        if !ok_name {
            problems.push(format!("{name}: not CamelCase with the OAuth prefix"));
        }
        let sev = a["labels"]["severity"].as_str().unwrap_or("");
        if !["critical", "warning", "info"].contains(&sev) {
            problems.push(format!("{name}: severity {sev:?}"));
        }
        let ann = &a["annotations"];
        let summary = ann["summary"].as_str().unwrap_or("");
        if summary.is_empty() || summary.contains("{{") || !summary.ends_with('.') {
            problems.push(format!("{name}: summary must be a plain sentence"));
        }
        if !ann["description"]
            .as_str()
            .unwrap_or("")
            .contains("{{ $labels.")
        {
            problems.push(format!("{name}: description must use its labels"));
        }
        let url = ann["runbook_url"].as_str().unwrap_or("");
        let expected = format!("/alerts/runbooks/{name}.md");
        if !url.starts_with("https://") || !url.ends_with(&expected) {
            problems.push(format!(
                "{name}: runbook_url {url:?} must end in {expected}"
            ));
        }
        let runbook = root().join(format!("alerts/runbooks/{name}.md"));
        match std::fs::read_to_string(&runbook) {
            Ok(text) => {
                for section in ["## What it means", "## What to check", "## How to fix it"] {
                    if !text.contains(section) {
                        problems.push(format!("{}: no {section:?}", runbook.display()));
                    }
                }
                if !text.contains(&format!("**{sev}**")) {
                    problems.push(format!(
                        "{}: severity differs from the rule",
                        runbook.display()
                    ));
                }
            }
            Err(e) => problems.push(format!("{}: {e}", runbook.display())),
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_list_of_shipped_alerts_is_checked_in() {
    let names: Vec<String> = alerts()
        .iter()
        .map(|a| a["alert"].as_str().unwrap().to_string())
        .collect();
    let listed: Vec<String> = std::fs::read_to_string(root().join("alerts/ALERTS.txt"))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    assert_eq!(
        names, listed,
        "alerts/ALERTS.txt lists the shipped alerts in rule order; adding or removing one is a deliberate change (and a CHANGELOG [CHANGE])"
    );
    let mut runbooks: Vec<String> = std::fs::read_dir(root().join("alerts/runbooks"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().replace(".md", ""))
        .collect();
    runbooks.sort();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(runbooks, sorted, "one runbook per alert, no orphans");
}

/// The promtool test files of alerts/tests.
fn promtool_tests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("alerts/tests"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.display().to_string().ends_with(".test.yml"))
        .collect();
    files.sort();
    files
}

/// Every alert has a promtool case that fires and one that does not fire yet, each also with
/// two and with three instances of the exporter (README "Running more than one").
#[test]
fn every_alert_has_a_case_that_fires_and_one_that_does_not_fire_yet() {
    // (alert, fires, instances of the exporter in the case's input)
    let mut cases = BTreeSet::new();
    for path in promtool_tests() {
        let doc = yaml(&path);
        for t in doc["tests"].as_array().unwrap() {
            let instances: BTreeSet<String> = t["input_series"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s["series"].as_str())
                .filter(|s| s.contains("job=\"oauth-token-exporter\""))
                .filter_map(|s| s.split("instance=\"").nth(1))
                .filter_map(|s| s.split('"').next())
                .map(str::to_string)
                .collect();
            for a in t["alert_rule_test"].as_array().into_iter().flatten() {
                let name = a["alertname"].as_str().unwrap().to_string();
                let fires = !a["exp_alerts"].as_array().is_some_and(|v| v.is_empty());
                cases.insert((name, fires, instances.len()));
            }
        }
    }
    for a in alerts() {
        let name = a["alert"].as_str().unwrap();
        for (fires, what) in [(true, "fires"), (false, "does not fire yet")] {
            // The single-instance cases are in the other files; the alerts on a fleet's
            // shards and leases need two instances to fire at all.
            let any = cases.iter().any(|(n, f, _)| n == name && *f == fires);
            assert!(any, "{name} has no promtool case that {what}");
            for n in [2, 3] {
                assert!(
                    cases.contains(&(name.to_string(), fires, n)),
                    "{name} has no promtool case that {what} with {n} instances"
                );
            }
        }
    }
}

/// alerts/tests/replicas.generated.test.yml is what alerts/tests/replicas.py makes of the
/// single-instance cases today.
#[test]
fn the_replica_cases_are_generated_from_the_single_instance_ones() {
    let test = "the_replica_cases_are_generated_from_the_single_instance_ones";
    let Some(python) = tool(test, &["python3"]) else {
        return;
    };
    run(Command::new(python)
        .args(["alerts/tests/replicas.py", "--check"])
        .current_dir(root()));
}

/// The PrometheusRule text generated from the rules file: its leading comment replaced, the
/// rest indented under `spec:`.
fn prometheus_rule() -> String {
    let src = std::fs::read_to_string(root().join(RULES)).unwrap();
    let body: Vec<&str> = src.lines().skip_while(|l| l.starts_with('#')).collect();
    let mut out = String::from(
        "# Generated from alerts/oauth-token-exporter.rules.yml; do not edit.\n\
         # Regenerate: UPDATE_GENERATED=1 cargo test --test shipped\n\
         apiVersion: monitoring.coreos.com/v1\n\
         kind: PrometheusRule\n\
         metadata:\n\
         \x20 name: oauth-token-exporter\n\
         \x20 labels:\n\
         \x20   app.kubernetes.io/name: oauth-token-exporter\n\
         \x20   role: alert-rules\n\
         spec:\n",
    );
    for l in body {
        if l.is_empty() {
            out.push('\n');
        } else {
            out.push_str("  ");
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

#[test]
fn the_kubernetes_prometheus_rule_is_generated_from_the_rules_file() {
    let path = root().join("alerts/kubernetes/prometheusrule.yaml");
    let want = prometheus_rule();
    if std::env::var("UPDATE_GENERATED").is_ok() {
        std::fs::write(&path, &want).unwrap();
    }
    let got = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        got == want,
        "{} is out of date: run UPDATE_GENERATED=1 cargo test --test shipped",
        path.display()
    );
    // And they mean the same rules.
    let k8s = yaml(&path);
    assert_eq!(k8s["kind"], "PrometheusRule");
    assert_eq!(k8s["spec"]["groups"], yaml(&root().join(RULES))["groups"]);
}

/// Every `oauth_*` metric name in a PromQL text (recording-rule names, which hold `:`, aside).
pub fn metric_names(promql: &str) -> BTreeSet<String> {
    let b = promql.as_bytes();
    let mut out = BTreeSet::new();
    let mut i = 0;
    while let Some(pos) = promql[i..].find("oauth_") {
        let start = i + pos;
        let prev_ok =
            start == 0 || !(b[start - 1].is_ascii_alphanumeric() || b"_:".contains(&b[start - 1]));
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        let colon_after = b.get(end) == Some(&b':');
        if prev_ok && !colon_after {
            out.insert(promql[start..end].to_string());
        }
        i = end;
    }
    out
}

/// Every PromQL expression shipped: rules and dashboard panel targets.
fn shipped_expressions() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = rules()
        .iter()
        .map(|r| {
            let name = r
                .get("alert")
                .or_else(|| r.get("record"))
                .and_then(Value::as_str)
                .unwrap()
                .to_string();
            (name, r["expr"].as_str().unwrap().to_string())
        })
        .collect();
    for d in dashboards() {
        let title = d["title"].as_str().unwrap_or("").to_string();
        for p in panels(&d) {
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str() {
                    out.push((
                        format!("{title} / {}", p["title"].as_str().unwrap_or("")),
                        e.to_string(),
                    ));
                }
            }
        }
        for v in d["templating"]["list"].as_array().into_iter().flatten() {
            if let Some(q) = v["query"]["query"].as_str().or_else(|| v["query"].as_str()) {
                out.push((
                    format!("{title} / ${}", v["name"].as_str().unwrap_or("")),
                    q.to_string(),
                ));
            }
        }
    }
    out
}

pub fn dashboards() -> Vec<Value> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(root().join("dashboards"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| {
            serde_json::from_str(&std::fs::read_to_string(p).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        })
        .collect()
}

/// Panels, including those nested in rows.
pub fn panels(d: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().into_iter().flatten() {
        out.push(p.clone());
        for inner in p["panels"].as_array().into_iter().flatten() {
            out.push(inner.clone());
        }
    }
    out
}

/// Metric names the exporter exports (as `/metrics` names them: counters with `_total`), with
/// every inlet configured, a connection in its source and one API call through its proxy to the
/// simulated Xero (so the per-connection and per-tenant series exist too).
async fn exported_names() -> BTreeSet<String> {
    use oauth_token_exporter::clock::{SharedClock, SystemClock};
    use oauth_token_exporter::sim::xero::SimXero;
    oauth_token_exporter::sources::install_tls_provider();
    let clock: SharedClock = std::sync::Arc::new(SystemClock);
    let sim = SimXero::new(clock.clone());
    sim.add_client("app", "secret");
    let tenant = sim.add_tenant("Org", &["alice"]);
    let tokens = sim.authorize("app", "alice", std::slice::from_ref(&tenant));
    let sim_url = serve(sim.router()).await;
    let (d, db, pool) = common::sqlite_db(&[
        "CREATE TABLE xero_tokens (id TEXT, tenant_id TEXT, expires_at INTEGER)",
        "CREATE TABLE oauth_events (id INTEGER PRIMARY KEY, type TEXT, connection TEXT, tenant TEXT, time TEXT, outcome TEXT, error TEXT, status INTEGER, detail TEXT, rate_limit_problem TEXT)",
    ])
    .await;
    sqlx::query("INSERT INTO xero_tokens VALUES ('c1', 't1', strftime('%s','now') + 600)")
        .execute(&pool)
        .await
        .unwrap();
    let yaml = format!(
        "sources:\n  - {{name: app, kind: sqlite, dsn: {db}, preset: xero_tokens}}\n\
         event_tables:\n  - {{name: ev, kind: sqlite, dsn: {db}, table: oauth_events, state_file: {state}}}\n\
         ingest:\n  token_env: T\n\
         nango_webhook:\n  source: nango\n\
         proxy:\n  source: proxy\n  identity_url: {sim_url}\n  api_url: {sim_url}\n\
         persistence:\n  file: {inlets}\n\
         client_secrets:\n  - {{provider: xero, client: app, expires: 2099-01-01}}\n",
        db = db.display(),
        state = d.path().join("c").display(),
        inlets = d.path().join("inlets.json").display()
    );
    let cfg = oauth_token_exporter::config::parse(&yaml, "all.yml", &|_| {
        Some("0123456789abcdef0123".into())
    })
    .unwrap();
    let mut e = oauth_token_exporter::Exporter::new(&cfg, clock).unwrap();
    assert_eq!(common::poll(&mut e).await, [true]);
    let proxy = serve(e.proxy_router().unwrap()).await;
    let answer = reqwest::Client::new()
        .get(format!("{proxy}/api.xro/2.0/Organisation"))
        .bearer_auth(&tokens.access_token)
        .header("xero-tenant-id", &tenant)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    scrape(&e)
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .flat_map(|l| {
            let (name, kind) = l.split_once(' ').unwrap();
            // A histogram is queried by its series.
            let series: &[&str] = match kind {
                "histogram" => &["", "_bucket", "_sum", "_count"],
                _ => &[""],
            };
            series
                .iter()
                .map(|s| format!("{name}{s}"))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test]
async fn every_metric_a_rule_or_dashboard_uses_is_one_the_exporter_exports() {
    let exported = exported_names().await;
    let mut unknown = Vec::new();
    let mut used = BTreeSet::new();
    for (what, expr) in shipped_expressions() {
        for m in metric_names(&expr) {
            used.insert(m.clone());
            if !exported.contains(&m) {
                unknown.push(format!("{what}: {m}"));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "not exported: {unknown:#?}\nexported: {exported:#?}"
    );
    assert!(used.len() > 15, "{used:?}");
}

#[test]
fn the_metric_name_scanner_skips_recording_rules() {
    let names = metric_names(
        "sum(rate(oauth_token_refreshes_total[5m])) / job:oauth_token_refreshes:rate5m + oauth_connections{status=\"x\"}",
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["oauth_connections", "oauth_token_refreshes_total"]
    );
}

#[test]
fn amtool_accepts_the_alertmanager_example_and_routes_by_severity() {
    let test = "amtool_accepts_the_alertmanager_example_and_routes_by_severity";
    let Some(amtool) = tool(test, &["amtool"]) else {
        return;
    };
    let config = root().join("examples/alertmanager.yml");
    run(Command::new(&amtool).arg("check-config").arg(&config));
    let route = |labels: &[&str]| {
        run(Command::new(&amtool)
            .args(["config", "routes", "test", "--config.file"])
            .arg(&config)
            .args(labels))
        .trim()
        .to_string()
    };
    for a in alerts() {
        let name = a["alert"].as_str().unwrap();
        let sev = a["labels"]["severity"].as_str().unwrap();
        let want = match sev {
            "critical" => "pager",
            "warning" => "ticket",
            _ => "chat",
        };
        let got = route(&[
            &format!("alertname={name}"),
            &format!("severity={sev}"),
            "provider=xero",
        ]);
        assert_eq!(got, want, "{name} ({sev})");
    }
    assert_eq!(route(&["alertname=Other"]), "ticket", "the default route");
}

#[test]
fn promtool_accepts_the_prometheus_example_with_the_rules_installed_beside_it() {
    let test = "promtool_accepts_the_prometheus_example_with_the_rules_installed_beside_it";
    let Some(promtool) = tool(test, &["promtool"]) else {
        return;
    };
    let d = tempfile::tempdir().unwrap();
    std::fs::copy(
        root().join("examples/prometheus.yml"),
        d.path().join("prometheus.yml"),
    )
    .unwrap();
    std::fs::copy(
        root().join(RULES),
        d.path().join("oauth-token-exporter.rules.yml"),
    )
    .unwrap();
    let out = run(Command::new(&promtool)
        .args(["check", "config"])
        .arg(d.path().join("prometheus.yml")));
    assert!(
        out.contains("SUCCESS: 23 rules found") || out.contains("SUCCESS"),
        "{out}"
    );
}

#[test]
fn every_dashboard_is_importable_with_a_stable_uid_and_a_datasource_variable() {
    let mut uids = BTreeSet::new();
    for entry in std::fs::read_dir(root().join("dashboards")).unwrap() {
        let path = entry.unwrap().path();
        let d: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let file = path.file_stem().unwrap().to_string_lossy().to_string();
        let uid = d["uid"].as_str().unwrap_or("");
        assert_eq!(uid, file, "{}: the uid is the file name", path.display());
        assert!(uids.insert(uid.to_string()), "duplicate uid {uid}");
        assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()));
        assert!(
            d.get("id").is_none_or(Value::is_null),
            "{uid}: no instance-specific id"
        );
        let vars = d["templating"]["list"].as_array().unwrap();
        assert!(
            vars.iter()
                .any(|v| v["type"] == "datasource" && v["query"] == "prometheus"),
            "{uid}: a Prometheus datasource variable"
        );
        let mut ids = BTreeSet::new();
        for p in panels(&d) {
            let title = p["title"].as_str().unwrap_or("");
            assert!(
                ids.insert(p["id"].as_i64().unwrap()),
                "{uid}: panel ids are unique"
            );
            assert!(
                p["gridPos"]["w"].as_i64().is_some(),
                "{uid}/{title}: gridPos"
            );
            if p["type"] == "row" {
                continue;
            }
            assert_eq!(
                p["datasource"]["uid"], "${datasource}",
                "{uid}/{title}: the panel uses the datasource variable"
            );
            let targets = p["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "{uid}/{title}: no query");
            for t in targets {
                let e = t["expr"].as_str().unwrap();
                assert!(
                    !e.contains("instance=\""),
                    "{uid}/{title}: hard-coded instance in {e}"
                );
                assert_eq!(t["datasource"]["uid"], "${datasource}", "{uid}/{title}");
            }
        }
    }
    assert_eq!(
        uids.into_iter().collect::<Vec<_>>(),
        [
            "oauth-connection",
            "oauth-exporter-health",
            "oauth-fleet-overview"
        ]
    );
}

/// The dashboards checked by TypeScript against Grafana's published dashboard schema
/// (`@grafana/schema`, pinned in tests/grafana-schema): `const d: DashboardJson = <file>`, so a
/// missing required field, a wrong type or an unknown property fails. A deliberately broken
/// copy must fail too, so the check cannot pass vacuously.
#[test]
fn dashboards_conform_to_grafanas_published_dashboard_schema() {
    let test = "dashboards_conform_to_grafanas_published_dashboard_schema";
    let Some(node) = tool(test, &["node"]) else {
        return;
    };
    let dir = root().join("tests/grafana-schema");
    let tsc = dir.join("node_modules/typescript/bin/tsc");
    if !tsc.exists() {
        // `.ci/run` installs it; elsewhere try once from the npm registry.
        let installed = tool(test, &["npm"]).is_some_and(|npm| {
            Command::new(npm)
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(&dir)
                .status()
                .is_ok_and(|s| s.success())
        });
        if !installed {
            if common::ci() {
                panic!("{test}: `npm ci` in tests/grafana-schema failed and CI=true makes it mandatory");
            }
            eprintln!(
                "SKIPPED {test}: cannot install @grafana/schema (npm ci in tests/grafana-schema)"
            );
            return;
        }
    }
    // Each run in its own directory beside node_modules (tests may run at once).
    let generated = dir.join("generated");
    std::fs::create_dir_all(&generated).unwrap();
    let check = |files: &[(String, String)]| -> (bool, String) {
        let run = tempfile::tempdir_in(&generated).unwrap();
        std::fs::write(
            run.path().join("tsconfig.json"),
            r#"{"extends": "../../tsconfig.json", "include": ["../../dashboard.ts", "*.ts"]}"#,
        )
        .unwrap();
        for (name, json) in files {
            std::fs::write(
                run.path().join(format!("{name}.ts")),
                format!("import type {{ DashboardJson }} from \"../../dashboard\";\nexport const dashboard: DashboardJson = {json};\n"),
            )
            .unwrap();
        }
        let out = Command::new(&node)
            .arg(&tsc)
            .arg("-p")
            .arg(run.path().join("tsconfig.json"))
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let files: Vec<(String, String)> = std::fs::read_dir(root().join("dashboards"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            (
                p.file_stem().unwrap().to_string_lossy().replace('-', "_"),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    assert_eq!(files.len(), 3, "every shipped dashboard");
    let (ok, said) = check(&files);
    assert!(
        ok,
        "a dashboard does not conform to @grafana/schema:\n{said}"
    );
    // The check is live: a misspelt panel field and a wrong type are refused.
    let (name, json) = &files[0];
    for (from, to) in [
        ("\"gridPos\"", "\"gridPoz\""),
        ("\"schemaVersion\": ", "\"schemaVersion\": \"x\", \"_n\": "),
    ] {
        let (ok, said) = check(&[(format!("{name}_broken"), json.replacen(from, to, 1))]);
        assert!(!ok, "{from} -> {to} was accepted");
        assert!(said.contains("error TS"), "{said}");
    }
}
