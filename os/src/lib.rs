//! Host-side mechanics shared by stage0, every stage1 and the static guest-init: what they do
//! to the machine, as opposed to what they agree on (that is the contract, `ark-pod-spec`).
//! Plain libc/nix/rustix/caps, so it builds for the musl guest-init too.
pub mod applog;
pub mod atomic;
pub mod cgroup;
pub mod escape;
pub mod fds;
pub mod identity;
pub mod inroot;
pub mod mountinfo;
pub mod netlink;
pub mod status_dir;
pub mod tap;

pub use atomic::{write_atomic, write_atomic_in, write_atomic_volatile};
pub use status_dir::StatusDir;
