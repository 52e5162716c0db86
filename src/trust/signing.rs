//! Signature checks: detached OpenPGP signatures (ACI) and containers-image "simple signing"
//! (what `skopeo copy --sign-by` writes). These functions take their keys as a [`KeySet`] so the
//! unprivileged fetch child can run them without reading the key store itself.

use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use pgp::composed::{Deserializable, DetachedSignature, Message, SignedPublicKey};
use pgp::packet::{Signature, SignatureType};
use pgp::types::{KeyDetails, VerifyingKey};
use serde::Deserialize;

use super::keys::{fingerprint_of, KeySet};
use super::Fingerprint;

/// The one `critical.type` simple signing defines.
const ATOMIC_SIGNATURE_TYPE: &str = "atomic container signature";
/// Upper bound for a signature file and its payload (real ones are well under 4 KiB).
const MAX_SIGNATURE_LEN: u64 = 1 << 20;
/// At most this many `signature-N` files are read per manifest.
const MAX_SIGNATURES: usize = 64;

/// A parsed `HOST[:PORT]/REPO[:TAG|@DIGEST]` reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerReference {
    /// Registry host with optional port, as written (`docker.io` for Docker Hub).
    pub host: String,
    /// Repository path below the host (`library/busybox`).
    pub repo: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl DockerReference {
    /// Parses a reference. A first component without '.' or ':' (and not `localhost`) means
    /// Docker Hub, as with `docker pull` (`busybox` = `docker.io/library/busybox`).
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |why: &str| anyhow!("invalid image reference {s:?}: {why}");
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => {
                let hex = d
                    .strip_prefix("sha256:")
                    .ok_or_else(|| bad("digest must be sha256:<64 hex digits>"))?;
                if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                    return Err(bad("digest must be sha256:<64 lower-case hex digits>"));
                }
                (r, Some(d.to_string()))
            }
            None => (s, None),
        };
        let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (path, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (
                &rest[..last_slash + i],
                Some(rest[last_slash + i + 1..].to_string()),
            ),
            None => (rest, None),
        };
        if let Some(t) = &tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && !t.starts_with(['.', '-'])
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-');
            if !ok {
                return Err(bad("tag must be [A-Za-z0-9_.-], at most 128 characters"));
            }
        }
        let (host, repo) = match path.split_once('/') {
            Some((h, r)) if h.contains('.') || h.contains(':') || h == "localhost" => {
                (h.to_string(), r.to_string())
            }
            Some(_) => ("docker.io".to_string(), path.to_string()),
            None => ("docker.io".to_string(), format!("library/{path}")),
        };
        if host.is_empty()
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
        {
            return Err(bad("bad registry host"));
        }
        let component_ok = |c: &str| {
            !c.is_empty()
                && c.bytes().all(|b| {
                    b.is_ascii_lowercase()
                        || b.is_ascii_digit()
                        || b == b'.'
                        || b == b'_'
                        || b == b'-'
                })
                && c.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        };
        if !repo.split('/').all(component_ok) {
            return Err(bad(
                "repository components must be lower-case [a-z0-9._-], starting alphanumeric",
            ));
        }
        Ok(DockerReference {
            host,
            repo,
            tag,
            digest,
        })
    }

    /// `HOST[:PORT]/REPO`: the image name, and the prefix signatures are trusted for.
    pub fn name(&self) -> String {
        format!("{}/{}", self.host, self.repo)
    }

    /// The tag to resolve when neither tag nor digest was given.
    pub fn tag_or_latest(&self) -> Option<&str> {
        match (&self.tag, &self.digest) {
            (Some(t), _) => Some(t),
            (None, Some(_)) => None,
            (None, None) => Some("latest"),
        }
    }
}

