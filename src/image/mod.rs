//! The image half of stage0: content-addressed store, fetch, trust, render.
//!
//! Public facade used by the pod half (`crate::pod`): open the store, make sure an image is
//! present (fetching it if needed), read its config, and get its rendered rootfs.

pub mod cli;
