//! The files under `<pod dir>/status/` the stage1 keeps a pod's statuses in (the records and
//! messages themselves are contract: `ark_pod_spec::status`). guest-init applies messages to it
//! with [`StatusDir::apply`] (file transport); the stage1 calls [`StatusDir::finish`] once
//! guest-init is gone, which writes `pod.json`.
//!
//! A full disk must not lose a status (the apps' own files may share the filesystem): the
//! stage1 calls [`StatusDir::reserve`] before the pod starts, which gives every status file
//! and a spare of each exactly [`STATUS_FILE_SIZE`] allocated bytes. A write then fills the
//! spare in place (the JSON padded with spaces, which JSON readers skip) and swaps it with the
//! file in one `renameat2(RENAME_EXCHANGE)`: no block is allocated or freed, and a crash or a
//! reader opening the file sees the old status or the new one, never a torn one (only a reader
//! still holding the file open across two later writes could see the second one land in it).
//! Without a reservation (an older pod directory) a write is the usual temp file + rename.

use std::io;
use std::path::{Path, PathBuf};

use ark_pod_spec::status::{
    pod_exit_code, AppState, AppStatus, PodExit, StatusMessage, MAX_TEXT, STATUS_FILE_SIZE,
};
use ark_pod_spec::PodManifest;

/// The pod's status directory (`<pod dir>/status`, `/ark/status` inside ns/fly pods).
#[derive(Debug, Clone)]
pub struct StatusDir {
    dir: PathBuf,
}

impl StatusDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        StatusDir { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn app_file(&self, app: &str) -> PathBuf {
        self.dir.join(format!("{app}.json"))
    }

    pub fn pod_file(&self) -> PathBuf {
        self.dir.join("pod.json")
    }

