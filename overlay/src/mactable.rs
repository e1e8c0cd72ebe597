//! The MAC table of one segment: learning, ageing, static entries, limits
//! on learned entries, and MAC mobility after RFC 7432 §15 (sequence
//! numbers, tie-break, flap freeze).
//!
//! Mobility rules:
//! - A MAC first learned locally gets sequence 0. A MAC that shows up
//!   locally while the table points at a remote site has moved here: its
//!   sequence becomes the remote one plus one and the caller advertises it.
//! - An advertisement wins over what the table holds when its sequence is
//!   higher, or equal and its site name sorts lower (RFC 7432 picks the
//!   lower PE address; site names are our stable, configured equivalent).
//!   A winning advertisement for a locally attached MAC repoints it to the
//!   remote site at once; a losing one is answered by re-advertising ours.
//! - Each move is remembered; a MAC that moves more than `flap_moves` times
//!   within `flap_window` is frozen where it is: no more learning or
//!   advertisement processing for it until it is unfrozen (by the operator
//!   or after `freeze_hold`).
//! - Locally learned entries and entries learned from remote data traffic
//!   age out; entries installed by a peer's advertisement live until that
//!   peer withdraws them, resynchronises without them, or disconnects.
//!
//! Limits ([`MacLimits`]), so that a guest inventing source MACs cannot
//! grow the table here or at any peer:
//! - Every learned entry is charged to its source, the local port it was
//!   learned on or the peer site it points at, and to the segment. Static
//!   entries are configuration: charged to nothing, never displaced.
//! - A MAC that already has an entry is never refused: refreshes and moves
//!   (between ports, between sites, after a migration) update it in place,
//!   and its charge follows it to its new source. Refusing a move would
//!   strand a migrated VM; a move never grows the table.
//! - A new MAC learned from a frame (on a local port, or from a peer's
//!   data traffic) beyond its source's share or the segment limit is not
//!   learned. The frame is still forwarded; frames to that MAC are unknown
//!   unicast, flooded under the segment's rate limit. Nothing is evicted
//!   for it: evicting a learned local MAC would withdraw it from every peer
//!   and advertise the newcomer, so a flood of invented MACs would become a
//!   flood of control messages, and the longest-idle real hosts would be
//!   the first to go. The guest that invents MACs only fills its own share.
//! - Entries learned from peers' data traffic are a cache of what flooding
//!   finds again; advertisements and local learning are authoritative and
//!   are not repeated. So an advertisement beyond its peer's share
//!   displaces that peer's stalest data-plane entry, and an advertisement
//!   or a locally learned MAC beyond the segment limit displaces the
//!   segment's stalest data-plane entry; only when there is none is it
//!   refused. Frozen entries are never displaced.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::ids::{MacAddr, PortId, SiteId};

/// Where a MAC lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Local(PortId),
    Remote(SiteId),
}

/// Ageing and mobility parameters.
#[derive(Debug, Clone, Copy)]
pub struct MobilityPolicy {
    pub ageing: Duration,
    pub flap_moves: u32,
    pub flap_window: Duration,
    /// `None`: frozen MACs stay frozen until [`MacTable::unfreeze`].
    pub freeze_hold: Option<Duration>,
}

/// The most learned (non-static) entries the table holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MacLimits {
    /// In the whole segment.
    pub per_segment: usize,
    /// Learned on one local port.
    pub per_port: usize,
    /// Pointing at one peer site.
    pub per_peer: usize,
}

impl MacLimits {
    /// No limits (tests and tools that need none).
    pub const UNLIMITED: MacLimits = MacLimits {
        per_segment: usize::MAX,
        per_port: usize::MAX,
        per_peer: usize::MAX,
    };
}

/// Which limit kept a new MAC out of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    Segment,
    Port,
    Peer,
}

impl Limit {
    pub const ALL: [Limit; 3] = [Limit::Segment, Limit::Port, Limit::Peer];

    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Segment => "segment",
            Limit::Port => "port",
            Limit::Peer => "peer",
        }
    }
}

/// One MAC table entry.
#[derive(Debug, Clone)]
pub struct MacEntry {
    pub location: Location,
    pub seq: u32,
    pub last_seen: Instant,
    pub is_static: bool,
    /// Learned from a remote frame rather than from an advertisement.
    pub data_plane: bool,
    /// Advertised as static by its site: local learning must not move it.
    pub sticky: bool,
    pub frozen_at: Option<Instant>,
    moves: VecDeque<Instant>,
}

impl MacEntry {
    fn new(location: Location, seq: u32, now: Instant) -> Self {
        MacEntry {
            location,
            seq,
            last_seen: now,
            is_static: false,
            data_plane: false,
            sticky: false,
            frozen_at: None,
            moves: VecDeque::new(),
        }
    }

    pub fn is_frozen(&self) -> bool {
        self.frozen_at.is_some()
    }

    /// What this entry is charged to: its source and whether it is a
    /// data-plane entry; `None` for static entries.
    fn tally(&self) -> Option<(Source, bool)> {
        if self.is_static {
            return None;
        }
        let source = match &self.location {
            Location::Local(p) => Source::Port(*p),
            Location::Remote(s) => Source::Peer(s.clone()),
        };
        Some((source, self.data_plane))
    }
}

