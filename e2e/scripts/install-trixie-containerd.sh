#!/usr/bin/env bash
# Makes the Debian trixie root the NRI tests run containerd 1.7 (and runc) from (idempotent,
# instant when cached): Debian bookworm's containerd 1.6 has no NRI plugins, trixie's 1.7 has
# them. The root is built once with debootstrap (from bookworm's own package) and cached; the
# tests never change it (each one runs on an overlay of it). Prints the root's path.
#
# Environment: SRIOV_LAB_CACHE (default /var/cache/sriov-lab). The Debian mirror is the one apt
# is configured with (/etc/apt/sources.list*), the suite trixie.
set -euo pipefail

cache="${SRIOV_LAB_CACHE:-/var/cache/sriov-lab}"
# Bump the version whenever the package list changes: a new name means a fresh root.
packages="containerd,runc"
root="$cache/trixie-containerd-v1"

if [ -f "$root/.complete" ]; then
    echo "$root"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "install-trixie-containerd.sh: needs root (debootstrap)" >&2
    exit 1
fi
mkdir -p "$cache"
# One builder at a time; a second caller waits and then finds the finished root.
exec 9>"$cache/.trixie-containerd.lock"
flock 9
if [ -f "$root/.complete" ]; then
    echo "$root"
    exit 0
fi

if ! command -v debootstrap >/dev/null 2>&1; then
    # Tests install in parallel: one apt at a time (apt itself refuses, not waits).
    exec 8>/var/lock/sriov-rs-apt.lock && flock 8
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
fi

# The Debian archive apt uses for this host's own suite (deb822 `.sources` or one-line
# `.list` entries); trixie is served by the same archive.
codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
mirror="$(
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] && cat "$f" && echo
    done | awk -v suite="$codename" '
        # one-line format: deb [options] URI SUITE COMPONENTS...
        $1 == "deb" {
            i = 2
            if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
            if ($(i + 1) == suite) { print $i; exit }
            next
        }
        # deb822 format: a stanza per paragraph
        /^[[:space:]]*$/ { uris = ""; suites = ""; next }
        tolower($1) == "uris:" { uris = $2 }
        tolower($1) == "suites:" { for (j = 2; j <= NF; j++) suites = suites " " $j " " }
        uris != "" && index(suites, " " suite " ") { print uris; exit }
    '
)"
if [ -z "$mirror" ]; then
    echo "install-trixie-containerd.sh: no Debian mirror for $codename in /etc/apt/sources.list*" >&2
    exit 1
fi

tmp="$root.tmp.$$"
rm -rf "$tmp"
trap 'rm -rf "$tmp"' EXIT
start=$SECONDS
# minbase: apt, dpkg and the essentials; containerd pulls in runc (and containerd's own shim).
debootstrap --variant=minbase --include="$packages" \
    --keyring=/usr/share/keyrings/debian-archive-keyring.gpg \
    trixie "$tmp" "$mirror" >"$cache/trixie-containerd.debootstrap.log" 2>&1 || {
    echo "install-trixie-containerd.sh: debootstrap failed; see $cache/trixie-containerd.debootstrap.log" >&2
    tail -n 20 "$cache/trixie-containerd.debootstrap.log" >&2
    exit 1
}
# The downloaded packages are not needed any more.
rm -rf "$tmp"/var/cache/apt/archives/*.deb "$tmp"/var/lib/apt/lists/*
{
    echo "packages: $packages"
    echo "built in: $((SECONDS - start)) s"
    chroot "$tmp" containerd --version
    chroot "$tmp" runc --version | head -n 1
} >"$tmp/.complete"
mv "$tmp" "$root"
trap - EXIT
echo "$root"
