//! The guest control ports (see `wanmig_guest_abi::CONTROL_PORT_*`): decodes
//! a port write into what the guest asked for, and keeps the record of the
//! guest's reports that tests and the migration report read.

use std::collections::VecDeque;
use std::time::Duration;
use wanmig_guest_abi as abi;
use wanmig_migration::admin::MemSample;

/// What a guest write to a control port asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlRequest {
    /// Record the [`abi::Report`] at this guest-physical address.
    Report(u64),
    /// Store the guest clock at this guest-physical address.
    Clock(u64),
    /// Park the vCPU this long.
    Sleep(Duration),
    /// End the run with this code.
    Exit(u32),
}

/// Decodes a write of `data` to `port`; `None` for other ports or sizes.
pub fn decode(port: u16, data: &[u8]) -> Option<ControlRequest> {
    let v = u32::from_le_bytes(data.try_into().ok()?);
    match port {
        abi::CONTROL_PORT_REPORT => Some(ControlRequest::Report(v as u64)),
        abi::CONTROL_PORT_CLOCK => Some(ControlRequest::Clock(v as u64)),
        abi::CONTROL_PORT_SLEEP_US => Some(ControlRequest::Sleep(Duration::from_micros(
            v.min(abi::MAX_SLEEP_US) as u64,
        ))),
        abi::CONTROL_PORT_EXIT => Some(ControlRequest::Exit(v)),
        _ => None,
    }
}

/// Parses a [`abi::Report`] from its `#[repr(C)]` bytes.
pub fn parse_report(b: &[u8; abi::REPORT_SIZE]) -> abi::Report {
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
    abi::Report {
        kind: u32::from_le_bytes(b[0..4].try_into().unwrap_or([0; 4])),
        reserved: 0,
        values: [u64_at(8), u64_at(16), u64_at(24), u64_at(32)],
    }
}

/// The guest's reports: the recent memory-workload samples and the latest
/// report of every kind.
#[derive(Debug, Default, Clone)]
pub struct ReportLog {
    mem: VecDeque<MemSample>,
    latest: Vec<abi::Report>,
    total: u64,
}

/// How many memory samples the log keeps.
pub const MEM_SAMPLES_KEPT: usize = 1 << 16;

impl ReportLog {
    /// Records a report.
    pub fn push(&mut self, r: abi::Report) {
        self.total += 1;
        if r.kind == abi::REPORT_MEM_ITERATION {
            if self.mem.len() == MEM_SAMPLES_KEPT {
                self.mem.pop_front();
            }
            self.mem.push_back(MemSample {
                iteration: r.values[0],
                digest: r.values[1],
            });
        }
        match self.latest.iter_mut().find(|l| l.kind == r.kind) {
            Some(l) => *l = r,
            None => self.latest.push(r),
        }
    }

    /// The kept memory samples, oldest first.
    pub fn mem_samples(&self) -> Vec<MemSample> {
        self.mem.iter().copied().collect()
    }

    /// The latest report of `kind`.
    pub fn latest(&self, kind: u32) -> Option<abi::Report> {
        self.latest.iter().find(|l| l.kind == kind).copied()
    }

    /// Number of reports ever received.
    pub fn total(&self) -> u64 {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_ports() {
        assert_eq!(
            decode(abi::CONTROL_PORT_REPORT, &0x1234u32.to_le_bytes()),
            Some(ControlRequest::Report(0x1234))
        );
        assert_eq!(
            decode(abi::CONTROL_PORT_SLEEP_US, &u32::MAX.to_le_bytes()),
            Some(ControlRequest::Sleep(Duration::from_micros(
                abi::MAX_SLEEP_US as u64
            )))
        );
        assert_eq!(decode(abi::CONTROL_PORT_EXIT, &[1]), None);
        assert_eq!(decode(0x80, &[0; 4]), None);
    }

    #[test]
    fn log_keeps_latest_per_kind() {
        let mut log = ReportLog::default();
        let mut bytes = [0u8; abi::REPORT_SIZE];
        bytes[0] = abi::REPORT_MEM_ITERATION as u8;
        bytes[8] = 3;
        bytes[16] = 0x77;
        log.push(parse_report(&bytes));
        log.push(abi::Report {
            kind: abi::REPORT_BOOTED,
            ..Default::default()
        });
        assert_eq!(
            log.mem_samples(),
            [MemSample {
                iteration: 3,
                digest: 0x77
            }]
        );
        assert_eq!(log.latest(abi::REPORT_MEM_ITERATION).unwrap().values[0], 3);
        assert_eq!(log.total(), 2);
    }
}
