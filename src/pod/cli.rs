//! `ark prepare`, `ark run`, `ark list`, `ark status`, `ark stop`, `ark rm`, `ark gc`, `ark enter`, ...

use std::process::ExitCode;

use clap::Subcommand;

use crate::cli::GlobalOpts;

#[derive(Debug, Subcommand)]
pub enum PodCommand {
    /// List pods.
    List,
}

pub fn run(_global: &GlobalOpts, cmd: PodCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        PodCommand::List => anyhow::bail!("list is not implemented yet"),
    }
}
