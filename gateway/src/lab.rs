//! A local multi-site deployment on loopback: N gateways with a fresh
//! deployment PKI in a temporary directory, optionally with a WAN emulator
//! relay ([`wanmig_netem::UdpRelay`]) on every peer link. `wanmig demo`, the
//! end-to-end tests and the scenario benchmarks all build their sites with
//! it, so they exercise exactly the configuration path an operator uses
//! (config files on disk, loaded and validated by [`GatewayConfig::load`]).
//!
//! [`MeshBuilder::prepare`] writes certificates and configs, binds the
//! gateways' UDP sockets (ephemeral ports) and starts the relays; a caller
//! may then edit the files (add an overlay segment, a foreign CA, a wrong
//! name) before [`PreparedMesh::start`] starts the gateways from them.
//!
//! Errors are `anyhow`: the lab serves only the edges (the demo command,
//! tests, benchmarks). Accessors that take a site name panic on a name the
//! mesh does not have — that is a bug in the caller, not an operational
//! condition.

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use wanmig_netem::{LinkParams, RelayConfig, RelayHandle, UdpRelay};

use crate::config::GatewayConfig;
use crate::control_client::ControlClient;
use crate::{certs, gateway::bind_udp, Gateway, GatewayHandle};

/// The emulated path of every peer link (dialer → acceptor is `forward`).
#[derive(Debug, Clone)]
pub struct Link {
    pub forward: LinkParams,
    pub reverse: LinkParams,
}

impl Link {
    /// A symmetric WAN path.
    pub fn wan(rtt: Duration, rate_bps: u64) -> Self {
        let p = LinkParams::wan(rtt, rate_bps);
        Link {
            forward: p.clone(),
            reverse: p,
        }
    }
}

/// How to build the mesh.
#[derive(Debug, Clone)]
pub struct MeshBuilder {
    sites: Vec<String>,
    link: Option<Link>,
    transport: String,
    extra: String,
    peer_extra: String,
    bandwidth_mbit: f64,
    rtt: Duration,
}

impl MeshBuilder {
    /// Sites `site-a`, `site-b`, … (`n` of them), directly connected.
    pub fn new(n: usize) -> Self {
        MeshBuilder {
            sites: (0..n).map(|i| format!("site-{}", (b'a' + i as u8) as char)).collect(),
            link: None,
            transport: "idle_timeout = \"3s\"\nkeep_alive = \"500ms\"\nreconnect_initial = \"100ms\"\nreconnect_max = \"1s\"\n".into(),
            extra: String::new(),
            peer_extra: String::new(),
            bandwidth_mbit: 1000.0,
            rtt: Duration::from_millis(10),
        }
    }

    /// TOML appended to every site's config (e.g. an `[overlay]` segment or
    /// a `[migration]` section); `{site}` in it is replaced by the site name.
    pub fn extra_config(mut self, toml: &str) -> Self {
        self.extra.push_str(toml);
        self.extra.push('\n');
        self
    }

    /// TOML keys added to every `[[peers]]` entry (e.g. `scopes = [...]`);
    /// `{site}` is replaced by the site whose config it is, `{peer}` by
    /// the peer's name.
    pub fn peer_config(mut self, toml: &str) -> Self {
        self.peer_extra.push_str(toml);
        self.peer_extra.push('\n');
        self
    }

    /// Put a WAN emulator relay on every peer link.
    pub fn link(mut self, link: Link) -> Self {
        self.link = Some(link);
        self
    }

    /// Replace the `[transport]` section body.
    pub fn transport(mut self, toml_body: &str) -> Self {
        self.transport = toml_body.to_string();
        self
    }

    /// A symmetric emulated WAN on every peer link, with link hints that
    /// match it (so the gateways size their windows for the link they get).
    pub fn wan(self, rtt: Duration, rate_bps: u64) -> Self {
        self.link(Link::wan(rtt, rate_bps))
            .hints(rate_bps as f64 / 1e6, rtt)
    }

    /// Link hints written into every peer entry.
    pub fn hints(mut self, bandwidth_mbit: f64, rtt: Duration) -> Self {
        self.bandwidth_mbit = bandwidth_mbit;
        self.rtt = rtt;
        self
    }

