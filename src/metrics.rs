//! The metric catalogue: every name, HELP text, label set and closed label-value enum.
//!
//! Two registries make one exposition (see [`crate::exposition`]):
//! - *state*: per-connection gauges and per-source aggregates, encoded from the snapshots by
//!   [`StateCollector`], once per poll;
//! - *live*: self-health and counters ([`Live`]), encoded on every scrape.

use crate::sources::SourceHandle;
use crate::state::{Status, EXPIRING_WINDOWS};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// Content type of the OpenMetrics exposition (what Prometheus asks for).
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of the classic text format (for clients that do not ask for OpenMetrics,
/// and for `promtool check metrics`).
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Longest label value exported from the store (connection and tenant ids, extra labels), in
/// bytes.
pub const MAX_LABEL_VALUE_BYTES: usize = 256;

/// A label value taken from the store or a request, as exported. Quotes, backslashes and line
/// feeds stay as they are (the encoder escapes them); a value longer than
/// [`MAX_LABEL_VALUE_BYTES`] is cut at a character boundary and ends with `~` and 8 hex digits
/// of the SHA-256 of the whole value, so two long ids stay two series.
pub fn label_value(s: &str) -> std::borrow::Cow<'_, str> {
    if s.len() <= MAX_LABEL_VALUE_BYTES {
        return std::borrow::Cow::Borrowed(s);
    }
    use sha2::Digest;
    let digest = hex::encode(&sha2::Sha256::digest(s.as_bytes())[..4]);
    let mut end = MAX_LABEL_VALUE_BYTES - 1 - digest.len();
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}~{digest}", &s[..end]))
}

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
    /// An event-table row that is not a valid event.
    InvalidEvent,
}

impl RejectReason {
    pub const ALL: [RejectReason; 8] = [
        RejectReason::MissingConnection,
        RejectReason::DuplicateConnection,
        RejectReason::NullTimestamp,
        RejectReason::UnparseableTimestamp,
        RejectReason::ImpossibleTimestamp,
        RejectReason::InvalidJson,
        RejectReason::WrongType,
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
}

impl SourceErrorReason {
    pub const ALL: [SourceErrorReason; 7] = [
        SourceErrorReason::Connect,
        SourceErrorReason::Timeout,
        SourceErrorReason::Query,
        SourceErrorReason::WriteRefused,
        SourceErrorReason::Mapping,
        SourceErrorReason::Decode,
        SourceErrorReason::KeyLimit,
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
        }
    }
}

