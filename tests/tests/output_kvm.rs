//! kvm pods' output over vsock, end to end in one VM: stdout and stderr apart and exact (no
//! CRLF, nothing added: the old serial console merged them and turned LF into CRLF), 16 MiB
//! of random bytes with the same sha256, a slow reader losing nothing, `ark logs -f`, the
//! host-side log rotating; and a fake guest end on the host's output socket (hostile
//! headers, lies about lengths, a flood) refused with one line, the pod unharmed.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use ark_pod_spec::logs::{OutputHeader, Stream, OUTPUT_PORT};
use ark_tests::output::streams_end_to_end;
use ark_tests::pods::PodEnv;
use ark_tests::skip;

/// The host closes a refused connection: reading ends (EOF or reset) within the header
/// timeout, never hangs.
fn refused(mut c: UnixStream, what: &str) {
    use std::io::ErrorKind::{TimedOut, WouldBlock};
    c.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut b = [0u8; 16];
    match c.read(&mut b) {
        Ok(0) => {}
        Ok(n) => panic!("{what}: the host sent {n} bytes"),
        Err(e) if matches!(e.kind(), WouldBlock | TimedOut) => panic!("{what}: still open"),
        Err(_) => {} // reset
    }
}

/// A fake guest end: what the vsock device would connect for a guest's connection to
/// OUTPUT_PORT, driven by the test.
fn hostile_guest(pod_dir: &Path) {
    let sock = pod_dir.join(format!("vsock.sock_{OUTPUT_PORT}"));
    let connect = || UnixStream::connect(&sock).expect("connect the output socket");
    let frame = |app: &str, stream| {
        OutputHeader {
            app: app.into(),
            stream,
        }
        .to_frame()
    };
    // A length far past the cap.
    let mut c = connect();
    c.write_all(&u32::MAX.to_be_bytes()).unwrap();
    refused(c, "huge header length");
    // A length that lies: 100 announced, 10 sent, then silence.
    let mut c = connect();
    c.write_all(&100u32.to_be_bytes()).unwrap();
    c.write_all(b"{\"app\":\"b").unwrap();
    refused(c, "short header");
    // An app the manifest does not have; a stream that is not one.
    let mut c = connect();
    c.write_all(&frame("nope", Stream::Stdout)).unwrap();
    refused(c, "unknown app");
    let mut c = connect();
    let body = br#"{"app":"busybox","stream":"stdin"}"#;
    c.write_all(&u32::try_from(body.len()).unwrap().to_be_bytes())
        .unwrap();
    c.write_all(body).unwrap();
    refused(c, "unknown stream");
    // The real app's stdout, already claimed by guest-init: no second writer.
    let mut c = connect();
    c.write_all(&frame("busybox", Stream::Stdout)).unwrap();
    let _ = c.write_all(b"FORGED OUTPUT\n");
    refused(c, "second stdout");
    // A flood of connections, held open.
    let flood: Vec<UnixStream> = (0..64).map(|_| connect()).collect();
    for (i, mut c) in flood.into_iter().enumerate() {
        let _ = c.write_all(&[0xff; 8]);
        refused(c, &format!("flood {i}"));
    }
}

#[test]
fn kvm_streams_over_vsock_are_separate_exact_logged_and_hostile_proof() {
    if let Some(why) = ark_tests::pods::kvm_pods_unavailable() {
        skip!("{why}");
    }
    let env = PodEnv::new();
    let seen = streams_end_to_end(&env, "kvm", Duration::from_secs(400), hostile_guest);
    // One line for everything the fake guest did; nothing else from the host or the guest
    // (no kernel messages without --debug, no CRLF).
    let refusals: Vec<&str> = seen
        .run_stderr
        .lines()
        .filter(|l| l.starts_with("ark-stage1-kvm: output channel"))
        .collect();
    assert_eq!(refusals.len(), 1, "{}", seen.run_stderr);
    assert_eq!(seen.run_stderr.lines().count(), 3, "{}", seen.run_stderr);
    assert!(!seen.run_stderr.contains('\r'), "{:?}", seen.run_stderr);
    assert!(!seen.run_stderr.contains("FORGED"));
    let s = env.status(&seen.uuid);
    assert_eq!(s["state"], "exited", "{s:?}");
    assert_eq!(s["exit-code"], "0", "{s:?}");
}
