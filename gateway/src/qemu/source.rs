//! The source gateway's side of a QEMU relay, sans-IO: bytes of each
//! channel the source QEMU opened in, [`Frame`]s for the peer out. Each
//! channel has a [`Parser`]; pages with data go through the codec's
//! [`Encoder`] (zero pages, references into the far site's page store and
//! this session, deltas, zstd), zero records travel as slots without data,
//! and everything else goes as it came, in the channel's order.

use bytes::Bytes;
use wanmig_codec::{CodecError, Encoder, EncoderConfig, EncoderStats, Fingerprint, Gfn, Inventory};
use wanmig_qemu_stream::page_id::PAGE_INDEX_BITS;
use wanmig_qemu_stream::{BlockName, Event, PageIdError, PageIds, Parser, Stats};

use super::frames::{Frame, PageSlot, SlotKind};

/// Pages gathered before they are encoded into one frame (the codec cuts
/// them into batches of its own size).
const PAGES_PER_FRAME: usize = 256;

/// Why the source side cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(
        "the source QEMU opened more than 256 migration channels; use at most 255 multifd channels"
    )]
    TooManyChannels,
    #[error("channel {0} is not open (a relay bug)")]
    NoChannel(u8),
    #[error("numbering the source's RAMBlocks: {0}")]
    PageIds(#[from] PageIdError),
    #[error("the migration codec: {0}")]
    Codec(#[from] CodecError),
    #[error("the destination gateway lacks {0} pages this gateway no longer holds; the migration cannot be completed (raise [codec] cache_bytes above the guest's RAM)")]
    Lost(usize),
}

/// One channel's parsing state.
struct Channel {
    parser: Parser,
    ended: bool,
}

/// What the source side carried.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SourceStats {
    /// Bytes the source QEMU sent, all channels.
    pub qemu_bytes: u64,
    /// Bytes forwarded as they came (headers, device state, passthrough).
    pub verbatim_bytes: u64,
    /// Pages with data that went through the codec.
    pub pages: u64,
    /// Zero-page records.
    pub zero_pages: u64,
    /// Pages forwarded without the codec (offsets it cannot key).
    pub unkeyed_pages: u64,
    /// Channels relayed unreduced from some point on, and why.
    pub passthrough: Vec<(u8, String)>,
    /// Frame bytes produced (the stream's payload towards the peer).
    pub frame_bytes: u64,
}

/// The source side of one QEMU migration's relay.
pub struct SourceRelay {
    channels: Vec<Channel>,
    ids: PageIds,
    encoder: Option<Encoder>,
    cfg: EncoderConfig,
    inventory: Option<Inventory>,
    stats: SourceStats,
    /// Pages of the frame being gathered: slot, and data for page slots.
    gathering: Vec<(PageSlot, Option<Bytes>)>,
    gathering_ch: u8,
}

impl SourceRelay {
    /// A relay encoding with `cfg` against what the destination holds.
    pub fn new(cfg: EncoderConfig, inventory: Inventory) -> Result<Self, SourceError> {
        cfg.validate()?;
        Ok(SourceRelay {
            channels: Vec::new(),
            ids: PageIds::new(),
            encoder: None,
            cfg,
            inventory: Some(inventory),
            stats: SourceStats::default(),
            gathering: Vec::new(),
            gathering_ch: 0,
        })
    }

    pub fn stats(&self) -> &SourceStats {
        &self.stats
    }

    /// The codec's counters (none before the first page).
    pub fn encoder_stats(&self) -> EncoderStats {
        self.encoder.as_ref().map(|e| e.stats()).unwrap_or_default()
    }

    /// Each channel's parser counters, in channel order.
    pub fn parser_stats(&self) -> Vec<Stats> {
        self.channels
            .iter()
            .map(|c| c.parser.stats().clone())
            .collect()
    }

    /// Whether every channel opened so far has ended.
    pub fn all_ended(&self) -> bool {
        self.channels.iter().all(|c| c.ended)
    }

    /// A connection from the source QEMU: returns its channel number.
    pub fn open_channel(&mut self, out: &mut Vec<u8>) -> Result<u8, SourceError> {
        let ch = u8::try_from(self.channels.len()).map_err(|_| SourceError::TooManyChannels)?;
        self.channels.push(Channel {
            parser: Parser::new(),
            ended: false,
        });
        self.write(out, &Frame::Channel(ch));
        Ok(ch)
    }

    /// Bytes read from channel `ch`.
    pub fn push(&mut self, ch: u8, data: &[u8], out: &mut Vec<u8>) -> Result<(), SourceError> {
        let c = self
            .channels
            .get_mut(ch as usize)
            .ok_or(SourceError::NoChannel(ch))?;
        c.parser.push(data);
        self.stats.qemu_bytes += data.len() as u64;
        self.drain(ch, out)
    }

    /// Channel `ch` was closed by the source QEMU.
    pub fn end(&mut self, ch: u8, out: &mut Vec<u8>) -> Result<(), SourceError> {
        let c = self
            .channels
            .get_mut(ch as usize)
            .ok_or(SourceError::NoChannel(ch))?;
        if c.ended {
            return Ok(());
        }
        c.ended = true;
        c.parser.finish();
        self.drain(ch, out)?;
        self.write(out, &Frame::End(ch));
        Ok(())
    }

