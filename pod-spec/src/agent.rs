//! The stage2 agent protocol: how `ark enter` (the client, on the host) asks guest-init (the
//! agent, in the pod) to run a process in an app and streams its stdio. The same protocol in
//! every flavor; only the transport differs ([`crate::stage2::AgentTransport`]: a Unix socket in
//! the stage1 root for ns/fly, a vsock port in a VM).
//!
//! **Framing.** Every frame is `u32` big-endian length `L`, then `L` bytes: one kind byte and
//! the body. `1 <= L <= MAX_FRAME_LEN`; a bigger or zero length is an error, never a buffer.
//! Kinds: [`KIND_MESSAGE`] (the body is one JSON [`Request`] or [`Reply`], at most
//! [`MAX_MESSAGE_LEN`] bytes), [`KIND_STDIN`], [`KIND_STDOUT`], [`KIND_STDERR`] (raw bytes, at
//! least 1 and at most [`MAX_DATA_LEN`]). Stdin frames go client → agent only, stdout/stderr
//! frames agent → client only.
//!
//! **One connection = one process.** The client sends `hello` with the lowest version that has
//! what it needs and gets `hello` back (that version, or a newer one the client also speaks)
//! or an `error`; it sends `exec` and gets `started` or an `error` (exit code 125, or 126/127
//! as a shell would: found but not executable / not found); then, in any order, stdin frames,
//! `signal`, `resize`, `close_stdin`, and one `wait`. The agent streams stdout/stderr frames
//! and, once the process ended, its output drained and `wait` was received, sends `exited` as
//! its last frame and closes. A connection that drops before that kills the
//! process's whole process group (SIGKILL).
//!
//! **Attach (version 2).** Instead of `exec`, the client may send `attach` (an app started
//! with a tty, `ark run -t`): the agent answers `attached` and from then on the connection is
//! the app's pty: stdout frames carry what the app writes to it, stdin frames go to it, and
//! `resize`, `signal` and `close_stdin` work as for `exec`. There is no `exited`: the agent
//! closes the connection when the pty ends (the app and everything holding it exited); the
//! client reads the exit status from the pod. One client is attached at a time: a new attach
//! takes the pty over and the previous client's connection is closed. Closing the connection
//! detaches; the app keeps running and its output keeps going to its log.
//!
//! Both sides treat the other as hostile: [`FrameDecoder`] never holds more than one frame,
//! every message is checked by `validate` after parsing, and a frame of the wrong kind for its
//! direction is an error.

use serde::{Deserialize, Serialize};

/// The newest protocol version (the `hello` exchange): 2 added `attach`.
pub const AGENT_PROTOCOL_VERSION: u32 = 2;
/// The oldest version an agent still speaks (`exec` only). A client sends the lowest version
/// that has what it needs, so a newer `ark enter` still reaches an older pod's agent.
pub const AGENT_PROTOCOL_MIN_VERSION: u32 = 1;
/// The first version with `attach`.
pub const AGENT_ATTACH_VERSION: u32 = 2;
/// The vsock port guest-init's agent listens on in a VM.
pub const AGENT_VSOCK_PORT: u32 = 1026;

pub const KIND_MESSAGE: u8 = 0;
pub const KIND_STDIN: u8 = 1;
pub const KIND_STDOUT: u8 = 2;
pub const KIND_STDERR: u8 = 3;

/// Most bytes of a stream frame's body.
pub const MAX_DATA_LEN: usize = 64 * 1024;
/// Most bytes of a message frame's JSON.
pub const MAX_MESSAGE_LEN: usize = 64 * 1024;
/// Most bytes after the length prefix (kind byte + body).
pub const MAX_FRAME_LEN: usize = 1 + if MAX_DATA_LEN > MAX_MESSAGE_LEN {
    MAX_DATA_LEN
} else {
    MAX_MESSAGE_LEN
};

/// Caps on the fields of `exec` (each checked by [`ExecRequest::validate`]).
pub const MAX_ARGS: usize = 1024;
pub const MAX_ENV: usize = 1024;
pub const MAX_STRING: usize = 8192;
/// Most bytes of an error message the agent sends.
pub const MAX_ERROR_MESSAGE: usize = 4096;
/// Highest signal number (SIGRTMAX on Linux).
pub const MAX_SIGNAL: i32 = 64;

