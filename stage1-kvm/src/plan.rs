//! From a prepared pod to a VM: everything stage1-kvm decides, as plain data, so it can be
//! checked without booting anything.

use std::path::{Path, PathBuf};

use ark_pod_spec::layout::guest;
use ark_pod_spec::manifest::{Flavor, KvmRoot, PodManifest};
use ark_pod_spec::net::GuestNetwork;
use ark_pod_spec::stage2::{
    ControlTransport, OnExit, OutputTransport, Stage2Config, Stage2Mount, StatusTransport,
    STAGE2_CMDLINE_KEY, STAGE2_DISK_DEVICE,
};
use ark_pod_spec::PodLayout;
use kernel_config::Profile;
use vmm::{BlockConfig, FsConfig, SerialConfig, VmConfig, VsockConfig};

/// vsock port guest-init reports statuses to (host side: `<uds>_<port>`).
pub const STATUS_PORT: u32 = 1024;
/// vsock port guest-init listens on for `stop` requests.
pub const CONTROL_PORT: u32 = 1025;
/// The guest's vsock CID (3 is the first one free for guests).
pub const GUEST_CID: u64 = 3;
/// virtio-fs tag of the pod root.
pub const ROOT_TAG: &str = "arkroot";
/// virtio-fs tag of a sandbox's `apps/` (the parent of every app root, added or not).
pub const APPS_TAG: &str = "arkapps";
/// Guest RAM beyond the apps' limits: kernel, guest-init, page cache. rkt's kvm flavor did the same.
pub const BASE_MEMORY_MIB: u64 = 128;
/// Host memory the VMM process may use beyond guest RAM (its cgroup limit).
pub const VMM_OVERHEAD_MIB: u64 = 64;
/// The hybrid vsock socket, relative to the pod directory, which is stage1-kvm's working
/// directory: a Unix socket path is limited to 107 bytes, and pod directories can be longer.
pub const VSOCK_SOCKET: &str = ark_pod_spec::guest::VSOCK_SOCKET;

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("pod {0} is a {1} pod, not a kvm pod")]
    WrongFlavor(String, &'static str),
    #[error("kvm.root={0:?}: want fs or blk")]
    BadRoot(String),
    #[error("kvm.root=blk: the pod has no root image option (kvm.root.image)")]
    NoRootImage,
    #[error("root image {0}: {1}")]
    RootImage(PathBuf, std::io::Error),
    #[error("pod needs {0} MiB of guest memory, more than the VMM allows")]
    TooMuchMemory(u64),
    #[error("a sandbox needs kvm.root=fs: apps added later must reach the guest's root")]
    SandboxOnBlock,
}

/// How the pod root reaches the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Root {
    /// The stage1 root shared over virtio-fs (the default: no copy, host sees writes).
    Fs,
    /// A block image made by stage0 at prepare.
    Blk { image: PathBuf, fstype: String },
}

/// What stage1-kvm will run.
#[derive(Debug, Clone)]
pub struct VmPlan {
    pub vm: VmConfig,
    pub stage2: Stage2Config,
    pub root: Root,
    /// Host socket the vsock device listens on (`CONNECT <port>` for host→guest), relative to
    /// the pod directory (stage1-kvm's working directory).
    pub vsock_uds: PathBuf,
    /// Host socket guest-init's status connection lands on, relative likewise.
    pub status_uds: PathBuf,
    /// Host socket guest-init's output connections land on, relative likewise.
    pub output_uds: PathBuf,
    /// Limit for the VMM process's cgroup.
    pub vmm_memory_bytes: u64,
    pub cpu_millis: Option<u64>,
}

/// Host facts the plan depends on.
#[derive(Debug, Clone)]
pub struct Host {
    pub profile: Profile,
    pub kernel: PathBuf,
}

/// `net`: what guest-init configures in the VM (from [`crate::net::attach`]) for pods on CNI
/// networks (none: only `lo`), and the `/etc` files it writes for the apps.
/// The pod's networks as the guest sees them.
#[derive(Debug, Clone, Default)]
pub struct GuestNet {
    pub network: Option<GuestNetwork>,
    pub etc: ark_pod_spec::EtcFiles,
}

