//! How a trial ends: its failures as one enum, kept typed until an event prints them.

use std::collections::BTreeSet;

use crate::engine::process::ExitReport;
use crate::engine::EngineError;
use crate::mps::MpsError;

/// Why a trial was not measured, or not measured validly. `Display` is the reason written into
/// the trial's `agent.jsonl`, word for word.
#[derive(Debug, thiserror::Error)]
pub enum TrialFailure {
    /// Engine preflight found problems before anything started.
    #[error("refused before any engine started: {}", .0.join("; "))]
    Refused(Vec<String>),
    /// A rate stage of an automatic sweep whose end stages measured no rate.
    #[error("{tenant}: rate stage {step} of its sweep needs the request rates of its synchronous and throughput stages, and at least one of them completed no measured request")]
    SweepRatesUnmeasured {
        /// The tenant.
        tenant: String,
        /// The rate stage (1-based).
        step: u32,
    },
    /// A tenant's prompts could not be made.
    #[error("{tenant}: {reason}")]
    Prompts {
        /// The tenant.
        tenant: String,
        /// What is wrong with its data.
        reason: String,
    },
    /// The trial's MPS daemon would not start.
    #[error("{0}; the trial was not measured")]
    MpsStart(MpsError),
    /// An engine is not a client of the trial's MPS daemon.
    #[error("{0}; refusing to measure a trial that would be time-sliced, not shared under MPS")]
    MpsNotShared(MpsClientError),
    /// A capacity probe's engines still held requests when the wait for an empty queue ran
    /// out: the probe would have measured that backlog, not its own rate.
    #[error("the engines' queues did not empty within {}s before the probe ({held}); the search ends with what it knew", super::clean_slate::QUEUE_EMPTY_WAIT.as_secs())]
    QueueNotEmpty {
        /// What each engine still held.
        held: String,
    },
    /// An engine did not start or become healthy.
    #[error(transparent)]
    EngineStart(EngineError),
    /// A tenant's load could not run at all.
    #[error("{0}")]
    Load(String),
    /// Request events could not be written.
    #[error("{0} request events could not be recorded")]
    EventsLost(u64),
    /// A stream of the run could not be written (a full disk, most often): the trial was
    /// stopped at that write, and every whole line before it is kept.
    #[error("recording failed, so the trial was stopped: {0}")]
    Recording(String),
    /// An engine exited while the load ran.
    #[error("the engine of {tenant} exited during the trial ({status})")]
    EngineExited {
        /// The tenant.
        tenant: String,
        /// Its exit status, in words.
        status: String,
    },
    /// The run was stopped before the trial could end on its own.
    #[error("the run was stopped")]
    Stopped,
    /// The agent stopped the run by itself: nobody called about it for its lease.
    #[error("the run was stopped: {0}")]
    LeaseLapsed(String),
}

/// Why the engines of an `mps` trial are not known to share the GPU under MPS.
#[derive(Debug, thiserror::Error)]
pub enum MpsClientError {
    /// The daemon could not be asked for its clients.
    #[error(transparent)]
    Query(MpsError),
    /// No process of a tenant's engine is a client.
    #[error("the engine of {tenant} is not an MPS client (its processes {members:?}; MPS clients {clients:?})")]
    NotAClient {
        /// The tenant.
        tenant: String,
        /// The PIDs of its engine's process group.
        members: Vec<i32>,
        /// The daemon's client PIDs.
        clients: BTreeSet<i32>,
    },
}

/// An engine that exited while a trial measured.
#[derive(Debug, Clone)]
pub struct EngineDeath {
    /// When, on the run clock.
    pub at_ns: u64,
    /// How.
    pub report: ExitReport,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loadgen::LoadPanicked;

    /// Every reason a trial records is pinned: analysis, users' scripts and the tests read them.
    #[test]
    fn every_failure_reads_as_recorded_in_agent_jsonl() {
        let cases: Vec<(TrialFailure, &str)> = vec![
            (
                TrialFailure::Refused(vec!["a: no vllm".into(), "b: no model".into()]),
                "refused before any engine started: a: no vllm; b: no model",
            ),
            (
                TrialFailure::SweepRatesUnmeasured { tenant: "a".into(), step: 2 },
                "a: rate stage 2 of its sweep needs the request rates of its synchronous and throughput stages, and at least one of them completed no measured request",
            ),
            (
                TrialFailure::Prompts { tenant: "a".into(), reason: "cannot read x.jsonl".into() },
                "a: cannot read x.jsonl",
            ),
            (
                TrialFailure::MpsStart(MpsError::NotInstalled("nvidia-cuda-mps-control".into())),
                "MPS is not available on this node: nvidia-cuda-mps-control not found; the trial was not measured",
            ),
            (
                TrialFailure::MpsNotShared(MpsClientError::NotAClient {
                    tenant: "a".into(),
                    members: vec![10, 11],
                    clients: BTreeSet::from([12]),
                }),
                "the engine of a is not an MPS client (its processes [10, 11]; MPS clients {12}); refusing to measure a trial that would be time-sliced, not shared under MPS",
            ),
            (
                TrialFailure::MpsNotShared(MpsClientError::Query(MpsError::Command {
                    command: "get_client_list".into(),
                    message: "no daemon".into(),
                })),
                "MPS control command `get_client_list` failed: no daemon; refusing to measure a trial that would be time-sliced, not shared under MPS",
            ),
            (
                TrialFailure::EngineStart(EngineError::Cancelled { tenant: "a".into() }),
                "tenant a: start abandoned because the run was stopped",
            ),
            (TrialFailure::Load("no runtime for its load: x".into()), "no runtime for its load: x"),
            (TrialFailure::EventsLost(3), "3 request events could not be recorded"),
            (
                TrialFailure::Recording("cannot write mps/a.jsonl: No space left on device (os error 28)".into()),
                "recording failed, so the trial was stopped: cannot write mps/a.jsonl: No space left on device (os error 28)",
            ),
            (
                TrialFailure::EngineExited { tenant: "a".into(), status: "exit status 1".into() },
                "the engine of a exited during the trial (exit status 1)",
            ),
            (TrialFailure::Stopped, "the run was stopped"),
            (
                TrialFailure::LeaseLapsed("its lease lapsed: …".into()),
                "the run was stopped: its lease lapsed: …",
            ),
        ];
        for (failure, text) in cases {
            assert_eq!(failure.to_string(), text, "{failure:?}");
        }
        assert_eq!(
            LoadPanicked("boom".into()).to_string(),
            "its load task ended abnormally (boom); its figures in this trial are not valid"
        );
    }
}
