//! ark's guest kernel profiles, and locating kernels built by `kernel-config/build.sh`.
//!
//! Two profiles exist. `microvm` is the product kernel for hardware KVM hosts; `pvm-compat`
//! is for hosts whose `/dev/kvm` is served by `kvm_pvm` (software virtualization), where a
//! stock kernel never reaches user space: it carries three small patches, a trimmed config
//! and boot flags that avoid what that emulator cannot run (see kernel-config/README.md).
//!
//! build.sh caches each build under `${XDG_CACHE_HOME:-$HOME/.cache}/ark/kernels/<hash>/`
//! (`vmlinux`, `.config`, `profile`) and points `current-<profile>` at the newest one.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

#[path = "config.rs"]
pub mod config;

/// Environment variable naming a guest kernel (an ELF `vmlinux`) to use instead of the cache.
pub const KERNEL_ENV: &str = "ARK_KERNEL";

/// A guest kernel profile: which config fragment, patches and boot flags a kernel was built
/// with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Profile {
    /// Product kernel for hardware KVM hosts: SMP, full hardening, unpatched.
    Microvm,
    /// Kernel for kvm_pvm hosts: uniprocessor, patched, boot-cost trimmed.
    PvmCompat,
}

impl Profile {
    pub const ALL: [Profile; 2] = [Profile::Microvm, Profile::PvmCompat];

    /// The profile's name as build.sh and the cache use it.
    pub fn name(self) -> &'static str {
        match self {
            Profile::Microvm => "microvm",
            Profile::PvmCompat => "pvm-compat",
        }
    }

    /// The profile this host needs: `PvmCompat` when the `kvm_pvm` module is loaded, else
    /// `Microvm`. Same rule as kernel-config/host-profile.sh.
    pub fn for_host() -> Profile {
        Profile::detect(Path::new("/sys/module"), Path::new("/proc/modules"))
    }

    /// [`Profile::for_host`] against explicit sysfs-module and /proc/modules paths.
    pub fn detect(sys_module: &Path, proc_modules: &Path) -> Profile {
        if sys_module.join("kvm_pvm").is_dir() {
            return Profile::PvmCompat;
        }
        let listed = std::fs::read_to_string(proc_modules)
            .map(|mods| mods.lines().any(|l| l.split(' ').next() == Some("kvm_pvm")))
            .unwrap_or(false);
        if listed {
            Profile::PvmCompat
        } else {
            Profile::Microvm
        }
    }

    /// Boot flags for this profile, without `root=`/`init=` (stage1 and the VMM add those,
    /// and the virtio-mmio device declarations).
    pub fn cmdline(self) -> &'static str {
        match self {
            Profile::Microvm => include_str!("microvm.cmdline").trim_end(),
            Profile::PvmCompat => include_str!("pvm-compat.cmdline").trim_end(),
        }
    }

    /// The profile's config fragment (applied on tinyconfig by build.sh).
    pub fn fragment(self) -> &'static str {
        match self {
            Profile::Microvm => include_str!("profiles/microvm.config"),
            Profile::PvmCompat => include_str!("profiles/pvm-compat.config"),
        }
    }

    /// The command that builds this profile's kernel.
    pub fn build_command(self) -> String {
        format!("kernel-config/build.sh --profile {}", self.name())
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Profile {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Profile::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| Error::UnknownProfile(s.to_string()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown kernel profile '{0}' (expected microvm or pvm-compat)")]
    UnknownProfile(String),
    #[error("{KERNEL_ENV}={} is not a file", .0.display())]
    EnvKernelMissing(PathBuf),
    #[error(
        "no {profile} guest kernel built yet (looked in {}): build it with `{}` \
         or set {KERNEL_ENV}=/path/to/vmlinux",
        .cache.display(), .profile.build_command()
    )]
    NotBuilt { profile: Profile, cache: PathBuf },
    #[error(
        "no cache directory (neither XDG_CACHE_HOME nor HOME is set): set {KERNEL_ENV}=/path/to/vmlinux \
         to a kernel built with `{}`", .0.build_command()
    )]
    NoCacheDir(Profile),
}

/// Where build.sh caches kernels: `${XDG_CACHE_HOME:-$HOME/.cache}/ark/kernels`.
pub fn cache_dir() -> Option<PathBuf> {
    cache_dir_from(std::env::var_os("XDG_CACHE_HOME"), std::env::var_os("HOME"))
}

