//! Process faults, with real `wanmig gateway` processes (one per
//! site, `[vms] host = "process"`: every VM in its own `wanmig-vmm`
//! process) joined by the WAN emulator, and a real KVM guest migrating from
//! site-a to site-b:
//!
//! - the source gateway is SIGKILLed mid-migration: the VM runs on at A in
//!   its shim; the restarted gateway re-adopts it and says the migration
//!   was interrupted; B discards its partial copy; a retry succeeds;
//! - the destination gateway is SIGKILLed mid-migration: the VM runs on at
//!   A, intact, and A's record says the peer went away;
//! - the destination shim is SIGKILLed mid-migration: the same;
//! - the destination gateway is SIGKILLed after the handover: the VM runs
//!   on at B in its shim, A never resumes it, B's restarted gateway lists
//!   it (and A's restarted gateway says it migrated to B).
//!
//! Each checks the guest's memory-workload digests (read from the shim's
//! control socket) against an unmigrated run. Every process a test starts
//! is ended by its pid in a drop guard.

#[path = "fault_support.rs"]
mod fault_support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use fault_support::{assert_matches_reference, fault_vm, write_image, RTT, VM, WAIT};
use wanmig_e2e::{init_logging, Link, Mesh, MeshBuilder};
use wanmig_gateway::control_client::ControlClient;
use wanmig_gateway::migration::{MigrationRecord, Outcome};
use wanmig_gateway::peering::LinkState;
use wanmig_gateway::vms::{VmInfo, VmState};
use wanmig_migration::admin::MemSample;
use wanmig_migration::admin::{AdminRequest, AdminResponse};
use wanmig_migration::machine::VmConfig;
use wanmig_netem::LinkParams;
use wanmig_vmm::admin;

/// The `wanmig` and `wanmig-vmm` binaries of this checkout.
///
/// `cargo test --workspace` (the README's test command, and CI's) builds
/// both into `<target>/<profile>/` before any test runs, because the
/// gateway and shim packages have integration tests of their own: those are
/// used when they are newer than every source file they are built from.
/// Otherwise (`cargo test -p wanmig-e2e` after an edit) they are built once
/// per test binary into their own target directory (`<target>/fault-bins`):
/// a `cargo build` of two packages resolves other crate features than the
/// test build that runs it, and building into the shared directory would
/// make each rebuild the other's dependencies.
fn binaries() -> &'static (PathBuf, PathBuf) {
    static BINS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    BINS.get_or_init(|| {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        // This test runs from <target>/<profile>/deps/.
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.ancestors().nth(2).unwrap();
        let built = (profile_dir.join("wanmig"), profile_dir.join("wanmig-vmm"));
        if fresh(&built.0, workspace) && fresh(&built.1, workspace) {
            return built;
        }
        let target = exe.ancestors().nth(3).unwrap().join("fault-bins");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(workspace)
            .arg("build")
            .arg("--target-dir")
            .arg(&target)
            .args([
                "-p",
                "wanmig-gateway",
                "--bin",
                "wanmig",
                "-p",
                "wanmig-vmm",
                "--bin",
                "wanmig-vmm",
            ])
            .status()
            .expect("running cargo build for the gateway and shim binaries");
        assert!(status.success(), "building wanmig and wanmig-vmm failed");
        let dir = target.join("debug");
        (dir.join("wanmig"), dir.join("wanmig-vmm"))
    })
}

/// Whether the binary at `bin` exists and is newer than every source file
/// of the crates it is built from (and the lock file).
fn fresh(bin: &Path, workspace: &Path) -> bool {
    let Ok(built) = std::fs::metadata(bin).and_then(|m| m.modified()) else {
        return false;
    };
    let crates = [
        "gateway", "vmm-shim", "codec", "overlay", "netem", "storage", "testenv",
    ];
    let mut newest = std::fs::metadata(workspace.join("Cargo.lock"))
        .and_then(|m| m.modified())
        .ok();
    let mut stack: Vec<PathBuf> = crates.iter().map(|c| workspace.join(c)).collect();
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            if path.is_dir() {
                // Build outputs and the tests/benches of each crate are not
                // part of the binaries.
                if !matches!(name.to_str(), Some("target" | "tests" | "benches")) {
                    stack.push(path);
                }
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("rs" | "toml" | "ld" | "x")
            ) {
                let modified = entry.metadata().and_then(|m| m.modified()).ok();
                newest = newest.max(modified);
            }
        }
    }
    newest.is_some_and(|n| n <= built)
}

