//! Where a VM's disk stands at this site after it migrated here with
//! storage attached ([`DiskState`]): the serialisable state the registry
//! keeps per VM, and its live form while the copy runs.

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use wanmig_storage::RemoteDisk;

/// Where a VM's disk stands at this site after it migrated here with
/// storage attached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum DiskState {
    /// The VM runs on a remote-backed disk; blocks are still copied from
    /// `from` (missing blocks are fetched on demand).
    Copying {
        from: String,
        path: PathBuf,
        /// Blocks local here (copied, written by the guest, or holes).
        #[serde(default)]
        local_blocks: u64,
        #[serde(default)]
        total_blocks: u64,
        /// Block payload bytes received so far.
        #[serde(default)]
        wire_bytes: u64,
    },
    /// Every block is local and durable; the source copy was released by
    /// its policy.
    Local {
        from: String,
        path: PathBuf,
        disk_bytes: u64,
        wire_bytes: u64,
        total_ms: u64,
        /// The source checked, before releasing its copy, that every block
        /// the guest did not write here equals its own disk
        /// ([`wanmig_storage::verify`]: a digest over those blocks computed
        /// at both sites).
        #[serde(default)]
        verified: bool,
    },
    /// The copy failed; the VM's disk reads of missing blocks fail.
    Failed { from: String, reason: String },
    /// Migrated with `--no-storage`: the disk stays authoritative at
    /// `from`; the VM reads missing blocks on demand and writes here. `wanmig
    /// storage migrate VM` (at this site) starts the background copy.
    RemoteOnly {
        from: String,
        path: PathBuf,
        local_blocks: u64,
        total_blocks: u64,
        wire_bytes: u64,
    },
}

fn percent(local: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        local as f64 * 100.0 / total as f64
    }
}

impl std::fmt::Display for DiskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DiskState::Copying {
                from,
                local_blocks,
                total_blocks,
                ..
            } if *total_blocks > 0 => write!(
                f,
                "copying from {from} ({:.0}% local)",
                percent(*local_blocks, *total_blocks)
            ),
            DiskState::Copying { from, .. } => write!(f, "copying from {from}"),
            DiskState::Local {
                total_ms, verified, ..
            } => write!(
                f,
                "local (copied in {:.1} s{})",
                *total_ms as f64 / 1e3,
                if *verified { ", verified" } else { "" }
            ),
            DiskState::Failed { from, reason } => write!(f, "copy from {from} failed: {reason}"),
            DiskState::RemoteOnly {
                from,
                local_blocks,
                total_blocks,
                ..
            } => write!(
                f,
                "remote-only at {from} ({:.0}% local; `wanmig storage migrate` copies the rest)",
                percent(*local_blocks, *total_blocks)
            ),
        }
    }
}

impl DiskState {
    /// Whether the disk still depends on the source site.
    pub fn is_remote(&self) -> bool {
        matches!(
            self,
            DiskState::Copying { .. } | DiskState::RemoteOnly { .. }
        )
    }
}

/// `state` with live progress from `disk`.
pub fn live_disk_state(state: &DiskState, disk: Option<&Arc<RemoteDisk>>) -> DiskState {
    let Some(disk) = disk else {
        return state.clone();
    };
    let (local, total) = disk.progress();
    let wire = disk.metrics().snapshot().bytes_after_reduction;
    match state {
        DiskState::Copying { from, path, .. } => DiskState::Copying {
            from: from.clone(),
            path: path.clone(),
            local_blocks: local,
            total_blocks: total,
            wire_bytes: wire,
        },
        DiskState::RemoteOnly { from, path, .. } => DiskState::RemoteOnly {
            from: from.clone(),
            path: path.clone(),
            local_blocks: local,
            total_blocks: total,
            wire_bytes: wire,
        },
        other => other.clone(),
    }
}
