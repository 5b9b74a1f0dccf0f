//! Generates the client bindings of the CRI subset in `proto/cri/` (the tests drive containerd
//! with it) with tonic-prost-build; protoc comes from `protoc-bin-vendored`, as in `proto/`.

const PROTOS: &[&str] = &["proto/cri/runtime/v1/api.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for p in PROTOS {
        println!("cargo:rerun-if-changed={p}");
    }
    println!("cargo:rerun-if-changed=build.rs");

    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);

    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .compile_with_config(config, PROTOS, &["proto/cri"])?;
    Ok(())
}