/// Why a frame or message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("frame length {len} out of range (1..={MAX_FRAME_LEN})")]
    FrameLength { len: u64 },
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("{what} frame of {len} bytes out of range")]
    BodyLength { what: &'static str, len: usize },
    #[error("a {0} frame is not allowed in this direction")]
    WrongDirection(&'static str),
    #[error("bad message: {0}")]
    BadMessage(String),
    #[error("invalid {field}: {why}")]
    Invalid { field: &'static str, why: String },
}

fn invalid(field: &'static str, why: impl Into<String>) -> ProtocolError {
    ProtocolError::Invalid {
        field,
        why: why.into(),
    }
}

/// Terminal size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowSize {
    pub rows: u16,
    pub cols: u16,
}

/// What to run, and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// The app whose root, namespaces, cgroup and identity the process gets; `None`: the
    /// pod's only app.
    #[serde(default)]
    pub app: Option<String>,
    /// Program and arguments; the program is looked up in the app's PATH.
    pub argv: Vec<String>,
    /// `(NAME, value)` added to (and overriding) the app's environment.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// User (name or uid, looked up in the app's /etc/passwd) instead of the app's.
    #[serde(default)]
    pub user: Option<String>,
    /// Working directory instead of the app's.
    #[serde(default)]
    pub workdir: Option<String>,
    /// A pty (made inside the pod) of this size instead of pipes.
    #[serde(default)]
    pub tty: Option<WindowSize>,
    /// Whether stdin frames will come; without, the process's stdin is /dev/null.
    #[serde(default)]
    pub stdin: bool,
}

fn check_string(field: &'static str, s: &str) -> Result<(), ProtocolError> {
    if s.len() > MAX_STRING {
        return Err(invalid(field, format!("longer than {MAX_STRING} bytes")));
    }
    if s.contains('\0') {
        return Err(invalid(field, "contains NUL"));
    }
    Ok(())
}

impl ExecRequest {
    pub fn validate(&self) -> Result<(), ProtocolError> {
        if let Some(a) = &self.app {
            if !crate::manifest::is_dns_label(a) {
                return Err(invalid("app", "not an app name"));
            }
        }
        if self.argv.is_empty() || self.argv.len() > MAX_ARGS {
            return Err(invalid("argv", format!("needs 1..={MAX_ARGS} words")));
        }
        if self.argv[0].is_empty() {
            return Err(invalid("argv", "empty program name"));
        }
        self.argv.iter().try_for_each(|a| check_string("argv", a))?;
        if self.env.len() > MAX_ENV {
            return Err(invalid("env", format!("more than {MAX_ENV} variables")));
        }
        for (k, v) in &self.env {
            check_string("env", k)?;
            check_string("env", v)?;
            if k.is_empty() || k.contains('=') {
                return Err(invalid("env", "a name is empty or contains '='"));
            }
        }
        if let Some(u) = &self.user {
            check_string("user", u)?;
            if u.is_empty() || u.contains([':', '\n']) {
                return Err(invalid("user", "empty or contains ':' or a newline"));
            }
        }
        if let Some(w) = &self.workdir {
            check_string("workdir", w)?;
            if !crate::manifest::is_clean_absolute(w) {
                return Err(invalid("workdir", "not an absolute path without '..'"));
            }
        }
        Ok(())
    }
}

/// How the process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

impl ExitStatus {
    /// As a shell reports it: the code, or 128 + the signal.
    pub fn shell_code(self) -> i32 {
        match self {
            ExitStatus::Code(c) => c,
            ExitStatus::Signal(s) => 128 + s,
        }
    }
}

/// Client → agent messages.
///
/// **App requests** (a sandbox's apps, `ark app`): after `hello`, instead of `exec`, one of
/// `app_add`, `app_start`, `app_stop`, `app_remove`; the agent answers `done` or `error` and
/// closes. They are additive to protocol version 1: an agent that predates them answers with
/// `error` (or closes), and the client reports that as a refusal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Hello {
        version: u32,
    },
    Exec(ExecRequest),
    /// Attach to the pty of an app started with one (`None`: the pod's only app).
    Attach {
        #[serde(default)]
        app: Option<String>,
    },
    /// Send this signal to the process.
    Signal {
        signal: i32,
    },
    /// The pty's new size (TIOCSWINSZ).
    Resize(WindowSize),
    /// No more stdin: the process's stdin pipe is closed (a pty gets an EOF character).
    CloseStdin,
    /// Send `exited` once the process ended.
    Wait,
    /// A new app for the sandbox, in state created: its manifest entry (already in the
    /// pod's manifest on the host, its root rendered into the pod) and, ns/fly, the cgroup
    /// the stage0 made for it (kvm: guest-init makes its own).
    AppAdd(Box<AppAddRequest>),
    /// Start a created app.
    AppStart {
        app: String,
    },
    /// SIGTERM the app's process, SIGKILL after `grace_secs`; the other apps keep running.
    AppStop {
        app: String,
        #[serde(default)]
        grace_secs: Option<u64>,
    },
    /// Forget an app that is not running (created or exited); the host removes its root.
    AppRemove {
        app: String,
    },
}

