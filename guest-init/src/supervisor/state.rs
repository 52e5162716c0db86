//! The PID 1 bookkeeping, free of syscalls: which pids are apps, what each app's end means,
//! when a stop escalates from SIGTERM to SIGKILL, and when the pod is done.

use std::time::{Duration, Instant};

use ark_pod_spec::{AppState, AppStatus, StatusMessage};

/// How a reaped child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

/// Why an app failed before its program ran, sent by the child over its error pipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartError {
    /// 127 not found, 126 not executable; `None` for other setup failures (reported as 125).
    pub exit_code: Option<i32>,
    pub message: String,
}

#[derive(Debug)]
struct AppRun {
    name: String,
    pid: Option<i32>,
    started_at: Option<u64>,
    start_error: Option<StartError>,
    status: Option<AppStatus>,
    /// `app_stop`: when this app alone gets SIGKILL.
    kill_at: Option<Instant>,
}

impl AppRun {
    fn new(name: &str) -> Self {
        AppRun {
            name: name.to_string(),
            pid: None,
            started_at: None,
            start_error: None,
            status: None,
            kill_at: None,
        }
    }

    fn state(&self) -> AppState {
        match (&self.status, self.pid) {
            (Some(_), _) => AppState::Exited,
            (None, Some(_)) => AppState::Running,
            (None, None) => AppState::Created,
        }
    }
}

#[derive(Debug)]
pub struct Supervisor {
    apps: Vec<AppRun>,
    /// When running apps get SIGKILL, once a stop was requested.
    kill_at: Option<Instant>,
    killed: bool,
}

