//! Client of the local control API, used by `wanmig status` / `wanmig probe`
//! (and by tests): turns transport and HTTP failures into messages that say
//! what to do.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::StatusCode;

use crate::api_error::ApiError;
use crate::control::{ProbeRequest, StatusReport};
use crate::probe::ProbeReport;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no gateway answers on {addr}: {source} (is `wanmig gateway` running with control.listen = \"{addr}\"?)")]
    NotRunning {
        addr: SocketAddr,
        source: reqwest::Error,
    },
    #[error("the gateway on {addr} rejected the token{}: {message} (use the token file named by control.token_file in the gateway's config)", from.as_ref().map(|p| format!(" from {}", p.display())).unwrap_or_default())]
    Unauthorized {
        addr: SocketAddr,
        from: Option<PathBuf>,
        message: String,
    },
    #[error("the gateway on {addr} answered {status}: {message}")]
    Api {
        addr: SocketAddr,
        status: StatusCode,
        message: String,
    },
    #[error("talking to the gateway on {addr}: {source}")]
    Transport {
        addr: SocketAddr,
        source: reqwest::Error,
    },
    #[error(transparent)]
    Token(#[from] crate::control::TokenError),
    #[error("{addr} is not a loopback address: the control API listens on loopback only, and the token must not leave this host (use 127.0.0.1:PORT, or --config with the gateway's config file)")]
    NotLoopback { addr: SocketAddr },
    #[error("cannot set up the HTTP client: {0}")]
    Http(reqwest::Error),
}

/// A control API client bound to one gateway.
#[derive(Debug, Clone)]
pub struct ControlClient {
    addr: SocketAddr,
    token: String,
    token_file: Option<PathBuf>,
    http: reqwest::Client,
}

impl ControlClient {
    /// A client of the control API on `addr`, which must be a loopback
    /// address (the API is local-only, and the bearer token must not travel
    /// further). The client connects directly: `HTTP_PROXY` and its kin are
    /// ignored, so the token is never handed to a proxy.
    pub fn new(addr: SocketAddr, token: String) -> Result<Self, ClientError> {
        if !addr.ip().is_loopback() {
            return Err(ClientError::NotLoopback { addr });
        }
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .map_err(ClientError::Http)?;
        Ok(ControlClient {
            addr,
            token,
            token_file: None,
            http,
        })
    }