/// The body of `app_add`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppAddRequest {
    pub app: crate::manifest::App,
    #[serde(default)]
    pub cgroup: Option<crate::stage2::AppCgroup>,
}

/// Longest stop grace an `app_stop` may ask for.
pub const MAX_GRACE_SECS: u64 = 3600;

fn check_app_name(a: &str) -> Result<(), ProtocolError> {
    if crate::manifest::is_dns_label(a) {
        Ok(())
    } else {
        Err(invalid("app", "not an app name"))
    }
}

impl AppAddRequest {
    /// The entry alone; guest-init checks it again against its pod (volumes, duplicates) with
    /// `PodManifest::validate`.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        check_app_name(&self.app.name)?;
        if let Some(cg) = &self.cgroup {
            if cg.app != self.app.name {
                return Err(invalid("cgroup", "for another app"));
            }
            if cg.dirs.len() > 16 {
                return Err(invalid("cgroup", "too many directories"));
            }
            for d in cg.dirs.iter().chain(&cg.oom_file) {
                check_string("cgroup", d)?;
                // Only under the pod's cgroup dirs as guest-init sees them (ns/fly).
                let under = d
                    .strip_prefix(crate::layout::guest::CGROUP_DIR)
                    .is_some_and(|rest| rest.starts_with('/'));
                if !under || !crate::manifest::is_clean_absolute(d) {
                    return Err(invalid(
                        "cgroup",
                        format!(
                            "{d:?} is not a clean path under {}",
                            crate::layout::guest::CGROUP_DIR
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Request {
    pub fn validate(&self) -> Result<(), ProtocolError> {
        match self {
            Request::Exec(e) => e.validate(),
            Request::Attach { app: Some(a) } if !crate::manifest::is_dns_label(a) => {
                Err(invalid("app", "not an app name"))
            }
            Request::AppAdd(a) => a.validate(),
            Request::AppStart { app } | Request::AppRemove { app } => check_app_name(app),
            Request::AppStop { app, grace_secs } => {
                check_app_name(app)?;
                match grace_secs {
                    Some(g) if *g > MAX_GRACE_SECS => {
                        Err(invalid("grace_secs", format!("more than {MAX_GRACE_SECS}")))
                    }
                    _ => Ok(()),
                }
            }
            Request::Signal { signal } if !(1..=MAX_SIGNAL).contains(signal) => Err(invalid(
                "signal",
                format!("{signal} is not a signal number"),
            )),
            _ => Ok(()),
        }
    }
}

/// Agent → client messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Reply {
    Hello {
        version: u32,
    },
    /// The process runs (its program was exec'd).
    Started {
        pid: i32,
    },
    /// The connection is the app's pty now (after `attach`).
    Attached,
    /// The request failed; `code` is what `ark enter` exits with (125, 126, 127).
    Error {
        code: i32,
        message: String,
    },
    /// The process ended and its output was sent; the last frame.
    Exited {
        status: ExitStatus,
    },
    /// An app request was carried out.
    Done,
}

impl Reply {
    pub fn validate(&self) -> Result<(), ProtocolError> {
        match self {
            Reply::Started { pid } if *pid <= 0 => Err(invalid("pid", pid.to_string())),
            Reply::Error { code, message } => {
                if !(125..=127).contains(code) {
                    return Err(invalid("error code", code.to_string()));
                }
                if message.len() > MAX_ERROR_MESSAGE {
                    return Err(invalid("error message", "too long"));
                }
                Ok(())
            }
            Reply::Exited {
                status: ExitStatus::Code(c),
            } if !(0..=255).contains(c) => Err(invalid("exit code", c.to_string())),
            Reply::Exited {
                status: ExitStatus::Signal(s),
            } if !(1..=MAX_SIGNAL).contains(s) => Err(invalid("exit signal", s.to_string())),
            _ => Ok(()),
        }
    }
}

/// A frame the client sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    Message(Request),
    Stdin(Vec<u8>),
}

/// A frame the agent sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentFrame {
    Message(Reply),
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
}

/// Appends one frame (`kind`, `body`) to `out`. Panics on a body over the caps: the sender
/// splits data into [`MAX_DATA_LEN`] pieces, and its own messages are small.
pub fn encode(kind: u8, body: &[u8], out: &mut Vec<u8>) {
    let len = 1 + body.len();
    assert!(len <= MAX_FRAME_LEN, "frame over the cap");
    out.extend_from_slice(&u32::try_from(len).expect("capped").to_be_bytes());
    out.push(kind);
    out.extend_from_slice(body);
}

fn encode_json<T: Serialize>(m: &T, out: &mut Vec<u8>) {
    let body = serde_json::to_vec(m).expect("messages serialize");
    encode(KIND_MESSAGE, &body, out);
}

impl ClientFrame {
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            ClientFrame::Message(m) => encode_json(m, out),
            ClientFrame::Stdin(d) => encode(KIND_STDIN, d, out),
        }
    }

    /// A decoded raw frame, checked for direction, size and content.
    pub fn decode(kind: u8, body: &[u8]) -> Result<Self, ProtocolError> {
        match kind {
            KIND_MESSAGE => Ok(ClientFrame::Message(parse_message::<Request>(body)?)),
            KIND_STDIN => Ok(ClientFrame::Stdin(data("stdin", body)?)),
            KIND_STDOUT => Err(ProtocolError::WrongDirection("stdout")),
            KIND_STDERR => Err(ProtocolError::WrongDirection("stderr")),
            k => Err(ProtocolError::UnknownKind(k)),
        }
    }
}

impl AgentFrame {
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            AgentFrame::Message(m) => encode_json(m, out),
            AgentFrame::Stdout(d) => encode(KIND_STDOUT, d, out),
            AgentFrame::Stderr(d) => encode(KIND_STDERR, d, out),
        }
    }

