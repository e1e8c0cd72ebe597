//! The per-gateway switching core (sans-IO): takes frames from local ports,
//! datagrams and control messages from peer sites, peer up/down events and
//! clock readings, and returns [`Action`]s for the I/O layer to carry out.
//!
//! It ties together the MAC table with mobility ([`crate::mactable`]), ARP
//! suppression ([`crate::arp_suppress`]), flood policy ([`crate::flood`]),
//! fragmentation ([`crate::fragment`]) and MSS clamping
//! ([`crate::mss_clamp`]), and keeps the metrics ([`crate::metrics`]).
//! MACs the table's limits keep out are counted and logged at most once
//! per [`LIMIT_LOG_INTERVAL`] per segment, never once per frame.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prometheus::{IntCounter, IntGauge};

use crate::arp_suppress::{self, ArpCache};
use crate::config::{ConfigError, OverlayConfig, SegmentConfig};
use crate::control::{ControlMsg, MacAdvert};
use crate::encap::Header;
use crate::flood::{self, Ingress, TokenBucket};
use crate::fragment::{self, Reassembler, ReassemblyLimits};
use crate::frame::{EthFrame, FrameError};
use crate::ids::{MacAddr, PortId, SiteId, Vni};
use crate::mactable::{AdvertOutcome, Aged, Limit, LocalLearn, Location, MacTable, MobilityPolicy};
use crate::metrics::{DropReason, OverlayMetrics, Traffic};
use crate::mss_clamp;

/// Something the I/O layer must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write `frame` to local port `port`.
    Deliver { port: PortId, frame: Bytes },
    /// Send `datagram` to peer `site` as one QUIC datagram.
    SendDatagram { site: SiteId, datagram: Bytes },
    /// Send `msg` on the reliable control stream to peer `site`.
    SendControl { site: SiteId, msg: ControlMsg },
    /// Report an event to the operator (logs, status API).
    Event(SwitchEvent),
}

/// Operator-relevant events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwitchEvent {
    /// A MAC moved more than the flap limit allows and is frozen.
    MacFrozen { vni: Vni, mac: MacAddr },
    /// A frozen MAC was released (hold expired or operator action).
    MacUnfrozen { vni: Vni, mac: MacAddr },
    /// A MAC moved between sites; `to` is where it lives now.
    MacMoved {
        vni: Vni,
        mac: MacAddr,
        to: Location,
    },
}

/// The actions produced by one input.
pub type Actions = Vec<Action>;

/// Misuse of the switch's management API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SwitchError {
    #[error("no segment with VNI {0} is configured; add it to the overlay config first")]
    UnknownSegment(Vni),
    #[error("{0} is already attached to a segment; detach it first")]
    PortInUse(PortId),
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// A snapshot of one MAC table entry, for status output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MacView {
    pub mac: MacAddr,
    pub location: Location,
    pub seq: u32,
    pub is_static: bool,
    pub frozen: bool,
}

struct PeerTraffic {
    rx: Traffic,
    tx: Traffic,
}

struct Segment {
    cfg: SegmentConfig,
    vni: Vni,
    label: String,
    ports: Vec<PortId>,
    macs: MacTable,
    arp: ArpCache,
    flood_local: TokenBucket,
    flood_remote: TokenBucket,
    local: PeerTraffic,
    peers: HashMap<SiteId, PeerTraffic>,
    size_gauge: IntGauge,
    frozen_gauge: IntGauge,
    /// New MACs kept out, by [`Limit::ALL`] order.
    refused: [IntCounter; 3],
    displaced: IntCounter,
    limit_log: LimitLog,
}

/// How often, at most, a segment logs that its MAC limits keep MACs out.
pub const LIMIT_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Where a MAC the limits kept out was seen.
#[derive(Debug, Clone)]
enum Seen {
    Port(PortId),
    Peer(SiteId),
}

impl std::fmt::Display for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Seen::Port(p) => write!(f, "{p}"),
            Seen::Peer(s) => write!(f, "peer {s}"),
        }
    }
}

/// MACs kept out by the limits since the segment last logged them.
#[derive(Default)]
struct LimitLog {
    pending: [u64; 3],
    last_seen: Option<Seen>,
    last_logged: Option<Instant>,
}

