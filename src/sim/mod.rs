//! Simulations used by the demo, the tests and the benchmarks (the `sim` cargo feature, on by
//! default; a build without it has no demo and none of this). Nothing here ever calls the real
//! Xero.
//!
//! - [`xero`]: Xero's identity server (`/connect/token`, `/connect/revocation`) and API
//!   (`/connections`, an accounting endpoint) with rotation, the grace period, the 60-day
//!   inactivity expiry, Xero's real error bodies, rate limits, and the operator actions that
//!   break connections (password change, user removed, app disconnected, client secret
//!   rotated, a platform incident).
//! - [`jwt`]: the `id_token`s it signs (RS256 with a committed test key), their JWKS and the
//!   OpenID discovery document, for clients that validate them.
//! - [`tls`]: a test CA and server loop, to serve the simulated Xero over verified TLS.
//! - [`store`]: the host app's writable connection to SQLite, PostgreSQL or MySQL.
//! - [`host_app`]: a simulated host app whose workers sync tenants through the simulated Xero
//!   and store their tokens, with faults on demand (racing workers, a stale write-back, a retry
//!   loop, an idle tenant).
//! - [`demo`]: `oauth-token-exporter demo`, a live SQLite fleet driven by the two above.

pub mod demo;
pub mod host_app;
pub mod jwt;
pub mod store;
pub mod tls;
pub mod xero;
