//! Source side of the storage relay: answers `STORAGE` streams by serving
//! an exported disk's blocks, and releases the disk by policy once the
//! destination confirmed its copy is complete and durable and the
//! end-of-copy check ([`wanmig_storage::verify`]) passed. `Done` and `Open`
//! of an already released disk are answered with `Released` again, so a
//! `Released` lost with the link is not an error.

use std::sync::Arc;

use quinn::{RecvStream, SendStream};
use tokio::sync::mpsc;
use wanmig_storage::wire::{BlockContent, BlockEncoder};

use super::dedup::PageEncoder;
use wanmig_storage::{release_source, FetchRequest, PresenceBitmap, Priority, SourceDisk};

use super::frame::{read_frame, Frame, Lane, ReadFrameError};
use super::{lock, Inner};
use crate::peering::IncomingStream;

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

async fn write(send: &mut SendStream, f: &Frame) -> Result<(), String> {
    send.write_all(&f.encode())
        .await
        .map_err(|e| format!("writing to the destination: {e}"))
}

/// Checks the destination's end-of-copy digest against this disk.
fn verify(disk: &SourceDisk, digest: &[u8; 32], written: &[u8]) -> Result<(), String> {
    let written = PresenceBitmap::from_bytes(written, disk.geometry(), disk.path())
        .map_err(|e| format!("the destination's written-block set is unusable: {e}"))?;
    let hashes = disk.block_hashes().map_err(|e| e.to_string())?;
    let ours = wanmig_storage::verify::combine(disk.geometry(), &hashes, &written);
    if &ours == digest {
        Ok(())
    } else {
        Err(format!(
            "end-of-copy check failed: the destination's copy ({}) differs from the source disk ({}) in blocks the guest did not write there; the source copy is kept: remove the destination's copy and its .presence/.written files, then run `wanmig storage migrate` again",
            wanmig_storage::verify::hex(digest),
            wanmig_storage::verify::hex(&ours)
        ))
    }
}

