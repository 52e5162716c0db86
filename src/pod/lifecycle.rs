//! `prepare` (build and fill a pod directory) and `run-prepared` (hand it to its stage1).

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context};
use ark_os::{write_atomic, write_atomic_volatile, StatusDir};
use ark_pod_spec::stage1::{stop_signals, RunArgs, LOCK_FD_ENV};
use ark_pod_spec::{Flavor, KvmRoot, NetMode, PodLayout, PodManifest};
use uuid::Uuid;

use super::args::AppSpec;
use super::error::{invalid, Error, ErrorKind, Result};
use super::plan::{build_manifest, PodRequest};
use super::rootfs::{self, RootfsMode};
use super::store::{LockedPod, PodState, StoreError};

/// What `ark prepare` is asked for: the pod-level options and the apps.
#[derive(Debug, Clone)]
pub struct PrepareRequest {
    pub flavor: Flavor,
    /// How stage1-kvm gets the pod root.
    pub kvm_root: KvmRoot,
    /// `NAME,kind=host,source=PATH[,readOnly=true]` each.
    pub volumes: Vec<String>,
    /// Default: `ark-<first 8 of the UUID>`.
    pub hostname: Option<String>,
    /// Give the (first) app the terminal's stdin.
    pub interactive: bool,
    /// Give the (first) app a pty made in the pod (`ark run -t`, attached through the agent).
    pub tty: bool,
    /// Write the pod's UUID to this file.
    pub uuid_file_save: Option<PathBuf>,
    /// `None`: the flavor's default ([`super::net::default_mode`]).
    pub net: Option<NetMode>,
    /// Ports, DNS, hosts entries, CNI directories.
    pub network: super::net::NetOptions,
    /// `KEY=VALUE` each; a key given again replaces its value.
    pub annotations: Vec<String>,
    /// Each app's log rotates past this many bytes (default: `ark_pod_spec::logs`).
    pub log_max_size: Option<u64>,
    pub apps: Vec<AppSpec>,
}

/// A pod this process prepared and still holds locked.
#[derive(Debug)]
pub struct Prepared {
    pub pod: LockedPod,
}

/// How hard prepare works to keep the pod's manifest across a power loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync the manifest: `ark prepare` leaves a pod to be run later, maybe after a reboot.
    Synced,
    /// Atomic against a crash of ark, not of the machine: `ark run` runs the pod at once, and
    /// a power loss ends it anyway (then a torn manifest only makes `status` show no apps).
    Process,
}

/// Builds the manifest, creates the pod directory in `prepare/`, fills it, and moves it to
/// `prepared/`. Any failure removes what was made: a bad request leaves nothing behind.
pub fn prepare(
    ctx: &crate::Context,
    a: &PrepareRequest,
    durability: Durability,
) -> Result<Prepared> {
    prepare_pod(ctx, a, durability, false)
}

/// [`prepare`] for `ark app sandbox`: `a.apps` may be empty, and apps come while it runs.
pub fn prepare_sandbox(ctx: &crate::Context, a: &PrepareRequest) -> Result<Prepared> {
    prepare_pod(ctx, a, Durability::Process, true)
}

