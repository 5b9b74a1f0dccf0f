//! kubelet APIs (owned by the proto work).
