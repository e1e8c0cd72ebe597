//! The QEMU relay protocol between two gateways (QUIC stream kind
//! [`crate::peering::StreamKind::Qemu`]), sans-IO: one stream per QEMU
//! migration, `wanmig-wire` frames both ways.
//!
//! Source → destination: [`Frame::Open`] (preamble, migration name, dedup
//! scope); then, in the order the source gateway read them, each channel's
//! events: [`Frame::Channel`] when QEMU opens a connection (numbered in
//! accept order, so 0 is the main channel), [`Frame::Verbatim`] runs,
//! [`Frame::Meta`] for events without page data (RAMBlock list, zero
//! pages, multifd hellos and packet headers, and pages the codec cannot
//! key), [`Frame::Block`] before the first page of a newly numbered
//! RAMBlock, [`Frame::Pages`] (which pages, by gfn and framing, and the
//! codec batches that carry them), [`Frame::Passthrough`] when a channel's
//! parser gave up reducing, [`Frame::End`] when QEMU closed the channel,
//! [`Frame::Fill`] answering NACKs.
//!
//! Destination → source: [`Frame::Accept`] (the scope's inventory) or
//! [`Frame::Refuse`]; [`Frame::Nacks`]; [`Frame::ReturnPath`] (bytes the
//! destination QEMU wrote on its main channel, for the source QEMU);
//! [`Frame::Done`] once every channel's bytes were written to the
//! destination QEMU and closed. Either side may send [`Frame::Abort`].

use bytes::Bytes;
use wanmig_codec::{Fingerprint, Gfn};
use wanmig_migration::version::Protocol;
use wanmig_qemu_stream::{
    BlockList, BlockName, Event, MultifdHello, MultifdPacket, Page, PageFraming, RamBlock, ZeroPage,
};
use wanmig_wire::coding::Context;
use wanmig_wire::{write_frame, DecodeError, Reader, WriteExt};

/// The QEMU relay protocol's identity and versions.
pub const QEMU_RELAY: Protocol = Protocol {
    name: "QEMU relay protocol",
    magic: *b"WMQEMU\0\x01",
    current: 1,
    oldest: 1,
    opener: "the source gateway",
    answerer: "the destination gateway",
};

/// Largest frame body either side accepts: a codec batch of a few dozen
/// pages, a RAMBlock list, or a verbatim run (read chunks are smaller).
pub const MAX_BODY: u32 = 16 << 20;

wanmig_wire::wire_enum! {
    /// Frame kinds (see the module comment). All essential.
    pub enum Kind(u8) {
        Open = 0x01,
        Accept = 0x02,
        Refuse = 0x03,
        Channel = 0x04,
        Verbatim = 0x05,
        Meta = 0x06,
        Block = 0x07,
        Pages = 0x08,
        Fill = 0x09,
        Passthrough = 0x0a,
        End = 0x0b,
        Nacks = 0x0c,
        ReturnPath = 0x0d,
        Done = 0x0e,
        Abort = 0x0f,
    }
}

wanmig_wire::wire_enum! {
    /// Which event a [`Frame::Meta`] carries.
    pub enum MetaKind(u8) {
        BlockList = 1,
        Zero = 2,
        Hello = 3,
        Packet = 4,
        Page = 5,
    }
}

/// One page of a [`Frame::Pages`]: its gfn (see
/// [`wanmig_qemu_stream::PageIds`]) and how its channel framed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageSlot {
    pub gfn: Gfn,
    pub kind: SlotKind,
}

/// What a [`PageSlot`] stands for on its channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotKind {
    /// A page with data, framed as on the source's channel; the data is
    /// the next page the frame's batches decode to.
    Page(PageFraming),
    /// A main-channel zero-page record with fill byte 0 (no codec page).
    Zero { continued: bool },
}

/// What the destination gateway wrote into its QEMU.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DoneStats {
    /// Bytes written to the destination QEMU, all channels.
    pub bytes: u64,
    /// Pages whose data came through the codec.
    pub pages: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Open {
        version: u32,
        name: String,
        scope: String,
        /// What the destination QEMU must be set to (JSON of
        /// [`super::drive::Setup`]).
        setup: String,
    },
    Accept {
        inventory: Bytes,
    },
    Refuse(String),
    Channel(u8),
    Verbatim {
        ch: u8,
        bytes: Bytes,
    },
    Meta {
        ch: u8,
        event: Event,
    },
    Block {
        number: u32,
        name: BlockName,
    },
    Pages {
        ch: u8,
        slots: Vec<PageSlot>,
        batches: Vec<Bytes>,
    },
    Fill(Vec<Bytes>),
    Passthrough {
        ch: u8,
        reason: String,
    },
    End(u8),
    Nacks(Vec<(Gfn, Fingerprint)>),
    ReturnPath(Bytes),
    Done(DoneStats),
    Abort(String),
}

