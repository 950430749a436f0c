//! Redis: token sets stored as hashes or JSON strings under keys found by a pattern. Keys are
//! found with non-blocking `SCAN` (never `KEYS`), values read in pipelines; the source only
//! ever sends `SCAN`, `TYPE`, `HGETALL` and `GET`. `rediss://` URLs use TLS (rustls; the
//! system roots, or the CA bundle of `ca_file`) and the URL carries the password or ACL user.

use super::{DocumentRows, RowSink};
use crate::config::{Mapping, RedisStore, RedisValue};
use crate::model::{CollectError, RejectReason};
use crate::timestamp::Cell;
use ::redis::aio::MultiplexedConnection;
use std::collections::{HashMap, HashSet};
use tokio::sync::Mutex;

/// Keys asked per SCAN step and read per pipeline.
const BATCH: usize = 500;

#[derive(Debug)]
pub struct RedisSource {
    client: ::redis::Client,
    conn: Mutex<Option<MultiplexedConnection>>,
    pattern: String,
    value: RedisValue,
    max_keys: usize,
    /// PHP serialize() values were reported (once per source, not every poll).
    php_reported: std::sync::atomic::AtomicBool,
}

fn error(e: ::redis::RedisError) -> CollectError {
    if e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped() || e.is_timeout() {
        CollectError::Connect(e.to_string())
    } else {
        CollectError::Query(e.to_string())
    }
}

