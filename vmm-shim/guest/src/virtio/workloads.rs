//! Starts the virtio-based workloads the boot parameters select (TCP
//! service, disk workload) and steps them from the guest's main loop. A
//! workload whose device cannot be set up is reported on the console and
//! left out; the others keep running.

use wanmig_guest_abi as abi;

use super::decimal::Dec;
use super::disk_workload::DiskWorkload;
use super::tcp_service::TcpService;

/// The running virtio workloads.
pub struct Workloads {
    net: Option<TcpService>,
    disk: Option<DiskWorkload>,
}

impl Workloads {
    /// Set up what `params.workloads` asks for (`WORKLOAD_NET`, `WORKLOAD_DISK`).
    pub fn start(params: &abi::BootParams, now_ms: u64) -> Self {
        let net = if params.workloads & abi::WORKLOAD_NET != 0 {
            match TcpService::new(params, now_ms) {
                Ok(s) => {
                    let [a, b, c, d] = params.net_ip.map(|x| Dec(u64::from(x)));
                    let port = Dec(u64::from(params.net_port));
                    crate::println!("wanmig-guest: tcp service on {a}.{b}.{c}.{d}:{port}");
                    Some(s)
                }
                Err(e) => {
                    crate::println!("wanmig-guest: tcp service not started: {e}");
                    None
                }
            }
        } else {
            None
        };
        let disk = if params.workloads & abi::WORKLOAD_DISK != 0 {
            match DiskWorkload::new(params) {
                Ok(d) => Some(d),
                Err(e) => {
                    crate::println!("wanmig-guest: disk workload not started: {e}");
                    None
                }
            }
        } else {
            None
        };
        Workloads { net, disk }
    }

    /// One bounded round of work for each workload; returns whether any of
    /// them did something (the caller may idle when none did).
    pub fn step(&mut self, now_ms: u64) -> bool {
        let mut busy = false;
        if let Some(net) = self.net.as_mut() {
            busy |= net.step(now_ms);
        }
        if let Some(disk) = self.disk.as_mut() {
            if disk.step(now_ms) {
                busy = true;
            } else {
                let p = disk.progress();
                crate::println!(
                    "wanmig-guest: disk workload done: {} iterations, {} blocks verified, {} errors, digest {:#018x}",
                    Dec(p.iterations),
                    Dec(p.verified),
                    Dec(p.errors),
                    p.digest
                );
                self.disk = None;
            }
        }
        busy
    }
}
