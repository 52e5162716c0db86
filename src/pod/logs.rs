//! `ark logs`: an app's recorded output (`<pod dir>/logs`, [`ark_pod_spec::logs`]), stdout
//! records to one writer and stderr records to another, optionally following the live file
//! across rotations until the pod ends.

use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use ark_os::applog::LogFile;
use ark_pod_spec::logs::{format_timestamp, Record, Stream, MAX_MAX_FILES};
use ark_pod_spec::{PodLayout, PodManifest};
use rustix::fs::{Mode, OFlags};

/// How often `--follow` looks for new output.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, Default)]
pub struct LogsRequest {
    /// The app (needed when the pod has several with logs).
    pub app: Option<String>,
    pub follow: bool,
    /// Only records at most this old.
    pub since: Option<Duration>,
    /// Prefix each line with its record's timestamp.
    pub timestamps: bool,
}

/// Prints the app's log: stdout records to `out`, stderr records to `err`.
pub fn logs(
    ctx: &crate::Context,
    id: &str,
    req: &LogsRequest,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> super::Result<()> {
    super::error::typed(|| {
        let store = super::open_store(ctx)?;
        let pod = store.find(id)?;
        let layout = PodLayout::new(&pod.path);
        let manifest = PodManifest::load(&layout.manifest())
            .map_err(|e| anyhow::anyhow!("pod {}: {e}", pod.uuid))?;
        let app = pick_app(&manifest, req.app.as_deref())?;
        let logs = match open_dir(&pod.path, "logs") {
            Ok(d) => d,
            Err(_) if !req.follow => return Ok(()), // never ran: nothing logged
            Err(_) => {
                // Not started yet: wait for the stage1 to make it, or the pod to end.
                loop {
                    if let Ok(d) = open_dir(&pod.path, "logs") {
                        break d;
                    }
                    if ended(&store, &pod) {
                        return Ok(());
                    }
                    std::thread::sleep(FOLLOW_POLL);
                }
            }
        };
        let mut printer = Printer {
            out,
            err,
            timestamps: req.timestamps,
            since: req.since.map(since_timestamp),
            line_start: [true, true],
        };
        let r = print_log(&store, &pod, &logs, &app, req.follow, &mut printer);
        match r {
            // The reader went away (`ark logs | head`): not an error.
            Err(e) if is_broken_pipe(&e) => Ok(()),
            r => r,
        }
    })
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.downcast_ref::<io::Error>()
        .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
}

fn open_dir(base: &std::path::Path, rel: &str) -> anyhow::Result<OwnedFd> {
    let path = base.join(rel);
    rustix::fs::open(
        &path,
        OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::RDONLY,
        Mode::empty(),
    )
    .with_context(|| format!("{}", path.display()))
}

/// The app named, or the pod's only app with a log.
fn pick_app(m: &PodManifest, want: Option<&str>) -> anyhow::Result<String> {
    let logged: Vec<&str> = m
        .apps
        .iter()
        .filter(|a| !a.interactive)
        .map(|a| a.name.as_str())
        .collect();
    match want {
        Some(w) if logged.contains(&w) => Ok(w.to_string()),
        Some(w) if m.apps.iter().any(|a| a.name == w) => {
            bail!("app {w} is interactive: its output went to the terminal and is not logged")
        }
        Some(w) => bail!(
            "pod {} has no app {w:?} (apps: {})",
            m.uuid,
            logged.join(", ")
        ),
        None => match logged.as_slice() {
            [one] => Ok((*one).to_string()),
            [] => bail!("pod {} has no app with a log", m.uuid),
            many => bail!(
                "pod {} has several apps ({}): pick one with --app",
                m.uuid,
                many.join(", ")
            ),
        },
    }
}

/// The pod's end: nobody holds its lock any more. The stage1 holds it until it exits, after
/// the last output was logged (`status/pod.json` is no sign: it is reserved at the start).
fn ended(store: &super::store::PodStore, pod: &super::store::PodRef) -> bool {
    match store.refind(&pod.uuid) {
        Ok(p) => !store.is_locked(&p).unwrap_or(false),
        Err(_) => true,
    }
}

fn print_log(
    store: &super::store::PodStore,
    pod: &super::store::PodRef,
    logs: &OwnedFd,
    app: &str,
    follow: bool,
    p: &mut Printer<'_>,
) -> anyhow::Result<()> {
    // Rotated files, oldest first (as many as any limit keeps), then the live one. Files read to
    // their end stay open in `done` (so their inodes cannot be reused while they are known):
    // after a rotation, every rotated file not among them is one the follower never saw.
    let mut done: Vec<LogFile> = Vec::new();
    read_unseen_rotated(logs, app, &mut done, p)?;
    let mut live = LogFile::open(logs, app, 0)?;
    // A rotation between the two opens left the file that was live unread.
    read_unseen_rotated(logs, app, &mut done, p)?;
    if let Some(f) = &mut live {
        read(f, p)?;
    }
    if !follow {
        return Ok(());
    }
    loop {
        // Checked before the last read, so what was written before the end is printed.
        let pod_ended = ended(store, pod);
        if let Some(f) = &mut live {
            read(f, p)?;
        }
        // Rotated (or created): finish the old file, then any file rotated since that was
        // never live while we looked (several rotations between two polls), then the new one.
        if let Some(new) = LogFile::open(logs, app, 0)? {
            if live.as_ref().and_then(LogFile::ino) != new.ino() {
                if let Some(mut old) = live.take() {
                    read(&mut old, p)?;
                    done.push(old);
                }
                read_unseen_rotated(logs, app, &mut done, p)?;
                let mut new = new;
                read(&mut new, p)?;
                live = Some(new);
            }
        }
        if pod_ended {
            return Ok(());
        }
        std::thread::sleep(FOLLOW_POLL);
    }
}

/// Reads, oldest first, every rotated file whose inode is not in `done`, and adds it there;
/// forgets files of `done` that are no longer in the directory.
fn read_unseen_rotated(
    logs: &OwnedFd,
    app: &str,
    done: &mut Vec<LogFile>,
    p: &mut Printer<'_>,
) -> anyhow::Result<()> {
    let mut present = Vec::new();
    for n in (1..MAX_MAX_FILES).rev() {
        if let Some(f) = LogFile::open(logs, app, n)? {
            present.push(f);
        }
    }
    let known = |f: &LogFile, done: &[LogFile]| {
        f.ino()
            .is_some_and(|i| done.iter().any(|d| d.ino() == Some(i)))
    };
    let mut unseen = Vec::new();
    for f in present.iter() {
        if !known(f, done) {
            unseen.push(f.ino());
        }
    }
    done.retain(|d| present.iter().any(|f| f.ino() == d.ino()));
    for mut f in present {
        if unseen.contains(&f.ino()) {
            read(&mut f, p)?;
            done.push(f);
        }
    }
    Ok(())
}

fn read(f: &mut LogFile, p: &mut Printer<'_>) -> anyhow::Result<()> {
    let mut failed = None;
    f.read_available(|r| {
        if failed.is_none() {
            failed = p.print(r).err();
        }
    })?;
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

struct Printer<'a> {
    out: &'a mut dyn Write,
    err: &'a mut dyn Write,
    timestamps: bool,
    since: Option<String>,
    /// Per stream: the next record starts a line (for `--timestamps`).
    line_start: [bool; 2],
}

impl Printer<'_> {
    fn print(&mut self, r: &Record<'_>) -> io::Result<()> {
        // Timestamps are fixed-width RFC 3339 UTC: string order is time order.
        if self.since.as_deref().is_some_and(|s| r.timestamp < s) {
            return Ok(());
        }
        let (w, slot) = match r.stream {
            Stream::Stdout => (&mut *self.out, 0),
            Stream::Stderr => (&mut *self.err, 1),
        };
        if self.timestamps && self.line_start[slot] {
            w.write_all(r.timestamp.as_bytes())?;
            w.write_all(b" ")?;
        }
        w.write_all(r.data)?;
        if r.full_line {
            w.write_all(b"\n")?;
        }
        self.line_start[slot] = r.full_line;
        w.flush()
    }
}

