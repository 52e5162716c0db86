//! `ark fetch` and `ark image ...`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;

use super::format::{parse_format, print_non_table, print_table, Format};
use super::output::outln;

use ark::image::{escape, FetchOptions, ImageInfo, ImageKind, ImageStore};
use ark::Context as Ctx;

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Fetch images into the store and print their IDs.
    ///
    /// IMAGE is docker://HOST[:PORT]/REPO[:TAG|@DIGEST], oci-layout:PATH[:TAG],
    /// docker-archive:PATH[:NAME:TAG] or PATH.aci (signed by PATH.aci.asc).
    Fetch {
        #[arg(required = true, value_name = "IMAGE")]
        images: Vec<String>,
        /// Platform to pick from an image index, os/arch[/variant].
        #[arg(long, default_value = "linux/amd64")]
        platform: String,
        /// Lookaside directory of simple-signing signatures (REPO@sha256=DIGEST/signature-N).
        #[arg(long, value_name = "DIR")]
        signature_dir: Option<PathBuf>,
    },
    /// Manage the image store.
    #[command(subcommand)]
    Image(ImageSubcommand),
}

#[derive(Debug, Subcommand)]
pub enum ImageSubcommand {
    /// List stored images.
    #[command(alias = "ls")]
    List {
        /// Output format: table (alias text), json, or a template such as '{{.Id}}'.
        #[arg(long, default_value = "table", value_parser = parse_format)]
        format: Format,
        /// Omit the header line.
        #[arg(long = "no-legend")]
        no_legend: bool,
    },
    /// Remove images (by ID, short ID or name) and what only they use. An image a live pod
    /// (preparing, prepared or running) uses is refused, exit 2 as podman's rmi, unless
    /// --force (the pod keeps its root until it is removed).
    Rm {
        #[arg(required = true, value_name = "ID|NAME")]
        images: Vec<String>,
        /// Remove the image even though live pods use it.
        #[arg(short = 'f', long)]
        force: bool,
    },
    /// Print an image's manifest.
    CatManifest {
        #[arg(value_name = "ID|NAME")]
        image: String,
    },
    /// Print what a pod runs from an image: entrypoint, cmd, env, user, labels (JSON).
    Inspect {
        #[arg(value_name = "ID|NAME")]
        image: String,
    },
    /// Write an image as an OCI image layout at PATH.
    Export {
        #[arg(value_name = "ID|NAME")]
        image: String,
        path: PathBuf,
    },
    /// Render an image's rootfs (cached): copy it to DIR, or print the cached tree's path.
    Render {
        #[arg(value_name = "ID|NAME")]
        image: String,
        #[arg(value_name = "DIR")]
        dest: Option<PathBuf>,
    },
    /// Reclaim what interrupted commands left and what no image uses.
    Gc,
}

pub fn run(ctx: &Ctx, cmd: ImageCommand) -> anyhow::Result<ExitCode> {
    let store = ImageStore::open(&ctx.dir)?;
    match cmd {
        ImageCommand::Fetch {
            images,
            platform,
            signature_dir,
        } => {
            let opts = FetchOptions {
                platform: Some(platform),
                signature_dir,
                ..FetchOptions::from_context(ctx)
            };
            for image in images {
                let id = store.fetch(&image, &opts)?;
                outln!("{id}");
            }
        }
        ImageCommand::Image(sub) => return run_image(ctx, &store, sub),
    }
    Ok(ExitCode::SUCCESS)
}

/// podman's `rmi` exit code when an image is in use by a container.
const EXIT_IMAGE_IN_USE: u8 = 2;

