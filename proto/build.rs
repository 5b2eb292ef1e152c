//! Generates the protobuf messages with the vendored `protoc`, so no system install is needed.
//! The cluster's gRPC services are generated only with the `grpc` feature, so that crates
//! that need only the messages (`common`, and through it `sampler` and `kernels`) never
//! build tonic.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let grpc = std::env::var_os("CARGO_FEATURE_GRPC").is_some();
    let mut files = vec!["proto/schema.proto"];
    if grpc {
        files.push("proto/cluster.proto");
    }
    for f in ["proto/schema.proto", "proto/cluster.proto"] {
        println!("cargo:rerun-if-changed={f}");
    }
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);
    // Ordered maps: the replicated state encodes to the same bytes on every replica.
    config.btree_map(["."]);
    tonic_prost_build::configure()
        .build_server(grpc)
        .build_client(grpc)
        .compile_with_config(config, &files, &["proto"])?;
    Ok(())
}
