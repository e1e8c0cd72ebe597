//! The runtime control endpoint: a line protocol on a loopback TCP port
//! with which tests and operators cut, restore and read the counters of a
//! running link.
//!
//! Each request is one line: `cut`, `restore` or `stats`. Each answer is one
//! line: `ok`, the counters as JSON, or `error: <what to do>`.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::error::NetemError;

/// What the control endpoint can do to a running link.
pub trait LinkControl: Send + Sync + 'static {
    fn cut(&self);
    fn restore(&self);
    /// The counters, as one line of JSON.
    fn stats_json(&self) -> String;
}

impl LinkControl for crate::relay::RelayHandle {
    fn cut(&self) {
        crate::relay::RelayHandle::cut(self)
    }
    fn restore(&self) {
        crate::relay::RelayHandle::restore(self)
    }
    fn stats_json(&self) -> String {
        serde_json::to_string(&self.stats()).unwrap_or_else(|e| format!("error: {e}"))
    }
}

/// Longest request line accepted.
const MAX_LINE: usize = 256;

/// Answers one request line (the protocol without the socket).
pub fn handle_line(target: &dyn LinkControl, line: &str) -> String {
    match line.trim() {
        "cut" => {
            target.cut();
            "ok".into()
        }
        "restore" => {
            target.restore();
            "ok".into()
        }
        "stats" => target.stats_json(),
        other => format!("error: unknown command {other:?}; send cut, restore or stats"),
    }
}

/// A running control endpoint; dropping it stops it.
#[derive(Debug)]
pub struct ControlServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl ControlServer {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves the control protocol on `addr`, which must be a loopback address
/// (the endpoint has no authentication).
pub async fn serve(
    addr: SocketAddr,
    target: Arc<dyn LinkControl>,
) -> Result<ControlServer, NetemError> {
    if !addr.ip().is_loopback() {
        return Err(NetemError::InvalidArg {
            flag: "--control".into(),
            value: addr.to_string(),
            reason: "the control endpoint is unauthenticated and must listen on loopback (e.g. 127.0.0.1:7878)".into(),
        });
    }
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| NetemError::io(format!("binding the control endpoint on {addr}"), e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| NetemError::io("reading the control endpoint's address", e))?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(serve_conn(conn, target.clone()));
        }
    });
    Ok(ControlServer { addr, task })
}

async fn serve_conn(conn: TcpStream, target: Arc<dyn LinkControl>) {
    let (rd, mut wr) = conn.into_split();
    let mut lines = BufReader::new(rd).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let answer = if line.len() > MAX_LINE {
            "error: request too long".to_string()
        } else {
            handle_line(&*target, &line)
        };
        if wr
            .write_all(format!("{answer}\n").as_bytes())
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Sends one request to a control endpoint and returns its answer; an
/// `error: ...` answer becomes an `Err`.
pub async fn request(addr: SocketAddr, command: &str) -> Result<String, NetemError> {
    let conn = TcpStream::connect(addr).await.map_err(|e| {
        NetemError::Control(format!(
            "cannot connect to {addr}: {e} (is `wanmig netem ... --control {addr}` running?)"
        ))
    })?;
    let (rd, mut wr) = conn.into_split();
    wr.write_all(format!("{command}\n").as_bytes())
        .await
        .map_err(|e| NetemError::Control(format!("sending to {addr}: {e}")))?;
    let mut line = String::new();
    BufReader::new(rd)
        .read_line(&mut line)
        .await
        .map_err(|e| NetemError::Control(format!("reading the answer from {addr}: {e}")))?;
    let line = line.trim().to_string();
    match line.strip_prefix("error: ") {
        Some(e) => Err(NetemError::Control(e.to_string())),
        None if line.is_empty() => Err(NetemError::Control(format!(
            "{addr} closed without answering"
        ))),
        None => Ok(line),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[derive(Default)]
    struct Fake(AtomicBool);
    impl LinkControl for Fake {
        fn cut(&self) {
            self.0.store(true, Ordering::SeqCst)
        }
        fn restore(&self) {
            self.0.store(false, Ordering::SeqCst)
        }
        fn stats_json(&self) -> String {
            format!("{{\"cut\":{}}}", self.0.load(Ordering::SeqCst))
        }
    }

    #[test]
    fn lines_drive_the_target() {
        let f = Fake::default();
        assert_eq!(handle_line(&f, "cut\r"), "ok");
        assert_eq!(handle_line(&f, "stats"), "{\"cut\":true}");
        assert_eq!(handle_line(&f, " restore "), "ok");
        assert_eq!(handle_line(&f, "stats"), "{\"cut\":false}");
        assert!(handle_line(&f, "explode").starts_with("error: unknown command"));
    }

    #[tokio::test]
    async fn endpoint_answers_over_tcp_and_refuses_non_loopback() {
        let f: Arc<Fake> = Arc::default();
        let srv = serve("127.0.0.1:0".parse().unwrap(), f.clone())
            .await
            .unwrap();
        assert_eq!(request(srv.local_addr(), "cut").await.unwrap(), "ok");
        assert!(f.0.load(Ordering::SeqCst));
        let e = request(srv.local_addr(), "nope").await.unwrap_err();
        assert!(e.to_string().contains("unknown command"), "{e}");
        let e = serve("0.0.0.0:0".parse().unwrap(), f).await.unwrap_err();
        assert!(e.to_string().contains("--control"), "{e}");
    }
}