/// Whether `pid` is a live (not zombie) process.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "pid (comm) S ...": the state follows the closing parenthesis.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|s| s != 'Z' && s != 'X'),
        Err(_) => false,
    }
}

/// SIGKILLs `pid` if it is a live `wanmig-vmm` (a shim this test's gateways
/// started: re-checked by its command line, so a reused pid is spared).
fn kill_shim(pid: u32) {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if alive(pid) && String::from_utf8_lossy(&cmdline).contains("wanmig-vmm") {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
}

/// One site's `wanmig gateway` process.
struct GatewayProc {
    site: String,
    config: PathBuf,
    control: SocketAddr,
    token: PathBuf,
    vms_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// Every shim pid this test saw, to end them all at the end.
    seen: std::sync::Mutex<Vec<u32>>,
}

impl GatewayProc {
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(&binaries().0)
            .arg("gateway")
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawning wanmig gateway");
        self.child = Some(child);
    }

    /// SIGKILLs the gateway (its shims live on).
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn client(&self) -> ControlClient {
        ControlClient::with_token_file(self.control, &self.token).unwrap()
    }

    /// Waits until the control API answers and the peer is up.
    async fn wait_up(&self) -> ControlClient {
        let deadline = Instant::now() + WAIT;
        loop {
            if self.token.exists() {
                let c = self.client();
                if let Ok(s) = c.status().await {
                    if s.peers.iter().all(|p| p.state == LinkState::Up) {
                        return c;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "{} did not come up; its log: {}",
                self.site,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The shim's directory, control socket and pid.
    fn shim_control(&self) -> PathBuf {
        self.vms_dir.join(VM).join("control.sock")
    }

    fn shim_pid(&self) -> Option<u32> {
        let pid = std::fs::read_to_string(self.vms_dir.join(VM).join("pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        if let Some(p) = pid {
            self.seen.lock().unwrap().push(p);
        }
        pid
    }
}

impl Drop for GatewayProc {
    fn drop(&mut self) {
        self.kill();
        let _ = self.shim_pid();
        for pid in self.seen.lock().unwrap().drain(..) {
            kill_shim(pid);
        }
    }
}

/// Two gateway processes over an emulated link; the mesh keeps the relay
/// and the directory (its in-process gateways are not started). Fields drop
/// in order: the processes (and their shims, found through the pid files)
/// before the directory.
struct Sites {
    a: GatewayProc,
    b: GatewayProc,
    mesh: Mesh,
}

async fn sites(rate: u64) -> Sites {
    sites_slow_b(rate, Duration::ZERO).await
}

/// [`sites`] whose B→A direction takes `slow_b_to_a` longer (to hold a
/// message from B in flight while the test cuts the link).
async fn sites_slow_b(rate: u64, slow_b_to_a: Duration) -> Sites {
    init_logging();
    let (_, vmm) = binaries();
    let mut prepared = MeshBuilder::new(2)
        .link(Link {
            forward: LinkParams::wan(RTT, rate),
            reverse: LinkParams::wan(RTT, rate).with_delay(RTT / 2 + slow_b_to_a),
        })
        .hints((rate / 1_000_000) as f64, RTT)
        .extra_config(&format!(
            "[vms]\nhost = \"process\"\ndir = \"{{site}}-vms\"\nvmm = \"{}\"\n\n[migration]\nhandover_wait = \"{}s\"\n",
            vmm.display(),
            fault_support::HANDOVER_WAIT.as_secs()
        ))
        .prepare()
        .await
        .unwrap();
    let mut procs = Vec::new();
    for site in ["site-a", "site-b"] {
        // The gateway process binds the address itself.
        drop(prepared.take_socket(site));
        let config = prepared.config_path(site).to_path_buf();
        let control = SocketAddr::from(([127, 0, 0, 1], wanmig_testenv::free_tcp_port()));
        let text = std::fs::read_to_string(&config).unwrap().replace(
            "[control]\nlisten = \"127.0.0.1:0\"",
            &format!("[control]\nlisten = \"{control}\""),
        );
        assert!(text.contains(&control.to_string()));
        std::fs::write(&config, text).unwrap();
        let dir = prepared.dir().to_path_buf();
        let mut p = GatewayProc {
            site: site.into(),
            config,
            control,
            token: dir.join(format!("{site}.token")),
            vms_dir: dir.join(format!("{site}-vms")),
            log: dir.join(format!("{site}.log")),
            child: None,
            seen: Default::default(),
        };
        p.spawn();
        procs.push(p);
    }
    let mesh = prepared.start().await.unwrap();
    let b = procs.pop().unwrap();
    let a = procs.pop().unwrap();
    a.wait_up().await;
    b.wait_up().await;
    Sites { a, b, mesh }
}

fn samples(control: &Path) -> Vec<MemSample> {
    match admin::request_timeout(control, &AdminRequest::Samples, Some(WAIT)) {
        Ok(AdminResponse::Samples { samples }) => samples,
        other => panic!("samples from {}: {other:?}", control.display()),
    }
}

/// The guest's latest iteration, from its shim.
fn shim_iteration(control: &Path) -> u64 {
    match admin::request_timeout(control, &AdminRequest::Status, Some(WAIT)) {
        Ok(AdminResponse::Status(s)) => s.mem_iteration,
        _ => 0,
    }
}

/// Waits until the guest behind `control` passes iteration `n`.
async fn wait_shim_iteration(control: &Path, n: u64) {
    let deadline = Instant::now() + WAIT;
    while shim_iteration(control) < n {
        assert!(Instant::now() < deadline, "iteration {n} not reached");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn vm_info(c: &ControlClient) -> Option<VmInfo> {
    c.vms()
        .await
        .unwrap()
        .vms
        .into_iter()
        .find(|v| v.name == VM)
}

async fn start_guest(s: &Sites, config: &VmConfig) {
    let ca = s.a.client();
    ca.start_vm(VM, config).await.expect("the VM starts at A");
    wait_shim_iteration(&s.a.shim_control(), 10).await;
}

async fn begin(c: &ControlClient) -> String {
    let body = serde_json::from_value(serde_json::json!({ "vm": VM, "to": "site-b" })).unwrap();
    c.migrate(&body).await.expect("the migration starts").id
}

async fn wait_record(
    c: &ControlClient,
    id: &str,
    what: &str,
    f: impl Fn(&MigrationRecord) -> bool,
) -> MigrationRecord {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(r) = c.migration(id).await {
            if f(&r) {
                return r;
            }
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Migrates and waits until round 0 is on the wire.
async fn migrate_until_round_0(c: &ControlClient) -> String {
    let id = begin(c).await;
    let r = wait_record(c, &id, "round 0", |r| r.progress.pages > 0).await;
    assert_eq!(r.progress.round, 0, "{r:?}");
    id
}

/// The migration failed: the VM runs on at A in its shim, intact, and A's
/// record and VM list say why.
async fn kept_at_a(s: &Sites, config: &VmConfig, id: &str) -> MigrationRecord {
    let ca = s.a.client();
    let rec = wait_record(&ca, id, "the migration to end", |r| r.finished()).await;
    eprintln!("A: {}", serde_json::to_string_pretty(&rec).unwrap());
    assert_eq!(rec.outcome, Some(Outcome::FailedKeptAtSource), "{rec:?}");
    assert!(rec.error.is_some(), "{rec:?}");
    let v = vm_info(&ca).await.unwrap();
    assert_eq!(v.state, VmState::Running, "{v:?}");
    assert!(
        v.last_error.as_deref().unwrap_or("").contains("site-b"),
        "{v:?}"
    );
    let control = s.a.shim_control();
    let now = shim_iteration(&control);
    wait_shim_iteration(&control, now + 5).await;
    assert_matches_reference(config, &samples(&control), "at A");
    rec
}

/// B holds nothing of the VM: its shim is gone and its list has no VM.
async fn nothing_at_b(s: &Sites, b_shim: Option<u32>) {
    let deadline = Instant::now() + WAIT;
    while b_shim.is_some_and(alive) {
        assert!(Instant::now() < deadline, "B's shim did not give up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if s.b.child.is_some() {
        let v = vm_info(&s.b.client()).await;
        assert!(
            v.as_ref().is_none_or(|v| v.state != VmState::Running),
            "{v:?}"
        );
    }
}

/// Waits for B's shim to exist (the incoming migration started there).
async fn b_shim_started(s: &Sites) -> u32 {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(pid) = s.b.shim_pid() {
            return pid;
        }
        assert!(Instant::now() < deadline, "B never started a shim");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A slow link and a guest whose round 0 takes seconds on it.
async fn slow_setup() -> (Sites, VmConfig) {
    let s = sites(8_000_000).await;
    let config = fault_vm(Some(write_image(
        &s.mesh.dir().join("images"),
        32 << 20,
        5 << 20,
    )));
    start_guest(&s, &config).await;
    (s, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_gateway_killed_mid_migration_the_restarted_gateway_readopts_the_vm() {
    if !wanmig_testenv::require_kvm("source_gateway_killed_mid_migration") {
        return;
    }
    let (mut s, config) = slow_setup().await;
    let a_shim = s.a.shim_pid().unwrap();
    let id = migrate_until_round_0(&s.a.client()).await;
    let b_shim = b_shim_started(&s).await;
    s.a.kill();
    // The shim saw its migration stream end: the VM runs on at A.
    let control = s.a.shim_control();
    let now = shim_iteration(&control);
    wait_shim_iteration(&control, now + 5).await;
    assert!(alive(a_shim));
    // B gives its partial copy up (its link to A times out).
    nothing_at_b(&s, Some(b_shim)).await;
    let inc = wait_record(&s.b.client(), &id, "B to end the migration", |r| {
        r.finished()
    })
    .await;
    assert_ne!(inc.outcome, Some(Outcome::Succeeded), "{inc:?}");

    // The restarted gateway re-adopts the VM and says what happened.
    s.a.spawn();
    let ca = s.a.wait_up().await;
    let v = vm_info(&ca)
        .await
        .expect("the restarted gateway lists the VM");
    eprintln!("A after restart: {v:?}");
    assert_eq!(v.state, VmState::Running);
    let note = v.last_error.unwrap_or_default();
    assert!(
        note.contains("interrupted") && note.contains("site-b"),
        "{note}"
    );
    assert!(v.iteration > now, "{}", v.iteration);
    assert_eq!(s.a.shim_pid(), Some(a_shim), "the same shim");
    // What the operator's `wanmig status` prints.
    let out = Command::new(&binaries().0)
        .arg("status")
        .arg("--config")
        .arg(&s.a.config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains(VM) && text.contains("interrupted"), "{text}");
    assert_matches_reference(&config, &samples(&control), "at A");

    // A retry over the same link succeeds, and the VM runs at B only.
    let again = begin(&ca).await;
    let rec = wait_record(&ca, &again, "the retry to end", |r| r.finished()).await;
    assert_eq!(rec.outcome, Some(Outcome::Succeeded), "{rec:?}");
    let b_control = s.b.shim_control();
    let at_b = shim_iteration(&b_control);
    wait_shim_iteration(&b_control, at_b + 10).await;
    assert_matches_reference(&config, &samples(&b_control), "at B");
    let deadline = Instant::now() + WAIT;
    while alive(a_shim) {
        assert!(
            Instant::now() < deadline,
            "A's shim must end after the handover"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        vm_info(&ca).await.unwrap().state,
        VmState::MigratedAway {
            to: "site-b".into()
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_gateway_killed_mid_migration_keeps_the_vm_at_the_source() {
    if !wanmig_testenv::require_kvm("destination_gateway_killed_mid_migration") {
        return;
    }
    let (mut s, config) = slow_setup().await;
    let id = migrate_until_round_0(&s.a.client()).await;
    let b_shim = b_shim_started(&s).await;
    s.b.kill();
    let rec = kept_at_a(&s, &config, &id).await;
    // B's half-received shim ends with its stream.
    nothing_at_b(&s, Some(b_shim)).await;
    eprintln!("A's record says: {:?}", rec.error);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_shim_killed_mid_migration_keeps_the_vm_at_the_source() {
    if !wanmig_testenv::require_kvm("destination_shim_killed_mid_migration") {
        return;
    }
    let (s, config) = slow_setup().await;
    let id = migrate_until_round_0(&s.a.client()).await;
    let b_shim = b_shim_started(&s).await;
    kill_shim(b_shim);
    kept_at_a(&s, &config, &id).await;
    nothing_at_b(&s, Some(b_shim)).await;
    // B's record says its shim failed.
    let inc = wait_record(&s.b.client(), &id, "B to end the migration", |r| {
        r.finished()
    })
    .await;
    assert_ne!(inc.outcome, Some(Outcome::Succeeded), "{inc:?}");
    let err = inc.error.unwrap_or_default();
    assert!(err.contains("wanmig-vmm"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_gateway_killed_after_the_handover_the_vm_runs_on_there() {
    if !wanmig_testenv::require_kvm("destination_gateway_killed_after_the_handover") {
        return;
    }
    let mut s = sites(100_000_000).await;
    let config = fault_vm(None);
    start_guest(&s, &config).await;
    let a_shim = s.a.shim_pid().unwrap();
    let ca = s.a.client();
    let id = begin(&ca).await;
    let rec = wait_record(&ca, &id, "the migration to end", |r| r.finished()).await;
    assert_eq!(rec.outcome, Some(Outcome::Succeeded), "{rec:?}");
    let b_shim = s.b.shim_pid().unwrap();
    s.b.kill();
    // The VM runs on at B in its shim, and only there.
    let b_control = s.b.shim_control();
    let now = shim_iteration(&b_control);
    wait_shim_iteration(&b_control, now + 10).await;
    assert!(alive(b_shim));
    let deadline = Instant::now() + WAIT;
    while alive(a_shim) {
        assert!(
            Instant::now() < deadline,
            "A's shim must end after the handover"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        vm_info(&ca).await.unwrap().state,
        VmState::MigratedAway {
            to: "site-b".into()
        }
    );
    // B's restarted gateway lists it, running.
    s.b.spawn();
    let cb = s.b.wait_up().await;
    let v = vm_info(&cb)
        .await
        .expect("B's restarted gateway lists the VM");
    assert_eq!(v.state, VmState::Running, "{v:?}");
    assert!(v.iteration > now, "{v:?}");
    assert_eq!(s.b.shim_pid(), Some(b_shim));
    assert_matches_reference(&config, &samples(&b_control), "at B");
    // A restarted gateway at A still says where the VM went (and does not
    // run it).
    s.a.kill();
    s.a.spawn();
    let ca = s.a.wait_up().await;
    assert_eq!(
        vm_info(&ca).await.unwrap().state,
        VmState::MigratedAway {
            to: "site-b".into()
        }
    );
    assert!(!alive(a_shim));
}

/// B's restarted gateway has no record of the migration: asked to settle
/// it, it answers by whether the VM runs there (it does, in its shim), so A
/// records the move as confirmed late instead of "runs nowhere".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_gateway_restarted_before_the_source_heard_resumed_settles_as_running_there() {
    if !wanmig_testenv::require_kvm("destination_gateway_restarted_before_the_source_heard") {
        return;
    }
    // B's answers take 250 ms longer: `Resumed` is still on the wire when
    // the test cuts the link.
    let mut s = sites_slow_b(100_000_000, Duration::from_millis(250)).await;
    let config = fault_vm(None);
    start_guest(&s, &config).await;
    let ca = s.a.client();
    let id = begin(&ca).await;
    let report = s.b.vms_dir.join(VM).join("report.json");
    let deadline = Instant::now() + WAIT;
    while !report.exists() {
        assert!(Instant::now() < deadline, "the VM never resumed at B");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    s.mesh.relay("site-a", "site-b").cut();
    s.b.kill();
    let rec = wait_record(&ca, &id, "the migration to end", |r| r.finished()).await;
    assert_eq!(rec.outcome, Some(Outcome::HandoverUnconfirmed), "{rec:?}");
    let b_control = s.b.shim_control();
    let now = shim_iteration(&b_control);
    wait_shim_iteration(&b_control, now + 5).await;
    // B comes back (its shim ran on), then the link.
    s.b.spawn();
    s.mesh.relay("site-a", "site-b").restore();
    s.b.wait_up().await;
    let settled = wait_record(&ca, &id, "A to settle with B", |r| {
        r.resolution
            .as_deref()
            .is_some_and(|n| !n.contains("asking"))
    })
    .await;
    eprintln!("A: {}", serde_json::to_string_pretty(&settled).unwrap());
    assert_eq!(settled.outcome, Some(Outcome::Succeeded), "{settled:?}");
    assert_eq!(
        vm_info(&ca).await.unwrap().state,
        VmState::MigratedAway {
            to: "site-b".into()
        }
    );
    assert_matches_reference(&config, &samples(&b_control), "at B");
}