fn prepare_pod(
    ctx: &crate::Context,
    a: &PrepareRequest,
    durability: Durability,
    sandbox: bool,
) -> Result<Prepared> {
    super::error::typed(|| {
        if sandbox && a.interactive {
            return Err(invalid("a sandbox has no terminal app (no --interactive)".into()).into());
        }
        let apps = &a.apps;
        let flavor = a.flavor;
        let libexec = super::libexec_dir()?;
        let stage1_bin = libexec.join(flavor.binary_name());
        let init_bin = libexec.join("ark-init");
        for b in [&stage1_bin, &init_bin] {
            if !b.is_file() {
                bail!(
                    "{} is missing (install ark with ./build.sh, or set ARK_LIBEXEC_DIR)",
                    b.display()
                );
            }
        }
        let rootfs_mode = RootfsMode::from_env()?;
        let blk_fstype = match (flavor, &a.kvm_root) {
            (Flavor::Kvm, KvmRoot::Blk) => rootfs::block_image_fstype()?,
            _ => "erofs",
        };

        // Cheap checks first: a typo should not wait for an image download.
        super::plan::precheck(&a.volumes, apps).map_err(invalid)?;
        let net = a
            .net
            .clone()
            .unwrap_or_else(|| super::net::default_mode(flavor));
        super::net::check_mode(flavor, &net, a.net.is_some()).map_err(invalid)?;
        let (images, render_holds) = super::images::resolve(ctx, apps)?;
        let uuid = Uuid::new_v4();
        let req = PodRequest {
            flavor,
            volumes: a.volumes.clone(),
            hostname: a.hostname.clone(),
            net: net.clone(),
            net_options: a.network.clone(),
            interactive: a.interactive,
            tty: a.tty,
            kvm_root: a.kvm_root.clone(),
            blk_fstype,
            log_max_size: a.log_max_size,
            sandbox,
            annotations: a
                .annotations
                .iter()
                .map(|kv| match kv.split_once('=') {
                    Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
                    _ => Err(invalid(format!("--annotation {kv:?} is not KEY=VALUE"))),
                })
                .collect::<Result<_, _>>()?,
        };
        let manifest = build_manifest(&uuid.to_string(), &req, apps, &images).map_err(invalid)?;
        // Every network's config loads and its plugins exist, before a pod directory does.
        if !manifest.net.networks().is_empty() {
            ark_net::NetRequest::from_manifest(&manifest)
                .check()
                .map_err(|e| invalid(e.to_string()))?;
        }

        let store = super::open_store(ctx)?;
        let mut pod = store.create(uuid)?;
        let filled = fill(
            &pod.pod.path,
            &manifest,
            &images,
            &init_bin,
            rootfs_mode,
            durability,
        )
        .and_then(|()| match &a.uuid_file_save {
            Some(path) => fs::write(path, format!("{uuid}\n"))
                .with_context(|| format!("--uuid-file-save {}", path.display())),
            None => Ok(()),
        });
        if let Err(e) = filled {
            if let Err(ce) = rootfs::remove_pod_dir(&pod.pod.path) {
                tracing::warn!("cleaning up pod {uuid}: {ce:#} (ark gc will retry)");
            }
            return Err(e);
        }
        drop(render_holds);
        pod.move_to(&store, PodState::Prepared)?;
        Ok(Prepared { pod })
    })
}

fn fill(
    dir: &Path,
    manifest: &PodManifest,
    images: &[super::plan::ImageInfo],
    init_bin: &Path,
    mode: RootfsMode,
    durability: Durability,
) -> anyhow::Result<()> {
    let layout = PodLayout::new(dir);
    let root = layout.stage1_rootfs();
    fs::create_dir_all(root.join("ark"))?;
    // Mount points guest-init needs in its own root: a read-only root (kvm on an erofs image)
    // cannot have them made later, and the kernel's devtmpfs automount needs /dev.
    // `apps` too: a sandbox may have none yet, and stage1-kvm shares it from boot.
    for d in ["dev", "proc", "sys", "run", "tmp", "apps"] {
        fs::create_dir_all(root.join(d))?;
    }
    fs::create_dir_all(layout.status_dir())?;
    fs::copy(init_bin, layout.init_binary())
        .with_context(|| format!("copy {} into the pod", init_bin.display()))?;
    let json = manifest.to_json();
    // The stage2 copy needs no fsync: the pod is valid only once its own manifest (below,
    // fsynced) is in place and it has left prepare/.
    fs::write(layout.rootfs_manifest(), &json)?;
    for v in &manifest.volumes {
        fs::create_dir_all(layout.volume_dir(&v.name))?;
    }
    let mut used = Vec::new();
    for (app, image) in manifest.apps.iter().zip(images) {
        let m = rootfs::fill_app_rootfs(
            mode,
            dir,
            &app.name,
            &image.rootfs,
            &layout.app_rootfs(&app.name),
        )
        .with_context(|| format!("app {}: rootfs", app.name))?;
        used.push(m);
    }
    let kvm = &manifest.stage1.options.kvm;
    if let Some(img) = &kvm.root_image {
        rootfs::pack_block_image(kvm.blk_fstype(), &root, &dir.join(img))?;
    }
    tracing::debug!("pod {}: app roots by {:?}", manifest.uuid, used);
    // Last: a pod with a manifest is complete (cat-manifest, status read it).
    match durability {
        Durability::Synced => write_atomic(&layout.manifest(), &json)?,
        Durability::Process => write_atomic_volatile(&layout.manifest(), &json)?,
    }
    Ok(())
}

/// Whether prepared pod `id` has an app with a tty (`ark prepare -t`; run-prepared attaches).
pub fn has_tty_app(ctx: &crate::Context, id: &str) -> bool {
    let tty = || -> anyhow::Result<bool> {
        let pod = super::open_store(ctx)?.find(id)?;
        let m = PodManifest::load(&PodLayout::new(&pod.path).manifest())?;
        Ok(m.apps.iter().any(|a| a.tty))
    };
    tty().unwrap_or(false)
}

