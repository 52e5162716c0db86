//! Pod names (`ark run --name=web`, podman's habit): a `name` file in the pod directory,
//! unique among live pods (preparing, prepared, running); an exited pod's name may be reused.
//! Anywhere a pod is named on the command line, [`resolve`] takes a full UUID, then a name,
//! then a UUID prefix, in podman's order.

use std::fs::File;
use std::path::Path;

use anyhow::Context as _;
use nix::fcntl::{Flock, FlockArg};

use super::store::{Liveness, PodStore};

const NAME_FILE: &str = "name";
const MAX_NAME: usize = 128;

/// podman's rule: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, here at most 128 bytes.
pub fn validate(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && name.len() <= MAX_NAME;
    if ok {
        Ok(())
    } else {
        Err(format!(
            "pod name \"{}\": want [a-zA-Z0-9][a-zA-Z0-9_.-]* (at most {MAX_NAME} bytes)",
            ark_os::escape::controls_escaped(name)
        ))
    }
}

/// The pod's name, if it has a valid one.
pub fn read(pod_dir: &Path) -> Option<String> {
    use std::io::Read as _;
    let mut s = String::new();
    File::open(pod_dir.join(NAME_FILE))
        .ok()?
        .take(MAX_NAME as u64 + 2)
        .read_to_string(&mut s)
        .ok()?;
    let s = s.trim_end();
    validate(s).is_ok().then(|| s.to_string())
}

/// Held while a name is checked and recorded, so two pods cannot both take it.
#[derive(Debug)]
pub struct NamesLock(#[allow(dead_code)] Flock<File>);

pub fn lock(store: &PodStore) -> anyhow::Result<NamesLock> {
    let path = store.root().join(".names.lock");
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("open {}", path.display()))?;
    Flock::lock(f, FlockArg::LockExclusive)
        .map(NamesLock)
        .map_err(|(_, e)| anyhow::anyhow!("lock {}: {e}", path.display()))
}

/// The UUID of the live pod called `name`, if any.
fn live_pod_named(store: &PodStore, name: &str) -> anyhow::Result<Option<String>> {
    for p in store.list()? {
        let live = matches!(
            store.liveness(&p)?,
            Liveness::Preparing | Liveness::Prepared | Liveness::Running
        );
        if live && read(&p.path).as_deref() == Some(name) {
            return Ok(Some(p.uuid.to_string()));
        }
    }
    Ok(None)
}

/// Refuses a name that is invalid or taken by a live pod (call with the [`NamesLock`] held).
pub fn check_free(store: &PodStore, name: &str, _held: &NamesLock) -> anyhow::Result<()> {
    validate(name).map_err(super::error::invalid)?;
    if let Some(uuid) = live_pod_named(store, name)? {
        return Err(super::error::invalid(format!(
            "the name {name:?} is already in use by pod {uuid} (remove it or pick another)"
        ))
        .into());
    }
    Ok(())
}

/// Gives the pod in `pod_dir` its name (call with the [`NamesLock`] held).
pub fn record(pod_dir: &Path, name: &str, _held: &NamesLock) -> anyhow::Result<()> {
    ark_os::write_atomic(&pod_dir.join(NAME_FILE), format!("{name}\n").as_bytes())
        .with_context(|| format!("record the pod's name in {}", pod_dir.display()))
}

/// What a command-line pod id means: a full UUID as is; else the UUID of the pod with that
/// name (a live one first, else the newest); else `id` unchanged (a UUID prefix).
pub fn resolve(ctx: &crate::Context, id: &str) -> String {
    if uuid::Uuid::parse_str(id).is_ok() || validate(id).is_err() {
        return id.to_string();
    }
    let Ok(store) = super::open_store(ctx) else {
        return id.to_string();
    };
    if let Ok(Some(uuid)) = live_pod_named(&store, id) {
        return uuid;
    }
    let newest = store.list().ok().and_then(|pods| {
        pods.into_iter()
            .filter(|p| read(&p.path).as_deref() == Some(id))
            .max_by_key(|p| std::fs::metadata(&p.path).and_then(|m| m.modified()).ok())
    });
    newest.map_or_else(|| id.to_string(), |p| p.uuid.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_podmans_rule() {
        for ok in ["web", "a", "web-1.b_c", "0abc"] {
            assert!(validate(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-x", ".x", "a/b", "a b", "a\n", &"x".repeat(129)] {
            assert!(validate(bad).is_err(), "{bad:?}");
        }
    }
}
