//! What to do for each app, decided from the manifest and the stage2 config before any
//! syscall: pure, unit-tested.

use ark_pod_spec::manifest::normalize_capability;
use ark_pod_spec::{guest, App, PodManifest, Rlimit, Stage2Config};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    /// Path in guest-init's root (`/ark/volumes/<name>`).
    pub source: String,
    /// Absolute path inside the app's root.
    pub target: String,
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppPlan {
    pub name: String,
    /// The app's root in guest-init's root.
    pub root: String,
    pub argv: Vec<String>,
    /// The manifest's env, in order (HOME and the defaults are added by [`super::exec::build_env`]).
    pub env: Vec<(String, String)>,
    pub user: String,
    pub group: String,
    pub supplementary_groups: Vec<u32>,
    pub working_dir: String,
    pub binds: Vec<Bind>,
    /// Canonical names (`CAP_...`) of the capabilities kept (the bounding set).
    pub caps_keep: Vec<String>,
    /// They were named by the user: a non-root app holds them too.
    pub caps_explicit: bool,
    pub rlimits: Vec<Rlimit>,
    /// Cgroup dirs the app joins before exec, and where its OOM kills are counted.
    pub cgroup_dirs: Vec<String>,
    pub oom_file: Option<String>,
    pub interactive: bool,
    /// stdio is a pty made in the app's devpts, kept by an attach keeper (`ark run -t`).
    pub tty: bool,
}

/// One plan per app, in manifest order.
pub fn plan(m: &PodManifest, c: &Stage2Config) -> Vec<AppPlan> {
    m.apps.iter().map(|a| plan_app(m, a, c)).collect()
}

/// The plan of one app of `m` (also an app added to a running sandbox).
pub fn plan_app(m: &PodManifest, a: &App, c: &Stage2Config) -> AppPlan {
    let cg = c.app_cgroups.iter().find(|g| g.app == a.name);
    AppPlan {
        name: a.name.clone(),
        root: guest::app_rootfs(&a.name),
        argv: a.exec.clone(),
        env: a
            .env
            .iter()
            .map(|e| (e.name.clone(), e.value.clone()))
            .collect(),
        user: a.user.clone(),
        group: a.group.clone(),
        supplementary_groups: a.supplementary_groups.clone(),
        working_dir: a.working_dir.clone(),
        binds: a
            .mounts
            .iter()
            .map(|mt| Bind {
                source: guest::volume_dir(&mt.volume),
                target: mt.target.clone(),
                read_only: m.volume(&mt.volume).is_some_and(|v| v.read_only),
            })
            .collect(),
        caps_keep: a
            .capabilities_keep
            .iter()
            .filter_map(|n| normalize_capability(n))
            .map(str::to_string)
            .collect(),
        caps_explicit: a.capabilities_explicit,
        rlimits: a.rlimits.clone(),
        cgroup_dirs: cg.map(|g| g.dirs.clone()).unwrap_or_default(),
        oom_file: cg.and_then(|g| g.oom_file.clone()),
        interactive: a.interactive,
        tty: a.tty,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ark_pod_spec::{AppCgroup, OnExit, StatusTransport};

    pub(crate) fn manifest() -> PodManifest {
        PodManifest::from_json(
            br#"{
              "version": 1, "uuid": "ab12",
              "apps": [
                {"name": "web", "image": {"id": "sha256:x"}, "exec": ["httpd", "-f"],
                 "env": [{"name": "PATH", "value": "/opt/bin"}, {"name": "A", "value": "1"},
                         {"name": "A", "value": "2"}, {"name": "ARK_APP_NAME", "value": "evil"}],
                 "user": "www", "group": "www", "working_dir": "/srv",
                 "mounts": [{"volume": "data", "target": "/data"}],
                 "capabilities_keep": ["net_bind_service"],
                 "rlimits": [{"resource": "RLIMIT_NOFILE", "soft": 10, "hard": 20}]},
                {"name": "side", "image": {"id": "sha256:y"}, "exec": ["sleep", "1"], "interactive": true}
              ],
              "volumes": [{"name": "data", "kind": "host", "source": "/srv/data", "read_only": true}],
              "stage1": {"flavor": "ns"}
            }"#,
        )
        .unwrap()
    }

    pub(crate) fn config() -> Stage2Config {
        let mut c = Stage2Config::new(
            "ab12",
            StatusTransport::File {
                dir: "/ark/status".into(),
            },
            OnExit::Exit,
        );
        c.app_cgroups.push(AppCgroup {
            app: "web".into(),
            dirs: vec!["/ark/cgroup/memory/app.web".into()],
            oom_file: Some("/ark/cgroup/memory/app.web/memory.oom_control".into()),
        });
        c
    }

    #[test]
    fn manifest_becomes_exec_plan() {
        let p = plan(&manifest(), &config());
        assert_eq!(p.len(), 2);
        let web = &p[0];
        assert_eq!(web.root, "/apps/web/rootfs");
        assert_eq!(web.argv, ["httpd", "-f"]);
        assert_eq!(
            web.binds,
            [Bind {
                source: "/ark/volumes/data".into(),
                target: "/data".into(),
                read_only: true
            }]
        );
        assert_eq!(web.caps_keep, ["CAP_NET_BIND_SERVICE"]);
        assert!(!web.caps_explicit);
        assert_eq!(
            web.rlimits,
            [Rlimit {
                resource: "RLIMIT_NOFILE".into(),
                soft: 10,
                hard: 20
            }]
        );
        assert_eq!(web.cgroup_dirs, ["/ark/cgroup/memory/app.web"]);
        assert!(web.oom_file.is_some());
        let side = &p[1];
        assert!(side.cgroup_dirs.is_empty() && side.oom_file.is_none());
        assert!(side.interactive);
        assert_eq!(
            side.caps_keep.len(),
            ark_pod_spec::DEFAULT_CAPABILITIES.len()
        );
    }
}
