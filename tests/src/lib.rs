//! Shared helpers for ark integration tests (real binaries, real components).
