//! What a VM is: memory size, the workloads the guest runs and their
//! parameters, and the devices ([`VmConfig`]). It is the VM description
//! that travels between sites (the gateway session's `Open` carries it,
//! and the destination builds the VM from it); validated here, turned
//! into the test guest's boot parameters, and reduced to the
//! [`MachineConfig`] a migration destination must match (the shim
//! protocol's `Hello` carries that).

use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;
use wanmig_guest_abi as abi;

/// Parameters of the guest's memory workload.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemoryWorkloadConfig {
    /// Seed of the deterministic page/value sequence.
    pub seed: u64,
    /// Working set in pages (from `WORKLOAD_BASE`).
    pub working_set_pages: u64,
    /// Pages written per iteration.
    pub pages_per_iteration: u64,
    /// Iterations to run; 0 = forever.
    pub iterations: u64,
    /// Minimum guest time per iteration; zero = flat out.
    pub iteration_period: Duration,
    /// How each page write changes the page (absent in older configs:
    /// one word).
    #[serde(default)]
    pub page_writes: PageWrites,
}

/// How the memory workload changes a page it writes.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum PageWrites {
    /// One 64-bit word per page write: a re-dirtied page's delta is tiny.
    #[default]
    Word,
    /// The whole page with fresh pseudo-random words: re-dirtied pages
    /// defeat deltas and compression.
    Full,
}

impl PageWrites {
    /// The guest-side mode.
    pub fn mode(self) -> abi::memory_workload::PageWriteMode {
        match self {
            PageWrites::Word => abi::memory_workload::PageWriteMode::Word,
            PageWrites::Full => abi::memory_workload::PageWriteMode::Full,
        }
    }
}

impl Default for MemoryWorkloadConfig {
    fn default() -> Self {
        MemoryWorkloadConfig {
            seed: 1,
            working_set_pages: 2048,
            pages_per_iteration: 64,
            iterations: 0,
            iteration_period: Duration::ZERO,
            page_writes: PageWrites::Word,
        }
    }
}

/// The network service's identity.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NetConfig {
    /// MAC address of the guest's virtio-net card.
    pub mac: [u8; 6],
    /// Static IPv4 address.
    pub ip: Ipv4Addr,
    /// Prefix length.
    pub prefix_len: u8,
    /// TCP port of the service (its status port is `port + 1`).
    pub port: u16,
    /// Back the card with this TAP device; `None` = an in-process channel
    /// whose far end `Vm::take_net_port` hands out.
    pub tap: Option<String>,
    /// The overlay segment the hosting gateway plugs the card into, at
    /// every site the VM runs at (segments are matched by name); `None`
    /// leaves the card to whoever takes its port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment: Option<String>,
}

/// The disk and the disk workload.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DiskConfig {
    /// The raw disk file.
    pub path: PathBuf,
    /// Seed of the deterministic block contents.
    pub seed: u64,
    /// Blocks written and verified per iteration.
    pub blocks_per_iteration: u64,
    /// Iterations; 0 = forever.
    pub iterations: u64,
}

/// A VM's configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VmConfig {
    /// Guest memory in bytes (multiple of 4 KiB).
    pub mem_size: u64,
    /// The memory workload, if the guest should run it.
    pub memory_workload: Option<MemoryWorkloadConfig>,
    /// The network service, if any.
    pub net: Option<NetConfig>,
    /// The disk, if any.
    pub disk: Option<DiskConfig>,
    /// A file whose bytes preload guest memory from address 0 before the
    /// guest image and boot structures are written.
    pub mem_image: Option<PathBuf>,
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            mem_size: 32 << 20,
            memory_workload: None,
            net: None,
            disk: None,
            mem_image: None,
        }
    }
}

/// A configuration error, naming the offending setting.
#[derive(Debug, thiserror::Error)]
#[error("invalid VM configuration `{key}`: {reason}")]
pub struct ConfigError {
    /// The setting.
    pub key: &'static str,
    /// What is wrong and what would be right.
    pub reason: String,
}

