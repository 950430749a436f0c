//! Why a poll failed, typed by what failed: the store (connect, query, write refused), the
//! deadline, the result's shape (mapping, decode), a document's content, or an event table's
//! cursor. Messages name the source's problem and where it is (file, line, column, key), never
//! a DSN, a token or a value read from the store.

use super::reasons::SourceErrorReason;
use std::path::PathBuf;
use std::time::Duration;

/// Why a poll (of a source or an event table) failed.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error("cannot connect to the store: {0}")]
    Connect(String),
    #[error("the poll did not finish within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    #[error("the store refused a write; the configured query must only read: {0}")]
    WriteRefused(String),
    #[error("the query failed: {0}")]
    Query(String),
    /// The query names a column its table does not have (counted as `query`).
    #[error("the query failed: {0}")]
    MissingTableColumn(String),
    #[error("column {column:?} is not in the query result (it returned: {available})")]
    MissingColumn { column: String, available: String },
    #[error("column {column:?} has type {type_name}, which cannot be read; cast it to text, a number or a timestamp in the query")]
    Decode { column: String, type_name: String },
    #[error(transparent)]
    Document(#[from] DocumentError),
    #[error(transparent)]
    Cursor(#[from] CursorError),
    /// An inlet cannot be set up (an unreadable or mismatched file it needs).
    #[error("{0}")]
    Setup(String),
    /// The poll panicked; the message of the panic.
    #[error("the poll failed on an internal error (please report it): {0}")]
    Panicked(String),
}

impl CollectError {
    /// The closed reason it is counted under.
    pub fn reason(&self) -> SourceErrorReason {
        match self {
            CollectError::Connect(_) | CollectError::Setup(_) => SourceErrorReason::Connect,
            CollectError::Timeout(_) => SourceErrorReason::Timeout,
            CollectError::WriteRefused(_) => SourceErrorReason::WriteRefused,
            CollectError::Query(_) | CollectError::MissingTableColumn(_) => {
                SourceErrorReason::Query
            }
            CollectError::MissingColumn { .. } => SourceErrorReason::Mapping,
            CollectError::Panicked(_) => SourceErrorReason::Internal,
            CollectError::Decode { .. } | CollectError::Document(_) | CollectError::Cursor(_) => {
                SourceErrorReason::Decode
            }
        }
    }
}

/// A document (token file, HTTP answer) that cannot be read as token sets. `what` names it: the
/// file's path, or "the answer".
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    #[error("{0} is not UTF-8")]
    NotUtf8(PathBuf),
    #[error("{} is not valid YAML{}", path.display(), at.map(|(l, c)| format!(" at line {l}, column {c}")).unwrap_or_default())]
    NotYaml {
        path: PathBuf,
        at: Option<(usize, usize)>,
    },
    #[error("{what} is not valid JSON at line {line}, column {column}")]
    NotJson {
        what: String,
        line: usize,
        column: usize,
    },
    #[error("{} is being written; it is read again at the next poll", .0.display())]
    BeingWritten(PathBuf),
    #[error("{} changed while it was read; it is read again at the next poll", .0.display())]
    ChangedWhileRead(PathBuf),
    #[error("{} does not have the configured layout ({layout})", path.display())]
    WrongLayout { path: PathBuf, layout: &'static str },
    #[error("the answer is larger than {} MiB", .0 >> 20)]
    TooLarge(usize),
    #[error("the answer has no `{0}`")]
    NoItems(String),
    #[error("the token sets are neither a list nor an object of id to token set")]
    NotTokenSets,
}

/// An event table's cursor or state file is unusable.
#[derive(Debug, thiserror::Error)]
pub enum CursorError {
    #[error("cannot read the state file {}: {cause}", path.display())]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("cannot write the state file {}: {cause}", path.display())]
    Write {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("the state file {} is not a cursor; remove it to start again", .0.display())]
    NotACursor(PathBuf),
    #[error("the state file {} holds {holds} cursor but time_column is {}; remove it to start again", path.display(), if *time_column_set { "set" } else { "not set" })]
    KindChanged {
        path: PathBuf,
        holds: &'static str,
        time_column_set: bool,
    },
    #[error("{0} is not an integer id column (add time_column to order by a timestamp)")]
    NotAnIntegerId(String),
    #[error("row {row:?}: {time_column} and {id_column} must be a timestamp, number or string")]
    Unorderable {
        row: String,
        time_column: String,
        id_column: String,
    },
    #[error("the cursor's {column} {problem}")]
    Unportable {
        column: String,
        problem: &'static str,
    },
}
