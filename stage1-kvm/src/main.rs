//! stage1-kvm: runs a prepared pod in a KVM microVM. stage0 execs
//! `ark-stage1-kvm run --pod-dir DIR`; this process then is the pod: it boots ark's VMM
//! in-process with guest-init as the guest's init, records the per-app statuses guest-init sends
//! over vsock, and exits with the pod's exit code (125 for its own errors).

mod cgroup;
mod control;
mod net;
mod output;
mod plan;
mod status;

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ark_os::StatusDir;
use ark_pod_spec::manifest::PodManifest;
use ark_pod_spec::net::PodNetworkState;
use ark_pod_spec::stage1::{self, RunArgs};
use ark_pod_spec::status::EXIT_STAGE1_ERROR;
use ark_pod_spec::PodLayout;
use kernel_config::Profile;
use nix::sys::signal::SigSet;

use crate::plan::{Host, VmPlan, CONTROL_PORT};

/// Seconds guest-init gives the apps between SIGTERM and SIGKILL on `ark stop`.
const STOP_GRACE_SECS: u64 = 10;
/// Beyond the grace: how long the guest may take to report and power off before the VM is
/// stopped from the host. Generous because guest kernel work is slow on kvm_pvm hosts.
const STOP_SLACK: Duration = Duration::from_secs(60);

fn main() -> ExitCode {
    if let Err(code) = ark_os::fds::cloexec_inherited_or_report("ark-stage1-kvm") {
        return exit_code(code);
    }
    let RunArgs {
        pod_dir,
        debug,
        interactive,
    } = RunArgs::parse("ark-stage1-kvm", "ark stage1: a pod in a KVM microVM");
    // Absolute: run() works from inside the pod dir (the vsock sockets are relative to it).
    let pod_dir = std::fs::canonicalize(&pod_dir).unwrap_or(pod_dir);
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(if debug { "debug" } else { "warn" })
        .try_init();
    match run(&pod_dir, debug, interactive) {
        Ok(code) => exit_code(code),
        Err(e) => {
            let msg = format!("{e:#}");
            eprintln!("ark-stage1-kvm: {msg}");
            record_failure(&pod_dir, &msg);
            exit_code(EXIT_STAGE1_ERROR)
        }
    }
}

/// An exit status as the process can return it: out-of-range codes clamp to 0 or 255.
fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code.clamp(0, 255)).expect("clamped to 0..=255"))
}

fn run(pod_dir: &Path, debug: bool, interactive: bool) -> anyhow::Result<i32> {
    // Work from inside the pod dir: the vsock sockets are relative to it (see
    // plan::VSOCK_SOCKET); every other path here is absolute.
    std::env::set_current_dir(pod_dir).with_context(|| format!("{}", pod_dir.display()))?;
    let layout = PodLayout::new(pod_dir);
    let manifest = PodManifest::load(&layout.manifest())
        .map_err(|e| anyhow::anyhow!("{}: {e}", layout.manifest().display()))?;

    plan::check_kvm(Path::new("/dev/kvm")).map_err(anyhow::Error::msg)?;
    let host = host()?;
    // CNI networks: the pod's netns attached to each network, then a TAP joined to each CNI
    // interface in it. Torn down on every way out of run() (and by stage0 after a kill -9).
    let on_networks = !manifest.net.networks().is_empty();
    let result = with_network(&layout, &manifest, on_networks, |network| {
        run_vm(&layout, &manifest, &host, network, debug, interactive)
    });
    if on_networks {
        if let Err(e) = ark_net::teardown(&layout) {
            eprintln!("ark-stage1-kvm: {e}");
        }
    }
    result
}

/// Sets up the pod's networks (if any) and hands their TAPs and guest view to `f`; the TAP
/// descriptors live until `f` returns (the VMM holds its own copies while the VM runs).
fn with_network<T>(
    layout: &PodLayout,
    manifest: &PodManifest,
    on_networks: bool,
    f: impl FnOnce(Option<(&PodNetworkState, &net::KvmNetwork)>) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    if !on_networks {
        return f(None);
    }
    let state = ark_net::setup(layout, &ark_net::NetRequest::from_manifest(manifest))?;
    let network = net::attach(&layout.netns(), &state)?;
    f(Some((&state, &network)))
}

