//! A 16550 UART subset on COM1: transmit-only, always ready. Bytes the guest
//! writes are split into lines and handed to a sink (a log file, a test's
//! buffer or tracing).

use serde::{Deserialize, Serialize};
use wanmig_guest_abi::SERIAL_LSR_OFFSET;

/// Where complete console lines go.
pub type SerialSink = Box<dyn FnMut(&str) + Send>;

/// The UART model. Its only state is a partial line and the scratch
/// register, both migrated.
#[derive(Default, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Serial {
    partial: Vec<u8>,
    scratch: u8,
}

const MAX_LINE: usize = 4096;

impl Serial {
    /// Handles a guest write to `offset` (0..8) of the UART; returns a
    /// completed console line, if this byte ended one.
    pub fn write(&mut self, offset: u16, value: u8) -> Option<String> {
        match offset {
            0 => {
                if value == b'\n' || self.partial.len() >= MAX_LINE {
                    let line = String::from_utf8_lossy(&self.partial).into_owned();
                    self.partial.clear();
                    if value != b'\n' {
                        self.partial.push(value);
                    }
                    Some(line)
                } else {
                    if value != b'\r' {
                        self.partial.push(value);
                    }
                    None
                }
            }
            7 => {
                self.scratch = value;
                None
            }
            _ => None, // IER, FCR, LCR, MCR: accepted and ignored
        }
    }

    /// Handles a guest read of `offset`.
    pub fn read(&self, offset: u16) -> u8 {
        match offset {
            // LSR: transmitter holding register and transmitter empty.
            o if o == SERIAL_LSR_OFFSET => 0x60,
            7 => self.scratch,
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_lines_and_reports_ready() {
        let mut s = Serial::default();
        let mut lines = Vec::new();
        for b in b"hi\r\nthere\n" {
            lines.extend(s.write(0, *b));
        }
        assert_eq!(lines, ["hi", "there"]);
        assert_eq!(s.read(SERIAL_LSR_OFFSET) & 0x20, 0x20);
        s.write(7, 0x5a);
        assert_eq!(s.read(7), 0x5a);
    }
}
