//! Behaviour of the switching core across sites: learning, ageing, flooding
//! with split horizon and rate limits, ARP suppression, MAC mobility
//! (sequence rules, tie-break, flap freeze), resynchronisation after a
//! reconnect, fragmentation through the switch, and bad input.

mod common;

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use common::*;
use wanmig_overlay::encap::{self, FragInfo, Header};
use wanmig_overlay::frame::EthFrame;
use wanmig_overlay::mactable::Location;
use wanmig_overlay::{
    Action, ControlMsg, DropReason, MacAddr, MacAdvert, OverlayConfig, PortId, SegmentConfig,
    SwitchEvent, Vni,
};

fn drops(sw: &wanmig_overlay::Switch, r: DropReason) -> u64 {
    sw.metrics().drops_for(r)
}

#[test]
fn learns_source_and_forwards_known_unicast_to_one_port_only() {
    let mut sw = switch("a", &config());
    let t = std::time::Instant::now();
    for p in 1..=3 {
        sw.add_port(PortId(p), vni()).unwrap();
    }
    sw.on_peer_up(t, site("b"), 1400);
    // Unknown destination: flooded to the other ports and the peer.
    let acts = sw.on_local_frame(t, PortId(1), eth(mac(2), mac(1), 100));
    let ports: Vec<PortId> = deliveries(&acts).iter().map(|d| d.0).collect();
    assert_eq!(ports, vec![PortId(2), PortId(3)]);
    assert_eq!(datagrams(&acts).len(), 1);
    // The new MAC is advertised to the peer with sequence 0.
    let c = controls(&acts);
    assert_eq!(c.len(), 1);
    match &c[0].1 {
        ControlMsg::MacAdvert(a) => assert_eq!((a.mac, a.seq, a.site.as_str()), (mac(1), 0, "a")),
        m => panic!("unexpected {m:?}"),
    }
    // The reply to the learned MAC goes to port 1 alone, not over the WAN.
    let acts = sw.on_local_frame(t, PortId(3), eth(mac(1), mac(2), 100));
    assert_eq!(
        deliveries(&acts).iter().map(|d| d.0).collect::<Vec<_>>(),
        vec![PortId(1)]
    );
    assert!(datagrams(&acts).is_empty());
    // A frame to a MAC on its own ingress port is filtered.
    let acts = sw.on_local_frame(t, PortId(1), eth(mac(1), mac(9), 100));
    assert!(acts.iter().all(|a| !matches!(a, Action::Deliver { .. })));
    assert_eq!(drops(&sw, DropReason::SamePort), 1);
}

#[test]
fn local_mac_ages_out_and_is_withdrawn_from_peers() {
    let mut m = Mesh::new(&["a", "b"], &config(), 1400);
    m.send("a", eth(MacAddr::BROADCAST, mac(1), 60));
    assert_eq!(m.location("b", mac(1)), Some(Location::Remote(site("a"))));
    let deadline = m.sites["a"].next_timeout().unwrap();
    assert_eq!(deadline, m.now + Duration::from_secs(300));
    m.advance(Duration::from_secs(299));
    m.poll();
    assert!(m.location("a", mac(1)).is_some());
    m.advance(Duration::from_secs(1));
    m.poll();
    assert_eq!(m.location("a", mac(1)), None);
    // The withdrawal reached b, which forgot the MAC at once.
    assert_eq!(m.location("b", mac(1)), None);
}

#[test]
fn broadcast_from_wan_floods_local_ports_only_split_horizon() {
    let mut m = Mesh::new(&["a", "b", "c"], &config(), 1400);
    m.sites
        .get_mut("b")
        .unwrap()
        .add_port(PortId(2), vni())
        .unwrap();
    m.send("a", eth(MacAddr::BROADCAST, mac(1), 200));
    // a's own port gets nothing (ingress), b's two ports and c's port get one copy each.
    assert!(m.delivered_to("a").is_empty());
    assert_eq!(m.delivered["b"].len(), 2);
    assert_eq!(m.delivered["c"].len(), 1);
    // Receiving sites did not re-flood over the WAN: exactly one copy each.
    let b = &m.sites["b"];
    assert_eq!(
        b.metrics()
            .floods
            .with_label_values(&["5001", "remote"])
            .get(),
        1
    );
    let acts = m.sites.get_mut("b").unwrap().on_datagram(
        m.now,
        &site("a"),
        encap::encapsulate(vni(), true, &eth(MacAddr::BROADCAST, mac(1), 80)),
    );
    assert!(
        datagrams(&acts).is_empty(),
        "a WAN frame must never go back to the WAN"
    );
    assert_eq!(deliveries(&acts).len(), 2);
}

