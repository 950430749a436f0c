//! The simulated host app's own connection to its store (SQLite, PostgreSQL or MySQL): the
//! *writing* side the exporter watches read-only. One enum over the three sqlx pools; SQL is
//! written with `?` placeholders and numbered for PostgreSQL.

use crate::model::StoreKind;
use sqlx::mysql::MySqlPoolOptions;
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use std::str::FromStr;

/// A value bound to a `?` placeholder.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    Text(String),
    Int(i64),
    Null,
}

impl From<&str> for Arg {
    fn from(s: &str) -> Self {
        Arg::Text(s.to_string())
    }
}
impl From<String> for Arg {
    fn from(s: String) -> Self {
        Arg::Text(s)
    }
}
impl From<&String> for Arg {
    fn from(s: &String) -> Self {
        Arg::Text(s.clone())
    }
}
impl From<i64> for Arg {
    fn from(i: i64) -> Self {
        Arg::Int(i)
    }
}
impl<T: Into<Arg>> From<Option<T>> for Arg {
    fn from(v: Option<T>) -> Self {
        v.map_or(Arg::Null, Into::into)
    }
}

/// A writable pool on one of the SQL stores.
#[derive(Debug, Clone)]
pub enum SimStore {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
    Mysql(sqlx::MySqlPool),
}

/// Run `$body` with `$pool` bound to whichever pool `$store` holds.
macro_rules! on_pool {
    ($store:expr, |$pool:ident| $body:expr) => {
        match $store {
            SimStore::Sqlite($pool) => $body,
            SimStore::Postgres($pool) => $body,
            SimStore::Mysql($pool) => $body,
        }
    };
}

/// Bind `args` to a query of any of the three databases.
macro_rules! bind_all {
    ($q:expr, $args:expr) => {{
        let mut q = $q;
        for a in $args {
            q = match a {
                Arg::Text(s) => q.bind(s.clone()),
                Arg::Int(i) => q.bind(*i),
                Arg::Null => q.bind(None::<String>),
            };
        }
        q
    }};
}

impl SimStore {
    /// Open a writable pool (SQLite: the file is created, in WAL mode so the exporter can read
    /// while the app writes).
    pub async fn connect(kind: StoreKind, dsn: &str) -> Result<SimStore, sqlx::Error> {
        Ok(match kind {
            StoreKind::Sqlite => {
                let path = dsn.strip_prefix("sqlite://").unwrap_or(dsn);
                let opts = SqliteConnectOptions::from_str(&format!("sqlite://{path}"))?
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .busy_timeout(std::time::Duration::from_secs(5));
                SimStore::Sqlite(
                    SqlitePoolOptions::new()
                        .max_connections(1)
                        .connect_with(opts)
                        .await?,
                )
            }
            StoreKind::Postgres => {
                SimStore::Postgres(PgPoolOptions::new().max_connections(4).connect(dsn).await?)
            }
            StoreKind::Mysql => SimStore::Mysql(
                MySqlPoolOptions::new()
                    .max_connections(4)
                    .connect(dsn)
                    .await?,
            ),
            other => {
                return Err(sqlx::Error::Configuration(
                    format!("the simulated host app stores in SQL stores, not {other:?}").into(),
                ))
            }
        })
    }

    pub fn kind(&self) -> StoreKind {
        match self {
            SimStore::Sqlite(_) => StoreKind::Sqlite,
            SimStore::Postgres(_) => StoreKind::Postgres,
            SimStore::Mysql(_) => StoreKind::Mysql,
        }
    }

    /// The column type of an auto-incrementing integer primary key.
    pub fn serial_key(&self) -> &'static str {
        match self {
            SimStore::Sqlite(_) => "INTEGER PRIMARY KEY AUTOINCREMENT",
            SimStore::Postgres(_) => "BIGSERIAL PRIMARY KEY",
            SimStore::Mysql(_) => "BIGINT AUTO_INCREMENT PRIMARY KEY",
        }
    }

    /// `?` placeholders, numbered `$1, $2, ...` for PostgreSQL.
    fn sql(&self, sql: &str) -> String {
        if !matches!(self, SimStore::Postgres(_)) {
            return sql.to_string();
        }
        let mut out = String::with_capacity(sql.len() + 8);
        let mut n = 0;
        for ch in sql.chars() {
            if ch == '?' {
                n += 1;
                out.push_str(&format!("${n}"));
            } else {
                out.push(ch);
            }
        }
        out
    }

    /// Run a statement; returns the rows it affected.
    pub async fn execute(&self, sql: &str, args: &[Arg]) -> Result<u64, sqlx::Error> {
        let sql = self.sql(sql);
        Ok(on_pool!(self, |pool| bind_all!(sqlx::query(&sql), args)
            .execute(pool)
            .await?
            .rows_affected()))
    }

    /// Run a query whose rows decode into `T` (a tuple) on every backend.
    pub async fn fetch<T>(&self, sql: &str, args: &[Arg]) -> Result<Vec<T>, sqlx::Error>
    where
        T: Send
            + Unpin
            + for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>
            + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>
            + for<'r> sqlx::FromRow<'r, sqlx::mysql::MySqlRow>,
    {
        let sql = self.sql(sql);
        on_pool!(self, |pool| bind_all!(sqlx::query_as::<_, T>(&sql), args)
            .fetch_all(pool)
            .await)
    }

    pub async fn close(&self) {
        on_pool!(self, |pool| pool.close().await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn placeholders_are_numbered_for_postgres_only() {
        let lite = SimStore::Sqlite(
            SqlitePoolOptions::new()
                .connect_lazy("sqlite::memory:")
                .unwrap(),
        );
        assert_eq!(lite.sql("a = ? AND b = ?"), "a = ? AND b = ?");
        let pg = SimStore::Postgres(
            PgPoolOptions::new()
                .connect_lazy("postgres://u@127.0.0.1:1/d")
                .unwrap(),
        );
        assert_eq!(pg.sql("a = ? AND b = ?"), "a = $1 AND b = $2");
    }
}
