//! oauth-token-exporter: a Prometheus exporter and alerting sidecar for the health of OAuth 2.0
//! connections with rotating refresh tokens (Xero first).
//!
//! # Layout
//! Data flows one way: stores and inlets, then the model, the pipeline, telemetry, http. A
//! module never imports one that imports it back (`tests/module_circles.rs` holds it).
//! - [`config`]: the strict YAML config, one file per section; every problem reported with its key.
//! - [`provider`]: provider profiles (Xero, ...): token lifetimes, rotation, refresh errors.
//! - [`timestamp`]: cells read from stores and every timestamp shape apps use.
//! - [`model`]: snapshots, source handles, closed reason enums, the one `Event` type, typed errors.
//! - [`sources`]: one file per store kind (`sqlite`, `postgres`, `mysql`, `redis`, `file`,
//!   `http`) and the field mapping.
//! - [`events`]: one file per inlet (event tables, ingest API, Nango webhooks, the reverse
//!   proxy) and the classification of what they carry.
//! - [`detect`]: every detector (failing connections, retry loops, races, token regressions),
//!   each with its memory bound.
//! - [`diagnosis`]: per connection, the likely cause of a failure or risk, its evidence and fix.
//! - [`pipeline`]: the one sink that counts events and feeds detectors; the one poll loop.
//! - [`telemetry`]: the metric catalogue, registries, `/metrics` bodies, counter persistence.
//! - [`http`]: endpoints, the hardened listener, `--web.config.file`.
//! - [`app`]: the wiring ([`Exporter`], [`run`]).
//! - [`clock`]: injected time. [`secret`]: a string type that never prints.
//! - [`sim`] (feature `sim`): the simulated Xero and host app, and the demo.

pub mod app;
pub mod clock;
pub mod config;
pub mod detect;
pub mod diagnosis;
pub mod events;
pub mod http;
pub mod model;
pub mod pipeline;
pub mod provider;
pub mod secret;
#[cfg(feature = "sim")]
pub mod sim;
pub mod sources;
pub mod telemetry;
pub mod timestamp;

pub use app::{run, BuildError, Exporter, RunError, ServerOptions};