fn cache_dir_from(xdg_cache_home: Option<OsString>, home: Option<OsString>) -> Option<PathBuf> {
    // The XDG spec says relative or empty values are to be ignored.
    let xdg = xdg_cache_home
        .map(PathBuf::from)
        .filter(|p| p.is_absolute());
    let base = xdg.or_else(|| {
        home.filter(|h| !h.is_empty())
            .map(|h| PathBuf::from(h).join(".cache"))
    })?;
    Some(base.join("ark").join("kernels"))
}

/// The guest kernel to boot for `profile`: `$ARK_KERNEL` if set, else the newest build of
/// that profile in build.sh's cache.
pub fn locate_kernel(profile: Profile) -> Result<PathBuf, Error> {
    let env = std::env::var_os(KERNEL_ENV).filter(|v| !v.is_empty());
    if let Some(path) = env {
        return kernel_from_env(PathBuf::from(path));
    }
    let cache = cache_dir().ok_or(Error::NoCacheDir(profile))?;
    locate_in_cache(&cache, profile)
}

fn kernel_from_env(path: PathBuf) -> Result<PathBuf, Error> {
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::EnvKernelMissing(path))
    }
}

/// The newest `profile` kernel in a build.sh cache directory: the `current-<profile>` entry,
/// else (a cache written without the link) the most recently built entry whose `profile`
/// file names it.
pub fn locate_in_cache(cache: &Path, profile: Profile) -> Result<PathBuf, Error> {
    let current = cache
        .join(format!("current-{}", profile.name()))
        .join("vmlinux");
    if current.is_file() {
        return Ok(current);
    }
    let newest = std::fs::read_dir(cache)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|dir| {
            std::fs::read_to_string(dir.join("profile"))
                .map(|p| p.trim() == profile.name())
                .unwrap_or(false)
        })
        .filter_map(|dir| {
            let vmlinux = dir.join("vmlinux");
            let built = vmlinux.metadata().ok()?.modified().ok()?;
            Some((built, vmlinux))
        })
        .max_by_key(|(built, _)| *built)
        .map(|(_, vmlinux)| vmlinux);
    newest.ok_or_else(|| Error::NotBuilt {
        profile,
        cache: cache.to_path_buf(),
    })
}

/// The `.config` build.sh leaves beside a cached `vmlinux`, if there is one.
pub fn config_beside(vmlinux: &Path) -> Option<PathBuf> {
    let config = vmlinux.parent()?.join(".config");
    config.is_file().then_some(config)
}