impl RedisSource {
    pub fn connect(cfg: &RedisStore) -> Result<Self, CollectError> {
        super::install_tls_provider();
        let url = cfg.url.expose();
        let unparsable = |_| CollectError::Connect("the Redis URL cannot be parsed".into());
        let client = match &cfg.ca_file {
            None => ::redis::Client::open(url).map_err(unparsable)?,
            Some(ca) => {
                if !url.starts_with("rediss://") {
                    return Err(CollectError::Connect(format!(
                        "ca_file {} is for TLS: the Redis URL must start with rediss://",
                        ca.display()
                    )));
                }
                let pem = super::read_ca_file(ca)?;
                ::redis::Client::build_with_tls(
                    url,
                    ::redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(pem),
                    },
                )
                .map_err(|e| {
                    // Only the kind: the error of a bad bundle never quotes the URL, but be sure.
                    CollectError::Connect(format!(
                        "ca_file {} cannot be used ({:?})",
                        ca.display(),
                        e.kind()
                    ))
                })?
            }
        };
        Ok(RedisSource {
            client,
            conn: Mutex::new(None),
            pattern: cfg.key_pattern.clone(),
            value: cfg.value,
            max_keys: cfg.max_keys,
            php_reported: Default::default(),
        })
    }

    async fn connection(&self) -> Result<MultiplexedConnection, CollectError> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let c = self
            .client
            .get_multiplexed_async_connection()
            .await
            .map_err(error)?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Returns whether the per-poll key limit was hit.
    pub async fn fetch(
        &self,
        mapping: &Mapping,
        sink: &mut dyn RowSink,
    ) -> Result<bool, CollectError> {
        let result = self.read(mapping, sink).await;
        if let Err(CollectError::Connect(_)) = &result {
            // Reconnect at the next poll.
            *self.conn.lock().await = None;
        }
        result
    }

    async fn read(&self, mapping: &Mapping, sink: &mut dyn RowSink) -> Result<bool, CollectError> {
        let mut conn = self.connection().await?;
        let mut keys: Vec<String> = Vec::new();
        let mut seen = HashSet::new();
        let mut cursor: u64 = 0;
        let mut limit_hit = false;
        loop {
            let (next, batch): (u64, Vec<String>) = ::redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&self.pattern)
                .arg("COUNT")
                .arg(BATCH)
                .query_async(&mut conn)
                .await
                .map_err(error)?;
            for k in batch {
                // SCAN may return a key more than once.
                if seen.insert(k.clone()) {
                    if keys.len() == self.max_keys {
                        limit_hit = true;
                        break;
                    }
                    keys.push(k);
                }
            }
            cursor = next;
            if cursor == 0 || limit_hit {
                break;
            }
        }
        let mut rows = DocumentRows::new(mapping, sink);
        let want = match self.value {
            RedisValue::Hash => "hash",
            RedisValue::Json => "string",
        };
        for chunk in keys.chunks(BATCH) {
            let mut types = ::redis::pipe();
            for k in chunk {
                types.cmd("TYPE").arg(k);
            }
            let types: Vec<String> = types.query_async(&mut conn).await.map_err(error)?;
            let readable: Vec<&String> = chunk
                .iter()
                .zip(&types)
                .filter_map(|(k, t)| match t.as_str() {
                    // Deleted between SCAN and TYPE: gone, not bad.
                    "none" => None,
                    t if t == want => Some(k),
                    _ => {
                        rows.reject(k, RejectReason::WrongType);
                        None
                    }
                })
                .collect();
            if readable.is_empty() {
                continue;
            }
            let mut reads = ::redis::pipe();
            match self.value {
                RedisValue::Hash => {
                    for k in &readable {
                        reads.cmd("HGETALL").arg(*k);
                    }
                    let values: Vec<HashMap<String, String>> =
                        reads.query_async(&mut conn).await.map_err(error)?;
                    for (k, h) in readable.iter().zip(values) {
                        if !h.is_empty() {
                            rows.push(k, |c| h.get(c).map(|v| Cell::Text(v.clone())));
                        }
                    }
                }
                RedisValue::Json => {
                    for k in &readable {
                        reads.cmd("GET").arg(*k);
                    }
                    let values: Vec<Option<String>> =
                        reads.query_async(&mut conn).await.map_err(error)?;
                    let mut php = 0;
                    for (k, v) in readable.iter().zip(values) {
                        let Some(v) = v else { continue };
                        match serde_json::from_str::<serde_json::Value>(&v) {
                            Ok(doc) => rows.push_json(k, &doc),
                            Err(_) => {
                                php += usize::from(php_serialized(&v));
                                rows.reject(k, RejectReason::InvalidJson)
                            }
                        }
                    }
                    if php > 0
                        && !self
                            .php_reported
                            .swap(true, std::sync::atomic::Ordering::Relaxed)
                    {
                        tracing::warn!(keys = php, "Values under the key pattern are PHP serialize() strings (Laravel's cache stores them so), which this exporter does not read; store the token set as JSON (json_encode) or point a SQL source at the app's table.");
                    }
                }
            }
        }
        Ok(limit_hit)
    }
}

/// Whether a value looks like PHP's `serialize()` output (`a:3:{...}`, `O:8:"stdClass":...`,
/// `s:5:"..."`), as Laravel's Redis cache writes values.
fn php_serialized(v: &str) -> bool {
    let b = v.as_bytes();
    b.len() > 3
        && matches!(b[0], b'a' | b'O' | b's' | b'i' | b'b' | b'd')
        && b[1] == b':'
        && b[2..].iter().take_while(|c| c.is_ascii_digit()).count() > 0
}

#[cfg(test)]
mod tests {
    use super::php_serialized;

    #[test]
    fn php_serialize_output_is_told_from_json_and_text() {
        // What Laravel's Redis cache store writes for an array token set and a string.
        assert!(php_serialized(
            r#"a:3:{s:12:"access_token";s:4:"AT-x";s:13:"refresh_token";s:4:"RT-x";s:7:"expires";i:1780000000;}"#
        ));
        assert!(php_serialized(r#"s:4:"RT-x";"#));
        assert!(php_serialized(r#"O:8:"stdClass":1:{s:1:"a";i:1;}"#));
        assert!(!php_serialized(r#"{"access_token":"AT-x"}"#));
        assert!(!php_serialized("as:df"));
        assert!(!php_serialized("a:"));
    }
}
