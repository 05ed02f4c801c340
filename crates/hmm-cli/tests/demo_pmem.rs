//! `hmm demo dax --pmem FILE` treats FILE as user data: it formats only a
//! new or empty file, reuses its own image, refuses anything else without
//! touching it, and erases only with `--format`.

use std::path::PathBuf;
use std::process::{Command, Output};

struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str) -> Self {
        Self(std::env::temp_dir().join(format!("hmm-cli-test-{}-{name}", std::process::id())))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn demo(args: &[&str]) -> (Output, String) {
    let output =
        Command::new(env!("CARGO_BIN_EXE_hmm")).args(["--no-color", "demo", "dax"]).args(args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output, text)
}

#[test]
fn a_file_of_data_is_refused_and_untouched() {
    let notes = TempFile::new("notes.txt");
    std::fs::write(&notes.0, b"someone's 23-byte notes").unwrap();
    let (output, text) = demo(&["--pmem", notes.0.to_str().unwrap()]);
    assert!(!output.status.success(), "{text}");
    assert!(text.contains("holds no hmm DAX filesystem") && text.contains("--format"), "{text}");
    assert_eq!(std::fs::read(&notes.0).unwrap(), b"someone's 23-byte notes");
}

#[test]
fn a_kept_image_is_reused_and_format_erases_it() {
    let image = TempFile::new("kept.pmem");
    let path = image.0.to_str().unwrap();
    let (first, text) = demo(&["--pmem", path]);
    assert!(first.status.success(), "{text}");
    assert!(text.contains("formatted a new DAX filesystem"), "{text}");
    let (second, text) = demo(&["--pmem", path]);
    assert!(second.status.success(), "{text}");
    assert!(text.contains("mounted the device image an earlier run kept"), "{text}");
    assert!(text.contains("the earlier run left \"written by the device into persistent memory\""), "{text}");
    let (third, text) = demo(&["--pmem", path, "--format"]);
    assert!(third.status.success(), "{text}");
    assert!(text.contains("formatted a new DAX filesystem") && !text.contains("earlier run left"), "{text}");
}

#[test]
fn format_needs_a_file() {
    let (output, text) = demo(&["--format"]);
    assert!(!output.status.success(), "{text}");
    assert!(text.contains("--pmem"), "{text}");
}
