//! Every file under `tests/fixtures/config/` and the shipped `config/*.toml`: valid ones load
//! and survive a round trip through what `portcullis check` prints, invalid ones fail with the
//! message their `# expect:` lines give. (The saved `config_load` fuzz crashes take the same
//! round trip in `tests/fuzz_regressions.rs`.)

#[path = "../fuzz/src/round_trip.rs"]
mod round_trip;

use std::path::{Path, PathBuf};

use portcullis::config::{Config, ConfigError};
use round_trip::config_round_trip;

/// Set for the fixtures whose clients log in with a password.
const PASSWORD_VAR: &str = "PORTCULLIS_TEST_FIXTURE_PW";
/// Never set: `invalid/password_env_unset.toml` names it.
const UNSET_VAR: &str = "PORTCULLIS_TEST_FIXTURE_UNSET_PW";
const EXPECT: &str = "# expect: ";

/// Fixtures that fail their check because of a known bug outside this test: (file, how the
/// check fails, the bug). Each must keep failing that way: once the bug is fixed the test
/// says so, and the entry goes.
const KNOWN_BUGS: &[(&str, &str, &str)] = &[];

#[test]
fn config_fixtures() {
    std::env::set_var(PASSWORD_VAR, "fixture-secret");
    std::env::remove_var(UNSET_VAR);

    let valid = fixtures("valid");
    let invalid = fixtures("invalid");
    assert!(valid.len() >= 6, "only {} valid fixtures", valid.len());
    assert!(
        invalid.len() >= 15,
        "only {} invalid fixtures",
        invalid.len()
    );

    // Every fixture is checked before failing, so one run lists every broken one.
    let results = valid
        .iter()
        .map(|p| (p, check_valid(p)))
        .chain(invalid.iter().map(|p| (p, check_invalid(p))));
    let mut failures = Vec::new();
    for (path, result) in results {
        let known = KNOWN_BUGS.iter().find(|(f, _, _)| path.ends_with(f));
        match (result, known) {
            (Ok(()), None) => {}
            (Err(e), None) => failures.push(e),
            (Err(e), Some((_, how, bug))) if e.contains(how) => {
                eprintln!("known bug ({bug}):\n{e}\n")
            }
            (Err(e), Some((f, how, _))) => failures.push(format!(
                "{f} fails, but not with the known bug ({how:?}):\n{e}"
            )),
            (Ok(()), Some((f, _, bug))) => {
                failures.push(format!("{f} passes now: remove it from KNOWN_BUGS ({bug})"))
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} fixtures failed:\n\n{}",
        failures.len(),
        valid.len() + invalid.len(),
        failures.join("\n\n")
    );
}

/// The shipped configs (the built-in one is `config/portcullis.toml`) take the round trip too.
#[test]
fn shipped_configs_round_trip() {
    let shipped = toml_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config"));
    assert!(!shipped.is_empty(), "no config/*.toml");
    let failures: Vec<String> = shipped
        .iter()
        .filter_map(|p| check_valid(p).err())
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    let builtin = Config::load(None).expect("the built-in config loads");
    config_round_trip(&builtin).expect("the built-in config round-trips");
}

/// The `*.toml` files of one fixture folder, by absolute path, sorted.
fn fixtures(kind: &str) -> Vec<PathBuf> {
    toml_files(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/config")
            .join(kind),
    )
}

/// The `*.toml` files directly in `dir`, sorted.
fn toml_files(dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("read_dir entry").path())
        .filter(|p| p.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    paths.sort();
    paths
}

/// The leading `# expect: ` lines, with `{dir}` standing for the fixture's folder.
fn expectations(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let dir = path
        .parent()
        .expect("fixture has a folder")
        .display()
        .to_string();
    text.lines()
        .map_while(|line| line.strip_prefix(EXPECT))
        .map(|e| e.replace("{dir}", &dir))
        .collect()
}

/// Loads, and what `check` prints for it loads back to the same effective config.
fn check_valid(path: &Path) -> Result<(), String> {
    let name = path.display().to_string();
    if !expectations(path).is_empty() {
        return Err(format!(
            "{name}: a valid fixture must not carry `{EXPECT}` lines"
        ));
    }
    let config = Config::from_file(path).map_err(|e| format!("{name}: should load, got:\n{e}"))?;
    if config.upstreams.is_empty() {
        return Err(format!("{name}: loaded with no upstreams"));
    }
    let shown = config.to_string();
    let header = format!("# effective config from {name}\n");
    if !shown.starts_with(&header) {
        return Err(format!(
            "{name}: Display does not start with {header:?}:\n{shown}"
        ));
    }
    config_round_trip(&config).map_err(|e| format!("{name}: {e}"))
}

/// Fails, naming the file on every line, with one problem per `# expect:` line.
fn check_invalid(path: &Path) -> Result<(), String> {
    let name = path.display().to_string();
    let expects = expectations(path);
    if expects.is_empty() {
        return Err(format!(
            "{name}: an invalid fixture starts with `{EXPECT}<substring>`"
        ));
    }
    let err: ConfigError = match Config::from_file(path) {
        Ok(_) => return Err(format!("{name}: loaded, but should fail with {expects:?}")),
        Err(e) => e,
    };
    let shown = err.to_string();
    let mut wrong = Vec::new();
    if err.source != name {
        wrong.push(format!("source is {:?}", err.source));
    }
    if err.problems.len() != expects.len() {
        wrong.push(format!(
            "{} problem(s) reported, {} expected",
            err.problems.len(),
            expects.len()
        ));
    }
    for expect in &expects {
        if !err.problems.iter().any(|p| p.contains(expect.as_str())) {
            wrong.push(format!("no problem contains {expect:?}"));
        }
    }
    let prefix = format!("{name}: ");
    let lines: Vec<&str> = shown.lines().collect();
    if lines.len() != err.problems.len() || !lines.iter().all(|l| l.starts_with(&prefix)) {
        wrong.push(format!(
            "not one line per problem, each starting {prefix:?}"
        ));
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(format!("{name}: {}; got:\n{shown}", wrong.join("; ")))
    }
}
