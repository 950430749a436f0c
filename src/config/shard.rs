//! More than one instance: shards (`--shard.index`, `--shard.total`).
//!
//! A connection belongs to shard `h(id) mod total`, where `h` is the first 32 bits (big-endian)
//! of the SHA-256 of the connection id's UTF-8 bytes: stable across restarts, versions and
//! machines, and computable inside PostgreSQL (`sha256`) and MySQL/MariaDB (`SHA2`), so an SQL
//! source's query only returns the shard's rows ([`Shard::sql_predicate`]). Other stores are
//! filtered after the read ([`Shard::owns`]). A row without an id (rejected) belongs to shard 0,
//! so it is counted once in the fleet. Replicas of one shard export the same state, which the
//! shipped rules take once per shard (`oauth_exporter_shard_info`).

use super::SqlKind;
use sha2::{Digest, Sha256};

/// This instance's part of the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub total: u32,
}

impl Default for Shard {
    fn default() -> Self {
        Shard { index: 0, total: 1 }
    }
}

impl Shard {
    /// From the flags: `index` is a number or a name ending in `-<number>` (a StatefulSet pod's
    /// name, `oauth-token-exporter-2`), so `--shard.index=$(POD_NAME)` works as is.
    pub fn new(index: Option<&str>, total: u32) -> Result<Shard, String> {
        if total == 0 {
            return Err("--shard.total must be at least 1".into());
        }
        let index = match index {
            None if total == 1 => 0,
            None => {
                return Err(format!(
                    "--shard.total is {total}: --shard.index is required (a number from 0 to {}, or a pod name ending in -<number>)",
                    total - 1
                ))
            }
            Some(s) => {
                let digits = s.rsplit('-').next().unwrap_or(s);
                digits.parse::<u32>().map_err(|_| {
                    format!("--shard.index {s:?} is neither a number nor a name ending in -<number>")
                })?
            }
        };
        if index >= total {
            return Err(format!(
                "--shard.index {index} is out of range: --shard.total {total} has shards 0 to {}",
                total - 1
            ));
        }
        Ok(Shard { index, total })
    }

    pub fn is_sharded(&self) -> bool {
        self.total > 1
    }

    /// The shard a connection id belongs to.
    pub fn of(id: &str, total: u32) -> u32 {
        let d = Sha256::digest(id.as_bytes());
        u32::from_be_bytes([d[0], d[1], d[2], d[3]]) % total.max(1)
    }

    /// Whether this instance exports the connection.
    pub fn owns(&self, id: &str) -> bool {
        !self.is_sharded() || Shard::of(id, self.total) == self.index
    }

    /// Whether this instance counts a row read after the fact: by its connection id, and a row
    /// without one (rejected) only on shard 0, so it is counted once in the fleet.
    pub fn owns_row(&self, id: Option<&str>) -> bool {
        match id {
            Some(id) => self.owns(id),
            None => self.index == 0,
        }
    }

    /// An SQL condition true for the rows of this shard, over the expression `column` (the
    /// same hash as [`Shard::of`], evaluated by the database); `None` where the store cannot
    /// compute it (SQLite has no SHA-256: its rows are filtered after the read).
    pub fn sql_predicate(&self, kind: SqlKind, column: &str) -> Option<String> {
        let (n, i) = (self.total, self.index);
        let hash = match kind {
            SqlKind::Postgres => format!(
                "(('x' || substr(encode(sha256(convert_to(CAST({column} AS text), 'UTF8')), 'hex'), 1, 8))::bit(32)::bigint % {n})"
            ),
            SqlKind::Mysql => format!(
                "(CAST(CONV(SUBSTRING(SHA2(CAST({column} AS CHAR), 256), 1, 8), 16, 10) AS UNSIGNED) % {n})"
            ),
            SqlKind::Sqlite => return None,
        };
        Some(format!(
            "(CASE WHEN {column} IS NULL THEN 0 ELSE {hash} END) = {i}"
        ))
    }

    /// `query` narrowed to this shard's rows by the column `column` of its result, where the
    /// store can evaluate the hash; otherwise `query` as it is.
    pub fn sql_query(&self, kind: SqlKind, query: &str, column: &str) -> String {
        let quoted = match kind {
            SqlKind::Mysql => format!("ote_shard.`{}`", column.replace('`', "``")),
            _ => format!("ote_shard.\"{}\"", column.replace('"', "\"\"")),
        };
        match self.sql_predicate(kind, &quoted) {
            Some(p) if self.is_sharded() => {
                let inner = query.trim().trim_end_matches(';');
                format!("SELECT * FROM ({inner}) AS ote_shard WHERE {p}")
            }
            _ => query.to_string(),
        }
    }
}

/// The host name (`HOSTNAME`, else the kernel's), the default `--instance.name`.
pub fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_is_a_number_or_a_pod_name_ending_in_one() {
        assert_eq!(Shard::new(Some("2"), 3).unwrap().index, 2);
        assert_eq!(
            Shard::new(Some("oauth-token-exporter-1"), 3).unwrap().index,
            1
        );
        assert_eq!(Shard::new(None, 1).unwrap(), Shard::default());
        let e = Shard::new(Some("exporter-3"), 3).unwrap_err();
        assert!(e.contains("out of range") && e.contains("0 to 2"), "{e}");
        let e = Shard::new(Some("exporter"), 3).unwrap_err();
        assert!(e.contains("\"exporter\""), "{e}");
        assert!(Shard::new(None, 2).unwrap_err().contains("required"));
        assert!(Shard::new(Some("0"), 0).is_err());
    }

    #[test]
    fn every_id_has_exactly_one_shard_and_the_shards_are_even() {
        let total = 3;
        let mut counts = [0u32; 3];
        for i in 0..30_000 {
            let id = format!("tenant-{i}");
            let owners: Vec<u32> = (0..total)
                .filter(|&s| Shard { index: s, total }.owns(&id))
                .collect();
            assert_eq!(owners.len(), 1, "{id}");
            counts[owners[0] as usize] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "{counts:?}");
        }
        // Fixed by the hash's definition (first 32 bits of SHA-256, big-endian): a change here
        // moves connections between shards of a running fleet.
        assert_eq!(Shard::of("abc", 1 << 31), 0xba7816bf % (1 << 31));
    }

    #[test]
    fn an_unsharded_query_is_left_as_it_is() {
        let q = "SELECT id FROM t;";
        assert_eq!(Shard::default().sql_query(SqlKind::Postgres, q, "id"), q);
        let s = Shard { index: 1, total: 2 };
        assert_eq!(s.sql_query(SqlKind::Sqlite, q, "id"), q);
        let pg = s.sql_query(SqlKind::Postgres, q, "id");
        assert!(
            pg.starts_with("SELECT * FROM (SELECT id FROM t) AS ote_shard WHERE"),
            "{pg}"
        );
    }
}