#[test]
fn flood_rate_limit_drops_and_counts_excess() {
    let mut cfg = config();
    cfg.segments[0].flood_rate_pps = 10;
    cfg.segments[0].flood_burst = 5;
    let mut sw = switch("a", &cfg);
    let t = std::time::Instant::now();
    sw.add_port(PortId(1), vni()).unwrap();
    sw.add_port(PortId(2), vni()).unwrap();
    let mut flooded = 0;
    for _ in 0..20 {
        let acts = sw.on_local_frame(t, PortId(1), eth(MacAddr::BROADCAST, mac(1), 60));
        flooded += deliveries(&acts).len();
    }
    assert_eq!(flooded, 5);
    assert_eq!(drops(&sw, DropReason::FloodRateLimited), 15);
    // A second later the bucket has refilled up to the burst.
    let t1 = t + Duration::from_secs(1);
    let n: usize = (0..20)
        .map(|_| {
            deliveries(&sw.on_local_frame(t1, PortId(1), eth(MacAddr::BROADCAST, mac(1), 60))).len()
        })
        .sum();
    assert_eq!(n, 5);
}

#[test]
fn unknown_unicast_flooding_can_be_turned_off_per_segment() {
    let mut cfg = config();
    cfg.segments[0].unknown_unicast_flood = false;
    cfg.segments.push(SegmentConfig::new("other", 7));
    let mut sw = switch("a", &cfg);
    let t = std::time::Instant::now();
    sw.add_port(PortId(1), vni()).unwrap();
    sw.add_port(PortId(2), vni()).unwrap();
    sw.add_port(PortId(3), Vni::new(7).unwrap()).unwrap();
    sw.add_port(PortId(4), Vni::new(7).unwrap()).unwrap();
    let acts = sw.on_local_frame(t, PortId(1), eth(mac(50), mac(1), 60));
    assert!(deliveries(&acts).is_empty());
    assert_eq!(drops(&sw, DropReason::UnknownUnicastDisabled), 1);
    // Broadcast still floods, and only within its own segment.
    let acts = sw.on_local_frame(t, PortId(1), eth(MacAddr::BROADCAST, mac(1), 60));
    assert_eq!(
        deliveries(&acts).iter().map(|d| d.0).collect::<Vec<_>>(),
        vec![PortId(2)]
    );
    // The other segment floods unknown unicast.
    let acts = sw.on_local_frame(t, PortId(3), eth(mac(50), mac(3), 60));
    assert_eq!(
        deliveries(&acts).iter().map(|d| d.0).collect::<Vec<_>>(),
        vec![PortId(4)]
    );
}

#[test]
fn unicast_to_remote_mac_becomes_one_datagram_to_its_site() {
    let mut m = Mesh::new(&["a", "b", "c"], &config(), 1400);
    m.send("b", eth(MacAddr::BROADCAST, mac(2), 60)); // b announces mac 2
    m.clear();
    let f = eth(mac(2), mac(1), 500);
    let acts = m
        .sites
        .get_mut("a")
        .unwrap()
        .on_local_frame(m.now, PortId(1), f.clone());
    let d = datagrams(&acts);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].0, site("b"));
    let (h, off) = Header::decode(&d[0].1).unwrap();
    assert_eq!((h.vni, h.flooded, h.fragment), (vni(), false, None));
    assert_eq!(&d[0].1[off..], &f[..]);
    m.run("a", acts);
    assert_eq!(m.delivered_to("b"), vec![f]);
    assert!(m.delivered_to("c").is_empty());
}

