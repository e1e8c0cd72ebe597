//! The MAC table of one segment: learning, ageing, static entries, and MAC
//! mobility after RFC 7432 §15 (sequence numbers, tie-break, flap freeze).
//!
//! Rules:
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

/// The MAC table of one segment.
pub struct MacTable {
    local_site: SiteId,
    policy: MobilityPolicy,
    entries: HashMap<MacAddr, MacEntry>,
}

impl MacTable {
    pub fn new(local_site: SiteId, policy: MobilityPolicy) -> Self {
        MacTable {
            local_site,
            policy,
            entries: HashMap::new(),
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

    pub fn frozen_count(&self) -> usize {
        self.entries.values().filter(|e| e.is_frozen()).count()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&MacAddr, &MacEntry)> {
        self.entries.iter()
    }

    /// Installs a static local entry; it never ages or moves.
    pub fn add_static(&mut self, now: Instant, mac: MacAddr, port: PortId) {
        let mut e = MacEntry::new(Location::Local(port), 0, now);
        e.is_static = true;
        self.entries.insert(mac, e);
    }

    /// Records a frame from `mac` on local `port`.
    pub fn learn_local(&mut self, now: Instant, mac: MacAddr, port: PortId) -> LocalLearn {
        let policy = self.policy;
        let e = match self.entries.entry(mac) {
            Entry::Vacant(v) => {
                v.insert(MacEntry::new(Location::Local(port), 0, now));
                return LocalLearn::New { seq: 0 };
            }
            Entry::Occupied(o) => o.into_mut(),
        };
        if e.is_static || e.sticky || e.is_frozen() {
            return LocalLearn::Ignored;
        }
        match &e.location {
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
        }
    }

    /// Records a frame from `mac` received from `site`: installs a
    /// data-plane entry when the MAC is unknown, refreshes one that exists.
    /// Entries from advertisements are left to the control plane.
    pub fn learn_remote_frame(&mut self, now: Instant, mac: MacAddr, site: &SiteId) {
        match self.entries.entry(mac) {
            Entry::Vacant(v) => {
                let mut e = MacEntry::new(Location::Remote(site.clone()), 0, now);
                e.data_plane = true;
                v.insert(e);
            }
            Entry::Occupied(mut o) => {
                let e = o.get_mut();
                if e.data_plane {
                    e.location = Location::Remote(site.clone());
                    e.last_seen = now;
                }
            }
        }
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
        let e = match self.entries.entry(mac) {
            Entry::Vacant(v) => {
                let mut e = MacEntry::new(Location::Remote(site.clone()), seq, now);
                e.sticky = sticky;
                v.insert(e);
                return AdvertOutcome::Installed;
            }
            Entry::Occupied(o) => o.into_mut(),
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
        match e.location.clone() {
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
        }
    }

    /// Applies a peer's withdrawal; returns whether the entry was removed.
    pub fn on_withdraw(&mut self, mac: MacAddr, site: &SiteId, seq: u32) -> bool {
        let remove = self.entries.get(&mac).is_some_and(|e| {
            !e.is_frozen() && e.location == Location::Remote(site.clone()) && e.seq <= seq
        });
        if remove {
            self.entries.remove(&mac);
        }
        remove
    }

    /// Removes every entry pointing at `site` except frozen ones; returns
    /// how many were removed.
    pub fn flush_site(&mut self, site: &SiteId) -> usize {
        let before = self.entries.len();
        self.entries
            .retain(|_, e| e.is_frozen() || e.location != Location::Remote(site.clone()));
        before - self.entries.len()
    }

    /// Removes advertised entries of `site` whose MAC is not in `keep`
    /// (after a full resynchronisation from that site).
    pub fn retain_site(&mut self, site: &SiteId, keep: &dyn Fn(&MacAddr) -> bool) -> usize {
        let before = self.entries.len();
        self.entries.retain(|mac, e| {
            e.is_frozen()
                || e.data_plane
                || e.location != Location::Remote(site.clone())
                || keep(mac)
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
        MacTable::new(SiteId::new(site), policy())
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
        t.learn_remote_frame(t0, d, &"b".into());
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
        t.learn_remote_frame(now, M, &"b".into());
        assert_eq!(
            t.on_advert(now, M, &"c".into(), 0, false),
            AdvertOutcome::Installed
        );
        assert_eq!(t.lookup(&M), Some(&Location::Remote("c".into())));
        // Data-plane learning does not override the advertised entry.
        t.learn_remote_frame(now, M, &"b".into());
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
}