impl VmConfig {
    /// Checks the settings against the guest's layout.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.mem_size % abi::PAGE_SIZE != 0
            || !(abi::MIN_MEM_SIZE..=abi::MAX_MEM_SIZE).contains(&self.mem_size)
        {
            return Err(ConfigError {
                key: "mem_size",
                reason: format!(
                    "{} bytes; use a multiple of 4 KiB from {} MiB to {} MiB",
                    self.mem_size,
                    abi::MIN_MEM_SIZE >> 20,
                    abi::MAX_MEM_SIZE >> 20
                ),
            });
        }
        if let Some(segment) = self.net.as_ref().and_then(|n| n.segment.as_ref()) {
            if segment.is_empty() {
                return Err(ConfigError {
                    key: "net.segment",
                    reason: "empty; name a segment of the gateway's [[overlay.segment]]".into(),
                });
            }
            if self.net.as_ref().is_some_and(|n| n.tap.is_some()) {
                return Err(ConfigError {
                    key: "net.segment",
                    reason: "set together with net.tap; a TAP-backed card is wired by whoever \
                             made the TAP, so name one of the two"
                        .into(),
                });
            }
        }
        if let Some(d) = &self.disk {
            if d.blocks_per_iteration == 0 {
                return Err(ConfigError {
                    key: "disk.blocks_per_iteration",
                    reason: "0; use at least 1".into(),
                });
            }
        }
        if let Some(w) = &self.memory_workload {
            let available = (self.mem_size - abi::WORKLOAD_BASE) / abi::PAGE_SIZE;
            if w.working_set_pages == 0 || w.working_set_pages > available {
                return Err(ConfigError {
                    key: "memory_workload.working_set_pages",
                    reason: format!(
                        "{} pages; use 1..={available} for {} bytes of memory",
                        w.working_set_pages, self.mem_size
                    ),
                });
            }
        }
        Ok(())
    }

    /// The boot-parameter block for this configuration.
    pub fn boot_params(&self, disk_sectors: u64) -> abi::BootParams {
        let mut p = abi::BootParams {
            magic: abi::BOOT_PARAMS_MAGIC,
            version: abi::BOOT_PARAMS_VERSION,
            mem_size: self.mem_size,
            ..Default::default()
        };
        if let Some(w) = &self.memory_workload {
            p.workloads |= abi::WORKLOAD_MEMORY;
            p.mem_seed = w.seed;
            p.mem_working_set_pages = w.working_set_pages;
            p.mem_pages_per_iteration = w.pages_per_iteration;
            p.mem_iterations = w.iterations;
            p.mem_iteration_period_ns = w.iteration_period.as_nanos() as u64;
            p.mem_page_writes = w.page_writes.mode().code();
        }
        if let Some(n) = &self.net {
            p.workloads |= abi::WORKLOAD_NET;
            p.net_mac = n.mac;
            p.net_ip = n.ip.octets();
            p.net_prefix_len = n.prefix_len;
            p.net_port = n.port;
        }
        if let Some(d) = &self.disk {
            p.workloads |= abi::WORKLOAD_DISK;
            p.disk_seed = d.seed;
            p.disk_sectors = disk_sectors;
            p.disk_blocks_per_iteration = d.blocks_per_iteration;
            p.disk_iterations = d.iterations;
        }
        p
    }

    /// What a migration destination must match.
    pub fn machine(&self) -> MachineConfig {
        let mut devices = Vec::new();
        if self.net.is_some() {
            devices.push("virtio-net".to_string());
        }
        if self.disk.is_some() {
            devices.push("virtio-blk".to_string());
        }
        MachineConfig {
            mem_size: self.mem_size,
            vcpus: 1,
            devices,
        }
    }
}

/// The shape of a machine: what source and destination must agree on.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MachineConfig {
    /// Guest memory in bytes.
    pub mem_size: u64,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// Device kinds, in bus order.
    pub devices: Vec<String>,
}

impl MachineConfig {
    /// Why `incoming` cannot be received into a VM shaped like `self`.
    pub fn mismatch(&self, incoming: &MachineConfig) -> Option<String> {
        if self.mem_size != incoming.mem_size {
            return Some(format!(
                "memory size differs: the source has {} bytes, this destination {} bytes; start the destination with the same --mem",
                incoming.mem_size, self.mem_size
            ));
        }
        if self.vcpus != incoming.vcpus {
            return Some(format!(
                "vCPU count differs: source {}, destination {}",
                incoming.vcpus, self.vcpus
            ));
        }
        if self.devices != incoming.devices {
            return Some(format!(
                "devices differ: source {:?}, destination {:?}; configure the same devices on both sides",
                incoming.devices, self.devices
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_key() {
        let bad = VmConfig {
            mem_size: 1000,
            ..Default::default()
        };
        assert_eq!(bad.validate().unwrap_err().key, "mem_size");
        let bad = VmConfig {
            memory_workload: Some(MemoryWorkloadConfig {
                working_set_pages: 1 << 30,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            bad.validate().unwrap_err().key,
            "memory_workload.working_set_pages"
        );
        assert!(VmConfig::default().validate().is_ok());
    }

    #[test]
    fn a_segment_must_be_named_and_not_beside_a_tap() {
        let net = |tap: Option<&str>, segment: Option<&str>| VmConfig {
            net: Some(NetConfig {
                mac: [2, 0, 0, 0, 0, 1],
                ip: Ipv4Addr::new(198, 18, 0, 2),
                prefix_len: 15,
                port: 7000,
                tap: tap.map(Into::into),
                segment: segment.map(Into::into),
            }),
            ..Default::default()
        };
        assert!(net(None, Some("lan")).validate().is_ok());
        assert!(net(Some("tap0"), None).validate().is_ok());
        for bad in [net(None, Some("")), net(Some("tap0"), Some("lan"))] {
            assert_eq!(bad.validate().unwrap_err().key, "net.segment");
        }
        // A config from a peer or client that does not know segments reads
        // as one without.
        let mut old = serde_json::to_value(net(None, None)).unwrap();
        assert!(old["net"].get("segment").is_none(), "{old}");
        old["net"].as_object_mut().unwrap().remove("segment");
        let read: VmConfig = serde_json::from_value(old).unwrap();
        assert_eq!(read.net.unwrap().segment, None);
    }

    #[test]
    fn machine_mismatch_is_explained() {
        let a = VmConfig::default().machine();
        let b = VmConfig {
            mem_size: 64 << 20,
            ..Default::default()
        }
        .machine();
        assert!(a.mismatch(&a).is_none());
        assert!(a.mismatch(&b).unwrap().contains("memory size"));
    }

    #[test]
    fn boot_params_select_workloads() {
        let c = VmConfig {
            memory_workload: Some(MemoryWorkloadConfig::default()),
            ..Default::default()
        };
        let p = c.boot_params(0);
        assert_eq!(p.workloads, abi::WORKLOAD_MEMORY);
        assert_eq!(p.mem_pages_per_iteration, 64);
        assert_eq!(p.magic, abi::BOOT_PARAMS_MAGIC);
        assert_eq!(p.mem_page_writes, 0, "one word per page write by default");
        let full = VmConfig {
            memory_workload: Some(MemoryWorkloadConfig {
                page_writes: PageWrites::Full,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            full.boot_params(0).mem_page_writes,
            abi::memory_workload::PageWriteMode::Full.code()
        );
    }
}
