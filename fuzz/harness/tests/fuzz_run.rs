//! Runs every fuzz target coverage-guided for a few seconds with cargo-fuzz
//! (nightly, libFuzzer), starting from its checked-in corpus: what CI does
//! beyond replaying the corpora (`tests/corpus.rs`). A crash fails the test
//! and names the input libFuzzer saved.
//!
//! Needs the nightly toolchain and cargo-fuzz; without them the test prints
//! why and passes, unless `WANMIG_REQUIRE_FUZZ=1` (set by `.ci/run`) makes
//! their absence a failure. `WANMIG_FUZZ_SECONDS` sets the time per target
//! (default 5). The build is the cheapest cargo-fuzz offers: `--dev`, and
//! no sanitizer (`-s none`). The harness code is safe Rust, where a memory
//! error needs a bug in a dependency's unsafe code; catching those is the
//! job of the long AddressSanitizer runs in `fuzz/README.md`, and leaving
//! ASan out of the short CI run halves its cold build. It goes in
//! `fuzz-nightly/` under this build's target directory.
//! `WANMIG_FUZZ_RELEASE=1` switches to the optimised AddressSanitizer build
//! with debug assertions (`-a`, what `fuzz/README.md` runs by hand) and
//! `WANMIG_FUZZ_TARGET_DIR` to another directory, to reuse such a build.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use wanmig_fuzz_harness::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the harness lives in fuzz/")
        .to_path_buf()
}

/// The target directory this test binary was built in
/// (`<target>/debug/deps/<binary>`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.ancestors()
        .nth(3)
        .expect("the test binary lies in <target>/<profile>/deps")
        .to_path_buf()
}

fn works(cmd: &mut Command) -> bool {
    cmd.output().is_ok_and(|o| o.status.success())
}

/// Why the fuzzers cannot run here, if they cannot.
fn missing_tools() -> Option<&'static str> {
    if !works(Command::new("cargo").args(["+nightly", "--version"])) {
        return Some("the nightly toolchain is not installed (rustup toolchain install nightly)");
    }
    if !works(Command::new("cargo").args(["+nightly", "fuzz", "--version"])) {
        return Some("cargo-fuzz is not installed (cargo install cargo-fuzz)");
    }
    None
}

fn cargo_fuzz(args: &[&str]) -> Command {
    let release = std::env::var_os("WANMIG_FUZZ_RELEASE").is_some_and(|v| v == "1");
    let dir = std::env::var_os("WANMIG_FUZZ_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("fuzz-nightly"));
    let mut cmd = Command::new("cargo");
    cmd.arg("+nightly")
        .arg("fuzz")
        .args(args)
        .args(if release {
            &["-a"][..]
        } else {
            &["--dev", "-s", "none"][..]
        })
        .arg("--target-dir")
        .arg(dir)
        .current_dir(fuzz_dir())
        // The stable build's settings are not the nightly build's.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET_DIR");
    cmd
}

fn tail(o: &Output) -> String {
    let text = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

#[test]
fn every_target_fuzzes_without_a_crash() {
    if let Some(why) = missing_tools() {
        if std::env::var_os("WANMIG_REQUIRE_FUZZ").is_some_and(|v| v == "1") {
            panic!("WANMIG_REQUIRE_FUZZ=1 but {why}");
        }
        eprintln!("skipped: {why}; set WANMIG_REQUIRE_FUZZ=1 to make this a failure");
        return;
    }
    let seconds: u32 = std::env::var("WANMIG_FUZZ_SECONDS")
        .ok()
        .map(|s| s.parse().expect("WANMIG_FUZZ_SECONDS is a whole number"))
        .unwrap_or(5);

    let started = Instant::now();
    let build = cargo_fuzz(&["build"])
        .output()
        .expect("run cargo fuzz build");
    assert!(
        build.status.success(),
        "cargo fuzz build failed:\n{}",
        tail(&build)
    );
    eprintln!(
        "built the fuzz targets in {:.0} s",
        started.elapsed().as_secs_f64()
    );

    let scratch = tempfile::tempdir().expect("a scratch directory");
    // The fuzzers run side by side, one per core: each is one process on
    // one core, and nothing else runs while this test does.
    let parallel = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut failed = Vec::new();
    for batch in TARGETS.chunks(parallel) {
        let running: Vec<_> = batch
            .iter()
            .map(|t| {
                // New inputs go to a scratch corpus (the first directory);
                // the checked-in one is only read.
                let new = scratch.path().join(t.name);
                let artifacts = scratch.path().join(format!("{}-artifacts", t.name));
                std::fs::create_dir_all(&new).expect("scratch corpus");
                std::fs::create_dir_all(&artifacts).expect("scratch artifacts");
                let corpus = fuzz_dir().join("corpus").join(t.name);
                let child = cargo_fuzz(&["run"])
                    .arg(t.name)
                    .arg(&new)
                    .arg(&corpus)
                    .arg("--")
                    .arg(format!("-max_total_time={seconds}"))
                    .arg(format!("-artifact_prefix={}/", artifacts.display()))
                    .arg("-rss_limit_mb=4096")
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .expect("run cargo fuzz run");
                (t, artifacts, child)
            })
            .collect();
        for (t, artifacts, child) in running {
            let out = child.wait_with_output().expect("wait for cargo fuzz run");
            let stderr = String::from_utf8_lossy(&out.stderr);
            let done = stderr
                .lines()
                .rfind(|l| l.contains("DONE"))
                .unwrap_or("(no DONE line)");
            eprintln!("{}: {done}", t.name);
            if !out.status.success() {
                let saved: Vec<PathBuf> = std::fs::read_dir(&artifacts)
                    .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
                    .unwrap_or_default();
                for p in &saved {
                    // Keep the input where a developer can find it after
                    // the scratch directory is gone.
                    let keep = target_dir()
                        .join("fuzz-artifacts")
                        .join(t.name)
                        .join(p.file_name().expect("artifact file name"));
                    std::fs::create_dir_all(keep.parent().expect("artifact directory"))
                        .expect("create fuzz-artifacts");
                    std::fs::copy(p, &keep).expect("keep the artifact");
                    eprintln!("{}: kept {}", t.name, keep.display());
                }
                eprintln!("{}:\n{}", t.name, tail(&out));
                failed.push(t.name);
            }
        }
    }
    eprintln!(
        "fuzzed {} targets for {seconds} s each; {:.0} s in all",
        TARGETS.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        failed.is_empty(),
        "targets that crashed or failed to run: {failed:?} (the inputs are under {}; copy one \
         into fuzz/corpus/<target>/ and cargo test -p wanmig-fuzz-harness replays it)",
        target_dir().join("fuzz-artifacts").display()
    );
}
