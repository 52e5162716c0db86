//! `ark trust`.

use std::process::ExitCode;

use clap::Subcommand;

use crate::cli::GlobalOpts;

#[derive(Debug, Subcommand)]
pub enum TrustCommand {
    /// Trust OpenPGP keys for an image-name prefix.
    Trust,
}

pub fn run(_global: &GlobalOpts, cmd: TrustCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        TrustCommand::Trust => anyhow::bail!("trust is not implemented yet"),
    }
}
