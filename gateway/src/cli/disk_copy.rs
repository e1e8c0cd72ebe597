//! Following a VM's storage copy: the progress view (blocks local, wire
//! rate, ETA, stalls) and the final report that `wanmig migrate` shows
//! after the compute move and `wanmig storage migrate` shows for a copy it
//! started.

use std::time::{Duration, Instant};

use anyhow::bail;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use wanmig_gateway::control_client::ControlClient;
use wanmig_gateway::storage_relay::ExportStatus;
use wanmig_gateway::vms::DiskState;
use wanmig_units::{format_rate, format_size};

/// The final report of a storage copy (the `storage` object of `wanmig
/// migrate --json` and the output of `wanmig storage migrate --json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StorageReport {
    pub disk_bytes: u64,
    /// Block payload bytes on the wire (after zero elision and zstd).
    pub wire_bytes: u64,
    pub total_ms: u64,
    /// The source checked, before releasing its copy, that every block the
    /// guest did not write at the destination equals its own disk (a BLAKE3
    /// digest over those blocks computed at both sites).
    pub verified: bool,
}

impl StorageReport {
    /// The report of a finished copy as the destination sees it.
    pub fn from_disk(d: &DiskState) -> Option<Self> {
        match d {
            DiskState::Local {
                disk_bytes,
                wire_bytes,
                total_ms,
                verified,
                ..
            } => Some(StorageReport {
                disk_bytes: *disk_bytes,
                wire_bytes: *wire_bytes,
                total_ms: *total_ms,
                verified: *verified,
            }),
            _ => None,
        }
    }

    /// The report of a finished copy as the source sees it.
    pub fn from_export(e: &ExportStatus) -> Option<Self> {
        e.released.then(|| StorageReport {
            disk_bytes: e.disk_bytes,
            wire_bytes: e.wire_bytes,
            total_ms: e.total_ms.unwrap_or(0),
            verified: e.verified,
        })
    }

    pub fn text(&self) -> String {
        format!(
            "  storage: {} disk -> {} on the wire in {:.1} s{}\n",
            format_size(self.disk_bytes),
            format_size(self.wire_bytes),
            self.total_ms as f64 / 1e3,
            if self.verified {
                ", verified (digest of every block the guest did not write at the destination matches the source)"
            } else {
                ", NOT verified"
            }
        )
    }
}

/// One reading of a copy's progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopySample {
    pub local_blocks: u64,
    pub total_blocks: u64,
    pub wire_bytes: u64,
}

/// What the display shows (sans-IO: fed samples and clock readings).
#[derive(Debug, Clone, PartialEq)]
pub struct CopyView {
    pub percent: f64,
    pub wire_bps: f64,
    pub eta: Option<Duration>,
    pub sample: CopySample,
}

/// Turns successive samples into [`CopyView`]s; also tells when the copy
/// stalled.
#[derive(Debug, Default)]
pub struct CopyProgress {
    last: Option<(Instant, CopySample)>,
    wire_rate: f64,
    block_rate: f64,
    last_change: Option<Instant>,
}

impl CopyProgress {
    pub fn update(&mut self, s: CopySample, now: Instant) -> CopyView {
        if let Some((t, prev)) = self.last {
            let dt = now.saturating_duration_since(t).as_secs_f64();
            if dt > 0.0 {
                let smooth = |old: f64, inst: f64| {
                    if old == 0.0 {
                        inst
                    } else {
                        0.6 * old + 0.4 * inst
                    }
                };
                let wire = s.wire_bytes.saturating_sub(prev.wire_bytes) as f64 * 8.0 / dt;
                let blocks = s.local_blocks.saturating_sub(prev.local_blocks) as f64 / dt;
                self.wire_rate = smooth(self.wire_rate, wire);
                self.block_rate = smooth(self.block_rate, blocks);
            }
            if s != prev {
                self.last_change = Some(now);
            }
        } else {
            self.last_change = Some(now);
        }
        self.last = Some((now, s));
        let left = s.total_blocks.saturating_sub(s.local_blocks);
        CopyView {
            percent: if s.total_blocks == 0 {
                0.0
            } else {
                s.local_blocks as f64 * 100.0 / s.total_blocks as f64
            },
            wire_bps: self.wire_rate,
            eta: (self.block_rate > 0.0 && s.total_blocks > 0)
                .then(|| Duration::from_secs_f64(left as f64 / self.block_rate)),
            sample: s,
        }
    }

    /// How long nothing changed.
    pub fn stalled_for(&self, now: Instant) -> Duration {
        self.last_change
            .map(|t| now.saturating_duration_since(t))
            .unwrap_or_default()
    }
}

