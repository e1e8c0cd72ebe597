//! The source gateway's policy, in one place: the relay passes in what it
//! measures and asks it what to do.
//!
//! Measurements, each with the clock reading it was taken at where time
//! matters:
//! - bytes handed to QUIC and bytes the destination acknowledged, as
//!   totals of batch bytes and of the guest bytes they carry ([`Flight`]);
//! - what is in flight whenever the relay is about to wait;
//! - the QUIC path's estimate ([`PathEstimate`]);
//! - the encoder's statistics and the CPU time each encode took;
//! - where the copy is ([`CopyProgress`]).
//!
//! Decisions:
//! - whether the relay may take more pages from the shim
//!   ([`RelayPolicy::has_room`]): both in-flight windows have room, so the
//!   shim's rounds run at the pace of the WAN or of the destination,
//!   whichever is slower, and its planner sees that pace;
//! - how long to hold bytes back under a bandwidth cap
//!   ([`RelayPolicy::pace`]);
//! - the codec's level and long-distance matching ([`RelayPolicy::codec`]).

use std::time::{Duration, Instant};

use wanmig_codec::{EncoderStats, LongDistance};

use super::level::{Bottleneck, LevelConfig, LevelController};
use super::link::{LinkRate, PathEstimate};
use super::pacer::Pacer;
use super::window::{window_gain, CopyProgress, FlowWindow, WINDOW_GAIN};
use super::ConfigError;

/// Batch (wire) bytes and the guest bytes (pages × 4 KiB) they carry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flight {
    pub wire: u64,
    pub guest: u64,
}

/// The codec settings the relay applies to its encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodecSetting {
    /// zstd level, or [`wanmig_codec::LZ4_LEVEL`].
    pub level: i32,
    /// Long-distance matching across the stream, when on.
    pub long_distance: Option<LongDistance>,
}

/// What the source relay's policy is given at the start of a migration.
#[derive(Debug, Clone, PartialEq)]
pub struct RelayConfig {
    /// The link's configured round trip: the least the windows assume.
    pub rtt: Duration,
    /// Cap on the migration's WAN bytes, bits per second.
    pub bandwidth_cap_bps: Option<u64>,
    /// The encoder's level at the start.
    pub initial_level: i32,
    /// The level controller's settings.
    pub level: LevelConfig,
}

impl RelayConfig {
    /// For a link of round trip `rtt` and an encoder configured at
    /// `initial_level`: the level controller's default range, widened to
    /// include that level; no cap.
    pub fn new(rtt: Duration, initial_level: i32) -> Self {
        let level = LevelConfig {
            max_level: LevelConfig::default().max_level.max(initial_level),
            min_level: LevelConfig::default().min_level.min(initial_level),
            ..LevelConfig::default()
        };
        RelayConfig {
            rtt,
            bandwidth_cap_bps: None,
            initial_level,
            level,
        }
    }
}

/// The source relay's policy: in-flight windows, pacing, link rate and
/// codec level (see the module docs).
#[derive(Debug)]
pub struct RelayPolicy {
    wire: FlowWindow,
    guest: FlowWindow,
    /// Round 0's bulk is over: the windows keep [`WINDOW_GAIN`] from then
    /// on (the copy never returns to round 0).
    bulk_over: bool,
    pacer: Option<Pacer>,
    link: LinkRate,
    level: LevelController,
    /// The encoder's statistics at the last codec sample.
    sampled: EncoderStats,
}

impl RelayPolicy {
    /// The policy of a copy that starts at `now`.
    pub fn new(cfg: RelayConfig, now: Instant) -> Result<Self, ConfigError> {
        Ok(RelayPolicy {
            wire: FlowWindow::new(cfg.rtt),
            guest: FlowWindow::guest(cfg.rtt),
            bulk_over: false,
            pacer: cfg
                .bandwidth_cap_bps
                .filter(|&b| b > 0)
                .map(|b| Pacer::new(b, now)),
            link: LinkRate::default(),
            level: LevelController::new(cfg.level, cfg.initial_level)?,
            sampled: EncoderStats::default(),
        })
    }

    /// What is in flight (sent, not yet acknowledged) as the relay is about
    /// to wait for the shim or the peer.
    pub fn on_in_flight(&mut self, in_flight: Flight) {
        self.link.on_in_flight(in_flight.wire, self.wire.window());
    }

