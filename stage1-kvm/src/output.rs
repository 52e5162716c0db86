//! The host end of the apps' output: guest-init opens one vsock connection per app stream
//! to the host at [`ark_pod_spec::logs::OUTPUT_PORT`], which the hybrid vsock device turns into a connection to
//! `<uds>_<port>`. Each starts with an [`OutputHeader`] naming a non-interactive app of the
//! manifest and a stream, claimed once; then its bytes go to this process's stdout or stderr
//! (what `ark run` was given) and into the app's log in `<pod dir>/logs`, on the host.
//!
//! The guest is hostile: the header is capped and validated; a connection that breaks the
//! rules is closed with one line on stderr for the whole pod (the rest only in debug logs);
//! memory is one buffer per connection and connections are capped at two per app (plus
//! two spare). The
//! stream is copied with blocking writes, so a slow reader of our stdout stalls the vsock
//! connection, whose credit then stalls the app in the guest: nothing queues here.

use std::io::{self, ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use ark_os::applog::LogWriter;
use ark_pod_spec::logs::{LogLimits, OutputHeader, Stream};
use ark_pod_spec::PodManifest;

const POLL: Duration = Duration::from_millis(200);
/// How long a connection has to send its header.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
const BUF: usize = 64 * 1024;
const SPARE_CONNECTIONS: usize = 2;

/// One app whose output may arrive: its log and which of its streams are taken.
struct AppOutput {
    name: String,
    log: Option<Mutex<LogWriter>>,
    claimed: [AtomicBool; 2],
}

/// Most apps whose output a sandbox takes at once (it has no fixed app list to size by).
const MAX_SANDBOX_APPS: usize = 64;

/// A sandbox's apps come and go: where to look one up that is not known yet.
struct Added {
    manifest: PodManifest,
    path: PathBuf,
    logs_dir: PathBuf,
    limits: LogLimits,
}

/// What the connections share.
struct Shared {
    apps: Mutex<Vec<Arc<AppOutput>>>,
    /// `Some` for a sandbox.
    added: Option<Added>,
    vm_ended: Arc<AtomicBool>,
    /// Connections refused or broken so far; the first gets a line on stderr.
    errors: AtomicUsize,
}

impl AppOutput {
    fn open(name: &str, logs_dir: &Path, limits: LogLimits) -> Self {
        AppOutput {
            name: name.to_string(),
            log: match LogWriter::open(logs_dir, name, limits) {
                Ok(w) => Some(Mutex::new(w)),
                Err(e) => {
                    eprintln!("ark-stage1-kvm: app {name}: log: {e}; output is not logged");
                    None
                }
            },
            claimed: [AtomicBool::new(false), AtomicBool::new(false)],
        }
    }
}

impl Shared {
    fn apps(&self) -> std::sync::MutexGuard<'_, Vec<Arc<AppOutput>>> {
        self.apps.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The app named in a header: a known one, or (sandbox) one the manifest has now.
    fn find(&self, name: &str) -> Option<Arc<AppOutput>> {
        let mut apps = self.apps();
        if let Some(a) = apps.iter().find(|a| a.name == name) {
            return Some(a.clone());
        }
        let added = self.added.as_ref()?;
        if apps.len() >= MAX_SANDBOX_APPS {
            return None;
        }
        let now = added.manifest.current(&added.path);
        let app = now.app(name).filter(|a| !a.interactive)?;
        let out = Arc::new(AppOutput::open(&app.name, &added.logs_dir, added.limits));
        apps.push(out.clone());
        Some(out)
    }

    /// A sandbox app's stream ended: once both have, it is forgotten (its log synced), so an
    /// app added again under its name gets a new log (`ark app rm` removed the old one).
    fn release(&self, app: &Arc<AppOutput>, stream: Stream) {
        if self.added.is_none() {
            return;
        }
        app.claimed[slot(stream)].store(false, Ordering::Release);
        if app.claimed.iter().any(|c| c.load(Ordering::Acquire)) {
            return;
        }
        if let Some(log) = &app.log {
            log.lock().unwrap_or_else(|p| p.into_inner()).sync();
        }
        self.apps().retain(|a| !Arc::ptr_eq(a, app));
    }

    fn refuse(&self, why: &str) {
        if self.errors.fetch_add(1, Ordering::Relaxed) == 0 {
            eprintln!("ark-stage1-kvm: output channel: {why}; connection refused");
        } else {
            tracing::debug!("output channel: {why}; connection refused");
        }
    }
}

pub struct OutputListener {
    listener: UnixListener,
}

impl OutputListener {
    pub fn bind(path: &Path) -> io::Result<Self> {
        Ok(OutputListener {
            listener: crate::status::bind_guest_socket(path)?,
        })
    }

    /// Serves output connections until the VM ended and every connection is done. Each
    /// non-interactive app of `manifest` gets a log in `logs_dir`.
    /// A sandbox's apps added later (in the manifest at `manifest_path` by then) are looked up
    /// when their output connects.
    pub fn spawn(
        self,
        manifest: &PodManifest,
        manifest_path: &Path,
        logs_dir: &Path,
        limits: LogLimits,
        vm_ended: Arc<AtomicBool>,
    ) -> io::Result<JoinHandle<()>> {
        let apps = manifest
            .apps
            .iter()
            .filter(|a| !a.interactive)
            .map(|a| Arc::new(AppOutput::open(&a.name, logs_dir, limits)))
            .collect();
        let shared = Arc::new(Shared {
            apps: Mutex::new(apps),
            added: manifest.sandbox.then(|| Added {
                manifest: manifest.clone(),
                path: manifest_path.to_path_buf(),
                logs_dir: logs_dir.to_path_buf(),
                limits,
            }),
            vm_ended,
            errors: AtomicUsize::new(0),
        });
        std::thread::Builder::new()
            .name("output".into())
            .spawn(move || self.serve(&shared))
    }

    fn serve(self, shared: &Arc<Shared>) {
        // Two per app, and a couple more so that a bad connection is read and refused for
        // its header rather than at the door (each spare is bounded by HEADER_TIMEOUT).
        let max = match shared.added {
            Some(_) => MAX_SANDBOX_APPS,
            None => shared.apps().len(),
        } * 2
            + SPARE_CONNECTIONS;
        let mut threads: Vec<JoinHandle<()>> = Vec::new();
        loop {
            match self.listener.accept() {
                Ok((conn, _)) => {
                    // Bounded: a guest opening connections in a loop gets no thread each.
                    threads.retain(|t| !t.is_finished());
                    if threads.len() >= max {
                        shared.refuse("too many connections");
                        continue;
                    }
                    let s = shared.clone();
                    match std::thread::Builder::new()
                        .name("output-conn".into())
                        .spawn(move || serve_connection(conn, &s))
                    {
                        Ok(t) => threads.push(t),
                        Err(e) => shared.refuse(&format!("thread: {e}")),
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if shared.vm_ended.load(Ordering::Acquire) {
                        break;
                    }
                    std::thread::sleep(POLL);
                }
                Err(e) => {
                    tracing::warn!("output channel: accept: {e}");
                    std::thread::sleep(POLL);
                }
            }
        }
        for t in threads {
            let _ = t.join();
        }
        for a in shared.apps().iter() {
            if let Some(log) = &a.log {
                let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
                log.sync();
                if log.dropped() > 0 {
                    eprintln!(
                        "ark-stage1-kvm: app {}: {} bytes of output could not be logged",
                        a.name,
                        log.dropped()
                    );
                }
            }
        }
    }
}

fn serve_connection(conn: UnixStream, shared: &Shared) {
    let (app, stream) = match claim(&conn, shared) {
        Ok(x) => x,
        Err(why) => return shared.refuse(&why),
    };
    if let Err(e) = copy(conn, &app, stream, shared) {
        shared.refuse(&format!("app {:?} {}: {e}", app.name, stream.as_str()));
    }
    shared.release(&app, stream);
}

fn slot(s: Stream) -> usize {
    match s {
        Stream::Stdout => 0,
        Stream::Stderr => 1,
    }
}

/// Reads and checks the header: a known app, a stream not claimed before.
fn claim(conn: &UnixStream, shared: &Shared) -> Result<(Arc<AppOutput>, Stream), String> {
    conn.set_nonblocking(false).map_err(|e| e.to_string())?;
    conn.set_read_timeout(Some(HEADER_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let header = OutputHeader::read_from(&mut &*conn)?;
    let app = shared
        .find(&header.app)
        .ok_or_else(|| format!("unknown app {:?}", header.app))?;
    if app.claimed[slot(header.stream)].swap(true, Ordering::AcqRel) {
        return Err(format!(
            "app {:?} {} is already connected",
            header.app,
            header.stream.as_str()
        ));
    }
    Ok((app, header.stream))
}

/// The stream's bytes to our stdout/stderr and the log, until the guest shuts its side;
/// then our side closes (dropping `conn`), which tells guest-init all of it is out.
fn copy(mut conn: UnixStream, app: &AppOutput, stream: Stream, shared: &Shared) -> io::Result<()> {
    conn.set_read_timeout(Some(POLL))?;
    let mut buf = vec![0u8; BUF];
    // Once our stdout/stderr breaks (the reader went away), the log still gets everything.
    let mut terminal = true;
    loop {
        let n = match conn.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if shared.vm_ended.load(Ordering::Acquire) {
                    return Ok(());
                }
                continue;
            }
            Err(e) => return Err(e),
        };
        let data = &buf[..n];
        // The log first: it records what the app wrote even while our reader is stalled
        // (at most this one chunk ahead of it).
        if let Some(log) = &app.log {
            log.lock()
                .unwrap_or_else(|p| p.into_inner())
                .record(stream, data);
        }
        if terminal {
            let r = match stream {
                Stream::Stdout => {
                    let mut o = io::stdout().lock();
                    o.write_all(data).and_then(|()| o.flush())
                }
                Stream::Stderr => io::stderr().lock().write_all(data),
            };
            if let Err(e) = r {
                tracing::debug!("app {} {}: {e}", app.name, stream.as_str());
                terminal = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ark_pod_spec::test_support::manifest as manifest_with_apps;

    fn listen(dir: &Path) -> (std::path::PathBuf, Arc<AtomicBool>, JoinHandle<()>) {
        let sock = dir.join("v.sock_1027");
        let logs = dir.join("logs");
        std::fs::create_dir(&logs).unwrap();
        let ended = Arc::new(AtomicBool::new(false));
        let t = OutputListener::bind(&sock)
            .unwrap()
            .spawn(
                &manifest_with_apps(&["web"]),
                &dir.join("pod-manifest.json"),
                &logs,
                LogLimits::default(),
                ended.clone(),
            )
            .unwrap();
        (sock, ended, t)
    }

    fn connect(sock: &Path, app: &str, stream: Stream) -> UnixStream {
        let mut c = UnixStream::connect(sock).unwrap();
        let h = OutputHeader {
            app: app.into(),
            stream,
        };
        c.write_all(&h.to_frame()).unwrap();
        c
    }

    /// Our side's close: EOF (or a reset, for a refused connection).
    fn closed(mut c: UnixStream) -> bool {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut b = [0u8; 1];
        !matches!(c.read(&mut b), Err(e) if e.kind() == ErrorKind::WouldBlock)
    }

    #[test]
    fn logs_a_stream_and_closes_when_done() {
        let d = tempfile::tempdir().unwrap();
        let (sock, ended, t) = listen(d.path());
        let c = connect(&sock, "web", Stream::Stderr);
        (&c).write_all(b"line one\nbin\x00\xff").unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        assert!(closed(c));
        // The same stream again is refused.
        let again = connect(&sock, "web", Stream::Stderr);
        assert!(closed(again));
        ended.store(true, Ordering::Release);
        t.join().unwrap();
        let mut err: Vec<u8> = Vec::new();
        ark_os::applog::read_all(&d.path().join("logs"), "web", 1, |r| {
            assert_eq!(r.stream, Stream::Stderr);
            err.extend(r.output());
        })
        .unwrap();
        assert_eq!(err, b"line one\nbin\x00\xff");
    }

    #[test]
    fn hostile_headers_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let (sock, ended, t) = listen(d.path());
        let unknown = connect(&sock, "nope", Stream::Stdout);
        assert!(closed(unknown));
        let mut lie = UnixStream::connect(&sock).unwrap();
        lie.write_all(&u32::MAX.to_be_bytes()).unwrap();
        assert!(closed(lie));
        // A connection that never sends its header is dropped after the timeout.
        let silent = UnixStream::connect(&sock).unwrap();
        assert!(closed(silent));
        ended.store(true, Ordering::Release);
        t.join().unwrap();
    }
}
