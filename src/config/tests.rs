//! Unit tests of the config: every problem with its key, defaults, presets, store kinds.

use super::*;
use crate::config::presets::Inference;

fn env(k: &str) -> Option<String> {
    match k {
        "PG_DSN" => Some("postgres://exporter:s3cr3t@db/app".into()),
        _ => None,
    }
}

fn ok(text: &str) -> Config {
    parse(text, "test.yml", &env).unwrap_or_else(|e| panic!("{e}"))
}

fn problems(text: &str) -> Vec<String> {
    parse(text, "test.yml", &env)
        .expect_err("config should be invalid")
        .problems()
        .into_iter()
        .map(|p| p.to_string())
        .collect()
}

#[test]
fn minimal_query_source_gets_the_defaults() {
    let c = ok(r#"
sources:
  - name: app
    kind: sqlite
    dsn: /var/lib/app/app.db
    query: SELECT id, updated_at FROM xero_tokens
    fields:
      connection: id
      last_refresh: updated_at
"#);
    let s = &c.sources[0];
    assert_eq!(s.schedule.interval, defaults::POLL_INTERVAL);
    assert_eq!(s.schedule.timeout, defaults::POLL_TIMEOUT);
    assert_eq!(s.max_connections, defaults::MAX_CONNECTIONS_PER_SOURCE);
    assert_eq!(s.provider.name(), "xero");
    assert_eq!(s.mapping.connection.column, "id");
    assert!(
        matches!(s.mapping.last_refresh, LastRefresh { field: Some(ref f), infer: None } if f.at.column == "updated_at")
    );
}

#[test]
fn every_problem_is_reported_with_its_key_path() {
    let p = problems(
        r#"
global:
  poll_interval: soon
sources:
  - name: a
    kind: sqlite
    dsn: x.db
    query: SELECT 1
    fields:
      connection: id
      last_refresh: {column: t, format: weekly}
  - name: b
    kind: oracle
  - name: c
    kind: postgres
    dsn_env: MISSING_VAR
    query: SELECT 1
    colour: blue
  - name: d
    kind: postgres
    dsn_env: MISSING_VAR
    query: SELECT 1
    fields: {connection: id}
extra: 1
"#,
    );
    let joined = p.join("\n");
    assert!(joined.contains("extra: unknown key"), "{joined}");
    assert!(
        joined
            .contains("global.poll_interval: invalid value: string \"soon\", expected a duration"),
        "{joined}"
    );
    assert!(
        joined.contains("sources[0].fields.last_refresh"),
        "{joined}"
    );
    assert!(joined.contains("weekly"), "{joined}");
    assert!(
        joined.contains("sources[1].kind: unknown variant `oracle`"),
        "{joined}"
    );
    assert!(
        joined.contains("sources[2].colour: unknown field `colour`"),
        "{joined}"
    );
    assert!(
        joined.contains("sources[3].dsn_env: environment variable MISSING_VAR is not set"),
        "{joined}"
    );
    assert!(
        joined.contains("sources[3].fields.last_refresh: is required"),
        "{joined}"
    );
    assert!(p.len() >= 6, "{joined}");
}

#[test]
fn an_event_table_time_column_must_be_a_column_other_than_the_id() {
    let p = problems(
        r#"
event_tables:
  - {name: a, kind: sqlite, dsn: x.db, table: ev, state_file: a.cursor, time_column: id}
  - {name: b, kind: sqlite, dsn: x.db, table: ev, state_file: b.cursor, time_column: "t; DROP"}
"#,
    );
    let joined = p.join("\n");
    assert!(
        joined.contains("event_tables[0].time_column: must differ from id_column"),
        "{joined}"
    );
    assert!(
        joined.contains("event_tables[1].time_column: \"t; DROP\" is not a valid column name"),
        "{joined}"
    );
    let c = ok(
            "event_tables:\n  - {name: a, kind: sqlite, dsn: x.db, table: ev, state_file: a.cursor, time_column: created_at, id_column: uid}\n",
        );
    assert_eq!(
        c.inlets.event_tables[0].time_column.as_deref(),
        Some("created_at")
    );
}

/// Found by `fuzz/run.sh` (target config, LeakSanitizer): every parse leaked a fresh copy of
/// each custom provider name.
#[test]
fn custom_provider_names_are_allocated_once_however_often_configs_are_parsed() {
    let yaml = "sources:\n  - {name: s, kind: sqlite, dsn: x.db, provider: custom, provider_name: salesforce, access_token_lifetime: 2h, refresh_token_lifetime: 90d, query: SELECT 1, fields: {connection: id, last_refresh: t}}\n";
    let a = ok(yaml).sources[0].provider.name;
    let b = ok(yaml).sources[0].provider.name;
    assert_eq!(a, "salesforce");
    assert!(std::ptr::eq(a, b));
}

#[test]
fn error_message_names_the_file() {
    let e = parse("sources: 3", "/etc/ote/config.yml", &env).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("config file /etc/ote/config.yml has 1 problem(s)"),
        "{e}"
    );
    let e = parse("sources: [\n  - {", "/etc/ote/config.yml", &env).unwrap_err();
    assert!(matches!(e, ConfigError::Syntax { .. }), "{e}");
    assert!(e.to_string().contains("/etc/ote/config.yml"), "{e}");
}

