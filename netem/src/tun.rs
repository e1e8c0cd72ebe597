//! The TUN link: a point-to-point emulated link between two network
//! namespaces. A TUN device is created in each namespace (created in ours,
//! then moved with `ip link set dev X netns NS`) and given `addr_a` peer
//! `addr_b` (and the reverse); IP packets read from A's device go through
//! the forward model and are written to B's device, and back through the
//! reverse model. Kernel TCP and namespace tests run over it unchanged.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tun_rs::{AsyncDevice, DeviceBuilder};

use crate::error::NetemError;
use crate::lane::Lane;
use crate::model::LinkStats;
use crate::params::LinkParams;
use crate::relay::Direction;
use crate::workers::Workers;

/// The two namespaces, their addresses, and the two directions' knobs.
/// `forward` is A → B, `reverse` is B → A.
#[derive(Debug, Clone)]
pub struct TunLinkConfig {
    /// Name of an existing network namespace (as `ip netns` lists it).
    pub ns_a: String,
    pub ns_b: String,
    pub addr_a: Ipv4Addr,
    pub addr_b: Ipv4Addr,
    pub mtu: u16,
    pub forward: LinkParams,
    pub reverse: LinkParams,
    pub seed: u64,
}

/// Counters of a running TUN link.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunStats {
    pub forward: LinkStats,
    pub reverse: LinkStats,
    /// Packets the kernel refused to take from us (device gone or full).
    pub send_errors: u64,
    pub cut: bool,
}

/// Starts TUN links; see [`TunLink::start`].
pub struct TunLink;

struct Inner {
    forward: Arc<Lane<()>>,
    reverse: Arc<Lane<()>>,
    cut: AtomicBool,
    dev_a: String,
    dev_b: String,
    stop: Mutex<Option<watch::Sender<()>>>,
    workers: Workers,
}

impl Inner {
    fn stop(&self) {
        drop(lock(&self.stop).take());
        self.forward.stop();
        self.reverse.stop();
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Controls a running TUN link. Clones share it; dropping the last handle
/// (or [`TunLinkHandle::shutdown`]) stops it and removes both devices.
#[derive(Clone)]
pub struct TunLinkHandle {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for TunLinkHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunLinkHandle")
            .field("dev_a", &self.inner.dev_a)
            .field("dev_b", &self.inner.dev_b)
            .finish()
    }
}

fn device_name(side: char) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    // "wn" + 6 hex digits of pid + counter + side: at most 15 characters.
    format!("wn{:x}{n:x}{side}", std::process::id() & 0xff_ffff)
}

