//! VMs hosted at this site. [`VmHosting`] is what the migration relay needs
//! from a host: start a VM, give one up over a shim-protocol stream, take
//! one in from such a stream, and list what runs here. [`VmHost`] runs the
//! VMs in this process (wanmig-vmm's `Vm`, one set of vCPU threads each),
//! which needs no root and lets one process run several sites. An
//! out-of-process host would implement the same trait by starting the
//! `wanmig-vmm` binary and handing it the stream's other end (its
//! `--incoming unix:` and admin `migrate` commands); the relay would not
//! change, because the shim protocol on a unix stream is the boundary.

use std::collections::{BTreeMap, VecDeque};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use wanmig_vmm::migration::IncomingReport;
use wanmig_vmm::virtio::ChannelPort;
use wanmig_vmm::{
    migrate_to, receive_from, MigrateOptions, MigrationError, MigrationReport, ReceiveOptions, Vm,
    VmConfig,
};

/// Serial console lines kept per VM.
const SERIAL_LINES: usize = 200;

/// Why a host could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("VM '{0}' is not known at this site (see `wanmig vm list`)")]
    Unknown(String),
    #[error("VM '{name}' is {state} at this site, so it cannot {action}")]
    Busy {
        name: String,
        state: String,
        action: &'static str,
    },
    #[error("invalid VM name '{0}': use 1-64 letters, digits, '-', '_' or '.'")]
    BadName(String),
    #[error("invalid VM configuration: {0}")]
    Config(String),
    #[error("starting VM '{name}': {reason}")]
    Start { name: String, reason: String },
    #[error(transparent)]
    Migration(#[from] MigrationError),
}

/// Where a VM stands at this site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum VmState {
    /// Runs here.
    Running,
    /// Runs here while being migrated to `to`.
    MigratingOut { to: String },
    /// Being received from `from`; not running yet.
    Incoming { from: String },
    /// Handed over to `to`, which confirmed it runs there.
    MigratedAway { to: String },
    /// Handed over to `to`, but `to` did not confirm it resumed: it runs
    /// there unless `to` lost it; it never runs here again.
    HandoverUnconfirmed { to: String, reason: String },
    /// The guest stopped or the VMM failed.
    Failed { reason: String },
}

impl std::fmt::Display for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VmState::Running => write!(f, "running"),
            VmState::MigratingOut { to } => write!(f, "migrating to {to}"),
            VmState::Incoming { from } => write!(f, "arriving from {from}"),
            VmState::MigratedAway { to } => write!(f, "migrated to {to}"),
            VmState::HandoverUnconfirmed { to, reason } => {
                write!(f, "handed over to {to}, unconfirmed: {reason}")
            }
            VmState::Failed { reason } => write!(f, "failed: {reason}"),
        }
    }
}

/// One VM as listed by `wanmig status` / `GET /v1/vms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmInfo {
    pub name: String,
    #[serde(flatten)]
    pub state: VmState,
    pub mem_size: u64,
    /// The guest's memory-workload iteration last reported (0 = none).
    pub iteration: u64,
    /// The outcome of the last migration attempt that left the VM here.
    pub last_error: Option<String>,
}

/// What the migration relay needs from the VMs at a site.
pub trait VmHosting: Send + Sync + 'static {
    /// Boots a VM called `name` and lets it run.
    fn start(&self, name: &str, config: VmConfig) -> Result<(), HostError>;
    /// The configuration of a VM that runs here.
    fn config(&self, name: &str) -> Result<VmConfig, HostError>;
    /// Migrates `name` out over `stream` (blocking, the shim protocol).
    /// Marks it as leaving for `to` while it runs; on failure before the
    /// handover the VM keeps running here.
    fn migrate_out(
        &self,
        name: &str,
        to: &str,
        stream: UnixStream,
        opts: &MigrateOptions,
    ) -> Result<MigrationReport, HostError>;
    /// Receives `name` from `from` over `stream` (blocking). Returns once it
    /// runs here; on error nothing runs here.
    fn receive(
        &self,
        name: &str,
        from: &str,
        config: VmConfig,
        stream: UnixStream,
        opts: &ReceiveOptions,
    ) -> Result<IncomingReport, HostError>;
    /// Every VM this site knows of.
    fn list(&self) -> Vec<VmInfo>;
    /// Settles a VM left [`VmState::HandoverUnconfirmed`]: `to` now says
    /// whether it runs there.
    fn settle_handover(&self, name: &str, to: &str, running_there: bool);
}

struct Entry {
    config: VmConfig,
    state: VmState,
    /// The VM, while it is here (also kept after it was handed over, paused
    /// for good, so its last reports stay readable); `None` while a
    /// migration holds it or before it arrived.
    vm: Option<Vm>,
    net_port: Option<ChannelPort>,
    serial: Arc<Mutex<VecDeque<String>>>,
    last_error: Option<String>,
}

