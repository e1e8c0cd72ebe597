//! Who owns a VM when the link fails late in a migration, and who may
//! settle a migration the destination holds parked: the sans-IO decisions
//! behind [`super::relay`]'s `Resolve` handling and the operator's
//! `POST /v1/migrations/{id}/settle`.
//!
//! The invariant: the VM runs in exactly one place, or, after a cut that
//! leaves it ambiguous, it is held paused at the destination ("parked") and
//! stopped at the source until someone who knows settles it. Never zero
//! copies running because of a timeout, never two.
//!
//! The shim protocol's last steps are S→D `Complete`, D→S `Confirmed`,
//! S→D `Handover` (the source has released the VM), D→S `Resumed`. Where a
//! cut lands decides who owns the VM:
//!
//! | cut lands                                   | source (A)                   | destination (B)               | VM runs at |
//! |---------------------------------------------|------------------------------|-------------------------------|------------|
//! | before B confirmed                          | keeps and resumes it         | aborts, discards its copy     | A          |
//! | B sent `Confirmed`, A did not get it        | keeps it; asks B to discard  | parks it                      | A (B parked until A's word or an operator's `--discard`) |
//! | A got `Confirmed`, its shim did not hand over | keeps it; asks B to discard | parks it                     | A (as above) |
//! | A sent `Handover`, B did not get it         | stopped for good; asks B to resume | parks it                 | nowhere yet: B parked until A's word or an operator's `--resume` |
//! | B got `Handover`, A did not get `Resumed`   | stopped; asks B, learns it runs | runs it                    | B          |
//! | A got `Resumed`                             | stopped (migrated away)      | runs it                       | B          |
//!
//! A parked copy stays parked however long the link stays down: the
//! source keeps asking (with backoff) until B answers, and an operator can
//! settle it at B instead. Only the site that sent the migration (the
//! mTLS identity of the stream that opened it) may settle it over the
//! peering; any other site is refused with [`SettleError::WrongPeer`].

use std::time::Duration;

/// What to do with a parked VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Decision {
    /// Run it here: the source handed it over.
    Resume,
    /// Drop it: the source kept it (or the operator says it runs elsewhere).
    Discard,
}

impl Decision {
    /// The decision a source's `Resolve` asks for.
    pub fn from_handed_over(handed_over: bool) -> Self {
        if handed_over {
            Decision::Resume
        } else {
            Decision::Discard
        }
    }
}

/// Who asks to settle a migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settler<'a> {
    /// A peer site over the peering, named by its mTLS certificate.
    Peer(&'a str),
    /// This site's operator, through the control API.
    Operator,
}

/// Why a settlement was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettleError {
    #[error("site '{asked_by}' may not settle migration '{id}': it came from '{owner}', and only that site (or an operator here) can settle it")]
    WrongPeer {
        id: String,
        owner: String,
        asked_by: String,
    },
    #[error("no migration '{0}' is parked here (see `wanmig status`: only a destination holding a confirmed VM after a lost link can settle one)")]
    NotParked(String),
    #[error("migration '{0}' is still in flight here; ask again once it parks or ends")]
    Undecided(String),
}

/// Whether `settler` may settle the migration `id` that `owner` sent.
pub fn authorize(id: &str, owner: &str, settler: Settler<'_>) -> Result<(), SettleError> {
    match settler {
        Settler::Operator => Ok(()),
        Settler::Peer(p) if p == owner => Ok(()),
        Settler::Peer(p) => Err(SettleError::WrongPeer {
            id: id.to_string(),
            owner: owner.to_string(),
            asked_by: p.to_string(),
        }),
    }
}

/// What the destination knows of a migration it does not hold parked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known<'a> {
    /// No record (this gateway restarted since, or never heard of it).
    Unrecorded,
    /// A record of an incoming migration from site `from`.
    Record { from: &'a str, state: RecordState },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordState {
    InFlight,
    Succeeded,
    /// Ended without the VM running here.
    Ended,
}

