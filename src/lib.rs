//! sse-fanout: a reverse proxy on Pingora that serves Server-Sent Events
//! topics itself, feeding every subscriber of a topic from one upstream
//! stream, and proxies every other request to the app.
//!
//! The binary (`src/main.rs`) loads a [`config::Config`] and hands it to
//! [`server::build`], which wires Pingora's listeners to the [`proxy`].

pub mod access_log;
pub mod acme;
pub mod admin;
pub mod admission;
pub mod auth;
pub mod client;
pub mod config;
pub mod cors;
pub mod event_stream;
pub mod front_door;
pub mod hsts;
pub mod hub;
pub mod limits;
pub mod memory;
pub mod metrics;
pub mod pid_file;
pub mod proxy;
pub mod reload;
pub mod route;
pub mod server;
/// The SSE wire format (parser and encoder), its own crate (`sse-wire/`) so
/// the fuzz target builds it without Pingora; `crate::sse::...` names it here.
pub use sse_wire as sse;
pub mod subscriber;
pub mod tls;
pub mod topic_request;
pub mod trusted_ca;
pub mod upstream_addr;
