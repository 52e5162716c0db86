//! stage0's layering: the `ark` library (`src/` but `src/main.rs` and `src/cli/`) is beneath the
//! command line. Nothing in it may name the command line (`crate::cli`, its `GlobalOpts`) or
//! take clap types, so a second front end (an OCI runtime, a shim) can call it as `ark` does.

use std::path::{Path, PathBuf};

use ark_tests::workspace_root;

/// Every `.rs` file of the library half of stage0.
fn library_sources() -> Vec<PathBuf> {
    let src = workspace_root().join("src");
    let mut out = Vec::new();
    let mut dirs = vec![src.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path == src.join("cli") || path == src.join("main.rs") {
                continue;
            }
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Whether `line` names `word` as a whole path segment (`crate::cli` but not `crate::client`).
fn names(line: &str, word: &str) -> bool {
    line.match_indices(word).any(|(i, _)| {
        let next = line[i + word.len()..].chars().next();
        word.ends_with(':') || !next.is_some_and(|c| c.is_alphanumeric() || c == '_')
    })
}

/// The offending lines of `path`: a use of the command line or of clap.
fn violations(path: &Path, text: &str) -> Vec<String> {
    const FORBIDDEN: &[&str] = &["crate::cli", "GlobalOpts", "clap::", "use clap"];
    text.lines()
        .enumerate()
        .filter(|(_, l)| FORBIDDEN.iter().any(|w| names(l, w)) || grouped_cli_import(l))
        .map(|(n, l)| format!("{}:{}: {}", path.display(), n + 1, l.trim()))
        .collect()
}

#[test]
fn the_library_does_not_reach_up_to_the_command_line() {
    let files = library_sources();
    for dir in ["image", "pod", "trust"] {
        assert!(
            files
                .iter()
                .any(|f| f.starts_with(workspace_root().join("src").join(dir))),
            "no sources found under src/{dir}"
        );
    }
    let bad: Vec<String> = files
        .iter()
        .flat_map(|f| violations(f, &std::fs::read_to_string(f).unwrap()))
        .collect();
    assert!(
        bad.is_empty(),
        "the ark library must not use the command line (move the code to src/cli/):\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_check_sees_what_it_must() {
    let p = Path::new("src/pod/x.rs");
    for bad in [
        "use crate::cli::GlobalOpts;",
        "use crate::cli;",
        "    let g: &crate::cli::GlobalOpts = todo!();",
        "use crate::{cli, image};",
        "#[derive(clap::Args)]",
        "use clap::Args;",
    ] {
        assert!(!violations(p, bad).is_empty(), "not caught: {bad}");
    }
    for fine in [
        "use crate::image::registry::client::Client;",
        "// the CLI calls this",
    ] {
        assert!(violations(p, fine).is_empty(), "false alarm: {fine}");
    }
}

/// `use crate::{cli, ...}` / `use crate::{..., cli::X}`: no `crate::cli` in the text, same import.
fn grouped_cli_import(line: &str) -> bool {
    line.trim_start().starts_with("use crate::{")
        && line
            .split(['{', '}', ',', ' '])
            .any(|w| w == "cli" || w.starts_with("cli::"))
}
