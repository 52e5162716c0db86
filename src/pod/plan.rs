//! Turning command-line flags plus image configs into a validated [`PodManifest`].
//!
//! Everything that can be wrong with the user's request is found here, before a pod directory
//! exists: so a bad request leaves nothing behind.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use ark_pod_spec::{
    App, AppLimits, EnvVar, Flavor, ImageRef, KvmOptions, Mount, NetMode, PodLimits, PodManifest,
    Stage1, Stage1Options, Volume, VolumeKind, MANIFEST_VERSION,
};

use super::args::AppSpec;
use super::units::{parse_cpus, parse_size};

/// What stage0 knows about one app's image.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImageInfo {
    /// Store ID (`sha256:...`).
    pub id: String,
    /// The name the user gave.
    pub name: String,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `KEY=VALUE` entries from the image config.
    pub env: Vec<String>,
    /// `user`, `uid`, `user:group` or `uid:gid`, as in the OCI image config.
    pub user: Option<String>,
    pub working_dir: Option<String>,
    /// The rendered rootfs (render cache; read-only).
    pub rootfs: PathBuf,
}

/// How `--stage1-kvm-root` asks stage1-kvm to hand the pod root to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum KvmRoot {
    /// virtio-fs share of the stage1 root.
    #[default]
    Fs,
    /// A block image of the stage1 root made at prepare (erofs, else ext4).
    Blk,
}

/// The pod-level part of a request.
#[derive(Debug, Clone)]
pub struct PodRequest {
    pub flavor: Flavor,
    pub volumes: Vec<String>,
    pub hostname: Option<String>,
    pub net: NetMode,
    pub interactive: bool,
    pub kvm_root: KvmRoot,
    /// Filesystem type of the block image when `kvm_root` is `Blk` (`erofs` or `ext4`).
    pub blk_fstype: &'static str,
    pub annotations: BTreeMap<String, String>,
}

/// Parses `NAME,kind=host,source=PATH[,readOnly=true]`; the source must exist.
pub fn parse_volume(spec: &str) -> Result<Volume, String> {
    let (name, list) = spec.split_once(',').unwrap_or((spec, ""));
    let name = name.trim().to_string();
    if name.is_empty() || name.contains('=') {
        return Err(format!(
            "--volume {spec:?}: want NAME,kind=host,source=PATH[,readOnly=true]"
        ));
    }
    let kv = super::args::key_values(
        "--volume",
        spec,
        list,
        &[
            &["kind"],
            &["source"],
            &["readOnly", "readonly", "read-only"],
        ],
    )?;
    let (kind, source) = (kv.get("kind"), kv.get("source").map(|s| s.to_string()));
    let read_only = match kv.get("readOnly") {
        None | Some(&"false") => false,
        Some(&"true") => true,
        Some(_) => return Err(format!("--volume {spec:?}: readOnly must be true or false")),
    };
    match kind {
        Some(&"host") | None => {}
        Some(k) => {
            return Err(format!(
                "--volume {name}: kind {k:?} is not supported (only host)"
            ))
        }
    }
    let source = source.ok_or_else(|| format!("--volume {name}: source=PATH is required"))?;
    let abs =
        fs::canonicalize(&source).map_err(|e| format!("--volume {name}: source {source}: {e}"))?;
    if !abs.is_dir() {
        return Err(format!(
            "--volume {name}: source {source} is not a directory"
        ));
    }
    let source = abs
        .to_str()
        .ok_or_else(|| format!("--volume {name}: source {source} is not UTF-8"))?
        .to_string();
    Ok(Volume {
        name,
        kind: VolumeKind::Host,
        source,
        read_only,
    })
}

/// Parses `volume=NAME,target=PATH`.
pub fn parse_mount(spec: &str) -> Result<Mount, String> {
    let kv = super::args::key_values("--mount", spec, spec, &[&["volume"], &["target"]])?;
    match (kv.get("volume"), kv.get("target")) {
        (Some(volume), Some(target)) if !volume.is_empty() && target.starts_with('/') => {
            Ok(Mount {
                volume: volume.to_string(),
                target: target.to_string(),
            })
        }
        _ => Err(format!(
            "--mount {spec:?}: want volume=NAME,target=/ABSOLUTE/PATH"
        )),
    }
}

