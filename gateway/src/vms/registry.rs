//! The VMs this site knows of, by name ([`Registry`]), and the rules of
//! their states ([`VmState`]): which state follows which, and the
//! bookkeeping that keeps a VM in exactly one place. A name is held while
//! its VM runs, boots, leaves or arrives here; an arrival or a boot that
//! fails leaves the registry as it was; a VM that left never runs here
//! again, and its name is free for a new one.
//!
//! Both hosts ([`super::VmHost`], [`super::ProcessHost`]) keep their VMs
//! here and add only what is theirs: the `E` of [`Registry<E>`] (a VMM
//! object, a child process). What the registry keeps of a VM on its own is
//! a [`VmRecord`], which serde reads and writes.
//!
//! The registry's lock is held for one short read or transition at a time,
//! never across I/O: a boot, a migration or a question to a VMM runs
//! without it, so many VMs can start, leave and arrive at once. Closures
//! passed in run under the lock and must not block.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use wanmig_migration::machine::VmConfig;
use wanmig_storage::RemoteDisk;

use super::disk_state::{live_disk_state, DiskState};
use super::error::HostError;

/// Where a VM stands at this site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum VmState {
    /// Runs here.
    Running,
    /// Runs here while being migrated to `to`.
    MigratingOut { to: String },
    /// Being received from `from` (or booted here); not running yet.
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

impl VmState {
    /// Whether a VM in this state may be replaced by a new one of the same
    /// name (it does not and will not run here).
    pub fn replaceable(&self) -> bool {
        matches!(
            self,
            VmState::MigratedAway { .. }
                | VmState::HandoverUnconfirmed { .. }
                | VmState::Failed { .. }
        )
    }

    /// What a handover to `to` that the source could not confirm becomes
    /// once `to` answers whether the VM runs there; `None` when this is no
    /// unconfirmed handover to `to` (nothing to settle).
    pub fn settled(&self, to: &str, running_there: bool) -> Option<VmState> {
        if !matches!(self, VmState::HandoverUnconfirmed { to: t, .. } if t == to) {
            return None;
        }
        Some(if running_there {
            VmState::MigratedAway { to: to.to_string() }
        } else {
            VmState::Failed {
                reason: format!(
                    "handed over to {to}, which discarded it: the VM runs nowhere; start it again"
                ),
            }
        })
    }
}

impl HostError {
    /// `name` is in `state`, in which it cannot do `action`.
    pub(crate) fn busy(name: &str, state: &VmState, action: &'static str) -> HostError {
        HostError::Busy {
            name: name.to_string(),
            state: state.to_string(),
            action,
        }
    }
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

/// What the registry keeps of one VM, whichever host runs it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmRecord {
    pub config: VmConfig,
    pub state: VmState,
    /// The outcome of the last migration attempt that left the VM here.
    #[serde(default)]
    pub last_error: Option<String>,
    /// The disk's follow-on storage migration, when it migrated here with
    /// storage.
    #[serde(default)]
    pub disk: Option<DiskState>,
}

impl VmRecord {
    /// A VM with `config` in `state`, nothing else known yet.
    pub fn new(config: VmConfig, state: VmState) -> Self {
        VmRecord {
            config,
            state,
            last_error: None,
            disk: None,
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
    /// The disk's follow-on storage migration, when it migrated here with
    /// storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<DiskState>,
}

/// How a migration out of this site ended, as the host saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Departure {
    /// The destination confirmed the VM runs there.
    Left,
    /// It failed before the handover: the VM runs here still. `error`
    /// (when given) becomes the VM's last error.
    Stayed { error: Option<String> },
    /// Handed over, but the destination did not confirm it resumed.
    Unconfirmed { reason: String },
    /// The VM ended during the migration.
    Ended {
        reason: String,
        error: Option<String>,
    },
}

/// One VM in the registry: its record, the live handle of its disk copy
/// while one runs, and the host's own part.
pub struct Entry<E> {
    record: VmRecord,
    remote_disk: Option<Arc<RemoteDisk>>,
    /// What the host keeps of the VM besides the record.
    pub host: E,
}

impl<E> Entry<E> {
    pub fn record(&self) -> &VmRecord {
        &self.record
    }

