//! Target `codec_inventory`: [`Inventory::from_bytes`] on arbitrary bytes.
//!
//! The wire form is canonical (magic, version, zero reserved bytes, exact
//! count, strictly ascending prefixes), so an accepted input must encode
//! back to exactly itself, and hold as many entries as it counts.

use wanmig_codec::{Fingerprint, Inventory};

use crate::codec_batch::known_page;

pub fn run(data: &[u8]) {
    if let Ok(inv) = Inventory::from_bytes(data) {
        assert_eq!(
            inv.to_bytes(),
            data,
            "an accepted inventory does not encode back to itself"
        );
        assert_eq!(
            inv.len(),
            (data.len() - 12) / 8,
            "entries differ from the count"
        );
    }
}

/// Seeds: the inventories of an empty store, of the known pages and of a
/// few hundred fingerprints, and a damaged one.
pub fn seeds() -> Vec<Vec<u8>> {
    let known: Vec<Fingerprint> = (0..8).map(|i| Fingerprint::of(&known_page(i))).collect();
    let many: Vec<Fingerprint> = (0..300u32)
        .map(|i| {
            let mut p = [0u8; wanmig_codec::PAGE_SIZE];
            p[..4].copy_from_slice(&i.to_le_bytes());
            Fingerprint::of(&p)
        })
        .collect();
    let mut damaged = Inventory::from_fingerprints(&known).to_bytes();
    damaged.swap(12, 20);
    vec![
        Inventory::new().to_bytes(),
        Inventory::from_fingerprints(&known).to_bytes(),
        Inventory::from_fingerprints(&known[..1]).to_bytes(),
        Inventory::from_fingerprints(&many).to_bytes(),
        damaged,
    ]
}