fn run_vm(
    layout: &PodLayout,
    manifest: &PodManifest,
    host: &Host,
    network: Option<(&PodNetworkState, &net::KvmNetwork)>,
    debug: bool,
    interactive: bool,
) -> anyhow::Result<i32> {
    let guest_net = plan::GuestNet {
        network: network.map(|(_, n)| n.guest.clone()),
        etc: ark_net::etc_files(manifest, network.map(|(s, _)| s)),
    };
    let mut plan = plan::plan(layout, manifest, host, &guest_net, debug)?;
    // `--memory`/`--cpus` are not what a VM gets as is: say what it got (and keep it for
    // `ark status`), one line.
    if let Some(note) = plan::resources_note(manifest, &plan.vm, host.profile) {
        eprintln!("ark-stage1-kvm: {note}");
        if let Err(e) = ark_os::write_atomic_volatile(&layout.vm_resources(), note.as_bytes()) {
            tracing::warn!("{}: {e}", layout.vm_resources().display());
        }
    }
    for nic in network.iter().flat_map(|(_, n)| &n.nics) {
        tracing::debug!("NIC {} on {} (MTU {})", nic.mac, nic.tap_name, nic.mtu);
        plan.vm.nets.push(vmm::NetConfig {
            tap: vmm::TapSource::Fd(nic.tap.as_raw_fd()),
            mac: nic.mac,
            mtu: Some(u16::try_from(nic.mtu).context("interface MTU")?),
            rx_rate: None,
            tx_rate: None,
        });
    }
    let (config_path, config) = match plan.root {
        plan::Root::Fs => (layout.stage2_config(), plan.stage2.to_json()),
        plan::Root::Blk { .. } => (
            layout.stage2_disk(),
            plan.stage2.to_disk_image().map_err(anyhow::Error::msg)?,
        ),
    };
    ark_os::write_atomic(&config_path, &config)
        .with_context(|| format!("{}", config_path.display()))?;
    if !interactive {
        // The VMM forwards stdin to the guest console; without --interactive the apps get none.
        redirect_stdin_to_null()?;
    }

    // Signals are handled by one thread (sigwait); block them before any thread exists.
    let stop_signals = stage1::stop_signals();
    stop_signals
        .thread_block()
        .context("blocking stop signals")?;

    let vmm_cgroup = cgroup::VmmCgroup::enter(manifest, plan.vmm_memory_bytes, plan.cpu_millis)
        .context("VMM cgroup")?;
    if let Some(c) = &vmm_cgroup {
        tracing::debug!("VMM cgroup: {:?}", c.dirs());
    }

    let status_dir = StatusDir::new(layout.status_dir());
    std::fs::create_dir_all(status_dir.dir())
        .with_context(|| format!("{}", status_dir.dir().display()))?;
    // Before the guest runs: apps writing into a shared root can fill this filesystem, and
    // the statuses must still fit.
    status_dir
        .reserve(manifest)
        .context("reserve the pod's status files")?;
    let vm_ended = Arc::new(AtomicBool::new(false));
    let listener = status::StatusListener::bind(&plan.status_uds)
        .with_context(|| format!("status socket {}", plan.status_uds.display()))?;
    let status_thread = listener.spawn(status_dir.clone(), vm_ended.clone())?;
    let log_limits = ark_pod_spec::logs::LogLimits::from_options(&manifest.stage1.options)
        .map_err(anyhow::Error::msg)?;
    ark_os::applog::create_log_dir(&layout.logs_dir())
        .with_context(|| format!("{}", layout.logs_dir().display()))?;
    let output_thread = output::OutputListener::bind(&plan.output_uds)
        .with_context(|| format!("output socket {}", plan.output_uds.display()))?
        .spawn(
            manifest,
            &layout.manifest(),
            &layout.logs_dir(),
            log_limits,
            vm_ended.clone(),
        )?;

    let stop = vmm::StopHandle::new().context("stop eventfd")?;
    spawn_signal_thread(stop_signals, stop.clone(), plan.vsock_uds.clone())?;

    let result = vmm::run_with_stop(plan.vm.clone(), stop);
    vm_ended.store(true, Ordering::Release);
    let outcome = status_thread.join().unwrap_or_default();
    let _ = output_thread.join();

    let reason = match (&result, outcome.pod_done) {
        (Ok(_), true) => None,
        (Ok(vmm::VmExit::GuestStop), false) => Some(
            "the VM ended before guest-init reported (rerun with --debug for the guest kernel log)"
                .to_string(),
        ),
        (Ok(vmm::VmExit::TripleFault), _) => Some("the guest kernel crashed (triple fault)".into()),
        (Ok(vmm::VmExit::HostStop), false) => {
            Some("the VM was stopped before guest-init reported".into())
        }
        (Err(e), _) => Some(format!("VMM error: {e}")),
    };
    // A sandbox's apps changed while it ran: the statuses owed are those it has now.
    let exit = status_dir
        .finish_with(
            &manifest.current(&layout.manifest()),
            reason.as_deref(),
            &outcome.exited,
        )
        .context("writing the pod's exit status")?;
    cleanup(&plan, vmm_cgroup);
    if let Some(r) = &exit.reason {
        eprintln!("ark-stage1-kvm: {r}");
    }
    match result {
        Err(_) if !outcome.pod_done => Ok(EXIT_STAGE1_ERROR),
        _ => Ok(exit.exit_code),
    }
}

