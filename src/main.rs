//! ark stage0: the command-line front end. No daemon: every command does its work and exits;
//! `ark run` ends by exec'ing the pod's stage1, so the caller waits on the pod itself.

mod cli;
mod image;
mod mountinfo;
mod pod;
mod trust;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::main()
}
