//! wanmig-fuzz-harness: what each of wanmig's fuzz targets does with its
//! input, and the seed inputs it starts from.
//!
//! Each module is one target: `run(&[u8])` drives the code under test with
//! the input and asserts what must hold for every input (beyond "no panic":
//! round trips, bounds, and who may change what); `seeds()` builds a few
//! dozen inputs from real encodings (what the encoders, the switch, the
//! store and a real KVM VM produce) in the format `run` reads.
//!
//! Three things use it:
//! - the cargo-fuzz crate in `fuzz/` (nightly, libFuzzer): one binary per
//!   entry of [`TARGETS`], each a one-line call of its `run`;
//! - `tests/corpus.rs` (stable, part of `cargo test --workspace`): replays
//!   every checked-in input under `fuzz/corpus/<target>/`, so a regression
//!   shows without nightly;
//! - the `wanmig-fuzz-seeds` binary, which writes the seeds there.
//!
//! `fuzz/README.md` says how to run a target and what each one reaches.

pub mod codec_batch;
pub mod codec_inventory;
pub mod codec_store_index;
pub mod input;
pub mod migration_frames;
pub mod overlay_control;
pub mod overlay_datagram;
pub mod qemu_stream;
pub mod session_sequences;
pub mod storage_block;
pub mod storage_done;
pub mod storage_presence;
pub mod vm_state;

/// A fuzz target: its name (the cargo-fuzz binary and corpus directory),
/// what it does with an input, and its seeds.
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
    pub seeds: fn() -> Vec<Vec<u8>>,
}

/// Every target, by name.
pub const TARGETS: &[Target] = &[
    Target {
        name: "overlay_datagram",
        run: overlay_datagram::run,
        seeds: overlay_datagram::seeds,
    },
    Target {
        name: "overlay_control",
        run: overlay_control::run,
        seeds: overlay_control::seeds,
    },
    Target {
        name: "codec_batch",
        run: codec_batch::run,
        seeds: codec_batch::seeds,
    },
    Target {
        name: "codec_inventory",
        run: codec_inventory::run,
        seeds: codec_inventory::seeds,
    },
    Target {
        name: "codec_store_index",
        run: codec_store_index::run,
        seeds: codec_store_index::seeds,
    },
    Target {
        name: "migration_frames",
        run: migration_frames::run,
        seeds: migration_frames::seeds,
    },
    Target {
        name: "session_sequences",
        run: session_sequences::run,
        seeds: session_sequences::seeds,
    },
    Target {
        name: "storage_presence",
        run: storage_presence::run,
        seeds: storage_presence::seeds,
    },
    Target {
        name: "storage_block",
        run: storage_block::run,
        seeds: storage_block::seeds,
    },
    Target {
        name: "storage_done",
        run: storage_done::run,
        seeds: storage_done::seeds,
    },
    Target {
        name: "qemu_stream",
        run: qemu_stream::run,
        seeds: qemu_stream::seeds,
    },
    Target {
        name: "vm_state",
        run: vm_state::run,
        seeds: vm_state::seeds,
    },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// A fresh directory for one run's files, in memory (`/dev/shm`) where
/// there is one: the file-backed targets create and load files on every
/// input, and a disk would bound them to its latency.
pub fn scratch_dir() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    let mut b = tempfile::Builder::new();
    b.prefix("wanmig-fuzz-");
    if shm.is_dir() {
        if let Ok(d) = b.tempdir_in(shm) {
            return d;
        }
    }
    b.tempdir().expect("cannot create a temporary directory")
}

/// The overlay metrics every switch of a fuzzing process shares: building
/// the metric families costs more than a typical input, and a switch only
/// ever adds to them, so sharing them keeps runs independent.
pub fn overlay_metrics() -> wanmig_overlay::OverlayMetrics {
    static METRICS: std::sync::OnceLock<wanmig_overlay::OverlayMetrics> =
        std::sync::OnceLock::new();
    METRICS
        .get_or_init(wanmig_overlay::OverlayMetrics::unregistered)
        .clone()
}