impl std::fmt::Display for DockerReference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.name())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// The JSON a simple signing signature signs.
#[derive(Debug, Deserialize)]
pub struct SimpleSigningPayload {
    pub critical: Critical,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Critical {
    #[serde(rename = "type")]
    pub kind: String,
    pub image: CriticalImage,
    pub identity: CriticalIdentity,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CriticalImage {
    #[serde(rename = "docker-manifest-digest")]
    pub docker_manifest_digest: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CriticalIdentity {
    #[serde(rename = "docker-reference")]
    pub docker_reference: String,
}

/// The lookaside directory for one manifest: `<dir>/<REPO>@sha256=<hex>`.
pub fn lookaside_dir(signature_dir: &Path, reference: &DockerReference, digest: &str) -> PathBuf {
    let (algo, hex) = digest.split_once(':').unwrap_or(("sha256", digest));
    signature_dir.join(format!("{}@{algo}={hex}", reference.repo))
}

/// Reads `signature-1`, `signature-2`, ... for `digest` until one is missing.
pub fn read_lookaside(
    signature_dir: &Path,
    reference: &DockerReference,
    digest: &str,
) -> Result<Vec<Vec<u8>>> {
    let dir = lookaside_dir(signature_dir, reference, digest);
    let mut sigs = Vec::new();
    for n in 1..=MAX_SIGNATURES {
        let path = dir.join(format!("signature-{n}"));
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let mut data = Vec::new();
        file.take(MAX_SIGNATURE_LEN + 1)
            .read_to_end(&mut data)
            .with_context(|| format!("reading {}", path.display()))?;
        if data.len() as u64 > MAX_SIGNATURE_LEN {
            bail!("{} is too large for a signature", path.display());
        }
        sigs.push(data);
    }
    Ok(sigs)
}

/// Hint appended to refusals.
fn trust_hint(name: &str) -> String {
    format!(
        "trust the signer with `ark trust --prefix {name} KEYFILE`, or skip verification with --insecure-options=image"
    )
}

/// Issuers named by a signature packet, for messages.
fn issuer_of(sig: &Signature) -> String {
    if let Some(fp) = sig.issuer_fingerprint().first() {
        return format!("{fp:X}");
    }
    if let Some(id) = sig.issuer_key_id().first() {
        return format!("key ID {}", hex::encode_upper(id.as_ref()));
    }
    "an unnamed key".to_string()
}

/// The trusted keys' signing-capable key material: (primary fingerprint, verifier).
fn verifiers(keys: &KeySet) -> Result<Vec<(Fingerprint, SignedPublicKey)>> {
    keys.keys
        .iter()
        .map(|k| Ok((k.fingerprint.clone(), k.key()?)))
        .collect()
}

/// When the key expired (seconds since the epoch), per its newest self-signature, if it has.
fn expired_at(key: &SignedPublicKey) -> Option<u64> {
    let created = u64::from(key.primary_key.created_at().as_secs());
    let newest = key
        .details
        .users
        .iter()
        .flat_map(|u| u.signatures.iter())
        .chain(key.details.direct_signatures.iter())
        .filter(|s| names_key(s, key))
        .filter_map(|s| s.created().map(|c| (c.as_secs(), s.key_expiration_time())))
        .max_by_key(|(created, _)| *created)?;
    let lifetime = u64::from(newest.1?.as_secs());
    let now = u64::from(pgp::types::Timestamp::now().as_secs());
    (lifetime != 0 && created + lifetime <= now).then_some(created + lifetime)
}

/// Tries the primary key and each subkey bound for signing.
fn verify_with_key(
    key: &SignedPublicKey,
    mut check: impl FnMut(&dyn VerifyingKey) -> bool,
) -> bool {
    if check(key) {
        return true;
    }
    key.public_subkeys
        .iter()
        .filter(|sk| sk.signatures.iter().any(|s| s.key_flags().sign()))
        .any(|sk| check(sk))
}

/// Whether `sig` claims to be from `key` (primary or a subkey). Signatures with no issuer match nothing.
fn names_key(sig: &Signature, key: &SignedPublicKey) -> bool {
    let fps: Vec<String> = std::iter::once(fingerprint_of(key).0)
        .chain(key.public_subkeys.iter().map(|sk| fingerprint_of(sk).0))
        .collect();
    let ids: Vec<Vec<u8>> = std::iter::once(key.legacy_key_id().as_ref().to_vec())
        .chain(
            key.public_subkeys
                .iter()
                .map(|sk| sk.legacy_key_id().as_ref().to_vec()),
        )
        .collect();
    sig.issuer_fingerprint()
        .iter()
        .any(|fp| fps.contains(&format!("{fp:X}")))
        || sig
            .issuer_key_id()
            .iter()
            .any(|id| ids.contains(&id.as_ref().to_vec()))
}

/// Verifies a detached signature `sig` (armored or binary) over `data` with `keys`.
pub fn verify_detached_with(
    keys: &KeySet,
    image_name: &str,
    data: impl Read,
    sig: &[u8],
) -> Result<Fingerprint> {
    let (sig, _) = DetachedSignature::from_reader_single(sig)
        .map_err(|e| anyhow!("signature for {image_name} is not an OpenPGP signature: {e}"))?;
    let sig = sig.signature;
    if !matches!(
        sig.typ(),
        Some(SignatureType::Binary) | Some(SignatureType::Text)
    ) {
        bail!("signature for {image_name} is not a data signature");
    }
    let verifiers = verifiers(keys)?;
    let Some((fp, key)) = verifiers.iter().find(|(_, k)| names_key(&sig, k)) else {
        bail!(
            "signature for {image_name} was made by {}, which is not trusted for {image_name}: {}",
            issuer_of(&sig),
            trust_hint(image_name)
        );
    };
    // The data can only be read once: verify with the key the signature names.
    let mut data = Some(data);
    let mut err = None;
    let ok = verify_with_key(key, |vk| {
        if !names_key_part(&sig, vk) {
            return false;
        }
        let Some(d) = data.take() else { return false };
        match sig.verify(&VkRef(vk), d) {
            Ok(()) => true,
            Err(e) => {
                err = Some(e.to_string());
                false
            }
        }
    });
    if !ok {
        bail!(
            "bad signature for {image_name} from key {fp}: {}",
            err.unwrap_or_else(|| "no signing key matches".into())
        );
    }
    if let Some(at) = expired_at(key) {
        bail!("signature for {image_name} is from key {fp}, which expired (at {at} s since the epoch)");
    }
    Ok(fp.clone())
}

/// Whether `sig` names this particular (sub)key.
fn names_key_part(sig: &Signature, vk: &dyn VerifyingKey) -> bool {
    let fp = format!("{:X}", vk.fingerprint());
    let id = vk.legacy_key_id();
    let by_fp = sig.issuer_fingerprint();
    let by_id = sig.issuer_key_id();
    by_fp.iter().any(|f| format!("{f:X}") == fp) || by_id.iter().any(|i| i.as_ref() == id.as_ref())
}

/// `&dyn VerifyingKey` as a sized `impl VerifyingKey` (pgp's detached verify takes one).
#[derive(Debug)]
struct VkRef<'a>(&'a dyn VerifyingKey);

impl KeyDetails for VkRef<'_> {
    fn version(&self) -> pgp::types::KeyVersion {
        self.0.version()
    }
    fn fingerprint(&self) -> pgp::types::Fingerprint {
        self.0.fingerprint()
    }
    fn legacy_key_id(&self) -> pgp::types::KeyId {
        self.0.legacy_key_id()
    }
    fn algorithm(&self) -> pgp::crypto::public_key::PublicKeyAlgorithm {
        self.0.algorithm()
    }
    fn created_at(&self) -> pgp::types::Timestamp {
        self.0.created_at()
    }
    fn legacy_v3_expiration_days(&self) -> Option<u16> {
        self.0.legacy_v3_expiration_days()
    }
    fn public_params(&self) -> &pgp::types::PublicParams {
        self.0.public_params()
    }
}

impl VerifyingKey for VkRef<'_> {
    fn verify(
        &self,
        hash: pgp::crypto::hash::HashAlgorithm,
        data: &[u8],
        sig: &pgp::types::SignatureBytes,
    ) -> pgp::errors::Result<()> {
        self.0.verify(hash, data, sig)
    }
}

