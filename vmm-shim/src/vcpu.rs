//! The vCPU thread: owns the `VcpuFd`, runs KVM_RUN, dispatches exits
//! (serial, guest control ports, MMIO devices) and obeys commands from the
//! VMM (pause, resume, save/restore state, throttle, stop). Commands are
//! sent on a channel; the thread is kicked out of KVM_RUN with a signal.

use crate::clock::GuestClock;
use crate::guest_control::{self, ControlRequest, ReportLog};
use crate::memory::GuestMem;
use crate::serial::{Serial, SerialSink};
use crate::throttle::Throttle;
use crate::vcpu_state::{self, VcpuCaps, VcpuState, VcpuStateError};
use crate::virtio::VirtioBus;
use kvm_ioctls::{VcpuExit, VcpuFd};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::signal::Killable;
use wanmig_guest_abi as abi;

use wanmig_migration::admin::RunExit;

/// State shared between the vCPU thread and the VMM.
pub struct Shared {
    pub(crate) mem: GuestMem,
    pub(crate) serial: Mutex<Serial>,
    pub(crate) sink: Mutex<SerialSink>,
    pub(crate) reports: Mutex<ReportLog>,
    pub(crate) reports_changed: Condvar,
    pub(crate) exit: Mutex<Option<RunExit>>,
    pub(crate) exited: Condvar,
    pub(crate) clock: Mutex<GuestClock>,
    pub(crate) bus: Mutex<VirtioBus>,
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it
/// (every value guarded here stays consistent between statements).
pub(crate) fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    pub(crate) fn finish(&self, exit: RunExit) {
        let mut e = lock(&self.exit);
        if e.is_none() {
            tracing::info!("VM run ended: {exit:?}");
            *e = Some(exit);
        }
        self.exited.notify_all();
    }
}

pub(crate) enum Command {
    Pause(SyncSender<()>),
    Resume,
    Save(SyncSender<Result<VcpuState, VcpuStateError>>),
    Restore(Box<VcpuState>, SyncSender<Result<Vec<u32>, VcpuStateError>>),
    Throttle(u8),
    Stop,
}

/// Errors talking to the vCPU thread.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("the vCPU thread has ended ({0:?}); the VM is no longer running")]
    Gone(Option<RunExit>),
    #[error("the vCPU did not answer within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    State(#[from] VcpuStateError),
    #[error("cannot start the vCPU thread: {0}")]
    Spawn(std::io::Error),
}

/// The VMM's handle on the vCPU thread.
pub struct VcpuHandle {
    tx: Sender<Command>,
    thread: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
}

const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

impl VcpuHandle {
    /// Starts the vCPU thread, paused.
    pub fn spawn(vcpu: VcpuFd, caps: VcpuCaps, shared: Arc<Shared>) -> Result<Self, VcpuError> {
        crate::kick::install();
        let (tx, rx) = mpsc::channel();
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("vcpu0".into())
            .spawn(move || {
                let mut t = VcpuThread {
                    vcpu,
                    caps,
                    shared: s,
                    rx,
                    paused: true,
                    throttle: Throttle::new(),
                    stopping: false,
                };
                t.run();
            })
            .map_err(VcpuError::Spawn)?;
        Ok(VcpuHandle {
            tx,
            thread: Some(thread),
            shared,
        })
    }

    fn kick(&self) {
        if let Some(t) = &self.thread {
            let _ = t.kill(crate::kick::kick_signal());
        }
    }

    fn gone(&self) -> VcpuError {
        VcpuError::Gone(lock(&self.shared.exit).clone())
    }

    fn send(&self, cmd: Command) -> Result<(), VcpuError> {
        self.tx.send(cmd).map_err(|_| self.gone())?;
        self.kick();
        Ok(())
    }

    /// Sends a command that answers on `rx`, kicking until it does.
    fn ask<T>(&self, cmd: Command, rx: mpsc::Receiver<T>) -> Result<T, VcpuError> {
        self.send(cmd)?;
        let start = Instant::now();
        loop {
            match rx.recv_timeout(Duration::from_millis(2)) {
                Ok(v) => return Ok(v),
                Err(RecvTimeoutError::Disconnected) => return Err(self.gone()),
                Err(RecvTimeoutError::Timeout) if start.elapsed() > ANSWER_TIMEOUT => {
                    return Err(VcpuError::Timeout(ANSWER_TIMEOUT))
                }
                Err(RecvTimeoutError::Timeout) => self.kick(),
            }
        }
    }

