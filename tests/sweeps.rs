//! Sweeps through the whole path: stages become trials, shared stages are compared with the
//! solo trial of the same stage, and an automatic sweep's rate stages sit between the rates its
//! synchronous and throughput stages measured.

use std::time::Duration;

use coordinator::run::Outcome;
use multitenant::analysis::TrialSummary;

use crate::support::InProcessAgent;
use multitenant::analysis::TrialStatus;

async fn run(arrival: &str, tmp: &std::path::Path) -> Outcome {
    let config = format!(
        "name: sweep\nworkloads:\n  w: {{arrival: {arrival}, data: {{prompt_tokens: 8, output_tokens: 8}}, warmup: 0s, duration: 1s, drain_timeout: 5s}}\nnodes:\n  - name: n\n    trials: [solo, mps]\n    tenants:\n      - {{name: a, engine: {{kind: simulated, timing: {{decode_step_us: 5000}}}}, workload: w}}\n      - {{name: b, engine: {{kind: simulated, timing: {{decode_step_us: 5000}}}}, workload: w}}\n"
    );
    let path = tmp.join("sweep.yaml");
    std::fs::write(&path, config).expect("write config");
    let agent = InProcessAgent::start(&tmp.join("agent")).await;
    let outcome = tokio::time::timeout(
        Duration::from_secs(120),
        agent.run_experiment(&path, &tmp.join("runs")),
    )
    .await
    .expect("the sweep ends in time");
    agent.stop().await;
    outcome
}

fn trial<'a>(outcome: &'a Outcome, name: &str) -> &'a TrialSummary {
    outcome.summary.nodes[0]
        .trials
        .iter()
        .find(|t| t.trial == name)
        .unwrap_or_else(|| panic!("no trial {name}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_sweep_runs_each_stage_as_a_trial_with_its_own_baseline() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let outcome = run("{kind: sweep, rates: [10, 30]}", tmp.path()).await;
    let names: Vec<&str> = outcome.summary.nodes[0]
        .trials
        .iter()
        .map(|t| t.trial.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "solo-a.s1",
            "solo-a.s2",
            "solo-b.s1",
            "solo-b.s2",
            "mps.s1",
            "mps.s2"
        ]
    );
    for (stage, rate) in [(1u32, 10.0), (2, 30.0)] {
        let shared = trial(&outcome, &format!("mps.s{stage}"));
        assert_eq!(shared.stage, Some(stage));
        assert_eq!(shared.state, TrialStatus::Finished, "{:?}", shared.reason);
        for t in &shared.tenants {
            assert_eq!(t.offered_rate, Some(rate), "{}", t.tenant);
            let solo = trial(&outcome, &format!("solo-{}.s{stage}", t.tenant));
            let solo_tenant = &solo.tenants[0];
            assert_eq!(solo_tenant.offered_rate, Some(rate));
            // The slowdown is against the same stage's solo run: its throughput ratio is the
            // ratio of the two throughputs of that stage (the summary rounds to 3 decimals).
            let slowdown = t.slowdown.as_ref().expect("compared with solo");
            let shared_tp = t
                .metrics
                .throughput
                .expect("throughput")
                .output_tokens_per_s;
            let solo_tp = solo_tenant
                .metrics
                .throughput
                .expect("throughput")
                .output_tokens_per_s;
            let ratio = slowdown.output_tokens_per_s.expect("throughput ratio");
            assert!((ratio - shared_tp / solo_tp).abs() < 1e-3, "{ratio}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_automatic_sweep_places_its_rates_between_the_measured_ends() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let outcome = run("{kind: sweep, steps: 2, max_concurrency: 8}", tmp.path()).await;
    for tenant in ["a", "b"] {
        let sync = trial(&outcome, &format!("solo-{tenant}.s1")).tenants[0]
            .metrics
            .throughput
            .expect("sync throughput")
            .requests_per_s;
        let max = trial(&outcome, &format!("solo-{tenant}.s2")).tenants[0]
            .metrics
            .throughput
            .expect("max throughput")
            .requests_per_s;
        assert!(
            max > sync * 2.0,
            "{tenant}: 8 in flight vs 1: {max} vs {sync}"
        );
        for step in 1..=2u32 {
            let solo = &trial(&outcome, &format!("solo-{tenant}.s{}", step + 2)).tenants[0];
            let rate = solo.offered_rate.expect("a rate stage");
            let expected = sync + (max - sync) * f64::from(step) / 3.0;
            // The agent's rates come from its own report of the same requests: within 2%.
            assert!(
                (rate - expected).abs() < expected * 0.02,
                "{tenant} step {step}: offered {rate}, expected {expected}"
            );
            // The shared trial is offered the rate its solo trial measured.
            let shared = trial(&outcome, &format!("mps.s{}", step + 2));
            let shared_tenant = shared
                .tenants
                .iter()
                .find(|t| t.tenant == tenant)
                .expect("tenant");
            assert_eq!(shared_tenant.offered_rate, Some(rate));
        }
    }
}
