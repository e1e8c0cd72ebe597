//! Two sites joined by the overlay, with real ports at both ends: the Linux
//! kernel in a fresh namespace sits behind a TAP port at site A; a smoltcp
//! host sits behind an in-process channel port at site B. The smoltcp host
//! pings the kernel with 1400-byte payloads (ARP first, by itself) across a
//! path whose datagrams hold only 1000 bytes, so every full-size frame is
//! fragmented and reassembled in both directions. The "WAN" between the two
//! switches is an in-process loop (the gateway crate carries it over QUIC).

use std::time::Duration;

use bytes::Bytes;
use std::collections::BTreeSet;

use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::phy::{ChecksumCapabilities, Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::socket::icmp;
use smoltcp::wire::{
    EthernetAddress, HardwareAddress, Icmpv4Packet, Icmpv4Repr, IpAddress, IpCidr, Ipv4Address,
};
use wanmig_overlay::port::{channel_pair, ChannelPort, TapOptions, TapPort};
use wanmig_overlay::{
    Action, OverlayConfig, OverlayMetrics, PortId, SegmentConfig, SiteId, Switch, Vni,
};
use wanmig_testenv::{require_netns, sh, unique_name, Netns};

/// smoltcp device over the host end of a channel port.
struct ChanDev(ChannelPort);

struct Rx(Bytes);
struct Tx<'a>(&'a tokio::sync::mpsc::Sender<Bytes>);

impl RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0u8; len];
        let r = f(&mut buf);
        // A full channel drops the frame, as a congested link would.
        let _ = self.0.try_send(Bytes::from(buf));
        r
    }
}

impl Device for ChanDev {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _: smoltcp::time::Instant) -> Option<(Rx, Tx<'_>)> {
        let f = self.0.rx.try_recv().ok()?;
        Some((Rx(f), Tx(&self.0.tx)))
    }

    fn transmit(&mut self, _: smoltcp::time::Instant) -> Option<Tx<'_>> {
        Some(Tx(&self.0.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = 1514;
        c
    }
}

fn vni() -> Vni {
    Vni::new(77).unwrap()
}

fn make_switch(name: &str, metrics: OverlayMetrics) -> Switch {
    let cfg = OverlayConfig {
        segments: vec![SegmentConfig::new("demo", 77)],
        ..Default::default()
    };
    let mut sw = Switch::new(SiteId::new(name), &cfg, metrics).unwrap();
    sw.add_port(PortId(1), vni()).unwrap();
    sw
}

