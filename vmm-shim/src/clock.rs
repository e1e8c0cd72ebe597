//! The guest clock the control port hands out: nanoseconds of guest run
//! time, frozen while the VM is paused and carried across migration, so a
//! guest pacing itself by it sees no jump at the destination. Sans-IO: the
//! caller passes the current `Instant`.

use std::time::Instant;

/// Guest run time, accumulated across pauses and hosts.
#[derive(Debug, Clone, Default)]
pub struct GuestClock {
    offset_ns: u64,
    running_since: Option<Instant>,
}

impl GuestClock {
    /// The guest clock at `now`.
    pub fn now_ns(&self, now: Instant) -> u64 {
        let running = self
            .running_since
            .map(|s| now.saturating_duration_since(s).as_nanos() as u64)
            .unwrap_or(0);
        self.offset_ns + running
    }

    /// Starts the clock (no-op when running).
    pub fn start(&mut self, now: Instant) {
        if self.running_since.is_none() {
            self.running_since = Some(now);
        }
    }

    /// Stops the clock (no-op when stopped).
    pub fn stop(&mut self, now: Instant) {
        self.offset_ns = self.now_ns(now);
        self.running_since = None;
    }

    /// Sets a stopped clock to `ns` (restoring a migrated VM).
    pub fn set(&mut self, ns: u64) {
        self.offset_ns = ns;
        self.running_since = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn freezes_while_stopped_and_resumes_from_there() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut c = GuestClock::default();
        assert_eq!(c.now_ns(ms(5)), 0);
        c.start(ms(10));
        assert_eq!(c.now_ns(ms(15)), 5_000_000);
        c.stop(ms(20));
        assert_eq!(c.now_ns(ms(100)), 10_000_000);
        let mut moved = GuestClock::default();
        moved.set(c.now_ns(ms(100)));
        moved.start(ms(200));
        assert_eq!(moved.now_ns(ms(201)), 11_000_000);
    }
}
