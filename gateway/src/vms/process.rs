//! VMs hosted in their own `wanmig-vmm` processes ([`ProcessHost`], chosen
//! with `[vms] host = "process"`): each VM runs in a shim process the
//! gateway spawns, with its state in one directory per VM under `[vms] dir`
//! (`config.json`, `pid`, `control.sock`, `serial.log`, `shim.log`, and
//! while it migrates, the migration sockets and a `migrating.json`
//! marker). The shim does not die with the gateway: a gateway killed and
//! restarted re-adopts every shim that still answers on its control socket
//! ([`ProcessHost::open`]) and says which migration was interrupted. Names
//! and states live in the [`Registry`] both hosts share; this host adds
//! each VM's shim process.
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

use std::io::{BufRead, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use wanmig_migration::admin::{AdminRequest, AdminResponse};
use wanmig_migration::admin::{MemSample, Status};
use wanmig_migration::machine::VmConfig;
use wanmig_migration::run::{IncomingReport, MigrateOptions, MigrationReport, ReceiveOptions};
use wanmig_vmm::admin;
use wanmig_vmm::protocol_io::StreamError;
use wanmig_vmm::MigrationError;

use super::error::HostError;
use super::files::{OpenedFiles, VmFiles};
use super::hosting::VmHosting;
use super::registry::{validate_vm_name, Departure, Registry, VmInfo, VmRecord, VmState};

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
/// A VM's configuration in its state directory.
const CONFIG: &str = "config.json";
/// The configuration a starting shim boots from (see
/// [`ProcessHost::boot_config`]); removed once the shim runs.
const BOOT: &str = "boot.json";

/// The marker of an outgoing migration in flight, left behind when the
/// gateway dies during one.
#[derive(Debug, Serialize, Deserialize)]
struct Migrating {
    to: String,
}

/// What this host keeps of a VM besides its registry record.
#[derive(Default)]
struct Shim {
    /// The shim, when this process spawned it (`None` for a re-adopted
    /// shim, which is not our child).
    child: Option<Child>,
    pid: Option<u32>,
    /// Latest memory-workload iteration the shim reported.
    iteration: u64,
}

impl Shim {
    /// Whether the shim still runs.
    fn alive(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => self
                .pid
                .is_some_and(|p| Path::new(&format!("/proc/{p}")).exists()),
        }
    }
}

/// Where a VM that boots here says it comes from while it boots.
const BOOTING: &str = "this site (booting)";