/// The pod never ran (or its end could not be recorded): say why in its status, best effort, so
/// `ark status` shows the reason rather than a silent exit.
fn record_failure(pod_dir: &Path, msg: &str) {
    let layout = PodLayout::new(pod_dir);
    if let Ok(manifest) = PodManifest::load(&layout.manifest()) {
        let dir = StatusDir::new(layout.status_dir());
        if dir.read_pod().is_none() && std::fs::create_dir_all(dir.dir()).is_ok() {
            let _ = dir.finish(&manifest, Some(msg));
        }
    }
}

fn host() -> anyhow::Result<Host> {
    let profile = Profile::for_host();
    // Absolute: stage1-kvm works from inside the pod dir, and $ARK_KERNEL may be relative.
    let kernel = kernel_config::locate_kernel(profile)?;
    let kernel = std::fs::canonicalize(&kernel).with_context(|| format!("{}", kernel.display()))?;
    // A kernel built for the other profile boots nowhere useful: on kvm_pvm a stock kernel dies in
    // the instruction emulator, so say so now rather than hang or crash later.
    if let Some(built_for) = kernel_config::profile_beside(&kernel) {
        if built_for != profile {
            bail!(
                "kernel {} is a {} kernel, but this host needs {} (build it: {})",
                kernel.display(),
                built_for.name(),
                profile.name(),
                profile.build_command()
            );
        }
    }
    Ok(Host { profile, kernel })
}

fn redirect_stdin_to_null() -> anyhow::Result<()> {
    let null = std::fs::File::open("/dev/null").context("/dev/null")?;
    nix::unistd::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), 0).context("stdin")?;
    Ok(())
}

/// First SIGTERM/SIGINT/SIGHUP: ask guest-init to stop the apps (retrying while the guest is
/// still booting) and stop the VM from the host if it has not ended by the deadline. A second
/// signal stops the VM at once.
fn spawn_signal_thread(
    signals: SigSet,
    stop: vmm::StopHandle,
    vsock_uds: PathBuf,
) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if signals.wait().is_err() {
                return;
            }
            let deadline = Instant::now() + Duration::from_secs(STOP_GRACE_SECS) + STOP_SLACK;
            let hard_stop = stop.clone();
            std::thread::spawn(move || {
                let _ = signals.wait();
                hard_stop.stop();
            });
            while Instant::now() < deadline {
                match control::request_stop(&vsock_uds, CONTROL_PORT, STOP_GRACE_SECS) {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::debug!("stop request: {e}");
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
            }
            let now = Instant::now();
            if now < deadline {
                std::thread::sleep(deadline - now);
            }
            stop.stop();
        })
        .context("signal thread")?;
    Ok(())
}

fn cleanup(plan: &VmPlan, vmm_cgroup: Option<cgroup::VmmCgroup>) {
    let _ = std::fs::remove_file(&plan.vsock_uds);
    let _ = std::fs::remove_file(&plan.status_uds);
    let _ = std::fs::remove_file(&plan.output_uds);
    if let Some(c) = vmm_cgroup {
        if let Err(e) = c.leave() {
            tracing::warn!("removing the VMM cgroup: {e}");
        }
    }
}
