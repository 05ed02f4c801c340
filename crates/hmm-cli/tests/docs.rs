//! The documents tell the truth about the tree: every `*.rs` path and every
//! `crate::module::Item` path cited in README.md, ARCHITECTURE.md and
//! docs/*.md exists.
//!
//! A file path may be given from the workspace root, from a crate's folder
//! or its `src/`, or as the tail of a longer path (`fork.rs` in a sentence
//! about `harness/`): some file of a crate must end with it. A module path
//! is resolved through the crate's module files; its first non-module
//! segment must be named in that module's file (defined or re-exported),
//! and the segments after it (methods, variants) somewhere in the crate.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn documents() -> Vec<PathBuf> {
    let root = root();
    let mut docs = vec![root.join("README.md"), root.join("ARCHITECTURE.md")];
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            docs.push(path);
        }
    }
    docs
}

fn crate_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root().join("crates")).unwrap().map(|e| e.unwrap().path()).collect();
    dirs.sort();
    dirs
}

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn all_crate_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in crate_dirs() {
        for sub in ["src", "tests", "benches", "examples"] {
            rust_files(&dir.join(sub), &mut files);
        }
    }
    files
}

fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '/' | '.' | '-')
}

/// The `*.rs` paths cited in `text`.
fn cited_files(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (at, _) in text.match_indices(".rs") {
        let end = at + 3;
        if text[end..].chars().next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let start = text[..at].char_indices().rev().take_while(|&(_, c)| is_path_char(c)).last().map_or(at, |(i, _)| i);
        let path = text[start..end].trim_start_matches("./");
        if path.len() > 3 && !path.contains("://") {
            found.push(path.to_string());
        }
    }
    found
}

fn file_exists(cited: &str, crate_files: &[PathBuf]) -> bool {
    let root = root();
    if root.join(cited).is_file() {
        return true;
    }
    if crate_dirs().iter().any(|dir| dir.join(cited).is_file() || dir.join("src").join(cited).is_file()) {
        return true;
    }
    let tail = format!("/{cited}");
    crate_files.iter().any(|file| file.to_string_lossy().ends_with(&tail))
}

/// The `crate::a::b` paths cited in `text`, split into segments.
fn cited_modules(text: &str, crates: &[String]) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    for token in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')) {
        let segments: Vec<String> = token.split("::").filter(|s| !s.is_empty()).map(str::to_string).collect();
        if token.contains("::") && segments.len() > 1 && crates.contains(&segments[0]) {
            found.push(segments);
        }
    }
    found
}

fn has_word(text: &str, word: &str) -> bool {
    text.match_indices(word).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + word.len()..].chars().next();
        let boundary = |c: Option<char>| !c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        boundary(before) && boundary(after)
    })
}

/// Why `segments` (crate first) does not resolve, if it does not.
fn module_problem(segments: &[String]) -> Option<String> {
    let crate_dir = root().join("crates").join(segments[0].replace('_', "-"));
    let mut dir = crate_dir.join("src");
    let mut file = dir.join("lib.rs");
    for (i, segment) in segments.iter().enumerate().skip(1) {
        for candidate in [dir.join(format!("{segment}.rs")), dir.join(segment).join("mod.rs")] {
            if candidate.is_file() {
                file = candidate;
                dir = dir.join(segment);
                break;
            }
        }
        if dir.ends_with(segment) {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        if !has_word(&text, segment) {
            return Some(format!("`{segment}` is neither a module nor named in {}", file.display()));
        }
        let mut sources = Vec::new();
        rust_files(&crate_dir.join("src"), &mut sources);
        let crate_text: String = sources.iter().map(|f| std::fs::read_to_string(f).unwrap()).collect();
        for rest in &segments[i + 1..] {
            if !has_word(&crate_text, rest) {
                return Some(format!("`{rest}` appears nowhere in the crate"));
            }
        }
        return None;
    }
    None
}

#[test]
fn every_cited_file_exists() {
    let crate_files = all_crate_files();
    let mut missing = Vec::new();
    for doc in documents() {
        let text = std::fs::read_to_string(&doc).unwrap();
        for cited in cited_files(&text) {
            if !file_exists(&cited, &crate_files) {
                missing.push(format!("{}: {cited}", doc.display()));
            }
        }
    }
    assert!(missing.is_empty(), "cited files that do not exist:\n{}", missing.join("\n"));
}

#[test]
fn every_cited_module_path_exists() {
    let crates: Vec<String> =
        crate_dirs().iter().map(|d| d.file_name().unwrap().to_string_lossy().replace('-', "_")).collect();
    let mut missing = Vec::new();
    for doc in documents() {
        let text = std::fs::read_to_string(&doc).unwrap();
        for segments in cited_modules(&text, &crates) {
            if let Some(problem) = module_problem(&segments) {
                missing.push(format!("{}: {}: {problem}", doc.display(), segments.join("::")));
            }
        }
    }
    assert!(missing.is_empty(), "cited module paths that do not exist:\n{}", missing.join("\n"));
}

#[test]
fn the_checks_catch_what_is_gone() {
    let crate_files = all_crate_files();
    assert_eq!(cited_files("see `fault/shared.rs` and fork.rs."), ["fault/shared.rs", "fork.rs"]);
    assert!(!file_exists("fault/shared.rs", &crate_files), "a removed file");
    assert!(file_exists("fault/file.rs", &crate_files) && file_exists("crates/hmm/src/lib.rs", &crate_files));
    let crates = vec!["hmm_mm".to_string(), "hmm".to_string()];
    let cited = cited_modules("`hmm_mm::shmem::ShmemObject`, hmm::Range, `hmm_mm::fs::DaxFs::{format}`", &crates);
    assert_eq!(cited.len(), 3);
    assert!(module_problem(&cited[0]).is_some(), "a removed module");
    assert!(module_problem(&cited[1]).is_none());
    assert!(module_problem(&cited[2]).is_none());
}
