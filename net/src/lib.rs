//! Pod networking for every stage: CNI network configs ([`NetworkConfig`]), plugin execution
//! per the CNI spec 1.0 ([`plugin`]), the pod's network namespace, [`setup`] (ADD every network,
//! `eth0`, `eth1`, ...) and [`teardown`] (DEL, idempotent, from the pod directory alone: safe
//! after a `kill -9` of the stage1), and [`etc_files`] (the DNS/hosts files stage2 writes).
//!
//! In the pod directory (`PodLayout::net_dir()`, owned by root, 0700):
//! `netns` (the namespace's bind mount), `plan.json` (what set-up is about to attach, written
//! before the first ADD so a half-done set-up can be undone), `result-<ifname>.json` (each
//! network's final CNI result, the `prevResult` of its DEL), `state.json`
//! ([`PodNetworkState`], what was attached).

pub mod config;
mod error;
mod etc;
pub mod netns;
pub mod plugin;
mod result;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ark_pod_spec::net::PodNetworkState;
use ark_pod_spec::{NetworkRef, PodLayout, PodManifest, PortForward};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use config::NetworkConfig;
pub use error::Error;
pub use etc::etc_files;
pub use netns::loopback_up;
use plugin::{Call, CniCommand, Plugins};

/// Where plugins are looked up when the manifest names no directory.
pub const DEFAULT_PLUGIN_DIRS: &[&str] = &["/usr/lib/cni", "/opt/cni/bin"];
/// How long one plugin call may take.
pub const PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);
const PLAN_MAX_BYTES: usize = 4 << 20;

/// What to attach a pod to.
#[derive(Debug, Clone)]
pub struct NetRequest {
    /// `CNI_CONTAINERID`: the pod's UUID.
    pub container_id: String,
    pub networks: Vec<NetworkRef>,
    pub ports: Vec<PortForward>,
    pub config_dir: PathBuf,
    pub plugin_dirs: Vec<PathBuf>,
    pub timeout: Duration,
}

impl NetRequest {
    /// The manifest's networks, ports, config and plugin dirs (or their defaults).
    pub fn from_manifest(m: &PodManifest) -> Self {
        NetRequest {
            container_id: m.uuid.clone(),
            networks: m.net.networks().to_vec(),
            ports: m.ports.clone(),
            config_dir: m
                .net_config_dir
                .as_deref()
                .unwrap_or(config::DEFAULT_CONFIG_DIR)
                .into(),
            plugin_dirs: if m.cni_plugin_dirs.is_empty() {
                DEFAULT_PLUGIN_DIRS.iter().map(PathBuf::from).collect()
            } else {
                m.cni_plugin_dirs.iter().map(PathBuf::from).collect()
            },
            timeout: PLUGIN_TIMEOUT,
        }
    }

    fn plugins(&self) -> Plugins {
        Plugins {
            dirs: self.plugin_dirs.clone(),
            timeout: self.timeout,
        }
    }

    /// Loads every network's config and finds every plugin, touching nothing: what stage0
    /// checks at prepare so a typo fails before a pod exists.
    pub fn check(&self) -> Result<(), Error> {
        self.plan().map(drop)
    }

    fn plan(&self) -> Result<Plan, Error> {
        let plugins = self.plugins();
        let mut networks = Vec::new();
        let mut ports_given = self.ports.is_empty();
        for (i, n) in self.networks.iter().enumerate() {
            let config = NetworkConfig::load(&self.config_dir, &n.name)?;
            if config.name != n.name {
                return Err(Error::Network {
                    network: n.name.clone(),
                    reason: format!("the config is named {:?}", config.name),
                });
            }
            for p in &config.plugins {
                plugins.find(&n.name, NetworkConfig::plugin_type(p))?;
            }
            // Ports go to the first network that can forward them.
            let takes_ports = !ports_given
                && config
                    .plugins
                    .iter()
                    .any(|p| NetworkConfig::has_capability(p, "portMappings"));
            ports_given |= takes_ports;
            networks.push(PlannedNetwork {
                ifname: format!("eth{i}"),
                args: n.args.clone(),
                port_mappings: if takes_ports {
                    self.ports.iter().map(port_mapping).collect()
                } else {
                    Vec::new()
                },
                config,
            });
        }
        if !ports_given {
            return Err(Error::Network {
                network: self
                    .networks
                    .first()
                    .map(|n| n.name.clone())
                    .unwrap_or_default(),
                reason: "port forwards need a network with a portMappings plugin (portmap)".into(),
            });
        }
        Ok(Plan {
            container_id: self.container_id.clone(),
            plugin_dirs: self.plugin_dirs.clone(),
            timeout_secs: self.timeout.as_secs(),
            networks,
        })
    }
}

