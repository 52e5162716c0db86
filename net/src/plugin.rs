//! Running one CNI plugin (spec section 2): the `CNI_*` environment, the config on stdin, the
//! result (or an error object) on stdout. The plugin is looked up only in the plugin dirs, gets
//! a fixed environment and no inherited fds, and is killed at the timeout; its stdout and
//! stderr are capped.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::error::{clean, Error};

/// The largest reply read from a plugin.
pub const RESULT_MAX_BYTES: usize = 1 << 20;
/// How much of a plugin's stderr is kept (for the error line).
pub const STDERR_MAX_BYTES: usize = 16 << 10;
/// The plugins' own helpers (iptables, ...) come from here; the plugin itself never does.
const PLUGIN_PATH_ENV: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CniCommand {
    Add,
    Del,
}

impl CniCommand {
    pub fn as_str(self) -> &'static str {
        match self {
            CniCommand::Add => "ADD",
            CniCommand::Del => "DEL",
        }
    }
}

/// Where plugins come from and how long each may take.
#[derive(Debug, Clone)]
pub struct Plugins {
    pub dirs: Vec<PathBuf>,
    pub timeout: Duration,
}

/// The attachment a plugin call is about.
#[derive(Debug, Clone)]
pub struct Call<'a> {
    pub network: &'a str,
    pub container_id: &'a str,
    /// Empty for a DEL whose namespace is gone.
    pub netns: &'a Path,
    pub ifname: &'a str,
    pub args: Option<&'a str>,
}

impl Plugins {
    /// The plugin binary: the first `<dir>/<type>` that is an executable regular file.
    pub fn find(&self, network: &str, plugin: &str) -> Result<PathBuf, Error> {
        use std::os::unix::fs::PermissionsExt;
        for d in &self.dirs {
            let p = d.join(plugin);
            if let Ok(m) = std::fs::metadata(&p) {
                if m.is_file() && m.permissions().mode() & 0o111 != 0 {
                    return Ok(p);
                }
            }
        }
        Err(Error::PluginNotFound {
            network: network.into(),
            plugin: plugin.into(),
            dirs: self
                .dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(":"),
        })
    }

    /// Runs `plugin` with `stdin` (the config); returns its reply (a result for ADD; empty or
    /// ignored for DEL).
    pub fn exec(
        &self,
        cmd: CniCommand,
        plugin: &str,
        call: &Call,
        stdin: &[u8],
    ) -> Result<Vec<u8>, Error> {
        let bin = self.find(call.network, plugin)?;
        let exec_err = |what: &'static str| {
            let (network, plugin) = (call.network.to_string(), plugin.to_string());
            move |source| Error::Exec {
                network,
                plugin,
                what,
                source,
            }
        };
        let cni_path = std::env::join_paths(&self.dirs).map_err(|e| {
            exec_err("CNI_PATH")(std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
        })?;
        let mut c = Command::new(&bin);
        c.env_clear()
            .env("PATH", PLUGIN_PATH_ENV)
            .env("CNI_COMMAND", cmd.as_str())
            .env("CNI_CONTAINERID", call.container_id)
            .env("CNI_NETNS", call.netns)
            .env("CNI_IFNAME", call.ifname)
            .env("CNI_PATH", cni_path)
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(a) = call.args {
            c.env("CNI_ARGS", a);
        }
        // SAFETY: the closure only makes a syscall (close_range), async-signal-safe.
        unsafe {
            c.pre_exec(|| ark_os::fds::cloexec_from_in_child(3));
        }
        let child = c.spawn().map_err(exec_err("start"))?;
        let out = communicate(child, stdin, self.timeout).map_err(exec_err("talk to it"))?;
        let failed = |message: String, code: Option<u64>| Error::Plugin {
            network: call.network.into(),
            plugin: plugin.into(),
            command: cmd.as_str(),
            message,
            code,
        };
        if out.timed_out {
            return Err(failed(
                format!("no answer within {} s (killed)", self.timeout.as_secs()),
                None,
            ));
        }
        if out.stdout_overflow {
            return Err(failed(
                format!("reply larger than {RESULT_MAX_BYTES} bytes"),
                None,
            ));
        }
        if out.status.success() {
            return Ok(out.stdout);
        }
        let (message, code) = match parse_error(&out.stdout) {
            Some(e) => e,
            None => (
                format!(
                    "{}{}",
                    out.status,
                    match String::from_utf8_lossy(&out.stderr).trim() {
                        "" => String::new(),
                        s => format!(": {}", clean(s.lines().last().unwrap_or(s), 300)),
                    }
                ),
                None,
            ),
        };
        Err(failed(message, code))
    }
}

