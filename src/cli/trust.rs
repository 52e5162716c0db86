//! `ark trust`, and the hidden internal command the privilege-separated registry fetch child runs.

use std::path::PathBuf;
use std::process::ExitCode;

use super::output::outln;
use anyhow::{bail, Context};
use clap::{ArgGroup, Args, Subcommand};

use ark::trust::keys::{self, Scope};
use ark::Context as Ctx;

#[derive(Debug, Subcommand)]
pub enum TrustCommand {
    /// Trust OpenPGP keys for an image-name prefix (or all images), list or remove them.
    Trust(TrustArgs),
    /// Internal: the unprivileged half of a `docker://` fetch (ark runs it as its own child).
    #[command(name = "__registry-fetch-child", hide = true)]
    RegistryFetchChild,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("action").args(["keyfile", "list", "remove"]).required(true)))]
pub struct TrustArgs {
    /// Trust the key for image names equal to or below NAME (e.g. example.com/app).
    #[arg(long, value_name = "NAME", conflicts_with = "root")]
    pub prefix: Option<String>,
    /// Trust the key for every image name.
    #[arg(long)]
    pub root: bool,
    /// List trusted keys.
    #[arg(long, conflicts_with_all = ["prefix", "root", "remove"])]
    pub list: bool,
    /// Remove the key with this fingerprint (from every prefix it is trusted for).
    #[arg(long, value_name = "FINGERPRINT", conflicts_with_all = ["prefix", "root"])]
    pub remove: Option<String>,
    /// An OpenPGP public key file, ASCII-armored or binary (`gpg --export [--armor] KEYID`).
    pub keyfile: Option<PathBuf>,
}

pub fn run(ctx: &Ctx, cmd: TrustCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        TrustCommand::Trust(args) => trust(ctx, args),
        TrustCommand::RegistryFetchChild => ark::image::registry::fetch_child_main(),
    }
}

fn trust(ctx: &Ctx, args: TrustArgs) -> anyhow::Result<ExitCode> {
    let dir = ark::trust::trust_dir(&ctx.dir);
    if args.list {
        let keys = keys::list(&dir)?;
        if keys.is_empty() {
            eprintln!("no trusted keys (add one with `ark trust --prefix NAME KEYFILE`)");
        }
        for k in keys {
            let scope = match &k.scope {
                Scope::Root => "root".to_string(),
                Scope::Prefix(p) => p.clone(),
            };
            outln!("{}\t{}\t{}", k.fingerprint, scope, k.user_ids.join(", "));
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(fp) = args.remove {
        for scope in keys::remove(&dir, &fp)? {
            outln!("removed key {} ({scope})", fp.to_ascii_uppercase());
        }
        return Ok(ExitCode::SUCCESS);
    }
    let keyfile = args.keyfile.expect("clap requires an action");
    let scope = match (args.prefix, args.root) {
        (Some(p), false) => Scope::Prefix(keys::normalize_prefix(&p)?),
        (None, true) => Scope::Root,
        _ => bail!("say what the key is trusted for: --prefix NAME (images below NAME) or --root (all images)"),
    };
    let data = std::fs::read(&keyfile).with_context(|| format!("reading {}", keyfile.display()))?;
    let stored = keys::add(&dir, scope, &data).with_context(|| format!("{}", keyfile.display()))?;
    for k in stored {
        outln!("trusted key {} for {}", k.fingerprint, k.scope);
        for uid in &k.user_ids {
            outln!("  {uid}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
