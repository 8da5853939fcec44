//! # switchyard-client
//!
//! Switchyard's gRPC contract, `switchyard.v1`, for Rust services: the messages, the clients
//! and the service traits, generated at build time from `proto/switchyard/v1/` by a pure-Rust
//! protobuf compiler (no system `protoc`). It depends on tonic and prost only — not on the
//! engine or the server (`switchyard-grpc`), which builds on it.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use switchyard_client::pb;
//! let mut instances = pb::instance_service_client::InstanceServiceClient::connect(
//!     "http://127.0.0.1:50051",
//! )
//! .await?;
//! let mut request = tonic::Request::new(pb::StartInstanceRequest {
//!     request_id: "lead-1".into(),
//!     definition: "lead".into(),
//!     data_json: r#"{"company": "ACME GmbH"}"#.into(),
//!     ..Default::default()
//! });
//! request
//!     .metadata_mut()
//!     .insert("authorization", "Bearer <token>".parse()?);
//! let started = instances.start_instance(request).await?.into_inner();
//! # Ok(()) }
//! ```
//!
//! Refusals carry `google.rpc` details (`ErrorInfo` with a stable reason in the domain
//! [`ERROR_DOMAIN`], `BadRequest` naming the field): read them with
//! `tonic_types::StatusExt`.

#![warn(missing_docs)]

pub mod codec;

/// The domain of every `ErrorInfo` the server sends.
pub const ERROR_DOMAIN: &str = "switchyard";

/// The generated `switchyard.v1` types, clients and servers.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    tonic::include_proto!("switchyard.v1");
}

/// The generated `switchyard.analytics.v1alpha1` types, client and server: sales-operations
/// figures. Unstable: it may change until the figures settle.
#[allow(missing_docs, clippy::all)]
pub mod analytics {
    tonic::include_proto!("switchyard.analytics.v1alpha1");
}

/// `google.type` messages the contract uses, as googleapis defines them
/// (`proto/google/type/date.proto`).
pub mod google_type {
    /// A calendar date: `year` 1–9999, `month` 1–12, `day` 1–31 (googleapis also allows zeros
    /// for partial dates; Switchyard refuses them).
    #[derive(Clone, Copy, PartialEq, Eq, Hash, prost::Message)]
    pub struct Date {
        /// The year.
        #[prost(int32, tag = "1")]
        pub year: i32,
        /// The month of the year.
        #[prost(int32, tag = "2")]
        pub month: i32,
        /// The day of the month.
        #[prost(int32, tag = "3")]
        pub day: i32,
    }
}

/// The encoded descriptor set of `switchyard.analytics.v1alpha1` (and its imports), for
/// reflection.
pub const ANALYTICS_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(
    env!("OUT_DIR"),
    "/switchyard_analytics_descriptor.bin"
));

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