/// Locks prepared pod `id` for its run.
pub fn lock_prepared(ctx: &crate::Context, id: &str) -> Result<Prepared> {
    super::error::typed(|| lock_prepared_pod(ctx, id))
}

fn lock_prepared_pod(ctx: &crate::Context, id: &str) -> anyhow::Result<Prepared> {
    let store = super::open_store(ctx)?;
    let pod = store.find(id)?;
    let wrong = |state: PodState| StoreError::WrongState {
        uuid: pod.uuid,
        state: state.dir_name(),
        wanted: "prepared",
    };
    if pod.state != PodState::Prepared {
        return Err(wrong(pod.state).into());
    }
    let locked = store.try_lock(&pod)?.ok_or(StoreError::Busy(pod.uuid))?;
    if locked.pod.state != PodState::Prepared {
        return Err(wrong(locked.pod.state).into());
    }
    Ok(Prepared { pod: locked })
}

/// `ark run-prepared UUID`: lock the prepared pod and exec its stage1.
pub fn run_prepared(ctx: &crate::Context, id: &str, interactive: bool) -> Error {
    match lock_prepared_pod(ctx, id) {
        Ok(p) => exec_stage1(ctx, p, interactive),
        Err(e) => e.into(),
    }
}

/// Moves the pod to `run/` and builds its stage1's command line; the caller makes the pod lock
/// fd inheritable (the one fd the stage1 gets besides stdio), so the lock lives exactly as long
/// as the stage1.
fn stage1_command(
    ctx: &crate::Context,
    locked: &mut LockedPod,
    interactive: bool,
) -> anyhow::Result<Command> {
    let store = super::open_store(ctx)?;
    let layout = PodLayout::new(&locked.pod.path);
    let manifest = PodManifest::load(&layout.manifest())?;
    let stage1 = super::libexec_dir()?.join(manifest.stage1.flavor.binary_name());
    if !stage1.is_file() {
        bail!("{} is missing", stage1.display());
    }
    locked.move_to(&store, PodState::Run)?;
    let dir = &locked.pod.path;
    let mut cmd = Command::new(&stage1);
    cmd.args(
        RunArgs {
            pod_dir: dir.clone(),
            debug: ctx.debug,
            interactive: interactive || manifest.apps.iter().any(|a| a.interactive),
        }
        .to_args(),
    );
    // For a stage1 that wants to keep its children from inheriting the lock.
    cmd.env(LOCK_FD_ENV, locked.lock_fd().to_string());
    Ok(cmd)
}

/// The stage1's pid, for `status` and `stop`. No fsync: it means nothing after a reboot anyway.
fn record_pid(pod_dir: &Path, pid: u32) -> std::io::Result<()> {
    fs::write(pod_dir.join("pid"), format!("{pid}\n"))
}

/// The stage1 never started: say so in the pod's status (before the lock drops).
fn stage1_did_not_start(locked: &LockedPod, why: String) -> Error {
    let layout = PodLayout::new(&locked.pod.path);
    if let Ok(m) = PodManifest::load(&layout.manifest()) {
        let _ = StatusDir::new(layout.status_dir()).finish(&m, Some(&why));
    }
    Error::new(ErrorKind::Stage1, anyhow!(why))
}

/// Moves the pod to `run/`, records our pid, and execs its stage1 with the pod lock still
/// held, so this process becomes the stage1 (its pid is the pod's; the caller waits on it).
/// Returns only on failure.
pub fn exec_stage1(ctx: &crate::Context, prepared: Prepared, interactive: bool) -> Error {
    let Prepared { pod: mut locked } = prepared;
    let go = |locked: &mut LockedPod| -> anyhow::Result<Command> {
        let cmd = stage1_command(ctx, locked, interactive)?;
        record_pid(&locked.pod.path, std::process::id())?;
        // The one fd the stage1 gets besides 0, 1 and 2 (main made every other close-on-exec).
        locked.keep_across_exec()?;
        Ok(cmd)
    };
    let mut cmd = match go(&mut locked) {
        Ok(c) => c,
        Err(e) => return e.into(),
    };
    // A stop (SIGTERM/SIGINT/SIGHUP) that arrives between exec and the stage1's own signal
    // setup must not kill a half-started pod: the mask survives exec, so it stays pending until
    // the stage1 takes it through sigwait/signalfd.
    let stop_signals = stop_signals();
    let _ = stop_signals.thread_block();
    let err = cmd.exec();
    let _ = stop_signals.thread_unblock();
    stage1_did_not_start(&locked, format!("exec {:?}: {err}", cmd.get_program()))
}

