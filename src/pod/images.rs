//! The pod half's view of the image store: for each app, make sure its image is there (fetching
//! it if needed), read its config, and get its rendered rootfs.

use anyhow::Context;

use super::args::AppSpec;
use super::plan::ImageInfo;
use crate::image::{FetchOptions, ImageStore, RenderHold};

/// The images of `apps`, and a hold on each render: kept until the pod's overlays are mounted
/// (from then on the image store sees the render in the host's overlay mounts), so
/// `ark image rm`/`gc` cannot delete a render between `render()` and the mount. Holds are close-on-exec: nothing reaches the stage1 or the apps.
pub fn resolve(
    ctx: &crate::Context,
    apps: &[AppSpec],
) -> anyhow::Result<(Vec<ImageInfo>, Vec<RenderHold>)> {
    let store = ImageStore::open(&ctx.dir).context("open the image store")?;
    let opts = FetchOptions::from_context(ctx);
    let mut holds = Vec::new();
    let mut out: Vec<ImageInfo> = Vec::with_capacity(apps.len());
    for app in apps {
        // The same image twice in one pod: one fetch, one render.
        if let Some(done) = out.iter().find(|i| i.name == app.image) {
            out.push(done.clone());
            continue;
        }
        let id = store
            .fetch(&app.image, &opts)
            .with_context(|| format!("image {}", app.image))?;
        let config = store
            .image_config(&id)
            .with_context(|| format!("image {}: config", app.image))?;
        holds.push(
            store
                .hold(&id)
                .with_context(|| format!("image {}: hold its render", app.image))?,
        );
        let rootfs = store
            .render(&id)
            .with_context(|| format!("image {}: render", app.image))?;
        out.push(ImageInfo {
            id: id.to_string(),
            name: app.image.clone(),
            entrypoint: config.entrypoint,
            cmd: config.cmd,
            env: config.env,
            user: config.user,
            working_dir: config.working_dir,
            rootfs,
            exposed_ports: config.exposed_ports,
            port_names: config.port_names,
        });
    }
    Ok((out, holds))
}
