//! webfox/laravel-xero-oauth2's credential stores, as its code writes them (commit d474eb79,
//! 2025-03-29): `src/Oauth2CredentialManagers/ModelStore.php` and `AuthenticatedUserStore.php`
//! update a model's `xero_credentials` attribute (an Eloquent `array` cast: JSON text) with
//! `{token, refresh_token, id_token, expires, tenants}`, and `FileStore.php` writes the same
//! object with `json_encode` to `xero.json` on a Laravel disk; `expires` is League OAuth2's
//! `getExpires()` (epoch seconds of the access token's expiry), and `tenants` is the list
//! `AuthorizationCallbackController.php` builds from Xero's connections
//! (`{Id, Name, ConnectionId}`). The `webfox_xero` preset reads the model stores; the file store
//! is a file source with a field mapping (`examples/webfox-laravel-xero-oauth2.yml`).

mod common;
use common::*;

/// The credentials array as `store()` writes it, access token expiring at `expires`.
fn credentials(expires: i64, tenant: &str, name: &str) -> String {
    serde_json::json!({
        "token": "eyJhbGciOi.access-token-value",
        "refresh_token": "refresh-token-value-0123456789",
        "id_token": "eyJhbGciOi.id-token-value",
        "expires": expires,
        "tenants": [
            {"Id": tenant, "Name": name, "ConnectionId": "c0ffee00-0000-4000-8000-000000000001"},
            {"Id": "second-tenant", "Name": "Second Org", "ConnectionId": "c0ffee00-0000-4000-8000-000000000002"}
        ]
    })
    .to_string()
}

/// What the exporter makes of users 1 and 2 (refreshed 1 h and 50 days before `fixed_now()`).
fn check(text: &str, source: &str, ids: [&str; 2]) {
    assert_eq!(connections(text, source), ids, "{text}");
    let now = fixed_now().timestamp() as f64;
    let v = |name: &str, c: &str| value(text, name, &[("source", source), ("connection", c)]);
    assert_eq!(
        v("oauth_refresh_token_last_refresh_timestamp_seconds", ids[0]),
        now - 3600.0
    );
    assert_eq!(
        v("oauth_access_token_expiry_timestamp_seconds", ids[0]),
        now - 3600.0 + 1800.0
    );
    assert_eq!(
        v("oauth_refresh_token_last_refresh_timestamp_seconds", ids[1]),
        now - 50.0 * 86400.0
    );
    assert_eq!(
        value(
            text,
            "oauth_connection_info",
            &[
                ("source", source),
                ("connection", ids[0]),
                ("tenant", "6f1c2f6e-aaaa-4000-8000-000000000001"),
                ("tenant_name", "Demo Company (NZ)")
            ]
        ),
        1.0
    );
    assert!(!text.contains("token-value"), "no token is exported");
}

fn rows() -> Vec<(i64, Option<String>)> {
    let now = fixed_now().timestamp();
    vec![
        (
            1,
            Some(credentials(
                now - 3600 + 1800,
                "6f1c2f6e-aaaa-4000-8000-000000000001",
                "Demo Company (NZ)",
            )),
        ),
        (
            2,
            Some(credentials(
                now - 50 * 86400 + 1800,
                "6f1c2f6e-aaaa-4000-8000-000000000002",
                "Demo Company (UK)",
            )),
        ),
        // A user who never connected Xero: not a connection.
        (3, None),
    ]
}

#[tokio::test]
async fn the_authenticated_user_store_on_sqlite_reads_users_xero_credentials() {
    // Laravel's SQLite grammar: `id()` integer autoincrement, `json()` text.
    let (_d, path, pool) = sqlite_db(&["create table \"users\" (\"id\" integer primary key autoincrement not null, \"name\" varchar not null, \"email\" varchar not null, \"password\" varchar not null, \"xero_credentials\" text, \"created_at\" datetime, \"updated_at\" datetime)"]).await;
    for (id, c) in rows() {
        sqlx::query("insert into users (id, name, email, password, xero_credentials) values (?, 'u', 'u@example.com', 'x', ?)")
            .bind(id)
            .bind(c)
            .execute(&pool)
            .await
            .unwrap();
    }
    let yaml = format!(
        "sources:\n  - {{name: webfox, kind: sqlite, dsn: {}, preset: webfox_xero}}\n",
        path.display()
    );
    let (mut e, _) = exporter(&yaml, fixed_now());
    assert_eq!(poll(&mut e).await, [true]);
    check(&scrape(&e), "webfox", ["1", "2"]);
}