/// A frame that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("QEMU relay frame: {0}")]
    Decode(#[from] DecodeError),
    #[error("QEMU relay frame of unknown kind {0:#04x}: the peer runs another wanmig build; run the same version at both sites")]
    UnknownKind(u8),
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.put_len_prefixed(s);
}

fn get_str(r: &mut Reader<'_>, what: &'static str) -> Result<String, DecodeError> {
    let b = r.len_prefixed().ctx(what)?;
    String::from_utf8(b.to_vec()).map_err(|_| DecodeError::invalid(what, "not UTF-8"))
}

fn get_name(r: &mut Reader<'_>, what: &'static str) -> Result<BlockName, DecodeError> {
    let b = r.len_prefixed().ctx(what)?;
    BlockName::new(b.to_vec()).ok_or_else(|| DecodeError::invalid(what, "longer than 255 bytes"))
}

fn put_framing(out: &mut Vec<u8>, f: PageFraming) {
    put_slot_kind(out, SlotKind::Page(f));
}

fn put_slot_kind(out: &mut Vec<u8>, k: SlotKind) {
    out.put(match k {
        SlotKind::Page(PageFraming::Record { continued: false }) => 0u8,
        SlotKind::Page(PageFraming::Record { continued: true }) => 1,
        SlotKind::Page(PageFraming::Packet) => 2,
        SlotKind::Zero { continued: false } => 3,
        SlotKind::Zero { continued: true } => 4,
    });
}

fn get_slot_kind(r: &mut Reader<'_>) -> Result<SlotKind, DecodeError> {
    match r.get::<u8>().ctx("page slot kind")? {
        0 => Ok(SlotKind::Page(PageFraming::Record { continued: false })),
        1 => Ok(SlotKind::Page(PageFraming::Record { continued: true })),
        2 => Ok(SlotKind::Page(PageFraming::Packet)),
        3 => Ok(SlotKind::Zero { continued: false }),
        4 => Ok(SlotKind::Zero { continued: true }),
        v => Err(DecodeError::invalid("page slot kind", format!("value {v}"))),
    }
}

fn get_framing(r: &mut Reader<'_>) -> Result<PageFraming, DecodeError> {
    match get_slot_kind(r)? {
        SlotKind::Page(f) => Ok(f),
        SlotKind::Zero { .. } => Err(DecodeError::invalid("page framing", "a zero slot")),
    }
}

/// Bounded element count: never allocate more than the body could hold.
fn count(r: &mut Reader<'_>, min_size: usize, what: &'static str) -> Result<usize, DecodeError> {
    let n = r.get::<u32>().ctx(what)? as usize;
    if n.saturating_mul(min_size.max(1)) > r.remaining() {
        return Err(DecodeError::Truncated { what });
    }
    Ok(n)
}

fn encode_event(out: &mut Vec<u8>, ev: &Event) -> bool {
    match ev {
        Event::BlockList(l) => {
            out.put(u8::from(MetaKind::BlockList));
            out.put(l.total);
            out.put(l.blocks.len() as u32);
            for b in &l.blocks {
                put_str(out, b.name.as_bytes());
                out.put(b.used_length);
                match b.gpa {
                    Some(g) => {
                        out.put(1u8);
                        out.put(g);
                    }
                    None => out.put(0u8),
                }
            }
        }
        Event::Zero(z) => {
            out.put(u8::from(MetaKind::Zero));
            put_str(out, z.block.as_bytes());
            out.put(z.offset);
            out.put(z.fill);
            out.put(u8::from(z.continued));
        }
        Event::MultifdHello(h) => {
            out.put(u8::from(MetaKind::Hello));
            out.put(h.uuid);
            out.put(h.channel);
        }
        Event::MultifdPacket(p) => {
            out.put(u8::from(MetaKind::Packet));
            out.put(p.flags);
            out.put(p.pages_alloc);
            out.put(p.normal_pages);
            out.put(p.next_packet_size);
            out.put(p.packet_num);
            put_str(out, &p.ramblock);
            out.put(p.offsets.len() as u32);
            for &o in &p.offsets {
                out.put(o);
            }
        }
        Event::Page(p) => {
            out.put(u8::from(MetaKind::Page));
            put_str(out, p.block.as_bytes());
            out.put(p.offset);
            put_framing(out, p.framing);
            put_str(out, &p.data);
        }
        Event::Verbatim(_) | Event::Passthrough(_) => return false,
    }
    true
}

