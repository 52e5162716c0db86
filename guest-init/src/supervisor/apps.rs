//! A sandbox's apps while it runs (`ark app`, rkt's `app add|start|stop|rm`): the agent's app
//! requests, carried out by PID 1. The host made the app's root and manifest entry; the
//! request is still checked here as if hostile: the entry against the pod
//! (`PodManifest::validate`: name, volumes, paths, capabilities...), the root must be a
//! directory at the one place an app root can be (`/apps/<name>/rootfs`, the name a DNS
//! label), cgroup paths only under the pod's cgroup dirs, and each request must fit the app's
//! state (created → running → exited → removed).

use std::path::Path;
use std::time::{Duration, Instant};

use ark_pod_spec::agent::{AppAddRequest, Request};
use ark_pod_spec::{guest, now_unix_ms, AppState, PodManifest, Stage2Config};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::sink::{report, StatusSink};
use super::Pod;
use crate::app::{self, plan};
use crate::os::cgroup::read_oom_kills;

/// What a sandbox keeps to plan apps added later.
pub struct Sandbox {
    pub manifest: PodManifest,
    pub cfg: Stage2Config,
}

impl Pod {
    /// Carries out one app request; `Err` is the one line the client gets.
    pub(super) fn app_request(
        &mut self,
        req: Request,
        sink: &mut dyn StatusSink,
    ) -> Result<(), String> {
        if self.sandbox.is_none() {
            return Err("the pod is not a sandbox (made by ark app sandbox)".into());
        }
        if self.sup.stopping() {
            return Err("the pod is stopping".into());
        }
        match req {
            Request::AppAdd(a) => self.add_app(*a),
            Request::AppStart { app } => self.start_app(&app, sink),
            Request::AppStop { app, grace_secs } => {
                let grace = grace_secs.map_or(self.grace, Duration::from_secs);
                let pid = self.sup.stop_app(&app, Instant::now(), grace)?;
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
                Ok(())
            }
            Request::AppRemove { app } => self.remove_app(&app),
            _ => Err("not an app request".into()),
        }
    }

    fn add_app(&mut self, req: AppAddRequest) -> Result<(), String> {
        let sb = self.sandbox.as_mut().expect("checked");
        let name = req.app.name.clone();
        if self.sup.state(&name).is_some() {
            return Err(format!("the pod already has an app {name:?}"));
        }
        let mut next = sb.manifest.clone();
        next.apps.push(req.app.clone());
        next.validate().map_err(|e| e.to_string())?;
        if req.app.interactive {
            return Err("an added app cannot be interactive".into());
        }
        let root = guest::app_rootfs(&name);
        let meta = std::fs::symlink_metadata(Path::new(&root))
            .map_err(|e| format!("app {name}: root {root}: {e}"))?;
        if !meta.is_dir() {
            return Err(format!("app {name}: root {root} is not a directory"));
        }
        let cgroup = if sb.cfg.create_app_cgroups {
            Some(
                crate::machine::added_app_cgroup(&sb.cfg.pod_uuid, &req.app)
                    .map_err(|e| format!("{e:#}"))?,
            )
        } else {
            req.cgroup
        };
        let mut cfg = sb.cfg.clone();
        cfg.app_cgroups.retain(|c| c.app != name);
        cfg.app_cgroups.extend(cgroup.clone());
        let p = plan::plan_app(&next, &req.app, &cfg);
        sb.cfg.app_cgroups = cfg.app_cgroups;
        sb.manifest = next;
        self.sup.add(&name)?;
        self.plans.retain(|q| q.name != name);
        self.plans.push(p.clone());
        if let Some(a) = &mut self.agent {
            a.plans.retain(|q| q.name != name);
            a.plans.push(p);
        }
        Ok(())
    }

    fn start_app(&mut self, name: &str, sink: &mut dyn StatusSink) -> Result<(), String> {
        match self.sup.state(name) {
            None => return Err(format!("the pod has no app {name:?}")),
            Some(AppState::Created) => {}
            Some(AppState::Running) => return Err(format!("app {name:?} is already running")),
            Some(AppState::Exited) => {
                return Err(format!(
                    "app {name:?} has exited: remove it and add it again"
                ))
            }
        }
        let sb = self.sandbox.as_ref().expect("checked");
        let p = self
            .plans
            .iter()
            .find(|p| p.name == name)
            .cloned()
            .ok_or_else(|| format!("the pod has no app {name:?}"))?;
        if let Some(f) = &p.oom_file {
            self.oom_base.retain(|(a, _, _)| a != name);
            self.oom_base.push((
                name.to_string(),
                f.clone(),
                read_oom_kills(Path::new(f)).unwrap_or(0),
            ));
        }
        let ctx = app::ChildContext {
            pod_uuid: &sb.cfg.pod_uuid,
            hostname: sb.cfg.hostname.as_deref(),
            etc: &sb.cfg.etc,
            debug: sb.cfg.debug,
        };
        match app::start(&p, &ctx, &self.signals.set, &mut self.outputs) {
            Ok(started) => {
                report(
                    sink,
                    self.sup.started(name, started.pid.as_raw(), now_unix_ms()),
                );
                // (ark app add makes no tty app; a keeper, were there one, serves attach.)
                self.ttys.extend(started.tty);
                match started.error {
                    // The app's process exists but will not run its program: its exit is
                    // reported as usual, and the client hears why.
                    Some(e) => {
                        let msg = e.message.clone();
                        self.sup.start_error(name, e);
                        Err(format!("app {name}: {msg}"))
                    }
                    None => Ok(()),
                }
            }
            Err(e) => {
                let msg = format!("{e:#}");
                report(sink, self.sup.not_started(name, msg.clone(), now_unix_ms()));
                Err(format!("app {name}: {msg}"))
            }
        }
    }

    fn remove_app(&mut self, name: &str) -> Result<(), String> {
        self.sup.remove(name)?;
        self.plans.retain(|p| p.name != name);
        self.oom_base.retain(|(a, _, _)| a != name);
        if let Some(a) = &mut self.agent {
            a.plans.retain(|p| p.name != name);
        }
        if let Some(sb) = &mut self.sandbox {
            sb.manifest.apps.retain(|a| a.name != name);
            sb.cfg.app_cgroups.retain(|c| c.app != name);
        }
        Ok(())
    }

    /// A stopping sandbox: apps added but never started get their final status now.
    pub(super) fn end_created_apps(&mut self, sink: &mut dyn StatusSink) {
        for name in self.sup.created_apps() {
            report(
                sink,
                self.sup.not_started(
                    &name,
                    "pod stopped before the app started".into(),
                    now_unix_ms(),
                ),
            );
        }
    }
}
