//! The host mechanics guest-init shares with stage0 and the stage1s (close-on-exec, cgroups,
//! identity, in-root path resolution, mountinfo). Everything in guest-init reaches them through here, so
//! where they live is this one line.

pub use ark_os::{cgroup, fds, identity, inroot, mountinfo};