pub fn plan(
    layout: &PodLayout,
    manifest: &PodManifest,
    host: &Host,
    net: &GuestNet,
    debug: bool,
) -> Result<VmPlan, PlanError> {
    if manifest.stage1.flavor != Flavor::Kvm {
        return Err(PlanError::WrongFlavor(
            manifest.uuid.clone(),
            manifest.stage1.flavor.as_str(),
        ));
    }
    let root = root(layout, manifest)?;
    if manifest.sandbox && root != Root::Fs {
        return Err(PlanError::SandboxOnBlock);
    }

    let mut stage2 = Stage2Config::new(
        manifest.uuid.clone(),
        StatusTransport::Vsock {
            port: STATUS_PORT,
            cid: ark_pod_spec::stage2::VSOCK_HOST_CID,
        },
        OnExit::Reboot,
    );
    stage2.hostname = Some(manifest.hostname());
    stage2.control = Some(ControlTransport::Vsock { port: CONTROL_PORT });
    stage2.agent = Some(ark_pod_spec::AgentTransport::Vsock {
        port: ark_pod_spec::agent::AGENT_VSOCK_PORT,
    });
    stage2.output = Some(OutputTransport::Vsock {
        port: ark_pod_spec::logs::OUTPUT_PORT,
        cid: ark_pod_spec::stage2::VSOCK_HOST_CID,
    });
    stage2.mount_pseudo_fs = true;
    stage2.create_app_cgroups = true;
    stage2.debug = debug;
    // Before the stage2 config is encoded onto a block root's command line below.
    stage2.network = net.network.clone();
    stage2.etc = net.etc.clone();

    let mut vm = VmConfig::new(&host.kernel);
    vm.memory_mib = guest_memory_mib(manifest)?;
    // The pvm-compat kernel is built without SMP; elsewhere one vCPU per started CPU of --cpus.
    let cpu_millis = cpu_millis(manifest);
    vm.vcpus = match (host.profile, cpu_millis) {
        (Profile::PvmCompat, _) | (_, None) => 1,
        (_, Some(m)) => u8::try_from(m.div_ceil(1000))
            .unwrap_or(u8::MAX)
            .clamp(1, vmm::config::MAX_VCPUS),
    };
    // The apps' output comes over vsock; the console carries guest-init's messages (and the
    // kernel's with --debug): stderr. An interactive app still has the console as its
    // terminal, so it stays on stdout.
    vm.serial = if manifest.apps.iter().any(|a| a.interactive) {
        SerialConfig::Stdout
    } else {
        SerialConfig::Stderr
    };
    vm.rng = true;

    // Volumes: one virtio-fs device each; tags are short and positional (names may be long).
    for (i, v) in manifest.volumes.iter().enumerate() {
        let tag = format!("arkvol{i}");
        vm.fs.push(FsConfig {
            tag: tag.clone(),
            dir: PathBuf::from(&v.source),
            read_only: v.read_only,
            // Host-side changes to a volume must reach the app.
            shared: true,
        });
        stage2.mounts.push(Stage2Mount {
            source: tag,
            fstype: "virtiofs".into(),
            target: guest::volume_dir(&v.name),
            read_only: v.read_only,
            data: None,
        });
    }

    let mut cmdline = kernel_cmdline(host.profile, debug);
    match &root {
        Root::Fs => {
            vm.fs.insert(
                0,
                FsConfig {
                    tag: ROOT_TAG.into(),
                    dir: layout.stage1_rootfs(),
                    read_only: false,
                    shared: false,
                },
            );
            cmdline.push_str(&format!(" rootfstype=virtiofs root={ROOT_TAG} rw"));
            if manifest.sandbox {
                // Apps added while the VM runs appear under the one directory shared from
                // boot (no new device): `apps/`, with short cache timeouts, since the host
                // adds and removes app roots under the guest. The root's own share caches
                // as for a directory only the guest changes, so `/apps` is this mount.
                vm.fs.push(FsConfig {
                    tag: APPS_TAG.into(),
                    dir: layout.stage1_rootfs().join("apps"),
                    read_only: false,
                    shared: true,
                });
                stage2.mounts.insert(
                    0,
                    Stage2Mount {
                        source: APPS_TAG.into(),
                        fstype: "virtiofs".into(),
                        target: "/apps".into(),
                        read_only: false,
                        data: None,
                    },
                );
            }
        }
        Root::Blk { image, fstype } => {
            let read_only = fstype == "erofs";
            vm.blk.push(BlockConfig {
                path: image.clone(),
                read_only,
            });
            // A read-only image cannot hold the stage2 config: it comes on a second, read-only
            // disk (main writes it), never on the command line (2048 bytes, and readable by
            // every guest process in /proc/cmdline).
            vm.blk.push(BlockConfig {
                path: layout.stage2_disk(),
                read_only: true,
            });
            cmdline.push_str(&format!(
                " root=/dev/vda rootfstype={fstype} {} {STAGE2_CMDLINE_KEY}={STAGE2_DISK_DEVICE}",
                if read_only { "ro" } else { "rw" }
            ));
        }
    }
    cmdline.push_str(&format!(" init={}", guest::INIT));
    vm.cmdline = cmdline;

    let vsock_uds = PathBuf::from(VSOCK_SOCKET);
    let status_uds = PathBuf::from(format!("{}_{STATUS_PORT}", vsock_uds.display()));
    let output_uds = PathBuf::from(format!(
        "{}_{}",
        vsock_uds.display(),
        ark_pod_spec::logs::OUTPUT_PORT
    ));
    vm.vsock = Some(VsockConfig {
        guest_cid: GUEST_CID,
        uds_path: vsock_uds.clone(),
    });

    Ok(VmPlan {
        vmm_memory_bytes: (u64::from(vm.memory_mib) + VMM_OVERHEAD_MIB) << 20,
        cpu_millis,
        vm,
        stage2,
        root,
        vsock_uds,
        status_uds,
        output_uds,
    })
}

