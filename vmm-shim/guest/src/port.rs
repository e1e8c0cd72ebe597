//! x86 port I/O, the guest's only way to reach the serial console and the
//! VMM's control ports.

/// Writes a byte to an I/O port.
pub fn outb(port: u16, value: u8) {
    // SAFETY: port I/O has no memory effects; in this guest every port is
    // emulated by the VMM.
    unsafe {
        core::arch::asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    }
}

/// Reads a byte from an I/O port.
pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: as for `outb`.
    unsafe {
        core::arch::asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack, preserves_flags))
    }
    value
}

/// Writes a 32-bit value to an I/O port. Not `nomem`: the VMM may read or
/// write guest memory the value points at while handling the exit.
pub fn outl(port: u16, value: u32) {
    // SAFETY: as for `outb`; memory effects are declared (no `nomem`).
    unsafe {
        core::arch::asm!("out dx, eax", in("dx") port, in("eax") value, options(nostack, preserves_flags))
    }
}
