//! Real QEMU for the tests: a guest whose RAM starts as a generated image
//! (zero, random, patterned and duplicated pages) and that runs
//! `testenv`'s firmware (idle, or dirtying a working set), controlled over
//! QMP; a destination started with `-incoming defer`; and the migration
//! settings both ends need.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wanmig_testenv::qemu::guest::{self, DirtyParams};
use wanmig_testenv::qemu::qmp::Qmp;

/// Guest RAM of the test VMs.
pub const MEM_MIB: u64 = 64;
const PAGE: usize = 4096;

/// How a migration is set up on both ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Precopy,
    /// multifd with this many channels and compression `none`.
    Multifd(u8),
    /// multifd with zstd compression.
    MultifdZstd(u8),
    /// precopy with the xbzrle capability.
    Xbzrle,
    /// precopy with the legacy `compress` threads.
    Compress,
    /// `postcopy-ram` on (which opens the return path); `start`: switch
    /// to postcopy once the first pass is under way.
    Postcopy {
        start: bool,
    },
}

impl Mode {
    /// The capabilities and parameters both ends get.
    fn settings(self) -> (Vec<&'static str>, Value) {
        match self {
            Mode::Precopy => (vec![], json!({})),
            Mode::Multifd(n) => (
                vec!["multifd"],
                json!({"multifd-channels": n, "multifd-compression": "none"}),
            ),
            Mode::MultifdZstd(n) => (
                vec!["multifd"],
                json!({"multifd-channels": n, "multifd-compression": "zstd"}),
            ),
            Mode::Xbzrle => (vec!["xbzrle"], json!({"xbzrle-cache-size": 8u64 << 20})),
            Mode::Compress => (
                vec!["compress"],
                json!({"compress-threads": 1, "decompress-threads": 1}),
            ),
            Mode::Postcopy { .. } => (vec!["postcopy-ram"], json!({})),
        }
    }

    /// Sets the mode's capabilities and parameters over `q`.
    pub fn apply(self, q: &mut Qmp) {
        let (caps, params) = self.settings();
        if !caps.is_empty() {
            let caps: Vec<Value> = caps
                .iter()
                .map(|c| json!({"capability": c, "state": true}))
                .collect();
            q.execute("migrate-set-capabilities", json!({ "capabilities": caps }))
                .expect("migrate-set-capabilities");
        }
        if params.as_object().is_some_and(|o| !o.is_empty()) {
            q.execute("migrate-set-parameters", params)
                .expect("migrate-set-parameters");
        }
    }
}

/// The guest RAM image: page `i` is zero, random, patterned or a copy of
/// an earlier page, decided by a hash of `i`.
pub fn write_image(path: &Path) {
    let mut f = std::io::BufWriter::new(File::create(path).expect("creating the RAM image"));
    let pages = (MEM_MIB << 20) as usize / PAGE;
    let mut page = vec![0u8; PAGE];
    for i in 0..pages {
        let h = mix(i as u64);
        match h % 10 {
            0..=3 => page.fill(0),
            4..=6 => {
                let mut x = h | 1;
                for w in page.chunks_exact_mut(8) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    w.copy_from_slice(&x.to_le_bytes());
                }
            }
            7 | 8 => {
                let line = format!("page {i:08} of the wanmig qemu-stream test image\n");
                for (d, s) in page.iter_mut().zip(line.bytes().cycle()) {
                    *d = s;
                }
            }
            _ => {
                // A copy of a patterned page: same content as page (i % 97).
                let line = format!("page {:08} of the wanmig qemu-stream test image\n", i % 97);
                for (d, s) in page.iter_mut().zip(line.bytes().cycle()) {
                    *d = s;
                }
            }
        }
        f.write_all(&page).expect("writing the RAM image");
    }
    f.flush().expect("writing the RAM image");
}

fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A dirtying guest's parameters: `pages_per_sec` pages of a working set
/// of 2048 pages at 8 MiB.
pub fn dirtying(pages_per_sec: u32) -> DirtyParams {
    DirtyParams {
        pages_per_sec,
        ws_base: guest::WORKING_SET_BASE as u32,
        ws_pages: 2048,
        seed: 0x5eed_0001,
    }
}

/// One QEMU process, killed by its pid on drop.
pub struct Vm {
    child: Child,
    pub qmp: Qmp,
    pub name: String,
    log: PathBuf,
    dir: PathBuf,
}