/// `ark image rm`: each image unless a live pod uses it (then one line naming the pod, and
/// exit 2 at the end, as podman); `force` removes it anyway.
fn image_rm(
    ctx: &Ctx,
    store: &ImageStore,
    images: &[String],
    force: bool,
) -> anyhow::Result<ExitCode> {
    let pods = if force {
        Vec::new()
    } else {
        ark::pod::info::list(ctx)?
    };
    let mut failed = Vec::new();
    let mut in_use = false;
    for image in images {
        let user = match store.resolve(image) {
            Ok(id) => pods.iter().find(|p| {
                matches!(p.state, "running" | "prepared" | "preparing")
                    && p.apps.iter().any(|a| a.image_id == id.to_string())
            }),
            Err(_) => None, // remove says why
        };
        if let Some(p) = user {
            eprintln!(
                "ark: image rm {}: in use by pod {} ({}); stop and remove it first, or use --force",
                escape::controls_escaped(image),
                p.uuid,
                p.state
            );
            in_use = true;
            continue;
        }
        match store.remove(image) {
            Ok(id) => outln!("{id}"),
            Err(e) => failed.push(format!("{image}: {e:#}")),
        }
    }
    if !failed.is_empty() {
        anyhow::bail!("could not remove {}", failed.join("; "));
    }
    Ok(if in_use {
        ExitCode::from(EXIT_IMAGE_IN_USE)
    } else {
        ExitCode::SUCCESS
    })
}

fn run_image(ctx: &Ctx, store: &ImageStore, cmd: ImageSubcommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ImageSubcommand::List { format, no_legend } => {
            let images: Vec<ImageInfo> = store.list()?;
            if print_non_table(&format, &images)?.is_some() {
                return Ok(ExitCode::SUCCESS);
            }
            let rows: Vec<[String; 5]> = images
                .iter()
                .map(|i| {
                    let kind = match i.kind {
                        ImageKind::Oci => "oci",
                        ImageKind::Aci => "aci",
                    };
                    let names = if i.names.is_empty() {
                        "-".to_string()
                    } else {
                        // Names with control characters are refused at import; a store
                        // written before that may still hold some.
                        escape::controls_escaped(&i.names.join(",")).into_owned()
                    };
                    [
                        format!("sha256:{}", i.id.short()),
                        kind.into(),
                        human_size(i.size),
                        human_time(i.imported),
                        names,
                    ]
                })
                .collect();
            print_table(["ID", "KIND", "SIZE", "IMPORTED", "NAME"], &rows, no_legend)?;
        }
        ImageSubcommand::Rm { images, force } => return image_rm(ctx, store, &images, force),
        ImageSubcommand::CatManifest { image } => {
            let id = store.resolve(&image)?;
            let bytes = store.manifest(&id)?;
            let value: serde_json::Value =
                serde_json::from_slice(&bytes).context("stored manifest")?;
            outln!("{}", serde_json::to_string_pretty(&value)?);
        }
        ImageSubcommand::Inspect { image } => {
            let id = store.resolve(&image)?;
            let config = store.image_config(&id)?;
            let out = serde_json::json!({ "id": id, "config": config });
            outln!("{}", serde_json::to_string_pretty(&out)?);
        }
        ImageSubcommand::Export { image, path } => {
            let id = store.resolve(&image)?;
            store.export(&id, &path)?;
            outln!("{id}");
        }
        ImageSubcommand::Render { image, dest } => {
            let id = store.resolve(&image)?;
            match dest {
                Some(dir) => store.render_to(&id, &dir)?,
                None => outln!("{}", store.render(&id)?.display()),
            }
        }
        ImageSubcommand::Gc => {
            let r = store.gc()?;
            outln!(
                "removed {} temporary entries, {} blobs ({}), {} renders",
                r.tmp,
                r.blobs,
                human_size(r.blob_bytes),
                r.renders
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// UTC `YYYY-MM-DD HH:MM:SS` without pulling in a date crate.
fn human_time(secs: u64) -> String {
    let days = i64::try_from(secs / 86400).expect("u64::MAX / 86400 fits in i64");
    let rem = secs % 86400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats() {
        assert_eq!(super::human_time(0), "1970-01-01 00:00:00");
        assert_eq!(super::human_time(1_700_000_000), "2023-11-14 22:13:20");
        assert_eq!(super::human_size(1536), "1.5 KiB");
    }
}
