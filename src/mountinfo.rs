//! Reading the host's mount table (`/proc/self/mountinfo`): shared by the image store (is a
//! render some overlay's lower layer?) and the pods (what to unmount).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The lower directories of the overlay mounts whose mount point is under `dir`.
pub fn overlay_lowerdirs_under(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let info = fs::read_to_string("/proc/self/mountinfo")?;
    Ok(parse_lowerdirs(&info, dir))
}

fn parse_lowerdirs(info: &str, dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for line in info.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let under = pre
            .split(' ')
            .nth(4)
            .is_some_and(|m| Path::new(&unescape(m)).starts_with(dir));
        let mut post = post.split(' ');
        if !under || post.next() != Some("overlay") {
            continue;
        }
        let opts = post.nth(1).unwrap_or("");
        for opt in opts.split(',') {
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

    #[test]
    fn mountinfo_unescape() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape(r"/x\134y"), r"/x\y");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape(r"/trail\04"), r"/trail\04");
    }

    #[test]
    fn lowerdirs_of_pod_overlays() {
        let info = "\
44 27 0:39 / /d/pods/run/u1/stage1/rootfs/apps/a/rootfs rw,relatime - overlay overlay rw,lowerdir=/d/images/render/x,upperdir=/d/pods/run/u1/overlay/a/upper,workdir=/d/pods/run/u1/overlay/a/work
45 27 0:40 / /elsewhere rw,relatime - overlay overlay rw,lowerdir=/d/images/render/y,upperdir=/u,workdir=/w
46 27 0:41 / /d/pods/run/u2/x rw,relatime - tmpfs tmpfs rw
";
        assert_eq!(
            parse_lowerdirs(info, Path::new("/d/pods")),
            [PathBuf::from("/d/images/render/x")]
        );
    }
}