#[test]
fn full_mtu_frames_cross_a_small_datagram_path_fragmented_and_reassembled() {
    let mut m = Mesh::new(&["a", "b"], &config(), 1200);
    m.send("b", eth(MacAddr::BROADCAST, mac(2), 60));
    m.clear();
    let f = eth(mac(2), mac(1), 1514);
    let acts = m
        .sites
        .get_mut("a")
        .unwrap()
        .on_local_frame(m.now, PortId(1), f.clone());
    let mut d = datagrams(&acts);
    assert_eq!(d.len(), 2);
    assert!(d.iter().all(|(_, x)| x.len() <= 1200));
    // Reordered delivery, with a duplicate.
    d.reverse();
    d.push(d[0].clone());
    let b = m.sites.get_mut("b").unwrap();
    let mut got = Vec::new();
    for (_, x) in d {
        got.extend(deliveries(&b.on_datagram(m.now, &site("a"), x)));
    }
    assert_eq!(got, vec![(PortId(1), f.clone())]);
    assert_eq!(b.metrics().reassembled.get(), 1);
    assert_eq!(b.metrics().drops_for(DropReason::DuplicateFragment), 1);
    // Loss of one fragment: nothing delivered, failure counted on timeout.
    let acts = m
        .sites
        .get_mut("a")
        .unwrap()
        .on_local_frame(m.now, PortId(1), f.clone());
    let d = datagrams(&acts);
    let b = m.sites.get_mut("b").unwrap();
    assert!(deliveries(&b.on_datagram(m.now, &site("a"), d[1].1.clone())).is_empty());
    assert!(b.next_timeout().unwrap() <= m.now + Duration::from_secs(2));
    b.poll_timers(m.now + Duration::from_secs(3));
    let fails = &b.metrics().reassembly_failures;
    assert_eq!(fails.with_label_values(&["timeout"]).get(), 1);
    // The path shrinks: the switch fragments to the new size.
    let a = m.sites.get_mut("a").unwrap();
    a.set_max_datagram_size(&site("b"), 400);
    let d = datagrams(&a.on_local_frame(m.now, PortId(1), f));
    assert_eq!(d.len(), 4);
    assert!(d.iter().all(|(_, x)| x.len() <= 400));
}

#[test]
fn arp_for_known_remote_ip_is_answered_locally_and_never_crosses_the_wan() {
    let mut m = Mesh::new(&["a", "b"], &config(), 1400);
    // The host at b announces itself; a learns IP→MAC from the flooded GARP
    // and from the advertisement.
    m.send("b", garp(mac(2), ip(2)));
    m.clear();
    let a = m.sites.get_mut("a").unwrap();
    let acts = a.on_local_frame(m.now, PortId(1), arp_request(mac(1), ip(1), ip(2)));
    assert!(
        datagrams(&acts).is_empty(),
        "suppressed ARP must not cross the WAN"
    );
    let d = deliveries(&acts);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].0, PortId(1));
    let f = EthFrame::parse(&d[0].1, 1522).unwrap();
    let r = f.arp().unwrap();
    assert_eq!(
        (r.sender_mac, r.sender_ip, r.target_mac),
        (mac(2), ip(2), mac(1))
    );
    assert_eq!(
        a.metrics()
            .arp_suppressed
            .with_label_values(&["5001"])
            .get(),
        1
    );
    // Unknown target IP: the request is flooded over the WAN.
    let acts = a.on_local_frame(m.now, PortId(1), arp_request(mac(1), ip(1), ip(77)));
    assert_eq!(datagrams(&acts).len(), 1);
}

#[test]
fn arp_for_known_local_ip_stays_local_and_suppression_can_be_disabled() {
    for enabled in [true, false] {
        let mut cfg = config();
        cfg.segments[0].arp_suppression = enabled;
        let mut sw = switch("a", &cfg);
        let t = std::time::Instant::now();
        sw.add_port(PortId(1), vni()).unwrap();
        sw.add_port(PortId(2), vni()).unwrap();
        sw.on_peer_up(t, site("b"), 1400);
        sw.on_local_frame(t, PortId(2), garp(mac(2), ip(2)));
        let acts = sw.on_local_frame(t, PortId(1), arp_request(mac(1), ip(1), ip(2)));
        assert_eq!(
            deliveries(&acts).len(),
            1,
            "the local owner still gets the request"
        );
        assert_eq!(datagrams(&acts).is_empty(), enabled);
    }
}

#[test]
fn advertisement_carries_ip_so_peers_can_suppress_arp() {
    let mut m = Mesh::new(&["a", "b"], &config(), 1400);
    // Disconnect the data plane effect: send the advert alone.
    let advert = ControlMsg::MacAdvert(MacAdvert {
        vni: vni(),
        mac: mac(2),
        site: site("b"),
        seq: 0,
        ip: Some(ip(2)),
        sticky: false,
    });
    let a = m.sites.get_mut("a").unwrap();
    a.on_control(m.now, &site("b"), advert);
    let acts = a.on_local_frame(m.now, PortId(1), arp_request(mac(1), ip(1), ip(2)));
    assert!(datagrams(&acts).is_empty());
    assert_eq!(deliveries(&acts).len(), 1);
    m.clear();
}

