//! The metric catalogue: every name, HELP text and label set, in one place.
//!
//! Event counters are one list, [`EventCounter`]: an entry there is registered, created at 0 for
//! every inlet and label value, and saved and restored across restarts (event tables with their
//! cursor, push inlets with `persistence`) without any other change.

use crate::model::{RateLimitProblem, UnauthorizedReason};
use crate::provider::RefreshError;
use prometheus_client::encoding::{EncodeLabel, EncodeLabelSet, LabelSetEncoder};

/// Content type of the OpenMetrics exposition (what Prometheus asks for).
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of the classic text format (for clients that do not ask for OpenMetrics,
/// and for `promtool check metrics`).
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Turn the OpenMetrics text of this crate's encoder into the classic 0.0.4 text format: a
/// counter's HELP and TYPE carry the `_total` name, and `# UNIT` and `# EOF` are dropped.
/// Sample lines are the same in both formats for the metric types used here.
pub fn openmetrics_to_text(om: &str) -> String {
    let mut out = String::with_capacity(om.len());
    let mut pending_help: Option<&str> = None;
    for line in om.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            pending_help = Some(rest);
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let name = if kind == "counter" {
                format!("{name}_total")
            } else {
                name.to_string()
            };
            if let Some(help) = pending_help.take() {
                let text = help.split_once(' ').map(|(_, t)| t).unwrap_or("");
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// A metric's name (without `_total` for counters) and HELP text.
pub type Desc = (&'static str, &'static str);

/// Names and HELP texts of every family but the event counters (those are [`EventCounter`]).
pub mod names {
    use super::Desc;
    pub const LAST_REFRESH: Desc = ("oauth_refresh_token_last_refresh_timestamp_seconds", "When the current refresh token was issued (last successful refresh or authorisation), as of the last poll");
    pub const AGE: Desc = (
        "oauth_refresh_token_age_seconds",
        "Time since the last successful refresh, as of the last poll",
    );
    pub const REFRESH_EXPIRY: Desc = ("oauth_refresh_token_expiry_timestamp_seconds", "When the refresh token expires: last refresh plus the provider's inactivity window, or a stored expiry if earlier");
    pub const EXPIRED: Desc = (
        "oauth_refresh_token_expired",
        "1 when the refresh token is past its expiry as of the last poll",
    );
    pub const ACCESS_EXPIRY: Desc = (
        "oauth_access_token_expiry_timestamp_seconds",
        "When the current access token expires, as of the last poll",
    );
    pub const STATUS: Desc = (
        "oauth_connection_status",
        "Connection status as a state set: 1 for the current status",
    );
    pub const INFO: Desc = (
        "oauth_connection_info",
        "Extra labels of a connection, for joins",
    );
    pub const CONNECTIONS: Desc = (
        "oauth_connections",
        "Connections per status, as of the last poll",
    );
    pub const EXPIRING: Desc = ("oauth_connections_expiring", "Connections whose refresh token expires within the window (cumulative), as of the last poll");
    pub const FAILING: Desc = (
        "oauth_connections_failing",
        "Distinct connections with a failure in the last detect window",
    );
    pub const CLIENT_SECRET_EXPIRY: Desc = ("oauth_client_secret_expiry_timestamp_seconds", "When the app's client secret expires (client_secrets in the config; from a file, read at every scrape)");
    pub const DIAGNOSIS: Desc = ("oauth_connection_diagnosis", "1 for each likely cause of an exported connection's failure or risk (two when the data cannot separate them); healthy connections have no series");
    pub const BY_DIAGNOSIS: Desc = (
        "oauth_connections_by_diagnosis",
        "Exported connections by the most likely cause of their failure or risk (healthy included)",
    );
    pub const RETRYING: Desc = ("oauth_connections_retrying_invalid_grant", "Connections with at least detect.retry_loop_failures invalid_grant failures in the last detect window (retrying in a loop)");
    pub const REFRESH_WINDOW: Desc = ("oauth_provider_refresh_token_lifetime_seconds", "The provider's refresh-token inactivity window as configured for the source (Xero 60 days, QuickBooks 100 days, ...)");
    pub const ACCESS_LIFETIME: Desc = (
        "oauth_provider_access_token_lifetime_seconds",
        "The provider's access-token lifetime as configured for the source",
    );
    pub const MAX_LIFETIME: Desc = ("oauth_provider_refresh_token_max_lifetime_seconds", "The provider's hard maximum refresh-token lifetime from authorisation, where it has one (QuickBooks 5 years)");
    pub const TRUNCATED: Desc = ("oauth_exporter_connections_truncated", "Connections left out of the per-connection series by the source's cap (aggregates count them)");
    pub const REMOVED: Desc = (
        "oauth_connections_removed",
        "Connections that disappeared from the store (some apps delete the row on invalid_grant)",
    );
    pub const UP: Desc = (
        "oauth_exporter_source_up",
        "1 when the last poll of the source succeeded",
    );
    pub const LAST_SUCCESS: Desc = (
        "oauth_exporter_source_last_success_timestamp_seconds",
        "When the source was last polled successfully (0: never)",
    );
    pub const DURATION: Desc = (
        "oauth_exporter_source_duration_seconds",
        "How long the last poll of the source took",
    );
    pub const ERRORS: Desc = (
        "oauth_exporter_source_errors",
        "Failed polls of the source, by reason",
    );
    pub const STATE_WRITE_ERRORS: Desc = (
        "oauth_exporter_state_write_errors",
        "Failed writes of the persistence file of the push inlets' counters",
    );
    pub const REJECTED: Desc = (
        "oauth_exporter_rows_rejected",
        "Rows the source returned that could not be exported, by reason",
    );
    pub const RATE_LIMIT_REMAINING: Desc = ("oauth_api_rate_limit_remaining", "Last X-DayLimit-Remaining (window day), X-MinLimit-Remaining (minute) or X-AppMinLimit-Remaining (app_minute) seen per tenant, through the proxy");
    pub const SCRAPE_DURATION: Desc = ("oauth_exporter_scrape_duration_seconds", "How long serving /metrics took, encoding and compression included (a plain scrape streams: until its last chunk was handed to the connection)");
    pub const CONFIG_RELOAD_OK: Desc = (
        "oauth_exporter_config_last_reload_successful",
        "1 when the last configuration reload succeeded",
    );
    pub const CONFIG_RELOAD_TIME: Desc = (
        "oauth_exporter_config_last_reload_success_timestamp_seconds",
        "When the configuration was last loaded successfully",
    );
    pub const EVENT_TABLE_LEADER: Desc = ("oauth_exporter_event_table_leader", "1 when this instance reads the event table (it holds the table's lease, or the table has none), 0 when another replica does");
    pub const SHARD_INFO: Desc = (
        "oauth_exporter_shard_info",
        "This instance's shard (--shard.index; 0 when not sharded); value 1",
    );
    pub const SHARD_COUNT: Desc = (
        "oauth_exporter_shards",
        "The number of shards the fleet is split into (--shard.total)",
    );
    pub const BUILD_INFO: Desc = (
        "oauth_exporter_build_info",
        "Build information of the exporter; value 1",
    );
}

/// Declares the event counter families: one entry each,
/// `Variant => key, name, help[, label => values]`. `key` names it in persisted state files
/// (never change it); `label` is its extra closed label and `values` every value it takes.
macro_rules! event_counters {
    ($($variant:ident => $key:literal, $name:literal, $help:literal $(, $label:literal => $values:expr)?;)*) => {
        /// An event counter family (labels `provider`, `source` and at most one closed label).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum EventCounter { $($variant),* }

        impl EventCounter {
            /// Every family, in registration order.
            pub const ALL: &'static [EventCounter] = &[$(EventCounter::$variant),*];

            /// Its key in persisted state files.
            pub fn key(self) -> &'static str {
                match self { $(EventCounter::$variant => $key),* }
            }

            /// Its name (without `_total`) and HELP text.
            pub fn desc(self) -> Desc {
                match self { $(EventCounter::$variant => ($name, $help)),* }
            }

            /// Its extra label, if it has one.
            pub fn label(self) -> Option<&'static str> {
                match self { $(EventCounter::$variant => opt_label!($($label)?)),* }
            }

            /// Every value of its extra label (empty without one).
            pub fn values(self) -> Vec<&'static str> {
                match self { $(EventCounter::$variant => opt_values!($($values)?)),* }
            }
        }
    };
}

