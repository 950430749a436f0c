//! Token files: a JSON or YAML file holding one token set or many (the xero-node and
//! xero-python token set shape included). The file is parsed again only when its size or
//! modification time changed; a torn read (the file changed while it was read, or is still
//! being written) fails the poll, so the last good values stay exported and the next poll
//! reads it again. Writers should still replace the file atomically (write, then rename).

use super::{DocumentRows, RowSink};
use crate::config::{FileLayout, FileStore, Mapping};
use crate::model::{CollectError, DocumentError};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// A file modified more recently than this may still be being written: read it twice.
const SETTLE: Duration = Duration::from_millis(500);

/// Keys that mark an object as one token set (layout `auto`).
const TOKEN_SET_KEYS: &[&str] = &[
    "access_token",
    "refresh_token",
    "expires_at",
    "expires_in",
    "token_type",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
}

#[derive(Debug)]
pub struct FileSource {
    path: PathBuf,
    layout: FileLayout,
    last: Mutex<Option<(Stamp, serde_json::Value)>>,
}

async fn stamp(path: &Path) -> Result<Stamp, CollectError> {
    let m = tokio::fs::metadata(path)
        .await
        .map_err(|e| CollectError::Connect(format!("cannot read {}: {e}", path.display())))?;
    Ok(Stamp {
        len: m.len(),
        modified: m.modified().ok(),
    })
}

/// Parse without echoing any of the content (it holds tokens): only the position.
fn parse(path: &Path, bytes: &[u8]) -> Result<serde_json::Value, CollectError> {
    let yaml = matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yml" | "yaml")
    );
    if yaml {
        let text =
            std::str::from_utf8(bytes).map_err(|_| DocumentError::NotUtf8(path.to_path_buf()))?;
        let options = serde_saphyr::options! { strict_booleans: true };
        serde_saphyr::from_str_with_options::<serde_json::Value>(text, options).map_err(|e| {
            DocumentError::NotYaml {
                path: path.to_path_buf(),
                at: e
                    .location()
                    .map(|l| (l.line() as usize, l.column() as usize)),
            }
            .into()
        })
    } else {
        serde_json::from_slice(bytes).map_err(|e| {
            DocumentError::NotJson {
                what: path.display().to_string(),
                line: e.line(),
                column: e.column(),
            }
            .into()
        })
    }
}

impl FileSource {
    pub fn new(cfg: &FileStore) -> Self {
        FileSource {
            path: cfg.path.clone(),
            layout: cfg.layout,
            last: Mutex::new(None),
        }
    }

    /// The document, and when the file was last modified.
    async fn read(&self) -> Result<(serde_json::Value, Option<SystemTime>), CollectError> {
        let before = stamp(&self.path).await?;
        if let Some((s, doc)) = self.last.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            if *s == before {
                return Ok((doc.clone(), before.modified));
            }
        }
        let read = || async {
            tokio::fs::read(&self.path).await.map_err(|e| {
                CollectError::Connect(format!("cannot read {}: {e}", self.path.display()))
            })
        };
        let bytes = read().await?;
        let fresh = before
            .modified
            .and_then(|m| SystemTime::now().duration_since(m).ok())
            .is_none_or(|age| age < SETTLE);
        if fresh {
            tokio::time::sleep(SETTLE).await;
            if read().await? != bytes {
                return Err(DocumentError::BeingWritten(self.path.clone()).into());
            }
        }
        if stamp(&self.path).await? != before {
            return Err(DocumentError::ChangedWhileRead(self.path.clone()).into());
        }
        let doc = parse(&self.path, &bytes)?;
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some((before, doc.clone()));
        Ok((doc, before.modified))
    }

    pub async fn fetch(
        &self,
        mapping: &Mapping,
        sink: &mut dyn RowSink,
    ) -> Result<(), CollectError> {
        let (doc, modified) = self.read().await?;
        let mut rows = DocumentRows::new(mapping, sink);
        rows.modified = modified.map(chrono::DateTime::<chrono::Utc>::from);
        let stem = self
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let layout = match (self.layout, &doc) {
            (FileLayout::Auto, serde_json::Value::Array(_)) => FileLayout::List,
            (FileLayout::Auto, serde_json::Value::Object(m)) => {
                let single = TOKEN_SET_KEYS.iter().any(|k| m.contains_key(*k))
                    || m.contains_key(&mapping.connection.column);
                if single {
                    FileLayout::Single
                } else {
                    FileLayout::Map
                }
            }
            (l, _) => l,
        };
        match (layout, &doc) {
            (FileLayout::List, serde_json::Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    rows.push_json(&i.to_string(), item);
                }
            }
            (FileLayout::Map, serde_json::Value::Object(m)) => {
                for (k, item) in m {
                    rows.push_json(k, item);
                }
            }
            (FileLayout::Single | FileLayout::Auto, d) => rows.push_json(&stem, d),
            _ => {
                return Err(DocumentError::WrongLayout {
                    path: self.path.clone(),
                    layout: self.layout.as_str(),
                }
                .into())
            }
        }
        Ok(())
    }
}
