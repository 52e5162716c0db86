//! `ark prepare`, `ark run`, `ark run-prepared`, `ark list`, `ark status`, `ark stop`, `ark rm`,
//! `ark gc`, `ark enter`, `ark cat-manifest`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use ark::pod::lifecycle::{self, Durability, PrepareRequest};
use ark::pod::{gc, info, names, net, stop};
use ark::Context as Ctx;
use ark_pod_spec::{format_unix_ms, Flavor, KvmRoot};
use clap::{Args, Subcommand, ValueEnum};

use super::apps::{split_apps, AppFlags};
use super::format::{parse_format, print_non_table, print_table, Format};
use super::output::{out, outln};

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
    /// Run a command inside a running pod's app.
    Enter(EnterArgs),
    /// Attach our terminal to a running pod's tty app (started with -t); the detach keys leave.
    Attach(AttachArgs),
    /// Print a pod's manifest.
    CatManifest(CatManifestArgs),
    /// Print an app's recorded output: stdout to stdout, stderr to stderr.
    Logs(LogsArgs),
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

#[derive(Debug, Clone, Args)]
pub struct PrepareArgs {
    /// Isolation flavor: kvm (a microVM), ns (namespaces + cgroup), fly (chroot only).
    #[arg(long, value_enum, default_value_t = Stage1Flavor::Kvm)]
    pub stage1: Stage1Flavor,
    /// How stage1-kvm gets the pod root: fs (virtio-fs) or blk (an erofs/ext4 image made now).
    #[arg(long = "stage1-kvm-root", value_enum, default_value_t = KvmRoot::Fs)]
    pub stage1_kvm_root: KvmRoot,
    /// A pod volume: NAME,kind=host,source=PATH[,readOnly=true] (rkt's; mount it with an
    /// app's --mount), or podman's HOSTDIR:PATH[:ro|rw] (mounted at PATH in every app).
    /// Repeatable.
    #[arg(short = 'v', long, value_name = "VOLUME")]
    pub volume: Vec<String>,
    /// `run`: remove the pod when it ends (however it ends, short of ark itself being
    /// killed: then `ark gc` does).
    #[arg(long)]
    pub rm: bool,
    /// The pod's hostname (default: ark-<first 8 of the UUID>).
    #[arg(long)]
    pub hostname: Option<String>,
    /// Give the (first) app our stdin (with -t: through its pty).
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Give the (first) app a pty made inside the pod; `ark run` attaches our terminal to it
    /// (`ark attach` after a detach).
    #[arg(short = 't', long)]
    pub tty: bool,
    /// With -t -i: the keys that detach, leaving the pod running (podman's syntax; "" never).
    #[arg(long = "detach-keys", value_name = "KEYS", default_value = ark::pod::agent_client::DEFAULT_DETACH_KEYS)]
    pub detach_keys: String,
    /// Write the pod's UUID to this file.
    #[arg(long = "uuid-file-save")]
    pub uuid_file_save: Option<PathBuf>,
    /// Networking: default (NAT, rkt's; the ns default), none (loopback only), host (ns and
    /// fly; the fly and, for now, kvm default), or CNI networks NAME[:ARGS][,NAME...] from
    /// --net-config-dir.
    #[arg(long, value_name = "NET")]
    pub net: Vec<String>,
    /// Where CNI network configs are read (default /etc/ark/net.d).
    #[arg(long = "net-config-dir", value_name = "DIR")]
    pub net_config_dir: Option<PathBuf>,
    /// Where CNI plugins are looked up, repeatable (default /usr/lib/cni, /opt/cni/bin).
    #[arg(long = "cni-plugin-dir", value_name = "DIR")]
    pub cni_plugin_dir: Vec<PathBuf>,
    /// Forward a host port to a port the image declares: NAME:[HOSTIP:]HOSTPORT (repeatable;
    /// NAME as the image names it, or PORT-PROTO such as 80-tcp).
    #[arg(long = "port", value_name = "NAME:[HOSTIP:]HOSTPORT")]
    pub port: Vec<String>,
    /// Forward a host port into the pod: [HOSTIP:]HOSTPORT:PODPORT[/PROTO] (repeatable).
    #[arg(
        short = 'p',
        long = "publish",
        value_name = "[HOSTIP:]HOSTPORT:PODPORT[/PROTO]"
    )]
    pub publish: Vec<String>,
    /// A DNS server for the apps' resolv.conf (repeatable), or host (the host's file), or
    /// none (the image's).
    #[arg(long = "dns", value_name = "IP|host|none")]
    pub dns: Vec<String>,
    /// A DNS search domain (repeatable).
    #[arg(long = "dns-search", value_name = "DOMAIN")]
    pub dns_search: Vec<String>,
    /// A resolv.conf option (repeatable), e.g. ndots:2.
    #[arg(long = "dns-opt", value_name = "OPTION")]
    pub dns_opt: Vec<String>,
    /// An /etc/hosts entry HOST=IP (repeatable), or host to start from the host's /etc/hosts.
    #[arg(long = "hosts-entry", value_name = "HOST=IP|host")]
    pub hosts_entry: Vec<String>,
    /// A pod annotation, KEY=VALUE (repeatable; a key given again replaces its value, as in podman).
    #[arg(long = "annotation", value_name = "KEY=VALUE")]
    pub annotation: Vec<String>,
    /// Each app's log rotates past SIZE (e.g. 10MiB; 3 files are kept).
    #[arg(long = "log-max-size", value_name = "SIZE", value_parser = parse_size_arg)]
    pub log_max_size: Option<u64>,
    /// Defaults for every app (each app can override them after its image).
    #[command(flatten)]
    pub app_defaults: AppFlags,
    /// IMAGE [app flags] [-- ARGS] [--- IMAGE [app flags] [-- ARGS]]...
    // Not required by clap: no image is a one-line error (exit 125) from split_apps, and
    // `ark app sandbox` shares these flags with none.
    #[arg(
        value_name = "IMAGE",
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
    /// Give the (first) app our stdin (a pod prepared with -t: through its pty).
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// A pod prepared with -t, with -i: the keys that detach (podman's syntax; "" never).
    #[arg(long = "detach-keys", value_name = "KEYS", default_value = ark::pod::agent_client::DEFAULT_DETACH_KEYS)]
    pub detach_keys: String,
}

