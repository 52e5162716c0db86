//! `ark fetch`, `ark image ...`, `ark trust`.

use std::process::ExitCode;

use clap::Subcommand;

use crate::cli::GlobalOpts;

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Fetch images into the store and print their IDs.
    Fetch { images: Vec<String> },
}

pub fn run(_global: &GlobalOpts, cmd: ImageCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ImageCommand::Fetch { .. } => anyhow::bail!("fetch is not implemented yet"),
    }
}