    /// A client that reads its token from `token_file`.
    pub fn with_token_file(addr: SocketAddr, token_file: &Path) -> Result<Self, ClientError> {
        if !addr.ip().is_loopback() {
            return Err(ClientError::NotLoopback { addr });
        }
        let token = crate::control::read_token(token_file)?;
        Ok(ControlClient {
            token_file: Some(token_file.to_path_buf()),
            ..ControlClient::new(addr, token)?
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub async fn status(&self) -> Result<StatusReport, ClientError> {
        let req = self
            .http
            .get(format!("http://{}/v1/status", self.addr))
            .timeout(Duration::from_secs(10));
        self.send(req).await
    }

    /// Runs a probe of `bytes` to `peer`; waits as long as the probe takes.
    pub async fn probe(&self, peer: &str, bytes: u64) -> Result<ProbeReport, ClientError> {
        let req = self
            .http
            .post(format!("http://{}/v1/probe", self.addr))
            .json(&ProbeRequest {
                peer: peer.to_string(),
                bytes,
            });
        self.send(req).await
    }

    /// `GET /v1/vms`: the VMs at this site.
    pub async fn vms(&self) -> Result<crate::migration::api::VmList, ClientError> {
        let req = self
            .http
            .get(format!("http://{}/v1/vms", self.addr))
            .timeout(Duration::from_secs(10));
        self.send(req).await
    }

    /// `POST /v1/vms`: boots a VM at this site.
    pub async fn start_vm(
        &self,
        name: &str,
        config: &wanmig_migration::machine::VmConfig,
    ) -> Result<Option<crate::vms::VmInfo>, ClientError> {
        let req = self.http.post(format!("http://{}/v1/vms", self.addr)).json(
            &crate::migration::api::StartVmRequest {
                name: name.to_string(),
                config: config.clone(),
            },
        );
        self.send(req).await
    }

    /// `POST /v1/migrations`: starts a migration; returns its id.
    pub async fn migrate(
        &self,
        body: &crate::migration::api::MigrateBody,
    ) -> Result<crate::migration::api::MigrationStarted, ClientError> {
        let req = self
            .http
            .post(format!("http://{}/v1/migrations", self.addr))
            .json(body)
            .timeout(Duration::from_secs(30));
        self.send(req).await
    }

    /// `GET /v1/migrations`: in flight and finished.
    pub async fn migrations(&self) -> Result<crate::migration::api::MigrationList, ClientError> {
        let req = self
            .http
            .get(format!("http://{}/v1/migrations", self.addr))
            .timeout(Duration::from_secs(10));
        self.send(req).await
    }

    /// `GET /v1/migrations/{id}`.
    pub async fn migration(
        &self,
        id: &str,
    ) -> Result<crate::migration::MigrationRecord, ClientError> {
        let req = self
            .http
            .get(format!("http://{}/v1/migrations/{id}", self.addr))
            .timeout(Duration::from_secs(10));
        self.send(req).await
    }

    /// `POST /v1/migrations/{id}/settle`: resumes or discards the VM this
    /// gateway holds parked for migration `id`.
    pub async fn settle_migration(
        &self,
        id: &str,
        decision: crate::migration::Decision,
    ) -> Result<crate::migration::MigrationRecord, ClientError> {
        let req = self
            .http
            .post(format!("http://{}/v1/migrations/{id}/settle", self.addr))
            .json(&crate::migration::api::SettleBody { decision })
            .timeout(Duration::from_secs(60));
        self.send(req).await
    }

    /// `POST /v1/migrations?no_storage=true`: starts a migration that moves
    /// compute only (the disk stays at this site, read on demand).
    pub async fn migrate_compute_only(
        &self,
        body: &crate::migration::api::MigrateBody,
    ) -> Result<crate::migration::api::MigrationStarted, ClientError> {
        let req = self
            .http
            .post(format!(
                "http://{}/v1/migrations?no_storage=true",
                self.addr
            ))
            .json(body)
            .timeout(Duration::from_secs(30));
        self.send(req).await
    }

    /// `GET /v1/storage/{vm}`: the VM's disk copy as this site sees it.
    pub async fn storage(
        &self,
        vm: &str,
    ) -> Result<crate::migration::api::StorageStatus, ClientError> {
        let req = self
            .http
            .get(format!("http://{}/v1/storage/{vm}", self.addr))
            .timeout(Duration::from_secs(10));
        self.send(req).await
    }

    /// `GET /v1/storage`: disks copied to and from this site.
    pub async fn storage_list(&self) -> Result<crate::migration::api::StorageList, ClientError> {
        let req = self
            .http
            .get(format!("http://{}/v1/storage", self.addr))
            .timeout(Duration::from_secs(10));
        self.send(req).await
    }

    /// `POST /v1/storage/{vm}/migrate`: starts the background copy of a VM
    /// that runs here on a remote disk.
    pub async fn storage_migrate(
        &self,
        vm: &str,
    ) -> Result<crate::migration::api::StorageStatus, ClientError> {
        let req = self
            .http
            .post(format!("http://{}/v1/storage/{vm}/migrate", self.addr))
            .timeout(Duration::from_secs(30));
        self.send(req).await
    }

    /// `POST /v1/qemu/accept`: registers a destination QEMU.
    pub async fn qemu_accept(
        &self,
        req: &crate::qemu::api::AcceptRequest,
    ) -> Result<crate::qemu::api::AcceptRequest, ClientError> {
        let req = self
            .http
            .post(format!("http://{}/v1/qemu/accept", self.addr))
            .json(req)
            .timeout(Duration::from_secs(30));
        self.send(req).await
    }

    /// `POST /v1/qemu/migrations`: starts moving a source QEMU.
    pub async fn qemu_migrate(
        &self,
        req: &crate::qemu::MoveRequest,
    ) -> Result<crate::qemu::MoveStatus, ClientError> {
        let req = self
            .http
            .post(format!("http://{}/v1/qemu/migrations", self.addr))
            .json(req)
            .timeout(Duration::from_secs(60));
        self.send(req).await
    }

    /// `GET /v1/qemu/migrations/{name}`.
    pub async fn qemu_migration(&self, name: &str) -> Result<crate::qemu::MoveStatus, ClientError> {
        let req = self
            .http
            .get(format!("http://{}/v1/qemu/migrations/{name}", self.addr))
            .timeout(Duration::from_secs(10));
        self.send(req).await
    }

    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let addr = self.addr;
        let resp = req
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|source| {
                if source.is_connect() {
                    ClientError::NotRunning { addr, source }
                } else {
                    ClientError::Transport { addr, source }
                }
            })?;
        let status = resp.status();
        if status.is_success() {
            return resp
                .json()
                .await
                .map_err(|source| ClientError::Transport { addr, source });
        }
        let message = match resp.json::<ApiError>().await {
            Ok(e) => e.error,
            Err(_) => status.canonical_reason().unwrap_or("error").to_string(),
        };
        if status == StatusCode::UNAUTHORIZED {
            return Err(ClientError::Unauthorized {
                addr,
                from: self.token_file.clone(),
                message,
            });
        }
        Err(ClientError::Api {
            addr,
            status,
            message,
        })
    }
}
