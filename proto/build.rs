//! Generates the kubelet API bindings with tonic-prost-build.
//!
//! protoc comes from the `protoc-bin-vendored` crate (handed to prost-build
//! directly, so neither a system package nor `PROTOC` is needed).

const PROTOS: &[&str] = &[
    "proto/deviceplugin/v1beta1/api.proto",
    "proto/pluginregistration/v1/api.proto",
    "proto/podresources/v1/api.proto",
];

/// A subset of the Container Runtime Interface (kubelet's client side of the runtime), for the
/// tests that drive containerd as kubelet does (feature `cri`).
const CRI_PROTO: &str = "proto/cri/runtime/v1/api.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut protos = PROTOS.to_vec();
    if std::env::var_os("CARGO_FEATURE_CRI").is_some() {
        protos.push(CRI_PROTO);
    }
    for p in PROTOS.iter().chain([&CRI_PROTO]) {
        println!("cargo:rerun-if-changed={p}");
    }
    println!("cargo:rerun-if-changed=build.rs");

    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_with_config(config, &protos, &["proto"])?;
    Ok(())
}
