//! Pods in the fly flavor (chroot only, host namespaces; guest-init still stage2), run for real with the
//! busybox image through the image store.

const FLAVOR: &str = "fly";

ark_tests::flavor_scenarios!(FLAVOR;
    run_prints_and_exits_with_the_apps_code,
    two_apps_both_statuses,
    env_user_cwd_volume,
    read_only_volume,
    stop_a_sleeping_pod,
    enter_runs_inside,
    kill9_then_gc,
    run_then_gc,
    prepare_then_run_prepared,
    interactive_stdin,
);
