//! The `wanmig` binary end to end: `certs`, config errors from `gateway`,
//! `status` / `probe` / `vm` against two real gateway processes on
//! loopback, and sizes and rates reading the same in every subcommand.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn wanmig() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_wanmig"));
    c.env_remove("RUST_LOG").env_remove("WANMIG_CONFIG");
    c
}

fn run(args: &[&str]) -> Output {
    wanmig()
        .args(args)
        .output()
        .expect("runs the wanmig binary")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Kills the gateway process it owns (by its pid, via the Child) on drop.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

use wanmig_testenv::{free_tcp_port, free_udp_port};

fn make_certs(dir: &Path, sites: &str) {
    let out = dir.join("certs");
    let o = run(&["certs", "--out", out.to_str().unwrap(), "--sites", sites]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn certs_writes_a_ca_and_private_site_keys_and_adds_sites() {
    let d = tempfile::tempdir().unwrap();
    make_certs(d.path(), "site-a,site-b");
    let certs = d.path().join("certs");
    for f in [
        "ca.pem",
        "ca.key",
        "site-a.pem",
        "site-a.key",
        "site-b.pem",
        "site-b.key",
    ] {
        let meta = std::fs::metadata(certs.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        if f.ends_with(".key") {
            assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{f}");
        }
    }
    // Re-running does not silently replace the CA.
    let again = run(&[
        "certs",
        "--out",
        certs.to_str().unwrap(),
        "--sites",
        "site-a",
    ]);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("--force"), "{}", stderr(&again));

    let add = run(&[
        "certs",
        "add-site",
        "--dir",
        certs.to_str().unwrap(),
        "site-c",
    ]);
    assert!(add.status.success(), "{}", stderr(&add));
    assert!(certs.join("site-c.pem").exists());

    let bad = run(&[
        "certs",
        "--out",
        certs.to_str().unwrap(),
        "--sites",
        "Not_A_Label",
    ]);
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).contains("invalid site name"),
        "{}",
        stderr(&bad)
    );
}

fn config(site: &str, listen: u16, control: u16, peer: &str, peer_port: u16) -> String {
    format!(
        r#"site = "{site}"
listen = "127.0.0.1:{listen}"
[tls]
ca = "certs/ca.pem"
cert = "certs/{site}.pem"
key = "certs/{site}.key"
[control]
listen = "127.0.0.1:{control}"
token_file = "{site}.token"
[transport]
idle_timeout = "3s"
keep_alive = "500ms"
reconnect_initial = "100ms"
reconnect_max = "1s"
[[peers]]
site = "{peer}"
address = "127.0.0.1:{peer_port}"
bandwidth_mbit = 1000
rtt = "1ms"
[overlay]
[[overlay.segment]]
name = "lan"
vni = 100
"#
    )
}

#[test]
fn gateway_config_errors_name_the_file_and_the_key() {
    let d = tempfile::tempdir().unwrap();
    make_certs(d.path(), "site-a,site-b");
    let good = config("site-a", 1, 2, "site-b", 3);
    let cases: [(&str, String, &[&str]); 4] = [
        (
            "bad-address.toml",
            good.replace("127.0.0.1:3", "x"),
            &["peers[0].address", "invalid socket address 'x'"],
        ),
        (
            "unknown-key.toml",
            good.replace("[transport]", "[transport]\nwindow_scale = 7"),
            &["window_scale", "unknown field"],
        ),
        (
            "missing-cert.toml",
            good.replace("certs/site-a.pem", "certs/nope.pem"),
            &["tls.cert", "nope.pem"],
        ),
        (
            "bad-duration.toml",
            good.replace("\"3s\"", "\"soon\""),
            &["transport.idle_timeout", "soon"],
        ),
    ];
    for (name, text, needles) in cases {
        let path = d.path().join(name);
        std::fs::write(&path, text).unwrap();
        let o = run(&["gateway", "--config", path.to_str().unwrap()]);
        assert!(!o.status.success(), "{name} started");
        let err = stderr(&o);
        assert!(err.contains(path.to_str().unwrap()), "{name}: {err}");
        for n in needles {
            assert!(err.contains(n), "{name}: '{n}' missing in: {err}");
        }
    }
    let missing = d.path().join("does-not-exist.toml");
    let o = run(&["gateway", "--config", missing.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("cannot read config file"),
        "{}",
        stderr(&o)
    );
}

fn start_gateway(config: &Path) -> Daemon {
    let child = wanmig()
        .args(["gateway", "--config", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawns wanmig gateway");
    Daemon(child)
}

fn status_json(cfg: &Path) -> Option<serde_json::Value> {
    let o = run(&["status", "--config", cfg.to_str().unwrap(), "--json"]);
    if !o.status.success() {
        return None;
    }
    serde_json::from_slice(&o.stdout).ok()
}

#[test]
fn status_and_probe_talk_to_running_gateways() {
    let d = tempfile::tempdir().unwrap();
    make_certs(d.path(), "site-a,site-b");
    let (qa, qb) = (free_udp_port(), free_udp_port());
    let (ca, cb) = (free_tcp_port(), free_tcp_port());
    let cfg_a: PathBuf = d.path().join("site-a.toml");
    let cfg_b: PathBuf = d.path().join("site-b.toml");
    std::fs::write(&cfg_a, config("site-a", qa, ca, "site-b", qb)).unwrap();
    std::fs::write(&cfg_b, config("site-b", qb, cb, "site-a", qa)).unwrap();
    let _a = start_gateway(&cfg_a);
    let _b = start_gateway(&cfg_b);

    let deadline = Instant::now() + Duration::from_secs(30);
    let up = loop {
        let s = status_json(&cfg_a);
        let up = s
            .as_ref()
            .map(|s| s["peers"][0]["state"] == "up")
            .unwrap_or(false);
        if up || Instant::now() > deadline {
            break up;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(up, "site-a never saw site-b up: {:?}", status_json(&cfg_a));

    let table = run(&["status", "--config", cfg_a.to_str().unwrap()]);
    assert!(table.status.success(), "{}", stderr(&table));
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("PEER") && text.contains("STATE"), "{text}");
    let row = text
        .lines()
        .find(|l| l.starts_with("site-b"))
        .expect("a row for site-b");
    assert!(row.contains(" up ") && row.contains(" dial "), "{row}");

    let probe = run(&[
        "probe",
        "--config",
        cfg_a.to_str().unwrap(),
        "--to",
        "site-b",
        "--bytes",
        "2M",
        "--json",
    ]);
    assert!(probe.status.success(), "{}", stderr(&probe));
    let report: serde_json::Value = serde_json::from_slice(&probe.stdout).unwrap();
    assert_eq!(report["bytes"], 2 << 20, "2M is 2 MiB, as everywhere");
    assert_eq!(report["peer"], "site-b");
    assert!(report["goodput_mbit"].as_f64().unwrap() > 0.0);

    // A wrong token is refused with a message that says what to fix.
    let wrong = d.path().join("wrong.token");
    std::fs::write(&wrong, "deadbeef\n").unwrap();
    let addr = format!("127.0.0.1:{ca}");
    let o = run(&[
        "status",
        "--control",
        &addr,
        "--token-file",
        wrong.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("rejected the token"), "{}", stderr(&o));

    // What the gateway does not allow is refused before anything boots,
    // naming the flag and the setting to look at.
    let cfg = cfg_a.to_str().unwrap();
    let outside = d.path().join("outside.img");
    std::fs::write(&outside, [0u8; 4096]).unwrap();
    let outside = outside.to_str().unwrap();
    for (flags, needles) in [
        (
            &["--net", "nosuch"][..],
            &["--net", "net.segment", "nosuch", "[[overlay.segment]]"][..],
        ),
        (&["--mem-image", outside], &["--mem-image", "image_dirs"]),
        (&["--disk", outside], &["--disk", "disk_dirs"]),
    ] {
        let mut args = vec!["vm", "start", "--config", cfg, "refused"];
        args.extend_from_slice(flags);
        let o = run(&args);
        assert!(!o.status.success(), "{flags:?} was accepted");
        for n in needles {
            assert!(
                stderr(&o).contains(n),
                "{flags:?}: lacks {n:?}: {}",
                stderr(&o)
            );
        }
    }

    // `vm start --mem 64M` places a VM with 64 MiB, the same 64M that
    // `wanmig demo --mem` means (see demo_reads_sizes_and_rates_as_every_command_does).
    if wanmig_testenv::require_kvm("status_and_probe_talk_to_running_gateways (vm start)") {
        let cfg = cfg_a.to_str().unwrap();
        let o = run(&["vm", "start", "--config", cfg, "--mem", "64M", "web"]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("64.0 MiB of memory"),
            "{}",
            String::from_utf8_lossy(&o.stdout)
        );
        let o = run(&["vm", "list", "--config", cfg, "--json"]);
        assert!(o.status.success(), "{}", stderr(&o));
        let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let web = list["vms"]
            .as_array()
            .and_then(|v| v.iter().find(|vm| vm["name"] == "web"))
            .unwrap_or_else(|| panic!("web in {list}"));
        assert_eq!(web["mem_size"], 64u64 << 20, "{web}");

        // `--net` alone gives the card a MAC and an address derived from
        // the name.
        let o = run(&["vm", "start", "--config", cfg, "--net", "lan", "web2"]);
        assert!(o.status.success(), "{}", stderr(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            out.contains("segment lan as 10.77.") && out.contains("MAC 02:57:4d:"),
            "{out}"
        );
    }
}

/// The sentence every size error ends with (`wanmig_units::SIZE_CONVENTION`).
const SIZES: &str = "K, M, G, T (powers of 1024, the same as KiB, MiB, GiB, TiB";

#[test]
fn sizes_and_rates_read_the_same_in_every_subcommand() {
    let d = tempfile::tempdir().unwrap();
    let token = d.path().join("t.token");
    std::fs::write(&token, "x\n").unwrap();
    let target = [
        "--control",
        "127.0.0.1:9",
        "--token-file",
        token.to_str().unwrap(),
    ];
    let with_target = |args: &[&str]| {
        let mut v: Vec<&str> = args.to_vec();
        v.extend_from_slice(&target);
        run(&v)
    };
    let netem = |flag: &str, value: &str| {
        run(&[
            "netem",
            "udp",
            "--listen",
            "127.0.0.1:9",
            "--upstream",
            "127.0.0.1:9",
            flag,
            value,
        ])
    };

    // One size grammar: every size flag refuses the same way, naming its
    // flag and the convention.
    let bad_sizes = [
        ("--mem", run(&["demo", "--mem", "64X"])),
        (
            "--mem",
            with_target(&["vm", "start", "web", "--mem", "64X"]),
        ),
        (
            "--bytes",
            with_target(&["probe", "--to", "b", "--bytes", "64X"]),
        ),
        ("--queue", netem("--queue", "64X")),
    ];
    for (flag, o) in &bad_sizes {
        let e = stderr(o);
        assert!(!o.status.success(), "{flag} took 64X");
        assert!(
            e.contains(flag) && e.contains("\"64X\"") && e.contains(SIZES),
            "{e}"
        );
    }

    // One rate grammar: a byte rate is refused by each rate flag with the
    // bit rate to write, 10 MB/s = 80 Mbit/s.
    let byte_rates = [
        ("--rate", run(&["demo", "--rate", "10MB/s"])),
        (
            "--bandwidth",
            with_target(&["migrate", "web", "--to", "b", "--bandwidth", "10MB/s"]),
        ),
        ("--rate", netem("--rate", "10MB/s")),
    ];
    for (flag, o) in &byte_rates {
        let e = stderr(o);
        assert!(!o.status.success(), "{flag} took 10MB/s");
        assert!(e.contains(flag) && e.contains("write 80mbit"), "{e}");
    }
    // 10Mbps gets past parsing in `migrate` (the refusal is the missing
    // gateway's), as it does in the demo, where it is 10 Mbit/s.
    let o = with_target(&["migrate", "web", "--to", "b", "--bandwidth", "10Mbps"]);
    assert!(!o.status.success());
    assert!(!stderr(&o).contains("--bandwidth"), "{}", stderr(&o));

    // NIC flags need --net, and a bad MAC or address names its flag.
    for (flags, needles) in [
        (&["--mac", "02:00:00:00:00:01"][..], &["--net"][..]),
        (
            &["--net", "lan", "--mac", "01:00:5e:00:00:01"],
            &["--mac", "multicast"],
        ),
        (
            &["--net", "lan", "--ip", "10.0.0.1"],
            &["--ip", "ADDR/PREFIX"],
        ),
    ] {
        let mut args = vec!["vm", "start", "web"];
        args.extend_from_slice(flags);
        let o = with_target(&args);
        assert!(!o.status.success(), "{flags:?} was accepted");
        for n in needles {
            assert!(
                stderr(&o).contains(n),
                "{flags:?}: lacks {n:?}: {}",
                stderr(&o)
            );
        }
    }
    let o = run(&["vm", "start", "--help"]);
    let help = String::from_utf8_lossy(&o.stdout);
    for n in [
        "--net <SEGMENT>",
        "--mac",
        "--ip",
        "--disk",
        "--mem-image",
        "image_dirs",
        "disk_dirs",
    ] {
        assert!(help.contains(n), "vm start --help lacks {n:?}:\n{help}");
    }

    // Every --help that takes a size or rate states the convention.
    for (cmd, needles) in [
        (
            &["demo", "--help"][..],
            &["powers of 1024", "bits per second"][..],
        ),
        (&["vm", "start", "--help"], &["powers of 1024"]),
        (&["probe", "--help"], &["powers of 1024"]),
        (&["migrate", "--help"], &["bits per second"]),
        (
            &["netem", "udp", "--help"],
            &["powers of 1024", "bits per second"],
        ),
        (
            &["netem", "tun", "--help"],
            &["powers of 1024", "bits per second"],
        ),
    ] {
        let o = run(cmd);
        assert!(o.status.success(), "{cmd:?}: {}", stderr(&o));
        let help = String::from_utf8_lossy(&o.stdout);
        for n in needles {
            assert!(help.contains(n), "{cmd:?} --help lacks {n:?}:\n{help}");
        }
    }
}

/// `wanmig demo --mem 64M --rate 10mbps` runs a 64 MiB guest over a
/// 10 Mbit/s link: the sizes and rates of `vm start --mem` and `migrate
/// --bandwidth`, not 64 MB and 80 Mbit/s.
#[test]
fn demo_reads_sizes_and_rates_as_every_command_does() {
    if !wanmig_testenv::require_kvm("demo_reads_sizes_and_rates_as_every_command_does") {
        return;
    }
    let o = run(&[
        "demo",
        "--mem",
        "64M",
        "--rate",
        "10mbps",
        "--rtt",
        "10ms",
        "--mix",
        "fresh",
        "--workload",
        "idle",
        "--no-disk",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["guest_mem_bytes"], 64u64 << 20, "{r}");
    assert_eq!(r["link"]["rate_mbit"], 10.0, "{r}");
    assert_eq!(r["link"]["rtt_ms"], 10.0, "{r}");
    assert_eq!(r["link"]["loss_model"], "none", "{r}");
}

#[test]
fn status_without_a_running_gateway_says_so() {
    let d = tempfile::tempdir().unwrap();
    let token = d.path().join("t.token");
    std::fs::write(&token, "abc\n").unwrap();
    let addr = format!("127.0.0.1:{}", free_tcp_port());
    let o = run(&[
        "status",
        "--control",
        &addr,
        "--token-file",
        token.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("no gateway answers") && err.contains("wanmig gateway"),
        "{err}"
    );
    // Neither target given: a usage hint, not a panic.
    let o = run(&["status"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--config"), "{}", stderr(&o));
}

#[test]
fn a_key_that_is_not_the_certificates_names_both_files_once() {
    let d = tempfile::tempdir().unwrap();
    make_certs(d.path(), "site-a,site-b");
    // site-a's certificate with site-b's key.
    std::fs::copy(
        d.path().join("certs/site-b.key"),
        d.path().join("certs/site-a.key"),
    )
    .unwrap();
    let cfg = d.path().join("site-a.toml");
    std::fs::write(&cfg, config("site-a", 1, 2, "site-b", 3)).unwrap();
    let o = run(&["gateway", "--config", cfg.to_str().unwrap()]);
    assert!(!o.status.success(), "started with a mismatched key");
    let err = stderr(&o);
    let cert = d.path().join("certs/site-a.pem");
    let key = d.path().join("certs/site-a.key");
    for needle in [cert.to_str().unwrap(), key.to_str().unwrap(), "add-site"] {
        assert!(err.contains(needle), "'{needle}' missing in: {err}");
    }
    assert_eq!(
        err.matches("does not belong to the certificate").count(),
        1,
        "reported once: {err}"
    );
    assert_eq!(
        err.lines().filter(|l| !l.trim().is_empty()).count(),
        1,
        "{err}"
    );
}

/// A gateway whose stderr is a file (journald, a log file) writes plain
/// text.
#[test]
fn logs_to_a_file_have_no_colour_codes() {
    let d = tempfile::tempdir().unwrap();
    make_certs(d.path(), "site-a,site-b");
    let cfg = d.path().join("site-a.toml");
    let (listen, control) = (free_udp_port(), free_tcp_port());
    std::fs::write(
        &cfg,
        config("site-a", listen, control, "site-b", free_udp_port()),
    )
    .unwrap();
    let log = d.path().join("gateway.log");
    let child = wanmig()
        .env_remove("NO_COLOR")
        .args(["gateway", "--config", cfg.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawns wanmig gateway");
    let daemon = Daemon(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while status_json(&cfg).is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(daemon);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("INFO"), "the gateway logged: {text:?}");
    assert!(
        !text.contains('\u{1b}'),
        "ANSI codes in a log file: {text:?}"
    );
}

/// `wanmig completions SHELL` prints a script that completes the
/// subcommands and their flags.
#[test]
fn completions_cover_the_subcommands() {
    for shell in ["bash", "zsh", "fish"] {
        let o = run(&["completions", shell]);
        assert!(o.status.success(), "{shell}: {}", stderr(&o));
        let script = String::from_utf8(o.stdout).unwrap();
        for word in ["migrate", "gateway", "settle", "config", "downtime"] {
            assert!(script.contains(word), "{shell}: no {word} in the script");
        }
    }
    let o = run(&["completions", "tcsh"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("possible values"), "{}", stderr(&o));
}

/// The systemd unit in `deploy/`: systemd accepts it (where
/// `systemd-analyze` is installed), and a gateway configured as its
/// comment says — everything it writes under the state directory — starts
/// and writes nothing beside its config, which the unit makes read-only.
#[test]
fn the_systemd_units_gateway_writes_only_under_its_state_directory() {
    let unit_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/wanmig-gateway.service");
    let unit = std::fs::read_to_string(&unit_path).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/local/bin/wanmig gateway --config /etc/wanmig/gateway.toml"),
        "the unit runs the gateway on /etc/wanmig/gateway.toml"
    );
    assert!(
        unit.contains("StateDirectory=wanmig"),
        "state in /var/lib/wanmig"
    );
    let d = tempfile::tempdir().unwrap();
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok()
    {
        // verify checks that ExecStart's binary exists: point it at ours.
        let copy = d.path().join("wanmig-gateway.service");
        std::fs::write(
            &copy,
            unit.replace("/usr/local/bin/wanmig", env!("CARGO_BIN_EXE_wanmig")),
        )
        .unwrap();
        let o = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&copy)
            .output()
            .unwrap();
        assert!(o.status.success(), "systemd-analyze verify: {}", stderr(&o));
    } else {
        eprintln!("systemd-analyze is not installed: the unit's syntax is not checked");
    }

    // /etc/wanmig and /var/lib/wanmig, as the unit's comment sets them up.
    let (etc, var) = (d.path().join("etc"), d.path().join("var"));
    std::fs::create_dir_all(var.join("images")).unwrap();
    make_certs(&etc, "site-a,site-b");
    let var_s = var.to_str().unwrap();
    let (listen, control) = (free_udp_port(), free_tcp_port());
    let text = format!(
        "state_dir = \"{var_s}\"\n{}\n[storage]\ndir = \"{var_s}/disks\"\n[vms]\ndir = \"{var_s}/vms\"\nimage_dirs = [\"{var_s}/images\"]\n",
        config("site-a", listen, control, "site-b", free_udp_port())
            .replace("token_file = \"site-a.token\"", &format!("token_file = \"{var_s}/control.token\"")),
    );
    let cfg = etc.join("gateway.toml");
    std::fs::write(&cfg, text).unwrap();
    let listing = |dir: &Path| {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        v.sort();
        v
    };
    let before = listing(&etc);
    let daemon = start_gateway(&cfg);
    let deadline = Instant::now() + Duration::from_secs(30);
    while status_json(&cfg).is_none() {
        assert!(Instant::now() < deadline, "the gateway did not answer");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(daemon);
    assert_eq!(listing(&etc), before, "the gateway wrote beside its config");
    assert!(var.join("control.token").is_file());
    assert!(var.join("page-store").is_dir(), "{:?}", listing(&var));
}
