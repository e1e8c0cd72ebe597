//! The VM state blob a migration carries besides memory: the vCPU, the
//! guest clock, the serial console and the devices, versioned and
//! serde-encoded (JSON: self-describing, so a version mismatch or a corrupt
//! blob produces a clear error rather than garbage).

use crate::serial::Serial;
use crate::vcpu_state::{VcpuCaps, VcpuState};
use serde::{Deserialize, Serialize};

/// Version of [`VmState`]'s layout.
pub const STATE_VERSION: u32 = 1;

/// Everything a resumed VM needs besides its memory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmState {
    /// [`STATE_VERSION`] of the writer.
    pub version: u32,
    /// The vCPU.
    pub vcpu: VcpuState,
    /// Which optional vCPU state the source could save.
    pub caps: VcpuCaps,
    /// The guest clock at pause.
    pub guest_clock_ns: u64,
    /// The UART.
    pub serial: Serial,
    /// Reports the guest had made at the source (for continuity in logs).
    pub reports_seen: u64,
    /// Device state (virtio transport and devices), if any.
    pub devices: Option<serde_json::Value>,
}

/// Errors decoding a state blob.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("VM state blob is malformed: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("VM state blob version {found} is not supported (this shim reads version {STATE_VERSION}); use the same wanmig-vmm version on both sides")]
    Version { found: u32 },
}

impl VmState {
    /// Serialises the state.
    pub fn encode(&self) -> Vec<u8> {
        // Serialising plain data to a Vec cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses and version-checks a blob.
    pub fn decode(blob: &[u8]) -> Result<VmState, StateError> {
        #[derive(Deserialize)]
        struct Header {
            version: u32,
        }
        let h: Header = serde_json::from_slice(blob)?;
        if h.version != STATE_VERSION {
            return Err(StateError::Version { found: h.version });
        }
        Ok(serde_json::from_slice(blob)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vcpu_state::FpuState;

    fn sample() -> VmState {
        VmState {
            version: STATE_VERSION,
            vcpu: VcpuState {
                regs: kvm_bindings::kvm_regs {
                    rip: 0x1234,
                    rsp: 0x8000,
                    ..Default::default()
                },
                sregs: Default::default(),
                fpu: FpuState::default(),
                xsave: Some(vec![7; 1024]),
                xcrs: None,
                debugregs: None,
                lapic: None,
                msrs: vec![(0x10, 99)],
                events: None,
                mp_state: None,
            },
            caps: VcpuCaps::default(),
            guest_clock_ns: 42,
            serial: Serial::default(),
            reports_seen: 3,
            devices: None,
        }
    }

    #[test]
    fn roundtrips_and_rejects_other_versions_and_garbage() {
        let blob = sample().encode();
        let back = VmState::decode(&blob).unwrap();
        assert_eq!(back.vcpu.regs.rip, 0x1234);
        assert_eq!(back.vcpu.msrs, [(0x10, 99)]);
        assert_eq!(back.vcpu.xsave.as_deref().map(|x| x.len()), Some(1024));
        assert_eq!(back.guest_clock_ns, 42);

        let mut other = sample();
        other.version = STATE_VERSION + 1;
        assert!(matches!(
            VmState::decode(&other.encode()),
            Err(StateError::Version { .. })
        ));
        assert!(matches!(
            VmState::decode(b"{\"version\":1"),
            Err(StateError::Malformed(_))
        ));
        assert!(matches!(
            VmState::decode(&blob[..blob.len() / 2]),
            Err(StateError::Malformed(_))
        ));
    }
}
