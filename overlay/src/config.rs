//! Overlay configuration: segments (name, VNI, flooding, MSS clamp, ARP
//! suppression) and switch-wide timers and limits (MAC table sizes,
//! reassembly memory, frame size), deserialisable from the gateway's TOML
//! and validated with errors that name the bad key.

use std::collections::HashSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::fragment;
use crate::ids::Vni;
use crate::mactable::MacLimits;

/// One stretched L2 segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentConfig {
    /// Operator-facing name, unique among segments.
    pub name: String,
    /// 24-bit segment id carried in every overlay datagram.
    pub vni: u32,
    /// Flooded (broadcast/multicast/unknown-unicast) frames per second per
    /// direction; 0 disables the limit.
    #[serde(default = "default_flood_rate")]
    pub flood_rate_pps: u32,
    /// Flooded frames that may pass in a burst above the rate.
    #[serde(default = "default_flood_burst")]
    pub flood_burst: u32,
    /// Flood frames to unknown unicast MACs (off: drop them, counted).
    #[serde(default = "yes")]
    pub unknown_unicast_flood: bool,
    /// Clamp the MSS of TCP SYNs crossing this segment to this value.
    #[serde(default)]
    pub mss_clamp: Option<u16>,
    /// Answer ARP requests for known remote IPs locally.
    #[serde(default = "yes")]
    pub arp_suppression: bool,
}

impl SegmentConfig {
    /// A segment with default policies.
    pub fn new(name: &str, vni: u32) -> Self {
        SegmentConfig {
            name: name.into(),
            vni,
            flood_rate_pps: default_flood_rate(),
            flood_burst: default_flood_burst(),
            unknown_unicast_flood: true,
            mss_clamp: None,
            arp_suppression: true,
        }
    }
}

/// Switch-wide overlay settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverlayConfig {
    #[serde(default, rename = "segment")]
    pub segments: Vec<SegmentConfig>,
    /// Idle time after which a learned MAC is forgotten.
    #[serde(default = "default_ageing", with = "humantime_serde")]
    pub mac_ageing: Duration,
    /// Idle time after which an IP→MAC binding is forgotten.
    #[serde(default = "default_ageing", with = "humantime_serde")]
    pub arp_ageing: Duration,
    /// A MAC moving more than this many times within `flap_window` is frozen.
    #[serde(default = "default_flap_moves")]
    pub flap_moves: u32,
    #[serde(default = "default_flap_window", with = "humantime_serde")]
    pub flap_window: Duration,
    /// How long a frozen MAC stays frozen; absent: until an operator unfreezes it.
    #[serde(default, with = "humantime_serde")]
    pub freeze_hold: Option<Duration>,
    /// A partially received fragmented frame is dropped after this long.
    #[serde(default = "default_reassembly_timeout", with = "humantime_serde")]
    pub reassembly_timeout: Duration,
    /// Memory (bytes) held by partially received frames, all peers
    /// together: buffers, fragment slots and bookkeeping.
    #[serde(default = "default_reassembly_buffer")]
    pub reassembly_buffer: usize,
    /// Memory (bytes) partially received frames from one peer may hold;
    /// absent: a quarter of `reassembly_buffer`, and at least what one
    /// maximum-size frame needs.
    #[serde(default)]
    pub reassembly_buffer_per_peer: Option<usize>,
    /// Largest Ethernet frame (without FCS) accepted from ports or peers.
    #[serde(default = "default_max_frame")]
    pub max_frame_size: usize,
    /// Learned MACs each segment's table holds (static MACs not counted).
    #[serde(default = "default_max_macs_per_segment")]
    pub max_macs_per_segment: usize,
    /// Learned MACs one local port may hold in a segment's table.
    #[serde(default = "default_max_macs_per_port")]
    pub max_macs_per_port: usize,
    /// Learned MACs one peer site may hold in a segment's table.
    #[serde(default = "default_max_macs_per_peer")]
    pub max_macs_per_peer: usize,
}

