#!/usr/bin/env bash
# Installs the Debian packages the daemon's end-to-end tests use (idempotent, quick when
# present): promtool (in Debian's `prometheus` package) lints the daemon's /metrics.
set -euo pipefail
missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
if [ ${#missing[@]} -gt 0 ]; then
    # Tests install in parallel: one apt at a time (apt itself refuses, not waits).
    exec 8>/var/lock/sriov-rs-apt.lock && flock 8
    apt-get update -qq
    # No service is started in a container without systemd; only promtool is used.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