fn port_mapping(p: &PortForward) -> Value {
    let mut m = serde_json::json!({
        "hostPort": p.host_port,
        "containerPort": p.pod_port,
        "protocol": p.protocol.as_str(),
    });
    if let Some(ip) = p.host_ip {
        m["hostIP"] = ip.to_string().into();
    }
    m
}

/// `plan.json`: everything teardown needs, without the manifest or the host's config dir
/// (which may have changed since).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Plan {
    container_id: String,
    plugin_dirs: Vec<PathBuf>,
    timeout_secs: u64,
    networks: Vec<PlannedNetwork>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlannedNetwork {
    ifname: String,
    #[serde(default)]
    args: Option<String>,
    #[serde(default)]
    port_mappings: Vec<Value>,
    config: NetworkConfig,
}

impl PlannedNetwork {
    /// The config a plugin gets on stdin (spec section 3: the list's name and version, the
    /// runtime config for the capabilities it declared, the previous result).
    fn plugin_stdin(&self, plugin: &Map<String, Value>, prev: Option<&Value>) -> Vec<u8> {
        let mut c = plugin.clone();
        c.insert("name".into(), self.config.name.clone().into());
        c.insert("cniVersion".into(), self.config.cni_version.clone().into());
        if !self.port_mappings.is_empty() && NetworkConfig::has_capability(plugin, "portMappings") {
            c.insert(
                "runtimeConfig".into(),
                serde_json::json!({ "portMappings": self.port_mappings }),
            );
        }
        if let Some(p) = prev {
            c.insert("prevResult".into(), p.clone());
        }
        serde_json::to_vec(&c).expect("a JSON map serializes")
    }

