//! Why a parser stopped parsing a channel and relays the rest verbatim.
//! Each reason reads as the end of "relayed unreduced: …" in a report.

use crate::format::multifd_compression_name;

/// What a parser met that it does not reduce. The channel is still relayed
/// exactly; only its RAM pages go unreduced from that point.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unsupported {
    #[error("the channel starts with {0:02x?}, which is neither a QEMU migration stream (\"QEVM\") nor a multifd channel")]
    UnknownChannel([u8; 4]),
    #[error("migration stream version {0} (only version 3 is parsed)")]
    StreamVersion(u32),
    #[error("the configuration section names a machine type of {0} bytes")]
    MachineTypeTooLong(u32),
    #[error("configuration subsection {name:?} is not one QEMU 7.2 sends")]
    ConfigurationSubsection { name: String },
    #[error("the guest's target pages are 2^{0} bytes (only 4 KiB pages are parsed)")]
    TargetPageBits(u32),
    #[error("capability {name:?} changes the stream in a way not parsed")]
    Capability { name: String },
    #[error("section type {0:#04x} is unknown")]
    SectionType(u8),
    #[error("live section {idstr:?} (not RAM) is interleaved with RAM; its length cannot be known without its device's schema")]
    LiveSection { idstr: String },
    #[error("section id {0} continues a section that was never started")]
    UnknownSectionId(u32),
    #[error("RAM section version {0} (only version 4 is parsed)")]
    RamSectionVersion(u32),
    #[error("postcopy ({0})")]
    Postcopy(&'static str),
    #[error("postcopy with RAMBlocks of pages other than 4 KiB (page-size summary {0:#x})")]
    PostcopyHugePages(u64),
    #[error("COLO")]
    Colo,
    #[error("command {cmd} with {len} bytes is not one a precopy stream sends")]
    Command { cmd: u16, len: u16 },
    #[error("xbzrle")]
    Xbzrle,
    #[error("the legacy compress threads")]
    CompressThreads,
    #[error("RDMA")]
    Rdma,
    #[error("RAM record flags {0:#x} are unknown")]
    RamFlags(u64),
    #[error("a RAM record continues a block before any block was named")]
    ContinueWithoutBlock,
    #[error("the RAMBlock list is malformed: {0}")]
    BlockList(&'static str),
    #[error("multifd version {0} (only version 1 is parsed)")]
    MultifdVersion(u32),
    #[error("multifd compression {}", multifd_compression_name(*.0))]
    MultifdCompression(u32),
    #[error("multifd packet flags {0:#x} are unknown")]
    MultifdFlags(u32),
    #[error("a multifd packet uses fields that QEMU 7.2 leaves reserved (a newer QEMU's format)")]
    MultifdReserved,
    #[error("a multifd packet is malformed: {0}")]
    MultifdPacket(&'static str),
}

impl Unsupported {
    /// Whether the reason is a feature the operator chose (and can turn
    /// off to get reduction), as opposed to a malformed or unknown stream.
    pub fn is_feature(&self) -> bool {
        matches!(
            self,
            Unsupported::Postcopy(_)
                | Unsupported::PostcopyHugePages(_)
                | Unsupported::Colo
                | Unsupported::Xbzrle
                | Unsupported::CompressThreads
                | Unsupported::Rdma
                | Unsupported::MultifdCompression(_)
                | Unsupported::LiveSection { .. }
                | Unsupported::Capability { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_read_as_the_end_of_a_report_line() {
        assert_eq!(
            format!("relayed unreduced: {}", Unsupported::MultifdCompression(4)),
            "relayed unreduced: multifd compression zstd"
        );
        assert_eq!(Unsupported::Xbzrle.to_string(), "xbzrle");
        assert!(Unsupported::Xbzrle.is_feature());
        assert!(!Unsupported::SectionType(9).is_feature());
        assert!(Unsupported::UnknownChannel(*b"GET ")
            .to_string()
            .contains("neither"));
    }
}