#[derive(Debug, Clone, Args)]
pub struct AttachArgs {
    /// The app (default: the pod's app with a tty).
    #[arg(long)]
    pub app: Option<String>,
    /// The keys that detach, leaving the pod running (podman's syntax; "" never).
    #[arg(long = "detach-keys", value_name = "KEYS", default_value = ark::pod::agent_client::DEFAULT_DETACH_KEYS)]
    pub detach_keys: String,
    /// Do not pass our stdin (only watch the app's output).
    #[arg(long = "no-stdin")]
    pub no_stdin: bool,
    pub uuid: String,
}

#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// Output format: table (alias text), json, or a template such as '{{.UUID}} {{.State}}'.
    #[arg(long, default_value = "table", value_parser = parse_format)]
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
    /// Output format: table (rkt's key=value lines; alias text), json, or a template such as
    /// '{{.ExitCode}}'.
    #[arg(long, default_value = "table", value_parser = parse_format)]
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
    /// A terminal (a pty made inside the pod) for the command; ours goes raw meanwhile.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Pass our stdin to the command (without: /dev/null).
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Run as this user (name or uid, from the app's /etc/passwd) instead of the app's.
    #[arg(long)]
    pub user: Option<String>,
    /// Set NAME=value in the command's environment (repeatable).
    #[arg(long = "env", short = 'e', value_name = "NAME=VALUE")]
    pub env: Vec<String>,
    /// Working directory instead of the app's.
    #[arg(long = "workdir", short = 'w')]
    pub workdir: Option<String>,
    pub uuid: String,
    /// Command and arguments (default: /bin/sh).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub cmd: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct LogsArgs {
    /// The app (needed when the pod has several).
    #[arg(long)]
    pub app: Option<String>,
    /// Keep printing new output until the pod ends.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Only output of the last DURATION (e.g. 10m, 2h).
    #[arg(long, value_parser = parse_duration_arg)]
    pub since: Option<std::time::Duration>,
    /// Prefix each line with its RFC 3339 timestamp.
    #[arg(short = 't', long)]
    pub timestamps: bool,
    pub uuid: String,
}

