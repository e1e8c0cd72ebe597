//! Test environment for wanmig's tests: capability gates and namespace guards.
//!
//! Tests that need KVM or root-level networking (namespaces, TAP, veth) call
//! [`require_kvm`] / [`require_netns`] first. When the capability is missing
//! the test is skipped with a printed reason — unless `WANMIG_REQUIRE_KVM=1`
//! or `WANMIG_REQUIRE_NETNS=1` is set (CI sets both), in which case the test
//! fails, so a CI machine that lost a capability cannot pass by skipping.
//!
//! [`Netns`] creates a uniquely named network namespace and deletes it on
//! drop, so a failed test leaves nothing behind. [`unique_name`] gives
//! interface/namespace names that stay unique across parallel tests and
//! processes and fit Linux's 15-character interface-name limit.
//! [`free_tcp_port`] / [`free_udp_port`] give ports a child process binds.
//! [`qemu`] gates tests on QEMU (`WANMIG_REQUIRE_QEMU=1` makes a missing
//! QEMU a failure) and holds a QMP client and a test guest firmware.

mod ports;
pub mod qemu;

pub use ports::{free_tcp_port, free_udp_port};

use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

/// Why a capability is unavailable, or `Ok(())` when it is usable.
pub fn kvm_status() -> Result<(), String> {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => Ok(()),
        Err(e) => Err(format!("/dev/kvm cannot be opened read-write: {e}")),
    }
}

/// Whether this process may create network namespaces, TAP devices and veths.
pub fn netns_status() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { geteuid() };
    if euid != 0 {
        return Err(format!(
            "not root (euid {euid}); namespaces and TAP need CAP_NET_ADMIN"
        ));
    }
    if !Path::new("/dev/net/tun").exists() {
        return Err("/dev/net/tun is missing".into());
    }
    match Command::new("ip").arg("-V").output() {
        Ok(o) if o.status.success() => {}
        _ => return Err("the `ip` command (iproute2) is not installed".into()),
    }
    let probe = unique_name("wmp");
    let add = run(&["ip", "netns", "add", &probe]);
    if !add.status.success() {
        return Err(format!(
            "`ip netns add` failed: {}",
            String::from_utf8_lossy(&add.stderr).trim()
        ));
    }
    run(&["ip", "netns", "del", &probe]);
    Ok(())
}

extern "C" {
    fn geteuid() -> u32;
}

fn gate(test: &str, what: &str, env: &str, status: Result<(), String>) -> bool {
    match status {
        Ok(()) => true,
        Err(reason) => {
            let required = std::env::var(env).map(|v| v == "1").unwrap_or(false);
            if required {
                panic!("{test}: needs {what} but {reason} ({env}=1 is set, so this fails instead of skipping)");
            }
            eprintln!(
                "SKIPPED {test}: needs {what}: {reason} (set {env}=1 to make this a failure)"
            );
            false
        }
    }
}

/// Returns true when the test may use KVM; false (after printing why) when it
/// should return early. Panics when KVM is missing and `WANMIG_REQUIRE_KVM=1`.
pub fn require_kvm(test: &str) -> bool {
    gate(test, "KVM", "WANMIG_REQUIRE_KVM", kvm_status())
}

/// Returns true when the test may create namespaces, TAP devices and veths.
/// Panics when they are unavailable and `WANMIG_REQUIRE_NETNS=1`.
pub fn require_netns(test: &str) -> bool {
    gate(
        test,
        "network namespaces (root)",
        "WANMIG_REQUIRE_NETNS",
        netns_status(),
    )
}

/// A name unique across this process's calls and across concurrently running
/// test processes, at most 15 characters (the Linux interface-name limit)
/// when `prefix` has at most 5 (and the process asks for at most 4096).
/// The `-` keeps the pid and the counter apart: without it pid 0x1a2 with
/// counter 3 and pid 0x1a with counter 0x23 gave the same name.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id() & 0xff_ffff;
    format!("{prefix}{pid:x}-{n:x}")
}

/// Runs a command and returns its output; a command that cannot be started
/// yields a failed `Output` carrying the spawn error on stderr.
pub fn run(argv: &[&str]) -> Output {
    match Command::new(argv[0]).args(&argv[1..]).output() {
        Ok(o) => o,
        Err(e) => failed_output(format!("cannot run {}: {e}", argv[0])),
    }
}

/// Runs a command and panics with its stderr when it fails (for test setup).
pub fn sh(argv: &[&str]) -> String {
    let o = run(argv);
    assert!(
        o.status.success(),
        "`{}` failed: {}",
        argv.join(" "),
        String::from_utf8_lossy(&o.stderr).trim()
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn failed_output(msg: String) -> Output {
    use std::os::unix::process::ExitStatusExt;
    Output {
        status: std::process::ExitStatus::from_raw(127 << 8),
        stdout: Vec::new(),
        stderr: msg.into_bytes(),
    }
}

/// A network namespace that exists for the guard's lifetime.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `<prefix><unique>` and brings its loopback up.
    pub fn create(prefix: &str) -> std::io::Result<Self> {
        let name = unique_name(prefix);
        let o = run(&["ip", "netns", "add", &name]);
        if !o.status.success() {
            return Err(std::io::Error::other(format!(
                "ip netns add {name}: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )));
        }
        let ns = Netns { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs a command inside the namespace.
    pub fn run(&self, argv: &[&str]) -> Output {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(argv);
        run(&full)
    }

    /// Runs a command inside the namespace and panics when it fails.
    pub fn exec(&self, argv: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(argv);
        sh(&full)
    }

    /// A `Command` that runs `program` inside the namespace (for spawning).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        run(&["ip", "netns", "del", &self.name]);
    }
}

/// A host network interface (veth end, bridge, VXLAN device) deleted on drop.
#[derive(Debug)]
pub struct LinkGuard(pub String);

impl Drop for LinkGuard {
    fn drop(&mut self) {
        run(&["ip", "link", "del", &self.0]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_fit_interface_limit_and_differ() {
        let a = unique_name("wmabc");
        let b = unique_name("wmabc");
        assert_ne!(a, b);
        assert!(a.len() <= 15, "{a} is longer than 15 characters");
        // Names differ from another process's even where the hex digits of
        // pid and counter would run together.
        let (pid, n) = a["wmabc".len()..].split_once('-').expect("a separator");
        assert_eq!(
            u32::from_str_radix(pid, 16).unwrap(),
            std::process::id() & 0xff_ffff
        );
        assert!(u32::from_str_radix(n, 16).is_ok(), "{a}");
    }

    #[test]
    fn namespace_is_removed_on_drop() {
        if !require_netns("namespace_is_removed_on_drop") {
            return;
        }
        let name = {
            let ns = Netns::create("wmt").unwrap();
            let list = sh(&["ip", "netns", "list"]);
            assert!(list.contains(ns.name()));
            ns.name().to_string()
        };
        let list = sh(&["ip", "netns", "list"]);
        assert!(!list.contains(&name), "{name} still exists after drop");
    }
}
