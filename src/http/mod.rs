//! HTTP: the endpoints ([`server`]; the diagnosed connections in [`connections`]), the hardened listener loop ([`serve`]) and the
//! exporter-toolkit web config ([`web_config`]).

pub mod connections;
pub mod serve;
pub mod server;
pub mod web_config;
