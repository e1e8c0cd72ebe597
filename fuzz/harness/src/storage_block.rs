//! Target `storage_block`: the storage relay's block payload decoder
//! ([`BlockDecoder::decode`]) on arbitrary payloads, for a block length
//! the input picks (whole blocks of 4–64 KiB, or a short last block).
//!
//! A payload the decoder accepts must yield exactly the block's length of
//! bytes (or the zero block), and the encoder's payload for those bytes
//! must decode to the same block.

use wanmig_storage::wire::{BlockContent, BlockDecoder, BlockEncoder, Decoded};

use crate::input::{Input, Script};

/// The block length the input picks: a whole block or a short last one.
fn block_len(input: &mut Input<'_>) -> usize {
    let whole = 4096usize << (input.u8() % 5);
    let short = usize::from(input.u16());
    if short == 0 || short >= whole {
        whole
    } else {
        short
    }
}

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let len = block_len(&mut input);
    let block = u64::from(input.u32());
    let payload = input.rest();
    let mut dec = BlockDecoder::new().expect("zstd decoder");
    let mut out = Vec::new();
    let Ok(kind) = dec.decode(block, payload, len, &mut out) else {
        return;
    };
    let bytes = match kind {
        Decoded::Zero => {
            assert_eq!(
                payload,
                [0],
                "only the zero payload decodes to the zero block"
            );
            vec![0u8; len]
        }
        Decoded::Data => {
            assert_eq!(out.len(), len, "decoded block has the wrong length");
            out
        }
    };
    let again = BlockEncoder::new(1)
        .expect("zstd encoder")
        .encode(BlockContent::Data(&bytes));
    let mut back = Vec::new();
    match dec
        .decode(block, &again, len, &mut back)
        .expect("the encoder's payload decodes")
    {
        Decoded::Zero => assert!(bytes.iter().all(|&b| b == 0), "data re-encoded as zero"),
        Decoded::Data => assert_eq!(back, bytes, "re-encoded block decodes differently"),
    }
}

/// Seeds: the encoder's payloads for a zero block, text (zstd), random
/// bytes (raw) and a short last block.
pub fn seeds() -> Vec<Vec<u8>> {
    let mut enc = BlockEncoder::new(1).expect("zstd encoder");
    let text: Vec<u8> = b"block of a filesystem: inode tables, text, binaries\n"
        .iter()
        .copied()
        .cycle()
        .take(65536)
        .collect();
    let mut noise = vec![0u8; 16384];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for b in &mut noise {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let cases: [(u8, u16, &[u8]); 5] = [
        (4, 0, &[0u8; 65536]),
        (4, 0, &text),
        (2, 0, &noise),
        (0, 3000, &text[..3000]),
        (1, 0, &text[..8192]),
    ];
    cases
        .iter()
        .map(|&(shift, short, data)| {
            Script::new()
                .u8(shift)
                .u16(short)
                .u32(7)
                .bytes(&enc.encode(BlockContent::Data(data)))
                .finish()
        })
        .collect()
}
