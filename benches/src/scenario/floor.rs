//! The physical floor of one scenario: the least time any migration of
//! this guest could take on this link.
//!
//! **Unique compressed bytes** `U`: the guest's memory image (the mix the
//! demo preloads, `wanmig_codec::mix` with the scenario's seed, or an image
//! file such as a real guest's memory from the corpus), split into
//! 4 KiB pages; zero pages dropped (a zero page needs no payload);
//! remaining pages deduplicated by content (BLAKE3) so each distinct page
//! counts once; the distinct pages, concatenated in first-seen order,
//! compressed as one zstd stream at level [`FLOOR_ZSTD_LEVEL`].
//!
//! **Re-sent dirty bytes** `R`: while `U` crosses the link (`U / rate`
//! seconds) the guest keeps writing, and every distinct page it dirties in
//! that time costs more (with `n` uniformly random page writes into a
//! working set of `w` pages the expected distinct pages are
//! `w · (1 − (1 − 1/w)^n)`). What a page costs depends on how the guest
//! writes it ([`PageRewrite`]):
//! - a guest that changes one 8-byte word per page write: a perfect encoder
//!   re-sends [`RESEND_BYTES_PER_PAGE`] bytes (the word and its address);
//! - a guest that fills the whole page with fresh pseudo-random words
//!   (write-heavy-pages): no encoder can send less than the page's
//!   compressed size, [`FULL_PAGE_RESEND_BYTES`] for random words. A
//!   clairvoyant sender would skip the page's old content, so the floor
//!   takes off what an average page of the image adds to `U`
//!   (`U / memory pages`) — the floor stays a lower bound.
//!
//! **Floor** = `(U + R) · 8 / rate + HANDSHAKE_RTTS · RTT`: the migration
//! session's open (Hello → HelloAck) and the handover's confirmation
//! (Complete → Confirmed) each need a round trip that no byte count hides.
//! The QUIC connection is up before a migration starts, so its handshake is
//! not counted. Jitter and loss do not lower the floor and are ignored.

use std::collections::HashSet;
use std::io::Write;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use wanmig_codec::mix::{self, MixSpec};
use wanmig_gateway::demo::GuestWorkload;

/// zstd level of the floor's compression (the highest regular level).
pub const FLOOR_ZSTD_LEVEL: i32 = 19;
/// Bytes a perfect encoder needs to re-send a page whose write changed
/// one word.
pub const RESEND_BYTES_PER_PAGE: f64 = 16.0;
/// Bytes any encoder needs to send a page the guest filled with fresh
/// pseudo-random words: the page itself, it does not compress.
pub const FULL_PAGE_RESEND_BYTES: f64 = PAGE as f64;
/// Round trips a migration cannot avoid.
pub const HANDSHAKE_RTTS: f64 = 2.0;
const PAGE: usize = 4096;

/// The link-independent part of the floor: one memory image's unique
/// compressed bytes.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct ImageFloor {
    pub mem_bytes: u64,
    pub zero_pages: u64,
    pub distinct_pages: u64,
    /// `U`: the distinct non-zero pages after zstd.
    pub unique_compressed_bytes: u64,
}

/// Computes [`ImageFloor`] of `mem_bytes` of `spec` with `seed`.
pub fn image_floor(spec: &MixSpec, seed: u64, mem_bytes: u64) -> Result<ImageFloor> {
    image_floor_of(mem_bytes, FLOOR_ZSTD_LEVEL, |first, part| {
        mix::fill(seed, first, spec, part);
        Ok(())
    })
}

/// Computes [`ImageFloor`] of the memory image in the file at `path` (whole
/// pages; a shorter tail is ignored), compressing at zstd `level`
/// ([`FLOOR_ZSTD_LEVEL`] for a true floor; a lower level is much faster on
/// large images and gives a floor that is higher by its worse ratio).
pub fn file_floor(path: &std::path::Path, level: i32) -> Result<ImageFloor> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let len = f
        .metadata()
        .with_context(|| format!("reading the size of {}", path.display()))?
        .len();
    let mem_bytes = len - len % PAGE as u64;
    image_floor_of(mem_bytes, level, |first, part| {
        f.read_exact_at(part, first * PAGE as u64)
            .with_context(|| format!("reading {}", path.display()))
    })
}