fn decode_event(r: &mut Reader<'_>) -> Result<Event, DecodeError> {
    Ok(match MetaKind::from(r.get::<u8>().ctx("event kind")?) {
        MetaKind::BlockList => {
            let total = r.get::<u64>().ctx("block list total")?;
            let n = count(r, 13, "block list")?;
            let mut blocks = Vec::with_capacity(n);
            for _ in 0..n {
                let name = get_name(r, "block name")?;
                let used_length = r.get::<u64>().ctx("block length")?;
                let gpa = match r.get::<u8>().ctx("block gpa flag")? {
                    0 => None,
                    _ => Some(r.get::<u64>().ctx("block gpa")?),
                };
                blocks.push(RamBlock {
                    name,
                    used_length,
                    gpa,
                });
            }
            Event::BlockList(BlockList { total, blocks })
        }
        MetaKind::Zero => Event::Zero(ZeroPage {
            block: get_name(r, "zero page block")?,
            offset: r.get::<u64>().ctx("zero page offset")?,
            fill: r.get::<u8>().ctx("zero page fill")?,
            continued: r.get::<u8>().ctx("zero page continued")? != 0,
        }),
        MetaKind::Hello => Event::MultifdHello(MultifdHello {
            uuid: r.get().ctx("multifd uuid")?,
            channel: r.get().ctx("multifd channel")?,
        }),
        MetaKind::Packet => {
            let flags = r.get::<u32>().ctx("packet flags")?;
            let pages_alloc = r.get::<u32>().ctx("packet pages_alloc")?;
            let normal_pages = r.get::<u32>().ctx("packet normal_pages")?;
            let next_packet_size = r.get::<u32>().ctx("packet size")?;
            let packet_num = r.get::<u64>().ctx("packet number")?;
            let ramblock = Bytes::copy_from_slice(r.len_prefixed().ctx("packet ramblock")?);
            let n = count(r, 8, "packet offsets")?;
            let mut offsets = Vec::with_capacity(n);
            for _ in 0..n {
                offsets.push(r.get::<u64>().ctx("packet offset")?);
            }
            Event::MultifdPacket(MultifdPacket {
                flags,
                pages_alloc,
                normal_pages,
                next_packet_size,
                packet_num,
                ramblock,
                offsets,
            })
        }
        MetaKind::Page => Event::Page(Page {
            block: get_name(r, "page block")?,
            offset: r.get::<u64>().ctx("page offset")?,
            framing: get_framing(r)?,
            data: Bytes::copy_from_slice(r.len_prefixed().ctx("page data")?),
        }),
        MetaKind::Unknown(k) => {
            return Err(DecodeError::invalid("event kind", format!("{k:#04x}")))
        }
    })
}

fn put_batches(out: &mut Vec<u8>, batches: &[Bytes]) {
    out.put(batches.len() as u32);
    for b in batches {
        out.put_len_prefixed(b);
    }
}

fn get_batches(r: &mut Reader<'_>) -> Result<Vec<Bytes>, DecodeError> {
    let n = count(r, 4, "batches")?;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(Bytes::copy_from_slice(r.len_prefixed().ctx("batch")?));
    }
    Ok(v)
}

