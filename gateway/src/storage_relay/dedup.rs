//! Page-level dedup of disk blocks against the destination site's page
//! store — the same store (and fingerprints) memory migrations use — so a
//! disk cloned from content the destination already holds, or a second copy
//! of similar content, sends references instead of bytes (sans-IO).
//!
//! A block splits into 4 KiB pages. The source's [`PageEncoder`] knows the
//! destination's inventory (sent with the background lane's `Open`) and the
//! pages it sent since on that stream; a block with at least one page the
//! destination holds goes out as a paged payload: per page a tag (zero,
//! reference, literal), the references' fingerprints, and the literal pages
//! compressed together. Other blocks keep the plain payload
//! ([`wanmig_storage::wire`]). The destination decodes with
//! [`decode_paged`] and adds every page it receives to its store
//! ([`store_pages`]). The inventory is a set of fingerprint prefixes and the
//! store evicts, so a reference may not resolve: the destination then asks
//! for the block again without references (`RequestPlain`).
//!
//! Layout: `[3][u16 pages][tag per page][32-byte fingerprint per
//! reference][the literal pages as one plain payload (zero, raw or zstd,
//! [`wanmig_storage::wire`])]`.

use wanmig_codec::{CodecError, ContentStore, Fingerprint, Inventory, PageBytes};
use wanmig_storage::wire::{is_zero, BlockContent, BlockDecoder, BlockEncoder, Decoded};

/// The payload kind of a paged block (after the plain kinds 0, 1, 2).
pub const KIND_PAGES: u8 = 3;
const PAGE: usize = 4096;
const TAG_ZERO: u8 = 0;
const TAG_REF: u8 = 1;
const TAG_LITERAL: u8 = 2;
const FP: usize = 32;

/// Why a paged payload could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DedupError {
    #[error("paged storage block is malformed: {0}")]
    Malformed(&'static str),
    #[error("paged storage block references page {0} that this site no longer holds; asking for the block without references")]
    UnknownRef(Fingerprint),
    #[error("page store: {0}")]
    Store(#[from] CodecError),
}

/// The source's side: turns block bytes into paged payloads when it pays.
pub struct PageEncoder {
    known: Inventory,
    literals: BlockEncoder,
}

impl std::fmt::Debug for PageEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageEncoder")
            .field("known", &self.known.len())
            .finish_non_exhaustive()
    }
}

fn page(bytes: &[u8]) -> &PageBytes {
    bytes.try_into().expect("a 4 KiB chunk")
}

impl PageEncoder {
    /// An encoder for a destination holding `inventory`.
    pub fn new(inventory: Inventory, zstd_level: i32) -> std::io::Result<Self> {
        Ok(PageEncoder {
            known: inventory,
            literals: BlockEncoder::new(zstd_level)?,
        })
    }

    /// The paged payload of `data` when at least one page is a reference;
    /// `None`: send the plain payload. Either way the destination will hold
    /// the block's pages afterwards, so later blocks may refer to them.
    pub fn encode(&mut self, data: &[u8]) -> Option<Vec<u8>> {
        if data.is_empty() || data.len() % PAGE != 0 || data.len() / PAGE > usize::from(u16::MAX) {
            return None;
        }
        let n = data.len() / PAGE;
        let mut tags = Vec::with_capacity(n);
        let mut refs = Vec::new();
        let mut literals = Vec::new();
        for chunk in data.chunks_exact(PAGE) {
            if is_zero(chunk) {
                tags.push(TAG_ZERO);
                continue;
            }
            let fp = Fingerprint::of(page(chunk));
            if self.known.contains(&fp) {
                tags.push(TAG_REF);
                refs.extend_from_slice(fp.as_bytes());
            } else {
                tags.push(TAG_LITERAL);
                literals.extend_from_slice(chunk);
                self.known.insert(&fp);
            }
        }
        if refs.is_empty() {
            return None;
        }
        let mut out = Vec::with_capacity(3 + n + refs.len() + 1 + literals.len() / 2);
        out.push(KIND_PAGES);
        out.extend_from_slice(&(n as u16).to_le_bytes());
        out.extend_from_slice(&tags);
        out.extend_from_slice(&refs);
        out.extend_from_slice(&self.literals.encode(BlockContent::Data(&literals)));
        Some(out)
    }
}

/// Whether `payload` is a paged payload.
pub fn is_paged(payload: &[u8]) -> bool {
    payload.first() == Some(&KIND_PAGES)
}

