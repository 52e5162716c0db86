//! Privilege separation for `docker://` fetches run as root.
//!
//! The parent re-executes ark itself (`ark __registry-fetch-child`) as uid/gid 65534
//! (nobody/nogroup) with no supplementary groups, an empty capability bounding set, no ambient
//! capabilities, `no_new_privs`, an empty environment (but proxies and logging), `/` as its
//! working directory, `PDEATHSIG`, and no fd but its two pipes and stderr. That child does everything that parses registry or
//! signature bytes: HTTP, TLS, authentication, manifests, and the OpenPGP verification (with the
//! trusted keys handed to it, so it never reads the key store). It owns no file: it streams the
//! layout back over its stdout in frames, and the parent writes `dest` itself, re-checking every
//! blob's size and digest, so only verified blobs reach the store. Before reading anything, the
//! child also denies itself, with seccomp, the syscalls it never needs (exec, namespaces, mounts,
//! ptrace, BPF, io_uring, keyrings, modules). The parent answers its requests for lookaside
//! signatures (the signature directory may not be readable by nobody).
//!
//! The parent believes nothing the child reports that it can check itself: it verifies the
//! signature a second time over the digests it computed (signatures and keys are local files,
//! so this parses no registry bytes), and checks the reported name, tag and index against what
//! was asked and what it wrote. A child subverted by a hostile registry can make a fetch fail,
//! not let an unverified image in.

use std::io::{BufRead, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::registry::request::{Fetched, PullRequest};
use super::registry::sink::{DirSink, LayoutSink};
use crate::trust::signing::{self, DockerReference};

/// The unprivileged identity of the fetch child (Debian's nobody:nogroup).
pub const FETCH_UID: u32 = 65534;
pub const FETCH_GID: u32 = 65534;
/// The hidden subcommand the child runs.
pub const CHILD_COMMAND: &str = "__registry-fetch-child";
/// Largest frame payload accepted from the child (data chunks are far smaller).
const MAX_FRAME: usize = 8 << 20;
/// Capacity asked for the pipe from the child: its writes are 1 MiB (its `BufWriter`).
const PIPE_SIZE: libc::c_int = 1 << 20;

// Frame tags, child → parent.
const BEGIN_BLOB: u8 = b'B';
const DATA: u8 = b'D';
const END_BLOB: u8 = b'E';
const FILE: u8 = b'F';
const WANT_SIGNATURES: u8 = b'S';
const RESULT: u8 = b'R';
const ERROR: u8 = b'X';

/// Whether fetches run in an unprivileged child: whenever ark runs as root.
pub fn should_separate() -> bool {
    nix::unistd::geteuid().is_root()
}

fn write_frame(w: &mut impl Write, tag: u8, payload: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(payload.len()).expect("frames are small");
    w.write_all(&[tag])?;
    w.write_all(&len.to_be_bytes())?;
    w.write_all(payload)
}

/// Reads one frame into `payload` (reused from frame to frame) and returns its tag.
fn read_frame(r: &mut impl Read, payload: &mut Vec<u8>) -> Result<Option<u8>> {
    let mut head = [0u8; 5];
    match r.read_exact(&mut head) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e).context("reading from the fetch child"),
    }
    let len = u32::from_be_bytes(head[1..].try_into().expect("4 bytes")) as usize;
    if len > MAX_FRAME {
        bail!("fetch child sent an oversized frame ({len} bytes)");
    }
    payload.resize(len, 0);
    r.read_exact(payload)
        .context("fetch child's output ended mid-frame")?;
    Ok(Some(head[0]))
}

#[derive(Serialize, Deserialize)]
struct BlobHeader {
    digest: String,
    size: u64,
}

