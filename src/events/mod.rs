//! Event inlets: refresh outcomes and API answers the host app meets, classified into the
//! closed enums of the catalogue and counted.
//!
//! - [`classify`]: Xero's API answers (401 reasons, 403, 429 limits);
//! - [`ingest`]: `POST /api/v1/events`, batched JSON events from the host app;
//! - [`nango`]: `POST /webhooks/nango`, Nango's auth webhooks;
//! - [`table`]: event tables tailed with a cursor kept in a state file;
//! - [`proxy`]: a reverse proxy in front of Xero that counts what passes through;
//! - [`persist`]: the counters of the push inlets saved across restarts.

pub mod classify;
pub mod ingest;
pub mod nango;
pub mod persist;
pub mod proxy;
pub mod table;