/// What learning a source MAC on a local port did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalLearn {
    /// Already known on this port (refreshed).
    Refreshed,
    /// Known on another local port; moved there (no sequence change).
    PortMove,
    /// First seen: advertise with this sequence.
    New { seq: u32 },
    /// Was at a remote site: advertise with this (bumped) sequence.
    MovedHere { seq: u32, from: SiteId },
    /// This move froze the MAC; the table keeps the old location.
    Froze,
    /// Frozen or static: the table did not change.
    Ignored,
    /// New, but over this limit: not learned.
    Refused(Limit),
}

/// What an advertisement from a peer did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdvertOutcome {
    /// Newly installed, or an update from the site it already pointed at.
    Installed,
    /// A locally attached MAC moved to the advertising site.
    MovedAway { from: PortId },
    /// Moved from one remote site to another.
    MovedRemote { from: SiteId },
    /// Our local entry wins: answer with our advertisement of this sequence.
    LocalWins { seq: u32 },
    /// Lost against another remote entry, or the MAC is frozen.
    Ignored,
    /// Two sites both hold the MAC as static: a configuration conflict.
    StaticConflict,
    /// This move froze the MAC.
    Froze,
    /// New, but over this limit with no data-plane entry to displace: not
    /// installed.
    Refused(Limit),
}

/// A MAC removed by ageing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Aged {
    pub mac: MacAddr,
    pub was_local: bool,
    pub seq: u32,
}

/// Whether advertisement (a_seq, a_site) beats (b_seq, b_site).
pub fn wins(a_seq: u32, a_site: &SiteId, b_seq: u32, b_site: &SiteId) -> bool {
    a_seq > b_seq || (a_seq == b_seq && a_site < b_site)
}

/// Who a learned entry is charged to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Source {
    Port(PortId),
    Peer(SiteId),
}

impl Source {
    fn holds(&self, location: &Location) -> bool {
        match (self, location) {
            (Source::Port(p), Location::Local(q)) => p == q,
            (Source::Peer(s), Location::Remote(r)) => s == r,
            _ => false,
        }
    }
}

/// Learned entries charged to one source.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Share {
    entries: usize,
    data_plane: usize,
}

/// What the learned entries are charged to.
#[derive(Debug, Default, PartialEq, Eq)]
struct Usage {
    learned: usize,
    data_plane: usize,
    shares: HashMap<Source, Share>,
}

impl Usage {
    fn add(&mut self, t: Option<(Source, bool)>) {
        let Some((source, dp)) = t else { return };
        self.learned += 1;
        self.data_plane += usize::from(dp);
        let s = self.shares.entry(source).or_default();
        s.entries += 1;
        s.data_plane += usize::from(dp);
    }

    fn sub(&mut self, t: Option<(Source, bool)>) {
        let Some((source, dp)) = t else { return };
        self.learned -= 1;
        self.data_plane -= usize::from(dp);
        if let Entry::Occupied(mut o) = self.shares.entry(source) {
            let s = o.get_mut();
            s.entries -= 1;
            s.data_plane -= usize::from(dp);
            if s.entries == 0 {
                o.remove();
            }
        }
    }

    /// Moves an entry's charge after it changed.
    fn change(&mut self, before: Option<(Source, bool)>, after: Option<(Source, bool)>) {
        if before != after {
            self.sub(before);
            self.add(after);
        }
    }

    fn share(&self, source: &Source) -> Share {
        self.shares.get(source).copied().unwrap_or_default()
    }
}

/// The MAC table of one segment.
pub struct MacTable {
    local_site: SiteId,
    policy: MobilityPolicy,
    limits: MacLimits,
    entries: HashMap<MacAddr, MacEntry>,
    usage: Usage,
    /// Data-plane entries displaced since the last [`MacTable::take_displaced`].
    displaced: u64,
}

impl MacTable {
    pub fn new(local_site: SiteId, policy: MobilityPolicy, limits: MacLimits) -> Self {
        MacTable {
            local_site,
            policy,
            limits,
            entries: HashMap::new(),
            usage: Usage::default(),
            displaced: 0,
        }
    }

    pub fn get(&self, mac: &MacAddr) -> Option<&MacEntry> {
        self.entries.get(mac)
    }

