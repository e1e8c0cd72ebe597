//! The destination's durable record of its end-of-copy confirmation
//! (`<disk>.done`): the digest and written-block set it sends in `Done`.
//!
//! Why it is kept: the source checks the destination's copy
//! ([`crate::verify`]) against a digest over the blocks the guest did not
//! write at the destination. The guest keeps writing after `Done`, and the
//! written set on disk (`<disk>.written`) is only saved with the presence
//! bitmap, so if the destination crashes after `Done` but before the
//! source's `Released`, a digest recomputed after the restart would cover
//! blocks the guest legitimately changed since (their bits were never
//! saved) and the source would report a false mismatch. Instead the
//! destination saves the record durably *before* it first sends `Done`, and
//! sends that same record again in every later session and after a
//! restart. It attests to what the copy held when it became complete, which
//! is what the check is for (the source copy is immutable, so a real
//! mismatch in transfer still shows); what the guest writes afterwards is
//! the guest's business.
//!
//! Format: magic, the 32-byte digest, the written set in the presence
//! bitmap's own checksummed form, and BLAKE3 of all of it.

use std::path::{Path, PathBuf};

use crate::error::StorageError;
use crate::geometry::Geometry;
use crate::presence::{read_if_present, save_atomically, suffixed, PresenceBitmap};

const MAGIC: &[u8; 8] = b"WMDONE01";
const HASH_LEN: usize = 32;

/// The record's path for a local disk copy: `<disk>.done`.
pub fn done_path(disk: &Path) -> PathBuf {
    suffixed(disk, ".done")
}

/// What the destination confirmed when every block had become local.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DoneRecord {
    /// The end-of-copy digest ([`crate::verify::combine`]).
    pub digest: [u8; 32],
    /// The blocks the guest had written at the destination (excluded).
    pub written: PresenceBitmap,
}

impl DoneRecord {
    /// The file form.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.digest);
        out.extend_from_slice(&self.written.to_bytes());
        let hash = blake3::hash(&out);
        out.extend_from_slice(hash.as_bytes());
        out
    }

    /// Parses the file form for a disk of geometry `want`; `path` only
    /// names the file in errors.
    pub fn from_bytes(bytes: &[u8], want: Geometry, path: &Path) -> Result<Self, StorageError> {
        let corrupt = |reason: &str| StorageError::PresenceCorrupt {
            path: path.to_owned(),
            reason: reason.to_owned(),
        };
        if bytes.len() < MAGIC.len() + 32 + HASH_LEN {
            return Err(corrupt("shorter than its header"));
        }
        let (body, hash) = bytes.split_at(bytes.len() - HASH_LEN);
        if blake3::hash(body).as_bytes() != hash {
            return Err(corrupt("checksum mismatch (torn or edited file)"));
        }
        if &body[..MAGIC.len()] != MAGIC {
            return Err(corrupt("not a wanmig done record (bad magic)"));
        }
        let digest: [u8; 32] = body[MAGIC.len()..MAGIC.len() + 32]
            .try_into()
            .expect("32 bytes");
        let written = PresenceBitmap::from_bytes(&body[MAGIC.len() + 32..], want, path)?;
        Ok(DoneRecord { digest, written })
    }

    /// Saves the record atomically and durably (temp file, fsync, rename,
    /// fsync of the directory).
    pub fn save(&self, path: &Path) -> Result<(), StorageError> {
        save_atomically(path, &self.to_bytes())
    }

    /// Loads the record at `path`; `Ok(None)` when there is none.
    pub fn load(path: &Path, want: Geometry) -> Result<Option<Self>, StorageError> {
        read_if_present(path, "read done record")?
            .map(|bytes| Self::from_bytes(&bytes, want, path))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = done_path(&dir.path().join("vm.img"));
        assert!(path.ends_with("vm.img.done"));
        let g = Geometry::new(100 * 4096, 4096).unwrap();
        assert_eq!(DoneRecord::load(&path, g).unwrap(), None);
        let mut written = PresenceBitmap::new(g);
        written.set(3);
        written.set(99);
        let r = DoneRecord {
            digest: [0xa5; 32],
            written,
        };
        r.save(&path).unwrap();
        assert_eq!(DoneRecord::load(&path, g).unwrap(), Some(r.clone()));

        let mut bytes = std::fs::read(&path).unwrap();
        bytes[MAGIC.len() + 3] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let e = DoneRecord::load(&path, g).unwrap_err();
        assert!(e.to_string().contains("checksum"), "{e}");
        std::fs::write(&path, &bytes[..20]).unwrap();
        assert!(DoneRecord::load(&path, g).is_err());

        r.save(&path).unwrap();
        let other = Geometry::new(200 * 4096, 4096).unwrap();
        assert!(matches!(
            DoneRecord::load(&path, other).unwrap_err(),
            StorageError::PresenceMismatch { .. }
        ));
    }
}
