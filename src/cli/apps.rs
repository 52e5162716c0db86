//! The per-app part of `ark prepare`/`ark run`'s command line:
//! `[pod flags] IMAGE [app flags] [-- ARGS] [--- IMAGE [app flags] [-- ARGS]]...`.
//!
//! clap parses the pod flags and takes everything from the first image on as raw words; this
//! module splits those words into apps (on `---`), each app's flags (parsed by clap again, as
//! [`AppFlags`]) and its arguments (after `--`), as rkt did.

use ark::pod::args::{AppOptions, AppSpec};
use clap::{Args, Parser};

/// Flags that describe one app. Given before the first image they are defaults for every app;
/// given after an image they apply to that app (lists append, single values replace).
#[derive(Debug, Clone, Default, PartialEq, Args)]
pub struct AppFlags {
    /// Before the first image: the pod's name (podman's --name; unique among live pods, and
    /// usable wherever a UUID is). After an image: that app's name in the pod (default:
    /// derived from the image name).
    #[arg(long)]
    pub name: Option<String>,
    /// Program to run instead of the image's entrypoint/cmd.
    #[arg(long)]
    pub exec: Option<String>,
    /// Environment variable for the app, KEY=VALUE (repeatable).
    #[arg(short = 'e', long = "set-env", alias = "env", value_name = "KEY=VALUE")]
    pub set_env: Vec<String>,
    /// User to run as: a name from the image's /etc/passwd or a numeric uid; USER:GROUP also
    /// sets --group (podman's -u form).
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Group to run as: a name from the image's /etc/group or a numeric gid.
    #[arg(long)]
    pub group: Option<String>,
    /// Working directory inside the app.
    #[arg(short = 'w', long = "working-dir", alias = "workdir")]
    pub working_dir: Option<String>,
    /// Mount a pod volume into the app: volume=NAME,target=PATH (repeatable).
    #[arg(long, value_name = "volume=NAME,target=PATH")]
    pub mount: Vec<String>,
    /// Memory limit, e.g. 256M or 1G.
    #[arg(long)]
    pub memory: Option<String>,
    /// CPU limit, e.g. 1.5 or 500m.
    #[arg(long)]
    pub cpus: Option<String>,
    /// Most processes the app may have.
    #[arg(long = "pids-limit")]
    pub pids_limit: Option<u64>,
    /// Keep only these capabilities, comma-separated (e.g. CAP_NET_BIND_SERVICE,CAP_CHOWN).
    #[arg(
        long = "caps-retain",
        value_delimiter = ',',
        conflicts_with = "caps_remove"
    )]
    pub caps_retain: Option<Vec<String>>,
    /// Drop these capabilities from the default set, comma-separated.
    #[arg(long = "caps-remove", value_delimiter = ',')]
    pub caps_remove: Option<Vec<String>>,
    /// Extra group IDs for the app, comma-separated.
    #[arg(long = "supplementary-gids", value_delimiter = ',')]
    pub supplementary_gids: Option<Vec<u32>>,
}

impl AppFlags {
    /// `self` (the defaults) overlaid with one app's own flags.
    pub fn merged_with(&self, app: &AppFlags) -> AppFlags {
        AppFlags {
            name: app.name.clone().or_else(|| self.name.clone()),
            exec: app.exec.clone().or_else(|| self.exec.clone()),
            set_env: self.set_env.iter().chain(&app.set_env).cloned().collect(),
            user: app.user.clone().or_else(|| self.user.clone()),
            group: app.group.clone().or_else(|| self.group.clone()),
            working_dir: app.working_dir.clone().or_else(|| self.working_dir.clone()),
            mount: self.mount.iter().chain(&app.mount).cloned().collect(),
            memory: app.memory.clone().or_else(|| self.memory.clone()),
            cpus: app.cpus.clone().or_else(|| self.cpus.clone()),
            pids_limit: app.pids_limit.or(self.pids_limit),
            // A per-app capability choice replaces the default one as a whole.
            caps_retain: if app.caps_retain.is_some() || app.caps_remove.is_some() {
                app.caps_retain.clone()
            } else {
                self.caps_retain.clone()
            },
            caps_remove: if app.caps_retain.is_some() || app.caps_remove.is_some() {
                app.caps_remove.clone()
            } else {
                self.caps_remove.clone()
            },
            supplementary_gids: app
                .supplementary_gids
                .clone()
                .or_else(|| self.supplementary_gids.clone()),
        }
    }
}

impl From<AppFlags> for AppOptions {
    fn from(f: AppFlags) -> AppOptions {
        // `-u USER:GROUP`: a --group given too wins.
        let (user, group) = match f.user.as_deref().and_then(|u| u.split_once(':')) {
            Some((u, g)) => (Some(u.to_string()), f.group.or_else(|| Some(g.to_string()))),
            None => (f.user, f.group),
        };
        AppOptions {
            name: f.name,
            exec: f.exec,
            set_env: f.set_env,
            user,
            group,
            working_dir: f.working_dir,
            mount: f.mount,
            memory: f.memory,
            cpus: f.cpus,
            pids_limit: f.pids_limit,
            caps_retain: f.caps_retain,
            caps_remove: f.caps_remove,
            supplementary_gids: f.supplementary_gids,
        }
    }
}