#[test]
fn moved_vm_announced_by_rarp_is_repointed_everywhere_at_once() {
    let mut m = Mesh::new(&["a", "b", "c"], &config(), 1400);
    let vm = mac(10);
    m.send("a", garp(vm, ip(10)));
    for s in ["b", "c"] {
        assert_eq!(m.location(s, vm), Some(Location::Remote(site("a"))));
    }
    assert_eq!(m.seq("b", vm), Some(0));
    m.clear();
    // The VM resumes at b and its hypervisor sends a RARP.
    m.send("b", rarp(vm));
    assert_eq!(m.location("b", vm), Some(Location::Local(PortId(1))));
    assert_eq!(m.location("a", vm), Some(Location::Remote(site("b"))));
    assert_eq!(m.location("c", vm), Some(Location::Remote(site("b"))));
    for s in ["a", "b", "c"] {
        assert_eq!(m.seq(s, vm), Some(1), "site {s}");
    }
    // The RARP reached the other sites' ports so physical switches relearn.
    assert_eq!(m.delivered_to("a").len(), 1);
    assert_eq!(m.delivered_to("c").len(), 1);
    assert!(m.events["a"]
        .iter()
        .any(|e| matches!(e, SwitchEvent::MacMoved { .. })));
    // Traffic from a to the VM now goes to b.
    m.clear();
    let f = eth(vm, mac(1), 100);
    m.send("a", f.clone());
    assert_eq!(m.delivered_to("b"), vec![f]);
    assert!(m.delivered_to("c").is_empty());
    assert_eq!(
        m.sites["a"]
            .metrics()
            .mac_moves
            .with_label_values(&["5001"])
            .get(),
        1
    );
}

#[test]
fn any_frame_from_a_moved_mac_triggers_mobility_even_when_rate_limited() {
    let mut cfg = config();
    cfg.segments[0].flood_rate_pps = 1;
    cfg.segments[0].flood_burst = 1;
    let mut m = Mesh::new(&["a", "b"], &cfg, 1400);
    let vm = mac(10);
    m.send("a", eth(mac(99), vm, 60)); // unknown unicast, uses a's token
    m.clear();
    // Exhaust b's bucket, then the VM's RARP at b must still be flooded.
    m.send("b", eth(MacAddr::BROADCAST, mac(2), 60));
    m.send("b", rarp(vm));
    assert_eq!(m.location("a", vm), Some(Location::Remote(site("b"))));
    assert_eq!(m.seq("a", vm), Some(1));
    let rarps = m
        .delivered_to("a")
        .iter()
        .filter(|f| EthFrame::parse(f, 1522).unwrap().ethertype == 0x8035)
        .count();
    assert_eq!(rarps, 1);
}

#[test]
fn stale_advert_is_answered_and_the_higher_sequence_wins() {
    let mut m = Mesh::new(&["a", "b"], &config(), 1400);
    let vm = mac(10);
    m.send("a", eth(MacAddr::BROADCAST, vm, 60));
    m.send("b", eth(MacAddr::BROADCAST, vm, 60)); // moves to b: seq 1
    m.send("a", eth(MacAddr::BROADCAST, vm, 60)); // back to a: seq 2
    assert_eq!(m.seq("a", vm), Some(2));
    assert_eq!(m.seq("b", vm), Some(2));
    assert_eq!(m.location("b", vm), Some(Location::Remote(site("a"))));
    // A delayed, older advert from b (seq 1) is refused and answered.
    let a = m.sites.get_mut("a").unwrap();
    let acts = a.on_control(
        m.now,
        &site("b"),
        ControlMsg::MacAdvert(MacAdvert {
            vni: vni(),
            mac: vm,
            site: site("b"),
            seq: 1,
            ip: None,
            sticky: false,
        }),
    );
    assert_eq!(a.lookup(vni(), vm), Some(Location::Local(PortId(1))));
    let c = controls(&acts);
    assert_eq!(c.len(), 1);
    assert!(matches!(&c[0].1, ControlMsg::MacAdvert(x) if x.seq == 2 && x.site == site("a")));
}