impl Frame {
    /// Appends the frame to `out`. Only [`Frame::Meta`] with a verbatim or
    /// passthrough event has no encoding; [`crate::qemu::source`] never
    /// builds one.
    pub fn write(&self, out: &mut Vec<u8>) {
        let (kind, body): (Kind, Vec<u8>) = match self {
            Frame::Open {
                version,
                name,
                scope,
                setup,
            } => {
                let mut b = Vec::new();
                b.put(QEMU_RELAY.magic);
                b.put(*version);
                put_str(&mut b, name.as_bytes());
                put_str(&mut b, scope.as_bytes());
                put_str(&mut b, setup.as_bytes());
                (Kind::Open, b)
            }
            Frame::Accept { inventory } => (Kind::Accept, inventory.to_vec()),
            Frame::Refuse(s) => (Kind::Refuse, s.as_bytes().to_vec()),
            Frame::Channel(ch) => (Kind::Channel, vec![*ch]),
            Frame::Verbatim { ch, bytes } => {
                let mut b = Vec::with_capacity(1 + bytes.len());
                b.put(*ch);
                b.extend_from_slice(bytes);
                (Kind::Verbatim, b)
            }
            Frame::Meta { ch, event } => {
                let mut b = vec![*ch];
                if !encode_event(&mut b, event) {
                    return;
                }
                (Kind::Meta, b)
            }
            Frame::Block { number, name } => {
                let mut b = Vec::new();
                b.put(*number);
                put_str(&mut b, name.as_bytes());
                (Kind::Block, b)
            }
            Frame::Pages { ch, slots, batches } => {
                let mut b = Vec::new();
                b.put(*ch);
                b.put(slots.len() as u32);
                for s in slots {
                    b.put(s.gfn.0);
                    put_slot_kind(&mut b, s.kind);
                }
                put_batches(&mut b, batches);
                (Kind::Pages, b)
            }
            Frame::Fill(batches) => {
                let mut b = Vec::new();
                put_batches(&mut b, batches);
                (Kind::Fill, b)
            }
            Frame::Passthrough { ch, reason } => {
                let mut b = vec![*ch];
                b.extend_from_slice(reason.as_bytes());
                (Kind::Passthrough, b)
            }
            Frame::End(ch) => (Kind::End, vec![*ch]),
            Frame::Nacks(list) => {
                let mut b = Vec::new();
                b.put(list.len() as u32);
                for (gfn, fp) in list {
                    b.put(gfn.0);
                    b.put(fp.0);
                }
                (Kind::Nacks, b)
            }
            Frame::ReturnPath(bytes) => (Kind::ReturnPath, bytes.to_vec()),
            Frame::Done(s) => {
                let mut b = Vec::new();
                b.put(s.bytes);
                b.put(s.pages);
                (Kind::Done, b)
            }
            Frame::Abort(s) => (Kind::Abort, s.as_bytes().to_vec()),
        };
        write_frame(out, u8::from(kind), |o| o.extend_from_slice(&body));
    }

