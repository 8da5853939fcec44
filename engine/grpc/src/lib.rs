//! # switchyard-grpc
//!
//! The server that exposes a [`switchyard_core::Engine`] through the `switchyard.v1` gRPC
//! contract (generated in `switchyard-client`).
//!
//! - [`pb`]: the generated messages, clients and service traits (re-exported from
//!   `switchyard-client`, the crate a Rust client depends on).
//! - [`server::start`]: the whole server (store, rules, services, health, reflection, TLS,
//!   metrics, graceful shutdown).
//! - [`auth`]: bearer tokens (kept hashed) and JWTs → actors.
//! - [`config`]: the server's file-plus-environment configuration.
//!
//! This crate converts between wire and domain types and maps errors to statuses; it makes no
//! business decision of its own: roles, states, payloads and versions are checked by the core.

#![warn(missing_docs)]

mod analytics;
pub mod auth;
mod backup;
mod call_log;
mod clock;
pub mod config;
pub mod connections;
mod convert;
mod dashboard;
mod feed;
pub mod health;
pub mod http;
mod jobs;
pub mod metrics_http;
pub mod notify;
pub mod server;
mod services;
mod status;
pub mod webhooks;

pub use status::ERROR_DOMAIN;

/// The generated `switchyard.v1` types, clients and servers, and the contract's descriptor
/// sets: from `switchyard-client`, which a Rust client depends on without this server.
pub use switchyard_client::{
    codec, pb, ANALYTICS_DESCRIPTOR_SET, FILE_DESCRIPTOR_SET, GOOGLE_RPC_DESCRIPTOR_SET,
};
