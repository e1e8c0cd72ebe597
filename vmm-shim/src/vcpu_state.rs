//! Saving and restoring one vCPU's architectural state through KVM: general
//! and special registers, FPU/xsave, XCRs, debug registers, LAPIC, MSRs
//! (the readable subset of the host's `KVM_GET_MSR_INDEX_LIST`), pending
//! events and the MP state. Capabilities the host (e.g. nested PVM) lacks
//! are probed once and skipped, and the blob records which were present.

use kvm_bindings::{
    kvm_debugregs, kvm_fpu, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave, Msrs, KVM_MAX_MSR_ENTRIES,
};
use kvm_ioctls::{Kvm, VcpuFd};
use serde::{Deserialize, Serialize};

/// Errors saving or restoring vCPU state.
#[derive(Debug, thiserror::Error)]
pub enum VcpuStateError {
    #[error("KVM {op} failed: {source}")]
    Kvm {
        op: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("the saved vCPU state needs {0}, which this host's KVM does not support")]
    Unsupported(&'static str),
    #[error("cannot build the MSR list or state area: {0}")]
    Msrs(String),
}

fn kvm(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VcpuStateError {
    move |source| VcpuStateError::Kvm { op, source }
}

/// Which optional state this host's KVM can read and write for a vCPU.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct VcpuCaps {
    /// KVM_GET/SET_XSAVE.
    pub xsave: bool,
    /// KVM_GET/SET_XCRS.
    pub xcrs: bool,
    /// KVM_GET/SET_LAPIC (needs an in-kernel irqchip).
    pub lapic: bool,
    /// KVM_GET/SET_VCPU_EVENTS.
    pub vcpu_events: bool,
    /// KVM_GET/SET_MP_STATE.
    pub mp_state: bool,
    /// KVM_GET/SET_DEBUGREGS.
    pub debugregs: bool,
    /// MSR indices that can be read.
    pub msrs: Vec<u32>,
}

impl VcpuCaps {
    /// Probes what can be saved on `vcpu`.
    pub fn probe(kvm_sys: &Kvm, vcpu: &VcpuFd) -> VcpuCaps {
        let mut msrs = Vec::new();
        if let Ok(list) = kvm_sys.get_msr_index_list() {
            for &index in list.as_slice() {
                let Ok(mut one) = Msrs::from_entries(&[kvm_msr_entry {
                    index,
                    ..Default::default()
                }]) else {
                    continue;
                };
                if matches!(vcpu.get_msrs(&mut one), Ok(1)) {
                    msrs.push(index);
                }
            }
        }
        VcpuCaps {
            xsave: vcpu.get_xsave().is_ok(),
            xcrs: vcpu.get_xcrs().is_ok(),
            lapic: vcpu.get_lapic().is_ok(),
            vcpu_events: vcpu.get_vcpu_events().is_ok(),
            mp_state: vcpu.get_mp_state().is_ok(),
            debugregs: vcpu.get_debug_regs().is_ok(),
            msrs,
        }
    }
}

/// The x87/SSE state as KVM_GET_FPU returns it (kvm-bindings has no serde
/// for `kvm_fpu`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct FpuState {
    fpr: Vec<[u8; 16]>,
    fcw: u16,
    fsw: u16,
    ftwx: u8,
    last_opcode: u16,
    last_ip: u64,
    last_dp: u64,
    xmm: Vec<[u8; 16]>,
    mxcsr: u32,
}

impl From<&kvm_fpu> for FpuState {
    fn from(f: &kvm_fpu) -> Self {
        FpuState {
            fpr: f.fpr.to_vec(),
            fcw: f.fcw,
            fsw: f.fsw,
            ftwx: f.ftwx,
            last_opcode: f.last_opcode,
            last_ip: f.last_ip,
            last_dp: f.last_dp,
            xmm: f.xmm.to_vec(),
            mxcsr: f.mxcsr,
        }
    }
}

impl FpuState {
    fn to_kvm(&self) -> kvm_fpu {
        let mut f = kvm_fpu {
            fcw: self.fcw,
            fsw: self.fsw,
            ftwx: self.ftwx,
            last_opcode: self.last_opcode,
            last_ip: self.last_ip,
            last_dp: self.last_dp,
            mxcsr: self.mxcsr,
            ..Default::default()
        };
        for (d, s) in f.fpr.iter_mut().zip(&self.fpr) {
            *d = *s;
        }
        for (d, s) in f.xmm.iter_mut().zip(&self.xmm) {
            *d = *s;
        }
        f
    }
}

