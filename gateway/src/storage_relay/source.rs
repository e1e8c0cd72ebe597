//! Source side of the storage relay: answers `STORAGE` streams by serving
//! an exported disk's blocks to the one site it is exported to, and
//! releases the disk by policy once that site confirmed its copy is
//! complete and durable and the end-of-copy check
//! ([`wanmig_storage::verify`]) passed; a check that covered too little of
//! the disk ([`wanmig_storage::verify::check_coverage`]) lets the
//! destination finish but keeps the source copy whatever the policy. `Done` and `Open` of an
//! already released disk are answered with `Released` again, so a
//! `Released` lost with the link is not an error. Any other peer is told
//! the disk is not exported (whether it exists to another site is not
//! said).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use quinn::{RecvStream, SendStream};
use tokio::sync::mpsc;
use wanmig_storage::wire::{BlockContent, BlockEncoder};

use super::dedup::PageEncoder;
use wanmig_storage::verify::ThinCheck;
use wanmig_storage::{
    release_source, FetchRequest, PresenceBitmap, Priority, ReleasePolicy, SourceDisk,
};

use super::stream::{self, read_frame, StreamError};
use super::{lock, Export, Inner};
use crate::peering::IncomingStream;
use wanmig_migration::storage::{Frame, Lane};

pub(crate) async fn accept_loop(inner: Arc<Inner>, mut streams: mpsc::Receiver<IncomingStream>) {
    while let Some(s) = streams.recv().await {
        let inner = Arc::clone(&inner);
        tokio::spawn(async move {
            let peer = s.peer.clone();
            if let Err(e) = serve(inner, &peer, s.send, s.recv).await {
                tracing::info!(%peer, "storage stream ended: {e}");
            }
        });
    }
}

/// Why serving a storage stream ended early.
#[derive(Debug, thiserror::Error)]
enum ServeError {
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// The destination was told this in an `Error` frame.
    #[error("{0}")]
    Refused(String),
    #[error("creating a block encoder: {0}")]
    Encoder(std::io::Error),
}

async fn write(send: &mut SendStream, f: &Frame) -> Result<(), StreamError> {
    stream::write_frame(send, f).await
}

/// Tells the destination why its stream is refused; the error to log.
async fn refuse(send: &mut SendStream, msg: String) -> ServeError {
    let _ = write(send, &Frame::Error(msg.clone())).await;
    ServeError::Refused(msg)
}

/// Checks the destination's end-of-copy digest against this disk over the
/// blocks its guest did not write. `Ok(Some(thin))` when the digest matches
/// but covers too little of the disk to release the source copy
/// ([`wanmig_storage::verify::check_coverage`]).
fn verify(
    disk: &SourceDisk,
    digest: &[u8; 32],
    written: &[u8],
) -> Result<Option<ThinCheck>, String> {
    let written = PresenceBitmap::from_bytes(written, disk.geometry(), disk.path())
        .map_err(|e| format!("the destination's written-block set is unusable: {e}"))?;
    let thin = wanmig_storage::verify::check_coverage(disk.geometry(), &written).err();
    let ours = disk
        .end_of_copy_digest(&written)
        .map_err(|e| e.to_string())?;
    if &ours == digest {
        Ok(thin)
    } else {
        Err(format!(
            "end-of-copy check failed: the destination's copy ({}) differs from the source disk ({}) in blocks the guest did not write there; the source copy is kept (do not delete it); the VM keeps running on the destination's copy, which holds the guest's writes made there, so before recovering stop the VM there and save what it wrote: discarding the destination's copy (and its .presence/.written/.done files) to run `wanmig storage migrate` again throws those writes away; report the mismatch (data changed in transit, or a bug)",
            wanmig_storage::verify::hex(digest),
            wanmig_storage::verify::hex(&ours)
        ))
    }
}

/// Why a stream's export is gone: withdrawn (its migration failed before
/// the handover) or replaced by a newer export of the same name.
fn withdrawn(name: &str) -> String {
    format!("the export of disk '{name}' was withdrawn at the source (its migration did not complete, or a newer one replaced it); nothing was released")
}