    /// `total` bytes have been handed to QUIC so far, at `now`.
    pub fn on_sent(&mut self, total: Flight, now: Instant) {
        self.wire.on_sent(total.wire, now);
        self.guest.on_sent(total.guest, now);
    }

    /// The destination has acknowledged `total` bytes so far, at `now`.
    pub fn on_acked(&mut self, total: Flight, now: Instant) {
        self.wire.on_ack(total.wire, now);
        self.guest.on_ack(total.guest, now);
    }

    /// The QUIC path's latest estimate.
    pub fn on_path(&mut self, path: PathEstimate) {
        self.link.on_path(path);
    }

    /// The encoder, at `level`, has the cumulative statistics `stats`; the
    /// encoding since the last call took `cpu` (CPU time, or wall time
    /// around a stretch of encoding with no waits in it: an upper bound).
    pub fn on_encoded(&mut self, level: i32, stats: &EncoderStats, cpu: Duration) {
        let delta = stats.since(&self.sampled);
        self.sampled = *stats;
        self.level.on_encoded(level, &delta, cpu);
    }

    /// The copy reached `progress`: sets the windows' gain.
    pub fn on_progress(&mut self, progress: CopyProgress) {
        let gain = if self.bulk_over {
            WINDOW_GAIN
        } else {
            window_gain(&progress, self.guest.window_at(WINDOW_GAIN))
        };
        self.bulk_over = gain == WINDOW_GAIN;
        self.wire.set_gain(gain);
        self.guest.set_gain(gain);
    }

    /// Whether the relay may take more pages from the shim with
    /// `in_flight` unacknowledged.
    pub fn has_room(&self, in_flight: Flight) -> bool {
        in_flight.wire < self.wire.window() && in_flight.guest < self.guest.window()
    }

    /// How long to wait before sending `bytes` at `now` (zero without a
    /// bandwidth cap).
    pub fn pace(&mut self, bytes: u64, now: Instant) -> Duration {
        self.pacer
            .as_mut()
            .map_or(Duration::ZERO, |p| p.reserve(bytes, now))
    }

    /// The codec settings to use from now on, given those in force. Only
    /// while pages flow in the live rounds (`live`) do they change: the
    /// final round keeps what it has. The level changes at most once per
    /// [`LevelConfig::dwell`]; long-distance matching goes on while the
    /// link is the bottleneck even at the highest level, and off once the
    /// codec is.
    pub fn codec(&mut self, now: Instant, current: CodecSetting, live: bool) -> CodecSetting {
        if let Some(rate) = self.link.pick(self.wire.rate()) {
            self.level.on_link_rate(rate);
        }
        if !live {
            return current;
        }
        // Where the bottleneck is at the level measured so far (after a
        // change, the new level has no measurements yet).
        let bottleneck = self.level.bottleneck();
        let level = self.level.decide(now);
        let long_distance = match current.long_distance {
            None if self.level.advise_long_distance() => {
                tracing::debug!(
                    level,
                    "link-bound at the top level: long-distance matching on"
                );
                Some(LongDistance::default())
            }
            Some(_) if bottleneck == Bottleneck::Cpu => {
                tracing::debug!(level, "codec-bound: long-distance matching off");
                None
            }
            ld => ld,
        };
        CodecSetting {
            level,
            long_distance,
        }
    }

    /// The window over batch bytes.
    pub fn wire_window(&self) -> &FlowWindow {
        &self.wire
    }

    /// The window over guest bytes.
    pub fn guest_window(&self) -> &FlowWindow {
        &self.guest
    }

