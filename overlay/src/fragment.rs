//! Fragmentation of frames that do not fit a peer's datagram size, and
//! reassembly of received fragments within memory budgets.
//!
//! The fragmenter splits a frame into near-equal pieces, each prefixed by an
//! [`encap::Header`] with fragment fields, in datagrams of at least
//! [`MIN_DATAGRAM`] bytes; so a frame of `max_frame` bytes never needs more
//! than [`max_fragments`]`(max_frame)` pieces, and the reassembler refuses
//! fragment counts beyond that.
//!
//! The reassembler keys partial frames by (sending site, VNI, fragment id),
//! tolerates loss, reordering and duplication, drops a partial frame whose
//! fragments disagree, and expires partial frames after a timeout. Its
//! memory is bounded by what it really holds, not by payload bytes:
//! - each fragment's payload is copied into its partial frame's own buffer,
//!   so a tiny fragment never keeps its whole receive buffer alive;
//! - a partial frame is charged its buffer's capacity, its table of
//!   fragment slots (sized by the frame's fragment count), and a fixed
//!   overhead for the maps that index it ([`PARTIAL_OVERHEAD`]);
//! - charges count against the sending peer's budget and a switch-wide
//!   budget. A peer over its own budget makes room by evicting its own
//!   oldest partial frames; over the switch-wide budget, room is made at
//!   the peer that holds the most. A flooding peer thus evicts only its own
//!   partial frames, as long as the others stay within their share.
//!
//! Every drop is counted by reason ([`ReassemblyCounts`]).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::mem::size_of;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::encap::{self, FragInfo, Header};
use crate::ids::{SiteId, Vni};

/// The smallest datagram size the overlay fragments into. QUIC paths carry
/// packets of at least 1200 bytes, so real datagram sizes are well above
/// this; the floor is what bounds the fragments a frame can need.
pub const MIN_DATAGRAM: usize = 256;

/// Why a frame could not be fragmented for a peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FragmentError {
    #[error("a {frame_len}-byte frame needs more than 255 fragments at a {max_datagram}-byte datagram size; the path's datagram size is too small")]
    TooManyFragments {
        frame_len: usize,
        max_datagram: usize,
    },
    #[error("datagram size {0} is below the {MIN_DATAGRAM} bytes the overlay fragments into; the path cannot carry this frame")]
    DatagramTooSmall(usize),
}

