//! The bytes QEMU 7.2's pre-copy with multifd and zstd sends for a memory
//! image, modelled offline after its source (Debian's `7.2+dfsg`:
//! `migration/ram.c`, `multifd.c`, `multifd-zstd.c`), to compare codecs on
//! a memory image without running QEMU:
//!
//! - The migration thread walks RAM in address order. An all-zero page
//!   (`buffer_is_zero`) goes on the main channel as a page header (8-byte
//!   offset and flags, plus the RAM block's name the first time) and one
//!   byte (`save_zero_page`). Every other page is queued for multifd.
//! - Queued pages fill a packet of 128 pages (`MULTIFD_PACKET_SIZE`,
//!   512 KiB). A full packet goes to the first idle channel from the one
//!   after the last used (`multifd_send_pages`): round robin while the
//!   channels keep up with each other, which is how it is modelled.
//! - Each channel keeps one zstd stream for the whole migration
//!   (`ZSTD_initCStream(level)`; `multifd-zstd-level` defaults to 1), fed a
//!   packet's pages with `ZSTD_e_continue` and flushed with `ZSTD_e_flush`
//!   after the last one. So matches reach back into earlier packets of the
//!   same channel, as far as the level's window (512 KiB at level 1).
//! - Every packet carries a header: `MultiFDPacket_t` (320 bytes) and an
//!   8-byte offset per allocated page, 1344 bytes in all.
//!
//! Left out: the empty sync packet per channel and the partial packet that
//! every `ram_save_iterate` call flushes (one per ≥ 50 ms of migration,
//! about 2.7 KB each), the channels' initial packets, device state,
//! TCP/IP headers, and pages dirtied during the migration (an idle guest's
//! image is one pass). This crate's zstd is a newer release than Debian's
//! libzstd 1.5.4 that QEMU links; level 1 is the same algorithm in both.

use std::io;

use serde::Serialize;
use wanmig_codec::page::is_zero;
use wanmig_codec::{PageBytes, PAGE_SIZE};
use zstd::stream::raw::{Encoder, InBuffer, Operation, OutBuffer};

/// Pages per multifd packet (`MULTIFD_PACKET_SIZE` / 4 KiB).
pub const PACKET_PAGES: usize = 128;
/// Bytes of a multifd packet header: `MultiFDPacket_t` (six u32, a u64
/// packet number, four reserved u64, a 256-byte block name) and 128
/// offsets.
pub const PACKET_HEADER: u64 = 6 * 4 + 8 + 4 * 8 + 256 + 8 * PACKET_PAGES as u64;
/// A zero page on the main channel: be64 offset|flags and one byte.
pub const ZERO_PAGE_RECORD: u64 = 8 + 1;
/// The RAM block name sent once with the first page header ("pc.ram",
/// length-prefixed).
pub const BLOCK_NAME: u64 = 1 + 6;

/// The migration parameters the model takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MultifdZstd {
    /// `multifd-channels`.
    pub channels: usize,
    /// `multifd-zstd-level`.
    pub level: i32,
}

impl Default for MultifdZstd {
    /// Two channels at zstd level 1, the baseline wanmig is measured against.
    fn default() -> Self {
        MultifdZstd {
            channels: 2,
            level: 1,
        }
    }
}

/// What the model sent, in bytes and pages.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MultifdBytes {
    pub zero_pages: u64,
    pub normal_pages: u64,
    pub packets: u64,
    /// Zero-page records on the main channel.
    pub main_channel: u64,
    /// Packet headers on the multifd channels.
    pub headers: u64,
    /// Compressed page data on the multifd channels.
    pub payload: u64,
}

impl MultifdBytes {
    /// Everything on all channels.
    pub fn total(&self) -> u64 {
        self.main_channel + self.headers + self.payload
    }
}

struct Channel {
    zstd: Encoder<'static>,
}