    /// The disk's state, with live progress while its copy runs.
    pub fn disk(&self) -> Option<DiskState> {
        self.record
            .disk
            .as_ref()
            .map(|s| live_disk_state(s, self.remote_disk.as_ref()))
    }

    /// Whether the VM's disk is the copy at `path`.
    fn on_disk(&self, path: &Path) -> bool {
        self.record
            .config
            .disk
            .as_ref()
            .is_some_and(|d| d.path == path)
    }
}

/// A VM's disk copy, as [`Registry::disk`] lets the disk-follow logic
/// change it.
pub struct DiskSlot<'a> {
    pub state: &'a VmState,
    pub disk: &'a mut Option<DiskState>,
    pub remote: &'a mut Option<Arc<RemoteDisk>>,
}

/// The VMs of one host, by name (see the module comment). Cheap to clone;
/// clones share the VMs.
pub struct Registry<E> {
    vms: Arc<Mutex<BTreeMap<String, Entry<E>>>>,
}

impl<E> Clone for Registry<E> {
    fn clone(&self) -> Self {
        Registry {
            vms: Arc::clone(&self.vms),
        }
    }
}

impl<E> Default for Registry<E> {
    fn default() -> Self {
        Registry {
            vms: Arc::new(Mutex::new(BTreeMap::new())),
        }
    }
}

impl<E> Registry<E> {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Entry<E>>> {
        self.vms.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads `name`'s entry.
    pub fn with<R>(&self, name: &str, f: impl FnOnce(&Entry<E>) -> R) -> Option<R> {
        self.lock().get(name).map(f)
    }

    /// Changes the host's own part of `name`'s entry.
    pub fn with_host<R>(&self, name: &str, f: impl FnOnce(&mut E) -> R) -> Option<R> {
        self.lock().get_mut(name).map(|e| f(&mut e.host))
    }

    /// The state of `name` here.
    pub fn state(&self, name: &str) -> Option<VmState> {
        self.with(name, |e| e.record.state.clone())
    }

    /// The names of the VMs in `state`.
    pub fn names_in(&self, state: &VmState) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|(_, e)| e.record.state == *state)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Every VM, with what `extra` reads from the host's part (the list's
    /// iteration, or a handle to read it from after the lock is released).
    pub fn list<T>(&self, extra: impl Fn(&E) -> T) -> Vec<(VmInfo, T)> {
        self.lock()
            .iter()
            .map(|(name, e)| {
                let info = VmInfo {
                    name: name.clone(),
                    state: e.record.state.clone(),
                    mem_size: e.record.config.mem_size,
                    iteration: 0,
                    last_error: e.record.last_error.clone(),
                    storage: e.disk(),
                };
                (info, extra(&e.host))
            })
            .collect()
    }

    /// Every VM's record.
    pub fn records(&self) -> BTreeMap<String, VmRecord> {
        self.lock()
            .iter()
            .map(|(n, e)| (n.clone(), e.record.clone()))
            .collect()
    }

    /// Puts back a VM known from before (a host taking over VMs that
    /// outlived a previous gateway), in whatever state it was found.
    pub fn restore(&self, name: &str, record: VmRecord, host: E) {
        self.lock().insert(
            name.to_string(),
            Entry {
                record,
                remote_disk: None,
                host,
            },
        );
    }

