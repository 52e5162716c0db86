//! Helpers for the `ark run -t` / `ark attach` tests (`tty_ns.rs`, `tty_kvm.rs`): one pod
//! started with `ark run -it ... sh` in a real terminal (tmux), driven through every check the
//! issue asks for, and `ark run -i` streaming binary stdin.

use std::io::{Read, Write};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::agent::Tmux;
use crate::pods::{wait_child, PodEnv};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Waits for `path` to appear (the shell in tmux writes it after a step).
fn wait_file(path: &Path, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(s) = std::fs::read_to_string(path) {
            if !s.is_empty() {
                // Written by a shell redirect: give it a moment to finish.
                std::thread::sleep(Duration::from_millis(200));
                return std::fs::read_to_string(path).unwrap();
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// In tmux (80x24): `ark run -it --stage1=FLAVOR IMG -- sh`; then `tty` is a pty of the pod,
/// `stty size` is the window's and follows a resize, ^C interrupts `sleep` and the shell
/// survives, ^P^Q detaches (ark run exits 0, the terminal's settings are restored, the pod
/// runs), `ark attach` reattaches (echo works), ^D reaches a nested shell as EOF, and `exit 7`
/// ends the pod with 7, which `ark attach` exits with; the terminal is restored again and the
/// app's tty output is in its log. `slow`: how long one step may take.
pub fn run_tty_and_attach(flavor: &str, slow: Duration) {
    let env = PodEnv::new();
    let scratch = tempfile::tempdir().unwrap();
    let f = |n: &str| scratch.path().join(n);
    let ark = format!(
        "{} --dir {} --insecure-options=image",
        crate::ark_bin().display(),
        env.path().display()
    );
    let cmd = format!(
        "stty -g > {before}; {ark} run -it --stage1={flavor} --uuid-file-save={uuid} {img} -- sh; \
         echo RUN-EXIT=$?; stty -g > {after1}; \
         while [ ! -s {go} ]; do sleep 0.2; done; \
         {ark} attach $(cat {uuid}); echo ATTACH-EXIT=$?; stty -g > {after2}; sleep 600",
        before = f("before").display(),
        after1 = f("after1").display(),
        after2 = f("after2").display(),
        uuid = f("uuid").display(),
        go = f("go").display(),
        img = env.image,
    );
    let t = Tmux::start(&cmd);
    // The shell's first prompt (kept for us by the pty's keeper until we attached).
    t.wait_for("/ #", slow);
    t.keys(&["tty; stty size; echo READY-$((1))", "Enter"]);
    let screen = t.wait_for("\nREADY-1", slow);
    assert!(screen.contains("\n/dev/pts/"), "tty is no pty:\n{screen}");
    assert!(screen.contains("\n24 80"), "stty size:\n{screen}");

    t.resize(120, 40);
    std::thread::sleep(Duration::from_secs(1));
    t.keys(&["stty size; echo READY-$((2))", "Enter"]);
    let screen = t.wait_for("\nREADY-2", slow);
    assert!(
        screen.contains("\n40 120"),
        "stty size after the resize:\n{screen}"
    );

    t.keys(&["sleep 100; echo SLEPT", "Enter"]);
    std::thread::sleep(if flavor == "kvm" {
        Duration::from_secs(8)
    } else {
        Duration::from_secs(2)
    });
    t.keys(&["C-c"]);
    t.keys(&["echo INTR-$?", "Enter"]);
    let screen = t.wait_for("\nINTR-130", slow);
    assert!(!screen.contains("\nSLEPT"), "{screen}");

    // Detach: ark run exits 0 at once, the pod keeps running.
    t.keys(&["C-p", "C-q"]);
    t.wait_for("RUN-EXIT=0", slow);
    let uuid = wait_file(&f("uuid"), slow).trim().to_string();
    let before = wait_file(&f("before"), slow);
    assert_eq!(
        wait_file(&f("after1"), slow),
        before,
        "the terminal's settings were not restored after the detach"
    );
    let st = env.status(&uuid);
    assert_eq!(
        st.get("state").map(String::as_str),
        Some("running"),
        "{st:?}"
    );
    assert_eq!(st.get("app-busybox").map(String::as_str), Some("running"));

    // Reattach.
    std::fs::write(f("go"), "go").unwrap();
    std::thread::sleep(Duration::from_secs(2));
    t.keys(&["echo hi-$((6*7))", "Enter"]);
    t.wait_for("\nhi-42", slow);
    // EOF reaches the app as on a local terminal: ^D ends a nested shell.
    // The nested shell must be reading before ^D is typed (a guest process can take seconds to
    // start): its prompt, made from a variable so the echoed command line does not match it.
    t.keys(&["P=nest; PS1=\"${P}ed> \" sh", "Enter"]);
    t.wait_for("\nnested>", slow);
    t.keys(&["C-d"]);
    std::thread::sleep(Duration::from_secs(1));
    t.keys(&["echo NESTED-$((40+2))", "Enter"]);
    t.wait_for("\nNESTED-42", slow);
    t.keys(&["exit 7", "Enter"]);
    t.wait_for("ATTACH-EXIT=7", slow);
    assert_eq!(
        wait_file(&f("after2"), slow),
        before,
        "the terminal's settings were not restored after the attach"
    );
    let st = env.status(&uuid);
    assert_eq!(
        st.get("state").map(String::as_str),
        Some("exited"),
        "{st:?}"
    );
    assert_eq!(st.get("exit-code").map(String::as_str), Some("7"), "{st:?}");
    // As podman's logs do, the app's tty output is in its log.
    let log = env.app_log(&uuid, "busybox");
    assert!(log.contains("hi-42"), "log: {log}");

    // Attaching to an exited pod: one line, 125.
    let out = env.output(&["attach", &uuid]);
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stderr).lines().count(),
        1,
        "{}",
        text(&out.stderr)
    );
}

/// `printf BYTES | ark run -i --stage1=FLAVOR IMG -- cat` gives the bytes back unchanged (every
/// byte value, more than a pipe holds), and EOF ends `cat`.
pub fn stdin_is_binary_safe(flavor: &str, timeout: Duration) {
    let env = PodEnv::new();
    let data: Vec<u8> = (0..(1u32 << 20))
        .map(|i| i.wrapping_mul(2_654_435_761).to_be_bytes()[1])
        .collect();
    let mut child = env
        .ark()
        .args([
            "run",
            "-i",
            &format!("--stage1={flavor}"),
            &env.image,
            "--",
            "cat",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = data.clone();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let st = wait_child(&mut child, timeout);
    writer.join().unwrap();
    let got = reader.join().unwrap();
    let mut err = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    assert_eq!(st.code(), Some(0), "{err}");
    assert_eq!(got.len(), data.len(), "{err}");
    assert!(got == data, "the bytes came back changed");
}
