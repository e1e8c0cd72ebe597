//! Fragmentation of frames that do not fit a peer's datagram size, and
//! reassembly of received fragments with bounded memory and a timeout.
//!
//! The fragmenter splits a frame into at most 255 near-equal pieces, each
//! prefixed by an [`encap::Header`] with fragment fields. The reassembler
//! keys partial frames by (sending site, VNI, fragment id), tolerates loss,
//! reordering and duplication, drops a partial frame whose fragments
//! disagree, evicts the oldest partial frames when its byte budget is full,
//! and expires partial frames after a timeout. Every failure is counted.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::encap::{self, FragInfo, Header};
use crate::ids::{SiteId, Vni};

/// Why a frame could not be fragmented for a peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FragmentError {
    #[error("a {frame_len}-byte frame needs more than 255 fragments at a {max_datagram}-byte datagram size; the path's datagram size is too small")]
    TooManyFragments {
        frame_len: usize,
        max_datagram: usize,
    },
    #[error("datagram size {0} cannot hold the overlay fragment header plus payload")]
    DatagramTooSmall(usize),
}

/// Encapsulates `frame` for a peer whose datagrams hold at most
/// `max_datagram` bytes: one plain datagram when it fits, else fragments
/// sharing `id`.
pub fn fragment(
    vni: Vni,
    flooded: bool,
    frame: &[u8],
    max_datagram: usize,
    id: u32,
) -> Result<Vec<Bytes>, FragmentError> {
    if encap::BASE_LEN + frame.len() <= max_datagram {
        return Ok(vec![encap::encapsulate(vni, flooded, frame)]);
    }
    if max_datagram <= encap::FRAG_LEN {
        return Err(FragmentError::DatagramTooSmall(max_datagram));
    }
    let room = max_datagram - encap::FRAG_LEN;
    let count = frame.len().div_ceil(room);
    if count > 255 {
        return Err(FragmentError::TooManyFragments {
            frame_len: frame.len(),
            max_datagram,
        });
    }
    // Near-equal pieces: a lost small tail piece costs the same as a lost
    // large one, and equal pieces leave headroom in every datagram.
    let piece = frame.len().div_ceil(count);
    let mut buf = BytesMut::with_capacity(frame.len() + count * encap::FRAG_LEN);
    let mut out = Vec::with_capacity(count);
    for (index, chunk) in frame.chunks(piece).enumerate() {
        let hdr = Header {
            vni,
            flooded,
            fragment: Some(FragInfo {
                id,
                index: index as u8,
                count: count as u8,
            }),
        };
        hdr.encode(&mut buf);
        buf.extend_from_slice(chunk);
        out.push(buf.split().freeze());
    }
    Ok(out)
}

/// Limits of the reassembler.
#[derive(Debug, Clone, Copy)]
pub struct ReassemblyLimits {
    /// A partial frame older than this is dropped.
    pub timeout: Duration,
    /// Bytes held in partial frames, across all peers.
    pub max_buffered: usize,
    /// Largest frame that may be reassembled.
    pub max_frame: usize,
}

/// Counts of reassembly events since the last [`Reassembler::take_counts`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReassemblyCounts {
    pub completed: u64,
    pub fragments: u64,
    pub duplicates: u64,
    pub timeouts: u64,
    pub evicted: u64,
    /// Fragments of one frame disagreeing on the fragment count.
    pub inconsistent: u64,
    /// Reassembled size exceeded the maximum frame size.
    pub oversized: u64,
}

type Key = (SiteId, Vni, u32);

struct Partial {
    started: Instant,
    count: u8,
    received: u8,
    bytes: usize,
    pieces: Vec<Option<Bytes>>,
}

/// Reassembles fragmented frames.
pub struct Reassembler {
    limits: ReassemblyLimits,
    partials: HashMap<Key, Partial>,
    /// Keys in arrival order of their first fragment (may hold keys already
    /// completed; those are skipped when popped).
    order: VecDeque<(Instant, Key)>,
    buffered: usize,
    counts: ReassemblyCounts,
    /// Recently completed frames, so that a late duplicate fragment is
    /// recognised instead of starting a partial frame that can only time out.
    recent: HashMap<Key, Instant>,
    recent_order: VecDeque<(Instant, Key)>,
}

