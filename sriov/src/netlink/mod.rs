//! Synchronous rtnetlink (owned by the dataplane work).
