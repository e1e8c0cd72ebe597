//! QEMU for tests: whether `qemu-system-x86_64` runs here ([`binary`],
//! [`require_qemu`]), the QMP client ([`qmp`], the gateway's, from
//! `wanmig-qemu-stream`) and a guest firmware that dirties memory at a set
//! rate ([`guest`]).

pub mod guest;
pub use wanmig_qemu_stream::qmp;

use std::path::PathBuf;

/// The `qemu-system-x86_64` on `PATH`, or why there is none.
pub fn binary() -> Result<PathBuf, String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let bin = std::env::split_paths(&path)
        .map(|d| d.join("qemu-system-x86_64"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            "qemu-system-x86_64 is not on PATH (install Debian's qemu-system-x86)".to_string()
        })?;
    match std::process::Command::new(&bin).arg("--version").output() {
        Ok(o) if o.status.success() => Ok(bin),
        Ok(o) => Err(format!(
            "{} --version failed: {}",
            bin.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("cannot run {}: {e}", bin.display())),
    }
}

/// The QEMU binary when the test may run QEMU; `None` (after printing why)
/// when it should return early. Panics when QEMU is missing and
/// `WANMIG_REQUIRE_QEMU=1`.
pub fn require_qemu(test: &str) -> Option<PathBuf> {
    match binary() {
        Ok(bin) => Some(bin),
        Err(why) => {
            crate::gate(test, "QEMU", "WANMIG_REQUIRE_QEMU", Err(why));
            None
        }
    }
}