#[test]
fn simultaneous_claims_with_equal_sequence_converge_on_the_lower_site_name() {
    let mut m = Mesh::new(&["a", "b", "c"], &config(), 1400);
    let vm = mac(10);
    // Both a and b learn the MAC locally at seq 0 before hearing each other:
    // deliver the local frames first, then run the resulting messages.
    let now = m.now;
    let acts_b = m
        .sites
        .get_mut("b")
        .unwrap()
        .on_local_frame(now, PortId(1), eth(mac(1), vm, 60));
    let acts_a = m
        .sites
        .get_mut("a")
        .unwrap()
        .on_local_frame(now, PortId(1), eth(mac(1), vm, 60));
    m.run("b", acts_b);
    m.run("a", acts_a);
    assert_eq!(m.location("a", vm), Some(Location::Local(PortId(1))));
    assert_eq!(m.location("b", vm), Some(Location::Remote(site("a"))));
    assert_eq!(m.location("c", vm), Some(Location::Remote(site("a"))));
}

/// Freezes `vm` at site b as located at site a: first seen at b, then
/// six moves within 60 s (a, b, a, b, a, b), the sixth seen by b.
fn frozen_at_b_pointing_at_a(m: &mut Mesh, vm: MacAddr) {
    m.send("b", eth(MacAddr::BROADCAST, vm, 60));
    for i in 0..6u64 {
        m.at(1000 + i * 10);
        m.send(if i % 2 == 0 { "a" } else { "b" }, rarp(vm));
    }
    assert!(m.sites["b"]
        .mac_table(vni())
        .iter()
        .any(|e| e.mac == vm && e.frozen));
    assert_eq!(m.location("b", vm), Some(Location::Remote(site("a"))));
}

#[test]
fn a_mac_frozen_at_a_peer_that_went_down_leaves_with_it_once_the_freeze_ends() {
    // Released by the operator.
    let mut m = Mesh::new(&["a", "b"], &config(), 1400);
    let vm = mac(10);
    frozen_at_b_pointing_at_a(&mut m, vm);
    m.peer_down("b", "a");
    assert_eq!(
        m.location("b", vm),
        Some(Location::Remote(site("a"))),
        "the freeze holds it where it was"
    );
    assert!(m.sites.get_mut("b").unwrap().unfreeze_mac(vni(), vm));
    assert_eq!(
        m.location("b", vm),
        None,
        "no MAC stays at a peer that is down"
    );

    // Released by the freeze hold.
    let mut cfg = config();
    cfg.freeze_hold = Some(Duration::from_secs(300));
    let mut m = Mesh::new(&["a", "b"], &cfg, 1400);
    frozen_at_b_pointing_at_a(&mut m, vm);
    m.peer_down("b", "a");
    m.at(1100);
    m.poll();
    assert_eq!(m.location("b", vm), Some(Location::Remote(site("a"))));
    m.at(1500);
    m.poll();
    assert!(m.events["b"]
        .iter()
        .any(|e| matches!(e, SwitchEvent::MacUnfrozen { mac, .. } if *mac == vm)));
    assert_eq!(
        m.location("b", vm),
        None,
        "no MAC stays at a peer that is down"
    );
    // A MAC at a peer that is up stays when its freeze ends.
    let mut m = Mesh::new(&["a", "b"], &cfg, 1400);
    frozen_at_b_pointing_at_a(&mut m, vm);
    m.at(1500);
    m.poll();
    assert_eq!(m.location("b", vm), Some(Location::Remote(site("a"))));
}

