//! The Kustomize manifests (`packaging/kubernetes`), rendered by `kubectl kustomize` for each
//! overlay (standalone, sidecar), run the real binary as configured: every flag the container
//! passes is one the binary has, the ConfigMap's config passes `--config.check` with the
//! container's environment, the probes and the Service point at the port the exporter listens
//! on, the Prometheus Operator scrape keeps the job name the shipped alerts use, the container
//! is locked down (read-only root, non-root, no capabilities, read-only config mount), and the
//! shipped rules and dashboards in the base are the ones in alerts/ and dashboards/ (UPDATE_GENERATED=1
//! rewrites them). `packaging/kubernetes/check.sh` validates the rendered manifests against the
//! Kubernetes and Prometheus Operator schemas.

mod common;
use common::*;
use serde_json::Value;

/// The rendered documents of an overlay; `None` (skipped) without kubectl.
fn documents(test: &str, overlay: &str) -> Option<Vec<Value>> {
    let kubectl = tool(test, &["kubectl"])?;
    let out = std::process::Command::new(kubectl)
        .arg("kustomize")
        .arg(root().join(format!("packaging/kubernetes/overlays/{overlay}")))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    Some(
        text.split("\n---\n")
            .map(|d| serde_saphyr::from_str::<Value>(d).unwrap_or_else(|e| panic!("{e}\n{d}")))
            .collect(),
    )
}

/// The base carries the shipped rules and dashboards as they are in alerts/ and dashboards/.
#[test]
fn the_kustomize_base_carries_the_shipped_rules_and_dashboards() {
    let base = root().join("packaging/kubernetes/base");
    let mut pairs = vec![(
        root().join("alerts/kubernetes/prometheusrule.yaml"),
        base.join("prometheusrule.yaml"),
    )];
    for e in std::fs::read_dir(root().join("dashboards")).unwrap() {
        let p = e.unwrap().path();
        pairs.push((
            p.clone(),
            base.join("dashboards").join(p.file_name().unwrap()),
        ));
    }
    for (source, copy) in pairs {
        let want = std::fs::read_to_string(&source).unwrap();
        if std::env::var("UPDATE_GENERATED").is_ok_and(|v| v == "1") {
            std::fs::write(&copy, &want).unwrap();
        }
        let got = std::fs::read_to_string(&copy).unwrap_or_default();
        assert!(
            got == want,
            "{} differs from {}: UPDATE_GENERATED=1 cargo test --test kubernetes",
            copy.display(),
            source.display()
        );
        let listed = std::fs::read_to_string(base.join("kustomization.yaml")).unwrap();
        let name = copy.file_name().unwrap().to_string_lossy().to_string();
        assert!(listed.contains(&name), "{name} is not in the kustomization");
    }
}

fn kind<'a>(docs: &'a [Value], k: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == k)
        .unwrap_or_else(|| panic!("no {k}"))
}

#[test]
fn both_kustomize_overlays_run_the_real_binary_as_configured() {
    for overlay in ["standalone", "sidecar"] {
        let Some(docs) = documents(
            "both_kustomize_overlays_run_the_real_binary_as_configured",
            overlay,
        ) else {
            return;
        };
        check_overlay(overlay, &docs);
    }
}

