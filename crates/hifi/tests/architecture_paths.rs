//! `docs/ARCHITECTURE.md` follows data through the code file by file: every file it names
//! must exist, so the page cannot drift from the code unnoticed.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// Every file under `dir` (recursively).
fn files(dir: &Path, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push(p.to_string_lossy().into_owned());
        }
    }
}

#[test]
fn every_file_the_architecture_page_names_exists() {
    let page = std::fs::read_to_string(root().join("docs/ARCHITECTURE.md")).unwrap();
    let mut known = Vec::new();
    files(&root().join("crates"), &mut known);
    let mut named = 0;
    let mut missing = Vec::new();
    // Code spans that name a file: `crates/x/src/y.rs`, `partition.rs`, `metrics/mod.rs`.
    for span in page.split('`').skip(1).step_by(2) {
        let is_file = [".rs", ".toml", ".py", ".js", ".html", ".css"]
            .iter()
            .any(|ext| span.ends_with(ext))
            && !span.contains(' ');
        if !is_file {
            continue;
        }
        named += 1;
        let found = if span.starts_with("crates/") {
            root().join(span).is_file()
        } else {
            // A short name: some file of the workspace ends with it.
            known.iter().any(|k| k.ends_with(&format!("/{span}")))
        };
        if !found {
            missing.push(span.to_owned());
        }
    }
    assert!(
        named > 40,
        "only {named} file names found: the page's format changed?"
    );
    assert!(
        missing.is_empty(),
        "docs/ARCHITECTURE.md names files that do not exist: {missing:?}"
    );
}