#[derive(Debug, Clone, Args)]
pub struct CatManifestArgs {
    pub uuid: String,
}

fn parse_size_arg(s: &str) -> Result<u64, String> {
    ark::pod::units::parse_size(s)
}

pub(super) fn parse_duration_arg(s: &str) -> Result<std::time::Duration, String> {
    ark::pod::units::parse_duration(s)
}

fn invalid(e: String) -> anyhow::Error {
    ark::pod::error::invalid(e).into()
}

impl PrepareArgs {
    fn net_options(&self) -> Result<net::NetOptions, String> {
        let dir = |d: &PathBuf| {
            let s = d.to_string_lossy().into_owned();
            if ark_pod_spec::manifest::is_clean_absolute(&s) {
                Ok(s)
            } else {
                Err(format!(
                    "{}: want an absolute path without '..'",
                    d.display()
                ))
            }
        };
        let (hosts_entries, hosts_from_host) = net::parse_hosts_entries(&self.hosts_entry)?;
        Ok(net::NetOptions {
            ports: self
                .port
                .iter()
                .map(|p| net::parse_named_port(p))
                .chain(self.publish.iter().map(|p| net::parse_publish(p)))
                .collect::<Result<_, _>>()?,
            dns: net::parse_dns(&self.dns, &self.dns_search, &self.dns_opt)?,
            hosts_entries,
            hosts_from_host,
            config_dir: self.net_config_dir.as_ref().map(dir).transpose()?,
            plugin_dirs: self
                .cni_plugin_dir
                .iter()
                .map(dir)
                .collect::<Result<_, _>>()?,
        })
    }

    /// The pod's name (`--name` before the first image; after an image it names that app).
    fn pod_name(&self) -> Option<&str> {
        self.app_defaults.name.as_deref()
    }

    /// The library's request: the app words split into apps (a bad one is a one-line error).
    fn request(&self) -> anyhow::Result<PrepareRequest> {
        // (`---` is the app separator, said wrong: split_apps says so.)
        if self
            .images
            .first()
            .is_some_and(|w| w.starts_with('-') && w != "---")
        {
            // clap took an unknown pod flag for the image (the image words take anything):
            // let clap say what it is, with its suggestion.
            if let Some(e) = unknown_pod_flag(&self.images[0]) {
                return Err(invalid(e));
            }
        }
        let mut defaults = self.app_defaults.clone();
        defaults.name = None;
        let (_, mounts) = podman_volumes(&self.volume).map_err(invalid)?;
        defaults.mount.extend(mounts);
        let apps = split_apps(&self.images, &defaults).map_err(invalid)?;
        self.request_with(apps)
    }

    /// The request with these apps (`ark app sandbox`: none).
    pub(super) fn request_with(
        &self,
        apps: Vec<ark::pod::args::AppSpec>,
    ) -> anyhow::Result<PrepareRequest> {
        let (volumes, _) = podman_volumes(&self.volume).map_err(invalid)?;
        Ok(PrepareRequest {
            flavor: self.stage1.into(),
            kvm_root: self.stage1_kvm_root.clone(),
            volumes,
            hostname: self.hostname.clone(),
            interactive: self.interactive,
            tty: self.tty,
            uuid_file_save: self.uuid_file_save.clone(),
            net: (!self.net.is_empty())
                .then(|| net::parse_net(&self.net))
                .transpose()
                .map_err(invalid)?,
            network: self.net_options().map_err(invalid)?,
            annotations: self.annotation.clone(),
            log_max_size: self.log_max_size,
            apps,
        })
    }
}