    /// Writes PKI and configs, binds sockets, starts relays.
    pub async fn prepare(self) -> Result<PreparedMesh> {
        let dir = tempfile::tempdir().context("creating the mesh tempdir")?;
        let cert_dir = dir.path().join("certs");
        certs::create_deployment(&cert_dir, &self.sites, false)?;
        let mut sockets = BTreeMap::new();
        for s in &self.sites {
            let sock = bind_udp("127.0.0.1:0".parse()?)?;
            sockets.insert(s.clone(), sock);
        }
        let addr = |s: &str| -> Result<SocketAddr> { Ok(sockets[s].local_addr()?) };
        // dial_addr[(a, b)]: where a sends to reach b.
        let mut dial_addr = BTreeMap::new();
        let mut relays = BTreeMap::new();
        for (i, a) in self.sites.iter().enumerate() {
            for b in &self.sites[i + 1..] {
                let (lo, hi) = if a < b { (a, b) } else { (b, a) };
                let target = addr(hi)?;
                let via = match &self.link {
                    Some(link) => {
                        let relay = UdpRelay::start(RelayConfig {
                            listen: "127.0.0.1:0".parse()?,
                            upstream: target,
                            forward: link.forward.clone(),
                            reverse: link.reverse.clone(),
                            seed: 0x5eed ^ relays.len() as u64,
                        })
                        .await
                        .with_context(|| format!("starting the relay {lo} -> {hi}"))?;
                        let via = relay.local_addr();
                        relays.insert((lo.clone(), hi.clone()), relay);
                        via
                    }
                    None => target,
                };
                dial_addr.insert((lo.clone(), hi.clone()), via);
                dial_addr.insert((hi.clone(), lo.clone()), addr(lo)?);
            }
        }
        let mut configs = BTreeMap::new();
        for s in &self.sites {
            let mut text = format!(
                "site = \"{s}\"\nlisten = \"{}\"\n\n[tls]\nca = \"certs/ca.pem\"\ncert = \"certs/{s}.pem\"\nkey = \"certs/{s}.key\"\n\n\
                 [metrics]\nlisten = \"127.0.0.1:0\"\n\n[control]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"{s}.token\"\n\n\
                 [transport]\n{}\n",
                addr(s)?,
                self.transport
            );
            for p in self.sites.iter().filter(|p| *p != s) {
                text.push_str(&format!(
                    "[[peers]]\nsite = \"{p}\"\naddress = \"{}\"\nbandwidth_mbit = {}\nrtt = \"{}ms\"\n{}\n",
                    dial_addr[&(s.clone(), p.clone())],
                    self.bandwidth_mbit,
                    self.rtt.as_millis(),
                    self.peer_extra.replace("{site}", s).replace("{peer}", p)
                ));
            }
            text.push_str(&self.extra.replace("{site}", s));
            let path = dir.path().join(format!("{s}.toml"));
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            configs.insert(s.clone(), path);
        }
        Ok(PreparedMesh {
            dir,
            sockets,
            configs,
            relays,
        })
    }

    /// `prepare` + `start`.
    pub async fn start(self) -> Result<Mesh> {
        self.prepare().await?.start().await
    }
}

/// A mesh whose files exist but whose gateways do not run yet.
pub struct PreparedMesh {
    dir: tempfile::TempDir,
    sockets: BTreeMap<String, UdpSocket>,
    configs: BTreeMap<String, PathBuf>,
    relays: BTreeMap<(String, String), RelayHandle>,
}

impl PreparedMesh {
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn cert_dir(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    pub fn config_path(&self, site: &str) -> &Path {
        &self.configs[site]
    }

    /// The QUIC address of `site`'s gateway.
    pub fn quic_addr(&self, site: &str) -> SocketAddr {
        self.sockets[site]
            .local_addr()
            .expect("bound socket has an address")
    }

    /// Removes `site` from the mesh: its gateway will not be started and
    /// its socket is returned (for a hand-built endpoint in its place).
    pub fn take_socket(&mut self, site: &str) -> Option<UdpSocket> {
        self.sockets.remove(site)
    }

    /// Starts a gateway for every site that still has its socket.
    pub async fn start(self) -> Result<Mesh> {
        let mut gateways = BTreeMap::new();
        for (site, socket) in self.sockets {
            let path = &self.configs[&site];
            let config = GatewayConfig::load(path)?;
            let gw = Gateway::start_on(config, socket)
                .await
                .with_context(|| format!("starting {site}"))?;
            gateways.insert(site, gw);
        }
        Ok(Mesh {
            dir: self.dir,
            configs: self.configs,
            gateways,
            relays: self.relays,
        })
    }
}

/// Running gateways (and relays); shut them down with [`Mesh::shutdown`].
pub struct Mesh {
    dir: tempfile::TempDir,
    configs: BTreeMap<String, PathBuf>,
    gateways: BTreeMap<String, GatewayHandle>,
    relays: BTreeMap<(String, String), RelayHandle>,
}

impl Mesh {
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn gw(&self, site: &str) -> &GatewayHandle {
        self.gateways
            .get(site)
            .unwrap_or_else(|| panic!("no gateway {site} in the mesh"))
    }

    pub fn sites(&self) -> impl Iterator<Item = &str> {
        self.gateways.keys().map(String::as_str)
    }

    pub fn config_path(&self, site: &str) -> &Path {
        &self.configs[site]
    }

    /// The relay on the link between `a` and `b` (either order).
    pub fn relay(&self, a: &str, b: &str) -> &RelayHandle {
        let key = if a < b {
            (a.to_string(), b.to_string())
        } else {
            (b.to_string(), a.to_string())
        };
        self.relays
            .get(&key)
            .unwrap_or_else(|| panic!("no relay between {a} and {b}"))
    }

    /// A control API client for `site`, with the token its gateway created.
    pub fn control(&self, site: &str) -> ControlClient {
        let gw = self.gw(site);
        let token_file = self.dir().join(format!("{site}.token"));
        ControlClient::with_token_file(
            gw.control_addr().expect("control API configured"),
            &token_file,
        )
        .expect("token file written by the gateway")
    }

    /// Waits until every gateway sees every peer up.
    pub async fn wait_all_up(&self, timeout: Duration) -> bool {
        for gw in self.gateways.values() {
            if !gw.wait_all_up(timeout).await {
                return false;
            }
        }
        true
    }

    pub async fn shutdown(self) {
        for (_, gw) in self.gateways {
            gw.shutdown().await;
        }
        for (_, r) in self.relays {
            r.shutdown().await;
        }
    }
}
