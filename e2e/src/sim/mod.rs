//! Simulated node (owned by the lab work).