    /// NACKs from the destination: the content it lacked, as fills.
    pub fn on_nacks(
        &mut self,
        nacks: &[(Gfn, Fingerprint)],
        out: &mut Vec<u8>,
    ) -> Result<(), SourceError> {
        let Some(enc) = self.encoder.as_mut() else {
            return Ok(());
        };
        let resp = enc.on_nack(nacks);
        if !resp.refetch.is_empty() {
            // QEMU cannot be asked for a page again.
            return Err(SourceError::Lost(resp.refetch.len()));
        }
        if !resp.batches.is_empty() {
            let batches = resp.batches.into_iter().map(Bytes::from).collect();
            self.write(out, &Frame::Fill(batches));
        }
        Ok(())
    }

    fn write(&mut self, out: &mut Vec<u8>, f: &Frame) {
        let before = out.len();
        f.write(out);
        self.stats.frame_bytes += (out.len() - before) as u64;
    }

    fn encoder(&mut self, cache_at_least: u64) -> Result<&mut Encoder, SourceError> {
        if self.encoder.is_none() {
            let mut cfg = self.cfg.clone();
            // NACKs are answered from the encoder's copy of what it sent;
            // QEMU cannot resend a page, so the copy must hold all of RAM.
            cfg.cache_bytes = cfg
                .cache_bytes
                .max(usize::try_from(cache_at_least).unwrap_or(usize::MAX));
            let inv = self.inventory.take().unwrap_or_default();
            self.encoder = Some(Encoder::new(cfg, inv)?);
        }
        Ok(self.encoder.as_mut().expect("just built"))
    }

    /// Tells the destination the number of a RAM block seen for the first
    /// time (after the pages gathered so far, which may belong to another).
    fn announce_block(
        &mut self,
        out: &mut Vec<u8>,
        gfn: u64,
        name: &BlockName,
    ) -> Result<(), SourceError> {
        self.flush(out)?;
        let number = (gfn >> PAGE_INDEX_BITS) as u32;
        self.write(
            out,
            &Frame::Block {
                number,
                name: name.clone(),
            },
        );
        Ok(())
    }

    fn drain(&mut self, ch: u8, out: &mut Vec<u8>) -> Result<(), SourceError> {
        if self.gathering_ch != ch {
            self.flush(out)?;
            self.gathering_ch = ch;
        }
        while let Some(ev) = self.channels[ch as usize].parser.poll() {
            match ev {
                Event::Page(p) => {
                    let keyed = match p.bytes() {
                        Some(_) => self.ids.gfn_of(&p.block, p.offset)?,
                        None => None,
                    };
                    match keyed {
                        Some((gfn, new)) => {
                            if new {
                                self.announce_block(out, gfn, &p.block)?;
                            }
                            self.gathering.push((
                                PageSlot {
                                    gfn: Gfn(gfn),
                                    kind: SlotKind::Page(p.framing),
                                },
                                Some(p.data),
                            ));
                            self.stats.pages += 1;
                        }
                        None => {
                            self.flush(out)?;
                            self.stats.unkeyed_pages += 1;
                            self.write(
                                out,
                                &Frame::Meta {
                                    ch,
                                    event: Event::Page(p),
                                },
                            );
                        }
                    }
                }
                Event::Zero(z) if z.fill == 0 => match self.ids.gfn_of(&z.block, z.offset)? {
                    Some((gfn, new)) => {
                        if new {
                            self.announce_block(out, gfn, &z.block)?;
                        }
                        self.gathering.push((
                            PageSlot {
                                gfn: Gfn(gfn),
                                kind: SlotKind::Zero {
                                    continued: z.continued,
                                },
                            },
                            None,
                        ));
                        self.stats.zero_pages += 1;
                    }
                    None => {
                        self.flush(out)?;
                        self.stats.zero_pages += 1;
                        self.write(
                            out,
                            &Frame::Meta {
                                ch,
                                event: Event::Zero(z),
                            },
                        );
                    }
                },
                Event::Verbatim(bytes) => {
                    self.flush(out)?;
                    self.stats.verbatim_bytes += bytes.len() as u64;
                    self.write(out, &Frame::Verbatim { ch, bytes });
                }
                Event::Passthrough(why) => {
                    self.flush(out)?;
                    let reason = why.to_string();
                    tracing::warn!(
                        channel = ch,
                        "relaying the rest of the channel unreduced: {reason}"
                    );
                    self.stats.passthrough.push((ch, reason.clone()));
                    self.write(out, &Frame::Passthrough { ch, reason });
                }
                Event::BlockList(l) => {
                    self.flush(out)?;
                    self.encoder(l.total.saturating_add(1 << 20))?;
                    self.write(
                        out,
                        &Frame::Meta {
                            ch,
                            event: Event::BlockList(l),
                        },
                    );
                }
                event => {
                    self.flush(out)?;
                    if let Event::Zero(_) = event {
                        self.stats.zero_pages += 1;
                    }
                    self.write(out, &Frame::Meta { ch, event });
                }
            }
            if self.gathering.len() >= PAGES_PER_FRAME {
                self.flush(out)?;
            }
        }
        self.flush(out)
    }

    /// Encodes the gathered pages into one [`Frame::Pages`].
    fn flush(&mut self, out: &mut Vec<u8>) -> Result<(), SourceError> {
        if self.gathering.is_empty() {
            return Ok(());
        }
        let gathering = std::mem::take(&mut self.gathering);
        let enc = self.encoder(0)?;
        let pages = gathering.iter().filter_map(|(s, d)| {
            let d = d.as_ref()?;
            let page: &[u8; 4096] = d.as_ref().try_into().ok()?;
            Some((s.gfn, page))
        });
        let batches = enc.encode(pages).into_iter().map(Bytes::from).collect();
        let slots = gathering.into_iter().map(|(s, _)| s).collect();
        let ch = self.gathering_ch;
        self.write(out, &Frame::Pages { ch, slots, batches });
        Ok(())
    }
}
