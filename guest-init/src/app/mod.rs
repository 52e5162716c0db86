//! App set-up: everything between fork and exec for one app.

pub mod plan;
pub mod rootfs;
