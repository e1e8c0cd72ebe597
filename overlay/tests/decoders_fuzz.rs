//! Arbitrary bytes fed to every decoder and to the switch's inputs must
//! never panic (and must be counted as drops when rejected).

use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;
use wanmig_overlay::control::{self, ControlDecoder};
use wanmig_overlay::encap::Header;
use wanmig_overlay::frame::EthFrame;
use wanmig_overlay::{
    mss_clamp, OverlayConfig, OverlayMetrics, PortId, SegmentConfig, SiteId, Switch, Vni,
};

fn switch() -> Switch {
    let cfg = OverlayConfig {
        segments: vec![SegmentConfig::new("s", 1), SegmentConfig::new("t", 2)],
        ..Default::default()
    };
    let mut sw = Switch::new(SiteId::new("a"), &cfg, OverlayMetrics::unregistered()).unwrap();
    sw.add_port(PortId(1), Vni::new(1).unwrap()).unwrap();
    sw.add_port(PortId(2), Vni::new(1).unwrap()).unwrap();
    sw.on_peer_up(Instant::now(), SiteId::new("b"), 300);
    sw
}

/// Bytes that often look like an overlay header for VNI 1 or 2, so the
/// fuzzer gets past the header into fragment and frame handling.
fn datagram() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64),
        (
            0u8..4,
            1u8..3,
            proptest::collection::vec(any::<u8>(), 0..1600)
        )
            .prop_map(|(f, v, rest)| {
                let mut d = vec![0x10 | f, 0, 0, v];
                d.extend(rest);
                d
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn frame_parser_never_panics(b in proptest::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(f) = EthFrame::parse(&b, 1522) {
            let _ = f.arp();
            prop_assert!(f.payload_offset <= b.len());
        }
    }

    #[test]
    fn header_decoder_never_panics(b in proptest::collection::vec(any::<u8>(), 0..32)) {
        if let Ok((h, off)) = Header::decode(&b) {
            prop_assert!(off < b.len());
            if let Some(f) = h.fragment {
                prop_assert!(f.index < f.count);
            }
        }
    }

    #[test]
    fn control_decoder_never_panics(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8)) {
        let mut d = ControlDecoder::new();
        for c in &chunks {
            d.push(c);
            while let Ok(Some(_)) = d.next_msg() {}
        }
        let flat: Vec<u8> = chunks.concat();
        let _ = control::decode_body(&flat);
    }

    #[test]
    fn mss_clamp_never_panics(mut b in proptest::collection::vec(any::<u8>(), 0..120), off in 0usize..40, mss in any::<u16>()) {
        let _ = mss_clamp::clamp(&mut b, off, mss);
    }

    #[test]
    fn switch_survives_arbitrary_datagrams_and_frames(
        ds in proptest::collection::vec(datagram(), 1..20),
        frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..10),
    ) {
        let mut sw = switch();
        let t0 = Instant::now();
        let b = SiteId::new("b");
        for (i, d) in ds.into_iter().enumerate() {
            let now = t0 + Duration::from_millis(i as u64 * 300);
            let _ = sw.on_datagram(now, &b, Bytes::from(d));
        }
        for f in frames {
            let _ = sw.on_local_frame(t0, PortId(1), Bytes::from(f));
        }
        let _ = sw.poll_timers(t0 + Duration::from_secs(60));
    }
}
