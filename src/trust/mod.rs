//! Trust: OpenPGP keys per image-name prefix, and signature verification (ACI detached
//! signatures, containers-image "simple signing").
//!
//! Key store layout (as rkt's trustedkeys), under `<ark dir>/trust` ([`trust_dir`]):
//! `prefixes/<escaped prefix>/<FINGERPRINT>` and `root/<FINGERPRINT>`, each file one
//! ASCII-armored public key, written atomically. A prefix key is trusted for every image name
//! equal to the prefix or below it by whole path components (`example.com/app` covers
//! `example.com/app` and `example.com/app/db`, not `example.com/application`); a root key is
//! trusted for every name.
//!
//! Making simple-signing signatures ark verifies, with Debian 12's skopeo 1.9: point a
//! registries.d file at a lookaside directory (`sigstore-staging` is the key skopeo 1.9 reads for
//! writing; `lookaside-staging` is its newer name), e.g. `DIR/registries.d/local.yaml`:
//!
//! ```yaml
//! default-docker:
//!   sigstore-staging: file:///srv/sigs
//! ```
//!
//! then `skopeo --registries.d DIR/registries.d copy --sign-by FINGERPRINT SRC
//! docker://HOST/REPO:TAG` writes `/srv/sigs/REPO@sha256=HEX/signature-1` (an OpenPGP-signed,
//! compressed message whose JSON names `HOST/REPO:TAG` and the manifest digest). Fetch with
//! `ark fetch --signature-dir /srv/sigs docker://HOST/REPO:TAG` after
//! `ark trust --prefix HOST/REPO KEYFILE` (`gpg --export [--armor] FINGERPRINT > KEYFILE`).

pub mod error;
pub mod keys;
pub mod signing;

use std::fmt;
use std::path::{Path, PathBuf};

pub use error::{Error, ErrorKind, Result};
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
) -> Result<Fingerprint> {
    let keys = KeySet::load_for(trust_dir, image_name)?;
    let sig = std::fs::read(signature)
        .map_err(|e| anyhow::anyhow!("reading signature {}: {e}", signature.display()))?;
    let file = std::fs::File::open(data)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", data.display()))?;
    signing::verify_detached_with(&keys, image_name, std::io::BufReader::new(file), &sig)
        .map_err(|e| Error::new(ErrorKind::Refused, e))
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
) -> Result<Fingerprint> {
    let reference = signing::DockerReference::parse(docker_reference)?;
    let keys = KeySet::load_for(trust_dir, &reference.name())?;
    let sigs = signing::read_lookaside(signature_dir, &reference, manifest_digest)?;
    signing::verify_simple_signing_with(&keys, &reference, manifest_digest, &sigs)
        .map_err(|e| Error::new(ErrorKind::Refused, e))
}

#[cfg(test)]
mod tests {
    //! verify_detached against real `gpg` output (skipped, visibly, where gpg is missing).
    use std::path::Path;
    use std::process::Command;

    use super::*;

    fn gpg(home: &Path, args: &[&str]) -> Vec<u8> {
        let out = Command::new("gpg")
            .env("GNUPGHOME", home)
            .args([
                "--batch",
                "--quiet",
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                "",
            ])
            .args(args)
            .output()
            .expect("running gpg");
        assert!(
            out.status.success(),
            "gpg {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    #[test]
    fn detached_signatures_from_real_gpg() {
        if Command::new("gpg").arg("--version").output().is_err() {
            eprintln!("SKIPPED detached_signatures_from_real_gpg: gpg not installed");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().join("gnupg");
        std::fs::create_dir(&home).unwrap();
        std::fs::set_permissions(&home, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        let trust = tmp.path().join("trust");
        let data = tmp.path().join("app.aci");
        std::fs::write(&data, b"not really an ACI, but signed bytes all the same").unwrap();
        for (uid, algo) in [
            ("rsa <rsa@example.com>", "rsa3072"),
            ("ed <ed@example.com>", "ed25519"),
        ] {
            gpg(&home, &["--quick-gen-key", uid, algo, "sign", "never"]);
            let armored_sig = tmp.path().join(format!("{algo}.asc"));
            let binary_sig = tmp.path().join(format!("{algo}.sig"));
            gpg(
                &home,
                &[
                    "--local-user",
                    uid,
                    "--armor",
                    "--output",
                    armored_sig.to_str().unwrap(),
                    "--detach-sign",
                    data.to_str().unwrap(),
                ],
            );
            gpg(
                &home,
                &[
                    "--local-user",
                    uid,
                    "--output",
                    binary_sig.to_str().unwrap(),
                    "--detach-sign",
                    data.to_str().unwrap(),
                ],
            );
            let key = gpg(&home, &["--export", uid]);

            // Untrusted: refused, naming the way out.
            let err = verify_detached(&trust, "example.com/app", &data, &armored_sig).unwrap_err();
            let msg = format!("{err:#}");
            assert!(
                msg.contains("not trusted") && msg.contains("ark trust --prefix example.com/app"),
                "{msg}"
            );

            let stored =
                keys::add(&trust, keys::Scope::Prefix("example.com/app".into()), &key).unwrap();
            let fp = stored[0].fingerprint.clone();
            assert_eq!(stored[0].user_ids, vec![uid.to_string()]);
            for sig in [&armored_sig, &binary_sig] {
                assert_eq!(
                    verify_detached(&trust, "example.com/app", &data, sig).unwrap(),
                    fp
                );
                assert_eq!(
                    verify_detached(&trust, "example.com/app/sub", &data, sig).unwrap(),
                    fp
                );
                // A name outside the prefix is not covered.
                assert!(verify_detached(&trust, "example.com/apple", &data, sig).is_err());
            }
            // Tampered data: refused.
            let tampered = tmp.path().join("tampered.aci");
            std::fs::write(
                &tampered,
                b"not really an ACI, but signed bytes all the samE",
            )
            .unwrap();
            let msg = format!(
                "{:#}",
                verify_detached(&trust, "example.com/app", &tampered, &armored_sig).unwrap_err()
            );
            assert!(msg.contains("bad signature"), "{msg}");
            keys::remove(&trust, &fp.0).unwrap();
        }
        // A key that has expired since it signed vouches for nothing.
        let uid = "short-lived <short@example.com>";
        gpg(
            &home,
            &["--quick-gen-key", uid, "ed25519", "sign", "seconds=2"],
        );
        let sig = tmp.path().join("short.asc");
        gpg(
            &home,
            &[
                "--local-user",
                uid,
                "--armor",
                "--output",
                sig.to_str().unwrap(),
                "--detach-sign",
                data.to_str().unwrap(),
            ],
        );
        let key = gpg(&home, &["--export", uid]);
        keys::add(&trust, keys::Scope::Root, &key).unwrap();
        std::thread::sleep(std::time::Duration::from_secs(3));
        let msg = format!(
            "{:#}",
            verify_detached(&trust, "example.com/app", &data, &sig).unwrap_err()
        );
        assert!(msg.contains("expired"), "{msg}");

        // gpg started an agent for this home; it would outlive the test.
        let _ = Command::new("gpgconf")
            .env("GNUPGHOME", &home)
            .args(["--kill", "all"])
            .output();
    }
}
