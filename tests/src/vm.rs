//! Helpers for the vm integration tests.