/// The destination's answer to a peer's `Resolve` for a migration it does
/// not hold parked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Running,
    Discarded,
    /// Answer by whether the VM runs here (a restarted gateway re-adopts
    /// the VMs its shims still run).
    AskHost,
    /// Still in flight: wait a little for it to park or end.
    Wait,
}

/// Decides the answer to `peer`'s `Resolve` of migration `id`, or why it is
/// refused. `waited` is how long this `Resolve` has waited for an in-flight
/// migration, `patience` how long it may.
pub fn answer(
    id: &str,
    peer: &str,
    known: Known<'_>,
    handed_over: bool,
    waited: Duration,
    patience: Duration,
) -> Result<Answer, SettleError> {
    match known {
        Known::Record { from, state } => {
            authorize(id, from, Settler::Peer(peer))?;
            Ok(match state {
                RecordState::Succeeded => Answer::Running,
                RecordState::Ended => Answer::Discarded,
                RecordState::InFlight if waited < patience => Answer::Wait,
                RecordState::InFlight => return Err(SettleError::Undecided(id.to_string())),
            })
        }
        Known::Unrecorded if handed_over => Ok(Answer::AskHost),
        Known::Unrecorded => Ok(Answer::Discarded),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Duration = Duration::from_secs(5);

    #[test]
    fn only_the_sending_site_or_an_operator_may_settle() {
        assert_eq!(authorize("m", "site-a", Settler::Peer("site-a")), Ok(()));
        assert_eq!(authorize("m", "site-a", Settler::Operator), Ok(()));
        let e = authorize("m", "site-a", Settler::Peer("site-c")).unwrap_err();
        assert_eq!(
            e,
            SettleError::WrongPeer {
                id: "m".into(),
                owner: "site-a".into(),
                asked_by: "site-c".into()
            }
        );
        assert!(e.to_string().contains("site-c") && e.to_string().contains("site-a"));
    }

    #[test]
    fn a_record_from_another_site_is_refused_whatever_its_state() {
        for state in [
            RecordState::InFlight,
            RecordState::Succeeded,
            RecordState::Ended,
        ] {
            let known = Known::Record {
                from: "site-a",
                state,
            };
            for handed_over in [false, true] {
                assert!(matches!(
                    answer("m", "site-c", known, handed_over, Duration::ZERO, P),
                    Err(SettleError::WrongPeer { .. })
                ));
            }
        }
    }

    #[test]
    fn the_sending_site_learns_the_outcome_and_an_in_flight_one_is_never_discarded() {
        let rec = |state| Known::Record {
            from: "site-a",
            state,
        };
        let ask = |known, waited| answer("m", "site-a", known, true, waited, P);
        assert_eq!(ask(rec(RecordState::Succeeded), P), Ok(Answer::Running));
        assert_eq!(ask(rec(RecordState::Ended), P), Ok(Answer::Discarded));
        assert_eq!(ask(rec(RecordState::InFlight), P / 2), Ok(Answer::Wait));
        // Out of patience: the source is told to ask again, not that the
        // copy is gone.
        assert_eq!(
            ask(rec(RecordState::InFlight), P),
            Err(SettleError::Undecided("m".into()))
        );
    }

    #[test]
    fn an_unrecorded_migration_is_answered_by_what_runs_here() {
        let ask = |handed_over| {
            answer(
                "m",
                "site-a",
                Known::Unrecorded,
                handed_over,
                Duration::ZERO,
                P,
            )
        };
        assert_eq!(ask(true), Ok(Answer::AskHost));
        assert_eq!(ask(false), Ok(Answer::Discarded));
    }

    #[test]
    fn a_resolve_maps_to_its_decision() {
        assert_eq!(Decision::from_handed_over(true), Decision::Resume);
        assert_eq!(Decision::from_handed_over(false), Decision::Discard);
    }
}