    /// Holds `name` for a VM with `config` that boots or arrives from
    /// `from` ([`VmState::Incoming`]), unless a VM of that name runs,
    /// leaves or arrives here (then: why it cannot `action`). The VM runs
    /// here once the [`Reservation`] is committed; dropped uncommitted, the
    /// registry is as it was.
    pub fn reserve(
        &self,
        name: &str,
        config: VmConfig,
        from: &str,
        action: &'static str,
        host: E,
    ) -> Result<Reservation<'_, E>, HostError> {
        validate_vm_name(name)?;
        let mut vms = self.lock();
        if let Some(e) = vms.get(name) {
            if !e.record.state.replaceable() {
                return Err(HostError::busy(name, &e.record.state, action));
            }
        }
        let entry = Entry {
            record: VmRecord::new(
                config,
                VmState::Incoming {
                    from: from.to_string(),
                },
            ),
            remote_disk: None,
            host,
        };
        let previous = vms.insert(name.to_string(), entry);
        Ok(Reservation {
            registry: self,
            name: name.to_string(),
            previous: Some(previous),
        })
    }

    /// The configuration of `name` for a migration out: it must run here,
    /// and pass the host's own `check`.
    pub fn migratable(
        &self,
        name: &str,
        check: impl FnOnce(&Entry<E>) -> Result<(), HostError>,
    ) -> Result<VmConfig, HostError> {
        let vms = self.lock();
        let e = vms
            .get(name)
            .ok_or_else(|| HostError::Unknown(name.to_string()))?;
        if e.record.state != VmState::Running {
            return Err(HostError::busy(name, &e.record.state, "be migrated"));
        }
        check(e)?;
        Ok(e.record.config.clone())
    }

    /// Marks `name`, which must run here, as leaving for `to`
    /// ([`VmState::MigratingOut`]) and returns what `take` reads from the
    /// host's part. Report the end with [`Registry::departed`].
    pub fn depart<T>(
        &self,
        name: &str,
        to: &str,
        take: impl FnOnce(&mut E) -> T,
    ) -> Result<T, HostError> {
        let mut vms = self.lock();
        let e = vms
            .get_mut(name)
            .ok_or_else(|| HostError::Unknown(name.to_string()))?;
        if e.record.state != VmState::Running {
            return Err(HostError::busy(name, &e.record.state, "be migrated"));
        }
        e.record.state = VmState::MigratingOut { to: to.to_string() };
        Ok(take(&mut e.host))
    }

    /// Records how the migration of `name` to `to` ended, lets the host put
    /// its part back (`put_back` sees the new state), and returns the new
    /// state; `None` when `name` is not here.
    pub fn departed(
        &self,
        name: &str,
        to: &str,
        how: Departure,
        put_back: impl FnOnce(&mut E, &VmState),
    ) -> Option<VmState> {
        let mut vms = self.lock();
        let e = vms.get_mut(name)?;
        let r = &mut e.record;
        match how {
            Departure::Left => {
                r.state = VmState::MigratedAway { to: to.to_string() };
                r.last_error = None;
            }
            Departure::Stayed { error } => {
                r.state = VmState::Running;
                if error.is_some() {
                    r.last_error = error;
                }
            }
            Departure::Unconfirmed { reason } => {
                r.state = VmState::HandoverUnconfirmed {
                    to: to.to_string(),
                    reason,
                };
            }
            Departure::Ended { reason, error } => {
                r.state = VmState::Failed { reason };
                if error.is_some() {
                    r.last_error = error;
                }
            }
        }
        put_back(&mut e.host, &r.state);
        Some(r.state.clone())
    }

    /// Settles `name`'s unconfirmed handover to `to` now that `to` says
    /// whether it runs there; returns the new state, if it changed.
    pub fn settle(&self, name: &str, to: &str, running_there: bool) -> Option<VmState> {
        let mut vms = self.lock();
        let e = vms.get_mut(name)?;
        let state = e.record.state.settled(to, running_there)?;
        e.record.state = state.clone();
        Some(state)
    }

    /// For a VM that runs here: `check` looks at the host's part (and may
    /// update it) and returns why the VM has ended, if it has; the VM is
    /// then [`VmState::Failed`].
    pub fn check_running(&self, name: &str, check: impl FnOnce(&mut E) -> Option<String>) {
        let mut vms = self.lock();
        let Some(e) = vms.get_mut(name) else { return };
        if e.record.state != VmState::Running {
            return;
        }
        if let Some(reason) = check(&mut e.host) {
            e.record.state = VmState::Failed { reason };
        }
    }

    /// Lets `f` change `name`'s disk copy (its state and live handle);
    /// [`HostError::Unknown`] when `name` is not here.
    pub fn disk<R>(
        &self,
        name: &str,
        f: impl FnOnce(DiskSlot<'_>) -> Result<R, HostError>,
    ) -> Result<R, HostError> {
        let mut vms = self.lock();
        let e = vms
            .get_mut(name)
            .ok_or_else(|| HostError::Unknown(name.to_string()))?;
        f(DiskSlot {
            state: &e.record.state,
            disk: &mut e.record.disk,
            remote: &mut e.remote_disk,
        })
    }

    /// Lets `f` change `name`'s disk copy if the VM's disk is still the
    /// copy at `path` (a later visit of the same VM has a new copy).
    pub fn disk_at(&self, name: &str, path: &Path, f: impl FnOnce(DiskSlot<'_>)) {
        let mut vms = self.lock();
        if let Some(e) = vms.get_mut(name).filter(|e| e.on_disk(path)) {
            f(DiskSlot {
                state: &e.record.state,
                disk: &mut e.record.disk,
                remote: &mut e.remote_disk,
            });
        }
    }

    /// Whether `name` runs here on the disk copy at `path`.
    pub fn runs_on(&self, name: &str, path: &Path) -> bool {
        self.with(name, |e| {
            e.record.state == VmState::Running && e.on_disk(path)
        })
        .unwrap_or(false)
    }
}

/// A name held for a VM that boots or arrives (see
/// [`Registry::reserve`]). Dropped uncommitted, it gives the name back to
/// what held it before.
#[must_use = "dropping a reservation gives the name back"]
pub struct Reservation<'r, E> {
    registry: &'r Registry<E>,
    name: String,
    /// The entry the reservation replaced; `None` once committed.
    previous: Option<Option<Entry<E>>>,
}

