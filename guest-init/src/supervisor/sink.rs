//! The status channel: one trait, two transports. ns/fly write the pod's status files
//! directly; kvm streams newline-delimited JSON over vsock to the host and waits for its ack.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::OwnedFd;
use std::time::Duration;

use ark_os::StatusDir;
use ark_pod_spec::{
    AppStatus, PodManifest, Stage2Config, StatusMessage, StatusTransport, STATUS_ACK,
};

pub trait StatusSink {
    fn send(&mut self, msg: &StatusMessage) -> io::Result<()>;
    /// Every app has a final status: say so and make sure it arrived.
    fn done(&mut self) -> io::Result<()>;
}

pub struct FileSink(pub StatusDir);

impl StatusSink for FileSink {
    fn send(&mut self, msg: &StatusMessage) -> io::Result<()> {
        self.0.apply(msg)
    }
    fn done(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Messages over a byte stream (a vsock connection; a Unix socket in tests). Reads of the
/// stream must time out (SO_RCVTIMEO), which bounds the wait for the ack.
pub struct StreamSink<S: Read + Write> {
    stream: S,
}

impl<S: Read + Write> StreamSink<S> {
    pub fn new(stream: S) -> Self {
        StreamSink { stream }
    }
}

impl<S: Read + Write> StatusSink for StreamSink<S> {
    fn send(&mut self, msg: &StatusMessage) -> io::Result<()> {
        self.stream.write_all(msg.to_line().as_bytes())?;
        self.stream.flush()
    }

    fn done(&mut self) -> io::Result<()> {
        self.send(&StatusMessage::PodDone)?;
        let mut line = String::new();
        // One byte at a time is fine for a 3-byte answer and never reads past it.
        BufReader::with_capacity(1, &mut self.stream).read_line(&mut line)?;
        if line.trim_end() == STATUS_ACK {
            Ok(())
        } else if line.is_empty() {
            Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "host closed the status channel without acknowledging",
            ))
        } else {
            Err(io::Error::other(format!("host answered {line:?}, not ok")))
        }
    }
}

/// Used when the real channel could not be opened: statuses still go to the console, so a
/// human can see them, and the host marks the apps unreported.
pub struct ConsoleSink;

