//! QEMU igb lab (owned by the VM work).