impl CopyView {
    pub fn line(&self) -> String {
        let mut s = format!(
            "disk {:.1}% local ({}/{} blocks), {} on the wire, {}",
            self.percent,
            self.sample.local_blocks,
            self.sample.total_blocks,
            format_size(self.sample.wire_bytes),
            format_rate(self.wire_bps)
        );
        if let Some(e) = self.eta {
            s.push_str(&format!(", ETA {:.1}s", e.as_secs_f64()));
        }
        s
    }
}

pub fn copy_bar(hidden: bool) -> ProgressBar {
    let bar = if hidden {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(1)
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

pub fn show(bar: &ProgressBar, v: &CopyView) {
    bar.set_length(v.sample.total_blocks.max(1));
    bar.set_position(v.sample.local_blocks);
    bar.set_message(v.line());
}

/// Where a destination-side copy stands for the display.
pub fn dest_sample(d: &DiskState) -> Option<CopySample> {
    match d {
        DiskState::Copying {
            local_blocks,
            total_blocks,
            wire_bytes,
            ..
        }
        | DiskState::RemoteOnly {
            local_blocks,
            total_blocks,
            wire_bytes,
            ..
        } => Some(CopySample {
            local_blocks: *local_blocks,
            total_blocks: *total_blocks,
            wire_bytes: *wire_bytes,
        }),
        _ => None,
    }
}

/// Follows the copy of `vm`'s disk at the site it is copied *from*
/// (`wanmig migrate` after the compute move) until the destination's copy
/// is verified and released; `None` when the VM has no disk to follow.
pub async fn follow_export(
    client: &ControlClient,
    vm: &str,
    bar: &ProgressBar,
    stall_timeout: Duration,
) -> anyhow::Result<Option<StorageReport>> {
    let mut progress = CopyProgress::default();
    loop {
        let status = match client.storage(vm).await {
            Ok(s) => s,
            Err(wanmig_gateway::control_client::ClientError::Api { status, .. })
                if status == reqwest::StatusCode::NOT_FOUND =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e.into()),
        };
        let Some(e) = status.export else {
            return Ok(None);
        };
        if let Some(r) = StorageReport::from_export(&e) {
            return Ok(Some(r));
        }
        if let Some(err) = &e.error {
            bail!("the storage copy of {vm} failed: {err}");
        }
        if !e.background {
            // --no-storage: nothing to wait for here.
            return Ok(None);
        }
        let now = Instant::now();
        let v = progress.update(
            CopySample {
                local_blocks: e.local_blocks,
                total_blocks: e.total_blocks,
                wire_bytes: e.wire_bytes,
            },
            now,
        );
        show(bar, &v);
        if progress.stalled_for(now) > stall_timeout {
            bail!(
                "the storage copy of {vm} to {} reported no progress for {:?}; the VM runs there and its copy resumes when the link returns: check `wanmig storage status` at {}",
                e.to.as_deref().unwrap_or("the destination"),
                stall_timeout,
                e.to.as_deref().unwrap_or("the destination"),
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_view_derives_percent_rate_eta_and_stalls() {
        let t0 = Instant::now();
        let mut p = CopyProgress::default();
        let s = |local, wire| CopySample {
            local_blocks: local,
            total_blocks: 1000,
            wire_bytes: wire,
        };
        let v = p.update(s(100, 1_000_000), t0);
        assert_eq!(v.percent, 10.0);
        assert_eq!(v.eta, None);
        let v = p.update(s(200, 2_000_000), t0 + Duration::from_secs(1));
        assert_eq!(v.wire_bps, 8_000_000.0);
        // 800 blocks left at 100 blocks/s.
        assert_eq!(v.eta, Some(Duration::from_secs(8)));
        assert!(v.line().contains("20.0% local"), "{}", v.line());
        assert_eq!(p.stalled_for(t0 + Duration::from_secs(1)), Duration::ZERO);
        p.update(s(200, 2_000_000), t0 + Duration::from_secs(5));
        assert_eq!(
            p.stalled_for(t0 + Duration::from_secs(5)),
            Duration::from_secs(4)
        );
    }

    #[test]
    fn reports_come_only_from_finished_copies() {
        let local = DiskState::Local {
            from: "a".into(),
            path: "d".into(),
            disk_bytes: 10,
            wire_bytes: 4,
            total_ms: 1500,
            verified: true,
        };
        let r = StorageReport::from_disk(&local).unwrap();
        assert!(r.text().contains("verified"), "{}", r.text());
        let j = serde_json::to_value(&r).unwrap();
        for k in ["disk_bytes", "wire_bytes", "total_ms", "verified"] {
            assert!(j.get(k).is_some(), "{k} in {j}");
        }
        let copying = DiskState::Copying {
            from: "a".into(),
            path: "d".into(),
            local_blocks: 1,
            total_blocks: 2,
            wire_bytes: 3,
        };
        assert_eq!(StorageReport::from_disk(&copying), None);
        assert_eq!(
            dest_sample(&copying),
            Some(CopySample {
                local_blocks: 1,
                total_blocks: 2,
                wire_bytes: 3
            })
        );
    }
}
