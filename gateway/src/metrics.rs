//! Prometheus metrics (`wanmig_*`): per-peer link state and counters
//! sampled from peer snapshots, and the `/metrics` HTTP endpoint.
//!
//! [`Metrics::observe`] is the sans-IO part: it turns a snapshot into gauge
//! values and counter increments. quinn's statistics restart with every
//! connection, so counters add the growth since the previous sample of the
//! same connection and stay monotonic across reconnects.

use std::collections::HashMap;
use std::sync::Mutex;

use prometheus::{Encoder, GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::peering::{LinkState, LinkStats, PeerSnapshot, Refusals};

pub struct Metrics {
    registry: Registry,
    peer_up: IntGaugeVec,
    rtt: GaugeVec,
    cwnd: IntGaugeVec,
    mtu: IntGaugeVec,
    sent_bytes: IntCounterVec,
    received_bytes: IntCounterVec,
    sent_datagrams: IntCounterVec,
    received_datagrams: IntCounterVec,
    lost_packets: IntCounterVec,
    lost_bytes: IntCounterVec,
    reconnects: IntCounterVec,
    refused: IntCounterVec,
    last: Mutex<Sample>,
}

#[derive(Default)]
struct Sample {
    /// Per peer: the connection id and stats seen at the last observation.
    links: HashMap<String, (u64, LinkStats)>,
    reconnects: HashMap<String, u64>,
    refused: HashMap<String, u64>,
}

#[derive(Debug, thiserror::Error)]
#[error("registering metric: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

impl Metrics {
    pub fn new(site: &str) -> Result<Self, MetricsError> {
        let registry = Registry::new_custom(
            None,
            Some(HashMap::from([("site".to_string(), site.to_string())])),
        )?;
        let peer = &["peer"];
        let gauge = |name: &str, help: &str| -> Result<IntGaugeVec, MetricsError> {
            let g = IntGaugeVec::new(Opts::new(name, help), peer)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let counter =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, MetricsError> {
                let c = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let rtt = GaugeVec::new(
            Opts::new("wanmig_peer_rtt_seconds", "Smoothed RTT to the peer"),
            peer,
        )?;
        registry.register(Box::new(rtt.clone()))?;
        Ok(Metrics {
            peer_up: gauge(
                "wanmig_peer_up",
                "1 when the QUIC connection to the peer is up",
            )?,
            rtt,
            cwnd: gauge(
                "wanmig_peer_cwnd_bytes",
                "Congestion window towards the peer",
            )?,
            mtu: gauge(
                "wanmig_peer_mtu_bytes",
                "Current path MTU (UDP payload) towards the peer",
            )?,
            sent_bytes: counter(
                "wanmig_peer_sent_bytes_total",
                "UDP payload bytes sent to the peer",
                peer,
            )?,
            received_bytes: counter(
                "wanmig_peer_received_bytes_total",
                "UDP payload bytes received from the peer",
                peer,
            )?,
            sent_datagrams: counter(
                "wanmig_peer_sent_datagrams_total",
                "QUIC datagrams sent to the peer",
                peer,
            )?,
            received_datagrams: counter(
                "wanmig_peer_received_datagrams_total",
                "QUIC datagrams received from the peer",
                peer,
            )?,
            lost_packets: counter(
                "wanmig_peer_lost_packets_total",
                "Packets to the peer declared lost",
                peer,
            )?,
            lost_bytes: counter(
                "wanmig_peer_lost_bytes_total",
                "Bytes to the peer declared lost",
                peer,
            )?,
            reconnects: counter(
                "wanmig_peer_reconnects_total",
                "Times the peer came up again after being up",
                peer,
            )?,
            refused: counter(
                "wanmig_peering_refused_total",
                "Peering handshakes refused, by reason",
                &["reason"],
            )?,
            registry,
            last: Mutex::new(Sample::default()),
        })
    }

    /// Updates every metric from one snapshot of the peers.
    pub fn observe(&self, peers: &[PeerSnapshot], refusals: &Refusals) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        for p in peers {
            let l = [p.site.as_str()];
            self.peer_up
                .with_label_values(&l)
                .set(i64::from(p.state == LinkState::Up));
            let prev_reconnects = last
                .reconnects
                .insert(p.site.clone(), p.reconnects)
                .unwrap_or(0);
            self.reconnects
                .with_label_values(&l)
                .inc_by(p.reconnects.saturating_sub(prev_reconnects));
            let Some(now) = p.link else { continue };
            self.rtt.with_label_values(&l).set(now.rtt_ms / 1e3);
            self.cwnd.with_label_values(&l).set(now.cwnd_bytes as i64);
            self.mtu.with_label_values(&l).set(i64::from(now.mtu));
            let base = match last.links.get(&p.site) {
                Some((id, s)) if *id == p.connection_id => *s,
                _ => LinkStats::default(),
            };
            let inc = |c: &IntCounterVec, f: fn(&LinkStats) -> u64| {
                c.with_label_values(&l)
                    .inc_by(f(&now).saturating_sub(f(&base)));
            };
            inc(&self.sent_bytes, |s| s.bytes_sent);
            inc(&self.received_bytes, |s| s.bytes_received);
            inc(&self.sent_datagrams, |s| s.datagrams_sent);
            inc(&self.received_datagrams, |s| s.datagrams_received);
            inc(&self.lost_packets, |s| s.lost_packets);
            inc(&self.lost_bytes, |s| s.lost_bytes);
            last.links.insert(p.site.clone(), (p.connection_id, now));
        }
        for (reason, n) in &refusals.by_reason {
            let prev = last.refused.insert(reason.clone(), *n).unwrap_or(0);
            self.refused
                .with_label_values(&[reason.as_str()])
                .inc_by(n.saturating_sub(prev));
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for the text format.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peering::Role;

    fn snap(id: u64, state: LinkState, sent: u64, reconnects: u64) -> PeerSnapshot {
        PeerSnapshot {
            site: "site-b".into(),
            address: "127.0.0.1:1".parse().unwrap(),
            role: Role::Dial,
            state,
            state_secs: 0.0,
            connection_id: id,
            reconnects,
            last_error: None,
            remote: None,
            link: (state == LinkState::Up).then_some(LinkStats {
                rtt_ms: 100.0,
                cwnd_bytes: 5000,
                bytes_sent: sent,
                ..Default::default()
            }),
        }
    }

    fn value(text: &str, metric: &str) -> f64 {
        text.lines()
            .find(|l| l.starts_with(metric) && l.contains("peer=\"site-b\""))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{metric} missing in\n{text}"))
    }

    #[test]
    fn counters_stay_monotonic_across_reconnects() {
        let m = Metrics::new("site-a").unwrap();
        let none = Refusals::default();
        m.observe(&[snap(1, LinkState::Up, 1000, 0)], &none);
        m.observe(&[snap(1, LinkState::Up, 1500, 0)], &none);
        let t = m.render();
        assert_eq!(value(&t, "wanmig_peer_sent_bytes_total"), 1500.0);
        assert_eq!(value(&t, "wanmig_peer_up"), 1.0);
        assert_eq!(value(&t, "wanmig_peer_rtt_seconds"), 0.1);
        // Link lost, then a new connection whose stats restart at 200.
        m.observe(&[snap(1, LinkState::Down, 0, 0)], &none);
        assert_eq!(value(&m.render(), "wanmig_peer_up"), 0.0);
        m.observe(&[snap(2, LinkState::Up, 200, 1)], &none);
        let t = m.render();
        assert_eq!(value(&t, "wanmig_peer_sent_bytes_total"), 1700.0);
        assert_eq!(value(&t, "wanmig_peer_reconnects_total"), 1.0);
        assert!(t.contains("site=\"site-a\""));
    }

    #[test]
    fn refusals_are_counted_by_reason() {
        let m = Metrics::new("site-a").unwrap();
        let mut r = Refusals::default();
        r.by_reason.insert("tls".into(), 2);
        m.observe(&[], &r);
        r.by_reason.insert("tls".into(), 3);
        m.observe(&[], &r);
        assert!(m
            .render()
            .contains("wanmig_peering_refused_total{reason=\"tls\",site=\"site-a\"} 3"));
    }
}
