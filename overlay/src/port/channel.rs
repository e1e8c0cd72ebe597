//! In-process ports: a pair of bounded channels carrying whole Ethernet
//! frames, one end for the switch pump and one for the attached host (a
//! VMM's virtio-net backend or a smoltcp test host). No root needed.

use bytes::Bytes;
use tokio::sync::mpsc;

/// One end of an in-process port: frames sent here come out of the other
/// end's `rx`. Works from async code (`send`/`recv`) and from plain threads
/// (`blocking_send`/`blocking_recv`, `try_send`/`try_recv`).
#[derive(Debug)]
pub struct ChannelPort {
    pub tx: mpsc::Sender<Bytes>,
    pub rx: mpsc::Receiver<Bytes>,
}

/// Creates a connected pair `(switch_end, host_end)`, each direction
/// buffering up to `capacity` frames (a full buffer makes senders wait, or
/// `try_send` fail, which a pump may count as a drop).
pub fn channel_pair(capacity: usize) -> (ChannelPort, ChannelPort) {
    let (to_host, from_switch) = mpsc::channel(capacity.max(1));
    let (to_switch, from_host) = mpsc::channel(capacity.max(1));
    (
        ChannelPort {
            tx: to_host,
            rx: from_host,
        },
        ChannelPort {
            tx: to_switch,
            rx: from_switch,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_cross_in_both_directions_and_close_cleanly() {
        let (mut sw, mut host) = channel_pair(4);
        host.tx.send(Bytes::from_static(b"up")).await.unwrap();
        sw.tx.send(Bytes::from_static(b"down")).await.unwrap();
        assert_eq!(sw.rx.recv().await.unwrap(), Bytes::from_static(b"up"));
        assert_eq!(host.rx.recv().await.unwrap(), Bytes::from_static(b"down"));
        drop(host);
        assert!(sw.rx.recv().await.is_none());
        assert!(sw.tx.send(Bytes::new()).await.is_err());
    }

    #[test]
    fn bounded_capacity_is_visible_to_non_async_senders() {
        let (sw, _host) = channel_pair(2);
        assert!(sw.tx.try_send(Bytes::new()).is_ok());
        assert!(sw.tx.try_send(Bytes::new()).is_ok());
        assert!(sw.tx.try_send(Bytes::new()).is_err());
    }
}