/// Names and HELP texts, in one place.
pub mod names {
    pub const LAST_REFRESH: (&str, &str) = ("oauth_refresh_token_last_refresh_timestamp_seconds", "When the current refresh token was issued (last successful refresh or authorisation), as of the last poll");
    pub const AGE: (&str, &str) = (
        "oauth_refresh_token_age_seconds",
        "Time since the last successful refresh, as of the last poll",
    );
    pub const REFRESH_EXPIRY: (&str, &str) = ("oauth_refresh_token_expiry_timestamp_seconds", "When the refresh token expires: last refresh plus the provider's inactivity window, or a stored expiry if earlier");
    pub const EXPIRED: (&str, &str) = (
        "oauth_refresh_token_expired",
        "1 when the refresh token is past its expiry as of the last poll",
    );
    pub const ACCESS_EXPIRY: (&str, &str) = (
        "oauth_access_token_expiry_timestamp_seconds",
        "When the current access token expires, as of the last poll",
    );
    pub const STATUS: (&str, &str) = (
        "oauth_connection_status",
        "Connection status as a state set: 1 for the current status",
    );
    pub const INFO: (&str, &str) = (
        "oauth_connection_info",
        "Extra labels of a connection, for joins",
    );
    pub const CONNECTIONS: (&str, &str) = (
        "oauth_connections",
        "Connections per status, as of the last poll",
    );
    pub const EXPIRING: (&str, &str) = ("oauth_connections_expiring", "Connections whose refresh token expires within the window (cumulative), as of the last poll");
    pub const FAILING: (&str, &str) = (
        "oauth_connections_failing",
        "Distinct connections with a failure in the last detect window",
    );
    pub const RETRYING: (&str, &str) = ("oauth_connections_retrying_invalid_grant", "Connections with at least detect.retry_loop_failures invalid_grant failures in the last detect window (retrying in a loop)");
    pub const REFRESH_WINDOW: (&str, &str) = ("oauth_provider_refresh_token_lifetime_seconds", "The provider's refresh-token inactivity window as configured for the source (Xero 60 days, QuickBooks 100 days, ...)");
    pub const ACCESS_LIFETIME: (&str, &str) = (
        "oauth_provider_access_token_lifetime_seconds",
        "The provider's access-token lifetime as configured for the source",
    );
    pub const MAX_LIFETIME: (&str, &str) = ("oauth_provider_refresh_token_max_lifetime_seconds", "The provider's hard maximum refresh-token lifetime from authorisation, where it has one (QuickBooks 5 years)");
    pub const TRUNCATED: (&str, &str) = ("oauth_exporter_connections_truncated", "Connections left out of the per-connection series by the source's cap (aggregates count them)");
    pub const REMOVED: (&str, &str) = (
        "oauth_connections_removed",
        "Connections that disappeared from the store (some apps delete the row on invalid_grant)",
    );
    pub const UP: (&str, &str) = (
        "oauth_exporter_source_up",
        "1 when the last poll of the source succeeded",
    );
    pub const LAST_SUCCESS: (&str, &str) = (
        "oauth_exporter_source_last_success_timestamp_seconds",
        "When the source was last polled successfully (0: never)",
    );
    pub const DURATION: (&str, &str) = (
        "oauth_exporter_source_duration_seconds",
        "How long the last poll of the source took",
    );
    pub const ERRORS: (&str, &str) = (
        "oauth_exporter_source_errors",
        "Failed polls of the source, by reason",
    );
    pub const STATE_WRITE_ERRORS: (&str, &str) = (
        "oauth_exporter_state_write_errors",
        "Failed writes of the persistence file of the push inlets' counters",
    );
    pub const REJECTED: (&str, &str) = (
        "oauth_exporter_rows_rejected",
        "Rows the source returned that could not be exported, by reason",
    );
    pub const REFRESHES: (&str, &str) = ("oauth_token_refreshes", "Refresh attempts seen");
    pub const REFRESH_FAILURES: (&str, &str) = (
        "oauth_token_refresh_failures",
        "Failed refreshes, by the OAuth error of the token endpoint",
    );
    pub const API_REQUESTS: (&str, &str) = ("oauth_api_requests", "API calls seen");
    pub const API_UNAUTHORIZED: (&str, &str) = (
        "oauth_api_unauthorized",
        "API calls answered 401, by Xero's reason",
    );
    pub const API_FORBIDDEN: (&str, &str) = (
        "oauth_api_forbidden",
        "API calls answered 403 (wrong or disconnected tenant)",
    );
    pub const API_RATE_LIMITED: (&str, &str) = (
        "oauth_api_rate_limited",
        "API calls answered 429, by the limit hit",
    );
    pub const REGRESSIONS: (&str, &str) = (
        "oauth_refresh_token_regressions",
        "Stored refresh token reverted to an earlier value",
    );
    pub const RACES: (&str, &str) = (
        "oauth_token_refresh_races",
        "Two refreshes of one connection inside the grace period",
    );
    pub const RATE_LIMIT_REMAINING: (&str, &str) = ("oauth_api_rate_limit_remaining", "Last X-DayLimit-Remaining (window day), X-MinLimit-Remaining (minute) or X-AppMinLimit-Remaining (app_minute) seen per tenant, through the proxy");
    pub const BUILD_INFO: (&str, &str) = (
        "oauth_exporter_build_info",
        "Build information of the exporter; value 1",
    );
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceReasonLabels {
    pub source: String,
    pub reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderSourceLabels {
    pub provider: &'static str,
    pub source: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    version: &'static str,
    revision: &'static str,
    rustversion: &'static str,
}

type FloatGauge = Gauge<f64, AtomicU64>;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub provider: &'static str,
    pub source: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventErrorLabels {
    pub provider: &'static str,
    pub source: String,
    pub error: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventReasonLabels {
    pub provider: &'static str,
    pub source: String,
    pub reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventProblemLabels {
    pub provider: &'static str,
    pub source: String,
    pub problem: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RateLimitLabels {
    pub provider: &'static str,
    pub source: String,
    pub tenant: String,
    pub window: &'static str,
}

/// Event counters: refresh outcomes and API answers, classified before they are counted.
#[derive(Debug, Default)]
pub struct Events {
    pub refreshes: Family<EventLabels, Counter>,
    pub refresh_failures: Family<EventErrorLabels, Counter>,
    pub api_requests: Family<EventLabels, Counter>,
    pub unauthorized: Family<EventReasonLabels, Counter>,
    pub forbidden: Family<EventLabels, Counter>,
    pub rate_limited: Family<EventProblemLabels, Counter>,
    pub regressions: Family<EventLabels, Counter>,
    pub races: Family<EventLabels, Counter>,
    /// Last `X-*-Remaining` seen per tenant (proxy only).
    pub rate_limit_remaining: Family<RateLimitLabels, Gauge>,
    /// Tenants with a headroom series, bounded by [`MAX_RATE_LIMIT_TENANTS`].
    rate_limit_tenants: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// Most tenants with `oauth_api_rate_limit_remaining` series (the tenant comes from a request
/// header: bounded so that no client can grow the exposition without end).
pub const MAX_RATE_LIMIT_TENANTS: usize = 10_000;

impl Events {
    /// Set a tenant's headroom; a tenant beyond [`MAX_RATE_LIMIT_TENANTS`] is left out.
    pub fn set_rate_limit_remaining(&self, labels: RateLimitLabels, value: i64) {
        {
            let mut tenants = self
                .rate_limit_tenants
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if !tenants.contains(&labels.tenant) {
                if tenants.len() >= MAX_RATE_LIMIT_TENANTS {
                    return;
                }
                tenants.insert(labels.tenant.clone());
            }
        }
        self.rate_limit_remaining.get_or_create(&labels).set(value);
    }

    /// Create every series of an event inlet at 0.
    pub fn init(&self, provider: &'static str, source: &str) {
        use crate::events::classify::{RateLimitProblem, UnauthorizedReason};
        use crate::provider::RefreshError;
        let l = EventLabels {
            provider,
            source: source.to_string(),
        };
        let _ = self.refreshes.get_or_create(&l);
        let _ = self.api_requests.get_or_create(&l);
        let _ = self.forbidden.get_or_create(&l);
        let _ = self.regressions.get_or_create(&l);
        let _ = self.races.get_or_create(&l);
        for e in RefreshError::ALL {
            let _ = self.refresh_failures.get_or_create(&EventErrorLabels {
                provider,
                source: source.to_string(),
                error: e.as_str(),
            });
        }
        for r in UnauthorizedReason::ALL {
            let _ = self.unauthorized.get_or_create(&EventReasonLabels {
                provider,
                source: source.to_string(),
                reason: r.as_str(),
            });
        }
        for p in RateLimitProblem::ALL {
            let _ = self.rate_limited.get_or_create(&EventProblemLabels {
                provider,
                source: source.to_string(),
                problem: p.as_str(),
            });
        }
    }

    /// Every event counter of `source` (all providers, all label values), keyed
    /// `family|provider[|value]`: what an event table persists with its cursor.
    pub fn snapshot(&self, source: &str) -> std::collections::BTreeMap<String, u64> {
        use crate::events::classify::{RateLimitProblem, UnauthorizedReason};
        use crate::provider::{ProviderKind, RefreshError};
        let mut out = std::collections::BTreeMap::new();
        let source = source.to_string();
        for kind in ProviderKind::ALL {
            let provider = kind.as_str();
            let l = EventLabels {
                provider,
                source: source.clone(),
            };
            for (name, family) in [
                ("refreshes", &self.refreshes),
                ("api_requests", &self.api_requests),
                ("forbidden", &self.forbidden),
                ("regressions", &self.regressions),
                ("races", &self.races),
            ] {
                if let Some(c) = family.get(&l).map(|c| c.get()).filter(|v| *v > 0) {
                    out.insert(format!("{name}|{provider}"), c);
                }
            }
            for e in RefreshError::ALL {
                let l = EventErrorLabels {
                    provider,
                    source: source.clone(),
                    error: e.as_str(),
                };
                if let Some(c) = self
                    .refresh_failures
                    .get(&l)
                    .map(|c| c.get())
                    .filter(|v| *v > 0)
                {
                    out.insert(format!("refresh_failures|{provider}|{}", e.as_str()), c);
                }
            }
            for r in UnauthorizedReason::ALL {
                let l = EventReasonLabels {
                    provider,
                    source: source.clone(),
                    reason: r.as_str(),
                };
                if let Some(c) = self
                    .unauthorized
                    .get(&l)
                    .map(|c| c.get())
                    .filter(|v| *v > 0)
                {
                    out.insert(format!("unauthorized|{provider}|{}", r.as_str()), c);
                }
            }
            for p in RateLimitProblem::ALL {
                let l = EventProblemLabels {
                    provider,
                    source: source.clone(),
                    problem: p.as_str(),
                };
                if let Some(c) = self
                    .rate_limited
                    .get(&l)
                    .map(|c| c.get())
                    .filter(|v| *v > 0)
                {
                    out.insert(format!("rate_limited|{provider}|{}", p.as_str()), c);
                }
            }
        }
        out
    }

    /// Add the counts of a [`Events::snapshot`] back to `source`'s counters (after a restart).
    /// Keys this version does not know are ignored.
    pub fn restore(&self, source: &str, counts: &std::collections::BTreeMap<String, u64>) {
        use crate::events::classify::{RateLimitProblem, UnauthorizedReason};
        use crate::provider::{ProviderKind, RefreshError};
        for (key, n) in counts {
            let mut parts = key.split('|');
            let (Some(name), Some(p)) = (parts.next(), parts.next()) else {
                continue;
            };
            let Some(provider) = ProviderKind::ALL
                .into_iter()
                .map(|k| k.as_str())
                .find(|k| *k == p)
            else {
                continue;
            };
            let value = parts.next();
            let source = source.to_string();
            let l = EventLabels {
                provider,
                source: source.clone(),
            };
            match (name, value) {
                ("refreshes", None) => self.refreshes.get_or_create(&l).inc_by(*n),
                ("api_requests", None) => self.api_requests.get_or_create(&l).inc_by(*n),
                ("forbidden", None) => self.forbidden.get_or_create(&l).inc_by(*n),
                ("regressions", None) => self.regressions.get_or_create(&l).inc_by(*n),
                ("races", None) => self.races.get_or_create(&l).inc_by(*n),
                ("refresh_failures", Some(v)) => {
                    match RefreshError::ALL.into_iter().find(|e| e.as_str() == v) {
                        Some(e) => self
                            .refresh_failures
                            .get_or_create(&EventErrorLabels {
                                provider,
                                source,
                                error: e.as_str(),
                            })
                            .inc_by(*n),
                        None => 0,
                    }
                }
                ("unauthorized", Some(v)) => match UnauthorizedReason::ALL
                    .into_iter()
                    .find(|r| r.as_str() == v)
                {
                    Some(r) => self
                        .unauthorized
                        .get_or_create(&EventReasonLabels {
                            provider,
                            source,
                            reason: r.as_str(),
                        })
                        .inc_by(*n),
                    None => 0,
                },
                ("rate_limited", Some(v)) => {
                    match RateLimitProblem::ALL.into_iter().find(|p| p.as_str() == v) {
                        Some(p) => self
                            .rate_limited
                            .get_or_create(&EventProblemLabels {
                                provider,
                                source,
                                problem: p.as_str(),
                            })
                            .inc_by(*n),
                        None => 0,
                    }
                }
                _ => 0,
            };
        }
    }

    /// Count one refresh attempt and, when it failed, its error.
    pub fn refresh(
        &self,
        provider: &'static str,
        source: &str,
        failure: Option<crate::provider::RefreshError>,
    ) {
        self.refreshes
            .get_or_create(&EventLabels {
                provider,
                source: source.to_string(),
            })
            .inc();
        if let Some(e) = failure {
            self.refresh_failures
                .get_or_create(&EventErrorLabels {
                    provider,
                    source: source.to_string(),
                    error: e.as_str(),
                })
                .inc();
        }
    }

    /// Count one API answer.
    pub fn api(
        &self,
        provider: &'static str,
        source: &str,
        outcome: crate::events::classify::ApiOutcome,
    ) {
        use crate::events::classify::ApiOutcome;
        let l = EventLabels {
            provider,
            source: source.to_string(),
        };
        self.api_requests.get_or_create(&l).inc();
        match outcome {
            ApiOutcome::Unauthorized(r) => {
                self.unauthorized
                    .get_or_create(&EventReasonLabels {
                        provider,
                        source: source.to_string(),
                        reason: r.as_str(),
                    })
                    .inc();
            }
            ApiOutcome::Forbidden => {
                self.forbidden.get_or_create(&l).inc();
            }
            ApiOutcome::RateLimited(p) => {
                self.rate_limited
                    .get_or_create(&EventProblemLabels {
                        provider,
                        source: source.to_string(),
                        problem: p.as_str(),
                    })
                    .inc();
            }
            ApiOutcome::Ok | ApiOutcome::OtherStatus => {}
        }
    }
}

/// Self-health and counters, updated by the poll loops and inlets.
#[derive(Debug)]
pub struct Live {
    pub up: Family<SourceLabels, Gauge>,
    pub last_success: Family<SourceLabels, FloatGauge>,
    pub duration: Family<SourceLabels, FloatGauge>,
    pub errors: Family<SourceReasonLabels, Counter>,
    pub rejected: Family<SourceReasonLabels, Counter>,
    pub removed: Family<ProviderSourceLabels, Counter>,
    pub events: Events,
    /// Per-connection detectors fed by the event inlets.
    pub detector: crate::detect::Detector,
    /// Failed writes of the push inlets' persistence file (exported when it is configured).
    pub state_write_errors: Counter,
}

impl Live {
    pub fn new(detector: crate::detect::Detector) -> Self {
        Live {
            up: Family::default(),
            last_success: Family::default(),
            duration: Family::default(),
            errors: Family::default(),
            rejected: Family::default(),
            removed: Family::default(),
            events: Events::default(),
            detector,
            state_write_errors: Counter::default(),
        }
    }

    /// Create every series of a source at its start value, so rates work from the first scrape.
    pub fn init_source(&self, source: &str, provider: &'static str) {
        let s = SourceLabels {
            source: source.to_string(),
        };
        self.up.get_or_create(&s).set(0);
        self.last_success.get_or_create(&s).set(0.0);
        self.duration.get_or_create(&s).set(0.0);
        for r in SourceErrorReason::ALL {
            let _ = self.errors.get_or_create(&self.reason(source, r.as_str()));
        }
        for r in RejectReason::ALL {
            let _ = self
                .rejected
                .get_or_create(&self.reason(source, r.as_str()));
        }
        let _ = self.removed.get_or_create(&ProviderSourceLabels {
            provider,
            source: source.to_string(),
        });
    }

    fn reason(&self, source: &str, reason: &'static str) -> SourceReasonLabels {
        SourceReasonLabels {
            source: source.to_string(),
            reason,
        }
    }

    pub fn source_error(&self, source: &str, reason: SourceErrorReason) {
        self.errors
            .get_or_create(&self.reason(source, reason.as_str()))
            .inc();
    }

    pub fn row_rejected(&self, source: &str, reason: RejectReason, n: u64) {
        self.rejected
            .get_or_create(&self.reason(source, reason.as_str()))
            .inc_by(n);
    }
}

/// Encodes the snapshots of every source.
#[derive(Debug)]
pub struct StateCollector {
    pub sources: Vec<Arc<SourceHandle>>,
}

type Lbl<'a> = (&'static str, &'a str);

fn family<'a>(
    enc: &'a mut DescriptorEncoder,
    (name, help): (&'a str, &str),
    kind: MetricType,
) -> Result<prometheus_client::encoding::MetricEncoder<'a>, std::fmt::Error> {
    enc.encode_descriptor(name, help, None, kind)
}

impl StateCollector {
    fn per_connection(
        &self,
        enc: &mut DescriptorEncoder,
        desc: (&str, &str),
        value: impl Fn(&crate::state::Connection) -> Option<f64>,
    ) -> Result<(), std::fmt::Error> {
        let mut f = family(enc, desc, MetricType::Gauge)?;
        for src in &self.sources {
            let snap = src.snapshot();
            for c in &snap.connections {
                if let Some(v) = value(c) {
                    let labels: [Lbl; 4] = [
                        ("provider", src.provider),
                        ("source", &src.name),
                        ("connection", &c.id),
                        ("tenant", &c.tenant),
                    ];
                    ConstGauge::new(v).encode(f.encode_family(&labels)?)?;
                }
            }
        }
        Ok(())
    }

    fn per_source(
        &self,
        enc: &mut DescriptorEncoder,
        desc: (&str, &str),
        extra: Option<(&'static str, &[&str])>,
        value: impl Fn(&crate::state::SourceSnapshot, usize) -> u64,
    ) -> Result<(), std::fmt::Error> {
        let mut f = family(enc, desc, MetricType::Gauge)?;
        for src in &self.sources {
            let snap = src.snapshot();
            match extra {
                Some((key, values)) => {
                    for (i, v) in values.iter().enumerate() {
                        let labels: [Lbl; 3] =
                            [("provider", src.provider), ("source", &src.name), (key, v)];
                        ConstGauge::new(value(&snap, i) as i64)
                            .encode(f.encode_family(&labels)?)?;
                    }
                }
                None => {
                    let labels: [Lbl; 2] = [("provider", src.provider), ("source", &src.name)];
                    ConstGauge::new(value(&snap, 0) as i64).encode(f.encode_family(&labels)?)?;
                }
            }
        }
        Ok(())
    }
}

impl Collector for StateCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use names::*;
        self.per_connection(&mut enc, LAST_REFRESH, |c| Some(c.last_refresh))?;
        self.per_connection(&mut enc, AGE, |c| Some(c.age))?;
        self.per_connection(&mut enc, REFRESH_EXPIRY, |c| Some(c.refresh_expiry))?;
        self.per_connection(&mut enc, EXPIRED, |c| {
            Some(if c.expired { 1.0 } else { 0.0 })
        })?;
        self.per_connection(&mut enc, ACCESS_EXPIRY, |c| c.access_expiry)?;
        {
            let mut f = family(&mut enc, STATUS, MetricType::Gauge)?;
            for src in &self.sources {
                let snap = src.snapshot();
                for c in &snap.connections {
                    for st in Status::ALL {
                        let labels: [Lbl; 5] = [
                            ("provider", src.provider),
                            ("source", &src.name),
                            ("connection", &c.id),
                            ("tenant", &c.tenant),
                            ("status", st.as_str()),
                        ];
                        ConstGauge::new(i64::from(c.status == st))
                            .encode(f.encode_family(&labels)?)?;
                    }
                }
            }
        }
        {
            let mut f = family(&mut enc, INFO, MetricType::Gauge)?;
            for src in &self.sources {
                let snap = src.snapshot();
                for c in &snap.connections {
                    let mut labels: Vec<(&str, &str)> = Vec::with_capacity(4 + c.labels.len());
                    labels.extend([
                        ("provider", src.provider),
                        ("source", src.name.as_str()),
                        ("connection", c.id.as_str()),
                        ("tenant", c.tenant.as_str()),
                    ]);
                    for (name, v) in src.label_names.iter().zip(&c.labels) {
                        labels.push((name.as_str(), v.as_str()));
                    }
                    ConstGauge::new(1i64).encode(f.encode_family(&labels)?)?;
                }
            }
        }
        let statuses: Vec<&str> = Status::ALL.iter().map(|s| s.as_str()).collect();
        self.per_source(
            &mut enc,
            CONNECTIONS,
            Some(("status", &statuses)),
            |s, i| s.aggregates.by_status[i],
        )?;
        let windows: Vec<&str> = EXPIRING_WINDOWS.iter().map(|(w, _)| *w).collect();
        self.per_source(&mut enc, EXPIRING, Some(("within", &windows)), |s, i| {
            s.aggregates.expiring[i]
        })?;
        for (desc, value) in [
            (
                REFRESH_WINDOW,
                (|h: &SourceHandle| Some(h.refresh_window)) as fn(&SourceHandle) -> Option<f64>,
            ),
            (ACCESS_LIFETIME, |h: &SourceHandle| Some(h.access_lifetime)),
            (MAX_LIFETIME, |h: &SourceHandle| h.refresh_max_lifetime),
        ] {
            let mut f = family(&mut enc, desc, MetricType::Gauge)?;
            for src in &self.sources {
                if let Some(v) = value(src) {
                    let labels: [Lbl; 2] = [("provider", src.provider), ("source", &src.name)];
                    ConstGauge::new(v).encode(f.encode_family(&labels)?)?;
                }
            }
        }
        {
            let mut f = family(&mut enc, TRUNCATED, MetricType::Gauge)?;
            for src in &self.sources {
                let labels: [Lbl; 1] = [("source", &src.name)];
                ConstGauge::new(src.snapshot().truncated as i64)
                    .encode(f.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// The state registry: one collector over every source's snapshot.
pub fn state_registry(sources: Vec<Arc<SourceHandle>>) -> Registry {
    let mut state = Registry::default();
    state.register_collector(Box::new(StateCollector { sources }));
    state
}

/// Gauges computed at scrape time: failing connections (sources from their last poll, event
/// inlets from the detector over the window as of now) and retry loops.
#[derive(Debug)]
pub struct DetectCollector {
    sources: Vec<Arc<SourceHandle>>,
    live: Arc<Live>,
}

impl Collector for DetectCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use names::*;
        let inlets = self.live.detector.snapshot();
        {
            let mut f = family(&mut enc, FAILING, MetricType::Gauge)?;
            for src in &self.sources {
                let labels: [Lbl; 2] = [("provider", src.provider), ("source", &src.name)];
                ConstGauge::new(src.snapshot().aggregates.failing as i64)
                    .encode(f.encode_family(&labels)?)?;
            }
            for (provider, source, failing, _) in &inlets {
                let labels: [Lbl; 2] = [("provider", provider), ("source", source)];
                ConstGauge::new(*failing as i64).encode(f.encode_family(&labels)?)?;
            }
        }
        let mut f = family(&mut enc, RETRYING, MetricType::Gauge)?;
        for (provider, source, _, looping) in &inlets {
            let labels: [Lbl; 2] = [("provider", provider), ("source", source)];
            ConstGauge::new(*looping as i64).encode(f.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// The live registry over `live`, with every source's series created at its start value.
pub fn live_registry(live: &Arc<Live>, sources: &[Arc<SourceHandle>]) -> Registry {
    for s in sources {
        live.init_source(&s.name, s.provider);
    }
    let mut r = Registry::default();
    use names::*;
    r.register(UP.0, UP.1, live.up.clone());
    r.register(LAST_SUCCESS.0, LAST_SUCCESS.1, live.last_success.clone());
    r.register(DURATION.0, DURATION.1, live.duration.clone());
    r.register(ERRORS.0, ERRORS.1, live.errors.clone());
    r.register(REJECTED.0, REJECTED.1, live.rejected.clone());
    r.register(REMOVED.0, REMOVED.1, live.removed.clone());
    let e = &live.events;
    r.register(REFRESHES.0, REFRESHES.1, e.refreshes.clone());
    r.register(
        REFRESH_FAILURES.0,
        REFRESH_FAILURES.1,
        e.refresh_failures.clone(),
    );
    r.register(API_REQUESTS.0, API_REQUESTS.1, e.api_requests.clone());
    r.register(
        API_UNAUTHORIZED.0,
        API_UNAUTHORIZED.1,
        e.unauthorized.clone(),
    );
    r.register(API_FORBIDDEN.0, API_FORBIDDEN.1, e.forbidden.clone());
    r.register(
        API_RATE_LIMITED.0,
        API_RATE_LIMITED.1,
        e.rate_limited.clone(),
    );
    r.register(REGRESSIONS.0, REGRESSIONS.1, e.regressions.clone());
    r.register(RACES.0, RACES.1, e.races.clone());
    r.register(
        RATE_LIMIT_REMAINING.0,
        RATE_LIMIT_REMAINING.1,
        e.rate_limit_remaining.clone(),
    );
    let build: Family<BuildLabels, Gauge> = Family::default();
    build
        .get_or_create(&BuildLabels {
            version: env!("CARGO_PKG_VERSION"),
            revision: env!("OAUTH_EXPORTER_REVISION"),
            rustversion: env!("OAUTH_EXPORTER_RUSTC"),
        })
        .set(1);
    r.register(BUILD_INFO.0, BUILD_INFO.1, build);
    r.register_collector(Box::new(DetectCollector {
        sources: sources.to_vec(),
        live: live.clone(),
    }));
    r
}

/// Shared counter of snapshot replacements; the exposition re-encodes when it moves.
pub type Generation = Arc<AtomicU64>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_label_values_are_cut_with_a_digest_and_stay_distinct() {
        assert_eq!(label_value("c1\"\n\\"), "c1\"\n\\");
        let a = "é".repeat(200) + "a";
        let b = "é".repeat(200) + "b";
        let (ca, cb) = (label_value(&a), label_value(&b));
        assert!(ca.len() <= MAX_LABEL_VALUE_BYTES && cb.len() <= MAX_LABEL_VALUE_BYTES);
        assert_ne!(ca, cb);
        assert!(ca.starts_with("éé") && ca.contains('~'));
        assert_eq!(
            label_value(&"x".repeat(MAX_LABEL_VALUE_BYTES)).len(),
            MAX_LABEL_VALUE_BYTES
        );
    }

    #[test]
    fn rate_limit_series_are_bounded_by_tenant() {
        let e = Events::default();
        let l = |t: String| RateLimitLabels {
            provider: "xero",
            source: "proxy".into(),
            tenant: t,
            window: "day",
        };
        for i in 0..MAX_RATE_LIMIT_TENANTS + 50 {
            e.set_rate_limit_remaining(l(format!("t{i}")), 1);
        }
        e.set_rate_limit_remaining(l("t0".into()), 7);
        let tenants = e.rate_limit_tenants.lock().unwrap().len();
        assert_eq!(tenants, MAX_RATE_LIMIT_TENANTS);
        assert_eq!(
            e.rate_limit_remaining.get_or_create(&l("t0".into())).get(),
            7
        );
    }
}