/// An app name from an image name: `docker://reg/library/busybox:1.36` → `busybox`.
pub fn app_name_from_image(image: &str) -> String {
    let no_scheme = image.rsplit("://").next().unwrap_or(image);
    // The last path part without tag or digest; covers `oci-layout:PATH:TAG` too.
    let no_digest = no_scheme.split('@').next().unwrap_or(no_scheme);
    let last = no_digest.rsplit('/').next().unwrap_or(no_digest);
    let repo = last.split(':').next().unwrap_or(last);
    let mut name: String = repo
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    name = name.trim_matches('-').to_string();
    name.truncate(50);
    let name = name.trim_matches('-').to_string();
    if name.is_empty() {
        "app".into()
    } else {
        name
    }
}

/// Checks `user`/`group` against the image and picks the group: an explicit one, else the
/// user's primary group from the image's passwd (by name, or by uid for a numeric user), else
/// 0 (a numeric user without an entry). Returns (user, group) as the manifest stores them.
/// The image's files are read inside its root ([`ark_os::inroot`]): a symlink there
/// cannot make stage0 read the host's.
pub fn resolve_user(
    rootfs: &Path,
    app: &str,
    user: Option<&str>,
    group: Option<&str>,
) -> Result<(String, String), String> {
    use ark_os::identity;
    let (user, group_from_user) = match user {
        Some(u) => match u.split_once(':') {
            Some((u, g)) => (u.to_string(), Some(g.to_string())),
            None => (u.to_string(), None),
        },
        None => ("0".to_string(), None),
    };
    let group = group.map(str::to_string).or(group_from_user);
    if user.is_empty() {
        return Err(format!("app {app}: empty user"));
    }
    let (passwd, groups) = match ark_os::inroot::open_root(rootfs) {
        Ok(root) => identity::account_files(std::os::fd::AsFd::as_fd(&root)),
        Err(_) => (None, None),
    };
    let passwd = passwd.unwrap_or_default();
    let primary_gid = identity::primary_gid(&user, &passwd);
    if user.parse::<u32>().is_err() && !passwd_has_user(&passwd, &user) {
        return Err(format!(
            "app {app}: user {user:?} does not exist in the image's /etc/passwd"
        ));
    }
    let group = match group {
        Some(g) if g.parse::<u32>().is_ok() => g,
        Some(g) => {
            if !identity::group_exists(&g, groups.as_deref().unwrap_or("")) {
                return Err(format!(
                    "app {app}: group {g:?} does not exist in the image's /etc/group"
                ));
            }
            g
        }
        None => primary_gid.unwrap_or(0).to_string(),
    };
    Ok((user, group))
}

fn passwd_has_user(passwd: &str, user: &str) -> bool {
    ark_os::identity::resolve(user, "0", &[], Some(passwd), None).is_ok()
}

fn parse_env(kv: &str, app: &str) -> Result<EnvVar, String> {
    match kv.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok(EnvVar {
            name: k.to_string(),
            value: v.to_string(),
        }),
        _ => Err(format!("app {app}: --set-env {kv:?} is not KEY=VALUE")),
    }
}

/// The argv an app runs: `--exec` replaces the image's entrypoint and cmd; arguments after
/// `--` replace the image's cmd (Docker's rule) and follow `--exec`.
pub fn app_argv(image: &ImageInfo, exec: Option<&str>, args: Option<&[String]>) -> Vec<String> {
    match exec {
        Some(e) => std::iter::once(e.to_string())
            .chain(args.unwrap_or_default().iter().cloned())
            .collect(),
        None => image
            .entrypoint
            .iter()
            .cloned()
            .chain(match args {
                Some(a) => a.to_vec(),
                None => image.cmd.clone(),
            })
            .collect(),
    }
}