macro_rules! opt_label {
    () => {
        None
    };
    ($l:literal) => {
        Some($l)
    };
}

macro_rules! opt_values {
    () => {
        Vec::new()
    };
    ($v:expr) => {
        $v
    };
}

event_counters! {
    Refreshes => "refreshes", "oauth_token_refreshes", "Refresh attempts seen";
    RefreshFailures => "refresh_failures", "oauth_token_refresh_failures",
        "Failed refreshes, by the OAuth error of the token endpoint",
        "error" => RefreshError::ALL.iter().map(|e| e.as_str()).collect();
    ApiRequests => "api_requests", "oauth_api_requests", "API calls seen";
    Unauthorized => "unauthorized", "oauth_api_unauthorized",
        "API calls answered 401, by Xero's reason",
        "reason" => UnauthorizedReason::ALL.iter().map(|r| r.as_str()).collect();
    Forbidden => "forbidden", "oauth_api_forbidden",
        "API calls answered 403 (wrong or disconnected tenant)";
    RateLimited => "rate_limited", "oauth_api_rate_limited",
        "API calls answered 429, by the limit hit",
        "problem" => RateLimitProblem::ALL.iter().map(|p| p.as_str()).collect();
    Regressions => "regressions", "oauth_refresh_token_regressions",
        "Stored refresh token reverted to an earlier value";
    Races => "races", "oauth_token_refresh_races",
        "Two refreshes of one connection inside the grace period";
}

/// Labels of an event counter: `provider`, `source`, and the family's closed label if it has one.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct EventLabels {
    pub provider: &'static str,
    pub source: String,
    pub extra: Option<(&'static str, &'static str)>,
}

impl EncodeLabelSet for EventLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        ("provider", self.provider).encode(encoder.encode_label())?;
        ("source", self.source.as_str()).encode(encoder.encode_label())?;
        if let Some(extra) = self.extra {
            extra.encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct SourceLabels {
    pub source: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct SourceReasonLabels {
    pub source: String,
    pub reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct ProviderSourceLabels {
    pub provider: &'static str,
    pub source: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct BuildLabels {
    pub version: &'static str,
    pub revision: &'static str,
    pub rustversion: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct RateLimitLabels {
    pub provider: &'static str,
    pub source: String,
    pub tenant: String,
    pub window: &'static str,
}

/// Most tenants with `oauth_api_rate_limit_remaining` series (the tenant comes from a request
/// header: bounded so that no client can grow the exposition without end).
pub const MAX_RATE_LIMIT_TENANTS: usize = 10_000;
