//! The shim's local control channel: one JSON request per line on a unix
//! socket, one JSON response line back. It lets an operator (or the
//! gateway, or a test) ask a running `wanmig-vmm` for its status and tell it
//! to migrate its VM to an address. The requests and responses are
//! `wanmig_migration::admin`'s plain data; this module serves and sends
//! them over the socket. Also the address syntax of migration endpoints
//! (`unix:PATH`, `tcp:HOST:PORT`).

use crate::migration::{migrate_to, MigrateOptions, MigrationStream};
use crate::vm::Vm;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wanmig_migration::admin::Status;
pub use wanmig_migration::admin::{AdminRequest, AdminResponse};

/// Where a migration goes to or comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Endpoint {
    /// A unix stream socket path.
    Unix(PathBuf),
    /// A TCP address (`host:port`).
    Tcp(String),
}

impl std::str::FromStr for Endpoint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(p) = s.strip_prefix("unix:") {
            Ok(Endpoint::Unix(p.into()))
        } else if let Some(a) = s.strip_prefix("tcp:") {
            Ok(Endpoint::Tcp(a.into()))
        } else if s.contains('/') {
            Ok(Endpoint::Unix(s.into()))
        } else {
            Err(format!(
                "`{s}` is not a migration address; use unix:/path/to.sock or tcp:host:port"
            ))
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
            Endpoint::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

impl Endpoint {
    /// Connects to the endpoint.
    pub fn connect(&self) -> std::io::Result<Box<dyn MigrationStream>> {
        Ok(match self {
            Endpoint::Unix(p) => Box::new(UnixStream::connect(p)?),
            Endpoint::Tcp(a) => Box::new(std::net::TcpStream::connect(a)?),
        })
    }

    /// Listens on the endpoint and accepts one connection.
    pub fn accept_one(&self) -> std::io::Result<Box<dyn MigrationStream>> {
        Ok(match self {
            Endpoint::Unix(p) => {
                let l = bind_private(p)?;
                let (s, _) = l.accept()?;
                let _ = std::fs::remove_file(p);
                Box::new(s)
            }
            Endpoint::Tcp(a) => {
                let l = std::net::TcpListener::bind(a)?;
                Box::new(l.accept()?.0)
            }
        })
    }
}

impl MigrationStream for Box<dyn MigrationStream> {
    fn set_timeouts(&self, read: Option<Duration>, write: Option<Duration>) -> std::io::Result<()> {
        (**self).set_timeouts(read, write)
    }
}

/// Answers one request against `vm`.
pub fn handle(vm: &mut Vm, req: AdminRequest) -> AdminResponse {
    match req {
        AdminRequest::Status => {
            let r = vm.reports();
            let latest = r.latest(wanmig_guest_abi::REPORT_MEM_ITERATION);
            AdminResponse::Status(Status {
                exit: vm.exit_status(),
                mem_iteration: latest.map(|l| l.values[0]).unwrap_or(0),
                mem_digest: latest.map(|l| l.values[1]).unwrap_or(0),
                reports: r.total(),
                disk: r
                    .latest(wanmig_guest_abi::REPORT_DISK_ITERATION)
                    .map(|l| l.values),
                net: r
                    .latest(wanmig_guest_abi::REPORT_NET_STATUS)
                    .map(|l| l.values),
            })
        }
        AdminRequest::Samples => AdminResponse::Samples {
            samples: vm.reports().mem_samples(),
        },
        AdminRequest::Migrate { to, planner } => {
            let running = vm.exit_status().is_none();
            let endpoint: Endpoint = match to.parse() {
                Ok(e) => e,
                Err(message) => {
                    return AdminResponse::Error {
                        message,
                        vm_running_here: running,
                    }
                }
            };
            let mut stream = match endpoint.connect() {
                Ok(s) => s,
                Err(e) => {
                    return AdminResponse::Error {
                        message: format!("cannot connect to {endpoint}: {e}"),
                        vm_running_here: running,
                    }
                }
            };
            let opts = MigrateOptions {
                planner: planner.unwrap_or_default(),
                ..Default::default()
            };
            match migrate_to(vm, &mut stream, &opts) {
                Ok(report) => AdminResponse::Migrated(Box::new(report)),
                Err(e) if !e.vm_kept_at_source() => AdminResponse::HandedOver {
                    message: match e {
                        crate::migration::MigrationError::HandoverUnconfirmed(why) => why,
                        other => other.to_string(),
                    },
                },
                Err(e) => AdminResponse::Error {
                    vm_running_here: e.vm_kept_at_source() && vm.exit_status().is_none(),
                    message: e.to_string(),
                },
            }
        }
    }
}

/// Binds a Unix socket at `path` that only this user can connect to
/// (mode 0600; connecting needs write permission on the socket), whatever
/// the process's umask. The mode is set before anything is accepted.
pub fn bind_private(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves the control socket at `path` for `vm` until the listener fails.
/// Each connection may send several requests, one per line. After the
/// answer to a successful migration has been written, `migrated` is
/// signalled (so the process can exit without cutting that answer off).
pub fn serve(
    path: &Path,
    vm: Arc<Mutex<Vm>>,
    migrated: std::sync::mpsc::Sender<()>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let _ = std::fs::remove_file(path);
    let listener = bind_private(path)?;
    std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let vm = vm.clone();
                let migrated = migrated.clone();
                let _ = std::thread::Builder::new()
                    .name("admin-conn".into())
                    .spawn(move || {
                        let Ok(mut out) = conn.try_clone() else {
                            return;
                        };
                        for line in BufReader::new(conn).lines() {
                            let Ok(line) = line else { return };
                            if line.trim().is_empty() {
                                continue;
                            }
                            let resp = match serde_json::from_str::<AdminRequest>(&line) {
                                Ok(req) => handle(&mut crate::vcpu::lock(&vm), req),
                                Err(e) => AdminResponse::Error {
                                    message: format!(
                                        "bad request: {e}; send e.g. {{\"cmd\":\"status\"}}"
                                    ),
                                    vm_running_here: true,
                                },
                            };
                            let mut text = serde_json::to_string(&resp).unwrap_or_default();
                            text.push('\n');
                            let written = out.write_all(text.as_bytes());
                            if matches!(
                                resp,
                                AdminResponse::Migrated(_) | AdminResponse::HandedOver { .. }
                            ) {
                                let _ = migrated.send(());
                            }
                            if written.is_err() {
                                return;
                            }
                        }
                    });
            }
        })
}

