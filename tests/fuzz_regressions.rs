//! Replays the fuzz seeds and every saved fuzz crash through the fuzz targets' checks (fuzz/src/lib.rs).
//!
//! A crash found by `fuzz/run.sh` is kept as a file under
//! `fuzz/regressions/<target>/`; `saved_crashes_replay` fails until the bug is fixed.

#[path = "../fuzz/src/lib.rs"]
mod checks;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// The files directly under `fuzz/<kind>/<target>/`, sorted; none when the folder is missing.
fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(kind)
        .join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .map(|entry| entry.expect("read_dir entry").path())
        .filter(|p| p.is_file() && p.file_name().is_some_and(|n| n != "README.md"))
        .collect();
    paths.sort();
    paths
}

/// Runs every file of `fuzz/<kind>/<target>/` through the target's check;
/// returns how many ran, or every failing file with its panic message.
fn replay(kind: &str, target: &str) -> Result<usize, Vec<String>> {
    let check = checks::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .map(|(_, check)| *check)
        .unwrap_or_else(|| panic!("no fuzz target {target}"));
    let paths = inputs(kind, target);
    let mut failures = Vec::new();
    for path in &paths {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| check(&data))) {
            let msg = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            failures.push(format!("{}: {msg}", path.display()));
        }
    }
    if failures.is_empty() {
        Ok(paths.len())
    } else {
        Err(failures)
    }
}

/// The seed corpora are real requests, configs and hosts: all must pass.
#[test]
fn seeds_pass_every_check() {
    let mut failures = Vec::new();
    for (target, _) in checks::TARGETS {
        match replay("seeds", target) {
            Ok(0) => failures.push(format!("fuzz/seeds/{target} has no seed")),
            Ok(_) => {}
            Err(f) => failures.extend(f),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Every saved crash replays cleanly. Only targets that have a crash folder are replayed,
/// and a folder must name a target and hold at least one input: an empty or misnamed one
/// would pass without testing anything.
#[test]
fn saved_crashes_replay() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    let mut folders: Vec<String> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .map(|entry| entry.expect("read_dir entry").path())
        .filter(|p| p.is_dir())
        .filter_map(|p| p.file_name()?.to_str().map(String::from))
        .collect();
    folders.sort();
    assert!(
        !folders.is_empty(),
        "no saved crash under {}",
        root.display()
    );
    let mut failures = Vec::new();
    for target in &folders {
        if !checks::TARGETS.iter().any(|(name, _)| name == target) {
            failures.push(format!(
                "fuzz/regressions/{target}: no fuzz target of that name"
            ));
            continue;
        }
        match replay("regressions", target) {
            Ok(0) => failures.push(format!("fuzz/regressions/{target} is empty")),
            Ok(_) => {}
            Err(f) => failures.extend(f),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
