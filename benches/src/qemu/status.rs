//! QEMU's `query-migrate` reply, read into the figures the baseline
//! reports; and the decision of whether to keep polling.

use serde::Serialize;
use serde_json::Value;

/// The fields of `query-migrate` the baseline uses. Missing fields (QEMU
/// omits most of them before the migration starts) read as `None` / 0.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MigrateStatus {
    /// "setup", "active", "device", "completed", "failed", "cancelled", ...
    pub status: String,
    pub total_time_ms: Option<u64>,
    /// The VM's stop time; reported once completed.
    pub downtime_ms: Option<u64>,
    pub expected_downtime_ms: Option<u64>,
    /// RAM bytes QEMU counts as sent (uncompressed page sizes).
    pub ram_transferred: u64,
    pub ram_total: u64,
    pub ram_remaining: u64,
    /// Zero pages (sent as a flag, not as data).
    pub zero_pages: u64,
    /// Pages sent with their data.
    pub normal_pages: u64,
    /// Dirty-bitmap syncs, i.e. pre-copy passes.
    pub dirty_sync_count: u64,
    pub error: Option<String>,
}

/// Where a migration stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Running,
    Completed,
    Failed,
}

impl MigrateStatus {
    /// Reads a `query-migrate` return value.
    pub fn from_json(v: &Value) -> Self {
        let u = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64);
        let ram = v.get("ram").cloned().unwrap_or(Value::Null);
        MigrateStatus {
            status: v
                .get("status")
                .and_then(Value::as_str)
                .unwrap_or("none")
                .to_string(),
            total_time_ms: u(v, "total-time"),
            downtime_ms: u(v, "downtime"),
            expected_downtime_ms: u(v, "expected-downtime"),
            ram_transferred: u(&ram, "transferred").unwrap_or(0),
            ram_total: u(&ram, "total").unwrap_or(0),
            ram_remaining: u(&ram, "remaining").unwrap_or(0),
            zero_pages: u(&ram, "duplicate").unwrap_or(0),
            normal_pages: u(&ram, "normal").unwrap_or(0),
            dirty_sync_count: u(&ram, "dirty-sync-count").unwrap_or(0),
            error: v
                .get("error-desc")
                .and_then(Value::as_str)
                .map(str::to_string),
        }
    }

    /// QEMU drops the `ram` figures once a migration is cancelled: keep
    /// the progress `earlier` (the last poll before) had, if this has none.
    pub fn keep_progress_from(&mut self, earlier: &MigrateStatus) {
        if self.ram_total == 0 {
            self.ram_transferred = earlier.ram_transferred;
            self.ram_total = earlier.ram_total;
            self.ram_remaining = earlier.ram_remaining;
            self.zero_pages = earlier.zero_pages;
            self.normal_pages = earlier.normal_pages;
            self.dirty_sync_count = earlier.dirty_sync_count;
        }
    }

    pub fn phase(&self) -> Phase {
        match self.status.as_str() {
            "completed" => Phase::Completed,
            "failed" | "cancelled" | "cancelling" => Phase::Failed,
            _ => Phase::Running,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_a_completed_migration() {
        let v = json!({
            "status": "completed", "setup-time": 3, "downtime": 41, "total-time": 5321,
            "ram": {"transferred": 123456789u64, "total": 67305472, "remaining": 0,
                    "duplicate": 6554, "normal": 9800, "dirty-sync-count": 4,
                    "multifd-bytes": 100000000}
        });
        let s = MigrateStatus::from_json(&v);
        assert_eq!(s.phase(), Phase::Completed);
        assert_eq!(s.total_time_ms, Some(5321));
        assert_eq!(s.downtime_ms, Some(41));
        assert_eq!(s.ram_transferred, 123456789);
        assert_eq!(s.ram_total, 67305472);
        assert_eq!(s.zero_pages, 6554);
        assert_eq!(s.normal_pages, 9800);
        assert_eq!(s.dirty_sync_count, 4);
        assert_eq!(s.error, None);
    }

    #[test]
    fn phases_of_running_and_failed_migrations() {
        let active = MigrateStatus::from_json(&json!({"status": "active", "ram": {}}));
        assert_eq!(active.phase(), Phase::Running);
        assert_eq!(active.downtime_ms, None);
        let none = MigrateStatus::from_json(&json!({}));
        assert_eq!(none.status, "none");
        assert_eq!(none.phase(), Phase::Running);
        let failed = MigrateStatus::from_json(
            &json!({"status": "failed", "error-desc": "Unable to write to socket: Connection reset by peer"}),
        );
        assert_eq!(failed.phase(), Phase::Failed);
        assert!(failed.error.unwrap().contains("Connection reset"));
    }

    #[test]
    fn a_cancelled_migration_keeps_the_progress_polled_before() {
        let before = MigrateStatus::from_json(&json!({"status": "active",
            "ram": {"transferred": 5000, "total": 9000, "remaining": 4000, "dirty-sync-count": 1}}));
        let mut after = MigrateStatus::from_json(&json!({"status": "cancelled"}));
        after.keep_progress_from(&before);
        assert_eq!(after.status, "cancelled");
        assert_eq!((after.ram_transferred, after.ram_remaining), (5000, 4000));
        // A status with its own figures keeps them.
        let mut done = MigrateStatus::from_json(&json!({"status": "completed",
            "ram": {"transferred": 9100, "total": 9000, "remaining": 0}}));
        done.keep_progress_from(&before);
        assert_eq!((done.ram_transferred, done.ram_remaining), (9100, 0));
    }
}