#[test]
fn dsn_comes_from_the_environment_and_never_prints() {
    let c = ok(r#"
sources:
  - name: pg
    kind: postgres
    dsn_env: PG_DSN
    preset: xero_tokens
"#);
    assert_eq!(
        match &c.sources[0].store {
            Store::Sql { connection, .. } => connection.dsn.expose(),
            other => panic!("{other:?}"),
        },
        "postgres://exporter:s3cr3t@db/app"
    );
    assert!(!format!("{c:?}").contains("s3cr3t"));
}

#[test]
fn field_options_are_checked_against_the_field_kind() {
    let p = problems(
        r#"
sources:
  - name: a
    kind: sqlite
    dsn: x.db
    query: SELECT 1
    fields:
      connection: {column: id, format: rfc3339}
      tenant: {column: t, map: {a: active}}
      last_refresh: {column: expires_in, format: relative_seconds}
      access_expires: {column: e, relative_to: x}
      status: {column: s, json_path: "a..b"}
"#,
    );
    let joined = p.join("\n");
    assert!(
        joined.contains("fields.connection.format: only timestamp fields"),
        "{joined}"
    );
    assert!(
        joined.contains("fields.tenant.map: only the `status` field"),
        "{joined}"
    );
    assert!(
        joined.contains("fields.last_refresh.relative_to: `format: relative_seconds` needs"),
        "{joined}"
    );
    assert!(
        joined.contains("fields.access_expires.relative_to: is only used with"),
        "{joined}"
    );
    assert!(joined.contains("fields.status.json_path"), "{joined}");
}

#[test]
fn timeout_longer_than_interval_and_duplicate_names_are_rejected() {
    let p = problems(
        r#"
sources:
  - {name: a, kind: sqlite, dsn: x.db, preset: xero_tokens, interval: 5s, timeout: 10s}
  - {name: a, kind: sqlite, dsn: x.db, preset: xero_tokens}
"#,
    );
    let joined = p.join("\n");
    assert!(
        joined.contains(
            "sources[0].timeout: the poll timeout (10s) must not exceed the poll interval (5s)"
        ),
        "{joined}"
    );
    assert!(
        joined.contains("sources[1].name: duplicate source name"),
        "{joined}"
    );
}

#[test]
fn reserved_and_invalid_label_names_are_rejected() {
    let p = problems(
        r#"
sources:
  - name: a
    kind: sqlite
    dsn: x.db
    preset: xero_tokens
    labels:
      tenant: tenant_name
      "bad-name": x
      __meta: zed
"#,
    );
    let joined = p.join("\n");
    assert!(
        joined.contains("labels.tenant: `tenant` is set by the exporter"),
        "{joined}"
    );
    assert!(
        joined.contains("labels.bad-name: not a valid Prometheus label name"),
        "{joined}"
    );
    assert!(joined.contains("labels.__meta: not a valid"), "{joined}");
}

#[test]
fn user_fields_override_preset_fields() {
    let c = ok(r#"
sources:
  - name: a
    kind: sqlite
    dsn: x.db
    preset: xero_tokens
    table: app_xero_tokens
    fields:
      last_refresh: updated_at
"#);
    let s = &c.sources[0];
    let q = s.store.query().unwrap();
    assert!(q.contains("app_xero_tokens"), "{q}");
    assert!(
        matches!(s.mapping.last_refresh, LastRefresh { field: Some(ref f), infer: None } if f.at.column == "updated_at")
    );
}

#[test]
fn preset_and_store_kind_must_fit() {
    let p = problems("sources: [{name: n, kind: sqlite, dsn: x.db, preset: nango}]");
    assert!(
        p[0].contains("sources[0].preset: the nango preset reads Nango's PostgreSQL schema"),
        "{p:?}"
    );
    let p = problems(
        "sources: [{name: n, kind: sqlite, dsn: x.db, preset: xero_tokens, table: \"x; drop\"}]",
    );
    assert!(p[0].contains("not a valid table name"), "{p:?}");
}

#[test]
fn options_of_other_store_kinds_and_missing_kind_options_are_reported() {
    let p = problems(
        r#"
sources:
  - {name: a, kind: sqlite, dsn: x.db, preset: xero_tokens, key_pattern: "x:*", url: "http://h/"}
  - {name: b, kind: redis, dsn: "redis://h", query: SELECT 1}
  - {name: c, kind: file}
  - {name: d, kind: http, url: "ftp://h", headers: {Authorization: Bearer x}}
  - {name: e, kind: file, path: /x.json, dsn: secret}
"#,
    );
    let joined = p.join("\n");
    assert!(
        joined.contains("sources[0].key_pattern: only redis sources take `key_pattern`"),
        "{joined}"
    );
    assert!(
        joined.contains("sources[0].url: only http sources take `url`"),
        "{joined}"
    );
    assert!(
        joined.contains("sources[1].query: only SQL sources take `query`"),
        "{joined}"
    );
    assert!(
        joined.contains("sources[1].key_pattern: is required"),
        "{joined}"
    );
    assert!(joined.contains("sources[2].path: is required"), "{joined}");
    assert!(
        joined.contains("sources[3].url: is required: an http:// or https:// URL"),
        "{joined}"
    );
    assert!(
        joined.contains("sources[3].headers.Authorization: put credentials in `bearer_token_env`"),
        "{joined}"
    );
    assert!(
        joined.contains("sources[4].dsn: only SQL and redis sources take `dsn`"),
        "{joined}"
    );
}

#[test]
fn custom_provider_needs_both_lifetimes_and_may_be_named() {
    let p = problems("sources: [{name: a, kind: file, path: /t.json, provider: custom}, {name: b, kind: file, path: /t.json, provider: xero, provider_name: x}]");
    let joined = p.join("\n");
    assert!(
        joined.contains("sources[0].access_token_lifetime: is required with `provider: custom`"),
        "{joined}"
    );
    assert!(
        joined.contains("sources[0].refresh_token_lifetime: is required with `provider: custom`"),
        "{joined}"
    );
    assert!(
        joined.contains("sources[1].provider_name: only a `custom` provider takes a name"),
        "{joined}"
    );
    let c = ok("sources: [{name: a, kind: file, path: /t.json, provider: custom, provider_name: salesforce, access_token_lifetime: 2h, refresh_token_lifetime: 90d}]");
    assert_eq!(c.sources[0].provider.name(), "salesforce");
    assert_eq!(
        c.sources[0].provider.refresh_token_idle_lifetime.num_days(),
        90
    );
}

#[test]
fn document_sources_default_to_the_token_set_shape() {
    let c = ok("sources: [{name: a, kind: file, path: /t.json}]");
    let m = &c.sources[0].mapping;
    assert_eq!(m.connection.column, "_key");
    assert_eq!(m.access_expires.as_ref().unwrap().at.column, "expires_at");
    assert_eq!(
        m.last_refresh,
        LastRefresh {
            field: None,
            infer: Some(Inference::AccessExpires)
        }
    );
}

#[test]
fn a_document_source_mapping_no_freshness_field_is_warned_about_and_one_that_does_is_not() {
    let warned = |fields: &str| {
        let c = ok(&format!(
            "sources:\n  - name: f\n    kind: file\n    path: /tmp/t.json\n    fields: {fields}\n"
        ));
        c.warnings
            .iter()
            .any(|w| w.path == "sources[0].fields" && w.message.contains("expires_at"))
    };
    assert!(warned("{connection: realm}"));
    assert!(!warned("{connection: realm, access_expires: exp}"));
    assert!(!warned("{connection: realm, last_refresh: refreshed_at}"));
}

#[test]
fn client_secrets_take_a_date_a_time_or_a_file_and_name_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("expiry");
    std::fs::write(&good, "2027-03-01T12:00:00+02:00\n").unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "s3cr3t-client-secret-value\n").unwrap();
    let c = ok(&format!(
        r#"
ingest: {{source: app, token_env: PG_DSN}}
client_secrets:
  - {{provider: microsoft, client: billing, expires: 2027-03-01}}
  - {{provider: xero, client: main, expires_file: {}}}
"#,
        good.display()
    ));
    use client_secrets::Expiry;
    assert_eq!(
        c.client_secrets[0].expiry,
        Expiry::At("2027-03-01T00:00:00Z".parse().unwrap())
    );
    assert_eq!(c.client_secrets[1].expiry, Expiry::File(good.clone()));
    assert_eq!(
        client_secrets::read_expiry_file(&good).unwrap(),
        "2027-03-01T10:00:00Z"
            .parse::<chrono::DateTime<chrono::Utc>>()
            .unwrap()
    );
    let p = problems(&format!(
        r#"
ingest: {{source: app, token_env: PG_DSN}}
client_secrets:
  - {{provider: microsoft, client: a, expires: next march}}
  - {{provider: microsoft, client: b, expires_file: {}}}
  - {{provider: microsoft, client: c, expires_file: {}}}
  - {{provider: microsoft, client: d}}
  - {{provider: microsoft, client: a, expires: 2027-01-01}}
  - {{provider: '', client: e, expires: 2027-01-01}}
  - {{provider: x, client: f, expires: 2027-01-01, secret: no}}
"#,
        dir.path().join("missing").display(),
        secret.display()
    ));
    let all = p.join("\n");
    for want in [
        "client_secrets[0].expires: is not a date",
        "client_secrets[1].expires_file: ",
        "cannot be read: entity not found",
        "client_secrets[2].expires_file: ",
        "its first line is not a date",
        "client_secrets[3]: give exactly one of `expires` and `expires_file`",
        "client_secrets[4]: a second entry for provider \"microsoft\" and client \"a\"",
        "client_secrets[5].provider: must be 1 to 256 bytes",
        "client_secrets[6]",
    ] {
        assert!(all.contains(want), "{want:?} not in:\n{all}");
    }
    assert!(
        !all.contains("s3cr3t-client-secret-value"),
        "a file's content is never repeated:\n{all}"
    );
}
