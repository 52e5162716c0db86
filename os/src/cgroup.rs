//! Pod cgroups, shared by the stage1s (create), guest-init in a VM (create) and stage0's gc
//! (remove leftovers). Plain cgroupfs files: no daemon, no dbus.
//!
//! Layout, in every hierarchy used (cgroup v2, or the v1 `memory`, `cpu`, `pids` and `devices`
//! ones):
//!
//! ```text
//! <root>/ark/<pod uuid>/           pod-wide limits
//!                      stage2/     guest-init (a leaf: v2 allows no processes in inner nodes)
//!                      app.<name>/ one per app, with the app's limits (OOM attributable)
//! ```
//!
//! ns and fly pods also get a device allowlist ([`devices`]) on `<root>/ark/<uuid>`, inherited
//! by everything below it: v1 `devices` when that hierarchy is mounted, a BPF device program
//! when the pod has a cgroup v2 directory, both when both hold. Which hierarchies a pod gets:
//! a pure v2 host, v2 alone; a hybrid host (v1 controllers, a controller-less cgroup2 at
//! `unified`), the v1 ones — plus `unified` only when there is no v1 `devices` hierarchy, as
//! the place for the device program (joining a v2 cgroup costs each start a threadgroup-lock
//! RCU grace period, so it is not paid when v1 already confines devices).

use std::io;
use std::path::{Path, PathBuf};

use ark_pod_spec::manifest::{PodLimits, PodManifest};

pub mod devices;

pub use devices::{DeviceRule, DEFAULT_ALLOWED};

pub const PARENT: &str = "ark";
pub const STAGE2_LEAF: &str = "stage2";
/// The controllers that enforce limits.
const CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];
/// The v1 hierarchies ark uses: the limit controllers and the device allowlist.
const V1_HIERARCHIES: [&str; 4] = ["memory", "cpu", "pids", "devices"];
/// CFS period used for cpu limits.
const CPU_PERIOD_US: u64 = 100_000;

/// The directory name of an app's cgroup (a `.` never occurs in app names, so no clash with
/// `stage2`).
pub fn app_leaf(app: &str) -> String {
    format!("app.{app}")
}

/// One mounted cgroup hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    V2 { root: PathBuf },
    V1 { controller: String, root: PathBuf },
}

impl Hierarchy {
    pub fn root(&self) -> &Path {
        match self {
            Hierarchy::V2 { root } | Hierarchy::V1 { root, .. } => root,
        }
    }
    /// A short name for the hierarchy: `unified` or the v1 controller.
    pub fn name(&self) -> &str {
        match self {
            Hierarchy::V2 { .. } => "unified",
            Hierarchy::V1 { controller, .. } => controller,
        }
    }
    pub fn pod_dir(&self, uuid: &str) -> PathBuf {
        self.root().join(PARENT).join(uuid)
    }
    /// The file with the `oom_kill` counter in this hierarchy's cgroups, if it has one.
    pub fn oom_file_name(&self) -> Option<&'static str> {
        match self {
            Hierarchy::V2 { .. } if self.has("memory") => Some("memory.events"),
            Hierarchy::V1 { controller, .. } if controller == "memory" => {
                Some("memory.oom_control")
            }
            _ => None,
        }
    }
    fn confines_devices(&self) -> bool {
        match self {
            Hierarchy::V2 { .. } => true,
            Hierarchy::V1 { controller, .. } => controller == "devices",
        }
    }
    fn has(&self, controller: &str) -> bool {
        match self {
            Hierarchy::V2 { root } => std::fs::read_to_string(root.join("cgroup.controllers"))
                .map(|c| c.split_whitespace().any(|w| w == controller))
                .unwrap_or(false),
            Hierarchy::V1 { controller: c, .. } => c == controller,
        }
    }
}

/// The hierarchies ark uses on this host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cgroups {
    pub hierarchies: Vec<Hierarchy>,
}

/// Cgroups created for one pod.
#[derive(Debug, Clone, Default)]
pub struct PodCgroups {
    /// One `<root>/ark/<uuid>` per hierarchy, with the hierarchy.
    pub pod_dirs: Vec<(Hierarchy, PathBuf)>,
}