    /// Reads a frame's body. [`Frame::Open`]'s version is returned as
    /// sent; the answerer checks it with [`QEMU_RELAY`].
    pub fn read(tag: u8, body: &[u8]) -> Result<Frame, FrameError> {
        let mut r = Reader::new(body);
        let utf8 = |b: &[u8], what: &'static str| {
            String::from_utf8(b.to_vec()).map_err(|_| DecodeError::invalid(what, "not UTF-8"))
        };
        let f = match Kind::from(tag) {
            Kind::Open => {
                let magic: [u8; 8] = r.get().ctx("open preamble")?;
                if magic != QEMU_RELAY.magic {
                    return Err(DecodeError::invalid(
                        "open preamble",
                        "not the QEMU relay protocol's magic",
                    )
                    .into());
                }
                Frame::Open {
                    version: r.get().ctx("open version")?,
                    name: get_str(&mut r, "migration name")?,
                    scope: get_str(&mut r, "dedup scope")?,
                    setup: get_str(&mut r, "destination setup")?,
                }
            }
            Kind::Accept => Frame::Accept {
                inventory: Bytes::copy_from_slice(r.rest()),
            },
            Kind::Refuse => Frame::Refuse(utf8(r.rest(), "refusal")?),
            Kind::Channel => Frame::Channel(r.get().ctx("channel")?),
            Kind::Verbatim => Frame::Verbatim {
                ch: r.get().ctx("channel")?,
                bytes: Bytes::copy_from_slice(r.rest()),
            },
            Kind::Meta => Frame::Meta {
                ch: r.get().ctx("channel")?,
                event: decode_event(&mut r)?,
            },
            Kind::Block => Frame::Block {
                number: r.get().ctx("block number")?,
                name: get_name(&mut r, "block name")?,
            },
            Kind::Pages => {
                let ch = r.get().ctx("channel")?;
                let n = count(&mut r, 9, "page slots")?;
                let mut slots = Vec::with_capacity(n);
                for _ in 0..n {
                    slots.push(PageSlot {
                        gfn: Gfn(r.get().ctx("page gfn")?),
                        kind: get_slot_kind(&mut r)?,
                    });
                }
                Frame::Pages {
                    ch,
                    slots,
                    batches: get_batches(&mut r)?,
                }
            }
            Kind::Fill => Frame::Fill(get_batches(&mut r)?),
            Kind::Passthrough => Frame::Passthrough {
                ch: r.get().ctx("channel")?,
                reason: utf8(r.rest(), "passthrough reason")?,
            },
            Kind::End => Frame::End(r.get().ctx("channel")?),
            Kind::Nacks => {
                let n = count(&mut r, 40, "nacks")?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push((
                        Gfn(r.get::<u64>().ctx("nack gfn")?),
                        Fingerprint(r.get().ctx("nack fingerprint")?),
                    ));
                }
                Frame::Nacks(v)
            }
            Kind::ReturnPath => Frame::ReturnPath(Bytes::copy_from_slice(r.rest())),
            Kind::Done => Frame::Done(DoneStats {
                bytes: r.get().ctx("done bytes")?,
                pages: r.get().ctx("done pages")?,
            }),
            Kind::Abort => Frame::Abort(utf8(r.rest(), "abort reason")?),
            Kind::Unknown(t) => return Err(FrameError::UnknownKind(t)),
        };
        r.finish("QEMU relay frame")?;
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wanmig_wire::FrameDecoder;

    fn round_trip(f: Frame) {
        let mut out = Vec::new();
        f.write(&mut out);
        let mut d = FrameDecoder::new(MAX_BODY);
        d.feed(&out);
        let raw = d.next().unwrap().unwrap();
        assert_eq!(Frame::read(raw.tag, &raw.body).unwrap(), f);
    }

    #[test]
    fn every_frame_round_trips() {
        let name = BlockName::new(&b"pc.ram"[..]).unwrap();
        for f in [
            Frame::Open {
                version: 1,
                name: "vm1".into(),
                scope: "site-a".into(),
                setup: "{}".into(),
            },
            Frame::Accept {
                inventory: Bytes::from_static(b"inv"),
            },
            Frame::Refuse("no".into()),
            Frame::Channel(3),
            Frame::Verbatim {
                ch: 1,
                bytes: Bytes::from_static(b"QEVM"),
            },
            Frame::Meta {
                ch: 0,
                event: Event::BlockList(BlockList {
                    total: 8192,
                    blocks: vec![RamBlock {
                        name: name.clone(),
                        used_length: 8192,
                        gpa: Some(7),
                    }],
                }),
            },
            Frame::Meta {
                ch: 0,
                event: Event::Zero(ZeroPage {
                    block: name.clone(),
                    offset: 4096,
                    fill: 0,
                    continued: true,
                }),
            },
            Frame::Meta {
                ch: 2,
                event: Event::MultifdHello(MultifdHello {
                    uuid: [5; 16],
                    channel: 1,
                }),
            },
            Frame::Meta {
                ch: 2,
                event: Event::MultifdPacket(MultifdPacket {
                    flags: 1,
                    pages_alloc: 2,
                    normal_pages: 1,
                    next_packet_size: 4096,
                    packet_num: 9,
                    ramblock: Bytes::from(vec![b'x'; 256]),
                    offsets: vec![0, 4096],
                }),
            },
            Frame::Meta {
                ch: 0,
                event: Event::Page(Page {
                    block: name.clone(),
                    offset: 1 << 60,
                    data: Bytes::from(vec![1; 4096]),
                    framing: PageFraming::Record { continued: false },
                }),
            },
            Frame::Block { number: 2, name },
            Frame::Pages {
                ch: 0,
                slots: vec![
                    PageSlot {
                        gfn: Gfn(3),
                        kind: SlotKind::Page(PageFraming::Packet),
                    },
                    PageSlot {
                        gfn: Gfn(4),
                        kind: SlotKind::Zero { continued: true },
                    },
                ],
                batches: vec![Bytes::from_static(b"batch")],
            },
            Frame::Fill(vec![Bytes::from_static(b"fill")]),
            Frame::Passthrough {
                ch: 0,
                reason: "xbzrle".into(),
            },
            Frame::End(0),
            Frame::Nacks(vec![(Gfn(4), Fingerprint([3; 32]))]),
            Frame::ReturnPath(Bytes::from_static(b"\0\x01\0\0")),
            Frame::Done(DoneStats { bytes: 5, pages: 1 }),
            Frame::Abort("cut".into()),
        ] {
            round_trip(f);
        }
    }

    #[test]
    fn hostile_bodies_are_errors() {
        assert!(Frame::read(0x08, &[0, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(Frame::read(0x06, &[0, 9]).is_err());
        assert!(Frame::read(0x04, &[1, 2]).is_err());
        assert!(matches!(
            Frame::read(0x77, &[]),
            Err(FrameError::UnknownKind(0x77))
        ));
        assert!(Frame::read(0x01, b"WMQEMU\0\x02").is_err());
    }
}
