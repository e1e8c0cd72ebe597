//! XOR/run-length deltas between two versions of a page.
//!
//! A delta is a sequence of segments `skip: u16 LE, len: u16 LE, xor[len]`:
//! skip `skip` unchanged bytes, then XOR the next `len` bytes of the base
//! with `xor`. Segments never reach past the end of the page. The XOR bytes
//! keep the zero bytes of partly changed words, so the batch's zstd pass
//! shrinks them further.
//!
//! Hand-written rather than a crate: the format is a dozen lines, must be
//! bounds-checked against hostile input in a specific way, and no well-kept
//! crate offers a page-sized XOR delta with an early size cut-off.

use crate::page::{PageBytes, PAGE_SIZE};

/// Bytes of segment header (skip + len).
const SEGMENT_HEADER: usize = 4;

#[inline]
fn word(p: &PageBytes, i: usize) -> u64 {
    u64::from_ne_bytes(p[i * 8..i * 8 + 8].try_into().expect("8 bytes"))
}

/// Appends the delta that turns `old` into `new` to `out`, unless it would
/// exceed `limit` bytes; then `out` is restored and `None` returned.
/// Returns the delta's length.
pub fn encode(old: &PageBytes, new: &PageBytes, limit: usize, out: &mut Vec<u8>) -> Option<usize> {
    let start = out.len();
    let words = PAGE_SIZE / 8;
    let mut pos = 0usize; // byte position after the last segment
    let mut w = 0usize;
    while w < words {
        if word(old, w) == word(new, w) {
            w += 1;
            continue;
        }
        // A run of differing words [w, e).
        let mut e = w + 1;
        while e < words && word(old, e) != word(new, e) {
            e += 1;
        }
        // Trim unchanged bytes at both ends of the run.
        let mut b = w * 8;
        while old[b] == new[b] {
            b += 1;
        }
        let mut end = e * 8;
        while old[end - 1] == new[end - 1] {
            end -= 1;
        }
        let len = end - b;
        if out.len() - start + SEGMENT_HEADER + len > limit {
            out.truncate(start);
            return None;
        }
        // Both fit in u16: positions are below PAGE_SIZE = 4096.
        out.extend_from_slice(&((b - pos) as u16).to_le_bytes());
        out.extend_from_slice(&(len as u16).to_le_bytes());
        out.extend(old[b..end].iter().zip(&new[b..end]).map(|(x, y)| x ^ y));
        pos = end;
        w = e;
    }
    Some(out.len() - start)
}

/// Walks the segments of `delta`, calling `f(offset, xor_bytes)` for each,
/// after checking every length against the page bounds.
fn walk(delta: &[u8], mut f: impl FnMut(usize, &[u8])) -> Result<(), &'static str> {
    let mut rest = delta;
    let mut pos = 0usize;
    while !rest.is_empty() {
        if rest.len() < SEGMENT_HEADER {
            return Err("segment header truncated");
        }
        let skip = u16::from_le_bytes([rest[0], rest[1]]) as usize;
        let len = u16::from_le_bytes([rest[2], rest[3]]) as usize;
        rest = &rest[SEGMENT_HEADER..];
        if len > rest.len() {
            return Err("segment bytes truncated");
        }
        let off = pos + skip;
        if off + len > PAGE_SIZE {
            return Err("segment reaches past the end of the page");
        }
        f(off, &rest[..len]);
        rest = &rest[len..];
        pos = off + len;
    }
    Ok(())
}

/// Checks that `delta` is well-formed without applying it.
pub fn validate(delta: &[u8]) -> Result<(), &'static str> {
    walk(delta, |_, _| {})
}

/// Applies `delta` to `page` in place (the page holds the base on entry).
pub fn apply(page: &mut PageBytes, delta: &[u8]) -> Result<(), &'static str> {
    walk(delta, |off, xor| {
        for (p, x) in page[off..off + xor.len()].iter_mut().zip(xor) {
            *p ^= x;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn small_change_gives_small_delta() {
        let old = [7u8; PAGE_SIZE];
        let mut new = old;
        new[100] = 9;
        new[4095] = 1;
        let mut d = Vec::new();
        let n = encode(&old, &new, PAGE_SIZE, &mut d).unwrap();
        assert_eq!(n, 2 * (SEGMENT_HEADER + 1));
        let mut got = old;
        apply(&mut got, &d).unwrap();
        assert_eq!(got, new);
    }

    #[test]
    fn limit_aborts_and_restores_buffer() {
        let old = [0u8; PAGE_SIZE];
        let new = [1u8; PAGE_SIZE];
        let mut d = vec![42];
        assert_eq!(encode(&old, &new, 1000, &mut d), None);
        assert_eq!(d, vec![42]);
    }

    #[test]
    fn out_of_bounds_segment_rejected() {
        let mut d = Vec::new();
        d.extend_from_slice(&4090u16.to_le_bytes());
        d.extend_from_slice(&10u16.to_le_bytes());
        d.extend_from_slice(&[1; 10]);
        assert!(validate(&d).is_err());
        let mut p = [0u8; PAGE_SIZE];
        assert!(apply(&mut p, &d).is_err());
        assert!(validate(&[1, 0, 5]).is_err());
        assert!(validate(&[0, 0, 5, 0, 1]).is_err());
    }

    proptest! {
        #[test]
        fn delta_round_trips(seed in any::<u8>(), edits in proptest::collection::vec((0usize..PAGE_SIZE, any::<u8>()), 0..300)) {
            let old = [seed; PAGE_SIZE];
            let mut new = old;
            for (i, v) in edits { new[i] = v; }
            let mut d = Vec::new();
            encode(&old, &new, usize::MAX, &mut d).unwrap();
            validate(&d).unwrap();
            let mut got = old;
            apply(&mut got, &d).unwrap();
            prop_assert_eq!(&got[..], &new[..]);
        }

        #[test]
        fn random_delta_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut p = [0u8; PAGE_SIZE];
            let _ = validate(&bytes);
            let _ = apply(&mut p, &bytes);
        }
    }
}