    pub fn lookup(&self, mac: &MacAddr) -> Option<&Location> {
        self.entries.get(mac).map(|e| &e.location)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Learned (non-static) entries, the count the segment limit applies to.
    pub fn learned_len(&self) -> usize {
        self.usage.learned
    }

    /// Learned entries on local `port`.
    pub fn learned_on_port(&self, port: PortId) -> usize {
        self.usage.share(&Source::Port(port)).entries
    }

    /// Learned entries pointing at `site`.
    pub fn learned_from_peer(&self, site: &SiteId) -> usize {
        self.usage.share(&Source::Peer(site.clone())).entries
    }

    /// Data-plane entries displaced by authoritative ones since the last
    /// call; resets the count.
    pub fn take_displaced(&mut self) -> u64 {
        std::mem::take(&mut self.displaced)
    }

    pub fn frozen_count(&self) -> usize {
        self.entries.values().filter(|e| e.is_frozen()).count()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&MacAddr, &MacEntry)> {
        self.entries.iter()
    }

    /// Installs a static local entry; it never ages, moves or counts
    /// against a limit.
    pub fn add_static(&mut self, now: Instant, mac: MacAddr, port: PortId) {
        let mut e = MacEntry::new(Location::Local(port), 0, now);
        e.is_static = true;
        if let Some(old) = self.entries.insert(mac, e) {
            self.usage.sub(old.tally());
        }
    }

    /// Makes room for a new entry charged to `source`, or says which limit
    /// keeps it out. `authoritative`: learned locally or advertised, as
    /// opposed to learned from a peer's data traffic.
    fn admit(&mut self, source: &Source, authoritative: bool) -> Result<(), Limit> {
        let (share_limit, limit) = match source {
            Source::Port(_) => (self.limits.per_port, Limit::Port),
            Source::Peer(_) => (self.limits.per_peer, Limit::Peer),
        };
        let share = self.usage.share(source);
        if share.entries >= share_limit {
            // Only an advertisement finds cache entries in its own share:
            // a port's share holds no data-plane entries.
            let displaced =
                authoritative && share.data_plane > 0 && self.displace_stalest(Some(source));
            if !displaced {
                return Err(limit);
            }
        }
        if self.usage.learned >= self.limits.per_segment {
            let displaced =
                authoritative && self.usage.data_plane > 0 && self.displace_stalest(None);
            if !displaced {
                return Err(Limit::Segment);
            }
        }
        Ok(())
    }

    /// Removes the stalest unfrozen data-plane entry (of `source` only, when
    /// given); returns whether there was one.
    fn displace_stalest(&mut self, source: Option<&Source>) -> bool {
        let victim = self
            .entries
            .iter()
            .filter(|(_, e)| e.data_plane && !e.is_frozen() && !e.is_static)
            .filter(|(_, e)| source.is_none_or(|s| s.holds(&e.location)))
            .min_by_key(|(_, e)| e.last_seen)
            .map(|(m, _)| *m);
        let Some(mac) = victim else {
            return false;
        };
        if let Some(e) = self.entries.remove(&mac) {
            self.usage.sub(e.tally());
            self.displaced += 1;
        }
        true
    }

    fn insert_new(&mut self, mac: MacAddr, e: MacEntry) {
        self.usage.add(e.tally());
        self.entries.insert(mac, e);
    }

    /// Records a frame from `mac` on local `port`.
    pub fn learn_local(&mut self, now: Instant, mac: MacAddr, port: PortId) -> LocalLearn {
        let policy = self.policy;
        if !self.entries.contains_key(&mac) {
            if let Err(limit) = self.admit(&Source::Port(port), true) {
                return LocalLearn::Refused(limit);
            }
            self.insert_new(mac, MacEntry::new(Location::Local(port), 0, now));
            return LocalLearn::New { seq: 0 };
        }
        let Some(e) = self.entries.get_mut(&mac) else {
            return LocalLearn::Ignored;
        };
        if e.is_static || e.sticky || e.is_frozen() {
            return LocalLearn::Ignored;
        }
        let before = e.tally();
        let outcome = match &e.location {
            Location::Local(p) if *p == port => {
                e.last_seen = now;
                LocalLearn::Refreshed
            }
            Location::Local(_) => {
                e.location = Location::Local(port);
                e.last_seen = now;
                LocalLearn::PortMove
            }
            Location::Remote(site) => {
                let from = site.clone();
                if record_move(e, now, &policy) {
                    return LocalLearn::Froze;
                }
                e.seq = e.seq.wrapping_add(1);
                e.location = Location::Local(port);
                e.last_seen = now;
                e.data_plane = false;
                LocalLearn::MovedHere { seq: e.seq, from }
            }
        };
        self.usage.change(before, e.tally());
        outcome
    }

    /// Records a frame from `mac` received from `site`: installs a
    /// data-plane entry when the MAC is unknown, refreshes one that exists.
    /// Entries from advertisements are left to the control plane. Returns
    /// the limit that kept a new MAC out, if one did.
    pub fn learn_remote_frame(
        &mut self,
        now: Instant,
        mac: MacAddr,
        site: &SiteId,
    ) -> Result<(), Limit> {
        match self.entries.get_mut(&mac) {
            None => {
                self.admit(&Source::Peer(site.clone()), false)?;
                let mut e = MacEntry::new(Location::Remote(site.clone()), 0, now);
                e.data_plane = true;
                self.insert_new(mac, e);
            }
            Some(e) => {
                if e.data_plane {
                    let before = e.tally();
                    e.location = Location::Remote(site.clone());
                    e.last_seen = now;
                    self.usage.change(before, e.tally());
                }
            }
        }
        Ok(())
    }

    /// Applies a peer's advertisement of `mac` at `site` with `seq`; a
    /// `sticky` (static) advertisement beats any non-static entry.
    pub fn on_advert(
        &mut self,
        now: Instant,
        mac: MacAddr,
        site: &SiteId,
        seq: u32,
        sticky: bool,
    ) -> AdvertOutcome {
        let policy = self.policy;
        if !self.entries.contains_key(&mac) {
            if let Err(limit) = self.admit(&Source::Peer(site.clone()), true) {
                return AdvertOutcome::Refused(limit);
            }
            let mut e = MacEntry::new(Location::Remote(site.clone()), seq, now);
            e.sticky = sticky;
            self.insert_new(mac, e);
            return AdvertOutcome::Installed;
        }
        let Some(e) = self.entries.get_mut(&mac) else {
            return AdvertOutcome::Ignored;
        };
        if e.is_static {
            // Static here and static there: answering would loop forever.
            if sticky {
                return AdvertOutcome::StaticConflict;
            }
            return AdvertOutcome::LocalWins { seq: e.seq };
        }
        if e.is_frozen() {
            return AdvertOutcome::Ignored;
        }
        let before = e.tally();
        let outcome = match e.location.clone() {
            Location::Remote(s) if e.data_plane || s == *site => {
                e.location = Location::Remote(site.clone());
                e.seq = seq;
                e.last_seen = now;
                e.data_plane = false;
                e.sticky = sticky;
                AdvertOutcome::Installed
            }
            Location::Remote(s) => {
                if e.sticky && !sticky {
                    return AdvertOutcome::Ignored;
                }
                if !sticky && !wins(seq, site, e.seq, &s) {
                    return AdvertOutcome::Ignored;
                }
                if record_move(e, now, &policy) {
                    return AdvertOutcome::Froze;
                }
                e.location = Location::Remote(site.clone());
                e.seq = seq;
                e.last_seen = now;
                e.sticky = sticky;
                AdvertOutcome::MovedRemote { from: s }
            }
            Location::Local(port) => {
                if !sticky && !wins(seq, site, e.seq, &self.local_site) {
                    return AdvertOutcome::LocalWins { seq: e.seq };
                }
                if record_move(e, now, &policy) {
                    return AdvertOutcome::Froze;
                }
                e.location = Location::Remote(site.clone());
                e.seq = seq;
                e.last_seen = now;
                e.sticky = sticky;
                AdvertOutcome::MovedAway { from: port }
            }
        };
        self.usage.change(before, e.tally());
        outcome
    }

    /// Applies a peer's withdrawal; returns whether the entry was removed.
    pub fn on_withdraw(&mut self, mac: MacAddr, site: &SiteId, seq: u32) -> bool {
        let remove = self.entries.get(&mac).is_some_and(|e| {
            !e.is_frozen() && e.location == Location::Remote(site.clone()) && e.seq <= seq
        });
        if remove {
            if let Some(e) = self.entries.remove(&mac) {
                self.usage.sub(e.tally());
            }
        }
        remove
    }

    /// Removes every entry pointing at `site` except frozen ones; returns
    /// how many were removed.
    pub fn flush_site(&mut self, site: &SiteId) -> usize {
        let before = self.entries.len();
        let usage = &mut self.usage;
        self.entries.retain(|_, e| {
            let keep = e.is_frozen() || e.location != Location::Remote(site.clone());
            if !keep {
                usage.sub(e.tally());
            }
            keep
        });
        before - self.entries.len()
    }

    /// Removes advertised entries of `site` whose MAC is not in `keep`
    /// (after a full resynchronisation from that site).
    pub fn retain_site(&mut self, site: &SiteId, keep: &dyn Fn(&MacAddr) -> bool) -> usize {
        let before = self.entries.len();
        let usage = &mut self.usage;
        self.entries.retain(|mac, e| {
            let kept = e.is_frozen()
                || e.data_plane
                || e.location != Location::Remote(site.clone())
                || keep(mac);
            if !kept {
                usage.sub(e.tally());
            }
            kept
        });
        before - self.entries.len()
    }

    /// Removes the non-static entries learned on `port`.
    pub fn flush_port(&mut self, port: PortId) -> Vec<Aged> {
        let macs: Vec<MacAddr> = self
            .entries
            .iter()
            .filter(|(_, e)| e.location == Location::Local(port))
            .map(|(m, _)| *m)
            .collect();
        macs.into_iter()
            .filter_map(|m| {
                let e = self.entries.remove(&m)?;
                self.usage.sub(e.tally());
                Some(Aged {
                    mac: m,
                    was_local: true,
                    seq: e.seq,
                })
            })
            .collect()
    }

    /// Unfreezes `mac`, forgetting its move history; returns whether it was frozen.
    pub fn unfreeze(&mut self, mac: &MacAddr) -> bool {
        match self.entries.get_mut(mac) {
            Some(e) if e.is_frozen() => {
                e.frozen_at = None;
                e.moves.clear();
                true
            }
            _ => false,
        }
    }

    /// Ages out entries and ends freeze holds; returns the removed entries
    /// and the MACs unfrozen.
    pub fn expire(&mut self, now: Instant) -> (Vec<Aged>, Vec<MacAddr>) {
        let policy = self.policy;
        let mut aged = Vec::new();
        let mut unfrozen = Vec::new();
        let usage = &mut self.usage;
        self.entries.retain(|mac, e| {
            if let Some(at) = e.frozen_at {
                if policy.freeze_hold.is_some_and(|h| now >= at + h) {
                    e.frozen_at = None;
                    e.moves.clear();
                    e.last_seen = now;
                    unfrozen.push(*mac);
                }
                return true;
            }
            let ages = !e.is_static && (matches!(e.location, Location::Local(_)) || e.data_plane);
            if ages && now.saturating_duration_since(e.last_seen) >= policy.ageing {
                aged.push(Aged {
                    mac: *mac,
                    was_local: matches!(e.location, Location::Local(_)),
                    seq: e.seq,
                });
                usage.sub(e.tally());
                return false;
            }
            true
        });
        (aged, unfrozen)
    }

    /// The earliest instant at which [`MacTable::expire`] has work.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.entries
            .values()
            .filter_map(|e| match e.frozen_at {
                Some(at) => self.policy.freeze_hold.map(|h| at + h),
                None if !e.is_static
                    && (matches!(e.location, Location::Local(_)) || e.data_plane) =>
                {
                    Some(e.last_seen + self.policy.ageing)
                }
                None => None,
            })
            .min()
    }

