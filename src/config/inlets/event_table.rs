//! The `event_tables` section.

use super::{check_source_name, InletInfo};
use crate::config::common::{
    valid_column, valid_table, HumanDuration, Problems, Schedule, SecretRef,
};
use crate::config::defaults;
use crate::config::sources::{schedule, Global, SqlConnection, SqlKind};
use crate::model::StoreKind;
use crate::provider::ProviderKind;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Where a new event table starts the first time (no state file yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventStart {
    /// Count only events written from now on.
    #[default]
    End,
    /// Count every event already in the table.
    Beginning,
}

/// A field of an event row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventField {
    Type,
    Connection,
    Tenant,
    Time,
    Outcome,
    Error,
    Status,
    Detail,
    RateLimitProblem,
}

impl EventField {
    pub const ALL: [EventField; 9] = [
        EventField::Type,
        EventField::Connection,
        EventField::Tenant,
        EventField::Time,
        EventField::Outcome,
        EventField::Error,
        EventField::Status,
        EventField::Detail,
        EventField::RateLimitProblem,
    ];

    /// Its name, and the column it is read from unless `columns` says otherwise.
    pub fn as_str(self) -> &'static str {
        match self {
            EventField::Type => "type",
            EventField::Connection => "connection",
            EventField::Tenant => "tenant",
            EventField::Time => "time",
            EventField::Outcome => "outcome",
            EventField::Error => "error",
            EventField::Status => "status",
            EventField::Detail => "detail",
            EventField::RateLimitProblem => "rate_limit_problem",
        }
    }
}

/// An event table: rows the host app writes for each refresh and API call, tailed by an
/// increasing id (or a timestamp and an id) kept in a state file.
#[derive(Debug, Clone, PartialEq)]
pub struct EventTable {
    /// The `source` label of its events (also its self-health series).
    pub name: String,
    pub connection: SqlConnection,
    /// Provider of its events.
    pub provider: ProviderKind,
    pub table: String,
    /// Increasing integer column: the cursor (with `time_column`: the tie-break among rows of
    /// one timestamp, any comparable type).
    pub id_column: String,
    /// A timestamp column that orders the rows, for tables without an increasing id: the
    /// cursor is then (time, id).
    pub time_column: Option<String>,
    /// Event field to column, for the fields read.
    pub columns: Vec<(EventField, String)>,
    pub state_file: PathBuf,
    pub start: EventStart,
    /// Most rows read per query.
    pub batch: usize,
    pub schedule: Schedule,
    /// One reader among the replicas: the holder of a lease in the store (see
    /// `events::lease`); the state file must then be shared by the replicas.
    pub lease: bool,
    /// This instance's name in the shared state file (`--instance.name`).
    pub instance: String,
    /// This instance's shard: only the shard's connections are read.
    pub shard: crate::config::Shard,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEventTable {
    /// The `source` label.
    name: String,
    /// `sqlite`, `postgres` or `mysql`.
    kind: StoreKind,
    dsn: Option<String>,
    dsn_env: Option<String>,
    dsn_file: Option<PathBuf>,
    /// Default provider of its events.
    provider: Option<ProviderKind>,
    /// The table (or `schema.table`).
    table: String,
    /// Increasing integer id column (default `id`); with `time_column`, the tie-break.
    id_column: Option<String>,
    /// A timestamp column ordering the rows (cursor: time, then id).
    time_column: Option<String>,
    /// Event field to column, for columns not named like the fields.
    #[serde(default)]
    columns: BTreeMap<String, String>,
    /// Where the cursor is kept between restarts.
    state_file: PathBuf,
    /// `end` (default) or `beginning`, for the first start.
    start: Option<EventStart>,
    /// Rows per query (default 1000).
    batch: Option<usize>,
    interval: Option<HumanDuration>,
    timeout: Option<HumanDuration>,
    /// One reader at a time among replicas (a lock in the store); default false.
    #[serde(default)]
    lease: bool,
}

impl EventTable {
    pub(super) fn info(&self, i: usize) -> InletInfo {
        InletInfo {
            key: format!("event_tables[{i}].name"),
            source: self.name.clone(),
            provider: self.provider,
            persisted: false,
            line: if self.lease {
                format!(
                    "Event table: {} (one reader among replicas: lease)",
                    self.name
                )
            } else {
                format!("Event table: {}", self.name)
            },
        }
    }

