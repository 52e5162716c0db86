//! `ark trust` with keys made by real gpg: prefix and root keys, ASCII-armored and binary
//! exports, listing, removal, and what trust (or its removal) does to fetching a signed ACI.

use std::path::Path;
use std::process::Output;

use ark_tests::images::{gzip, tar_bytes, Entry};
use ark_tests::registry::{ark, missing_tool, Gpg};
use ark_tests::skip;

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).trim().to_string()
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let o = ark(dir, args, &[]);
    assert!(o.status.success(), "ark {args:?} failed: {}", err(&o));
    out(&o)
}

/// Runs ark expecting a one-line error; returns it.
fn refused(dir: &Path, args: &[&str]) -> String {
    let o = ark(dir, args, &[]);
    assert!(!o.status.success(), "ark {args:?} should fail: {}", out(&o));
    assert_eq!(o.status.code(), Some(125), "{}", err(&o));
    let e = err(&o);
    assert_eq!(e.lines().count(), 1, "one-line error: {e}");
    e
}

#[test]
fn trust_prefix_and_root_keys_list_and_remove() {
    if let Some(why) = missing_tool(&["gpg"]) {
        skip!("{why}");
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ark");
    let gpg = Gpg::new();
    let rsa = gpg.gen_key("rsa signer <rsa@example.com>", "rsa3072");
    let ed = gpg.gen_key("ed signer <ed@example.com>", "ed25519");
    let rsa_asc = tmp.path().join("rsa.asc");
    gpg.export(&rsa, true, &rsa_asc);
    let ed_bin = tmp.path().join("ed.gpg");
    gpg.export(&ed, false, &ed_bin);
    assert_ne!(std::fs::read(&ed_bin).unwrap()[0], b'-', "binary export");

    let said = ok(
        &dir,
        &[
            "trust",
            "--prefix",
            "example.com/app/",
            rsa_asc.to_str().unwrap(),
        ],
    );
    assert!(
        said.contains(&format!("trusted key {rsa} for prefix example.com/app")),
        "{said}"
    );
    assert!(
        said.contains("rsa signer <rsa@example.com>"),
        "prints user IDs: {said}"
    );
    let said = ok(
        &dir,
        &[
            "trust",
            "--prefix",
            "example.com/other",
            ed_bin.to_str().unwrap(),
        ],
    );
    assert!(said.contains(&ed), "{said}");
    let said = ok(&dir, &["trust", "--root", ed_bin.to_str().unwrap()]);
    assert!(
        said.contains(&format!("trusted key {ed} for root")),
        "{said}"
    );

    // rkt-like layout: one file per key under its escaped prefix, or under root.
    assert!(dir
        .join("trust/prefixes/example.com%2Fapp")
        .join(&rsa)
        .is_file());
    assert!(dir
        .join("trust/prefixes/example.com%2Fother")
        .join(&ed)
        .is_file());
    assert!(dir.join("trust/root").join(&ed).is_file());

    let list = ok(&dir, &["trust", "--list"]);
    let mut lines: Vec<&str> = list.lines().collect();
    lines.sort();
    let mut want = vec![
        format!("{rsa}\texample.com/app\trsa signer <rsa@example.com>"),
        format!("{ed}\texample.com/other\ted signer <ed@example.com>"),
        format!("{ed}\troot\ted signer <ed@example.com>"),
    ];
    want.sort();
    assert_eq!(lines, want);

    // Removal takes a fingerprint in any case and drops it from every scope.
    let said = ok(&dir, &["trust", "--remove", &ed.to_lowercase()]);
    assert_eq!(said.lines().count(), 2, "{said}");
    assert_eq!(
        ok(&dir, &["trust", "--list"]),
        format!("{rsa}\texample.com/app\trsa signer <rsa@example.com>")
    );
    assert!(!dir.join("trust/root").join(&ed).exists());
    let e = refused(&dir, &["trust", "--remove", &ed]);
    assert!(e.contains("no trusted key has fingerprint"), "{e}");
}

#[test]
fn trust_refuses_bad_input_and_leaves_store_alone() {
    if let Some(why) = missing_tool(&["gpg"]) {
        skip!("{why}");
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ark");
    let gpg = Gpg::new();
    let fpr = gpg.gen_key("someone <someone@example.com>", "ed25519");
    let key = tmp.path().join("key.asc");
    gpg.export(&fpr, true, &key);
    ok(
        &dir,
        &["trust", "--prefix", "example.com/a", key.to_str().unwrap()],
    );
    let before = ok(&dir, &["trust", "--list"]);

    let garbage = tmp.path().join("garbage");
    std::fs::write(&garbage, b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nnope\n").unwrap();
    let e = refused(
        &dir,
        &[
            "trust",
            "--prefix",
            "example.com/b",
            garbage.to_str().unwrap(),
        ],
    );
    assert!(e.contains("not an OpenPGP public key"), "{e}");

    // A secret key export is not a public key file: never stored.
    let out = std::process::Command::new("gpg")
        .env("GNUPGHOME", gpg.home.path())
        .args(["--batch", "--pinentry-mode", "loopback", "--passphrase", ""])
        .args(["--export-secret-keys", &fpr])
        .output()
        .unwrap();
    assert!(out.status.success() && !out.stdout.is_empty());
    let secret = tmp.path().join("secret.gpg");
    std::fs::write(&secret, &out.stdout).unwrap();
    let e = refused(
        &dir,
        &[
            "trust",
            "--prefix",
            "example.com/b",
            secret.to_str().unwrap(),
        ],
    );
    assert!(e.contains("this is a secret key"), "{e}");

    let e = refused(&dir, &["trust", key.to_str().unwrap()]);
    assert!(e.contains("--prefix NAME") && e.contains("--root"), "{e}");
    let e = refused(&dir, &["trust", "--prefix", "a//b", key.to_str().unwrap()]);
    assert!(e.contains("invalid prefix"), "{e}");
    let e = refused(&dir, &["trust", "--remove", "not-a-fingerprint"]);
    assert!(e.contains("not a key fingerprint"), "{e}");
    let missing = tmp.path().join("missing.asc");
    let e = refused(&dir, &["trust", "--root", missing.to_str().unwrap()]);
    assert!(e.contains("missing.asc"), "{e}");

    assert_eq!(ok(&dir, &["trust", "--list"]), before, "nothing changed");
    let prefixes: Vec<_> = std::fs::read_dir(dir.join("trust/prefixes"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(prefixes.len(), 1, "no stray prefix dirs: {prefixes:?}");
}

fn aci(name: &str) -> Vec<u8> {
    let manifest = serde_json::json!({
        "acKind": "ImageManifest",
        "acVersion": "0.8.11",
        "name": name,
        "labels": [{"name": "arch", "value": "amd64"}, {"name": "os", "value": "linux"}],
        "app": {"exec": ["/bin/sh"], "user": "0", "group": "0"},
    });
    gzip(&tar_bytes(&[
        Entry::file("manifest", &serde_json::to_vec(&manifest).unwrap()),
        Entry::Dir("rootfs/", 0o755),
        Entry::file("rootfs/hello", b"hello"),
    ]))
}

#[test]
fn root_key_covers_any_aci_name_until_removed() {
    if let Some(why) = missing_tool(&["gpg"]) {
        skip!("{why}");
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ark");
    let gpg = Gpg::new();
    let fpr = gpg.gen_key("root signer <root@example.com>", "rsa3072");
    let key = tmp.path().join("root.gpg");
    gpg.export(&fpr, false, &key);

    let image = tmp.path().join("anything.aci");
    std::fs::write(&image, aci("example.org/any/thing")).unwrap();
    // A binary (not armored) detached signature, as `gpg --detach-sign` writes by default.
    let sig = tmp.path().join("anything.aci.asc");
    let o = std::process::Command::new("gpg")
        .env("GNUPGHOME", gpg.home.path())
        .args(["--batch", "--pinentry-mode", "loopback", "--passphrase", ""])
        .args(["--local-user", &fpr, "--output"])
        .arg(&sig)
        .arg("--detach-sign")
        .arg(&image)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let e = refused(&dir, &["fetch", image.to_str().unwrap()]);
    assert!(
        e.contains("ark trust --prefix example.org/any/thing"),
        "{e}"
    );
    ok(&dir, &["trust", "--root", key.to_str().unwrap()]);
    let id = ok(&dir, &["fetch", image.to_str().unwrap()]);
    assert!(id.starts_with("sha256:"), "{id}");
    ok(&dir, &["image", "rm", &id]);
    ok(&dir, &["trust", "--remove", &fpr]);
    let e = refused(&dir, &["fetch", image.to_str().unwrap()]);
    assert!(e.contains("not trusted"), "trust removed: {e}");
}
