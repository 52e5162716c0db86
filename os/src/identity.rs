//! Who an app runs as, and the switch to it: the user and groups resolved from the app's own
//! `/etc/passwd` and `/etc/group` (never the host's or guest-init's; read inside the app's root
//! with [`crate::inroot`]), its capability sets, rlimits and no_new_privs. guest-init applies it
//! before exec'ing an app, `ark enter` before running a command in one: the same code, so an
//! entered command has exactly the app's identity.

use std::os::fd::BorrowedFd;
use std::str::FromStr;

use ark_pod_spec::manifest::{normalize_capability, App, Rlimit};

/// Why the switch to an app's identity failed (the step, and the OS error).
#[derive(Debug, thiserror::Error)]
#[error("{step}: {message}")]
pub struct IdentityError {
    pub step: String,
    pub message: String,
}

fn err(step: impl Into<String>, e: impl std::fmt::Display) -> IdentityError {
    IdentityError {
        step: step.into(),
        message: e.to_string(),
    }
}

/// The identity an app runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups: the manifest's plus the user's memberships in `/etc/group`.
    pub groups: Vec<u32>,
    /// From `/etc/passwd`, `/` when the user has no entry.
    pub home: String,
    pub name: Option<String>,
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    /// The primary group; None when the field is not a number.
    gid: Option<u32>,
    home: &'a str,
}

struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: Vec<&'a str>,
}

fn passwd_entries(text: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    text.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 7 || l.starts_with('#') {
            return None;
        }
        Some(PasswdEntry {
            name: f[0],
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok(),
            home: f[5],
        })
    })
}

fn group_entries(text: &str) -> impl Iterator<Item = GroupEntry<'_>> {
    text.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 4 || l.starts_with('#') {
            return None;
        }
        Some(GroupEntry {
            name: f[0],
            gid: f[2].parse().ok()?,
            members: f[3].split(',').filter(|m| !m.is_empty()).collect(),
        })
    })
}

/// Resolves `user` and `group` (names or numbers) against the app's passwd and group files
/// (`None` = the file does not exist in the image). stage0 already picked the group (the
/// user's primary group unless one was given, see [`primary_gid`]), so `group` is taken as
/// it is.
pub fn resolve(
    user: &str,
    group: &str,
    extra_groups: &[u32],
    passwd: Option<&str>,
    groups_file: Option<&str>,
) -> Result<Identity, String> {
    let passwd_text = passwd.unwrap_or("");
    let entry = if let Ok(uid) = user.parse::<u32>() {
        passwd_entries(passwd_text).find(|e| e.uid == uid)
    } else {
        let e = passwd_entries(passwd_text).find(|e| e.name == user);
        if e.is_none() {
            return Err(format!(
                "user {user:?} not found in the image's /etc/passwd{}",
                if passwd.is_none() {
                    " (no such file)"
                } else {
                    ""
                }
            ));
        }
        e
    };
    let uid = match &entry {
        Some(e) => e.uid,
        None => user.parse().expect("numeric when no entry"),
    };
    let group_text = groups_file.unwrap_or("");
    let gid = if let Ok(gid) = group.parse::<u32>() {
        gid
    } else {
        group_entries(group_text)
            .find(|g| g.name == group)
            .map(|g| g.gid)
            .ok_or_else(|| {
                format!(
                    "group {group:?} not found in the image's /etc/group{}",
                    if groups_file.is_none() {
                        " (no such file)"
                    } else {
                        ""
                    }
                )
            })?
    };
    let mut groups: Vec<u32> = Vec::new();
    if let Some(e) = &entry {
        for g in group_entries(group_text) {
            if g.members.contains(&e.name) && g.gid != gid && !groups.contains(&g.gid) {
                groups.push(g.gid);
            }
        }
    }
    for g in extra_groups {
        if !groups.contains(g) {
            groups.push(*g);
        }
    }
    Ok(Identity {
        uid,
        gid,
        groups,
        home: entry
            .as_ref()
            .map(|e| e.home)
            .filter(|h| !h.is_empty())
            .unwrap_or("/")
            .to_string(),
        name: entry.map(|e| e.name.to_string()),
    })
}

/// The primary gid of `user` (a name, or a number looked up by uid) in the passwd text: the
/// group an app gets when none was asked for. None when the user has no entry.
pub fn primary_gid(user: &str, passwd: &str) -> Option<u32> {
    let uid = user.parse::<u32>().ok();
    passwd_entries(passwd)
        .find(|e| match uid {
            Some(u) => e.uid == u,
            None => e.name == user,
        })
        .and_then(|e| e.gid)
}

/// Whether a group of that name is in the group text.
pub fn group_exists(group: &str, groups_file: &str) -> bool {
    group_entries(groups_file).any(|g| g.name == group)
}

