//! Naive timestamps in an app's local time (issue 14): a source's or a field's `timezone`
//! (IANA, DST-correct), and `timezone: session` taking the SQL server's zone. Frappe/ERPNext's
//! `tabToken Cache` is built as Frappe builds it (frappe/integrations/doctype/token_cache/
//! token_cache.json at frappe/frappe 3fd57c06; column types from frappe/database/mariadb/
//! schema.py and the type map of frappe/database/mariadb/database.py: Datetime datetime(6),
//! Password text, Link/Data varchar(140), Int int(11)), and written as `TokenCache.update_data`
//! writes it: `modified` is Frappe's `now()`, the site's System Settings time zone, and
//! Password fields hold asterisks (the tokens live in `__Auth`).

mod common;
use common::*;
use oauth_token_exporter::model::StoreKind;
use oauth_token_exporter::sim::store::SimStore;

fn ts(s: &str) -> f64 {
    t(s).timestamp_millis() as f64 / 1000.0
}

fn last_refresh(text: &str, source: &str, connection: &str) -> f64 {
    value(
        text,
        "oauth_refresh_token_last_refresh_timestamp_seconds",
        &[("source", source), ("connection", connection)],
    )
}

fn access_expiry(text: &str, source: &str, connection: &str) -> f64 {
    value(
        text,
        "oauth_access_token_expiry_timestamp_seconds",
        &[("source", source), ("connection", connection)],
    )
}

#[tokio::test]
async fn naive_text_in_a_named_zone_follows_its_daylight_saving_rules() {
    // Auckland: +12 in winter (June), +13 in summer (January). Daylight saving ends on
    // 2026-04-05 at 03:00 (02:00-03:00 happens twice) and starts on 2026-09-27 at 02:00
    // (02:00-03:00 never happens).
    let (_d, path, _pool) = sqlite_db(&[
        "CREATE TABLE tokens (id TEXT, modified TEXT, expires TEXT, fetched TEXT)",
        "INSERT INTO tokens VALUES \
         ('winter', '2026-06-01 23:00:00', '2026-06-01 23:30:00', '2026-06-01 11:00:00'), \
         ('summer', '2026-01-15 13:00:00.500', '2026-04-05 02:30:00', '2026-01-15 00:00:00'), \
         ('gap', '2026-05-31 12:00:00', '2026-09-27 02:30:00', '2026-05-31 00:00:00'), \
         ('with_offset', '2026-06-01T10:00:00Z', NULL, NULL)",
    ])
    .await;
    let yaml = format!(
        "sources:\n  - name: local\n    kind: sqlite\n    dsn: {0}\n    timezone: Pacific/Auckland\n    query: SELECT id, modified, expires, fetched FROM tokens\n    fields:\n      connection: id\n      last_refresh: modified\n      access_expires: expires\n  - name: override\n    kind: sqlite\n    dsn: {0}\n    timezone: Pacific/Auckland\n    query: SELECT id, fetched FROM tokens WHERE fetched IS NOT NULL\n    fields: {{connection: id, last_refresh: {{column: fetched, timezone: UTC}}}}\n",
        path.display()
    );
    let (mut e, _) = exporter(&yaml, fixed_now());
    assert_eq!(poll(&mut e).await, [true, true]);
    let text = scrape(&e);
    assert_eq!(
        last_refresh(&text, "local", "winter"),
        ts("2026-06-01T11:00:00Z")
    );
    assert_eq!(
        value(
            &text,
            "oauth_refresh_token_age_seconds",
            &[("source", "local"), ("connection", "winter")]
        ),
        3600.0
    );
    assert_eq!(
        last_refresh(&text, "local", "summer"),
        ts("2026-01-15T00:00:00.5Z")
    );
    // The repeated hour: the earlier instant (still daylight time, +13).
    assert_eq!(
        access_expiry(&text, "local", "summer"),
        ts("2026-04-04T13:30:00Z")
    );
    // The skipped hour: read with the offset from before the change (+12).
    assert_eq!(
        access_expiry(&text, "local", "gap"),
        ts("2026-09-26T14:30:00Z")
    );
    // A field's own zone wins over the source's.
    assert_eq!(
        last_refresh(&text, "override", "winter"),
        ts("2026-06-01T11:00:00Z")
    );
    // A value with its own offset is not moved.
    assert_eq!(
        last_refresh(&text, "local", "with_offset"),
        ts("2026-06-01T10:00:00Z")
    );
}

