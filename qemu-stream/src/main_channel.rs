//! The main channel's grammar: the file header, the configuration
//! section, section headers and footers, commands, and the RAM section's
//! records. Device state has no length on the wire (only its device's
//! schema knows where it ends), so the first section that is not RAM ends
//! parsing: a `FULL` section starts the device state, which in precopy
//! runs to the end of the channel; a live section other than RAM (block
//! migration, dirty bitmaps, VFIO) sends the channel to passthrough.

use wanmig_wire::Reader;

use crate::event::{BlockList, BlockName, PageFraming, RamBlock, ZeroPage};
use crate::format::{
    ram_flag, Command, SectionType, CAPABILITY_IGNORE_SHARED, FILE_MAGIC, FILE_VERSION, PAGE_MASK,
    PAGE_SIZE, RAM_IDSTR, RAM_SECTION_VERSION,
};
use crate::grammar::{be32, be64, consumed, Stop, Unit};
use crate::unsupported::Unsupported;

/// Longest machine type name accepted in the configuration section.
const MAX_MACHINE_TYPE: u32 = 256;
/// Most capabilities accepted in the configuration section.
const MAX_CAPABILITIES: u32 = 64;
/// Most RAMBlocks accepted in a block list.
pub(crate) const MAX_BLOCKS: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// `be32 magic, be32 version`.
    Header,
    /// An optional configuration section.
    AfterHeader,
    /// A section, command or EOF.
    Top,
    /// RAM records up to `RAM_SAVE_FLAG_EOS`.
    Ram,
    /// An optional section footer after a RAM section part.
    Footer,
}

pub(crate) struct MainGrammar {
    state: State,
    /// The section id QEMU gave the "ram" section.
    ram_section: Option<u32>,
    /// The block the last named page record named (`RAM_SAVE_FLAG_CONTINUE`
    /// refers to it, across section parts).
    last_block: Option<BlockName>,
    /// `x-ignore-shared` is on: each RAMBlock of the list carries its GPA.
    ignore_shared: bool,
}

impl MainGrammar {
    pub(crate) fn new() -> Self {
        MainGrammar {
            state: State::Header,
            ram_section: None,
            last_block: None,
            ignore_shared: false,
        }
    }

    /// Takes one unit off the front of `input`. Changes no state unless it
    /// returns `Ok`.
    pub(crate) fn parse(&mut self, input: &[u8]) -> Result<Unit, Stop> {
        let mut r = Reader::new(input);
        match self.state {
            State::Header => {
                let magic = be32(&mut r)?;
                if magic != FILE_MAGIC {
                    return Err(Unsupported::UnknownChannel(magic.to_be_bytes()).into());
                }
                let version = be32(&mut r)?;
                if version != FILE_VERSION {
                    return Err(Unsupported::StreamVersion(version).into());
                }
                self.state = State::AfterHeader;
                Ok(Unit::Verbatim(8))
            }
            State::AfterHeader => {
                if peek(&r)? != u8::from(SectionType::Configuration) {
                    self.state = State::Top;
                    return Ok(Unit::Verbatim(0));
                }
                let ignore_shared = configuration(&mut r)?;
                self.ignore_shared = ignore_shared;
                self.state = State::Top;
                Ok(Unit::Verbatim(consumed(input, &r)))
            }
            State::Top => self.top(input, r),
            State::Ram => self.ram_record(input, r),
            State::Footer => {
                if peek(&r)? != u8::from(SectionType::Footer) {
                    self.state = State::Top;
                    return Ok(Unit::Verbatim(0));
                }
                r.get::<u8>()?;
                be32(&mut r)?;
                self.state = State::Top;
                Ok(Unit::Verbatim(5))
            }
        }
    }

