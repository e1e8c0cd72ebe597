//! The versioning rule of wanmig's stream protocols — the shim protocol
//! ([`crate::shim`]), the gateway migration session ([`crate::session`])
//! and the storage relay ([`crate::storage`]) — written once, here; each
//! protocol declares its [`Protocol`] and applies the rule through it.
//!
//! # What a version number means
//!
//! A protocol's version names one exact wire format: the framing, the set
//! of essential message kinds, and the layout of every message body,
//! JSON bodies included (the shim's machine shape, the session's open
//! request with the VM's configuration). Any change that a build speaking
//! the old version would misread or refuse takes a new version: a field
//! added to, removed from or re-encoded in an existing message, a new
//! essential message kind, a change in the order of the conversation.
//!
//! # Who states it, who checks it
//!
//! The side that opens a stream starts its first message with the
//! protocol's [`Preamble`]: an 8-byte magic and its version (shim `Hello`;
//! session `Open` and `Resolve`; storage `Open` and `QuerySize`). The side
//! that answers decodes the preamble and checks the version against the
//! versions it speaks, `oldest..=current` ([`Protocol::check`]):
//!
//! - inside the range: accepted; the rest of the stream is in the
//!   opener's version (the answerer speaks it back);
//! - older than `oldest`: refused, the reason saying that the opener's
//!   build is the one to upgrade;
//! - newer than `current`: refused, the reason saying that the answerer's
//!   build is the one to upgrade.
//!
//! The refusal travels in the protocol's own refusal message (shim
//! `Abort`, session `Refuse`, storage `Error`), so the operator at the
//! opening side reads it too. Every protocol speaks exactly one version
//! today (`oldest == current`): both sites must run builds with the same
//! protocol versions. Keeping `oldest` while raising `current` (and
//! keeping the old decoding) is how a build would let mixed sites migrate.
//!
//! # Message kinds
//!
//! Kinds are tags declared with [`wanmig_wire::wire_enum!`], so a tag this
//! build does not know decodes as `Unknown(tag)`, not as a decoding
//! failure. What the receiver does with it depends on the tag's class
//! ([`TagClass`]):
//!
//! - `0x01..=0x7f`, essential: the conversation cannot go on without
//!   understanding it. An unknown one ends the stream with an
//!   [`UnknownKind`] error naming the protocol, the tag and the version.
//!   A sender never sends an essential kind its negotiated version lacks,
//!   so meeting one means a broken or mismatched peer.
//! - `0x80..=0xff`, advisory: safe to miss (progress reports, hints). An
//!   unknown one is skipped. Adding an advisory kind needs no new version;
//!   changing an existing one's body does.
//! - `0x00` is never assigned (a zeroed buffer is not a message).
//!
//! # Fields
//!
//! Bodies have no slack: bytes after the last field are an error, so a
//! field is never appended in place. New data goes into a new version, or
//! into a new advisory kind when an older receiver may ignore it.

use wanmig_wire::{Codec, Reader, UnexpectedEnd};

/// One stream protocol's identity and the versions this build speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Protocol {
    /// Its name in messages ("shim migration protocol").
    pub name: &'static str,
    /// The first bytes of the opening message.
    pub magic: [u8; 8],
    /// The version this build sends when it opens a stream.
    pub current: u32,
    /// The oldest version this build still accepts.
    pub oldest: u32,
    /// Who opens a stream ("the source shim"), for refusal reasons.
    pub opener: &'static str,
    /// Who answers ("the destination shim").
    pub answerer: &'static str,
}

impl Protocol {
    /// The preamble this build opens a stream with.
    pub const fn preamble(&self) -> Preamble {
        Preamble {
            magic: self.magic,
            version: self.current,
        }
    }

    /// Whether the answering side accepts the opener's `version`; the
    /// error is the refusal's reason.
    pub fn check(&self, version: u32) -> Result<u32, VersionError> {
        if version < self.oldest {
            Err(VersionError::TooOld {
                protocol: self.name,
                opener: self.opener,
                answerer: self.answerer,
                theirs: version,
                oldest: self.oldest,
                current: self.current,
            })
        } else if version > self.current {
            Err(VersionError::TooNew {
                protocol: self.name,
                opener: self.opener,
                answerer: self.answerer,
                theirs: version,
                current: self.current,
            })
        } else {
            Ok(version)
        }
    }

    /// Reads a preamble from the front of an opening message and checks
    /// its magic and version.
    pub fn read_preamble(&self, r: &mut Reader<'_>) -> Result<u32, PreambleError> {
        let p = r
            .get::<Preamble>()
            .map_err(|UnexpectedEnd| PreambleError::Truncated {
                protocol: self.name,
            })?;
        if p.magic != self.magic {
            return Err(PreambleError::BadMagic {
                protocol: self.name,
            });
        }
        Ok(self.check(p.version)?)
    }

    /// What to do with a message kind of tag `tag` this build does not
    /// know (see the module comment): `Ok` to skip it, or the error that
    /// ends the stream.
    pub fn unknown_kind(&self, tag: u8) -> Result<(), UnknownKind> {
        match TagClass::of(tag) {
            TagClass::Advisory => Ok(()),
            TagClass::Essential => Err(self.unknown(tag)),
        }
    }

