//! The kernel under test (`$ARK_KERNEL`, as test.sh exports it after kernel-config/build.sh)
//! has every option of its profile's fragment, and the checking logic itself catches a
//! `.config` that lost one.

use ark_kernel_config::{config, config_beside, profile_beside, Profile, KERNEL_ENV};
use std::path::PathBuf;

#[test]
fn built_kernel_has_every_fragment_option() {
    let Some(vmlinux) = std::env::var_os(KERNEL_ENV).filter(|v| !v.is_empty()) else {
        eprintln!("SKIPPED built_kernel_has_every_fragment_option: {KERNEL_ENV} is not set (build one with kernel-config/build.sh)");
        return;
    };
    let vmlinux = PathBuf::from(vmlinux);
    assert!(
        vmlinux.is_file(),
        "{KERNEL_ENV}={} is not a file",
        vmlinux.display()
    );
    let Some(config_path) = config_beside(&vmlinux) else {
        eprintln!(
            "SKIPPED built_kernel_has_every_fragment_option: no .config beside {} (not built by kernel-config/build.sh)",
            vmlinux.display()
        );
        return;
    };
    let profile = profile_beside(&vmlinux)
        .or_else(|| std::env::var("ARK_KERNEL_PROFILE").ok()?.parse().ok())
        .unwrap_or_else(Profile::for_host);
    let text = std::fs::read_to_string(&config_path).unwrap();
    let bad = config::check(profile.fragment(), &text);
    assert!(
        bad.is_empty(),
        "{} lacks {} option(s) of profiles/{profile}.config:\n{}",
        config_path.display(),
        bad.len(),
        bad.iter().map(|m| format!("  {m}\n")).collect::<String>()
    );
    // The checked options are the ones that make the profile what it is.
    let smp = text.lines().any(|l| l == "CONFIG_SMP=y");
    assert_eq!(
        smp,
        profile == Profile::Microvm,
        "SMP in a {profile} kernel"
    );
}

#[test]
fn check_reports_a_fragment_option_missing_from_a_config() {
    for profile in Profile::ALL {
        let fragment = profile.fragment();
        // A .config that is exactly the fragment passes...
        assert!(config::check(fragment, fragment).is_empty(), "{profile}");
        // ...and one that lost an option (as olddefconfig does when a dependency is off) or
        // turned one on that the fragment turns off is reported, naming the option.
        let settings = config::parse(fragment);
        let on = settings
            .iter()
            .find(|s| s.symbol == "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES")
            .unwrap();
        assert_eq!(on.value.as_deref(), Some("y"));
        let lost: String = fragment
            .lines()
            .filter(|l| !l.starts_with("CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES="))
            .map(|l| format!("{l}\n"))
            .collect();
        let bad = config::check(fragment, &lost);
        assert_eq!(bad.len(), 1, "{profile}: {bad:?}");
        assert_eq!(bad[0].symbol, "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES");
        assert_eq!(bad[0].got, None);

        let flipped = fragment.replace("# CONFIG_MODULES is not set", "CONFIG_MODULES=y");
        let bad = config::check(fragment, &flipped);
        assert_eq!(bad.len(), 1, "{profile}: {bad:?}");
        assert_eq!(bad[0].to_string(), "CONFIG_MODULES: wanted n, got y");
    }
}