    fn call<'a>(&'a self, container_id: &'a str, netns: &'a Path) -> Call<'a> {
        Call {
            network: &self.config.name,
            container_id,
            netns,
            ifname: &self.ifname,
            args: self.args.as_deref(),
        }
    }

    /// ADD through the chain; the final result.
    fn add(&self, plugins: &Plugins, container_id: &str, netns: &Path) -> Result<Value, Error> {
        let mut prev: Option<Value> = None;
        for p in &self.config.plugins {
            let ty = NetworkConfig::plugin_type(p);
            let out = plugins.exec(
                CniCommand::Add,
                ty,
                &self.call(container_id, netns),
                &self.plugin_stdin(p, prev.as_ref()),
            )?;
            let v = result::check_object(&out).map_err(|reason| Error::BadResult {
                network: self.config.name.clone(),
                plugin: ty.into(),
                command: "ADD",
                reason: error::clean(&reason, 300),
            })?;
            prev = Some(v);
        }
        Ok(prev.unwrap_or(Value::Null))
    }

    /// DEL through the chain in reverse; every plugin runs, the first failure is returned.
    fn del(
        &self,
        plugins: &Plugins,
        container_id: &str,
        netns: &Path,
        prev: Option<&Value>,
    ) -> Result<(), Error> {
        let mut first = None;
        for p in self.config.plugins.iter().rev() {
            let r = plugins.exec(
                CniCommand::Del,
                NetworkConfig::plugin_type(p),
                &self.call(container_id, netns),
                &self.plugin_stdin(p, prev),
            );
            if let Err(e) = r {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

fn result_file(layout: &PodLayout, ifname: &str) -> PathBuf {
    layout.net_dir().join(format!("result-{ifname}.json"))
}
fn plan_file(layout: &PodLayout) -> PathBuf {
    layout.net_dir().join("plan.json")
}

/// Holds `flock` on the pod's net directory: one set-up or teardown at a time per pod.
struct NetLock(#[allow(dead_code)] nix::fcntl::Flock<File>);

fn lock(layout: &PodLayout, create: bool) -> Result<Option<NetLock>, Error> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = layout.net_dir();
    if create {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(&dir)
            .map_err(error::io("create", &dir))?;
    }
    let f = match File::open(&dir) {
        Ok(f) => f,
        Err(e) if !create && e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(error::io("open", &dir)(e)),
    };
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
        .map(|l| Some(NetLock(l)))
        .map_err(|(_, e)| error::io("lock", &dir)(e.into()))
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    ark_os::write_atomic_volatile(path, bytes).map_err(error::io("write", path))
}

/// Creates the pod's network namespace and attaches every requested network (`eth0`, ...),
/// then writes [`PodNetworkState`] to `layout.network_state()`. On failure everything done so
/// far is undone (DEL, namespace removed) and the first error returned.
pub fn setup(layout: &PodLayout, req: &NetRequest) -> Result<PodNetworkState, Error> {
    let plan = req.plan()?;
    let _lock = lock(layout, true)?;
    // A set-up that ran before (and died): undo it first.
    teardown_locked(layout)?;
    write(
        &plan_file(layout),
        &serde_json::to_vec_pretty(&plan).expect("the plan serializes"),
    )?;
    match attach(layout, &plan) {
        Ok(state) => Ok(state),
        Err(first) => match teardown_locked(layout) {
            Ok(()) => Err(first),
            Err(undo) => Err(Error::Undo {
                first: Box::new(first),
                undo: undo.to_string(),
            }),
        },
    }
}

fn attach(layout: &PodLayout, plan: &Plan) -> Result<PodNetworkState, Error> {
    let netns = layout.netns();
    netns::create(&netns)?;
    let plugins = Plugins {
        dirs: plan.plugin_dirs.clone(),
        timeout: Duration::from_secs(plan.timeout_secs),
    };
    let mut state = PodNetworkState {
        netns: netns.display().to_string(),
        attachments: Vec::new(),
    };
    for n in &plan.networks {
        let r = n.add(&plugins, &plan.container_id, &netns)?;
        write(
            &result_file(layout, &n.ifname),
            &serde_json::to_vec(&r).expect("JSON serializes"),
        )?;
        let a = result::attachment(&n.config.name, &n.ifname, &r).map_err(|reason| {
            Error::BadResult {
                network: n.config.name.clone(),
                plugin: NetworkConfig::plugin_type(n.config.plugins.last().expect("non-empty"))
                    .into(),
                command: "ADD",
                reason: error::clean(&reason, 300),
            }
        })?;
        state.attachments.push(a);
    }
    write(&layout.network_state(), &state.to_json())?;
    Ok(state)
}

/// Detaches the pod from every network it was (or was being) attached to — DEL of each
/// network in reverse, each chain in reverse — then removes the namespace and the state.
/// Idempotent and safe to run concurrently (a lock on the net dir); needs only the pod
/// directory, so stage0 can run it after the stage1 was killed. A DEL that fails keeps the
/// plan (and the namespace) for the next try, and is returned.
pub fn teardown(layout: &PodLayout) -> Result<(), Error> {
    let Some(_lock) = lock(layout, false)? else {
        return Ok(());
    };
    teardown_locked(layout)
}

fn read_plan(path: &Path) -> Result<Option<Plan>, Error> {
    use std::io::Read;
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(error::io("open", path)(e)),
    };
    let mut bytes = Vec::new();
    f.take(PLAN_MAX_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(error::io("read", path))?;
    let bad = |reason: String| Error::ConfigFile {
        path: path.into(),
        reason,
    };
    if bytes.len() > PLAN_MAX_BYTES {
        return Err(bad(format!("larger than {PLAN_MAX_BYTES} bytes")));
    }
    let plan: Plan =
        serde_json::from_slice(&bytes).map_err(|e| bad(error::clean(&e.to_string(), 200)))?;
    // Re-check what came from disk as if it were a config file.
    for n in &plan.networks {
        let v = serde_json::to_value(&n.config).expect("serializes");
        NetworkConfig::from_json(&serde_json::to_vec(&v).expect("serializes")).map_err(bad)?;
        if !ark_pod_spec::net::is_interface_name(&n.ifname) {
            return Err(bad(format!("bad interface name {:?}", n.ifname)));
        }
    }
    Ok(Some(plan))
}

fn read_result(path: &Path) -> Option<Value> {
    let bytes = std::fs::read(path).ok()?;
    (bytes.len() <= plugin::RESULT_MAX_BYTES)
        .then(|| serde_json::from_slice(&bytes).ok())
        .flatten()
}

fn teardown_locked(layout: &PodLayout) -> Result<(), Error> {
    let netns = layout.netns();
    let mut errors = Vec::new();
    if let Some(plan) = read_plan(&plan_file(layout))? {
        let plugins = Plugins {
            dirs: plan.plugin_dirs.clone(),
            timeout: Duration::from_secs(plan.timeout_secs),
        };
        let ns_path = if netns.exists() {
            netns.clone()
        } else {
            PathBuf::new()
        };
        for n in plan.networks.iter().rev() {
            let prev = read_result(&result_file(layout, &n.ifname));
            match n.del(&plugins, &plan.container_id, &ns_path, prev.as_ref()) {
                Ok(()) => {
                    let _ = std::fs::remove_file(result_file(layout, &n.ifname));
                }
                Err(e) => errors.push(e),
            }
        }
    }
    if !errors.is_empty() {
        // Keep the plan and the namespace: the next teardown (gc) tries again.
        return Err(Error::Teardown(errors));
    }
    netns::remove(&netns)?;
    for f in [layout.network_state(), plan_file(layout)] {
        match std::fs::remove_file(&f) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(error::io("remove", &f)(e));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Reads `net/state.json` if the pod has one (see [`read_state_file`]).
pub fn read_state(layout: &PodLayout) -> Result<Option<PodNetworkState>, String> {
    read_state_file(&layout.network_state())
}

/// A network state file: a regular file (not followed through a symlink, never a FIFO that
/// would block), size-capped and validated; `None` when there is none.
pub fn read_state_file(path: &Path) -> Result<Option<PodNetworkState>, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let fail = |e: String| format!("{}: {e}", path.display());
    let f = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(fail(e.to_string())),
    };
    if !f.metadata().map_err(|e| fail(e.to_string()))?.is_file() {
        return Err(fail("not a regular file".into()));
    }
    let cap = ark_pod_spec::net::NETWORK_STATE_MAX_BYTES;
    let mut bytes = Vec::new();
    f.take(u64::try_from(cap).unwrap_or(u64::MAX) + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(e.to_string()))?;
    PodNetworkState::from_json(&bytes).map(Some).map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A fake plugin that logs each call (command, plugin, ifname, whether prevResult came)
    /// and answers with a result for eth0; `fail` makes the named plugin's ADD fail.
    fn fake_plugins(dir: &Path, log: &Path, fail: &str) {
        for name in ["one", "two", "three"] {
            let body = format!(
                r#"#!/bin/sh
in=$(cat)
prev=no; case "$in" in *prevResult*) prev=yes;; esac
echo "$CNI_COMMAND {name} $CNI_IFNAME $prev" >> {log}
if [ "$CNI_COMMAND" = ADD ] && [ "{name}" = "{fail}" ]; then echo '{{"code":7,"msg":"boom"}}'; exit 1; fi
[ "$CNI_COMMAND" = DEL ] && exit 0
echo '{{"cniVersion":"1.0.0","interfaces":[{{"name":"'$CNI_IFNAME'","mac":"02:00:00:00:00:01","sandbox":"'$CNI_NETNS'"}}],"ips":[{{"address":"10.9.0.2/24","interface":0}}]}}'
"#,
                log = log.display()
            );
            let p = dir.join(name);
            std::fs::write(&p, body).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }

    fn req(conf: &Path, plugins: &Path, nets: &[&str]) -> NetRequest {
        NetRequest {
            container_id: "c0ffee".into(),
            networks: nets
                .iter()
                .map(|n| NetworkRef {
                    name: n.to_string(),
                    args: None,
                })
                .collect(),
            ports: vec![],
            config_dir: conf.into(),
            plugin_dirs: vec![plugins.into()],
            timeout: Duration::from_secs(10),
        }
    }

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[test]
    fn chains_add_in_order_del_in_reverse_and_undo_a_failure() {
        if !is_root() {
            eprintln!("skipped: needs root (network namespaces)");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let (conf, bin, log) = (
            t.path().join("conf"),
            t.path().join("bin"),
            t.path().join("log"),
        );
        std::fs::create_dir_all(&conf).unwrap();
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(
            conf.join("a.conflist"),
            br#"{"cniVersion":"1.0.0","name":"a","plugins":[{"type":"one"},{"type":"two"}]}"#,
        )
        .unwrap();
        std::fs::write(
            conf.join("b.conf"),
            br#"{"cniVersion":"0.4.0","name":"b","type":"three"}"#,
        )
        .unwrap();
        let layout = PodLayout::new(t.path().join("pod"));
        fake_plugins(&bin, &log, "");
        let s = setup(&layout, &req(&conf, &bin, &["a", "b"])).unwrap();
        assert_eq!(s.attachments.len(), 2);
        assert_eq!(s.attachments[1].interface.name, "eth1");
        assert!(layout.netns().exists() && layout.network_state().exists());
        teardown(&layout).unwrap();
        teardown(&layout).unwrap(); // Twice is fine.
        assert!(!layout.netns().exists() && !layout.network_state().exists());
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "ADD one eth0 no\nADD two eth0 yes\nADD three eth1 no\n\
             DEL three eth1 yes\nDEL two eth0 yes\nDEL one eth0 yes\n"
        );

        // The second network's plugin fails: everything is DELeted, nothing is left.
        std::fs::remove_file(&log).unwrap();
        fake_plugins(&bin, &log, "three");
        let e = setup(&layout, &req(&conf, &bin, &["a", "b"]))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "network \"b\": plugin three ADD failed: boom (code 7)");
        assert!(!layout.netns().exists() && !plan_file(&layout).exists());
        let calls = std::fs::read_to_string(&log).unwrap();
        assert!(
            calls.ends_with("DEL three eth1 no\nDEL two eth0 yes\nDEL one eth0 yes\n"),
            "{calls}"
        );
    }

    #[test]
    fn state_file_is_capped_and_must_be_regular() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        assert_eq!(read_state_file(&p).unwrap(), None);
        std::fs::write(
            &p,
            vec![b' '; ark_pod_spec::net::NETWORK_STATE_MAX_BYTES + 10],
        )
        .unwrap();
        assert!(read_state_file(&p).unwrap_err().contains("more than"));
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert!(read_state_file(&fifo)
            .unwrap_err()
            .ends_with("not a regular file"));
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        assert!(read_state_file(&link).is_err());
        let ok = PodNetworkState::default();
        std::fs::write(&p, ok.to_json()).unwrap();
        assert_eq!(read_state_file(&p).unwrap(), Some(ok));
    }

    #[test]
    fn concurrent_teardowns_del_once_and_both_succeed() {
        if !is_root() {
            eprintln!("skipped: needs root (network namespaces)");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let (conf, bin, log) = (
            t.path().join("conf"),
            t.path().join("bin"),
            t.path().join("log"),
        );
        std::fs::create_dir_all(&conf).unwrap();
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(
            conf.join("a.conflist"),
            br#"{"cniVersion":"1.0.0","name":"a","plugins":[{"type":"one"}]}"#,
        )
        .unwrap();
        fake_plugins(&bin, &log, "");
        let layout = PodLayout::new(t.path().join("pod"));
        setup(&layout, &req(&conf, &bin, &["a"])).unwrap();
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let l = layout.clone();
                std::thread::spawn(move || teardown(&l))
            })
            .collect();
        for th in threads {
            th.join().unwrap().unwrap();
        }
        let calls = std::fs::read_to_string(&log).unwrap();
        assert_eq!(calls.matches("DEL").count(), 1, "{calls}");
        assert!(!layout.netns().exists());
    }

    #[test]
    fn unknown_networks_and_missing_plugins_fail_before_anything_is_made() {
        let t = tempfile::tempdir().unwrap();
        let e = req(t.path(), t.path(), &["nope"])
            .check()
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"nope\"") && e.contains("no config"), "{e}");
        // The built-in default needs ptp, host-local's caller and portmap in the plugin dir.
        let e = req(t.path(), t.path(), &["default"])
            .check()
            .unwrap_err()
            .to_string();
        assert!(e.contains("plugin \"ptp\" not found"), "{e}");
    }
}
