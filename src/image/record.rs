//! The image records the store keeps in its index and the format importers produce: the one
//! module both use (the store calls the importers, so they cannot import the store).

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::digest::Digest;
use super::ImageId;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageKind {
    /// An OCI or Docker schema2 image: manifest, config, layers.
    Oci,
    /// An appc ACI: one tar with `manifest` and `rootfs/`.
    Aci,
}

/// One layer blob as the manifest lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Layer {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
    /// Digest of the uncompressed tar (the config's `rootfs.diff_ids`), checked when rendering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff_id: Option<Digest>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ImageRecord {
    pub id: ImageId,
    pub kind: ImageKind,
    /// The OCI manifest, or the appc image manifest extracted from the ACI.
    pub manifest: Digest,
    pub manifest_media_type: String,
    /// The OCI config blob; for an ACI, the same as `manifest`.
    pub config: Digest,
    /// Layers bottom-up; for an ACI, the ACI file itself.
    pub layers: Vec<Layer>,
    /// Total bytes of the image's blobs.
    pub size: u64,
    /// What it was fetched as (`docker://...`, `oci-layout:...`).
    pub source: String,
    /// Seconds since the epoch.
    pub imported: u64,
}

impl ImageRecord {
    pub(crate) fn blobs(&self) -> impl Iterator<Item = &Digest> {
        [&self.manifest, &self.config]
            .into_iter()
            .chain(self.layers.iter().map(|l| &l.digest))
    }
}

/// One image as `ark image list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ImageInfo {
    pub id: ImageId,
    pub kind: ImageKind,
    pub names: Vec<String>,
    pub size: u64,
    pub imported: u64,
    pub source: String,
}

/// What an importer hands to the store once every blob is staged and verified.
pub(crate) struct Imported {
    pub record: ImageRecord,
    pub names: Vec<String>,
}

/// Manifests, configs and index files are small; a bigger one is hostile.
pub(crate) const MAX_JSON: u64 = 4 << 20;

pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