fn root(layout: &PodLayout, manifest: &PodManifest) -> Result<Root, PlanError> {
    let opts = &manifest.stage1.options.kvm;
    match &opts.root {
        None | Some(KvmRoot::Fs) => Ok(Root::Fs),
        Some(KvmRoot::Blk) => {
            let rel = opts.root_image.as_ref().ok_or(PlanError::NoRootImage)?;
            let image = layout.dir().join(rel);
            std::fs::metadata(&image).map_err(|e| PlanError::RootImage(image.clone(), e))?;
            let fstype = opts.blk_fstype().to_string();
            Ok(Root::Blk { image, fstype })
        }
        Some(KvmRoot::Other(other)) => Err(PlanError::BadRoot(other.clone())),
    }
}

/// The host profile's flags; kernel messages only with `--debug`.
pub fn kernel_cmdline(profile: Profile, debug: bool) -> String {
    let base = profile.cmdline().trim();
    if debug {
        base.split_whitespace()
            .filter(|w| *w != "quiet")
            .collect::<Vec<_>>()
            .join(" ")
    } else {
        format!("{base} loglevel=0")
    }
}

/// Sum of the apps' memory limits (or the pod's), plus a base for the guest itself.
fn guest_memory_mib(m: &PodManifest) -> Result<u32, PlanError> {
    // Saturating: manifest values are not trusted to be small; too much is refused below.
    let limits = asked_memory_bytes(m);
    let mib = BASE_MEMORY_MIB.saturating_add(limits.div_ceil(1 << 20));
    u32::try_from(mib)
        .ok()
        .filter(|mib| *mib <= vmm::config::MAX_MEMORY_MIB)
        .ok_or(PlanError::TooMuchMemory(mib))
}

/// What the VM got, in one line, when it is not what the pod asked for with `--memory` and
/// `--cpus`: the guest's own base memory comes on top of the apps', and the pvm-compat kernel
/// (kvm_pvm hosts) is uniprocessor. `None` when nothing was asked or the VM got just that.
pub fn resources_note(m: &PodManifest, vm: &VmConfig, profile: Profile) -> Option<String> {
    let mut parts = Vec::new();
    let asked_bytes = asked_memory_bytes(m);
    if asked_bytes > 0 {
        let asked_mib = asked_bytes.div_ceil(1 << 20);
        let guest_mib = u64::from(vm.memory_mib).saturating_sub(asked_mib);
        parts.push(format!(
            "{} MiB of memory ({asked_mib} MiB asked + {guest_mib} MiB for the guest kernel and ark-init)",
            vm.memory_mib
        ));
    }
    if let Some(millis) = cpu_millis(m) {
        let whole = millis.div_ceil(1000);
        if u64::from(vm.vcpus) < whole {
            let why = if profile == Profile::PvmCompat {
                "this host's pvm-compat guest kernel is uniprocessor"
            } else {
                "the most a VM gets"
            };
            let asked = format!("{}.{:03}", millis / 1000, millis % 1000);
            let asked = asked.trim_end_matches('0').trim_end_matches('.');
            parts.push(format!(
                "{} vCPU{} ({asked} CPUs asked; {why})",
                vm.vcpus,
                if vm.vcpus == 1 { "" } else { "s" }
            ));
        }
    }
    (!parts.is_empty()).then(|| format!("the VM got {}", parts.join(" and ")))
}

