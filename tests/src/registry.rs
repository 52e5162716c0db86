//! Helpers for registry/trust integration tests (docker-registry, skopeo, gpg).
