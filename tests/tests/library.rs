//! The `ark` library driven as a second front end (an OCI runtime, a shim) would drive it: no
//! command line, a plain `ark::Context`, a real pod started as this process's child and
//! supervised from here. What the pod did is read back with the real `ark`.

use std::time::{Duration, Instant};

use ark::pod::args::{AppOptions, AppSpec};
use ark::pod::lifecycle::{prepare, spawn_stage1, Durability, PrepareRequest};
use ark_pod_spec::{Flavor, NetMode};
use ark_tests::pods::PodEnv;
use ark_tests::{libexec_bin, skip};

#[test]
fn a_front_end_starts_an_ns_pod_as_its_child_and_gets_its_exit_code() {
    if let Some(why) = ark_tests::pods::pods_unavailable() {
        skip!("{why}");
    }
    let env = PodEnv::new();
    // The library finds the stage1s beside the ark binary, or here (this is a test binary).
    let libexec = libexec_bin("ark-init").parent().unwrap().to_path_buf();
    std::env::set_var("ARK_LIBEXEC_DIR", &libexec);
    let mut ctx = ark::Context::new(env.path());
    ctx.insecure.image = true;
    ark::data_dir::secure(&ctx.dir).unwrap();

    let request = PrepareRequest {
        flavor: Flavor::Ns,
        kvm_root: Default::default(),
        volumes: vec![],
        hostname: None,
        interactive: false,
        tty: false,
        uuid_file_save: None,
        net: Some(NetMode::Host),
        network: Default::default(),
        annotations: vec![],
        log_max_size: None,
        apps: vec![AppSpec {
            image: env.image.clone(),
            flags: AppOptions::default(),
            args: Some(
                ["sh", "-c", "echo from-the-child; sleep 2; exit 7"]
                    .map(String::from)
                    .to_vec(),
            ),
        }],
    };
    let prepared = prepare(&ctx, &request, Durability::Synced).expect("prepare");
    // A front end's own fd without close-on-exec (ark's main marks every inherited fd so; a
    // front end may not): it must not reach the pod.
    let stray_path = env.path().join("front-end-secret");
    let stray = std::fs::File::create(&stray_path).unwrap();
    let stray_fd = nix::unistd::dup(std::os::fd::AsRawFd::as_raw_fd(&stray)).unwrap();
    let mut pod = spawn_stage1(&ctx, prepared, false).expect("start the stage1 as a child");
    let uuid = pod.uuid.to_string();
    assert!(
        pod.pod_dir.starts_with(env.path()),
        "{}",
        pod.pod_dir.display()
    );

    // While it runs, the real ark sees it running, with our child's pid as the stage1's.
    let status = env.status(&uuid);
    assert_eq!(status["state"], "running", "{status:?}");
    assert_eq!(status["pid"], pod.pid().to_string(), "{status:?}");
    let stage1_fds: Vec<_> = std::fs::read_dir(format!("/proc/{}/fd", pod.pid()))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.unwrap().path()).ok())
        .collect();
    assert!(
        !stage1_fds.contains(&stray_path),
        "the stage1 inherited the front end's fd {stray_fd}: {stage1_fds:?}"
    );
    nix::unistd::close(stray_fd).unwrap();

    let started = Instant::now();
    let code = pod.wait().expect("wait for the pod");
    assert_eq!(code, 7, "the pod's exit code is its app's");
    assert!(started.elapsed() < Duration::from_secs(60));

    // The lock went with the stage1: nothing of ours keeps the pod "running" after it ended.
    let status = env.status(&uuid);
    assert_eq!(status["state"], "exited", "{status:?}");
    assert_eq!(status["exit-code"], "7", "{status:?}");
    assert_eq!(status["app-busybox"], "7", "{status:?}");
    assert!(env.app_log(&uuid, "busybox").contains("from-the-child"));
    env.ok(&["rm", &uuid]);
    assert!(env.mounts_left().is_empty(), "{:?}", env.mounts_left());

    // The library's errors are typed for such a front end: no such pod is NotFound.
    let e = ark::pod::info::status(&ctx, &uuid, false).unwrap_err();
    assert_eq!(e.kind(), ark::pod::ErrorKind::NotFound, "{e:?}");
}
