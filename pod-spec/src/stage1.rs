//! How stage0 starts a stage1, and what it hands over: the command line
//! `ark-stage1-<flavor> run --pod-dir DIR [--debug] [--interactive]` ([`RunArgs`]: stage0
//! renders it with [`RunArgs::to_args`], every stage1 parses it with [`RunArgs::parse`]), the
//! pod lock's descriptor in [`LOCK_FD_ENV`], and the signals that mean "stop the pod"
//! ([`STOP_SIGNALS`]), blocked by stage0 across the exec so none is lost before the stage1
//! takes them.

use std::ffi::OsString;
use std::os::fd::RawFd;
use std::path::PathBuf;

use nix::sys::signal::{SigSet, Signal};

/// The environment variable with the number of the pod lock's descriptor: stage0 keeps the
/// lock across the exec, and the stage1 holds it while the pod runs (never its children).
pub const LOCK_FD_ENV: &str = "ARK_POD_LOCK_FD";

/// The signals a stage1 (and guest-init) turns into a graceful stop of the pod.
pub const STOP_SIGNALS: [Signal; 3] = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP];

/// [`STOP_SIGNALS`] as a set, with `extra` (a supervisor's SIGCHLD).
pub fn stop_signals_with(extra: &[Signal]) -> SigSet {
    let mut set = SigSet::empty();
    for s in extra.iter().chain(&STOP_SIGNALS) {
        set.add(*s);
    }
    set
}

/// [`STOP_SIGNALS`] as a set.
pub fn stop_signals() -> SigSet {
    stop_signals_with(&[])
}

/// The lock descriptor stage0 handed over, if any (see [`LOCK_FD_ENV`]).
pub fn lock_fd_from_env() -> Option<RawFd> {
    std::env::var(LOCK_FD_ENV).ok()?.parse().ok()
}

/// `ark-stage1-<flavor> run --pod-dir DIR [--debug] [--interactive]`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct RunArgs {
    /// The pod directory stage0 prepared.
    #[cfg_attr(feature = "cli", arg(long))]
    pub pod_dir: PathBuf,
    /// Chatty logs on stderr (guest-init's too; kvm: the guest kernel's messages).
    #[cfg_attr(feature = "cli", arg(long))]
    pub debug: bool,
    /// The pod's interactive app gets this process's terminal (kvm: through the guest console).
    #[cfg_attr(feature = "cli", arg(long))]
    pub interactive: bool,
}

impl RunArgs {
    /// The arguments after the program name, as a stage1 parses them.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["run".into(), "--pod-dir".into()];
        args.push(self.pod_dir.clone().into_os_string());
        if self.debug {
            args.push("--debug".into());
        }
        if self.interactive {
            args.push("--interactive".into());
        }
        args
    }
}

#[cfg(feature = "cli")]
mod cli {
    use clap::{CommandFactory, FromArgMatches};

    use super::RunArgs;

    #[derive(Debug, clap::Parser)]
    struct Stage1Cli {
        #[command(subcommand)]
        command: Stage1Command,
    }

    #[derive(Debug, clap::Subcommand)]
    enum Stage1Command {
        /// Run the prepared pod in DIR until every app has ended.
        Run(RunArgs),
    }

    impl RunArgs {
        /// Parses the process's command line as stage1 `prog` (about: its `--help` line), or
        /// exits as clap does (usage to stderr, 2; `--help` to stdout, 0).
        pub fn parse(prog: &'static str, about: &'static str) -> RunArgs {
            Self::try_parse_from(prog, about, std::env::args_os()).unwrap_or_else(|e| e.exit())
        }

        /// [`RunArgs::parse`] of `argv` (the program name first).
        pub fn try_parse_from<I, T>(
            prog: &'static str,
            about: &'static str,
            argv: I,
        ) -> Result<RunArgs, clap::Error>
        where
            I: IntoIterator<Item = T>,
            T: Into<std::ffi::OsString> + Clone,
        {
            let mut cmd = Stage1Cli::command().name(prog).about(about);
            let matches = cmd.try_get_matches_from_mut(argv)?;
            let Stage1Command::Run(args) = Stage1Cli::from_arg_matches(&matches)
                .map_err(|e| e.format(&mut cmd))?
                .command;
            Ok(args)
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn renders_what_the_stage1s_parse() {
            for (debug, interactive) in [(false, false), (true, false), (false, true), (true, true)]
            {
                let args = RunArgs {
                    pod_dir: "/d/pods/run/x y".into(),
                    debug,
                    interactive,
                };
                let argv = std::iter::once("ark-stage1-ns".into()).chain(args.to_args());
                let parsed = RunArgs::try_parse_from("ark-stage1-ns", "", argv).unwrap();
                assert_eq!(parsed, args);
            }
        }

        #[test]
        fn refuses_what_stage0_never_writes() {
            for argv in [
                &["s1"][..],
                &["s1", "run"],
                &["s1", "start", "--pod-dir", "/p"],
                &["s1", "run", "--pod-dir", "/p", "--verbose"],
            ] {
                let e = RunArgs::try_parse_from("s1", "", argv).unwrap_err();
                assert_eq!(e.exit_code(), 2, "{argv:?}");
            }
        }
    }
}