/// Everything a resumed vCPU needs.
#[derive(Clone, Serialize, Deserialize)]
pub struct VcpuState {
    /// General-purpose registers.
    pub regs: kvm_regs,
    /// Segment, control and descriptor-table registers.
    pub sregs: kvm_sregs,
    /// Legacy FPU/SSE state (also restored when xsave is present).
    pub fpu: FpuState,
    /// XSAVE area (the legacy 4 KiB region), when the host supports it.
    pub xsave: Option<Vec<u32>>,
    /// Extended control registers.
    pub xcrs: Option<kvm_xcrs>,
    /// Debug registers.
    pub debugregs: Option<kvm_debugregs>,
    /// Local APIC (only with an in-kernel irqchip).
    pub lapic: Option<kvm_lapic_state>,
    /// (index, value) of every readable MSR.
    pub msrs: Vec<(u32, u64)>,
    /// Pending exceptions, interrupts, NMIs.
    pub events: Option<kvm_vcpu_events>,
    /// Runnable / halted state.
    pub mp_state: Option<kvm_mp_state>,
}

impl std::fmt::Debug for VcpuState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VcpuState")
            .field("rip", &self.regs.rip)
            .field("rsp", &self.regs.rsp)
            .field("msrs", &self.msrs.len())
            .finish_non_exhaustive()
    }
}

/// Reads the state of a stopped vCPU (call only between KVM_RUNs).
pub fn save(vcpu: &VcpuFd, caps: &VcpuCaps) -> Result<VcpuState, VcpuStateError> {
    let mut msrs = Vec::new();
    if !caps.msrs.is_empty() {
        let entries: Vec<kvm_msr_entry> = caps
            .msrs
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut list =
            Msrs::from_entries(&entries).map_err(|e| VcpuStateError::Msrs(format!("{e:?}")))?;
        let n = vcpu.get_msrs(&mut list).map_err(kvm("KVM_GET_MSRS"))?;
        msrs = list.as_slice()[..n]
            .iter()
            .map(|e| (e.index, e.data))
            .collect();
    }
    Ok(VcpuState {
        regs: vcpu.get_regs().map_err(kvm("KVM_GET_REGS"))?,
        sregs: vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?,
        fpu: FpuState::from(&vcpu.get_fpu().map_err(kvm("KVM_GET_FPU"))?),
        xsave: if caps.xsave {
            Some(
                vcpu.get_xsave()
                    .map_err(kvm("KVM_GET_XSAVE"))?
                    .region
                    .to_vec(),
            )
        } else {
            None
        },
        xcrs: if caps.xcrs {
            Some(vcpu.get_xcrs().map_err(kvm("KVM_GET_XCRS"))?)
        } else {
            None
        },
        debugregs: if caps.debugregs {
            Some(vcpu.get_debug_regs().map_err(kvm("KVM_GET_DEBUGREGS"))?)
        } else {
            None
        },
        lapic: if caps.lapic {
            Some(vcpu.get_lapic().map_err(kvm("KVM_GET_LAPIC"))?)
        } else {
            None
        },
        msrs,
        events: if caps.vcpu_events {
            Some(vcpu.get_vcpu_events().map_err(kvm("KVM_GET_VCPU_EVENTS"))?)
        } else {
            None
        },
        mp_state: if caps.mp_state {
            Some(vcpu.get_mp_state().map_err(kvm("KVM_GET_MP_STATE"))?)
        } else {
            None
        },
    })
}

/// Checks, before anything is written, that `state` can be restored into
/// a vCPU with `caps`: the optional state it carries is supported here,
/// its XSAVE area has the legacy size and its MSRs fit one KVM_SET_MSRS
/// list. [`restore`] runs this first, so a blob that fails leaves the vCPU
/// as it was instead of half restored.
pub fn check(caps: &VcpuCaps, state: &VcpuState) -> Result<(), VcpuStateError> {
    if state.mp_state.is_some() && !caps.mp_state {
        return Err(VcpuStateError::Unsupported("KVM_SET_MP_STATE"));
    }
    if let Some(x) = &state.xsave {
        if !caps.xsave {
            return Err(VcpuStateError::Unsupported("KVM_SET_XSAVE"));
        }
        let words = kvm_xsave::default().region.len();
        if x.len() != words {
            return Err(VcpuStateError::Msrs(format!(
                "xsave area has {} words, expected {words}",
                x.len()
            )));
        }
    }
    if state.xcrs.is_some() && !caps.xcrs {
        return Err(VcpuStateError::Unsupported("KVM_SET_XCRS"));
    }
    if state.lapic.is_some() && !caps.lapic {
        return Err(VcpuStateError::Unsupported("KVM_SET_LAPIC"));
    }
    if state.msrs.len() > KVM_MAX_MSR_ENTRIES {
        return Err(VcpuStateError::Msrs(format!(
            "{} MSRs, more than the {KVM_MAX_MSR_ENTRIES} one KVM_SET_MSRS takes",
            state.msrs.len()
        )));
    }
    Ok(())
}