    fn top(&mut self, input: &[u8], mut r: Reader<'_>) -> Result<Unit, Stop> {
        let kind = SectionType::from(r.get::<u8>()?);
        match kind {
            // Device state, or the end of it: verbatim to the end.
            SectionType::Full | SectionType::Eof => Ok(Unit::DeviceState),
            SectionType::Start => {
                let id = be32(&mut r)?;
                let len = r.get::<u8>()?;
                let idstr = r.bytes(len.into())?;
                let _instance = be32(&mut r)?;
                let version = be32(&mut r)?;
                if idstr != RAM_IDSTR {
                    return Err(Unsupported::LiveSection {
                        idstr: String::from_utf8_lossy(idstr).into_owned(),
                    }
                    .into());
                }
                if version != RAM_SECTION_VERSION {
                    return Err(Unsupported::RamSectionVersion(version).into());
                }
                self.ram_section = Some(id);
                self.state = State::Ram;
                Ok(Unit::Verbatim(consumed(input, &r)))
            }
            SectionType::Part | SectionType::End => {
                let id = be32(&mut r)?;
                if self.ram_section != Some(id) {
                    return Err(Unsupported::UnknownSectionId(id).into());
                }
                self.state = State::Ram;
                Ok(Unit::Verbatim(5))
            }
            SectionType::Command => {
                let cmd = r.get::<wanmig_wire::Be<u16>>()?.0;
                let len = r.get::<wanmig_wire::Be<u16>>()?.0;
                let data = r.bytes(len.into())?;
                command(cmd, len, data)?;
                Ok(Unit::Verbatim(consumed(input, &r)))
            }
            _ => Err(Unsupported::SectionType(kind.into()).into()),
        }
    }

    fn ram_record(&mut self, input: &[u8], mut r: Reader<'_>) -> Result<Unit, Stop> {
        let word = be64(&mut r)?;
        let flags = word & !PAGE_MASK;
        let offset = word & PAGE_MASK;
        let continued = flags & ram_flag::CONTINUE != 0;
        match flags & !ram_flag::CONTINUE {
            ram_flag::EOS if !continued => {
                self.state = State::Footer;
                Ok(Unit::PartEnd(8))
            }
            ram_flag::MULTIFD_FLUSH if !continued => Ok(Unit::Verbatim(8)),
            ram_flag::MEM_SIZE if !continued => {
                let list = self.block_list(offset, &mut r)?;
                Ok(Unit::BlockList(consumed(input, &r), list))
            }
            kind @ (ram_flag::ZERO | ram_flag::PAGE) => {
                let block = if continued {
                    self.last_block
                        .clone()
                        .ok_or(Unsupported::ContinueWithoutBlock)?
                } else {
                    let len = r.get::<u8>()?;
                    let name = r.bytes(len.into())?;
                    match &self.last_block {
                        Some(b) if b.as_bytes() == name => b.clone(),
                        _ => BlockName::from_wire(name),
                    }
                };
                let unit = if kind == ram_flag::ZERO {
                    let fill = r.get::<u8>()?;
                    Unit::Zero(
                        consumed(input, &r),
                        ZeroPage {
                            block: block.clone(),
                            offset,
                            fill,
                            continued,
                        },
                    )
                } else {
                    r.bytes(PAGE_SIZE)?;
                    Unit::Page {
                        len: consumed(input, &r),
                        block: block.clone(),
                        offset,
                        framing: PageFraming::Record { continued },
                    }
                };
                self.last_block = Some(block);
                Ok(unit)
            }
            f if f & ram_flag::HOOK != 0 => Err(Unsupported::Rdma.into()),
            ram_flag::XBZRLE => Err(Unsupported::Xbzrle.into()),
            ram_flag::COMPRESS_PAGE => Err(Unsupported::CompressThreads.into()),
            _ => Err(Unsupported::RamFlags(flags).into()),
        }
    }

    /// The RAMBlock list after a `MEM_SIZE` record header of `total` bytes.
    fn block_list(&self, total: u64, r: &mut Reader<'_>) -> Result<BlockList, Stop> {
        let mut left = total;
        let mut blocks = Vec::new();
        while left > 0 {
            if blocks.len() == MAX_BLOCKS {
                return Err(Unsupported::BlockList("more than 1024 RAMBlocks").into());
            }
            let len = r.get::<u8>()?;
            let name = r.bytes(len.into())?;
            let used_length = be64(r)?;
            let gpa = if self.ignore_shared {
                Some(be64(r)?)
            } else {
                None
            };
            if used_length == 0 || used_length > left {
                return Err(Unsupported::BlockList(
                    "the blocks' lengths do not add up to the total",
                )
                .into());
            }
            left -= used_length;
            blocks.push(RamBlock {
                name: BlockName::from_wire(name),
                used_length,
                gpa,
            });
        }
        Ok(BlockList { total, blocks })
    }
}