/// The answer to a peer that asks for `name` when no export of it is for
/// that peer (whether it is exported elsewhere is not said).
fn not_exported(name: &str, peer: &str) -> String {
    format!("no disk '{name}' is exported at this site to '{peer}'")
}

/// The export `name` if it is still export `id` (not withdrawn or
/// replaced since the stream opened it).
fn current<'a>(
    exports: &'a mut HashMap<String, Export>,
    name: &str,
    id: u64,
) -> Option<&'a mut Export> {
    exports.get_mut(name).filter(|e| e.id == id)
}

/// Most block bytes read and encoded at once for one request.
const SERVE_CHUNK_BYTES: u64 = 4 << 20;

/// Splits a (range-checked) request for `count` blocks from `first_block`
/// into pieces of at most [`SERVE_CHUNK_BYTES`] (at least one block each).
fn serve_chunks(first_block: u64, count: u32, block_size: u32) -> impl Iterator<Item = (u64, u32)> {
    let step = (SERVE_CHUNK_BYTES / u64::from(block_size.max(1))).clamp(1, u64::from(u32::MAX));
    let end = first_block.saturating_add(u64::from(count));
    let mut at = first_block;
    std::iter::from_fn(move || {
        if at >= end {
            return None;
        }
        let n = (end - at).min(step);
        let piece = (at, n as u32);
        at += n;
        Some(piece)
    })
}

/// Checks the destination's end-of-copy digest and releases the source copy
/// by policy, at most once per export: a second `Done` (the destination
/// sends it again in every new session until it hears `Released`) waits for
/// a check still running and then finds the disk released, instead of
/// releasing (deleting) it a second time and failing a finished copy.
/// `Ok` means the disk is released (now or before); `Err` says why not (the
/// source copy is kept). `id` is the export the stream opened: a `Done` for
/// an export since withdrawn or replaced releases nothing.
async fn confirm_and_release(
    exports: &Mutex<HashMap<String, Export>>,
    name: &str,
    id: u64,
    peer: &str,
    disk: &Arc<SourceDisk>,
    digest: [u8; 32],
    written: Vec<u8>,
) -> Result<(), String> {
    let Some(gate) = lock(exports)
        .get(name)
        .filter(|e| e.id == id)
        .map(|e| Arc::clone(&e.release_gate))
    else {
        return Err(withdrawn(name));
    };
    let _held = gate.lock().await;
    let export = lock(exports).get(name).filter(|e| e.id == id).cloned();
    let Some(export) = export else {
        return Err(withdrawn(name));
    };
    if export.released {
        return Ok(());
    }
    let d = Arc::clone(disk);
    let checked = tokio::task::spawn_blocking(move || verify(&d, &digest, &written))
        .await
        .map_err(|e| format!("end-of-copy check task failed: {e}; the source copy is kept"))?;
    let thin = match checked {
        Ok(thin) => thin,
        Err(msg) => {
            tracing::error!(disk = %name, %peer, "{msg}");
            if let Some(e) = lock(exports).get_mut(name) {
                e.status.error = Some(msg.clone());
            }
            return Err(msg);
        }
    };
    let path = export.path.clone();
    // A check that covered too little lets the destination finish but
    // releases nothing here.
    let policy = match &thin {
        Some(t) => {
            tracing::warn!(disk = %name, %peer, "{t}");
            ReleasePolicy::Keep
        }
        None => export.policy,
    };
    tokio::task::spawn_blocking(move || release_source(&path, policy))
        .await
        .map_err(|e| format!("release task failed: {e}"))?
        .map_err(|e| e.to_string())?;
    if let Some(e) = lock(exports).get_mut(name) {
        e.released = true;
        e.status.released = true;
        e.status.verified = thin.is_none();
        e.status.error = thin.as_ref().map(ToString::to_string);
        e.status.local_blocks = disk.geometry().block_count();
        e.status.total_blocks = disk.geometry().block_count();
        e.status.total_ms = e.started.map(|t| t.elapsed().as_millis() as u64);
    }
    tracing::info!(disk = %name, ?policy, "storage copy confirmed and verified by the destination; source copy released");
    Ok(())
}

