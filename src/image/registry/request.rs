//! What the privileged parent and the unprivileged fetch child exchange: the request and the
//! result of a pull (serialized over the pipes of [`crate::image::privsep`]).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::client::ClientSettings;
use crate::trust::keys::KeySet;

/// What was fetched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fetched {
    /// `sha256:<hex>` of the image manifest written to the layout (the platform's one).
    pub manifest_digest: String,
    /// `HOST[:PORT]/REPO`.
    pub name: String,
    /// The tag asked for (`latest` if neither tag nor digest was given).
    pub tag: Option<String>,
    /// When the reference named an image index / manifest list: its digest (what signatures
    /// cover). The index is kept as a blob of the layout too.
    #[serde(default)]
    pub index_digest: Option<String>,
}

/// Everything the network half needs; what the parent hands the unprivileged child.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PullRequest {
    pub reference: String,
    pub client: ClientSettings,
    pub platform: Option<String>,
    /// Keys trusted for the image name; None = don't verify (`--insecure-options=image`).
    pub keys: Option<KeySet>,
    /// Layer digests not to download: see [`FetchOptions::have_blobs`](super::FetchOptions::have_blobs).
    #[serde(default)]
    pub have_blobs: BTreeSet<String>,
    /// Bytes the destination's filesystem can take above ark's free-space reserve: an image
    /// whose blobs declare more is refused before any is downloaded. (The writer of the blobs
    /// enforces the reserve on its own as well.)
    #[serde(default)]
    pub room: Option<u64>,
}
