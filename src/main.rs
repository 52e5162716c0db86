//! ark stage0: the command-line front end over the `ark` library. No daemon: every command
//! does its work and exits; `ark run` ends by exec'ing the pod's stage1, so the caller waits on
//! the pod itself.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    // Before anything else: whatever fds our caller leaked to us reach no process we start.
    if let Err(e) = ark_os::fds::cloexec_inherited() {
        eprintln!("ark: marking inherited file descriptors close-on-exec: {e}");
        return ExitCode::from(cli::EXIT_ARK_ERROR);
    }
    cli::main()
}
