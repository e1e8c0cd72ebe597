//! Gateway configuration: the TOML file format, and its validation into
//! typed values whose errors name the file, the key and what is wrong.
//!
//! Relative paths in the file (certificates, keys, the token file) are
//! resolved against the directory that holds the config file.
//!
//! This file owns the settings types of every subsystem
//! ([`MigrationSettings`], [`StorageSettings`], [`TapPortConfig`],
//! [`TransportSettings`], [`VmsSettings`], …): the subsystems import them
//! from here, and this file imports none of the subsystems.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The DNS suffix of a site's certificate name: site `site-a` is
/// `site-a.wanmig` in its certificate's subjectAltName.
pub const SITE_DNS_SUFFIX: &str = "wanmig";

/// The certificate DNS name that identifies `site`.
pub fn site_dns_name(site: &str) -> String {
    format!("{site}.{SITE_DNS_SUFFIX}")
}

/// A configuration that failed to load. `Display` gives
/// `FILE: KEY: what is wrong`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source} (pass an existing file with --config)", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {}", path.display(), source.to_string().trim_end())]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("{}: {key}: {message}", path.display())]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

impl ConfigError {
    /// The dotted key that is wrong (`peers[1].address`), when the error is
    /// about one key.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }
}

/// The file as written (strings where the validation must name the key).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    site: String,
    listen: String,
    /// Where the gateway keeps what it must not lose across restarts.
    #[serde(default)]
    state_dir: Option<String>,
    tls: RawTls,
    #[serde(default)]
    metrics: Option<RawMetrics>,
    #[serde(default)]
    control: Option<RawControl>,
    #[serde(default)]
    transport: RawTransport,
    #[serde(default)]
    peers: Vec<RawPeer>,
    /// `[overlay]`: the overlay's settings plus `[[overlay.tap]]` ports.
    #[serde(default)]
    overlay: Option<toml::Table>,
    /// `[migration]`: page stores, dedup scope, downtime, codec.
    #[serde(default)]
    migration: Option<RawMigration>,
    /// `[storage]`: follow-on storage migration (disk dir, release policy).
    #[serde(default)]
    storage: Option<RawStorage>,
    /// `[vms]`: where this site's VMs run (in this process or one
    /// `wanmig-vmm` process each).
    #[serde(default)]
    vms: Option<RawVms>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVms {
    host: Option<String>,
    dir: Option<String>,
    vmm: Option<String>,
    image_dirs: Option<Vec<String>>,
    disk_dirs: Option<Vec<String>>,
    max_mem_mib: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    dir: Option<String>,
    release: Option<String>,
    block_size_kib: Option<u64>,
    read_timeout: Option<String>,
    request_timeout: Option<String>,
    max_disk_mib: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMigration {
    store: Option<bool>,
    store_dir: Option<String>,
    store_cap_mib: Option<u64>,
    scope: Option<String>,
    downtime: Option<String>,
    open_timeout: Option<String>,
    handover_wait: Option<String>,
    codec: Option<wanmig_codec::EncoderConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca: String,
    cert: String,
    key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawControl {
    listen: String,
    token_file: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTransport {
    congestion: Option<String>,
    idle_timeout: Option<String>,
    keep_alive: Option<String>,
    reconnect_initial: Option<String>,
    reconnect_max: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTap {
    name: String,
    segment: String,
    mtu: Option<u16>,
    bridge: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    site: String,
    address: String,
    bandwidth_mbit: Option<f64>,
    rtt: Option<String>,
    mtu: Option<u32>,
    scopes: Option<Vec<String>>,
}

/// A validated gateway configuration.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Where the config came from (for messages); relative paths were
    /// resolved against its directory.
    pub origin: PathBuf,
    /// This site's name (a DNS label, e.g. `site-a`).
    pub site: String,
    /// The gateway's state directory (`state_dir`; default
    /// [`default_state_dir`] beside the config): the default home of the
    /// page store.
    pub state_dir: PathBuf,
    /// The QUIC (UDP) listen address.
    pub listen: SocketAddr,
    pub tls: TlsPaths,
    pub metrics: Option<MetricsConfig>,
    pub control: Option<ControlConfig>,
    pub transport: TransportSettings,
    pub peers: Vec<PeerConfig>,
    /// The L2 overlay: segments, timers, limits (`[overlay]`).
    pub overlay: wanmig_overlay::OverlayConfig,
    /// TAP ports created at start-up (`[[overlay.tap]]`).
    pub overlay_taps: Vec<TapPortConfig>,
    /// Live migration (`[migration]`).
    pub migration: MigrationSettings,
    /// Follow-on storage migration (`[storage]`).
    pub storage: StorageSettings,
    /// Where this site's VMs run (`[vms]`).
    pub vms: VmsSettings,
}

/// How this site hosts its VMs (`[vms] host`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VmHostKind {
    /// In the gateway process (the default; what `wanmig demo` uses).
    #[default]
    InProcess,
    /// One `wanmig-vmm` process per VM, which outlives a gateway restart.
    Process,
}

/// The `[vms]` section.
#[derive(Debug, Clone)]
pub struct VmsSettings {
    pub host: VmHostKind,
    /// State of process-hosted VMs (pid, control socket, config, logs), one
    /// subdirectory per VM (`[vms] dir`, default `vms` next to the config).
    pub dir: PathBuf,
    /// The `wanmig-vmm` binary (`[vms] vmm`); `None`: next to the running
    /// `wanmig` binary.
    pub vmm: Option<PathBuf>,
    /// Directories whose files a VM booted here may preload as its memory
    /// image (`[vms] image_dirs`, default `images` next to the config).
    pub image_dirs: Vec<PathBuf>,
    /// Directories whose files a VM booted here may use as its disk
    /// (`[vms] disk_dirs`, default the `[storage] dir`).
    pub disk_dirs: Vec<PathBuf>,
    /// The most memory a VM migrating here may have, bytes (`[vms]
    /// max_mem_mib`): a larger one is refused before anything is allocated.
    pub max_mem_size: u64,
}

/// The most memory a VM migrating here may have unless `[vms] max_mem_mib`
/// says otherwise: 16 GiB, whatever this host's RAM (a fixed default keeps
/// a site's behaviour independent of the machine it happens to run on).
pub const DEFAULT_MAX_VM_MEM_BYTES: u64 = 16 << 30;

/// Where memory images may live when no `[vms] image_dirs` is configured
/// (relative to the config file).
pub const DEFAULT_IMAGE_DIR: &str = "images";

/// The gateway's state directory when `state_dir` is not set, relative to
/// the config file. The site's name is in the path because example
/// deployments keep every site's config in one directory, and each piece
/// of state has one writer.
pub fn default_state_dir(site: &str) -> String {
    format!("state/{site}")
}

/// The page stores' directory under the state directory when `[migration]
/// store_dir` is not set: kept across restarts, so a VM from an image the
/// site has seen before costs almost nothing on the wire with the example
/// configs as shipped.
pub const STORE_SUBDIR: &str = "page-store";

/// Migration settings of a site (the `[migration]` config section).
#[derive(Debug, Clone)]
pub struct MigrationSettings {
    /// Directory of the site's page stores (one subdirectory per scope;
    /// [`STORE_SUBDIR`] under the state directory unless set); `None`
    /// (`store = false`, or settings built in code): dedup only within each
    /// migration.
    pub store_dir: Option<PathBuf>,
    /// Cap of each scope's page store, bytes.
    pub store_cap: u64,
    /// Dedup scope used when a migration names none (default: this site's
    /// name, the scope a destination lets this site use without
    /// configuration).
    pub scope: String,
    /// Downtime budget used when a migration names none.
    pub downtime: Duration,
    /// Longest wait for the destination to accept a migration.
    pub open_timeout: Duration,
    /// How long a migration whose link failed after the destination
    /// confirmed it may stay unsettled before the gateways flag it for an
    /// operator. The destination holds the VM parked and the source keeps
    /// asking after that too, until it is settled (`docs/runbook.md`).
    pub handover_wait: Duration,
    /// The page codec's settings.
    pub encoder: wanmig_codec::EncoderConfig,
    /// Which scopes of this site's page stores each peer may use besides
    /// the one named after it (`peers[i].scopes`).
    pub scope_grants: wanmig_migration::scopes::ScopeGrants,
}

impl Default for MigrationSettings {
    fn default() -> Self {
        MigrationSettings {
            store_dir: None,
            store_cap: 1 << 30,
            scope: "default".into(),
            downtime: Duration::from_millis(300),
            open_timeout: Duration::from_secs(10),
            handover_wait: Duration::from_secs(120),
            encoder: wanmig_codec::EncoderConfig::default(),
            scope_grants: Default::default(),
        }
    }
}

/// Where imported disks go when no `[storage] dir` is configured
/// (relative to the config file).
pub const DEFAULT_DISK_DIR: &str = "disks";

/// The largest disk a site imports unless `[storage] max_disk_mib` says
/// otherwise: 1 TiB.
pub const DEFAULT_MAX_DISK_BYTES: u64 = 1 << 40;

/// The `[storage]` section: how this site takes in the disks of VMs that
/// migrate here.
#[derive(Debug, Clone)]
pub struct StorageSettings {
    /// Directory the imported disks (and their presence bitmaps) live in.
    pub dir: PathBuf,
    /// What the source does with its copy once this site's copy is durable.
    pub release: wanmig_storage::ReleasePolicy,
    /// Block size, planner windows and read timeout of imported disks.
    pub disk: wanmig_storage::RemoteDiskConfig,
    /// The largest disk a peer may migrate here, bytes (`max_disk_mib`).
    pub max_disk_len: u64,
}

impl Default for StorageSettings {
    fn default() -> Self {
        StorageSettings {
            dir: PathBuf::from(DEFAULT_DISK_DIR),
            release: wanmig_storage::ReleasePolicy::Keep,
            disk: wanmig_storage::RemoteDiskConfig::default(),
            max_disk_len: DEFAULT_MAX_DISK_BYTES,
        }
    }
}

/// A TAP port to create at start-up (`[[overlay.tap]]` in the gateway TOML).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapPortConfig {
    /// Interface name (at most 15 bytes).
    pub name: String,
    /// Segment (by name) the TAP joins.
    pub segment: String,
    pub mtu: Option<u16>,
    /// Linux bridge to enslave the TAP to.
    pub bridge: Option<String>,
}

/// PEM files of the deployment CA and this site's certificate and key.
#[derive(Debug, Clone)]
pub struct TlsPaths {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct MetricsConfig {
    pub listen: SocketAddr,
}

#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// Loopback address of the HTTP control API.
    pub listen: SocketAddr,
    /// Bearer token file; created (0600) with a random token if missing.
    pub token_file: PathBuf,
}

/// The QUIC congestion controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Congestion {
    Cubic,
    Bbr,
    NewReno,
}

