#!/usr/bin/env bash
# Installs the Debian packages the CNI end-to-end tests use (idempotent, quick when present):
# containernetworking-plugins (static, host-local IPAM; host-device for the benchmark), podman
# and containerd (with its `ctr`) with runc and busybox-static (the real-runtime tests),
# iputils-ping (pods ping each other).
set -euo pipefail
missing=()
[ -x /usr/lib/cni/host-local ] || missing+=(containernetworking-plugins)
command -v podman >/dev/null 2>&1 || missing+=(podman)
command -v containerd >/dev/null 2>&1 || missing+=(containerd)
command -v ping >/dev/null 2>&1 || missing+=(iputils-ping)
# podman on this machine needs runc (crun 1.8 refuses hybrid cgroups), and containerd runs its
# sandboxes with it; the container's rootfs (and the pause image's layer) is a static busybox.
command -v runc >/dev/null 2>&1 || missing+=(runc)
# Static: a dynamically linked busybox (Debian's `busybox`) cannot run in an empty rootfs.
if [ ! -x /bin/busybox ] || ldd /bin/busybox >/dev/null 2>&1; then missing+=(busybox-static); fi
if [ ${#missing[@]} -gt 0 ]; then
    # Tests install in parallel: one apt at a time (apt itself refuses, not waits).
    exec 8>/var/lock/sriov-rs-apt.lock && flock 8
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