/// The timestamp `ago` before now.
fn since_timestamp(ago: Duration) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format_timestamp(now.saturating_sub(ago).as_nanos())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(apps: &str) -> PodManifest {
        PodManifest::from_json(
            format!(r#"{{"version":1,"uuid":"ab12","apps":[{apps}],"stage1":{{"flavor":"ns"}}}}"#)
                .as_bytes(),
        )
        .unwrap()
    }
    const WEB: &str = r#"{"name":"web","image":{"id":"sha256:x"},"exec":["true"]}"#;
    const DB: &str = r#"{"name":"db","image":{"id":"sha256:x"},"exec":["true"]}"#;

    #[test]
    fn picks_the_app() {
        assert_eq!(pick_app(&manifest(WEB), None).unwrap(), "web");
        let two = manifest(&format!("{WEB},{DB}"));
        assert!(pick_app(&two, None)
            .unwrap_err()
            .to_string()
            .contains("--app"));
        assert_eq!(pick_app(&two, Some("db")).unwrap(), "db");
        assert!(pick_app(&two, Some("x")).is_err());
    }

    #[test]
    fn prints_streams_apart_with_timestamps_and_since() {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut p = Printer {
            out: &mut out,
            err: &mut err,
            timestamps: true,
            since: Some(format_timestamp(1_000)),
            line_start: [true, true],
        };
        let old = format_timestamp(999);
        let new = format_timestamp(2_000);
        for (ts, stream, full, data) in [
            (&old, Stream::Stdout, true, &b"too old"[..]),
            (&new, Stream::Stdout, false, b"a"),
            (&new, Stream::Stdout, true, b"b"),
            (&new, Stream::Stderr, true, b"e"),
        ] {
            p.print(&Record {
                timestamp: ts,
                stream,
                full_line: full,
                data,
            })
            .unwrap();
        }
        assert_eq!(String::from_utf8(out).unwrap(), format!("{new} ab\n"));
        assert_eq!(String::from_utf8(err).unwrap(), format!("{new} e\n"));
    }

    /// Two rotations between two polls: the follower held the file now at `.log.2`; the one
    /// at `.log.1` was never live while it looked and must be printed before the new live file.
    #[test]
    fn a_file_rotated_past_the_follower_is_still_printed() {
        let dir = tempfile::tempdir().unwrap();
        let write = |n: u32, text: &[u8]| {
            let mut rec = Vec::new();
            ark_pod_spec::logs::encode_records(
                &mut rec,
                &format_timestamp(1),
                Stream::Stdout,
                text,
            );
            std::fs::write(
                dir.path().join(ark_pod_spec::logs::log_file_name("a", n)),
                rec,
            )
            .unwrap();
        };
        write(2, b"first\n");
        write(1, b"second\n");
        let logs: OwnedFd = std::fs::File::open(dir.path()).unwrap().into();
        // The follower read the first file to its end while it was live.
        let mut held = LogFile::open(&logs, "a", 2).unwrap().unwrap();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut p = Printer {
            out: &mut out,
            err: &mut err,
            timestamps: false,
            since: None,
            line_start: [true, true],
        };
        read(&mut held, &mut p).unwrap();
        let mut done = vec![held];
        read_unseen_rotated(&logs, "a", &mut done, &mut p).unwrap();
        // Nothing twice on a second look.
        read_unseen_rotated(&logs, "a", &mut done, &mut p).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "first\nsecond\n");
    }
}
