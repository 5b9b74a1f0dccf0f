#!/bin/sh
# Runs inside an `sriov-lab vm --iommu` guest: binds the first VF to vfio-pci through
# driver_override + drivers_probe and checks its IOMMU group and /dev/vfio/N.
# Exits with $CHECK_EXIT (default 0) when everything holds, 1 otherwise.
set -u
fail() { echo "check-vfio: FAIL: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }

[ -d /sys/kernel/iommu_groups/0 ] || fail "no IOMMU groups (is intel_iommu=on?)"
vf=
for d in /sys/bus/pci/drivers/igbvf/0000:*; do
    [ -e "$d" ] && { vf=${d##*/}; break; }
done
[ -n "$vf" ] || fail "no igbvf VF"
dev=/sys/bus/pci/devices/$vf
group=$(basename "$(readlink -f "$dev/iommu_group")")
[ -n "$group" ] && [ "$group" != iommu_group ] || fail "$vf has no iommu_group"

echo "$vf" > "$dev/driver/unbind" || fail "unbind $vf from igbvf"
echo vfio-pci > "$dev/driver_override" || fail "set driver_override"
echo "$vf" > /sys/bus/pci/drivers_probe || fail "drivers_probe $vf"
driver=$(basename "$(readlink -f "$dev/driver")")
[ "$driver" = vfio-pci ] || fail "$vf is bound to '$driver', not vfio-pci"
[ -c "/dev/vfio/$group" ] || fail "/dev/vfio/$group is missing"
[ -c /dev/vfio/vfio ] || fail "/dev/vfio/vfio is missing"
ok "$vf bound to vfio-pci, iommu group $group, /dev/vfio/$group"
exit "${CHECK_EXIT:-0}"
