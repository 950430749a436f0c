//! Nango's real database and webhooks, for the `nango` preset and `POST /webhooks/nango`.
//!
//! The schema is `tests/fixtures/nango/schema.sql`: every knex migration of NangoHQ/nango
//! (packages/database/lib/migrations at 2f4c0af671, 2026-08-21) applied and dumped. It is loaded
//! into a schema of the test's own (its `nango.` prefix renamed, and `nango.uuid_generate_v4()`,
//! from the uuid-ossp extension Nango installs in its schema, replaced by PostgreSQL's built-in
//! `gen_random_uuid()`).
//!
//! Rows are written the way Nango's code writes them (NangoHQ/nango at the same commit):
//! - `create`: `connectionService.upsertConnection`, creation branch
//!   (packages/shared/lib/services/connection.service.ts);
//! - `refreshed`: `refreshCredentialsIfNeeded` after a successful refresh
//!   (packages/shared/lib/services/connections/credentials/refresh.ts);
//! - `refresh_failed`: `connectionService.setRefreshFailure` (one attempt more per new day,
//!   `refresh_exhausted` at `MAX_CONSECUTIVE_DAYS_FAILED_REFRESH` = 4);
//! - `auth_failed`: `connectionService.markConnectionAuthFailed`;
//! - `soft_delete`: `connectionService.deleteConnection`.
//!
//! Webhooks are built as `sendAuth` builds them (packages/webhooks/lib/auth.ts): the body
//! serialised with keys in alphabetical order (`stringifyStable`), signed by `deliver`
//! (packages/webhooks/lib/utils.ts) with `X-Nango-Hmac-Sha256` = HMAC-SHA256(signing key, body)
//! and the legacy `X-Nango-Signature` = SHA-256(key + body).

use chrono::{DateTime, Datelike, Duration, Utc};
use sqlx::{PgPool, Row};

/// Nango's `MAX_CONSECUTIVE_DAYS_FAILED_REFRESH`.
pub const MAX_CONSECUTIVE_DAYS_FAILED_REFRESH: i16 = 4;

/// The description Nango's `NangoError('refresh_token_external_error')` carries.
pub const REFRESH_FAILED_DESCRIPTION: &str =
    "The external API returned an error when trying to refresh the access token. Please try again later.";

/// A Nango database in a schema of the test's own, dropped with it.
pub struct NangoDb {
    pub pool: PgPool,
    pub schema: String,
}

impl NangoDb {
    /// Load Nango's schema into `schema` (dropped first if a failed run left it).
    pub async fn load(url: &str, schema: &str) -> NangoDb {
        let pool = PgPool::connect(url).await.unwrap();
        sqlx::raw_sql(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .execute(&pool)
            .await
            .unwrap();
        let dump = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/nango/schema.sql"),
        )
        .unwrap();
        let sql: String = dump
            .lines()
            .filter(|l| !l.starts_with("SELECT pg_catalog.set_config('search_path'"))
            .map(|l| {
                l.replace("nango.uuid_generate_v4()", "gen_random_uuid()")
                    .replace("CREATE SCHEMA nango;", &format!("CREATE SCHEMA {schema};"))
                    .replace(" nango.", &format!(" {schema}."))
                    .replace("'nango.", &format!("'{schema}."))
                    .replace(":nango.", &format!(":{schema}."))
            })
            .collect::<Vec<_>>()
            .join("\n");
        sqlx::raw_sql(&sql).execute(&pool).await.unwrap();
        NangoDb {
            pool,
            schema: schema.to_string(),
        }
    }

