//! # switchyard-grpc
//!
//! The `switchyard.v1` gRPC contract (generated from `proto/switchyard/v1/` by a pure-Rust
//! protobuf compiler at build time) and the server that exposes a
//! [`switchyard_core::Engine`] through it.
//!
//! - [`pb`]: the generated messages, clients and service traits.
//! - [`server::start`]: the whole server (store, rules, services, health, reflection, TLS,
//!   metrics, graceful shutdown).
//! - [`auth`]: bearer tokens (kept hashed) and JWTs → actors.
//! - [`config`]: the server's file-plus-environment configuration.
//!
//! This crate converts between wire and domain types and maps errors to statuses; it makes no
//! business decision of its own: roles, states, payloads and versions are checked by the core.

#![warn(missing_docs)]

pub mod auth;
pub mod codec;
pub mod config;
pub mod connections;
mod convert;
mod feed;
pub mod health;
pub mod http;
pub mod metrics_http;
pub mod server;
mod services;
mod status;

pub use status::ERROR_DOMAIN;

/// The generated `switchyard.v1` types, clients and servers.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    tonic::include_proto!("switchyard.v1");
}

/// The encoded descriptor set of `switchyard.v1` (and its imports), for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/switchyard_v1_descriptor.bin"));
