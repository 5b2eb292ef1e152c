//! Generates the protobuf messages with the vendored `protoc`, so no system install is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let files = ["proto/schema.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(false)
        .compile_with_config(config, &files, &["proto"])?;
    Ok(())
}