    /// Where the level controller sees the bottleneck.
    pub fn bottleneck(&self) -> Bottleneck {
        self.level.bottleneck()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::window::{BULK_GAIN, MIN_GUEST_WINDOW, MIN_WINDOW};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn policy(t0: Instant) -> RelayPolicy {
        RelayPolicy::new(RelayConfig::new(ms(100), 1), t0).unwrap()
    }

    #[test]
    fn pages_are_taken_only_while_both_windows_have_room() {
        let p = policy(Instant::now());
        let room = |wire, guest| p.has_room(Flight { wire, guest });
        assert!(room(MIN_WINDOW - 1, MIN_GUEST_WINDOW - 1));
        assert!(!room(MIN_WINDOW, 0), "the wire window is full");
        assert!(!room(0, MIN_GUEST_WINDOW), "the guest window is full");
    }

    #[test]
    fn only_a_bandwidth_cap_holds_bytes_back() {
        let t0 = Instant::now();
        let mut free = policy(t0);
        assert_eq!(free.pace(100 << 20, t0), Duration::ZERO);
        let cfg = RelayConfig {
            bandwidth_cap_bps: Some(8_000_000),
            ..RelayConfig::new(ms(100), 1)
        };
        let mut capped = RelayPolicy::new(cfg, t0).unwrap();
        // 1 MB/s with a 64 KiB burst: 1 MB more waits about a second.
        assert_eq!(capped.pace(65536, t0), Duration::ZERO);
        let wait = capped.pace(1_000_000, t0);
        assert!((wait.as_secs_f64() - 1.0).abs() < 0.01, "{wait:?}");
        // A cap of zero is no cap.
        let cfg = RelayConfig {
            bandwidth_cap_bps: Some(0),
            ..RelayConfig::new(ms(100), 1)
        };
        let mut zero = RelayPolicy::new(cfg, t0).unwrap();
        assert_eq!(zero.pace(100 << 20, t0), Duration::ZERO);
    }

    #[test]
    fn round_0_bulk_does_not_come_back_once_over() {
        let t0 = Instant::now();
        let mut p = policy(t0);
        // 10 MiB of batches and 40 MiB of pages acknowledged per 100 ms.
        p.on_acked(Flight::default(), t0);
        let acked = Flight {
            wire: 10 << 20,
            guest: 40 << 20,
        };
        p.on_acked(acked, t0 + ms(100));
        let bulk = (BULK_GAIN * (10u64 << 20) as f64) as u64;
        let settled = (WINDOW_GAIN * (10u64 << 20) as f64) as u64;
        let at = |round_pages| CopyProgress {
            memory_pages: 131_072,
            round: 0,
            round_pages,
        };
        // 512 MiB, two settled guest windows are 100 MiB.
        p.on_progress(at(0));
        assert_eq!(p.wire_window().window(), bulk);
        // 96 MiB left: near the pause.
        p.on_progress(at(131_072 - 24_576));
        assert_eq!(p.wire_window().window(), settled);
        // The destination slows to 4 MiB of batches and 16 MiB of pages
        // per 100 ms: two guest windows at the smaller gain (40 MiB) are
        // now well below what is left, and the rule alone would go back
        // to the bulk gain. It stays over.
        for i in 2..12 {
            let acked = Flight {
                wire: (10 << 20) + (i - 1) * (4 << 20),
                guest: (40 << 20) + (i - 1) * (16 << 20),
            };
            p.on_acked(acked, t0 + ms(100 * i));
        }
        let guest_settled = p.guest_window().window_at(WINDOW_GAIN);
        assert_eq!(guest_settled, (WINDOW_GAIN * (16u64 << 20) as f64) as u64);
        assert_eq!(window_gain(&at(131_072 - 24_576), guest_settled), BULK_GAIN);
        p.on_progress(at(131_072 - 24_576));
        assert_eq!(
            p.wire_window().window(),
            (WINDOW_GAIN * (4u64 << 20) as f64) as u64
        );
        assert_eq!(p.guest_window().window(), guest_settled);
    }

    #[test]
    fn the_final_round_keeps_the_codec_settings_it_has() {
        let t0 = Instant::now();
        let mut p = policy(t0);
        // A slow path and a fast codec would raise the level...
        p.on_path(PathEstimate {
            cwnd: 100_000,
            rtt: ms(100),
        });
        let stats = EncoderStats {
            bytes_in: 1 << 30,
            bytes_out: 1 << 28,
            ..EncoderStats::default()
        };
        p.on_encoded(1, &stats, Duration::from_secs(1));
        let current = CodecSetting {
            level: 1,
            long_distance: None,
        };
        // ...but not once the VM is paused.
        assert_eq!(p.codec(t0, current, false), current);
        // While live, it does.
        assert_eq!(p.codec(t0, current, true).level, 2);
    }
}
