//! The key store: OpenPGP public keys trusted per image-name prefix or as root keys.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use pgp::composed::{ArmorOptions, Deserializable, SignedPublicKey};
use pgp::types::KeyDetails;
use serde::{Deserialize, Serialize};

use super::error::ErrorKind;
use super::Fingerprint;
use crate::error::typed;
use crate::error::Kind as _;

/// What a stored key is trusted for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Scope {
    /// Every image name.
    Root,
    /// Image names equal to, or below (by whole path components), this prefix.
    Prefix(String),
}

impl Scope {
    /// Whether a key of this scope may sign images called `name`.
    pub fn covers(&self, name: &str) -> bool {
        match self {
            Scope::Root => true,
            Scope::Prefix(p) => {
                name == p || (name.starts_with(p.as_str()) && name[p.len()..].starts_with('/'))
            }
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Root => f.write_str("root (all images)"),
            Scope::Prefix(p) => write!(f, "prefix {p}"),
        }
    }
}

/// One trusted key: its scope, fingerprint, user IDs and the armored key itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrustedKey {
    pub scope: Scope,
    pub fingerprint: Fingerprint,
    pub user_ids: Vec<String>,
    pub armored: String,
}

impl TrustedKey {
    fn from_key(scope: Scope, key: &SignedPublicKey) -> Result<Self> {
        let armored = key
            .to_armored_string(ArmorOptions::default())
            .map_err(|e| anyhow!("armoring key: {e}"))?;
        Ok(TrustedKey {
            scope,
            fingerprint: fingerprint_of(key),
            user_ids: user_ids(key),
            armored,
        })
    }

    /// Parses the stored key again (it was validated when trusted).
    pub fn key(&self) -> Result<SignedPublicKey> {
        let (key, _) = SignedPublicKey::from_armor_single(self.armored.as_bytes())
            .map_err(|e| anyhow!("stored key {} is corrupt: {e}", self.fingerprint))?;
        Ok(key)
    }
}

/// The keys that may sign one image name; serializable so the unprivileged fetch child can be
/// handed them instead of reading the store itself.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct KeySet {
    pub name: String,
    pub keys: Vec<TrustedKey>,
}

impl KeySet {
    /// The keys in `trust_dir` trusted for `name` (prefix keys covering it, and root keys).
    pub fn load_for(trust_dir: &Path, name: &str) -> Result<Self> {
        let keys = list(trust_dir)?
            .into_iter()
            .filter(|k| k.scope.covers(name))
            .collect();
        Ok(KeySet {
            name: name.to_string(),
            keys,
        })
    }
}

pub fn fingerprint_of(key: &impl KeyDetails) -> Fingerprint {
    Fingerprint(format!("{:X}", key.fingerprint()))
}

pub fn user_ids(key: &SignedPublicKey) -> Vec<String> {
    key.details
        .users
        .iter()
        .map(|u| String::from_utf8_lossy(u.id.id()).into_owned())
        .collect()
}

/// Parses one or more public keys (ASCII-armored or binary, as `gpg --export [--armor]` writes)
/// and checks their self-signatures.
pub fn parse_keys(data: &[u8]) -> Result<Vec<SignedPublicKey>> {
    if is_secret_key(data) {
        bail!("this is a secret key: give the public key (`gpg --export [--armor] KEYID`)");
    }
    let (iter, _) = SignedPublicKey::from_reader_many(data)
        .map_err(|e| anyhow!("not an OpenPGP public key: {e}"))?;
    let mut keys = Vec::new();
    for key in iter {
        let key = key.map_err(|e| anyhow!("not an OpenPGP public key: {e}"))?;
        let fp = fingerprint_of(&key);
        key.verify_bindings()
            .map_err(|e| anyhow!("key {fp} has invalid self-signatures: {e}"))?;
        if !key.details.revocation_signatures.is_empty() {
            bail!("key {fp} is revoked");
        }
        keys.push(key);
    }
    if keys.is_empty() {
        bail!("no OpenPGP public key found");
    }
    Ok(keys)
}

/// Whether `data` starts with an OpenPGP secret key (armored block or binary packet tag 5).
fn is_secret_key(data: &[u8]) -> bool {
    let text = String::from_utf8_lossy(&data[..data.len().min(4096)]);
    if text.contains("-----BEGIN PGP PRIVATE KEY BLOCK-----") {
        return true;
    }
    match data.first() {
        Some(&b) if b & 0x80 != 0 => {
            let tag = if b & 0x40 != 0 {
                b & 0x3f
            } else {
                (b >> 2) & 0x0f
            };
            tag == 5
        }
        _ => false,
    }
}

/// Normalizes a user-given prefix: no trailing '/', not empty, no empty components.
pub fn normalize_prefix(prefix: &str) -> Result<String> {
    let p = prefix.trim_end_matches('/');
    if p.is_empty() || p.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        bail!("invalid prefix {prefix:?}: expected an image name like example.com/app");
    }
    if p.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!("invalid prefix {prefix:?}: whitespace is not allowed");
    }
    Ok(p.to_string())
}