    pub fn decode(kind: u8, body: &[u8]) -> Result<Self, ProtocolError> {
        match kind {
            KIND_MESSAGE => Ok(AgentFrame::Message(parse_message::<Reply>(body)?)),
            KIND_STDOUT => Ok(AgentFrame::Stdout(data("stdout", body)?)),
            KIND_STDERR => Ok(AgentFrame::Stderr(data("stderr", body)?)),
            KIND_STDIN => Err(ProtocolError::WrongDirection("stdin")),
            k => Err(ProtocolError::UnknownKind(k)),
        }
    }
}

fn data(what: &'static str, body: &[u8]) -> Result<Vec<u8>, ProtocolError> {
    if body.is_empty() || body.len() > MAX_DATA_LEN {
        return Err(ProtocolError::BodyLength {
            what,
            len: body.len(),
        });
    }
    Ok(body.to_vec())
}

trait Validate {
    fn check(&self) -> Result<(), ProtocolError>;
}
impl Validate for Request {
    fn check(&self) -> Result<(), ProtocolError> {
        self.validate()
    }
}
impl Validate for Reply {
    fn check(&self) -> Result<(), ProtocolError> {
        self.validate()
    }
}

fn parse_message<T: for<'de> Deserialize<'de> + Validate>(body: &[u8]) -> Result<T, ProtocolError> {
    if body.len() > MAX_MESSAGE_LEN {
        return Err(ProtocolError::BodyLength {
            what: "message",
            len: body.len(),
        });
    }
    let m: T =
        serde_json::from_slice(body).map_err(|e| ProtocolError::BadMessage(e.to_string()))?;
    m.check()?;
    Ok(m)
}

/// Reassembles frames from bytes read off a stream, holding at most one frame: the caller
/// reads into [`FrameDecoder::space`] (never more than the current frame still needs), then
/// calls [`FrameDecoder::filled`] and takes frames with [`FrameDecoder::take_frame`].
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    filled: usize,
}

impl FrameDecoder {
    pub fn new() -> Self {
        FrameDecoder::default()
    }

    /// How many bytes the frame being read still needs (the length prefix first).
    fn wanted(&self) -> Result<usize, ProtocolError> {
        if self.filled < 4 {
            return Ok(4 - self.filled);
        }
        let len = self.frame_len()?;
        Ok(4 + len - self.filled)
    }

