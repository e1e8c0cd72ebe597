//! The real-memory corpus: memory images of real Linux guests and real
//! processes, built on this machine by `benches/corpus/build.sh` into a
//! cache directory outside the repository (see `benches/corpus/README.md`).
//!
//! [`ensure`] runs the script for the images asked for (it skips what is
//! already built with the current recipe) and returns them; [`Census`]
//! counts an image's zero, non-zero and distinct pages.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use wanmig_codec::PAGE_SIZE;

/// The images the benchmarks measure: two 2 GiB guests and two processes.
pub const BENCH_IMAGES: &[&str] = &[
    "linux-pagecache-2g",
    "linux-pyheap-2g",
    "proc-python",
    "proc-java",
];

/// The smaller images the opt-in test builds by default.
pub const TEST_IMAGES: &[&str] = &["linux-pagecache-256m", "proc-python"];

/// Why the corpus could not be had.
#[derive(Debug, thiserror::Error)]
pub enum CorpusError {
    #[error("cannot run the corpus script {script}: {source}")]
    Spawn {
        script: PathBuf,
        source: std::io::Error,
    },
    #[error("the corpus script failed ({status}) building {names}; its messages are above (run `{script} {names}` to retry)")]
    Build {
        script: PathBuf,
        names: String,
        status: std::process::ExitStatus,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a corpus description: {source}")]
    Meta {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(
        "{path} holds {actual} bytes, its description says {expected}; delete it and build again"
    )]
    Size {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
}

/// What an image is: a guest's RAM or a process's mappings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Guest,
    Process,
}

/// An image's `NAME.json`, written by the script.
#[derive(Debug, Clone, Deserialize)]
pub struct Meta {
    pub name: String,
    pub kind: Kind,
    pub description: String,
    /// The image's recipe parameters (`mem_mib=2048 workload=...`).
    pub parameters: String,
    pub bytes: u64,
    /// Hash of the recipe and parameters the image was built with.
    pub stamp: String,
    pub built_at: String,
    pub build_seconds: u64,
    /// A random string the workload's input held (guests: a file on the
    /// disk that the page-cache workload reads).
    pub nonce: String,
    /// A string only the workload's heap holds (the reversed nonce).
    pub heap_token: String,
    /// Guests: RAM size, the workload, kernel and QEMU versions.
    pub ram_mib: Option<u64>,
    pub workload: Option<String>,
    pub kernel: Option<String>,
    pub qemu: Option<String>,
    /// Processes: the runtime's version and the number of mappings.
    pub runtime: Option<String>,
    pub regions: Option<u64>,
}

/// One built image.
#[derive(Debug, Clone)]
pub struct Image {
    pub meta: Meta,
    pub path: PathBuf,
}

impl Image {
    /// The image's bytes (whole pages).
    pub fn read(&self) -> Result<Vec<u8>, CorpusError> {
        let data = std::fs::read(&self.path).map_err(|source| CorpusError::Read {
            path: self.path.clone(),
            source,
        })?;
        if data.len() as u64 != self.meta.bytes || data.len() % PAGE_SIZE != 0 {
            return Err(CorpusError::Size {
                path: self.path.clone(),
                expected: self.meta.bytes,
                actual: data.len() as u64,
            });
        }
        Ok(data)
    }
}

/// Where the corpus lives: `$WANMIG_CORPUS_DIR`, else
/// `$XDG_CACHE_HOME/wanmig/corpus`, else `~/.cache/wanmig/corpus` (the
/// script's rule), else `target/wanmig-corpus` in the workspace.
pub fn dir() -> PathBuf {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(d) = env("WANMIG_CORPUS_DIR") {
        return d.into();
    }
    if let Some(d) = env("XDG_CACHE_HOME") {
        return Path::new(&d).join("wanmig/corpus");
    }
    if let Some(h) = env("HOME") {
        return Path::new(&h).join(".cache/wanmig/corpus");
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/wanmig-corpus")
}

/// The build script.
pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/build.sh")
}

/// Builds the named images that are missing or stale (the script's
/// progress goes to stderr; a 2 GiB guest takes minutes under TCG) and
/// returns them all, in the order asked.
pub fn ensure(names: &[&str]) -> Result<Vec<Image>, CorpusError> {
    let dir = dir();
    let script = script();
    let status = Command::new("bash")
        .arg(&script)
        .args(names)
        .env("WANMIG_CORPUS_DIR", &dir)
        .status()
        .map_err(|source| CorpusError::Spawn {
            script: script.clone(),
            source,
        })?;
    if !status.success() {
        return Err(CorpusError::Build {
            script,
            names: names.join(" "),
            status,
        });
    }
    names.iter().map(|n| open_in(&dir, n)).collect()
}

/// An image already built, without building anything.
pub fn open(name: &str) -> Result<Image, CorpusError> {
    open_in(&dir(), name)
}

fn open_in(dir: &Path, name: &str) -> Result<Image, CorpusError> {
    let meta_path = dir.join(format!("{name}.json"));
    let text = std::fs::read(&meta_path).map_err(|source| CorpusError::Read {
        path: meta_path.clone(),
        source,
    })?;
    let meta = serde_json::from_slice(&text).map_err(|source| CorpusError::Meta {
        path: meta_path,
        source,
    })?;
    Ok(Image {
        meta,
        path: dir.join(format!("{name}.img")),
    })
}

/// An image's pages by content.
#[derive(Debug, Clone, Default)]
pub struct Census {
    pub pages: u64,
    pub zero: u64,
    /// Index of the first page of each distinct non-zero content, in
    /// image order.
    pub distinct: Vec<usize>,
}

impl Census {
    /// Counts `image`'s pages (whole pages; a tail shorter than a page is
    /// ignored). Contents are told apart by BLAKE3.
    pub fn of(image: &[u8]) -> Self {
        let mut seen = HashSet::new();
        let mut c = Census::default();
        for (i, page) in image.chunks_exact(PAGE_SIZE).enumerate() {
            c.pages += 1;
            if page.iter().all(|&b| b == 0) {
                c.zero += 1;
            } else if seen.insert(*blake3::hash(page).as_bytes()) {
                c.distinct.push(i);
            }
        }
        c
    }

    pub fn nonzero(&self) -> u64 {
        self.pages - self.zero
    }

    /// The distinct non-zero pages, concatenated in image order.
    pub fn distinct_bytes(&self, image: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.distinct.len() * PAGE_SIZE);
        for &i in &self.distinct {
            out.extend_from_slice(&image[i * PAGE_SIZE..(i + 1) * PAGE_SIZE]);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn census_counts_zero_nonzero_and_distinct_pages() {
        let mut image = vec![0u8; 6 * PAGE_SIZE];
        image[PAGE_SIZE] = 1; // page 1
        image[3 * PAGE_SIZE] = 1; // page 3 = page 1
        image[5 * PAGE_SIZE + 7] = 2; // page 5
        let c = Census::of(&image);
        assert_eq!((c.pages, c.zero, c.nonzero()), (6, 3, 3));
        assert_eq!(c.distinct, vec![1, 5]);
        let d = c.distinct_bytes(&image);
        assert_eq!(d.len(), 2 * PAGE_SIZE);
        assert_eq!((d[0], d[PAGE_SIZE + 7]), (1, 2));
    }

    #[test]
    fn a_missing_image_is_an_error_naming_its_description() {
        let dir = tempfile::tempdir().unwrap();
        let e = open_in(dir.path(), "nothing").unwrap_err();
        assert!(e.to_string().contains("nothing.json"), "{e}");
    }
}