impl fmt::Display for Congestion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Congestion::Cubic => "cubic",
            Congestion::Bbr => "bbr",
            Congestion::NewReno => "newreno",
        })
    }
}

/// Connection liveness and reconnect pacing, plus the congestion controller.
#[derive(Debug, Clone)]
pub struct TransportSettings {
    pub congestion: Congestion,
    /// A peer that sends nothing for this long is declared down.
    pub idle_timeout: Duration,
    /// Keep-alive interval (must be well below `idle_timeout`).
    pub keep_alive: Duration,
    /// First reconnect delay after a failure; doubles up to `reconnect_max`.
    pub reconnect_initial: Duration,
    pub reconnect_max: Duration,
}

impl Default for TransportSettings {
    fn default() -> Self {
        TransportSettings {
            congestion: Congestion::Bbr,
            idle_timeout: Duration::from_secs(5),
            keep_alive: Duration::from_secs(1),
            reconnect_initial: Duration::from_millis(200),
            reconnect_max: Duration::from_secs(5),
        }
    }
}

/// What the operator knows about the path to a peer; sizes the QUIC windows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkHints {
    /// Expected bottleneck bandwidth in bit/s.
    pub bandwidth_bps: f64,
    /// Expected round-trip time.
    pub rtt: Duration,
    /// Path MTU (IP packet size) the path carries.
    pub mtu: u32,
}

