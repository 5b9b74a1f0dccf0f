#!/usr/bin/env bash
# Builds the sriov-rs image with podman (daemonless; `apt-get install podman` on Debian), or
# buildah when podman is missing.
#   scripts/build-image.sh [--prebuilt | --binaries-only] [TAG]
# Default: builds the binaries inside the Rust image (Containerfile stage `builder`).
# --prebuilt: builds static binaries on this machine (cargo, crt-static) and only copies them
# into the empty base, which needs no image registry at all.
# --binaries-only: builds those static binaries into target/image/bin and stops (the daemon
# benchmark measures the binary the image ships).
set -euo pipefail
cd "$(dirname "$0")/.."

prebuilt=false
binaries_only=false
case "${1:-}" in
    --prebuilt) prebuilt=true; shift ;;
    --binaries-only) prebuilt=true; binaries_only=true; shift ;;
esac
tag="${1:-ghcr.io/sriov-rs/sriov-rs:$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' charts/sriov-rs/Chart.yaml)}"

if $binaries_only; then
    build=()
elif command -v podman >/dev/null 2>&1; then
    build=(podman build)
elif command -v buildah >/dev/null 2>&1; then
    build=(buildah bud)
else
    echo "build-image.sh: needs podman or buildah (apt-get install podman)" >&2
    exit 1
fi

if $prebuilt; then
    # The Containerfile's context excludes target/ except target/image.
    out=target/image/bin
    scripts/build-static.sh "$out"
    for b in sriov-device-plugin sriov-node-state sriov sriov-install-cni; do
        if ldd "$out/$b" 2>&1 | grep -q '=>'; then
            echo "build-image.sh: $b is not static" >&2
            exit 1
        fi
    done
    if ! readelf -h "$out/sriov" | grep -q 'Type: *EXEC'; then
        echo "build-image.sh: the CNI plugin is position-independent (see build-static.sh)" >&2
        exit 1
    fi
    # The privileged daemon holds no Kubernetes client (the sidecar does): check that the linker
    # kept it out even though both are built in one cargo call.
    if grep -qa -e rustls -e kube_client "$out/sriov-device-plugin"; then
        echo "build-image.sh: sriov-device-plugin links a Kubernetes client (rustls/kube)" >&2
        exit 1
    fi
    if $binaries_only; then
        echo "built $out"
        exit 0
    fi
    "${build[@]}" -f Containerfile --target prebuilt -t "$tag" .
else
    "${build[@]}" -f Containerfile -t "$tag" .
fi
echo "built $tag"
