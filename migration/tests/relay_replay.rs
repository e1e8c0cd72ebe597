//! Replays the source relay's measurements from a recorded demo migration
//! through [`RelayPolicy`] and checks every decision it made in that run:
//! the codec setting after each encode and both in-flight windows after
//! each progress report and each ack. The format is described at the top
//! of the trace file.

use std::time::{Duration, Instant};

use wanmig_codec::{EncoderStats, LongDistance};
use wanmig_migration::policy::{
    CodecSetting, CopyProgress, Flight, PathEstimate, RelayConfig, RelayPolicy,
};

const TRACE: &str = include_str!("data/relay-demo-128mib.trace");

fn num(fields: &[&str], i: usize, line: usize) -> u64 {
    fields
        .get(i)
        .and_then(|f| f.parse().ok())
        .unwrap_or_else(|| panic!("trace line {line}: field {i} of {fields:?}"))
}

fn signed(fields: &[&str], i: usize, line: usize) -> i32 {
    fields
        .get(i)
        .and_then(|f| f.parse().ok())
        .unwrap_or_else(|| panic!("trace line {line}: field {i} of {fields:?}"))
}

/// What the replay counts, to check the trace exercised the policy.
#[derive(Debug, Default)]
struct Seen {
    codec_decisions: u64,
    window_checks: u64,
    levels: std::collections::BTreeSet<i32>,
    windows: std::collections::BTreeSet<(u64, u64)>,
    paused_decisions: u64,
}

fn replay(trace: &str) -> Seen {
    let t0 = Instant::now();
    let mut elapsed = Duration::ZERO;
    let mut policy: Option<RelayPolicy> = None;
    let mut current = CodecSetting {
        level: 0,
        long_distance: None,
    };
    let mut memory_pages = 0;
    let mut windows = (0, 0);
    let mut seen = Seen::default();
    for (n, line) in trace.lines().enumerate() {
        let n = n + 1;
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(' ').collect();
        if f[0] == "start" {
            let rtt = Duration::from_nanos(num(&f, 1, n));
            current.level = signed(&f, 2, n);
            memory_pages = num(&f, 3, n);
            let cfg = RelayConfig::new(rtt, current.level);
            policy = Some(RelayPolicy::new(cfg, t0).expect("the recorded settings are valid"));
            continue;
        }
        let p = policy.as_mut().expect("the trace starts with `start`");
        if matches!(f[0], "c" | "s" | "a") {
            elapsed += Duration::from_nanos(num(&f, 1, n));
        }
        let now = t0 + elapsed;
        match f[0] {
            "i" => p.on_in_flight(Flight {
                wire: num(&f, 1, n),
                guest: num(&f, 2, n),
            }),
            "e" => {
                assert_eq!(signed(&f, 1, n), current.level, "line {n}: level in force");
                let stats = EncoderStats {
                    bytes_in: num(&f, 2, n),
                    bytes_out: num(&f, 3, n),
                    ..EncoderStats::default()
                };
                p.on_encoded(current.level, &stats, Duration::from_nanos(num(&f, 4, n)));
            }
            "p" => p.on_path(PathEstimate {
                cwnd: num(&f, 1, n),
                rtt: Duration::from_nanos(num(&f, 2, n)),
            }),
            "c" => {
                let live = num(&f, 2, n) == 1;
                let expected = if f.len() > 3 {
                    CodecSetting {
                        level: signed(&f, 3, n),
                        long_distance: (num(&f, 4, n) == 1).then(LongDistance::default),
                    }
                } else {
                    current
                };
                current = p.codec(now, current, live);
                assert_eq!(current, expected, "line {n}: codec decision");
                seen.codec_decisions += 1;
                seen.paused_decisions += u64::from(!live);
                seen.levels.insert(current.level);
            }
            "g" | "a" => {
                let windows_at = if f[0] == "g" {
                    p.on_progress(CopyProgress {
                        memory_pages,
                        round: num(&f, 1, n) as u32,
                        round_pages: num(&f, 2, n),
                    });
                    3
                } else {
                    p.on_acked(
                        Flight {
                            wire: num(&f, 2, n),
                            guest: num(&f, 3, n),
                        },
                        now,
                    );
                    4
                };
                if f.len() > windows_at {
                    windows = (num(&f, windows_at, n), num(&f, windows_at + 1, n));
                }
                let got = (p.wire_window().window(), p.guest_window().window());
                assert_eq!(got, windows, "line {n}: windows (wire, guest)");
                seen.window_checks += 1;
                seen.windows.insert(got);
            }
            "s" => p.on_sent(
                Flight {
                    wire: num(&f, 2, n),
                    guest: num(&f, 3, n),
                },
                now,
            ),
            other => panic!("trace line {n}: unknown event {other:?}"),
        }
    }
    seen
}

#[test]
fn a_recorded_migration_gets_the_decisions_it_got() {
    let seen = replay(TRACE);
    // The run is long enough to say something: the controller moved the
    // level, the windows grew and shrank, and the final round came.
    assert!(seen.codec_decisions > 500, "{seen:?}");
    assert!(seen.window_checks > 500, "{seen:?}");
    assert!(seen.levels.len() >= 3, "{seen:?}");
    assert!(seen.windows.len() >= 5, "{seen:?}");
    assert!(seen.paused_decisions > 0, "{seen:?}");
}

#[test]
#[should_panic(expected = "codec decision")]
fn a_changed_decision_is_caught() {
    // The same trace with one recorded level decision altered.
    let altered = TRACE.replacen("c 9345569 1 2 0", "c 9345569 1 3 0", 1);
    assert_ne!(altered, TRACE);
    replay(&altered);
}
