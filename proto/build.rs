//! Generates the kubelet and containerd API bindings with tonic-prost-build.
//!
//! protoc comes from the `protoc-bin-vendored` crate (handed to prost-build
//! directly, so neither a system package nor `PROTOC` is needed).

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "proto/deviceplugin/v1beta1/api.proto",
    "proto/pluginregistration/v1/api.proto",
    "proto/podresources/v1/api.proto",
];

/// A subset of the Container Runtime Interface (kubelet's client side of the runtime), for the
/// tests that drive containerd as kubelet does (feature `cri`).
const CRI_PROTO: &str = "proto/cri/runtime/v1/api.proto";

/// The kubelet's DRA plugin API, both versions (feature `dra`).
const DRA_PROTOS: &[&str] = &["proto/dra/v1/api.proto", "proto/dra/v1beta1/api.proto"];

/// The DRA health API. Its proto package is `v1`, like the pod resources API's: generated
/// apart (into `OUT_DIR/drahealth`), or prost would merge both into one `v1` module.
const DRA_HEALTH_PROTO: &str = "proto/drahealth/v1/api.proto";

/// containerd's NRI plugin API and ttrpc's envelope (feature `nri`): messages only, the
/// transport is ours (`nri::ttrpc`).
const NRI_PROTOS: &[&str] = &["proto/nri/v1alpha1/api.proto", "proto/ttrpc/request.proto"];

fn feature(name: &str) -> bool {
    std::env::var_os(format!("CARGO_FEATURE_{}", name.to_uppercase())).is_some()
}

fn config() -> Result<tonic_prost_build::Config, Box<dyn std::error::Error>> {
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    Ok(config)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let all = PROTOS
        .iter()
        .chain([&CRI_PROTO, &DRA_HEALTH_PROTO])
        .chain(DRA_PROTOS)
        .chain(NRI_PROTOS);
    for p in all {
        println!("cargo:rerun-if-changed={p}");
    }
    println!("cargo:rerun-if-changed=build.rs");

    let mut protos = PROTOS.to_vec();
    if feature("cri") {
        protos.push(CRI_PROTO);
    }
    if feature("dra") {
        protos.extend_from_slice(DRA_PROTOS);
    }
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_with_config(config()?, &protos, &["proto"])?;

    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    if feature("dra") {
        let dir = out.join("drahealth");
        std::fs::create_dir_all(&dir)?;
        tonic_prost_build::configure()
            .build_server(true)
            .build_client(true)
            .out_dir(&dir)
            .compile_with_config(config()?, &[DRA_HEALTH_PROTO], &["proto"])?;
    }
    if feature("nri") {
        tonic_prost_build::configure()
            .build_server(false)
            .build_client(false)
            .compile_with_config(config()?, NRI_PROTOS, &["proto"])?;
    }
    Ok(())
}