impl PodCgroups {
    pub fn stage2_dirs(&self) -> Vec<PathBuf> {
        self.pod_dirs
            .iter()
            .map(|(_, d)| d.join(STAGE2_LEAF))
            .collect()
    }
    pub fn app_dirs(&self, app: &str) -> Vec<PathBuf> {
        self.pod_dirs
            .iter()
            .map(|(_, d)| d.join(app_leaf(app)))
            .collect()
    }
    /// The app's cgroup as guest-init sees the pod's cgroups in ns/fly (each hierarchy's pod
    /// dir bind-mounted at `/ark/cgroup/<hierarchy>`); `None` when the pod has none.
    pub fn guest_app_cgroup(&self, app: &str) -> Option<ark_pod_spec::AppCgroup> {
        if self.pod_dirs.is_empty() {
            return None;
        }
        let dir = |h: &Hierarchy| {
            format!(
                "{}/{}/{}",
                ark_pod_spec::guest::CGROUP_DIR,
                h.name(),
                app_leaf(app)
            )
        };
        Some(ark_pod_spec::AppCgroup {
            app: app.to_string(),
            dirs: self.pod_dirs.iter().map(|(h, _)| dir(h)).collect(),
            oom_file: self
                .pod_dirs
                .iter()
                .find_map(|(h, _)| Some(format!("{}/{}", dir(h), h.oom_file_name()?))),
        })
    }

    /// The file with the app's `oom_kill` counter.
    pub fn app_oom_file(&self, app: &str) -> Option<PathBuf> {
        self.pod_dirs
            .iter()
            .find_map(|(h, d)| Some(d.join(app_leaf(app)).join(h.oom_file_name()?)))
    }
}

impl Cgroups {
    /// Finds the hierarchies from `/proc/self/mountinfo`: cgroup v2 when it has the memory
    /// controller (a pure v2 host), else the v1 memory/cpu/pids/devices hierarchies (hybrid
    /// hosts), with the cgroup2 mount too when v1 has no `devices` (see the module docs).
    pub fn detect() -> Self {
        Self::probe_standard_layout().unwrap_or_else(|| {
            let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
            Self::from_mountinfo(&info)
        })
    }

    /// The usual layout found with a few statfs(2) calls: `/sys/fs/cgroup` a cgroup2 mount, or
    /// a tmpfs with a mount per v1 controller (and cgroup2 at `unified`). Reading mountinfo
    /// instead costs the kernel a line per mount on the host (overlay options escaped), on a
    /// host with many pods the largest CPU cost of a stage1's start. None: another layout.
    fn probe_standard_layout() -> Option<Self> {
        const BASE: &str = "/sys/fs/cgroup";
        const TMPFS_MAGIC: u64 = 0x0102_1994;
        const CGROUP_SUPER_MAGIC: u64 = 0x0027_e0eb;
        const CGROUP2_SUPER_MAGIC: u64 = 0x6367_7270;
        let fs_type = |p: &Path| u64::try_from(rustix::fs::statfs(p).ok()?.f_type).ok();
        match fs_type(Path::new(BASE))? {
            CGROUP2_SUPER_MAGIC => return Some(Self::choose(Some(BASE.into()), Vec::new())),
            TMPFS_MAGIC => {}
            _ => return None,
        }
        let mut v1 = Vec::new();
        for c in V1_HIERARCHIES {
            // `cpu` is a link to the `cpu,cpuacct` mount: name it as mountinfo does.
            let Ok(root) = std::fs::canonicalize(Path::new(BASE).join(c)) else {
                continue;
            };
            // A file only the controller has in its root: the mount there carries it (pids
            // has none in the root; its mount is known by its name).
            let marker = match c {
                "memory" => Some("memory.limit_in_bytes"),
                "cpu" => Some("cpu.shares"),
                "devices" => Some("devices.allow"),
                _ => None,
            };
            if fs_type(&root) == Some(CGROUP_SUPER_MAGIC)
                && marker.is_none_or(|m| root.join(m).exists())
            {
                v1.push(Hierarchy::V1 {
                    controller: c.to_string(),
                    root,
                });
            }
        }
        if v1.is_empty() {
            return None;
        }
        let unified = Path::new(BASE).join("unified");
        let v2 = (fs_type(&unified) == Some(CGROUP2_SUPER_MAGIC)).then_some(unified);
        Some(Self::choose(v2, v1))
    }