/// Splits podman-style `-v HOSTDIR:PATH[:ro|rw]` from rkt-style volumes: each becomes a pod
/// volume (`vN`) and a mount of it in every app.
fn podman_volumes(specs: &[String]) -> Result<(Vec<String>, Vec<String>), String> {
    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    for (i, v) in specs.iter().enumerate() {
        // rkt's form names its kind; podman's never has '=' or ','.
        if v.contains('=') || v.contains(',') || !v.contains(':') {
            volumes.push(v.clone());
            continue;
        }
        let parts: Vec<&str> = v.split(':').collect();
        let (src, dst, ro) = match parts[..] {
            [src, dst] => (src, dst, false),
            [src, dst, "ro"] => (src, dst, true),
            [src, dst, "rw"] => (src, dst, false),
            _ => {
                return Err(format!(
                    "--volume {v:?}: want HOSTDIR:PATH[:ro|rw] or NAME,kind=host,source=PATH"
                ))
            }
        };
        if !src.starts_with('/') {
            return Err(format!(
                "--volume {v:?}: the host side must be an absolute path (named volumes are podman's, not ark's)"
            ));
        }
        let name = format!("volume-{i}");
        volumes.push(format!(
            "{name},kind=host,source={src}{}",
            if ro { ",readOnly=true" } else { "" }
        ));
        mounts.push(format!("volume={name},target={dst}"));
    }
    Ok((volumes, mounts))
}

/// clap's own error for `word`, an unknown flag clap let through as the first image word
/// (with "a similar argument exists" when there is one).
fn unknown_pod_flag(word: &str) -> Option<String> {
    use clap::Args as _;
    let cmd = PrepareArgs::augment_args(clap::Command::new("run").no_binary_name(true))
        .mut_arg("images", |a| a.allow_hyphen_values(false))
        .disable_help_flag(true);
    cmd.try_get_matches_from([word, "IMAGE"])
        .err()
        .map(|e| super::one_line(&e))
}

/// `prepare`/`run`: the pod prepared, named when asked (the name is checked and recorded
/// under the names lock, so two pods cannot take one name).
fn prepare_named(
    ctx: &Ctx,
    a: &PrepareArgs,
    durability: Durability,
) -> anyhow::Result<lifecycle::Prepared> {
    let req = a.request()?;
    let Some(name) = a.pod_name() else {
        return Ok(lifecycle::prepare(ctx, &req, durability)?);
    };
    let store = ark::pod::open_store(ctx)?;
    let held = names::lock(&store)?;
    names::check_free(&store, name, &held)?;
    let prepared = lifecycle::prepare(ctx, &req, durability)?;
    names::record(&prepared.pod.pod.path, name, &held)?;
    Ok(prepared)
}

/// `ark run --rm`: the stage1 as our child instead of exec'ing it, so that we are there to
/// remove the pod when it ends; stop signals sent to us are passed to it meanwhile.
fn run_then_rm(
    ctx: &Ctx,
    prepared: lifecycle::Prepared,
    interactive: bool,
) -> anyhow::Result<ExitCode> {
    let signals = ark_pod_spec::stage1::stop_signals_with(&[]);
    signals.thread_block()?;
    let mut child = lifecycle::spawn_stage1(ctx, prepared, interactive)?;
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.pid())?);
    std::thread::spawn(move || {
        while let Ok(sig) = signals.wait() {
            let _ = nix::sys::signal::kill(pid, sig);
        }
    });
    let code = child.wait()?;
    let uuid = child.uuid.to_string();
    // An `ark stop` that killed the pod may still hold it for a moment (recording the end,
    // tearing the network down): retry while it is busy.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match gc::rm(ctx, &uuid) {
            Ok(_) => break,
            Err(e)
                if e.kind() == ark::pod::ErrorKind::InUse
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(ExitCode::from(u8::try_from(code.clamp(0, 255))?))
}