    /// Stops the vCPU between instructions; returns once it is out of
    /// KVM_RUN.
    pub fn pause(&self) -> Result<(), VcpuError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.ask(Command::Pause(tx), rx)
    }

    /// Lets a paused vCPU run.
    pub fn resume(&self) -> Result<(), VcpuError> {
        self.send(Command::Resume)
    }

    /// Saves the (paused) vCPU's state.
    pub fn save(&self) -> Result<VcpuState, VcpuError> {
        let (tx, rx) = mpsc::sync_channel(1);
        Ok(self.ask(Command::Save(tx), rx)??)
    }

    /// Restores the (paused) vCPU's state; returns refused MSR indices.
    pub fn restore(&self, state: VcpuState) -> Result<Vec<u32>, VcpuError> {
        let (tx, rx) = mpsc::sync_channel(1);
        Ok(self.ask(Command::Restore(Box::new(state), tx), rx)??)
    }

    /// Throttles the vCPU: it is held off `percent` % of wall-clock time
    /// (at most [`crate::throttle::MAX_PERCENT`]), see [`Throttle`].
    pub fn throttle(&self, percent: u8) -> Result<(), VcpuError> {
        self.send(Command::Throttle(percent.min(crate::throttle::MAX_PERCENT)))
    }
}

impl Drop for VcpuHandle {
    fn drop(&mut self) {
        let _ = self.tx.send(Command::Stop);
        self.kick();
        if let Some(t) = self.thread.take() {
            // Kick until the thread has seen the Stop.
            while !t.is_finished() {
                let _ = t.kill(crate::kick::kick_signal());
                std::thread::sleep(Duration::from_millis(1));
            }
            let _ = t.join();
        }
        self.shared.finish(RunExit::Stopped);
    }
}

struct VcpuThread {
    vcpu: VcpuFd,
    caps: VcpuCaps,
    shared: Arc<Shared>,
    rx: Receiver<Command>,
    paused: bool,
    throttle: Throttle,
    stopping: bool,
}