/// The profile build.sh recorded beside a cached `vmlinux`, if there is one.
pub fn profile_beside(vmlinux: &Path) -> Option<Profile> {
    let name = std::fs::read_to_string(vmlinux.parent()?.join("profile")).ok()?;
    name.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::time::{Duration, SystemTime};

    fn entry(cache: &Path, hash: &str, profile: &str, age_secs: u64) -> PathBuf {
        let dir = cache.join(hash);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("vmlinux"), b"\x7fELF").unwrap();
        fs::write(dir.join(".config"), "CONFIG_64BIT=y\n").unwrap();
        fs::write(dir.join("profile"), format!("{profile}\n")).unwrap();
        let when = SystemTime::now() - Duration::from_secs(age_secs);
        fs::File::options()
            .write(true)
            .open(dir.join("vmlinux"))
            .unwrap()
            .set_modified(when)
            .unwrap();
        dir.join("vmlinux")
    }

    #[test]
    fn names_round_trip() {
        for p in Profile::ALL {
            assert_eq!(p.name().parse::<Profile>().unwrap(), p);
            assert_eq!(p.to_string(), p.name());
        }
        let err = "pvm".parse::<Profile>().unwrap_err();
        assert!(err.to_string().contains("unknown kernel profile 'pvm'"));
    }

    #[test]
    fn detects_kvm_pvm_from_sysfs_or_proc_modules() {
        let tmp = tempfile::tempdir().unwrap();
        let sys = tmp.path().join("sys-module");
        let procmods = tmp.path().join("modules");
        fs::create_dir_all(sys.join("kvm")).unwrap();
        // Neither source mentions kvm_pvm: a hardware KVM host.
        assert_eq!(Profile::detect(&sys, &procmods), Profile::Microvm);
        fs::write(
            &procmods,
            "kvm_intel 380928 0 - Live 0x0\nkvm 1142784 1 kvm_intel, Live 0x0\n",
        )
        .unwrap();
        assert_eq!(Profile::detect(&sys, &procmods), Profile::Microvm);
        // A module whose name merely starts with kvm_pvm is not it.
        fs::write(&procmods, "kvm_pvm_helper 1 0 - Live 0x0\n").unwrap();
        assert_eq!(Profile::detect(&sys, &procmods), Profile::Microvm);
        fs::write(&procmods, "kvm_pvm 155648 0 - Live 0x0\n").unwrap();
        assert_eq!(Profile::detect(&sys, &procmods), Profile::PvmCompat);
        fs::remove_file(&procmods).unwrap();
        fs::create_dir_all(sys.join("kvm_pvm")).unwrap();
        assert_eq!(Profile::detect(&sys, &procmods), Profile::PvmCompat);
    }

    #[test]
    fn for_host_agrees_with_host_profile_script() {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("host-profile.sh");
        let out = std::process::Command::new("sh")
            .arg(&script)
            .output()
            .unwrap();
        assert!(out.status.success(), "{} failed", script.display());
        let name = String::from_utf8(out.stdout).unwrap();
        assert_eq!(Profile::for_host().name(), name.trim());
    }

    #[test]
    fn cmdlines_are_one_line_without_root_or_init_and_end_the_vm() {
        for p in Profile::ALL {
            let c = p.cmdline();
            assert!(!c.is_empty() && !c.contains('\n'), "{p}: {c:?}");
            let words: Vec<&str> = c.split_whitespace().collect();
            for w in &words {
                for owned_by_vmm in ["root=", "init=", "rdinit=", "virtio_mmio.device="] {
                    assert!(!w.starts_with(owned_by_vmm), "{p} cmdline sets {w}");
                }
            }
            // A guest reboot or panic must end the VM through the i8042 reset line.
            assert!(words.contains(&"reboot=k"), "{p}: {c}");
            assert!(words.contains(&"panic=-1"), "{p}: {c}");
            assert!(words.contains(&"console=ttyS0"), "{p}: {c}");
        }
        let pvm = Profile::PvmCompat.cmdline();
        for flag in ["noxsave", "no_int3_selftest", "rodata=off", "tsc=reliable"] {
            assert!(pvm.split_whitespace().any(|w| w == flag), "{flag} missing");
        }
        assert!(
            pvm.contains("clearcpuid=308"),
            "SMAP must be cleared: {pvm}"
        );
    }

    #[test]
    fn cache_dir_prefers_absolute_xdg_cache_home() {
        let home = Some(OsString::from("/home/u"));
        assert_eq!(
            cache_dir_from(Some("/x/cache".into()), home.clone()),
            Some(PathBuf::from("/x/cache/ark/kernels"))
        );
        assert_eq!(
            cache_dir_from(Some("relative".into()), home.clone()),
            Some(PathBuf::from("/home/u/.cache/ark/kernels"))
        );
        assert_eq!(
            cache_dir_from(None, home),
            Some(PathBuf::from("/home/u/.cache/ark/kernels"))
        );
        assert_eq!(cache_dir_from(None, None), None);
    }

    #[test]
    fn locates_current_link_then_newest_entry_of_the_profile() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path();

        let err = locate_in_cache(cache, Profile::PvmCompat).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("kernel-config/build.sh --profile pvm-compat"),
            "{msg}"
        );

        let old = entry(cache, "aaaa", "pvm-compat", 3600);
        let new = entry(cache, "bbbb", "pvm-compat", 60);
        let other = entry(cache, "cccc", "microvm", 0);
        assert_eq!(locate_in_cache(cache, Profile::PvmCompat).unwrap(), new);
        assert_eq!(locate_in_cache(cache, Profile::Microvm).unwrap(), other);

        // build.sh's link wins over modification times.
        std::os::unix::fs::symlink("aaaa", cache.join("current-pvm-compat")).unwrap();
        let found = locate_in_cache(cache, Profile::PvmCompat).unwrap();
        assert_eq!(
            fs::canonicalize(found).unwrap(),
            fs::canonicalize(&old).unwrap()
        );

        // A link to an entry that is gone falls back to scanning.
        fs::remove_dir_all(cache.join("aaaa")).unwrap();
        assert_eq!(locate_in_cache(cache, Profile::PvmCompat).unwrap(), new);

        assert_eq!(config_beside(&new), Some(cache.join("bbbb/.config")));
        assert_eq!(profile_beside(&new), Some(Profile::PvmCompat));
        assert_eq!(profile_beside(&other), Some(Profile::Microvm));
    }

    #[test]
    fn env_kernel_must_exist() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("vmlinux");
        let err = kernel_from_env(missing.clone()).unwrap_err();
        assert!(err.to_string().contains(&missing.display().to_string()));
        fs::write(&missing, b"\x7fELF").unwrap();
        assert_eq!(kernel_from_env(missing.clone()).unwrap(), missing);
    }
}
