//! The serial console on COM1 and the `print!`/`println!` macros.

use crate::port::{inb, outb};
use wanmig_guest_abi::{SERIAL_LSR_OFFSET, SERIAL_PORT};

/// A `core::fmt::Write` sink that writes to the 16550 UART on COM1.
pub struct Serial;

impl core::fmt::Write for Serial {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for b in s.bytes() {
            // Wait for "transmitter holding register empty" (the VMM's
            // UART is always ready; real hardware might not be).
            while inb(SERIAL_PORT + SERIAL_LSR_OFFSET) & 0x20 == 0 {}
            outb(SERIAL_PORT, b);
        }
        Ok(())
    }
}

#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {{
        let _ = core::fmt::Write::write_fmt(&mut $crate::console::Serial, format_args!($($arg)*));
    }};
}

#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {{
        $crate::print!($($arg)*);
        $crate::print!("\n");
    }};
}