/// VMs running in this process.
#[derive(Default)]
pub struct VmHost {
    vms: Mutex<BTreeMap<String, Entry>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Checks a VM name (it appears in paths, logs and URLs).
pub fn validate_vm_name(name: &str) -> Result<(), HostError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(HostError::BadName(name.to_string()))
    }
}

fn serial_sink(lines: Arc<Mutex<VecDeque<String>>>) -> wanmig_vmm::serial::SerialSink {
    Box::new(move |s: &str| {
        let mut l = lock(&lines);
        if l.len() == SERIAL_LINES {
            l.pop_front();
        }
        l.push_back(s.to_string());
    })
}

impl VmHost {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `f` on the VM called `name` if it is held here (running, or
    /// released after a handover).
    pub fn with_vm<R>(&self, name: &str, f: impl FnOnce(&Vm) -> R) -> Option<R> {
        lock(&self.vms).get(name).and_then(|e| e.vm.as_ref()).map(f)
    }

    /// The state of `name` here.
    pub fn state(&self, name: &str) -> Option<VmState> {
        lock(&self.vms).get(name).map(|e| e.state.clone())
    }

    /// The far end of the VM's in-process virtio-net card (once per run
    /// here), for the overlay to attach.
    pub fn take_net_port(&self, name: &str) -> Option<ChannelPort> {
        lock(&self.vms).get_mut(name)?.net_port.take()
    }

    /// The VM's last serial console lines.
    pub fn serial(&self, name: &str) -> Vec<String> {
        lock(&self.vms)
            .get(name)
            .map(|e| lock(&e.serial).iter().cloned().collect())
            .unwrap_or_default()
    }

    fn busy(name: &str, state: &VmState, action: &'static str) -> HostError {
        HostError::Busy {
            name: name.to_string(),
            state: state.to_string(),
            action,
        }
    }

    /// Whether a VM in `state` may be replaced by a new one of the same
    /// name (it does not and will not run here).
    fn replaceable(state: &VmState) -> bool {
        matches!(
            state,
            VmState::MigratedAway { .. }
                | VmState::HandoverUnconfirmed { .. }
                | VmState::Failed { .. }
        )
    }
}

impl VmHosting for VmHost {
    fn start(&self, name: &str, config: VmConfig) -> Result<(), HostError> {
        validate_vm_name(name)?;
        config
            .validate()
            .map_err(|e| HostError::Config(e.to_string()))?;
        if let Some(e) = lock(&self.vms).get(name) {
            if !Self::replaceable(&e.state) {
                return Err(Self::busy(name, &e.state, "be started again"));
            }
        }
        let serial = Arc::new(Mutex::new(VecDeque::new()));
        let vm = Vm::create(config.clone(), serial_sink(serial.clone())).map_err(|e| {
            HostError::Start {
                name: name.to_string(),
                reason: e.to_string(),
            }
        })?;
        vm.start().map_err(|e| HostError::Start {
            name: name.to_string(),
            reason: e.to_string(),
        })?;
        let net_port = vm.take_net_port();
        let mut vms = lock(&self.vms);
        if let Some(e) = vms.get(name) {
            if !Self::replaceable(&e.state) {
                return Err(Self::busy(name, &e.state, "be started again"));
            }
        }
        tracing::info!(vm = name, mem = config.mem_size, "VM started");
        vms.insert(
            name.to_string(),
            Entry {
                config,
                state: VmState::Running,
                vm: Some(vm),
                net_port,
                serial,
                last_error: None,
            },
        );
        Ok(())
    }

    fn config(&self, name: &str) -> Result<VmConfig, HostError> {
        let vms = lock(&self.vms);
        let e = vms
            .get(name)
            .ok_or_else(|| HostError::Unknown(name.to_string()))?;
        match e.state {
            VmState::Running => Ok(e.config.clone()),
            ref s => Err(Self::busy(name, s, "be migrated")),
        }
    }

    fn migrate_out(
        &self,
        name: &str,
        to: &str,
        mut stream: UnixStream,
        opts: &MigrateOptions,
    ) -> Result<MigrationReport, HostError> {
        let mut vm = {
            let mut vms = lock(&self.vms);
            let e = vms
                .get_mut(name)
                .ok_or_else(|| HostError::Unknown(name.to_string()))?;
            if e.state != VmState::Running || e.vm.is_none() {
                return Err(Self::busy(name, &e.state, "be migrated"));
            }
            e.state = VmState::MigratingOut { to: to.to_string() };
            e.vm.take().expect("checked above")
        };
        let result = migrate_to(&mut vm, &mut stream, opts);
        drop(stream);
        let mut vms = lock(&self.vms);
        let Some(e) = vms.get_mut(name) else {
            return result.map_err(Into::into);
        };
        e.vm = Some(vm);
        match &result {
            Ok(_) => {
                e.state = VmState::MigratedAway { to: to.to_string() };
                e.last_error = None;
                e.net_port = None;
            }
            Err(err) if err.vm_kept_at_source() => {
                e.state = VmState::Running;
                e.last_error = Some(format!("migration to {to} failed: {err}"));
            }
            Err(err) => {
                e.state = VmState::HandoverUnconfirmed {
                    to: to.to_string(),
                    reason: err.to_string(),
                };
                e.net_port = None;
            }
        }
        result.map_err(Into::into)
    }