/// The image's `/etc/passwd` and `/etc/group`, read inside `root` (regular files only; a
/// missing or hostile one reads as absent).
pub fn account_files(root: BorrowedFd) -> (Option<String>, Option<String>) {
    let read = |p: &str| {
        crate::inroot::read_file(root, p)
            .ok()
            .flatten()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    };
    (read("/etc/passwd"), read("/etc/group"))
}

/// The identity of `app`, resolved in its root (a descriptor of it).
pub fn resolve_app(app: &App, root: BorrowedFd) -> Result<Identity, String> {
    let (passwd, group) = account_files(root);
    resolve(
        &app.user,
        &app.group,
        &app.supplementary_groups,
        passwd.as_deref(),
        group.as_deref(),
    )
}

/// The capability sets of a process: the bounding set, and what it holds (effective,
/// permitted, inheritable, and for a non-root user ambient, so that it survives exec).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapSets {
    pub bounding: Vec<&'static str>,
    pub granted: Vec<&'static str>,
}

/// An app's capability sets: its kept capabilities bound it; root holds them all; a non-root
/// user holds only those the user asked for by name (`--caps-retain`), so the default set
/// never turns `--user=65534` into a process that can become root again.
pub fn capability_sets(uid: u32, keep: &[String], explicit: bool) -> CapSets {
    let bounding: Vec<&'static str> = keep
        .iter()
        .filter_map(|n| normalize_capability(n))
        .collect();
    let granted = if uid == 0 || explicit {
        bounding.clone()
    } else {
        Vec::new()
    };
    CapSets { bounding, granted }
}

/// `RLIMIT_*` names to resources.
pub fn rlimit_resource(name: &str) -> Option<nix::sys::resource::Resource> {
    use nix::sys::resource::Resource as R;
    Some(match name {
        "RLIMIT_AS" => R::RLIMIT_AS,
        "RLIMIT_CORE" => R::RLIMIT_CORE,
        "RLIMIT_CPU" => R::RLIMIT_CPU,
        "RLIMIT_DATA" => R::RLIMIT_DATA,
        "RLIMIT_FSIZE" => R::RLIMIT_FSIZE,
        "RLIMIT_LOCKS" => R::RLIMIT_LOCKS,
        "RLIMIT_MEMLOCK" => R::RLIMIT_MEMLOCK,
        "RLIMIT_MSGQUEUE" => R::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => R::RLIMIT_NICE,
        "RLIMIT_NOFILE" => R::RLIMIT_NOFILE,
        "RLIMIT_NPROC" => R::RLIMIT_NPROC,
        "RLIMIT_RSS" => R::RLIMIT_RSS,
        "RLIMIT_RTPRIO" => R::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => R::RLIMIT_RTTIME,
        "RLIMIT_SIGPENDING" => R::RLIMIT_SIGPENDING,
        "RLIMIT_STACK" => R::RLIMIT_STACK,
        _ => return None,
    })
}

/// Applies the manifest's rlimits (before the identity switch: raising a hard limit needs
/// root).
pub fn set_rlimits(rlimits: &[Rlimit]) -> Result<(), IdentityError> {
    for r in rlimits {
        let res = rlimit_resource(&r.resource)
            .ok_or_else(|| err("setrlimit", format!("unknown rlimit {}", r.resource)))?;
        nix::sys::resource::setrlimit(res, r.soft, r.hard)
            .map_err(|e| err(format!("setrlimit {}", r.resource), e))?;
    }
    Ok(())
}

