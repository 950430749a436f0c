//! Telemetry: what the exporter exports and keeps about itself.
//!
//! - [`catalogue`]: every metric name, HELP and label set; the one list of event counters;
//! - [`live`]: self-health and event counters (with their save/restore codec);
//! - [`collectors`]: the state and live registries;
//! - [`exposition`]: `/metrics` bodies, the state part deflated once per poll;
//! - [`persist`]: the push inlets' counters saved across restarts;
//! - [`process`]: the standard `process_*` metrics of the exporter itself.

pub mod catalogue;
pub mod collectors;
pub mod exposition;
pub mod live;
pub mod persist;
pub mod process;
pub mod segments;

pub use catalogue::{
    openmetrics_to_text, EventCounter, OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE,
};
pub use exposition::Exposition;
pub use live::Live;