#[test]
fn flapping_mac_is_frozen_and_reported_with_a_synthetic_clock() {
    let mut m = Mesh::new(&["a", "b"], &config(), 1400);
    let vm = mac(10);
    m.send("a", eth(MacAddr::BROADCAST, vm, 60));
    // Five moves spread over more than 180 s: no freeze.
    for i in 0..5u64 {
        m.at(100 + i * 50);
        m.send(if i % 2 == 0 { "b" } else { "a" }, rarp(vm));
    }
    assert!(m
        .events
        .values()
        .flatten()
        .all(|e| !matches!(e, SwitchEvent::MacFrozen { .. })));
    assert_eq!(m.location("b", vm), Some(Location::Local(PortId(1))));
    // Six moves within 60 s (a, b, a, b, a, b): the site that sees the
    // sixth move freezes the MAC where it was and reports it.
    let base = 1000;
    for i in 0..6u64 {
        m.at(base + i * 10);
        m.send(if i % 2 == 0 { "a" } else { "b" }, rarp(vm));
    }
    let frozen: Vec<_> = m.events["b"]
        .iter()
        .filter(|e| matches!(e, SwitchEvent::MacFrozen { mac, .. } if *mac == vm))
        .collect();
    assert_eq!(frozen.len(), 1, "{:?}", m.events["b"]);
    let b = &m.sites["b"];
    assert_eq!(
        b.metrics().frozen_macs.with_label_values(&["5001"]).get(),
        1
    );
    assert!(b.mac_table(vni()).iter().any(|e| e.mac == vm && e.frozen));
    assert_eq!(m.location("b", vm), Some(Location::Remote(site("a"))));
    // Frozen: the sixth move was not advertised, further frames do not move
    // it, and it does not age out.
    assert_eq!(m.location("a", vm), Some(Location::Local(PortId(1))));
    m.at(base + 100);
    m.send("b", rarp(vm));
    assert_eq!(m.location("b", vm), Some(Location::Remote(site("a"))));
    assert_eq!(m.location("a", vm), Some(Location::Local(PortId(1))));
    m.at(base + 10_000);
    m.poll();
    assert_eq!(m.location("b", vm), Some(Location::Remote(site("a"))));
    // The operator releases it; the next announcement moves it normally.
    assert!(m.sites.get_mut("b").unwrap().unfreeze_mac(vni(), vm));
    assert_eq!(
        m.sites["b"]
            .metrics()
            .frozen_macs
            .with_label_values(&["5001"])
            .get(),
        0
    );
    m.send("b", rarp(vm));
    assert_eq!(m.location("b", vm), Some(Location::Local(PortId(1))));
    assert_eq!(m.location("a", vm), Some(Location::Remote(site("b"))));
}

#[test]
fn reconnecting_peer_resynchronises_the_table() {
    let mut m = Mesh::new(&["a", "b"], &config(), 1400);
    m.send("b", eth(MacAddr::BROADCAST, mac(2), 60));
    m.send("b", eth(MacAddr::BROADCAST, mac(3), 60));
    assert_eq!(m.sites["a"].mac_table(vni()).len(), 2);
    // The link drops: a forgets b's MACs (they are unreachable anyway).
    m.peer_down("a", "b");
    m.peer_down("b", "a");
    assert!(m.sites["a"].mac_table(vni()).is_empty());
    // While apart, b learns another MAC and mac 3 leaves b.
    m.send("b", eth(MacAddr::BROADCAST, mac(4), 60));
    m.sites
        .get_mut("b")
        .unwrap()
        .add_port(PortId(9), vni())
        .unwrap();
    m.send_on("b", PortId(9), eth(MacAddr::BROADCAST, mac(3), 60));
    m.sites.get_mut("b").unwrap().remove_port(PortId(9));
    // Reconnect: each side sends its full table.
    m.peer_up("a", "b", 1400);
    m.peer_up("b", "a", 1400);
    let macs: Vec<MacAddr> = m.sites["a"]
        .mac_table(vni())
        .iter()
        .map(|e| e.mac)
        .collect();
    assert_eq!(macs, vec![mac(2), mac(4)]);
    // A full sync that omits an entry removes it (peer restarted without it).
    let a = m.sites.get_mut("a").unwrap();
    a.on_control(
        m.now,
        &site("b"),
        ControlMsg::FullSync {
            site: site("b"),
            entries: vec![MacAdvert {
                vni: vni(),
                mac: mac(4),
                site: site("b"),
                seq: 0,
                ip: None,
                sticky: false,
            }],
        },
    );
    let macs: Vec<MacAddr> = a.mac_table(vni()).iter().map(|e| e.mac).collect();
    assert_eq!(macs, vec![mac(4)]);
}