    pub(super) fn validate(
        at: &str,
        raw: RawEventTable,
        global: &Global,
        env: &dyn Fn(&str) -> Option<String>,
        problems: &mut Problems,
    ) -> Option<EventTable> {
        let mark = problems.mark();
        let kind = match raw.kind {
            StoreKind::Sqlite => Some(SqlKind::Sqlite),
            StoreKind::Postgres => Some(SqlKind::Postgres),
            StoreKind::Mysql => Some(SqlKind::Mysql),
            StoreKind::Redis | StoreKind::File | StoreKind::Http => {
                problems.add(
                    format!("{at}.kind"),
                    "event tables are read from sqlite, postgres or mysql",
                );
                None
            }
        };
        check_source_name(&format!("{at}.name"), &raw.name, problems);
        if !valid_table(&raw.table) {
            problems.add(
                format!("{at}.table"),
                format!("{:?} is not a valid table name", raw.table),
            );
        }
        let id_column = raw
            .id_column
            .unwrap_or_else(|| defaults::EVENT_TABLE_ID_COLUMN.into());
        if !valid_column(&id_column) {
            problems.add(
                format!("{at}.id_column"),
                format!("{id_column:?} is not a valid column name"),
            );
        }
        if let Some(t) = &raw.time_column {
            if !valid_column(t) {
                problems.add(
                    format!("{at}.time_column"),
                    format!("{t:?} is not a valid column name"),
                );
            }
            if *t == id_column {
                problems.add(
                    format!("{at}.time_column"),
                    "must differ from id_column (the id breaks ties among rows of one timestamp)",
                );
            }
        }
        let names: Vec<&str> = EventField::ALL.iter().map(|f| f.as_str()).collect();
        for (k, v) in &raw.columns {
            if !names.contains(&k.as_str()) {
                problems.add(
                    format!("{at}.columns.{k}"),
                    format!("unknown event field, expected one of {}", names.join(", ")),
                );
            }
            if !valid_column(v) {
                problems.add(
                    format!("{at}.columns.{k}"),
                    format!("{v:?} is not a valid column name"),
                );
            }
        }
        // No `columns`: every field from the column of its name. With `columns`: the listed
        // fields, plus `type` and `connection` (from columns of those names unless listed).
        let columns: Vec<(EventField, String)> = EventField::ALL
            .into_iter()
            .filter(|f| {
                raw.columns.is_empty()
                    || raw.columns.contains_key(f.as_str())
                    || matches!(f, EventField::Type | EventField::Connection)
            })
            .map(|f| {
                let column = raw
                    .columns
                    .get(f.as_str())
                    .cloned()
                    .unwrap_or_else(|| f.as_str().to_string());
                (f, column)
            })
            .collect();
        let dsn = SecretRef::new(
            raw.dsn.as_deref(),
            raw.dsn_env.as_deref(),
            raw.dsn_file.as_ref(),
        )
        .read(at, "dsn", env, problems);
        let batch = raw.batch.unwrap_or(defaults::EVENT_TABLE_BATCH);
        if batch == 0 {
            problems.add(format!("{at}.batch"), "must be at least 1");
        }
        let schedule = schedule(at, raw.interval, raw.timeout, None, global, problems);
        if problems.since(mark) {
            return None;
        }
        Some(EventTable {
            name: raw.name,
            connection: SqlConnection {
                kind: kind?,
                dsn: dsn?,
                timeout: schedule.timeout,
            },
            provider: raw.provider.unwrap_or(ProviderKind::Xero),
            table: raw.table,
            id_column,
            time_column: raw.time_column,
            columns,
            state_file: raw.state_file,
            start: raw.start.unwrap_or_default(),
            batch,
            schedule,
            lease: raw.lease,
            instance: String::new(),
            shard: crate::config::Shard::default(),
        })
    }
}
