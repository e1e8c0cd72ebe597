//! Source side of the storage relay: answers `STORAGE` streams by serving
//! an exported disk's blocks, and releases the disk by policy once the
//! destination confirmed its copy is complete and durable.

use std::sync::Arc;

use quinn::{RecvStream, SendStream};
use tokio::sync::mpsc;
use wanmig_storage::wire::BlockEncoder;
use wanmig_storage::{release_source, FetchRequest, Priority, SourceDisk};

use super::frame::{read_frame, Frame, Lane, ReadFrameError};
use super::{lock, Inner};
use crate::peering::IncomingStream;

pub(crate) async fn accept_loop(inner: Arc<Inner>, mut streams: mpsc::Receiver<IncomingStream>) {
    while let Some(s) = streams.recv().await {
        let inner = Arc::clone(&inner);
        tokio::spawn(async move {
            let peer = s.peer.clone();
            if let Err(e) = serve(inner, s.send, s.recv).await {
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

async fn serve(
    inner: Arc<Inner>,
    mut send: SendStream,
    mut recv: RecvStream,
) -> Result<(), String> {
    let open = read_frame(&mut recv).await.map_err(|e| e.to_string())?;
    if let Frame::QuerySize(name) = &open {
        let len = lock(&inner.exports)
            .get(name)
            .filter(|e| !e.released)
            .map(|e| e.disk_len);
        let answer = match len {
            Some(len) => Frame::Size(len),
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
    let opened = if export.released {
        Err("the disk was already released after a confirmed copy".to_string())
    } else if export.disk_len != disk_len {
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
            Frame::Request { first_block, count } => {
                let req = FetchRequest {
                    first_block,
                    count,
                    priority,
                };
                // Read and compress off the async threads; small requests
                // (≤ max_request_blocks) keep the batch bounded.
                let d = Arc::clone(&disk);
                let (enc, frames) = tokio::task::spawn_blocking(move || {
                    let mut buf = Vec::new();
                    let mut out = Vec::new();
                    let r = d.serve(&req, &mut buf, |block, content| {
                        out.push(Frame::Block {
                            block,
                            payload: encoder.encode(content),
                        })
                    });
                    (encoder, r.map(|()| out))
                })
                .await
                .map_err(|e| e.to_string())?;
                encoder = enc;
                match frames {
                    Ok(frames) => {
                        for f in &frames {
                            write(&mut send, f).await?;
                        }
                    }
                    Err(e) => {
                        write(&mut send, &Frame::Error(e.to_string())).await?;
                        return Err(e.to_string());
                    }
                }
            }
            Frame::Done => {
                let export = lock(&inner.exports).get(&name).cloned();
                if let Some(export) = export.filter(|e| !e.released) {
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
                    }
                    tracing::info!(disk = %name, ?policy, "storage copy confirmed by the destination; source copy released");
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
