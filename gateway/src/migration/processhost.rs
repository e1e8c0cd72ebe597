//! VMs hosted in their own `wanmig-vmm` processes ([`ProcessHost`], chosen
//! with `[vms] host = "process"`): each VM runs in a shim process the
//! gateway spawns, with its state in one directory per VM under `[vms] dir`
//! (`config.json`, `pid`, `control.sock`, `serial.log`, `shim.log`, and
//! while it migrates, the migration sockets and a `migrating.json`
//! marker). The shim does not die with the gateway: a gateway killed and
//! restarted re-adopts every shim that still answers on its control socket
//! ([`ProcessHost::open`]) and says which migration was interrupted.
//!
//! The relay hands [`VmHosting`] one end of a unix stream carrying the shim
//! protocol; this host joins it to the shim's own migration endpoint and
//! copies bytes both ways ([`pump`]): at the source it tells the shim over
//! its control socket to migrate to a unix socket the host listens on; at
//! the destination it starts a shim with `--incoming unix:PATH` and
//! connects to it. When either side closes, the other sees its stream end,
//! exactly as with the in-process host, so the shims' protocol keeps the
//! VM in exactly one place.
//!
//! Limits (documented in `configs/README.md`'s terms): a process-hosted VM
//! has no network card yet (a VM configured with one is refused; attaching
//! the shim's TAP device to the overlay is the next step), and its disk is
//! a local file that does not follow it: migrating a VM with a disk is
//! refused here (storage migration runs with the in-process host).

use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use wanmig_migration::admin::{MemSample, Status};
use wanmig_migration::machine::VmConfig;
use wanmig_vmm::admin::{self, AdminRequest, AdminResponse};
use wanmig_vmm::migration::IncomingReport;
use wanmig_vmm::protocol_io::StreamError;
use wanmig_vmm::{MigrateOptions, MigrationError, MigrationReport, ReceiveOptions};

use super::vmhost::{ensure_replaceable, validate_vm_name, HostError, VmHosting, VmInfo, VmState};

/// How long a new shim may take to boot its VM (or an arriving one to
/// answer after it resumed) before the host gives up on it.
const READY_WAIT: Duration = Duration::from_secs(30);
/// How long the host waits for a shim to connect to, or listen on, a
/// migration socket.
const CONNECT_WAIT: Duration = Duration::from_secs(30);
/// Longest wait for a status answer (a shim that is migrating answers
/// nothing else until it is done).
const STATUS_WAIT: Duration = Duration::from_millis(500);
/// Lines of a failed shim's log quoted in the error.
const LOG_TAIL: usize = 5;
/// The state of a VM that left this site (JSON [`VmState`]), so a
/// restarted gateway still says where it went.
const LEFT: &str = "left.json";

/// The marker of an outgoing migration in flight, left behind when the
/// gateway dies during one.
#[derive(Debug, Serialize, Deserialize)]
struct Migrating {
    to: String,
}

struct Entry {
    config: VmConfig,
    state: VmState,
    /// The shim, when this process spawned it (`None` for a re-adopted
    /// shim, which is not our child).
    child: Option<Child>,
    pid: Option<u32>,
    last_error: Option<String>,
    /// Latest memory-workload iteration the shim reported.
    iteration: u64,
}

