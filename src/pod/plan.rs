//! Turning a pod request plus image configs into a validated [`PodManifest`].
//!
//! Everything that can be wrong with the user's request is found here, before a pod directory
//! exists: so a bad request leaves nothing behind.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use ark_pod_spec::{
    App, AppLimits, EnvVar, Flavor, ImageRef, KvmOptions, KvmRoot, Mount, NetMode, PodLimits,
    PodManifest, Stage1, Stage1Options, Volume, VolumeKind, MANIFEST_VERSION,
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
    /// Ports the image declares (`80/tcp`).
    pub exposed_ports: Vec<String>,
    /// An ACI's port names (`http` → `80/tcp`).
    pub port_names: BTreeMap<String, String>,
}

/// The pod-level part of a request.
#[derive(Debug, Clone)]
pub struct PodRequest {
    pub flavor: Flavor,
    pub volumes: Vec<String>,
    pub hostname: Option<String>,
    pub net: NetMode,
    /// Ports, DNS, hosts entries, CNI directories.
    pub net_options: super::net::NetOptions,
    pub interactive: bool,
    /// The first app gets a pty made in the pod (`-t`) instead of the host's terminal.
    pub tty: bool,
    pub kvm_root: KvmRoot,
    /// Filesystem type of the block image when `kvm_root` is `Blk` (`erofs` or `ext4`).
    pub blk_fstype: &'static str,
    pub annotations: BTreeMap<String, String>,
    /// `--log-max-size`, in bytes.
    pub log_max_size: Option<u64>,
    /// `ark app sandbox`: a pod that may start empty and gets apps while it runs.
    pub sandbox: bool,
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
fn app_capabilities(app: &str, f: &super::args::AppOptions) -> Result<Vec<String>, String> {
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
        // The terminal goes to the first app: the host's (interactive), or a pty of its own
        // that ark attaches to (tty).
        out_apps.push(build_app(
            spec,
            image,
            &volumes,
            &mut used_names,
            req.interactive && !req.tty && i == 0,
            req.tty && i == 0,
        )?);
    }

    // The pod as a whole gets the sum of its apps' limits when every app has one (as rkt
    // sized its pods); otherwise the pod is unbounded and only the limited apps are.
    let sum = |get: fn(&AppLimits) -> Option<u64>| -> Option<u64> {
        out_apps.iter().map(|a| get(&a.limits)).sum()
    };
    let limits = match req.sandbox {
        // The sum of no apps is no limit (apps added later bring their own).
        true => PodLimits::default(),
        false => PodLimits {
            memory_bytes: sum(|l| l.memory_bytes),
            cpu_millis: sum(|l| l.cpu_millis),
            pids: None,
        },
    };

    let mut stage1_options = Stage1Options::default();
    if req.flavor == Flavor::Kvm {
        stage1_options.kvm = match &req.kvm_root {
            KvmRoot::Fs => KvmOptions {
                root: Some(KvmRoot::Fs),
                ..KvmOptions::default()
            },
            KvmRoot::Blk => KvmOptions {
                root: Some(KvmRoot::Blk),
                root_image: Some(format!("rootfs.{}", req.blk_fstype)),
                root_fstype: Some(req.blk_fstype.into()),
            },
            KvmRoot::Other(other) => {
                return Err(format!("--stage1-kvm-root={other:?} is neither fs nor blk"))
            }
        };
    } else if req.kvm_root == KvmRoot::Blk {
        return Err("--stage1-kvm-root=blk needs --stage1=kvm".into());
    }
    if let Some(n) = req.log_max_size {
        use ark_pod_spec::logs::{LogLimits, OPTION_MAX_SIZE};
        stage1_options
            .other
            .insert(OPTION_MAX_SIZE.into(), n.to_string());
        LogLimits::from_options(&stage1_options).map_err(|e| format!("--log-max-size: {e}"))?;
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
        net: req.net.clone(),
        ports: super::net::resolve_ports(&req.net_options.ports, images)?,
        dns: req.net_options.dns.clone(),
        hosts_entries: req.net_options.hosts_entries.clone(),
        hosts_from_host: req.net_options.hosts_from_host,
        net_config_dir: req.net_options.config_dir.clone(),
        cni_plugin_dirs: req.net_options.plugin_dirs.clone(),
        limits,
        sandbox: req.sandbox,
    };
    manifest.validate().map_err(|e| e.to_string())?;
    Ok(manifest)
}

/// One app's manifest entry from its command line and image; `used_names` holds the names
/// taken in the pod (the app's is added). Also for an app added to a running sandbox.
pub fn build_app(
    spec: &AppSpec,
    image: &ImageInfo,
    volumes: &[Volume],
    used_names: &mut HashSet<String>,
    interactive: bool,
    tty: bool,
) -> Result<App, String> {
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
    Ok(App {
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
        interactive,
        tty,
    })
}