    pub async fn drop_schema(&self) {
        let _ = sqlx::raw_sql(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema))
            .execute(&self.pool)
            .await;
    }

    fn t(&self, table: &str) -> String {
        format!("{}.{table}", self.schema)
    }

    /// An environment (`_nango_environments`), its id.
    pub async fn environment(&self, name: &str) -> i32 {
        sqlx::query(&format!(
            "INSERT INTO {} (name) VALUES ($1) RETURNING id",
            self.t("_nango_environments")
        ))
        .bind(name)
        .fetch_one(&self.pool)
        .await
        .unwrap()
        .get(0)
    }

    /// An integration (`_nango_configs`) of `provider` under `unique_key`, its id.
    pub async fn integration(&self, environment: i32, unique_key: &str, provider: &str) -> i32 {
        sqlx::query(&format!(
            "INSERT INTO {} (unique_key, provider, environment_id, oauth_client_id, oauth_client_secret) VALUES ($1, $2, $3, 'client-id', 'encrypted-client-secret') RETURNING id",
            self.t("_nango_configs")
        ))
        .bind(unique_key)
        .bind(provider)
        .bind(environment)
        .fetch_one(&self.pool)
        .await
        .unwrap()
        .get(0)
    }

    /// A new connection authorised at `at` (the creation branch of `upsertConnection`), with an
    /// access token valid `expires_in`; its row id. `tenant` goes in `connection_config` as
    /// Nango's Xero integration keeps it.
    #[allow(clippy::too_many_arguments)]
    pub async fn create(
        &self,
        environment: i32,
        config: i32,
        unique_key: &str,
        connection_id: &str,
        tenant: Option<&str>,
        at: DateTime<Utc>,
        expires_in: Duration,
    ) -> i32 {
        let connection_config = match tenant {
            Some(t) => serde_json::json!({ "tenant_id": t }),
            None => serde_json::json!({}),
        };
        sqlx::query(&format!(
            "INSERT INTO {} (connection_id, provider_config_key, config_id, credentials, credentials_iv, credentials_tag, connection_config, environment_id, metadata, created_at, updated_at, last_fetched_at, credentials_expires_at, last_refresh_success, last_refresh_failure, refresh_attempts, refresh_exhausted, deleted, deleted_at, tags) \
             VALUES ($1, $2, $3, $4, 'iv', 'tag', $5, $6, NULL, $7, $7, $7, $8, $7, NULL, NULL, false, false, NULL, '{{}}') RETURNING id",
            self.t("_nango_connections")
        ))
        .bind(connection_id)
        .bind(unique_key)
        .bind(config)
        .bind(serde_json::json!({ "encrypted_credentials": "c2VjcmV0LWNpcGhlcnRleHQ=" }))
        .bind(connection_config)
        .bind(environment)
        .bind(at)
        .bind(at + expires_in)
        .fetch_one(&self.pool)
        .await
        .unwrap()
        .get(0)
    }

    /// A successful refresh at `at` (what `refreshCredentialsIfNeeded` updates).
    pub async fn refreshed(&self, id: i32, at: DateTime<Utc>, expires_in: Duration) {
        sqlx::query(&format!(
            "UPDATE {} SET credentials = $2, last_fetched_at = $3, credentials_expires_at = $4, last_refresh_failure = NULL, last_refresh_success = $3, refresh_attempts = NULL, refresh_exhausted = false, updated_at = $3 WHERE id = $1 AND deleted = false",
            self.t("_nango_connections")
        ))
        .bind(id)
        .bind(serde_json::json!({ "encrypted_credentials": "cm90YXRlZC1jaXBoZXJ0ZXh0" }))
        .bind(at)
        .bind(at + expires_in)
        .execute(&self.pool)
        .await
        .unwrap();
    }

    /// A failed refresh at `at`: `setRefreshFailure` (one attempt more only when the last failure
    /// was on an earlier day, as Nango compares them).
    pub async fn refresh_failed(&self, id: i32, at: DateTime<Utc>) {
        let row = sqlx::query(&format!(
            "SELECT last_refresh_failure, refresh_attempts FROM {} WHERE id = $1",
            self.t("_nango_connections")
        ))
        .bind(id)
        .fetch_one(&self.pool)
        .await
        .unwrap();
        let last: Option<DateTime<Utc>> = row.get(0);
        let current: Option<i16> = row.get(1);
        let mut attempt = match current.unwrap_or(0) {
            0 => 1,
            n => n,
        };
        if let Some(l) = last {
            if l.year() < at.year() || l.month() < at.month() || l.day() < at.day() {
                attempt += 1;
            }
        }
        sqlx::query(&format!(
            "UPDATE {} SET updated_at = $2, last_refresh_failure = $2, last_refresh_success = NULL, refresh_attempts = $3, refresh_exhausted = $4 WHERE id = $1",
            self.t("_nango_connections")
        ))
        .bind(id)
        .bind(at)
        .bind(attempt)
        .bind(attempt >= MAX_CONSECUTIVE_DAYS_FAILED_REFRESH)
        .execute(&self.pool)
        .await
        .unwrap();
    }

    /// `markConnectionAuthFailed`: the connection's credentials were found invalid.
    pub async fn auth_failed(&self, id: i32, at: DateTime<Utc>) {
        sqlx::query(&format!(
            "UPDATE {} SET updated_at = $2, last_refresh_failure = $2, last_refresh_success = NULL, refresh_attempts = $3, refresh_exhausted = true WHERE id = $1",
            self.t("_nango_connections")
        ))
        .bind(id)
        .bind(at)
        .bind(MAX_CONSECUTIVE_DAYS_FAILED_REFRESH)
        .execute(&self.pool)
        .await
        .unwrap();
    }

    /// `deleteConnection`: a soft delete.
    pub async fn soft_delete(&self, id: i32, at: DateTime<Utc>) {
        sqlx::query(&format!(
            "UPDATE {} SET deleted = true, deleted_at = $2 WHERE id = $1",
            self.t("_nango_connections")
        ))
        .bind(id)
        .bind(at)
        .execute(&self.pool)
        .await
        .unwrap();
    }

    /// A connection as Nango's rows had it before the health columns were added (migration
    /// 20250310134848): no access expiry, no last success.
    pub async fn clear_health_columns(&self, id: i32) {
        sqlx::query(&format!(
            "UPDATE {} SET credentials_expires_at = NULL, last_refresh_success = NULL WHERE id = $1",
            self.t("_nango_connections")
        ))
        .bind(id)
        .execute(&self.pool)
        .await
        .unwrap();
    }
}

