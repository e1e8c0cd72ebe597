//! Target `migration_frames`: the three stream protocols of live migration
//! on wanmig-wire's framing, decoded from arbitrary bytes arriving in
//! arbitrary pieces.
//!
//! Input: a protocol selector (session frames, shim messages, storage relay
//! frames), a piece size, then the stream. The session and shim streams go
//! through their incremental `Decoder`s fed piece by piece, the storage
//! stream through `split_frame` and `decode_frame` as the gateway reads it
//! (header, then exactly the body). Checked for every input:
//! - every accepted frame or message encodes to bytes that decode back to
//!   itself (the encoder writes what the decoder reads), and a session
//!   frame's `frame_len` is its encoded length;
//! - a session `Shim` frame's payload goes through `parse_shim` as the
//!   relay passes it on, and what it accepts is never plain pages;
//! - the shim decoder's `wanted()` is honest: while it says bytes are
//!   missing, `next()` yields nothing;
//! - a decoder never holds more than it was fed; after an error the stream
//!   is over (every reader of these protocols drops the stream there).

use wanmig_migration::session::{self, frame as session_frame};
use wanmig_migration::shim;
use wanmig_migration::storage;

use crate::input::{Input, Script};

/// The protocol an input speaks.
const SESSION: u8 = 0;
const SHIM: u8 = 1;
const STORAGE: u8 = 2;
const PROTOCOLS: u8 = 3;

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let protocol = input.u8() % PROTOCOLS;
    let piece = usize::from(input.u8()).max(1);
    let stream = input.rest();
    match protocol {
        SESSION => session_stream(stream, piece),
        SHIM => shim_stream(stream, piece),
        _ => storage_stream(stream),
    }
}