    pub fn from_mountinfo(info: &str) -> Self {
        let mut v2 = None;
        let mut v1: Vec<Hierarchy> = Vec::new();
        for m in crate::mountinfo::parse(info) {
            match m.fs_type.as_str() {
                "cgroup2" if v2.is_none() => v2 = Some(m.mount_point),
                "cgroup" => {
                    for c in V1_HIERARCHIES {
                        if m.has_super_option(c) && !v1.iter().any(|h: &Hierarchy| h.name() == c) {
                            v1.push(Hierarchy::V1 {
                                controller: c.to_string(),
                                root: m.mount_point.clone(),
                            });
                        }
                    }
                }
                _ => {}
            }
        }
        Self::choose(v2, v1)
    }

    /// From the first cgroup2 mount and the v1 hierarchies found (put in [`V1_HIERARCHIES`]
    /// order, however they were found): see [`Cgroups::detect`].
    fn choose(v2: Option<PathBuf>, mut v1: Vec<Hierarchy>) -> Self {
        v1.sort_by_key(|h| V1_HIERARCHIES.iter().position(|c| *c == h.name()));
        if let Some(root) = v2 {
            let h = Hierarchy::V2 { root };
            if h.has("memory") || v1.is_empty() {
                return Cgroups {
                    hierarchies: vec![h],
                };
            }
            if !v1.iter().any(Hierarchy::confines_devices) {
                v1.push(h);
            }
        }
        Cgroups { hierarchies: v1 }
    }

    /// A cgroup v2 hierarchy at `root` (guest-init in a VM, after mounting it).
    pub fn v2(root: impl Into<PathBuf>) -> Self {
        Cgroups {
            hierarchies: vec![Hierarchy::V2 { root: root.into() }],
        }
    }

    pub fn is_empty(&self) -> bool {
        self.hierarchies.is_empty()
    }

    /// Existing cgroup directories of pod `uuid` (what gc looks for).
    pub fn pod_dirs(&self, uuid: &str) -> Vec<PathBuf> {
        self.hierarchies
            .iter()
            .map(|h| h.pod_dir(uuid))
            .filter(|d| d.is_dir())
            .collect()
    }

    /// Creates the pod's cgroups with the manifest's pod and app limits. A limit whose
    /// controller is unavailable is an error (never silently unenforced). Devices are not
    /// restricted (the kvm VMM's own cgroup needs /dev/kvm and friends).
    pub fn create_pod(&self, manifest: &PodManifest) -> io::Result<PodCgroups> {
        self.create(manifest, None)
    }

    /// [`Cgroups::create_pod`], and only the devices in `allowed` may be opened by anything in
    /// the pod (see the module docs). An error when no hierarchy here can confine devices.
    pub fn create_confined_pod(
        &self,
        manifest: &PodManifest,
        allowed: &[DeviceRule],
    ) -> io::Result<PodCgroups> {
        if !self.hierarchies.iter().any(Hierarchy::confines_devices) {
            return Err(io::Error::other(
                "no cgroup hierarchy can confine devices here (neither a v1 devices hierarchy \
                 nor cgroup2 is mounted): refusing to run a pod that could open host devices",
            ));
        }
        self.create(manifest, Some(allowed))
    }

    fn create(&self, m: &PodManifest, devices: Option<&[DeviceRule]>) -> io::Result<PodCgroups> {
        let mut pod = PodCgroups::default();
        let result = self.create_pod_inner(m, devices, &mut pod);
        if result.is_err() {
            let _ = self.remove_pod(&m.uuid);
        }
        result.map(|()| pod)
    }

