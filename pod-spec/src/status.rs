//! How a pod ended: per-app statuses guest-init reports and the messages that carry them. The
//! stage1 keeps them as files under `<pod dir>/status/` (`<app>.json` an [`AppStatus`],
//! `pod.json` a [`PodExit`], each padded to [`STATUS_FILE_SIZE`]); the host-side store that
//! writes them is `ark_os::status_dir::StatusDir`.
//!
//! Protocol: newline-delimited JSON [`StatusMessage`]s (vsock), or, with the file transport,
//! guest-init applies them itself to the status directory. Either way the stage1 writes
//! `pod.json` once guest-init is gone.

use serde::{Deserialize, Serialize};

use crate::manifest::PodManifest;

/// Exit code for a stage1's own errors (and an app that could not be started), as podman does.
pub const EXIT_STAGE1_ERROR: i32 = 125;

/// The size of every reserved status file: far more than any status needs (the free-text
/// fields are cut to [`MAX_TEXT`] bytes to keep it so).
pub const STATUS_FILE_SIZE: usize = 4096;
/// Longest `error` / `reason` kept in a status.
pub const MAX_TEXT: usize = 2048;

/// The line the host answers after `pod_done` on the vsock transport.
pub const STATUS_ACK: &str = "ok";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AppState {
    /// Added to a sandbox, not started yet (`ark app add`).
    Created,
    Running,
    Exited,
}

/// One app's status: `status/<app>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppStatus {
    pub app: String,
    pub state: AppState,
    /// The app's pid in the pod's pid namespace (host pid for fly).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// Set when the app exited normally (126/127 for an exec failure, as shells do).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Set when a signal killed the app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// The kernel's OOM killer killed a process of the app's cgroup.
    #[serde(default)]
    pub oom_killed: bool,
    /// Why the app could not run (bad user, exec failure, stage2 vanished...), one line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Unix milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<u64>,
}

impl AppStatus {
    pub fn running(app: &str, pid: i32, started_at: u64) -> Self {
        AppStatus {
            app: app.into(),
            state: AppState::Running,
            pid: Some(pid),
            exit_code: None,
            signal: None,
            oom_killed: false,
            error: None,
            started_at: Some(started_at),
            finished_at: None,
        }
    }

    /// An app that never ran or whose end was not observed.
    pub fn failed(app: &str, error: impl Into<String>, exit_code: Option<i32>) -> Self {
        AppStatus {
            app: app.into(),
            state: AppState::Exited,
            pid: None,
            exit_code,
            signal: None,
            oom_killed: false,
            error: Some(error.into()),
            started_at: None,
            finished_at: Some(crate::now_unix_ms()),
        }
    }

    /// The shell-style code this status stands for: the exit code, 128 + signal, or 125.
    pub fn code(&self) -> i32 {
        match (self.state, self.exit_code, self.signal) {
            (AppState::Exited, Some(c), _) => c,
            (AppState::Exited, None, Some(s)) => 128 + s,
            _ => EXIT_STAGE1_ERROR,
        }
    }
}

/// How the pod ended: `status/pod.json`, written by the stage1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodExit {
    /// What `ark run` exits with (see [`pod_exit_code`]).
    pub exit_code: i32,
    pub finished_at: u64,
    /// Set when the pod did not end on its own terms (stage2 died, VMM killed...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The pod's exit code: a one-app pod's own code; with several apps the first non-zero in
/// manifest order; 125 when an app has no final status.
pub fn pod_exit_code<'a>(
    manifest: &PodManifest,
    mut status_of: impl FnMut(&str) -> Option<&'a AppStatus>,
) -> i32 {
    let codes: Vec<i32> = manifest
        .apps
        .iter()
        .map(|a| status_of(&a.name).map_or(EXIT_STAGE1_ERROR, AppStatus::code))
        .collect();
    codes.iter().copied().find(|c| *c != 0).unwrap_or(0)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StatusMessage {
    AppStarted {
        app: String,
        pid: i32,
        started_at: u64,
    },
    AppExited {
        status: AppStatus,
    },
    /// Every app has a final status; nothing follows.
    PodDone,
}

impl StatusMessage {
    /// One line of JSON, newline included.
    pub fn to_line(&self) -> String {
        let mut s = serde_json::to_string(self).expect("status message serializes");
        s.push('\n');
        s
    }

    pub fn from_line(line: &str) -> Result<Self, String> {
        serde_json::from_str(line.trim_end()).map_err(|e| format!("status message: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_support::{exited, manifest};
    #[test]
    fn exit_code_rules() {
        let m = manifest(&["a", "b", "c"]);
        let s = [
            exited("a", Some(0), None),
            exited("b", None, Some(9)),
            exited("c", Some(3), None),
        ];
        assert_eq!(pod_exit_code(&m, |n| s.iter().find(|x| x.app == n)), 137);
        let s = [
            exited("a", Some(0), None),
            exited("b", Some(0), None),
            exited("c", Some(0), None),
        ];
        assert_eq!(pod_exit_code(&m, |n| s.iter().find(|x| x.app == n)), 0);
        assert_eq!(pod_exit_code(&m, |_| None), 125);
        let one = manifest(&["a"]);
        let s = [exited("a", Some(3), None)];
        assert_eq!(pod_exit_code(&one, |n| s.iter().find(|x| x.app == n)), 3);
    }

    #[test]
    fn messages_are_lines() {
        let msgs = [
            StatusMessage::AppStarted {
                app: "a".into(),
                pid: 7,
                started_at: 5,
            },
            StatusMessage::AppExited {
                status: exited("a", Some(3), None),
            },
            StatusMessage::PodDone,
        ];
        for m in msgs {
            let l = m.to_line();
            assert!(l.ends_with('\n') && l.matches('\n').count() == 1);
            assert_eq!(StatusMessage::from_line(&l).unwrap(), m);
        }
        assert_eq!(
            StatusMessage::PodDone.to_line(),
            "{\"type\":\"pod_done\"}\n"
        );
        assert!(StatusMessage::from_line("{\"type\":\"x\"}").is_err());
    }
}
