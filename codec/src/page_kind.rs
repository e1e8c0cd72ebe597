//! How the encoder sent each page, as operators count it: [`PageKind`] and
//! a count per kind, [`PerKind`].
//!
//! This is the one list of kinds that progress reports, metrics, the CLI and
//! the demo iterate over: a new record kind is added here (and in
//! [`EncoderStats::by_kind`]) and shows up everywhere. On the wire a NACK
//! answer (`Fill`) is a full page like `Raw`, so it counts as raw; literals
//! count as compressed.

use std::fmt;
use std::ops::{Index, IndexMut};

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::encoder::EncoderStats;
use crate::fingerprint::FINGERPRINT_LEN;
use crate::page::PAGE_SIZE;

/// Bytes of one record-table entry before its kind's own fields:
/// `kind u8, gfn u64` (see [`crate::record`]).
const ENTRY_HEAD: u64 = 1 + 8;

/// What the encoder made of one page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PageKind {
    /// An all-zero page: a table entry only.
    Zero,
    /// A reference to content the destination holds or was sent earlier.
    Ref,
    /// An XOR delta against the version sent earlier.
    Delta,
    /// A page that went through the compressed section.
    Compressed,
    /// A page stored as is (incompressible, or a NACK answer).
    Raw,
}

impl PageKind {
    /// Every kind, in the order reports list them.
    pub const ALL: [PageKind; 5] = [
        PageKind::Zero,
        PageKind::Ref,
        PageKind::Delta,
        PageKind::Compressed,
        PageKind::Raw,
    ];