impl Default for OverlayConfig {
    fn default() -> Self {
        OverlayConfig {
            segments: Vec::new(),
            mac_ageing: default_ageing(),
            arp_ageing: default_ageing(),
            flap_moves: default_flap_moves(),
            flap_window: default_flap_window(),
            freeze_hold: None,
            reassembly_timeout: default_reassembly_timeout(),
            reassembly_buffer: default_reassembly_buffer(),
            reassembly_buffer_per_peer: None,
            max_frame_size: default_max_frame(),
            max_macs_per_segment: default_max_macs_per_segment(),
            max_macs_per_port: default_max_macs_per_port(),
            max_macs_per_peer: default_max_macs_per_peer(),
        }
    }
}

/// A configuration value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid overlay setting `{key}`: {reason}")]
pub struct ConfigError {
    /// Path of the bad key, e.g. `segment[1].vni`.
    pub key: String,
    pub reason: String,
}

fn bad(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        reason: reason.into(),
    }
}

impl OverlayConfig {
    /// Checks every value; the error names the first bad key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut names = HashSet::new();
        let mut vnis = HashSet::new();
        for (i, s) in self.segments.iter().enumerate() {
            let k = |f: &str| format!("segment[{i}].{f}");
            if s.name.trim().is_empty() {
                return Err(bad(k("name"), "must not be empty"));
            }
            if !names.insert(s.name.as_str()) {
                return Err(bad(
                    k("name"),
                    format!("segment name {:?} is used twice", s.name),
                ));
            }
            if let Err(e) = Vni::new(s.vni) {
                return Err(bad(k("vni"), e.to_string()));
            }
            if !vnis.insert(s.vni) {
                return Err(bad(
                    k("vni"),
                    format!("VNI {} is used by two segments", s.vni),
                ));
            }
            if s.flood_rate_pps > 0 && s.flood_burst == 0 {
                return Err(bad(
                    k("flood_burst"),
                    "must be at least 1 when flood_rate_pps is set (or set flood_rate_pps = 0 for no limit)",
                ));
            }
            if let Some(m) = s.mss_clamp {
                if !(536..=9000).contains(&m) {
                    return Err(bad(k("mss_clamp"), format!("{m} is outside 536..=9000")));
                }
            }
        }
        for (key, d) in [
            ("mac_ageing", self.mac_ageing),
            ("arp_ageing", self.arp_ageing),
            ("flap_window", self.flap_window),
            ("reassembly_timeout", self.reassembly_timeout),
        ] {
            if d.is_zero() {
                return Err(bad(key, "must be longer than zero"));
            }
        }
        if self.flap_moves == 0 {
            return Err(bad("flap_moves", "must be at least 1"));
        }
        if self.freeze_hold.is_some_and(|d| d.is_zero()) {
            return Err(bad(
                "freeze_hold",
                "must be longer than zero, or omitted to freeze until unfrozen",
            ));
        }
        if !(64..=65535).contains(&self.max_frame_size) {
            return Err(bad(
                "max_frame_size",
                format!("{} is outside 64..=65535", self.max_frame_size),
            ));
        }
        let one_frame = fragment::max_frame_charge(self.max_frame_size);
        if !(one_frame..=MAX_REASSEMBLY_BUFFER).contains(&self.reassembly_buffer) {
            return Err(bad(
                "reassembly_buffer",
                format!(
                    "{} is outside {one_frame}..={MAX_REASSEMBLY_BUFFER}: it must hold one maximum-size frame with its bookkeeping, and at most 1 GiB",
                    self.reassembly_buffer
                ),
            ));
        }
        if let Some(per_peer) = self.reassembly_buffer_per_peer {
            if !(one_frame..=self.reassembly_buffer).contains(&per_peer) {
                return Err(bad(
                    "reassembly_buffer_per_peer",
                    format!(
                        "{per_peer} is outside {one_frame}..={} (one maximum-size frame with its bookkeeping, up to reassembly_buffer)",
                        self.reassembly_buffer
                    ),
                ));
            }
        }
        if !(1..=MAX_MACS_PER_SEGMENT).contains(&self.max_macs_per_segment) {
            return Err(bad(
                "max_macs_per_segment",
                format!(
                    "{} is outside 1..={MAX_MACS_PER_SEGMENT}",
                    self.max_macs_per_segment
                ),
            ));
        }
        for (key, v) in [
            ("max_macs_per_port", self.max_macs_per_port),
            ("max_macs_per_peer", self.max_macs_per_peer),
        ] {
            if !(1..=self.max_macs_per_segment).contains(&v) {
                return Err(bad(
                    key,
                    format!(
                        "{v} is outside 1..={} (at least 1, at most max_macs_per_segment)",
                        self.max_macs_per_segment
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The MAC table limits of each segment.
    pub fn mac_limits(&self) -> MacLimits {
        MacLimits {
            per_segment: self.max_macs_per_segment,
            per_port: self.max_macs_per_port,
            per_peer: self.max_macs_per_peer,
        }
    }

    /// Memory partially received frames from one peer may hold.
    pub fn reassembly_buffer_per_peer(&self) -> usize {
        self.reassembly_buffer_per_peer.unwrap_or_else(|| {
            (self.reassembly_buffer / 4)
                .max(fragment::max_frame_charge(self.max_frame_size))
                .min(self.reassembly_buffer)
        })
    }
}

/// Upper bound of `max_macs_per_segment`: a table entry costs about 200
/// bytes, so a million learned MACs is some 200 MB per segment.
pub const MAX_MACS_PER_SEGMENT: usize = 1 << 20;

/// Upper bound of `reassembly_buffer`. Partial frames live from their first
/// fragment to their last, a round trip's jitter, or until
/// `reassembly_timeout` when a fragment is lost: even a 10 Gbit/s path
/// losing 1% of its fragmented 9 KiB frames keeps about 25 MB in partial
/// frames at the default 2 s timeout. A larger value is a typo.
pub const MAX_REASSEMBLY_BUFFER: usize = 1 << 30;

fn yes() -> bool {
    true
}
fn default_flood_rate() -> u32 {
    1000
}
fn default_flood_burst() -> u32 {
    200
}
fn default_ageing() -> Duration {
    Duration::from_secs(300)
}
fn default_flap_moves() -> u32 {
    5
}
fn default_flap_window() -> Duration {
    Duration::from_secs(180)
}
fn default_reassembly_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_reassembly_buffer() -> usize {
    4 << 20
}
fn default_max_frame() -> usize {
    9216
}
// A few thousand hosts per stretched segment; one port (a VM, or a TAP on a
// bridge) a quarter of that, one peer site half, so neither can take the
// table alone.
fn default_max_macs_per_segment() -> usize {
    4096
}
fn default_max_macs_per_port() -> usize {
    1024
}
fn default_max_macs_per_peer() -> usize {
    2048
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_toml_with_defaults() {
        let c: OverlayConfig = toml::from_str(
            r#"
            mac_ageing = "10m"
            freeze_hold = "1h"
            [[segment]]
            name = "prod"
            vni = 5001
            mss_clamp = 1360
            [[segment]]
            name = "lab"
            vni = 5002
            unknown_unicast_flood = false
            arp_suppression = false
            flood_rate_pps = 0
            "#,
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.mac_ageing, Duration::from_secs(600));
        assert_eq!(c.freeze_hold, Some(Duration::from_secs(3600)));
        assert_eq!(c.flap_moves, 5);
        assert_eq!(c.flap_window, Duration::from_secs(180));
        assert_eq!(c.segments[0].mss_clamp, Some(1360));
        assert!(c.segments[0].arp_suppression);
        assert!(!c.segments[1].unknown_unicast_flood);
    }

    #[test]
    fn validation_names_the_bad_key() {
        let mut c = OverlayConfig {
            segments: vec![SegmentConfig::new("a", 1), SegmentConfig::new("b", 1)],
            ..Default::default()
        };
        assert_eq!(c.validate().unwrap_err().key, "segment[1].vni");
        c.segments[1].vni = 1 << 24;
        assert_eq!(c.validate().unwrap_err().key, "segment[1].vni");
        c.segments[1].vni = 2;
        c.segments[1].name = "a".into();
        assert_eq!(c.validate().unwrap_err().key, "segment[1].name");
        c.segments[1].name = "b".into();
        c.segments[0].mss_clamp = Some(100);
        assert_eq!(c.validate().unwrap_err().key, "segment[0].mss_clamp");
        c.segments[0].mss_clamp = None;
        c.mac_ageing = Duration::ZERO;
        let e = c.validate().unwrap_err();
        assert_eq!(e.key, "mac_ageing");
        assert!(e.to_string().contains("mac_ageing"));
    }

    #[test]
    fn reassembly_buffer_and_max_frame_size_have_bounds_named_in_errors() {
        for huge in [1usize << 40, usize::MAX] {
            let c = OverlayConfig {
                reassembly_buffer: huge,
                ..Default::default()
            };
            let e = c.validate().unwrap_err();
            assert_eq!(e.key, "reassembly_buffer", "{e}");
            assert!(e.to_string().contains("reassembly_buffer"), "{e}");
        }
        for bad in [10, 1 << 20] {
            let c = OverlayConfig {
                max_frame_size: bad,
                ..Default::default()
            };
            assert_eq!(c.validate().unwrap_err().key, "max_frame_size");
        }
        let c: OverlayConfig = toml::from_str("reassembly_buffer = 1099511627776").unwrap();
        assert_eq!(c.validate().unwrap_err().key, "reassembly_buffer");
        // Too small for one maximum-size frame with its bookkeeping.
        let c = OverlayConfig {
            reassembly_buffer: 9216,
            ..Default::default()
        };
        assert_eq!(c.validate().unwrap_err().key, "reassembly_buffer");
    }

    #[test]
    fn per_peer_reassembly_budget_defaults_to_a_quarter_and_is_bounded() {
        let c = OverlayConfig::default();
        assert_eq!(c.reassembly_buffer_per_peer(), 1 << 20);
        let c: OverlayConfig =
            toml::from_str("reassembly_buffer = 65536\nreassembly_buffer_per_peer = 20000")
                .unwrap();
        c.validate().unwrap();
        assert_eq!(c.reassembly_buffer_per_peer(), 20000);
        // A small switch-wide budget still leaves a peer one whole frame.
        let c = OverlayConfig {
            reassembly_buffer: 12_000,
            ..Default::default()
        };
        c.validate().unwrap();
        assert!(c.reassembly_buffer_per_peer() >= crate::fragment::max_frame_charge(9216));
        for bad in [100, 1 << 30] {
            let c = OverlayConfig {
                reassembly_buffer_per_peer: Some(bad),
                ..Default::default()
            };
            let e = c.validate().unwrap_err();
            assert_eq!(e.key, "reassembly_buffer_per_peer", "{e}");
        }
    }

    #[test]
    fn mac_table_limits_parse_with_defaults_and_are_validated() {
        let d = OverlayConfig::default();
        assert_eq!(
            (
                d.max_macs_per_segment,
                d.max_macs_per_port,
                d.max_macs_per_peer
            ),
            (4096, 1024, 2048)
        );
        let c: OverlayConfig = toml::from_str(
            "max_macs_per_segment = 100\nmax_macs_per_port = 10\nmax_macs_per_peer = 50",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(
            c.mac_limits(),
            MacLimits {
                per_segment: 100,
                per_port: 10,
                per_peer: 50
            }
        );
        for (toml, key) in [
            ("max_macs_per_segment = 0", "max_macs_per_segment"),
            (
                "max_macs_per_segment = 1099511627776",
                "max_macs_per_segment",
            ),
            ("max_macs_per_port = 0", "max_macs_per_port"),
            ("max_macs_per_port = 5000", "max_macs_per_port"),
            (
                "max_macs_per_segment = 100\nmax_macs_per_port = 10\nmax_macs_per_peer = 101",
                "max_macs_per_peer",
            ),
        ] {
            let c: OverlayConfig = toml::from_str(toml).unwrap();
            let e = c.validate().unwrap_err();
            assert_eq!(e.key, key, "{toml}: {e}");
            assert!(e.to_string().contains(key), "{e}");
        }
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let e =
            toml::from_str::<OverlayConfig>("[[segment]]\nname = \"a\"\nvni = 1\nfloodrate = 3\n")
                .unwrap_err();
        assert!(e.to_string().contains("floodrate"), "{e}");
    }
}
