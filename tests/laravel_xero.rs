//! dcblogdev/laravel-xero's token table, as its migration builds it and its code writes it
//! (src/database/migrations/create_xero_tokens_table.php and src/Actions/StoreTokenAction.php
//! at dcblogdev/laravel-xero b3d0690d, 2026-04-30): `expires_in` a string of seconds, counted
//! from Eloquent's `updated_at`, which `updateOrCreate` moves on each refresh; timestamps in the
//! app's zone (Laravel's default UTC). The table shares its name with the `xero_tokens` preset's
//! table but not its shape (issue 14): that preset fails at the first poll naming the missing
//! column and the preset that fits.

mod common;
use common::*;
use oauth_token_exporter::sources::mapping::{Rejection, Resolved};
use oauth_token_exporter::sources::{Backend, RowSink};
use oauth_token_exporter::timestamp::Cell;

/// The migration on SQLite, as Laravel's schema builder writes it there (`increments` an
/// autoincrementing integer key, `string` varchar(255), `text` text, `timestamps()` two
/// nullable datetimes).
const MIGRATION: &str = "create table \"xero_tokens\" (\"id\" integer primary key autoincrement not null, \"id_token\" text, \"access_token\" text not null, \"expires_in\" varchar, \"token_type\" varchar, \"refresh_token\" text, \"scopes\" varchar not null, \"auth_event_id\" varchar, \"tenant_id\" varchar, \"tenant_type\" varchar, \"tenant_name\" varchar, \"created_date_utc\" varchar, \"updated_date_utc\" varchar, \"created_at\" datetime, \"updated_at\" datetime)";

/// Two tenants as `StoreTokenAction` leaves them after a refresh (tokens encrypted by
/// `Crypt::encryptString` when `xero.encrypt` is on: opaque text here), and one whose
/// `expires_in` is garbage.
const ROWS: &str = "insert into \"xero_tokens\" (\"id_token\", \"access_token\", \"expires_in\", \"token_type\", \"refresh_token\", \"scopes\", \"tenant_id\", \"tenant_type\", \"tenant_name\", \"created_at\", \"updated_at\") values \
    ('eyJ.id', 'eyJpdiI6.enc-access', '1800', 'Bearer', 'eyJpdiI6.enc-refresh', 'openid offline_access accounting.transactions', '6f1c2f6e-0000-4000-8000-000000000001', 'ORGANISATION', 'Demo Company (NZ)', '2026-03-01 09:00:00', '2026-06-01 11:00:00'), \
    ('eyJ.id', 'eyJpdiI6.enc-access', '1800', 'Bearer', 'eyJpdiI6.enc-refresh', 'openid offline_access accounting.transactions', '6f1c2f6e-0000-4000-8000-000000000002', 'ORGANISATION', 'Demo Company (UK)', '2026-03-01 09:00:00', '2026-04-02 12:00:00'), \
    ('eyJ.id', 'eyJpdiI6.enc-access', 'abc', 'Bearer', 'eyJpdiI6.enc-refresh', 'openid offline_access accounting.transactions', '6f1c2f6e-0000-4000-8000-000000000003', 'ORGANISATION', 'Demo Company (AU)', '2026-03-01 09:00:00', '2026-05-31 12:00:00')";

#[tokio::test]
async fn the_laravel_xero_preset_reads_its_table_exactly() {
    let (_d, path, _pool) = sqlite_db(&[MIGRATION, ROWS]).await;
    let yaml = format!(
        "sources:\n  - {{name: laravel, kind: sqlite, dsn: {}, preset: laravel_xero}}\n",
        path.display()
    );
    let (mut e, _) = exporter(&yaml, fixed_now());
    assert_eq!(poll(&mut e).await, [true]);
    let text = scrape(&e);
    assert_eq!(connections(&text, "laravel"), ["1", "2", "3"]);
    let v = |name: &str, c: &str| value(&text, name, &[("source", "laravel"), ("connection", c)]);
    assert_eq!(
        v("oauth_refresh_token_last_refresh_timestamp_seconds", "1"),
        t("2026-06-01T11:00:00Z").timestamp() as f64
    );
    assert_eq!(
        v("oauth_access_token_expiry_timestamp_seconds", "1"),
        t("2026-06-01T11:30:00Z").timestamp() as f64
    );
    // 60 days after 2026-04-02 12:00 is 2026-06-01 12:00: expired exactly now.
    assert_eq!(
        v("oauth_refresh_token_expiry_timestamp_seconds", "2"),
        t("2026-06-01T12:00:00Z").timestamp() as f64
    );
    assert_eq!(v("oauth_refresh_token_expired", "2"), 1.0);
    // The garbage expires_in omits that access expiry only.
    assert_eq!(v("oauth_refresh_token_age_seconds", "3"), 24.0 * 3600.0);
    assert_eq!(
        sample(
            &text,
            "oauth_access_token_expiry_timestamp_seconds",
            &[("source", "laravel"), ("connection", "3")]
        ),
        None
    );
    assert!(text.contains("tenant_name=\"Demo Company (NZ)\""), "{text}");
    assert!(!text.contains("enc-access") && !text.contains("enc-refresh"));
}

/// Takes nothing: the poll fails before the first row.
struct Nothing;

impl RowSink for Nothing {
    fn resolved(&mut self, _: Resolved) {}
    fn row(&mut self, _: &[Cell]) {}
    fn reject(&mut self, _: Rejection) {}
}

#[tokio::test]
async fn the_xero_tokens_preset_on_laravel_xeros_table_names_the_missing_column_and_the_preset_that_fits(
) {
    let (_d, path, _pool) = sqlite_db(&[MIGRATION, ROWS]).await;
    let yaml = format!(
        "sources:\n  - {{name: wrong, kind: sqlite, dsn: {}, preset: xero_tokens}}\n",
        path.display()
    );
    let cfg = parse_config(&yaml).sources.remove(0);
    let backend = Backend::connect(&cfg.store).unwrap();
    let err = backend
        .fetch(&cfg.mapping, &mut Nothing)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no such column: expires_at")
            && err.contains("it has no column expires_at")
            && err.contains("preset `laravel_xero` reads this shape"),
        "{err}"
    );
    assert!(!err.contains("enc-"), "{err}");
}
