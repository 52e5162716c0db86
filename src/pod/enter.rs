//! `ark enter [--app NAME] [-t] [-i] [--user U] [--env K=V] [--workdir D] UUID [CMD...]`: run a
//! command in a running app of a pod, in every flavor, through guest-init's agent
//! ([`ark_pod_spec::agent`]; the client is [`super::agent_client`]). The agent starts the
//! command with the app's root, namespaces, cgroups, identity, capabilities, rlimits and
//! no_new_privs (guest-init's own app set-up), so nothing of ark's host process reaches it.
//! ns/fly: the agent's Unix socket in the stage1 root; kvm: the VMM's hybrid vsock socket,
//! `CONNECT <agent port>`.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ark_pod_spec::agent::{ExecRequest, AGENT_VSOCK_PORT};
use ark_pod_spec::{guest, App, Flavor, PodLayout, PodManifest};

use super::agent_client::{self, Outcome};
use super::store::Liveness;

/// What to run and how (the command line's flags).
#[derive(Debug, Clone, Default)]
pub struct EnterOptions {
    pub app: Option<String>,
    pub tty: bool,
    pub interactive: bool,
    pub user: Option<String>,
    /// `NAME=value` words.
    pub env: Vec<String>,
    pub workdir: Option<String>,
    /// Empty: `/bin/sh`.
    pub cmd: Vec<String>,
}

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

/// The agent request for these options (a bad flag is an [`super::error::Invalid`] error).
fn request(app: &App, o: &EnterOptions) -> anyhow::Result<ExecRequest> {
    let mut env = Vec::new();
    for kv in &o.env {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| super::error::invalid(format!("--env {kv:?}: want NAME=value")))?;
        env.push((k.to_string(), v.to_string()));
    }
    if o.tty {
        if let Ok(term) = std::env::var("TERM") {
            env.insert(0, ("TERM".into(), term));
        }
    }
    let req = ExecRequest {
        app: Some(app.name.clone()),
        argv: if o.cmd.is_empty() {
            vec!["/bin/sh".into()]
        } else {
            o.cmd.clone()
        },
        env,
        user: o.user.clone(),
        workdir: o.workdir.clone(),
        tty: o.tty.then(|| {
            agent_client::window_size()
                .unwrap_or(ark_pod_spec::agent::WindowSize { rows: 24, cols: 80 })
        }),
        stdin: o.interactive,
    };
    req.validate()
        .map_err(|e| super::error::invalid(e.to_string()))?;
    Ok(req)
}

/// A running pod's UUID, layout and manifest (`ark enter`, `ark attach`): one line if it is
/// not running.
pub(crate) fn running_pod(
    ctx: &crate::Context,
    id: &str,
) -> anyhow::Result<(String, PodLayout, PodManifest)> {
    let store = super::open_store(ctx)?;
    let pod = store.reap_if_exited(&store.find(id)?)?;
    if store.liveness(&pod)? != Liveness::Running {
        bail!("pod {} is not running", pod.uuid);
    }
    let layout = PodLayout::new(&pod.path);
    let manifest = PodManifest::load(&layout.manifest())?;
    Ok((pod.uuid.to_string(), layout, manifest))
}

/// How long the agent of a pod of this flavor may take to answer (a VM spawns slowly).
pub(crate) fn reply_timeout(flavor: Flavor) -> Duration {
    match flavor {
        Flavor::Kvm => agent_client::VM_REPLY_TIMEOUT,
        Flavor::Ns | Flavor::Fly => agent_client::REPLY_TIMEOUT,
    }
}

/// Runs the command in app `--app` (needed when the pod has several) of running pod `id`, and
/// returns its exit code (128+N for signal N; 126/127 when it cannot run or is missing).
pub fn enter(ctx: &crate::Context, id: &str, o: &EnterOptions) -> super::Result<i32> {
    super::error::typed(|| {
        let (uuid, layout, manifest) = running_pod(ctx, id)?;
        let app = pick_app(&manifest, o.app.as_deref())?;
        let req = request(app, o)?;
        let conn = connect(&layout, manifest.stage1.flavor)
            .with_context(|| format!("pod {uuid}: reach its agent"))?;
        let _terminal = if o.tty { RawTerminal::enter() } else { None };
        let timeout = reply_timeout(manifest.stage1.flavor);
        match agent_client::run(conn, req, timeout)? {
            Outcome::Exited(code) => Ok(code),
            Outcome::Refused { code, message } => {
                drop(_terminal);
                eprintln!("ark: enter: {}", escape_controls(&message));
                Ok(code)
            }
        }
    })
}

