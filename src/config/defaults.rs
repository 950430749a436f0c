//! Every default of the config, in one place (README's configuration section lists them).

use std::time::Duration;

pub const POLL_INTERVAL: Duration = Duration::from_secs(30);
pub const POLL_TIMEOUT: Duration = Duration::from_secs(10);
/// Backoff after failures doubles from the interval up to this multiple of it.
pub const BACKOFF_MAX_FACTOR: u32 = 5;
pub const MAX_CONNECTIONS_PER_SOURCE: usize = 10_000;
pub const DETECT_WINDOW: Duration = Duration::from_secs(15 * 60);
/// `invalid_grant` failures of one connection within the window that make a retry loop.
pub const RETRY_LOOP_FAILURES: usize = 5;
/// Most keys a Redis source reads per poll.
pub const MAX_KEYS: usize = 100_000;
pub const INGEST_SOURCE: &str = "ingest";
pub const INGEST_MAX_BODY: usize = 1024 * 1024;
pub const INGEST_MAX_EVENTS: usize = 10_000;
/// Shortest ingest bearer token accepted.
pub const INGEST_MIN_TOKEN: usize = 16;
pub const NANGO_SOURCE: &str = "nango";
pub const PROXY_SOURCE: &str = "proxy";
pub const PROXY_IDENTITY_URL: &str = "https://identity.xero.com";
pub const PROXY_API_URL: &str = "https://api.xero.com";
pub const PROXY_TIMEOUT: Duration = Duration::from_secs(60);
/// The hosts whose `CONNECT` tunnels the proxy intercepts: Xero's identity server and API.
pub const INTERCEPT_HOSTS: &[&str] = &["identity.xero.com", "api.xero.com"];
/// Lifetime of a leaf certificate issued for an intercepted host.
pub const INTERCEPT_LEAF_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Most `CONNECT` tunnels (intercepted or not) open at once.
pub const INTERCEPT_MAX_TUNNELS: usize = 256;
/// Rows an event table reads per query.
pub const EVENT_TABLE_BATCH: usize = 1000;
pub const EVENT_TABLE_ID_COLUMN: &str = "id";
/// How often the push inlets' counters are saved when they changed.
pub const PERSISTENCE_INTERVAL: Duration = Duration::from_secs(1);
/// Shortest persistence interval accepted.
pub const PERSISTENCE_MIN_INTERVAL: Duration = Duration::from_millis(100);