    /// The error for a message of kind `tag` this build cannot read.
    pub fn unknown(&self, tag: u8) -> UnknownKind {
        UnknownKind {
            protocol: self.name,
            tag,
            version: self.current,
        }
    }
}

/// The magic and version at the start of a stream's opening message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preamble {
    pub magic: [u8; 8],
    pub version: u32,
}

impl Codec for Preamble {
    fn decode(r: &mut Reader<'_>) -> Result<Self, UnexpectedEnd> {
        Ok(Preamble {
            magic: r.get()?,
            version: r.get()?,
        })
    }
    fn encode(&self, out: &mut Vec<u8>) {
        self.magic.encode(out);
        self.version.encode(out);
    }
}

/// A message-kind tag's class (see the module comment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagClass {
    /// The receiver must understand it.
    Essential,
    /// The receiver may skip it.
    Advisory,
}

impl TagClass {
    /// The class of `tag`: advisory when its top bit is set.
    pub const fn of(tag: u8) -> TagClass {
        if tag & 0x80 != 0 {
            TagClass::Advisory
        } else {
            TagClass::Essential
        }
    }
}

/// The opener's version is outside what the answerer speaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    #[error("{opener} speaks {protocol} version {theirs}, older than the oldest {answerer} accepts ({oldest}; it speaks up to {current}): upgrade wanmig at {opener}'s site")]
    TooOld {
        protocol: &'static str,
        opener: &'static str,
        answerer: &'static str,
        theirs: u32,
        oldest: u32,
        current: u32,
    },
    #[error("{opener} speaks {protocol} version {theirs}, newer than {answerer}'s {current}: upgrade wanmig at {answerer}'s site")]
    TooNew {
        protocol: &'static str,
        opener: &'static str,
        answerer: &'static str,
        theirs: u32,
        current: u32,
    },
}

/// An opening message whose preamble cannot be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PreambleError {
    #[error("the stream does not start with the {protocol} magic: the peer does not speak the {protocol}")]
    BadMagic { protocol: &'static str },
    #[error("the {protocol} opening message is shorter than its magic and version")]
    Truncated { protocol: &'static str },
    #[error(transparent)]
    Version(#[from] VersionError),
}

/// An essential message kind this build does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {protocol} message kind {tag} (this build speaks version {version}): the peer runs a wanmig build whose protocol differs; run the same wanmig version at both ends")]
pub struct UnknownKind {
    pub protocol: &'static str,
    pub tag: u8,
    pub version: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use wanmig_wire::WriteExt;

    const P: Protocol = Protocol {
        name: "test protocol",
        magic: *b"WMGTEST1",
        current: 5,
        oldest: 4,
        opener: "the source",
        answerer: "the destination",
    };

    fn opening(magic: [u8; 8], version: u32) -> Vec<u8> {
        let mut out = Vec::new();
        out.put(Preamble { magic, version });
        out
    }

    #[test]
    fn versions_inside_the_range_are_accepted() {
        for v in [4, 5] {
            let bytes = opening(P.magic, v);
            assert_eq!(P.read_preamble(&mut Reader::new(&bytes)), Ok(v));
        }
        assert_eq!(P.preamble().version, 5);
    }

    #[test]
    fn an_older_opener_is_told_to_upgrade_itself() {
        let e = P.check(3).unwrap_err();
        assert!(matches!(e, VersionError::TooOld { theirs: 3, .. }));
        let text = e.to_string();
        assert!(
            text.contains("version 3") && text.contains("upgrade wanmig at the source's site"),
            "{text}"
        );
    }

    #[test]
    fn a_newer_opener_is_told_the_answerer_must_upgrade() {
        let bytes = opening(P.magic, 6);
        let e = P.read_preamble(&mut Reader::new(&bytes)).unwrap_err();
        let PreambleError::Version(v @ VersionError::TooNew { theirs: 6, .. }) = &e else {
            panic!("{e:?}")
        };
        assert!(
            v.to_string()
                .contains("upgrade wanmig at the destination's site"),
            "{v}"
        );
    }

    #[test]
    fn a_foreign_or_short_preamble_is_named() {
        let bytes = opening(*b"SOMEONE!", 5);
        assert_eq!(
            P.read_preamble(&mut Reader::new(&bytes)),
            Err(PreambleError::BadMagic {
                protocol: "test protocol"
            })
        );
        assert_eq!(
            P.read_preamble(&mut Reader::new(&bytes[..11])),
            Err(PreambleError::Truncated {
                protocol: "test protocol"
            })
        );
    }

    #[test]
    fn unknown_essential_kinds_are_refused_and_advisory_ones_skipped() {
        assert_eq!(TagClass::of(0x7f), TagClass::Essential);
        assert_eq!(TagClass::of(0x80), TagClass::Advisory);
        assert_eq!(P.unknown_kind(0x90), Ok(()));
        let e = P.unknown_kind(42).unwrap_err();
        assert_eq!(e.tag, 42);
        assert!(e.to_string().contains("kind 42"), "{e}");
    }
}