/// The capabilities an app keeps: `--caps-retain` exactly, or the defaults minus
/// `--caps-remove`, or the defaults. Names are normalized (`net_admin` → `CAP_NET_ADMIN`).
fn app_capabilities(app: &str, f: &super::args::AppFlags) -> Result<Vec<String>, String> {
    let norm = |list: &[String], flag: &str| -> Result<Vec<String>, String> {
        list.iter()
            .filter(|c| !c.trim().is_empty())
            .map(|c| {
                ark_pod_spec::manifest::normalize_capability(c)
                    .map(str::to_string)
                    .ok_or_else(|| format!("app {app}: {flag}: unknown capability {c:?}"))
            })
            .collect()
    };
    let defaults = || {
        ark_pod_spec::DEFAULT_CAPABILITIES
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
    };
    if let Some(keep) = &f.caps_retain {
        return norm(keep, "--caps-retain");
    }
    if let Some(remove) = &f.caps_remove {
        let remove = norm(remove, "--caps-remove")?;
        return Ok(defaults()
            .into_iter()
            .filter(|c| !remove.contains(c))
            .collect());
    }
    Ok(defaults())
}

/// The checks that need no image: volume specs and sources, mount specs and the volumes they
/// name, sizes and CPU counts. `build_manifest` repeats them; this runs before any fetch.
pub fn precheck(volumes: &[String], apps: &[AppSpec]) -> Result<(), String> {
    let mut names = Vec::new();
    for v in volumes {
        names.push(parse_volume(v)?.name);
    }
    for app in apps {
        let f = &app.flags;
        for m in &f.mount {
            let m = parse_mount(m)?;
            if !names.contains(&m.volume) {
                return Err(format!(
                    "app {}: --mount names volume {:?}, which no --volume defines",
                    app.image, m.volume
                ));
            }
        }
        if let Some(m) = &f.memory {
            parse_size(m).map_err(|e| format!("app {}: --memory {e}", app.image))?;
        }
        if let Some(c) = &f.cpus {
            parse_cpus(c).map_err(|e| format!("app {}: --cpus {e}", app.image))?;
        }
    }
    Ok(())
}

