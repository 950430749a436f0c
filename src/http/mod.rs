//! HTTP: the endpoints ([`server`]), the hardened listener loop ([`serve`]) and the
//! exporter-toolkit web config ([`web_config`]).

pub mod serve;
pub mod server;
pub mod web_config;
