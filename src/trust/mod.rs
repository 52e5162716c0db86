//! Trust: OpenPGP keys per image-name prefix, and signature verification (ACI detached
//! signatures, containers-image "simple signing").
//!
//! Key store layout (as rkt's trustedkeys), under `<ark dir>/trust` ([`trust_dir`]):
//! `prefixes/<escaped prefix>/<FINGERPRINT>` and `root/<FINGERPRINT>`, each file one
//! ASCII-armored public key, written atomically. A prefix key is trusted for every image name
//! equal to the prefix or below it by whole path components (`example.com/app` covers
//! `example.com/app` and `example.com/app/db`, not `example.com/application`); a root key is
//! trusted for every name.

// The verification API is used by the image fetchers (registry, ACI, OCI layouts) as they land.
#![allow(dead_code)]

pub mod cli;
pub mod keys;
pub mod signing;

use std::fmt;
use std::path::{Path, PathBuf};

use keys::KeySet;

/// Upper-case hex fingerprint of an OpenPGP primary key (what `gpg --fingerprint` shows, without spaces).
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Fingerprint(pub String);

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The key store directory inside ark's data directory.
pub fn trust_dir(ark_dir: &Path) -> PathBuf {
    ark_dir.join("trust")
}

/// Verifies a detached OpenPGP signature (armored or binary, e.g. an ACI's `.aci.asc`) over the
/// file `data`, against the keys trusted for `image_name` (a prefix key or a root key).
/// Returns the fingerprint of the primary key that made the signature.
pub fn verify_detached(
    trust_dir: &Path,
    image_name: &str,
    data: &Path,
    signature: &Path,
) -> anyhow::Result<Fingerprint> {
    let keys = KeySet::load_for(trust_dir, image_name)?;
    let sig = std::fs::read(signature)
        .map_err(|e| anyhow::anyhow!("reading signature {}: {e}", signature.display()))?;
    let file = std::fs::File::open(data)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", data.display()))?;
    signing::verify_detached_with(&keys, image_name, std::io::BufReader::new(file), &sig)
}

/// Verifies containers-image "simple signing" signatures for `manifest_digest`, read from the
/// lookaside layout `skopeo copy --sign-by` writes: `<signature_dir>/<REPO>@sha256=<hex>/signature-N`
/// (REPO without the registry host). `docker_reference` is `HOST[:PORT]/REPO[:TAG]` as fetched;
/// one signature must be made by a key trusted for `HOST[:PORT]/REPO` and name this digest and a
/// matching reference.
pub fn verify_simple_signing(
    trust_dir: &Path,
    docker_reference: &str,
    manifest_digest: &str,
    signature_dir: &Path,
) -> anyhow::Result<Fingerprint> {
    let reference = signing::DockerReference::parse(docker_reference)?;
    let keys = KeySet::load_for(trust_dir, &reference.name())?;
    let sigs = signing::read_lookaside(signature_dir, &reference, manifest_digest)?;
    signing::verify_simple_signing_with(&keys, &reference, manifest_digest, &sigs)
}
