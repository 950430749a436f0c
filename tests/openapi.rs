//! `api/openapi.yaml` is the contract of the ingest API and of `GET /api/v1/connections`, and
//! the real binary keeps it: Schemathesis generates valid and invalid batches and queries from
//! the document (examples, boundary coverage, fuzzing; the connections list over a store with
//! healthy, at-risk, expired and flagged connections, some ids and names that need escaping)
//! and checks every answer (no server error, documented status codes and content
//! types, answers matching their schemas, valid batches accepted; a batch is accepted in part
//! by design, so Schemathesis's whole-body negative check is the one left out).
//! Schemathesis comes from PyPI (`.ci/run` installs it into `target/schemathesis`); without it
//! the test is skipped by name, and `CI=true` makes it mandatory.

mod common;
use common::*;
use std::path::PathBuf;
use std::process::{Command, Stdio};

const TOKEN: &str = "schemathesis-ingest-token-0123456789";

fn schemathesis(test: &str) -> Option<PathBuf> {
    let local = root().join("target/schemathesis/bin/st");
    if local.exists() {
        return Some(local);
    }
    tool(test, &["st", "schemathesis"])
}

/// Run Schemathesis with `spec` against `base`: (passed, what it printed).
fn run(st: &PathBuf, spec: &std::path::Path, base: &str) -> (bool, String) {
    let out = Command::new(st)
        .arg("run")
        .arg(spec)
        .args(["--url", base])
        .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
        .args([
            "--checks",
            "all",
            "--max-examples",
            "300",
            "--seed",
            "20261123",
        ])
        .args(["--workers", "1", "--generation-database", "none"])
        // A batch is accepted in part by design (a valid event is never dropped because a
        // sibling is invalid: 200 with the invalid ones listed), so "the whole body was invalid,
        // expect 4xx" does not hold; tests/ingest.rs asserts each refusal instead. Every other
        // check still runs on the invalid batches too.
        .args(["--exclude-checks", "negative_data_rejection"])
        // Event times are kept out of the future (the API refuses those by the wall clock,
        // which a schema cannot state): tests/schemathesis_hooks.py.
        .env("SCHEMATHESIS_HOOKS", "schemathesis_hooks")
        .env("PYTHONPATH", root().join("tests"))
        // Its caches land in a directory of its own, not in the repository.
        .current_dir(std::env::temp_dir())
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingest_api_keeps_its_openapi_contract_under_schemathesis() {
    let test = "the_ingest_api_keeps_its_openapi_contract_under_schemathesis";
    let Some(st) = schemathesis(test) else {
        return;
    };
    oauth_token_exporter::sources::install_tls_provider();
    let now = chrono::Utc::now().timestamp();
    let rows = (0..40)
        .map(|i| {
            let status = ["active", "needs_reauth", "revoked", "weird"][i % 4];
            format!(
                "('c{i}\"<&>', 't{i}', 'Org \u{e9}{i} <b>', 'user{}', {}, '{status}')",
                i % 3,
                now - (i as i64) * 2 * 86400
            )
        })
        .collect::<Vec<_>>()
        .join(",");
    let insert = format!("INSERT INTO tokens VALUES {rows}");
    let (dir, db, _pool) = sqlite_db(&[
        "CREATE TABLE tokens (id TEXT, tenant_id TEXT, tenant_name TEXT, user_id TEXT, refreshed_at INTEGER, status TEXT)",
        &insert,
    ])
    .await;
    let config = dir.path().join("c.yml");
    std::fs::write(
        &config,
        format!(
            "ingest:\n  source: app\n  token_env: OTE_OPENAPI_TOKEN\n\
             sources:\n  - name: store\n    kind: sqlite\n    dsn: {}\n\
             \x20   query: SELECT * FROM tokens\n\
             \x20   fields: {{connection: id, tenant: tenant_id, user: user_id, last_refresh: {{column: refreshed_at, format: epoch_seconds}}, status: status}}\n\
             \x20   labels: {{tenant_name: tenant_name}}\n",
            db.display()
        ),
    )
    .unwrap();
    let port = free_port();
    let _exporter = Kill(
        Command::new(env!("CARGO_BIN_EXE_oauth-token-exporter"))
            .arg("--config.file")
            .arg(&config)
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .env("OTE_OPENAPI_TOKEN", TOKEN)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{port}");
    assert!(
        answers(&format!("{base}/-/healthy")).await,
        "the exporter did not start"
    );
    // The store has been polled: the list has something to page through.
    let mut listed = serde_json::Value::Null;
    for _ in 0..100 {
        listed =
            serde_json::from_str(&get_text(&format!("{base}/api/v1/connections?limit=1")).await)
                .unwrap();
        if listed["total"] == 40 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(listed["total"], 40, "{listed}");

    let spec = root().join("api/openapi.yaml");
    let (st2, spec2, base2) = (st.clone(), spec.clone(), base.clone());
    let (ok, said) = tokio::task::spawn_blocking(move || run(&st2, &spec2, &base2))
        .await
        .unwrap();
    let tail: String = said
        .lines()
        .rev()
        .take(60)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        ok,
        "Schemathesis found the binary breaking its contract:\n{tail}"
    );
    assert!(said.contains("passed"), "{tail}");

    // The valid batches it generated were counted.
    let text = get_text(&format!("{base}/metrics")).await;
    let refreshes: f64 = text
        .lines()
        .filter(|l| l.starts_with("oauth_token_refreshes_total{") && l.contains("source=\"app\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(refreshes > 0.0, "no generated refresh was counted");

    // The checks are live: a contract that misstates an answer is caught, on either endpoint.
    let text = std::fs::read_to_string(&spec).unwrap();
    for (i, (right, wrong)) in [
        (
            "accepted: {type: integer, minimum: 0}",
            "accepted: {type: string}",
        ),
        (
            "refresh_token_expired: {type: boolean}",
            "refresh_token_expired: {type: string}",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let broken = dir.path().join(format!("broken{i}.yaml"));
        let changed = text.replacen(right, wrong, 1);
        assert_ne!(changed, text);
        std::fs::write(&broken, changed).unwrap();
        let (st, base) = (st.clone(), base.clone());
        let (ok, said) = tokio::task::spawn_blocking(move || run(&st, &broken, &base))
            .await
            .unwrap();
        assert!(
            !ok,
            "a wrong answer schema ({wrong}) went unnoticed:\n{said}"
        );
    }
}
