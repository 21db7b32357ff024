//! Tidy checks over the workspace's own sources: a `//!` first line everywhere, no stubs or ignored tests, and every path ARCHITECTURE.md names exists.

#![allow(clippy::expect_used, reason = "test code: a failed expectation is a test failure")]

use std::path::{Path, PathBuf};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("workspace root")
}

/// Every `.rs` file of the workspace, skipping build output.
fn rust_files(directory: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(directory).expect("read_dir") {
        let path = entry.expect("entry").path();
        let name = path.file_name().and_then(|name| name.to_str()).unwrap_or_default();
        if path.is_dir() {
            if !matches!(name, "target" | ".git" | "data") {
                rust_files(&path, found);
            }
        } else if name.ends_with(".rs") {
            found.push(path);
        }
    }
}

#[test]
fn every_file_says_what_it_is_and_nothing_is_stubbed() {
    let root = workspace_root();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    assert!(files.len() > 20, "found the sources ({} files)", files.len());
    let mut problems = Vec::new();
    // Built from pieces so that this file does not trip its own check.
    let forbidden = [
        concat!("todo", "!("),
        concat!("unimplemented", "!("),
        concat!("#[", "ignore]"),
        concat!("dbg", "!("),
    ];
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read source");
        let relative = file.strip_prefix(&root).unwrap_or(file).display().to_string();
        if !text.starts_with("//!") {
            problems.push(format!(
                "{relative}: the first line must be a `//!` doc comment saying what the file is"
            ));
        }
        for pattern in forbidden {
            if text.contains(pattern) {
                problems.push(format!("{relative}: contains `{pattern}`"));
            }
        }
    }
    assert!(problems.is_empty(), "tidy problems:\n{}", problems.join("\n"));
}

/// The directory a section of ARCHITECTURE.md maps: its `### `path/`` heading, if any.
fn section_directory(root: &Path, heading: &str) -> Option<PathBuf> {
    let path = heading.strip_prefix("### `")?.strip_suffix('`')?;
    let path = root.join(path);
    Some(if path.is_dir() {
        path
    } else {
        path.parent()?.to_path_buf()
    })
}

/// True when a file or directory called `name` is somewhere below `directory`.
fn somewhere_below(directory: &Path, name: &str) -> bool {
    let Ok(entries) = std::fs::read_dir(directory) else {
        return false;
    };
    entries.flatten().any(|entry| {
        let path = entry.path();
        let skipped = matches!(
            path.file_name().and_then(|name| name.to_str()),
            Some("target" | ".git" | "data")
        );
        !skipped
            && (path.file_name().is_some_and(|file| file == name) || (path.is_dir() && somewhere_below(&path, name)))
    })
}

/// Every source path ARCHITECTURE.md names in backticks exists: a path with a `/` from the
/// workspace root, from the section's directory (or its `src/`), or from `ca-service/src/`; a bare
/// file name somewhere below the section's directory (the whole tree outside code-map sections).
/// The other half of the rule on non-test code (no `unwrap`/`expect` without its invariant) is
/// clippy's `unwrap_used` and `expect_used`, denied in CI.
#[test]
fn every_path_architecture_md_names_exists() {
    let root = workspace_root();
    let text = std::fs::read_to_string(root.join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let extensions = [".rs", ".toml", ".sh", ".sql", ".proto", ".md"];
    let mut section: Option<PathBuf> = None;
    let mut checked = 0;
    let mut missing = Vec::new();
    for line in text.lines() {
        if line.starts_with("## ") {
            section = None;
        }
        if line.starts_with("### ") {
            section = section_directory(&root, line);
        }
        for (position, token) in line.split('`').enumerate() {
            let looks_like_a_path = position % 2 == 1
                && !token.is_empty()
                && token
                    .chars()
                    .all(|character| character.is_ascii_alphanumeric() || "_./-".contains(character))
                && (token.ends_with('/') || extensions.iter().any(|extension| token.ends_with(extension)));
            if !looks_like_a_path {
                continue;
            }
            checked += 1;
            let relative = token.trim_end_matches('/');
            let found = if token.contains('/') {
                let mut bases = vec![root.clone(), root.join("ca-service/src")];
                if let Some(section) = &section {
                    bases.push(section.clone());
                    bases.push(section.join("src"));
                }
                bases.iter().any(|base| base.join(relative).exists())
            } else {
                somewhere_below(section.as_deref().unwrap_or(&root), relative)
            };
            if !found {
                missing.push(token.to_owned());
            }
        }
    }
    assert!(checked > 50, "found the paths ARCHITECTURE.md names ({checked})");
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md names paths that do not exist: {missing:?}"
    );
}
