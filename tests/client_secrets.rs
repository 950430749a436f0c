//! `client_secrets`: the app's own client secrets' expiry in `/metrics`, from the config and
//! from a file read at every scrape (a broken file keeps the last good value), through a
//! reload.

mod common;
use common::*;

#[tokio::test]
async fn client_secret_expiry_is_exported_from_the_config_and_from_a_file_read_at_each_scrape() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("entra-expiry");
    std::fs::write(&file, "2027-03-01\n").unwrap();
    let yaml = format!(
        "client_secrets:\n\
         \x20 - {{provider: microsoft, client: billing, expires_file: {}}}\n\
         \x20 - {{provider: xero, client: main, expires: '2027-06-30T00:00:00Z'}}\n",
        file.display()
    );
    let (e, _clock) = exporter(&yaml, fixed_now());
    let expiry = |text: &str, client: &str| {
        sample(
            text,
            "oauth_client_secret_expiry_timestamp_seconds",
            &[("client", client)],
        )
    };
    let text = scrape(&e);
    assert_eq!(expiry(&text, "billing"), Some(1_803_859_200.0), "{text}");
    assert_eq!(expiry(&text, "main"), Some(1_814_313_600.0));
    assert!(text.contains(
        "oauth_client_secret_expiry_timestamp_seconds{provider=\"microsoft\",client=\"billing\"}"
    ));

    // The secret is rotated and the file rewritten: the next scrape has the new date.
    std::fs::write(&file, "2028-03-01T00:00:00Z\n").unwrap();
    assert_eq!(expiry(&scrape(&e), "billing"), Some(1_835_481_600.0));
    // A broken or missing file keeps the last good value.
    std::fs::write(&file, "garbage\n").unwrap();
    assert_eq!(expiry(&scrape(&e), "billing"), Some(1_835_481_600.0));
    std::fs::remove_file(&file).unwrap();
    assert_eq!(expiry(&scrape(&e), "billing"), Some(1_835_481_600.0));
}

#[test]
fn without_client_secrets_the_family_is_absent() {
    let (e, _clock) = exporter(
        "sources:\n  - {name: app, kind: sqlite, dsn: /nonexistent/app.db, query: SELECT 1, fields: {connection: id, last_refresh: t}}\n",
        fixed_now(),
    );
    assert!(!scrape(&e).contains("oauth_client_secret_expiry"));
}
