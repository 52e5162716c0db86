//! `ark app` in ns and fly pods (issue 13): a sandbox starts empty and stays up; apps are
//! added (created), started, stopped alone, removed and added again; bad requests are one
//! line, exit 125, and change nothing; `ark stop` ends every app with its status recorded.

use ark_tests::pods::{pods_unavailable, wait_child, PodEnv};
use ark_tests::sandbox::{self, Sandbox};
use ark_tests::skip;

macro_rules! need_pods {
    () => {
        if let Some(why) = pods_unavailable() {
            skip!("{why}");
        }
    };
}

fn lifecycle_in(flavor: &str) {
    let sb = Sandbox::start(flavor);
    sandbox::lifecycle(&sb);
    let (env, uuid) = sb.stop();
    sandbox::stopped(&env, &uuid);
    // An exited sandbox takes no app: one line, nothing made.
    let out = env.output(&["app", "add", &uuid, &env.image, "--name=late"]);
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not running"), "{err}");
    let m: serde_json::Value =
        serde_json::from_str(&env.ok(&["cat-manifest", &uuid])).expect("manifest json");
    let names: Vec<&str> = m["apps"]
        .as_array()
        .expect("apps")
        .iter()
        .map(|a| a["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["one", "two", "idle"], "{m}");
}

#[test]
fn app_lifecycle_in_ns() {
    need_pods!();
    lifecycle_in("ns");
}

#[test]
fn app_lifecycle_in_fly() {
    need_pods!();
    lifecycle_in("fly");
}

/// A pod made by `ark run` is no sandbox: its apps are fixed, `ark app` refuses to change
/// them; and `ark app sandbox` takes no image.
#[test]
fn apps_of_a_plain_pod_are_fixed() {
    need_pods!();
    let env = PodEnv::new();
    let mut run = env.spawn(&[
        "run",
        "--stage1=ns",
        "--net=none",
        &env.image,
        "--",
        "sleep",
        "3600",
    ]);
    let uuid = env.wait_pod(std::time::Duration::from_secs(60));
    env.wait_status(&uuid, std::time::Duration::from_secs(60), "running", |s| {
        s.get("app-busybox").map(String::as_str) == Some("running")
    });
    let before = env.ok(&["cat-manifest", &uuid]);
    for args in [
        vec!["app", "add", &uuid, &env.image, "--name=extra"],
        vec!["app", "stop", &uuid, "--app=busybox"],
        vec!["app", "rm", &uuid, "--app=busybox"],
    ] {
        let out = env.output(&args);
        assert_eq!(out.status.code(), Some(125), "{args:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("not a sandbox"), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    assert_eq!(env.ok(&["cat-manifest", &uuid]), before);
    assert_eq!(env.status(&uuid)["app-busybox"], "running");
    let _ = env.output(&["stop", &uuid]);
    wait_child(&mut run, std::time::Duration::from_secs(60));

    let out = env.output(&["app", "sandbox", "--stage1=ns", &env.image]);
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("takes no image"));
}
