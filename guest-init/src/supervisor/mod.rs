//! PID 1's running half: the apps' bookkeeping and the status channel.

pub mod sink;
mod state;

pub use state::{Exit, StartError, Supervisor};
