//! The command line's app words through [`ark::pod::plan`]: what a user types becomes this
//! manifest, or this one-line error.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use ark::pod::plan::*;
use ark_pod_spec::{EnvVar, Flavor, KvmRoot, Mount, NetMode};

use super::apps::{split_apps, AppFlags};

fn rootfs() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    fs::create_dir(d.path().join("etc")).unwrap();
    fs::write(
        d.path().join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\nwww:x:33:33::/var/www:/bin/sh\n",
    )
    .unwrap();
    fs::write(
        d.path().join("etc/group"),
        "root:x:0:\nnogroup:x:65534:\nwww-data:x:33:\n",
    )
    .unwrap();
    d
}

fn image(rootfs: &Path) -> ImageInfo {
    ImageInfo {
        id: "sha256:1234".into(),
        name: "busybox".into(),
        entrypoint: vec![],
        cmd: vec!["sh".into()],
        env: vec!["PATH=/usr/sbin:/usr/bin:/sbin:/bin".into()],
        user: None,
        working_dir: None,
        rootfs: rootfs.to_path_buf(),
        exposed_ports: vec!["80/tcp".into()],
        port_names: Default::default(),
    }
}

fn req(flavor: Flavor) -> PodRequest {
    PodRequest {
        flavor,
        volumes: vec![],
        hostname: None,
        net: NetMode::Host,
        net_options: Default::default(),
        interactive: false,
        tty: false,
        kvm_root: KvmRoot::Fs,
        blk_fstype: "erofs",
        annotations: BTreeMap::new(),
        log_max_size: None,
        sandbox: false,
    }
}

fn words(s: &[&str]) -> Vec<String> {
    s.iter().map(|w| w.to_string()).collect()
}

const UUID: &str = "0b0e5a1c-0f43-4c5e-9b55-7f0d7c9a1e21";

#[test]
fn argv_rules() {
    let mut img = image(Path::new("/"));
    img.entrypoint = vec!["/entry".into()];
    img.cmd = vec!["default".into()];
    let args = words(&["a", "b"]);
    assert_eq!(app_argv(&img, None, None), ["/entry", "default"]);
    assert_eq!(app_argv(&img, None, Some(&args)), ["/entry", "a", "b"]);
    assert_eq!(app_argv(&img, Some("/bin/x"), None), ["/bin/x"]);
    assert_eq!(
        app_argv(&img, Some("/bin/x"), Some(&args)),
        ["/bin/x", "a", "b"]
    );
}

#[test]
fn names_from_images() {
    assert_eq!(
        app_name_from_image("docker://registry:5000/library/busybox:1.36"),
        "busybox"
    );
    assert_eq!(app_name_from_image("busybox"), "busybox");
    assert_eq!(
        app_name_from_image("oci-layout:/tmp/x/Busy_Box:latest"),
        "busy-box"
    );
    assert_eq!(app_name_from_image("sha256:abcdef"), "sha256");
    assert_eq!(app_name_from_image("___"), "app");
}

#[test]
fn builds_a_two_app_manifest() {
    let r = rootfs();
    let vol = tempfile::tempdir().unwrap();
    let mut rq = req(Flavor::Ns);
    rq.volumes = vec![format!(
        "data,kind=host,source={},readOnly=true",
        vol.path().display()
    )];
    rq.hostname = Some("pod1".into());
    let apps = split_apps(
        &words(&[
            "busybox",
            "--set-env=A=1",
            "--user=www",
            "--working-dir=/tmp",
            "--memory=64M",
            "--mount=volume=data,target=/data",
            "--",
            "sh",
            "-c",
            "exit 0",
            "---",
            "busybox",
            "--user=nobody:root",
            "--cpus=0.5",
            "--memory=32M",
        ]),
        &AppFlags::default(),
    )
    .unwrap();
    let img = image(r.path());
    let m = build_manifest(UUID, &rq, &apps, &[img.clone(), img]).unwrap();
    assert_eq!(m.apps.len(), 2);
    let (a, b) = (&m.apps[0], &m.apps[1]);
    assert_eq!(a.name, "busybox");
    assert_eq!(b.name, "busybox-2");
    assert_eq!(a.exec, ["sh", "-c", "exit 0"]);
    assert_eq!(b.exec, ["sh"]);
    assert_eq!(
        a.env.last().unwrap(),
        &EnvVar {
            name: "A".into(),
            value: "1".into()
        }
    );
    assert_eq!(a.env[0].name, "PATH");
    assert_eq!((a.user.as_str(), a.group.as_str()), ("www", "33"));
    assert_eq!((b.user.as_str(), b.group.as_str()), ("nobody", "root"));
    assert_eq!(a.working_dir, "/tmp");
    assert_eq!(
        a.mounts,
        [Mount {
            volume: "data".into(),
            target: "/data".into()
        }]
    );
    assert_eq!(a.limits.memory_bytes, Some(64 << 20));
    assert_eq!(b.limits.cpu_millis, Some(500));
    // Pod memory = sum (both apps limited); cpu: only one app limited → unbounded.
    assert_eq!(m.limits.memory_bytes, Some(96 << 20));
    assert_eq!(m.limits.cpu_millis, None);
    assert!(m.volumes[0].read_only);
    assert_eq!(m.hostname.as_deref(), Some("pod1"));
    assert!(m.stage1.options.is_empty());
}

