//! TAP ports against the real kernel: a TAP created by [`TapPort`] is moved
//! into a fresh network namespace holding 198.18.x.1; the test plays host
//! 198.18.x.2 through the TAP and sees the kernel's ARP and ICMP answers.
//! A second test enslaves a TAP to a bridge. Both need root (netns gate).

use std::net::Ipv4Addr;
use std::time::Duration;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, Icmpv4Packet, Icmpv4Repr,
    IpProtocol, Ipv4Packet, Ipv4Repr,
};
use wanmig_overlay::frame::{ArpInfo, ArpOp, EthFrame, ETHERTYPE_ARP};
use wanmig_overlay::port::{TapOptions, TapPort};
use wanmig_overlay::MacAddr;
use wanmig_testenv::{require_netns, sh, unique_name, LinkGuard, Netns};

const ME: MacAddr = MacAddr([0x02, 0x77, 0, 0, 0, 2]);

/// Reads frames from the TAP until `pick` accepts one (other traffic, such
/// as IPv6 router solicitations, is skipped) or 10 s pass.
async fn wait_for<T>(tap: &TapPort, mut pick: impl FnMut(&[u8]) -> Option<T>) -> T {
    let mut buf = vec![0u8; 2048];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let n = tokio::time::timeout_at(deadline, tap.recv(&mut buf))
            .await
            .expect("no matching frame from the kernel within 10 s")
            .unwrap();
        if let Some(v) = pick(&buf[..n]) {
            return v;
        }
    }
}

fn echo_request(dst_mac: MacAddr, src: Ipv4Addr, dst: Ipv4Addr, ident: u16, seq: u16) -> Vec<u8> {
    let payload = b"wanmig overlay tap test";
    let icmp = Icmpv4Repr::EchoRequest {
        ident,
        seq_no: seq,
        data: payload,
    };
    let ip = Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: IpProtocol::Icmp,
        payload_len: icmp.buffer_len(),
        hop_limit: 64,
    };
    let eth = EthernetRepr {
        src_addr: EthernetAddress(ME.0),
        dst_addr: EthernetAddress(dst_mac.0),
        ethertype: EthernetProtocol::Ipv4,
    };
    let mut buf = vec![0u8; eth.buffer_len() + ip.buffer_len() + icmp.buffer_len()];
    let caps = ChecksumCapabilities::default();
    let mut f = EthernetFrame::new_unchecked(&mut buf[..]);
    eth.emit(&mut f);
    let mut p = Ipv4Packet::new_unchecked(f.payload_mut());
    ip.emit(&mut p, &caps);
    icmp.emit(&mut Icmpv4Packet::new_unchecked(p.payload_mut()), &caps);
    buf
}

#[tokio::test]
async fn tap_port_exchanges_arp_and_icmp_with_the_kernel_in_a_namespace() {
    if !require_netns("tap_port_exchanges_arp_and_icmp_with_the_kernel_in_a_namespace") {
        return;
    }
    let ns = Netns::create("wmov").unwrap();
    let name = unique_name("wmtp");
    // Declared after the namespace so it is dropped (and deleted) first.
    let tap = TapPort::create(&TapOptions {
        name: Some(name.clone()),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(tap.name(), name);
    sh(&["ip", "link", "set", &name, "netns", ns.name()]);
    let octet = (std::process::id() % 200) as u8 + 10;
    let kernel_ip = Ipv4Addr::new(198, 18, octet, 1);
    let my_ip = Ipv4Addr::new(198, 18, octet, 2);
    ns.exec(&[
        "ip",
        "addr",
        "add",
        &format!("{kernel_ip}/24"),
        "dev",
        &name,
    ]);
    ns.exec(&["ip", "link", "set", &name, "up"]);

    // ARP: who has kernel_ip? The kernel answers through the TAP.
    let req = ArpInfo {
        op: ArpOp::Request,
        sender_mac: ME,
        sender_ip: my_ip,
        target_mac: MacAddr::ZERO,
        target_ip: kernel_ip,
    };
    tap.send(&req.to_frame(MacAddr::BROADCAST, ME, None))
        .await
        .unwrap();
    let kernel_mac = wait_for(&tap, |f| {
        let e = EthFrame::parse(f, 1522).ok()?;
        let a = e.arp()?;
        (e.ethertype == ETHERTYPE_ARP
            && a.op == ArpOp::Reply
            && a.sender_ip == kernel_ip
            && a.target_mac == ME)
            .then_some(a.sender_mac)
    })
    .await;

    // ICMP echo to the kernel's address; the reply comes back to our MAC.
    let ident = (std::process::id() & 0xffff) as u16;
    tap.send(&echo_request(kernel_mac, my_ip, kernel_ip, ident, 1))
        .await
        .unwrap();
    let (seq, from) = wait_for(&tap, |f| {
        let e = EthernetFrame::new_checked(f).ok()?;
        if e.ethertype() != EthernetProtocol::Ipv4 || e.dst_addr() != EthernetAddress(ME.0) {
            return None;
        }
        let ip = Ipv4Packet::new_checked(e.payload()).ok()?;
        let icmp = Icmpv4Packet::new_checked(ip.payload()).ok()?;
        match Icmpv4Repr::parse(&icmp, &ChecksumCapabilities::default()).ok()? {
            Icmpv4Repr::EchoReply {
                ident: i, seq_no, ..
            } if i == ident => Some((seq_no, ip.src_addr())),
            _ => None,
        }
    })
    .await;
    assert_eq!((seq, from), (1, kernel_ip));

    // The kernel counted what we sent through the TAP.
    let stats = ns.exec(&["ip", "-s", "link", "show", &name]);
    assert!(stats.contains(&name), "{stats}");
}

#[tokio::test]
async fn tap_port_is_enslaved_to_a_bridge_and_removed_on_drop() {
    if !require_netns("tap_port_is_enslaved_to_a_bridge_and_removed_on_drop") {
        return;
    }
    let br = unique_name("wmbr");
    sh(&["ip", "link", "add", &br, "type", "bridge"]);
    let _br_guard = LinkGuard(br.clone());
    let name = unique_name("wmtp");
    {
        let tap = TapPort::create(&TapOptions {
            name: Some(name.clone()),
            mtu: Some(1400),
            mac: Some(MacAddr([0x02, 0x77, 0, 0, 1, 1])),
            bridge: Some(br.clone()),
        })
        .unwrap();
        assert!(tap.if_index().unwrap() > 0);
        let show = sh(&["ip", "-d", "link", "show", &name]);
        assert!(show.contains(&format!("master {br}")), "{show}");
        assert!(show.contains("mtu 1400"), "{show}");
        assert!(show.contains("02:77:00:00:01:01"), "{show}");
    }
    // Not persistent: gone once the port is dropped.
    let o = wanmig_testenv::run(&["ip", "link", "show", &name]);
    assert!(!o.status.success(), "{name} still exists after drop");
    // Enslaving to a bridge that does not exist is a clear error.
    let err = TapPort::create(&TapOptions {
        name: Some(unique_name("wmtp")),
        bridge: Some("wmnobridge0".into()),
        ..Default::default()
    })
    .err()
    .unwrap();
    assert!(err.to_string().contains("wmnobridge0"), "{err}");
}
