//! What `ark fetch` accepts: `docker://...`, `oci-layout:PATH[:TAG]`, `docker-archive:PATH[:REF]`,
//! and `PATH.aci`.

use std::path::{Path, PathBuf};

use anyhow::bail;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `HOST[:PORT]/REPO[:TAG|@DIGEST]`, for the registry client.
    Docker(String),
    OciLayout {
        path: PathBuf,
        tag: Option<String>,
    },
    DockerArchive {
        path: PathBuf,
        reference: Option<String>,
    },
    Aci(PathBuf),
}

impl Source {
    pub fn parse(s: &str) -> anyhow::Result<Source> {
        if let Some(rest) = s.strip_prefix("docker://") {
            if rest.is_empty() {
                bail!("{s:?}: docker:// needs HOST[:PORT]/REPO[:TAG|@DIGEST]");
            }
            return Ok(Source::Docker(rest.to_string()));
        }
        if let Some(rest) = s.strip_prefix("oci-layout:") {
            let (path, tag) = split_path_suffix(rest, Path::is_dir);
            return Ok(Source::OciLayout { path, tag });
        }
        if let Some(rest) = s.strip_prefix("docker-archive:") {
            let (path, reference) = split_path_suffix(rest, Path::is_file);
            return Ok(Source::DockerArchive { path, reference });
        }
        if s.ends_with(".aci") {
            return Ok(Source::Aci(PathBuf::from(s)));
        }
        bail!(
            "{s:?}: unknown image reference; use docker://HOST/REPO[:TAG], oci-layout:PATH[:TAG], \
             docker-archive:PATH or PATH.aci"
        )
    }
}

/// `PATH[:SUFFIX]`: the whole string if it names an existing path (paths may contain ':'),
/// else split at the last ':'.
fn split_path_suffix(s: &str, exists: fn(&Path) -> bool) -> (PathBuf, Option<String>) {
    if exists(Path::new(s)) {
        return (PathBuf::from(s), None);
    }
    match s.rsplit_once(':') {
        Some((path, suffix)) if !suffix.is_empty() && !suffix.contains('/') => {
            (PathBuf::from(path), Some(suffix.to_string()))
        }
        _ => (PathBuf::from(s), None),
    }
}

/// Refuses image names (from index.json annotations, manifest.json RepoTags, ACI manifests)
/// that would print as something else: with control or other non-printing characters, a name
/// in `ark image list` could rewrite the screen or fake a line.
pub fn check_names(names: &[String]) -> anyhow::Result<()> {
    for name in names {
        if super::escape::controls_escaped(name) != name.as_str() {
            anyhow::bail!("image name {name:?} has control characters");
        }
    }
    Ok(())
}

/// `NAME` → `NAME:latest` unless it has a tag or digest already.
pub fn with_default_tag(name: &str) -> String {
    let last = name.rsplit('/').next().unwrap_or(name);
    if last.contains(':') || last.contains('@') {
        name.to_string()
    } else {
        format!("{name}:latest")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_forms() {
        assert_eq!(
            Source::parse("docker://127.0.0.1:5000/busybox:1").unwrap(),
            Source::Docker("127.0.0.1:5000/busybox:1".into())
        );
        assert_eq!(
            Source::parse("oci-layout:/nonexistent/img:v1").unwrap(),
            Source::OciLayout {
                path: "/nonexistent/img".into(),
                tag: Some("v1".into())
            }
        );
        assert_eq!(
            Source::parse("docker-archive:/x/a.tar").unwrap(),
            Source::DockerArchive {
                path: "/x/a.tar".into(),
                reference: None
            }
        );
        assert_eq!(
            Source::parse("/x/a.aci").unwrap(),
            Source::Aci("/x/a.aci".into())
        );
        assert!(Source::parse("busybox").is_err());
        assert_eq!(with_default_tag("h:5000/busybox"), "h:5000/busybox:latest");
        assert_eq!(with_default_tag("busybox:1"), "busybox:1");
    }
}
