//! Stage0's pod half with the real `ark` and the real busybox image through the image store:
//! prepare, manifests, states, rm/gc, hostile input, completion. Running pods is covered by
//! stage1_ns.rs and stage1_fly.rs.

use std::fs;

use ark_tests::pods::{assert_one_line_error, parse_status, pod_cgroups, PodEnv};
use ark_tests::{ark_bin, skip};

macro_rules! need_pods {
    () => {
        if let Some(why) = ark_tests::pods::pods_unavailable() {
            skip!("{why}");
        }
    };
}

#[test]
fn prepare_then_cat_manifest_list_and_rm() {
    need_pods!();
    let env = PodEnv::new();
    let save = env.path().join("uuid");
    let uuid = env
        .ok(&[
            "prepare",
            "--stage1=ns",
            "--hostname=box",
            "--uuid-file-save",
            save.to_str().unwrap(),
            "--set-env=A=1",
            &env.image,
            "--name=first",
            "--memory=64M",
            "--",
            "sh",
            "-c",
            "exit 0",
            "---",
            &env.image,
            "--user=app",
            "--working-dir=/tmp",
        ])
        .trim()
        .to_string();
    assert_eq!(fs::read_to_string(&save).unwrap().trim(), uuid);

    let m: serde_json::Value =
        serde_json::from_str(&env.ok(&["cat-manifest", &uuid[..8]])).unwrap();
    assert_eq!(m["uuid"], uuid.as_str());
    assert_eq!(m["stage1"]["flavor"], "ns");
    assert_eq!(m["hostname"], "box");
    let apps = m["apps"].as_array().unwrap();
    assert_eq!(apps.len(), 2);
    assert_eq!(apps[0]["name"], "first");
    assert_eq!(apps[0]["exec"], serde_json::json!(["sh", "-c", "exit 0"]));
    assert_eq!(apps[0]["limits"]["memory_bytes"], 64u64 << 20);
    assert!(apps[0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["name"] == "A" && e["value"] == "1"));
    // The image's cmd (/bin/sh) when no args are given; the user's primary group from passwd.
    assert_eq!(apps[1]["exec"], serde_json::json!(["/bin/sh"]));
    assert_eq!(apps[1]["user"], "app");
    assert_eq!(apps[1]["group"], "1000");
    assert_eq!(apps[1]["working_dir"], "/tmp");
    assert!(apps[1]["image"]["id"]
        .as_str()
        .unwrap()
        .starts_with("sha256:"));

    // The pod directory as the stage1 expects it.
    let pod = env.path().join("pods/prepared").join(&uuid);
    let root = pod.join("stage1/rootfs");
    assert!(root.join("init").is_file());
    for d in ["dev", "proc", "sys", "run", "tmp"] {
        assert!(
            root.join(d).is_dir(),
            "no /{d} mount point in the stage1 root"
        );
    }
    assert_eq!(
        fs::read(root.join("ark/pod-manifest.json")).unwrap(),
        fs::read(pod.join("pod-manifest.json")).unwrap()
    );
    for app in [
        apps[0]["name"].as_str().unwrap(),
        apps[1]["name"].as_str().unwrap(),
    ] {
        assert!(
            root.join("apps")
                .join(app)
                .join("rootfs/bin/busybox")
                .is_file(),
            "app {app} has no rootfs"
        );
    }

    let list: serde_json::Value =
        serde_json::from_str(&env.ok(&["list", "--format=json"])).unwrap();
    assert_eq!(list[0]["uuid"], uuid.as_str());
    assert_eq!(list[0]["state"], "prepared");
    assert!(env.ok(&["list"]).contains(&uuid[..8]));
    assert_eq!(
        parse_status(&env.ok(&["status", &uuid]))["state"],
        "prepared"
    );

    // A prepared pod is not running: stop refuses, rm removes it with its mounts.
    assert_eq!(env.output(&["stop", &uuid]).status.code(), Some(125));
    env.ok(&["rm", &uuid]);
    assert!(env.pod_dirs().is_empty(), "{:?}", env.pod_dirs());
    assert!(env.mounts_left().is_empty(), "{:?}", env.mounts_left());
    assert!(pod_cgroups(&uuid).is_empty());
    assert_eq!(env.output(&["status", &uuid]).status.code(), Some(125));
}

#[test]
fn hostile_input_is_one_clear_line_and_leaves_nothing() {
    need_pods!();
    let env = PodEnv::new();
    let missing_layout = format!("oci-layout:{}/nope:latest", env.path().display());
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec![missing_layout.clone()], "nope"),
        (
            vec![
                "--volume=data,kind=host,source=/definitely/not/here".into(),
                env.image.clone(),
            ],
            "/definitely/not/here",
        ),
        (vec![env.image.clone(), "--user=ghost".into()], "ghost"),
        (
            vec![env.image.clone(), "--mount=volume=nope,target=/x".into()],
            "nope",
        ),
        (vec![env.image.clone(), "--memory=lots".into()], "lots"),
        (vec![env.image.clone(), "--bogus-flag".into()], "bogus"),
        (vec!["---".into(), env.image.clone()], "image"),
    ];
    for (args, needle) in cases {
        let mut full = vec!["prepare".to_string(), "--stage1=ns".into()];
        full.extend(args);
        let refs: Vec<&str> = full.iter().map(String::as_str).collect();
        let out = env.output(&refs);
        assert_one_line_error(&out, needle);
        assert!(
            env.pod_dirs().is_empty(),
            "{refs:?} left {:?}",
            env.pod_dirs()
        );
        assert!(env.mounts_left().is_empty(), "{refs:?} left mounts");
    }
    // Unknown pods.
    for cmd in [
        "status",
        "rm",
        "stop",
        "cat-manifest",
        "run-prepared",
        "enter",
    ] {
        assert_one_line_error(&env.output(&[cmd, "00000000-dead-beef"]), "no pod matches");
    }
}

