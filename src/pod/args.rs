//! What a pod request says about its apps, and the `key=value` list parser every such option
//! uses (`--volume`, `--mount`).

use std::collections::BTreeMap;

/// The comma-separated `key=value` list of a flag such as `--volume NAME,source=A,readOnly=true`
/// or `--mount volume=V,target=/T`: the one parser every such flag uses. `keys` lists the keys
/// the flag knows, each with its spellings (the first is the one returned). A word that is not
/// `key=value`, an unknown key, or a key given twice (under any spelling: which one would win
/// is not obvious to a reader of the command line) is refused with one line naming it.
pub fn key_values<'a>(
    flag: &str,
    spec: &str,
    list: &'a str,
    keys: &[&[&'static str]],
) -> Result<BTreeMap<&'static str, &'a str>, String> {
    let mut out = BTreeMap::new();
    if list.is_empty() {
        return Ok(out);
    }
    for word in list.split(',') {
        let (k, v) = word
            .split_once('=')
            .ok_or_else(|| format!("{flag} {spec:?}: {word:?} is not key=value"))?;
        let key = keys
            .iter()
            .find(|names| names.contains(&k))
            .map(|names| names[0])
            .ok_or_else(|| format!("{flag} {spec:?}: unknown key {k:?}"))?;
        if out.insert(key, v).is_some() {
            return Err(format!(
                "{flag} {spec:?}: key {key:?} is given more than once"
            ));
        }
    }
    Ok(out)
}

/// What a pod request says about one app beyond its image (the `ark` command line's app flags,
/// defaults already merged in).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AppOptions {
    /// The app's name in the pod (default: derived from the image name).
    pub name: Option<String>,
    /// Program to run instead of the image's entrypoint/cmd.
    pub exec: Option<String>,
    /// Environment variable for the app, KEY=VALUE (repeatable).
    pub set_env: Vec<String>,
    /// User to run as: a name from the image's /etc/passwd or a numeric uid.
    pub user: Option<String>,
    /// Group to run as: a name from the image's /etc/group or a numeric gid.
    pub group: Option<String>,
    /// Working directory inside the app.
    pub working_dir: Option<String>,
    /// Mount a pod volume into the app: volume=NAME,target=PATH (repeatable).
    pub mount: Vec<String>,
    /// Memory limit, e.g. 256M or 1G.
    pub memory: Option<String>,
    /// CPU limit, e.g. 1.5 or 500m.
    pub cpus: Option<String>,
    /// Most processes the app may have.
    pub pids_limit: Option<u64>,
    /// Keep only these capabilities, comma-separated (e.g. CAP_NET_BIND_SERVICE,CAP_CHOWN).
    pub caps_retain: Option<Vec<String>>,
    /// Drop these capabilities from the default set, comma-separated.
    pub caps_remove: Option<Vec<String>>,
    /// Extra group IDs for the app, comma-separated.
    pub supplementary_gids: Option<Vec<u32>>,
}

/// One app as given on the command line.
#[derive(Debug, Clone, PartialEq)]
pub struct AppSpec {
    pub image: String,
    pub flags: AppOptions,
    /// Words after `--`: `None` when there was no `--` (keep the image's cmd).
    pub args: Option<Vec<String>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const VOLUME_KEYS: &[&[&str]] = &[&["source"], &["readOnly", "readonly", "read-only"]];

    #[test]
    fn key_values_parses_and_refuses_duplicates_under_any_spelling() {
        let kv = key_values("--x", "s", "source=/a,read-only=true", VOLUME_KEYS).unwrap();
        assert_eq!(kv["source"], "/a");
        assert_eq!(kv["readOnly"], "true");
        assert!(key_values("--x", "", "", VOLUME_KEYS).unwrap().is_empty());
        for (list, needle) in [
            (
                "source=/a,readOnly=true,source=/etc",
                r#"key "source" is given more than once"#,
            ),
            (
                "readOnly=true,readonly=false",
                r#"key "readOnly" is given more than once"#,
            ),
            ("source=/a,bogus=1", r#"unknown key "bogus""#),
            ("source=/a,", r#""" is not key=value"#),
        ] {
            let e = key_values("--volume", list, list, VOLUME_KEYS).unwrap_err();
            assert!(e.starts_with(&format!("--volume {list:?}: ")), "{e}");
            assert!(e.contains(needle), "{list}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    /// Every key=value flag goes through [`key_values`]: a duplicate is refused in each.
    #[test]
    fn volume_and_mount_refuse_duplicate_keys() {
        use crate::pod::plan::{parse_mount, parse_volume};
        let e = parse_volume("data,source=/tmp,readOnly=true,source=/etc").unwrap_err();
        assert!(e.contains(r#"key "source" is given more than once"#), "{e}");
        let e = parse_volume("data,kind=host,kind=host,source=/tmp").unwrap_err();
        assert!(e.contains(r#"key "kind""#), "{e}");
        let e = parse_volume("data,source=/tmp,readOnly=false,read-only=true").unwrap_err();
        assert!(e.contains(r#"key "readOnly""#), "{e}");
        let e = parse_mount("volume=a,target=/a,target=/etc").unwrap_err();
        assert!(e.contains(r#"key "target" is given more than once"#), "{e}");
        let e = parse_mount("volume=a,volume=b,target=/a").unwrap_err();
        assert!(e.contains(r#"key "volume""#), "{e}");
        // Still fine once each.
        assert!(
            parse_volume("data,kind=host,source=/tmp,readOnly=true")
                .unwrap()
                .read_only
        );
        assert_eq!(parse_mount("volume=a,target=/a").unwrap().target, "/a");
    }
}
