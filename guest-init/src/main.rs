//! ark-init: stage2, the static PID 1 of every pod (ns, fly, kvm). Reads `/ark/stage2.json`
//! and `/ark/pod-manifest.json`, starts each app in its own mount namespace and root, reaps
//! every child, forwards SIGTERM/SIGINT, reports each app's end over the status channel, then
//! exits (ns/fly) or powers the VM off (kvm).
//!
//! As PID 1 in a VM it must never die without reporting: errors are reported, then it powers
//! off; a panic (built with panic=abort) still syncs and resets the VM from the panic hook.
//!
//! The steps are docs/stages.md's: `machine` sets up the pod's machine (step 2), `app` each
//! app between fork and exec (step 3), `supervisor` runs the pod to its end (steps 3-5).

mod agent;
mod app;
mod machine;
mod os;
mod pty;
mod supervisor;

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, Result};
use ark_pod_spec::{guest, OnExit, PodManifest, Stage2Config};

use supervisor::sink::{self, StatusSink, Tracking};
use supervisor::{Pod, Signals};

fn main() {
    let _ = os::fds::cloexec_inherited(); // best effort: as PID 1, exiting would end the pod
    if std::process::id() == 1 {
        machine::ensure_console();
    }
    // 1. The config, then the status channel: whatever fails after this is reported over it.
    let config = match load_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ark-init: {e}");
            // Without a config there is nobody to report to; as PID 1, end the pod (a VM
            // resets, a pid namespace is torn down) rather than hang or kernel-panic.
            if std::process::id() == 1 {
                machine::power_off();
            }
            std::process::exit(1);
        }
    };
    if config.on_exit == OnExit::Reboot {
        machine::power_off_on_panic();
    }
    let mut sink = Tracking::new(sink::open(&config));
    let ok = match run(&config, &mut sink) {
        Ok(()) => true,
        Err(e) => {
            let msg = format!("{e:#}");
            eprintln!("ark-init: {msg}");
            sink.fail_unfinished(&msg);
            false
        }
    };
    // 5. The pod is done: say so, then exit or power off.
    if let Err(e) = sink.done() {
        eprintln!("ark-init: status channel: {e}");
    }
    std::process::exit(machine::end(config.on_exit, ok))
}

/// `ark_stage2` in the environment names a config disk (a read-only root, kvm on an erofs
/// image: the kernel passes the command-line key to init as an environment variable), else
/// the file.
fn load_config() -> Result<Stage2Config, String> {
    if let Ok(disk) = std::env::var(ark_pod_spec::STAGE2_CMDLINE_KEY) {
        return read_config_disk(&disk);
    }
    let config_path =
        std::env::var("ARK_STAGE2_CONFIG").unwrap_or_else(|_| guest::STAGE2_CONFIG.into());
    std::fs::read(&config_path)
        .map_err(|e| format!("{config_path}: {e}"))
        .and_then(|b| Stage2Config::from_json(&b))
}

/// The config disk's bytes (`/dev/vdb` in a VM), read up to the cap (a disk is a whole number
/// of sectors; the config ends at its first NUL).
fn read_config_disk(disk: &str) -> Result<Stage2Config, String> {
    use std::io::Read;
    if !disk.starts_with('/') {
        return Err(format!(
            "{}={disk:?}: not a device path",
            ark_pod_spec::STAGE2_CMDLINE_KEY
        ));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(disk)
        .and_then(|f| {
            f.take(ark_pod_spec::STAGE2_DISK_MAX_BYTES as u64 + 1)
                .read_to_end(&mut bytes)
        })
        .map_err(|e| format!("{disk}: {e}"))?;
    Stage2Config::from_disk_image(&bytes)
}

fn run(cfg: &Stage2Config, sink: &mut Tracking) -> Result<()> {
    // 1. The manifest; signals are taken before anything else can take time.
    let manifest_path =
        std::env::var("ARK_POD_MANIFEST").unwrap_or_else(|_| guest::MANIFEST.into());
    let manifest = PodManifest::load(Path::new(&manifest_path)).map_err(|e| anyhow!("{e}"))?;
    sink.manifest = Some(manifest.clone());
    let signals = Signals::take()?;
    supervisor::adopt_orphans()?;

    // 2. The machine.
    machine::set_up(cfg)?;
    if cfg.output.is_some() && !manifest.apps.iter().any(|a| a.interactive) {
        machine::plain_output();
    }
    let mut cfg = cfg.clone();
    if cfg.create_app_cgroups {
        cfg.app_cgroups = machine::app_cgroups(&manifest)?;
    }
    let control = supervisor::control::listen(cfg.control.as_ref());

    // 3. The apps, in manifest order.
    let plans = app::plan::plan(&manifest, &cfg);
    let grace = Duration::from_secs(cfg.stop_grace_secs);
    let limits = ark_pod_spec::logs::LogLimits::from_options(&manifest.stage1.options)
        .map_err(|e| anyhow!("{e}"))?;
    let outputs = supervisor::output::Outputs::new(cfg.output.as_ref(), limits);
    let mut pod = Pod::new(&plans, signals, control, outputs, grace);
    pod.set_sandbox(&manifest, &cfg);
    pod.set_agent(
        agent::listen_on(cfg.agent.as_ref()).map(|fd| agent::Listener {
            fd,
            pod_uuid: cfg.pod_uuid.clone(),
            plans: plans.clone(),
        }),
    );
    let ctx = app::ChildContext {
        pod_uuid: &cfg.pod_uuid,
        hostname: cfg.hostname.as_deref(),
        etc: &cfg.etc,
        debug: cfg.debug,
    };
    pod.start_apps(&plans, &ctx, sink)?;

    // 4. Until every app has ended.
    pod.supervise(sink)?;

    // 5. What the apps left behind (output, fly's orphans).
    pod.finish();
    Ok(())
}