/// Parses a simple signing signature: returns the payload and the signature packet, checking the
/// OpenPGP signature with whichever of `verifiers` it names. `Err` carries a reason for the user.
fn open_signed_message(
    data: &[u8],
    verifiers: &[(Fingerprint, SignedPublicKey)],
    name: &str,
) -> std::result::Result<(Fingerprint, Vec<u8>), String> {
    let (msg, _) = Message::from_reader(Cursor::new(data.to_vec()))
        .map_err(|e| format!("not an OpenPGP message: {e}"))?;
    let mut msg = msg
        .decompress()
        .map_err(|e| format!("cannot decompress: {e}"))?;
    let mut payload = Vec::new();
    msg.by_ref()
        .take(MAX_SIGNATURE_LEN + 1)
        .read_to_end(&mut payload)
        .map_err(|e| format!("reading payload: {e}"))?;
    if payload.len() as u64 > MAX_SIGNATURE_LEN {
        return Err("payload too large".into());
    }
    let sig = match &msg {
        Message::Signed { reader, .. } if reader.num_signatures() == 1 => reader
            .signature(0)
            .cloned()
            .ok_or("no signature packet after the payload")?,
        Message::Signed { .. } => return Err("expected exactly one signature".into()),
        _ => return Err("not a signed message".into()),
    };
    for (fp, key) in verifiers {
        if !names_key(&sig, key) {
            continue;
        }
        if verify_with_key(key, |vk| names_key_part(&sig, vk) && msg.verify(vk).is_ok()) {
            if let Some(at) = expired_at(key) {
                return Err(format!(
                    "made by key {fp}, which expired (at {at} s since the epoch)"
                ));
            }
            return Ok((fp.clone(), payload));
        }
        return Err(format!("bad signature from key {fp}"));
    }
    Err(format!(
        "made by {}, which is not trusted for {name}",
        issuer_of(&sig)
    ))
}