#[derive(Debug, Parser)]
#[command(name = "app flags", no_binary_name = true, disable_help_flag = true)]
struct AppFlagsParser {
    #[command(flatten)]
    flags: AppFlags,
}

/// Splits the raw words from the first image on into apps, merging `defaults` into each.
pub fn split_apps(words: &[String], defaults: &AppFlags) -> Result<Vec<AppSpec>, String> {
    if words.is_empty() {
        return Err("no image given".into());
    }
    let mut apps = Vec::new();
    for chunk in words.split(|w| w == "---") {
        let Some((image, rest)) = chunk.split_first() else {
            return Err("`---` must be followed by an image".into());
        };
        if image.starts_with('-') {
            return Err(format!(
                "expected an image, found {image:?} (pod flags go before the first image)"
            ));
        }
        let (flag_words, args) = match rest.iter().position(|w| w == "--") {
            Some(i) => (&rest[..i], Some(rest[i + 1..].to_vec())),
            None => (rest, None),
        };
        let own = AppFlagsParser::try_parse_from(flag_words)
            .map_err(|e| format!("app {image}: {}", super::one_line(&e)))?
            .flags;
        apps.push(AppSpec {
            image: image.clone(),
            flags: defaults.merged_with(&own).into(),
            args,
        });
    }
    Ok(apps)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &[&str]) -> Vec<String> {
        s.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn one_app_with_args() {
        let apps = split_apps(
            &words(&["busybox", "--", "sh", "-c", "echo hi; exit 3"]),
            &AppFlags::default(),
        )
        .unwrap();
        assert_eq!(apps.len(), 1);
        assert_eq!(apps[0].image, "busybox");
        assert_eq!(
            apps[0].args.as_deref().unwrap(),
            ["sh", "-c", "echo hi; exit 3"]
        );
    }

    #[test]
    fn no_double_dash_keeps_image_cmd_and_empty_args_are_explicit() {
        let apps = split_apps(&words(&["a", "---", "b", "--"]), &AppFlags::default()).unwrap();
        assert_eq!(apps[0].args, None);
        assert_eq!(apps[1].args, Some(vec![]));
    }

    #[test]
    fn multi_app_with_per_app_flags_and_defaults() {
        let defaults = AppFlags {
            set_env: vec!["A=1".into()],
            memory: Some("64M".into()),
            ..Default::default()
        };
        let apps = split_apps(
            &words(&[
                "img1",
                "--name=one",
                "--set-env",
                "B=2",
                "--",
                "sh",
                "-c",
                "x --- y",
                "---",
                "img2",
                "--name",
                "two",
                "--memory=128M",
                "--user=nobody",
                "--mount",
                "volume=data,target=/data",
                "--",
                "--",
                "---",
            ]),
            &defaults,
        );
        // A `---` right at the end has no image after it.
        assert!(apps.is_err());

        let apps = split_apps(
            &words(&[
                "img1",
                "--name=one",
                "--set-env",
                "B=2",
                "--",
                "sh",
                "-c",
                "x",
                "---",
                "img2",
                "--name",
                "two",
                "--memory=128M",
                "--user=nobody",
                "--mount",
                "volume=data,target=/data",
                "--",
                "--",
            ]),
            &defaults,
        )
        .unwrap();
        assert_eq!(apps.len(), 2);
        assert_eq!(apps[0].flags.name.as_deref(), Some("one"));
        assert_eq!(apps[0].flags.set_env, ["A=1", "B=2"]);
        assert_eq!(apps[0].flags.memory.as_deref(), Some("64M"));
        assert_eq!(apps[0].args.as_deref().unwrap(), ["sh", "-c", "x"]);
        assert_eq!(apps[1].image, "img2");
        assert_eq!(apps[1].flags.name.as_deref(), Some("two"));
        assert_eq!(apps[1].flags.memory.as_deref(), Some("128M"));
        assert_eq!(apps[1].flags.user.as_deref(), Some("nobody"));
        assert_eq!(apps[1].flags.set_env, ["A=1"]);
        assert_eq!(apps[1].flags.mount, ["volume=data,target=/data"]);
        // Only the first `--` separates: later ones are the app's own arguments.
        assert_eq!(apps[1].args.as_deref().unwrap(), ["--"]);
    }

    #[test]
    fn bad_app_flags_are_one_line_errors() {
        let e = split_apps(&words(&["img", "--volume=x"]), &AppFlags::default()).unwrap_err();
        assert!(e.starts_with("app img: "), "{e}");
        assert!(!e.contains('\n'), "{e}");
        let e = split_apps(&words(&["--exec=/bin/sh"]), &AppFlags::default()).unwrap_err();
        assert!(e.contains("expected an image"), "{e}");
        assert!(split_apps(&[], &AppFlags::default()).is_err());
        assert!(split_apps(&words(&["img", "extra"]), &AppFlags::default()).is_err());
    }
}