    /// Writes `<app>.json`; durably (fsync) once the app has exited.
    pub fn write_app(&self, status: &AppStatus) -> io::Result<()> {
        // The name becomes a path: a status from a guest (kvm's status channel) naming
        // `../x` must not write outside the status directory.
        if !ark_pod_spec::manifest::is_dns_label(&status.app) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("status for {:?}: not an app name", status.app),
            ));
        }
        let mut status = status.clone();
        if let Some(e) = &mut status.error {
            cut(e);
        }
        let json = serde_json::to_vec_pretty(&status).expect("status serializes");
        write_status(
            &self.app_file(&status.app),
            &json,
            status.state == AppState::Exited,
        )
    }

    /// The spare that makes the writes of `file` need no new space (see the module docs).
    fn spare_of(file: &Path) -> PathBuf {
        let name = file.file_name().map(|n| n.to_string_lossy().into_owned());
        file.with_file_name(format!(".{}.spare", name.unwrap_or_default()))
    }

    /// Pre-allocates every app's status file and `pod.json` (and their spares), so that the
    /// pod's end can be recorded even when its filesystem is full by then. Keeps a status
    /// already written. Call before the pod's apps run.
    pub fn reserve(&self, manifest: &PodManifest) -> io::Result<()> {
        let files = manifest
            .apps
            .iter()
            .map(|a| self.app_file(&a.name))
            .chain([self.pod_file()]);
        for file in files {
            reserve_file(&file).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("reserve space for {}: {e}", file.display()),
                )
            })?;
        }
        Ok(())
    }

    /// Reserves one app's status file and spare (an app added to a running sandbox).
    pub fn reserve_app(&self, app: &str) -> io::Result<()> {
        if !ark_pod_spec::manifest::is_dns_label(app) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("status for {app:?}: not an app name"),
            ));
        }
        let file = self.app_file(app);
        reserve_file(&file).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("reserve space for {}: {e}", file.display()),
            )
        })
    }

    /// Removes an app's status file and its spare (a removed sandbox app).
    pub fn remove_app(&self, app: &str) -> io::Result<()> {
        let file = self.app_file(app);
        for f in [Self::spare_of(&file), file] {
            match std::fs::remove_file(&f) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    /// Records one message (pod_done needs nothing: `finish` writes pod.json).
    pub fn apply(&self, msg: &StatusMessage) -> std::io::Result<()> {
        match msg {
            StatusMessage::AppStarted {
                app,
                pid,
                started_at,
            } => self.write_app(&AppStatus::running(app, *pid, *started_at)),
            StatusMessage::AppExited { status } => self.write_app(status),
            StatusMessage::PodDone => Ok(()),
        }
    }

    pub fn read_app(&self, app: &str) -> Option<AppStatus> {
        let bytes = std::fs::read(self.app_file(app)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub fn read_pod(&self) -> Option<PodExit> {
        let bytes = std::fs::read(self.pod_file()).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Called by the stage1 once stage2 is gone: every app without a final status gets one
    /// saying so (`reason`, or a default), then `pod.json` is written. Returns it.
    pub fn finish(&self, manifest: &PodManifest, reason: Option<&str>) -> std::io::Result<PodExit> {
        self.finish_with(manifest, reason, &[])
    }

    /// [`StatusDir::finish`], with the final statuses the stage1 itself saw go by (kvm: the
    /// status channel's messages): one whose file could not be written is written now rather
    /// than lost.
    pub fn finish_with(
        &self,
        manifest: &PodManifest,
        reason: Option<&str>,
        observed: &[AppStatus],
    ) -> std::io::Result<PodExit> {
        let mut statuses = Vec::new();
        let mut missing = Vec::new();
        for app in &manifest.apps {
            let seen = observed
                .iter()
                .rev()
                .find(|s| s.app == app.name && s.state == AppState::Exited);
            let st = match (self.read_app(&app.name), seen) {
                (Some(s), _) if s.state == AppState::Exited => s,
                (_, Some(s)) => {
                    self.write_app(s)?;
                    s.clone()
                }
                (prev, None) => {
                    missing.push(app.name.clone());
                    let mut s = AppStatus::failed(
                        &app.name,
                        reason.unwrap_or("stage2 ended before reporting this app's exit"),
                        None,
                    );
                    if let Some(p) = prev {
                        s.pid = p.pid;
                        s.started_at = p.started_at;
                    }
                    self.write_app(&s)?;
                    s
                }
            };
            statuses.push(st);
        }
        let exit_code = pod_exit_code(manifest, |n| statuses.iter().find(|s| s.app == n));
        let reason = match (reason, missing.is_empty()) {
            (Some(r), _) => Some(r.to_string()),
            (None, false) => Some(format!(
                "stage2 ended without reporting {}",
                missing.join(", ")
            )),
            (None, true) => None,
        };
        let exit = PodExit {
            exit_code,
            finished_at: ark_pod_spec::now_unix_ms(),
            reason,
        };
        let mut stored = exit.clone();
        if let Some(r) = &mut stored.reason {
            cut(r);
        }
        let json = serde_json::to_vec_pretty(&stored).expect("pod exit serializes");
        write_status(&self.pod_file(), &json, true)?;
        Ok(exit)
    }
}

/// Cuts a free-text field to [`MAX_TEXT`] bytes (on a character boundary).
fn cut(s: &mut String) {
    if s.len() > MAX_TEXT {
        let mut end = MAX_TEXT - 3;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("...");
    }
}

/// `json` padded with spaces and a final newline to exactly [`STATUS_FILE_SIZE`] bytes.
fn padded(json: &[u8]) -> io::Result<Vec<u8>> {
    if json.len() >= STATUS_FILE_SIZE {
        return Err(io::Error::other(format!(
            "status of {} bytes does not fit in {STATUS_FILE_SIZE}",
            json.len()
        )));
    }
    let mut v = json.to_vec();
    v.resize(STATUS_FILE_SIZE - 1, b' ');
    v.push(b'\n');
    Ok(v)
}

fn is_reserved(file: &Path) -> bool {
    std::fs::metadata(file).is_ok_and(|m| m.len() == STATUS_FILE_SIZE as u64)
}

/// Gives `file`'s spare its allocated [`STATUS_FILE_SIZE`] bytes (content irrelevant).
fn prepare_spare(file: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    let spare = StatusDir::spare_of(file);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&spare)?;
    let len =
        libc::off_t::try_from(STATUS_FILE_SIZE).expect("STATUS_FILE_SIZE (4 KiB) fits in off_t");
    // SAFETY: fallocate(2) on a descriptor we own. Best effort: a filesystem without it
    // still allocates the blocks on the write below.
    unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, len) };
    // No fsync: the space is taken as the data is written (a crash ends the pod anyway), and
    // the pod's start does not pay for a flush.
    f.write_all_at(&padded(b"")?, 0)
}

fn reserve_file(file: &Path) -> io::Result<()> {
    prepare_spare(file)?;
    if !is_reserved(file) {
        // Absent (a placeholder then: blank, which reads as no status) or written unreserved:
        // swap in a padded copy, then give the spare (the old file, if any) its size back.
        let old = std::fs::read(file).ok();
        let keep = old
            .as_deref()
            .filter(|b| serde_json::from_slice::<serde_json::Value>(b).is_ok());
        // Durable only when it carries a status (a blank placeholder may as well be lost).
        write_status(file, keep.unwrap_or_default(), keep.is_some())?;
        prepare_spare(file)?;
    }
    Ok(())
}

/// Writes one status file: into the pre-allocated spare and swapped in when reserved (see
/// the module docs), else temp file + rename. `durable`: fsync before it becomes visible.
fn write_status(file: &Path, json: &[u8], durable: bool) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let spare = StatusDir::spare_of(file);
    if !is_reserved(&spare) {
        let mut json = json.to_vec();
        json.push(b'\n');
        return if durable {
            crate::write_atomic(file, &json)
        } else {
            crate::write_atomic_volatile(file, &json)
        };
    }
    let bytes = padded(json)?;
    let f = std::fs::OpenOptions::new().write(true).open(&spare)?;
    f.write_all_at(&bytes, 0)?;
    if durable {
        f.sync_data()?;
    }
    drop(f);
    if file.exists() {
        match exchange(&spare, file) {
            Ok(()) => return Ok(()),
            // A filesystem without RENAME_EXCHANGE: a plain rename, then a new spare (which
            // needs space again: best effort, later writes fall back if it fails).
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) => {}
            Err(e) => return Err(e),
        }
    }
    std::fs::rename(&spare, file)?;
    let _ = prepare_spare(file);
    Ok(())
}

