//! The adaptive compression-level controller, sans-IO.
//!
//! Inputs: the measured link rate (wire bytes/s the session can send) and,
//! per batch run, how many guest bytes the encoder turned into how many wire
//! bytes in how much CPU time at a given level. Output: the zstd level.
//!
//! Goal: move guest memory as fast as possible. At level `L` the session
//! moves `min(cpu(L), link / ratio(L))` guest bytes per second, where
//! `cpu(L)` is the encoder's guest bytes per CPU-second (times the CPU share
//! it may use) and `ratio(L)` is wire ÷ guest bytes. When the link is the
//! bottleneck (`cpu(L)` is well above `link / ratio(L)`) there is spare CPU,
//! and a higher level shrinks the wire bytes; when the CPU is the bottleneck
//! a lower (down to negative, zstd's fast modes) level speeds the codec up.
//! The controller keeps a moving estimate per level it has seen, picks the
//! best known level, and probes one unmeasured neighbour in the direction
//! the bottleneck points. It changes the level at most once per `dwell`.
//! With long-distance matching on, each level change restarts the codec's
//! zstd stream (losing its window); the controller settles after its
//! probes, but a dwell of seconds suits it better then.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use wanmig_codec::{EncoderStats, MAX_LEVEL, MIN_LEVEL};

use super::ConfigError;

/// Controller settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LevelConfig {
    pub min_level: i32,
    pub max_level: i32,
    /// Raise the level only while the codec is this much faster than needed.
    pub headroom: f64,
    /// Fraction of one core the codec may use (other work shares it).
    pub cpu_share: f64,
    /// Least time between two level changes.
    #[serde(with = "humantime_secs")]
    pub dwell: Duration,
    /// Weight of a new sample in the per-level moving averages.
    pub smoothing: f64,
}

mod humantime_secs {
    //! Durations as float seconds in config files.
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let v = f64::deserialize(d)?;
        Duration::try_from_secs_f64(v).map_err(serde::de::Error::custom)
    }
}

impl Default for LevelConfig {
    fn default() -> Self {
        LevelConfig {
            min_level: MIN_LEVEL,
            max_level: 9,
            headroom: 1.3,
            cpu_share: 1.0,
            dwell: Duration::from_millis(500),
            smoothing: 0.3,
        }
    }
}

impl LevelConfig {
    /// Checks every field; the error names the bad key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key, why: String| Err(ConfigError { key, why });
        if !(MIN_LEVEL..=MAX_LEVEL).contains(&self.min_level) {
            return bad(
                "level.min_level",
                format!("must be in {MIN_LEVEL}..={MAX_LEVEL}"),
            );
        }
        if !(self.min_level..=MAX_LEVEL).contains(&self.max_level) {
            return bad(
                "level.max_level",
                format!("must be in min_level..={MAX_LEVEL}"),
            );
        }
        if !(self.headroom >= 1.0 && self.headroom.is_finite()) {
            return bad("level.headroom", "must be a number >= 1".into());
        }
        if !(self.cpu_share > 0.0 && self.cpu_share <= 64.0) {
            return bad("level.cpu_share", "must be in (0, 64]".into());
        }
        if !(self.smoothing > 0.0 && self.smoothing <= 1.0) {
            return bad("level.smoothing", "must be in (0, 1]".into());
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
struct Estimate {
    /// Guest bytes per CPU-second.
    cpu_rate: f64,
    /// Wire bytes per guest byte.
    ratio: f64,
}

/// Where the bottleneck is at the current level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bottleneck {
    Unknown,
    /// The codec could feed more than the link takes: spare CPU.
    Link,
    /// The codec cannot keep the link busy.
    Cpu,
    /// Balanced within the headroom.
    Balanced,
}

/// Picks the zstd level from measurements.
#[derive(Debug)]
pub struct LevelController {
    cfg: LevelConfig,
    level: i32,
    est: BTreeMap<i32, Estimate>,
    link_rate: Option<f64>,
    last_change: Option<Instant>,
}

impl LevelController {
    pub fn new(cfg: LevelConfig, initial_level: i32) -> Result<Self, ConfigError> {
        cfg.validate()?;
        Ok(LevelController {
            level: initial_level.clamp(cfg.min_level, cfg.max_level),
            cfg,
            est: BTreeMap::new(),
            link_rate: None,
            last_change: None,
        })
    }

    /// The level in force.
    pub fn level(&self) -> i32 {
        self.level
    }

    /// The link carried `bytes_per_sec` wire bytes per second (a measured
    /// send rate while the stream was backlogged, or the path's estimate).
    pub fn on_link_rate(&mut self, bytes_per_sec: f64) {
        if bytes_per_sec.is_finite() && bytes_per_sec > 0.0 {
            self.link_rate = Some(bytes_per_sec);
        }
    }