    fn frame_len(&self) -> Result<usize, ProtocolError> {
        let len = u32::from_be_bytes(self.buf[..4].try_into().expect("4 bytes"));
        let len_usize = usize::try_from(len).unwrap_or(usize::MAX);
        if len_usize == 0 || len_usize > MAX_FRAME_LEN {
            return Err(ProtocolError::FrameLength {
                len: u64::from(len),
            });
        }
        Ok(len_usize)
    }

    /// Where the next read goes: exactly the bytes the current frame still needs.
    pub fn space(&mut self) -> Result<&mut [u8], ProtocolError> {
        let want = self.wanted()?;
        let end = self.filled + want;
        if self.buf.len() < end {
            self.buf.resize(end, 0);
        }
        Ok(&mut self.buf[self.filled..end])
    }

    /// `n` bytes were read into [`FrameDecoder::space`].
    pub fn filled(&mut self, n: usize) {
        self.filled += n;
    }

    /// Whether a frame has started but is not complete (an EOF now is a truncated frame).
    pub fn partial(&self) -> bool {
        self.filled > 0
    }

    /// The complete frame, if there is one: (kind, body). The next read starts a new frame.
    pub fn take_frame(&mut self) -> Result<Option<(u8, Vec<u8>)>, ProtocolError> {
        if self.filled < 4 {
            return Ok(None);
        }
        let len = self.frame_len()?;
        if self.filled < 4 + len {
            return Ok(None);
        }
        let kind = self.buf[4];
        let body = self.buf[5..4 + len].to_vec();
        self.filled = 0;
        // Keep no big buffer around between frames.
        self.buf.truncate(MAX_DATA_LEN.min(self.buf.len()));
        Ok(Some((kind, body)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(bytes: &[u8]) -> Result<Vec<(u8, Vec<u8>)>, ProtocolError> {
        let mut d = FrameDecoder::new();
        let mut out = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            let space = d.space()?;
            let n = space.len().min(rest.len()).min(3); // odd chunking on purpose
            space[..n].copy_from_slice(&rest[..n]);
            d.filled(n);
            rest = &rest[n..];
            if let Some(f) = d.take_frame()? {
                out.push(f);
            }
        }
        assert!(!d.partial());
        Ok(out)
    }

    #[test]
    fn frames_round_trip() {
        let exec = Request::Exec(ExecRequest {
            app: Some("web".into()),
            argv: vec!["sh".into(), "-c".into(), "exit 9".into()],
            env: vec![("A".into(), "1".into())],
            user: Some("65534".into()),
            workdir: Some("/tmp".into()),
            tty: Some(WindowSize { rows: 24, cols: 80 }),
            stdin: true,
        });
        let mut wire = Vec::new();
        ClientFrame::Message(exec.clone()).encode(&mut wire);
        ClientFrame::Stdin(b"abc".to_vec()).encode(&mut wire);
        AgentFrame::Stdout(vec![7; MAX_DATA_LEN]).encode(&mut wire);
        let frames = decode_all(&wire).unwrap();
        assert_eq!(
            ClientFrame::decode(frames[0].0, &frames[0].1).unwrap(),
            ClientFrame::Message(exec)
        );
        assert_eq!(
            ClientFrame::decode(frames[1].0, &frames[1].1).unwrap(),
            ClientFrame::Stdin(b"abc".to_vec())
        );
        assert_eq!(
            AgentFrame::decode(frames[2].0, &frames[2].1).unwrap(),
            AgentFrame::Stdout(vec![7; MAX_DATA_LEN])
        );
        let json = serde_json::to_string(&Reply::Exited {
            status: ExitStatus::Code(9),
        })
        .unwrap();
        assert_eq!(json, r#"{"op":"exited","status":{"code":9}}"#);
    }

    #[test]
    fn lying_lengths_are_refused_before_any_buffer() {
        let mut d = FrameDecoder::new();
        d.space().unwrap().copy_from_slice(&u32::MAX.to_be_bytes());
        d.filled(4);
        assert!(matches!(
            d.take_frame(),
            Err(ProtocolError::FrameLength { .. })
        ));
        assert!(d.space().is_err());
        assert!(decode_all(&0u32.to_be_bytes()).is_err());
        let over = u32::try_from(MAX_FRAME_LEN + 1).unwrap().to_be_bytes();
        assert!(decode_all(&over).is_err());
    }

    #[test]
    fn direction_kind_and_content_are_checked() {
        assert_eq!(
            AgentFrame::decode(KIND_STDIN, b"x"),
            Err(ProtocolError::WrongDirection("stdin"))
        );
        assert_eq!(
            ClientFrame::decode(KIND_STDOUT, b"x"),
            Err(ProtocolError::WrongDirection("stdout"))
        );
        assert_eq!(
            AgentFrame::decode(9, b"x"),
            Err(ProtocolError::UnknownKind(9))
        );
        assert!(AgentFrame::decode(KIND_STDOUT, b"").is_err());
        assert!(AgentFrame::decode(KIND_MESSAGE, b"\xff garbage").is_err());
        for bad in [
            r#"{"op":"exited","status":{"code":999}}"#,
            r#"{"op":"exited","status":{"signal":0}}"#,
            r#"{"op":"error","code":1,"message":"x"}"#,
            r#"{"op":"started","pid":-1}"#,
            r#"{"op":"started","pid":1,"extra":1}"#,
            r#"{"op":"launch"}"#,
        ] {
            assert!(
                AgentFrame::decode(KIND_MESSAGE, bad.as_bytes()).is_err(),
                "{bad}"
            );
        }
        for bad in [
            r#"{"op":"signal","signal":0}"#,
            r#"{"op":"exec","argv":[]}"#,
            r#"{"op":"exec","argv":["a\u0000b"]}"#,
            r#"{"op":"exec","argv":["sh"],"app":"../x"}"#,
            r#"{"op":"exec","argv":["sh"],"env":[["A=B","1"]]}"#,
            r#"{"op":"exec","argv":["sh"],"workdir":"rel"}"#,
            r#"{"op":"exec","argv":["sh"],"user":"a:b"}"#,
            r#"{"op":"attach","app":"../x"}"#,
            r#"{"op":"attach","app":"web","pid":1}"#,
        ] {
            assert!(
                ClientFrame::decode(KIND_MESSAGE, bad.as_bytes()).is_err(),
                "{bad}"
            );
        }
        for ok in [
            r#"{"op":"exec","argv":["sh"]}"#,
            r#"{"op":"attach"}"#,
            r#"{"op":"attach","app":"web"}"#,
        ] {
            assert!(
                ClientFrame::decode(KIND_MESSAGE, ok.as_bytes()).is_ok(),
                "{ok}"
            );
        }
        assert_eq!(
            AgentFrame::decode(KIND_MESSAGE, br#"{"op":"attached"}"#),
            Ok(AgentFrame::Message(Reply::Attached))
        );
    }

    /// App requests name apps by DNS label only, and an added app's cgroup only under the
    /// pod's cgroup dirs: nothing in them can point guest-init elsewhere.
    #[test]
    fn app_requests_are_checked() {
        let app = r#"{"name":"web","image":{"id":"sha256:x"},"exec":["sh"]}"#;
        let cg = |dirs: &str| {
            format!(r#"{{"op":"app_add","app":{app},"cgroup":{{"app":"web","dirs":[{dirs}]}}}}"#)
        };
        for bad in [
            r#"{"op":"app_start","app":"../x"}"#.to_string(),
            r#"{"op":"app_remove","app":"a/b"}"#.into(),
            r#"{"op":"app_stop","app":"web","grace_secs":99999999}"#.into(),
            r#"{"op":"app_add","app":{"name":"../x","image":{"id":"sha256:x"},"exec":["sh"]}}"#
                .into(),
            cg(r#""/sys/fs/cgroup/x""#),
            cg(r#""/ark/cgroup/../../etc""#),
            cg(r#""/ark/cgroupx/a""#),
            format!(r#"{{"op":"app_add","app":{app},"cgroup":{{"app":"other","dirs":[]}}}}"#),
        ] {
            assert!(
                ClientFrame::decode(KIND_MESSAGE, bad.as_bytes()).is_err(),
                "{bad}"
            );
        }
        for ok in [
            r#"{"op":"app_start","app":"web"}"#.to_string(),
            r#"{"op":"app_stop","app":"web"}"#.into(),
            cg(r#""/ark/cgroup/memory/app.web""#),
        ] {
            assert!(
                ClientFrame::decode(KIND_MESSAGE, ok.as_bytes()).is_ok(),
                "{ok}"
            );
        }
        assert_eq!(
            serde_json::to_string(&Reply::Done).unwrap(),
            r#"{"op":"done"}"#
        );
    }
}
