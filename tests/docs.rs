//! README.md stays true: every metric the binary can export, every flag of `--help`, every
//! shipped alert and every top-level config key is documented in it.

mod common;
use common::*;
use std::collections::BTreeSet;

fn readme() -> String {
    std::fs::read_to_string(root().join("README.md")).unwrap()
}

/// Every metric family of an exporter with every inlet, the detectors and persistence on.
async fn every_family() -> BTreeSet<String> {
    let (d, path, _pool) = sqlite_db(&[
        "CREATE TABLE t (id TEXT, lr TEXT)",
        "INSERT INTO t VALUES ('c1', '2026-05-31T12:00:00Z')",
        "CREATE TABLE oauth_events (id INTEGER PRIMARY KEY, type TEXT, connection TEXT)",
    ])
    .await;
    let yaml = format!(
        "sources:\n  - name: app\n    kind: sqlite\n    dsn: {db}\n    query: SELECT id, lr FROM t\n    fields: {{connection: id, last_refresh: lr}}\n\
         event_tables:\n  - {{name: ev, kind: sqlite, dsn: {db}, table: oauth_events, state_file: {dir}/ev.json}}\n\
         ingest:\n  source: ing\n  token_env: OTE_DOCS_INGEST\n\
         nango_webhook:\n  source: nan\n  signing_key_env: OTE_DOCS_NANGO\n\
         proxy:\n  source: prx\n\
         persistence:\n  file: {dir}/inlets.json\n",
        db = path.display(),
        dir = d.path().display()
    );
    let cfg = oauth_token_exporter::config::parse(&yaml, "docs.yml", &|k| match k {
        "OTE_DOCS_INGEST" => Some("0123456789abcdef0123".into()),
        "OTE_DOCS_NANGO" => Some("nango-secret".into()),
        _ => None,
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let clock = oauth_token_exporter::clock::ManualClock::new(fixed_now());
    let mut e = oauth_token_exporter::Exporter::new(&cfg, clock).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(poll(&mut e).await, [true]);
    // With the golden file's families too (a fixed fleet).
    let golden = std::fs::read_to_string(root().join("tests/golden/metrics.txt")).unwrap();
    families(&scrape(&e))
        .union(&families(&golden))
        .cloned()
        .collect()
}

/// The metric names of an exposition, counters with their `_total` as queried.
fn families(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| {
            let (name, kind) = l.split_once(' ').unwrap();
            match kind {
                "counter" if !name.ends_with("_total") => format!("{name}_total"),
                _ => name.to_string(),
            }
        })
        .collect()
}

#[tokio::test]
async fn every_metric_is_documented_in_the_readme() {
    let families = every_family().await;
    assert!(
        families.len() > 30,
        "the whole catalogue is exported: {families:?}"
    );
    assert!(families.contains("oauth_exporter_state_write_errors_total"));
    let readme = readme();
    let missing: Vec<&String> = families
        .iter()
        .filter(|n| !readme.contains(&format!("`{n}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "metrics missing from README.md: {missing:?}"
    );
}

#[test]
fn every_flag_of_help_is_documented_in_the_readme() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_oauth-token-exporter"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    let flags: BTreeSet<&str> = help
        .split_whitespace()
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| w.trim_end_matches(','))
        .filter(|w| !matches!(*w, "--help" | "--version"))
        .collect();
    assert!(flags.contains("--web.config.file"), "{flags:?}");
    let readme = readme();
    let missing: Vec<&&str> = flags
        .iter()
        .filter(|f| !readme.contains(&format!("`{f}")))
        .collect();
    assert!(
        missing.is_empty(),
        "flags missing from README.md: {missing:?}"
    );
}

#[test]
fn every_shipped_alert_is_documented_in_the_readme() {
    let alerts = std::fs::read_to_string(root().join("alerts/ALERTS.txt")).unwrap();
    let readme = readme();
    let missing: Vec<&str> = alerts
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter(|a| !readme.contains(&format!("`{a}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "alerts missing from README.md: {missing:?}"
    );
}

#[test]
fn every_top_level_config_key_is_documented_in_the_readme() {
    // The config parser names its top-level keys when it meets an unknown one.
    let err = oauth_token_exporter::config::parse("nonsense: 1\n", "docs.yml", &|_| None)
        .expect_err("an unknown key is refused")
        .to_string();
    let keys: Vec<&str> = err
        .split("expected one of ")
        .nth(1)
        .expect("the message lists the keys")
        .lines()
        .next()
        .unwrap()
        .split(", ")
        .map(str::trim)
        .collect();
    assert!(keys.contains(&"persistence"), "{keys:?}");
    let readme = readme();
    let missing: Vec<&&str> = keys
        .iter()
        .filter(|k| !readme.contains(&format!("{k}:")))
        .collect();
    assert!(
        missing.is_empty(),
        "config keys missing from README.md: {missing:?}"
    );
}