/// A CNI error object `{code, msg, details}`: `(escaped "msg: details (code N)", code)`.
fn parse_error(stdout: &[u8]) -> Option<(String, Option<u64>)> {
    let v: Value = serde_json::from_slice(stdout).ok()?;
    let msg = v.get("msg").and_then(Value::as_str)?;
    let code = v.get("code").and_then(Value::as_u64);
    let details = v.get("details").and_then(Value::as_str).unwrap_or("");
    let mut s = clean(msg, 300);
    if !details.is_empty() {
        s.push_str(": ");
        s.push_str(&clean(details, 300));
    }
    if let Some(c) = code {
        s.push_str(&format!(" (code {c})"));
    }
    Some((s, code))
}

struct Output {
    status: std::process::ExitStatus,
    stdout: Vec<u8>,
    stdout_overflow: bool,
    stderr: Vec<u8>,
    timed_out: bool,
}

/// Feeds stdin and collects stdout/stderr (capped) in this thread — the stage1 forks after
/// the set-up, so no helper threads may be left behind — until the plugin exits (and its
/// pipes close, or a moment later if something it started keeps them open) or the timeout.
fn communicate(mut child: Child, input: &[u8], timeout: Duration) -> std::io::Result<Output> {
    use nix::poll::{poll, PollFd, PollFlags};
    let deadline = Instant::now() + timeout;
    let mut stdin = child.stdin.take();
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    for fd in [
        stdin.as_ref().map(|f| f.as_fd()),
        stdout.as_ref().map(|f| f.as_fd()),
        stderr.as_ref().map(|f| f.as_fd()),
    ]
    .into_iter()
    .flatten()
    {
        set_nonblocking(fd)?;
    }
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut overflow = false;
    let mut written = 0;
    let mut exited: Option<(std::process::ExitStatus, Instant)> = None;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        if exited.is_none() {
            if let Some(st) = child.try_wait()? {
                exited = Some((st, Instant::now()));
            }
        }
        let now = Instant::now();
        let pipes_open = stdout.is_some() || stderr.is_some();
        match exited {
            Some((status, at)) if !pipes_open || now >= at + Duration::from_millis(500) => {
                return Ok(Output {
                    status,
                    stdout: out,
                    stdout_overflow: overflow,
                    stderr: err,
                    timed_out: false,
                });
            }
            None if now >= deadline => {
                let _ = child.kill();
                let status = child.wait()?;
                return Ok(Output {
                    status,
                    stdout: out,
                    stdout_overflow: overflow,
                    stderr: err,
                    timed_out: true,
                });
            }
            _ => {}
        }
        let mut fds = Vec::new();
        if let Some(f) = &stdin {
            fds.push(PollFd::new(f.as_fd(), PollFlags::POLLOUT));
        }
        if let Some(f) = &stdout {
            fds.push(PollFd::new(f.as_fd(), PollFlags::POLLIN));
        }
        if let Some(f) = &stderr {
            fds.push(PollFd::new(f.as_fd(), PollFlags::POLLIN));
        }
        if fds.is_empty() {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        match poll(&mut fds, 20u8) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
        drop(fds);
        if let Some(f) = stdin.as_mut() {
            match f.write(&input[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                // The plugin closed its stdin: what it read is what it gets.
                Err(_) => written = input.len(),
            }
            if written >= input.len() {
                stdin = None;
            }
        }
        if drain(&mut stdout, &mut out, RESULT_MAX_BYTES, &mut buf)? {
            overflow = true;
        }
        drain(&mut stderr, &mut err, STDERR_MAX_BYTES, &mut buf)?;
    }
}

/// Reads what is there; closes the pipe at EOF. Returns whether more than `cap` arrived (the
/// rest is read and dropped, so the plugin never blocks on a full pipe).
fn drain<R: Read>(
    pipe: &mut Option<R>,
    into: &mut Vec<u8>,
    cap: usize,
    buf: &mut [u8],
) -> std::io::Result<bool> {
    let Some(p) = pipe.as_mut() else {
        return Ok(false);
    };
    let mut over = false;
    loop {
        match p.read(buf) {
            Ok(0) => {
                *pipe = None;
                break;
            }
            Ok(n) => {
                let room = cap.saturating_sub(into.len());
                into.extend_from_slice(&buf[..n.min(room)]);
                over |= n > room;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(over)
}

fn set_nonblocking(fd: std::os::fd::BorrowedFd) -> std::io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    use std::os::fd::AsRawFd;
    let flags = OFlag::from_bits_truncate(fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL)?);
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn script(dir: &Path, name: &str, body: &str) {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn call<'a>() -> Call<'a> {
        Call {
            network: "n",
            container_id: "c1",
            netns: Path::new("/nonexistent"),
            ifname: "eth0",
            args: Some("A=1"),
        }
    }

    fn plugins(dir: &Path, secs: u64) -> Plugins {
        Plugins {
            dirs: vec![dir.into()],
            timeout: Duration::from_secs(secs),
        }
    }

    #[test]
    fn environment_stdin_and_reply() {
        let d = tempfile::tempdir().unwrap();
        script(
            d.path(),
            "echoer",
            r#"in=$(cat); echo "{\"cmd\":\"$CNI_COMMAND\",\"id\":\"$CNI_CONTAINERID\",\"if\":\"$CNI_IFNAME\",\"args\":\"$CNI_ARGS\",\"path\":\"$CNI_PATH\",\"home\":\"$HOME\",\"in\":$in}""#,
        );
        let out = plugins(d.path(), 10)
            .exec(CniCommand::Add, "echoer", &call(), br#"{"x":1}"#)
            .unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["cmd"], "ADD");
        assert_eq!(v["id"], "c1");
        assert_eq!(v["if"], "eth0");
        assert_eq!(v["args"], "A=1");
        assert_eq!(v["path"], d.path().to_str().unwrap());
        // Nothing of ark's own environment leaks in.
        assert_eq!(v["home"], "");
        assert_eq!(v["in"]["x"], 1);
    }

    #[test]
    fn error_objects_and_exit_codes_become_one_escaped_line() {
        let d = tempfile::tempdir().unwrap();
        script(
            d.path(),
            "fails",
            r#"cat >/dev/null; printf '{"code":11,"msg":"no \\u001b[31mway\\n","details":"ark: fake"}'; exit 1"#,
        );
        script(d.path(), "dies", "cat >/dev/null; echo oops >&2; exit 3");
        let p = plugins(d.path(), 10);
        let e = p
            .exec(CniCommand::Add, "fails", &call(), b"{}")
            .unwrap_err();
        let s = e.to_string();
        assert!(
            s.contains("plugin fails ADD failed: no \\u{1b}[31mway: ark: fake (code 11)"),
            "{s}"
        );
        assert!(!s.contains('\n') && !s.contains('\x1b'), "{s:?}");
        let s = p
            .exec(CniCommand::Del, "dies", &call(), b"{}")
            .unwrap_err()
            .to_string();
        assert!(
            s.contains("DEL failed") && s.contains("3") && s.contains("oops"),
            "{s}"
        );
    }

    #[test]
    fn plugins_come_only_from_the_plugin_dirs() {
        let d = tempfile::tempdir().unwrap();
        // `sh` is on PATH, but not in the plugin dir.
        let e = plugins(d.path(), 10)
            .exec(CniCommand::Add, "sh", &call(), b"{}")
            .unwrap_err();
        assert!(matches!(e, Error::PluginNotFound { .. }), "{e}");
        // Not executable: not a plugin.
        std::fs::write(d.path().join("plain"), "x").unwrap();
        assert!(plugins(d.path(), 10).find("n", "plain").is_err());
    }

    #[test]
    fn a_hanging_or_flooding_plugin_is_bounded() {
        let d = tempfile::tempdir().unwrap();
        script(d.path(), "hangs", "exec sleep 100");
        script(
            d.path(),
            "floods",
            "cat >/dev/null; head -c 3000000 /dev/zero",
        );
        script(
            d.path(),
            "daemon",
            r#"cat >/dev/null; (sleep 100 &) ; echo '{"cniVersion":"1.0.0"}'"#,
        );
        let p = plugins(d.path(), 1);
        let t = Instant::now();
        let s = p
            .exec(CniCommand::Add, "hangs", &call(), b"{}")
            .unwrap_err()
            .to_string();
        assert!(s.contains("no answer within 1 s"), "{s}");
        assert!(t.elapsed() < Duration::from_secs(5));
        let s = p
            .exec(CniCommand::Add, "floods", &call(), b"{}")
            .unwrap_err()
            .to_string();
        assert!(s.contains("larger than"), "{s}");
        // A helper left holding the pipe does not hold the runtime.
        let t = Instant::now();
        let out = plugins(d.path(), 30)
            .exec(CniCommand::Add, "daemon", &call(), b"{}")
            .unwrap();
        assert!(String::from_utf8_lossy(&out).contains("1.0.0"));
        assert!(t.elapsed() < Duration::from_secs(5));
    }
}
