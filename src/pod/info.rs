//! `ark list` and `ark status`: what a pod is, derived from its directory, its lock and the
//! status files its stage1 wrote. Reading also reaps: a `run/` pod found unlocked is moved to
//! `exited-garbage/`.

use std::fs;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use ark_os::StatusDir;
use ark_pod_spec::{format_unix_ms, AppState, AppStatus, PodLayout, PodManifest};
use serde::Serialize;

use super::store::{Liveness, PodRef, PodState, PodStore};

#[derive(Debug, Clone, Serialize)]
pub struct AppSummary {
    pub name: String,
    pub image: String,
    pub image_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<AppStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PodSummary {
    pub uuid: String,
    /// The pod's name (`--name`), if it was given one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flavor: Option<&'static str>,
    /// The stage1's pid while the pod runs (or ran).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// Unix milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<u64>,
    /// The pod's exit code (what `ark run` returned), once exited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Why the pod ended when it did not end on its own terms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub apps: Vec<AppSummary>,
    /// What the pod's networks attached (from `net/state.json`, while it is there).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<ark_pod_spec::net::Attachment>,
    /// kvm: what the VM got when it is not what `--memory`/`--cpus` asked (the stage1 says).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm_resources: Option<String>,
    /// The manifest's port forwards.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ark_pod_spec::PortForward>,
}

fn mtime_ms(p: &Path) -> Option<u64> {
    let t = fs::metadata(p).ok()?.modified().ok()?;
    u64::try_from(t.duration_since(UNIX_EPOCH).ok()?.as_millis()).ok()
}

/// A one-line note a stage1 left: at most 1 KiB read, control characters escaped.
fn read_line_capped(path: &Path) -> Option<String> {
    use std::io::Read;
    let mut buf = Vec::new();
    fs::File::open(path)
        .ok()?
        .take(1024)
        .read_to_end(&mut buf)
        .ok()?;
    let text = String::from_utf8_lossy(&buf);
    let text = text.trim();
    (!text.is_empty()).then(|| ark_os::escape::controls_escaped(text).into_owned())
}

/// The stage1 pid recorded by `run-prepared`.
pub fn read_pid(pod_dir: &Path) -> Option<i32> {
    fs::read_to_string(pod_dir.join("pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Summarizes one pod (reaping it first if it died).
pub fn summarize(store: &PodStore, pod: &PodRef) -> anyhow::Result<PodSummary> {
    let pod = store.reap_if_exited(pod)?;
    let liveness = store.liveness(&pod)?;
    let layout = PodLayout::new(&pod.path);
    let manifest = match PodManifest::load(&layout.manifest()) {
        Ok(m) => Some(m),
        // A pod still being prepared has none yet; a corrupt one is worth a line naming it.
        Err(e) if layout.manifest().exists() => {
            tracing::warn!("{e}");
            None
        }
        Err(_) => None,
    };
    let status = StatusDir::new(layout.status_dir());
    let exit = status.read_pod();
    let apps = manifest
        .as_ref()
        .map(|m| {
            m.apps
                .iter()
                .map(|a| AppSummary {
                    name: a.name.clone(),
                    image: a.image.name.clone(),
                    image_id: a.image.id.clone(),
                    status: status.read_app(&a.name),
                })
                .collect()
        })
        .unwrap_or_default();
    let exited = liveness == Liveness::Exited;
    let mut summary = PodSummary {
        uuid: pod.uuid.to_string(),
        name: super::names::read(&pod.path),
        state: liveness.as_str(),
        flavor: manifest.as_ref().map(|m| m.stage1.flavor.as_str()),
        pid: read_pid(&pod.path),
        created_at: mtime_ms(&layout.manifest()),
        started_at: mtime_ms(&pod.path.join("pid")),
        finished_at: exit.as_ref().map(|e| e.finished_at),
        exit_code: exit.as_ref().map(|e| e.exit_code),
        reason: exit.as_ref().and_then(|e| e.reason.clone()),
        apps,
        networks: match ark_net::read_state(&layout) {
            Ok(s) => s.map(|s| s.attachments).unwrap_or_default(),
            Err(e) => {
                tracing::warn!("pod {}: {e}", pod.uuid);
                Vec::new()
            }
        },
        vm_resources: read_line_capped(&layout.vm_resources()),
        ports: manifest
            .as_ref()
            .map(|m| m.ports.clone())
            .unwrap_or_default(),
    };
    if exited && exit.is_none() {
        // The stage1 died before writing pod.json (kill -9, crash): say so; apps without a
        // final status did not report one.
        summary.reason = Some("the stage1 ended without recording the pod's exit".into());
        summary.exit_code = Some(ark_pod_spec::EXIT_STAGE1_ERROR);
        summary.finished_at = super::store::exited_at(&pod.path)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .and_then(|d| u64::try_from(d.as_millis()).ok());
    }
    Ok(summary)
}

fn app_code(s: &AppStatus) -> String {
    match (s.state, s.exit_code, s.signal) {
        (AppState::Created, ..) => "created".into(),
        (AppState::Running, ..) => "running".into(),
        (AppState::Exited, Some(c), _) => c.to_string(),
        (AppState::Exited, None, Some(sig)) => format!("{}", 128 + sig),
        (AppState::Exited, None, None) => "unknown".into(),
    }
}

/// rkt-style `key=value` lines.
pub fn status_text(s: &PodSummary) -> String {
    let mut out = String::new();
    let mut kv = |k: &str, v: String| {
        out.push_str(k);
        out.push('=');
        out.push_str(&v);
        out.push('\n');
    };
    kv("uuid", s.uuid.clone());
    if let Some(n) = &s.name {
        kv("name", n.clone());
    }
    kv("state", s.state.into());
    if let Some(f) = s.flavor {
        kv("stage1", f.into());
    }
    if let Some(t) = s.created_at {
        kv("created", format_unix_ms(t));
    }
    if let Some(t) = s.started_at {
        kv("started", format_unix_ms(t));
    }
    if let Some(p) = s.pid {
        kv("pid", p.to_string());
    }
    if let Some(t) = s.finished_at {
        kv("finished", format_unix_ms(t));
    }
    if let Some(c) = s.exit_code {
        kv("exit-code", c.to_string());
    }
    if let Some(r) = &s.reason {
        kv("reason", r.clone());
    }
    if let Some(r) = &s.vm_resources {
        kv("vm-resources", r.clone());
    }
    for n in &s.networks {
        let addrs: Vec<String> = n
            .interface
            .addresses
            .iter()
            .map(|a| a.to_string())
            .collect();
        kv(
            &format!("network-{}", n.network),
            format!("{} {}", n.interface.name, addrs.join(",")),
        );
    }
    for (i, p) in s.ports.iter().enumerate() {
        let host = p.host_ip.map(|ip| format!("{ip}:")).unwrap_or_default();
        kv(
            &format!("port-{i}"),
            format!(
                "{host}{}->{}/{}",
                p.host_port,
                p.pod_port,
                p.protocol.as_str()
            ),
        );
    }
    for a in &s.apps {
        let Some(st) = &a.status else {
            continue;
        };
        kv(&format!("app-{}", a.name), app_code(st));
        if let Some(sig) = st.signal {
            kv(&format!("app-{}-signal", a.name), sig.to_string());
        }
        if st.oom_killed {
            kv(&format!("app-{}-oom-killed", a.name), "true".into());
        }
        if let Some(e) = &st.error {
            kv(&format!("app-{}-error", a.name), e.replace('\n', " "));
        }
        if let Some(t) = st.started_at {
            kv(&format!("app-{}-started", a.name), format_unix_ms(t));
        }
        if let Some(t) = st.finished_at {
            kv(&format!("app-{}-finished", a.name), format_unix_ms(t));
        }
    }
    out
}

/// A pod's summary; with `wait`, once it has exited.
pub fn status(ctx: &crate::Context, id: &str, wait: bool) -> super::Result<PodSummary> {
    super::error::typed(|| {
        let store = super::open_store(ctx)?;
        let mut pod = store.find(id)?;
        if wait {
            loop {
                match pod.state {
                    PodState::Prepare | PodState::Prepared => {
                        std::thread::sleep(Duration::from_millis(100));
                        pod = store.refind(&pod.uuid)?;
                    }
                    PodState::Run => {
                        // Blocks until the stage1 lets go of the lock, i.e. the pod ended.
                        let locked = store.lock_wait(&pod)?;
                        pod = locked.pod.clone();
                        drop(locked);
                        pod = store.reap_if_exited(&pod)?;
                        break;
                    }
                    _ => break,
                }
            }
        }
        summarize(&store, &pod)
    })
}

/// Every pod, oldest first.
pub fn list(ctx: &crate::Context) -> super::Result<Vec<PodSummary>> {
    super::error::typed(|| {
        let store = super::open_store(ctx)?;
        let mut pods = Vec::new();
        for p in store.list()? {
            match summarize(&store, &p) {
                Ok(s) => pods.push(s),
                // Removed by a concurrent gc between listing and reading: not a pod any more.
                Err(e) => tracing::debug!("pod {}: {e:#}", p.uuid),
            }
        }
        pods.sort_by_key(|p| p.created_at.unwrap_or(0));
        Ok(pods)
    })
}

/// A pod's manifest as stored.
pub fn manifest(ctx: &crate::Context, id: &str) -> super::Result<Vec<u8>> {
    super::error::typed(|| {
        use anyhow::Context as _;
        let store = super::open_store(ctx)?;
        let pod = store.find(id)?;
        let path = PodLayout::new(&pod.path).manifest();
        std::fs::read(&path)
            .with_context(|| format!("pod {}: no manifest (still preparing?)", pod.uuid))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_are_rkt_style() {
        let mut st = AppStatus::running("web", 7, 1_700_000_000_000);
        st.state = AppState::Exited;
        st.signal = Some(9);
        st.oom_killed = true;
        st.finished_at = Some(1_700_000_001_000);
        let s = PodSummary {
            uuid: "u".into(),
            name: Some("web".into()),
            state: "exited",
            flavor: Some("ns"),
            pid: Some(42),
            created_at: Some(0),
            started_at: None,
            finished_at: Some(1_700_000_001_000),
            exit_code: Some(137),
            reason: None,
            apps: vec![
                AppSummary {
                    name: "web".into(),
                    image: "busybox".into(),
                    image_id: "sha256:x".into(),
                    status: Some(st),
                },
                AppSummary {
                    name: "idle".into(),
                    image: "busybox".into(),
                    image_id: "sha256:x".into(),
                    status: None,
                },
            ],
            networks: vec![ark_pod_spec::net::Attachment {
                network: "default".into(),
                interface: ark_pod_spec::net::Interface {
                    name: "eth0".into(),
                    mac: ark_pod_spec::net::Mac([2, 0, 0, 0, 0, 1]),
                    mtu: None,
                    addresses: vec!["172.16.28.5/24".parse().unwrap()],
                },
                routes: vec![],
                dns: Default::default(),
            }],
            vm_resources: Some("the VM got 1 vCPU".into()),
            ports: vec![ark_pod_spec::PortForward {
                name: None,
                host_ip: Some("127.0.0.1".parse().unwrap()),
                host_port: 8080,
                pod_port: 80,
                protocol: ark_pod_spec::Protocol::Tcp,
            }],
        };
        let t = status_text(&s);
        for line in [
            "state=exited",
            "name=web",
            "stage1=ns",
            "pid=42",
            "exit-code=137",
            "app-web=137",
            "app-web-signal=9",
            "app-web-oom-killed=true",
            "created=1970-01-01T00:00:00.000Z",
            "network-default=eth0 172.16.28.5/24",
            "port-0=127.0.0.1:8080->80/tcp",
            "vm-resources=the VM got 1 vCPU",
        ] {
            assert!(t.lines().any(|l| l == line), "{line} missing in\n{t}");
        }
        assert!(!t.contains("app-idle"));
    }
}
