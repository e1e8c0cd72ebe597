//! Assembles one site's gateway from its config: loads the TLS material,
//! binds the UDP socket, starts the peering, the probe responder, the
//! metrics endpoint and the control API; [`GatewayHandle`] controls it.

use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::GatewayConfig;
use crate::config::VmHostKind;
use crate::control;
use crate::metrics::Metrics;
use crate::migration::metrics::MigrationMetrics;
use crate::migration::MigrationService;
use crate::overlay_service::{self, OverlayHandle};
use crate::peering::{Peering, StreamKind};
use crate::tls::{self, Identity};
use crate::vms::{ProcessHost, VmFiles, VmHost, VmHosting};
use crate::{probe, GatewayError};

/// UDP socket buffers: a 250 Mbit/s × 100 ms link bursts several MB.
const UDP_BUFFER: usize = 8 << 20;

/// Binds the QUIC UDP socket with enlarged kernel buffers (capped by
/// net.core.{r,w}mem_max).
pub fn bind_udp(addr: SocketAddr) -> Result<std::net::UdpSocket, GatewayError> {
    let err = |source| GatewayError::Bind { addr, source };
    let domain = socket2::Domain::for_address(addr);
    let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))
        .map_err(err)?;
    // Best effort: the kernel caps these, and a smaller buffer still works.
    let _ = s.set_recv_buffer_size(UDP_BUFFER);
    let _ = s.set_send_buffer_size(UDP_BUFFER);
    s.bind(&addr.into()).map_err(err)?;
    s.set_nonblocking(true).map_err(err)?;
    Ok(s.into())
}

pub struct Gateway;

impl Gateway {
    /// Starts a gateway listening on `config.listen`.
    pub async fn start(config: GatewayConfig) -> Result<GatewayHandle, GatewayError> {
        let socket = bind_udp(config.listen)?;
        Self::start_on(config, socket).await
    }

    /// Starts a gateway on an already bound UDP socket (tests bind first to
    /// learn the port before writing the peers' configs).
    pub async fn start_on(
        config: GatewayConfig,
        socket: std::net::UdpSocket,
    ) -> Result<GatewayHandle, GatewayError> {
        let identity = Identity::load(&config.tls)?;
        identity.check_site(&config.site, &config.tls.cert)?;
        let roots = tls::load_roots(&config.tls.ca)?;
        let peering = Peering::start(&config, &identity, &roots, socket)?;
        let (stop, _) = watch::channel(false);
        let mut tasks = Vec::new();

        let probes = peering.subscribe_streams(StreamKind::Probe, 16)?;
        tasks.push(tokio::spawn(probe::serve(probes)));

        // The overlay's metrics live on their own registry (same `site`
        // label), rendered after the peering metrics on `/metrics`.
        let overlay_registry = prometheus::Registry::new_custom(
            None,
            Some(std::collections::HashMap::from([(
                "site".to_string(),
                config.site.clone(),
            )])),
        )
        .map_err(crate::overlay_service::OverlayError::from)?;
        let (overlay, overlay_task) = overlay_service::start(
            peering.clone(),
            &config.overlay,
            &config.overlay_taps,
            &overlay_registry,
        )
        .await?;
        tasks.push(overlay_task);

        // Migration: VMs hosted in this process, the relay, its metrics on
        // their own registry (rendered like the overlay's).
        let migration_registry = prometheus::Registry::new_custom(
            None,
            Some(std::collections::HashMap::from([(
                "site".to_string(),
                config.site.clone(),
            )])),
        )
        .map_err(crate::metrics::MetricsError::from)?;
        let migration_metrics = Arc::new(
            MigrationMetrics::register(&migration_registry)
                .map_err(crate::metrics::MetricsError::from)?,
        );
        // VMs run in this process, or (`[vms] host = "process"`) one
        // wanmig-vmm process each, re-adopted from `[vms] dir` if a previous
        // gateway left them running.
        let files = VmFiles::new(config.vms.image_dirs.clone(), config.vms.disk_dirs.clone());
        let vm_host = Arc::new(VmHost::with_files(files.clone()));
        vm_host.attach_overlay(overlay.clone());
        let process_host = match config.vms.host {
            VmHostKind::InProcess => None,
            VmHostKind::Process => {
                let dir = config.vms.dir.clone();
                let vmm = config.vms.vmm.clone();
                let host =
                    tokio::task::spawn_blocking(move || ProcessHost::open(&dir, vmm.as_deref()))
                        .await?
                        .map_err(|e| GatewayError::VmHost {
                            path: config.origin.clone(),
                            source: Box::new(e),
                        })?;
                Some(Arc::new(host.with_files(files)))
            }
        };
        let hosting: Arc<dyn VmHosting> = match &process_host {
            Some(p) => p.clone(),
            None => vm_host.clone(),
        };
        let store_lock = match config.migration.store_dir.clone() {
            Some(root) => {
                let checked = root.clone();
                let lock = tokio::task::spawn_blocking(move || {
                    crate::migration::stores::prepare_root(&checked)
                })
                .await?
                .map_err(|source| GatewayError::StoreDir {
                    config: config.origin.clone(),
                    path: root,
                    source,
                })?;
                Some(lock)
            }
            None => None,
        };
        let (migration, migration_task) = MigrationService::start(
            peering.clone(),
            hosting,
            config.migration.clone(),
            Some(migration_metrics),
        )?;
        migration.set_max_mem_size(config.vms.max_mem_size);
        tasks.push(migration_task);
        // Follow-on storage migration: serves exported disks, imports them;
        // a VM's disk follows it when it migrates.
        let storage = crate::storage_relay::StorageRelay::start(peering.clone(), 3)?;
        storage
            .metrics()
            .register(&migration_registry)
            .map_err(crate::metrics::MetricsError::from)?;
        storage.use_page_store(migration.stores().clone());
        storage.set_max_disk_len(config.storage.max_disk_len);
        vm_host.attach_storage(storage.clone(), config.storage.clone());
        // QEMU migrations: their pages share the page stores above.
        let (qemu, qemu_task) = crate::qemu::QemuService::start(
            peering.clone(),
            migration.stores().clone(),
            config.migration.encoder.clone(),
            config.migration.scope.clone(),
            config.migration.open_timeout,
        )?;
        tasks.push(qemu_task);

        let mut metrics_addr = None;
        if let Some(m) = &config.metrics {
            let metrics = Arc::new(Metrics::new(&config.site)?);
            let (p, mm) = (peering.clone(), metrics.clone());
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    mm.observe(&p.peer_states(), &p.refusals());
                }
            }));
            let (p, mm) = (peering.clone(), metrics);
            let app = axum::Router::new().route(
                "/metrics",
                get(move || async move {
                    mm.observe(&p.peer_states(), &p.refusals());
                    let mut text = mm.render();
                    let mut buf = Vec::new();
                    let _ = prometheus::Encoder::encode(
                        &prometheus::TextEncoder::new(),
                        &overlay_registry.gather(),
                        &mut buf,
                    );
                    let _ = prometheus::Encoder::encode(
                        &prometheus::TextEncoder::new(),
                        &migration_registry.gather(),
                        &mut buf,
                    );
                    text.push_str(&String::from_utf8_lossy(&buf));
                    text
                }),
            );
            let (addr, task) =
                serve_http("metrics.listen", m.listen, app, stop.subscribe()).await?;
            metrics_addr = Some(addr);
            tasks.push(task);
        }

        let mut control_addr = None;
        if let Some(c) = &config.control {
            let token = control::load_or_create_token(&c.token_file)?;
            let app = control::router(peering.clone(), token.clone())
                .merge(control::overlay_router(
                    peering.clone(),
                    overlay.clone(),
                    token.clone(),
                ))
                .merge(control::migration_router(migration.clone(), token.clone()))
                .merge(control::qemu_router(peering.clone(), qemu.clone(), token));
            let (addr, task) =
                serve_http("control.listen", c.listen, app, stop.subscribe()).await?;
            control_addr = Some(addr);
            tasks.push(task);
        }

        Ok(GatewayHandle {
            peering,
            overlay,
            migration,
            vm_host,
            process_host,
            storage,
            qemu,
            config,
            metrics_addr,
            control_addr,
            stop,
            tasks,
            _store_lock: store_lock,
        })
    }
}

