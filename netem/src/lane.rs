//! A running link direction: a [`LinkModel`] of datagrams shared between the
//! I/O code that submits into it and a sender thread that sends each
//! datagram when its departure time comes.
//!
//! Why a thread and not a tokio timer: tokio's timer ticks in whole
//! milliseconds and fires late by up to one tick, which alone would eat the
//! ±2 ms RTT budget (two directions). A dedicated thread waiting on a
//! condition variable with a timeout uses the kernel's high-resolution
//! timers (tens of µs), and sends without going through the runtime.
//! Payload buffers are recycled through a pool, so steady traffic does not
//! allocate.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::model::LinkModel;
use crate::params::LinkParams;

/// A datagram may leave this much before its scheduled time, so that
/// datagrams due close together go out in one batch.
const EARLY: Duration = Duration::from_micros(50);
/// Buffers kept for reuse (bounds idle memory).
const POOL_MAX: usize = 8192;
/// Datagrams taken from the model per lock.
const BATCH: usize = 256;
/// How long a send may keep hitting a full socket buffer before the
/// datagram is dropped (counted as a send error).
const SEND_PATIENCE: Duration = Duration::from_millis(20);

/// A datagram in flight, with where it goes.
#[derive(Debug, Clone)]
pub(crate) struct Datagram<R> {
    pub data: Vec<u8>,
    pub route: R,
}

struct State<R> {
    model: LinkModel<Datagram<R>>,
    pool: Vec<Vec<u8>>,
}

pub(crate) struct Lane<R> {
    state: Mutex<State<R>>,
    wake: Condvar,
    stop: AtomicBool,
    send_errors: AtomicU64,
}

impl<R: Clone + Send + 'static> Lane<R> {
    pub fn new(params: LinkParams, seed: u64) -> Arc<Self> {
        Arc::new(Lane {
            state: Mutex::new(State {
                model: LinkModel::new(params, seed),
                pool: Vec::new(),
            }),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
            send_errors: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State<R>> {
        // The model stays consistent between calls, so a panic elsewhere
        // while the lock was held does not make it unusable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Gives `payload` to the link at `now` (copied into a pooled buffer).
    pub fn submit(&self, now: Instant, payload: &[u8], route: R) {
        let wake = {
            let mut st = self.lock();
            let mut data = st.pool.pop().unwrap_or_default();
            data.clear();
            data.extend_from_slice(payload);
            let before = st.model.next_wakeup();
            st.model
                .submit(now, Datagram { data, route }, payload.len());
            let after = st.model.next_wakeup();
            match (before, after) {
                (None, Some(_)) => true,
                (Some(b), Some(a)) => a < b,
                _ => false,
            }
        };
        // Only when the earliest departure moved up does the sender need to
        // re-arm its wait.
        if wake {
            self.wake.notify_one();
        }
    }

    /// Runs `f` on the model (parameters, cut, stats).
    pub fn with_model<T>(&self, f: impl FnOnce(&mut LinkModel<Datagram<R>>) -> T) -> T {
        let out = f(&mut self.lock().model);
        self.wake.notify_one();
        out
    }

    pub fn send_errors(&self) -> u64 {
        self.send_errors.load(Ordering::Relaxed)
    }

    /// Tells the sender thread to end.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let _guard = self.lock();
        self.wake.notify_all();
    }

    /// Starts the sender thread; `send` sends one datagram and may return
    /// `WouldBlock` when the socket buffer is full (it is retried).
    pub fn spawn_sender<F>(self: &Arc<Self>, name: &str, send: F) -> io::Result<JoinHandle<()>>
    where
        F: FnMut(&R, &[u8]) -> io::Result<()> + Send + 'static,
    {
        let lane = self.clone();
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || lane.sender_loop(send))
    }

    fn sender_loop<F>(&self, mut send: F)
    where
        F: FnMut(&R, &[u8]) -> io::Result<()>,
    {
        let mut due: Vec<Datagram<R>> = Vec::with_capacity(BATCH);
        let mut spent: Vec<Vec<u8>> = Vec::with_capacity(BATCH);
        let mut st = self.lock();
        loop {
            if self.stop.load(Ordering::SeqCst) {
                st.model.clear();
                return;
            }
            let room = POOL_MAX.saturating_sub(st.pool.len());
            let n = spent.len().min(room);
            st.pool.extend(spent.drain(..n));
            spent.clear();
            let now = Instant::now();
            while due.len() < BATCH {
                match st.model.poll(now + EARLY) {
                    Some(d) => due.push(d.packet),
                    None => break,
                }
            }
            if due.is_empty() {
                // Wait for the next departure or for a submit that moved it
                // up; wake now and then to notice a stop.
                let timeout = match st.model.next_wakeup() {
                    Some(at) => at.saturating_duration_since(now + EARLY),
                    None => Duration::from_millis(100),
                };
                st = self
                    .wake
                    .wait_timeout(st, timeout)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                continue;
            }
            drop(st);
            for d in due.drain(..) {
                self.send_one(&mut send, &d);
                spent.push(d.data);
            }
            st = self.lock();
        }
    }

    fn send_one<F>(&self, send: &mut F, d: &Datagram<R>)
    where
        F: FnMut(&R, &[u8]) -> io::Result<()>,
    {
        let mut waited: Option<Instant> = None;
        loop {
            match send(&d.route, &d.data) {
                Ok(()) => return,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let since = *waited.get_or_insert_with(Instant::now);
                    if since.elapsed() > SEND_PATIENCE || self.stop.load(Ordering::Relaxed) {
                        self.send_errors.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    std::thread::sleep(Duration::from_micros(50));
                }
                Err(e) => {
                    self.send_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(error = %e, "netem: send failed");
                    return;
                }
            }
        }
    }
}