const FRAPPE_MARIADB: &str = "create table `tabToken Cache` (
    name varchar(140) primary key,
    creation datetime(6),
    modified datetime(6),
    modified_by varchar(140),
    owner varchar(140),
    docstatus int(1) not null default '0',
    idx int(8) not null default '0',
    `user` varchar(140),
    connected_app varchar(140),
    provider_name varchar(140),
    access_token text,
    refresh_token text,
    expires_in int(11) not null default '0',
    state varchar(140),
    success_uri varchar(140),
    token_type varchar(140),
    _user_tags text,
    _comments text,
    _assign text,
    _liked_by text,
    index creation(creation))
    ENGINE=InnoDB ROW_FORMAT=DYNAMIC CHARACTER SET=utf8mb4 COLLATE=utf8mb4_unicode_ci";

/// Rows as `TokenCache.update_data` leaves them: name `{connected_app}-{user}`, Password
/// fields masked, `expires_in` from the token answer, `modified` in the site's zone.
const FRAPPE_ROWS: &str = "insert into `tabToken Cache` (name, creation, modified, modified_by, owner, `user`, connected_app, provider_name, access_token, refresh_token, expires_in, token_type) values \
    ('xero-app-ap@example.com', '2025-11-02 09:00:00.000000', '2026-06-01 23:00:00.123456', 'ap@example.com', 'ap@example.com', 'ap@example.com', 'xero-app', 'Xero', '********', '********', 1800, 'Bearer'), \
    ('xero-app-cfo@example.com', '2025-11-02 09:00:00.000000', '2026-01-15 13:00:00.000000', 'cfo@example.com', 'cfo@example.com', 'cfo@example.com', 'xero-app', 'Xero', '********', '********', 0, 'Bearer'), \
    ('zoho-app-ap@example.com', '2025-11-02 09:00:00.000000', '2026-06-01 22:00:00.000000', 'ap@example.com', 'ap@example.com', 'ap@example.com', 'zoho-app', 'Zoho', '********', '********', 3600, 'Bearer')";

fn assert_frappe(text: &str, source: &str) {
    assert_eq!(
        connections(text, source),
        ["xero-app-ap@example.com", "xero-app-cfo@example.com"],
        "one connection per Xero token cache row; the Zoho app has no profile and is left out"
    );
    assert_eq!(
        last_refresh(text, source, "xero-app-ap@example.com"),
        ts("2026-06-01T11:00:00.123Z")
    );
    assert_eq!(
        access_expiry(text, source, "xero-app-ap@example.com"),
        ts("2026-06-01T11:30:00.123Z")
    );
    assert_eq!(
        last_refresh(text, source, "xero-app-cfo@example.com"),
        ts("2026-01-15T00:00:00Z")
    );
    // expires_in 0 (unknown): no access expiry, the connection is still exported.
    assert_eq!(
        sample(
            text,
            "oauth_access_token_expiry_timestamp_seconds",
            &[
                ("source", source),
                ("connection", "xero-app-cfo@example.com")
            ]
        ),
        None
    );
    assert!(
        text.contains("user=\"ap@example.com\"") && text.contains("connected_app=\"xero-app\""),
        "{text}"
    );
    assert!(!text.contains("********"));
}

#[tokio::test]
async fn frappe_token_cache_on_mariadb_in_the_sites_zone() {
    let test = "frappe_token_cache_on_mariadb_in_the_sites_zone";
    if !server_or_skip(test, "MySQL/MariaDB", &mysql_url()).await {
        return;
    }
    let db = unique("frappe");
    let admin = SimStore::connect(StoreKind::Mysql, &mysql_url())
        .await
        .unwrap();
    for q in [
        format!("DROP DATABASE IF EXISTS {db}"),
        format!("CREATE DATABASE {db}"),
    ] {
        admin.execute(&q, &[]).await.unwrap();
    }
    let url = mysql_url().rsplit_once('/').unwrap().0.to_string() + "/" + &db;
    let site = SimStore::connect(StoreKind::Mysql, &url).await.unwrap();
    site.execute(FRAPPE_MARIADB, &[]).await.unwrap();
    site.execute(FRAPPE_ROWS, &[]).await.unwrap();
    let yaml = format!(
        "sources:\n  - {{name: erp, kind: mysql, dsn: '{url}', preset: frappe, timezone: Pacific/Auckland}}\n"
    );
    let (mut e, _) = exporter(&yaml, fixed_now());
    let polled = poll(&mut e).await;
    let text = scrape(&e);
    admin
        .execute(&format!("DROP DATABASE {db}"), &[])
        .await
        .unwrap();
    assert_eq!(polled, [true], "{text}");
    assert_frappe(&text, "erp");
}