/// Decodes a paged payload of a `block_len`-byte block into `out`,
/// resolving references from `store` and adding literal pages to it.
pub fn decode_paged(
    payload: &[u8],
    block_len: usize,
    store: &mut dyn ContentStore,
    out: &mut Vec<u8>,
) -> Result<(), DedupError> {
    let bad = DedupError::Malformed;
    let rest = payload
        .strip_prefix(&[KIND_PAGES])
        .ok_or(bad("not a paged payload"))?;
    if rest.len() < 2 {
        return Err(bad("page count"));
    }
    let n = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
    if n * PAGE != block_len {
        return Err(bad("page count does not match the block size"));
    }
    let rest = &rest[2..];
    if rest.len() < n {
        return Err(bad("tags"));
    }
    let (tags, rest) = rest.split_at(n);
    let nrefs = tags.iter().filter(|&&t| t == TAG_REF).count();
    let nlits = tags.iter().filter(|&&t| t == TAG_LITERAL).count();
    if tags.iter().any(|&t| t > TAG_LITERAL) {
        return Err(bad("unknown page tag"));
    }
    if rest.len() < nrefs * FP + 1 {
        return Err(bad("references"));
    }
    let (refs, rest) = rest.split_at(nrefs * FP);
    let mut literals = Vec::new();
    match BlockDecoder::new()
        .map_err(|_| bad("zstd decoder"))?
        .decode(0, rest, nlits * PAGE, &mut literals)
    {
        Ok(Decoded::Data) => {}
        Ok(Decoded::Zero) => literals = vec![0; nlits * PAGE],
        Err(_) => return Err(bad("literal pages do not decode")),
    }
    out.clear();
    out.resize(block_len, 0);
    let (mut r, mut l) = (0, 0);
    let mut buf: PageBytes = [0; PAGE];
    for (i, &t) in tags.iter().enumerate() {
        let dst = &mut out[i * PAGE..(i + 1) * PAGE];
        match t {
            TAG_ZERO => {}
            TAG_REF => {
                let fp = Fingerprint(refs[r * FP..(r + 1) * FP].try_into().expect("32 bytes"));
                r += 1;
                if !store.get(&fp, &mut buf)? {
                    return Err(DedupError::UnknownRef(fp));
                }
                dst.copy_from_slice(&buf);
            }
            _ => {
                let p = &literals[l * PAGE..(l + 1) * PAGE];
                l += 1;
                dst.copy_from_slice(p);
                store.put(&Fingerprint::of(page(p)), page(p))?;
            }
        }
    }
    Ok(())
}

/// Adds the non-zero pages of a received block to `store` (blocks whose
/// length is not a whole number of pages are skipped).
pub fn store_pages(data: &[u8], store: &mut dyn ContentStore) -> Result<(), CodecError> {
    if data.len() % PAGE != 0 {
        return Ok(());
    }
    for chunk in data.chunks_exact(PAGE) {
        if !is_zero(chunk) {
            store.put(&Fingerprint::of(page(chunk)), page(chunk))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[derive(Default)]
    struct MemStore(HashMap<Fingerprint, PageBytes>);
    impl ContentStore for MemStore {
        fn get(&mut self, fp: &Fingerprint, out: &mut PageBytes) -> Result<bool, CodecError> {
            Ok(self.0.get(fp).map(|p| *out = *p).is_some())
        }
        fn put(&mut self, fp: &Fingerprint, page: &PageBytes) -> Result<(), CodecError> {
            self.0.insert(*fp, *page);
            Ok(())
        }
    }

    fn block(seed: u8) -> Vec<u8> {
        let mut b = vec![0u8; 4 * PAGE];
        for (i, x) in b[..3 * PAGE].iter_mut().enumerate() {
            *x = (i as u8).wrapping_mul(seed) ^ (i / 97) as u8;
        }
        b
    }

    #[test]
    fn pages_the_destination_holds_become_references() {
        let mut dest = MemStore::default();
        let data = block(7);
        // Cold: nothing known, the plain payload is used; the destination
        // stores what it received.
        let mut enc = PageEncoder::new(Inventory::new(), 1).unwrap();
        assert!(enc.encode(&data).is_none());
        store_pages(&data, &mut dest).unwrap();
        assert_eq!(dest.0.len(), 3, "three non-zero pages");
        // The same block again (a second disk): all references.
        let p = enc.encode(&data).expect("paged");
        assert!(p.len() < 200, "references only: {} bytes", p.len());
        let mut out = Vec::new();
        decode_paged(&p, data.len(), &mut dest, &mut out).unwrap();
        assert_eq!(out, data);
        // A fresh encoder from the destination's inventory does the same.
        let inv = Inventory::from_fingerprints(dest.0.keys());
        let mut enc2 = PageEncoder::new(inv, 1).unwrap();
        let mut mixed = data.clone();
        mixed[3 * PAGE..].copy_from_slice(&block(9)[..PAGE]);
        let p = enc2.encode(&mixed).expect("paged");
        decode_paged(&p, mixed.len(), &mut dest, &mut out).unwrap();
        assert_eq!(out, mixed);
        assert_eq!(dest.0.len(), 4, "the literal page was added");
    }

    #[test]
    fn an_unresolvable_reference_is_an_error_and_hostile_payloads_never_panic() {
        let data = block(3);
        let mut holder = MemStore::default();
        store_pages(&data, &mut holder).unwrap();
        let mut enc = PageEncoder::new(Inventory::from_fingerprints(holder.0.keys()), 1).unwrap();
        let p = enc.encode(&data).unwrap();
        let mut empty = MemStore::default();
        let mut out = Vec::new();
        assert!(matches!(
            decode_paged(&p, data.len(), &mut empty, &mut out),
            Err(DedupError::UnknownRef(_))
        ));
        assert!(decode_paged(&p, 2 * PAGE, &mut holder, &mut out).is_err());
        for n in 0..p.len() {
            let _ = decode_paged(&p[..n], data.len(), &mut holder, &mut out);
        }
        let mut bad = p.clone();
        bad[3] = 9;
        assert!(decode_paged(&bad, data.len(), &mut holder, &mut out).is_err());
    }
}
