//! Presets: the query and field mapping for schemas real apps use, so most users write no SQL.
//!
//! Every preset selects ids and timestamps only, never a token column.

use super::common::valid_table;
use super::fields::RawFields;
use crate::model::StoreKind;
use serde::Deserialize;

/// How the last refresh time is obtained when no field holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Inference {
    /// Access-token expiry minus the provider's access-token lifetime.
    AccessExpires,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    /// The flat table of XERO.md: `xero_tokens(id, access_token, refresh_token, expires_at,
    /// tenant_id, created_at, updated_at)`. Last refresh = `expires_at` − access lifetime
    /// (`updated_at` can move for reasons other than a refresh).
    XeroTokens,
    /// Nango's `nango._nango_connections` (PostgreSQL only), joined with `_nango_configs` for
    /// each connection's provider and `_nango_environments` for its environment.
    Nango,
    /// A table with a xero-node token set in a JSON column:
    /// `xero_token_sets(id, tenant_id, token_set, updated_at)`; `token_set.expires_at` is epoch
    /// seconds. The JSON is read by the database, so no token leaves it.
    TokenSetJson,
    /// dcblogdev/laravel-xero's `xero_tokens` (its migration `create_xero_tokens_table`):
    /// one row per tenant, `expires_in` a string of seconds counted from Eloquent's
    /// `updated_at`, which `StoreTokenAction`'s `updateOrCreate` moves on every refresh.
    LaravelXero,
    /// Frappe/ERPNext's `tabToken Cache` (one row per Connected App and user; MariaDB or
    /// PostgreSQL): `modified` is when the tokens were last written, in the site's time zone
    /// (set `timezone`); `expires_in` counts from it. Tokens are Password fields, kept apart.
    Frappe,
    /// webfox/laravel-xero-oauth2's model store (and its authenticated-user store, on `users`):
    /// the credentials array `{token, refresh_token, id_token, expires, tenants: [{Id, Name,
    /// ...}]}` in a JSON attribute `xero_credentials` (an Eloquent `array` cast) of any model's
    /// table; `expires` is the access token's expiry in epoch seconds, written on every refresh.
    /// One connection per model row, its first tenant as `tenant`. Read by the database.
    WebfoxXero,
}

impl Preset {
    pub fn as_str(self) -> &'static str {
        match self {
            Preset::XeroTokens => "xero_tokens",
            Preset::Nango => "nango",
            Preset::TokenSetJson => "token_set_json",
            Preset::Frappe => "frappe",
            Preset::LaravelXero => "laravel_xero",
            Preset::WebfoxXero => "webfox_xero",
        }
    }

    /// The columns its query reads from the table (for telling a table of another shape).
    pub fn columns(self) -> &'static [&'static str] {
        match self {
            Preset::XeroTokens => &["id", "tenant_id", "expires_at"],
            Preset::LaravelXero => &["id", "tenant_id", "tenant_name", "expires_in", "updated_at"],
            Preset::TokenSetJson => &["id", "tenant_id", "token_set"],
            Preset::WebfoxXero => &["id", "xero_credentials"],
            Preset::Frappe => &[
                "name",
                "user",
                "connected_app",
                "provider_name",
                "modified",
                "expires_in",
            ],
            Preset::Nango => &[
                "connection_id",
                "provider_config_key",
                "credentials_expires_at",
            ],
        }
    }

    /// The single-table presets a table could be read with.
    pub const TABLES: [Preset; 4] = [
        Preset::XeroTokens,
        Preset::LaravelXero,
        Preset::TokenSetJson,
        Preset::WebfoxXero,
    ];

    pub(crate) fn default_table(self) -> &'static str {
        match self {
            Preset::XeroTokens => "xero_tokens",
            Preset::Nango => "nango._nango_connections",
            Preset::TokenSetJson => "xero_token_sets",
            Preset::Frappe => "tabToken Cache",
            Preset::LaravelXero => "xero_tokens",
            Preset::WebfoxXero => "users",
        }
    }
}

/// A preset's query and fields for a store kind.
pub struct Built {
    pub query: String,
    pub fields: RawFields,
    pub infer_last_refresh: Option<Inference>,
    /// Extra `oauth_connection_info` labels it maps: label name to column.
    pub labels: Vec<(&'static str, &'static str)>,
}