/// Becomes `id` with `caps`, for good: the bounding set shrinks (while still root), groups,
/// gid and uid change, the capability sets are set exactly, and no_new_privs is on, so no
/// setuid binary or file capability can give anything back.
pub fn switch_to(id: &Identity, caps: &CapSets) -> Result<(), IdentityError> {
    use caps::{CapSet, Capability, CapsHashSet};
    use nix::unistd::{Gid, Uid};
    let set = |names: &[&str]| -> CapsHashSet {
        names
            .iter()
            .filter_map(|n| Capability::from_str(n).ok())
            .collect()
    };
    let bounding = set(&caps.bounding);
    let granted = set(&caps.granted);
    // The bounding set can only shrink while CAP_SETPCAP is effective, i.e. still as root.
    for c in caps::all() {
        if !bounding.contains(&c) {
            match caps::drop(None, CapSet::Bounding, c) {
                Ok(()) => {}
                // A capability newer than the running kernel is not there to drop.
                Err(_) if !caps::has_cap(None, CapSet::Bounding, c).unwrap_or(false) => {}
                Err(e) => return Err(err(format!("drop {c} from the bounding set"), e)),
            }
        }
    }
    // Keep the permitted set across the uid change; it is set exactly right after.
    nix::sys::prctl::set_keepcaps(true).map_err(|e| err("keepcaps", e))?;
    let groups: Vec<Gid> = id.groups.iter().map(|g| Gid::from_raw(*g)).collect();
    nix::unistd::setgroups(&groups).map_err(|e| err("setgroups", e))?;
    let gid = Gid::from_raw(id.gid);
    nix::unistd::setresgid(gid, gid, gid).map_err(|e| err(format!("setgid {}", id.gid), e))?;
    let uid = Uid::from_raw(id.uid);
    nix::unistd::setresuid(uid, uid, uid).map_err(|e| err(format!("setuid {}", id.uid), e))?;
    let caperr = |which: &'static str| {
        move |e: caps::errors::CapsError| err(format!("set {which} capabilities"), e)
    };
    caps::clear(None, CapSet::Ambient).map_err(caperr("ambient"))?;
    caps::set(None, CapSet::Effective, &granted).map_err(caperr("effective"))?;
    caps::set(None, CapSet::Permitted, &granted).map_err(caperr("permitted"))?;
    caps::set(None, CapSet::Inheritable, &granted).map_err(caperr("inheritable"))?;
    if id.uid != 0 {
        // Without ambient capabilities a non-root process loses the granted ones at exec.
        for c in &granted {
            caps::raise(None, CapSet::Ambient, *c).map_err(caperr("ambient"))?;
        }
    }
    nix::sys::prctl::set_keepcaps(false).map_err(|e| err("keepcaps", e))?;
    nix::sys::prctl::set_no_new_privs().map_err(|e| err("no_new_privs", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh
# comment
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
alice:x:1000:100:Alice:/home/alice:/bin/sh
broken line
";
    const GROUP: &str = "root:x:0:
users:x:100:
wheel:x:10:alice,bob
audio:x:29:alice
staff:x:50:
";

    #[test]
    fn names_resolve_in_the_image_files() {
        let id = resolve("alice", "users", &[], Some(PASSWD), Some(GROUP)).unwrap();
        assert_eq!((id.uid, id.gid), (1000, 100));
        assert_eq!(id.groups, [10, 29]);
        assert_eq!(id.home, "/home/alice");
        let id = resolve("alice", "staff", &[7], Some(PASSWD), Some(GROUP)).unwrap();
        assert_eq!((id.uid, id.gid), (1000, 50));
        assert_eq!(id.groups, [10, 29, 7]);
    }

    #[test]
    fn numbers_pass_through() {
        let id = resolve("1234", "4321", &[], Some(PASSWD), Some(GROUP)).unwrap();
        assert_eq!((id.uid, id.gid, id.home.as_str()), (1234, 4321, "/"));
        assert!(id.groups.is_empty());
        // A numeric uid with an entry takes its home and default group.
        let id = resolve("1", "1", &[], Some(PASSWD), None).unwrap();
        assert_eq!((id.uid, id.gid, id.home.as_str()), (1, 1, "/usr/sbin"));
        // No files at all: root by number still works.
        let id = resolve("0", "0", &[], None, None).unwrap();
        assert_eq!((id.uid, id.gid), (0, 0));
    }

    #[test]
    fn primary_gid_by_name_or_number() {
        assert_eq!(primary_gid("alice", PASSWD), Some(100));
        assert_eq!(primary_gid("1000", PASSWD), Some(100));
        assert_eq!(primary_gid("1", PASSWD), Some(1));
        assert_eq!(primary_gid("4242", PASSWD), None);
        assert_eq!(primary_gid("mallory", PASSWD), None);
        assert!(group_exists("wheel", GROUP) && !group_exists("x", GROUP));
    }

    #[test]
    fn non_root_holds_only_named_capabilities() {
        let keep: Vec<String> = ark_pod_spec::DEFAULT_CAPABILITIES
            .iter()
            .map(|c| c.to_string())
            .collect();
        let root = capability_sets(0, &keep, false);
        assert_eq!(root.granted, root.bounding);
        assert_eq!(root.bounding.len(), keep.len());
        let nobody = capability_sets(65534, &keep, false);
        assert_eq!(nobody.bounding.len(), keep.len());
        assert!(nobody.granted.is_empty());
        let named = capability_sets(65534, &["kill".to_string()], true);
        assert_eq!(named.granted, ["CAP_KILL"]);
        assert_eq!(named.bounding, ["CAP_KILL"]);
    }

    #[test]
    fn every_rlimit_name_maps() {
        for r in Rlimit::RESOURCES {
            assert!(rlimit_resource(r).is_some(), "{r}");
        }
    }

    #[test]
    fn missing_names_are_clear_errors() {
        let e = resolve("mallory", "0", &[], Some(PASSWD), Some(GROUP)).unwrap_err();
        assert_eq!(e, "user \"mallory\" not found in the image's /etc/passwd");
        let e = resolve("alice", "nogroup", &[], Some(PASSWD), Some(GROUP)).unwrap_err();
        assert!(e.contains("group \"nogroup\" not found"), "{e}");
        let e = resolve("alice", "0", &[], None, None).unwrap_err();
        assert!(e.contains("(no such file)"), "{e}");
    }
}