fn check_overlay(overlay: &str, docs: &[Value]) {
    let cm = docs
        .iter()
        .find(|d| {
            d["kind"] == "ConfigMap" && d["metadata"]["name"] == "oauth-token-exporter-dashboards"
        })
        .unwrap_or_else(|| panic!("{overlay}: the dashboards ConfigMap"));
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    assert_eq!(cm["data"].as_object().unwrap().len(), 3);
    let pod = &kind(docs, "Deployment")["spec"]["template"]["spec"];
    let c = pod["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "oauth-token-exporter")
        .expect("the sidecar container");
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let flag = |name: &str| {
        args.iter()
            .find_map(|a| a.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("{name} not in {args:?}"))
    };

    // The config the ConfigMap mounts where --config.file says, checked by the binary with the
    // container's environment (secrets replaced by stand-ins).
    let config_path = flag("--config.file");
    let mount = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| config_path.starts_with(m["mountPath"].as_str().unwrap()))
        .expect("the config file is on a mount");
    assert_eq!(mount["readOnly"], true, "the config is mounted read-only");
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    let cm = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "oauth-token-exporter")
        .unwrap();
    assert_eq!(volume["configMap"]["name"], cm["metadata"]["name"]);
    let file_name = config_path.rsplit('/').next().unwrap();
    let config = cm["data"][file_name]
        .as_str()
        .expect("the ConfigMap holds the file");
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join(file_name);
    std::fs::write(&local, config).unwrap();
    let mut check = std::process::Command::new(env!("CARGO_BIN_EXE_oauth-token-exporter"));
    check.arg("--config.check");
    for a in &args {
        match a.split_once('=') {
            Some(("--config.file", _)) => check.arg(format!("--config.file={}", local.display())),
            _ => check.arg(a),
        };
    }
    for e in c["env"].as_array().unwrap() {
        let stand_in = match e["name"].as_str().unwrap() {
            "APP_DATABASE_URL" => "postgres://exporter@db:5432/app".to_string(),
            _ => "0123456789abcdef0123456789".to_string(),
        };
        check.env(e["name"].as_str().unwrap(), stand_in);
    }
    let out = check.output().unwrap();
    assert!(
        out.status.success(),
        "--config.check refused the ConfigMap's config or a flag: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    if overlay == "sidecar" {
        assert!(said.contains("Reverse proxy on 127.0.0.1:9878"), "{said}");
    }
    // The persistence file is on a writable volume, not the read-only root.
    let persisted = config
        .lines()
        .find_map(|l| l.trim().strip_prefix("file: "))
        .expect("persistence.file");
    let state = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| persisted.starts_with(m["mountPath"].as_str().unwrap()))
        .expect("the persistence file is on a volume");
    assert_ne!(state["readOnly"], true);

    // The port the exporter listens on is the one probed, exposed and scraped.
    let port: u64 = flag("--web.listen-address")
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let ports = c["ports"].as_array().unwrap();
    assert_eq!(ports[0]["containerPort"], port);
    let port_name = &ports[0]["name"];
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/-/healthy");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/-/ready");
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(&c[probe]["httpGet"]["port"], port_name);
    }
    let svc = kind(docs, "Service");
    assert_eq!(&svc["spec"]["ports"][0]["targetPort"], port_name);
    let sm = kind(docs, "ServiceMonitor");
    assert_eq!(
        sm["spec"]["endpoints"][0]["port"],
        svc["spec"]["ports"][0]["name"]
    );
    for (k, v) in sm["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(
            &svc["metadata"]["labels"][k], v,
            "the ServiceMonitor selects the Service"
        );
    }
    // The Service selects the pods the exporter runs in.
    let pod_labels = &kind(docs, "Deployment")["spec"]["template"]["metadata"]["labels"];
    for (k, v) in svc["spec"]["selector"].as_object().unwrap() {
        assert_eq!(
            &pod_labels[k], v,
            "{overlay}: the Service selects the exporter's pods"
        );
    }
    let job = sm["spec"]["endpoints"][0]["relabelings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["targetLabel"] == "job")
        .expect("the job label is set");
    let rules =
        std::fs::read_to_string(root().join("alerts/oauth-token-exporter.rules.yml")).unwrap();
    assert!(rules.contains(&format!(
        "up{{job=\"{}\"}}",
        job["replacement"].as_str().unwrap()
    )));

    // Locked down.
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    // Secrets come from a Secret, never inline.
    for e in c["env"].as_array().unwrap() {
        assert!(e.get("value").is_none(), "{e} is inline");
    }
}