#[test]
fn gc_removes_crashed_prepares_and_expired_prepared_pods() {
    need_pods!();
    let env = PodEnv::new();
    let uuid = env
        .ok(&["prepare", "--stage1=ns", &env.image])
        .trim()
        .to_string();
    // A crashed prepare: an unlocked directory left in prepare/, with an overlay mounted in it.
    let crashed = "11111111-2222-4333-8444-555555555555";
    let dir = env.path().join("pods/prepare").join(crashed);
    let lower = env.path().join("lower");
    for d in ["upper", "work", "merged"] {
        fs::create_dir_all(dir.join(d)).unwrap();
    }
    fs::create_dir_all(&lower).unwrap();
    let st = std::process::Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            dir.join("upper").display(),
            dir.join("work").display()
        ))
        .arg(dir.join("merged"))
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(
        env.mounts_left().len(),
        2,
        "the pod's overlay and the crashed one"
    );

    // Default policy: the crashed prepare goes, the fresh prepared pod stays.
    let removed = env.ok(&["gc"]);
    assert!(removed.contains(crashed), "{removed}");
    assert!(!dir.exists());
    assert_eq!(
        parse_status(&env.ok(&["status", &uuid]))["state"],
        "prepared"
    );
    // Expired prepared pods go too.
    env.ok(&["gc", "--expire-prepared=0s"]);
    assert!(env.pod_dirs().is_empty());
    assert!(env.mounts_left().is_empty(), "{:?}", env.mounts_left());
    // The render cache the overlay used is untouched.
    let again = env.ok(&["prepare", "--stage1=ns", &env.image]);
    assert!(!again.trim().is_empty());
}

#[test]
fn kvm_blk_prepare_packs_the_pod_root() {
    need_pods!();
    let env = PodEnv::new();
    let uuid = env
        .ok(&[
            "prepare",
            "--stage1=kvm",
            "--stage1-kvm-root=blk",
            &env.image,
            "--",
            "true",
        ])
        .trim()
        .to_string();
    let m: serde_json::Value = serde_json::from_str(&env.ok(&["cat-manifest", &uuid])).unwrap();
    let opts = &m["stage1"]["options"];
    assert_eq!(opts["kvm.root"], "blk");
    let image = opts["kvm.root.image"].as_str().unwrap();
    let fstype = opts["kvm.root.fstype"].as_str().unwrap();
    let path = env.path().join("pods/prepared").join(&uuid).join(image);
    let bytes = fs::read(&path).unwrap();
    match fstype {
        // erofs superblock magic at 1024, little endian 0xE0F5E1E2.
        "erofs" => assert_eq!(&bytes[1024..1028], &0xE0F5E1E2u32.to_le_bytes()),
        // ext4 superblock magic 0xEF53 at 1024 + 56.
        "ext4" => assert_eq!(&bytes[1080..1082], &0xEF53u16.to_le_bytes()),
        other => panic!("fstype {other}"),
    }
    env.ok(&["rm", &uuid]);
    assert!(env.pod_dirs().is_empty());

    // blk without kvm is a mistake, said so.
    assert_one_line_error(
        &env.output(&[
            "prepare",
            "--stage1=ns",
            "--stage1-kvm-root=blk",
            &env.image,
        ]),
        "--stage1=kvm",
    );
}

#[test]
fn completion_scripts_include_pod_commands() {
    for shell in ["bash", "zsh"] {
        let out = std::process::Command::new(ark_bin())
            .args(["completion", shell])
            .output()
            .unwrap();
        assert!(out.status.success());
        let s = String::from_utf8_lossy(&out.stdout);
        for word in [
            "prepare",
            "run-prepared",
            "cat-manifest",
            "enter",
            "gc",
            "--grace-period",
            "--stage1-kvm-root",
        ] {
            assert!(s.contains(word), "{shell} completion lacks {word}");
        }
    }
}

/// `ark image rm` of an image a prepared pod still uses (its render is the lower layer of the
/// pod's overlay, with no process holding it) removes the image but keeps the render until the
/// pod is gone; `ark image gc` then reclaims it.
#[test]
fn image_rm_keeps_the_render_a_prepared_pod_uses() {
    need_pods!();
    let env = PodEnv::new();
    let uuid = env
        .ok(&["prepare", "--stage1=ns", &env.image, "--", "true"])
        .trim()
        .to_string();
    let images: serde_json::Value =
        serde_json::from_str(&env.ok(&["image", "list", "--format=json"])).unwrap();
    let id = images[0]["id"].as_str().expect("image id").to_string();
    let renders = env.path().join("images/renders");
    let render = renders.join(id.trim_start_matches("sha256:"));
    assert!(render.is_dir(), "no render at {}", render.display());

    // A live (prepared) pod uses it: only --force removes it (podman's rmi).
    env.ok(&["image", "rm", "--force", &id]);
    assert!(render.is_dir(), "image rm deleted a render a pod uses");
    let app_root = env
        .path()
        .join("pods/prepared")
        .join(&uuid)
        .join("stage1/rootfs/apps/busybox/rootfs");
    assert!(
        app_root.join("bin/busybox").exists(),
        "the prepared pod lost its root"
    );

    env.ok(&["rm", &uuid]);
    env.ok(&["image", "gc"]);
    assert!(
        !render.exists(),
        "image gc left the render of a removed image"
    );
}