/// Completed frames remembered for duplicate detection.
const RECENT_CAP: usize = 4096;

impl Reassembler {
    pub fn new(limits: ReassemblyLimits) -> Self {
        Reassembler {
            limits,
            partials: HashMap::new(),
            order: VecDeque::new(),
            buffered: 0,
            counts: ReassemblyCounts::default(),
            recent: HashMap::new(),
            recent_order: VecDeque::new(),
        }
    }

    /// Accepts one fragment's payload; returns the whole frame when this
    /// fragment completes it.
    pub fn push(
        &mut self,
        now: Instant,
        from: &SiteId,
        vni: Vni,
        frag: FragInfo,
        payload: Bytes,
    ) -> Option<Bytes> {
        self.counts.fragments += 1;
        self.expire(now);
        let key = (from.clone(), vni, frag.id);
        if self.recent.contains_key(&key) {
            self.counts.duplicates += 1;
            return None;
        }
        let partial = match self.partials.get_mut(&key) {
            Some(p) => p,
            None => {
                self.order.push_back((now, key.clone()));
                self.partials.entry(key.clone()).or_insert(Partial {
                    started: now,
                    count: frag.count,
                    received: 0,
                    bytes: 0,
                    pieces: vec![None; usize::from(frag.count)],
                })
            }
        };
        if partial.count != frag.count {
            self.counts.inconsistent += 1;
            self.remove(&key);
            return None;
        }
        let slot = &mut partial.pieces[usize::from(frag.index)];
        if slot.is_some() {
            self.counts.duplicates += 1;
            return None;
        }
        let len = payload.len();
        if partial.bytes + len > self.limits.max_frame {
            self.counts.oversized += 1;
            self.remove(&key);
            return None;
        }
        *slot = Some(payload);
        partial.received += 1;
        partial.bytes += len;
        self.buffered += len;
        if partial.received == partial.count {
            let p = self.partials.remove(&key)?;
            self.buffered -= p.bytes;
            let mut frame = BytesMut::with_capacity(p.bytes);
            for piece in p.pieces.into_iter().flatten() {
                frame.extend_from_slice(&piece);
            }
            self.counts.completed += 1;
            self.remember(now, key);
            return Some(frame.freeze());
        }
        // Over budget: evict the oldest partial frames (possibly this one).
        while self.buffered > self.limits.max_buffered {
            let Some((started, old)) = self.order.pop_front() else {
                break;
            };
            let current = self
                .partials
                .get(&old)
                .is_some_and(|p| p.started == started);
            if current && self.remove(&old) {
                self.counts.evicted += 1;
            }
        }
        None
    }

    /// Drops partial frames older than the timeout.
    pub fn expire(&mut self, now: Instant) {
        while let Some((started, key)) = self.order.front() {
            if now.saturating_duration_since(*started) < self.limits.timeout {
                break;
            }
            let matches = self
                .partials
                .get(key)
                .is_some_and(|p| p.started == *started);
            let key = key.clone();
            self.order.pop_front();
            if matches && self.remove(&key) {
                self.counts.timeouts += 1;
            }
        }
        if self.partials.is_empty() {
            self.order.clear();
        }
        while let Some((t, k)) = self.recent_order.front() {
            if now.saturating_duration_since(*t) < self.limits.timeout {
                break;
            }
            if self.recent.get(k) == Some(t) {
                self.recent.remove(k);
            }
            self.recent_order.pop_front();
        }
    }

    fn remember(&mut self, now: Instant, key: Key) {
        if self.recent_order.len() >= RECENT_CAP {
            if let Some((t, k)) = self.recent_order.pop_front() {
                if self.recent.get(&k) == Some(&t) {
                    self.recent.remove(&k);
                }
            }
        }
        self.recent.insert(key.clone(), now);
        self.recent_order.push_back((now, key));
    }

