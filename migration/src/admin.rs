//! A running shim's local control channel (one JSON request per line on a
//! unix socket, one JSON response line back; the shim serves it, and the
//! gateway's process host and the operator's tools ask): the requests
//! ([`AdminRequest`]) and responses ([`AdminResponse`]), how the VM's run
//! ended ([`RunExit`]), the guest's latest reports ([`Status`]) and its
//! memory-workload samples ([`MemSample`]). Plain data: the socket code is
//! the shim's.

use serde::{Deserialize, Serialize};

use crate::policy::PlannerConfig;
use crate::run::MigrationReport;

/// How a VM's run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunExit {
    /// The guest wrote this code to the exit port.
    Guest(u32),
    /// The guest triple-faulted or otherwise shut the vCPU down.
    Shutdown,
    /// The guest executed HLT with nothing to wake it.
    Halted,
    /// KVM reported an error; the text says which.
    Failed(String),
    /// The VMM stopped the VM (e.g. after handing it over in a migration).
    Stopped,
}

/// One memory-workload iteration as the guest reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemSample {
    /// Iteration number (from 1).
    pub iteration: u64,
    /// The guest's running digest after it.
    pub digest: u64,
}

/// Status of the VM.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    /// How the run ended, `None` while running.
    pub exit: Option<RunExit>,
    /// Latest memory-workload iteration reported.
    pub mem_iteration: u64,
    /// Digest reported with it.
    pub mem_digest: u64,
    /// Reports received.
    pub reports: u64,
    /// Latest disk-workload report: [iteration, digest, verified, errors].
    pub disk: Option<[u64; 4]>,
    /// Latest TCP-service report: [connections, bytes, digest, session bytes].
    pub net: Option<[u64; 4]>,
}

/// A request on the control socket.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum AdminRequest {
    /// The VM's state and the guest's latest reports.
    Status,
    /// The memory workload's kept (iteration, digest) samples.
    Samples,
    /// Migrate the VM to `to`.
    Migrate {
        /// Destination address.
        to: String,
        /// Planner settings (defaults when absent).
        #[serde(default)]
        planner: Option<PlannerConfig>,
    },
}

/// A response on the control socket.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum AdminResponse {
    /// Answer to `status`.
    Status(Status),
    /// Answer to `samples`.
    Samples { samples: Vec<MemSample> },
    /// The migration succeeded; the VM now runs at the destination.
    Migrated(Box<MigrationReport>),
    /// The migration handed the VM over, but the destination did not
    /// confirm that it resumed it: the VM never runs here again (it runs
    /// at the destination unless that lost it).
    HandedOver { message: String },
    /// The request failed; `vm_running_here` says where the VM is.
    Error {
        message: String,
        vm_running_here: bool,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_is_plain_json() {
        let s = Status {
            exit: Some(RunExit::Guest(3)),
            mem_iteration: 9,
            mem_digest: 7,
            reports: 12,
            disk: None,
            net: Some([1, 2, 3, 4]),
        };
        let text = serde_json::to_string(&s).unwrap();
        assert!(text.contains(r#""exit":{"Guest":3}"#), "{text}");
        assert_eq!(serde_json::from_str::<Status>(&text).unwrap(), s);
    }
}
