//! Resolving an app's user and groups from the app's own `/etc/passwd` and `/etc/group`
//! (never the host's or guest-init's): numeric ids pass through, names must exist.

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
/// user's primary group unless one was given), so `group` is taken as it is.
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
    fn missing_names_are_clear_errors() {
        let e = resolve("mallory", "0", &[], Some(PASSWD), Some(GROUP)).unwrap_err();
        assert_eq!(e, "user \"mallory\" not found in the image's /etc/passwd");
        let e = resolve("alice", "nogroup", &[], Some(PASSWD), Some(GROUP)).unwrap_err();
        assert!(e.contains("group \"nogroup\" not found"), "{e}");
        let e = resolve("alice", "0", &[], None, None).unwrap_err();
        assert!(e.contains("(no such file)"), "{e}");
    }
}