    fn create_pod_inner(
        &self,
        m: &PodManifest,
        devices: Option<&[DeviceRule]>,
        pod: &mut PodCgroups,
    ) -> io::Result<()> {
        let wants = |c: &str| {
            let l = |x: &PodLimits| match c {
                "memory" => x.memory_bytes.is_some(),
                "cpu" => x.cpu_millis.is_some(),
                _ => x.pids.is_some(),
            };
            l(&m.limits)
                || m.apps.iter().any(|a| {
                    l(&PodLimits {
                        memory_bytes: a.limits.memory_bytes,
                        cpu_millis: a.limits.cpu_millis,
                        pids: a.limits.pids,
                    })
                })
        };
        for c in CONTROLLERS {
            if wants(c) && !self.hierarchies.iter().any(|h| h.has(c)) {
                return Err(io::Error::other(format!(
                    "cgroup controller {c} is not available on this host, but the pod sets a {c} limit"
                )));
            }
        }
        for h in &self.hierarchies {
            let parent = h.root().join(PARENT);
            let dir = parent.join(&m.uuid);
            if let Hierarchy::V2 { root } = h {
                // Controllers must be enabled on every ancestor of the cgroups that use them.
                std::fs::create_dir_all(&parent).map_err(|e| ctx(&parent, e))?;
                enable_controllers(root)?;
                enable_controllers(&parent)?;
            }
            std::fs::create_dir_all(&dir).map_err(|e| ctx(&dir, e))?;
            pod.pod_dirs.push((h.clone(), dir.clone()));
            if let Hierarchy::V2 { .. } = h {
                enable_controllers(&dir)?;
            }
            set_limits(h, &dir, &m.limits)?;
            // Before the leaves exist: v1 refuses `a` on a cgroup with children, and the
            // leaves inherit the list (v2: the program applies to the whole subtree).
            match (h, devices) {
                (Hierarchy::V1 { controller, .. }, Some(allowed)) if controller == "devices" => {
                    devices::restrict_v1(&dir, allowed)?
                }
                (Hierarchy::V2 { .. }, Some(allowed)) => devices::restrict_v2(&dir, allowed)?,
                _ => {}
            }
            mkdir(&dir.join(STAGE2_LEAF))?;
            for a in &m.apps {
                let leaf = dir.join(app_leaf(&a.name));
                mkdir(&leaf)?;
                let limits = PodLimits {
                    memory_bytes: a.limits.memory_bytes,
                    cpu_millis: a.limits.cpu_millis,
                    pids: a.limits.pids,
                };
                set_limits(h, &leaf, &limits)?;
            }
        }
        Ok(())
    }

    /// Kills whatever is left in the pod's cgroups and removes them. Idempotent: a pod
    /// without cgroups is fine.
    /// An app added to a running pod (a sandbox): its leaf in each of the pod's existing
    /// cgroups, with its limits, as [`Cgroups::create_pod`] makes them for the manifest's
    /// apps (the device allowlist on the pod's cgroup covers the new leaf too). Returns the
    /// pod's cgroups, for [`PodCgroups::app_dirs`]. A limit no hierarchy here enforces is an
    /// error, and a half-made leaf is removed.
    pub fn create_app(&self, uuid: &str, app: &ark_pod_spec::App) -> io::Result<PodCgroups> {
        let limits = PodLimits {
            memory_bytes: app.limits.memory_bytes,
            cpu_millis: app.limits.cpu_millis,
            pids: app.limits.pids,
        };
        for (c, set) in [
            ("memory", limits.memory_bytes.is_some()),
            ("cpu", limits.cpu_millis.is_some()),
            ("pids", limits.pids.is_some()),
        ] {
            if set && !self.hierarchies.iter().any(|h| h.has(c)) {
                return Err(io::Error::other(format!(
                    "cgroup controller {c} is not available on this host, but the app sets a {c} limit"
                )));
            }
        }
        let pod = PodCgroups {
            pod_dirs: self
                .hierarchies
                .iter()
                .map(|h| (h.clone(), h.pod_dir(uuid)))
                .filter(|(_, d)| d.is_dir())
                .collect(),
        };
        let made = pod.pod_dirs.iter().try_for_each(|(h, dir)| {
            let leaf = dir.join(app_leaf(&app.name));
            mkdir(&leaf)?;
            set_limits(h, &leaf, &limits)
        });
        if let Err(e) = made {
            let _ = self.remove_app(uuid, &app.name);
            return Err(e);
        }
        Ok(pod)
    }

