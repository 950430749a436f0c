//! The lease of an event table: with `lease: true`, exactly one instance (of a shard) reads the
//! table at a time, so N replicas count each event once. The lease lives in the store itself and
//! dies with its holder:
//! - PostgreSQL: a session advisory lock (`pg_try_advisory_lock`) on a connection of its own;
//! - MySQL/MariaDB: a named lock (`GET_LOCK(name, 0)`) on a connection of its own;
//! - SQLite: an exclusive lock on `<state_file>.lock` (the replicas share one host or volume).
//!
//! Neither needs a write privilege on the store. The holder checks it still holds the lease
//! (its connection answers) before every batch and before writing the cursor; a lost connection
//! is a lost lease. The cursor and each instance's counters are in the state file, which must
//! be shared by the replicas (README "Running more than one").

use crate::config::EventTable;
use crate::model::CollectError;
use crate::sources::sql::{sql_error, SqlPool};
use sha2::{Digest, Sha256};
use sqlx::{ConnectOptions, Connection};

/// A held lease.
pub enum Lease {
    Postgres(sqlx::PgConnection, i64),
    Mysql(sqlx::MySqlConnection),
    File(std::fs::File),
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Lease::Postgres(..) => "Lease::Postgres",
            Lease::Mysql(_) => "Lease::Mysql",
            Lease::File(_) => "Lease::File",
        })
    }
}

/// The lease's name: the table and the shard (the same for every replica of that shard).
fn name(cfg: &EventTable) -> String {
    format!(
        "oauth-token-exporter:{}:{}/{}",
        cfg.table, cfg.shard.index, cfg.shard.total
    )
}

/// The advisory-lock key (PostgreSQL) or lock name (MySQL, at most 64 characters).
fn key(cfg: &EventTable) -> (i64, String) {
    let d = Sha256::digest(name(cfg).as_bytes());
    let k = i64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]);
    let hex: String = d[..12].iter().map(|b| format!("{b:02x}")).collect();
    (k, format!("oauth-token-exporter:{hex}"))
}

/// The lock file of an SQLite table's lease.
pub fn lock_file(cfg: &EventTable) -> std::path::PathBuf {
    let mut p = cfg.state_file.clone().into_os_string();
    p.push(".lock");
    p.into()
}

impl Lease {
    /// Take the lease if nobody holds it; `None` when another instance does.
    pub async fn try_acquire(
        pool: &SqlPool,
        cfg: &EventTable,
    ) -> Result<Option<Lease>, CollectError> {
        let (k, lock) = key(cfg);
        match pool {
            SqlPool::Postgres(p) => {
                let mut c = p.connect_options().connect().await.map_err(sql_error)?;
                let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                    .bind(k)
                    .fetch_one(&mut c)
                    .await
                    .map_err(sql_error)?;
                Ok(got.then_some(Lease::Postgres(c, k)))
            }
            SqlPool::Mysql(p) => {
                let mut c = p.connect_options().connect().await.map_err(sql_error)?;
                let got: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(?, 0)")
                    .bind(&lock)
                    .fetch_one(&mut c)
                    .await
                    .map_err(sql_error)?;
                Ok((got == Some(1)).then_some(Lease::Mysql(c)))
            }
            SqlPool::Sqlite(_) => {
                let path = lock_file(cfg);
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&path)
                    .map_err(|e| {
                        CollectError::Connect(format!(
                            "cannot open the lease's lock file {}: {e}",
                            path.display()
                        ))
                    })?;
                match f.try_lock() {
                    Ok(()) => Ok(Some(Lease::File(f))),
                    Err(std::fs::TryLockError::WouldBlock) => Ok(None),
                    Err(std::fs::TryLockError::Error(e)) => Err(CollectError::Connect(format!(
                        "cannot lock the lease's lock file {}: {e}",
                        path.display()
                    ))),
                }
            }
        }
    }

    /// Whether the lease is still held: its connection answers (a file lock is held until the
    /// process lets it go).
    pub async fn held(&mut self) -> bool {
        match self {
            Lease::Postgres(c, _) => c.ping().await.is_ok(),
            Lease::Mysql(c) => c.ping().await.is_ok(),
            Lease::File(_) => true,
        }
    }

    /// Give the lease back (at shutdown, so a successor need not wait for the connection to
    /// time out).
    pub async fn release(self) {
        match self {
            Lease::Postgres(mut c, k) => {
                let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
                    .bind(k)
                    .execute(&mut c)
                    .await;
                let _ = c.close().await;
            }
            Lease::Mysql(c) => {
                let _ = c.close().await;
            }
            Lease::File(f) => {
                let _ = f.unlock();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_mysql_lock_name_fits_its_64_characters() {
        let cfg = crate::config::parse(
            "event_tables:\n  - name: e\n    kind: mysql\n    dsn: mysql://x/y\n    table: a_rather_long_schema_name.a_rather_long_table_name_for_events\n    state_file: s.json\n    lease: true\n",
            "t.yml",
            &|_| None,
        )
        .unwrap();
        let (_, name) = super::key(&cfg.inlets.event_tables[0]);
        assert!(name.len() <= 64, "{name}");
    }
}