#[test]
fn static_mac_never_moves_and_is_asserted_against_peers() {
    let mut m = Mesh::new(&["a", "b"], &config(), 1400);
    let now = m.now;
    let acts = m
        .sites
        .get_mut("a")
        .unwrap()
        .add_static_mac(now, vni(), mac(5), PortId(1))
        .unwrap();
    m.run("a", acts);
    assert_eq!(m.location("b", mac(5)), Some(Location::Remote(site("a"))));
    // The advertisement was sticky: b does not move it on local frames.
    m.send("b", rarp(mac(5)));
    assert_eq!(m.location("b", mac(5)), Some(Location::Remote(site("a"))));
    assert_eq!(m.location("a", mac(5)), Some(Location::Local(PortId(1))));
    assert!(m.sites["a"].mac_table(vni())[0].is_static);
    // Ageing never removes it.
    m.advance(Duration::from_secs(10_000));
    m.poll();
    assert_eq!(m.location("a", mac(5)), Some(Location::Local(PortId(1))));
}

#[test]
fn mss_is_clamped_on_syns_from_local_ports() {
    let mut cfg = config();
    cfg.segments[0].mss_clamp = Some(1300);
    let mut sw = switch("a", &cfg);
    let t = std::time::Instant::now();
    sw.add_port(PortId(1), vni()).unwrap();
    sw.add_port(PortId(2), vni()).unwrap();
    let syn = syn_frame(1460);
    let acts = sw.on_local_frame(t, PortId(1), Bytes::from(syn));
    let d = deliveries(&acts);
    assert_eq!(d.len(), 1);
    let f = &d[0].1;
    let opt = 14 + 20 + 20;
    assert_eq!(u16::from_be_bytes([f[opt + 2], f[opt + 3]]), 1300);
    assert_eq!(
        sw.metrics().mss_clamped.with_label_values(&["5001"]).get(),
        1
    );
}

/// Ethernet + IPv4 + TCP SYN with an MSS option (checksums not needed here).
fn syn_frame(mss: u16) -> Vec<u8> {
    let mut f = vec![0u8; 14 + 20 + 24];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac(1).0);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&44u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = 6;
    let tcp = &mut f[34..];
    tcp[12] = 6 << 4;
    tcp[13] = 0x02;
    tcp[20..24].copy_from_slice(&[2, 4, (mss >> 8) as u8, mss as u8]);
    f
}