/// Build the preset for `kind`, reading `table` (or the preset's default table).
pub fn build(preset: Preset, kind: StoreKind, table: Option<&str>) -> Result<Built, String> {
    let given = table;
    let table = || {
        let table = given.unwrap_or(preset.default_table());
        if valid_table(table) {
            Ok(table)
        } else {
            Err(format!(
                "{table:?} is not a valid table name: use `table` or `schema.table` with letters, digits and `_`"
            ))
        }
    };
    match preset {
        Preset::XeroTokens => Ok(expires_at_shape(
            format!("SELECT id, tenant_id, expires_at FROM {}", table()?),
            Vec::new(),
        )),
        Preset::TokenSetJson => {
            let expires = json_text(kind, "token_set", &["expires_at"], true)?;
            Ok(expires_at_shape(
                format!(
                    "SELECT id, tenant_id, {expires} AS expires_at FROM {}",
                    table()?
                ),
                Vec::new(),
            ))
        }
        Preset::Frappe => frappe(kind, given),
        Preset::WebfoxXero => {
            let c = "xero_credentials";
            let tenant = json_text(kind, c, &["tenants", "0", "Id"], false)?;
            let name = json_text(kind, c, &["tenants", "0", "Name"], false)?;
            let expires = json_text(kind, c, &["expires"], true)?;
            Ok(expires_at_shape(
                format!(
                    "SELECT id, {tenant} AS tenant_id, {name} AS tenant_name, {expires} AS expires_at FROM {} WHERE {c} IS NOT NULL",
                    table()?
                ),
                vec![("tenant_name", "tenant_name")],
            ))
        }
        Preset::LaravelXero => Ok(Built {
            query: format!(
                "SELECT id, tenant_id, tenant_name, expires_in, updated_at FROM {}",
                table()?
            ),
            fields: RawFields::preset(&[
                ("connection", "id"),
                ("tenant", "tenant_id"),
                ("last_refresh", "updated_at"),
            ])
            .access_expires_relative("expires_in", "updated_at"),
            infer_last_refresh: None,
            labels: vec![("tenant_name", "tenant_name")],
        }),
        Preset::Nango => {
            if kind != StoreKind::Postgres {
                return Err(format!(
                    "the nango preset reads Nango's PostgreSQL schema; this source is kind {}",
                    kind.as_str()
                ));
            }
            let table = table()?;
            // Nango's other tables live beside `_nango_connections`, in its schema.
            let schema = match table.rsplit_once('.') {
                Some((schema, _)) => format!("{schema}."),
                None => String::new(),
            };
            Ok(Built {
                query: format!(
                    "SELECT COALESCE(e.name, '') || '/' || c.provider_config_key || '/' || c.connection_id AS connection, \
                     c.connection_config ->> 'tenant_id' AS tenant, \
                     e.name AS environment, \
                     cfg.provider AS provider, \
                     COALESCE(c.last_refresh_success, CASE WHEN c.credentials_expires_at IS NULL THEN c.created_at END) AS last_refresh, \
                     c.credentials_expires_at AS access_expires, \
                     c.last_refresh_failure AS last_failure, \
                     CASE WHEN c.refresh_exhausted THEN 'needs_reauth' \
                          WHEN c.last_refresh_failure IS NOT NULL \
                               AND (c.last_refresh_success IS NULL OR c.last_refresh_failure > c.last_refresh_success) THEN 'failing' \
                          ELSE 'active' END AS status \
                     FROM {table} c \
                     LEFT JOIN {schema}_nango_configs cfg ON cfg.id = c.config_id \
                     LEFT JOIN {schema}_nango_environments e ON e.id = c.environment_id \
                     WHERE c.deleted IS NOT TRUE"
                ),
                fields: RawFields::preset(&[
                    ("connection", "connection"),
                    ("tenant", "tenant"),
                    ("provider", "provider"),
                    ("last_refresh", "last_refresh"),
                    ("access_expires", "access_expires"),
                    ("last_failure", "last_failure"),
                    ("status", "status"),
                ]),
                // A failed refresh sets Nango's last success to NULL and keeps the access
                // expiry: the last refresh is then the expiry minus the provider's lifetime.
                infer_last_refresh: Some(Inference::AccessExpires),
                labels: vec![("environment", "environment")],
            })
        }
    }
}