/// Which end a VM is.
pub enum Role<'a> {
    /// RAM is a private mapping of `image`; the firmware is `firmware`.
    Source { image: &'a Path, firmware: &'a Path },
    /// `-incoming defer`, paused after the migration (`-S`) so its memory
    /// can be compared with the source's before it runs.
    Destination { firmware: &'a Path },
}

impl Vm {
    pub fn start(qemu: &Path, dir: &Path, name: &str, role: Role<'_>) -> Vm {
        let qmp_path = dir.join(format!("{name}.qmp"));
        let log = dir.join(format!("{name}.log"));
        let (backend, firmware) = match role {
            Role::Source { image, firmware } => (
                format!(
                    "memory-backend-file,id=ram0,size={MEM_MIB}M,mem-path={},share=off",
                    image.display()
                ),
                firmware,
            ),
            Role::Destination { firmware } => (
                format!("memory-backend-ram,id=ram0,size={MEM_MIB}M"),
                firmware,
            ),
        };
        let mut cmd = Command::new(qemu);
        cmd.current_dir(dir)
            .args(["-name", &format!("wanmig-qemu-stream-{name}")])
            .args(["-machine", "pc,accel=tcg,memory-backend=ram0"])
            .args(["-object", &backend])
            .args(["-m", &format!("{MEM_MIB}M"), "-smp", "1"])
            .args(["-nodefaults", "-no-user-config", "-display", "none"])
            .arg("-bios")
            .arg(firmware)
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp_path.display()));
        if let Role::Destination { .. } = role {
            cmd.args(["-S", "-incoming", "defer"]);
        }
        let out = File::create(&log).expect("creating the QEMU log");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("duplicating the log handle"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("starting QEMU {}: {e}", qemu.display()));
        let qmp = match Qmp::connect(&qmp_path, name, Duration::from_secs(30)) {
            Ok(q) => q,
            Err(e) => panic!("{e}; {}", std::fs::read_to_string(&log).unwrap_or_default()),
        };
        Vm {
            child,
            qmp,
            name: name.to_string(),
            log,
            dir: dir.to_path_buf(),
        }
    }

    /// QEMU's own output so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn status(&mut self) -> String {
        let v = self
            .qmp
            .execute("query-status", json!({}))
            .expect("query-status");
        v["status"].as_str().unwrap_or("?").to_string()
    }

    /// Waits (up to `within`) until the run state is one of `states`.
    pub fn wait_status(&mut self, states: &[&str], within: Duration) -> String {
        let until = Instant::now() + within;
        loop {
            let s = self.status();
            if states.contains(&s.as_str()) || Instant::now() >= until {
                return s;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Polls `query-migrate` until the migration completed or failed (up
    /// to `within`); returns the last reply.
    pub fn wait_migration(&mut self, within: Duration) -> Value {
        let until = Instant::now() + within;
        loop {
            let v = self
                .qmp
                .execute("query-migrate", json!({}))
                .expect("query-migrate");
            let done = matches!(
                v["status"].as_str(),
                Some("completed" | "failed" | "cancelled")
            );
            if done || Instant::now() >= until {
                return v;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The first `MEM_MIB` MiB of guest-physical memory, saved with
    /// `pmemsave` (to a file relative to QEMU's working directory), and
    /// its SHA-256.
    pub fn memory(&mut self) -> (Vec<u8>, String) {
        let file = format!("{}.mem", self.name);
        self.qmp
            .execute(
                "pmemsave",
                json!({"val": 0, "size": MEM_MIB << 20, "filename": file}),
            )
            .expect("pmemsave");
        let out = Command::new("sha256sum")
            .arg(&file)
            .current_dir(&self.dir)
            .output()
            .expect("running sha256sum");
        assert!(out.status.success(), "sha256sum {file} failed");
        let sum = String::from_utf8_lossy(&out.stdout);
        let sum = sum
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        let path = self.dir.join(&file);
        let bytes = std::fs::read(&path).expect("reading the pmemsave file");
        let _ = std::fs::remove_file(path);
        (bytes, sum)
    }
}

/// The page numbers at which two memory dumps differ (at most `max`).
pub fn differing_pages(a: &[u8], b: &[u8], max: usize) -> Vec<usize> {
    a.chunks(PAGE)
        .zip(b.chunks(PAGE))
        .enumerate()
        .filter(|(_, (x, y))| x != y)
        .map(|(i, _)| i)
        .take(max)
        .collect()
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}