#[tokio::test]
async fn frappe_token_cache_on_postgres_in_the_sessions_zone() {
    let test = "frappe_token_cache_on_postgres_in_the_sessions_zone";
    if !server_or_skip(test, "PostgreSQL", &pg_url()).await {
        return;
    }
    // Frappe on PostgreSQL: Datetime is `timestamp` (no zone), Data/Link varchar(140),
    // Password text, Int bigint (frappe/database/postgres/database.py's type map).
    let schema = unique("frappe");
    let admin = SimStore::connect(StoreKind::Postgres, &pg_url())
        .await
        .unwrap();
    let ddl = format!(
        "CREATE TABLE {schema}.\"tabToken Cache\" (name varchar(140) PRIMARY KEY, creation timestamp(6), modified timestamp(6), modified_by varchar(140), owner varchar(140), docstatus smallint NOT NULL DEFAULT 0, idx bigint NOT NULL DEFAULT 0, \"user\" varchar(140), connected_app varchar(140), provider_name varchar(140), access_token text, refresh_token text, expires_in bigint NOT NULL DEFAULT 0, state varchar(140), success_uri varchar(140), token_type varchar(140), _user_tags text, _comments text, _assign text, _liked_by text)"
    );
    let rows = FRAPPE_ROWS
        .replace("`tabToken Cache`", &format!("{schema}.\"tabToken Cache\""))
        .replace("`user`", "\"user\"");
    for q in [
        format!("DROP SCHEMA IF EXISTS {schema} CASCADE"),
        format!("CREATE SCHEMA {schema}"),
        ddl,
        rows,
    ] {
        admin.execute(&q, &[]).await.unwrap();
    }
    // The site's role runs its sessions in the site's zone (`ALTER ROLE ... SET timezone`,
    // as a server's or database's setting would): `timezone: session` asks the server.
    let role = format!("{schema}_site");
    for q in [
        format!("DROP ROLE IF EXISTS {role}"),
        format!("CREATE ROLE {role} LOGIN"),
        format!("ALTER ROLE {role} SET timezone = 'Pacific/Auckland'"),
        format!("GRANT USAGE ON SCHEMA {schema} TO {role}"),
        format!("GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role}"),
    ] {
        admin.execute(&q, &[]).await.unwrap();
    }
    let dsn = format!(
        "{}?options=-c%20search_path%3D{schema}",
        pg_url().replacen("postgres@", &format!("{role}@"), 1)
    );
    let yaml = format!(
        "sources:\n  - {{name: erp_pg, kind: postgres, dsn: '{dsn}', preset: frappe, timezone: session}}\n"
    );
    let (mut e, _) = exporter(&yaml, fixed_now());
    let polled = poll(&mut e).await;
    let text = scrape(&e);
    for q in [
        format!("DROP SCHEMA {schema} CASCADE"),
        format!("DROP ROLE {role}"),
    ] {
        admin.execute(&q, &[]).await.unwrap();
    }
    assert_eq!(polled, [true], "{text}");
    assert_frappe(&text, "erp_pg");
}

#[test]
fn a_zone_that_does_not_exist_or_a_session_without_a_server_is_refused_naming_the_key() {
    let check = |yaml: &str| {
        oauth_token_exporter::config::parse(yaml, "c.yml", &|_| None)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    let e = check("sources:\n  - {name: a, kind: sqlite, dsn: a.db, query: SELECT 1, timezone: Mars/Olympus, fields: {connection: id, last_refresh: lr}}\n");
    assert!(
        e.contains("sources[0].timezone") && e.contains("IANA name"),
        "{e}"
    );
    let e = check("sources:\n  - {name: a, kind: sqlite, dsn: a.db, query: SELECT 1, fields: {connection: id, last_refresh: {column: lr, timezone: session}}}\n");
    assert!(
        e.contains("sources[0].fields.last_refresh.timezone") && e.contains("name the zone"),
        "{e}"
    );
    let e = check("sources:\n  - {name: a, kind: sqlite, dsn: a.db, query: SELECT 1, fields: {connection: {column: id, timezone: UTC}, last_refresh: lr}}\n");
    assert!(
        e.contains("sources[0].fields.connection.timezone") && e.contains("only timestamp"),
        "{e}"
    );
}
