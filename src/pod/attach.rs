//! `ark run -t` and `ark attach`: a tty app's pty (made inside the pod by guest-init, kept by
//! its keeper; see the agent's `attach`) on our terminal, in every flavor, as podman's
//! conmon does it. `ark run -t` starts the stage1 as a detached child (its own session, so it
//! outlives a detach), waits until the agent lets it attach, then relays; our terminal is raw
//! while attached with `-i` (restored on every way out) and its size follows ours (SIGWINCH →
//! `resize`). The detach keys (`--detach-keys`, podman's default ctrl-p,ctrl-q) leave the pod
//! running; `ark attach UUID` comes back. When the pty ends, we exit with the pod's code.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ark_pod_spec::{Flavor, PodLayout, PodManifest};

use super::agent_client::{self, AttachOptions, AttachOutcome, DetachKeys};
use super::enter::{connect, escape_controls, RawTerminal};
use super::lifecycle::{spawn_stage1_detached, Prepared, Stage1Child};

/// The command line's attach flags.
#[derive(Debug, Clone)]
pub struct TtyOptions {
    /// `-i`: our stdin goes to the app (and our terminal is raw meanwhile).
    pub stdin: bool,
    /// `--detach-keys` as given.
    pub detach_keys: String,
    /// `ark attach --app`.
    pub app: Option<String>,
}

impl TtyOptions {
    fn attach_options(&self) -> anyhow::Result<AttachOptions> {
        let detach_keys = DetachKeys::parse(&self.detach_keys).map_err(super::error::invalid)?;
        Ok(AttachOptions {
            stdin: self.stdin,
            detach_keys,
        })
    }
}

/// How long a pod may take until its tty app can be attached: ns/fly, kvm (a slow guest).
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const VM_READY_TIMEOUT: Duration = Duration::from_secs(600);

/// `ark run -t` (and `run-prepared` of a pod with a tty app): starts the pod, attaches, and
/// returns the pod's exit code, or 0 after a detach.
pub fn run_attached(
    ctx: &crate::Context,
    prepared: Prepared,
    o: &TtyOptions,
) -> super::Result<i32> {
    let opts: AttachOptions = super::error::typed::<_, super::Error>(|| o.attach_options())?;
    let mut child = spawn_stage1_detached(ctx, prepared)?;
    super::error::typed(|| {
        let layout = PodLayout::new(&child.pod_dir);
        let manifest = PodManifest::load(&layout.manifest())?;
        let app = manifest.apps.iter().find(|a| a.tty).map(|a| a.name.clone());
        let flavor = manifest.stage1.flavor;
        let ready = match flavor {
            Flavor::Kvm => VM_READY_TIMEOUT,
            Flavor::Ns | Flavor::Fly => READY_TIMEOUT,
        };
        let deadline = Instant::now() + ready;
        loop {
            if let Some(code) = child.try_wait()? {
                // Ended before we could attach (a short-lived app): its output is in its log.
                print_log(ctx, &child, app.as_deref());
                return Ok(code);
            }
            let last = match connect(&layout, flavor) {
                Ok(conn) => {
                    let _terminal = o.stdin.then(RawTerminal::enter).flatten();
                    match agent_client::attach(
                        conn,
                        app.clone(),
                        super::enter::reply_timeout(flavor),
                        &opts,
                    )? {
                        AttachOutcome::Detached => return Ok(0),
                        AttachOutcome::Ended { got_output } => {
                            drop(_terminal);
                            let code = child.wait()?;
                            if !got_output {
                                print_log(ctx, &child, app.as_deref());
                            }
                            return Ok(code);
                        }
                        // Most likely the app has not started yet.
                        AttachOutcome::Refused { message, .. } => message,
                    }
                }
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() > deadline {
                bail!(
                    "pod {}: could not attach within {} s (it keeps running; try ark attach): {}",
                    child.uuid,
                    ready.as_secs(),
                    escape_controls(&last)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    })
}

/// The tty app's log, for an app that ended before anything of it reached us.
fn print_log(ctx: &crate::Context, child: &Stage1Child, app: Option<&str>) {
    let req = super::logs::LogsRequest {
        app: app.map(str::to_string),
        follow: false,
        since: None,
        timestamps: false,
    };
    let _ = super::logs::logs(
        ctx,
        &child.uuid.to_string(),
        &req,
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
    );
    let _ = std::io::stdout().flush();
}

/// `ark attach [--app NAME] [--detach-keys K] UUID`: our terminal on a running pod's tty app.
/// Returns the pod's exit code once the pty ended, or 0 after a detach.
pub fn attach(ctx: &crate::Context, id: &str, o: &TtyOptions) -> super::Result<i32> {
    super::error::typed(|| {
        let opts = o.attach_options()?;
        let (uuid, layout, manifest) = super::enter::running_pod(ctx, id)?;
        let app = match &o.app {
            Some(_) => super::enter::pick_app(&manifest, o.app.as_deref())?,
            None => manifest
                .apps
                .iter()
                .find(|a| a.tty)
                .with_context(|| format!("pod {uuid}: no app has a tty (run it with -t)"))?,
        };
        if !app.tty {
            bail!("pod {uuid}: app {} has no tty (run it with -t)", app.name);
        }
        let flavor = manifest.stage1.flavor;
        let conn =
            connect(&layout, flavor).with_context(|| format!("pod {uuid}: reach its agent"))?;
        let terminal = o.stdin.then(RawTerminal::enter).flatten();
        let outcome = agent_client::attach(
            conn,
            Some(app.name.clone()),
            super::enter::reply_timeout(flavor),
            &opts,
        )?;
        drop(terminal);
        match outcome {
            AttachOutcome::Detached => Ok(0),
            AttachOutcome::Refused { message, .. } => {
                bail!("pod {uuid}: {}", escape_controls(&message))
            }
            AttachOutcome::Ended { .. } => {
                // The pty ended: the app did. The pod's code once it is done.
                let s = super::info::status(ctx, &uuid, true)?;
                Ok(s.exit_code.unwrap_or(0))
            }
        }
    })
}
