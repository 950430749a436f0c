//! The pipeline between the stores and inlets and the telemetry:
//!
//! - [`sink`]: the one [`Sink`] that counts events and feeds the detectors;
//! - [`runner`]: the one poll loop ([`Runner`]) for anything polled with a deadline;
//! - [`health`]: the self-health series of a polled thing, logged and counted in one place;
//! - [`source`]: one poll of a source ([`SourcePoller`]).

pub mod health;
pub mod runner;
pub mod sink;
pub mod source;

pub use health::{Health, Outcome, Subject};
pub use runner::{Poll, Polled, Runner};
pub use sink::Sink;
pub use source::SourcePoller;