impl Default for LinkHints {
    fn default() -> Self {
        LinkHints {
            bandwidth_bps: 1e9,
            rtt: Duration::from_millis(50),
            mtu: 1500,
        }
    }
}

#[derive(Debug, Clone)]
pub struct PeerConfig {
    pub site: String,
    pub address: SocketAddr,
    pub hints: LinkHints,
    /// Page-store scopes this peer may use besides the one named after it
    /// (see [`wanmig_migration::scopes`]).
    pub scopes: Vec<String>,
}

impl GatewayConfig {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Validates config text as if it had been read from `origin`.
    pub fn parse(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_path_buf(),
            source: Box::new(e),
        })?;
        Validator { origin }.validate(raw)
    }

    /// The configured peer called `site`.
    pub fn peer(&self, site: &str) -> Option<&PeerConfig> {
        self.peers.iter().find(|p| p.site == site)
    }
}

struct Validator<'a> {
    origin: &'a Path,
}

impl Validator<'_> {
    fn err(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.origin.to_path_buf(),
            key: key.into(),
            message: message.into(),
        }
    }

    fn addr(&self, key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
        value.parse().map_err(|e| {
            self.err(
                key,
                format!(
                    "invalid socket address '{value}': {e} (expected IP:PORT, e.g. 127.0.0.1:4433)"
                ),
            )
        })
    }

    fn duration(
        &self,
        key: &str,
        value: Option<&str>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        let Some(v) = value else { return Ok(default) };
        let d = humantime::parse_duration(v).map_err(|e| {
            self.err(
                key,
                format!("invalid duration '{v}': {e} (e.g. \"100ms\", \"5s\")"),
            )
        })?;
        if d.is_zero() {
            return Err(self.err(key, "must be greater than zero"));
        }
        Ok(d)
    }

    fn path(&self, key: &str, value: &str, must_exist: bool) -> Result<PathBuf, ConfigError> {
        if value.is_empty() {
            return Err(self.err(key, "must not be empty"));
        }
        let p = Path::new(value);
        let resolved = if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.origin.parent().unwrap_or(Path::new(".")).join(p)
        };
        if must_exist {
            if let Err(e) = std::fs::metadata(&resolved) {
                return Err(self.err(
                    key,
                    format!(
                        "cannot read '{}': {e} (paths are relative to the config file; create certificates with `wanmig certs`)",
                        resolved.display()
                    ),
                ));
            }
        }
        Ok(resolved)
    }

    fn site_name(&self, key: &str, value: &str) -> Result<String, ConfigError> {
        validate_site_name(value).map_err(|m| self.err(key, m))?;
        Ok(value.to_string())
    }

    fn validate(&self, raw: RawConfig) -> Result<GatewayConfig, ConfigError> {
        let site = self.site_name("site", &raw.site)?;
        let listen = self.addr("listen", &raw.listen)?;
        let tls = TlsPaths {
            ca: self.path("tls.ca", &raw.tls.ca, true)?,
            cert: self.path("tls.cert", &raw.tls.cert, true)?,
            key: self.path("tls.key", &raw.tls.key, true)?,
        };
        let metrics = match raw.metrics {
            Some(m) => Some(MetricsConfig {
                listen: self.addr("metrics.listen", &m.listen)?,
            }),
            None => None,
        };
        let control = match raw.control {
            Some(c) => {
                let listen = self.addr("control.listen", &c.listen)?;
                if !listen.ip().is_loopback() {
                    return Err(self.err(
                        "control.listen",
                        format!("{listen} is not a loopback address; the control API is local-only (use 127.0.0.1:PORT)"),
                    ));
                }
                Some(ControlConfig {
                    listen,
                    token_file: self.path("control.token_file", &c.token_file, false)?,
                })
            }
            None => None,
        };
        let transport = self.transport(&raw.transport)?;
        let (overlay, overlay_taps) = self.overlay(raw.overlay)?;
        let state_dir = self.path(
            "state_dir",
            raw.state_dir
                .as_deref()
                .unwrap_or(&default_state_dir(&site)),
            false,
        )?;
        let mut migration = self.migration(raw.migration, &site, &state_dir)?;
        let storage = self.storage(raw.storage)?;
        let vms = self.vms(raw.vms, &storage)?;
        let mut peers: Vec<PeerConfig> = Vec::with_capacity(raw.peers.len());
        for (i, p) in raw.peers.iter().enumerate() {
            let k = |field: &str| format!("peers[{i}].{field}");
            let psite = self.site_name(&k("site"), &p.site)?;
            if psite == site {
                return Err(self.err(
                    k("site"),
                    format!("'{psite}' is this gateway's own site name"),
                ));
            }
            if peers.iter().any(|q| q.site == psite) {
                return Err(self.err(k("site"), format!("site '{psite}' is listed twice")));
            }
            let address = self.addr(&k("address"), &p.address)?;
            let defaults = LinkHints::default();
            let bandwidth_bps = match p.bandwidth_mbit {
                Some(b) if !(b.is_finite() && b > 0.0 && b <= 1e6) => {
                    return Err(self.err(
                        k("bandwidth_mbit"),
                        format!(
                            "{b} is not a bandwidth in Mbit/s (expected a number in (0, 1000000])"
                        ),
                    ))
                }
                Some(b) => b * 1e6,
                None => defaults.bandwidth_bps,
            };
            let rtt = self.duration(&k("rtt"), p.rtt.as_deref(), defaults.rtt)?;
            if rtt > Duration::from_secs(10) {
                return Err(self.err(
                    k("rtt"),
                    format!("{rtt:?} is longer than 10s; is the unit right?"),
                ));
            }
            let mtu = p.mtu.unwrap_or(defaults.mtu);
            if !(1280..=65535).contains(&mtu) {
                return Err(self.err(k("mtu"), format!("{mtu} is outside 1280..=65535")));
            }
            let scopes = p.scopes.clone().unwrap_or_default();
            for (j, scope) in scopes.iter().enumerate() {
                if wanmig_codec::store::validate_scope(scope).is_err() {
                    return Err(self.err(
                        format!("peers[{i}].scopes[{j}]"),
                        format!("{scope:?} is not a scope name (1-64 letters, digits, '-', '_' or '.', not starting with '.')"),
                    ));
                }
            }
            migration.scope_grants.grant(&psite, scopes.iter().cloned());
            peers.push(PeerConfig {
                site: psite,
                address,
                hints: LinkHints {
                    bandwidth_bps,
                    rtt,
                    mtu,
                },
                scopes,
            });
        }
        Ok(GatewayConfig {
            state_dir,
            origin: self.origin.to_path_buf(),
            site,
            listen,
            tls,
            metrics,
            control,
            transport,
            peers,
            overlay,
            overlay_taps,
            migration,
            storage,
            vms,
        })
    }

    /// `[vms]`: every key optional.
    fn vms(
        &self,
        raw: Option<RawVms>,
        storage: &StorageSettings,
    ) -> Result<VmsSettings, ConfigError> {
        let raw = raw.unwrap_or(RawVms {
            host: None,
            dir: None,
            vmm: None,
            image_dirs: None,
            disk_dirs: None,
            max_mem_mib: None,
        });
        let host = match raw.host.as_deref() {
            None | Some("in-process") => VmHostKind::InProcess,
            Some("process") => VmHostKind::Process,
            Some(other) => {
                return Err(self.err(
                    "vms.host",
                    format!("'{other}' is not a VM host; use \"in-process\" or \"process\""),
                ))
            }
        };
        let dir = self.path("vms.dir", raw.dir.as_deref().unwrap_or("vms"), false)?;
        let vmm = match raw.vmm.as_deref() {
            Some(v) => Some(self.path("vms.vmm", v, true)?),
            None => None,
        };
        let image_dirs = match &raw.image_dirs {
            Some(dirs) => self.dirs("vms.image_dirs", dirs)?,
            None => vec![self.path("vms.image_dirs", DEFAULT_IMAGE_DIR, false)?],
        };
        let disk_dirs = match &raw.disk_dirs {
            Some(dirs) => self.dirs("vms.disk_dirs", dirs)?,
            None => vec![storage.dir.clone()],
        };
        let max_mem_size = match raw.max_mem_mib {
            Some(0) => return Err(self.err("vms.max_mem_mib", "must be at least 1")),
            Some(m) => m.saturating_mul(1 << 20),
            None => DEFAULT_MAX_VM_MEM_BYTES,
        };
        Ok(VmsSettings {
            host,
            dir,
            vmm,
            image_dirs,
            disk_dirs,
            max_mem_size,
        })
    }

    /// A list of existing directories (relative to the config file).
    fn dirs(&self, key: &str, values: &[String]) -> Result<Vec<PathBuf>, ConfigError> {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let key = format!("{key}[{i}]");
                let p = self.path(&key, v, false)?;
                match std::fs::metadata(&p) {
                    Ok(m) if m.is_dir() => Ok(p),
                    Ok(_) => Err(self.err(key, format!("'{}' is not a directory", p.display()))),
                    Err(e) => Err(self.err(
                        key,
                        format!(
                            "cannot read the directory '{}': {e} (paths are relative to the config file; create it first)",
                            p.display()
                        ),
                    )),
                }
            })
            .collect()
    }

    /// `[storage]`: every key optional.
    fn storage(&self, raw: Option<RawStorage>) -> Result<StorageSettings, ConfigError> {
        let d = StorageSettings::default();
        let raw = raw.unwrap_or(RawStorage {
            dir: None,
            release: None,
            block_size_kib: None,
            read_timeout: None,
            request_timeout: None,
            max_disk_mib: None,
        });
        let dir = self.path(
            "storage.dir",
            raw.dir.as_deref().unwrap_or(DEFAULT_DISK_DIR),
            false,
        )?;
        let release = match raw.release.as_deref() {
            None => d.release,
            Some("keep") => wanmig_storage::ReleasePolicy::Keep,
            Some("delete") => wanmig_storage::ReleasePolicy::Delete,
            Some(other) => {
                return Err(self.err(
                    "storage.release",
                    format!("{other:?} is not a release policy (use \"keep\" or \"delete\")"),
                ))
            }
        };
        let mut disk = d.disk;
        if let Some(kib) = raw.block_size_kib {
            let ok = kib.is_power_of_two() && (4..=16 * 1024).contains(&kib);
            if !ok {
                return Err(self.err(
                    "storage.block_size_kib",
                    format!("{kib} is not a power of two in 4..=16384 (KiB)"),
                ));
            }
            disk.block_size = (kib * 1024) as u32;
        }
        disk.planner.read_timeout = self.duration(
            "storage.read_timeout",
            raw.read_timeout.as_deref(),
            disk.planner.read_timeout,
        )?;
        if disk.planner.read_timeout.is_zero() {
            return Err(self.err("storage.read_timeout", "must be longer than zero"));
        }
        // A lost fetch is asked for again after request_timeout; a guest
        // read waiting for it fails after read_timeout. Unset, it follows a
        // shorter read_timeout down.
        let read = disk.planner.read_timeout;
        disk.planner.request_timeout = match raw.request_timeout.as_deref() {
            Some(v) => self.duration("storage.request_timeout", Some(v), read)?,
            None => disk.planner.request_timeout.min(read / 2),
        };
        let request = disk.planner.request_timeout;
        if request.is_zero() {
            return Err(self.err("storage.request_timeout", "must be longer than zero"));
        }
        if request * 2 > read {
            return Err(self.err(
                "storage.request_timeout",
                format!(
                    "{request:?} must be at most storage.read_timeout ({read:?}) / 2, or a guest read fails with an I/O error before its lost fetch is asked for again; set storage.request_timeout to {:?} or less, or storage.read_timeout to {:?} or more",
                    read / 2,
                    request * 2
                ),
            ));
        }
        let max_disk_len = match raw.max_disk_mib {
            Some(0) => return Err(self.err("storage.max_disk_mib", "must be at least 1")),
            Some(m) => m.saturating_mul(1 << 20),
            None => d.max_disk_len,
        };
        Ok(StorageSettings {
            dir,
            release,
            disk,
            max_disk_len,
        })
    }

    /// `[migration]`: every key optional.
    fn migration(
        &self,
        raw: Option<RawMigration>,
        site: &str,
        state_dir: &Path,
    ) -> Result<MigrationSettings, ConfigError> {
        let d = MigrationSettings {
            scope: site.to_string(),
            store_dir: Some(state_dir.join(STORE_SUBDIR)),
            ..MigrationSettings::default()
        };
        let Some(raw) = raw else { return Ok(d) };
        let store_dir = match (raw.store, &raw.store_dir) {
            (Some(false), Some(_)) => {
                return Err(self.err(
                    "migration.store",
                    "is false, but migration.store_dir is set: remove one of the two",
                ))
            }
            (Some(false), None) => None,
            (_, Some(p)) => Some(self.path("migration.store_dir", p, false)?),
            (_, None) => d.store_dir.clone(),
        };
        let store_cap = match raw.store_cap_mib {
            Some(0) => return Err(self.err("migration.store_cap_mib", "must be at least 1")),
            Some(m) => m.saturating_mul(1 << 20),
            None => d.store_cap,
        };
        let scope = raw.scope.unwrap_or(d.scope);
        if wanmig_codec::store::validate_scope(&scope).is_err() {
            return Err(self.err(
                "migration.scope",
                format!("{scope:?} is not a scope name (1-64 letters, digits, '-', '_' or '.')"),
            ));
        }
        let downtime = self.duration("migration.downtime", raw.downtime.as_deref(), d.downtime)?;
        let open_timeout = self.duration(
            "migration.open_timeout",
            raw.open_timeout.as_deref(),
            d.open_timeout,
        )?;
        let handover_wait = self.duration(
            "migration.handover_wait",
            raw.handover_wait.as_deref(),
            d.handover_wait,
        )?;
        let encoder = raw.codec.unwrap_or(d.encoder);
        encoder
            .validate()
            .map_err(|e| self.err("migration", e.to_string()))?;
        Ok(MigrationSettings {
            store_dir,
            store_cap,
            scope,
            downtime,
            open_timeout,
            handover_wait,
            encoder,
            scope_grants: d.scope_grants,
        })
    }

    /// `[overlay]`: everything but `tap` is the overlay crate's
    /// [`wanmig_overlay::OverlayConfig`]; `[[overlay.tap]]` entries are
    /// TAP ports on configured segments.
    fn overlay(
        &self,
        raw: Option<toml::Table>,
    ) -> Result<(wanmig_overlay::OverlayConfig, Vec<TapPortConfig>), ConfigError> {
        let Some(mut table) = raw else {
            return Ok(Default::default());
        };
        let raw_taps = table.remove("tap");
        let overlay: wanmig_overlay::OverlayConfig = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| self.err("overlay", e.message().to_string()))?;
        overlay
            .validate()
            .map_err(|e| self.err(format!("overlay.{}", e.key), e.reason))?;
        let raw_taps: Vec<RawTap> = match raw_taps {
            None => Vec::new(),
            Some(v) => v.try_into().map_err(|e: toml::de::Error| {
                self.err(
                    "overlay.tap",
                    format!("{} (expected [[overlay.tap]] tables with name, segment, optional mtu and bridge)", e.message()),
                )
            })?,
        };
        let mut taps: Vec<TapPortConfig> = Vec::new();
        for (i, t) in raw_taps.into_iter().enumerate() {
            let k = |f: &str| format!("overlay.tap[{i}].{f}");
            if t.name.is_empty() || t.name.len() > 15 {
                return Err(self.err(
                    k("name"),
                    format!("{:?} is not an interface name of 1 to 15 bytes", t.name),
                ));
            }
            if taps.iter().any(|o| o.name == t.name) {
                return Err(self.err(k("name"), format!("TAP {:?} is listed twice", t.name)));
            }
            if !overlay.segments.iter().any(|s| s.name == t.segment) {
                return Err(self.err(
                    k("segment"),
                    format!("no [[overlay.segment]] is named {:?}", t.segment),
                ));
            }
            if let Some(m) = t.mtu {
                if !(576..=65521).contains(&m) {
                    return Err(self.err(k("mtu"), format!("{m} is outside 576..=65521")));
                }
            }
            taps.push(TapPortConfig {
                name: t.name,
                segment: t.segment,
                mtu: t.mtu,
                bridge: t.bridge,
            });
        }
        Ok((overlay, taps))
    }

    fn transport(&self, raw: &RawTransport) -> Result<TransportSettings, ConfigError> {
        let d = TransportSettings::default();
        let congestion = match raw.congestion.as_deref() {
            None => d.congestion,
            Some("bbr") => Congestion::Bbr,
            Some("cubic") => Congestion::Cubic,
            Some("newreno") => Congestion::NewReno,
            Some(other) => {
                return Err(self.err(
                    "transport.congestion",
                    format!("unknown congestion controller '{other}' (expected \"bbr\", \"cubic\" or \"newreno\")"),
                ))
            }
        };
        let idle_timeout = self.duration(
            "transport.idle_timeout",
            raw.idle_timeout.as_deref(),
            d.idle_timeout,
        )?;
        let keep_alive = self.duration(
            "transport.keep_alive",
            raw.keep_alive.as_deref(),
            d.keep_alive,
        )?;
        if keep_alive * 2 > idle_timeout {
            return Err(self.err(
                "transport.keep_alive",
                format!("{keep_alive:?} must be at most half of transport.idle_timeout ({idle_timeout:?}), or idle links would time out"),
            ));
        }
        let reconnect_initial = self.duration(
            "transport.reconnect_initial",
            raw.reconnect_initial.as_deref(),
            d.reconnect_initial,
        )?;
        let reconnect_max = self.duration(
            "transport.reconnect_max",
            raw.reconnect_max.as_deref(),
            d.reconnect_max,
        )?;
        if reconnect_max < reconnect_initial {
            return Err(self.err(
                "transport.reconnect_max",
                format!("{reconnect_max:?} is shorter than transport.reconnect_initial ({reconnect_initial:?})"),
            ));
        }
        Ok(TransportSettings {
            congestion,
            idle_timeout,
            keep_alive,
            reconnect_initial,
            reconnect_max,
        })
    }
}