    /// The kind's name in JSON, metrics labels and CLI output.
    pub fn name(self) -> &'static str {
        match self {
            PageKind::Zero => "zero",
            PageKind::Ref => "ref",
            PageKind::Delta => "delta",
            PageKind::Compressed => "compressed",
            PageKind::Raw => "raw",
        }
    }

    /// The kind named `name` ([`PageKind::name`]).
    pub fn from_name(name: &str) -> Option<PageKind> {
        PageKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Wire bytes one page of this kind takes when that is fixed by the
    /// batch format: its table entry, plus the page for a raw one. Deltas
    /// and compressed pages share the compressed section, so theirs is not
    /// known per page (`None`).
    pub fn fixed_wire_bytes(self) -> Option<u64> {
        match self {
            PageKind::Zero => Some(ENTRY_HEAD),
            PageKind::Ref => Some(ENTRY_HEAD + FINGERPRINT_LEN as u64),
            PageKind::Raw => Some(ENTRY_HEAD + PAGE_SIZE as u64),
            PageKind::Delta | PageKind::Compressed => None,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for PageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A number per [`PageKind`] (pages, or bytes). Serialises as a JSON object
/// keyed by kind name; reading one ignores kinds this build does not know.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PerKind([u64; PageKind::ALL.len()]);

impl PerKind {
    /// Each kind with its number, in [`PageKind::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (PageKind, u64)> + '_ {
        PageKind::ALL.into_iter().map(|k| (k, self[k]))
    }

    /// The sum over all kinds.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// Wire bytes of the kinds whose size per page is fixed
    /// ([`PageKind::fixed_wire_bytes`]), these numbers being page counts;
    /// the other kinds are 0.
    pub fn fixed_wire_bytes(&self) -> PerKind {
        let mut out = PerKind::default();
        for (k, n) in self.iter() {
            out[k] = k.fixed_wire_bytes().map_or(0, |b| b * n);
        }
        out
    }

    /// `kind n` pairs separated by commas, e.g. `zero 3, ref 0, …`.
    pub fn describe(&self) -> String {
        let parts: Vec<String> = self.iter().map(|(k, n)| format!("{k} {n}")).collect();
        parts.join(", ")
    }
}

impl Index<PageKind> for PerKind {
    type Output = u64;
    fn index(&self, k: PageKind) -> &u64 {
        &self.0[k.index()]
    }
}

impl IndexMut<PageKind> for PerKind {
    fn index_mut(&mut self, k: PageKind) -> &mut u64 {
        &mut self.0[k.index()]
    }
}

impl EncoderStats {
    /// Pages by kind as operators count them.
    pub fn by_kind(&self) -> PerKind {
        let mut p = PerKind::default();
        p[PageKind::Zero] = self.zero;
        p[PageKind::Ref] = self.refs();
        p[PageKind::Delta] = self.delta;
        p[PageKind::Compressed] = self.compressed;
        p[PageKind::Raw] = self.raw + self.fill;
        p
    }
}

impl Serialize for PerKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(PageKind::ALL.len()))?;
        for (k, n) in self.iter() {
            m.serialize_entry(k.name(), &n)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for PerKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = PerKind;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of page counts keyed by page kind")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<PerKind, A::Error> {
                let mut out = PerKind::default();
                while let Some(name) = map.next_key::<String>()? {
                    let n: u64 = map.next_value()?;
                    if let Some(k) = PageKind::from_name(&name) {
                        out[k] = n;
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{BatchWriter, HEADER_LEN};
    use crate::{Fingerprint, Gfn};

    #[test]
    fn names_round_trip_and_are_distinct() {
        for k in PageKind::ALL {
            assert_eq!(PageKind::from_name(k.name()), Some(k));
        }
        let mut names: Vec<_> = PageKind::ALL.iter().map(|k| k.name()).collect();
        names.dedup();
        assert_eq!(names.len(), PageKind::ALL.len());
        assert_eq!(PageKind::from_name("fill"), None);
    }

    #[test]
    fn json_is_keyed_by_name_and_ignores_unknown_kinds() {
        let mut p = PerKind::default();
        p[PageKind::Ref] = 7;
        p[PageKind::Raw] = 2;
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(
            json,
            r#"{"zero":0,"ref":7,"delta":0,"compressed":0,"raw":2}"#
        );
        let back: PerKind = serde_json::from_str(r#"{"ref":7,"raw":2,"future":9}"#).unwrap();
        assert_eq!(back, p);
        assert_eq!(back.total(), 9);
    }

    #[test]
    fn fills_count_as_raw_and_refs_sum_both_sources() {
        let s = EncoderStats {
            zero: 1,
            ref_inventory: 2,
            ref_session: 3,
            delta: 4,
            compressed: 5,
            raw: 6,
            fill: 7,
            ..EncoderStats::default()
        };
        let p = s.by_kind();
        let got: Vec<u64> = p.iter().map(|(_, n)| n).collect();
        assert_eq!(got, [1, 5, 4, 5, 13]);
    }

    /// The fixed sizes are what a finished batch really spends per record.
    #[test]
    fn fixed_wire_bytes_match_the_batch_format() {
        let fp = Fingerprint::of(&[1u8; PAGE_SIZE]);
        let page = [3u8; PAGE_SIZE];
        let mut zstd = zstd::bulk::Compressor::new(1).unwrap();
        let mut bytes_of = |push: &dyn Fn(&mut BatchWriter)| {
            let mut w = BatchWriter::new();
            push(&mut w);
            let mut out = Vec::new();
            w.finish(&mut zstd, &mut out);
            (out.len() - HEADER_LEN) as u64
        };
        type Push<'a> = &'a dyn Fn(&mut BatchWriter);
        let cases: [(PageKind, Push); 3] = [
            (PageKind::Zero, &|w| w.push_zero(Gfn(5))),
            (PageKind::Ref, &|w| w.push_ref(Gfn(5), &fp)),
            (PageKind::Raw, &|w| w.push_raw(Gfn(5), &page)),
        ];
        for (kind, push) in cases {
            assert_eq!(Some(bytes_of(push)), kind.fixed_wire_bytes(), "{kind}");
        }
        assert_eq!(PageKind::Delta.fixed_wire_bytes(), None);
        assert_eq!(PageKind::Compressed.fixed_wire_bytes(), None);
    }
}