/// Builds and validates the manifest for `apps` (one [`ImageInfo`] per app, same order).
pub fn build_manifest(
    uuid: &str,
    req: &PodRequest,
    apps: &[AppSpec],
    images: &[ImageInfo],
) -> Result<PodManifest, String> {
    assert_eq!(apps.len(), images.len());
    let mut volumes = Vec::new();
    for v in &req.volumes {
        let vol = parse_volume(v)?;
        if volumes.iter().any(|x: &Volume| x.name == vol.name) {
            return Err(format!("--volume {}: defined twice", vol.name));
        }
        volumes.push(vol);
    }

    let mut used_names = HashSet::new();
    let mut out_apps = Vec::new();
    for (i, (spec, image)) in apps.iter().zip(images).enumerate() {
        let f = &spec.flags;
        let name = match &f.name {
            Some(n) => {
                if !used_names.insert(n.clone()) {
                    return Err(format!("--name {n}: two apps have this name"));
                }
                n.clone()
            }
            None => {
                let base = app_name_from_image(&spec.image);
                let mut n = base.clone();
                let mut k = 2;
                while !used_names.insert(n.clone()) {
                    n = format!("{base}-{k}");
                    k += 1;
                }
                n
            }
        };
        let exec = app_argv(image, f.exec.as_deref(), spec.args.as_deref());
        if exec.is_empty() {
            return Err(format!(
                "app {name}: the image has no entrypoint or cmd: give a command after `--` or --exec"
            ));
        }
        let mut env = Vec::new();
        for kv in image.env.iter().chain(&f.set_env) {
            env.push(parse_env(kv, &name)?);
        }
        let (user, group) = resolve_user(
            &image.rootfs,
            &name,
            f.user
                .as_deref()
                .or(image.user.as_deref())
                .filter(|u| !u.is_empty()),
            f.group.as_deref(),
        )?;
        let working_dir = f
            .working_dir
            .clone()
            .or_else(|| image.working_dir.clone().filter(|w| !w.is_empty()))
            .unwrap_or_else(|| "/".into());
        let mut mounts = Vec::new();
        for m in &f.mount {
            let m = parse_mount(m)?;
            if !volumes.iter().any(|v| v.name == m.volume) {
                return Err(format!(
                    "app {name}: --mount names volume {:?}, which no --volume defines",
                    m.volume
                ));
            }
            mounts.push(m);
        }
        let limits = AppLimits {
            memory_bytes: f
                .memory
                .as_deref()
                .map(parse_size)
                .transpose()
                .map_err(|e| format!("app {name}: --memory {e}"))?,
            cpu_millis: f
                .cpus
                .as_deref()
                .map(parse_cpus)
                .transpose()
                .map_err(|e| format!("app {name}: --cpus {e}"))?
                .map(u64::from),
            pids: f.pids_limit,
        };
        let capabilities_keep = app_capabilities(&name, f)?;
        out_apps.push(App {
            name,
            image: ImageRef {
                id: image.id.clone(),
                name: spec.image.clone(),
            },
            exec,
            env,
            user,
            group,
            supplementary_groups: f.supplementary_gids.clone().unwrap_or_default(),
            working_dir,
            mounts,
            limits,
            capabilities_keep,
            capabilities_explicit: f.caps_retain.is_some(),
            rlimits: Vec::new(),
            // The terminal goes to the first app.
            interactive: req.interactive && i == 0,
        });
    }

    // The pod as a whole gets the sum of its apps' limits when every app has one (as rkt
    // sized its pods); otherwise the pod is unbounded and only the limited apps are.
    let sum = |get: fn(&AppLimits) -> Option<u64>| -> Option<u64> {
        out_apps.iter().map(|a| get(&a.limits)).sum()
    };
    let limits = PodLimits {
        memory_bytes: sum(|l| l.memory_bytes),
        cpu_millis: sum(|l| l.cpu_millis),
        pids: None,
    };

    let mut stage1_options = Stage1Options::default();
    if req.flavor == Flavor::Kvm {
        stage1_options.kvm = match req.kvm_root {
            KvmRoot::Fs => KvmOptions {
                root: Some(ark_pod_spec::KvmRoot::Fs),
                ..KvmOptions::default()
            },
            KvmRoot::Blk => KvmOptions {
                root: Some(ark_pod_spec::KvmRoot::Blk),
                root_image: Some(format!("rootfs.{}", req.blk_fstype)),
                root_fstype: Some(req.blk_fstype.into()),
            },
        };
    } else if req.kvm_root == KvmRoot::Blk {
        return Err("--stage1-kvm-root=blk needs --stage1=kvm".into());
    }

    let manifest = PodManifest {
        version: MANIFEST_VERSION,
        uuid: uuid.to_string(),
        apps: out_apps,
        volumes,
        hostname: req.hostname.clone(),
        annotations: req.annotations.clone(),
        stage1: Stage1 {
            flavor: req.flavor,
            options: stage1_options,
        },
        net: req.net,
        limits,
    };
    manifest.validate().map_err(|e| e.to_string())?;
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::super::args::{split_apps, AppFlags};
    use super::*;

    fn rootfs() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("etc")).unwrap();
        fs::write(
            d.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\nwww:x:33:33::/var/www:/bin/sh\n",
        )
        .unwrap();
        fs::write(
            d.path().join("etc/group"),
            "root:x:0:\nnogroup:x:65534:\nwww-data:x:33:\n",
        )
        .unwrap();
        d
    }

    fn image(rootfs: &Path) -> ImageInfo {
        ImageInfo {
            id: "sha256:1234".into(),
            name: "busybox".into(),
            entrypoint: vec![],
            cmd: vec!["sh".into()],
            env: vec!["PATH=/usr/sbin:/usr/bin:/sbin:/bin".into()],
            user: None,
            working_dir: None,
            rootfs: rootfs.to_path_buf(),
        }
    }

    fn req(flavor: Flavor) -> PodRequest {
        PodRequest {
            flavor,
            volumes: vec![],
            hostname: None,
            net: NetMode::Host,
            interactive: false,
            kvm_root: KvmRoot::Fs,
            blk_fstype: "erofs",
            annotations: BTreeMap::new(),
        }
    }

    fn words(s: &[&str]) -> Vec<String> {
        s.iter().map(|w| w.to_string()).collect()
    }

    const UUID: &str = "0b0e5a1c-0f43-4c5e-9b55-7f0d7c9a1e21";

    #[test]
    fn argv_rules() {
        let mut img = image(Path::new("/"));
        img.entrypoint = vec!["/entry".into()];
        img.cmd = vec!["default".into()];
        let args = words(&["a", "b"]);
        assert_eq!(app_argv(&img, None, None), ["/entry", "default"]);
        assert_eq!(app_argv(&img, None, Some(&args)), ["/entry", "a", "b"]);
        assert_eq!(app_argv(&img, Some("/bin/x"), None), ["/bin/x"]);
        assert_eq!(
            app_argv(&img, Some("/bin/x"), Some(&args)),
            ["/bin/x", "a", "b"]
        );
    }

    #[test]
    fn names_from_images() {
        assert_eq!(
            app_name_from_image("docker://registry:5000/library/busybox:1.36"),
            "busybox"
        );
        assert_eq!(app_name_from_image("busybox"), "busybox");
        assert_eq!(
            app_name_from_image("oci-layout:/tmp/x/Busy_Box:latest"),
            "busy-box"
        );
        assert_eq!(app_name_from_image("sha256:abcdef"), "sha256");
        assert_eq!(app_name_from_image("___"), "app");
    }

    #[test]
    fn builds_a_two_app_manifest() {
        let r = rootfs();
        let vol = tempfile::tempdir().unwrap();
        let mut rq = req(Flavor::Ns);
        rq.volumes = vec![format!(
            "data,kind=host,source={},readOnly=true",
            vol.path().display()
        )];
        rq.hostname = Some("pod1".into());
        let apps = split_apps(
            &words(&[
                "busybox",
                "--set-env=A=1",
                "--user=www",
                "--working-dir=/tmp",
                "--memory=64M",
                "--mount=volume=data,target=/data",
                "--",
                "sh",
                "-c",
                "exit 0",
                "---",
                "busybox",
                "--user=nobody:root",
                "--cpus=0.5",
                "--memory=32M",
            ]),
            &AppFlags::default(),
        )
        .unwrap();
        let img = image(r.path());
        let m = build_manifest(UUID, &rq, &apps, &[img.clone(), img]).unwrap();
        assert_eq!(m.apps.len(), 2);
        let (a, b) = (&m.apps[0], &m.apps[1]);
        assert_eq!(a.name, "busybox");
        assert_eq!(b.name, "busybox-2");
        assert_eq!(a.exec, ["sh", "-c", "exit 0"]);
        assert_eq!(b.exec, ["sh"]);
        assert_eq!(
            a.env.last().unwrap(),
            &EnvVar {
                name: "A".into(),
                value: "1".into()
            }
        );
        assert_eq!(a.env[0].name, "PATH");
        assert_eq!((a.user.as_str(), a.group.as_str()), ("www", "33"));
        assert_eq!((b.user.as_str(), b.group.as_str()), ("nobody", "root"));
        assert_eq!(a.working_dir, "/tmp");
        assert_eq!(
            a.mounts,
            [Mount {
                volume: "data".into(),
                target: "/data".into()
            }]
        );
        assert_eq!(a.limits.memory_bytes, Some(64 << 20));
        assert_eq!(b.limits.cpu_millis, Some(500));
        // Pod memory = sum (both apps limited); cpu: only one app limited → unbounded.
        assert_eq!(m.limits.memory_bytes, Some(96 << 20));
        assert_eq!(m.limits.cpu_millis, None);
        assert!(m.volumes[0].read_only);
        assert_eq!(m.hostname.as_deref(), Some("pod1"));
        assert!(m.stage1.options.is_empty());
    }

    #[test]
    fn hostile_requests_are_one_line_errors() {
        let r = rootfs();
        let img = image(r.path());
        let one = |flags: &[&str], rq: PodRequest| {
            let mut w = words(&["busybox"]);
            w.extend(words(flags));
            let apps = split_apps(&w, &AppFlags::default()).unwrap();
            build_manifest(UUID, &rq, &apps, std::slice::from_ref(&img))
        };
        let e = one(&["--user=ghost"], req(Flavor::Ns)).unwrap_err();
        assert!(e.contains("\"ghost\" does not exist"), "{e}");
        let e = one(&["--group=ghosts"], req(Flavor::Ns)).unwrap_err();
        assert!(e.contains("\"ghosts\" does not exist"), "{e}");
        let e = one(&["--mount=volume=nope,target=/x"], req(Flavor::Ns)).unwrap_err();
        assert!(e.contains("no --volume defines"), "{e}");
        let mut rq = req(Flavor::Ns);
        rq.volumes = vec!["data,kind=host,source=/definitely/not/here".into()];
        let e = one(&[], rq).unwrap_err();
        assert!(e.contains("/definitely/not/here"), "{e}");
        let e = one(&["--set-env=NOEQUALS"], req(Flavor::Ns)).unwrap_err();
        assert!(e.contains("KEY=VALUE"), "{e}");
        let e = one(&["--memory=lots"], req(Flavor::Ns)).unwrap_err();
        assert!(e.contains("--memory"), "{e}");
        let e = one(&["--working-dir=relative"], req(Flavor::Ns)).unwrap_err();
        assert!(e.contains("working_dir"), "{e}");
        let mut rq = req(Flavor::Ns);
        rq.kvm_root = KvmRoot::Blk;
        assert!(one(&[], rq).unwrap_err().contains("--stage1=kvm"));
        let mut noc = img.clone();
        noc.cmd.clear();
        let apps = split_apps(&words(&["busybox"]), &AppFlags::default()).unwrap();
        let e = build_manifest(UUID, &req(Flavor::Ns), &apps, &[noc]).unwrap_err();
        assert!(e.contains("no entrypoint or cmd"), "{e}");
        let apps = split_apps(
            &words(&["busybox", "--name=x", "---", "busybox", "--name=x"]),
            &AppFlags::default(),
        )
        .unwrap();
        let e =
            build_manifest(UUID, &req(Flavor::Ns), &apps, &[img.clone(), img.clone()]).unwrap_err();
        assert!(e.contains("two apps"), "{e}");
    }

    #[test]
    fn image_user_and_kvm_blk_options() {
        let r = rootfs();
        let mut img = image(r.path());
        img.user = Some("www".into());
        img.working_dir = Some("/var/www".into());
        let mut rq = req(Flavor::Kvm);
        rq.kvm_root = KvmRoot::Blk;
        rq.interactive = true;
        let apps = split_apps(&words(&["busybox"]), &AppFlags::default()).unwrap();
        let m = build_manifest(UUID, &rq, &apps, &[img]).unwrap();
        assert_eq!(m.apps[0].user, "www");
        assert_eq!(m.apps[0].group, "33");
        assert_eq!(m.apps[0].working_dir, "/var/www");
        assert!(m.apps[0].interactive);
        let kvm = &m.stage1.options.kvm;
        assert_eq!(kvm.root, Some(ark_pod_spec::KvmRoot::Blk));
        assert_eq!(kvm.root_image.as_deref(), Some("rootfs.erofs"));
        assert_eq!(kvm.root_fstype.as_deref(), Some("erofs"));
    }

    #[test]
    fn capabilities_pids_and_groups() {
        let r = rootfs();
        let img = image(r.path());
        let apps = split_apps(
            &words(&[
                "busybox",
                "--caps-retain=net_bind_service,CAP_CHOWN",
                "--pids-limit=50",
                "--supplementary-gids=10,20",
                "---",
                "busybox",
                "--caps-remove=CAP_KILL",
            ]),
            &AppFlags::default(),
        )
        .unwrap();
        let m = build_manifest(UUID, &req(Flavor::Ns), &apps, &[img.clone(), img.clone()]).unwrap();
        assert_eq!(
            m.apps[0].capabilities_keep,
            ["CAP_NET_BIND_SERVICE", "CAP_CHOWN"]
        );
        assert_eq!(m.apps[0].limits.pids, Some(50));
        assert_eq!(m.apps[0].supplementary_groups, [10, 20]);
        // Only --caps-retain names capabilities a non-root app may hold.
        assert!(m.apps[0].capabilities_explicit);
        assert!(!m.apps[1].capabilities_explicit);
        let b = &m.apps[1].capabilities_keep;
        assert_eq!(b.len(), ark_pod_spec::DEFAULT_CAPABILITIES.len() - 1);
        assert!(!b.iter().any(|c| c == "CAP_KILL"));
        let apps = split_apps(
            &words(&["busybox", "--caps-retain=CAP_FLY"]),
            &AppFlags::default(),
        )
        .unwrap();
        let e = build_manifest(UUID, &req(Flavor::Ns), &apps, &[img]).unwrap_err();
        assert!(e.contains("unknown capability \"CAP_FLY\""), "{e}");
    }

    #[test]
    fn group_defaults_to_the_users_passwd_entry() {
        let r = rootfs();
        let ok = |u: Option<&str>, g: Option<&str>| resolve_user(r.path(), "a", u, g).unwrap();
        // A numeric user with an entry gets its primary group, as a named one does.
        assert_eq!(ok(Some("65534"), None), ("65534".into(), "65534".into()));
        assert_eq!(ok(Some("nobody"), None), ("nobody".into(), "65534".into()));
        assert_eq!(ok(Some("4242"), None), ("4242".into(), "0".into()));
        assert_eq!(ok(Some("65534:33"), None), ("65534".into(), "33".into()));
        assert_eq!(ok(None, None), ("0".into(), "0".into()));
    }

    #[test]
    fn account_files_are_read_inside_the_image() {
        // An image whose etc/passwd points at a host file: the link resolves inside the
        // image, where there is nothing, so the host's users are not found.
        let host = tempfile::tempdir().unwrap();
        fs::write(host.path().join("passwd"), "hostuser:x:7:7::/:/bin/sh\n").unwrap();
        let r = tempfile::tempdir().unwrap();
        fs::create_dir(r.path().join("etc")).unwrap();
        std::os::unix::fs::symlink(host.path().join("passwd"), r.path().join("etc/passwd"))
            .unwrap();
        let e = resolve_user(r.path(), "a", Some("hostuser"), None).unwrap_err();
        assert!(e.contains("does not exist"), "{e}");
    }

    #[test]
    fn precheck_needs_no_image() {
        let vol = tempfile::tempdir().unwrap();
        let v = vec![format!("data,kind=host,source={}", vol.path().display())];
        let ok = split_apps(
            &words(&[
                "img",
                "--mount=volume=data,target=/d",
                "--memory=1G",
                "--cpus=2",
            ]),
            &AppFlags::default(),
        )
        .unwrap();
        precheck(&v, &ok).unwrap();
        let bad_mount = split_apps(
            &words(&["img", "--mount=volume=other,target=/d"]),
            &AppFlags::default(),
        )
        .unwrap();
        assert!(precheck(&v, &bad_mount).unwrap_err().contains("\"other\""));
        let bad_cpus = split_apps(&words(&["img", "--cpus=lots"]), &AppFlags::default()).unwrap();
        assert!(precheck(&v, &bad_cpus).unwrap_err().contains("--cpus"));
        let missing = vec!["data,kind=host,source=/no/such/dir".to_string()];
        assert!(precheck(&missing, &ok)
            .unwrap_err()
            .contains("/no/such/dir"));
    }

    #[test]
    fn volume_and_mount_specs() {
        let v = parse_volume("data,kind=host,source=/tmp").unwrap();
        assert_eq!(v.name, "data");
        assert!(!v.read_only);
        assert!(parse_volume("data,kind=empty,source=/tmp").is_err());
        assert!(parse_volume("data,kind=host").is_err());
        assert!(parse_volume("data,kind=host,source=/tmp,readOnly=maybe").is_err());
        assert!(parse_volume("kind=host,source=/tmp").is_err());
        assert!(parse_mount("volume=data,target=/d").is_ok());
        assert!(parse_mount("volume=data,target=rel").is_err());
        assert!(parse_mount("volume=data").is_err());
        assert!(parse_mount("vol=data,target=/x").is_err());
    }
}