/// Checks that `name` can be a site name: one lowercase DNS label.
pub fn validate_site_name(name: &str) -> Result<(), String> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if name.is_empty()
        || name.len() > 63
        || !ok_chars
        || name.starts_with('-')
        || name.ends_with('-')
    {
        return Err(format!(
            "invalid site name '{name}': use 1-63 characters a-z, 0-9 and '-', not starting or ending with '-'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with_certs() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for f in ["ca.pem", "a.pem", "a.key"] {
            std::fs::write(d.path().join(f), "x").unwrap();
        }
        d
    }

    const GOOD: &str = r#"
site = "site-a"
listen = "127.0.0.1:4433"
[tls]
ca = "ca.pem"
cert = "a.pem"
key = "a.key"
[control]
listen = "127.0.0.1:7100"
token_file = "a.token"
[transport]
congestion = "cubic"
idle_timeout = "3s"
[[peers]]
site = "site-b"
address = "127.0.0.1:4434"
bandwidth_mbit = 250
rtt = "100ms"
"#;

    #[test]
    fn good_config_resolves_paths_and_hints() {
        let d = dir_with_certs();
        let origin = d.path().join("a.toml");
        let c = GatewayConfig::parse(GOOD, &origin).unwrap();
        assert_eq!(c.site, "site-a");
        assert_eq!(c.tls.cert, d.path().join("a.pem"));
        assert_eq!(
            c.control.as_ref().unwrap().token_file,
            d.path().join("a.token")
        );
        assert_eq!(c.transport.congestion, Congestion::Cubic);
        assert_eq!(c.transport.idle_timeout, Duration::from_secs(3));
        let p = c.peer("site-b").unwrap();
        assert_eq!(p.hints.bandwidth_bps, 250e6);
        assert_eq!(p.hints.rtt, Duration::from_millis(100));
        assert_eq!(p.hints.mtu, 1500);
    }

    fn error_for(text: &str) -> (ConfigError, String) {
        let d = dir_with_certs();
        let origin = d.path().join("a.toml");
        let e = GatewayConfig::parse(text, &origin).unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with(&origin.display().to_string()), "{s}");
        (e, s)
    }

    #[test]
    fn vms_section_picks_the_host_and_names_bad_keys() {
        let d = dir_with_certs();
        let origin = d.path().join("a.toml");
        let c = GatewayConfig::parse(GOOD, &origin).unwrap();
        assert_eq!(c.vms.host, VmHostKind::InProcess);
        assert_eq!(c.vms.dir, d.path().join("vms"));
        assert_eq!(c.vms.vmm, None);
        assert_eq!(c.vms.image_dirs, vec![d.path().join("images")]);
        assert_eq!(c.vms.disk_dirs, vec![d.path().join("disks")]);
        std::fs::create_dir(d.path().join("img")).unwrap();
        let text = format!("{GOOD}\n[vms]\nimage_dirs = [\"img\"]\ndisk_dirs = []\n");
        let c = GatewayConfig::parse(&text, &origin).unwrap();
        assert_eq!(c.vms.image_dirs, vec![d.path().join("img")]);
        assert!(c.vms.disk_dirs.is_empty());
        let (e, s) = error_for(&format!("{GOOD}\n[vms]\ndisk_dirs = [\"/\", \"nope\"]\n"));
        assert_eq!(e.key(), Some("vms.disk_dirs[1]"), "{s}");
        assert!(s.contains("create it first"), "{s}");
        let text = format!("{GOOD}\n[vms]\nhost = \"process\"\ndir = \"state/vms\"\n");
        let c = GatewayConfig::parse(&text, &origin).unwrap();
        assert_eq!(c.vms.host, VmHostKind::Process);
        assert_eq!(c.vms.dir, d.path().join("state/vms"));
        let (e, s) = error_for(&format!("{GOOD}\n[vms]\nhost = \"qemu\"\n"));
        assert_eq!(e.key(), Some("vms.host"), "{s}");
        assert!(s.contains("in-process"), "{s}");
        assert_eq!(c.vms.max_mem_size, DEFAULT_MAX_VM_MEM_BYTES);
        let text = format!("{GOOD}\n[vms]\nmax_mem_mib = 512\n");
        let c = GatewayConfig::parse(&text, &origin).unwrap();
        assert_eq!(c.vms.max_mem_size, 512 << 20);
        let (e, s) = error_for(&format!("{GOOD}\n[vms]\nmax_mem_mib = 0\n"));
        assert_eq!(e.key(), Some("vms.max_mem_mib"), "{s}");
        let (e, s) = error_for(&format!("{GOOD}\n[vms]\nmax_mem_mib = -1\n"));
        assert!(s.contains("max_mem_mib"), "{e:?}: {s}");
        let (e, _) = error_for(&format!("{GOOD}\n[vms]\nvmm = \"no/such/wanmig-vmm\"\n"));
        assert_eq!(e.key(), Some("vms.vmm"));
    }

    #[test]
    fn bad_peer_address_names_the_key() {
        let text = GOOD.replace("127.0.0.1:4434", "x");
        let (e, s) = error_for(&text);
        assert_eq!(e.key(), Some("peers[0].address"));
        assert!(s.contains("invalid socket address 'x'"), "{s}");
    }

    #[test]
    fn unknown_key_is_named() {
        let text = GOOD.replace("[transport]", "[transport]\nbogus_knob = 1");
        let (_, s) = error_for(&text);
        assert!(s.contains("bogus_knob"), "{s}");
    }

    #[test]
    fn missing_cert_file_names_the_key() {
        let text = GOOD.replace("\"a.pem\"", "\"missing.pem\"");
        let (e, s) = error_for(&text);
        assert_eq!(e.key(), Some("tls.cert"));
        assert!(s.contains("missing.pem"), "{s}");
    }

    #[test]
    fn semantic_errors_name_their_keys() {
        let cases = [
            (
                GOOD.replace("site = \"site-b\"", "site = \"site-a\""),
                "peers[0].site",
            ),
            (
                GOOD.replace("site = \"site-a\"", "site = \"Site_A\""),
                "site",
            ),
            (
                GOOD.replace("\"cubic\"", "\"vegas\""),
                "transport.congestion",
            ),
            (
                GOOD.replace("idle_timeout = \"3s\"", "idle_timeout = \"1s\""),
                "transport.keep_alive",
            ),
            (
                GOOD.replace("rtt = \"100ms\"", "rtt = \"100 parsecs\""),
                "peers[0].rtt",
            ),
            (
                GOOD.replace("bandwidth_mbit = 250", "bandwidth_mbit = -3"),
                "peers[0].bandwidth_mbit",
            ),
            (
                GOOD.replace("127.0.0.1:7100", "0.0.0.0:7100"),
                "control.listen",
            ),
            (
                format!("{GOOD}\n[[peers]]\nsite = \"site-b\"\naddress = \"127.0.0.1:1\"\n"),
                "peers[1].site",
            ),
        ];
        for (text, key) in cases {
            let (e, s) = error_for(&text);
            assert_eq!(e.key(), Some(key), "{s}");
        }
    }

    #[test]
    fn storage_request_timeout_stays_below_half_the_read_timeout() {
        let d = dir_with_certs();
        let origin = d.path().join("a.toml");
        let with = |extra: &str| GatewayConfig::parse(&format!("{GOOD}\n{extra}"), &origin);
        let timeouts = |c: GatewayConfig| {
            let p = c.storage.disk.planner;
            (p.read_timeout, p.request_timeout)
        };
        let s = Duration::from_secs;
        // The defaults agree with each other.
        let (read, request) = timeouts(with("").unwrap());
        assert!(request * 2 <= read, "{request:?} vs {read:?}");
        // Both set and consistent; exactly half is accepted.
        let c = with("[storage]\nread_timeout = \"40s\"\nrequest_timeout = \"8s\"\n").unwrap();
        assert_eq!(timeouts(c), (s(40), s(8)));
        let c = with("[storage]\nread_timeout = \"20s\"\nrequest_timeout = \"10s\"\n").unwrap();
        assert_eq!(timeouts(c), (s(20), s(10)));
        // A short read timeout alone pulls the unset request timeout down.
        let c = with("[storage]\nread_timeout = \"6s\"\n").unwrap();
        assert_eq!(timeouts(c), (s(6), s(3)));
        // Refused: the retry would come after (or too close to) the guest's
        // I/O error, including against the default read timeout.
        for extra in [
            "[storage]\nread_timeout = \"25s\"\nrequest_timeout = \"30s\"\n",
            "[storage]\nread_timeout = \"20s\"\nrequest_timeout = \"20s\"\n",
            "[storage]\nread_timeout = \"20s\"\nrequest_timeout = \"10001ms\"\n",
            "[storage]\nrequest_timeout = \"1h\"\n",
        ] {
            let e = with(extra).unwrap_err();
            assert_eq!(e.key(), Some("storage.request_timeout"), "{extra}: {e}");
            let msg = e.to_string();
            assert!(msg.contains("storage.read_timeout"), "{msg}");
            assert!(msg.contains("set storage.request_timeout to"), "{msg}");
        }
        let e = with("[storage]\nread_timeout = \"25s\"\nrequest_timeout = \"30s\"\n").unwrap_err();
        assert!(e.to_string().contains("12.5s or less"), "{e}");
        let e = with("[storage]\nrequest_timeout = \"soon\"\n").unwrap_err();
        assert_eq!(e.key(), Some("storage.request_timeout"), "{e}");
    }

    #[test]
    fn the_page_store_is_kept_beside_the_config_unless_turned_off() {
        let d = dir_with_certs();
        let origin = d.path().join("a.toml");
        let c = GatewayConfig::parse(GOOD, &origin).unwrap();
        assert_eq!(
            c.migration.store_dir,
            Some(d.path().join("state/site-a/page-store")),
            "a store by default, with no [migration] section"
        );
        let c = GatewayConfig::parse(
            &format!("{GOOD}\n[migration]\ndowntime = \"200ms\"\n"),
            &origin,
        )
        .unwrap();
        assert_eq!(
            c.migration.store_dir,
            Some(d.path().join("state/site-a/page-store"))
        );
        let c = GatewayConfig::parse(
            &format!("{GOOD}\n[migration]\nstore_dir = \"/var/x\"\n"),
            &origin,
        )
        .unwrap();
        assert_eq!(c.migration.store_dir, Some(PathBuf::from("/var/x")));
        let c = GatewayConfig::parse(&format!("{GOOD}\n[migration]\nstore = false\n"), &origin)
            .unwrap();
        assert_eq!(c.migration.store_dir, None);
        let (e, s) = error_for(&format!(
            "{GOOD}\n[migration]\nstore = false\nstore_dir = \"x\"\n"
        ));
        assert_eq!(e.key(), Some("migration.store"), "{s}");
    }

    #[test]
    fn peer_scopes_and_the_disk_size_cap_are_validated_and_default_sensibly() {
        let d = dir_with_certs();
        let origin = d.path().join("a.toml");
        let with = |extra: &str| GatewayConfig::parse(&format!("{GOOD}\n{extra}"), &origin);
        let c = with("").unwrap();
        assert_eq!(c.migration.scope, c.site, "a source uses its own scope");
        assert_eq!(c.storage.max_disk_len, DEFAULT_MAX_DISK_BYTES);
        let peer = "[[peers]]\nsite = \"site-z\"\naddress = \"127.0.0.1:1\"\n";
        let c = with(&format!("{peer}scopes = [\"shared\", \"site-y\"]\n")).unwrap();
        let g = &c.migration.scope_grants;
        assert!(g.check("site-z", "shared").is_ok());
        assert!(g.check("site-z", "site-y").is_ok());
        assert!(g.check("site-z", "site-z").is_ok());
        assert!(g.check("site-z", "other").is_err());
        assert_eq!(c.peer("site-z").unwrap().scopes, ["shared", "site-y"]);
        let e = with(&format!("{peer}scopes = [\"ok\", \"../x\"]\n")).unwrap_err();
        assert_eq!(e.key(), Some("peers[1].scopes[1]"), "{e}");
        let c = with("[storage]\nmax_disk_mib = 64\n").unwrap();
        assert_eq!(c.storage.max_disk_len, 64 << 20);
        let e = with("[storage]\nmax_disk_mib = 0\n").unwrap_err();
        assert_eq!(e.key(), Some("storage.max_disk_mib"), "{e}");
    }

    #[test]
    fn missing_file_is_a_read_error() {
        let e = GatewayConfig::load(Path::new("/nonexistent/wanmig.toml")).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }));
        assert!(e.to_string().contains("/nonexistent/wanmig.toml"));
    }

    #[test]
    fn site_names_are_dns_labels() {
        assert!(validate_site_name("site-a").is_ok());
        assert!(validate_site_name("dc2").is_ok());
        for bad in ["", "-a", "a-", "A", "a.b", "a_b", &"x".repeat(64)] {
            assert!(validate_site_name(bad).is_err(), "{bad}");
        }
    }

    /// The example configs in `configs/`, parsed with stand-in TLS files.
    fn example(rel: &str) -> Result<GatewayConfig, ConfigError> {
        let src = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../configs")
            .join(rel);
        let text = std::fs::read_to_string(&src).unwrap();
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("certs")).unwrap();
        for f in [
            "ca.pem",
            "site-a.pem",
            "site-a.key",
            "site-b.pem",
            "site-b.key",
            "site-c.pem",
            "site-c.key",
        ] {
            std::fs::write(d.path().join("certs").join(f), "x").unwrap();
        }
        GatewayConfig::parse(&text, &d.path().join("site.toml"))
    }

    #[test]
    fn example_configs_carry_an_overlay_segment() {
        for rel in [
            "site-a.toml",
            "site-b.toml",
            "three-site/site-a.toml",
            "three-site/site-b.toml",
            "three-site/site-c.toml",
        ] {
            let c = example(rel).unwrap_or_else(|e| panic!("{rel}: {e}"));
            assert_eq!(c.overlay.segments.len(), 1, "{rel}");
            assert_eq!(c.overlay.segments[0].name, "demo", "{rel}");
            assert!(c.overlay_taps.is_empty(), "{rel}");
        }
    }

    #[test]
    fn overlay_section_is_validated_with_named_keys() {
        let d = dir_with_certs();
        let origin = d.path().join("a.toml");
        let with = |extra: &str| GatewayConfig::parse(&format!("{GOOD}\n{extra}"), &origin);

        let c = with("[overlay]\nmac_ageing = \"1m\"\n[[overlay.segment]]\nname = \"lan\"\nvni = 7\n[[overlay.tap]]\nname = \"tap0\"\nsegment = \"lan\"\nmtu = 1500\n").unwrap();
        assert_eq!(c.overlay.mac_ageing, Duration::from_secs(60));
        assert_eq!(c.overlay_taps.len(), 1);
        assert_eq!(c.overlay_taps[0].segment, "lan");
        assert!(GatewayConfig::parse(GOOD, &origin)
            .unwrap()
            .overlay
            .segments
            .is_empty());

        let e =
            with("[overlay]\n[[overlay.segment]]\nname = \"lan\"\nvni = 16777216\n").unwrap_err();
        assert_eq!(e.key(), Some("overlay.segment[0].vni"), "{e}");
        let e = with("[overlay]\n[[overlay.segment]]\nname = \"lan\"\nvni = 1\n[[overlay.tap]]\nname = \"t\"\nsegment = \"wan\"\n").unwrap_err();
        assert_eq!(e.key(), Some("overlay.tap[0].segment"), "{e}");
        assert!(e.to_string().contains("wan"), "{e}");
        let e = with("[overlay]\nmac_agening = \"1m\"\n").unwrap_err();
        assert_eq!(e.key(), Some("overlay"), "{e}");
        assert!(e.to_string().contains("mac_agening"), "{e}");
        let e = with("[overlay]\n[[overlay.tap]]\nname = \"t\"\n").unwrap_err();
        assert_eq!(e.key(), Some("overlay.tap"), "{e}");
    }
}
