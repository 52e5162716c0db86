//! Pods in the fly flavor (chroot only, host namespaces; guest-init still stage2), run for real with the
//! busybox image through the image store.

use ark_tests::pods::scenarios;
use ark_tests::skip;

const FLAVOR: &str = "fly";

macro_rules! need_pods {
    () => {
        if let Some(why) = ark_tests::pods::pods_unavailable() {
            skip!("{why}");
        }
        scenarios::stage1_installed(FLAVOR);
    };
}

#[test]
fn run_prints_and_exits_with_the_apps_code() {
    need_pods!();
    scenarios::run_prints_and_exits_with_the_apps_code(FLAVOR);
}

#[test]
fn two_apps_both_statuses() {
    need_pods!();
    scenarios::two_apps_both_statuses(FLAVOR);
}

#[test]
fn env_user_cwd_volume() {
    need_pods!();
    scenarios::env_user_cwd_volume(FLAVOR);
}

#[test]
fn read_only_volume() {
    need_pods!();
    scenarios::read_only_volume(FLAVOR);
}

#[test]
fn stop_a_sleeping_pod() {
    need_pods!();
    scenarios::stop_a_sleeping_pod(FLAVOR);
}

#[test]
fn enter_runs_inside() {
    need_pods!();
    scenarios::enter_runs_inside(FLAVOR);
}

#[test]
fn kill9_then_gc() {
    need_pods!();
    scenarios::kill9_then_gc(FLAVOR);
}

#[test]
fn run_then_gc() {
    need_pods!();
    scenarios::run_then_gc(FLAVOR);
}

#[test]
fn prepare_then_run_prepared() {
    need_pods!();
    scenarios::prepare_then_run_prepared(FLAVOR);
}

#[test]
fn interactive_stdin() {
    need_pods!();
    scenarios::interactive_stdin(FLAVOR);
}