#[derive(Serialize, Deserialize)]
struct FileFrame {
    name: String,
    data: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct SignatureReply {
    signatures: Vec<Vec<u8>>,
    error: Option<String>,
}

/// Environment variables the child keeps (proxies; logging filter).
const KEPT_ENV: &[&str] = &[
    "ARK_LOG",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
    "all_proxy",
];

fn spawn_child() -> Result<Child> {
    // Exec through an fd opened here: the binary's directories need not be searchable by nobody.
    let exe = std::env::current_exe().context("locating the ark binary")?;
    let exe_file =
        std::fs::File::open(&exe).with_context(|| format!("opening {}", exe.display()))?;
    let exe_path = format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&exe_file)
    );
    let mut cmd = Command::new(&exe_path);
    cmd.arg0("ark");
    if tracing::level_filters::LevelFilter::current() >= tracing::Level::DEBUG {
        cmd.arg("--debug");
    }
    cmd.arg(CHILD_COMMAND)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for k in KEPT_ENV {
        if let Some(v) = std::env::var_os(k) {
            cmd.env(k, v);
        }
    }
    let parent = rustix::process::getpid().as_raw_nonzero().get();
    // SAFETY: between fork and exec only async-signal-safe syscalls are made; no allocation.
    unsafe {
        cmd.pre_exec(move || {
            let check = |r: libc::c_int| {
                if r == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            };
            // Its pipes (already on 0 and 1) and stderr only: no fd this process opened or
            // inherited without close-on-exec reaches the code that parses registry bytes.
            ark_os::fds::cloexec_from_in_child(ark_os::fds::FIRST_NON_STDIO_FD)?;
            check(libc::setgroups(0, std::ptr::null()))?;
            check(libc::setresgid(FETCH_GID, FETCH_GID, FETCH_GID))?;
            // Empty the bounding set (needs CAP_SETPCAP, so before setuid); EINVAL past the last cap.
            for cap in 0..64 {
                if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0
                    && *libc::__errno_location() != libc::EINVAL
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            check(libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            ))?;
            // Leaving uid 0 clears the permitted and effective sets (no SECBIT_KEEP_CAPS).
            check(libc::setresuid(FETCH_UID, FETCH_UID, FETCH_UID))?;
            check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
            // Only now: credential changes clear the parent-death signal. If the parent is
            // already gone, don't run at all.
            check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0))?;
            if libc::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| {
            format!(
                "starting the unprivileged fetch child ({} as uid {FETCH_UID}; in a user namespace, that uid must be mapped)",
                exe.display()
            )
        })?;
    drop(exe_file);
    Ok(child)
}

/// Runs the pull in the unprivileged child and writes what it sends into `dir`.
pub fn pull_in_child(
    request: &PullRequest,
    dir: &mut DirSink,
    signature_dir: Option<&Path>,
) -> Result<Fetched> {
    let reference = DockerReference::parse(&request.reference)?;
    let mut child = spawn_child()?;
    let result = drive_child(&mut child, request, dir, signature_dir, &reference);
    if result.is_err() {
        let _ = child.kill();
    }
    let status = child.wait().context("waiting for the fetch child")?;
    let fetched = result?;
    if !status.success() {
        bail!("the fetch child failed ({status})");
    }
    check_child_result(request, &reference, dir, signature_dir, &fetched)?;
    Ok(fetched)
}

/// Trusts nothing the child says that this process can check from what it wrote itself: the
/// name and tag must be the requested ones, the manifest (and index) must be blobs this process
/// hashed, an index must name the manifest, and the signature is verified again here (from
/// local files and the store's keys only, so no registry bytes are parsed for it) so a child
/// subverted by a hostile registry cannot wave an unsigned image through.
fn check_child_result(
    request: &PullRequest,
    reference: &DockerReference,
    dir: &DirSink,
    signature_dir: Option<&Path>,
    fetched: &Fetched,
) -> Result<()> {
    // What the child reports is quoted escaped ({:?}) until it is found to be what was asked
    // or what this process hashed.
    let tag = reference.tag_or_latest().map(str::to_string);
    if fetched.name != reference.name() || fetched.tag != tag {
        bail!(
            "fetch child reported {:?}:{:?}, not the requested {reference}",
            fetched.name,
            fetched.tag
        );
    }
    if dir.verified_blob(&fetched.manifest_digest).is_none() {
        bail!(
            "fetch child reported manifest {:?}, which it did not send",
            fetched.manifest_digest
        );
    }
    let signed = match &fetched.index_digest {
        Some(index_digest) => {
            let index = dir.verified_blob(index_digest).ok_or_else(|| {
                anyhow!("fetch child reported index {index_digest:?}, which it did not send")
            })?;
            let index: serde_json::Value = serde_json::from_slice(&index).map_err(|e| {
                anyhow!(
                    "image index {index_digest} is not JSON: {}",
                    e.to_string().escape_debug()
                )
            })?;
            let names_manifest = index["manifests"].as_array().is_some_and(|m| {
                m.iter()
                    .any(|d| d["digest"].as_str() == Some(fetched.manifest_digest.as_str()))
            });
            if !names_manifest {
                bail!(
                    "image index {index_digest} does not name manifest {}",
                    fetched.manifest_digest
                );
            }
            index_digest
        }
        None => &fetched.manifest_digest,
    };
    if let Some(d) = &reference.digest {
        if d != signed {
            bail!("fetch child reported {signed}, not the requested {d}");
        }
    }
    if let Some(keys) = &request.keys {
        let sigs = match signature_dir {
            Some(d) => signing::read_lookaside(d, reference, signed)?,
            None => Vec::new(),
        };
        signing::verify_simple_signing_with(keys, reference, signed, &sigs)?;
    }
    Ok(())
}