    /// One `Encoder::encode` call (or several): `delta` is the difference of
    /// the encoder's stats after and before ([`EncoderStats::since`]),
    /// `level` the level it ran at, `cpu` the CPU time it took.
    pub fn on_encoded(&mut self, level: i32, delta: &EncoderStats, cpu: Duration) {
        self.on_codec_sample(level, delta.bytes_in, delta.bytes_out, cpu);
    }

    /// Whether to turn long-distance matching on: the link is the
    /// bottleneck even at the highest level allowed, so spare CPU remains
    /// after zstd has done what it can per batch. (Turn it off again when
    /// this returns false and [`LevelController::bottleneck`] says `Cpu`.)
    pub fn advise_long_distance(&self) -> bool {
        self.level >= self.cfg.max_level && self.bottleneck() == Bottleneck::Link
    }

    /// The encoder turned `guest_bytes` into `wire_bytes` at `level`, using
    /// `cpu` of CPU time. Samples with no bytes or no time are ignored.
    pub fn on_codec_sample(
        &mut self,
        level: i32,
        guest_bytes: u64,
        wire_bytes: u64,
        cpu: Duration,
    ) {
        if guest_bytes == 0 || cpu.is_zero() {
            return;
        }
        let cpu_rate = guest_bytes as f64 / cpu.as_secs_f64();
        let ratio = wire_bytes as f64 / guest_bytes as f64;
        let a = self.cfg.smoothing;
        self.est
            .entry(level)
            .and_modify(|e| {
                e.cpu_rate += a * (cpu_rate - e.cpu_rate);
                e.ratio += a * (ratio - e.ratio);
            })
            .or_insert(Estimate { cpu_rate, ratio });
    }

    /// Guest bytes/s the session would move at `level`, if measured.
    fn goodput(&self, level: i32, link: f64) -> Option<f64> {
        let e = self.est.get(&level)?;
        Some((e.cpu_rate * self.cfg.cpu_share).min(link / e.ratio.max(1e-9)))
    }

    /// Where the bottleneck is at the current level.
    pub fn bottleneck(&self) -> Bottleneck {
        let (Some(link), Some(e)) = (self.link_rate, self.est.get(&self.level)) else {
            return Bottleneck::Unknown;
        };
        let feed = e.cpu_rate * self.cfg.cpu_share * e.ratio; // wire bytes/s the codec can produce
        if feed >= link * self.cfg.headroom {
            Bottleneck::Link
        } else if feed < link {
            Bottleneck::Cpu
        } else {
            Bottleneck::Balanced
        }
    }

