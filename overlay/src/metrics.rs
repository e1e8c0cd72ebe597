//! Prometheus metrics of the overlay (`wanmig_overlay_*`), registered on a
//! registry the caller owns, and the drop reasons they are labelled with.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// Why a frame, datagram or control message was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Frame shorter than its Ethernet header.
    Truncated,
    /// Frame longer than `max_frame_size`.
    Oversized,
    /// Group or zero source MAC, or too many VLAN tags.
    MalformedFrame,
    /// Overlay header truncated, wrong version, unknown flags, bad fragment fields.
    MalformedHeader,
    /// Datagram for a VNI this gateway does not carry.
    UnknownVni,
    /// Frame from a port that is not attached to any segment.
    UnknownPort,
    /// The MAC table points at a site that is not connected.
    PeerDown,
    /// Unknown unicast on a segment with unknown-unicast flooding off.
    UnknownUnicastDisabled,
    /// Flood over the segment's rate limit.
    FloodRateLimited,
    /// Destination is on the port the frame came from.
    SamePort,
    /// Unicast from a peer for a MAC that is not local here.
    NotLocal,
    /// Frame cannot be fragmented into the peer's datagram size.
    Unfragmentable,
    /// Control message claiming to speak for another site.
    ForgedControl,
    /// A peer advertised as static a MAC that is static here too.
    StaticConflict,
    /// A fragment that was already received (network duplication).
    DuplicateFragment,
}

impl DropReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Truncated => "truncated",
            DropReason::Oversized => "oversized",
            DropReason::MalformedFrame => "malformed_frame",
            DropReason::MalformedHeader => "malformed_header",
            DropReason::UnknownVni => "unknown_vni",
            DropReason::UnknownPort => "unknown_port",
            DropReason::PeerDown => "peer_down",
            DropReason::UnknownUnicastDisabled => "unknown_unicast_disabled",
            DropReason::FloodRateLimited => "flood_rate_limited",
            DropReason::SamePort => "same_port",
            DropReason::NotLocal => "not_local",
            DropReason::Unfragmentable => "unfragmentable",
            DropReason::ForgedControl => "forged_control",
            DropReason::StaticConflict => "static_conflict",
            DropReason::DuplicateFragment => "duplicate_fragment",
        }
    }
}

/// Frame and byte counters of one (VNI, peer, direction).
#[derive(Clone)]
pub struct Traffic {
    pub frames: IntCounter,
    pub bytes: IntCounter,
}

impl Traffic {
    pub fn add(&self, bytes: usize) {
        self.frames.inc();
        self.bytes.inc_by(bytes as u64);
    }
}

/// All overlay metrics.
#[derive(Clone)]
pub struct OverlayMetrics {
    pub frames_in: IntCounterVec,
    pub bytes_in: IntCounterVec,
    pub frames_out: IntCounterVec,
    pub bytes_out: IntCounterVec,
    pub floods: IntCounterVec,
    pub arp_suppressed: IntCounterVec,
    pub fragments: IntCounterVec,
    pub reassembled: IntCounter,
    pub reassembly_failures: IntCounterVec,
    pub reassembly_bytes: IntGauge,
    pub drops: IntCounterVec,
    pub mac_table_size: IntGaugeVec,
    pub mac_moves: IntCounterVec,
    pub mac_learning_refused: IntCounterVec,
    pub mac_displaced: IntCounterVec,
    pub frozen_macs: IntGaugeVec,
    pub mss_clamped: IntCounterVec,
    pub control_messages: IntCounterVec,
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    // Names and labels are constants of this module: construction cannot fail.
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition")
}

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition")
}