/// Checks that a verified payload is about `reference` and `digest`.
fn check_payload(
    payload: &[u8],
    reference: &DockerReference,
    digest: &str,
) -> std::result::Result<(), String> {
    let p: SimpleSigningPayload = serde_json::from_slice(payload)
        .map_err(|e| format!("payload is not a simple signing document: {e}"))?;
    if p.critical.kind != ATOMIC_SIGNATURE_TYPE {
        return Err(format!("unknown signature type {:?}", p.critical.kind));
    }
    if p.critical.image.docker_manifest_digest != digest {
        return Err(format!(
            "signs manifest {:?}, not the fetched {digest}",
            p.critical.image.docker_manifest_digest
        ));
    }
    // As containers-image's matchRepoDigestOrExact: a tag must match exactly; a by-digest pull
    // accepts any reference to the same repository (the digest check above pins the content).
    let signed = DockerReference::parse(&p.critical.identity.docker_reference)
        .map_err(|e| format!("signed reference: {e}"))?;
    let ok = match &reference.tag {
        Some(_) => signed.name() == reference.name() && signed.tag == reference.tag,
        None => signed.name() == reference.name(),
    };
    if !ok {
        return Err(format!(
            "signs {:?}, not {reference}",
            p.critical.identity.docker_reference
        ));
    }
    Ok(())
}