fn drive_child(
    child: &mut Child,
    request: &PullRequest,
    dir: &mut DirSink,
    signature_dir: Option<&Path>,
    reference: &DockerReference,
) -> Result<Fetched> {
    let mut to_child = child.stdin.take().expect("piped stdin");
    let mut from_child = child.stdout.take().expect("piped stdout");
    // A pipe holds 64 KiB by default: the child's 1 MiB writes would each take 16 round trips
    // between the two processes. Best effort: a smaller pipe is only slower.
    let _ = nix::fcntl::fcntl(
        std::os::fd::AsRawFd::as_raw_fd(&from_child),
        nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_SIZE),
    );
    // Unbuffered: data frames are read straight into `payload`, not copied through a buffer.
    let mut payload = Vec::new();
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    to_child
        .write_all(&line)
        .context("sending the request to the fetch child")?;
    loop {
        let Some(tag) = read_frame(&mut from_child, &mut payload)? else {
            let status = child.wait().context("waiting for the fetch child")?;
            bail!("the fetch child exited without a result ({status})");
        };
        match tag {
            BEGIN_BLOB => {
                let h: BlobHeader = parse_frame("begin-blob", &payload)?;
                dir.begin_blob(&h.digest, h.size)?;
            }
            DATA => dir.data(&payload)?,
            END_BLOB => dir.end_blob()?,
            FILE => {
                let f: FileFrame = parse_frame("file", &payload)?;
                dir.file(&f.name, &f.data)?;
            }
            WANT_SIGNATURES => {
                let digest = String::from_utf8(payload.clone())
                    .context("fetch child's want-signatures frame is not UTF-8")?;
                let reply = match signature_dir {
                    None => SignatureReply {
                        signatures: Vec::new(),
                        error: None,
                    },
                    Some(d) => match signing::read_lookaside(d, reference, &digest) {
                        Ok(signatures) => SignatureReply {
                            signatures,
                            error: None,
                        },
                        Err(e) => SignatureReply {
                            signatures: Vec::new(),
                            error: Some(format!("{e:#}")),
                        },
                    },
                };
                let mut line = serde_json::to_vec(&reply)?;
                line.push(b'\n');
                to_child
                    .write_all(&line)
                    .context("answering the fetch child")?;
            }
            RESULT if dir.in_blob() => bail!("fetch child reported a result in mid-blob"),
            RESULT => return parse_frame("result", &payload),
            // The child's own words, registry strings in them already quoted with {:?}; but a
            // subverted child's: its control characters escaped (not its quotes and
            // backslashes, which escape_debug would double on text escaped once already).
            ERROR => bail!(
                "{}",
                super::escape::controls_escaped(&String::from_utf8_lossy(&payload))
            ),
            other => bail!("fetch child sent an unknown frame {other:#x}"),
        }
    }
}

/// A JSON frame from the child; the error names the frame kind. serde quotes pieces of its
/// input raw (`unknown variant `...``), and a subverted child chooses those bytes: escaped.
fn parse_frame<T: serde::de::DeserializeOwned>(kind: &str, payload: &[u8]) -> Result<T> {
    serde_json::from_slice(payload).map_err(|e| {
        anyhow!(
            "fetch child sent a bad {kind} frame ({} bytes): {}",
            payload.len(),
            e.to_string().escape_debug()
        )
    })
}

/// The child's side of the sink: frames on stdout, signature answers on stdin.
struct PipeSink<W: Write, R: BufRead> {
    out: W,
    input: R,
}

impl<W: Write, R: BufRead> PipeSink<W, R> {
    fn frame(&mut self, tag: u8, payload: &[u8]) -> Result<()> {
        write_frame(&mut self.out, tag, payload).context("writing to the parent")
    }
}