/// Sum of the apps' memory limits, or the pod's when larger.
fn asked_memory_bytes(m: &PodManifest) -> u64 {
    let apps = m
        .apps
        .iter()
        .filter_map(|a| a.limits.memory_bytes)
        .fold(0u64, u64::saturating_add);
    m.limits.memory_bytes.map_or(apps, |p| p.max(apps))
}

fn cpu_millis(m: &PodManifest) -> Option<u64> {
    let apps: u64 = m.apps.iter().filter_map(|a| a.limits.cpu_millis).sum();
    match (m.limits.cpu_millis, apps) {
        (Some(p), _) => Some(p),
        (None, 0) => None,
        (None, a) => Some(a),
    }
}

/// Whether `path` exists and is openable read-write (what KVM needs).
pub fn check_kvm(dev: &Path) -> Result<(), String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev)
        .map(drop)
        .map_err(|e| {
            format!(
                "{}: {e}: this host cannot run kvm pods (try --stage1=ns)",
                dev.display()
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(extra: &str) -> PodManifest {
        let json = format!(
            r#"{{"version":1,"uuid":"0b6e4a0e-57a5-4a53-9f0e-4f7c5b7f8c11",
                "apps":[{{"name":"a","image":{{"id":"sha256:00","name":"busybox"}},"exec":["/bin/true"],
                          "limits":{{"memory_bytes":268435456}}}},
                        {{"name":"b","image":{{"id":"sha256:00","name":"busybox"}},"exec":["/bin/true"],
                          "limits":{{"memory_bytes":4194305,"cpu_millis":1500}}}}],
                "stage1":{{"flavor":"kvm"{extra}}}}}"#
        );
        PodManifest::from_json(json.as_bytes()).expect("test manifest parses")
    }

    fn host(profile: Profile) -> Host {
        Host {
            profile,
            kernel: PathBuf::from("/k/vmlinux"),
        }
    }

    /// Memory limits that overflow a u64 when summed are refused as too much memory, not a
    /// panic (debug) or a wrapped, small guest (release).
    #[test]
    fn overflowing_memory_limits_are_too_much_memory() {
        let mut m = manifest("");
        for a in &mut m.apps {
            a.limits.memory_bytes = Some(u64::MAX - 1);
        }
        assert!(matches!(
            guest_memory_mib(&m),
            Err(PlanError::TooMuchMemory(_))
        ));
    }

    #[test]
    fn fs_root_plan() {
        let dir = tempfile::tempdir().unwrap();
        let layout = PodLayout::new(dir.path());
        let m = manifest("");
        let p = plan(
            &layout,
            &m,
            &host(Profile::Microvm),
            &GuestNet::default(),
            false,
        )
        .unwrap();
        assert_eq!(p.root, Root::Fs);
        // 128 base + 256 MiB + 4 MiB and a byte (rounded up to a whole MiB).
        assert_eq!(p.vm.memory_mib, 128 + 256 + 5);
        assert_eq!(p.vm.vcpus, 2, "1.5 CPUs → 2 vCPUs");
        // 2 vCPUs for 1.5 CPUs is not less than asked (the cgroup holds it to 1.5): memory only.
        let note = resources_note(&m, &p.vm, Profile::Microvm).unwrap();
        assert!(!note.contains("vCPU"), "{note}");
        assert!(note.starts_with("the VM got 389 MiB of memory"), "{note}");
        assert_eq!(p.vm.fs[0].tag, ROOT_TAG);
        assert_eq!(p.vm.fs[0].dir, layout.stage1_rootfs());
        assert!(p.vm.cmdline.contains("rootfstype=virtiofs root=arkroot rw"));
        assert!(p.vm.cmdline.ends_with("init=/init"));
        assert!(p.vm.cmdline.contains("loglevel=0"));
        assert!(!p.vm.cmdline.contains(STAGE2_CMDLINE_KEY));
        assert_eq!(p.stage2.on_exit, OnExit::Reboot);
        assert!(matches!(
            p.stage2.status,
            StatusTransport::Vsock {
                port: STATUS_PORT,
                cid: 2
            }
        ));
        assert_eq!(
            p.status_uds,
            PathBuf::from(format!("{}_{STATUS_PORT}", p.vsock_uds.display()))
        );
        assert_eq!(p.vmm_memory_bytes, (389 + VMM_OVERHEAD_MIB) << 20);
        assert_eq!(p.cpu_millis, Some(1500));
    }

    #[test]
    fn pvm_compat_host_gets_one_vcpu_and_debug_keeps_kernel_messages() {
        let dir = tempfile::tempdir().unwrap();
        let p = plan(
            &PodLayout::new(dir.path()),
            &manifest(""),
            &host(Profile::PvmCompat),
            &GuestNet::default(),
            true,
        )
        .unwrap();
        assert_eq!(p.vm.vcpus, 1);
        assert_eq!(
            resources_note(&manifest(""), &p.vm, Profile::PvmCompat).as_deref(),
            Some(
                "the VM got 389 MiB of memory (261 MiB asked + 128 MiB for the guest kernel \
                 and ark-init) and 1 vCPU (1.5 CPUs asked; this host's pvm-compat guest kernel \
                 is uniprocessor)"
            )
        );
        assert!(p.vm.cmdline.contains("no_int3_selftest"));
        assert!(!p.vm.cmdline.split_whitespace().any(|w| w == "quiet"));
        assert!(!p.vm.cmdline.contains("loglevel=0"));
        assert!(p.stage2.debug);
    }

    #[test]
    fn blk_root_carries_stage2_on_a_config_disk() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("rootfs.erofs"), b"x").unwrap();
        let m = manifest(
            r#","options":{"kvm.root":"blk","kvm.root.image":"rootfs.erofs","kvm.root.fstype":"erofs"}"#,
        );
        let layout = PodLayout::new(dir.path());
        let p = plan(
            &layout,
            &m,
            &host(Profile::Microvm),
            &GuestNet::default(),
            false,
        )
        .unwrap();
        assert!(matches!(&p.root, Root::Blk { fstype, .. } if fstype == "erofs"));
        assert!(p.vm.blk[0].read_only);
        assert!(p.vm.cmdline.contains("root=/dev/vda rootfstype=erofs ro"));
        // The config is the second disk, read-only; the command line only names it.
        assert_eq!(p.vm.blk[1].path, layout.stage2_disk());
        assert!(p.vm.blk[1].read_only);
        let arg =
            p.vm.cmdline
                .split_whitespace()
                .find_map(|w| w.strip_prefix("ark_stage2="))
                .expect("the config disk on the cmdline");
        assert_eq!(arg, "/dev/vdb");
        assert!(p.vm.cmdline.len() < 512, "{}", p.vm.cmdline);
        assert!(p.vm.fs.is_empty(), "no virtio-fs root with a block root");
    }

    /// The guest's network is in the stage2 config, also when that rides on a config disk.
    #[test]
    fn guest_network_reaches_the_stage2_config() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("rootfs.erofs"), b"x").unwrap();
        let m = manifest(
            r#","options":{"kvm.root":"blk","kvm.root.image":"rootfs.erofs","kvm.root.fstype":"erofs"}"#,
        );
        let net: GuestNetwork = serde_json::from_str(
            r#"{"interfaces":[{"name":"eth0","mac":"02:00:00:00:00:01","mtu":1500,
                 "addresses":["172.16.28.5/24"]}],
                "routes":[{"dst":"0.0.0.0/0","gateway":"172.16.28.1","dev":"eth0"}]}"#,
        )
        .unwrap();
        let layout = PodLayout::new(dir.path());
        let p = plan(
            &layout,
            &m,
            &host(Profile::Microvm),
            &GuestNet {
                network: Some(net.clone()),
                ..Default::default()
            },
            false,
        )
        .unwrap();
        assert_eq!(p.stage2.network.as_ref(), Some(&net));
        let disk = p.stage2.to_disk_image().unwrap();
        let decoded = Stage2Config::from_disk_image(&disk).unwrap();
        assert_eq!(decoded.network, Some(net));
        let p = plan(
            &layout,
            &manifest(""),
            &host(Profile::Microvm),
            &GuestNet::default(),
            false,
        )
        .unwrap();
        assert_eq!(p.stage2.network, None);
    }

    #[test]
    fn blk_root_without_its_image_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let m = manifest(r#","options":{"kvm.root":"blk","kvm.root.image":"rootfs.erofs"}"#);
        let e = plan(
            &PodLayout::new(dir.path()),
            &m,
            &host(Profile::Microvm),
            &GuestNet::default(),
            false,
        )
        .unwrap_err();
        assert!(matches!(e, PlanError::RootImage(..)), "{e}");
        let m = manifest(r#","options":{"kvm.root":"nfs"}"#);
        let e = plan(
            &PodLayout::new(dir.path()),
            &m,
            &host(Profile::Microvm),
            &GuestNet::default(),
            false,
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "kvm.root=\"nfs\": want fs or blk");
    }

    #[test]
    fn volumes_become_virtiofs_devices_and_guest_mounts() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = manifest("");
        m.volumes = serde_json::from_str(
            r#"[{"name":"data","kind":"host","source":"/srv/data","read_only":true}]"#,
        )
        .unwrap();
        let p = plan(
            &PodLayout::new(dir.path()),
            &m,
            &host(Profile::Microvm),
            &GuestNet::default(),
            false,
        )
        .unwrap();
        assert_eq!(p.vm.fs.len(), 2);
        assert_eq!(p.vm.fs[1].dir, PathBuf::from("/srv/data"));
        assert!(p.vm.fs[1].read_only);
        assert!(p.vm.fs[1].shared && !p.vm.fs[0].shared);
        assert_eq!(p.stage2.mounts[0].source, p.vm.fs[1].tag);
        assert_eq!(p.stage2.mounts[0].target, "/ark/volumes/data");
        assert!(p.stage2.mounts[0].read_only);
    }

    #[test]
    fn wrong_flavor_is_refused_and_long_pod_dirs_are_fine() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = manifest("");
        m.stage1.flavor = Flavor::Ns;
        assert!(matches!(
            plan(
                &PodLayout::new(dir.path()),
                &m,
                &host(Profile::Microvm),
                &GuestNet::default(),
                false
            ),
            Err(PlanError::WrongFlavor(..))
        ));
        // Sockets are relative to the pod dir, so its length does not matter.
        let long = dir.path().join("x".repeat(200));
        let p = plan(
            &PodLayout::new(long),
            &manifest(""),
            &host(Profile::Microvm),
            &GuestNet::default(),
            false,
        )
        .unwrap();
        assert_eq!(p.vsock_uds, Path::new(VSOCK_SOCKET));
        assert_eq!(p.status_uds, Path::new("vsock.sock_1024"));
    }

    /// A sandbox shares `apps/` from boot (its own device, host changes seen) mounted at
    /// `/apps`, and cannot have a block root (apps added later could not reach it).
    #[test]
    fn sandbox_shares_its_apps_dir_and_refuses_a_block_root() {
        let dir = tempfile::tempdir().unwrap();
        let layout = PodLayout::new(dir.path());
        let mut m = manifest("");
        m.apps.clear();
        m.sandbox = true;
        let p = plan(
            &layout,
            &m,
            &host(Profile::Microvm),
            &GuestNet::default(),
            false,
        )
        .unwrap();
        let apps =
            p.vm.fs
                .iter()
                .find(|f| f.tag == APPS_TAG)
                .expect("apps share");
        assert_eq!(apps.dir, layout.stage1_rootfs().join("apps"));
        assert!(apps.shared && !apps.read_only);
        assert_eq!(p.stage2.mounts[0].source, APPS_TAG);
        assert_eq!(p.stage2.mounts[0].target, "/apps");
        // Not a sandbox: no such device.
        let p = plan(
            &layout,
            &manifest(""),
            &host(Profile::Microvm),
            &GuestNet::default(),
            false,
        )
        .unwrap();
        assert!(p.vm.fs.iter().all(|f| f.tag != APPS_TAG));
        std::fs::write(dir.path().join("rootfs.erofs"), b"x").unwrap();
        let mut m = manifest(r#","options":{"kvm.root":"blk","kvm.root.image":"rootfs.erofs"}"#);
        m.sandbox = true;
        let e = plan(
            &layout,
            &m,
            &host(Profile::Microvm),
            &GuestNet::default(),
            false,
        )
        .unwrap_err();
        assert!(matches!(e, PlanError::SandboxOnBlock), "{e}");
    }

    #[test]
    fn check_kvm_names_the_device() {
        let e = check_kvm(Path::new("/nonexistent/kvm")).unwrap_err();
        assert!(e.starts_with("/nonexistent/kvm: No such file"), "{e}");
    }
}