/// A pod's stage1 running as a child of this process (see [`spawn_stage1`]).
#[derive(Debug)]
pub struct Stage1Child {
    pub uuid: Uuid,
    /// The pod directory (in `run/` while the pod runs).
    pub pod_dir: PathBuf,
    child: std::process::Child,
}

impl Stage1Child {
    /// The stage1's pid (the one `ark status` shows and `ark stop` signals).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The pod's exit code if its stage1 has ended (without waiting).
    pub fn try_wait(&mut self) -> Result<Option<i32>> {
        match self.child.try_wait() {
            Ok(None) => Ok(None),
            Ok(Some(_)) => self.wait().map(Some),
            Err(e) => Err(Error::new(
                ErrorKind::Io,
                anyhow!("waiting for the stage1 of pod {}: {e}", self.uuid),
            )),
        }
    }

    /// Waits for the pod to end; returns its exit code, as `ark run` would exit (128+N for a
    /// stage1 killed by signal N).
    pub fn wait(&mut self) -> Result<i32> {
        use std::os::unix::process::ExitStatusExt;
        let status = self.child.wait().map_err(|e| {
            Error::new(
                ErrorKind::Io,
                anyhow!("waiting for the stage1 of pod {}: {e}", self.uuid),
            )
        })?;
        Ok(status
            .code()
            .or_else(|| status.signal().map(|s| 128 + s))
            .unwrap_or(ark_pod_spec::EXIT_STAGE1_ERROR))
    }
}

/// Like [`exec_stage1`], but starts the stage1 as a child and returns, for a front end that
/// supervises pods. The pod lock goes to the stage1 alone (this process closes its copy without
/// unlocking), so the pod counts as running exactly as long as the stage1 does.
pub fn spawn_stage1(
    ctx: &crate::Context,
    prepared: Prepared,
    interactive: bool,
) -> Result<Stage1Child> {
    spawn(ctx, prepared, interactive, false)
}

/// Like [`spawn_stage1`], for a pod that outlives this process (`ark run -t`, which may
/// detach): the stage1 gets a session of its own (no terminal's hangup or ^C reaches it) and
/// /dev/null as stdin and stdout (its apps' output is in their logs); stderr stays ours for
/// its errors.
pub fn spawn_stage1_detached(ctx: &crate::Context, prepared: Prepared) -> Result<Stage1Child> {
    spawn(ctx, prepared, false, true)
}

fn spawn(
    ctx: &crate::Context,
    prepared: Prepared,
    interactive: bool,
    detached: bool,
) -> Result<Stage1Child> {
    let Prepared { pod: mut locked } = prepared;
    let mut cmd = stage1_command(ctx, &mut locked, interactive)?;
    if detached {
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null());
    }
    let stop_signals = stop_signals();
    let lock_fd = locked.lock_fd();
    // SAFETY: only async-signal-safe calls (close_range/fcntl, sigprocmask) between fork and
    // exec, no allocation.
    unsafe {
        cmd.pre_exec(move || {
            // Whatever fds the front end holds without close-on-exec stay out of the pod: the
            // stage1 gets 0, 1, 2 and the lock (cleared here, in the child only, so no other
            // process this front end starts meanwhile inherits the lock).
            ark_os::fds::cloexec_from_in_child(ark_os::fds::FIRST_NON_STDIO_FD)?;
            if libc::fcntl(lock_fd, libc::F_SETFD, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if detached && libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // As across exec_stage1's exec: a stop before the stage1's signal setup stays pending.
            stop_signals
                .thread_block()
                .map_err(|e| std::io::Error::from_raw_os_error(e as i32))
        });
    }
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(err) => {
            let why = format!("start {:?}: {err}", cmd.get_program());
            return Err(stage1_did_not_start(&locked, why));
        }
    };
    // Drop `cmd` first: it holds nothing, but the lock must be the stage1's before we return.
    drop(cmd);
    if let Err(e) = record_pid(&locked.pod.path, child.id()) {
        tracing::warn!("pod {}: recording the stage1's pid: {e}", locked.pod.uuid);
    }
    let pod = locked.hand_over_lock();
    Ok(Stage1Child {
        uuid: pod.uuid,
        pod_dir: pod.path,
        child,
    })
}
