//! Builders for unit tests of the crates that use the contract (pod-spec's own and ark-os's),
//! so each does not keep its own copy.

use crate::{AppState, AppStatus, PodManifest};

/// A minimal ns pod manifest whose apps have the given names.
pub fn manifest(apps: &[&str]) -> PodManifest {
    let apps: Vec<String> = apps
        .iter()
        .map(|a| format!(r#"{{"name":"{a}","image":{{"id":"sha256:x"}},"exec":["true"]}}"#))
        .collect();
    PodManifest::from_json(
        format!(
            r#"{{"version":1,"uuid":"ab12","apps":[{}],"stage1":{{"flavor":"ns"}}}}"#,
            apps.join(",")
        )
        .as_bytes(),
    )
    .expect("test manifest parses")
}

/// App `app`'s status after it exited with `code` or was killed by `sig`.
pub fn exited(app: &str, code: Option<i32>, sig: Option<i32>) -> AppStatus {
    AppStatus {
        app: app.into(),
        state: AppState::Exited,
        pid: Some(2),
        exit_code: code,
        signal: sig,
        oom_killed: false,
        error: None,
        started_at: Some(1),
        finished_at: Some(2),
    }
}