/// The export `name` to `peer` once no release of it is under way: an
/// `Open` that arrives while an earlier session's `Done` is being checked
/// and released waits for the outcome, so it is answered `Released` rather
/// than with an error about a source file deleted under it. `None` when
/// `name` is not exported to `peer`.
async fn settled_export(
    exports: &Mutex<HashMap<String, Export>>,
    name: &str,
    peer: &str,
) -> Option<Export> {
    let gate = lock(exports)
        .get(name)
        .filter(|e| e.to == peer)
        .map(|e| Arc::clone(&e.release_gate))?;
    let _held = gate.lock().await;
    lock(exports).get(name).filter(|e| e.to == peer).cloned()
}

async fn serve(
    inner: Arc<Inner>,
    peer: &str,
    mut send: SendStream,
    mut recv: RecvStream,
) -> Result<(), ServeError> {
    let open = match read_frame(&mut recv).await {
        Ok(f) => f,
        // A version this side does not speak, or a malformed opening: the
        // destination's operator reads why.
        Err(StreamError::Wire(e)) => return Err(refuse(&mut send, e.to_string()).await),
        Err(e) => return Err(e.into()),
    };
    if let Frame::QuerySize { name, .. } = &open {
        let len = lock(&inner.exports)
            .get(name)
            .filter(|e| !e.released && e.to == peer)
            .map(|e| (e.disk_len, e.status.background));
        let answer = match len {
            Some((len, background)) => {
                // The mode was for this migration only: the next one of
                // the same VM copies in the background unless asked
                // otherwise again.
                lock(&inner.deferred).remove(name);
                Frame::Size { len, background }
            }
            None => Frame::Error(not_exported(name, peer)),
        };
        write(&mut send, &answer).await?;
        let _ = send.finish();
        return Ok(());
    }
    let Frame::Open {
        lane,
        name,
        disk_len,
        block_size,
        inventory,
        ..
    } = open
    else {
        return Err(refuse(&mut send, format!("expected Open, got {:?}", open.kind())).await);
    };
    let priority = match lane {
        Lane::OnDemand => Priority::OnDemand,
        Lane::Background => Priority::Background,
        Lane::Unknown(l) => {
            return Err(refuse(&mut send, format!("unknown storage lane {l}")).await)
        }
    };
    if lane == Lane::OnDemand {
        // On-demand answers overtake background data on the connection.
        let _ = send.set_priority(10);
    }
    let export = settled_export(&inner.exports, &name, peer).await;
    let Some(export) = export else {
        return Err(refuse(&mut send, not_exported(&name, peer)).await);
    };
    if export.released {
        // The destination did not hear our `Released`: say it again.
        write(&mut send, &Frame::Released).await?;
        let _ = send.finish();
        return Ok(());
    }
    let id = export.id;
    if let Some(e) = current(&mut lock(&inner.exports), &name, id) {
        e.started.get_or_insert_with(std::time::Instant::now);
    }
    let opened = if export.disk_len != disk_len {
        Err(format!(
            "the destination expects {disk_len} bytes but the exported disk has {}",
            export.disk_len
        ))
    } else if let Err(e) = wanmig_storage::Geometry::for_transfer(disk_len, block_size) {
        // The destination picks the block size; the source's memory and
        // the `Done` frame grow with the block count.
        Err(e.to_string())
    } else {
        let path = export.path.clone();
        tokio::task::spawn_blocking(move || SourceDisk::open(&path, disk_len, block_size))
            .await
            .map_err(StreamError::from)?
            .map_err(|e| e.to_string())
    };
    let disk = match opened {
        Ok(d) => Arc::new(d),
        Err(msg) => return Err(refuse(&mut send, msg).await),
    };
    write(&mut send, &Frame::Holes(disk.hole_blocks())).await?;
    let mut encoder = BlockEncoder::new(inner.zstd_level).map_err(ServeError::Encoder)?;
    // Page references against the destination's store (background lane).
    let mut pages = match inventory.map(|b| wanmig_codec::Inventory::from_bytes(&b)) {
        Some(Ok(inv)) => {
            Some(PageEncoder::new(inv, inner.zstd_level).map_err(ServeError::Encoder)?)
        }
        Some(Err(e)) => {
            tracing::warn!(disk = %name, "the destination's inventory is unusable ({e}); sending without references");
            None
        }
        None => None,
    };
    loop {
        let frame = match read_frame(&mut recv).await {
            Ok(f) => f,
            Err(StreamError::Closed) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        match frame {
            Frame::Request { first_block, count } | Frame::RequestPlain { first_block, count } => {
                if current(&mut lock(&inner.exports), &name, id).is_none() {
                    return Err(refuse(&mut send, withdrawn(&name)).await);
                }
                let plain = matches!(frame, Frame::RequestPlain { .. });
                let in_range = first_block
                    .checked_add(u64::from(count))
                    .is_some_and(|end| end <= disk.geometry().block_count());
                if !in_range {
                    let msg = format!(
                        "request for blocks {first_block}+{count} outside the disk's {} blocks",
                        disk.geometry().block_count()
                    );
                    return Err(refuse(&mut send, msg).await);
                }
                // The count comes from the destination: read and compress a
                // bounded piece at a time, off the async threads, instead of
                // buffering the whole range.
                for (first_block, count) in
                    serve_chunks(first_block, count, disk.geometry().block_size())
                {
                    let req = FetchRequest {
                        first_block,
                        count,
                        priority,
                    };
                    let d = Arc::clone(&disk);
                    let (enc, pg, frames) = tokio::task::spawn_blocking(move || {
                        let mut buf = Vec::new();
                        let mut out = Vec::new();
                        let r = d.serve(&req, &mut buf, |block, content| {
                            let paged = match (&mut pages, content) {
                                (Some(p), BlockContent::Data(data)) if !plain => p.encode(data),
                                _ => None,
                            };
                            out.push(Frame::Block {
                                block,
                                payload: paged.unwrap_or_else(|| encoder.encode(content)),
                            })
                        });
                        (encoder, pages, r.map(|()| out))
                    })
                    .await
                    .map_err(StreamError::from)?;
                    encoder = enc;
                    pages = pg;
                    match frames {
                        Ok(frames) => {
                            let mut bytes = 0u64;
                            for f in &frames {
                                write(&mut send, f).await?;
                                if let Frame::Block { payload, .. } = f {
                                    bytes += payload.len() as u64;
                                }
                            }
                            inner.metrics.served(bytes);
                            if let Some(e) = current(&mut lock(&inner.exports), &name, id) {
                                e.status.wire_bytes += bytes;
                            }
                        }
                        Err(e) => return Err(refuse(&mut send, e.to_string()).await),
                    }
                }
            }
            Frame::Progress {
                local_blocks,
                total_blocks,
            } => {
                if let Some(e) = current(&mut lock(&inner.exports), &name, id) {
                    e.status.local_blocks = local_blocks;
                    e.status.total_blocks = total_blocks;
                }
            }
            Frame::Done { digest, written } => {
                if let Err(msg) =
                    confirm_and_release(&inner.exports, &name, id, peer, &disk, digest, written)
                        .await
                {
                    return Err(refuse(&mut send, msg).await);
                }
                write(&mut send, &Frame::Released).await?;
            }
            other => {
                let msg = format!("unexpected frame from the destination: {other:?}");
                return Err(refuse(&mut send, msg).await);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    use wanmig_storage::ReleasePolicy;

    use super::*;
    use crate::storage_relay::ExportStatus;

    #[test]
    fn large_requests_are_served_in_bounded_pieces_covering_the_range() {
        for (first, count, bs) in [
            (0u64, 16u32, 65536u32),
            (3, 1000, 65536),
            (7, 1, 4096),
            (0, 200_000, 4096),
            (5, 9, 8 << 20),
        ] {
            let pieces: Vec<_> = serve_chunks(first, count, bs).collect();
            let mut at = first;
            for &(f, n) in &pieces {
                assert_eq!(f, at, "pieces are contiguous");
                assert!(n >= 1);
                assert!(
                    u64::from(n) == 1 || u64::from(n) * u64::from(bs) <= SERVE_CHUNK_BYTES,
                    "piece of {n} blocks of {bs} bytes"
                );
                at += u64::from(n);
            }
            assert_eq!(at, first + u64::from(count), "the whole range is served");
        }
    }

    fn export(path: &std::path::Path, len: u64) -> Export {
        Export {
            id: 0,
            to: "b".into(),
            path: path.to_owned(),
            disk_len: len,
            policy: ReleasePolicy::Delete,
            released: false,
            release_gate: Arc::default(),
            started: None,
            status: ExportStatus {
                name: "vm".into(),
                path: path.to_owned(),
                disk_bytes: len,
                to: None,
                background: true,
                local_blocks: 0,
                total_blocks: 0,
                wire_bytes: 0,
                total_ms: None,
                released: false,
                verified: false,
                error: None,
            },
        }
    }

    /// Two sessions' `Done`s for the same disk at once (the destination
    /// reconnected while the first was being checked): the disk is deleted
    /// once and both are answered `Released`, not one of them with an error
    /// about a missing file that fails the finished copy.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_dones_release_once_and_both_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.img");
        let len = 4u64 << 20;
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(len).unwrap();
        for i in 0..16u64 {
            f.write_all_at(&[i as u8 + 1; 4096], i * 200_000).unwrap();
        }
        drop(f);
        let disk = Arc::new(SourceDisk::open(&path, len, 65536).unwrap());
        let written = PresenceBitmap::new(disk.geometry());
        let digest = disk.end_of_copy_digest(&written).unwrap();
        let exports = Mutex::new(HashMap::from([("vm".to_string(), export(&path, len))]));
        let (a, b) = tokio::join!(
            confirm_and_release(&exports, "vm", 0, "b", &disk, digest, written.to_bytes()),
            confirm_and_release(&exports, "vm", 0, "b", &disk, digest, written.to_bytes()),
        );
        assert_eq!(a, Ok(()));
        assert_eq!(b, Ok(()));
        assert!(!path.exists(), "released by deletion");
        let e = lock(&exports).get("vm").cloned().unwrap();
        assert!(e.released && e.status.verified && e.status.error.is_none());
    }

    /// An `Open` during a release in progress sees its outcome.
    #[tokio::test]
    async fn open_during_a_release_waits_for_its_outcome() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.img");
        let exports = Arc::new(Mutex::new(HashMap::from([(
            "vm".to_string(),
            export(&path, 1 << 20),
        )])));
        let gate = Arc::clone(&lock(&exports)["vm"].release_gate);
        let releasing = gate.lock().await;
        let e2 = Arc::clone(&exports);
        let open = tokio::spawn(async move { settled_export(&e2, "vm", "b").await });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        lock(&exports).get_mut("vm").unwrap().released = true;
        drop(releasing);
        let seen = open.await.unwrap().expect("still exported");
        assert!(
            seen.released,
            "the Open saw the export before the release ended"
        );
        assert!(settled_export(&exports, "other", "b").await.is_none());
        assert!(
            settled_export(&exports, "vm", "c").await.is_none(),
            "exported to b only"
        );
    }

    #[tokio::test]
    async fn a_wrong_digest_keeps_the_source_copy_and_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.img");
        let len = 1u64 << 20;
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(len).unwrap();
        f.write_all_at(b"data", 70_000).unwrap();
        drop(f);
        let disk = Arc::new(SourceDisk::open(&path, len, 65536).unwrap());
        let written = PresenceBitmap::new(disk.geometry());
        let exports = Mutex::new(HashMap::from([("vm".to_string(), export(&path, len))]));
        let err = confirm_and_release(&exports, "vm", 0, "b", &disk, [7; 32], written.to_bytes())
            .await
            .unwrap_err();
        assert!(err.contains("wanmig storage migrate"), "{err}");
        assert!(path.exists(), "the source copy is kept");
        let e = lock(&exports).get("vm").cloned().unwrap();
        assert!(!e.released && e.status.error.is_some());
    }
}
