//! The mount table (`/proc/self/mountinfo`), parsed in one place: the image store (is a render
//! some overlay's lower layer?), the pods (what to unmount), the cgroup hierarchies, guest-init
//! (is this a mount point?) and the tests read it through here.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// One line of mountinfo (proc(5)): the fields ark uses, the paths unescaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub mount_point: PathBuf,
    /// Per-mount options (`rw,nosuid,nodev,...`).
    pub mount_options: String,
    pub fs_type: String,
    pub source: String,
    /// Per-superblock options (overlay's `lowerdir=...`, a v1 cgroup's controllers).
    pub super_options: String,
}

impl Mount {
    /// Whether `opt` is one of the per-mount options.
    pub fn has_mount_option(&self, opt: &str) -> bool {
        self.mount_options.split(',').any(|o| o == opt)
    }
    /// Whether `opt` is one of the per-superblock options.
    pub fn has_super_option(&self, opt: &str) -> bool {
        self.super_options.split(',').any(|o| o == opt)
    }
}

/// The calling process's mount table.
pub fn read() -> io::Result<Vec<Mount>> {
    Ok(parse(&fs::read_to_string("/proc/self/mountinfo")?))
}

/// Every well-formed line of `info` (others are skipped).
pub fn parse(info: &str) -> Vec<Mount> {
    info.lines().filter_map(parse_line).collect()
}

/// `36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue`: the
/// optional fields end at ` - `.
pub fn parse_line(line: &str) -> Option<Mount> {
    let (pre, post) = line.split_once(" - ")?;
    let mut pre = pre.split(' ');
    let mount_point = pre.nth(4)?;
    let mount_options = pre.next().unwrap_or("");
    let mut post = post.split(' ');
    let fs_type = post.next()?;
    let source = post.next().unwrap_or("");
    let super_options = post.next().unwrap_or("");
    Some(Mount {
        mount_point: PathBuf::from(unescape(mount_point)),
        mount_options: mount_options.to_string(),
        fs_type: fs_type.to_string(),
        source: unescape(source),
        super_options: super_options.to_string(),
    })
}

/// Mount points at or under `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> io::Result<Vec<PathBuf>> {
    Ok(points_under(&read()?, dir))
}

fn points_under(mounts: &[Mount], dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = mounts
        .iter()
        .map(|m| m.mount_point.clone())
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// Whether something is mounted exactly at `path`.
pub fn is_mount_point(path: &Path) -> bool {
    read().is_ok_and(|m| m.iter().any(|m| m.mount_point == path))
}

/// The lower directories of the overlay mounts whose mount point is under `dir`.
pub fn overlay_lowerdirs_under(dir: &Path) -> io::Result<Vec<PathBuf>> {
    Ok(lowerdirs(&read()?, dir))
}

fn lowerdirs(mounts: &[Mount], dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for m in mounts {
        if m.fs_type != "overlay" || !m.mount_point.starts_with(dir) {
            continue;
        }
        for opt in m.super_options.split(',') {
            if let Some(lower) = opt.strip_prefix("lowerdir=") {
                out.extend(lower.split(':').map(|l| PathBuf::from(unescape(l))));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
pub fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "\
44 27 0:39 / /d/pods/run/u1/stage1/rootfs/apps/a/rootfs rw,relatime - overlay overlay rw,lowerdir=/d/images/render/x,upperdir=/d/pods/run/u1/overlay/a/upper,workdir=/d/pods/run/u1/overlay/a/work
45 27 0:40 / /elsewhere rw,relatime - overlay overlay rw,lowerdir=/d/images/render/y,upperdir=/u,workdir=/w
46 27 0:41 / /d/pods/run/u2/x rw,relatime shared:5 - tmpfs tmpfs rw
47 27 0:42 / /d/pods/run/u2/x/with\\040space ro,nodev - tmpfs none rw
not a mountinfo line
";

    #[test]
    fn mountinfo_unescape() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape(r"/x\134y"), r"/x\y");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape(r"/trail\04"), r"/trail\04");
    }

    #[test]
    fn parses_fields_and_skips_garbage() {
        let m = parse(INFO);
        assert_eq!(m.len(), 4);
        assert_eq!(m[2].mount_point, Path::new("/d/pods/run/u2/x"));
        assert_eq!(
            (m[2].fs_type.as_str(), m[2].source.as_str()),
            ("tmpfs", "tmpfs")
        );
        assert_eq!(m[3].mount_point, Path::new("/d/pods/run/u2/x/with space"));
        assert!(m[3].has_mount_option("nodev") && !m[3].has_mount_option("rw"));
        assert!(m[0].super_options.contains("lowerdir=/d/images/render/x"));
    }

    #[test]
    fn lowerdirs_of_pod_overlays() {
        assert_eq!(
            lowerdirs(&parse(INFO), Path::new("/d/pods")),
            [PathBuf::from("/d/images/render/x")]
        );
    }

    #[test]
    fn mounts_under_deepest_first() {
        assert_eq!(
            points_under(&parse(INFO), Path::new("/d/pods/run/u2")),
            [
                PathBuf::from("/d/pods/run/u2/x/with space"),
                PathBuf::from("/d/pods/run/u2/x")
            ]
        );
    }
}