impl<E> Reservation<'_, E> {
    /// The VM runs here now, with `disk` as its disk copy's state;
    /// `finish` completes the host's part.
    pub fn commit(mut self, disk: Option<DiskState>, finish: impl FnOnce(&mut E)) {
        self.previous = None;
        let mut vms = self.registry.lock();
        if let Some(e) = vms.get_mut(&self.name) {
            e.record.state = VmState::Running;
            e.record.disk = disk;
            finish(&mut e.host);
        }
    }
}

impl<E> Drop for Reservation<'_, E> {
    fn drop(&mut self) {
        let Some(previous) = self.previous.take() else {
            return;
        };
        let mut vms = self.registry.lock();
        match previous {
            Some(p) => vms.insert(self.name.clone(), p),
            None => vms.remove(&self.name),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry_with(name: &str, state: VmState) -> Registry<u32> {
        let r = Registry::new();
        r.restore(name, VmRecord::new(VmConfig::default(), state), 7);
        r
    }

    #[test]
    fn only_a_vm_that_left_or_failed_may_be_replaced() {
        let away = registry_with("web", VmState::MigratedAway { to: "b".into() });
        drop(
            away.reserve("web", VmConfig::default(), "a", "be received", 1)
                .unwrap(),
        );
        let running = registry_with("web", VmState::Running);
        let err = running
            .reserve("web", VmConfig::default(), "a", "be received", 1)
            .err()
            .unwrap();
        assert!(matches!(
            &err,
            HostError::Busy { name, action: "be received", .. } if name == "web"
        ));
        assert!(!VmState::Incoming { from: "a".into() }.replaceable());
        assert!(VmState::Failed { reason: "x".into() }.replaceable());
    }

    #[test]
    fn a_reservation_holds_the_name_and_gives_it_back_unless_committed() {
        let r = registry_with("web", VmState::Failed { reason: "x".into() });
        let held = r
            .reserve("web", VmConfig::default(), "site-a", "be received", 1)
            .unwrap();
        assert_eq!(
            r.state("web"),
            Some(VmState::Incoming {
                from: "site-a".into()
            })
        );
        // A second arrival of the same name must not race the first.
        assert!(matches!(
            r.reserve("web", VmConfig::default(), "site-c", "be received", 2),
            Err(HostError::Busy { .. })
        ));
        drop(held);
        assert_eq!(r.state("web"), Some(VmState::Failed { reason: "x".into() }));
        assert_eq!(r.with_host("web", |h| *h), Some(7), "the old entry is back");

        let fresh = Registry::<u32>::new();
        drop(
            fresh
                .reserve("db", VmConfig::default(), "site-a", "be received", 1)
                .unwrap(),
        );
        assert!(fresh.records().is_empty());
        fresh
            .reserve("db", VmConfig::default(), "site-a", "be received", 1)
            .unwrap()
            .commit(None, |h| *h = 9);
        assert_eq!(fresh.state("db"), Some(VmState::Running));
        assert_eq!(fresh.with_host("db", |h| *h), Some(9));
        assert!(matches!(
            fresh.reserve("bad/name", VmConfig::default(), "a", "be started again", 1),
            Err(HostError::BadName(_))
        ));
    }

    #[test]
    fn a_departure_ends_in_exactly_one_place() {
        let r = registry_with("web", VmState::Running);
        assert_eq!(r.depart("web", "b", |h| *h).unwrap(), 7);
        assert_eq!(
            r.state("web"),
            Some(VmState::MigratingOut { to: "b".into() })
        );
        // Leaving twice at once is refused.
        assert!(matches!(
            r.depart("web", "c", |_| ()),
            Err(HostError::Busy { .. })
        ));
        assert!(matches!(
            r.migratable("web", |_| Ok(())),
            Err(HostError::Busy { .. })
        ));
        let stayed = Departure::Stayed {
            error: Some("link cut".into()),
        };
        assert_eq!(
            r.departed("web", "b", stayed, |h, _| *h = 8),
            Some(VmState::Running)
        );
        assert_eq!(r.with_host("web", |h| *h), Some(8));
        assert_eq!(r.records()["web"].last_error.as_deref(), Some("link cut"));
        r.depart("web", "b", |_| ()).unwrap();
        let unconfirmed = Departure::Unconfirmed {
            reason: "no answer".into(),
        };
        r.departed("web", "b", unconfirmed, |_, _| ());
        assert!(r.settle("web", "c", true).is_none(), "not handed to c");
        assert_eq!(
            r.settle("web", "b", true),
            Some(VmState::MigratedAway { to: "b".into() })
        );
        // The name is free again for a new VM.
        drop(
            r.reserve("web", VmConfig::default(), "c", "be received", 1)
                .unwrap(),
        );
        assert!(matches!(
            r.depart("nope", "b", |_| ()),
            Err(HostError::Unknown(_))
        ));
    }

    #[test]
    fn only_an_unconfirmed_handover_to_that_site_settles() {
        let unconfirmed = VmState::HandoverUnconfirmed {
            to: "b".into(),
            reason: "link cut".into(),
        };
        assert_eq!(
            unconfirmed.settled("b", true),
            Some(VmState::MigratedAway { to: "b".into() })
        );
        assert!(matches!(
            unconfirmed.settled("b", false),
            Some(VmState::Failed { reason }) if reason.contains("runs nowhere")
        ));
        assert_eq!(unconfirmed.settled("c", true), None);
        assert_eq!(VmState::Running.settled("b", true), None);
    }

    #[test]
    fn a_vm_that_ended_while_running_is_failed() {
        let r = registry_with("web", VmState::Running);
        r.check_running("web", |h| {
            *h += 1;
            None
        });
        assert_eq!(r.state("web"), Some(VmState::Running));
        assert_eq!(r.with_host("web", |h| *h), Some(8));
        r.check_running("web", |_| Some("gone".into()));
        assert_eq!(
            r.state("web"),
            Some(VmState::Failed {
                reason: "gone".into()
            })
        );
    }

    #[test]
    fn records_read_back_from_json() {
        let r = registry_with(
            "web",
            VmState::HandoverUnconfirmed {
                to: "b".into(),
                reason: "cut".into(),
            },
        );
        let json = serde_json::to_string(&r.records()).unwrap();
        let back: BTreeMap<String, VmRecord> = serde_json::from_str(&json).unwrap();
        assert_eq!(back["web"].state, r.records()["web"].state);
        assert_eq!(back["web"].config.mem_size, VmConfig::default().mem_size);
    }

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