/// The auth webhook of a failed refresh, as `sendAuth` builds it (keys in alphabetical order,
/// as `stringifyStable` writes them).
pub fn refresh_failed_webhook(
    environment: &str,
    unique_key: &str,
    connection_id: &str,
    provider: &str,
) -> String {
    let body = serde_json::json!({
        "authMode": "OAUTH2",
        "connectionId": connection_id,
        "environment": environment,
        "error": {"description": REFRESH_FAILED_DESCRIPTION, "type": "refresh_token_external_error"},
        "from": "nango",
        "operation": "refresh",
        "provider": provider,
        "providerConfigKey": unique_key,
        "success": false,
        "tags": {},
        "type": "auth"
    });
    // serde_json's map is ordered by key, and compact: the same bytes as stringifyStable.
    serde_json::to_string(&body).unwrap()
}

/// The auth webhook of a new connection (`operation: creation`, success).
pub fn creation_webhook(
    environment: &str,
    unique_key: &str,
    connection_id: &str,
    provider: &str,
) -> String {
    serde_json::to_string(&serde_json::json!({
        "authMode": "OAUTH2",
        "connectionId": connection_id,
        "environment": environment,
        "from": "nango",
        "operation": "creation",
        "provider": provider,
        "providerConfigKey": unique_key,
        "success": true,
        "tags": {},
        "type": "auth"
    }))
    .unwrap()
}

/// `X-Nango-Hmac-Sha256` and `X-Nango-Signature` of `body` under `key`, as `deliver` sets them.
pub fn nango_signatures(key: &str, body: &str) -> (String, String) {
    use hmac::Mac;
    use sha2::Digest;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    let hmac = hex::encode(mac.finalize().into_bytes());
    let unsafe_sig = hex::encode(sha2::Sha256::digest(format!("{key}{body}").as_bytes()));
    (hmac, unsafe_sig)
}