/// VMs running in `wanmig-vmm` processes (see the module comment).
pub struct ProcessHost {
    dir: PathBuf,
    vmm: PathBuf,
    vms: Mutex<BTreeMap<String, Entry>>,
    seq: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn start_err(name: &str, reason: impl Into<String>) -> HostError {
    HostError::Start {
        name: name.to_string(),
        reason: reason.into(),
    }
}

/// A failure the shim reported while the VM stayed with it.
fn kept_err(message: String) -> HostError {
    HostError::Migration(MigrationError::Stream(StreamError::Io(
        std::io::Error::other(format!("the VM's wanmig-vmm process reports: {message}")),
    )))
}

/// The shim's status, if it answers within [`STATUS_WAIT`].
fn status(control: &Path) -> Option<Status> {
    match admin::request_timeout(control, &AdminRequest::Status, Some(STATUS_WAIT)) {
        Ok(AdminResponse::Status(s)) => Some(s),
        _ => None,
    }
}

/// Copies bytes both ways between `a` and `b` until both directions have
/// ended; when one side stops sending, the other side's write half is shut
/// so it sees the end of the stream (as if it held the far end directly).
pub fn pump(a: UnixStream, b: UnixStream) -> std::io::Result<()> {
    let (a2, b2) = (a.try_clone()?, b.try_clone()?);
    let other = std::thread::Builder::new()
        .name("vm-pump".into())
        .spawn(move || one_way(&a2, &b2))?;
    one_way(&b, &a);
    let _ = other.join();
    Ok(())
}

fn one_way(from: &UnixStream, to: &UnixStream) {
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = match (&*from).read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if (&*to).write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
    let _ = from.shutdown(std::net::Shutdown::Read);
}

impl ProcessHost {
    /// A host keeping VM state under `dir`, running `vmm` (the `wanmig-vmm`
    /// binary; `None`: the one next to the running executable). Re-adopts
    /// the shims a previous gateway left running there.
    pub fn open(dir: &Path, vmm: Option<&Path>) -> Result<Self, HostError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            HostError::Config(format!(
                "cannot create the VM state directory {} ([vms] dir): {e}",
                dir.display()
            ))
        })?;
        let vmm = match vmm {
            Some(v) => v.to_path_buf(),
            None => std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(|d| d.join("wanmig-vmm")))
                .unwrap_or_else(|| PathBuf::from("wanmig-vmm")),
        };
        let host = ProcessHost {
            dir: dir.to_path_buf(),
            vmm,
            vms: Mutex::new(BTreeMap::new()),
            seq: AtomicU64::new(0),
        };
        host.adopt_all();
        Ok(host)
    }

    /// The directory of `name`'s state.
    pub fn vm_dir(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The control socket of `name`'s shim (`wanmig-vmm status --control`).
    pub fn control_socket(&self, name: &str) -> PathBuf {
        self.vm_dir(name).join("control.sock")
    }

    /// The pid of `name`'s shim, while it has one.
    pub fn pid(&self, name: &str) -> Option<u32> {
        lock(&self.vms).get(name).and_then(|e| e.pid)
    }

    /// The state of `name` here.
    pub fn state(&self, name: &str) -> Option<VmState> {
        lock(&self.vms).get(name).map(|e| e.state.clone())
    }

    /// The memory workload's samples, from the shim (empty when it does
    /// not answer).
    pub fn samples(&self, name: &str) -> Vec<MemSample> {
        match admin::request_timeout(
            &self.control_socket(name),
            &AdminRequest::Samples,
            Some(READY_WAIT),
        ) {
            Ok(AdminResponse::Samples { samples }) => samples,
            _ => Vec::new(),
        }
    }

    /// Takes over the shims in the state directory: a shim that answers
    /// runs its VM here again (with a note if a migration was interrupted);
    /// a shim still waiting for an incoming migration is told to give up
    /// (its source is gone with the old gateway); state of shims that are
    /// gone is removed, or kept as `failed` if the VM ran here.
    fn adopt_all(&self) {
        let Ok(dirs) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for d in dirs.flatten() {
            let Ok(name) = d.file_name().into_string() else {
                continue;
            };
            if validate_vm_name(&name).is_err() || !d.path().is_dir() {
                continue;
            }
            self.adopt(&name, &d.path());
        }
    }

    fn adopt(&self, name: &str, dir: &Path) {
        let config: Option<VmConfig> = std::fs::read(dir.join("config.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let pid: Option<u32> = std::fs::read_to_string(dir.join("pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        let migrating: Option<Migrating> = std::fs::read(dir.join("migrating.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let _ = std::fs::remove_file(dir.join("migrating.json"));
        let ran_here = dir.join("report.json").exists() || !dir.join("incoming").exists();
        let Some(config) = config else {
            tracing::warn!(
                vm = name,
                "no readable config.json in {}; ignoring it",
                dir.display()
            );
            return;
        };
        // A VM that left (migrated away, or handed over unconfirmed) keeps
        // saying so; its shim has ended or is about to.
        let left: Option<VmState> = std::fs::read(dir.join(LEFT))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let answer = match left {
            Some(_) => None,
            None => status(&dir.join("control.sock")),
        };
        let iteration = answer.as_ref().map(|s| s.mem_iteration).unwrap_or(0);
        let mut last_error = None;
        let state = match (left, answer) {
            (Some(state), _) => state,
            (None, answer) => match answer {
                Some(s) if s.exit.is_none() => {
                    if let Some(m) = migrating {
                        last_error = Some(format!(
                        "the migration to {} was interrupted when the gateway stopped; the VM kept running here",
                        m.to
                    ));
                    }
                    tracing::info!(vm = name, pid, "re-adopted the VM's running shim");
                    VmState::Running
                }
                Some(s) => VmState::Failed {
                    reason: format!("its wanmig-vmm process reports the VM ended: {:?}", s.exit),
                },
                None => {
                    // An incoming shim waits on its socket: connecting and
                    // closing ends its migration, and it exits.
                    let incoming = dir.join("in.sock");
                    if incoming.exists() {
                        if let Ok(s) = UnixStream::connect(&incoming) {
                            drop(s);
                            tracing::info!(vm = name, "told a half-received VM's shim to give up");
                        }
                    }
                    if !ran_here {
                        let _ = std::fs::remove_dir_all(dir);
                        return;
                    }
                    VmState::Failed {
                        reason: format!(
                            "its wanmig-vmm process ({}) is gone; start the VM again",
                            pid.map(|p| format!("pid {p}"))
                                .unwrap_or_else(|| "no pid".into())
                        ),
                    }
                }
            },
        };
        lock(&self.vms).insert(
            name.to_string(),
            Entry {
                config,
                state,
                child: None,
                pid,
                last_error,
                iteration,
            },
        );
    }

    /// Prepares a fresh state directory for `name` with its config.
    fn fresh_dir(&self, name: &str, config: &VmConfig) -> Result<PathBuf, HostError> {
        let dir = self.vm_dir(name);
        let _ = std::fs::remove_dir_all(&dir);
        let err =
            |e: std::io::Error| start_err(name, format!("cannot write {}: {e}", dir.display()));
        std::fs::create_dir_all(&dir).map_err(err)?;
        let json = serde_json::to_vec_pretty(config).map_err(|e| start_err(name, e.to_string()))?;
        std::fs::write(dir.join("config.json"), json).map_err(err)?;
        Ok(dir)
    }

    /// Spawns `wanmig-vmm run` for the VM whose state is in `dir`, in its
    /// own process group (a signal to the gateway's group spares it).
    fn spawn(&self, name: &str, dir: &Path, extra: &[String]) -> Result<Child, HostError> {
        let log = std::fs::File::create(dir.join("shim.log"))
            .map_err(|e| start_err(name, format!("cannot create its log: {e}")))?;
        let log2 = log
            .try_clone()
            .map_err(|e| start_err(name, e.to_string()))?;
        use std::os::unix::process::CommandExt;
        let child = Command::new(&self.vmm)
            .arg("run")
            .arg("--config-json")
            .arg(dir.join("config.json"))
            .arg("--control")
            .arg(dir.join("control.sock"))
            .arg("--serial-log")
            .arg(dir.join("serial.log"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0)
            .spawn()
            .map_err(|e| {
                start_err(
                    name,
                    format!(
                        "cannot run {} ({e}); set [vms] vmm to the wanmig-vmm binary",
                        self.vmm.display()
                    ),
                )
            })?;
        let _ = std::fs::write(dir.join("pid"), child.id().to_string());
        Ok(child)
    }

    /// The last lines of a shim's log, for an error message.
    fn log_tail(dir: &Path) -> String {
        let Ok(f) = std::fs::File::open(dir.join("shim.log")) else {
            return String::new();
        };
        let lines: Vec<String> = std::io::BufReader::new(f)
            .lines()
            .map_while(Result::ok)
            .collect();
        lines[lines.len().saturating_sub(LOG_TAIL)..].join(" | ")
    }

    /// Waits until the shim answers on its control socket; fails when it
    /// exits first or takes longer than `wait`.
    fn wait_ready(child: &mut Child, dir: &Path, wait: Duration) -> Result<Status, String> {
        let deadline = Instant::now() + wait;
        loop {
            if let Ok(Some(exit)) = child.try_wait() {
                return Err(format!(
                    "wanmig-vmm exited ({exit}): {}",
                    Self::log_tail(dir)
                ));
            }
            if let Some(s) = status(&dir.join("control.sock")) {
                return Ok(s);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "wanmig-vmm did not answer within {wait:?}: {}",
                    Self::log_tail(dir)
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the shim of `e` still runs.
    fn alive(e: &mut Entry) -> bool {
        match &mut e.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => e
                .pid
                .is_some_and(|p| Path::new(&format!("/proc/{p}")).exists()),
        }
    }

    /// Records that `name` left this site in `state` (see [`LEFT`]).
    fn record_left(&self, name: &str, state: &VmState) {
        let path = self.vm_dir(name).join(LEFT);
        if let Err(e) = serde_json::to_vec(state)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&path, b))
        {
            tracing::warn!(vm = name, "cannot write {}: {e}", path.display());
        }
    }

    fn set(&self, name: &str, f: impl FnOnce(&mut Entry)) {
        if let Some(e) = lock(&self.vms).get_mut(name) {
            f(e);
        }
    }

    /// Refuses what a process-hosted VM cannot do yet (module comment).
    fn check_supported(name: &str, config: &VmConfig) -> Result<(), HostError> {
        if config.net.is_some() {
            return Err(HostError::Config(format!(
                "VM '{name}' has a network card, which process-hosted VMs do not have yet; use [vms] host = \"in-process\""
            )));
        }
        Ok(())
    }
}

impl VmHosting for ProcessHost {
    fn start(&self, name: &str, config: VmConfig) -> Result<(), HostError> {
        validate_vm_name(name)?;
        config
            .validate()
            .map_err(|e| HostError::Config(e.to_string()))?;
        Self::check_supported(name, &config)?;
        {
            let mut vms = lock(&self.vms);
            ensure_replaceable(name, vms.get(name).map(|e| &e.state), "be started again")?;
            // Reserve the name while the shim boots.
            vms.insert(
                name.to_string(),
                Entry {
                    config: config.clone(),
                    state: VmState::Incoming {
                        from: "this site (booting)".into(),
                    },
                    child: None,
                    pid: None,
                    last_error: None,
                    iteration: 0,
                },
            );
        }
        let started = (|| {
            let dir = self.fresh_dir(name, &config)?;
            let mut child = self.spawn(name, &dir, &[])?;
            Self::wait_ready(&mut child, &dir, READY_WAIT).map_err(|r| start_err(name, r))?;
            Ok::<_, HostError>(child)
        })();
        match started {
            Ok(child) => {
                tracing::info!(
                    vm = name,
                    pid = child.id(),
                    "VM started in its own wanmig-vmm process"
                );
                self.set(name, |e| {
                    e.pid = Some(child.id());
                    e.child = Some(child);
                    e.state = VmState::Running;
                });
                Ok(())
            }
            Err(err) => {
                lock(&self.vms).remove(name);
                let _ = std::fs::remove_dir_all(self.vm_dir(name));
                Err(err)
            }
        }
    }

    fn config(&self, name: &str) -> Result<VmConfig, HostError> {
        let vms = lock(&self.vms);
        let e = vms
            .get(name)
            .ok_or_else(|| HostError::Unknown(name.to_string()))?;
        match e.state {
            VmState::Running if e.config.disk.is_some() => Err(HostError::Storage {
                name: name.to_string(),
                reason: "its disk is a local file of this site's wanmig-vmm process; storage migration runs only with [vms] host = \"in-process\"".into(),
            }),
            VmState::Running => Ok(e.config.clone()),
            ref s => Err(HostError::busy(name, s, "be migrated")),
        }
    }

    fn migrate_out(
        &self,
        name: &str,
        to: &str,
        stream: UnixStream,
        opts: &MigrateOptions,
    ) -> Result<MigrationReport, HostError> {
        {
            let mut vms = lock(&self.vms);
            let e = vms
                .get_mut(name)
                .ok_or_else(|| HostError::Unknown(name.to_string()))?;
            if e.state != VmState::Running {
                return Err(HostError::busy(name, &e.state, "be migrated"));
            }
            e.state = VmState::MigratingOut { to: to.to_string() };
        }
        let dir = self.vm_dir(name);
        let marker = dir.join("migrating.json");
        let _ = std::fs::write(
            &marker,
            serde_json::to_vec(&Migrating { to: to.to_string() }).unwrap_or_default(),
        );
        let sock = dir.join(format!(
            "out-{}.sock",
            self.seq.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&sock);
        let answer = (|| {
            let listener = UnixListener::bind(&sock)?;
            listener.set_nonblocking(true)?;
            let control = self.control_socket(name);
            let req = AdminRequest::Migrate {
                to: format!("unix:{}", sock.display()),
                planner: Some(opts.planner.clone()),
            };
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::Builder::new()
                .name("vm-migrate".into())
                .spawn(move || {
                    let _ = tx.send(admin::request(&control, &req));
                })?;
            let deadline = Instant::now() + CONNECT_WAIT;
            let conn = loop {
                match listener.accept() {
                    Ok((c, _)) => break Some(c),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                if Instant::now() >= deadline {
                    break None;
                }
                std::thread::sleep(Duration::from_millis(5));
            };
            drop(listener);
            let _ = std::fs::remove_file(&sock);
            match conn {
                Some(c) => {
                    c.set_nonblocking(false)?;
                    pump(c, stream)?;
                }
                // The shim failed before connecting: the relay sees our
                // end close.
                None => drop(stream),
            }
            rx.recv()
                .map_err(|_| std::io::Error::other("the migration request thread failed"))?
        })();
        let _ = std::fs::remove_file(&marker);
        let mut vms = lock(&self.vms);
        let Some(e) = vms.get_mut(name) else {
            return Err(HostError::Unknown(name.to_string()));
        };
        match answer {
            Ok(AdminResponse::Migrated(report)) => {
                e.state = VmState::MigratedAway { to: to.to_string() };
                e.last_error = None;
                self.record_left(name, &e.state);
                Ok(*report)
            }
            Ok(AdminResponse::Error {
                message,
                vm_running_here: true,
            }) => {
                e.state = VmState::Running;
                e.last_error = Some(format!("migration to {to} failed: {message}"));
                Err(kept_err(message))
            }
            Ok(AdminResponse::HandedOver { message }) => {
                e.state = VmState::HandoverUnconfirmed {
                    to: to.to_string(),
                    reason: message.clone(),
                };
                self.record_left(name, &e.state);
                Err(HostError::Migration(MigrationError::HandoverUnconfirmed(
                    message,
                )))
            }
            Ok(AdminResponse::Error { message, .. }) => {
                // Not running here, not handed over: the VM ended.
                e.state = VmState::Failed {
                    reason: format!("the VM ended while migrating to {to}: {message}"),
                };
                Err(kept_err(format!("the VM ended while migrating: {message}")))
            }
            Ok(other) => {
                e.state = VmState::Running;
                Err(kept_err(format!("unexpected answer {other:?}")))
            }
            Err(io) => {
                let reason = if Self::alive(e) {
                    e.state = VmState::Running;
                    format!("talking to the VM's wanmig-vmm process failed: {io}")
                } else {
                    let r = format!(
                        "its wanmig-vmm process exited during the migration to {to}: {}",
                        Self::log_tail(&dir)
                    );
                    e.state = VmState::Failed { reason: r.clone() };
                    r
                };
                e.last_error = Some(reason.clone());
                Err(kept_err(reason))
            }
        }
    }

    fn receive(
        &self,
        name: &str,
        from: &str,
        config: VmConfig,
        stream: UnixStream,
        opts: &ReceiveOptions,
    ) -> Result<IncomingReport, HostError> {
        validate_vm_name(name)?;
        config
            .validate()
            .map_err(|e| HostError::Config(e.to_string()))?;
        if config.disk.is_some() {
            return Err(HostError::Storage {
                name: name.to_string(),
                reason: "this site hosts VMs in processes ([vms] host = \"process\"), which do not take in disks yet".into(),
            });
        }
        let previous = {
            let mut vms = lock(&self.vms);
            ensure_replaceable(name, vms.get(name).map(|e| &e.state), "be received")?;
            vms.insert(
                name.to_string(),
                Entry {
                    config: config.clone(),
                    state: VmState::Incoming {
                        from: from.to_string(),
                    },
                    child: None,
                    pid: None,
                    last_error: None,
                    iteration: 0,
                },
            )
        };
        let dir = self.vm_dir(name);
        let mut child = None;
        let result = (|| {
            let dir = self.fresh_dir(name, &config)?;
            // Marks a VM that never ran here (re-adoption removes it).
            std::fs::write(dir.join("incoming"), from)
                .map_err(|e| start_err(name, e.to_string()))?;
            let sock = dir.join("in.sock");
            let c = child.insert(self.spawn(
                name,
                &dir,
                &[
                    "--incoming".into(),
                    format!("unix:{}", sock.display()),
                    "--incoming-report".into(),
                    dir.join("report.json").display().to_string(),
                    "--incoming-idle-timeout-s".into(),
                    opts.idle_timeout.as_secs().max(1).to_string(),
                ],
            )?);
            self.set(name, |e| e.pid = Some(c.id()));
            let deadline = Instant::now() + CONNECT_WAIT;
            let conn = loop {
                if let Ok(s) = UnixStream::connect(&sock) {
                    break s;
                }
                if let Ok(Some(exit)) = c.try_wait() {
                    return Err(start_err(
                        name,
                        format!("wanmig-vmm exited ({exit}): {}", Self::log_tail(&dir)),
                    ));
                }
                if Instant::now() >= deadline {
                    return Err(start_err(
                        name,
                        "wanmig-vmm did not listen for the migration",
                    ));
                }
                std::thread::sleep(Duration::from_millis(5));
            };
            pump(conn, stream).map_err(|e| start_err(name, e.to_string()))?;
            let st = Self::wait_ready(c, &dir, READY_WAIT).map_err(|r| {
                start_err(
                    name,
                    format!("the incoming migration failed; nothing runs here: {r}"),
                )
            })?;
            let report: IncomingReport = std::fs::read(dir.join("report.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .ok_or_else(|| {
                    start_err(name, "the VM runs but wanmig-vmm wrote no migration report")
                })?;
            let _ = std::fs::remove_file(dir.join("incoming"));
            Ok((report, st))
        })();
        let mut vms = lock(&self.vms);
        match result {
            Ok((report, st)) => {
                if let Some(e) = vms.get_mut(name) {
                    e.child = child;
                    e.state = VmState::Running;
                    e.iteration = st.mem_iteration;
                }
                tracing::info!(
                    vm = name,
                    from,
                    "VM arrived and runs here in its own wanmig-vmm process"
                );
                Ok(report)
            }
            Err(err) => {
                if let Some(mut c) = child {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                let _ = std::fs::remove_dir_all(&dir);
                match previous {
                    Some(p) => vms.insert(name.to_string(), p),
                    None => vms.remove(name),
                };
                Err(err)
            }
        }
    }

    fn list(&self) -> Vec<VmInfo> {
        // Ask running shims for news without holding the lock.
        let running: Vec<String> = lock(&self.vms)
            .iter()
            .filter(|(_, e)| e.state == VmState::Running)
            .map(|(n, _)| n.clone())
            .collect();
        for name in running {
            let answer = status(&self.control_socket(&name));
            self.set(&name, |e| {
                if e.state != VmState::Running {
                    return;
                }
                match answer {
                    Some(s) if s.exit.is_none() => e.iteration = s.mem_iteration,
                    Some(s) => {
                        e.state = VmState::Failed {
                            reason: format!("the VM ended: {:?}", s.exit),
                        }
                    }
                    None if !Self::alive(e) => {
                        e.state = VmState::Failed {
                            reason: format!(
                                "its wanmig-vmm process ({}) exited; start the VM again",
                                e.pid.map(|p| format!("pid {p}")).unwrap_or_default()
                            ),
                        }
                    }
                    None => {}
                }
            });
        }
        lock(&self.vms)
            .iter()
            .map(|(name, e)| VmInfo {
                name: name.clone(),
                state: e.state.clone(),
                mem_size: e.config.mem_size,
                iteration: e.iteration,
                last_error: e.last_error.clone(),
                storage: None,
            })
            .collect()
    }

    fn settle_handover(&self, name: &str, to: &str, running_there: bool) {
        let mut vms = lock(&self.vms);
        let Some(e) = vms.get_mut(name) else { return };
        let Some(state) = e.state.settled(to, running_there) else {
            return;
        };
        e.state = state.clone();
        drop(vms);
        self.record_left(name, &state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pump_joins_two_streams_and_passes_the_end_on() {
        let (a_far, a) = UnixStream::pair().unwrap();
        let (b, b_far) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || pump(a, b));
        (&a_far).write_all(b"hello").unwrap();
        let mut got = [0u8; 5];
        (&b_far).read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");
        (&b_far).write_all(b"back").unwrap();
        let mut back = [0u8; 4];
        (&a_far).read_exact(&mut back).unwrap();
        assert_eq!(&back, b"back");
        // One side closing ends the other's stream too.
        drop(a_far);
        let mut rest = Vec::new();
        (&b_far).read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
        drop(b_far);
        t.join().unwrap().unwrap();
    }

    #[test]
    fn a_missing_vmm_binary_is_reported_with_the_key_to_set() {
        let dir = tempfile::tempdir().unwrap();
        let host =
            ProcessHost::open(dir.path(), Some(Path::new("/nonexistent/wanmig-vmm"))).unwrap();
        let e = host.start("vm1", VmConfig::default()).unwrap_err();
        assert!(e.to_string().contains("[vms] vmm"), "{e}");
        assert!(host.list().is_empty(), "nothing is left behind");
        assert!(!dir.path().join("vm1").exists());
    }

    #[test]
    fn leftover_state_of_a_vm_that_never_ran_is_removed_and_a_dead_one_is_listed_failed() {
        let dir = tempfile::tempdir().unwrap();
        let config = serde_json::to_vec(&VmConfig::default()).unwrap();
        // Half-received, its shim gone.
        let half = dir.path().join("half");
        std::fs::create_dir_all(&half).unwrap();
        std::fs::write(half.join("config.json"), &config).unwrap();
        std::fs::write(half.join("incoming"), "site-b").unwrap();
        // Ran here, its shim gone.
        let ran = dir.path().join("ran");
        std::fs::create_dir_all(&ran).unwrap();
        std::fs::write(ran.join("config.json"), &config).unwrap();
        let host = ProcessHost::open(dir.path(), None).unwrap();
        assert!(!half.exists(), "a VM that never ran here leaves nothing");
        let list = host.list();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].name, "ran");
        assert!(
            matches!(&list[0].state, VmState::Failed { reason } if reason.contains("gone")),
            "{:?}",
            list[0]
        );
    }

    #[test]
    fn a_vm_that_left_is_still_listed_where_it_went_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let vm = dir.path().join("gone");
        std::fs::create_dir_all(&vm).unwrap();
        std::fs::write(
            vm.join("config.json"),
            serde_json::to_vec(&VmConfig::default()).unwrap(),
        )
        .unwrap();
        let left = VmState::MigratedAway {
            to: "site-b".into(),
        };
        std::fs::write(vm.join(LEFT), serde_json::to_vec(&left).unwrap()).unwrap();
        let host = ProcessHost::open(dir.path(), None).unwrap();
        assert_eq!(host.state("gone"), Some(left));
    }

    #[test]
    fn vms_with_a_network_card_or_a_disk_to_migrate_are_refused_with_reasons() {
        let dir = tempfile::tempdir().unwrap();
        let host = ProcessHost::open(dir.path(), None).unwrap();
        let config = VmConfig {
            net: Some(wanmig_migration::machine::NetConfig {
                mac: [2, 0, 0, 0, 0, 1],
                ip: std::net::Ipv4Addr::new(198, 18, 0, 2),
                prefix_len: 24,
                port: 7000,
                tap: None,
            }),
            ..VmConfig::default()
        };
        let e = host.start("vm1", config).unwrap_err();
        assert!(e.to_string().contains("in-process"), "{e}");
        let (a, _b) = UnixStream::pair().unwrap();
        let with_disk = VmConfig {
            disk: Some(wanmig_migration::machine::DiskConfig {
                path: dir.path().join("d.img"),
                seed: 1,
                blocks_per_iteration: 1,
                iterations: 0,
            }),
            ..VmConfig::default()
        };
        let e = host
            .receive("vm1", "site-a", with_disk, a, &ReceiveOptions::default())
            .unwrap_err();
        assert!(e.to_string().contains("disks"), "{e}");
    }
}
