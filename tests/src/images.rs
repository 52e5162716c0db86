//! Helpers for the images integration tests.
