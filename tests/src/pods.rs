//! Helpers for the pods integration tests.
