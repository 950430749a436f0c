//! The golden `/metrics` file: a fixed fleet on a fixed clock. `UPDATE_GOLDEN=1 cargo test
//! --test golden` rewrites it; `.ci/run` lints it with `promtool check metrics`.

mod common;
use common::*;

const GOLDEN: &str = "tests/golden/metrics.txt";

/// Poll durations and the process's own figures vary run to run, the build's revision and
/// rustc commit to commit, and
/// prometheus-client orders the series of a family by hash; fix the first two and sort the
/// series within each family.
fn normalise(text: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut run: Vec<String> = Vec::new();
    for l in text.lines() {
        if l.starts_with('#') {
            run.sort();
            out.append(&mut run);
            out.push(l.to_string());
        } else if l.starts_with("oauth_exporter_build_info{") {
            run.push(format!(
                "oauth_exporter_build_info{{version=\"{}\",revision=\"REVISION\",rustversion=\"RUSTC\"}} 1",
                env!("CARGO_PKG_VERSION")
            ));
        } else if l.starts_with("process_") {
            // The exporter's own process: its memory, CPU, threads and start time vary.
            run.push(format!("{} 0", l.rsplit_once(' ').unwrap().0));
        } else if l.starts_with("oauth_exporter_source_duration_seconds{") {
            run.push(format!("{} 0.0", l.rsplit_once(' ').unwrap().0));
        } else {
            run.push(l.to_string());
        }
    }
    run.sort();
    out.append(&mut run);
    out.join("\n") + "\n"
}

#[tokio::test]
async fn metrics_output_matches_the_golden_file() {
    let (_d, path, _pool) = sqlite_db(&[
        "CREATE TABLE xero_tokens (id TEXT, tenant_id TEXT, tenant_name TEXT, expires_at TEXT, status TEXT, access_token TEXT, refresh_token TEXT)",
        // Fresh, 45 days idle, 56 days idle, 61 days idle (expired), marked for re-auth, revoked,
        // one with an awkward tenant name, and one bad row.
        "INSERT INTO xero_tokens VALUES \
         ('conn-fresh', 'tenant-0001', 'Acme Plumbing', '2026-06-01T11:40:00Z', 'active', 'AT', 'RT'), \
         ('conn-45d', 'tenant-0002', 'Bluebird Cafe', '2026-04-17T12:30:00Z', 'active', 'AT', 'RT'), \
         ('conn-56d', 'tenant-0003', 'Harbour Dental', '2026-04-06T12:30:00Z', 'ACTIVE', 'AT', 'RT'), \
         ('conn-61d', 'tenant-0004', 'Kauri Builders', '2026-04-01T12:30:00Z', 'active', 'AT', 'RT'), \
         ('conn-reauth', 'tenant-0005', 'Northside Florist', '2026-05-30T12:30:00Z', 'reauth_required', 'AT', 'RT'), \
         ('conn-revoked', 'tenant-0006', 'Summit Legal', '2026-05-20T12:30:00Z', 'disconnected', 'AT', 'RT'), \
         ('conn-quoted', 'tenant-0007', 'O''Brien \"Tui\" Brewing\\Co', '2026-05-31T12:30:00Z', 'paused', 'AT', 'RT'), \
         ('conn-bad', 'tenant-0008', 'Zest Catering', 'not a date', 'active', 'AT', 'RT')",
    ])
    .await;
    let yaml = format!(
        "sources:\n  - name: app\n    kind: sqlite\n    dsn: {}\n    query: SELECT id, tenant_id, tenant_name, expires_at, status FROM xero_tokens\n    infer_last_refresh: access_expires\n    fields:\n      connection: id\n      tenant: tenant_id\n      access_expires: expires_at\n      status: {{column: status, map: {{reauth_required: needs_reauth, disconnected: revoked}}}}\n    labels:\n      tenant_name: tenant_name\n",
        path.display()
    );
    let (mut e, _) = exporter(&yaml, fixed_now());
    assert_eq!(poll(&mut e).await, [true]);
    let got = normalise(&scrape(&e));
    if std::env::var("UPDATE_GOLDEN").is_ok_and(|v| v == "1") {
        std::fs::write(GOLDEN, &got).unwrap();
        eprintln!("updated {GOLDEN}");
        return;
    }
    let want =
        std::fs::read_to_string(GOLDEN).expect("golden file missing; run with UPDATE_GOLDEN=1");
    if got != want {
        let diff: Vec<String> = want
            .lines()
            .zip(got.lines())
            .filter(|(a, b)| a != b)
            .take(10)
            .map(|(a, b)| format!("- {a}\n+ {b}"))
            .collect();
        panic!(
            "/metrics differs from {GOLDEN} (want {} lines, got {}); first differences:\n{}\nIf the change is intended, run UPDATE_GOLDEN=1 cargo test --test golden",
            want.lines().count(),
            got.lines().count(),
            diff.join("\n")
        );
    }
}