/// Verifies simple signing signatures `sigs` (the contents of `signature-N` files) for the
/// manifest `digest` of `reference`: one must be made by a key in `keys` and name this digest
/// and reference. The error lists why each signature was refused.
pub fn verify_simple_signing_with(
    keys: &KeySet,
    reference: &DockerReference,
    digest: &str,
    sigs: &[Vec<u8>],
) -> Result<Fingerprint> {
    let name = reference.name();
    if sigs.is_empty() {
        bail!(
            "{reference} ({digest}) is not signed: no simple signing signature in the lookaside directory (`skopeo copy --sign-by` writes one; give its directory with --signature-dir), or skip verification with --insecure-options=image"
        );
    }
    if keys.keys.is_empty() {
        bail!("no key is trusted for {name}: {}", trust_hint(&name));
    }
    let verifiers = verifiers(keys)?;
    let mut reasons = Vec::new();
    let mut untrusted = false;
    for (i, data) in sigs.iter().enumerate() {
        let opened = open_signed_message(data, &verifiers, &name);
        untrusted |= opened.as_ref().is_err_and(|e| e.contains("not trusted"));
        let outcome = opened
            .and_then(|(fp, payload)| check_payload(&payload, reference, digest).map(|()| fp));
        match outcome {
            Ok(fp) => return Ok(fp),
            Err(why) => reasons.push(format!("signature-{}: {why}", i + 1)),
        }
    }
    let hint = if untrusted {
        trust_hint(&name)
    } else {
        "skip verification with --insecure-options=image if you accept that".to_string()
    };
    bail!(
        "no valid signature for {reference} ({digest}): {}; {hint}",
        reasons.join("; "),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_references() {
        let r = DockerReference::parse("127.0.0.1:5000/test/busybox:v1").unwrap();
        assert_eq!(r.host, "127.0.0.1:5000");
        assert_eq!(r.repo, "test/busybox");
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert_eq!(r.name(), "127.0.0.1:5000/test/busybox");
        let d = format!("sha256:{}", "a".repeat(64));
        let r = DockerReference::parse(&format!("localhost:5000/bb@{d}")).unwrap();
        assert_eq!(r.digest.as_deref(), Some(d.as_str()));
        assert_eq!(r.tag, None);
        assert_eq!(r.tag_or_latest(), None);
        let r = DockerReference::parse("busybox").unwrap();
        assert_eq!(r.name(), "docker.io/library/busybox");
        assert_eq!(r.tag_or_latest(), Some("latest"));
        assert!(DockerReference::parse("example.com/../x").is_err());
        assert!(DockerReference::parse("example.com/Upper").is_err());
        assert!(DockerReference::parse("example.com/x@sha256:zz").is_err());
        assert!(DockerReference::parse("example.com/x:bad tag").is_err());
    }

    #[test]
    fn payload_must_name_digest_and_reference() {
        let d = format!("sha256:{}", "b".repeat(64));
        let r = DockerReference::parse("h:1/a/b:v1").unwrap();
        let doc = |re: &str, dg: &str| {
            serde_json::json!({"critical": {"type": ATOMIC_SIGNATURE_TYPE,
                "image": {"docker-manifest-digest": dg}, "identity": {"docker-reference": re}},
                "optional": {}})
            .to_string()
        };
        assert!(check_payload(doc("h:1/a/b:v1", &d).as_bytes(), &r, &d).is_ok());
        assert!(check_payload(doc("h:1/a/b:v2", &d).as_bytes(), &r, &d).is_err());
        assert!(check_payload(doc("h:1/a/c:v1", &d).as_bytes(), &r, &d).is_err());
        let other = format!("sha256:{}", "c".repeat(64));
        assert!(check_payload(doc("h:1/a/b:v1", &other).as_bytes(), &r, &d).is_err());
        let by_digest = DockerReference::parse(&format!("h:1/a/b@{d}")).unwrap();
        assert!(check_payload(doc("h:1/a/b:v9", &d).as_bytes(), &by_digest, &d).is_ok());
    }
}