impl MultifdZstd {
    /// Sends `image` (whole pages, in address order) and returns the bytes.
    /// `on_packet(channel, compressed)` sees each packet's compressed data
    /// as it would cross that channel (without its header).
    pub fn send(
        &self,
        image: &[u8],
        mut on_packet: impl FnMut(usize, &[u8]),
    ) -> io::Result<MultifdBytes> {
        let channels = self.channels.max(1);
        let mut chans = (0..channels)
            .map(|_| {
                Ok(Channel {
                    zstd: Encoder::new(self.level)?,
                })
            })
            .collect::<io::Result<Vec<_>>>()?;
        // ZSTD_compressBound(MULTIFD_PACKET_SIZE), as QEMU sizes zbuff.
        let mut zbuff = vec![0u8; zstd::zstd_safe::compress_bound(PACKET_PAGES * PAGE_SIZE)];
        let mut out = MultifdBytes::default();
        let mut queued: Vec<&PageBytes> = Vec::with_capacity(PACKET_PAGES);
        let mut next = 0usize;
        let mut flush = |queued: &mut Vec<&PageBytes>, out: &mut MultifdBytes| -> io::Result<()> {
            if queued.is_empty() {
                return Ok(());
            }
            let ch = &mut chans[next];
            let mut dst = OutBuffer::around(&mut zbuff[..]);
            for page in queued.iter() {
                let mut src = InBuffer::around(&page[..]);
                while src.pos() < src.src.len() {
                    ch.zstd.run(&mut src, &mut dst)?;
                }
            }
            while ch.zstd.flush(&mut dst)? > 0 {}
            let n = dst.pos();
            on_packet(next, &zbuff[..n]);
            out.packets += 1;
            out.headers += PACKET_HEADER;
            out.payload += n as u64;
            next = (next + 1) % channels;
            queued.clear();
            Ok(())
        };
        for page in image.chunks_exact(PAGE_SIZE) {
            let page: &PageBytes = page.try_into().expect("a whole page");
            if is_zero(page) {
                if out.zero_pages == 0 {
                    out.main_channel += BLOCK_NAME;
                }
                out.zero_pages += 1;
                out.main_channel += ZERO_PAGE_RECORD;
                continue;
            }
            out.normal_pages += 1;
            queued.push(page);
            if queued.len() == PACKET_PAGES {
                flush(&mut queued, &mut out)?;
            }
        }
        flush(&mut queued, &mut out)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngCore, SeedableRng};
    use zstd::stream::raw::Decoder;

    /// Pages: zero, text, repeats and noise, in a pattern.
    fn image(pages: usize) -> Vec<u8> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut img = vec![0u8; pages * PAGE_SIZE];
        for (i, p) in img.chunks_exact_mut(PAGE_SIZE).enumerate() {
            match i % 5 {
                0 => {}
                1 | 2 => {
                    let line = format!("page {} of a text file, line after line\n", i / 3);
                    for (d, s) in p.iter_mut().zip(line.bytes().cycle()) {
                        *d = s;
                    }
                }
                3 => rng.fill_bytes(p),
                _ => p[..64].fill(i as u8),
            }
        }
        img
    }

    #[test]
    fn channels_carry_zstd_streams_of_the_nonzero_pages_dealt_round_robin() {
        let img = image(1000);
        let cfg = MultifdZstd::default();
        let mut streams = vec![Vec::new(); cfg.channels];
        let mut dealt = Vec::new();
        let sent = cfg
            .send(&img, |ch, data| {
                streams[ch].extend_from_slice(data);
                dealt.push(ch);
            })
            .unwrap();

        let nonzero: Vec<&[u8]> = img
            .chunks_exact(PAGE_SIZE)
            .filter(|p| p.iter().any(|&b| b != 0))
            .collect();
        assert_eq!(sent.zero_pages, 200);
        assert_eq!(sent.normal_pages, nonzero.len() as u64);
        assert_eq!(sent.packets, nonzero.len().div_ceil(PACKET_PAGES) as u64);
        assert_eq!(
            dealt,
            (0..sent.packets as usize)
                .map(|k| k % 2)
                .collect::<Vec<_>>()
        );
        assert_eq!(sent.main_channel, BLOCK_NAME + 200 * ZERO_PAGE_RECORD);
        assert_eq!(sent.headers, sent.packets * PACKET_HEADER);
        assert_eq!(
            sent.payload,
            streams.iter().map(|s| s.len() as u64).sum::<u64>()
        );
        assert!(
            sent.payload < (nonzero.len() * PAGE_SIZE) as u64 / 2,
            "text and repeats compress"
        );

        // Each channel's bytes are one zstd stream holding its packets'
        // pages in order: what QEMU's receiving side decompresses.
        for (ch, stream) in streams.iter().enumerate() {
            let want: Vec<u8> = nonzero
                .chunks(PACKET_PAGES)
                .enumerate()
                .filter(|(k, _)| k % 2 == ch)
                .flat_map(|(_, pages)| pages.iter().flat_map(|p| p.iter().copied()))
                .collect();
            let mut dec = Decoder::new().unwrap();
            let mut got = vec![0u8; want.len() + PAGE_SIZE];
            let mut src = InBuffer::around(&stream[..]);
            let mut dst = OutBuffer::around(&mut got[..]);
            while src.pos() < stream.len() {
                dec.run(&mut src, &mut dst).unwrap();
            }
            let n = dst.pos();
            assert_eq!(n, want.len(), "channel {ch}");
            assert!(got[..n] == want[..], "channel {ch} decodes to its pages");
        }
    }

    #[test]
    fn an_all_zero_image_costs_nine_bytes_a_page_and_no_packets() {
        let sent = MultifdZstd::default()
            .send(&vec![0u8; 64 * PAGE_SIZE], |_, _| panic!("no packet"))
            .unwrap();
        assert_eq!(sent.packets, 0);
        assert_eq!(sent.total(), BLOCK_NAME + 64 * ZERO_PAGE_RECORD);
    }
}