    /// Decides the level at time `now` (call after feeding samples).
    pub fn decide(&mut self, now: Instant) -> i32 {
        if self
            .last_change
            .is_some_and(|t| now.saturating_duration_since(t) < self.cfg.dwell)
        {
            return self.level;
        }
        let Some(link) = self.link_rate else {
            return self.level;
        };
        let cur = self.level;
        let probe = match self.bottleneck() {
            Bottleneck::Unknown | Bottleneck::Balanced => None,
            Bottleneck::Link => Some(neighbour(cur, 1)),
            Bottleneck::Cpu => Some(neighbour(cur, -1)),
        }
        .filter(|l| (self.cfg.min_level..=self.cfg.max_level).contains(l));
        // The best measured level...
        let mut best = cur;
        let mut best_rate = self.goodput(cur, link).unwrap_or(0.0);
        for (&l, _) in self.est.range(self.cfg.min_level..=self.cfg.max_level) {
            if let Some(r) = self.goodput(l, link) {
                // Prefer higher levels on near-ties: fewer wire bytes.
                if r > best_rate * 1.02 || (r >= best_rate * 0.98 && l > best) {
                    best = l;
                    best_rate = r;
                }
            }
        }
        // ...unless the bottleneck points at an unmeasured neighbour.
        let next = match probe {
            Some(p) if !self.est.contains_key(&p) && best == cur => p,
            _ => best,
        };
        if next != cur {
            tracing::debug!(from = cur, to = next, bottleneck = ?self.bottleneck(), "zstd level change");
            self.level = next;
            self.last_change = Some(now);
        }
        self.level
    }
}

/// The next level up (`dir` = 1) or down (-1). zstd treats level 0 as "the
/// default level" (3), so it is skipped.
fn neighbour(level: i32, dir: i32) -> i32 {
    match level + dir {
        0 => dir,
        l => l,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A synthetic codec: level L runs at `base / 1.4^L` guest bytes per
    /// CPU-second and shrinks to `0.5 * 0.95^L` of the guest bytes.
    fn model(l: i32) -> (f64, f64) {
        (1.0e9 / 1.4f64.powi(l), 0.5 * 0.95f64.powi(l))
    }

    fn run(link: f64, start: i32, steps: usize) -> (LevelController, Vec<i32>) {
        let mut c = LevelController::new(LevelConfig::default(), start).unwrap();
        let t0 = Instant::now();
        let mut seen = Vec::new();
        for i in 0..steps {
            let l = c.level();
            let (rate, ratio) = model(l);
            let guest = 64u64 << 20;
            c.on_codec_sample(
                l,
                guest,
                (guest as f64 * ratio) as u64,
                Duration::from_secs_f64(guest as f64 / rate),
            );
            c.on_link_rate(link);
            seen.push(c.decide(t0 + Duration::from_secs(i as u64)));
        }
        (c, seen)
    }

    #[test]
    fn slow_link_raises_the_level_until_cpu_would_limit() {
        // 250 Mbit/s: the codec at level 1 feeds far more than the link.
        let (c, seen) = run(250e6 / 8.0, 1, 40);
        let l = c.level();
        assert!(l > 3, "level stayed at {l}: {seen:?}");
        // At the chosen level the codec still keeps the link busy.
        let (rate, ratio) = model(l);
        assert!(rate * ratio >= 250e6 / 8.0, "level {l} starves the link");
        assert!(l < LevelConfig::default().max_level || rate * ratio > 250e6 / 8.0);
    }

    #[test]
    fn fast_link_lowers_the_level_when_cpu_bound() {
        // 400 Gbit/s: the CPU is the bottleneck at any level; go fastest
        // (LZ4).
        let (c, _) = run(400e9 / 8.0, 3, 80);
        assert_eq!(c.level(), LevelConfig::default().min_level);
        assert_eq!(c.level(), wanmig_codec::LZ4_LEVEL);
        assert_eq!(c.bottleneck(), Bottleneck::Cpu);
        // 40 Gbit/s: the model's best level is a negative one where CPU and
        // link balance; the controller finds it.
        let link = 40e9 / 8.0;
        let goodput = |l: i32| {
            let (rate, ratio) = model(l);
            rate.min(link / ratio)
        };
        let best = (MIN_LEVEL..=LevelConfig::default().max_level)
            .filter(|&l| l != 0)
            .max_by(|a, b| goodput(*a).total_cmp(&goodput(*b)))
            .unwrap();
        assert!(best < 0);
        let (c, seen) = run(link, 3, 80);
        assert_eq!(c.level(), best, "{seen:?}");
    }

    #[test]
    fn long_distance_is_advised_only_when_link_bound_at_the_top() {
        // 10 Mbit/s: link-bound even at the highest level.
        let (c, _) = run(10e6 / 8.0, 1, 80);
        assert_eq!(c.level(), LevelConfig::default().max_level);
        assert!(c.advise_long_distance());
        // 40 Gbit/s: CPU-bound; no.
        let (c, _) = run(40e9 / 8.0, 1, 80);
        assert!(!c.advise_long_distance());
        // Samples through on_encoded count like on_codec_sample.
        let mut c = LevelController::new(LevelConfig::default(), 9).unwrap();
        let delta = EncoderStats {
            bytes_in: 1 << 30,
            bytes_out: 1 << 28,
            ..EncoderStats::default()
        };
        c.on_encoded(9, &delta, Duration::from_secs(1));
        c.on_link_rate(1e6);
        assert_eq!(c.bottleneck(), Bottleneck::Link);
        assert!(c.advise_long_distance());
    }

    #[test]
    fn settles_instead_of_flapping() {
        let (_, seen) = run(250e6 / 8.0, 1, 60);
        let tail = &seen[40..];
        assert!(
            tail.iter().all(|&l| l == tail[0]),
            "level keeps moving: {tail:?}"
        );
    }

    #[test]
    fn dwell_time_limits_changes_and_bad_samples_are_ignored() {
        let mut c = LevelController::new(LevelConfig::default(), 1).unwrap();
        let t0 = Instant::now();
        c.on_codec_sample(1, 0, 0, Duration::ZERO);
        c.on_link_rate(f64::NAN);
        assert_eq!(c.decide(t0), 1, "no usable input, no change");
        c.on_link_rate(1e6);
        c.on_codec_sample(1, 1 << 30, 1 << 28, Duration::from_secs(1));
        assert_eq!(c.decide(t0), 2);
        c.on_codec_sample(2, 1 << 30, 1 << 28, Duration::from_secs(1));
        assert_eq!(c.decide(t0 + Duration::from_millis(100)), 2, "within dwell");
        assert_eq!(c.decide(t0 + Duration::from_secs(1)), 3);
    }

    #[test]
    fn level_zero_is_skipped() {
        assert_eq!(neighbour(-1, 1), 1);
        assert_eq!(neighbour(1, -1), -1);
        assert_eq!(neighbour(3, 1), 4);
    }

    #[test]
    fn config_errors_name_the_key() {
        let cfg = LevelConfig {
            headroom: 0.5,
            ..LevelConfig::default()
        };
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("level.headroom"));
        let cfg = LevelConfig {
            max_level: 30,
            ..LevelConfig::default()
        };
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("level.max_level"));
    }
}