/// The most fragments a frame of up to `max_frame` bytes is split into.
pub fn max_fragments(max_frame: usize) -> u8 {
    let n = max_frame.div_ceil(MIN_DATAGRAM - encap::FRAG_LEN);
    u8::try_from(n.max(2)).unwrap_or(u8::MAX)
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
    if max_datagram < MIN_DATAGRAM {
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
    /// Memory charged to partial frames, all peers together.
    pub max_buffered: usize,
    /// Memory charged to partial frames from one peer.
    pub max_buffered_per_peer: usize,
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
    /// Partial frames evicted to keep their peer within its budget.
    pub peer_budget: u64,
    /// Partial frames evicted to keep all peers within the switch-wide budget.
    pub global_budget: u64,
    /// Fragments of one frame disagreeing on the fragment count.
    pub inconsistent: u64,
    /// Reassembled size exceeded the maximum frame size.
    pub oversized: u64,
    /// A fragment count no frame of the maximum size needs.
    pub too_many_fragments: u64,
}

type Key = (SiteId, Vni, u32);

/// Where one fragment's payload sits in a partial frame's buffer; `len` 0
/// marks a fragment not yet received (payloads are never empty).
#[derive(Debug, Clone, Copy, Default)]
struct Span {
    start: u32,
    len: u32,
}

struct Partial {
    /// Arrival number of its first fragment: orders a peer's partial frames
    /// by age.
    serial: u64,
    started: Instant,
    count: u8,
    received: u8,
    /// Payloads in arrival order.
    data: Vec<u8>,
    spans: Box<[Span]>,
    /// Memory charged to the budgets for this partial frame.
    charge: usize,
}

/// Fixed memory charged per partial frame besides its buffer and slots: its
/// slot in the partial-frame map (a hash table keeps up to about twice the
/// slots it uses), its entry in its peer's age index (B-tree nodes are at
/// least about half full, plus pointers), and the allocator's bookkeeping
/// for its two heap blocks.
pub const PARTIAL_OVERHEAD: usize =
    2 * (size_of::<(Key, Partial)>() + 1) + 4 * size_of::<(u64, (Vni, u32))>() + 2 * 16;

impl Partial {
    fn cost(&self) -> usize {
        PARTIAL_OVERHEAD + self.spans.len() * size_of::<Span>() + self.data.capacity()
    }
}

/// The most memory one partial frame of up to `max_frame` bytes is charged.
pub fn max_frame_charge(max_frame: usize) -> usize {
    PARTIAL_OVERHEAD + usize::from(max_fragments(max_frame)) * size_of::<Span>() + max_frame
}

/// One peer's partial frames and what they are charged.
#[derive(Default)]
struct PeerShare {
    charged: usize,
    /// Its partial frames by arrival serial, oldest first.
    by_age: BTreeMap<u64, (Vni, u32)>,
}

/// Reassembles fragmented frames.
pub struct Reassembler {
    limits: ReassemblyLimits,
    max_count: u8,
    partials: HashMap<Key, Partial>,
    peers: HashMap<SiteId, PeerShare>,
    /// Memory charged to all partial frames.
    charged: usize,
    next_serial: u64,
    counts: ReassemblyCounts,
    /// Recently completed frames, so that a late duplicate fragment is
    /// recognised instead of starting a partial frame that can only time out.
    recent: HashMap<Key, Instant>,
    recent_order: VecDeque<(Instant, Key)>,
}

/// Completed frames remembered for duplicate detection (a fixed cap: about
/// 100 bytes each, not charged to the budgets).
const RECENT_CAP: usize = 4096;

impl Reassembler {
    pub fn new(limits: ReassemblyLimits) -> Self {
        Reassembler {
            max_count: max_fragments(limits.max_frame),
            limits,
            partials: HashMap::new(),
            peers: HashMap::new(),
            charged: 0,
            next_serial: 0,
            counts: ReassemblyCounts::default(),
            recent: HashMap::new(),
            recent_order: VecDeque::new(),
        }
    }

    /// Accepts one fragment's payload; returns the whole frame when this
    /// fragment completes it. The payload is copied: `payload` and the
    /// buffer it lives in are not kept.
    pub fn push(
        &mut self,
        now: Instant,
        from: &SiteId,
        vni: Vni,
        frag: FragInfo,
        payload: &[u8],
    ) -> Option<Bytes> {
        self.counts.fragments += 1;
        self.expire(now);
        if frag.count > self.max_count {
            self.counts.too_many_fragments += 1;
            return None;
        }
        let key = (from.clone(), vni, frag.id);
        if self.recent.contains_key(&key) {
            self.counts.duplicates += 1;
            return None;
        }
        let max_frame = self.limits.max_frame;
        if !self.partials.contains_key(&key) {
            let serial = self.next_serial;
            self.next_serial += 1;
            // Room for the whole frame when pieces are near-equal, as the
            // fragmenter makes them; grown if a short last piece came first.
            let guess = payload
                .len()
                .saturating_mul(usize::from(frag.count))
                .min(max_frame);
            let p = Partial {
                serial,
                started: now,
                count: frag.count,
                received: 0,
                data: Vec::with_capacity(guess),
                spans: vec![Span::default(); usize::from(frag.count)].into_boxed_slice(),
                charge: 0,
            };
            self.peers
                .entry(from.clone())
                .or_default()
                .by_age
                .insert(serial, (vni, frag.id));
            self.partials.insert(key.clone(), p);
        }
        let partial = self.partials.get_mut(&key)?;
        if partial.count != frag.count {
            self.counts.inconsistent += 1;
            self.remove(&key);
            return None;
        }
        let Some(span) = partial.spans.get_mut(usize::from(frag.index)) else {
            // Index beyond the count: the decoder refuses these, other
            // callers may not.
            self.counts.inconsistent += 1;
            self.remove(&key);
            return None;
        };
        if span.len != 0 {
            self.counts.duplicates += 1;
            return None;
        }
        if payload.is_empty() {
            // The decoder refuses empty fragments; an empty span would read
            // as a fragment still missing.
            self.counts.inconsistent += 1;
            self.remove(&key);
            return None;
        }
        let needed = partial.data.len() + payload.len();
        if needed > max_frame {
            self.counts.oversized += 1;
            self.remove(&key);
            return None;
        }
        if needed > partial.data.capacity() {
            // Grow within the frame limit, so a partial frame never holds
            // more than `max_frame` bytes of buffer.
            let target = partial
                .data
                .capacity()
                .saturating_mul(2)
                .clamp(needed, max_frame);
            partial.data.reserve_exact(target - partial.data.len());
        }
        // Both fit in u32: `needed` is at most `max_frame`, which the
        // configuration bounds to 65535.
        *span = Span {
            start: partial.data.len() as u32,
            len: payload.len() as u32,
        };
        partial.data.extend_from_slice(payload);
        partial.received += 1;
        if partial.received == partial.count {
            let p = self.remove(&key)?;
            self.counts.completed += 1;
            self.remember(now, key);
            return Some(assemble(p));
        }
        let (cost, old) = (partial.cost(), partial.charge);
        partial.charge = cost;
        self.charged = self.charged + cost - old;
        let share = self.peers.get_mut(from)?;
        share.charged = share.charged + cost - old;
        self.enforce_budgets(from);
        None
    }

    /// Evicts partial frames until `from` is within its budget and all peers
    /// within the switch-wide one.
    fn enforce_budgets(&mut self, from: &SiteId) {
        while self
            .peers
            .get(from)
            .is_some_and(|s| s.charged > self.limits.max_buffered_per_peer)
        {
            if !self.evict_oldest(from) {
                break;
            }
            self.counts.peer_budget += 1;
        }
        while self.charged > self.limits.max_buffered {
            let Some(heaviest) = self
                .peers
                .iter()
                .max_by_key(|(_, s)| s.charged)
                .map(|(site, _)| site.clone())
            else {
                break;
            };
            if !self.evict_oldest(&heaviest) {
                break;
            }
            self.counts.global_budget += 1;
        }
    }

    fn evict_oldest(&mut self, site: &SiteId) -> bool {
        let Some((&_, &(vni, id))) = self
            .peers
            .get(site)
            .and_then(|s| s.by_age.first_key_value())
        else {
            return false;
        };
        self.remove(&(site.clone(), vni, id)).is_some()
    }

    /// Drops partial frames older than the timeout.
    pub fn expire(&mut self, now: Instant) {
        let timeout = self.limits.timeout;
        let mut expired = Vec::new();
        for (site, share) in &self.peers {
            for (vni, id) in share.by_age.values() {
                let key = (site.clone(), *vni, *id);
                match self.partials.get(&key) {
                    Some(p) if now.saturating_duration_since(p.started) >= timeout => {
                        expired.push(key)
                    }
                    _ => break,
                }
            }
        }
        for key in expired {
            if self.remove(&key).is_some() {
                self.counts.timeouts += 1;
            }
        }
        while let Some((t, k)) = self.recent_order.front() {
            if now.saturating_duration_since(*t) < timeout {
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
        if let Some(share) = self.peers.remove(site) {
            for (vni, id) in share.by_age.into_values() {
                if let Some(p) = self.partials.remove(&(site.clone(), vni, id)) {
                    self.charged -= p.charge;
                }
            }
        }
        self.recent.retain(|k, _| &k.0 != site);
    }

    /// When the oldest partial frame will time out.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.peers
            .iter()
            .filter_map(|(site, share)| {
                let (_, &(vni, id)) = share.by_age.first_key_value()?;
                self.partials.get(&(site.clone(), vni, id))
            })
            .map(|p| p.started + self.limits.timeout)
            .min()
    }

    /// Memory charged to partial frames, all peers together.
    pub fn buffered_bytes(&self) -> usize {
        self.charged
    }

    /// Memory charged to partial frames from `site`.
    pub fn buffered_bytes_of(&self, site: &SiteId) -> usize {
        self.peers.get(site).map_or(0, |s| s.charged)
    }

    pub fn pending_frames(&self) -> usize {
        self.partials.len()
    }

    /// Returns the counts since the last call and resets them.
    pub fn take_counts(&mut self) -> ReassemblyCounts {
        std::mem::take(&mut self.counts)
    }

    fn remove(&mut self, key: &Key) -> Option<Partial> {
        let p = self.partials.remove(key)?;
        self.charged -= p.charge;
        if let Some(share) = self.peers.get_mut(&key.0) {
            share.charged -= p.charge;
            share.by_age.remove(&p.serial);
            if share.by_age.is_empty() {
                self.peers.remove(&key.0);
            }
        }
        Some(p)
    }
}

/// The frame from a complete partial: its buffer as is when the fragments
/// arrived in order, else the pieces copied in order.
fn assemble(p: Partial) -> Bytes {
    let mut next = 0;
    let in_order = p.spans.iter().all(|s| {
        let ok = s.start == next;
        next += s.len;
        ok
    });
    if in_order {
        return Bytes::from(p.data);
    }
    let mut frame = BytesMut::with_capacity(p.data.len());
    for s in p.spans.iter() {
        let (start, len) = (s.start as usize, s.len as usize);
        frame.extend_from_slice(&p.data[start..start + len]);
    }
    frame.freeze()
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
            max_buffered_per_peer: 32 * 1024,
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

    fn info(id: u32, index: u8, count: u8) -> FragInfo {
        FragInfo { id, index, count }
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
        for tiny in [10, 40, MIN_DATAGRAM - 1] {
            assert_eq!(
                fragment(vni(), false, &f, tiny, 1).unwrap_err(),
                FragmentError::DatagramTooSmall(tiny)
            );
        }
        // A frame that fits whole needs no minimum.
        assert_eq!(fragment(vni(), false, &f[..30], 40, 1).unwrap().len(), 1);
        let huge = frame(65_000, 1);
        assert!(matches!(
            fragment(vni(), false, &huge, MIN_DATAGRAM, 1).unwrap_err(),
            FragmentError::TooManyFragments { .. }
        ));
    }

    #[test]
    fn no_frame_is_cut_into_more_fragments_than_its_size_allows() {
        assert_eq!(max_fragments(64), 2);
        assert_eq!(max_fragments(9216), 38);
        assert_eq!(max_fragments(65_535), 255);
        for len in [1515, 4000, 9216, 20_000, 60_000] {
            for mds in (MIN_DATAGRAM..1500).step_by(37) {
                let Ok(ds) = fragment(vni(), false, &frame(len, 0), mds, 1) else {
                    continue;
                };
                assert!(
                    ds.len() <= usize::from(max_fragments(len)),
                    "{len} bytes at {mds}: {} fragments",
                    ds.len()
                );
            }
        }
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
            // Duplicate a few and shuffle (the first ten stay in order).
            let dups: Vec<Bytes> = ds.iter().take(3).cloned().collect();
            if id >= 10 {
                ds.extend(dups);
                ds.shuffle(&mut rng);
            }
            let mut got = None;
            for d in &ds {
                let (fi, p) = split(d);
                if let Some(done) = r.push(now, &site, vni(), fi, &p) {
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
        assert_eq!(r.buffered_bytes_of(&site), 0);
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
            assert!(r.push(t0, &site, vni(), fi, &p).is_none());
        }
        assert_eq!(r.pending_frames(), 1);
        assert_eq!(r.next_deadline(), Some(t0 + Duration::from_secs(2)));
        r.expire(t0 + Duration::from_millis(1999));
        assert_eq!(r.pending_frames(), 1);
        r.expire(t0 + Duration::from_secs(2));
        assert_eq!(r.pending_frames(), 0);
        assert_eq!(r.buffered_bytes(), 0);
        assert_eq!(r.next_deadline(), None);
        // The late last fragment starts a new partial, which also expires.
        let (fi, p) = split(&ds[2]);
        assert!(r
            .push(t0 + Duration::from_secs(3), &site, vni(), fi, &p)
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
        assert!(r.push(now, &a, vni(), f0, &p0).is_none());
        let (f0, p0) = split(&db[0]);
        assert!(r.push(now, &b, vni(), f0, &p0).is_none());
        let (f1, p1) = split(&db[1]);
        assert_eq!(r.push(now, &b, vni(), f1, &p1).as_deref(), Some(&fb[..]));
        let (f1, p1) = split(&da[1]);
        assert_eq!(r.push(now, &a, vni(), f1, &p1).as_deref(), Some(&fa[..]));
    }

    #[test]
    fn inconsistent_fragments_oversize_and_excess_counts_drop_the_partial() {
        let site = SiteId::new("b");
        let mut r = Reassembler::new(limits());
        let now = Instant::now();
        let p = [0u8; 100];
        r.push(now, &site, vni(), info(1, 0, 3), &p);
        r.push(now, &site, vni(), info(1, 1, 4), &p);
        assert_eq!(r.pending_frames(), 0);
        // An index beyond the count (the decoder refuses it; push must too).
        r.push(now, &site, vni(), info(3, 0, 3), &p);
        r.push(now, &site, vni(), info(3, 7, 3), &p);
        assert_eq!(r.pending_frames(), 0);
        let big = [0u8; 5000];
        r.push(now, &site, vni(), info(2, 0, 2), &big);
        r.push(now, &site, vni(), info(2, 1, 2), &big);
        r.push(now, &site, vni(), info(4, 0, 39), &p);
        let c = r.take_counts();
        assert_eq!(c.inconsistent, 2);
        assert_eq!(c.oversized, 1);
        assert_eq!(c.too_many_fragments, 1);
        assert_eq!(c.completed, 0);
        assert_eq!(r.pending_frames(), 0);
        assert_eq!(r.buffered_bytes(), 0);
    }

    #[test]
    fn a_partial_frame_is_charged_its_slots_and_bookkeeping_not_just_payload() {
        let site = SiteId::new("b");
        let mut r = Reassembler::new(limits());
        let now = Instant::now();
        r.push(now, &site, vni(), info(1, 0, 38), &[7]);
        let charged = r.buffered_bytes();
        assert!(
            charged > PARTIAL_OVERHEAD + 38 * size_of::<Span>(),
            "{charged}"
        );
        assert!(charged <= max_frame_charge(9216));
        assert_eq!(r.buffered_bytes_of(&site), charged);
        // However fragments arrive, a frame's charge stays within the most
        // one maximum-size frame is charged.
        let f = frame(9216, 9);
        let mut ds = fragment(vni(), false, &f, MIN_DATAGRAM, 2).unwrap();
        ds.reverse();
        let mut worst = 0;
        for d in &ds[..ds.len() - 1] {
            let (fi, p) = split(d);
            r.push(now, &site, vni(), fi, &p);
            worst = worst.max(r.buffered_bytes() - charged);
        }
        assert!(worst <= max_frame_charge(9216), "{worst}");
        let (fi, p) = split(&ds[ds.len() - 1]);
        assert_eq!(r.push(now, &site, vni(), fi, &p).as_deref(), Some(&f[..]));
        assert_eq!(r.buffered_bytes(), charged);
    }

    #[test]
    fn a_peer_over_its_budget_evicts_its_own_oldest_partial_frames() {
        let (b, c) = (SiteId::new("b"), SiteId::new("c"));
        let mut r = Reassembler::new(limits());
        let now = Instant::now();
        let p = [0u8; 1000];
        r.push(now, &b, vni(), info(1, 0, 2), &p);
        for id in 0..1000 {
            r.push(now, &c, vni(), info(id, 0, 2), &p);
            assert!(r.buffered_bytes_of(&c) <= limits().max_buffered_per_peer);
        }
        let counts = r.take_counts();
        assert!(counts.peer_budget >= 950, "{counts:?}");
        assert_eq!(counts.global_budget, 0);
        // b's frame and c's newest survived and complete.
        assert_eq!(
            r.push(now, &b, vni(), info(1, 1, 2), &p).map(|f| f.len()),
            Some(2000)
        );
        assert_eq!(
            r.push(now, &c, vni(), info(999, 1, 2), &p).map(|f| f.len()),
            Some(2000)
        );
        // c's oldest are gone: their last fragment starts a new partial.
        assert!(r.push(now, &c, vni(), info(0, 1, 2), &p).is_none());
    }

    #[test]
    fn over_the_switch_wide_budget_room_is_made_at_the_heaviest_peer() {
        let mut r = Reassembler::new(limits());
        let now = Instant::now();
        let p = [0u8; 1000];
        let small = SiteId::new("b");
        r.push(now, &small, vni(), info(1, 0, 2), &p);
        // Three peers each within their 32 KiB share, 96 KiB together.
        for id in 0..100 {
            for s in ["c", "d", "e"] {
                r.push(now, &SiteId::new(s), vni(), info(id, 0, 2), &p);
                assert!(r.buffered_bytes() <= limits().max_buffered);
            }
        }
        let counts = r.take_counts();
        assert!(counts.global_budget > 0, "{counts:?}");
        assert!(r.buffered_bytes_of(&small) > 0);
        assert_eq!(
            r.push(now, &small, vni(), info(1, 1, 2), &p)
                .map(|f| f.len()),
            Some(2000)
        );
    }

    #[test]
    fn forgetting_a_site_releases_its_charges() {
        let (b, c) = (SiteId::new("b"), SiteId::new("c"));
        let mut r = Reassembler::new(limits());
        let now = Instant::now();
        r.push(now, &b, vni(), info(1, 0, 3), &[1; 500]);
        r.push(now, &c, vni(), info(1, 0, 3), &[1; 500]);
        let c_charge = r.buffered_bytes_of(&c);
        r.forget_site(&b);
        assert_eq!(r.buffered_bytes_of(&b), 0);
        assert_eq!(r.buffered_bytes(), c_charge);
        assert_eq!(r.pending_frames(), 1);
    }
}
