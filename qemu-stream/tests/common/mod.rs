//! Helpers shared by this crate's integration tests: running a parser
//! over chunked input and emitting its events ([`run`], [`emit_all`]),
//! building channels from events ([`synth`]), and driving real QEMU
//! ([`qemu`]).

#![allow(dead_code)]

pub mod proxy;
pub mod qemu;
pub mod synth;

use bytes::BytesMut;
use wanmig_qemu_stream::{Emitter, Event, Parser};

/// Pushes `input` in pieces of the given sizes (cycled; the rest in one
/// piece when `sizes` is empty), polling after each; then finishes.
pub fn run(mut parser: Parser, input: &[u8], sizes: &[usize]) -> (Vec<Event>, Parser) {
    let mut events = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at < input.len() {
        let n = match sizes.get(i % sizes.len().max(1)) {
            Some(&n) => n.max(1),
            None => input.len(),
        };
        let end = (at + n).min(input.len());
        parser.push(&input[at..end]);
        at = end;
        i += 1;
        while let Some(ev) = parser.poll() {
            events.push(ev);
        }
    }
    parser.finish();
    while let Some(ev) = parser.poll() {
        events.push(ev);
    }
    (events, parser)
}

/// The bytes of `events`, through one emitter.
pub fn emit_all(events: &[Event]) -> Vec<u8> {
    let mut e = Emitter::new();
    let mut out = Vec::new();
    for ev in events {
        e.emit(ev, &mut out).expect("a parser's events emit");
    }
    out
}

/// `events` with adjacent verbatim runs merged (a parser hands out a run
/// in as many pieces as its input arrived in).
pub fn coalesce(events: Vec<Event>) -> Vec<Event> {
    let mut out: Vec<Event> = Vec::new();
    for ev in events {
        match (out.last_mut(), ev) {
            (Some(Event::Verbatim(a)), Event::Verbatim(b)) => {
                let mut m = BytesMut::from(&a[..]);
                m.extend_from_slice(&b);
                *a = m.freeze();
            }
            (_, ev) => out.push(ev),
        }
    }
    out
}
