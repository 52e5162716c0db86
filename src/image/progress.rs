//! Progress bars on a terminal (stderr), nothing otherwise.

use std::io::IsTerminal;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Shared by everything one command shows; hidden unless stderr is a terminal.
#[derive(Clone)]
pub struct Progress {
    multi: MultiProgress,
}

impl Progress {
    pub fn new() -> Self {
        let target = if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        Progress {
            multi: MultiProgress::with_draw_target(target),
        }
    }

    /// A byte counter for one blob or layer; `len` 0 = unknown.
    pub fn bytes(&self, msg: impl Into<String>, len: u64) -> ProgressBar {
        let bar = if len > 0 {
            ProgressBar::new(len)
        } else {
            ProgressBar::no_length()
        };
        let style = ProgressStyle::with_template(
            "{msg:24!} [{bar:30}] {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12}",
        )
        .expect("static template")
        .progress_chars("=> ");
        let bar = self.multi.add(bar.with_style(style));
        bar.set_message(msg.into());
        bar
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}
