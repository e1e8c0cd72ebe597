//! A deterministic generator of the "demo memory mix": synthetic guest
//! memory with the blend of content a real VM's memory shows, used by the
//! demo, the benchmarks and the VMM's `--mem-image` preload.
//!
//! [`MixSpec::demo`] is, by page count:
//!
//! | share | kind | stands for | codec record |
//! |---|---|---|---|
//! | 40 % | zero | never-touched and freed memory | Zero |
//! | 15 % | duplicate of one of 64 shared pages | identical kernel/library pages | Ref |
//! | 30 % | text | text, config, logs, source | Literal (zstd ≈ 3–4×) |
//! |  5 % | sparse | page tables, heap metadata: a few pointers in zeros | Literal (zstd ≫ 10×) |
//! | 10 % | incompressible | encrypted or already-compressed data | Raw |
//!
//! Page `i`'s kind and content depend only on `(seed, i)` (ChaCha8, which is
//! reproducible across platforms and versions), so any range of pages can be
//! generated independently, e.g. straight into guest memory.

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::CodecError;
use crate::page::{PageBytes, PAGE_SIZE};

/// The kind of content of one generated page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageKind {
    Zero,
    Duplicate,
    Text,
    Sparse,
    Incompressible,
}

/// Shares of each kind (fractions summing to 1) and the duplicate pool size.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MixSpec {
    pub zero: f64,
    pub duplicate: f64,
    pub text: f64,
    pub sparse: f64,
    pub incompressible: f64,
    /// Distinct contents the duplicate pages are copies of.
    pub duplicate_pool: u32,
}

impl MixSpec {
    /// The documented demo mix (see the module comment).
    pub fn demo() -> Self {
        MixSpec {
            zero: 0.40,
            duplicate: 0.15,
            text: 0.30,
            sparse: 0.05,
            incompressible: 0.10,
            duplicate_pool: 64,
        }
    }

    /// Every page of one kind.
    pub fn only(kind: PageKind) -> Self {
        let mut s = MixSpec {
            zero: 0.0,
            duplicate: 0.0,
            text: 0.0,
            sparse: 0.0,
            incompressible: 0.0,
            duplicate_pool: 64,
        };
        *match kind {
            PageKind::Zero => &mut s.zero,
            PageKind::Duplicate => &mut s.duplicate,
            PageKind::Text => &mut s.text,
            PageKind::Sparse => &mut s.sparse,
            PageKind::Incompressible => &mut s.incompressible,
        } = 1.0;
        s
    }

    /// Checks shares are in [0, 1] and sum to 1; the error names the key.
    pub fn validate(&self) -> Result<(), CodecError> {
        let shares = [
            ("mix.zero", self.zero),
            ("mix.duplicate", self.duplicate),
            ("mix.text", self.text),
            ("mix.sparse", self.sparse),
            ("mix.incompressible", self.incompressible),
        ];
        for (key, v) in shares {
            if !(0.0..=1.0).contains(&v) {
                return Err(CodecError::Config {
                    key,
                    why: format!("is {v}, must be a fraction between 0 and 1"),
                });
            }
        }
        let sum: f64 = shares.iter().map(|s| s.1).sum();
        if (sum - 1.0).abs() > 1e-6 {
            return Err(CodecError::Config {
                key: "mix",
                why: format!("shares sum to {sum}, must sum to 1"),
            });
        }
        if self.duplicate_pool == 0 {
            return Err(CodecError::Config {
                key: "mix.duplicate_pool",
                why: "must be at least 1".into(),
            });
        }
        Ok(())
    }

    /// The kind of page `index` (given the per-page random draw `u` in [0,1)).
    fn kind_for(&self, u: f64) -> PageKind {
        let mut acc = self.zero;
        if u < acc {
            return PageKind::Zero;
        }
        acc += self.duplicate;
        if u < acc {
            return PageKind::Duplicate;
        }
        acc += self.text;
        if u < acc {
            return PageKind::Text;
        }
        acc += self.sparse;
        if u < acc {
            return PageKind::Sparse;
        }
        PageKind::Incompressible
    }
}

fn page_rng(seed: u64, stream: u64, index: u64) -> ChaCha8Rng {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    r.set_stream(stream);
    r.set_word_pos(index as u128 * 1024);
    r
}

/// The kind of page `index` of the mix.
pub fn kind_of(seed: u64, index: u64, spec: &MixSpec) -> PageKind {
    let mut r = page_rng(seed, 1, index);
    spec.kind_for((r.next_u64() >> 11) as f64 / (1u64 << 53) as f64)
}

const WORDS: [&[u8]; 64] = [
    b"the",
    b"of",
    b"and",
    b"to",
    b"in",
    b"is",
    b"for",
    b"on",
    b"with",
    b"as",
    b"by",
    b"at",
    b"from",
    b"that",
    b"this",
    b"page",
    b"memory",
    b"guest",
    b"kernel",
    b"return",
    b"struct",
    b"const",
    b"static",
    b"void",
    b"int",
    b"uint64_t",
    b"if",
    b"else",
    b"while",
    b"error",
    b"warning",
    b"info",
    b"debug",
    b"request",
    b"response",
    b"GET",
    b"/api/v1/items",
    b"200",
    b"404",
    b"user_id",
    b"session",
    b"timestamp",
    b"2024-05-17T12:00:00Z",
    b"value",
    b"null",
    b"true",
    b"false",
    b"{",
    b"}",
    b"(",
    b")",
    b";",
    b"=",
    b"==",
    b"->",
    b"::",
    b"0x0",
    b"config",
    b"buffer",
    b"length",
    b"offset",
    b"count",
    b"name",
    b"id",
];
const SEPARATORS: [u8; 8] = [b' ', b' ', b' ', b' ', b' ', b'\n', b',', b'\t'];