fn ip(args: &[&str]) -> Result<(), NetemError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| NetemError::Tun(format!("cannot run `ip` (is iproute2 installed?): {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetemError::Tun(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Creates a TUN device here, moves it into `ns` and configures it.
fn make_device(
    name: &str,
    ns: &str,
    local: Ipv4Addr,
    peer: Ipv4Addr,
    mtu: u16,
) -> Result<tun_rs::SyncDevice, NetemError> {
    let dev = DeviceBuilder::new()
        .name(name)
        .mtu(mtu)
        .enable(false)
        .build_sync()
        .map_err(|e| {
            NetemError::Tun(format!(
                "creating TUN device {name}: {e} (needs root / CAP_NET_ADMIN and /dev/net/tun)"
            ))
        })?;
    ip(&["link", "set", "dev", name, "netns", ns])?;
    ip(&[
        "-n",
        ns,
        "addr",
        "add",
        &format!("{local}/32"),
        "peer",
        &format!("{peer}/32"),
        "dev",
        name,
    ])?;
    ip(&[
        "-n",
        ns,
        "link",
        "set",
        "dev",
        name,
        "mtu",
        &mtu.to_string(),
        "up",
    ])?;
    Ok(dev)
}

impl TunLink {
    /// Creates the devices in `ns_a` and `ns_b` and starts moving packets.
    /// Needs root; call inside a tokio runtime.
    pub async fn start(cfg: TunLinkConfig) -> Result<TunLinkHandle, NetemError> {
        cfg.forward.validate()?;
        cfg.reverse.validate()?;
        if cfg.mtu < 576 {
            return Err(NetemError::param(
                "mtu",
                "must be at least 576 (IPv4 minimum)",
            ));
        }
        let (name_a, name_b) = (device_name('a'), device_name('b'));
        let setup = {
            let cfg = cfg.clone();
            let (name_a, name_b) = (name_a.clone(), name_b.clone());
            tokio::task::spawn_blocking(move || {
                let a = make_device(&name_a, &cfg.ns_a, cfg.addr_a, cfg.addr_b, cfg.mtu)?;
                let b = make_device(&name_b, &cfg.ns_b, cfg.addr_b, cfg.addr_a, cfg.mtu)?;
                Ok::<_, NetemError>((a, b))
            })
        };
        let (a, b) = setup
            .await
            .map_err(|e| NetemError::Tun(format!("setup task failed: {e}")))??;
        let wrap = |d, n: &str| {
            AsyncDevice::new(d)
                .map(Arc::new)
                .map_err(|e| NetemError::io(format!("registering TUN device {n} with tokio"), e))
        };
        let dev_a = wrap(a, &name_a)?;
        let dev_b = wrap(b, &name_b)?;

        let forward: Arc<Lane<()>> = Lane::new(cfg.forward, cfg.seed);
        let reverse: Arc<Lane<()>> = Lane::new(cfg.reverse, cfg.seed ^ 0x9e37_79b9_7f4a_7c15);
        let spawn_err = |e| NetemError::io("starting a TUN link sender thread", e);
        let threads = vec![
            {
                let to = dev_b.clone();
                forward
                    .spawn_sender("netem-tun-fwd", move |_: &(), p: &[u8]| {
                        to.try_send(p).map(drop)
                    })
                    .map_err(spawn_err)?
            },
            {
                let to = dev_a.clone();
                reverse
                    .spawn_sender("netem-tun-rev", move |_: &(), p: &[u8]| {
                        to.try_send(p).map(drop)
                    })
                    .map_err(spawn_err)?
            },
        ];
        let (stop_tx, stop_rx) = watch::channel(());
        let mtu = usize::from(cfg.mtu);
        let tasks = vec![
            tokio::spawn(read_loop(dev_a, forward.clone(), mtu, stop_rx.clone())),
            tokio::spawn(read_loop(dev_b, reverse.clone(), mtu, stop_rx)),
        ];
        tracing::info!(
            ns_a = %cfg.ns_a, dev_a = %name_a, ns_b = %cfg.ns_b, dev_b = %name_b,
            "netem TUN link started"
        );
        Ok(TunLinkHandle {
            inner: Arc::new(Inner {
                forward,
                reverse,
                cut: AtomicBool::new(false),
                dev_a: name_a,
                dev_b: name_b,
                stop: Mutex::new(Some(stop_tx)),
                workers: Workers::new(tasks, threads),
            }),
        })
    }
}

async fn read_loop(
    dev: Arc<AsyncDevice>,
    lane: Arc<Lane<()>>,
    mtu: usize,
    mut stop: watch::Receiver<()>,
) {
    // Room for an MTU-sized packet plus slack for a larger one the kernel
    // might still hand over (it is then truncated, as on a real link).
    let mut buf = vec![0u8; mtu.max(1500) + 64];
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            r = dev.readable() => if let Err(e) = r {
                tracing::error!(error = %e, "netem TUN link: device failed; this direction stops");
                return;
            },
        }
        loop {
            match dev.try_recv(&mut buf) {
                Ok(n) => lane.submit(Instant::now(), &buf[..n], ()),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::debug!(error = %e, "netem TUN link: read error");
                    break;
                }
            }
        }
    }
}

impl TunLinkHandle {
    /// The device names in namespace A and B.
    pub fn devices(&self) -> (&str, &str) {
        (&self.inner.dev_a, &self.inner.dev_b)
    }

    /// Drops everything in both directions until [`TunLinkHandle::restore`].
    pub fn cut(&self) {
        self.set_cut(true);
    }

    pub fn restore(&self) {
        self.set_cut(false);
    }

    fn set_cut(&self, cut: bool) {
        self.inner.cut.store(cut, Ordering::SeqCst);
        self.inner.forward.with_model(|m| m.set_cut(cut));
        self.inner.reverse.with_model(|m| m.set_cut(cut));
        tracing::info!(cut, "netem TUN link state");
    }

    pub fn is_cut(&self) -> bool {
        self.inner.cut.load(Ordering::SeqCst)
    }

    /// Replaces one direction's parameters (forward = A → B).
    pub fn set_params(&self, dir: Direction, params: LinkParams) {
        match dir {
            Direction::Forward => self.inner.forward.with_model(|m| m.set_params(params)),
            Direction::Reverse => self.inner.reverse.with_model(|m| m.set_params(params)),
        }
    }

    pub fn stats(&self) -> TunStats {
        TunStats {
            forward: self.inner.forward.with_model(|m| m.stats()),
            reverse: self.inner.reverse.with_model(|m| m.stats()),
            send_errors: self.inner.forward.send_errors() + self.inner.reverse.send_errors(),
            cut: self.is_cut(),
        }
    }

    /// Stops the link (for every clone) and waits until the devices are
    /// closed.
    pub async fn shutdown(self) {
        self.inner.stop();
        self.inner.workers.join().await;
    }
}

impl crate::control::LinkControl for TunLinkHandle {
    fn cut(&self) {
        TunLinkHandle::cut(self)
    }
    fn restore(&self) {
        TunLinkHandle::restore(self)
    }
    fn stats_json(&self) -> String {
        serde_json::to_string(&self.stats()).unwrap_or_else(|e| format!("error: {e}"))
    }
}