impl Supervisor {
    pub fn new<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        Supervisor {
            apps: names.into_iter().map(AppRun::new).collect(),
            kill_at: None,
            killed: false,
        }
    }

    fn find(&mut self, app: &str) -> &mut AppRun {
        self.apps
            .iter_mut()
            .find(|a| a.name == app)
            .expect("app is in the pod")
    }

    /// The app's process exists (its program may still fail to exec).
    pub fn started(&mut self, app: &str, pid: i32, now_ms: u64) -> StatusMessage {
        let a = self.find(app);
        a.pid = Some(pid);
        a.started_at = Some(now_ms);
        StatusMessage::AppStarted {
            app: app.into(),
            pid,
            started_at: now_ms,
        }
    }

    /// The child reported, before exec, why the app cannot run; its exit comes later.
    pub fn start_error(&mut self, app: &str, err: StartError) {
        self.find(app).start_error = Some(err);
    }

    /// No process could even be created for the app (fork failed, stop before start...).
    pub fn not_started(&mut self, app: &str, message: String, now_ms: u64) -> StatusMessage {
        let a = self.find(app);
        let mut st = AppStatus::failed(app, message, None);
        st.finished_at = Some(now_ms);
        a.status = Some(st.clone());
        StatusMessage::AppExited { status: st }
    }

    /// A child was reaped. Returns the app's final status message if it was an app; other
    /// pids are orphans PID 1 adopted, reaped and forgotten.
    pub fn reaped(
        &mut self,
        pid: i32,
        exit: Exit,
        oom_killed: bool,
        now_ms: u64,
    ) -> Option<StatusMessage> {
        let a = self
            .apps
            .iter_mut()
            .find(|a| a.pid == Some(pid) && a.status.is_none())?;
        let (exit_code, signal, error) = match (&a.start_error, exit) {
            (Some(e), _) => (e.exit_code, None, Some(e.message.clone())),
            (None, Exit::Code(c)) => (Some(c), None, None),
            (None, Exit::Signal(s)) => (None, Some(s), None),
        };
        let st = AppStatus {
            app: a.name.clone(),
            state: AppState::Exited,
            pid: Some(pid),
            exit_code,
            signal,
            oom_killed,
            error,
            started_at: a.started_at,
            finished_at: Some(now_ms),
        };
        a.status = Some(st.clone());
        Some(StatusMessage::AppExited { status: st })
    }

    /// The app's state, `None` for no such app.
    pub fn state(&self, app: &str) -> Option<AppState> {
        self.apps.iter().find(|a| a.name == app).map(AppRun::state)
    }

    /// A sandbox's new app, created (not started).
    pub fn add(&mut self, app: &str) -> Result<(), String> {
        if self.state(app).is_some() {
            return Err(format!("the pod already has an app {app:?}"));
        }
        self.apps.push(AppRun::new(app));
        Ok(())
    }

    /// Forgets an app that is not running.
    pub fn remove(&mut self, app: &str) -> Result<(), String> {
        match self.state(app) {
            None => Err(format!("the pod has no app {app:?}")),
            Some(AppState::Running) => Err(format!("app {app:?} is running: stop it first")),
            Some(_) => {
                self.apps.retain(|a| a.name != app);
                Ok(())
            }
        }
    }

    /// `app_stop`: the pid to SIGTERM now; SIGKILL follows after `grace` ([`Self::kill_due`]).
    pub fn stop_app(&mut self, app: &str, now: Instant, grace: Duration) -> Result<i32, String> {
        let a = self
            .apps
            .iter_mut()
            .find(|a| a.name == app)
            .ok_or_else(|| format!("the pod has no app {app:?}"))?;
        match (a.state(), a.pid) {
            (AppState::Running, Some(pid)) => {
                let at = now + grace;
                a.kill_at = Some(a.kill_at.map_or(at, |k| k.min(at)));
                Ok(pid)
            }
            (state, _) => Err(format!(
                "app {app:?} is not running (it is {})",
                state_name(state)
            )),
        }
    }

    /// Apps added but never started (a stopping sandbox reports them as never run).
    pub fn created_apps(&self) -> Vec<String> {
        self.apps
            .iter()
            .filter(|a| a.state() == AppState::Created)
            .map(|a| a.name.clone())
            .collect()
    }

    pub fn is_app(&self, pid: i32) -> Option<&str> {
        self.apps
            .iter()
            .find(|a| a.pid == Some(pid))
            .map(|a| a.name.as_str())
    }

    /// (app, pid) of each app running now.
    pub fn running_apps(&self) -> Vec<(String, i32)> {
        self.apps
            .iter()
            .filter(|a| a.status.is_none())
            .filter_map(|a| Some((a.name.clone(), a.pid?)))
            .collect()
    }

    pub fn running_pids(&self) -> Vec<i32> {
        self.apps
            .iter()
            .filter(|a| a.status.is_none())
            .filter_map(|a| a.pid)
            .collect()
    }

    pub fn all_done(&self) -> bool {
        self.apps.iter().all(|a| a.status.is_some())
    }

    pub fn stopping(&self) -> bool {
        self.kill_at.is_some()
    }

    /// A stop was asked for: returns the pids to SIGTERM now. A later request can only bring
    /// the SIGKILL deadline closer.
    pub fn request_stop(&mut self, now: Instant, grace: Duration) -> Vec<i32> {
        let at = now + grace;
        self.kill_at = Some(self.kill_at.map_or(at, |k| k.min(at)));
        self.running_pids()
    }

    /// Pids to SIGKILL now that the grace period is over (once for the pod; once per app
    /// stopped alone).
    pub fn kill_due(&mut self, now: Instant) -> Vec<i32> {
        let mut pids = match self.kill_at {
            Some(at) if now >= at && !self.killed => {
                self.killed = true;
                self.running_pids()
            }
            _ => Vec::new(),
        };
        for a in &mut self.apps {
            if let (Some(at), Some(pid), None) = (a.kill_at, a.pid, &a.status) {
                if now >= at {
                    a.kill_at = None;
                    if !pids.contains(&pid) {
                        pids.push(pid);
                    }
                }
            }
        }
        pids
    }

    /// How long the event loop may sleep before [`Supervisor::kill_due`] has work.
    pub fn timeout(&self, now: Instant) -> Option<Duration> {
        let pod = match self.kill_at {
            Some(at) if !self.killed => Some(at),
            _ => None,
        };
        self.apps
            .iter()
            .filter(|a| a.status.is_none())
            .filter_map(|a| a.kill_at)
            .chain(pod)
            .min()
            .map(|at| at.saturating_duration_since(now))
    }
}

