//! Kicking a vCPU thread out of KVM_RUN: a no-op handler for a real-time
//! signal, so the signal interrupts the ioctl (EINTR) without killing the
//! process.

use std::sync::Once;
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

/// The signal used to kick vCPU threads.
pub fn kick_signal() -> i32 {
    SIGRTMIN() + 3
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the no-op handler once per process.
pub fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if let Err(e) = register_signal_handler(kick_signal(), on_kick) {
            tracing::error!(
                "cannot install the vCPU kick signal handler: {e}; pausing a busy guest may stall"
            );
        }
    });
}
