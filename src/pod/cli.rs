//! `ark prepare`, `ark run`, `ark run-prepared`, `ark list`, `ark status`, `ark stop`, `ark rm`,
//! `ark gc`, `ark enter`, `ark cat-manifest`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use ark_pod_spec::{Flavor, NetMode};
use clap::{Args, Subcommand, ValueEnum};

use super::args::AppFlags;
use super::lifecycle::Durability;
use super::plan::KvmRoot;
use crate::cli::GlobalOpts;

#[derive(Debug, Subcommand)]
pub enum PodCommand {
    /// Prepare a pod and print its UUID: `ark prepare [flags] IMAGE [app flags] [-- ARGS] [--- IMAGE ...]`.
    Prepare(Box<PrepareArgs>),
    /// Run a prepared pod (exits with the pod's exit code).
    RunPrepared(RunPreparedArgs),
    /// Prepare and run a pod: `ark run [flags] IMAGE [app flags] [-- ARGS] [--- IMAGE ...]`.
    Run(Box<PrepareArgs>),
    /// List pods.
    List(ListArgs),
    /// Show a pod's state, pid and per-app exit statuses.
    Status(StatusArgs),
    /// Stop a running pod: SIGTERM to its apps, SIGKILL after the timeout.
    Stop(StopArgs),
    /// Remove pods that are not running.
    Rm(RmArgs),
    /// Remove exited pods (with their mounts and cgroups), abandoned prepared pods and leftovers.
    Gc(GcArgs),
    /// Run a command inside a running pod's app (ns and fly pods).
    Enter(EnterArgs),
    /// Print a pod's manifest.
    CatManifest(CatManifestArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Stage1Flavor {
    #[default]
    Kvm,
    Ns,
    Fly,
}

impl From<Stage1Flavor> for Flavor {
    fn from(f: Stage1Flavor) -> Flavor {
        match f {
            Stage1Flavor::Kvm => Flavor::Kvm,
            Stage1Flavor::Ns => Flavor::Ns,
            Stage1Flavor::Fly => Flavor::Fly,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Net {
    /// A network namespace with only loopback.
    None,
    /// The host's network.
    #[default]
    Host,
}

impl From<Net> for NetMode {
    fn from(n: Net) -> NetMode {
        match n {
            Net::None => NetMode::None,
            Net::Host => NetMode::Host,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct PrepareArgs {
    /// Isolation flavor: kvm (a microVM), ns (namespaces + cgroup), fly (chroot only).
    #[arg(long, value_enum, default_value_t = Stage1Flavor::Kvm)]
    pub stage1: Stage1Flavor,
    /// How stage1-kvm gets the pod root: fs (virtio-fs) or blk (an erofs/ext4 image made now).
    #[arg(long = "stage1-kvm-root", value_enum, default_value_t = KvmRoot::Fs)]
    pub stage1_kvm_root: KvmRoot,
    /// A pod volume: NAME,kind=host,source=PATH[,readOnly=true] (repeatable).
    #[arg(long)]
    pub volume: Vec<String>,
    /// The pod's hostname (default: ark-<first 8 of the UUID>).
    #[arg(long)]
    pub hostname: Option<String>,
    /// Give the (first) app the terminal's stdin.
    #[arg(long)]
    pub interactive: bool,
    /// Write the pod's UUID to this file.
    #[arg(long = "uuid-file-save")]
    pub uuid_file_save: Option<PathBuf>,
    /// Networking: none (loopback only) or host.
    #[arg(long, value_enum, default_value_t = Net::Host)]
    pub net: Net,
    /// A pod annotation, KEY=VALUE (repeatable; a key given again replaces its value, as in podman).
    #[arg(long = "annotation", value_name = "KEY=VALUE")]
    pub annotation: Vec<String>,
    /// Defaults for every app (each app can override them after its image).
    #[command(flatten)]
    pub app_defaults: AppFlags,
    /// IMAGE [app flags] [-- ARGS] [--- IMAGE [app flags] [-- ARGS]]...
    #[arg(
        value_name = "IMAGE",
        required = true,
        num_args = 1..,
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub images: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct RunPreparedArgs {
    /// The pod's UUID (or a unique prefix).
    pub uuid: String,
    /// Give the (first) app the terminal's stdin.
    #[arg(long)]
    pub interactive: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Format {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Omit the header line.
    #[arg(long = "no-legend")]
    pub no_legend: bool,
    /// Print full UUIDs.
    #[arg(long = "full")]
    pub full: bool,
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// Wait until the pod has exited.
    #[arg(long)]
    pub wait: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    pub uuid: String,
}

#[derive(Debug, Clone, Args)]
pub struct StopArgs {
    /// SIGKILL at once.
    #[arg(long)]
    pub force: bool,
    /// How long to wait after SIGTERM before SIGKILL (e.g. 10s).
    #[arg(long, default_value = "10s", value_parser = parse_duration_arg)]
    pub timeout: std::time::Duration,
    #[arg(required = true)]
    pub uuids: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct RmArgs {
    #[arg(required = true)]
    pub uuids: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct GcArgs {
    /// How long exited pods are kept before removal.
    #[arg(long = "grace-period", default_value = "30m", value_parser = parse_duration_arg)]
    pub grace_period: std::time::Duration,
    /// How long prepared pods may wait to be run before removal.
    #[arg(long = "expire-prepared", default_value = "24h", value_parser = parse_duration_arg)]
    pub expire_prepared: std::time::Duration,
}

#[derive(Debug, Clone, Args)]
pub struct EnterArgs {
    /// The app to enter (needed when the pod has several).
    #[arg(long)]
    pub app: Option<String>,
    pub uuid: String,
    /// Command and arguments (default: /bin/sh).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub cmd: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct CatManifestArgs {
    pub uuid: String,
}

fn parse_duration_arg(s: &str) -> Result<std::time::Duration, String> {
    super::units::parse_duration(s)
}

pub fn run(global: &GlobalOpts, cmd: PodCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        PodCommand::Prepare(a) => {
            let prepared = super::lifecycle::prepare(global, &a, Durability::Synced)?;
            println!("{}", prepared.pod.pod.uuid);
            Ok(ExitCode::SUCCESS)
        }
        PodCommand::Run(a) => {
            let prepared = super::lifecycle::prepare(global, &a, Durability::Process)?;
            let e = super::lifecycle::exec_stage1(global, prepared, a.interactive);
            Err(e)
        }
        PodCommand::RunPrepared(a) => {
            let e = super::lifecycle::run_prepared(global, &a.uuid, a.interactive);
            Err(e)
        }
        PodCommand::List(a) => super::info::list(global, &a),
        PodCommand::Status(a) => super::info::status(global, &a),
        PodCommand::CatManifest(a) => {
            let store = super::open_store(global)?;
            let pod = store.find(&a.uuid)?;
            let path = ark_pod_spec::PodLayout::new(&pod.path).manifest();
            let bytes = std::fs::read(&path)
                .with_context(|| format!("pod {}: no manifest (still preparing?)", pod.uuid))?;
            use std::io::Write;
            std::io::stdout().write_all(&bytes)?;
            Ok(ExitCode::SUCCESS)
        }
        PodCommand::Stop(a) => super::stop::stop(global, &a),
        PodCommand::Rm(a) => super::gc::rm(global, &a),
        PodCommand::Gc(a) => super::gc::gc(global, &a),
        PodCommand::Enter(a) => super::enter::enter(global, &a),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::cli::{Cli, Command};

    use super::*;

    fn parse(args: &[&str]) -> PodCommand {
        let cli = Cli::try_parse_from(std::iter::once("ark").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        match cli.command {
            Command::Pod(p) => p,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn run_keeps_everything_after_the_image_raw() {
        let PodCommand::Run(a) = parse(&[
            "run",
            "--stage1=ns",
            "--set-env=A=1",
            "--insecure-options=image",
            "oci-layout:/x:latest",
            "--name=one",
            "--",
            "sh",
            "-c",
            "echo hi; exit 3",
            "---",
            "busybox",
            "--",
            "--",
            "-x",
        ]) else {
            panic!()
        };
        assert_eq!(a.stage1, Stage1Flavor::Ns);
        assert_eq!(a.app_defaults.set_env, ["A=1"]);
        assert_eq!(
            a.images,
            [
                "oci-layout:/x:latest",
                "--name=one",
                "--",
                "sh",
                "-c",
                "echo hi; exit 3",
                "---",
                "busybox",
                "--",
                "--",
                "-x"
            ]
        );
        let apps = super::super::args::split_apps(&a.images, &a.app_defaults).unwrap();
        assert_eq!(apps.len(), 2);
        assert_eq!(apps[1].args.as_deref().unwrap(), ["--", "-x"]);
    }

    #[test]
    fn pod_level_flags() {
        let PodCommand::Prepare(a) = parse(&[
            "prepare",
            "--stage1=kvm",
            "--stage1-kvm-root=blk",
            "--volume",
            "d,kind=host,source=/tmp",
            "--net=none",
            "--hostname=h",
            "--interactive",
            "--uuid-file-save=/tmp/u",
            "img",
        ]) else {
            panic!()
        };
        assert_eq!(a.stage1_kvm_root, KvmRoot::Blk);
        assert_eq!(a.net, Net::None);
        assert!(a.interactive);
        assert_eq!(a.volume, ["d,kind=host,source=/tmp"]);
        assert_eq!(a.images, ["img"]);
    }

    #[test]
    fn other_commands() {
        let PodCommand::Gc(g) = parse(&["gc", "--grace-period=0s"]) else {
            panic!()
        };
        assert_eq!(g.grace_period, std::time::Duration::ZERO);
        let PodCommand::Stop(s) = parse(&["stop", "--force", "--timeout=3s", "abc"]) else {
            panic!()
        };
        assert!(s.force);
        assert_eq!(s.timeout, std::time::Duration::from_secs(3));
        let PodCommand::Enter(e) = parse(&["enter", "--app=a", "abc", "ls", "-l", "/"]) else {
            panic!()
        };
        assert_eq!(e.app.as_deref(), Some("a"));
        assert_eq!(e.cmd, ["ls", "-l", "/"]);
        let PodCommand::List(l) = parse(&["list", "--format=json"]) else {
            panic!()
        };
        assert_eq!(l.format, Format::Json);
        let PodCommand::Status(s) = parse(&["status", "--wait", "abc"]) else {
            panic!()
        };
        assert!(s.wait);
        assert!(
            Cli::try_parse_from(["ark", "run"]).is_err(),
            "an image is required"
        );
        assert!(Cli::try_parse_from(["ark", "gc", "--grace-period=soon"]).is_err());
    }

    #[test]
    fn completion_scripts_know_the_pod_commands() {
        use clap::CommandFactory;
        for shell in [clap_complete::Shell::Bash, clap_complete::Shell::Zsh] {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "ark", &mut out);
            let script = String::from_utf8(out).unwrap();
            for word in [
                "run-prepared",
                "cat-manifest",
                "prepare",
                "enter",
                "--grace-period",
                "--stage1",
            ] {
                assert!(script.contains(word), "{shell:?} completion lacks {word}");
            }
        }
    }
}
