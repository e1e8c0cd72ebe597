//! Decimal formatting of integers without `core::fmt`'s integer `Display`.
//!
//! The precompiled `core` for the host target formats numbers of four or
//! more digits with SSE instructions (`movd`/`pinsrw` into xmm registers)
//! that the nested-KVM (PVM) instruction emulator cannot execute: the vCPU
//! stops with an emulation failure. [`Dec`] prints digits with plain
//! integer arithmetic instead.

use core::fmt;

/// An integer that formats in decimal with plain integer instructions.
#[derive(Clone, Copy)]
pub struct Dec(pub u64);

impl fmt::Display for Dec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        let mut v = self.0;
        loop {
            at -= 1;
            digits[at] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        // Only ASCII digits were written.
        f.write_str(core::str::from_utf8(&digits[at..]).unwrap_or("?"))
    }
}