/// Swaps two directory entries atomically (`renameat2(RENAME_EXCHANGE)`; via syscall(2), which
/// every libc has).
fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
    };
    let (a, b) = (c(a)?, c(b)?);
    // SAFETY: two NUL-terminated paths that outlive the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use ark_pod_spec::test_support::{exited, manifest};

    /// A status naming a path instead of an app (a hostile guest's `app_started` for
    /// `../x`) is refused, and nothing appears outside the status directory.
    #[test]
    fn a_status_for_a_path_is_refused() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("status");
        std::fs::create_dir_all(&dir).unwrap();
        let sd = StatusDir::new(&dir);
        for name in ["../escaped", "a/b", "", "/abs"] {
            let msg = StatusMessage::AppStarted {
                app: name.into(),
                pid: 2,
                started_at: 1,
            };
            assert!(sd.apply(&msg).is_err(), "{name:?}");
            assert!(sd.reserve_app(name).is_err(), "{name:?}");
        }
        assert!(!base.path().join("escaped.json").exists());
        assert!(
            std::fs::read_dir(&dir).unwrap().next().is_none(),
            "nothing written"
        );
    }

    #[test]
    fn finish_fills_missing_and_writes_pod_json() {
        let dir = std::env::temp_dir().join(format!("ark-status-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sd = StatusDir::new(&dir);
        let m = manifest(&["a", "b"]);
        sd.apply(&StatusMessage::AppExited {
            status: exited("a", Some(0), None),
        })
        .unwrap();
        sd.apply(&StatusMessage::AppStarted {
            app: "b".into(),
            pid: 9,
            started_at: 4,
        })
        .unwrap();
        assert_eq!(sd.read_app("b").unwrap().state, AppState::Running);
        let exit = sd.finish(&m, None).unwrap();
        assert_eq!(exit.exit_code, 125);
        assert!(exit.reason.unwrap().contains("b"));
        let b = sd.read_app("b").unwrap();
        assert_eq!(b.state, AppState::Exited);
        assert_eq!(b.pid, Some(9));
        assert!(b.error.is_some());
        assert_eq!(sd.read_pod().unwrap().exit_code, 125);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reserved_files_keep_their_size_and_blocks() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile_dir("reserve");
        let sd = StatusDir::new(&dir);
        let m = manifest(&["a", "b"]);
        // A status written before the reservation (unreserved) survives it.
        sd.write_app(&exited("b", Some(4), None)).unwrap();
        sd.reserve(&m).unwrap();
        for f in [sd.app_file("a"), sd.app_file("b"), sd.pod_file()] {
            for f in [StatusDir::spare_of(&f), f] {
                let md = std::fs::metadata(&f).unwrap();
                assert_eq!(md.len(), STATUS_FILE_SIZE as u64, "{}", f.display());
                assert!(
                    md.blocks() * 512 >= STATUS_FILE_SIZE as u64,
                    "{}",
                    f.display()
                );
            }
        }
        assert_eq!(sd.read_app("a"), None, "a blank reservation is no status");
        assert_eq!(sd.read_app("b").unwrap().exit_code, Some(4));
        let inodes = |f: &Path| {
            let spare = StatusDir::spare_of(f);
            let mut v = [
                std::fs::metadata(f).unwrap().ino(),
                std::fs::metadata(spare).unwrap().ino(),
            ];
            v.sort();
            v
        };
        let before = inodes(&sd.app_file("a"));
        sd.apply(&StatusMessage::AppStarted {
            app: "a".into(),
            pid: 9,
            started_at: 4,
        })
        .unwrap();
        assert_eq!(sd.read_app("a").unwrap().state, AppState::Running);
        let mut long = exited("a", None, Some(9));
        long.error = Some("é".repeat(5000));
        sd.write_app(&long).unwrap();
        let a = sd.read_app("a").unwrap();
        assert_eq!(a.signal, Some(9));
        assert!(a.error.unwrap().len() <= MAX_TEXT);
        // The same two files all along: swapped, never new ones.
        assert_eq!(inodes(&sd.app_file("a")), before);
        assert_eq!(
            std::fs::metadata(sd.app_file("a")).unwrap().len(),
            STATUS_FILE_SIZE as u64
        );
        let exit = sd.finish(&m, None).unwrap();
        assert_eq!(exit.exit_code, 137);
        assert_eq!(sd.read_pod().unwrap().exit_code, 137);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn finish_uses_what_the_stage1_saw_when_the_file_is_stale() {
        let dir = tempfile_dir("observed");
        let sd = StatusDir::new(&dir);
        let m = manifest(&["a", "b"]);
        sd.reserve(&m).unwrap();
        // On disk "a" is still running (its exit could not be written); the stage1 saw it.
        sd.write_app(&AppStatus::running("a", 2, 1)).unwrap();
        let seen = [exited("a", Some(3), None), exited("b", Some(0), None)];
        let exit = sd.finish_with(&m, None, &seen).unwrap();
        assert_eq!((exit.exit_code, exit.reason), (3, None));
        assert_eq!(sd.read_app("a").unwrap().exit_code, Some(3));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir(what: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ark-status-{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