async fn serve_http(
    key: &'static str,
    addr: SocketAddr,
    app: axum::Router,
    mut stop: watch::Receiver<bool>,
) -> Result<(SocketAddr, JoinHandle<()>), GatewayError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| GatewayError::Listen { key, addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| GatewayError::Listen { key, addr, source })?;
    let task = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!("{key} server on {local} failed: {e}");
        }
    });
    Ok((local, task))
}

/// A running gateway. Derefs to its [`Peering`] (peer states, connections,
/// stream and datagram handlers).
pub struct GatewayHandle {
    peering: Peering,
    overlay: OverlayHandle,
    migration: MigrationService,
    vm_host: Arc<VmHost>,
    process_host: Option<Arc<ProcessHost>>,
    storage: crate::storage_relay::StorageRelay,
    qemu: crate::qemu::QemuService,
    config: GatewayConfig,
    metrics_addr: Option<SocketAddr>,
    control_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// Holds the page-store root for this gateway while it runs.
    _store_lock: Option<std::fs::File>,
}

impl Deref for GatewayHandle {
    type Target = Peering;
    fn deref(&self) -> &Peering {
        &self.peering
    }
}

impl GatewayHandle {
    pub fn peering(&self) -> &Peering {
        &self.peering
    }

    /// The L2 overlay: attach ports (`attach_port`, `attach_tap`,
    /// `attach_frame_channels`), read MAC tables and counters.
    pub fn overlay(&self) -> &OverlayHandle {
        &self.overlay
    }

    /// Follow-on storage migration: export disks, import them from peers.
    pub fn storage(&self) -> &crate::storage_relay::StorageRelay {
        &self.storage
    }

    /// Live migration: start migrations, read their records.
    pub fn migration(&self) -> &MigrationService {
        &self.migration
    }

    /// QEMU migrations through this gateway.
    pub fn qemu(&self) -> &crate::qemu::QemuService {
        &self.qemu
    }

    /// The VMs this gateway hosts in-process (none with `[vms] host =
    /// "process"`).
    pub fn vm_host(&self) -> &Arc<VmHost> {
        &self.vm_host
    }

    /// The VMs this gateway hosts in wanmig-vmm processes, with `[vms] host
    /// = "process"`.
    pub fn process_host(&self) -> Option<&Arc<ProcessHost>> {
        self.process_host.as_ref()
    }

    pub fn config(&self) -> &GatewayConfig {
        &self.config
    }

    /// Where `/metrics` is served (the bound address, also for port 0).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Where the control API is served.
    pub fn control_addr(&self) -> Option<SocketAddr> {
        self.control_addr
    }

    /// Stops everything: peer connections are closed, servers stop.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        self.peering.shutdown().await;
        for t in self.tasks {
            t.abort();
            let _ = t.await;
        }
    }
}
