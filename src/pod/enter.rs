//! `ark enter UUID [--app NAME] [CMD...]`: run a command inside a running app of an ns or fly
//! pod, as `nsenter --target PID --all --root` would: join the app process's namespaces and
//! cgroups, chroot into its root, take on the app's identity (user, groups, capability sets,
//! rlimits, no_new_privs: the code guest-init uses, [`ark_os::identity`]), fork (so the
//! command is in the pod's pid namespace) and exec with only fds 0, 1 and 2.

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::process::Command;

use anyhow::{bail, Context};
use ark_os::cgroup::{app_leaf, Cgroups};
use ark_os::identity;
use ark_pod_spec::{App, Flavor, PodLayout, PodManifest};
use nix::sched::{setns, CloneFlags};

use super::store::Liveness;

/// Picks the app to enter: the named one, or the only one.
pub fn pick_app<'m>(m: &'m PodManifest, name: Option<&str>) -> anyhow::Result<&'m App> {
    let names = || {
        m.apps
            .iter()
            .map(|a| a.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match name {
        Some(n) => m
            .app(n)
            .with_context(|| format!("pod has no app {n:?} (apps: {})", names())),
        None if m.apps.len() == 1 => Ok(&m.apps[0]),
        None => bail!("pod has several apps ({}): pick one with --app", names()),
    }
}

/// Parent pid of every process, from `/proc/<pid>/stat`.
fn parent_map() -> HashMap<i32, Vec<i32>> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return children;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may hold spaces and parens: split after the last ')'.
        let Some(ppid) = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        children.entry(ppid).or_default().push(pid);
    }
    children
}

fn app_name_of(pid: i32) -> Option<String> {
    let env = fs::read(format!("/proc/{pid}/environ")).ok()?;
    env.split(|b| *b == 0).find_map(|kv| {
        kv.strip_prefix(b"ARK_APP_NAME=")
            .map(|v| String::from_utf8_lossy(v).into_owned())
    })
}

/// The topmost descendant of `stage2` whose environment says it is app `app`.
pub fn find_app_process(stage2: i32, app: &str) -> Option<i32> {
    let children = parent_map();
    let mut queue: VecDeque<i32> = children.get(&stage2).cloned().unwrap_or_default().into();
    while let Some(pid) = queue.pop_front() {
        if app_name_of(pid).as_deref() == Some(app) {
            return Some(pid);
        }
        queue.extend(children.get(&pid).cloned().unwrap_or_default());
    }
    None
}