/// Sends one request to the control socket at `path` and returns the
/// response.
pub fn request(path: &Path, req: &AdminRequest) -> std::io::Result<AdminResponse> {
    request_timeout(path, req, None)
}

/// [`request`], giving up (with `TimedOut`/`WouldBlock`) when the answer
/// takes longer than `timeout`: a shim busy migrating answers nothing else
/// until the migration ends, and a caller polling status must not hang.
pub fn request_timeout(
    path: &Path,
    req: &AdminRequest,
    timeout: Option<Duration>,
) -> std::io::Result<AdminResponse> {
    let mut s = UnixStream::connect(path)?;
    s.set_read_timeout(timeout)?;
    s.set_write_timeout(timeout)?;
    let mut line = serde_json::to_string(req).map_err(std::io::Error::other)?;
    line.push('\n');
    s.write_all(line.as_bytes())?;
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer)?;
    serde_json::from_str(&answer)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    #[test]
    fn sockets_are_private_whatever_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("admin.sock");
        // The default umask (022) would leave the socket 0755: anyone on
        // the host could drive the VM.
        let _l = super::bind_private(&p).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    use super::*;

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            "unix:/tmp/a".parse::<Endpoint>(),
            Ok(Endpoint::Unix("/tmp/a".into()))
        );
        assert_eq!(
            "/tmp/a".parse::<Endpoint>(),
            Ok(Endpoint::Unix("/tmp/a".into()))
        );
        assert_eq!(
            "tcp:127.0.0.1:9".parse::<Endpoint>(),
            Ok(Endpoint::Tcp("127.0.0.1:9".into()))
        );
        assert!("nowhere".parse::<Endpoint>().is_err());
    }

    #[test]
    fn requests_are_json_lines() {
        let r: AdminRequest = serde_json::from_str(r#"{"cmd":"migrate","to":"unix:/x"}"#).unwrap();
        assert_eq!(
            r,
            AdminRequest::Migrate {
                to: "unix:/x".into(),
                planner: None
            }
        );
        let s: AdminRequest = serde_json::from_str(r#"{"cmd":"status"}"#).unwrap();
        assert_eq!(s, AdminRequest::Status);
    }
}