impl OverlayMetrics {
    /// Metrics not registered anywhere (tests, benchmarks).
    pub fn unregistered() -> Self {
        let vp = &["vni", "peer"];
        OverlayMetrics {
            frames_in: counter_vec(
                "wanmig_overlay_frames_in_total",
                "Frames received, by VNI and peer (\"local\" for local ports).",
                vp,
            ),
            bytes_in: counter_vec(
                "wanmig_overlay_bytes_in_total",
                "Frame bytes received, by VNI and peer.",
                vp,
            ),
            frames_out: counter_vec(
                "wanmig_overlay_frames_out_total",
                "Frames sent, by VNI and peer (\"local\" for local ports).",
                vp,
            ),
            bytes_out: counter_vec(
                "wanmig_overlay_bytes_out_total",
                "Frame bytes sent, by VNI and peer.",
                vp,
            ),
            floods: counter_vec(
                "wanmig_overlay_floods_total",
                "Broadcast/multicast/unknown-unicast frames flooded, by VNI and origin.",
                &["vni", "origin"],
            ),
            arp_suppressed: counter_vec(
                "wanmig_overlay_arp_suppressed_total",
                "ARP requests answered locally instead of crossing the WAN.",
                &["vni"],
            ),
            fragments: counter_vec(
                "wanmig_overlay_fragments_total",
                "Overlay fragments sent (tx) and received (rx).",
                &["direction"],
            ),
            reassembled: IntCounter::new(
                "wanmig_overlay_reassembled_total",
                "Frames reassembled from fragments.",
            )
            .expect("valid metric definition"),
            reassembly_failures: counter_vec(
                "wanmig_overlay_reassembly_failures_total",
                "Partially received frames dropped, by reason: timeout, peer_budget (evicted to keep its peer within reassembly_buffer_per_peer), global_budget (evicted to keep all peers within reassembly_buffer), inconsistent, oversized, too_many_fragments.",
                &["reason"],
            ),
            reassembly_bytes: IntGauge::new(
                "wanmig_overlay_reassembly_bytes",
                "Memory held by partially received frames (buffers, fragment slots, bookkeeping).",
            )
            .expect("valid metric definition"),
            drops: counter_vec(
                "wanmig_overlay_drops_total",
                "Frames, datagrams and control messages dropped, by reason.",
                &["reason"],
            ),
            mac_table_size: gauge_vec(
                "wanmig_overlay_mac_table_size",
                "MAC table entries, by VNI.",
                &["vni"],
            ),
            mac_moves: counter_vec(
                "wanmig_overlay_mac_moves_total",
                "MAC moves between sites, by VNI.",
                &["vni"],
            ),
            mac_learning_refused: counter_vec(
                "wanmig_overlay_mac_learning_refused_total",
                "New MACs not learned because a MAC table limit was reached, by VNI and limit (segment, port, peer).",
                &["vni", "limit"],
            ),
            mac_displaced: counter_vec(
                "wanmig_overlay_mac_displaced_total",
                "Data-plane MAC entries displaced by advertised or locally learned MACs at a limit, by VNI.",
                &["vni"],
            ),
            frozen_macs: gauge_vec(
                "wanmig_overlay_frozen_macs",
                "MACs frozen for flapping, by VNI.",
                &["vni"],
            ),
            mss_clamped: counter_vec(
                "wanmig_overlay_mss_clamped_total",
                "TCP SYNs whose MSS was clamped, by VNI.",
                &["vni"],
            ),
            control_messages: counter_vec(
                "wanmig_overlay_control_messages_total",
                "Control messages, by direction and kind.",
                &["direction", "kind"],
            ),
        }
    }

    /// Creates the metrics and registers them on `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = Self::unregistered();
        registry.register(Box::new(m.frames_in.clone()))?;
        registry.register(Box::new(m.bytes_in.clone()))?;
        registry.register(Box::new(m.frames_out.clone()))?;
        registry.register(Box::new(m.bytes_out.clone()))?;
        registry.register(Box::new(m.floods.clone()))?;
        registry.register(Box::new(m.arp_suppressed.clone()))?;
        registry.register(Box::new(m.fragments.clone()))?;
        registry.register(Box::new(m.reassembled.clone()))?;
        registry.register(Box::new(m.reassembly_failures.clone()))?;
        registry.register(Box::new(m.reassembly_bytes.clone()))?;
        registry.register(Box::new(m.drops.clone()))?;
        registry.register(Box::new(m.mac_table_size.clone()))?;
        registry.register(Box::new(m.mac_moves.clone()))?;
        registry.register(Box::new(m.mac_learning_refused.clone()))?;
        registry.register(Box::new(m.mac_displaced.clone()))?;
        registry.register(Box::new(m.frozen_macs.clone()))?;
        registry.register(Box::new(m.mss_clamped.clone()))?;
        registry.register(Box::new(m.control_messages.clone()))?;
        Ok(m)
    }

    pub fn drop(&self, reason: DropReason) {
        self.drops.with_label_values(&[reason.as_str()]).inc();
    }

    pub fn drops_for(&self, reason: DropReason) -> u64 {
        self.drops.with_label_values(&[reason.as_str()]).get()
    }

    /// Counters for frames into the switch from `peer` (a site name or "local").
    pub fn traffic_in(&self, vni: &str, peer: &str) -> Traffic {
        Traffic {
            frames: self.frames_in.with_label_values(&[vni, peer]),
            bytes: self.bytes_in.with_label_values(&[vni, peer]),
        }
    }

    /// Counters for frames out of the switch to `peer`.
    pub fn traffic_out(&self, vni: &str, peer: &str) -> Traffic {
        Traffic {
            frames: self.frames_out.with_label_values(&[vni, peer]),
            bytes: self.bytes_out.with_label_values(&[vni, peer]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_all_metrics_under_the_overlay_prefix() {
        let reg = Registry::new();
        let m = OverlayMetrics::register(&reg).unwrap();
        m.drop(DropReason::UnknownVni);
        m.traffic_in("5", "local").add(100);
        m.mac_table_size.with_label_values(&["5"]).set(3);
        m.reassembled.inc();
        let names: Vec<String> = reg.gather().iter().map(|f| f.name().to_string()).collect();
        assert!(
            names.iter().all(|n| n.starts_with("wanmig_overlay_")),
            "{names:?}"
        );
        assert!(names.contains(&"wanmig_overlay_drops_total".to_string()));
        assert!(names.contains(&"wanmig_overlay_bytes_in_total".to_string()));
        assert_eq!(m.drops_for(DropReason::UnknownVni), 1);
        // Registering twice on one registry is refused, not silently doubled.
        assert!(OverlayMetrics::register(&reg).is_err());
    }
}