/// Writes `state` into a stopped vCPU, after [`check`]. Returns the MSR
/// indices the host refused (logged by the caller; the guest does not
/// depend on them).
pub fn restore(
    vcpu: &VcpuFd,
    caps: &VcpuCaps,
    state: &VcpuState,
) -> Result<Vec<u32>, VcpuStateError> {
    check(caps, state)?;
    if let Some(mp) = state.mp_state {
        vcpu.set_mp_state(mp).map_err(kvm("KVM_SET_MP_STATE"))?;
    }
    vcpu.set_sregs(&state.sregs).map_err(kvm("KVM_SET_SREGS"))?;
    vcpu.set_regs(&state.regs).map_err(kvm("KVM_SET_REGS"))?;
    vcpu.set_fpu(&state.fpu.to_kvm())
        .map_err(kvm("KVM_SET_FPU"))?;
    if let Some(x) = &state.xsave {
        let mut area = kvm_xsave::default();
        area.region.copy_from_slice(x);
        // SAFETY: `area` is a complete legacy-size kvm_xsave; without
        // KVM_CAP_XSAVE2 negotiated KVM reads exactly that size.
        unsafe { vcpu.set_xsave(&area) }.map_err(kvm("KVM_SET_XSAVE"))?;
    }
    if let Some(x) = &state.xcrs {
        vcpu.set_xcrs(x).map_err(kvm("KVM_SET_XCRS"))?;
    }
    if let Some(d) = &state.debugregs {
        if caps.debugregs {
            vcpu.set_debug_regs(d).map_err(kvm("KVM_SET_DEBUGREGS"))?;
        }
    }
    if let Some(l) = &state.lapic {
        vcpu.set_lapic(l).map_err(kvm("KVM_SET_LAPIC"))?;
    }
    let refused = restore_msrs(vcpu, &state.msrs)?;
    if let Some(e) = &state.events {
        if caps.vcpu_events {
            vcpu.set_vcpu_events(e)
                .map_err(kvm("KVM_SET_VCPU_EVENTS"))?;
        }
    }
    Ok(refused)
}

/// KVM_SET_MSRS stops at the first MSR it refuses; skip that one and go on.
fn restore_msrs(vcpu: &VcpuFd, msrs: &[(u32, u64)]) -> Result<Vec<u32>, VcpuStateError> {
    let mut refused = Vec::new();
    let mut rest = msrs;
    while !rest.is_empty() {
        let entries: Vec<kvm_msr_entry> = rest
            .iter()
            .map(|&(index, data)| kvm_msr_entry {
                index,
                data,
                ..Default::default()
            })
            .collect();
        let list =
            Msrs::from_entries(&entries).map_err(|e| VcpuStateError::Msrs(format!("{e:?}")))?;
        let n = vcpu.set_msrs(&list).map_err(kvm("KVM_SET_MSRS"))?;
        if n < rest.len() {
            refused.push(rest[n].0);
            rest = &rest[n + 1..];
        } else {
            rest = &[];
        }
    }
    Ok(refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> VcpuState {
        VcpuState {
            regs: Default::default(),
            sregs: Default::default(),
            fpu: FpuState::default(),
            xsave: Some(vec![0; kvm_xsave::default().region.len()]),
            xcrs: Some(Default::default()),
            debugregs: None,
            lapic: Some(Default::default()),
            msrs: vec![(0x10, 1)],
            events: None,
            mp_state: Some(Default::default()),
        }
    }

    fn all_caps() -> VcpuCaps {
        VcpuCaps {
            xsave: true,
            xcrs: true,
            lapic: true,
            vcpu_events: true,
            mp_state: true,
            debugregs: true,
            msrs: vec![0x10],
        }
    }

    #[test]
    fn check_refuses_what_restore_could_only_half_apply() {
        check(&all_caps(), &state()).unwrap();
        for (caps, needs) in [
            (
                VcpuCaps {
                    xsave: false,
                    ..all_caps()
                },
                "KVM_SET_XSAVE",
            ),
            (
                VcpuCaps {
                    xcrs: false,
                    ..all_caps()
                },
                "KVM_SET_XCRS",
            ),
            (
                VcpuCaps {
                    lapic: false,
                    ..all_caps()
                },
                "KVM_SET_LAPIC",
            ),
            (
                VcpuCaps {
                    mp_state: false,
                    ..all_caps()
                },
                "KVM_SET_MP_STATE",
            ),
        ] {
            match check(&caps, &state()) {
                Err(VcpuStateError::Unsupported(n)) => assert_eq!(n, needs),
                other => panic!("expected {needs} unsupported, got {other:?}"),
            }
        }
        let short = VcpuState {
            xsave: Some(vec![0; 10]),
            ..state()
        };
        assert!(check(&all_caps(), &short)
            .unwrap_err()
            .to_string()
            .contains("10 words"));
        let many = VcpuState {
            msrs: (0..=KVM_MAX_MSR_ENTRIES as u32).map(|i| (i, 0)).collect(),
            ..state()
        };
        assert!(check(&all_caps(), &many)
            .unwrap_err()
            .to_string()
            .contains("257 MSRs"));
        // What a host without the optional state saves restores anywhere.
        let plain = VcpuState {
            xsave: None,
            xcrs: None,
            lapic: None,
            mp_state: None,
            ..state()
        };
        check(&VcpuCaps::default(), &plain).unwrap();
    }
}