    /// Removes an app's leaves (a removed sandbox app); its processes are gone by then.
    pub fn remove_app(&self, uuid: &str, app: &str) -> io::Result<()> {
        let mut first_err = None;
        for dir in self.pod_dirs(uuid) {
            let leaf = dir.join(app_leaf(app));
            if leaf.is_dir() {
                if let Err(e) = remove_tree(&leaf) {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    pub fn remove_pod(&self, uuid: &str) -> io::Result<()> {
        let mut first_err = None;
        for dir in self.pod_dirs(uuid) {
            if let Err(e) = remove_tree(&dir) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

fn ctx(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

fn mkdir(p: &Path) -> io::Result<()> {
    match std::fs::create_dir(p) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(ctx(p, e)),
        _ => Ok(()),
    }
}

fn write(path: &Path, value: &str) -> io::Result<()> {
    std::fs::write(path, value).map_err(|e| ctx(path, e))
}

fn enable_controllers(dir: &Path) -> io::Result<()> {
    let available = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    let enabled = std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
    for c in CONTROLLERS {
        if available.split_whitespace().any(|w| w == c)
            && !enabled.split_whitespace().any(|w| w == c)
        {
            // Best effort: a controller that cannot be enabled shows up as a missing limit
            // file below, which is an error only when that limit is asked for.
            let _ = std::fs::write(dir.join("cgroup.subtree_control"), format!("+{c}"));
        }
    }
    Ok(())
}

fn set_limits(h: &Hierarchy, dir: &Path, l: &PodLimits) -> io::Result<()> {
    match h {
        // A hybrid host's controller-less cgroup2 (there for the device program) limits
        // nothing; a limit is then enforced by v1 (create_pod_inner checked that one does).
        Hierarchy::V2 { .. } if !h.has("memory") && !h.has("cpu") && !h.has("pids") => {}
        Hierarchy::V2 { .. } => {
            if let Some(m) = l.memory_bytes {
                write(&dir.join("memory.max"), &m.to_string())?;
                // Swap would let an app exceed its limit instead of being OOM-killed.
                let swap = dir.join("memory.swap.max");
                if swap.exists() {
                    write(&swap, "0")?;
                }
            }
            if let Some(c) = l.cpu_millis {
                write(
                    &dir.join("cpu.max"),
                    &format!("{} {CPU_PERIOD_US}", c * CPU_PERIOD_US / 1000),
                )?;
            }
            if let Some(p) = l.pids {
                write(&dir.join("pids.max"), &p.to_string())?;
            }
        }
        Hierarchy::V1 { controller, .. } => match controller.as_str() {
            "memory" => {
                if let Some(m) = l.memory_bytes {
                    write(&dir.join("memory.limit_in_bytes"), &m.to_string())?;
                    let memsw = dir.join("memory.memsw.limit_in_bytes");
                    if memsw.exists() {
                        write(&memsw, &m.to_string())?;
                    }
                }
            }
            "cpu" => {
                if let Some(c) = l.cpu_millis {
                    write(&dir.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                    write(
                        &dir.join("cpu.cfs_quota_us"),
                        &(c * CPU_PERIOD_US / 1000).to_string(),
                    )?;
                }
            }
            "pids" => {
                if let Some(p) = l.pids {
                    write(&dir.join("pids.max"), &p.to_string())?;
                }
            }
            _ => {}
        },
    }
    Ok(())
}

/// Moves the calling process into the cgroup `dir`. The caller must be single-threaded (as a
/// child right after fork is).
///
/// In a v1 hierarchy this writes `0` to `tasks`, which moves the calling thread alone: for a
/// single-threaded process that is the whole process, and the kernel (5.17+) then skips its
/// global threadgroup lock, whose first writer waits for an RCU grace period — 5-25 ms
/// measured on a 2-core VM, otherwise the largest single cost of starting a pod. A v2
/// hierarchy has no `tasks` (and moves no lone threads out of a domain cgroup): there it is
/// `cgroup.procs`.
pub fn join_single_threaded(dir: &Path) -> io::Result<()> {
    use std::io::Write;
    let open = |f: &str| std::fs::OpenOptions::new().write(true).open(dir.join(f));
    let mut file = match open("tasks") {
        Err(e) if e.kind() == io::ErrorKind::NotFound => open("cgroup.procs")?,
        other => other?,
    };
    file.write_all(b"0")
}

/// Reads the `oom_kill N` counter from `memory.events` (v2) or `memory.oom_control` (v1).
pub fn read_oom_kills(file: &Path) -> Option<u64> {
    parse_oom_kills(&std::fs::read_to_string(file).ok()?)
}

pub fn parse_oom_kills(text: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        (w.next() == Some("oom_kill"))
            .then(|| w.next()?.parse().ok())
            .flatten()
    })
}

fn procs(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Children first: kill the processes, then rmdir (retrying while the kernel finishes them).
fn remove_tree(dir: &Path) -> io::Result<()> {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_tree(&e.path())?;
            }
        }
    }
    let kill = dir.join("cgroup.kill");
    let mut last = None;
    for _ in 0..100 {
        if kill.exists() {
            let _ = std::fs::write(&kill, "1");
        } else {
            for pid in procs(dir) {
                // SAFETY: plain kill(2) on pids read from the pod's own cgroup.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Err(ctx(dir, last.expect("loop ran")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 24 0:22 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
26 25 0:23 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
27 25 0:24 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
28 25 0:25 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
29 25 0:26 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
30 25 0:27 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
31 25 0:28 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
";

    #[test]
    fn hybrid_host_uses_v1_controllers() {
        // The unified mount here has no cgroup.controllers file with memory in it.
        let c = Cgroups::from_mountinfo(HYBRID);
        let names: Vec<&str> = c.hierarchies.iter().map(|h| h.name()).collect();
        assert_eq!(names, ["memory", "cpu", "pids", "devices"]);
        assert_eq!(
            c.hierarchies[0].pod_dir("u1"),
            Path::new("/sys/fs/cgroup/memory/ark/u1")
        );
        assert_eq!(c.hierarchies[0].oom_file_name(), Some("memory.oom_control"));
        assert_eq!(c.hierarchies[3].oom_file_name(), None);
    }

    #[test]
    fn hybrid_host_without_v1_devices_uses_cgroup2_for_them() {
        let no_devices: String = HYBRID
            .lines()
            .filter(|l| !l.contains("devices"))
            .collect::<Vec<_>>()
            .join("\n");
        let c = Cgroups::from_mountinfo(&no_devices);
        let names: Vec<&str> = c.hierarchies.iter().map(|h| h.name()).collect();
        assert_eq!(names, ["memory", "cpu", "pids", "unified"]);
        // Its cgroup2 has no memory controller: OOM counts come from v1.
        assert_eq!(c.hierarchies[3].oom_file_name(), None);
        let none = Cgroups::from_mountinfo("25 24 0:22 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n");
        assert!(none.is_empty());
        let e = none
            .create_confined_pod(
                &PodManifest::from_json(
                    br#"{"version":1,"uuid":"ab12","stage1":{"flavor":"ns"},
                         "apps":[{"name":"a","image":{"id":"sha256:x"},"exec":["true"]}]}"#,
                )
                .unwrap(),
                &DEFAULT_ALLOWED,
            )
            .unwrap_err();
        assert!(e.to_string().contains("confine devices"), "{e}");
    }

    #[test]
    fn the_standard_layout_probe_agrees_with_mountinfo() {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let Some(probed) = Cgroups::probe_standard_layout() else {
            eprintln!("skipped: /sys/fs/cgroup is not the standard layout here");
            return;
        };
        assert_eq!(probed, Cgroups::from_mountinfo(&info));
        assert_eq!(Cgroups::detect(), probed);
    }

    #[test]
    fn pure_v2_host() {
        let c = Cgroups::from_mountinfo(
            "30 25 0:27 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n",
        );
        assert_eq!(
            c.hierarchies,
            [Hierarchy::V2 {
                root: "/sys/fs/cgroup".into()
            }]
        );
    }

    #[test]
    fn oom_counter() {
        assert_eq!(
            parse_oom_kills("low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\noom_group_kill 0\n"),
            Some(2)
        );
        assert_eq!(
            parse_oom_kills("oom_kill_disable 0\nunder_oom 0\noom_kill 1\n"),
            Some(1)
        );
        assert_eq!(parse_oom_kills("nothing 1\n"), None);
    }
}
