//! Kernel TCP over the same emulated WAN the QUIC probe crosses: two
//! network namespaces joined by a netem TUN link; a sender thread in one
//! namespace and a receiver thread in the other (each thread `setns`es
//! itself, so no helper processes are needed).

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sched::{setns, CloneFlags};
use wanmig_netem::tun::{TunLink, TunLinkConfig, TunLinkHandle};
use wanmig_netem::LinkParams;
use wanmig_testenv::Netns;

const PORT: u16 = 5201;

/// Two namespaces and the emulated link between them.
pub struct TcpPath {
    // Field order = drop order: the link goes before its namespaces.
    link: Option<TunLinkHandle>,
    ns_a: Netns,
    ns_b: Netns,
    addr_b: Ipv4Addr,
}

impl TcpPath {
    /// Creates the namespaces and the link (needs root).
    pub async fn start(forward: LinkParams, reverse: LinkParams) -> Result<Self> {
        let ns_a = Netns::create("wmba").context("creating namespace A")?;
        let ns_b = Netns::create("wmbb").context("creating namespace B")?;
        let (addr_a, addr_b) = (Ipv4Addr::new(198, 18, 77, 1), Ipv4Addr::new(198, 18, 77, 2));
        // Let autotuning grow the windows past the 100 ms × 250 Mbit/s BDP.
        for ns in [&ns_a, &ns_b] {
            ns.exec(&[
                "sysctl",
                "-q",
                "-w",
                "net.ipv4.tcp_rmem=4096 131072 33554432",
            ]);
            ns.exec(&[
                "sysctl",
                "-q",
                "-w",
                "net.ipv4.tcp_wmem=4096 16384 33554432",
            ]);
        }
        let link = TunLink::start(TunLinkConfig {
            ns_a: ns_a.name().to_string(),
            ns_b: ns_b.name().to_string(),
            addr_a,
            addr_b,
            mtu: 1500,
            forward,
            reverse,
            seed: 0xbe7c,
        })
        .await
        .context("starting the TUN link")?;
        Ok(TcpPath {
            link: Some(link),
            ns_a,
            ns_b,
            addr_b,
        })
    }

    /// Sends `bytes` `rounds` times over one TCP connection using the kernel
    /// congestion controller `cc`; returns each round's duration (from the
    /// first byte written to the receiver's acknowledgement).
    pub async fn transfer(&self, cc: &str, bytes: u64, rounds: usize) -> Result<Vec<Duration>> {
        let (ns_a, ns_b) = (self.ns_a.name().to_string(), self.ns_b.name().to_string());
        let server = SocketAddr::from((self.addr_b, PORT));
        let cc = cc.to_string();
        tokio::task::spawn_blocking(move || {
            transfer_blocking(&ns_a, &ns_b, server, &cc, bytes, rounds)
        })
        .await
        .context("the transfer task panicked")?
    }

    pub async fn shutdown(mut self) {
        if let Some(l) = self.link.take() {
            l.shutdown().await;
        }
    }
}

fn enter(ns: &str) -> Result<()> {
    let f = File::open(format!("/var/run/netns/{ns}"))
        .with_context(|| format!("opening namespace {ns}"))?;
    setns(f, CloneFlags::CLONE_NEWNET).with_context(|| format!("entering namespace {ns}"))?;
    Ok(())
}

fn transfer_blocking(
    ns_a: &str,
    ns_b: &str,
    server: SocketAddr,
    cc: &str,
    bytes: u64,
    rounds: usize,
) -> Result<Vec<Duration>> {
    let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
    let ns_b = ns_b.to_string();
    let cc_b = cc.to_string();
    let receiver = std::thread::spawn(move || -> Result<()> {
        let listener = (|| {
            enter(&ns_b)?;
            Ok::<_, anyhow::Error>(TcpListener::bind(server)?)
        })();
        let listener = match listener {
            Ok(l) => {
                let _ = ready_tx.send(Ok(()));
                l
            }
            Err(e) => {
                let _ = ready_tx.send(Err(anyhow::anyhow!("{e:#}")));
                return Err(e);
            }
        };
        let (stream, _) = listener.accept()?;
        socket2::SockRef::from(&stream).set_tcp_congestion(cc_b.as_bytes())?;
        let mut stream = stream;
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..rounds {
            let mut len = [0u8; 8];
            stream.read_exact(&mut len)?;
            let mut left = u64::from_be_bytes(len);
            while left > 0 {
                let want = left.min(buf.len() as u64) as usize;
                let n = stream.read(&mut buf[..want])?;
                if n == 0 {
                    bail!("sender closed with {left} bytes outstanding");
                }
                left -= n as u64;
            }
            stream.write_all(&[1])?;
        }
        Ok(())
    });
    ready_rx.recv().context("receiver thread died")??;

    let cc_a = cc.to_string();
    let ns_a = ns_a.to_string();
    // The sender, too, runs on a thread of its own: setns is per thread and
    // must not leak into a pooled runtime thread.
    let sender = std::thread::spawn(move || -> Result<Vec<Duration>> {
        enter(&ns_a)?;
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        sock.set_tcp_congestion(cc_a.as_bytes())
            .with_context(|| format!("kernel congestion control '{cc_a}'"))?;
        sock.connect(&server.into())?;
        let mut stream: std::net::TcpStream = sock.into();
        let data = vec![0x5au8; 1 << 20];
        let mut times = Vec::new();
        for _ in 0..rounds {
            let start = Instant::now();
            stream.write_all(&bytes.to_be_bytes())?;
            let mut left = bytes;
            while left > 0 {
                let n = left.min(data.len() as u64) as usize;
                stream.write_all(&data[..n])?;
                left -= n as u64;
            }
            let mut ack = [0u8; 1];
            stream.read_exact(&mut ack)?;
            times.push(start.elapsed());
        }
        Ok(times)
    });
    let times = sender
        .join()
        .map_err(|_| anyhow::anyhow!("sender thread panicked"))?;
    let received = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("receiver thread panicked"))?;
    let times = times?;
    received?;
    Ok(times)
}
