//! One QEMU process of the baseline, started inside a network namespace
//! and ended by its pid: the command line for the source (RAM mapped from
//! the memory image) and the destination (`-incoming defer`), its QMP
//! socket and its log.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::qmp::Qmp;

/// Which end of the migration a QEMU is.
pub enum Role<'a> {
    /// RAM is a private mapping of `image`.
    Source { image: &'a Path },
    /// RAM is anonymous; waits for `migrate-incoming`.
    Destination,
}

/// A running QEMU; killed (by pid) on drop.
pub struct QemuVm {
    child: Child,
    name: &'static str,
    qmp: PathBuf,
    log: PathBuf,
}

impl QemuVm {
    /// Starts QEMU in namespace `ns` with `mib` MiB of RAM and `firmware`
    /// as its BIOS; its QMP socket and log go to `dir`.
    pub fn start(
        qemu: &Path,
        ns: &str,
        dir: &Path,
        role: Role<'_>,
        mib: u64,
        firmware: &Path,
    ) -> Result<Self> {
        let name = match role {
            Role::Source { .. } => "source",
            Role::Destination => "destination",
        };
        let qmp = dir.join(format!("{name}.qmp"));
        let log = dir.join(format!("{name}.log"));
        let backend = match role {
            Role::Source { image } => format!(
                "memory-backend-file,id=ram0,size={mib}M,mem-path={},share=off",
                image.display()
            ),
            Role::Destination => format!("memory-backend-ram,id=ram0,size={mib}M"),
        };
        // `ip netns exec` execs QEMU, so the child's pid is QEMU's.
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns])
            .arg(qemu)
            .args(["-name", &format!("wanmig-baseline-{name}")])
            .args(["-machine", "pc,accel=tcg,memory-backend=ram0"])
            .args(["-object", &backend])
            .args(["-m", &format!("{mib}M"), "-smp", "1"])
            .args(["-nodefaults", "-no-user-config", "-display", "none"])
            .arg("-bios")
            .arg(firmware)
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp.display()));
        if let Role::Destination = role {
            cmd.args(["-incoming", "defer"]);
        }
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().context("duplicating the log handle")?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting the {name} QEMU ({})", qemu.display()))?;
        Ok(QemuVm {
            child,
            name,
            qmp,
            log,
        })
    }

    /// Connects to its QMP socket; on failure the error carries QEMU's log.
    pub fn qmp(&self) -> Result<Qmp> {
        Qmp::connect(
            &self.qmp,
            &format!("{} QEMU", self.name),
            Duration::from_secs(20),
        )
        .with_context(|| self.log_tail())
    }

    /// The end of QEMU's own output (for error messages).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let text = text.trim();
        let start = text.len().saturating_sub(2000);
        let start = (start..text.len())
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(text.len());
        format!("{} QEMU said: {:?}", self.name, &text[start..])
    }

    fn kill(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

impl Drop for QemuVm {
    fn drop(&mut self) {
        self.kill();
    }
}
