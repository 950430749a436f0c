//! Token files: the xero-node / xero-python token set shapes, lists and maps, JSON and YAML,
//! changes, and half-written files.

mod common;
use common::*;

fn file_source(name: &str, path: &std::path::Path, rest: &str) -> String {
    format!(
        "sources:\n  - name: {name}\n    kind: file\n    path: {}\n{rest}",
        path.display()
    )
}

/// Write a file and make it look settled (older than the exporter's settle time).
fn write_settled(path: &std::path::Path, text: &str) {
    std::fs::write(path, text).unwrap();
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(5);
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(old)
        .unwrap();
}

#[tokio::test]
async fn a_xero_node_token_set_file_is_one_connection_named_after_the_file() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("acme-tenant.json");
    write_settled(
        &path,
        r#"{"id_token":"ID-x","access_token":"AT-x","expires_at":1777631400,"token_type":"Bearer","refresh_token":"RT-x","scope":"openid offline_access accounting.transactions"}"#,
    );
    let (mut e, _) = exporter(&file_source("node", &path, ""), fixed_now());
    assert_eq!(poll(&mut e).await, [true]);
    let text = scrape(&e);
    assert_eq!(connections(&text, "node"), ["acme-tenant"]);
    assert_eq!(
        value(
            &text,
            "oauth_refresh_token_last_refresh_timestamp_seconds",
            &[("connection", "acme-tenant")]
        ),
        1777629600.0
    );
    assert!(!text.contains("AT-x") && !text.contains("RT-x") && !text.contains("ID-x"));
}

#[tokio::test]
async fn a_yaml_map_of_xero_python_token_sets_is_one_connection_per_key() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("tokens.yaml");
    // xero-python keeps expires_at as a float and expires_in next to it.
    write_settled(&path, "tenant-a:\n  access_token: AT-a\n  refresh_token: RT-a\n  expires_in: 1800\n  expires_at: 1777631400.25\ntenant-b:\n  access_token: AT-b\n  expires_at: not-a-time\n");
    let (mut e, _) = exporter(&file_source("py", &path, ""), fixed_now());
    assert_eq!(poll(&mut e).await, [true]);
    let text = scrape(&e);
    assert_eq!(connections(&text, "py"), ["tenant-a"]);
    assert_eq!(
        value(
            &text,
            "oauth_exporter_rows_rejected_total",
            &[("source", "py"), ("reason", "unparseable_timestamp")]
        ),
        1.0
    );
}

#[tokio::test]
async fn a_list_with_its_own_fields_and_the_file_is_reread_when_it_changes() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("fleet.json");
    write_settled(
        &path,
        r#"[{"tenant":"t1","refreshed":"2026-05-01T10:00:00Z"},{"tenant":"t2","refreshed":"2026-05-02T10:00:00Z"}]"#,
    );
    let rest = "    fields: {connection: tenant, last_refresh: refreshed}\n";
    let (mut e, _) = exporter(&file_source("list", &path, rest), fixed_now());
    assert_eq!(poll(&mut e).await, [true]);
    assert_eq!(connections(&scrape(&e), "list"), ["t1", "t2"]);
    write_settled(
        &path,
        r#"[{"tenant":"t2","refreshed":"2026-05-31T10:00:00Z"}]"#,
    );
    assert_eq!(poll(&mut e).await, [true]);
    let text = scrape(&e);
    assert_eq!(connections(&text, "list"), ["t2"]);
    assert_eq!(
        value(
            &text,
            "oauth_refresh_token_age_seconds",
            &[("connection", "t2")]
        ),
        26.0 * 3600.0
    );
    assert_eq!(
        value(
            &text,
            "oauth_connections_removed_total",
            &[("source", "list")]
        ),
        1.0
    );
}

#[tokio::test]
async fn a_half_written_file_is_never_exported_and_the_last_good_values_stay() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("fleet.json");
    let good = r#"[{"tenant":"t1","refreshed":1777629600},{"tenant":"t2","refreshed":1777629600}]"#;
    write_settled(&path, good);
    let rest = "    fields: {connection: tenant, last_refresh: refreshed}\n";
    let (mut e, _) = exporter(&file_source("torn", &path, rest), fixed_now());
    assert_eq!(poll(&mut e).await, [true]);
    // The writer has written half of the new content.
    write_settled(&path, &good[..40]);
    assert_eq!(poll(&mut e).await, [false]);
    let text = scrape(&e);
    assert_eq!(
        connections(&text, "torn"),
        ["t1", "t2"],
        "the torn read is not exported"
    );
    assert_eq!(
        value(
            &text,
            "oauth_exporter_source_errors_total",
            &[("source", "torn"), ("reason", "decode")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "oauth_connections_removed_total",
            &[("source", "torn")]
        ),
        0.0
    );
    // A write in progress right now (modified this instant, still changing) is not trusted.
    std::fs::write(&path, r#"[{"tenant":"t1","refreshed":1777629600}"#).unwrap();
    let p2 = path.clone();
    let writer = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        std::fs::write(
            &p2,
            r#"[{"tenant":"t1","refreshed":1777629600},{"tenant":"t3","refreshed":1777629600}]"#,
        )
        .unwrap();
    });
    assert_eq!(poll(&mut e).await, [false]);
    writer.await.unwrap();
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(5);
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(old)
        .unwrap();
    assert_eq!(poll(&mut e).await, [true]);
    assert_eq!(connections(&scrape(&e), "torn"), ["t1", "t3"]);
}

#[tokio::test]
async fn a_missing_file_is_a_failed_poll_with_the_connect_reason() {
    let d = tempfile::tempdir().unwrap();
    let (mut e, _) = exporter(
        &file_source("gone", &d.path().join("nope.json"), ""),
        fixed_now(),
    );
    assert_eq!(poll(&mut e).await, [false]);
    assert_eq!(
        value(
            &scrape(&e),
            "oauth_exporter_source_errors_total",
            &[("source", "gone"), ("reason", "connect")]
        ),
        1.0
    );
}

/// Singer's tap-xero keeps its one refresh token in its `config.json` and rewrites the whole
/// file on every refresh (`XeroClient.refresh_credentials` -> `update_config_file`, json.dump
/// with indent=2, in singer-io/tap-xero's tap_xero/client.py): the file's modification time is
/// the last refresh, read through the `_mtime` pseudo-column (issue 14).
#[tokio::test]
async fn a_tap_xero_config_file_is_one_connection_refreshed_when_the_file_was_written() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("config.json");
    std::fs::write(
        &path,
        "{\n  \"client_id\": \"CLIENTID\",\n  \"client_secret\": \"SECRET-x\",\n  \"refresh_token\": \"RT-x\",\n  \"tenant_id\": \"6f1c2f6e-0000-4000-8000-000000000009\",\n  \"start_date\": \"2026-01-01T00:00:00Z\",\n  \"user_agent\": \"tap-xero ops@example.com\"\n}",
    )
    .unwrap();
    let written = t("2026-06-01T11:00:00Z");
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(written.into())
        .unwrap();
    let rest = "    fields: {connection: tenant_id, last_refresh: _mtime}\n";
    let (mut e, _) = exporter(&file_source("tap", &path, rest), fixed_now());
    assert_eq!(poll(&mut e).await, [true]);
    let text = scrape(&e);
    assert_eq!(
        connections(&text, "tap"),
        ["6f1c2f6e-0000-4000-8000-000000000009"]
    );
    assert_eq!(
        value(
            &text,
            "oauth_refresh_token_age_seconds",
            &[("source", "tap")]
        ),
        3600.0
    );
    assert!(!text.contains("SECRET-x") && !text.contains("RT-x"));
}