impl<W: Write, R: BufRead> LayoutSink for PipeSink<W, R> {
    fn begin_blob(&mut self, digest: &str, size: u64) -> Result<()> {
        let h = serde_json::to_vec(&BlobHeader {
            digest: digest.to_string(),
            size,
        })?;
        self.frame(BEGIN_BLOB, &h)
    }
    fn data(&mut self, chunk: &[u8]) -> Result<()> {
        self.frame(DATA, chunk)
    }
    fn end_blob(&mut self) -> Result<()> {
        self.frame(END_BLOB, &[])
    }
    fn file(&mut self, name: &str, data: &[u8]) -> Result<()> {
        let f = serde_json::to_vec(&FileFrame {
            name: name.to_string(),
            data: data.to_vec(),
        })?;
        self.frame(FILE, &f)
    }
    fn signatures(&mut self, digest: &str) -> Result<Vec<Vec<u8>>> {
        self.frame(WANT_SIGNATURES, digest.as_bytes())?;
        self.out.flush()?;
        let mut line = String::new();
        self.input
            .read_line(&mut line)
            .context("reading signatures from the parent")?;
        let reply: SignatureReply =
            serde_json::from_str(&line).context("bad signature reply from the parent")?;
        match reply.error {
            Some(e) => Err(anyhow!(e)),
            None => Ok(reply.signatures),
        }
    }
}

/// Describes this process's identity, refusing to go on with any privilege left.
fn check_unprivileged() -> Result<String> {
    use caps::CapSet;
    let uid = nix::unistd::getresuid()?;
    let gid = nix::unistd::getresgid()?;
    let groups = nix::unistd::getgroups()?;
    // SAFETY: a plain query.
    let nnp = unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) };
    let mut sets = Vec::new();
    let mut any = false;
    for (name, set) in [
        ("effective", CapSet::Effective),
        ("permitted", CapSet::Permitted),
        ("inheritable", CapSet::Inheritable),
        ("ambient", CapSet::Ambient),
        ("bounding", CapSet::Bounding),
    ] {
        let caps = caps::read(None, set).map_err(|e| anyhow!("reading capabilities: {e}"))?;
        any |= !caps.is_empty();
        let mut names: Vec<String> = caps.iter().map(|c| c.to_string()).collect();
        names.sort();
        sets.push(format!("{name}=[{}]", names.join(",")));
    }
    let desc = format!(
        "uid={}/{}/{} gid={}/{}/{} groups={:?} no_new_privs={nnp} {}",
        uid.real,
        uid.effective,
        uid.saved,
        gid.real,
        gid.effective,
        gid.saved,
        groups.iter().map(|g| g.as_raw()).collect::<Vec<_>>(),
        sets.join(" ")
    );
    if [uid.real, uid.effective, uid.saved]
        .iter()
        .any(|u| u.is_root())
        || any
        || nnp != 1
    {
        bail!("refusing to fetch with privileges left: {desc}");
    }
    Ok(desc)
}

/// Syscalls the fetch child never needs, denied with EPERM: what a compromised parser would use
/// to reach more of the kernel (namespaces, mounts, tracing, keyrings, BPF, io_uring, modules)
/// or to run another program.
const DENIED_SYSCALLS: &[i64] = &[
    libc::SYS_execve,
    libc::SYS_execveat,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_fsopen,
    libc::SYS_fsmount,
    libc::SYS_fsconfig,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_reboot,
    libc::SYS_acct,
    libc::SYS_syslog,
];

/// Installs the deny-list filter on this (still single-threaded) process; threads made later
/// inherit it. `no_new_privs` is already set, so no privilege is needed.
fn install_seccomp() -> Result<String> {
    use seccompiler::{BpfProgram, SeccompAction, SeccompFilter};
    let rules = DENIED_SYSCALLS.iter().map(|nr| (*nr, vec![])).collect();
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(|e: seccompiler::BackendError| anyhow!("seccomp: {e}"))?;
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(|e| anyhow!("seccomp: {e}"))?;
    let program: BpfProgram = filter.try_into().map_err(|e| anyhow!("seccomp: {e:?}"))?;
    seccompiler::apply_filter(&program).map_err(|e| anyhow!("seccomp: {e}"))?;
    // unshare(0) changes nothing; under the filter it must be refused.
    // SAFETY: a no-op syscall.
    if unsafe { libc::unshare(0) } != -1
        || std::io::Error::last_os_error().raw_os_error() != Some(libc::EPERM)
    {
        bail!("seccomp filter is not in effect");
    }
    // The kernel's word for it: 2 = filter mode.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    Ok(status
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| "?".into()))
}

