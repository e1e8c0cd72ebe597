//! Content fingerprints: BLAKE3 over a page's bytes.
//!
//! References on the wire and keys in the page store use the full 256-bit
//! hash, because guest memory is attacker-controlled and a collision would
//! let one guest plant content in another. The inventory a destination sends
//! at session start uses only a 64-bit prefix ([`Fingerprint::prefix`]) to
//! stay small; a prefix match is a hint, never trusted: the destination
//! resolves the full fingerprint and NACKs when it cannot.

use crate::page::PageBytes;

/// Length of a fingerprint in bytes (256-bit BLAKE3).
pub const FINGERPRINT_LEN: usize = 32;

/// The BLAKE3 hash of a page's content.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(pub [u8; FINGERPRINT_LEN]);

impl Fingerprint {
    /// Hashes a page.
    #[inline]
    pub fn of(page: &PageBytes) -> Self {
        Fingerprint(*blake3::hash(page).as_bytes())
    }

    /// The first 64 bits, little-endian: the inventory key.
    #[inline]
    pub fn prefix(&self) -> u64 {
        u64::from_le_bytes(self.0[..8].try_into().expect("8 bytes"))
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; FINGERPRINT_LEN] {
        &self.0
    }
}

impl std::fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl std::fmt::Display for Fingerprint {
    /// The first 128 bits in hex, enough to tell fingerprints apart in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in &self.0[..16] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::page::PAGE_SIZE;

    #[test]
    fn fingerprint_distinguishes_one_bit() {
        let a = [0u8; PAGE_SIZE];
        let mut b = a;
        b[4095] ^= 1;
        assert_ne!(Fingerprint::of(&a), Fingerprint::of(&b));
        assert_eq!(Fingerprint::of(&a), Fingerprint::of(&a.clone()));
        assert_eq!(
            Fingerprint::of(&a).0,
            *blake3::hash(&a).as_bytes(),
            "must be plain BLAKE3 so other tools can compute it"
        );
    }
}
