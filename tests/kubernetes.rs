//! `examples/kubernetes/sidecar.yaml` is a working example: every flag the container passes is
//! one the binary has, the ConfigMap's config passes `--config.check` with the container's
//! environment, the probes and the Service point at the port the exporter listens on, the
//! Prometheus Operator scrape keeps the job name the shipped alerts use, and the container is
//! locked down (read-only root, non-root, no capabilities, read-only config mount).

mod common;
use common::*;
use serde_json::Value;

fn documents() -> Vec<Value> {
    let text = std::fs::read_to_string(root().join("examples/kubernetes/sidecar.yaml")).unwrap();
    text.split("\n---\n")
        .map(|d| serde_saphyr::from_str::<Value>(d).unwrap_or_else(|e| panic!("{e}\n{d}")))
        .collect()
}

fn kind<'a>(docs: &'a [Value], k: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == k)
        .unwrap_or_else(|| panic!("no {k}"))
}

#[test]
fn the_kubernetes_sidecar_example_runs_the_real_binary_as_configured() {
    let docs = documents();
    let pod = &kind(&docs, "Deployment")["spec"]["template"]["spec"];
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
    let cm = kind(&docs, "ConfigMap");
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
    assert!(said.contains("Reverse proxy on 127.0.0.1:9878"), "{said}");
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
    let svc = kind(&docs, "Service");
    assert_eq!(&svc["spec"]["ports"][0]["targetPort"], port_name);
    let sm = kind(&docs, "ServiceMonitor");
    assert_eq!(
        sm["spec"]["endpoints"][0]["port"],
        svc["spec"]["ports"][0]["name"]
    );
    assert_eq!(
        sm["spec"]["selector"]["matchLabels"],
        svc["metadata"]["labels"]
    );
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
