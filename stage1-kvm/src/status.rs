//! The host end of guest-init's status channel: guest-init connects over vsock to the host
//! (CID 2) at [`crate::plan::STATUS_PORT`]; the hybrid vsock device turns that into a connection
//! to `<uds>_<port>`, where this listener records each message into the pod's status dir.

use std::io::{self, BufRead, BufReader, ErrorKind, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use ark_os::StatusDir;
use ark_pod_spec::status::{AppStatus, StatusMessage, STATUS_ACK};

const POLL: Duration = Duration::from_millis(200);
/// At most this many final statuses are kept in memory.
const MAX_KEPT: usize = 1024;

pub struct StatusListener {
    listener: UnixListener,
}

/// What the channel delivered by the time the VM ended.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// guest-init said every app has a final status.
    pub pod_done: bool,
    /// Lines that were not status messages (logged, otherwise ignored).
    pub bad_lines: usize,
    /// Every final status received, also kept here so a file that could not be written (a
    /// full disk) is not the only copy (see `StatusDir::finish_with`).
    pub exited: Vec<AppStatus>,
}

impl StatusListener {
    pub fn bind(path: &Path) -> io::Result<Self> {
        Ok(StatusListener {
            listener: bind_guest_socket(path)?,
        })
    }

    /// Serves connections until `vm_ended` is set and no connection is open.
    pub fn spawn(
        self,
        dir: StatusDir,
        vm_ended: Arc<AtomicBool>,
    ) -> io::Result<JoinHandle<Outcome>> {
        std::thread::Builder::new()
            .name("status".into())
            .spawn(move || self.serve(&dir, &vm_ended))
    }

    fn serve(self, dir: &StatusDir, vm_ended: &AtomicBool) -> Outcome {
        let mut outcome = Outcome::default();
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if serve_connection(stream, dir, vm_ended, &mut outcome).is_err() {
                        continue;
                    }
                    if outcome.pod_done {
                        return outcome;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if vm_ended.load(Ordering::Acquire) {
                        return outcome;
                    }
                    std::thread::sleep(POLL);
                }
                Err(e) => {
                    tracing::warn!("status channel: accept: {e}");
                    std::thread::sleep(POLL);
                }
            }
        }
    }
}

/// A non-blocking listener at `path`, where the vsock device connects guest-initiated
/// connections to (see the module doc).
pub fn bind_guest_socket(path: &Path) -> io::Result<UnixListener> {
    // A socket left by a killed earlier run of this pod would make bind fail.
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(path)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

fn serve_connection(
    stream: UnixStream,
    dir: &StatusDir,
    vm_ended: &AtomicBool,
    outcome: &mut Outcome,
) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(POLL))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        match reader.read_line(&mut line) {
            Ok(0) => return Ok(()),
            Ok(_) if !line.ends_with('\n') => continue,
            Ok(_) => {
                match StatusMessage::from_line(line.trim_end()) {
                    Ok(msg) => {
                        if let StatusMessage::AppExited { status } = &msg {
                            // Bounded: one per app line guest-init sends, and a hostile guest
                            // gains nothing (finish_with reads only the manifest's apps).
                            if outcome.exited.len() < MAX_KEPT {
                                outcome.exited.push(status.clone());
                            }
                        }
                        if let Err(e) = dir.apply(&msg) {
                            tracing::warn!("status channel: recording {msg:?}: {e}");
                        }
                        if msg == StatusMessage::PodDone {
                            outcome.pod_done = true;
                            // guest-init powers off only after this ack, so nothing is lost.
                            writer.write_all(format!("{STATUS_ACK}\n").as_bytes())?;
                            return Ok(());
                        }
                    }
                    Err(e) => {
                        outcome.bad_lines += 1;
                        tracing::warn!("status channel: {e}");
                    }
                }
                line.clear();
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if vm_ended.load(Ordering::Acquire) {
                    return Ok(());
                }
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ark_pod_spec::status::{AppState, AppStatus};
    use std::io::Read;

    #[test]
    fn records_statuses_and_acks_pod_done() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("v.sock_1024");
        let status = StatusDir::new(dir.path().join("status"));
        std::fs::create_dir_all(status.dir()).unwrap();
        let ended = Arc::new(AtomicBool::new(false));
        let thread = StatusListener::bind(&sock)
            .unwrap()
            .spawn(status.clone(), ended.clone())
            .unwrap();

        let mut conn = UnixStream::connect(&sock).unwrap();
        let mut exited = AppStatus::running("web", 7, 1);
        exited.state = AppState::Exited;
        exited.exit_code = Some(7);
        exited.finished_at = Some(2);
        let msgs = [
            StatusMessage::AppStarted {
                app: "web".into(),
                pid: 7,
                started_at: 1,
            }
            .to_line(),
            "this is not json\n".to_string(),
            StatusMessage::AppExited { status: exited }.to_line(),
            StatusMessage::PodDone.to_line(),
        ];
        for m in &msgs {
            conn.write_all(m.as_bytes()).unwrap();
        }
        let mut ack = String::new();
        conn.read_to_string(&mut ack).unwrap();
        assert_eq!(ack, format!("{STATUS_ACK}\n"));

        let outcome = thread.join().unwrap();
        assert!(outcome.pod_done);
        assert_eq!(outcome.bad_lines, 1);
        let web = status.read_app("web").expect("web status written");
        assert_eq!(web.exit_code, Some(7));
        assert_eq!(web.state, AppState::Exited);
    }

    #[test]
    fn keeps_final_statuses_it_could_not_write() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("v.sock_1024");
        // No status directory: every write fails, as on a full disk.
        let status = StatusDir::new(dir.path().join("missing"));
        let ended = Arc::new(AtomicBool::new(false));
        let thread = StatusListener::bind(&sock)
            .unwrap()
            .spawn(status, ended)
            .unwrap();
        let mut conn = UnixStream::connect(&sock).unwrap();
        let mut exited = AppStatus::running("web", 7, 1);
        exited.state = AppState::Exited;
        exited.exit_code = Some(3);
        for m in [
            StatusMessage::AppExited {
                status: exited.clone(),
            },
            StatusMessage::PodDone,
        ] {
            conn.write_all(m.to_line().as_bytes()).unwrap();
        }
        let mut ack = String::new();
        conn.read_to_string(&mut ack).unwrap();
        let outcome = thread.join().unwrap();
        assert!(outcome.pod_done);
        assert_eq!(outcome.exited, [exited]);
    }

    #[test]
    fn gives_up_when_the_vm_ended_without_pod_done() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("v.sock_1024");
        let status = StatusDir::new(dir.path().join("status"));
        let ended = Arc::new(AtomicBool::new(false));
        let thread = StatusListener::bind(&sock)
            .unwrap()
            .spawn(status, ended.clone())
            .unwrap();
        ended.store(true, Ordering::Release);
        assert_eq!(thread.join().unwrap(), Outcome::default());
    }
}