/// Runs `cmd` (default `/bin/sh`) in app `app` (needed when the pod has several) of running
/// pod `id`, and returns its exit code (128+N for signal N). This process becomes the app
/// (namespaces, root, identity) to start it: call it from a process that has nothing else to do.
pub fn enter(
    ctx: &crate::Context,
    id: &str,
    app: Option<&str>,
    cmd: &[String],
) -> super::Result<i32> {
    super::error::typed(|| {
        let store = super::open_store(ctx)?;
        let pod = store.reap_if_exited(&store.find(id)?)?;
        if store.liveness(&pod)? != Liveness::Running {
            bail!("pod {} is not running", pod.uuid);
        }
        let layout = PodLayout::new(&pod.path);
        let manifest = PodManifest::load(&layout.manifest())?;
        if manifest.stage1.flavor == Flavor::Kvm {
            bail!("ark enter does not support kvm pods yet (it will go over vsock to guest-init)");
        }
        let app = pick_app(&manifest, app)?;
        let stage2: i32 = fs::read_to_string(layout.stage2_pid_file())
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .with_context(|| format!("pod {}: stage2 has not started yet", pod.uuid))?;
        let pid = find_app_process(stage2, &app.name)
            .with_context(|| format!("app {} is not running", app.name))?;

        // Everything from /proc/<pid> is opened before the first setns changes what /proc means.
        let mut namespaces = Vec::new();
        for (ns, flag) in [
            ("cgroup", CloneFlags::CLONE_NEWCGROUP),
            ("ipc", CloneFlags::CLONE_NEWIPC),
            ("uts", CloneFlags::CLONE_NEWUTS),
            ("net", CloneFlags::CLONE_NEWNET),
            ("pid", CloneFlags::CLONE_NEWPID),
            ("mnt", CloneFlags::CLONE_NEWNS),
        ] {
            let theirs = format!("/proc/{pid}/ns/{ns}");
            let same = match (
                fs::metadata(&theirs),
                fs::metadata(format!("/proc/self/ns/{ns}")),
            ) {
                (Ok(t), Ok(o)) => t.ino() == o.ino() && t.dev() == o.dev(),
                _ => false,
            };
            if !same {
                let f = File::open(&theirs).with_context(|| format!("open {theirs}"))?;
                namespaces.push((ns, f, flag));
            }
        }
        let root = File::open(format!("/proc/{pid}/root")).context("open the app's root")?;
        // Who the app is, from its own passwd and group files, read inside its root as the pod
        // dir holds it (not /proc/PID/root: the app may have chrooted into files of its making).
        let app_root = ark_os::inroot::open_root(&layout.app_rootfs(&app.name))
            .with_context(|| format!("open the root of app {}", app.name))?;
        let id = identity::resolve_app(app, app_root.as_fd())
            .map_err(|e| anyhow::anyhow!("app {}: {e}", app.name))?;
        drop(app_root);
        let caps =
            identity::capability_sets(id.uid, &app.capabilities_keep, app.capabilities_explicit);

        // Join the app's cgroups so the command counts against the app's limits.
        let uuid = pod.uuid.to_string();
        for h in Cgroups::detect().hierarchies {
            let procs = h
                .pod_dir(&uuid)
                .join(app_leaf(&app.name))
                .join("cgroup.procs");
            if procs.exists() {
                let _ = fs::write(&procs, std::process::id().to_string());
            }
        }
        for (ns, f, flag) in &namespaces {
            setns(f, *flag).with_context(|| format!("join the app's {ns} namespace"))?;
        }
        nix::unistd::fchdir(root.as_raw_fd()).context("enter the app's root")?;
        nix::unistd::chroot(".").context("chroot into the app's root")?;
        if std::env::set_current_dir(&app.working_dir).is_err() {
            std::env::set_current_dir("/")?;
        }

        // From here on this process is the app: the command inherits all of it.
        identity::set_rlimits(&app.rlimits).context("the app's rlimits")?;
        identity::switch_to(&id, &caps).context("the app's identity")?;
        // Whatever ark itself inherited stays out of the command: it gets fds 0, 1 and 2.
        ark_os::fds::cloexec_inherited().context("close-on-exec above stdio")?;

        let argv: Vec<String> = if cmd.is_empty() {
            vec!["/bin/sh".into()]
        } else {
            cmd.to_vec()
        };
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]).env_clear();
        cmd.env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
        cmd.env("HOME", &id.home);
        if let Ok(term) = std::env::var("TERM") {
            cmd.env("TERM", term);
        }
        for e in &app.env {
            cmd.env(&e.name, &e.value);
        }
        cmd.env("ARK_APP_NAME", &app.name)
            .env("ARK_POD_UUID", &uuid);
        // The child is the first of ours in the pod's pid namespace.
        let status = cmd
            .status()
            .with_context(|| format!("run {} in app {}", argv[0], app.name))?;
        Ok(status
            .code()
            .or_else(|| status.signal().map(|s| 128 + s))
            .unwrap_or(125))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_descendant_by_app_name() {
        // This test process's own child, with ARK_APP_NAME set, stands in for an app.
        let mut child = Command::new("sleep")
            .arg("30")
            .env("ARK_APP_NAME", "probe-app")
            .spawn()
            .unwrap();
        let me = rustix::process::getpid().as_raw_nonzero().get();
        // Until the child has exec'd, its environ is ours: poll briefly.
        let mut found = None;
        for _ in 0..100 {
            found = find_app_process(me, "probe-app");
            if found.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let child_pid = i32::try_from(child.id()).expect("a pid fits in pid_t");
        assert_eq!(found, Some(child_pid));
        assert_eq!(find_app_process(me, "other"), None);
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