pub fn run(ctx: &Ctx, cmd: PodCommand) -> anyhow::Result<ExitCode> {
    let id = |s: &str| names::resolve(ctx, s);
    match cmd {
        PodCommand::Prepare(a) => {
            if a.rm {
                return Err(invalid(
                    "--rm is for `ark run` (a prepared pod is removed with `ark rm`)".into(),
                ));
            }
            let prepared = prepare_named(ctx, &a, Durability::Synced)?;
            outln!("{}", prepared.pod.pod.uuid);
            Ok(ExitCode::SUCCESS)
        }
        PodCommand::Run(a) => {
            if a.tty {
                // A bad --detach-keys is refused before anything is made.
                ark::pod::agent_client::DetachKeys::parse(&a.detach_keys).map_err(invalid)?;
                if a.rm {
                    return Err(invalid(
                        "--rm with -t: not supported yet (a detached pod has nobody left to \
                         remove it); remove it with `ark rm` when it has ended"
                            .into(),
                    ));
                }
            }
            let prepared = prepare_named(ctx, &a, Durability::Process)?;
            if a.tty {
                let o = tty_options(a.interactive, &a.detach_keys, None);
                return exit_code(ark::pod::attach::run_attached(ctx, prepared, &o)?);
            }
            if a.rm {
                return run_then_rm(ctx, prepared, a.interactive);
            }
            Err(lifecycle::exec_stage1(ctx, prepared, a.interactive).into())
        }
        PodCommand::RunPrepared(a) => {
            let uuid = id(&a.uuid);
            if lifecycle::has_tty_app(ctx, &uuid) {
                ark::pod::agent_client::DetachKeys::parse(&a.detach_keys).map_err(invalid)?;
                let prepared = lifecycle::lock_prepared(ctx, &uuid)?;
                let o = tty_options(a.interactive, &a.detach_keys, None);
                return exit_code(ark::pod::attach::run_attached(ctx, prepared, &o)?);
            }
            Err(lifecycle::run_prepared(ctx, &uuid, a.interactive).into())
        }
        PodCommand::Attach(a) => {
            let o = tty_options(!a.no_stdin, &a.detach_keys, a.app);
            exit_code(ark::pod::attach::attach(ctx, &id(&a.uuid), &o)?)
        }
        PodCommand::List(a) => {
            list(ctx, &a)?;
            Ok(ExitCode::SUCCESS)
        }
        PodCommand::Status(a) => {
            let s = info::status(ctx, &id(&a.uuid), a.wait)?;
            match a.format {
                Format::Table => out!("{}", info::status_text(&s)),
                // One pod: a JSON object, not an array of one.
                Format::Json => outln!("{}", serde_json::to_string_pretty(&s)?),
                Format::Template(_) => {
                    print_non_table(&a.format, std::slice::from_ref(&s))?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        PodCommand::CatManifest(a) => {
            let bytes = info::manifest(ctx, &id(&a.uuid))?;
            use std::io::Write;
            super::output::stdout().write_all(&bytes)?;
            Ok(ExitCode::SUCCESS)
        }
        PodCommand::Logs(a) => {
            let req = ark::pod::logs::LogsRequest {
                app: a.app,
                follow: a.follow,
                since: a.since,
                timestamps: a.timestamps,
            };
            ark::pod::logs::logs(
                ctx,
                &id(&a.uuid),
                &req,
                &mut super::output::stdout(),
                &mut std::io::stderr().lock(),
            )?;
            Ok(ExitCode::SUCCESS)
        }
        PodCommand::Stop(a) => each_pod("stop", "stopped", &a.uuids, |id| {
            Ok(stop::stop(
                ctx,
                &names::resolve(ctx, id),
                a.force,
                a.timeout,
            )?)
        }),
        PodCommand::Rm(a) => each_pod("rm", "removed", &a.uuids, |one| Ok(gc::rm(ctx, &id(one))?)),
        PodCommand::Gc(a) => {
            let policy = gc::GcPolicy {
                grace_period: a.grace_period,
                expire_prepared: a.expire_prepared,
            };
            let report = gc::gc(ctx, &policy)?;
            for uuid in &report.removed {
                outln!("{uuid}");
            }
            for e in &report.failed {
                eprintln!("ark: gc: {e:#}");
            }
            if !report.failed.is_empty() {
                bail!(
                    "{} pods could not be removed (they stay in garbage/ for the next gc)",
                    report.failed.len()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        PodCommand::Enter(a) => {
            let opts = ark::pod::enter::EnterOptions {
                app: a.app,
                tty: a.tty,
                interactive: a.interactive,
                user: a.user,
                env: a.env,
                workdir: a.workdir,
                cmd: a.cmd,
            };
            exit_code(ark::pod::enter::enter(ctx, &id(&a.uuid), &opts)?)
        }
    }
}

fn exit_code(code: i32) -> anyhow::Result<ExitCode> {
    let code = u8::try_from(code.clamp(0, 255)).expect("clamped to 0..=255");
    Ok(ExitCode::from(code))
}

fn tty_options(
    stdin: bool,
    detach_keys: &str,
    app: Option<String>,
) -> ark::pod::attach::TtyOptions {
    ark::pod::attach::TtyOptions {
        stdin,
        detach_keys: detach_keys.to_string(),
        app,
    }
}

/// `verb` on each pod, printing each UUID done. One pod: its error is the command's error
/// (printed once, by main); several: each failure on its own line, then one summary error.
fn each_pod(
    verb: &str,
    done: &str,
    ids: &[String],
    mut one: impl FnMut(&str) -> anyhow::Result<String>,
) -> anyhow::Result<ExitCode> {
    let mut failed = None;
    for id in ids {
        match one(id) {
            Ok(uuid) => outln!("{uuid}"),
            Err(e) => {
                if ids.len() > 1 {
                    eprintln!("ark: {verb} {id}: {e:#}");
                }
                failed = Some(e);
            }
        }
    }
    match failed {
        Some(e) if ids.len() == 1 => Err(e),
        Some(_) => bail!("some pods could not be {done}"),
        None => Ok(ExitCode::SUCCESS),
    }
}

/// `ark list`: a table (or JSON, or a template) of every pod.
fn list(ctx: &Ctx, a: &ListArgs) -> anyhow::Result<()> {
    let pods = info::list(ctx)?;
    if print_non_table(&a.format, &pods)?.is_some() {
        return Ok(());
    }
    let rows: Vec<[String; 7]> = pods
        .iter()
        .map(|p| {
            let uuid = if a.full {
                p.uuid.clone()
            } else {
                p.uuid[..8].to_string()
            };
            let joined = |f: &dyn Fn(&info::AppSummary) -> String| {
                p.apps.iter().map(f).collect::<Vec<_>>().join(",")
            };
            let apps = joined(&|x| x.name.clone());
            let images = joined(&|x| ark::image::escape::controls_escaped(&x.image).into_owned());
            // Each app's exit code, in the APPS order; "-" while it runs or never reported.
            let exits = joined(&|x| {
                x.status
                    .as_ref()
                    .filter(|s| s.state == ark_pod_spec::AppState::Exited)
                    .map_or("-".into(), |s| s.code().to_string())
            });
            let created = p.created_at.map(format_unix_ms).unwrap_or_default();
            let name = p.name.clone().unwrap_or_else(|| "-".into());
            [
                uuid,
                name,
                apps,
                images,
                p.state.to_string(),
                exits,
                created,
            ]
        })
        .collect();
    print_table(
        ["UUID", "NAME", "APPS", "IMAGES", "STATE", "EXIT", "CREATED"],
        &rows,
        a.no_legend,
    )
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::super::{Cli, Command};
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
        let apps = split_apps(&a.images, &a.app_defaults).unwrap();
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
        assert_eq!(a.net, ["none"]);
        assert!(a.interactive);
        assert_eq!(a.volume, ["d,kind=host,source=/tmp"]);
        assert_eq!(a.images, ["img"]);
        let PodCommand::Run(a) = parse(&[
            "run",
            "--stage1=ns",
            "--net=default",
            "--port=80-tcp:127.0.0.1:8080",
            "-p",
            "9090:90/udp",
            "--dns=1.1.1.1",
            "--dns-search=example.org",
            "--dns-opt=ndots:2",
            "--hosts-entry=db=10.0.0.2",
            "--net-config-dir=/etc/x",
            "--cni-plugin-dir=/usr/lib/cni",
            "img",
        ]) else {
            panic!()
        };
        let o = a.net_options().unwrap();
        assert_eq!(o.ports.len(), 2);
        assert_eq!(o.dns.servers.len(), 1);
        assert_eq!(o.hosts_entries[0].host, "db");
        assert_eq!(o.config_dir.as_deref(), Some("/etc/x"));
        let PodCommand::Run(a) = parse(&["run", "--net-config-dir=rel", "img"]) else {
            panic!()
        };
        assert!(a.net_options().is_err());
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
        let PodCommand::Enter(e) = parse(&[
            "enter",
            "-ti",
            "--user=65534",
            "--env=A=1",
            "-e",
            "B=2",
            "--workdir=/tmp",
            "abc",
            "sh",
            "-c",
            "exit 9",
        ]) else {
            panic!()
        };
        assert!(e.tty && e.interactive);
        assert_eq!(e.user.as_deref(), Some("65534"));
        assert_eq!(e.env, ["A=1", "B=2"]);
        assert_eq!(e.workdir.as_deref(), Some("/tmp"));
        assert_eq!(e.cmd, ["sh", "-c", "exit 9"]);
        let PodCommand::List(l) = parse(&["list", "--format=json"]) else {
            panic!()
        };
        assert_eq!(l.format, Format::Json);
        let PodCommand::List(l) = parse(&["list", "--format=text"]) else {
            panic!()
        };
        assert_eq!(l.format, Format::Table);
        let PodCommand::Status(s) = parse(&["status", "--wait", "abc"]) else {
            panic!()
        };
        assert!(s.wait);
        // An image is required: a one-line error (exit 125) from the request, not clap's.
        let PodCommand::Run(r) = parse(&["run"]) else {
            panic!()
        };
        let e = r.request().unwrap_err().to_string();
        assert!(e.contains("no image"), "{e}");
        assert!(Cli::try_parse_from(["ark", "gc", "--grace-period=soon"]).is_err());
    }

    #[test]
    fn podman_volumes_become_a_volume_and_a_mount_each() {
        let specs: Vec<String> = ["/h:/data:ro", "d,kind=host,source=/x", "/a:/b:rw", "/c:/d"]
            .map(String::from)
            .into();
        let (vols, mounts) = podman_volumes(&specs).unwrap();
        assert_eq!(
            vols,
            [
                "volume-0,kind=host,source=/h,readOnly=true",
                "d,kind=host,source=/x",
                "volume-2,kind=host,source=/a",
                "volume-3,kind=host,source=/c"
            ]
        );
        assert_eq!(
            mounts,
            [
                "volume=volume-0,target=/data",
                "volume=volume-2,target=/b",
                "volume=volume-3,target=/d"
            ]
        );
        for bad in ["rel:/x", "/a:/b:rx", "/a:/b:ro:z"] {
            assert!(podman_volumes(&[bad.to_string()]).is_err(), "{bad}");
        }
    }

    #[test]
    fn pod_name_and_short_app_flags() {
        let PodCommand::Run(a) = parse(&[
            "run",
            "--rm",
            "--name=web",
            "-e",
            "A=1",
            "-w",
            "/tmp",
            "-u",
            "1:2",
            "-v",
            "/h:/d",
            "img",
            "--name=app",
            "-e",
            "B=2",
        ]) else {
            panic!()
        };
        assert!(a.rm);
        assert_eq!(a.pod_name(), Some("web"));
        let req = a.request().unwrap();
        assert_eq!(req.apps[0].flags.name.as_deref(), Some("app"));
        assert_eq!(req.apps[0].flags.set_env, ["A=1", "B=2"]);
        assert_eq!(req.apps[0].flags.working_dir.as_deref(), Some("/tmp"));
        assert_eq!(req.apps[0].flags.user.as_deref(), Some("1"));
        assert_eq!(req.apps[0].flags.group.as_deref(), Some("2"));
        assert_eq!(req.apps[0].flags.mount, ["volume=volume-0,target=/d"]);
        // Without an app --name, the pod's name is not the app's.
        let PodCommand::Run(a) = parse(&["run", "--name=web", "img"]) else {
            panic!()
        };
        assert_eq!(a.request().unwrap().apps[0].flags.name, None);
        let PodCommand::Run(a) = parse(&["run", "--memroy=1", "img"]) else {
            panic!()
        };
        let e = format!("{:#}", a.request().unwrap_err());
        assert!(e.contains("a similar argument exists: '--memory'"), "{e}");
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
