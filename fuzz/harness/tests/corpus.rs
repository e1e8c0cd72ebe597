//! Replays every checked-in fuzz input (`fuzz/corpus/<target>/*`) through
//! its target, on stable, as part of `cargo test --workspace`: an input
//! that once found a bug, or a seed, fails here if the bug comes back,
//! also where no nightly toolchain runs the fuzzers.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use wanmig_fuzz_harness::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the harness lives in fuzz/")
        .to_path_buf()
}

fn inputs(target: &str) -> Vec<PathBuf> {
    let dir = fuzz_dir().join("corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("no corpus for {target} at {}: {e}", dir.display()))
        .map(|e| e.expect("read corpus directory").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_checked_in_input_replays() {
    let mut failed = Vec::new();
    for t in TARGETS {
        let files = inputs(t.name);
        assert!(!files.is_empty(), "the corpus of {} is empty", t.name);
        for f in files {
            let data = std::fs::read(&f).expect("read corpus file");
            if catch_unwind(AssertUnwindSafe(|| (t.run)(&data))).is_err() {
                failed.push(f.display().to_string());
            }
        }
    }
    assert!(
        failed.is_empty(),
        "inputs that fail their target: {failed:#?}"
    );
}

#[test]
fn every_target_has_a_fuzz_binary_and_a_corpus() {
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("fuzz/Cargo.toml");
    for t in TARGETS {
        assert!(
            manifest.contains(&format!("name = \"{}\"", t.name)),
            "fuzz/Cargo.toml has no [[bin]] for {}",
            t.name
        );
        let src = fuzz_dir()
            .join("fuzz_targets")
            .join(format!("{}.rs", t.name));
        let text =
            std::fs::read_to_string(&src).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
        assert!(
            text.contains(&format!("{}::run", t.name)),
            "{} does not call its harness",
            src.display()
        );
    }
    for entry in std::fs::read_dir(fuzz_dir().join("corpus")).expect("fuzz/corpus") {
        let name = entry.expect("corpus entry").file_name();
        let name = name.to_string_lossy();
        assert!(
            wanmig_fuzz_harness::target(&name).is_some(),
            "fuzz/corpus/{name} belongs to no target"
        );
    }
}

#[test]
fn seeds_build_and_pass_their_target() {
    for t in TARGETS {
        let seeds = (t.seeds)();
        assert!(!seeds.is_empty(), "{} has no seeds", t.name);
        for s in seeds {
            (t.run)(&s);
        }
    }
}
