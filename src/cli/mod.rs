//! The `ark` command line: parses arguments and calls the `ark` library with a plain
//! [`ark::Context`]; maps what fails to exit code 125 and one line on stderr.
//! [`image`] (fetch, image), [`trust`] (trust) and [`pod`] (prepare, run, list, ...) own their
//! subcommands. Output goes through [`output`] (a closed stdout ends ark quietly); usage
//! errors are one line and exit 125, as ark's other errors.
#![deny(clippy::print_stdout)]

mod app;
mod apps;
mod format;
mod image;
pub mod output;
#[cfg(test)]
mod plan_tests;
mod pod;
mod trust;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

/// Exit code for ark's own errors (as podman does); apps' own codes pass through `ark run`.
pub const EXIT_ARK_ERROR: u8 = 125;

#[derive(Debug, Parser)]
#[command(
    name = "ark",
    version,
    about = "Daemonless pod runtime; a KVM microVM per pod"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalOpts,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command understands.
#[derive(Debug, Clone, Args)]
pub struct GlobalOpts {
    /// ark's data directory (image store, pods).
    #[arg(long, global = true, env = "ARK_DIR", default_value = "/var/lib/ark")]
    pub dir: PathBuf,
    /// Checks to skip, comma-separated: none, image (signatures), tls, http (plain http to non-loopback), all.
    #[arg(
        long = "insecure-options",
        global = true,
        value_delimiter = ',',
        default_value = "none"
    )]
    pub insecure_options: Vec<InsecureOption>,
    /// Verbose logs (and, for kvm pods, the guest kernel's messages).
    #[arg(long, global = true)]
    pub debug: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InsecureOption {
    None,
    Image,
    Tls,
    Http,
    All,
}

impl GlobalOpts {
    /// Whether the check named by `opt` is switched off.
    pub fn insecure(&self, opt: InsecureOption) -> bool {
        self.insecure_options
            .iter()
            .any(|o| *o == opt || *o == InsecureOption::All)
    }

    /// What the library needs of these options.
    pub fn context(&self) -> ark::Context {
        ark::Context {
            dir: self.dir.clone(),
            insecure: ark::Insecure {
                image: self.insecure(InsecureOption::Image),
                tls: self.insecure(InsecureOption::Tls),
                http: self.insecure(InsecureOption::Http),
            },
            debug: self.debug,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    #[command(flatten)]
    Image(image::ImageCommand),
    #[command(flatten)]
    Trust(trust::TrustCommand),
    #[command(flatten)]
    Pod(pod::PodCommand),
    #[command(flatten)]
    App(app::AppCommand),
    /// Print a shell completion script (bash, zsh, fish, ...).
    Completion { shell: clap_complete::Shell },
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    init_logging(cli.global.debug);
    let secured = match uses_data_dir(&cli.command) {
        true => ark::data_dir::secure(&cli.global.dir),
        false => Ok(()),
    };
    let result = secured.and_then(|()| dispatch(&cli.global, cli.command));
    match result {
        Ok(code) => code,
        Err(_) if output::stdout_gone() => output::die_of_sigpipe(),
        Err(e) => {
            // One clear line: the error and its causes, joined; image-supplied text in it
            // (even where a crate quoted it raw) cannot drive the terminal or fake a line.
            eprintln!(
                "ark: {}",
                ark::image::escape::controls_escaped(&format!("{e:#}"))
            );
            ExitCode::from(EXIT_ARK_ERROR)
        }
    }
}

/// Every command but shell completion and the fetch child (which runs as nobody and owns no
/// file) works in the data directory.
fn uses_data_dir(cmd: &Command) -> bool {
    !matches!(
        cmd,
        Command::Completion { .. } | Command::Trust(trust::TrustCommand::RegistryFetchChild)
    )
}

fn dispatch(global: &GlobalOpts, command: Command) -> anyhow::Result<ExitCode> {
    let ctx = global.context();
    match command {
        Command::Image(cmd) => image::run(&ctx, cmd),
        Command::Trust(cmd) => trust::run(&ctx, cmd),
        Command::Pod(cmd) => pod::run(&ctx, cmd),
        Command::App(cmd) => app::run(&ctx, cmd),
        Command::Completion { shell } => {
            // Into memory first: clap_complete panics on a failed write.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "ark", &mut script);
            std::io::Write::write_all(&mut output::stdout(), &script)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `--help` and `--version` print and exit 0 as usual; anything else clap refuses (an unknown
/// flag or subcommand, a bad value) is ark's one-line error, with clap's suggestion, and 125
/// (podman's code for its own errors; clap's default is 2).
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            // Through our stdout, not clap's print (which ignores a closed pipe).
            let styled = e.render();
            let text = if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                styled.ansi().to_string()
            } else {
                styled.to_string()
            };
            match std::io::Write::write_all(&mut output::stdout(), text.as_bytes()) {
                Err(_) if output::stdout_gone() => output::die_of_sigpipe(),
                _ => ExitCode::SUCCESS,
            }
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand | ErrorKind::MissingSubcommand => {
            eprintln!("ark: a command is missing (see --help)");
            ExitCode::from(EXIT_ARK_ERROR)
        }
        _ => {
            eprintln!("ark: {}", one_line(&e));
            ExitCode::from(EXIT_ARK_ERROR)
        }
    }
}

/// A clap error as one line: its message, then its tips ("a similar argument exists:
/// '--memory'") in parentheses; the usage and "for more information" lines are left out.
pub fn one_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or("").trim_start_matches("error: ");
    let tips: Vec<&str> = lines
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .map(|l| l.trim_start_matches("tip: "))
        // "to pass '--x' as a value, use '-- --x'" misleads: ark's `--` separates app args.
        .filter(|l| !l.starts_with("to pass "))
        .collect();
    let line = if tips.is_empty() {
        first.to_string()
    } else {
        format!("{first} ({})", tips.join("; "))
    };
    // The argument quoted back is the user's own, but may hold control characters.
    ark::image::escape::controls_escaped(&line).into_owned()
}

fn init_logging(debug: bool) {
    // rPGP warns about odd packets it then handles; those lines would break one-line errors.
    let filter = if debug { "debug" } else { "warn,pgp=error" };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ARK_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter)),
        )
        .with_writer(std::io::stderr)
        // Colours only for a terminal: a log or a pipe gets plain lines.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
