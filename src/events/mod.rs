//! Event inlets: refresh outcomes and API answers the host app meets, turned into
//! [`crate::model::Event`]s and handed to the pipeline's [`Sink`]. One file per inlet, each
//! implementing [`Inlet`]:
//!
//! - [`table`]: event tables tailed with a cursor kept in a state file;
//! - [`ingest`]: `POST /api/v1/events`, batched JSON events from the host app;
//! - [`nango`]: `POST /webhooks/nango`, Nango's auth webhooks;
//! - [`proxy`]: a reverse proxy in front of Xero that counts what passes through;
//! - [`classify`]: Xero's answers and the events' fields read into the closed enums.

pub mod classify;
pub mod ingest;
pub mod intercept;
pub mod lease;
pub mod nango;
pub mod proxy;
pub mod table;

use crate::clock::SharedClock;
use crate::model::CollectError;
use crate::pipeline::{Poll, Sink};
use std::path::PathBuf;

/// What an inlet is wired with.
#[derive(Clone)]
pub struct Context {
    pub sink: Sink,
    pub clock: SharedClock,
}

/// A listener of an inlet's own (the proxy's).
pub struct Listener {
    /// Names it in logs.
    pub name: &'static str,
    /// Where it listens (`:port` means every interface); `None`: the embedding program
    /// serves `router` itself.
    pub address: Option<String>,
    pub router: axum::Router,
    /// Its web config file (TLS, client certificates, basic auth).
    pub web_config_file: Option<PathBuf>,
    /// Basic auth there is by `Proxy-Authorization` (a forward or reverse proxy).
    pub proxy_auth: bool,
}

/// What an inlet adds to the running exporter.
#[derive(Default)]
pub struct Wired {
    /// Routes on the web listener (behind its web config).
    pub routes: Option<axum::Router>,
    /// Poll loops, run by the pipeline's runner.
    pub polls: Vec<Box<dyn Poll>>,
    /// Listeners of its own.
    pub listeners: Vec<Listener>,
}

/// An event inlet, implemented by its config section.
pub trait Inlet {
    /// Names it in errors (`event table app_events`, `ingest API`).
    fn name(&self) -> String;
    /// Create its series at 0 and its routes, poll loops and listeners. Fails only on a store
    /// the driver cannot open.
    fn wire(&self, ctx: &Context) -> Result<Wired, CollectError>;
}
