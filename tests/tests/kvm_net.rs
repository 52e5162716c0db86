//! Networking inside a kvm pod, end to end (real ark, stage1-kvm, VMM, `$ARK_KERNEL`,
//! guest-init). One VM boot, asserting all it can: a kvm pod without networks has `lo`, and
//! only `lo`, up (a fresh guest kernel leaves it down; guest-init brings it up).

use ark_tests::pods::PodEnv;
use ark_tests::skip;

fn unavailable() -> Option<String> {
    if let Some(why) = ark_tests::pods::pods_unavailable() {
        return Some(why);
    }
    if let Some(why) = ark_tests::kvm_unavailable() {
        return Some(why);
    }
    if ark_tests::guest_kernel().is_none() {
        return Some("no guest kernel: set ARK_KERNEL (./test.sh does)".into());
    }
    None
}

/// `/sys/class/net/lo/flags` has IFF_UP; `::1` is there when the guest kernel has IPv6 (the
/// kernel adds it only once `lo` is up); no other interface is up.
#[test]
fn kvm_guest_has_lo_up() {
    if let Some(why) = unavailable() {
        skip!("{why}");
    }
    let env = PodEnv::new();
    // Shell builtins where they do (each process a guest spawns costs seconds on kvm_pvm).
    let script = "\
        read f < /sys/class/net/lo/flags; echo flags=$f; \
        for i in /sys/class/net/*; do read f < $i/flags; echo if=${i##*/}:$f; done; \
        v6=none; if [ -e /proc/net/if_inet6 ]; then v6=0; \
          while read a rest; do [ $a = 00000000000000000000000000000001 ] && v6=1; \
          done < /proc/net/if_inet6; fi; echo v6lo=$v6";
    let out = env.output(&["run", "--stage1=kvm", &env.image, "--", "sh", "-c", script]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    let value = |key: &str| {
        stdout
            .lines()
            .find_map(|l| l.trim_end().strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key}= in: {stdout}\nstderr: {stderr}"))
            .to_string()
    };
    let flags = value("flags");
    let flags = u32::from_str_radix(flags.trim_start_matches("0x"), 16).expect("hex flags");
    assert_eq!(flags & 1, 1, "lo is down (flags {flags:#x}): {stdout}");
    // No NIC without a network; the kernel's own tunnel devices (sit0 on an IPv6 kernel) stay down.
    let up_besides_lo: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.trim_end().strip_prefix("if="))
        .filter(|l| !l.starts_with("lo:"))
        .filter(|l| {
            l.rsplit(':')
                .next()
                .and_then(|f| u32::from_str_radix(f.trim_start_matches("0x"), 16).ok())
                .is_none_or(|f| f & 1 == 1)
        })
        .collect();
    assert!(
        up_besides_lo.is_empty(),
        "up besides lo: {up_besides_lo:?}: {stdout}"
    );
    let v6 = value("v6lo");
    assert!(
        v6 == "1" || v6 == "none",
        "::1 missing on an IPv6 kernel: {stdout}"
    );
    if v6 == "none" {
        eprintln!("note: the guest kernel has no IPv6; ::1 not checked");
    }
}