/// Computes [`ImageFloor`] of `mem_bytes` of pages that `fill(first_page,
/// buf)` writes into `buf`, a chunk at a time.
fn image_floor_of(
    mem_bytes: u64,
    level: i32,
    mut fill: impl FnMut(u64, &mut [u8]) -> Result<()>,
) -> Result<ImageFloor> {
    let pages = mem_bytes / PAGE as u64;
    let mut seen: HashSet<[u8; 32]> = HashSet::new();
    let mut zero_pages = 0;
    let mut enc = zstd::stream::Encoder::new(Vec::new(), level)
        .context("starting the floor's zstd stream")?;
    // Match over a window as long as memory, so nothing a long-range
    // matcher would find is missed.
    enc.long_distance_matching(true)
        .context("enabling zstd long-distance matching")?;
    let chunk = 1024u64;
    let mut buf = vec![0u8; chunk as usize * PAGE];
    let mut first = 0;
    while first < pages {
        let n = chunk.min(pages - first);
        let part = &mut buf[..n as usize * PAGE];
        fill(first, part)?;
        for page in part.chunks_exact(PAGE) {
            if page.iter().all(|&b| b == 0) {
                zero_pages += 1;
            } else if seen.insert(*blake3::hash(page).as_bytes()) {
                enc.write_all(page)
                    .context("compressing the floor's pages")?;
            }
        }
        first += n;
    }
    let out = enc.finish().context("finishing the floor's zstd stream")?;
    Ok(ImageFloor {
        mem_bytes,
        zero_pages,
        distinct_pages: seen.len() as u64,
        unique_compressed_bytes: out.len() as u64,
    })
}

/// How the guest's page writes change a page, as far as re-sending it
/// costs.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum PageRewrite {
    /// One 8-byte word per page write.
    Word,
    /// The whole page, with fresh pseudo-random words.
    FullRandom,
}

impl PageRewrite {
    /// How `workload` writes its pages (the demo guest's page-write mode).
    pub fn of(workload: GuestWorkload) -> PageRewrite {
        // Every workload named, so a new one must say how it writes.
        match workload {
            GuestWorkload::Idle | GuestWorkload::Moderate | GuestWorkload::WriteHeavy => {
                PageRewrite::Word
            }
            GuestWorkload::WriteHeavyPages => PageRewrite::FullRandom,
        }
    }

    /// Bytes the floor counts per distinct page dirtied while `image`'s
    /// unique bytes cross the link.
    pub fn resend_bytes_per_page(self, image: &ImageFloor) -> f64 {
        match self {
            PageRewrite::Word => RESEND_BYTES_PER_PAGE,
            PageRewrite::FullRandom => {
                let pages = (image.mem_bytes / PAGE as u64).max(1) as f64;
                let old_share = image.unique_compressed_bytes as f64 / pages;
                (FULL_PAGE_RESEND_BYTES - old_share).max(0.0)
            }
        }
    }
}

/// The floor of one scenario.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Floor {
    pub unique_compressed_bytes: u64,
    /// How the guest's writes change a page.
    pub page_rewrite: PageRewrite,
    /// What `R` counts per distinct dirtied page.
    pub resend_bytes_per_page: f64,
    /// `R`: bytes to re-send the pages dirtied while `U` is in flight.
    pub resend_bytes: u64,
    pub handshake_ms: f64,
    pub floor_ms: f64,
}

/// Expected distinct pages hit by `writes` uniform random page writes into
/// `working_set` pages.
pub fn distinct_pages_dirtied(writes: f64, working_set: u64) -> f64 {
    if working_set == 0 || writes <= 0.0 {
        return 0.0;
    }
    let w = working_set as f64;
    w * (1.0 - (1.0 - 1.0 / w).powf(writes))
}

