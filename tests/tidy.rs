//! Tidy checks over the workspace's own sources: a `//!` first line everywhere, no stubs or ignored tests.

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
