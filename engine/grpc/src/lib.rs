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
mod backup;
mod clock;
pub mod codec;
pub mod config;
pub mod connections;
mod convert;
mod feed;
pub mod health;
pub mod http;
mod jobs;
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

/// The encoded descriptor set of `google.rpc.Status` and the error details the server sends
/// (`ErrorInfo`, `BadRequest`, …), served by reflection too.
pub const GOOGLE_RPC_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/google_rpc_descriptor.bin"));

#[cfg(test)]
mod tests {
    use prost::Message;

    /// Every file of the contract carries the same settled file options (adding or changing
    /// one later breaks generated clients), and each its own Java outer class name.
    #[test]
    fn every_contract_file_settles_its_file_options() {
        let set = prost_types::FileDescriptorSet::decode(super::FILE_DESCRIPTOR_SET).unwrap();
        let files: Vec<_> = set
            .file
            .iter()
            .filter(|f| f.package() == "switchyard.v1")
            .collect();
        assert_eq!(
            files.len(),
            6,
            "switchyard, access, feed, jobs, clock, backup"
        );
        let mut outer = std::collections::BTreeSet::new();
        for f in files {
            let o = f.options.as_ref().unwrap_or_else(|| panic!("{}", f.name()));
            assert_eq!(
                o.go_package(),
                "switchyard.dev/proto/switchyard/v1;switchyardv1"
            );
            assert_eq!(o.java_package(), "dev.switchyard.v1");
            assert!(o.java_multiple_files());
            assert_eq!(o.csharp_namespace(), "Switchyard.V1");
            assert_eq!(o.php_namespace(), "Switchyard\\V1");
            assert_eq!(o.ruby_package(), "Switchyard::V1");
            assert_eq!(o.objc_class_prefix(), "SYX");
            assert!(
                outer.insert(o.java_outer_classname().to_string()),
                "{}",
                f.name()
            );
        }
    }
}