/// A prefix as one directory name: bytes outside `[A-Za-z0-9._-]` percent-encoded (reversible).
fn escape_prefix(prefix: &str) -> String {
    let mut out = String::new();
    for b in prefix.bytes() {
        if b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn unescape_prefix(name: &str) -> Option<String> {
    let bytes = name.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = name.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn scope_dir(trust_dir: &Path, scope: &Scope) -> PathBuf {
    match scope {
        Scope::Root => trust_dir.join("root"),
        Scope::Prefix(p) => trust_dir.join("prefixes").join(escape_prefix(p)),
    }
}

fn is_fingerprint(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Stores every key in `data` for `scope`. Returns what was stored.
pub fn add(trust_dir: &Path, scope: Scope, data: &[u8]) -> super::Result<Vec<TrustedKey>> {
    typed(|| {
        let keys = parse_keys(data)?;
        let dir = scope_dir(trust_dir, &scope);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut stored = Vec::new();
        for key in &keys {
            let tk = TrustedKey::from_key(scope.clone(), key)?;
            write_atomic(&dir, &tk.fingerprint.0, tk.armored.as_bytes())?;
            stored.push(tk);
        }
        Ok(stored)
    })
}

/// `dir/name` written atomically and durably (`ark_os::write_atomic`).
fn write_atomic(dir: &Path, name: &str, data: &[u8]) -> Result<()> {
    let path = dir.join(name);
    ark_os::write_atomic(&path, data).with_context(|| format!("writing {}", path.display()))
}

/// Every stored key, root keys first, then by prefix.
pub fn list(trust_dir: &Path) -> super::Result<Vec<TrustedKey>> {
    typed(|| {
        let mut out = Vec::new();
        let mut dirs = vec![(Scope::Root, trust_dir.join("root"))];
        let prefixes = trust_dir.join("prefixes");
        match fs::read_dir(&prefixes) {
            Ok(rd) => {
                let mut names: Vec<_> = rd.filter_map(|e| e.ok()).collect();
                names.sort_by_key(|e| e.file_name());
                for e in names {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if let Some(p) = unescape_prefix(&name) {
                        dirs.push((Scope::Prefix(p), e.path()));
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", prefixes.display())),
        }
        for (scope, dir) in dirs {
            let rd = match fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
            };
            let mut files: Vec<_> = rd.filter_map(|e| e.ok()).collect();
            files.sort_by_key(|e| e.file_name());
            for f in files {
                let name = f.file_name().to_string_lossy().into_owned();
                if !is_fingerprint(&name) {
                    continue; // temp files of an interrupted `ark trust`
                }
                let data = fs::read(f.path())
                    .with_context(|| format!("reading {}", f.path().display()))?;
                let (key, _) = SignedPublicKey::from_reader_single(&data[..])
                    .map_err(|e| anyhow!("stored key {} is corrupt: {e}", f.path().display()))?;
                out.push(TrustedKey::from_key(scope.clone(), &key)?);
            }
        }
        Ok(out)
    })
}

/// Removes the key with this fingerprint from every scope. Returns the scopes it was removed from.
pub fn remove(trust_dir: &Path, fingerprint: &str) -> super::Result<Vec<Scope>> {
    typed(|| {
        let fp = fingerprint.replace(' ', "").to_ascii_uppercase();
        if !is_fingerprint(&fp) {
            bail!(
                "{fingerprint:?} is not a key fingerprint (40 hex digits, as `ark trust --list` shows)"
            );
        }
        let mut removed = Vec::new();
        for key in list(trust_dir)? {
            if key.fingerprint.0 == fp {
                let dir = scope_dir(trust_dir, &key.scope);
                fs::remove_file(dir.join(&fp))
                    .with_context(|| format!("removing {}", dir.join(&fp).display()))?;
                let _ = fs::File::open(&dir).and_then(|d| d.sync_all());
                if let Scope::Prefix(_) = key.scope {
                    let _ = fs::remove_dir(&dir); // only if now empty
                }
                removed.push(key.scope);
            }
        }
        if removed.is_empty() {
            return Err(ErrorKind::NotFound
                .marked(format!(
                    "no trusted key has fingerprint {fp} (see `ark trust --list`)"
                ))
                .into());
        }
        Ok(removed)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_covers_whole_components_only() {
        let s = Scope::Prefix("example.com/app".into());
        assert!(s.covers("example.com/app"));
        assert!(s.covers("example.com/app/db"));
        assert!(!s.covers("example.com/application"));
        assert!(!s.covers("example.com"));
        assert!(Scope::Root.covers("anything/at/all"));
    }

    #[test]
    fn prefix_escaping_round_trips() {
        for p in ["127.0.0.1:5000/test/busybox", "example.com/a_b-c", "x/%y"] {
            let e = escape_prefix(p);
            assert!(!e.contains('/'));
            assert_eq!(unescape_prefix(&e).as_deref(), Some(p));
        }
    }

    #[test]
    fn bad_prefixes_are_refused() {
        assert!(normalize_prefix("").is_err());
        assert!(normalize_prefix("a//b").is_err());
        assert!(normalize_prefix("a/../b").is_err());
        assert_eq!(
            normalize_prefix("example.com/app/").unwrap(),
            "example.com/app"
        );
    }
}