/// VMs running in `wanmig-vmm` processes (see the module comment).
pub struct ProcessHost {
    dir: PathBuf,
    vmm: PathBuf,
    vms: Registry<Shim>,
    seq: AtomicU64,
    files: VmFiles,
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
        std::fs::create_dir_all(dir).map_err(|source| HostError::StateDir {
            dir: dir.to_path_buf(),
            source,
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
            vms: Registry::new(),
            seq: AtomicU64::new(0),
            files: VmFiles::default(),
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
        self.vms.with(name, |e| e.host.pid).flatten()
    }

    /// The state of `name` here.
    pub fn state(&self, name: &str) -> Option<VmState> {
        self.vms.state(name)
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
        let config: Option<VmConfig> = std::fs::read(dir.join(CONFIG))
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
        let record = VmRecord {
            last_error,
            ..VmRecord::new(config, state)
        };
        self.vms.restore(
            name,
            record,
            Shim {
                child: None,
                pid,
                iteration,
            },
        );
    }

    /// Lets this host's VMs name the files `files` allows (none by default).
    pub fn with_files(mut self, files: VmFiles) -> Self {
        self.files = files;
        self
    }

    /// Prepares a fresh state directory for `name` with its config.
    fn fresh_dir(&self, name: &str, config: &VmConfig) -> Result<PathBuf, HostError> {
        let dir = self.vm_dir(name);
        let _ = std::fs::remove_dir_all(&dir);
        let what = format!("cannot write {}", dir.display());
        std::fs::create_dir_all(&dir).map_err(HostError::start_io(name, what.clone()))?;
        Self::write_json(name, &dir.join(CONFIG), config)?;
        Ok(dir)
    }

    fn write_json(name: &str, path: &Path, config: &VmConfig) -> Result<(), HostError> {
        let what = format!("cannot write {}", path.display());
        let json = serde_json::to_vec_pretty(config)
            .map_err(|e| HostError::start_io(name, what.clone())(e.into()))?;
        std::fs::write(path, json).map_err(HostError::start_io(name, what))
    }

    /// The config the shim boots from: `config` with its files replaced by
    /// this process's descriptors of them (`/proc/PID/fd/N`), which the
    /// gateway opened under its rules ([`VmFiles`]); the shim opens the
    /// same files, whatever happens to their paths meanwhile.
    fn boot_config(config: &VmConfig, files: &OpenedFiles) -> VmConfig {
        use std::os::fd::AsRawFd;
        let fd_path = |f: &std::fs::File| {
            PathBuf::from(format!("/proc/{}/fd/{}", std::process::id(), f.as_raw_fd()))
        };
        let mut boot = config.clone();
        if let (Some(f), Some(p)) = (&files.mem_image, &mut boot.mem_image) {
            *p = fd_path(f);
        }
        if let (Some(f), Some(d)) = (&files.disk, &mut boot.disk) {
            d.path = fd_path(f);
        }
        boot
    }

    /// Spawns `wanmig-vmm run` for the VM whose state is in `dir`, booting
    /// from `config` there, in its own process group (a signal to the
    /// gateway's group spares it).
    fn spawn(
        &self,
        name: &str,
        dir: &Path,
        config: &str,
        extra: &[String],
    ) -> Result<Child, HostError> {
        let log = std::fs::File::create(dir.join("shim.log"))
            .map_err(HostError::start_io(name, "cannot create its log"))?;
        let log2 = log
            .try_clone()
            .map_err(HostError::start_io(name, "cannot create its log"))?;
        use std::os::unix::process::CommandExt;
        let child = Command::new(&self.vmm)
            .arg("run")
            .arg("--config-json")
            .arg(dir.join(config))
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
            .map_err(|source| HostError::VmmBinary {
                name: name.to_string(),
                vmm: self.vmm.clone(),
                source,
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

    /// Refuses what a process-hosted VM cannot do yet (module comment).
    fn check_supported(name: &str, config: &VmConfig) -> Result<(), HostError> {
        if config.net.is_some() {
            return Err(HostError::Unsupported {
                name: name.to_string(),
                reason: "has a network card, which process-hosted VMs do not have yet; use [vms] host = \"in-process\"",
            });
        }
        Ok(())
    }
}

impl VmHosting for ProcessHost {
    fn start(&self, name: &str, config: VmConfig) -> Result<(), HostError> {
        validate_vm_name(name)?;
        config.validate()?;
        Self::check_supported(name, &config)?;
        // Hold the name while the shim boots.
        let held = self.vms.reserve(
            name,
            config.clone(),
            BOOTING,
            "be started again",
            Shim::default(),
        )?;
        let started = (|| {
            // Held open until the shim has opened them too.
            let files = self.files.open(name, &config)?;
            let dir = self.fresh_dir(name, &config)?;
            Self::write_json(name, &dir.join(BOOT), &Self::boot_config(&config, &files))?;
            let mut child = self.spawn(name, &dir, BOOT, &[])?;
            Self::wait_ready(&mut child, &dir, READY_WAIT).map_err(|r| start_err(name, r))?;
            let _ = std::fs::remove_file(dir.join(BOOT));
            Ok::<_, HostError>(child)
        })();
        match started {
            Ok(child) => {
                tracing::info!(
                    vm = name,
                    pid = child.id(),
                    "VM started in its own wanmig-vmm process"
                );
                held.commit(None, |h| {
                    h.pid = Some(child.id());
                    h.child = Some(child);
                });
                Ok(())
            }
            Err(err) => {
                let _ = std::fs::remove_dir_all(self.vm_dir(name));
                Err(err)
            }
        }
    }

    fn config(&self, name: &str) -> Result<VmConfig, HostError> {
        self.vms.migratable(name, |e| match e.record().config.disk {
            Some(_) => Err(HostError::Storage {
                name: name.to_string(),
                reason: "its disk is a local file of this site's wanmig-vmm process; storage migration runs only with [vms] host = \"in-process\"".into(),
            }),
            None => Ok(()),
        })
    }

    fn migrate_out(
        &self,
        name: &str,
        to: &str,
        stream: UnixStream,
        opts: &MigrateOptions,
    ) -> Result<MigrationReport, HostError> {
        self.vms.depart(name, to, |_| ())?;
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
            let listener = admin::bind_private(&sock)?;
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
        let (how, result) = match answer {
            Ok(AdminResponse::Migrated(report)) => (Departure::Left, Ok(*report)),
            Ok(AdminResponse::Error {
                message,
                vm_running_here: true,
            }) => (
                Departure::Stayed {
                    error: Some(format!("migration to {to} failed: {message}")),
                },
                Err(kept_err(message)),
            ),
            Ok(AdminResponse::HandedOver { message }) => (
                Departure::Unconfirmed {
                    reason: message.clone(),
                },
                Err(HostError::Migration(MigrationError::HandoverUnconfirmed(
                    message,
                ))),
            ),
            // Not running here, not handed over: the VM ended.
            Ok(AdminResponse::Error { message, .. }) => (
                Departure::Ended {
                    reason: format!("the VM ended while migrating to {to}: {message}"),
                    error: None,
                },
                Err(kept_err(format!("the VM ended while migrating: {message}"))),
            ),
            Ok(other) => (
                Departure::Stayed { error: None },
                Err(kept_err(format!("unexpected answer {other:?}"))),
            ),
            Err(io) => {
                if self.vms.with_host(name, Shim::alive).unwrap_or(false) {
                    let reason = format!("talking to the VM's wanmig-vmm process failed: {io}");
                    (
                        Departure::Stayed {
                            error: Some(reason.clone()),
                        },
                        Err(kept_err(reason)),
                    )
                } else {
                    let reason = format!(
                        "its wanmig-vmm process exited during the migration to {to}: {}",
                        Self::log_tail(&dir)
                    );
                    (
                        Departure::Ended {
                            reason: reason.clone(),
                            error: Some(reason.clone()),
                        },
                        Err(kept_err(reason)),
                    )
                }
            }
        };
        let Some(state) = self.vms.departed(name, to, how, |_, _| ()) else {
            return Err(HostError::Unknown(name.to_string()));
        };
        if matches!(
            state,
            VmState::MigratedAway { .. } | VmState::HandoverUnconfirmed { .. }
        ) {
            self.record_left(name, &state);
        }
        result
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
        config.validate()?;
        if config.disk.is_some() {
            return Err(HostError::Storage {
                name: name.to_string(),
                reason: "this site hosts VMs in processes ([vms] host = \"process\"), which do not take in disks yet".into(),
            });
        }
        let held = self
            .vms
            .reserve(name, config.clone(), from, "be received", Shim::default())?;
        let dir = self.vm_dir(name);
        let mut child = None;
        let result = (|| {
            let dir = self.fresh_dir(name, &config)?;
            // Marks a VM that never ran here (re-adoption removes it).
            let incoming = dir.join("incoming");
            std::fs::write(&incoming, from).map_err(HostError::start_io(
                name,
                format!("cannot write {}", incoming.display()),
            ))?;
            let sock = dir.join("in.sock");
            let c = child.insert(
                self.spawn(
                    name,
                    &dir,
                    CONFIG,
                    &[
                        "--incoming".into(),
                        format!("unix:{}", sock.display()),
                        "--incoming-report".into(),
                        dir.join("report.json").display().to_string(),
                        "--incoming-idle-timeout-s".into(),
                        opts.idle_timeout.as_secs().max(1).to_string(),
                        "--incoming-handover-timeout-s".into(),
                        opts.handover_timeout
                            .map_or(0, |t| t.as_secs().max(1))
                            .to_string(),
                    ],
                )?,
            );
            let pid = c.id();
            self.vms.with_host(name, |h| h.pid = Some(pid));
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
            pump(conn, stream).map_err(HostError::start_io(
                name,
                "relaying the migration stream to wanmig-vmm",
            ))?;
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
        match result {
            Ok((report, st)) => {
                held.commit(None, |h| {
                    h.child = child;
                    h.iteration = st.mem_iteration;
                });
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
                // Dropping `held` gives the name back to what held it.
                Err(err)
            }
        }
    }

    fn list(&self) -> Vec<VmInfo> {
        // Ask running shims for news without holding the registry's lock.
        for name in self.vms.names_in(&VmState::Running) {
            let answer = status(&self.control_socket(&name));
            self.vms.check_running(&name, |h| match answer {
                Some(s) if s.exit.is_none() => {
                    h.iteration = s.mem_iteration;
                    None
                }
                Some(s) => Some(format!("the VM ended: {:?}", s.exit)),
                None if !h.alive() => Some(format!(
                    "its wanmig-vmm process ({}) exited; start the VM again",
                    h.pid.map(|p| format!("pid {p}")).unwrap_or_default()
                )),
                None => None,
            });
        }
        self.vms
            .list(|h| h.iteration)
            .into_iter()
            .map(|(info, iteration)| VmInfo { iteration, ..info })
            .collect()
    }

    fn settle_handover(&self, name: &str, to: &str, running_there: bool) {
        if let Some(state) = self.vms.settle(name, to, running_there) {
            self.record_left(name, &state);
        }
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
                segment: None,
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