/// A preset whose query gives `id`, `tenant_id` and the access token's `expires_at`, the last
/// refresh inferred from the expiry.
fn expires_at_shape(query: String, labels: Vec<(&'static str, &'static str)>) -> Built {
    Built {
        query,
        fields: RawFields::preset(&[
            ("connection", "id"),
            ("tenant", "tenant_id"),
            ("access_expires", "expires_at"),
        ]),
        infer_last_refresh: Some(Inference::AccessExpires),
        labels,
    }
}

/// SQL for the text at `path` (keys, or list indexes as numbers) inside the JSON column
/// `column`, read by the database so no other value leaves it. Where the database can tell,
/// text that is not JSON gives `invalid JSON` when `flag_invalid` (so the row is rejected for
/// that field) and NULL otherwise; PostgreSQL casts to `jsonb` (a `json` column is always valid).
fn json_text(
    kind: StoreKind,
    column: &str,
    path: &[&str],
    flag_invalid: bool,
) -> Result<String, String> {
    let invalid = if flag_invalid {
        " ELSE 'invalid JSON'"
    } else {
        ""
    };
    let dotted: String = path
        .iter()
        .map(|p| match p.parse::<usize>() {
            Ok(i) => format!("[{i}]"),
            Err(_) => format!(".{p}"),
        })
        .collect();
    Ok(match kind {
        StoreKind::Postgres => {
            let (last, init) = path.split_last().expect("a path");
            let steps: String = init
                .iter()
                .map(|p| match p.parse::<usize>() {
                    Ok(i) => format!(" -> {i}"),
                    Err(_) => format!(" -> '{p}'"),
                })
                .collect();
            let last = match last.parse::<usize>() {
                Ok(i) => i.to_string(),
                Err(_) => format!("'{last}'"),
            };
            format!("({column}::jsonb{steps} ->> {last})")
        }
        StoreKind::Mysql => format!("CASE WHEN JSON_VALID({column}) THEN JSON_UNQUOTE(JSON_EXTRACT({column}, '${dotted}')){invalid} END"),
        StoreKind::Sqlite => format!("CASE WHEN json_valid({column}) THEN json_extract({column}, '${dotted}'){invalid} END"),
        StoreKind::Redis | StoreKind::File | StoreKind::Http => {
            return Err(format!(
                "presets are for SQL stores; a {} source maps its documents' keys",
                kind.as_str()
            ))
        }
    })
}

/// Frappe's `tabToken Cache`, as its DocType (frappe/integrations/doctype/token_cache/
/// token_cache.json) and `TokenCache.update_data` write it: saved on every token write, so
/// `modified` is the last refresh; `expires_in` (seconds, 0 when unknown) counts from it. The
/// row's name is `{connected_app}-{user}`; the Connected App's `provider_name` is free text.
fn frappe(kind: StoreKind, table: Option<&str>) -> Result<Built, String> {
    if table.is_some() {
        return Err(
            "the frappe preset reads Frappe's own `tabToken Cache`; it takes no `table`".into(),
        );
    }
    // `user` is a keyword (PostgreSQL's USER is the session's role): quoted as Frappe does.
    let (quoted, user, expiry) = match kind {
        StoreKind::Mysql => (
            "`tabToken Cache`",
            "`user`",
            "DATE_ADD(modified, INTERVAL expires_in SECOND)",
        ),
        StoreKind::Postgres => (
            "\"tabToken Cache\"",
            "\"user\"",
            "modified + expires_in * INTERVAL '1 second'",
        ),
        _ => {
            return Err(format!(
                "the frappe preset reads Frappe's MariaDB or PostgreSQL database; this source is kind {}",
                kind.as_str()
            ))
        }
    };
    Ok(Built {
        query: format!(
            "SELECT name, {user}, connected_app, LOWER(provider_name) AS provider, modified, \
             CASE WHEN expires_in > 0 THEN {expiry} END AS access_expires FROM {quoted}"
        ),
        fields: RawFields::preset(&[
            ("connection", "name"),
            ("provider", "provider"),
            ("last_refresh", "modified"),
            ("access_expires", "access_expires"),
        ]),
        infer_last_refresh: None,
        labels: vec![("user", "user"), ("connected_app", "connected_app")],
    })
}