async fn serve(
    inner: Arc<Inner>,
    peer: &str,
    mut send: SendStream,
    mut recv: RecvStream,
) -> Result<(), String> {
    let open = read_frame(&mut recv).await.map_err(|e| e.to_string())?;
    if let Frame::QuerySize(name) = &open {
        let len = lock(&inner.exports)
            .get(name)
            .filter(|e| !e.released)
            .map(|e| (e.disk_len, e.status.background));
        // The mode was for this migration only: the next one of the same
        // VM copies in the background unless asked otherwise again.
        lock(&inner.deferred).remove(name);
        let answer = match len {
            Some((len, background)) => Frame::Size { len, background },
            None => Frame::Error(format!("no disk '{name}' is exported at this site")),
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
    } = open
    else {
        let _ = write(&mut send, &Frame::Error("expected Open".into())).await;
        return Err("first frame was not Open".into());
    };
    if lane == Lane::OnDemand {
        // On-demand answers overtake background data on the connection.
        let _ = send.set_priority(10);
    }
    let export = lock(&inner.exports).get(&name).cloned();
    let Some(export) = export else {
        let msg = format!("no disk '{name}' is exported at this site");
        write(&mut send, &Frame::Error(msg.clone())).await?;
        return Err(msg);
    };
    if export.released {
        // The destination did not hear our `Released`: say it again.
        write(&mut send, &Frame::Released).await?;
        let _ = send.finish();
        return Ok(());
    }
    if let Some(e) = lock(&inner.exports).get_mut(&name) {
        e.status.to = Some(peer.to_string());
        e.started.get_or_insert_with(std::time::Instant::now);
    }
    let opened = if export.disk_len != disk_len {
        Err(format!(
            "the destination expects {disk_len} bytes but the exported disk has {}",
            export.disk_len
        ))
    } else {
        let path = export.path.clone();
        tokio::task::spawn_blocking(move || SourceDisk::open(&path, disk_len, block_size))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
    };
    let disk = match opened {
        Ok(d) => Arc::new(d),
        Err(msg) => {
            write(&mut send, &Frame::Error(msg.clone())).await?;
            return Err(msg);
        }
    };
    write(&mut send, &Frame::Holes(disk.hole_blocks())).await?;
    let mut encoder = BlockEncoder::new(inner.zstd_level).map_err(|e| e.to_string())?;
    // Page references against the destination's store (background lane).
    let mut pages = match inventory.map(|b| wanmig_codec::Inventory::from_bytes(&b)) {
        Some(Ok(inv)) => Some(PageEncoder::new(inv, inner.zstd_level).map_err(|e| e.to_string())?),
        Some(Err(e)) => {
            tracing::warn!(disk = %name, "the destination's inventory is unusable ({e}); sending without references");
            None
        }
        None => None,
    };
    let priority = match lane {
        Lane::OnDemand => Priority::OnDemand,
        Lane::Background => Priority::Background,
    };
    loop {
        let frame = match read_frame(&mut recv).await {
            Ok(f) => f,
            Err(ReadFrameError::Closed) => return Ok(()),
            Err(e) => return Err(e.to_string()),
        };
        match frame {
            Frame::Request { first_block, count } | Frame::RequestPlain { first_block, count } => {
                let plain = matches!(frame, Frame::RequestPlain { .. });
                let in_range = first_block
                    .checked_add(u64::from(count))
                    .is_some_and(|end| end <= disk.geometry().block_count());
                if !in_range {
                    let msg = format!(
                        "request for blocks {first_block}+{count} outside the disk's {} blocks",
                        disk.geometry().block_count()
                    );
                    write(&mut send, &Frame::Error(msg.clone())).await?;
                    return Err(msg);
                }
                let req = FetchRequest {
                    first_block,
                    count,
                    priority,
                };
                // Read and compress off the async threads; small requests
                // (≤ max_request_blocks) keep the batch bounded.
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
                .map_err(|e| e.to_string())?;
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
                        if let Some(e) = lock(&inner.exports).get_mut(&name) {
                            e.status.wire_bytes += bytes;
                        }
                    }
                    Err(e) => {
                        write(&mut send, &Frame::Error(e.to_string())).await?;
                        return Err(e.to_string());
                    }
                }
            }
            Frame::Progress {
                local_blocks,
                total_blocks,
            } => {
                if let Some(e) = lock(&inner.exports).get_mut(&name) {
                    e.status.local_blocks = local_blocks;
                    e.status.total_blocks = total_blocks;
                }
            }
            Frame::Done { digest, written } => {
                let export = lock(&inner.exports).get(&name).cloned();
                if let Some(export) = export.filter(|e| !e.released) {
                    let d = Arc::clone(&disk);
                    let checked =
                        tokio::task::spawn_blocking(move || verify(&d, &digest, &written))
                            .await
                            .map_err(|e| e.to_string())?;
                    if let Err(msg) = checked {
                        tracing::error!(disk = %name, %peer, "{msg}");
                        if let Some(e) = lock(&inner.exports).get_mut(&name) {
                            e.status.error = Some(msg.clone());
                        }
                        write(&mut send, &Frame::Error(msg.clone())).await?;
                        return Err(msg);
                    }
                    let path = export.path.clone();
                    let policy = export.policy;
                    let r = tokio::task::spawn_blocking(move || release_source(&path, policy))
                        .await
                        .map_err(|e| e.to_string())?;
                    if let Err(e) = r {
                        write(&mut send, &Frame::Error(e.to_string())).await?;
                        return Err(e.to_string());
                    }
                    if let Some(e) = lock(&inner.exports).get_mut(&name) {
                        e.released = true;
                        e.status.released = true;
                        e.status.verified = true;
                        e.status.error = None;
                        e.status.local_blocks = disk.geometry().block_count();
                        e.status.total_blocks = disk.geometry().block_count();
                        e.status.total_ms = e.started.map(|t| t.elapsed().as_millis() as u64);
                    }
                    tracing::info!(disk = %name, ?policy, "storage copy confirmed and verified by the destination; source copy released");
                }
                write(&mut send, &Frame::Released).await?;
            }
            other => {
                let msg = format!("unexpected frame from the destination: {other:?}");
                write(&mut send, &Frame::Error(msg.clone())).await?;
                return Err(msg);
            }
        }
    }
}
