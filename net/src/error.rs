//! ark-net's errors: one line each, plugin-supplied text escaped.

use std::path::PathBuf;

use ark_os::escape::controls_escaped;

/// `text` safe for the operator's terminal: one line, controls escaped, at most `max` chars.
pub(crate) fn clean(text: &str, max: usize) -> String {
    let t: String = text.trim().chars().take(max).collect();
    let more = if text.trim().chars().count() > max {
        "..."
    } else {
        ""
    };
    format!("{}{more}", controls_escaped(&t))
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A config file that cannot be used.
    #[error("network config {}: {reason}", path.display())]
    ConfigFile { path: PathBuf, reason: String },
    /// A network no config defines, or a config that is wrong as a whole.
    #[error("network {network:?}: {reason}")]
    Network { network: String, reason: String },
    #[error("network {network:?}: plugin {plugin:?} not found in {dirs}")]
    PluginNotFound {
        network: String,
        plugin: String,
        dirs: String,
    },
    /// A plugin ran and failed (its reply's `msg`/`details`, or its exit status and stderr).
    #[error("network {network:?}: plugin {plugin} {command} failed: {message}")]
    Plugin {
        network: String,
        plugin: String,
        command: &'static str,
        /// Escaped, one line.
        message: String,
        /// The CNI error code, when the plugin sent one.
        code: Option<u64>,
    },
    /// A plugin's reply that is not a valid result.
    #[error("network {network:?}: plugin {plugin} {command}: bad result: {reason}")]
    BadResult {
        network: String,
        plugin: String,
        command: &'static str,
        reason: String,
    },
    #[error("network {network:?}: plugin {plugin}: {what}: {source}")]
    Exec {
        network: String,
        plugin: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("network namespace {}: {what}: {source}", path.display())]
    Netns {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: nix::errno::Errno,
    },
    #[error("{} (while undoing: {undo})", .first)]
    Undo {
        #[source]
        first: Box<Error>,
        undo: String,
    },
    /// What teardown could not remove (it did all it could).
    #[error("network teardown: {}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Teardown(Vec<Error>),
}

pub(crate) fn io(
    what: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { what, path, source }
}
