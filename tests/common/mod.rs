//! Helpers shared by the end-to-end tests: run the binary, paths as text.

#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

/// Runs `relgraph args...`, fails the test with its stderr unless it succeeds, and
/// returns its stdout.
pub fn relgraph(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_relgraph"))
        .args(args)
        .output()
        .expect("run relgraph");
    assert!(
        out.status.success(),
        "relgraph {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf8 stdout")
}

pub fn path(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}