impl VcpuThread {
    fn run(&mut self) {
        loop {
            // Drain commands; block while paused.
            loop {
                let cmd = if self.paused {
                    match self.rx.recv() {
                        Ok(c) => c,
                        Err(_) => return,
                    }
                } else {
                    match self.rx.try_recv() {
                        Ok(c) => c,
                        Err(mpsc::TryRecvError::Empty) => break,
                        Err(mpsc::TryRecvError::Disconnected) => return,
                    }
                };
                self.command(cmd);
                if self.stopping {
                    return;
                }
            }
            if lock(&self.shared.exit).is_some() {
                // The run has ended; wait for commands (save, stop) only.
                self.paused = true;
                continue;
            }
            let result = self.step();
            if self.stopping {
                return;
            }
            if let Some(exit) = result {
                self.shared.finish(exit);
                self.paused = true;
                lock(&self.shared.clock).stop(Instant::now());
                continue;
            }
            self.apply_throttle();
            if self.stopping {
                return;
            }
        }
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Pause(ack) => {
                if !self.paused {
                    lock(&self.shared.clock).stop(Instant::now());
                }
                self.paused = true;
                let _ = ack.send(());
            }
            Command::Resume => {
                if self.paused && lock(&self.shared.exit).is_none() {
                    lock(&self.shared.clock).start(Instant::now());
                    self.paused = false;
                }
            }
            Command::Save(reply) => {
                let _ = reply.send(vcpu_state::save(&self.vcpu, &self.caps));
            }
            Command::Restore(state, reply) => {
                let _ = reply.send(vcpu_state::restore(&self.vcpu, &self.caps, &state));
            }
            Command::Throttle(p) => self.throttle.set(p, Instant::now()),
            Command::Stop => self.stopping = true,
        }
    }

    /// Sleeps up to `d`, cut short by (and handling) a command.
    fn sleep(&mut self, d: Duration) {
        match self.rx.recv_timeout(d) {
            Ok(cmd) => self.command(cmd),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => self.stopping = true,
        }
    }

    /// Auto-converge: sits out the throttle's hold-off window if `now` is
    /// in one (after an exit, or after a guest sleep that ran into it). A
    /// command arriving meanwhile is handled and the rest of the window
    /// still sat out, unless it paused or stopped the vCPU or changed the
    /// throttle.
    fn apply_throttle(&mut self) {
        while !self.paused && !self.stopping {
            let off = self.throttle.hold_off(Instant::now());
            if off.is_zero() {
                return;
            }
            self.sleep(off);
        }
    }

    /// One KVM_RUN and its exit; `Some` when the run has ended.
    fn step(&mut self) -> Option<RunExit> {
        let shared = self.shared.clone();
        let run = self.vcpu.run();
        let exit = match run {
            Ok(e) => e,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => return None,
            Err(e) => return Some(RunExit::Failed(format!("KVM_RUN failed: {e}"))),
        };
        match exit {
            VcpuExit::IoOut(port, data) => {
                if (abi::SERIAL_PORT..abi::SERIAL_PORT + 8).contains(&port) {
                    let line = lock(&shared.serial).write(port - abi::SERIAL_PORT, data[0]);
                    if let Some(line) = line {
                        (lock(&shared.sink))(&line);
                    }
                    return None;
                }
                let req = guest_control::decode(port, data);
                match req {
                    Some(r) => return self.control(r),
                    None => tracing::debug!("guest wrote {data:?} to unhandled port {port:#x}"),
                }
            }
            VcpuExit::IoIn(port, data) => {
                if (abi::SERIAL_PORT..abi::SERIAL_PORT + 8).contains(&port) {
                    data[0] = lock(&shared.serial).read(port - abi::SERIAL_PORT);
                } else {
                    data.fill(0xff);
                }
            }
            VcpuExit::MmioRead(addr, data) => {
                let handled = lock(&shared.bus).read(addr, data);
                if !handled {
                    data.fill(0xff);
                    tracing::debug!("guest read unmapped MMIO {addr:#x}");
                }
            }
            VcpuExit::MmioWrite(addr, data) => {
                let handled = lock(&shared.bus).write(addr, data);
                if !handled {
                    tracing::debug!("guest wrote unmapped MMIO {addr:#x}");
                }
            }
            VcpuExit::Hlt => return Some(RunExit::Halted),
            VcpuExit::Shutdown => return Some(RunExit::Shutdown),
            VcpuExit::Intr => {}
            VcpuExit::FailEntry(reason, cpu) => {
                return Some(RunExit::Failed(format!(
                    "VM entry failed on cpu {cpu}, hardware reason {reason:#x}"
                )))
            }
            VcpuExit::InternalError => {
                // SAFETY: on KVM_EXIT_INTERNAL_ERROR the kernel filled the
                // `internal` member of the kvm_run exit union.
                let sub = unsafe { self.vcpu.get_kvm_run().__bindgen_anon_1.internal.suberror };
                let rip = self.vcpu.get_regs().map(|r| r.rip).unwrap_or(0);
                return Some(RunExit::Failed(format!(
                    "KVM internal error (suberror {sub}) at guest RIP {rip:#x}"
                )));
            }
            other => return Some(RunExit::Failed(format!("unexpected vCPU exit {other:?}"))),
        }
        None
    }

    fn control(&mut self, req: ControlRequest) -> Option<RunExit> {
        let shared = self.shared.clone();
        // The guest polls its virtqueues and comes here at least once per
        // main-loop pass (clock read, report or idle sleep): move frames
        // between the backends and the queues now. Never while paused, so
        // devices do not write memory after the final dirty scan.
        lock(&shared.bus).process();
        match req {
            ControlRequest::Report(gpa) => {
                let mut buf = [0u8; abi::REPORT_SIZE];
                match shared.mem.read_slice(&mut buf, GuestAddress(gpa)) {
                    Ok(()) => {
                        let r = guest_control::parse_report(&buf);
                        lock(&shared.reports).push(r);
                        shared.reports_changed.notify_all();
                    }
                    Err(e) => tracing::warn!("guest report at {gpa:#x} unreadable: {e}"),
                }
            }
            ControlRequest::Clock(gpa) => {
                let ns = lock(&shared.clock).now_ns(Instant::now());
                if let Err(e) = shared.mem.write_slice(&ns.to_le_bytes(), GuestAddress(gpa)) {
                    tracing::warn!("guest clock cell at {gpa:#x} unwritable: {e}");
                }
            }
            ControlRequest::Sleep(d) => {
                self.sleep(d);
            }
            ControlRequest::Exit(code) => return Some(RunExit::Guest(code)),
        }
        None
    }
}