    /// The charges recomputed from the entries (tests check they match).
    #[cfg(test)]
    fn recount(&self) -> Usage {
        let mut u = Usage::default();
        for e in self.entries.values() {
            u.add(e.tally());
        }
        u
    }
}

/// Notes a move; returns true when it pushes the MAC over the flap limit,
/// in which case the entry is frozen in place.
fn record_move(e: &mut MacEntry, now: Instant, policy: &MobilityPolicy) -> bool {
    while e
        .moves
        .front()
        .is_some_and(|t| now.saturating_duration_since(*t) >= policy.flap_window)
    {
        e.moves.pop_front();
    }
    e.moves.push_back(now);
    if e.moves.len() > policy.flap_moves as usize {
        e.frozen_at = Some(now);
        return true;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);

    fn policy() -> MobilityPolicy {
        MobilityPolicy {
            ageing: Duration::from_secs(300),
            flap_moves: 5,
            flap_window: Duration::from_secs(180),
            freeze_hold: None,
        }
    }

    fn table(site: &str) -> MacTable {
        MacTable::new(SiteId::new(site), policy(), MacLimits::UNLIMITED)
    }

    #[test]
    fn learns_refreshes_and_moves_between_local_ports() {
        let mut t = table("a");
        let now = Instant::now();
        assert_eq!(t.learn_local(now, M, PortId(1)), LocalLearn::New { seq: 0 });
        assert_eq!(t.learn_local(now, M, PortId(1)), LocalLearn::Refreshed);
        assert_eq!(t.learn_local(now, M, PortId(2)), LocalLearn::PortMove);
        assert_eq!(t.lookup(&M), Some(&Location::Local(PortId(2))));
        assert_eq!(t.get(&M).unwrap().seq, 0);
    }

    #[test]
    fn local_entries_age_out_unless_refreshed_and_statics_never() {
        let mut t = table("a");
        let t0 = Instant::now();
        let s = MacAddr([2, 0, 0, 0, 0, 9]);
        t.learn_local(t0, M, PortId(1));
        t.add_static(t0, s, PortId(3));
        assert_eq!(t.next_deadline(), Some(t0 + Duration::from_secs(300)));
        t.learn_local(t0 + Duration::from_secs(200), M, PortId(1));
        let (aged, _) = t.expire(t0 + Duration::from_secs(300));
        assert!(aged.is_empty());
        let (aged, _) = t.expire(t0 + Duration::from_secs(500));
        assert_eq!(
            aged,
            vec![Aged {
                mac: M,
                was_local: true,
                seq: 0
            }]
        );
        assert!(t.lookup(&s).is_some());
        assert_eq!(t.learn_local(t0, s, PortId(4)), LocalLearn::Ignored);
        assert_eq!(t.lookup(&s), Some(&Location::Local(PortId(3))));
    }

    #[test]
    fn advertised_entries_do_not_age_but_data_plane_ones_do() {
        let mut t = table("a");
        let t0 = Instant::now();
        let d = MacAddr([2, 0, 0, 0, 0, 7]);
        t.on_advert(t0, M, &"b".into(), 3, false);
        t.learn_remote_frame(t0, d, &"b".into()).unwrap();
        let (aged, _) = t.expire(t0 + Duration::from_secs(1000));
        assert_eq!(aged.len(), 1);
        assert_eq!(aged[0].mac, d);
        assert!(!aged[0].was_local);
        assert_eq!(t.lookup(&M), Some(&Location::Remote("b".into())));
    }

    #[test]
    fn higher_sequence_wins_and_repoints_a_local_mac_at_once() {
        let mut t = table("b");
        let now = Instant::now();
        t.learn_local(now, M, PortId(1));
        assert_eq!(
            t.on_advert(now, M, &"c".into(), 1, false),
            AdvertOutcome::MovedAway { from: PortId(1) }
        );
        assert_eq!(t.lookup(&M), Some(&Location::Remote("c".into())));
        // A stale lower sequence from another site loses.
        assert_eq!(
            t.on_advert(now, M, &"a".into(), 0, false),
            AdvertOutcome::Ignored
        );
        // The MAC comes back: sequence bumps past the remote one.
        assert_eq!(
            t.learn_local(now, M, PortId(2)),
            LocalLearn::MovedHere {
                seq: 2,
                from: "c".into()
            }
        );
        // A lower or equal-but-losing advert is answered with ours.
        assert_eq!(
            t.on_advert(now, M, &"c".into(), 2, false),
            AdvertOutcome::LocalWins { seq: 2 }
        );
    }

    #[test]
    fn equal_sequence_tie_breaks_on_lower_site_name_everywhere() {
        let now = Instant::now();
        // Site "b" holds M locally at seq 4; "a" advertises seq 4: "a" wins.
        let mut tb = table("b");
        tb.learn_local(now, M, PortId(1));
        tb.on_advert(now, M, &"a".into(), 3, false);
        tb.learn_local(now, M, PortId(1)); // seq 4 after moving back
        assert_eq!(tb.get(&M).unwrap().seq, 4);
        assert_eq!(
            tb.on_advert(now, M, &"a".into(), 4, false),
            AdvertOutcome::MovedAway { from: PortId(1) }
        );
        // Site "a" holding M at seq 4 ignores "b"'s equal advert.
        let mut ta = table("a");
        ta.on_advert(now, M, &"x".into(), 3, false);
        assert!(matches!(
            ta.learn_local(now, M, PortId(1)),
            LocalLearn::MovedHere { seq: 4, .. }
        ));
        assert_eq!(
            ta.on_advert(now, M, &"b".into(), 4, false),
            AdvertOutcome::LocalWins { seq: 4 }
        );
        // A third site converges on "a" whatever the arrival order.
        for order in [["a", "b"], ["b", "a"]] {
            let mut tc = table("c");
            for s in order {
                tc.on_advert(now, M, &s.into(), 4, false);
            }
            assert_eq!(tc.lookup(&M), Some(&Location::Remote("a".into())));
        }
    }

    #[test]
    fn advert_replaces_data_plane_entry_whatever_its_sequence() {
        let mut t = table("a");
        let now = Instant::now();
        t.learn_remote_frame(now, M, &"b".into()).unwrap();
        assert_eq!(
            t.on_advert(now, M, &"c".into(), 0, false),
            AdvertOutcome::Installed
        );
        assert_eq!(t.lookup(&M), Some(&Location::Remote("c".into())));
        // Data-plane learning does not override the advertised entry.
        t.learn_remote_frame(now, M, &"b".into()).unwrap();
        assert_eq!(t.lookup(&M), Some(&Location::Remote("c".into())));
    }

    #[test]
    fn flapping_mac_freezes_after_n_moves_in_window_with_synthetic_clock() {
        let mut t = table("a");
        let t0 = Instant::now();
        let s = |secs: u64| t0 + Duration::from_secs(secs);
        t.learn_local(s(0), M, PortId(1));
        let mut seq = 0;
        // Moves spread over more than the window do not freeze.
        for i in 0..10u64 {
            let now = s(i * 40);
            seq += 1;
            if i % 2 == 0 {
                assert_eq!(
                    t.on_advert(now, M, &"b".into(), seq, false),
                    AdvertOutcome::MovedAway { from: PortId(1) }
                );
            } else {
                assert!(matches!(
                    t.learn_local(now, M, PortId(1)),
                    LocalLearn::MovedHere { .. }
                ));
            }
        }
        assert!(!t.get(&M).unwrap().is_frozen());
        // Now six quick moves: the 6th within 180 s freezes.
        let base = 1000;
        let mut outcomes = Vec::new();
        for i in 0..6u64 {
            let now = s(base + i * 10);
            let cur = t.get(&M).unwrap().seq;
            if matches!(t.lookup(&M), Some(Location::Local(_))) {
                outcomes.push(format!(
                    "{:?}",
                    t.on_advert(now, M, &"b".into(), cur + 1, false)
                ));
            } else {
                outcomes.push(format!("{:?}", t.learn_local(now, M, PortId(1))));
            }
        }
        assert_eq!(outcomes.last().unwrap(), "Froze", "{outcomes:?}");
        assert!(outcomes[..5].iter().all(|o| o != "Froze"), "{outcomes:?}");
        let e = t.get(&M).unwrap();
        assert!(e.is_frozen());
        let where_frozen = e.location.clone();
        assert_eq!(t.frozen_count(), 1);
        // Frozen: neither adverts nor local frames move it, nor does it age.
        assert_eq!(
            t.on_advert(s(2000), M, &"b".into(), 100, false),
            AdvertOutcome::Ignored
        );
        assert_eq!(t.learn_local(s(2000), M, PortId(7)), LocalLearn::Ignored);
        t.expire(s(9000));
        assert_eq!(t.lookup(&M), Some(&where_frozen));
        assert!(t.unfreeze(&M));
        assert!(!t.get(&M).unwrap().is_frozen());
    }

    #[test]
    fn freeze_hold_unfreezes_automatically() {
        let mut t = MacTable::new(
            "a".into(),
            MobilityPolicy {
                flap_moves: 1,
                freeze_hold: Some(Duration::from_secs(60)),
                ..policy()
            },
            MacLimits::UNLIMITED,
        );
        let t0 = Instant::now();
        t.learn_local(t0, M, PortId(1));
        t.on_advert(t0, M, &"b".into(), 1, false);
        assert!(matches!(t.learn_local(t0, M, PortId(1)), LocalLearn::Froze));
        assert_eq!(t.next_deadline(), Some(t0 + Duration::from_secs(60)));
        let (_, unfrozen) = t.expire(t0 + Duration::from_secs(60));
        assert_eq!(unfrozen, vec![M]);
        assert!(matches!(
            t.learn_local(t0 + Duration::from_secs(61), M, PortId(1)),
            LocalLearn::MovedHere { seq: 2, .. }
        ));
    }

    #[test]
    fn sticky_advert_wins_and_blocks_learning_and_two_statics_conflict() {
        let mut t = table("a");
        let now = Instant::now();
        t.learn_local(now, M, PortId(1));
        t.learn_local(now, M, PortId(1));
        assert_eq!(
            t.on_advert(now, M, &"b".into(), 0, true),
            AdvertOutcome::MovedAway { from: PortId(1) }
        );
        assert_eq!(t.learn_local(now, M, PortId(1)), LocalLearn::Ignored);
        assert_eq!(
            t.on_advert(now, M, &"c".into(), 9, false),
            AdvertOutcome::Ignored
        );
        let s = MacAddr([2, 0, 0, 0, 0, 5]);
        t.add_static(now, s, PortId(2));
        assert_eq!(
            t.on_advert(now, s, &"b".into(), 3, false),
            AdvertOutcome::LocalWins { seq: 0 }
        );
        assert_eq!(
            t.on_advert(now, s, &"b".into(), 3, true),
            AdvertOutcome::StaticConflict
        );
    }

    #[test]
    fn withdraw_flush_and_retain_only_touch_the_named_site() {
        let mut t = table("a");
        let now = Instant::now();
        let m2 = MacAddr([2, 0, 0, 0, 0, 2]);
        let m3 = MacAddr([2, 0, 0, 0, 0, 3]);
        t.on_advert(now, M, &"b".into(), 2, false);
        t.on_advert(now, m2, &"b".into(), 0, false);
        t.on_advert(now, m3, &"c".into(), 0, false);
        assert!(!t.on_withdraw(M, &"c".into(), 9));
        assert!(
            !t.on_withdraw(M, &"b".into(), 1),
            "older withdraw must not remove"
        );
        assert!(t.on_withdraw(M, &"b".into(), 2));
        t.on_advert(now, M, &"b".into(), 2, false);
        assert_eq!(t.retain_site(&"b".into(), &|m| *m == m2), 1);
        assert!(t.lookup(&M).is_none());
        assert_eq!(t.flush_site(&"b".into()), 1);
        assert_eq!(t.len(), 1);
        assert!(t.lookup(&m3).is_some());
    }

    fn limited(site: &str, per_segment: usize, per_port: usize, per_peer: usize) -> MacTable {
        MacTable::new(
            SiteId::new(site),
            policy(),
            MacLimits {
                per_segment,
                per_port,
                per_peer,
            },
        )
    }

    fn m(n: u16) -> MacAddr {
        let [hi, lo] = n.to_be_bytes();
        MacAddr([2, 0, 0, 1, hi, lo])
    }

    /// The charges the table keeps match the entries it holds.
    fn assert_charges_match(t: &MacTable) {
        assert_eq!(t.usage, t.recount());
    }

    #[test]
    fn a_port_over_its_share_learns_nothing_new_and_evicts_nothing() {
        let mut t = limited("a", 100, 3, 50);
        let now = Instant::now();
        let st = MacAddr([2, 9, 9, 9, 9, 9]);
        t.add_static(now, st, PortId(1));
        for i in 0..3 {
            assert_eq!(
                t.learn_local(now, m(i), PortId(1)),
                LocalLearn::New { seq: 0 }
            );
        }
        assert_eq!(
            t.learn_local(now, m(3), PortId(1)),
            LocalLearn::Refused(Limit::Port)
        );
        assert!(t.lookup(&m(3)).is_none());
        // Known MACs still refresh, statics are untouched and not counted,
        // and another port has its own share.
        assert_eq!(t.learn_local(now, m(0), PortId(1)), LocalLearn::Refreshed);
        assert_eq!(t.lookup(&st), Some(&Location::Local(PortId(1))));
        assert_eq!(t.learned_on_port(PortId(1)), 3);
        assert_eq!(t.learned_len(), 3);
        assert_eq!(
            t.learn_local(now, m(3), PortId(2)),
            LocalLearn::New { seq: 0 }
        );
        // Ageing frees the share.
        let later = now + Duration::from_secs(400);
        t.learn_local(later, m(3), PortId(2));
        t.expire(later);
        assert_eq!(t.learned_on_port(PortId(1)), 0);
        assert_eq!(
            t.learn_local(later, m(4), PortId(1)),
            LocalLearn::New { seq: 0 }
        );
        assert_charges_match(&t);
    }

    #[test]
    fn moves_are_never_refused_and_carry_their_charge() {
        let mut t = limited("a", 100, 2, 50);
        let now = Instant::now();
        t.learn_local(now, m(0), PortId(1));
        t.learn_local(now, m(1), PortId(1));
        // A VM that lived at b migrates onto the full port: it moves here.
        t.on_advert(now, m(2), &"b".into(), 4, false);
        assert_eq!(
            t.learn_local(now, m(2), PortId(1)),
            LocalLearn::MovedHere {
                seq: 5,
                from: "b".into()
            }
        );
        assert_eq!(t.learned_on_port(PortId(1)), 3);
        assert_eq!(t.learned_from_peer(&"b".into()), 0);
        // Moving between ports and away again is not refused either.
        assert_eq!(t.learn_local(now, m(2), PortId(3)), LocalLearn::PortMove);
        assert_eq!(
            t.on_advert(now, m(0), &"c".into(), 1, false),
            AdvertOutcome::MovedAway { from: PortId(1) }
        );
        assert_eq!(t.learned_on_port(PortId(1)), 1);
        assert_eq!(t.learned_from_peer(&"c".into()), 1);
        assert_charges_match(&t);
    }

    #[test]
    fn peer_data_traffic_is_capped_and_adverts_displace_it() {
        let mut t = limited("a", 100, 10, 4);
        let t0 = Instant::now();
        let b: SiteId = "b".into();
        for i in 0..6u16 {
            let at = t0 + Duration::from_secs(u64::from(i));
            let r = t.learn_remote_frame(at, m(i), &b);
            assert_eq!(r, if i < 4 { Ok(()) } else { Err(Limit::Peer) });
        }
        assert_eq!(t.learned_from_peer(&b), 4);
        // An advertisement is authoritative: it displaces b's stalest
        // data-plane entry (m(0)), never an advertised one.
        let now = t0 + Duration::from_secs(10);
        assert_eq!(
            t.on_advert(now, m(10), &b, 0, false),
            AdvertOutcome::Installed
        );
        assert!(t.lookup(&m(0)).is_none());
        assert_eq!(t.take_displaced(), 1);
        for i in 11..14 {
            assert_eq!(
                t.on_advert(now, m(i), &b, 0, false),
                AdvertOutcome::Installed
            );
        }
        assert_eq!(t.take_displaced(), 3);
        // Now b's share holds advertised entries only.
        assert_eq!(
            t.on_advert(now, m(14), &b, 0, false),
            AdvertOutcome::Refused(Limit::Peer)
        );
        assert_eq!(t.learned_from_peer(&b), 4);
        assert_charges_match(&t);
    }

    #[test]
    fn a_full_segment_refuses_data_plane_learning_and_gives_way_to_local_hosts() {
        let mut t = limited("a", 6, 4, 4);
        let t0 = Instant::now();
        for (i, site) in [(0u16, "b"), (1, "b"), (2, "c"), (3, "c")] {
            let at = t0 + Duration::from_secs(u64::from(i));
            t.learn_remote_frame(at, m(i), &site.into()).unwrap();
        }
        t.learn_local(t0, m(4), PortId(1));
        t.learn_local(t0, m(5), PortId(1));
        assert_eq!(t.learned_len(), 6);
        assert_eq!(
            t.learn_remote_frame(t0, m(6), &"c".into()),
            Err(Limit::Segment)
        );
        // A local host displaces the segment's stalest data-plane entry.
        let now = t0 + Duration::from_secs(10);
        assert_eq!(
            t.learn_local(now, m(7), PortId(2)),
            LocalLearn::New { seq: 0 }
        );
        assert!(t.lookup(&m(0)).is_none());
        assert_eq!(t.take_displaced(), 1);
        assert_eq!(t.learned_len(), 6);
        // Frozen data-plane entries are never displaced.
        let mut f = limited("a", 1, 4, 4);
        f.learn_remote_frame(t0, m(0), &"b".into()).unwrap();
        f.entries.get_mut(&m(0)).unwrap().frozen_at = Some(t0);
        assert_eq!(
            f.learn_local(t0, m(1), PortId(1)),
            LocalLearn::Refused(Limit::Segment)
        );
        assert_charges_match(&t);
        assert_charges_match(&f);
    }

    #[test]
    fn charges_follow_every_change_of_the_table() {
        // A random walk through every operation; the kept charges must
        // always match a recount, and the limits must hold.
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let mut t = limited("b", 40, 12, 20);
        let t0 = Instant::now();
        let sites: [SiteId; 3] = ["a".into(), "c".into(), "d".into()];
        for step in 0..20_000u64 {
            let now = t0 + Duration::from_millis(step * 50);
            let mac = m(rng.random_range(0..80));
            let site = &sites[rng.random_range(0..3)];
            let port = PortId(rng.random_range(1..4));
            match rng.random_range(0..100) {
                0..=34 => drop(t.learn_local(now, mac, port)),
                35..=59 => drop(t.learn_remote_frame(now, mac, site)),
                60..=79 => drop(t.on_advert(now, mac, site, rng.random_range(0..5), false)),
                80..=86 => drop(t.on_withdraw(mac, site, rng.random_range(0..5))),
                87..=89 => drop(t.expire(now)),
                90 => drop(t.flush_site(site)),
                91 => drop(t.retain_site(site, &|x| x.0[5] % 2 == 0)),
                92 => drop(t.flush_port(port)),
                93 => t.add_static(now, mac, port),
                94 => drop(t.on_advert(now, mac, site, 0, true)),
                95 => drop(t.unfreeze(&mac)),
                _ => {}
            }
            assert_charges_match(&t);
            assert!(t.learned_len() <= 40, "step {step}");
        }
        assert!(t.take_displaced() > 0);
    }
}
