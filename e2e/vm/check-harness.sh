#!/bin/sh
# Runs inside the sriov-lab guest (in the chroot of the host root): checks the SR-IOV layout
# that `sriov-lab vm --pfs PFS --vfs VFS [--numa]` promises and the chroot's plumbing.
# Usage: check-harness.sh PFS VFS NUMA(0|1)
# Prints "ok: ..." lines on stdout, problems on stderr; exits 1 on the first failure.
set -u
want_pfs=$1 want_vfs=$2 numa=$3
IP=/usr/sbin/ip
[ -x "$IP" ] || IP=/sbin/ip
fail() { echo "check-harness: FAIL: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }

[ "${SRIOV_LAB_VM:-}" = 1 ] || fail "SRIOV_LAB_VM is not set"
[ -d "${SRIOV_LAB_RESULTS:-/nonexistent}" ] || fail "SRIOV_LAB_RESULTS is not a folder"
echo "check-harness: this line goes to stderr" >&2
if [ -n "${EXPECT_MARKER:-}" ]; then
    [ "$(cat host-marker)" = "$EXPECT_MARKER" ] || fail "host-marker in $(pwd) is not readable"
fi
ok "cwd=$(pwd)"

pfs=0 vfs=0 numa1=0
for pf in /sys/bus/pci/drivers/igb/0000:*; do
    [ -e "$pf/sriov_totalvfs" ] || continue
    pfs=$((pfs + 1))
    addr=${pf##*/}
    [ "$(cat "$pf/vendor"):$(cat "$pf/device")" = "0x8086:0x10c9" ] || fail "$addr is not an 82576"
    [ "$(cat "$pf/sriov_numvfs")" = "$want_vfs" ] || fail "$addr has $(cat "$pf/sriov_numvfs") VFs"
    node=$(cat "$pf/numa_node")
    [ "$node" = 1 ] && numa1=$((numa1 + 1))
    netdev=$(ls "$pf/net")
    [ -n "$netdev" ] || fail "$addr has no netdev"
    i=0
    while [ "$i" -lt "$want_vfs" ]; do
        vf=$(readlink -f "$pf/virtfn$i")
        [ "$(basename "$(readlink -f "$vf/driver")")" = igbvf ] || fail "$vf is not bound to igbvf"
        [ -n "$(ls "$vf/net")" ] || fail "$vf has no netdev"
        [ "$(cat "$vf/numa_node")" = "$node" ] || fail "$vf numa_node differs from its PF's"
        vfs=$((vfs + 1))
        i=$((i + 1))
    done
    if [ "$want_vfs" -gt 0 ]; then
        $IP link show dev "$netdev" | grep -q "^ *vf 0 " || fail "ip link show $netdev has no 'vf 0' line"
    fi
    ok "PF $addr ($netdev) numa_node=$node with $want_vfs VFs"
done
[ "$pfs" = "$want_pfs" ] || fail "found $pfs igb PFs, want $want_pfs"
[ "$vfs" = $((want_pfs * want_vfs)) ] || fail "found $vfs igbvf VFs"
if [ "$numa" = 1 ]; then
    [ "$numa1" = $((want_pfs / 2)) ] || fail "$numa1 PFs on NUMA node 1, want $((want_pfs / 2))"
    ok "NUMA: $numa1 PF(s) on node 1"
fi

# The chroot's plumbing: writable /tmp and /run, network namespaces.
echo x > /tmp/check-harness || fail "/tmp is not writable"
$IP netns add lab-check || fail "ip netns add"
$IP netns exec lab-check $IP link set lo up || fail "ip netns exec"
vf_dev=$(ls /sys/bus/pci/drivers/igbvf/*/net 2>/dev/null | grep -v : | head -n1)
if [ -n "$vf_dev" ]; then
    $IP link set "$vf_dev" netns lab-check || fail "move $vf_dev into a netns"
    $IP -n lab-check link show "$vf_dev" >/dev/null || fail "$vf_dev not in the netns"
    ok "moved $vf_dev into netns lab-check"
fi
$IP netns del lab-check || fail "ip netns del"
echo "pfs=$pfs vfs=$vfs" > "$SRIOV_LAB_RESULTS/harness-summary"
ok "pfs=$pfs vfs=$vfs"
exit "${CHECK_EXIT:-0}"