/// A model's table as Laravel's grammar for `$table->id(); $table->json('xero_credentials')
/// ->nullable();` creates it on an SQL server, the rows written, read with the preset.
macro_rules! model_store {
    ($pool:expr, $kind:literal, $url:expr, $ddl:literal, $insert:literal) => {{
        let pool = $pool;
        let table = unique("webfox_model");
        for s in [
            format!("drop table if exists {table}"),
            format!($ddl, table = table),
        ] {
            sqlx::query(&s).execute(&pool).await.unwrap();
        }
        for (id, c) in rows() {
            sqlx::query(&format!($insert, table = table))
                .bind(id)
                .bind(c)
                .execute(&pool)
                .await
                .unwrap();
        }
        let yaml = format!(
            "sources:\n  - {{name: webfox, kind: {}, dsn: '{}', preset: webfox_xero, table: {table}}}\n",
            $kind, $url
        );
        let (mut e, _) = exporter(&yaml, fixed_now());
        assert_eq!(poll(&mut e).await, [true]);
        check(&scrape(&e), "webfox", ["1", "2"]);
        sqlx::query(&format!("drop table {table}"))
            .execute(&pool)
            .await
            .unwrap();
    }};
}

#[tokio::test]
async fn the_model_store_on_mariadb_reads_a_settings_models_json_column() {
    let test = "the_model_store_on_mariadb_reads_a_settings_models_json_column";
    if !server_or_skip(test, "MariaDB", &mysql_url()).await {
        return;
    }
    model_store!(
        sqlx::MySqlPool::connect(&mysql_url()).await.unwrap(),
        "mysql",
        mysql_url(),
        "create table `{table}` (`id` bigint unsigned not null auto_increment primary key, `xero_credentials` json null, `created_at` timestamp null, `updated_at` timestamp null) default character set utf8mb4 collate 'utf8mb4_unicode_ci'",
        "insert into `{table}` (id, xero_credentials) values (?, ?)"
    );
}

#[tokio::test]
async fn the_model_store_on_postgres_reads_a_json_column() {
    let test = "the_model_store_on_postgres_reads_a_json_column";
    if !server_or_skip(test, "PostgreSQL", &pg_url()).await {
        return;
    }
    model_store!(
        sqlx::PgPool::connect(&pg_url()).await.unwrap(),
        "postgres",
        pg_url(),
        "create table \"{table}\" (\"id\" bigserial not null primary key, \"xero_credentials\" json null, \"created_at\" timestamp(0) without time zone null, \"updated_at\" timestamp(0) without time zone null)",
        "insert into \"{table}\" (id, xero_credentials) values ($1, $2::json)"
    );
}

#[tokio::test]
async fn the_file_store_is_read_with_the_shipped_example_mapping() {
    let d = tempfile::tempdir().unwrap();
    // FileStore::store: json_encode of the array, one file `xero.json` per app.
    let now = fixed_now().timestamp();
    std::fs::write(
        d.path().join("xero.json"),
        credentials(
            now - 3600 + 1800,
            "6f1c2f6e-aaaa-4000-8000-000000000001",
            "Demo Company (NZ)",
        ),
    )
    .unwrap();
    let example =
        std::fs::read_to_string(root().join("examples/webfox-laravel-xero-oauth2.yml")).unwrap();
    let yaml = example.replace(
        "/var/www/app/storage/app/xero.json",
        &d.path().join("xero.json").display().to_string(),
    );
    assert_ne!(yaml, example, "the example names the file store's path");
    let (mut e, _) = exporter(&yaml, fixed_now());
    assert!(poll(&mut e).await.iter().all(|ok| *ok));
    let text = scrape(&e);
    assert_eq!(connections(&text, "webfox_file"), ["xero"]);
    let labels = [("source", "webfox_file"), ("connection", "xero")];
    assert_eq!(
        value(
            &text,
            "oauth_refresh_token_last_refresh_timestamp_seconds",
            &labels
        ),
        (now - 3600) as f64
    );
    assert_eq!(
        value(
            &text,
            "oauth_connection_info",
            &[
                ("source", "webfox_file"),
                ("tenant", "6f1c2f6e-aaaa-4000-8000-000000000001"),
                ("tenant_name", "Demo Company (NZ)")
            ]
        ),
        1.0
    );
    assert!(!text.contains("token-value"));
}