fn session_stream(stream: &[u8], piece: usize) {
    let mut d = session_frame::Decoder::new();
    let mut fed = 0;
    for chunk in stream.chunks(piece) {
        d.feed(chunk);
        fed += chunk.len();
        loop {
            assert!(d.buffered() <= fed, "the session decoder holds unfed bytes");
            match d.next() {
                Ok(Some(f)) => check_session_frame(&f),
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

fn check_session_frame(f: &session_frame::Frame) {
    let bytes = session_frame::to_bytes(f);
    assert_eq!(
        session_frame::frame_len(f),
        bytes.len() as u64,
        "frame_len of {} differs from its encoding",
        f.name()
    );
    let mut again = session_frame::Decoder::new();
    again.feed(&bytes);
    assert_eq!(
        again.next(),
        Ok(Some(f.clone())),
        "a decoded {} does not survive its own encoding",
        f.name()
    );
    assert_eq!(again.buffered(), 0);
    if let session_frame::Frame::Shim(payload) = f {
        if let Ok(msg) = session::parse_shim(payload) {
            assert!(
                !matches!(msg, shim::Message::Pages { .. }),
                "parse_shim passed plain pages"
            );
            check_shim_message(&msg);
        }
    }
}

fn shim_stream(stream: &[u8], piece: usize) {
    let mut d = shim::Decoder::new();
    let mut fed = 0;
    for chunk in stream.chunks(piece) {
        d.feed(chunk);
        fed += chunk.len();
        loop {
            assert!(d.buffered() <= fed, "the shim decoder holds unfed bytes");
            let wanted = d.wanted();
            match d.next() {
                Ok(Some(m)) => {
                    assert_eq!(wanted, 0, "a message came out while bytes were wanted");
                    check_shim_message(&m);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(
            d.wanted() > 0,
            "the shim decoder wants nothing but yields nothing"
        );
    }
}

fn check_shim_message(m: &shim::Message) {
    let mut bytes = Vec::new();
    shim::encode(m, &mut bytes);
    let mut again = shim::Decoder::new();
    again.feed(&bytes);
    assert_eq!(
        again.next(),
        Ok(Some(m.clone())),
        "a decoded {:?} message does not survive its own encoding",
        m.kind()
    );
    assert_eq!(again.buffered(), 0);
}

fn storage_stream(mut stream: &[u8]) {
    loop {
        let f = match wanmig_wire::split_frame(stream, storage::MAX_FRAME) {
            Ok(Some(f)) => f,
            Ok(None) | Err(_) => return,
        };
        assert!(f.used <= stream.len());
        stream = &stream[f.used..];
        match storage::decode_frame(f.tag, f.body) {
            Ok(Some(frame)) => {
                let bytes = frame.to_bytes();
                let back = wanmig_wire::split_frame(&bytes, storage::MAX_FRAME)
                    .expect("an encoded storage frame is within the limit")
                    .expect("an encoded storage frame is whole");
                assert_eq!(back.used, bytes.len());
                assert_eq!(
                    storage::decode_frame(back.tag, back.body),
                    Ok(Some(frame.clone())),
                    "a decoded {:?} frame does not survive its own encoding",
                    frame.kind()
                );
            }
            Ok(None) => {}
            Err(_) => return,
        }
    }
}

/// An input of `protocol` whose stream is `stream`, fed in `piece`-byte
/// pieces.
fn input(protocol: u8, piece: u8, stream: &[u8]) -> Vec<u8> {
    let mut s = Script::new();
    s.u8(protocol).u8(piece).bytes(stream);
    s.finish()
}

/// Seeds: real encodings of every frame kind of the three protocols, whole
/// streams of them in several piece sizes.
pub fn seeds() -> Vec<Vec<u8>> {
    use session_frame::{Frame, OpenRequest, Resolution};
    use wanmig_codec::{Fingerprint, Gfn};
    use wanmig_migration::machine::VmConfig;

    let page = crate::codec_batch::known_page(3);
    let mut batch = shim::PageBatch::new();
    batch.push(7, &page[..]);
    batch.push(9, &[0u8; 4096]);
    let shim_msgs = vec![
        shim::Message::Hello {
            version: wanmig_migration::shim::SHIM.current,
            machine: VmConfig::default().machine(),
        },
        shim::Message::HelloAck,
        shim::Message::Pages { round: 2, batch },
        shim::Message::State(b"{\"version\":1}".to_vec()),
        shim::Message::Complete,
        shim::Message::Digest { digest: [7; 32] },
        shim::Message::Confirmed { digest: [7; 32] },
        shim::Message::Handover,
        shim::Message::Resumed,
        shim::Message::Abort("the destination is out of memory".into()),
    ];
    let mut shim_stream = Vec::new();
    for m in &shim_msgs {
        shim::encode(m, &mut shim_stream);
    }

    let inventory = wanmig_codec::Inventory::from_fingerprints(&[Fingerprint::of(&page)]);
    let session_frames = vec![
        Frame::Open {
            version: session_frame::SESSION.current,
            request: Box::new(OpenRequest {
                id: "site-a-1".into(),
                vm: "web".into(),
                config: VmConfig::default(),
                scope: "tenant-1".into(),
            }),
        },
        Frame::Accept {
            inventory: inventory.to_bytes(),
        },
        Frame::Refuse("no such scope".into()),
        Frame::Batch {
            round: 1,
            batch: vec![1, 2, 3, 4],
        },
        Frame::Nack(vec![(Gfn(5), Fingerprint::of(&page))]),
        session::shim_frame(&shim::Message::Complete),
        Frame::Resolve {
            version: session_frame::SESSION.current,
            id: "site-a-1".into(),
            vm: Some("web".into()),
            handed_over: true,
        },
        Frame::Resolved(Resolution::Running),
        Frame::Ack(4096),
    ];
    let mut session_stream = Vec::new();
    for f in &session_frames {
        session_frame::encode(f, &mut session_stream);
    }

    let storage_frames = vec![
        storage::Frame::Open {
            version: storage::STORAGE.current,
            lane: storage::Lane::Background,
            name: "web-disk".into(),
            disk_len: 1 << 20,
            block_size: 4096,
            inventory: Some(inventory.to_bytes()),
        },
        storage::Frame::Holes(vec![0..3, 10..12]),
        storage::Frame::Request {
            first_block: 4,
            count: 2,
        },
        storage::Frame::RequestPlain {
            first_block: 4,
            count: 1,
        },
        storage::Frame::Block {
            block: 4,
            payload: vec![0, 1, 2],
        },
        storage::Frame::Progress {
            local_blocks: 3,
            total_blocks: 256,
        },
        storage::Frame::Done {
            digest: [1; 32],
            written: vec![0; 40],
        },
        storage::Frame::Released,
        storage::Frame::Error("no such disk".into()),
        storage::Frame::QuerySize {
            version: storage::STORAGE.current,
            name: "web-disk".into(),
        },
        storage::Frame::Size {
            len: 1 << 20,
            background: true,
        },
    ];
    let mut storage_stream = Vec::new();
    for f in &storage_frames {
        storage::encode(f, &mut storage_stream);
    }

    let mut out = Vec::new();
    for piece in [255, 7] {
        out.push(input(SESSION, piece, &session_stream));
        out.push(input(SHIM, piece, &shim_stream));
    }
    out.push(input(STORAGE, 0, &storage_stream));
    for f in &session_frames {
        out.push(input(SESSION, 64, &session_frame::to_bytes(f)));
    }
    for m in &shim_msgs {
        let mut b = Vec::new();
        shim::encode(m, &mut b);
        out.push(input(SHIM, 64, &b));
    }
    for f in &storage_frames {
        out.push(input(STORAGE, 0, &f.to_bytes()));
    }
    out
}
