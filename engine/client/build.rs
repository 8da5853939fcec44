//! Compiles `proto/switchyard/v1/*.proto` (and the unstable
//! `proto/switchyard/analytics/v1alpha1/`) with protox (a pure-Rust protobuf compiler, so no
//! system `protoc` is needed) and generates the tonic client and server code. The encoded
//! descriptor set is kept for the reflection service.

use prost::Message;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        root.join("switchyard/v1/switchyard.proto"),
        root.join("switchyard/v1/access.proto"),
        root.join("switchyard/v1/feed.proto"),
        root.join("switchyard/v1/jobs.proto"),
        root.join("switchyard/v1/clock.proto"),
        root.join("switchyard/v1/backup.proto"),
    ];
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    let descriptors = protox::compile(&files, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("switchyard_v1_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    // Google's error detail types (vendored from googleapis, as tonic-types uses them), only
    // for reflection: so that grpcurl and generic clients can decode every error detail.
    let google = [
        root.join("google/rpc/status.proto"),
        root.join("google/rpc/error_details.proto"),
    ];
    for file in &google {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    std::fs::write(
        out.join("google_rpc_descriptor.bin"),
        protox::compile(&google, [&root])?.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Undecodable requests are INVALID_ARGUMENT, not INTERNAL (src/codec.rs).
        .codec_path("crate::codec::StrictCodec")
        // Per-item errors of the bulk RPC are google.rpc.Status, as tonic-types defines it.
        .extern_path(".google.rpc", "::tonic_types::pb")
        .compile_fds(descriptors)?;
    // The unstable analytics contract: its own descriptor set and module, so `switchyard.v1`
    // stays as it is. `google.type.Date` is written by hand in src/lib.rs (`google_type`).
    let analytics = [root.join("switchyard/analytics/v1alpha1/analytics.proto")];
    for file in analytics
        .iter()
        .chain([&root.join("google/type/date.proto")])
    {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    let descriptors = protox::compile(&analytics, [&root])?;
    std::fs::write(
        out.join("switchyard_analytics_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .codec_path("crate::codec::StrictCodec")
        .extern_path(".google.type", "crate::google_type")
        .compile_fds(descriptors)?;
    Ok(())
}