impl Segment {
    /// A freeze holds a MAC at its site even after that site's peer went
    /// down ([`MacTable::flush_site`] keeps it); once the freeze ends, the
    /// MAC goes the way the peer's other MACs went. Otherwise it would
    /// point at a site no frame can reach until something re-learned it.
    fn forget_unfrozen_at_down_sites(
        &mut self,
        unfrozen: &[MacAddr],
        peers: &BTreeMap<SiteId, usize>,
    ) {
        let down: BTreeSet<SiteId> = unfrozen
            .iter()
            .filter_map(|mac| match self.macs.get(mac).map(|e| &e.location) {
                Some(Location::Remote(site)) if !peers.contains_key(site) => Some(site.clone()),
                _ => None,
            })
            .collect();
        for site in down {
            self.macs.flush_site(&site);
        }
    }

    fn peer_traffic(&mut self, metrics: &OverlayMetrics, site: &SiteId) -> &PeerTraffic {
        let label = &self.label;
        self.peers
            .entry(site.clone())
            .or_insert_with(|| PeerTraffic {
                rx: metrics.traffic_in(label, site.as_str()),
                tx: metrics.traffic_out(label, site.as_str()),
            })
    }

    fn update_gauges(&self) {
        self.size_gauge.set(self.macs.len() as i64);
        self.frozen_gauge.set(self.macs.frozen_count() as i64);
    }

    /// Counts a new MAC that `limit` kept out; logs when a log is due.
    fn refused(&mut self, now: Instant, limit: Limit, seen: Seen) {
        let i = limit_index(limit);
        self.refused[i].inc();
        self.limit_log.pending[i] += 1;
        self.limit_log.last_seen = Some(seen);
        self.log_limits(now);
    }

    /// Counts the data-plane entries the latest learning displaced.
    fn count_displaced(&mut self) {
        let n = self.macs.take_displaced();
        if n > 0 {
            self.displaced.inc_by(n);
        }
    }

    /// Logs the MACs kept out since the last log, if any and if the last
    /// log is at least [`LIMIT_LOG_INTERVAL`] old.
    fn log_limits(&mut self, now: Instant) {
        let log = &mut self.limit_log;
        let due = log
            .last_logged
            .is_none_or(|t| now.saturating_duration_since(t) >= LIMIT_LOG_INTERVAL);
        if !due || log.pending.iter().all(|n| *n == 0) {
            return;
        }
        let [segment_full, port_share, peer_share] = log.pending;
        let last = log
            .last_seen
            .take()
            .map(|s| s.to_string())
            .unwrap_or_default();
        tracing::warn!(
            vni = %self.vni,
            segment = %self.cfg.name,
            segment_full,
            port_share,
            peer_share,
            last_from = %last,
            "MAC table limits kept new source MACs out: their frames are still forwarded, frames to them are treated as unknown unicast (flooded under the rate limit); raise max_macs_per_segment/port/peer if these are real hosts"
        );
        log.pending = [0; 3];
        log.last_logged = Some(now);
    }
}

fn limit_index(limit: Limit) -> usize {
    match limit {
        Limit::Segment => 0,
        Limit::Port => 1,
        Limit::Peer => 2,
    }
}

/// Everything but the segments, so segment and context borrow separately.
struct Ctx {
    local_site: SiteId,
    max_frame: usize,
    /// Connected peers and their current maximum datagram size.
    peers: BTreeMap<SiteId, usize>,
    reasm: Reassembler,
    next_frag_id: u32,
    metrics: OverlayMetrics,
}

/// The switching core of one gateway.
pub struct Switch {
    segments: HashMap<Vni, Segment>,
    ports: HashMap<PortId, Vni>,
    ctx: Ctx,
}