    fn receive(
        &self,
        name: &str,
        from: &str,
        config: VmConfig,
        mut stream: UnixStream,
        opts: &ReceiveOptions,
    ) -> Result<IncomingReport, HostError> {
        validate_vm_name(name)?;
        config
            .validate()
            .map_err(|e| HostError::Config(e.to_string()))?;
        let serial = Arc::new(Mutex::new(VecDeque::new()));
        // Reserve the name: a second migration of the same VM to this site
        // must not race this one.
        let previous = {
            let mut vms = lock(&self.vms);
            if let Some(e) = vms.get(name) {
                if !Self::replaceable(&e.state) {
                    return Err(Self::busy(name, &e.state, "be received"));
                }
            }
            vms.insert(
                name.to_string(),
                Entry {
                    config: config.clone(),
                    state: VmState::Incoming {
                        from: from.to_string(),
                    },
                    vm: None,
                    net_port: None,
                    serial: serial.clone(),
                    last_error: None,
                },
            )
        };
        let result = receive_from(&mut stream, config, serial_sink(serial), opts);
        drop(stream);
        let mut vms = lock(&self.vms);
        match result {
            Ok((vm, report)) => {
                if let Some(e) = vms.get_mut(name) {
                    e.net_port = vm.take_net_port();
                    e.vm = Some(vm);
                    e.state = VmState::Running;
                }
                tracing::info!(vm = name, from, "VM arrived and runs here");
                Ok(report)
            }
            Err(err) => {
                match previous {
                    Some(p) => vms.insert(name.to_string(), p),
                    None => vms.remove(name),
                };
                Err(err.into())
            }
        }
    }

    fn settle_handover(&self, name: &str, to: &str, running_there: bool) {
        let mut vms = lock(&self.vms);
        let Some(e) = vms.get_mut(name) else { return };
        if !matches!(&e.state, VmState::HandoverUnconfirmed { to: t, .. } if t == to) {
            return;
        }
        e.state = if running_there {
            VmState::MigratedAway { to: to.to_string() }
        } else {
            VmState::Failed {
                reason: format!(
                    "handed over to {to}, which discarded it: the VM runs nowhere; start it again"
                ),
            }
        };
    }

    fn list(&self) -> Vec<VmInfo> {
        lock(&self.vms)
            .iter()
            .map(|(name, e)| VmInfo {
                name: name.clone(),
                state: e.state.clone(),
                mem_size: e.config.mem_size,
                iteration: e
                    .vm
                    .as_ref()
                    .and_then(|vm| vm.reports().mem_samples().last().map(|s| s.iteration))
                    .unwrap_or(0),
                last_error: e.last_error.clone(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for ok in ["web", "db-1", "a.b_c"] {
            validate_vm_name(ok).unwrap();
        }
        for bad in ["", ".x", "a/b", "a b", &"x".repeat(65)] {
            assert!(validate_vm_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn unknown_vms_and_bad_configs_are_refused_with_reasons() {
        let host = VmHost::new();
        let e = host.config("nope").unwrap_err();
        assert!(e.to_string().contains("not known"), "{e}");
        let (a, _b) = UnixStream::pair().unwrap();
        assert!(matches!(
            host.migrate_out("nope", "site-b", a, &MigrateOptions::default()),
            Err(HostError::Unknown(_))
        ));
        let bad = VmConfig {
            mem_size: 12345,
            ..VmConfig::default()
        };
        let e = host.start("x", bad).unwrap_err();
        assert!(e.to_string().contains("mem_size"), "{e}");
        assert!(host.list().is_empty());
    }

    #[test]
    fn states_read_well() {
        let s = VmState::HandoverUnconfirmed {
            to: "site-b".into(),
            reason: "link down".into(),
        };
        assert_eq!(
            s.to_string(),
            "handed over to site-b, unconfirmed: link down"
        );
        let j = serde_json::to_string(&VmState::MigratedAway { to: "b".into() }).unwrap();
        assert_eq!(j, r#"{"state":"migrated-away","to":"b"}"#);
    }
}