/// The floor of `image` on a link of `rate_bps` and `rtt_ms`, with a guest
/// writing `dirty_bytes_per_sec` (in 4 KiB page writes, each changing the
/// page as `rewrite` says) into `working_set_pages`.
pub fn floor(
    image: &ImageFloor,
    rate_bps: u64,
    rtt_ms: f64,
    dirty_bytes_per_sec: u64,
    working_set_pages: u64,
    rewrite: PageRewrite,
) -> Floor {
    let rate = rate_bps.max(1) as f64;
    let u = image.unique_compressed_bytes as f64;
    let in_flight_s = u * 8.0 / rate;
    let writes = dirty_bytes_per_sec as f64 / PAGE as f64 * in_flight_s;
    let per_page = rewrite.resend_bytes_per_page(image);
    let resend = distinct_pages_dirtied(writes, working_set_pages) * per_page;
    let handshake_ms = HANDSHAKE_RTTS * rtt_ms;
    Floor {
        unique_compressed_bytes: image.unique_compressed_bytes,
        page_rewrite: rewrite,
        resend_bytes_per_page: per_page,
        resend_bytes: resend.round() as u64,
        handshake_ms,
        floor_ms: (u + resend) * 8.0 / rate * 1e3 + handshake_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wanmig_codec::mix::PageKind;

    #[test]
    fn zero_and_duplicate_pages_cost_nothing_and_random_pages_cost_their_size() {
        let zero = image_floor(&MixSpec::only(PageKind::Zero), 1, 4 << 20).unwrap();
        assert_eq!(zero.zero_pages, 1024);
        assert_eq!(zero.distinct_pages, 0);
        assert!(zero.unique_compressed_bytes < 64);
        let dup = image_floor(&MixSpec::only(PageKind::Duplicate), 1, 4 << 20).unwrap();
        assert!(dup.distinct_pages <= 64, "{dup:?}");
        let rnd = image_floor(&MixSpec::only(PageKind::Incompressible), 1, 4 << 20).unwrap();
        assert_eq!(rnd.distinct_pages, 1024);
        assert!(rnd.unique_compressed_bytes >= 4 << 20, "{rnd:?}");
        let busy = image_floor(&MixSpec::demo(), 1, 4 << 20).unwrap();
        assert!(busy.unique_compressed_bytes < rnd.unique_compressed_bytes / 3);
    }

    #[test]
    fn an_image_file_has_the_floor_of_the_pages_it_holds() {
        let spec = MixSpec::demo();
        let mem = 4u64 << 20;
        let mut image = vec![0u8; mem as usize];
        mix::fill(7, 0, &spec, &mut image);
        // A tail shorter than a page is not memory.
        image.extend_from_slice(&[1, 2, 3]);
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), &image).unwrap();
        assert_eq!(
            file_floor(file.path(), FLOOR_ZSTD_LEVEL).unwrap(),
            image_floor(&spec, 7, mem).unwrap()
        );
    }

    #[test]
    fn the_floor_is_bytes_at_the_rate_plus_two_round_trips() {
        let image = ImageFloor {
            mem_bytes: 1 << 30,
            zero_pages: 0,
            distinct_pages: 1,
            unique_compressed_bytes: 12_500_000,
        };
        let f = floor(&image, 100_000_000, 50.0, 0, 0, PageRewrite::Word);
        assert_eq!(f.resend_bytes, 0);
        assert!((f.floor_ms - (1000.0 + 100.0)).abs() < 1e-6, "{f:?}");
        // A writing guest adds at most 16 bytes per working-set page.
        let g = floor(
            &image,
            100_000_000,
            50.0,
            400 << 20,
            1000,
            PageRewrite::Word,
        );
        assert!(g.resend_bytes > 15_000 && g.resend_bytes <= 16_000, "{g:?}");
        assert!((distinct_pages_dirtied(1.0, 10) - 1.0).abs() < 1e-9);
        assert!(distinct_pages_dirtied(1e9, 10) <= 10.0);
    }

    #[test]
    fn a_guest_filling_whole_pages_costs_each_dirtied_page_less_its_old_share() {
        // 1 GiB whose unique bytes are 12.5 MB: an average page adds
        // 12.5e6 / 262144 ≈ 47.7 bytes to U.
        let image = ImageFloor {
            mem_bytes: 1 << 30,
            zero_pages: 0,
            distinct_pages: 1,
            unique_compressed_bytes: 12_500_000,
        };
        let share = 12_500_000.0 / 262_144.0;
        let per_page = PageRewrite::FullRandom.resend_bytes_per_page(&image);
        assert!((per_page - (4096.0 - share)).abs() < 1e-9, "{per_page}");
        // Writes enough to dirty the whole 1000-page working set while U
        // crosses: R is those pages at (nearly) their full size, where a
        // word-writing guest costs 16 bytes each.
        let full = floor(
            &image,
            100_000_000,
            50.0,
            400 << 20,
            1000,
            PageRewrite::FullRandom,
        );
        let word = floor(
            &image,
            100_000_000,
            50.0,
            400 << 20,
            1000,
            PageRewrite::Word,
        );
        let dirtied = distinct_pages_dirtied((400u64 << 20) as f64 / 4096.0, 1000);
        assert!(dirtied > 999.0, "{dirtied}");
        assert_eq!(full.resend_bytes, (dirtied * per_page).round() as u64);
        assert!(
            full.resend_bytes > 4_000_000 && full.resend_bytes <= 4_096_000,
            "{full:?}"
        );
        assert!(
            full.resend_bytes > 250 * word.resend_bytes,
            "{full:?} vs {word:?}"
        );
        // 4 MB more at 100 Mbit/s: about 0.32 s on top of 1.1 s.
        let extra_ms = full.floor_ms - word.floor_ms;
        // (R is rounded to whole bytes; the floor is not.)
        assert!((extra_ms - (full.resend_bytes - word.resend_bytes) as f64 * 8e-5).abs() < 1e-3);
        assert!(full.floor_ms > 1400.0 && full.floor_ms < 1430.0, "{full:?}");
        // An image that is all random pages leaves nothing to take off
        // beyond the page itself, and the cost never goes negative.
        let random = ImageFloor {
            mem_bytes: 4 << 20,
            zero_pages: 0,
            distinct_pages: 1024,
            unique_compressed_bytes: (4 << 20) + 64,
        };
        let p = PageRewrite::FullRandom.resend_bytes_per_page(&random);
        assert!((0.0..1.0).contains(&p), "{p}");
    }

    #[test]
    fn only_the_write_heavy_pages_guest_rewrites_whole_pages() {
        assert_eq!(
            PageRewrite::of(GuestWorkload::WriteHeavyPages),
            PageRewrite::FullRandom
        );
        for w in [
            GuestWorkload::Idle,
            GuestWorkload::Moderate,
            GuestWorkload::WriteHeavy,
        ] {
            assert_eq!(PageRewrite::of(w), PageRewrite::Word, "{w:?}");
        }
    }
}