impl Switch {
    /// Builds a switch for `local_site` from a validated config.
    pub fn new(
        local_site: SiteId,
        config: &OverlayConfig,
        metrics: OverlayMetrics,
    ) -> Result<Self, SwitchError> {
        config.validate()?;
        let policy = MobilityPolicy {
            ageing: config.mac_ageing,
            flap_moves: config.flap_moves,
            flap_window: config.flap_window,
            freeze_hold: config.freeze_hold,
        };
        let mut segments = HashMap::new();
        for s in &config.segments {
            // validate() checked the range.
            let vni = Vni::new(s.vni).map_err(|e| ConfigError {
                key: format!("segment {:?}.vni", s.name),
                reason: e.to_string(),
            })?;
            let label = vni.to_string();
            segments.insert(
                vni,
                Segment {
                    cfg: s.clone(),
                    vni,
                    ports: Vec::new(),
                    macs: MacTable::new(local_site.clone(), policy, config.mac_limits()),
                    arp: ArpCache::new(config.arp_ageing),
                    flood_local: TokenBucket::new(s.flood_rate_pps, s.flood_burst),
                    flood_remote: TokenBucket::new(s.flood_rate_pps, s.flood_burst),
                    local: PeerTraffic {
                        rx: metrics.traffic_in(&label, "local"),
                        tx: metrics.traffic_out(&label, "local"),
                    },
                    peers: HashMap::new(),
                    size_gauge: metrics.mac_table_size.with_label_values(&[&label]),
                    frozen_gauge: metrics.frozen_macs.with_label_values(&[&label]),
                    refused: Limit::ALL.map(|l| {
                        metrics
                            .mac_learning_refused
                            .with_label_values(&[&label, l.as_str()])
                    }),
                    displaced: metrics.mac_displaced.with_label_values(&[&label]),
                    limit_log: LimitLog::default(),
                    label,
                },
            );
        }
        Ok(Switch {
            segments,
            ports: HashMap::new(),
            ctx: Ctx {
                local_site,
                max_frame: config.max_frame_size,
                peers: BTreeMap::new(),
                reasm: Reassembler::new(ReassemblyLimits {
                    timeout: config.reassembly_timeout,
                    max_buffered: config.reassembly_buffer,
                    max_buffered_per_peer: config.reassembly_buffer_per_peer(),
                    max_frame: config.max_frame_size,
                }),
                next_frag_id: 0,
                metrics,
            },
        })
    }

    pub fn local_site(&self) -> &SiteId {
        &self.ctx.local_site
    }

    pub fn metrics(&self) -> &OverlayMetrics {
        &self.ctx.metrics
    }

    /// The VNI of the segment called `name`.
    pub fn segment_vni(&self, name: &str) -> Option<Vni> {
        self.segments
            .values()
            .find(|s| s.cfg.name == name)
            .map(|s| s.vni)
    }

    /// Attaches local `port` to segment `vni`.
    pub fn add_port(&mut self, port: PortId, vni: Vni) -> Result<(), SwitchError> {
        if self.ports.contains_key(&port) {
            return Err(SwitchError::PortInUse(port));
        }
        let seg = self
            .segments
            .get_mut(&vni)
            .ok_or(SwitchError::UnknownSegment(vni))?;
        seg.ports.push(port);
        self.ports.insert(port, vni);
        Ok(())
    }

    /// Detaches `port`; the MACs learned on it are withdrawn from peers.
    pub fn remove_port(&mut self, port: PortId) -> Actions {
        let mut out = Vec::new();
        let Some(vni) = self.ports.remove(&port) else {
            return out;
        };
        if let Some(seg) = self.segments.get_mut(&vni) {
            seg.ports.retain(|p| *p != port);
            let gone = seg.macs.flush_port(port);
            self.ctx.withdraw(seg, &gone, &mut out);
            seg.update_gauges();
        }
        out
    }

    /// Installs a static MAC on a local port and advertises it.
    pub fn add_static_mac(
        &mut self,
        now: Instant,
        vni: Vni,
        mac: MacAddr,
        port: PortId,
    ) -> Result<Actions, SwitchError> {
        let seg = self
            .segments
            .get_mut(&vni)
            .ok_or(SwitchError::UnknownSegment(vni))?;
        seg.macs.add_static(now, mac, port);
        seg.update_gauges();
        let mut out = Vec::new();
        self.ctx.advertise(seg, mac, 0, &mut out);
        Ok(out)
    }

    /// Releases a frozen MAC; returns whether it was frozen.
    pub fn unfreeze_mac(&mut self, vni: Vni, mac: MacAddr) -> bool {
        let Some(seg) = self.segments.get_mut(&vni) else {
            return false;
        };
        let was = seg.macs.unfreeze(&mac);
        if was {
            tracing::info!(vni = %vni, mac = %mac, "MAC unfrozen by operator");
            seg.forget_unfrozen_at_down_sites(&[mac], &self.ctx.peers);
            seg.update_gauges();
        }
        was
    }

