//! Running every tenant's load of a trial and judging what they did, with each outcome kept
//! in its tenant's position.

use std::future::Future;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::outcome::{EngineDeath, TrialFailure};
use super::slot::LoadOutcome;
use crate::loadgen::{LoadPanicked, LoadReport};

/// Runs one load per tenant with `run`, all at once or `one_at_a_time`, on `tasks`, and gives
/// each tenant's outcome back in its own position: a load that panics costs only its own
/// tenant, and a load cut by `cancel` before it started did not run.
pub(super) async fn run_loads<L, F, Fut>(
    loads: Vec<L>,
    one_at_a_time: bool,
    cancel: &CancellationToken,
    tasks: &TaskTracker,
    run: F,
) -> Vec<LoadOutcome>
where
    L: Send + 'static,
    F: Fn(L, CancellationToken) -> Fut,
    Fut: Future<Output = Result<LoadReport, LoadPanicked>> + Send + 'static,
{
    let outcome =
        |joined: Result<Result<LoadReport, LoadPanicked>, tokio::task::JoinError>| match joined {
            Ok(Ok(report)) => LoadOutcome::Ran(report),
            Ok(Err(panicked)) => LoadOutcome::Panicked(panicked),
            Err(e) => LoadOutcome::Panicked(LoadPanicked(e.to_string())),
        };
    let mut outcomes = Vec::with_capacity(loads.len());
    if one_at_a_time {
        // One tenant at a time: the others' engines stay resident but idle.
        for load in loads {
            if cancel.is_cancelled() {
                outcomes.push(LoadOutcome::NotRun);
                continue;
            }
            outcomes.push(outcome(tasks.spawn(run(load, cancel.clone())).await));
        }
    } else {
        let running: Vec<_> = loads
            .into_iter()
            .map(|load| tasks.spawn(run(load, cancel.clone())))
            .collect();
        for load in running {
            outcomes.push(outcome(load.await));
        }
    }
    outcomes
}

/// The trial's verdict from its tenants' loads and the engines serving them (each with the
/// name of the tenant whose engine it is, and its death, if it died): an engine that died
/// makes it invalid first, then a load that could not run, then lost events. A panicked load
/// is not a verdict on the trial: only its own tenant is invalid (recorded apart).
pub(super) fn judge<'s>(
    tenants: impl Iterator<Item = (&'s LoadOutcome, Option<(&'s str, &'s EngineDeath)>)> + Clone,
) -> Result<(), TrialFailure> {
    if let Some((engine, death)) = tenants.clone().find_map(|(_, d)| d) {
        return Err(TrialFailure::EngineExited {
            tenant: engine.to_owned(),
            status: death.report.status.clone(),
        });
    }
    let reports = tenants.filter_map(|(load, _)| match load {
        LoadOutcome::Ran(report) => Some(report),
        _ => None,
    });
    if let Some(reason) = reports.clone().find_map(|r| r.failure.clone()) {
        return Err(TrialFailure::Load(reason));
    }
    match reports.map(|r| r.write_errors).max().filter(|&n| n > 0) {
        Some(lost) => Err(TrialFailure::EventsLost(lost)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(sent: u64) -> LoadReport {
        LoadReport {
            sent,
            write_errors: 0,
            completed_rate: Some(sent as f64),
            failure: None,
        }
    }

    async fn outcomes(one_at_a_time: bool) -> Vec<LoadOutcome> {
        let tasks = TaskTracker::new();
        let loads: Vec<(&'static str, u64)> = vec![("a", 1), ("b", 2), ("c", 3)];
        let outcomes = run_loads(
            loads,
            one_at_a_time,
            &CancellationToken::new(),
            &tasks,
            |(name, sent), _| async move {
                if name == "b" {
                    panic!("the load of b broke");
                }
                Ok(report(sent))
            },
        )
        .await;
        tasks.close();
        assert!(tasks.is_empty(), "every load task was awaited");
        outcomes
    }

    #[tokio::test]
    async fn a_load_task_that_panics_invalidates_only_its_tenant() {
        for one_at_a_time in [false, true] {
            let outcomes = outcomes(one_at_a_time).await;
            assert_eq!(outcomes.len(), 3);
            assert!(
                matches!(&outcomes[0], LoadOutcome::Ran(r) if r.sent == 1),
                "{outcomes:?}"
            );
            match &outcomes[1] {
                LoadOutcome::Panicked(p) => assert!(p.0.contains("panicked"), "{p}"),
                other => panic!("b should have panicked: {other:?}"),
            }
            // The tenant after the panicked one keeps its own figures, not its neighbour's.
            assert!(
                matches!(&outcomes[2], LoadOutcome::Ran(r) if r.sent == 3),
                "{outcomes:?}"
            );
            let verdict = judge(outcomes.iter().map(|o| (o, None)));
            assert!(
                verdict.is_ok(),
                "a panicked load does not invalidate the trial"
            );
        }
    }

    #[tokio::test]
    async fn a_load_that_could_not_run_or_lost_events_invalidates_the_trial() {
        let mut failed = report(0);
        failed.failure = Some("no runtime for its load: x".into());
        let mut lossy = report(5);
        lossy.write_errors = 2;
        let outcomes = [LoadOutcome::Ran(lossy), LoadOutcome::Ran(failed)];
        let verdict = judge(outcomes.iter().map(|o| (o, None)));
        assert_eq!(
            verdict.map_err(|f| f.to_string()),
            Err("no runtime for its load: x".into())
        );
        let verdict = judge(outcomes[..1].iter().map(|o| (o, None)));
        assert_eq!(
            verdict.map_err(|f| f.to_string()),
            Err("2 request events could not be recorded".into())
        );
    }

    #[tokio::test]
    async fn loads_cancelled_before_their_turn_did_not_run() {
        let tasks = TaskTracker::new();
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        let outcomes = run_loads(vec![1u64, 2], true, &cancel, &tasks, move |sent, _| {
            stop.cancel();
            async move { Ok(report(sent)) }
        })
        .await;
        assert!(matches!(&outcomes[0], LoadOutcome::Ran(r) if r.sent == 1));
        assert!(matches!(outcomes[1], LoadOutcome::NotRun));
    }
}