/// The child's side: reads a [`PullRequest`] line on stdin, runs `pull` (the registry's work,
/// handed in so this module knows only the protocol) into a sink that streams the layout as
/// frames on stdout, ends with a result or an error frame.
pub fn child_main(
    pull: impl FnOnce(&PullRequest, &mut dyn LayoutSink) -> Result<Fetched>,
) -> Result<ExitCode> {
    let identity = check_unprivileged()?;
    let seccomp = install_seccomp()?;
    tracing::debug!("registry fetch child: {identity} seccomp={seccomp}");
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let mut line = String::new();
    input.read_line(&mut line).context("reading the request")?;
    let request: PullRequest =
        serde_json::from_str(&line).context("bad request from the parent")?;
    let stdout = std::io::stdout();
    let out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
    let mut sink = PipeSink { out, input };
    let outcome = pull(&request, &mut sink);
    let (tag, payload) = match outcome {
        Ok(f) => (RESULT, serde_json::to_vec(&f)?),
        Err(e) => (ERROR, format!("{e:#}").into_bytes()),
    };
    sink.frame(tag, &payload)?;
    sink.out.flush()?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::registry::client::ClientSettings;
    use crate::trust::keys::KeySet;

    fn request(keys: Option<KeySet>) -> PullRequest {
        PullRequest {
            reference: "127.0.0.1:5000/a/b:v1".into(),
            client: ClientSettings {
                insecure_http: false,
                insecure_tls: false,
                timeout: std::time::Duration::from_secs(1),
                credentials: None,
            },
            platform: None,
            keys,
            have_blobs: Default::default(),
            room: None,
        }
    }

    /// A frame that does not parse says which frame, escaped (serde quotes variant names raw).
    #[test]
    fn bad_frames_are_named_and_escaped() {
        let e = parse_frame::<BlobHeader>("begin-blob", b"{\"digest\": 1")
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.starts_with("fetch child sent a bad begin-blob frame (12 bytes): "),
            "{e}"
        );
        #[derive(Debug, Deserialize)]
        enum Kind {
            #[allow(dead_code)]
            Known,
        }
        let e = parse_frame::<Kind>("result", br#""\u001b[2Jx""#)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("bad result frame"), "{e}");
        assert!(!e.contains('\x1b') && e.contains("\\u{1b}[2Jx"), "{e}");
    }

    /// What a subverted child could claim is checked against what the parent wrote itself.
    #[test]
    fn parent_rechecks_what_the_child_reports() {
        let tmp = tempfile::tempdir().unwrap();
        let mut dir = DirSink::new(tmp.path(), false).unwrap();
        let manifest = br#"{"schemaVersion":2}"#;
        let digest = format!(
            "sha256:{}",
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(manifest))
        );
        dir.blob_bytes(&digest, manifest).unwrap();
        let reference = DockerReference::parse("127.0.0.1:5000/a/b:v1").unwrap();
        let good = Fetched {
            manifest_digest: digest.clone(),
            name: "127.0.0.1:5000/a/b".into(),
            tag: Some("v1".into()),
            index_digest: None,
        };
        check_child_result(&request(None), &reference, &dir, None, &good).unwrap();

        let renamed = Fetched {
            name: "127.0.0.1:5000/other".into(),
            ..good.clone()
        };
        let e = check_child_result(&request(None), &reference, &dir, None, &renamed);
        assert!(format!("{:#}", e.unwrap_err()).contains("not the requested"));

        let unsent = Fetched {
            manifest_digest: format!("sha256:{}", "0".repeat(64)),
            ..good.clone()
        };
        let e = check_child_result(&request(None), &reference, &dir, None, &unsent);
        assert!(format!("{:#}", e.unwrap_err()).contains("did not send"));

        // Verification on: with no signature, the parent refuses even if the child said yes.
        let keys = KeySet {
            name: "127.0.0.1:5000/a/b".into(),
            keys: Vec::new(),
        };
        let sigdir = tempfile::tempdir().unwrap();
        let e = check_child_result(
            &request(Some(keys)),
            &reference,
            &dir,
            Some(sigdir.path()),
            &good,
        );
        assert!(format!("{:#}", e.unwrap_err()).contains("is not signed"));
    }
}