#[tokio::test]
async fn smoltcp_host_pings_kernel_across_two_sites_with_fragmentation() {
    if !require_netns("smoltcp_host_pings_kernel_across_two_sites_with_fragmentation") {
        return;
    }
    let ns = Netns::create("wmo2").unwrap();
    let tap_name = unique_name("wmtp");
    let tap = TapPort::create(&TapOptions {
        name: Some(tap_name.clone()),
        ..Default::default()
    })
    .unwrap();
    sh(&["ip", "link", "set", &tap_name, "netns", ns.name()]);
    let octet = (std::process::id() % 200) as u8 + 20;
    let kernel_ip = format!("198.18.{octet}.1");
    let host_ip = [198, 18, octet, 2];
    ns.exec(&[
        "ip",
        "addr",
        "add",
        &format!("{kernel_ip}/24"),
        "dev",
        &tap_name,
    ]);
    ns.exec(&["ip", "link", "set", &tap_name, "up"]);

    // Site B's smoltcp host: pings the kernel until three echo replies
    // with the full payload came back, or 20 s pass.
    let (switch_end, host_end) = channel_pair(256);
    let kernel = Ipv4Address::new(198, 18, octet, 1);
    let host = tokio::spawn(async move {
        let mut dev = ChanDev(host_end);
        let mac = EthernetAddress([0x02, 0x77, 0, 0, 0, 0xb]);
        let cfg = Config::new(HardwareAddress::Ethernet(mac));
        let mut iface = Interface::new(cfg, &mut dev, smoltcp::time::Instant::now());
        iface.update_ip_addrs(|a| {
            a.push(IpCidr::new(
                IpAddress::v4(host_ip[0], host_ip[1], host_ip[2], host_ip[3]),
                24,
            ))
            .unwrap();
        });
        let buf = || icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 8], vec![0; 16384]);
        let mut sock = icmp::Socket::new(buf(), buf());
        let ident = 0x7777;
        sock.bind(icmp::Endpoint::Ident(ident)).unwrap();
        let mut sockets = SocketSet::new(vec![]);
        let handle = sockets.add(sock);
        let payload: Vec<u8> = (0..1400u32).map(|i| (i % 251) as u8).collect();
        let caps = ChecksumCapabilities::default();
        let mut replies = BTreeSet::new();
        let mut seq = 0u16;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let mut next_send = std::time::Instant::now();
        while replies.len() < 3 && std::time::Instant::now() < deadline {
            iface.poll(smoltcp::time::Instant::now(), &mut dev, &mut sockets);
            let s = sockets.get_mut::<icmp::Socket>(handle);
            if std::time::Instant::now() >= next_send && s.can_send() {
                let req = Icmpv4Repr::EchoRequest {
                    ident,
                    seq_no: seq,
                    data: &payload,
                };
                let mut pkt = vec![0u8; req.buffer_len()];
                req.emit(&mut Icmpv4Packet::new_unchecked(&mut pkt[..]), &caps);
                s.send_slice(&pkt, IpAddress::Ipv4(kernel)).unwrap();
                seq += 1;
                next_send += Duration::from_millis(200);
            }
            while let Ok((data, from)) = s.recv() {
                let Ok(p) = Icmpv4Packet::new_checked(data) else {
                    continue;
                };
                if let Ok(Icmpv4Repr::EchoReply {
                    ident: i,
                    seq_no,
                    data,
                }) = Icmpv4Repr::parse(&p, &caps)
                {
                    if i == ident && data == &payload[..] && from == IpAddress::Ipv4(kernel) {
                        replies.insert(seq_no);
                    }
                }
            }
            iface.poll(smoltcp::time::Instant::now(), &mut dev, &mut sockets);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        replies.len()
    });

    // The two switches and the loop between them.
    let (metrics_a, metrics_b) = (
        OverlayMetrics::unregistered(),
        OverlayMetrics::unregistered(),
    );
    let (ma, mb) = (metrics_a.clone(), metrics_b.clone());
    let fabric = tokio::spawn(async move {
        let mut a = make_switch("a", ma);
        let mut b = make_switch("b", mb);
        let now = std::time::Instant::now();
        let mut pending: Vec<(bool, Action)> = Vec::new();
        pending.extend(
            a.on_peer_up(now, SiteId::new("b"), 1000)
                .into_iter()
                .map(|x| (true, x)),
        );
        pending.extend(
            b.on_peer_up(now, SiteId::new("a"), 1000)
                .into_iter()
                .map(|x| (false, x)),
        );
        let ChannelPort {
            tx: to_host,
            rx: mut from_host,
        } = switch_end;
        let mut buf = vec![0u8; 2048];
        loop {
            // Carry out queued actions; `true` means the action is site A's.
            while let Some((at_a, act)) = pending.pop() {
                let now = std::time::Instant::now();
                match act {
                    Action::Deliver { frame, .. } if at_a => {
                        tap.send(&frame).await.unwrap();
                    }
                    Action::Deliver { frame, .. } => {
                        let _ = to_host.try_send(frame);
                    }
                    Action::SendDatagram { datagram, .. } => {
                        let (sw, from) = if at_a { (&mut b, "a") } else { (&mut a, "b") };
                        let acts = sw.on_datagram(now, &SiteId::new(from), datagram);
                        pending.extend(acts.into_iter().map(|x| (!at_a, x)));
                    }
                    Action::SendControl { msg, .. } => {
                        let (sw, from) = if at_a { (&mut b, "a") } else { (&mut a, "b") };
                        let acts = sw.on_control(now, &SiteId::new(from), msg);
                        pending.extend(acts.into_iter().map(|x| (!at_a, x)));
                    }
                    Action::Event(_) => {}
                }
            }
            tokio::select! {
                n = tap.recv(&mut buf) => {
                    let n = n.unwrap();
                    let acts = a.on_local_frame(std::time::Instant::now(), PortId(1), Bytes::copy_from_slice(&buf[..n]));
                    pending.extend(acts.into_iter().map(|x| (true, x)));
                }
                f = from_host.recv() => {
                    let Some(f) = f else { break };
                    let acts = b.on_local_frame(std::time::Instant::now(), PortId(1), f);
                    pending.extend(acts.into_iter().map(|x| (false, x)));
                }
                _ = tokio::time::sleep(Duration::from_millis(100)) => {
                    let now = std::time::Instant::now();
                    pending.extend(a.poll_timers(now).into_iter().map(|x| (true, x)));
                    pending.extend(b.poll_timers(now).into_iter().map(|x| (false, x)));
                }
            }
        }
    });

    let replies = tokio::time::timeout(Duration::from_secs(30), host)
        .await
        .expect("smoltcp host did not finish within 30 s")
        .unwrap();
    fabric.abort();
    let _ = fabric.await;
    assert_eq!(replies, 3, "echo replies with the full 1400-byte payload");
    // Full-size frames went both ways in fragments and were reassembled.
    for (site, m) in [("a", &metrics_a), ("b", &metrics_b)] {
        let tx = m.fragments.with_label_values(&["tx"]).get();
        assert!(tx >= 6, "site {site} sent {tx} fragments");
        assert!(
            m.reassembled.get() >= 3,
            "site {site} reassembled {}",
            m.reassembled.get()
        );
    }
}