    /// Drops every partial frame from `site` (its connection went away).
    pub fn forget_site(&mut self, site: &SiteId) {
        let keys: Vec<Key> = self
            .partials
            .keys()
            .filter(|k| &k.0 == site)
            .cloned()
            .collect();
        for k in keys {
            self.remove(&k);
        }
        self.recent.retain(|k, _| &k.0 != site);
    }

    /// When the oldest partial frame will time out (may be early when that
    /// frame already completed: a harmless spurious wake-up).
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.partials.is_empty() {
            return None;
        }
        self.order.front().map(|(t, _)| *t + self.limits.timeout)
    }

    pub fn buffered_bytes(&self) -> usize {
        self.buffered
    }

    pub fn pending_frames(&self) -> usize {
        self.partials.len()
    }

    /// Returns the counts since the last call and resets them.
    pub fn take_counts(&mut self) -> ReassemblyCounts {
        std::mem::take(&mut self.counts)
    }

    fn remove(&mut self, key: &Key) -> bool {
        match self.partials.remove(key) {
            Some(p) => {
                self.buffered -= p.bytes;
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};

    fn vni() -> Vni {
        Vni::new(100).unwrap()
    }

    fn limits() -> ReassemblyLimits {
        ReassemblyLimits {
            timeout: Duration::from_secs(2),
            max_buffered: 64 * 1024,
            max_frame: 9216,
        }
    }

    fn frame(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    fn split(d: &Bytes) -> (FragInfo, Bytes) {
        let (h, off) = Header::decode(d).unwrap();
        (h.fragment.unwrap(), d.slice(off..))
    }

    #[test]
    fn full_mtu_frame_fits_a_1500_byte_underlay_in_two_fragments() {
        // QUIC over a 1500-byte IPv4 path leaves roughly 1452 bytes or less.
        let f = frame(1514, 1);
        let ds = fragment(vni(), false, &f, 1200, 9).unwrap();
        assert_eq!(ds.len(), 2);
        assert!(ds.iter().all(|d| d.len() <= 1200));
        let small = fragment(vni(), false, &f[..200], 1200, 10).unwrap();
        assert_eq!(small.len(), 1);
        assert_eq!(Header::decode(&small[0]).unwrap().0.fragment, None);
    }

    #[test]
    fn refuses_impossible_datagram_sizes() {
        let f = frame(9000, 1);
        assert_eq!(
            fragment(vni(), false, &f, 10, 1).unwrap_err(),
            FragmentError::DatagramTooSmall(10)
        );
        assert!(matches!(
            fragment(vni(), false, &f, 40, 1).unwrap_err(),
            FragmentError::TooManyFragments { .. }
        ));
    }

    #[test]
    fn reassembles_under_reorder_and_duplication() {
        let site = SiteId::new("b");
        let mut r = Reassembler::new(limits());
        let now = Instant::now();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for id in 0..50u32 {
            let f = frame(rng.random_range(1300..9000), id as u8);
            let mut ds = fragment(vni(), false, &f, 600, id).unwrap();
            // Duplicate a few and shuffle.
            let dups: Vec<Bytes> = ds.iter().take(3).cloned().collect();
            ds.extend(dups);
            ds.shuffle(&mut rng);
            let mut got = None;
            for d in &ds {
                let (fi, p) = split(d);
                if let Some(done) = r.push(now, &site, vni(), fi, p) {
                    assert!(got.is_none(), "frame completed twice");
                    got = Some(done);
                }
            }
            assert_eq!(got.as_deref(), Some(&f[..]));
        }
        let c = r.take_counts();
        assert_eq!(c.completed, 50);
        assert!(c.duplicates > 0);
        assert_eq!(r.pending_frames(), 0);
        assert_eq!(r.buffered_bytes(), 0);
    }

    #[test]
    fn lost_fragment_times_out_and_is_counted() {
        let site = SiteId::new("b");
        let mut r = Reassembler::new(limits());
        let t0 = Instant::now();
        let f = frame(3000, 3);
        let ds = fragment(vni(), false, &f, 1200, 1).unwrap();
        assert_eq!(ds.len(), 3);
        for d in &ds[..2] {
            let (fi, p) = split(d);
            assert!(r.push(t0, &site, vni(), fi, p).is_none());
        }
        assert_eq!(r.pending_frames(), 1);
        assert_eq!(r.next_deadline(), Some(t0 + Duration::from_secs(2)));
        r.expire(t0 + Duration::from_millis(1999));
        assert_eq!(r.pending_frames(), 1);
        r.expire(t0 + Duration::from_secs(2));
        assert_eq!(r.pending_frames(), 0);
        assert_eq!(r.buffered_bytes(), 0);
        // The late last fragment starts a new partial, which also expires.
        let (fi, p) = split(&ds[2]);
        assert!(r
            .push(t0 + Duration::from_secs(3), &site, vni(), fi, p)
            .is_none());
        r.expire(t0 + Duration::from_secs(6));
        assert_eq!(r.take_counts().timeouts, 2);
    }

    #[test]
    fn same_id_from_different_sites_does_not_mix() {
        let mut r = Reassembler::new(limits());
        let now = Instant::now();
        let fa = frame(2000, 1);
        let fb = frame(2000, 2);
        let da = fragment(vni(), false, &fa, 1200, 5).unwrap();
        let db = fragment(vni(), false, &fb, 1200, 5).unwrap();
        let (a, b) = (SiteId::new("a"), SiteId::new("b"));
        let (f0, p0) = split(&da[0]);
        assert!(r.push(now, &a, vni(), f0, p0).is_none());
        let (f0, p0) = split(&db[0]);
        assert!(r.push(now, &b, vni(), f0, p0).is_none());
        let (f1, p1) = split(&db[1]);
        assert_eq!(r.push(now, &b, vni(), f1, p1).as_deref(), Some(&fb[..]));
        let (f1, p1) = split(&da[1]);
        assert_eq!(r.push(now, &a, vni(), f1, p1).as_deref(), Some(&fa[..]));
    }

    #[test]
    fn inconsistent_count_and_oversize_drop_the_partial() {
        let site = SiteId::new("b");
        let mut r = Reassembler::new(limits());
        let now = Instant::now();
        let p = Bytes::from_static(&[0u8; 100]);
        r.push(
            now,
            &site,
            vni(),
            FragInfo {
                id: 1,
                index: 0,
                count: 3,
            },
            p.clone(),
        );
        r.push(
            now,
            &site,
            vni(),
            FragInfo {
                id: 1,
                index: 1,
                count: 4,
            },
            p.clone(),
        );
        assert_eq!(r.pending_frames(), 0);
        let big = Bytes::from(vec![0u8; 5000]);
        r.push(
            now,
            &site,
            vni(),
            FragInfo {
                id: 2,
                index: 0,
                count: 2,
            },
            big.clone(),
        );
        r.push(
            now,
            &site,
            vni(),
            FragInfo {
                id: 2,
                index: 1,
                count: 2,
            },
            big,
        );
        let c = r.take_counts();
        assert_eq!(c.inconsistent, 1);
        assert_eq!(c.oversized, 1);
        assert_eq!(c.completed, 0);
        assert_eq!(r.buffered_bytes(), 0);
    }

    #[test]
    fn memory_stays_bounded_under_a_flood_of_incomplete_frames() {
        let site = SiteId::new("b");
        let mut r = Reassembler::new(limits());
        let now = Instant::now();
        let p = Bytes::from(vec![0u8; 1000]);
        for id in 0..1000 {
            r.push(
                now,
                &site,
                vni(),
                FragInfo {
                    id,
                    index: 0,
                    count: 2,
                },
                p.clone(),
            );
            assert!(r.buffered_bytes() <= limits().max_buffered);
        }
        let c = r.take_counts();
        assert!(c.evicted >= 1000 - 65, "evicted {}", c.evicted);
        // The newest partial frames survived and still complete.
        let done = r.push(
            now,
            &site,
            vni(),
            FragInfo {
                id: 999,
                index: 1,
                count: 2,
            },
            p,
        );
        assert_eq!(done.map(|b| b.len()), Some(2000));
    }
}
