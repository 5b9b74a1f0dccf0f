#!/usr/bin/env bash
# Builds the image's four static binaries into OUT (default target/image/bin), for the
# Containerfile's builder stage and scripts/build-image.sh alike.
#   scripts/build-static.sh [OUT]
# glibc is linked statically (crt-static): the Rust toolchain's own target, no musl. The binaries
# never look up users or host names (the API server is reached by the IP in
# KUBERNETES_SERVICE_HOST), so glibc's NSS, which static linking cannot load, is never used. An
# explicit --target keeps build scripts and proc macros dynamic.
#
# The CNI plugin is linked at a fixed address (no PIE), like Debian's CNI plugins and upstream
# sriov-cni: a process started for every pod attachment then skips relocating itself at each
# start (7,700 relocations, ~30 pages copied on write: 0.15-0.2 ms of every call, a quarter of
# its exec-to-exit floor). The long-running daemon and sidecar stay position-independent
# (address randomization where it counts). Only the final crate gets the flag, so the
# dependencies built for the other binaries are reused.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-target/image/bin}"
host="$(rustc -vV | sed -n 's/^host: //p')"
target_dir="${CARGO_TARGET_DIR:-target}"
export RUSTFLAGS="-C target-feature=+crt-static"
export CARGO_TARGET_DIR="$target_dir"
cargo build --release --locked --target "$host" \
    -p sriov-device-plugin -p sriov-node-state -p sriov-deploy-tests \
    --bin sriov-device-plugin --bin sriov-node-state --bin sriov-install-cni
cargo rustc --release --locked --target "$host" -p sriov-cni --bin sriov \
    -- -C relocation-model=static
rm -rf "$out" && mkdir -p "$out"
for b in sriov-device-plugin sriov-node-state sriov sriov-install-cni; do
    cp "$target_dir/$host/release/$b" "$out/"
done