#[test]
fn bad_input_is_counted_and_dropped() {
    let mut sw = switch("a", &config());
    let t = std::time::Instant::now();
    sw.add_port(PortId(1), vni()).unwrap();
    sw.on_peer_up(t, site("b"), 1400);
    let b = site("b");
    // Truncated and oversized frames from a port; unknown port.
    assert!(sw
        .on_local_frame(t, PortId(1), Bytes::from_static(&[1, 2, 3]))
        .is_empty());
    assert!(sw
        .on_local_frame(t, PortId(1), eth(mac(2), mac(1), 9217))
        .is_empty());
    assert!(sw
        .on_local_frame(t, PortId(42), eth(mac(2), mac(1), 60))
        .is_empty());
    assert_eq!(drops(&sw, DropReason::Truncated), 1);
    assert_eq!(drops(&sw, DropReason::Oversized), 1);
    assert_eq!(drops(&sw, DropReason::UnknownPort), 1);
    // Forged and truncated headers.
    for d in [
        &[][..],
        &[0x10, 0, 0][..],
        &[0x30, 0, 0x13, 0x89, 1][..],
        &[0x18, 0, 0x13, 0x89, 1][..],
    ] {
        assert!(sw.on_datagram(t, &b, Bytes::copy_from_slice(d)).is_empty());
    }
    assert_eq!(drops(&sw, DropReason::MalformedHeader), 4);
    // Unknown VNI.
    let d = encap::encapsulate(Vni::new(999).unwrap(), false, &eth(mac(2), mac(1), 60));
    assert!(sw.on_datagram(t, &b, d).is_empty());
    assert_eq!(drops(&sw, DropReason::UnknownVni), 1);
    // Valid header around a runt frame, and a group source MAC.
    assert!(sw
        .on_datagram(t, &b, encap::encapsulate(vni(), false, &[0u8; 5]))
        .is_empty());
    assert!(sw
        .on_datagram(
            t,
            &b,
            encap::encapsulate(vni(), false, &eth(mac(2), MacAddr::BROADCAST, 60))
        )
        .is_empty());
    assert_eq!(drops(&sw, DropReason::Truncated), 2);
    assert_eq!(drops(&sw, DropReason::MalformedFrame), 1);
    // Fragments that disagree on the count.
    let mut x = BytesMut::new();
    Header {
        vni: vni(),
        flooded: false,
        fragment: Some(FragInfo {
            id: 1,
            index: 0,
            count: 2,
        }),
    }
    .encode(&mut x);
    x.put_slice(&[0; 20]);
    sw.on_datagram(t, &b, x.freeze());
    let mut y = BytesMut::new();
    Header {
        vni: vni(),
        flooded: false,
        fragment: Some(FragInfo {
            id: 1,
            index: 1,
            count: 3,
        }),
    }
    .encode(&mut y);
    y.put_slice(&[0; 20]);
    assert!(sw.on_datagram(t, &b, y.freeze()).is_empty());
    assert_eq!(
        sw.metrics()
            .reassembly_failures
            .with_label_values(&["inconsistent"])
            .get(),
        1
    );
    // Control message speaking for another site, and one for an unknown VNI.
    let forged = ControlMsg::MacAdvert(MacAdvert {
        vni: vni(),
        mac: mac(3),
        site: site("c"),
        seq: 9,
        ip: None,
        sticky: false,
    });
    assert!(sw.on_control(t, &b, forged).is_empty());
    assert_eq!(drops(&sw, DropReason::ForgedControl), 1);
    assert_eq!(sw.lookup(vni(), mac(3)), None);
    let stray = ControlMsg::MacWithdraw {
        vni: Vni::new(3).unwrap(),
        mac: mac(3),
        site: b.clone(),
        seq: 0,
    };
    sw.on_control(t, &b, stray);
    assert_eq!(drops(&sw, DropReason::UnknownVni), 2);
    // Unicast from a peer to a MAC that lives elsewhere is not reflected.
    sw.on_control(
        t,
        &b,
        ControlMsg::MacAdvert(MacAdvert {
            vni: vni(),
            mac: mac(8),
            site: b.clone(),
            seq: 0,
            ip: None,
            sticky: false,
        }),
    );
    assert!(sw
        .on_datagram(
            t,
            &b,
            encap::encapsulate(vni(), false, &eth(mac(8), mac(7), 60))
        )
        .is_empty());
    assert_eq!(drops(&sw, DropReason::NotLocal), 1);
    // A peer that is down: frames for its MACs are dropped and counted.
    sw.on_control(
        t,
        &b,
        ControlMsg::MacAdvert(MacAdvert {
            vni: vni(),
            mac: mac(8),
            site: b.clone(),
            seq: 0,
            ip: None,
            sticky: false,
        }),
    );
    sw.on_peer_down(t, &b);
    sw.on_control(
        t,
        &site("c"),
        ControlMsg::MacAdvert(MacAdvert {
            vni: vni(),
            mac: mac(8),
            site: site("c"),
            seq: 0,
            ip: None,
            sticky: false,
        }),
    );
    sw.on_local_frame(t, PortId(1), eth(mac(8), mac(1), 60));
    assert_eq!(drops(&sw, DropReason::PeerDown), 1);
}

#[test]
fn config_errors_surface_from_switch_new() {
    let cfg = OverlayConfig {
        segments: vec![SegmentConfig::new("x", 1 << 24)],
        ..Default::default()
    };
    let err = wanmig_overlay::Switch::new(
        site("a"),
        &cfg,
        wanmig_overlay::OverlayMetrics::unregistered(),
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("segment[0].vni"), "{err}");
}

#[test]
fn traffic_metrics_count_frames_and_bytes_per_vni_and_peer() {
    let mut m = Mesh::new(&["a", "b"], &config(), 1400);
    m.send("b", eth(MacAddr::BROADCAST, mac(2), 60));
    m.send("a", eth(mac(2), mac(1), 1000));
    let a = m.sites["a"].metrics();
    assert_eq!(a.frames_in.with_label_values(&["5001", "local"]).get(), 1);
    assert_eq!(a.bytes_in.with_label_values(&["5001", "local"]).get(), 1000);
    assert_eq!(a.frames_out.with_label_values(&["5001", "b"]).get(), 1);
    assert_eq!(a.bytes_out.with_label_values(&["5001", "b"]).get(), 1000);
    let b = m.sites["b"].metrics();
    assert_eq!(b.frames_in.with_label_values(&["5001", "a"]).get(), 1);
    assert_eq!(b.frames_out.with_label_values(&["5001", "local"]).get(), 1);
    assert_eq!(b.mac_table_size.with_label_values(&["5001"]).get(), 2);
}