/// The agent's text as one line: control characters (newlines, escapes) shown escaped.
pub(crate) fn escape_controls(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let esc: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            esc
        })
        .collect()
}

/// How long connecting to the agent may take (a full backlog makes a Unix connect wait).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The agent's socket: ns/fly its Unix socket, kvm the VMM's vsock socket (then `CONNECT`).
/// Reached through a descriptor of its directory (resolved inside the stage1 root), so a
/// symlink planted there leads nowhere and a long pod path does not overflow `sun_path`.
pub(crate) fn connect(layout: &PodLayout, flavor: Flavor) -> anyhow::Result<OwnedFd> {
    let (dir, name) = match flavor {
        Flavor::Kvm => (
            ark_os::inroot::open_root(layout.dir()).context("open the pod directory")?,
            guest::VSOCK_SOCKET,
        ),
        Flavor::Ns | Flavor::Fly => {
            let root = ark_os::inroot::open_root(&layout.stage1_rootfs())
                .context("open the stage1 root")?;
            let dir = ark_os::inroot::resolve(
                root.as_fd(),
                guest::AGENT_DIR,
                rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY,
            )
            .context("the agent's directory (is the pod's guest-init older than ark enter?)")?;
            (dir, "agent.sock")
        }
    };
    let path = PathBuf::from(format!("/proc/self/fd/{}/{name}", dir.as_raw_fd()));
    let fd = connect_unix(&path)?;
    if flavor == Flavor::Kvm {
        vsock_connect(&fd, AGENT_VSOCK_PORT)?;
    }
    Ok(fd)
}

fn connect_unix(path: &std::path::Path) -> anyhow::Result<OwnedFd> {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .context("socket")?;
    let addr = UnixAddr::new(path).context("socket address")?;
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    loop {
        match connect(fd.as_raw_fd(), &addr) {
            Ok(()) => return Ok(fd),
            // A Unix socket's backlog is full: the listener is not accepting (yet).
            Err(nix::errno::Errno::EAGAIN) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(nix::errno::Errno::EAGAIN) => bail!(
                "the agent does not accept connections (waited {} s)",
                CONNECT_TIMEOUT.as_secs()
            ),
            Err(e) => return Err(e).context("connect to the agent"),
        }
    }
}

/// The hybrid vsock handshake: `CONNECT <port>\n`, answered `OK <host port>\n` (at most 64
/// bytes read, under the connect deadline).
fn vsock_connect(fd: &OwnedFd, port: u32) -> anyhow::Result<()> {
    let stream = UnixStream::from(fd.try_clone()?);
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(CONNECT_TIMEOUT))?;
    stream.set_write_timeout(Some(CONNECT_TIMEOUT))?;
    (&stream).write_all(format!("CONNECT {port}\n").as_bytes())?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 64 {
        match (&stream).read(&mut byte) {
            Ok(0) => bail!("the VM's vsock device refused port {port} (is the pod still booting?)"),
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => line.push(byte[0]),
            Err(e) => return Err(e).context("the VM's vsock device did not answer"),
        }
    }
    if !line.starts_with(b"OK ") {
        bail!(
            "the VM's vsock device answered {:?}",
            String::from_utf8_lossy(&line)
        );
    }
    Ok(())
}

/// Our terminal in raw mode while attached with `-t`; restored when dropped (every return
/// path of [`enter`] and [`super::attach`]: signals are taken by the relay, so none ends ark
/// without it).
pub(super) struct RawTerminal {
    saved: nix::sys::termios::Termios,
}

impl RawTerminal {
    pub(super) fn enter() -> Option<Self> {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        let saved = tcgetattr(stdin.as_fd()).ok()?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).ok()?;
        Some(RawTerminal { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        use nix::sys::termios::{tcsetattr, SetArg};
        let _ = tcsetattr(std::io::stdin().as_fd(), SetArg::TCSADRAIN, &self.saved);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn agent_text_stays_one_line() {
        assert_eq!(
            super::escape_controls("\"x\": not found\n\x1b[2Jfake"),
            "\"x\": not found\\n\\u{1b}[2Jfake"
        );
    }
}