impl StatusSink for ConsoleSink {
    fn send(&mut self, msg: &StatusMessage) -> io::Result<()> {
        eprint!("ark-init: status: {}", msg.to_line());
        Ok(())
    }
    fn done(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// How long guest-init waits for the host's ack after `pod_done`.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to the host's vsock status port, retrying briefly (the host listens before the VM
/// boots, but its vsock backend may still be coming up).
pub fn connect_vsock(cid: u32, port: u32) -> io::Result<std::fs::File> {
    use nix::sys::socket::{
        connect, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, VsockAddr,
    };
    use nix::sys::time::{TimeVal, TimeValLike};
    let mut last = None;
    for _ in 0..50 {
        let fd: OwnedFd = socket(
            AddressFamily::Vsock,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        match connect(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &VsockAddr::new(cid, port),
        ) {
            Ok(()) => {
                let secs = i64::try_from(ACK_TIMEOUT.as_secs()).expect("ACK_TIMEOUT is 5 s");
                let tv = TimeVal::seconds(secs);
                setsockopt(&fd, sockopt::ReceiveTimeout, &tv)?;
                return Ok(std::fs::File::from(fd));
            }
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(io::Error::from(last.expect("tried at least once")))
}

/// The sink, remembering which apps have a final status (to report the rest on failure).
pub struct Tracking {
    inner: Box<dyn StatusSink>,
    /// Set once the manifest is read: its apps are the ones owed a status.
    pub manifest: Option<PodManifest>,
    finished: Vec<String>,
}

impl Tracking {
    pub fn new(inner: Box<dyn StatusSink>) -> Self {
        Tracking {
            inner,
            manifest: None,
            finished: Vec::new(),
        }
    }

    /// Every app without a final status gets one saying why the pod failed.
    pub fn fail_unfinished(&mut self, msg: &str) {
        if let Some(m) = self.manifest.clone() {
            let missing: Vec<String> = m
                .apps
                .iter()
                .map(|a| a.name.clone())
                .filter(|a| !self.finished.contains(a))
                .collect();
            for a in missing {
                let status = AppStatus::failed(&a, format!("stage2: {msg}"), None);
                report(self, StatusMessage::AppExited { status });
            }
        }
    }
}

impl StatusSink for Tracking {
    fn send(&mut self, msg: &StatusMessage) -> io::Result<()> {
        if let StatusMessage::AppExited { status } = msg {
            self.finished.push(status.app.clone());
        }
        self.inner.send(msg)
    }
    fn done(&mut self) -> io::Result<()> {
        self.inner.done()
    }
}

/// Sends `msg`; a broken channel is logged with the status, never fatal.
pub fn report(sink: &mut dyn StatusSink, msg: StatusMessage) {
    if let Err(e) = sink.send(&msg) {
        eprintln!(
            "ark-init: status channel: {e}; status was: {}",
            msg.to_line().trim_end()
        );
    }
}

/// The channel the stage2 config names; the console when it cannot be opened.
pub fn open(cfg: &Stage2Config) -> Box<dyn StatusSink> {
    match &cfg.status {
        StatusTransport::File { dir } => Box::new(FileSink(StatusDir::new(dir))),
        StatusTransport::Vsock { port, cid } => {
            match connect_vsock(*cid, *port) {
                Ok(s) => Box::new(StreamSink::new(s)),
                Err(e) => {
                    eprintln!("ark-init: status channel vsock {cid}:{port}: {e}; statuses go to the console");
                    Box::new(ConsoleSink)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ark_pod_spec::AppState;
    use std::os::unix::net::UnixStream;

    fn exited() -> StatusMessage {
        StatusMessage::AppExited {
            status: AppStatus {
                app: "web".into(),
                state: AppState::Exited,
                pid: Some(2),
                exit_code: Some(3),
                signal: None,
                oom_killed: false,
                error: None,
                started_at: Some(1),
                finished_at: Some(2),
            },
        }
    }

    /// The host side as stage1-kvm runs it: read lines, ack `pod_done`.
    fn spawn_host(
        stream: UnixStream,
        ack: Option<&'static str>,
    ) -> std::thread::JoinHandle<Vec<StatusMessage>> {
        std::thread::spawn(move || {
            let mut w = stream.try_clone().unwrap();
            let mut got = Vec::new();
            for line in BufReader::new(stream).lines() {
                let m = StatusMessage::from_line(&line.unwrap()).unwrap();
                let done = m == StatusMessage::PodDone;
                got.push(m);
                if done {
                    if let Some(a) = ack {
                        w.write_all(format!("{a}\n").as_bytes()).unwrap();
                    }
                    break;
                }
            }
            got
        })
    }

    #[test]
    fn stream_transport_delivers_and_waits_for_ack() {
        let (guest, h) = UnixStream::pair().unwrap();
        guest
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let host = spawn_host(h, Some("ok"));
        let mut sink = StreamSink::new(guest);
        let started = StatusMessage::AppStarted {
            app: "web".into(),
            pid: 2,
            started_at: 1,
        };
        sink.send(&started).unwrap();
        sink.send(&exited()).unwrap();
        sink.done().unwrap();
        assert_eq!(
            host.join().unwrap(),
            [started, exited(), StatusMessage::PodDone]
        );
    }

    #[test]
    fn missing_or_wrong_ack_is_an_error_not_a_hang() {
        let (guest, h) = UnixStream::pair().unwrap();
        guest
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let host_side = h.try_clone().unwrap();
        let host = spawn_host(h, None);
        let mut sink = StreamSink::new(guest);
        let t = std::time::Instant::now();
        assert!(sink.done().is_err());
        assert!(t.elapsed() < Duration::from_secs(3));
        host.join().unwrap();
        drop(host_side);

        let (guest, h) = UnixStream::pair().unwrap();
        guest
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let host = spawn_host(h, Some("nope"));
        let e = StreamSink::new(guest).done().unwrap_err().to_string();
        assert!(e.contains("nope"), "{e}");
        host.join().unwrap();
    }

    #[test]
    fn file_transport_writes_status_files() {
        let dir = std::env::temp_dir().join(format!("ark-init-sink-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut sink = FileSink(StatusDir::new(&dir));
        sink.send(&exited()).unwrap();
        sink.done().unwrap();
        let st = StatusDir::new(&dir).read_app("web").unwrap();
        assert_eq!(st.exit_code, Some(3));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