/// The next byte, without consuming it.
fn peek(r: &Reader<'_>) -> Result<u8, Stop> {
    let mut ahead = *r;
    Ok(ahead.get::<u8>()?)
}

/// Reads the configuration section (the type byte included) and the
/// subsections QEMU 7.2 sends with it; returns whether `x-ignore-shared`
/// is among its capabilities.
fn configuration(r: &mut Reader<'_>) -> Result<bool, Stop> {
    r.get::<u8>()?;
    let len = be32(r)?;
    if len > MAX_MACHINE_TYPE {
        return Err(Unsupported::MachineTypeTooLong(len).into());
    }
    r.bytes(len as usize)?;
    let mut ignore_shared = false;
    while peek(r)? == u8::from(SectionType::Subsection) {
        r.get::<u8>()?;
        let len = r.get::<u8>()?;
        let name = r.bytes(len.into())?;
        let _version = be32(r)?;
        match name {
            b"configuration/target-page-bits" => {
                let bits = be32(r)?;
                if bits != PAGE_SIZE.trailing_zeros() {
                    return Err(Unsupported::TargetPageBits(bits).into());
                }
            }
            b"configuration/capabilities" => {
                let count = be32(r)?;
                if count > MAX_CAPABILITIES {
                    return Err(Unsupported::Capability {
                        name: format!("({count} capabilities)"),
                    }
                    .into());
                }
                for _ in 0..count {
                    let len = r.get::<u8>()?;
                    let cap = r.bytes(len.into())?;
                    if cap != CAPABILITY_IGNORE_SHARED {
                        return Err(Unsupported::Capability {
                            name: String::from_utf8_lossy(cap).into_owned(),
                        }
                        .into());
                    }
                    ignore_shared = true;
                }
            }
            b"configuration/uuid" => {
                r.bytes(16)?;
            }
            _ => {
                return Err(Unsupported::ConfigurationSubsection {
                    name: String::from_utf8_lossy(name).into_owned(),
                }
                .into())
            }
        }
    }
    Ok(ignore_shared)
}

/// Checks a command: those a precopy stream sends pass; postcopy, COLO and
/// unknown commands end parsing.
fn command(cmd: u16, len: u16, data: &[u8]) -> Result<(), Stop> {
    let unknown = || Stop::Unsupported(Unsupported::Command { cmd, len });
    match Command::from(cmd) {
        Command::OpenReturnPath if len == 0 => Ok(()),
        Command::Ping if len == 4 => Ok(()),
        // Dirty bitmaps only: RAM is sent as in plain precopy.
        Command::PostcopyAdvise if len == 0 => Ok(()),
        // postcopy-ram is on but may never start. Its RAMBlock list carries
        // a page size for each block whose pages differ from the host's:
        // none when every block has target-sized pages.
        Command::PostcopyAdvise if len == 16 => {
            let mut r = Reader::new(data);
            let summary = be64(&mut r).map_err(|_| unknown())?;
            let target_page = be64(&mut r).map_err(|_| unknown())?;
            if summary == PAGE_SIZE as u64 && target_page == PAGE_SIZE as u64 {
                Ok(())
            } else {
                Err(Unsupported::PostcopyHugePages(summary).into())
            }
        }
        Command::PostcopyListen => Err(Unsupported::Postcopy("listen").into()),
        Command::PostcopyRun => Err(Unsupported::Postcopy("run").into()),
        Command::PostcopyRamDiscard => Err(Unsupported::Postcopy("RAM discard").into()),
        Command::Packaged => Err(Unsupported::Postcopy("packaged device state").into()),
        Command::PostcopyResume => Err(Unsupported::Postcopy("resume").into()),
        Command::RecvBitmap => Err(Unsupported::Postcopy("received bitmap").into()),
        Command::EnableColo => Err(Unsupported::Colo.into()),
        _ => Err(unknown()),
    }
}