fn state_name(s: AppState) -> &'static str {
    match s {
        AppState::Created => "created",
        AppState::Running => "running",
        AppState::Exited => "exited",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apps_exit_orphans_are_ignored() {
        let mut s = Supervisor::new(["a", "b"]);
        s.started("a", 10, 1);
        s.started("b", 11, 1);
        assert_eq!(s.reaped(99, Exit::Code(0), false, 2), None, "orphan");
        let m = s.reaped(10, Exit::Code(3), false, 2).unwrap();
        let StatusMessage::AppExited { status } = m else {
            panic!()
        };
        assert_eq!((status.exit_code, status.signal), (Some(3), None));
        assert_eq!(status.code(), 3);
        assert!(!s.all_done());
        assert_eq!(s.running_pids(), [11]);
        let StatusMessage::AppExited { status } = s.reaped(11, Exit::Signal(9), true, 3).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (status.signal, status.oom_killed, status.code()),
            (Some(9), true, 137)
        );
        assert!(s.all_done());
        // A reused pid after the app ended is an orphan, not the app again.
        assert_eq!(s.reaped(11, Exit::Code(0), false, 4), None);
    }

    #[test]
    fn start_errors_win_over_the_exit_code() {
        let mut s = Supervisor::new(["a", "b"]);
        s.started("a", 10, 1);
        s.start_error(
            "a",
            StartError {
                exit_code: Some(127),
                message: "exec \"nope\": not found".into(),
            },
        );
        let StatusMessage::AppExited { status } = s.reaped(10, Exit::Code(127), false, 2).unwrap()
        else {
            panic!()
        };
        assert_eq!(status.code(), 127);
        assert!(status.error.unwrap().contains("nope"));
        s.started("b", 11, 1);
        s.start_error(
            "b",
            StartError {
                exit_code: None,
                message: "user \"x\" not found".into(),
            },
        );
        let StatusMessage::AppExited { status } = s.reaped(11, Exit::Code(125), false, 2).unwrap()
        else {
            panic!()
        };
        assert_eq!((status.exit_code, status.code()), (None, 125));
    }

    #[test]
    fn stop_escalates_once_after_grace() {
        let t0 = Instant::now();
        let mut s = Supervisor::new(["a", "b"]);
        s.started("a", 10, 1);
        s.started("b", 11, 1);
        assert_eq!(s.timeout(t0), None);
        assert_eq!(s.request_stop(t0, Duration::from_secs(5)), [10, 11]);
        assert!(s.kill_due(t0 + Duration::from_secs(1)).is_empty());
        assert_eq!(s.timeout(t0), Some(Duration::from_secs(5)));
        // A second, shorter stop brings the deadline closer, never later.
        s.request_stop(t0, Duration::from_secs(2));
        s.request_stop(t0, Duration::from_secs(9));
        assert_eq!(s.timeout(t0), Some(Duration::from_secs(2)));
        s.reaped(10, Exit::Signal(15), false, 2);
        assert_eq!(s.kill_due(t0 + Duration::from_secs(2)), [11]);
        assert!(s.kill_due(t0 + Duration::from_secs(3)).is_empty());
        assert_eq!(s.timeout(t0), None);
    }

    #[test]
    fn sandbox_apps_are_added_stopped_alone_and_removed() {
        let t0 = Instant::now();
        let mut s = Supervisor::new([]);
        assert!(s.all_done(), "an empty sandbox has nothing running");
        s.add("a").unwrap();
        s.add("b").unwrap();
        assert!(s.add("a").unwrap_err().contains("already"));
        assert_eq!(s.state("a"), Some(AppState::Created));
        assert!(s.stop_app("a", t0, Duration::ZERO).is_err(), "not started");
        s.started("a", 10, 1);
        s.started("b", 11, 1);
        assert!(s.remove("a").unwrap_err().contains("running"));
        assert_eq!(s.stop_app("a", t0, Duration::from_secs(3)), Ok(10));
        assert_eq!(s.timeout(t0), Some(Duration::from_secs(3)));
        assert!(s.kill_due(t0 + Duration::from_secs(1)).is_empty());
        assert_eq!(s.kill_due(t0 + Duration::from_secs(3)), [10], "only a");
        assert!(s.kill_due(t0 + Duration::from_secs(4)).is_empty(), "once");
        s.reaped(10, Exit::Signal(9), false, 2);
        assert_eq!(s.state("a"), Some(AppState::Exited));
        assert_eq!(s.running_pids(), [11], "b keeps running");
        s.remove("a").unwrap();
        assert_eq!(s.state("a"), None);
        assert!(s.remove("a").is_err());
        s.add("a").unwrap();
        assert_eq!(s.created_apps(), ["a"]);
    }

    #[test]
    fn not_started_counts_as_done() {
        let mut s = Supervisor::new(["a"]);
        let StatusMessage::AppExited { status } = s.not_started("a", "fork: EAGAIN".into(), 5)
        else {
            panic!()
        };
        assert_eq!(status.code(), 125);
        assert!(s.all_done());
    }
}