#[test]
fn hostile_requests_are_one_line_errors() {
    let r = rootfs();
    let img = image(r.path());
    let one = |flags: &[&str], rq: PodRequest| {
        let mut w = words(&["busybox"]);
        w.extend(words(flags));
        let apps = split_apps(&w, &AppFlags::default()).unwrap();
        build_manifest(UUID, &rq, &apps, std::slice::from_ref(&img))
    };
    let e = one(&["--user=ghost"], req(Flavor::Ns)).unwrap_err();
    assert!(e.contains("\"ghost\" does not exist"), "{e}");
    let e = one(&["--group=ghosts"], req(Flavor::Ns)).unwrap_err();
    assert!(e.contains("\"ghosts\" does not exist"), "{e}");
    let e = one(&["--mount=volume=nope,target=/x"], req(Flavor::Ns)).unwrap_err();
    assert!(e.contains("no --volume defines"), "{e}");
    let mut rq = req(Flavor::Ns);
    rq.volumes = vec!["data,kind=host,source=/definitely/not/here".into()];
    let e = one(&[], rq).unwrap_err();
    assert!(e.contains("/definitely/not/here"), "{e}");
    let e = one(&["--set-env=NOEQUALS"], req(Flavor::Ns)).unwrap_err();
    assert!(e.contains("KEY=VALUE"), "{e}");
    let e = one(&["--memory=lots"], req(Flavor::Ns)).unwrap_err();
    assert!(e.contains("--memory"), "{e}");
    let e = one(&["--working-dir=relative"], req(Flavor::Ns)).unwrap_err();
    assert!(e.contains("working_dir"), "{e}");
    let mut rq = req(Flavor::Ns);
    rq.kvm_root = KvmRoot::Blk;
    assert!(one(&[], rq).unwrap_err().contains("--stage1=kvm"));
    // A library caller's root that is neither fs nor blk is refused, not written for stage1-kvm.
    let mut rq = req(Flavor::Kvm);
    rq.kvm_root = KvmRoot::Other("nfs".into());
    let e = one(&[], rq).unwrap_err();
    assert!(
        e.contains(r#"--stage1-kvm-root="nfs" is neither fs nor blk"#),
        "{e}"
    );
    let mut noc = img.clone();
    noc.cmd.clear();
    let apps = split_apps(&words(&["busybox"]), &AppFlags::default()).unwrap();
    let e = build_manifest(UUID, &req(Flavor::Ns), &apps, &[noc]).unwrap_err();
    assert!(e.contains("no entrypoint or cmd"), "{e}");
    let apps = split_apps(
        &words(&["busybox", "--name=x", "---", "busybox", "--name=x"]),
        &AppFlags::default(),
    )
    .unwrap();
    let e = build_manifest(UUID, &req(Flavor::Ns), &apps, &[img.clone(), img.clone()]).unwrap_err();
    assert!(e.contains("two apps"), "{e}");
}

#[test]
fn image_user_and_kvm_blk_options() {
    let r = rootfs();
    let mut img = image(r.path());
    img.user = Some("www".into());
    img.working_dir = Some("/var/www".into());
    let mut rq = req(Flavor::Kvm);
    rq.kvm_root = KvmRoot::Blk;
    rq.interactive = true;
    let apps = split_apps(&words(&["busybox"]), &AppFlags::default()).unwrap();
    let m = build_manifest(UUID, &rq, &apps, &[img]).unwrap();
    assert_eq!(m.apps[0].user, "www");
    assert_eq!(m.apps[0].group, "33");
    assert_eq!(m.apps[0].working_dir, "/var/www");
    assert!(m.apps[0].interactive);
    let kvm = &m.stage1.options.kvm;
    assert_eq!(kvm.root, Some(KvmRoot::Blk));
    assert_eq!(kvm.root_image.as_deref(), Some("rootfs.erofs"));
    assert_eq!(kvm.root_fstype.as_deref(), Some("erofs"));
}

#[test]
fn capabilities_pids_and_groups() {
    let r = rootfs();
    let img = image(r.path());
    let apps = split_apps(
        &words(&[
            "busybox",
            "--caps-retain=net_bind_service,CAP_CHOWN",
            "--pids-limit=50",
            "--supplementary-gids=10,20",
            "---",
            "busybox",
            "--caps-remove=CAP_KILL",
        ]),
        &AppFlags::default(),
    )
    .unwrap();
    let m = build_manifest(UUID, &req(Flavor::Ns), &apps, &[img.clone(), img.clone()]).unwrap();
    assert_eq!(
        m.apps[0].capabilities_keep,
        ["CAP_NET_BIND_SERVICE", "CAP_CHOWN"]
    );
    assert_eq!(m.apps[0].limits.pids, Some(50));
    assert_eq!(m.apps[0].supplementary_groups, [10, 20]);
    // Only --caps-retain names capabilities a non-root app may hold.
    assert!(m.apps[0].capabilities_explicit);
    assert!(!m.apps[1].capabilities_explicit);
    let b = &m.apps[1].capabilities_keep;
    assert_eq!(b.len(), ark_pod_spec::DEFAULT_CAPABILITIES.len() - 1);
    assert!(!b.iter().any(|c| c == "CAP_KILL"));
    let apps = split_apps(
        &words(&["busybox", "--caps-retain=CAP_FLY"]),
        &AppFlags::default(),
    )
    .unwrap();
    let e = build_manifest(UUID, &req(Flavor::Ns), &apps, &[img]).unwrap_err();
    assert!(e.contains("unknown capability \"CAP_FLY\""), "{e}");
}

#[test]
fn group_defaults_to_the_users_passwd_entry() {
    let r = rootfs();
    let ok = |u: Option<&str>, g: Option<&str>| resolve_user(r.path(), "a", u, g).unwrap();
    // A numeric user with an entry gets its primary group, as a named one does.
    assert_eq!(ok(Some("65534"), None), ("65534".into(), "65534".into()));
    assert_eq!(ok(Some("nobody"), None), ("nobody".into(), "65534".into()));
    assert_eq!(ok(Some("4242"), None), ("4242".into(), "0".into()));
    assert_eq!(ok(Some("65534:33"), None), ("65534".into(), "33".into()));
    assert_eq!(ok(None, None), ("0".into(), "0".into()));
}

#[test]
fn account_files_are_read_inside_the_image() {
    // An image whose etc/passwd points at a host file: the link resolves inside the
    // image, where there is nothing, so the host's users are not found.
    let host = tempfile::tempdir().unwrap();
    fs::write(host.path().join("passwd"), "hostuser:x:7:7::/:/bin/sh\n").unwrap();
    let r = tempfile::tempdir().unwrap();
    fs::create_dir(r.path().join("etc")).unwrap();
    std::os::unix::fs::symlink(host.path().join("passwd"), r.path().join("etc/passwd")).unwrap();
    let e = resolve_user(r.path(), "a", Some("hostuser"), None).unwrap_err();
    assert!(e.contains("does not exist"), "{e}");
}

#[test]
fn precheck_needs_no_image() {
    let vol = tempfile::tempdir().unwrap();
    let v = vec![format!("data,kind=host,source={}", vol.path().display())];
    let ok = split_apps(
        &words(&[
            "img",
            "--mount=volume=data,target=/d",
            "--memory=1G",
            "--cpus=2",
        ]),
        &AppFlags::default(),
    )
    .unwrap();
    precheck(&v, &ok).unwrap();
    let bad_mount = split_apps(
        &words(&["img", "--mount=volume=other,target=/d"]),
        &AppFlags::default(),
    )
    .unwrap();
    assert!(precheck(&v, &bad_mount).unwrap_err().contains("\"other\""));
    let bad_cpus = split_apps(&words(&["img", "--cpus=lots"]), &AppFlags::default()).unwrap();
    assert!(precheck(&v, &bad_cpus).unwrap_err().contains("--cpus"));
    let missing = vec!["data,kind=host,source=/no/such/dir".to_string()];
    assert!(precheck(&missing, &ok)
        .unwrap_err()
        .contains("/no/such/dir"));
}

#[test]
fn volume_and_mount_specs() {
    let v = parse_volume("data,kind=host,source=/tmp").unwrap();
    assert_eq!(v.name, "data");
    assert!(!v.read_only);
    assert!(parse_volume("data,kind=empty,source=/tmp").is_err());
    assert!(parse_volume("data,kind=host").is_err());
    assert!(parse_volume("data,kind=host,source=/tmp,readOnly=maybe").is_err());
    assert!(parse_volume("kind=host,source=/tmp").is_err());
    assert!(parse_mount("volume=data,target=/d").is_ok());
    assert!(parse_mount("volume=data,target=rel").is_err());
    assert!(parse_mount("volume=data").is_err());
    assert!(parse_mount("vol=data,target=/x").is_err());
}