    /// A snapshot of the MAC table of `vni`, sorted by MAC.
    pub fn mac_table(&self, vni: Vni) -> Vec<MacView> {
        let mut v: Vec<MacView> = self
            .segments
            .get(&vni)
            .map(|s| {
                s.macs
                    .iter()
                    .map(|(m, e)| MacView {
                        mac: *m,
                        location: e.location.clone(),
                        seq: e.seq,
                        is_static: e.is_static,
                        frozen: e.is_frozen(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort_by_key(|e| e.mac);
        v
    }

    /// Where `mac` of segment `vni` lives.
    pub fn lookup(&self, vni: Vni, mac: MacAddr) -> Option<Location> {
        self.segments.get(&vni)?.macs.lookup(&mac).cloned()
    }

    /// A frame arrived on local `port`.
    pub fn on_local_frame(&mut self, now: Instant, port: PortId, frame: Bytes) -> Actions {
        let mut out = Vec::new();
        let ctx = &mut self.ctx;
        let Some(seg) = self.ports.get(&port).and_then(|v| self.segments.get_mut(v)) else {
            ctx.metrics.drop(DropReason::UnknownPort);
            return out;
        };
        let eth = match EthFrame::parse(&frame, ctx.max_frame) {
            Ok(f) => f,
            Err(e) => {
                ctx.metrics.drop(frame_drop_reason(&e));
                return out;
            }
        };
        seg.local.rx.add(frame.len());
        let (dst, src, vlan, l3) = (eth.dst, eth.src, eth.vlan, eth.payload_offset);
        let is_ipv4 = eth.ethertype == crate::frame::ETHERTYPE_IPV4;
        let arp = eth.arp();

        // Learn IP binding, then the MAC; advertise what changed.
        let ip_before = seg.arp.ip_of(&src);
        if let Some(a) = &arp {
            if a.sender_mac == src {
                seg.arp.learn_from(now, a);
            }
        }
        let ip_changed = seg.arp.ip_of(&src) != ip_before;
        let mut moved_here = false;
        match seg.macs.learn_local(now, src, port) {
            LocalLearn::New { seq } => ctx.advertise(seg, src, seq, &mut out),
            LocalLearn::MovedHere { seq, from } => {
                moved_here = true;
                tracing::info!(vni = %seg.vni, mac = %src, from = %from, seq, "MAC moved here");
                ctx.metrics.mac_moves.with_label_values(&[&seg.label]).inc();
                out.push(Action::Event(SwitchEvent::MacMoved {
                    vni: seg.vni,
                    mac: src,
                    to: Location::Local(port),
                }));
                ctx.advertise(seg, src, seq, &mut out);
            }
            LocalLearn::Froze => ctx.froze(seg, src, &mut out),
            LocalLearn::Refreshed | LocalLearn::PortMove => {
                if ip_changed {
                    let seq = seg.macs.get(&src).map_or(0, |e| e.seq);
                    ctx.advertise(seg, src, seq, &mut out);
                }
            }
            LocalLearn::Ignored => {}
            LocalLearn::Refused(limit) => seg.refused(now, limit, Seen::Port(port)),
        }
        seg.count_displaced();
        seg.size_gauge.set(seg.macs.len() as i64);

        // ARP suppression.
        let mut to_wan = true;
        if let (true, Some(a)) = (seg.cfg.arp_suppression, &arp) {
            if arp_suppress::is_resolvable_request(a) {
                if let Some(owner) = seg.arp.lookup(now, a.target_ip) {
                    match seg.macs.get(&owner) {
                        Some(e) if matches!(e.location, Location::Remote(_)) && !e.is_frozen() => {
                            let reply = arp_suppress::reply_frame(a, owner, vlan);
                            ctx.metrics
                                .arp_suppressed
                                .with_label_values(&[&seg.label])
                                .inc();
                            seg.local.tx.add(reply.len());
                            out.push(Action::Deliver {
                                port,
                                frame: Bytes::from(reply),
                            });
                            return out;
                        }
                        // The owner is here: its answer never needs the WAN.
                        Some(e) if matches!(e.location, Location::Local(_)) => to_wan = false,
                        _ => {}
                    }
                }
            }
        }

        // MSS clamping: only SYNs with a large MSS are copied and rewritten.
        let frame = match seg.cfg.mss_clamp {
            Some(mss) if is_ipv4 && mss_clamp::needs_clamp(&frame, l3, mss) => {
                let mut copy = frame.to_vec();
                mss_clamp::clamp(&mut copy, l3, mss);
                ctx.metrics
                    .mss_clamped
                    .with_label_values(&[&seg.label])
                    .inc();
                Bytes::from(copy)
            }
            _ => frame,
        };

        if dst.is_group() {
            ctx.flood(
                seg,
                now,
                Ingress::Local(port),
                &frame,
                to_wan,
                moved_here,
                &mut out,
            );
            return out;
        }
        match seg.macs.lookup(&dst).cloned() {
            Some(Location::Local(p)) if p == port => ctx.metrics.drop(DropReason::SamePort),
            Some(Location::Local(p)) => {
                seg.local.tx.add(frame.len());
                out.push(Action::Deliver { port: p, frame });
            }
            Some(Location::Remote(site)) => ctx.send_to_site(seg, &site, &frame, false, &mut out),
            None if seg.cfg.unknown_unicast_flood => ctx.flood(
                seg,
                now,
                Ingress::Local(port),
                &frame,
                true,
                false,
                &mut out,
            ),
            None => ctx.metrics.drop(DropReason::UnknownUnicastDisabled),
        }
        out
    }

    /// A datagram arrived from peer `from`.
    pub fn on_datagram(&mut self, now: Instant, from: &SiteId, datagram: Bytes) -> Actions {
        let mut out = Vec::new();
        let ctx = &mut self.ctx;
        let (hdr, off) = match Header::decode(&datagram) {
            Ok(h) => h,
            Err(e) => {
                tracing::debug!(peer = %from, error = %e, "dropping overlay datagram");
                ctx.metrics.drop(DropReason::MalformedHeader);
                return out;
            }
        };
        let Some(seg) = self.segments.get_mut(&hdr.vni) else {
            ctx.metrics.drop(DropReason::UnknownVni);
            return out;
        };
        let frame = match hdr.fragment {
            Some(fi) => {
                ctx.metrics.fragments.with_label_values(&["rx"]).inc();
                let done = ctx.reasm.push(now, from, hdr.vni, fi, &datagram[off..]);
                ctx.sync_reassembly_counts();
                match done {
                    Some(f) => f,
                    None => return out,
                }
            }
            None => datagram.slice(off..),
        };
        let eth = match EthFrame::parse(&frame, ctx.max_frame) {
            Ok(f) => f,
            Err(e) => {
                ctx.metrics.drop(frame_drop_reason(&e));
                return out;
            }
        };
        seg.peer_traffic(&ctx.metrics, from).rx.add(frame.len());
        let arp = eth.arp();
        if let Some(a) = &arp {
            if a.sender_mac == eth.src {
                seg.arp.learn_from(now, a);
            }
        }
        // Announcements (GARP/RARP) were already rate-limited or were moves
        // at the sending site; they must reach local switches after a move.
        let announcement = arp.is_some_and(|a| a.is_announcement());
        if let Err(limit) = seg.macs.learn_remote_frame(now, eth.src, from) {
            seg.refused(now, limit, Seen::Peer(from.clone()));
        }
        seg.size_gauge.set(seg.macs.len() as i64);
        let dst = eth.dst;
        if dst.is_group() {
            ctx.flood(
                seg,
                now,
                Ingress::Remote(from),
                &frame,
                false,
                announcement,
                &mut out,
            );
            return out;
        }
        match seg.macs.lookup(&dst).cloned() {
            Some(Location::Local(p)) => {
                seg.local.tx.add(frame.len());
                out.push(Action::Deliver { port: p, frame });
            }
            Some(Location::Remote(_)) => ctx.metrics.drop(DropReason::NotLocal),
            None if seg.cfg.unknown_unicast_flood => ctx.flood(
                seg,
                now,
                Ingress::Remote(from),
                &frame,
                false,
                false,
                &mut out,
            ),
            None => ctx.metrics.drop(DropReason::UnknownUnicastDisabled),
        }
        out
    }

    /// A control message arrived from peer `from`.
    pub fn on_control(&mut self, now: Instant, from: &SiteId, msg: ControlMsg) -> Actions {
        let mut out = Vec::new();
        let ctx = &mut self.ctx;
        if msg.site() != from {
            tracing::warn!(peer = %from, claims = %msg.site(), "control message speaks for another site; dropped");
            ctx.metrics.drop(DropReason::ForgedControl);
            return out;
        }
        ctx.metrics
            .control_messages
            .with_label_values(&["rx", msg.kind()])
            .inc();
        match msg {
            ControlMsg::MacAdvert(a) => match self.segments.get_mut(&a.vni) {
                Some(seg) => ctx.apply_advert(seg, now, from, &a, &mut out),
                None => ctx.metrics.drop(DropReason::UnknownVni),
            },
            ControlMsg::MacWithdraw { vni, mac, seq, .. } => match self.segments.get_mut(&vni) {
                Some(seg) => {
                    seg.macs.on_withdraw(mac, from, seq);
                    seg.update_gauges();
                }
                None => ctx.metrics.drop(DropReason::UnknownVni),
            },
            ControlMsg::FullSync { entries, .. } => {
                let listed: HashSet<(Vni, MacAddr)> =
                    entries.iter().map(|a| (a.vni, a.mac)).collect();
                for seg in self.segments.values_mut() {
                    let vni = seg.vni;
                    seg.macs.retain_site(from, &|m| listed.contains(&(vni, *m)));
                }
                for a in &entries {
                    if a.site != *from {
                        ctx.metrics.drop(DropReason::ForgedControl);
                        continue;
                    }
                    match self.segments.get_mut(&a.vni) {
                        Some(seg) => ctx.apply_advert(seg, now, from, a, &mut out),
                        None => ctx.metrics.drop(DropReason::UnknownVni),
                    }
                }
                for seg in self.segments.values() {
                    seg.update_gauges();
                }
            }
        }
        out
    }

    /// Peer `site` (re)connected; its datagrams hold at most
    /// `max_datagram_size` bytes. Sends it our full table.
    pub fn on_peer_up(&mut self, _now: Instant, site: SiteId, max_datagram_size: usize) -> Actions {
        tracing::info!(peer = %site, max_datagram_size, "overlay peer up");
        self.ctx.peers.insert(site.clone(), max_datagram_size);
        let mut entries = Vec::new();
        let mut segs: Vec<&Segment> = self.segments.values().collect();
        segs.sort_by_key(|s| s.vni);
        for seg in segs {
            let mut macs: Vec<_> = seg
                .macs
                .iter()
                .filter(|(_, e)| matches!(e.location, Location::Local(_)))
                .map(|(m, e)| (*m, e.seq, e.is_static))
                .collect();
            macs.sort();
            for (mac, seq, sticky) in macs {
                entries.push(MacAdvert {
                    vni: seg.vni,
                    mac,
                    site: self.ctx.local_site.clone(),
                    seq,
                    ip: seg.arp.ip_of(&mac),
                    sticky,
                });
            }
        }
        let msg = ControlMsg::FullSync {
            site: self.ctx.local_site.clone(),
            entries,
        };
        self.ctx.count_tx(&msg);
        vec![Action::SendControl { site, msg }]
    }

    /// The path to `site` now carries datagrams of at most `size` bytes.
    pub fn set_max_datagram_size(&mut self, site: &SiteId, size: usize) {
        if let Some(s) = self.ctx.peers.get_mut(site) {
            *s = size;
        }
    }

    /// Peer `site` disconnected: forget its MACs and partial frames.
    pub fn on_peer_down(&mut self, _now: Instant, site: &SiteId) -> Actions {
        tracing::info!(peer = %site, "overlay peer down");
        self.ctx.peers.remove(site);
        self.ctx.reasm.forget_site(site);
        for seg in self.segments.values_mut() {
            seg.macs.flush_site(site);
            seg.update_gauges();
        }
        Vec::new()
    }

    /// Connected peers.
    pub fn peers(&self) -> impl Iterator<Item = &SiteId> {
        self.ctx.peers.keys()
    }

    /// Runs ageing, reassembly timeouts and freeze holds, and logs MACs the
    /// limits kept out since the last log when it is due.
    pub fn poll_timers(&mut self, now: Instant) -> Actions {
        let mut out = Vec::new();
        let ctx = &mut self.ctx;
        ctx.reasm.expire(now);
        ctx.sync_reassembly_counts();
        for seg in self.segments.values_mut() {
            let (aged, unfrozen) = seg.macs.expire(now);
            let local: Vec<Aged> = aged.into_iter().filter(|a| a.was_local).collect();
            ctx.withdraw(seg, &local, &mut out);
            seg.forget_unfrozen_at_down_sites(&unfrozen, &ctx.peers);
            for mac in unfrozen {
                tracing::info!(vni = %seg.vni, mac = %mac, "MAC freeze hold expired");
                out.push(Action::Event(SwitchEvent::MacUnfrozen {
                    vni: seg.vni,
                    mac,
                }));
            }
            seg.arp.expire(now);
            seg.log_limits(now);
            seg.update_gauges();
        }
        out
    }

    /// When [`Switch::poll_timers`] next has work.
    pub fn next_timeout(&self) -> Option<Instant> {
        self.segments
            .values()
            .filter_map(|s| s.macs.next_deadline())
            .chain(self.ctx.reasm.next_deadline())
            .min()
    }
}

fn frame_drop_reason(e: &FrameError) -> DropReason {
    match e {
        FrameError::Truncated { .. } => DropReason::Truncated,
        FrameError::Oversized { .. } => DropReason::Oversized,
        FrameError::BadSource(_) | FrameError::TooManyTags => DropReason::MalformedFrame,
    }
}

impl Ctx {
    fn count_tx(&self, msg: &ControlMsg) {
        self.metrics
            .control_messages
            .with_label_values(&["tx", msg.kind()])
            .inc();
    }

    fn send_control_all(&self, msg: ControlMsg, out: &mut Actions) {
        for site in self.peers.keys() {
            self.count_tx(&msg);
            out.push(Action::SendControl {
                site: site.clone(),
                msg: msg.clone(),
            });
        }
    }

    fn advert(&self, seg: &Segment, mac: MacAddr, seq: u32) -> ControlMsg {
        ControlMsg::MacAdvert(MacAdvert {
            vni: seg.vni,
            mac,
            site: self.local_site.clone(),
            seq,
            ip: seg.arp.ip_of(&mac),
            sticky: seg.macs.get(&mac).is_some_and(|e| e.is_static),
        })
    }

    fn advertise(&self, seg: &Segment, mac: MacAddr, seq: u32, out: &mut Actions) {
        self.send_control_all(self.advert(seg, mac, seq), out);
    }

    fn withdraw(&self, seg: &Segment, gone: &[Aged], out: &mut Actions) {
        for g in gone {
            self.send_control_all(
                ControlMsg::MacWithdraw {
                    vni: seg.vni,
                    mac: g.mac,
                    site: self.local_site.clone(),
                    seq: g.seq,
                },
                out,
            );
        }
    }

    fn froze(&self, seg: &Segment, mac: MacAddr, out: &mut Actions) {
        tracing::warn!(vni = %seg.vni, mac = %mac, "MAC is flapping between sites; frozen");
        seg.frozen_gauge.set(seg.macs.frozen_count() as i64);
        out.push(Action::Event(SwitchEvent::MacFrozen { vni: seg.vni, mac }));
    }

    fn apply_advert(
        &mut self,
        seg: &mut Segment,
        now: Instant,
        from: &SiteId,
        a: &MacAdvert,
        out: &mut Actions,
    ) {
        if let Some(ip) = a.ip {
            seg.arp.learn(now, ip, a.mac);
        }
        let moved = match seg.macs.on_advert(now, a.mac, from, a.seq, a.sticky) {
            AdvertOutcome::Installed | AdvertOutcome::Ignored => false,
            AdvertOutcome::Refused(limit) => {
                seg.refused(now, limit, Seen::Peer(from.clone()));
                false
            }
            AdvertOutcome::StaticConflict => {
                tracing::warn!(vni = %seg.vni, mac = %a.mac, peer = %from, "MAC is configured static at two sites; keeping ours");
                self.metrics.drop(DropReason::StaticConflict);
                false
            }
            AdvertOutcome::MovedAway { from: port } => {
                tracing::info!(vni = %seg.vni, mac = %a.mac, %port, to = %from, seq = a.seq, "MAC moved away");
                true
            }
            AdvertOutcome::MovedRemote { .. } => true,
            AdvertOutcome::LocalWins { seq } => {
                let msg = self.advert(seg, a.mac, seq);
                self.count_tx(&msg);
                out.push(Action::SendControl {
                    site: from.clone(),
                    msg,
                });
                false
            }
            AdvertOutcome::Froze => {
                self.froze(seg, a.mac, out);
                false
            }
        };
        if moved {
            self.metrics
                .mac_moves
                .with_label_values(&[&seg.label])
                .inc();
            out.push(Action::Event(SwitchEvent::MacMoved {
                vni: seg.vni,
                mac: a.mac,
                to: Location::Remote(from.clone()),
            }));
        }
        seg.count_displaced();
        seg.size_gauge.set(seg.macs.len() as i64);
    }

    fn sync_reassembly_counts(&mut self) {
        self.metrics
            .reassembly_bytes
            .set(self.reasm.buffered_bytes() as i64);
        let c = self.reasm.take_counts();
        if c.completed > 0 {
            self.metrics.reassembled.inc_by(c.completed);
        }
        if c.duplicates > 0 {
            self.metrics
                .drops
                .with_label_values(&[DropReason::DuplicateFragment.as_str()])
                .inc_by(c.duplicates);
        }
        for (reason, n) in [
            ("timeout", c.timeouts),
            ("peer_budget", c.peer_budget),
            ("global_budget", c.global_budget),
            ("inconsistent", c.inconsistent),
            ("oversized", c.oversized),
            ("too_many_fragments", c.too_many_fragments),
        ] {
            if n > 0 {
                self.metrics
                    .reassembly_failures
                    .with_label_values(&[reason])
                    .inc_by(n);
            }
        }
    }

    fn send_to_site(
        &mut self,
        seg: &mut Segment,
        site: &SiteId,
        frame: &Bytes,
        flooded: bool,
        out: &mut Actions,
    ) {
        let Some(&mds) = self.peers.get(site) else {
            self.metrics.drop(DropReason::PeerDown);
            return;
        };
        let id = self.next_frag_id;
        match fragment::fragment(seg.vni, flooded, frame, mds, id) {
            Ok(datagrams) => {
                if datagrams.len() > 1 {
                    self.next_frag_id = self.next_frag_id.wrapping_add(1);
                    self.metrics
                        .fragments
                        .with_label_values(&["tx"])
                        .inc_by(datagrams.len() as u64);
                }
                seg.peer_traffic(&self.metrics, site).tx.add(frame.len());
                out.extend(datagrams.into_iter().map(|datagram| Action::SendDatagram {
                    site: site.clone(),
                    datagram,
                }));
            }
            Err(e) => {
                tracing::debug!(peer = %site, error = %e, "cannot send frame");
                self.metrics.drop(DropReason::Unfragmentable);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn flood(
        &mut self,
        seg: &mut Segment,
        now: Instant,
        ingress: Ingress<'_>,
        frame: &Bytes,
        to_wan: bool,
        bypass_limit: bool,
        out: &mut Actions,
    ) {
        let (bucket, origin) = match ingress {
            Ingress::Local(_) => (&mut seg.flood_local, "local"),
            Ingress::Remote(_) => (&mut seg.flood_remote, "remote"),
        };
        if !bypass_limit && !bucket.try_take(now) {
            self.metrics.drop(DropReason::FloodRateLimited);
            return;
        }
        self.metrics
            .floods
            .with_label_values(&[&seg.label, origin])
            .inc();
        let t = flood::targets(ingress, &seg.ports, self.peers.keys(), to_wan);
        for port in t.ports {
            seg.local.tx.add(frame.len());
            out.push(Action::Deliver {
                port,
                frame: frame.clone(),
            });
        }
        for site in &t.sites {
            self.send_to_site(seg, site, frame, true, out);
        }
    }
}
