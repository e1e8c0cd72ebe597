//! What the destination site already holds, as the source sees it.
//!
//! The destination sends its page store's inventory once at session start:
//! the 64-bit fingerprint prefixes of every stored page, sorted. 8 bytes per
//! page instead of 32 keeps it small (a 4 GiB store: 8 MiB). A prefix match
//! only makes the source *try* a reference; the reference carries the full
//! 256-bit fingerprint, and a destination that cannot resolve it NACKs, so a
//! prefix collision costs a resend, never wrong data.
//!
//! Wire form: `"WMCI", version u8, 3 reserved zero bytes, count u32 LE`, then
//! `count` strictly ascending u64 LE prefixes.

use std::collections::HashSet;

use crate::error::CodecError;
use crate::fingerprint::Fingerprint;

/// Magic at the start of an encoded inventory.
pub const INVENTORY_MAGIC: [u8; 4] = *b"WMCI";
/// Inventory format version.
pub const INVENTORY_VERSION: u8 = 1;
/// Most entries accepted (2^28 pages = 1 TiB of store).
pub const MAX_INVENTORY: usize = 1 << 28;
const HEADER: usize = 12;

/// A set of fingerprint prefixes the destination (probably) holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    prefixes: HashSet<u64>,
}

impl Inventory {
    /// The empty inventory (cold destination).
    pub fn new() -> Self {
        Self::default()
    }

    pub fn from_fingerprints<'a>(fps: impl IntoIterator<Item = &'a Fingerprint>) -> Self {
        Inventory {
            prefixes: fps.into_iter().map(Fingerprint::prefix).collect(),
        }
    }

    /// Whether the destination probably holds content `fp`.
    #[inline]
    pub fn contains(&self, fp: &Fingerprint) -> bool {
        self.prefixes.contains(&fp.prefix())
    }

    /// Records that the destination now holds `fp`.
    pub fn insert(&mut self, fp: &Fingerprint) {
        self.prefixes.insert(fp.prefix());
    }

    /// Forgets `fp` (after the destination NACKed it).
    pub fn remove(&mut self, fp: &Fingerprint) {
        self.prefixes.remove(&fp.prefix());
    }

    pub fn len(&self) -> usize {
        self.prefixes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.prefixes.is_empty()
    }

    /// The wire form.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut sorted: Vec<u64> = self.prefixes.iter().copied().collect();
        sorted.sort_unstable();
        let mut out = Vec::with_capacity(HEADER + 8 * sorted.len());
        out.extend_from_slice(&INVENTORY_MAGIC);
        out.extend_from_slice(&[INVENTORY_VERSION, 0, 0, 0]);
        out.extend_from_slice(&(sorted.len() as u32).to_le_bytes());
        for p in sorted {
            out.extend_from_slice(&p.to_le_bytes());
        }
        out
    }

    /// Parses the wire form, checking magic, version, count and order.
    pub fn from_bytes(buf: &[u8]) -> Result<Self, CodecError> {
        if buf.len() < HEADER {
            return Err(CodecError::Truncated {
                what: "inventory header",
                need: HEADER,
                have: buf.len(),
            });
        }
        let magic: [u8; 4] = buf[..4].try_into().expect("4 bytes");
        if magic != INVENTORY_MAGIC {
            return Err(CodecError::BadMagic {
                what: "inventory",
                found: magic,
            });
        }
        if buf[4] != INVENTORY_VERSION {
            return Err(CodecError::UnsupportedVersion {
                what: "inventory",
                found: buf[4],
                supported: INVENTORY_VERSION,
            });
        }
        if buf[5..8] != [0, 0, 0] {
            return Err(CodecError::Invalid("inventory reserved bytes not zero"));
        }
        let count = u32::from_le_bytes(buf[8..12].try_into().expect("4 bytes")) as usize;
        if count > MAX_INVENTORY {
            return Err(CodecError::TooLarge {
                what: "inventory count",
                value: count as u64,
                max: MAX_INVENTORY as u64,
            });
        }
        let need = HEADER + 8 * count;
        if buf.len() != need {
            return Err(CodecError::LengthMismatch {
                what: "inventory length vs count",
                declared: need as u64,
                actual: buf.len() as u64,
            });
        }
        let mut prefixes = HashSet::with_capacity(count);
        let mut last: Option<u64> = None;
        for chunk in buf[HEADER..].chunks_exact(8) {
            let p = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
            if last.is_some_and(|l| l >= p) {
                return Err(CodecError::Invalid(
                    "inventory entries not strictly ascending",
                ));
            }
            last = Some(p);
            prefixes.insert(p);
        }
        Ok(Inventory { prefixes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn inventory_round_trips(prefixes in proptest::collection::hash_set(any::<u64>(), 0..200)) {
            let inv = Inventory { prefixes };
            prop_assert_eq!(Inventory::from_bytes(&inv.to_bytes()).unwrap(), inv);
        }

        #[test]
        fn random_inventory_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Inventory::from_bytes(&bytes);
        }
    }

    #[test]
    fn unsorted_and_truncated_rejected() {
        let mut inv = Inventory::new();
        inv.prefixes.extend([1u64, 2]);
        let mut b = inv.to_bytes();
        assert!(Inventory::from_bytes(&b[..b.len() - 1]).is_err());
        b[12..20].copy_from_slice(&5u64.to_le_bytes());
        assert!(matches!(
            Inventory::from_bytes(&b),
            Err(CodecError::Invalid(_))
        ));
    }
}
