//! Closed enums of the self-health series: why a row was rejected, why a poll failed, and the
//! kinds of store a source reads. Label values come from `as_str()`, never from `Debug` or an
//! error message.

use serde::Deserialize;

/// Why a row was rejected (`oauth_exporter_rows_rejected_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    MissingConnection,
    DuplicateConnection,
    NullTimestamp,
    UnparseableTimestamp,
    ImpossibleTimestamp,
    InvalidJson,
    WrongType,
    /// A text value that is not valid UTF-8 (the row alone is rejected).
    InvalidUtf8,
    /// An event-table row that is not a valid event.
    InvalidEvent,
}

impl RejectReason {
    pub const ALL: [RejectReason; 9] = [
        RejectReason::MissingConnection,
        RejectReason::DuplicateConnection,
        RejectReason::NullTimestamp,
        RejectReason::UnparseableTimestamp,
        RejectReason::ImpossibleTimestamp,
        RejectReason::InvalidJson,
        RejectReason::WrongType,
        RejectReason::InvalidUtf8,
        RejectReason::InvalidEvent,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::MissingConnection => "missing_connection",
            RejectReason::DuplicateConnection => "duplicate_connection",
            RejectReason::NullTimestamp => "null_timestamp",
            RejectReason::UnparseableTimestamp => "unparseable_timestamp",
            RejectReason::ImpossibleTimestamp => "impossible_timestamp",
            RejectReason::InvalidJson => "invalid_json",
            RejectReason::WrongType => "wrong_type",
            RejectReason::InvalidUtf8 => "invalid_utf8",
            RejectReason::InvalidEvent => "invalid_event",
        }
    }
}

/// Why a poll failed (`oauth_exporter_source_errors_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceErrorReason {
    /// The store could not be reached or refused the login.
    Connect,
    /// The poll did not finish within the source's timeout.
    Timeout,
    /// The store answered the query with an error.
    Query,
    /// The query tried to write and the read-only session refused it.
    WriteRefused,
    /// A configured field names a column the query does not return.
    Mapping,
    /// A column has a type the exporter cannot read, or a document cannot be parsed.
    Decode,
    /// The source reached its per-poll key limit (the poll still succeeds with what it read).
    KeyLimit,
    /// An event table's ids went back below its cursor (truncated with its sequence restarted,
    /// or restored from a backup): the cursor is moved back to read them (the poll succeeds).
    CursorReset,
    /// The poll panicked (a bug in the exporter or a driver): logged with its message; the
    /// last values stay and the next poll runs as usual.
    Internal,
}

impl SourceErrorReason {
    pub const ALL: [SourceErrorReason; 9] = [
        SourceErrorReason::Connect,
        SourceErrorReason::Timeout,
        SourceErrorReason::Query,
        SourceErrorReason::WriteRefused,
        SourceErrorReason::Mapping,
        SourceErrorReason::Decode,
        SourceErrorReason::KeyLimit,
        SourceErrorReason::CursorReset,
        SourceErrorReason::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SourceErrorReason::Connect => "connect",
            SourceErrorReason::Timeout => "timeout",
            SourceErrorReason::Query => "query",
            SourceErrorReason::WriteRefused => "write_refused",
            SourceErrorReason::Mapping => "mapping",
            SourceErrorReason::Decode => "decode",
            SourceErrorReason::KeyLimit => "key_limit",
            SourceErrorReason::CursorReset => "cursor_reset",
            SourceErrorReason::Internal => "internal",
        }
    }
}

/// The kinds of store a source can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    Sqlite,
    Postgres,
    Mysql,
    Redis,
    File,
    Http,
}

impl StoreKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreKind::Sqlite => "sqlite",
            StoreKind::Postgres => "postgres",
            StoreKind::Mysql => "mysql",
            StoreKind::Redis => "redis",
            StoreKind::File => "file",
            StoreKind::Http => "http",
        }
    }

    /// SQL stores take a `query` or a `preset`; the others hold documents (hashes, JSON, YAML)
    /// whose keys are the columns.
    pub fn is_sql(self) -> bool {
        matches!(
            self,
            StoreKind::Sqlite | StoreKind::Postgres | StoreKind::Mysql
        )
    }
}
