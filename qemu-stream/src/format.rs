//! What QEMU 7.2 puts on its migration channels: the magic numbers, the
//! record types and flags this crate recognises, and the fixed sizes of
//! the multifd packets. `docs/qemu-stream.md` describes the layouts these
//! values sit in; all multi-byte integers on these channels are big-endian.

use wanmig_wire::wire_enum;

/// Size of a target page on x86: the unit of every RAM record.
pub const PAGE_SIZE: usize = 4096;
/// The low bits of a RAM record's `be64` hold its flags, the rest its
/// page-aligned offset.
pub const PAGE_MASK: u64 = !(PAGE_SIZE as u64 - 1);

/// `QEMU_VM_FILE_MAGIC`, the first four bytes of the main channel ("QEVM").
pub const FILE_MAGIC: u32 = 0x5145_564d;
/// `QEMU_VM_FILE_VERSION`: the only stream version QEMU 2.x to 10.x write.
pub const FILE_VERSION: u32 = 3;

/// `MULTIFD_MAGIC`: the first four bytes of a multifd channel and of each
/// of its packets.
pub const MULTIFD_MAGIC: u32 = 0x1122_3344;
/// `MULTIFD_VERSION`.
pub const MULTIFD_VERSION: u32 = 1;
/// Bytes of the packet a multifd channel opens with (`MultiFDInit_t`).
pub const MULTIFD_HELLO_LEN: usize = 64;
/// Bytes of a multifd packet header before its offset array
/// (`MultiFDPacket_t` without `offset[]`).
pub const MULTIFD_HEADER_LEN: usize = 320;
/// Bytes of the ramblock name field of a multifd packet header.
pub const MULTIFD_RAMBLOCK_LEN: usize = 256;
/// Pages a multifd packet holds at most: `MULTIFD_PACKET_SIZE` (512 KiB)
/// over the page size. QEMU's receiver rejects a larger `pages_alloc`.
pub const MULTIFD_MAX_PAGES: u32 = 128;
/// `MULTIFD_FLAG_SYNC`: the packet ends a round; its receiver waits for
/// the main channel's end-of-section before reading on.
pub const MULTIFD_FLAG_SYNC: u32 = 1;
/// `MULTIFD_FLAG_COMPRESSION_MASK`: three bits naming the packet's
/// compression (0 = none).
pub const MULTIFD_COMPRESSION_MASK: u32 = 0b1110;

/// `ram_load` accepts only this version of the "ram" section.
pub const RAM_SECTION_VERSION: u32 = 4;
/// The idstr of the RAM section.
pub const RAM_IDSTR: &[u8] = b"ram";

wire_enum! {
    /// The byte that opens each top-level element of the main channel
    /// (`QEMU_VM_*`).
    pub enum SectionType(u8) {
        /// `QEMU_VM_EOF`: end of the device state; only the vmdesc follows.
        Eof = 0x00,
        /// A live (iterative) section's first part, with its idstr.
        Start = 0x01,
        /// A further part of a live section, by section id.
        Part = 0x02,
        /// A live section's last part, by section id.
        End = 0x03,
        /// A device's whole state, with its idstr.
        Full = 0x04,
        /// A vmstate subsection (inside a section or the configuration).
        Subsection = 0x05,
        /// The JSON description of the device state, after `Eof`.
        VmDescription = 0x06,
        /// The machine type and validated capabilities, after the header.
        Configuration = 0x07,
        /// A command: `be16 cmd, be16 len, data[len]`.
        Command = 0x08,
        /// `QEMU_VM_SECTION_FOOTER`: `be32 section_id` after a section.
        Footer = 0x7e,
    }
}

wire_enum! {
    /// `QEMU_VM_COMMAND`'s commands (`enum qemu_vm_cmd`).
    pub enum Command(u16) {
        /// Opens the return path (destination → source on the same socket).
        OpenReturnPath = 1,
        /// `be32` value the destination answers with a PONG on the return path.
        Ping = 2,
        /// The source may switch to postcopy: `be64 page-size summary,
        /// be64 target page size` (empty when only dirty bitmaps use postcopy).
        PostcopyAdvise = 3,
        PostcopyListen = 4,
        PostcopyRun = 5,
        PostcopyRamDiscard = 6,
        /// `be32 length` of a whole nested stream that follows.
        Packaged = 7,
        EnableColo = 8,
        PostcopyResume = 9,
        RecvBitmap = 10,
    }
}

/// Flags in the low bits of a RAM record's `be64` (`RAM_SAVE_FLAG_*`).
pub mod ram_flag {
    /// A page of one repeated byte (QEMU sends only 0): `u8 fill`.
    pub const ZERO: u64 = 0x02;
    /// The RAMBlock list: the record's offset bits hold the total RAM size.
    pub const MEM_SIZE: u64 = 0x04;
    /// A whole page: `data[4096]`.
    pub const PAGE: u64 = 0x08;
    /// End of the section's records.
    pub const EOS: u64 = 0x10;
    /// The page is in the block last named on this channel (no name follows).
    pub const CONTINUE: u64 = 0x20;
    /// An XBZRLE delta against the previous version of the page.
    pub const XBZRLE: u64 = 0x40;
    /// RDMA's hook.
    pub const HOOK: u64 = 0x80;
    /// A zlib-compressed page from the `compress` threads.
    pub const COMPRESS_PAGE: u64 = 0x100;
    /// QEMU 8.0 and later: a multifd sync point without data.
    pub const MULTIFD_FLUSH: u64 = 0x200;
}

/// Names of QEMU's capabilities that the configuration section may list
/// (only capabilities that change the stream's format are listed there).
pub const CAPABILITY_IGNORE_SHARED: &[u8] = b"x-ignore-shared";

/// The name of a multifd compression method from the packet flags' bits.
pub fn multifd_compression_name(bits: u32) -> &'static str {
    match bits >> 1 {
        0 => "none",
        1 => "zlib",
        2 => "zstd",
        3 => "qpl",
        4 => "uadk",
        5 => "qatzip",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_spells_qevm_and_flags_fit_below_a_page() {
        assert_eq!(&FILE_MAGIC.to_be_bytes(), b"QEVM");
        for f in [
            ram_flag::ZERO,
            ram_flag::MEM_SIZE,
            ram_flag::PAGE,
            ram_flag::EOS,
            ram_flag::CONTINUE,
            ram_flag::XBZRLE,
            ram_flag::HOOK,
            ram_flag::COMPRESS_PAGE,
            ram_flag::MULTIFD_FLUSH,
        ] {
            assert_eq!(f & PAGE_MASK, 0);
        }
        assert_eq!(SectionType::from(0x7e), SectionType::Footer);
        assert_eq!(SectionType::from(0x09), SectionType::Unknown(9));
        assert_eq!(multifd_compression_name(2 << 1), "zstd");
    }
}
