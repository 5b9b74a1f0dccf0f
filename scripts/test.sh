#!/usr/bin/env bash
# Runs every test of the workspace: unit tests, the root-only simulated-node tests and the QEMU
# igb VM suite (which installs QEMU 10 and a Debian kernel on first use, then caches them).
# Extra arguments go to `cargo test` (e.g. `scripts/test.sh -p sriov`).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "scripts/test.sh: the tests need root (network namespaces, mounts, VMs)" >&2
    exit 1
fi

missing=()
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v nsenter >/dev/null 2>&1 || missing+=(util-linux)
command -v cargo >/dev/null 2>&1 || { echo "scripts/test.sh: cargo (rustup) is required" >&2; exit 1; }
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

# Remove labs left behind by a killed earlier run (their owner process is gone).
cargo run --locked -q -p sriov-e2e --bin sriov-lab -- gc || true

# CNI end-to-end tests: Debian's containernetworking-plugins (static, host-local, host-device),
# podman and runc, busybox-static.
e2e/scripts/install-cni-test-deps.sh
# Daemon end-to-end tests: promtool (Debian's prometheus package) lints /metrics.
e2e/scripts/install-daemon-test-deps.sh

cargo test --workspace --locked --no-fail-fast "$@"