fn text_page(rng: &mut ChaCha8Rng, out: &mut PageBytes) {
    let mut i = 0;
    let mut bits = 0u64;
    let mut left = 0;
    while i < PAGE_SIZE {
        if left == 0 {
            bits = rng.next_u64();
            left = 7;
        }
        let w = WORDS[(bits & 63) as usize];
        let sep = SEPARATORS[((bits >> 6) & 7) as usize];
        bits >>= 9;
        left -= 1;
        let n = w.len().min(PAGE_SIZE - i);
        out[i..i + n].copy_from_slice(&w[..n]);
        i += n;
        if i < PAGE_SIZE {
            out[i] = sep;
            i += 1;
        }
    }
}

fn sparse_page(rng: &mut ChaCha8Rng, out: &mut PageBytes) {
    out.fill(0);
    let n = rng.random_range(8..32);
    for _ in 0..n {
        let slot = rng.random_range(0..PAGE_SIZE / 8) * 8;
        // Kernel-pointer-like: common high bits, aligned low bits.
        let v = 0xffff_8880_0000_0000u64 | (rng.next_u64() & 0x0000_000f_ffff_fff8);
        out[slot..slot + 8].copy_from_slice(&v.to_le_bytes());
    }
}

/// Writes page `index` of the mix into `out`.
pub fn fill_page(seed: u64, index: u64, spec: &MixSpec, out: &mut PageBytes) {
    match kind_of(seed, index, spec) {
        PageKind::Zero => out.fill(0),
        PageKind::Duplicate => {
            let pick = page_rng(seed, 2, index).next_u64() % spec.duplicate_pool.max(1) as u64;
            text_page(&mut page_rng(seed, 3, pick), out);
        }
        PageKind::Text => text_page(&mut page_rng(seed, 4, index), out),
        PageKind::Sparse => sparse_page(&mut page_rng(seed, 5, index), out),
        PageKind::Incompressible => page_rng(seed, 6, index).fill_bytes(out),
    }
}

/// Fills `out` (a whole number of pages) with pages `first_index..` of the mix.
/// Trailing bytes that do not make a whole page are zeroed.
pub fn fill(seed: u64, first_index: u64, spec: &MixSpec, out: &mut [u8]) {
    let mut chunks = out.chunks_exact_mut(PAGE_SIZE);
    for (i, page) in (&mut chunks).enumerate() {
        let page: &mut PageBytes = page.try_into().expect("page-sized chunk");
        fill_page(seed, first_index + i as u64, spec, page);
    }
    chunks.into_remainder().fill(0);
}

/// `n_pages` pages of the mix, from page 0.
pub fn generate(seed: u64, n_pages: usize, spec: &MixSpec) -> Vec<u8> {
    let mut v = vec![0u8; n_pages * PAGE_SIZE];
    fill(seed, 0, spec, &mut v);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_mix_is_valid_deterministic_and_has_its_proportions() {
        let spec = MixSpec::demo();
        spec.validate().unwrap();
        let n = 20_000u64;
        let mut counts = [0usize; 5];
        for i in 0..n {
            counts[kind_of(7, i, &spec) as usize] += 1;
        }
        let want = [0.40, 0.15, 0.30, 0.05, 0.10];
        for (k, (&c, w)) in counts.iter().zip(want).enumerate() {
            let share = c as f64 / n as f64;
            assert!((share - w).abs() < 0.02, "kind {k}: {share} vs {w}");
        }
        let a = generate(7, 64, &spec);
        assert_eq!(a, generate(7, 64, &spec));
        assert_ne!(a, generate(8, 64, &spec));
        // Any range equals the same range of a whole generation.
        let mut part = vec![0u8; 8 * PAGE_SIZE];
        fill(7, 10, &spec, &mut part);
        assert_eq!(&part[..], &a[10 * PAGE_SIZE..18 * PAGE_SIZE]);
    }

    #[test]
    fn kinds_have_the_content_they_claim() {
        let mut p = [0u8; PAGE_SIZE];
        for (kind, check) in [
            (
                PageKind::Zero,
                (|p: &PageBytes| crate::page::is_zero(p)) as fn(&PageBytes) -> bool,
            ),
            (PageKind::Incompressible, |p| {
                crate::page::looks_incompressible(p)
            }),
            (PageKind::Text, |p| p.iter().all(|b| b.is_ascii())),
            (PageKind::Sparse, |p| {
                p.iter().filter(|&&b| b != 0).count() < 300
            }),
        ] {
            fill_page(1, 3, &MixSpec::only(kind), &mut p);
            assert!(check(&p), "{kind:?} page has the wrong content");
        }
        // Duplicates come from a small pool.
        let spec = MixSpec::only(PageKind::Duplicate);
        let distinct: std::collections::HashSet<Vec<u8>> = (0..500)
            .map(|i| {
                fill_page(1, i, &spec, &mut p);
                p.to_vec()
            })
            .collect();
        assert!(
            distinct.len() <= 64 && distinct.len() > 32,
            "{}",
            distinct.len()
        );
    }

    #[test]
    fn bad_shares_name_the_key() {
        let mut s = MixSpec::demo();
        s.text = 1.5;
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("mix.text"), "{e}");
        let mut s = MixSpec::demo();
        s.zero = 0.1;
        assert!(s.validate().is_err());
    }
}
