//! `ark app`: a sandbox and the apps added to it while it runs (rkt's `rkt app`).

use super::output::outln;
use ark::pod::names;
use std::process::ExitCode;

use anyhow::bail;
use ark::pod::{app, lifecycle};
use ark::Context as Ctx;
use clap::{Args, Subcommand};

use super::apps::split_apps;
use super::pod::{parse_duration_arg, PrepareArgs};

#[derive(Debug, Subcommand)]
pub enum AppCommand {
    /// Apps in running pods: a sandbox, then apps added, started, stopped and removed.
    #[command(subcommand)]
    App(AppSub),
}

#[derive(Debug, Subcommand)]
pub enum AppSub {
    /// Start an empty pod that apps are added to; runs until `ark stop` (print its UUID with
    /// --uuid-file-save). Takes the pod flags of `ark run`, no image.
    Sandbox(Box<PrepareArgs>),
    /// Add an app to a running sandbox, created (not started): `UUID IMAGE [app flags] [-- ARGS]`.
    Add(AddArgs),
    /// Start a created app.
    Start(OneAppArgs),
    /// Stop one app (SIGTERM, SIGKILL after the timeout); the others keep running.
    Stop(StopAppArgs),
    /// Remove an app that is not running: its root, entry and status.
    Rm(OneAppArgs),
    /// List a pod's apps and their states.
    List(PodArg),
    /// The apps' statuses in full, as JSON.
    Status(PodArg),
}

#[derive(Debug, Clone, Args)]
pub struct AddArgs {
    pub uuid: String,
    /// IMAGE [app flags] [-- ARGS]
    #[arg(
        value_name = "IMAGE",
        required = true,
        num_args = 1..,
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub image: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct OneAppArgs {
    pub uuid: String,
    /// The app's name.
    #[arg(long)]
    pub app: String,
}

#[derive(Debug, Clone, Args)]
pub struct StopAppArgs {
    pub uuid: String,
    /// The app's name.
    #[arg(long)]
    pub app: String,
    /// How long to wait after SIGTERM before SIGKILL (e.g. 10s).
    #[arg(long, default_value = "10s", value_parser = parse_duration_arg)]
    pub timeout: std::time::Duration,
}

#[derive(Debug, Clone, Args)]
pub struct PodArg {
    pub uuid: String,
}

fn invalid(e: String) -> anyhow::Error {
    ark::pod::error::invalid(e).into()
}

pub fn run(ctx: &Ctx, cmd: AppCommand) -> anyhow::Result<ExitCode> {
    let AppCommand::App(cmd) = cmd;
    match cmd {
        AppSub::Sandbox(a) => {
            if !a.images.is_empty() {
                bail!(invalid(
                    "ark app sandbox takes no image: add apps with ark app add".into()
                ));
            }
            let prepared = lifecycle::prepare_sandbox(ctx, &a.request_with(Vec::new())?)?;
            Err(lifecycle::exec_stage1(ctx, prepared, false).into())
        }
        AppSub::Add(a) => {
            let mut specs = split_apps(&a.image, &Default::default()).map_err(invalid)?;
            if specs.len() != 1 {
                bail!(invalid("ark app add adds one app (no `---`)".into()));
            }
            let name = app::add(ctx, &names::resolve(ctx, &a.uuid), &specs.remove(0))?;
            outln!("{name}");
            Ok(ExitCode::SUCCESS)
        }
        AppSub::Start(a) => {
            app::start(ctx, &names::resolve(ctx, &a.uuid), &a.app)?;
            Ok(ExitCode::SUCCESS)
        }
        AppSub::Stop(a) => {
            app::stop(ctx, &names::resolve(ctx, &a.uuid), &a.app, a.timeout)?;
            Ok(ExitCode::SUCCESS)
        }
        AppSub::Rm(a) => {
            app::rm(ctx, &names::resolve(ctx, &a.uuid), &a.app)?;
            Ok(ExitCode::SUCCESS)
        }
        AppSub::List(a) => {
            for s in app::apps(ctx, &names::resolve(ctx, &a.uuid))? {
                outln!(
                    "{}\t{}\t{}",
                    s.name,
                    app::state_name(s.status.as_ref()),
                    s.image
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        AppSub::Status(a) => {
            outln!(
                "{}",
                serde_json::to_string_pretty(&app::apps(ctx, &names::resolve(ctx, &a.uuid))?)?
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
