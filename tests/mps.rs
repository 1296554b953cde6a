//! The MPS lifecycle of `mps` trials, through a stand-in `nvidia-cuda-mps-control`
//! (tests/fixtures/fake-mps-control.sh) and stand-in vLLMs that register as MPS clients.

use multitenant::events::{read_stream, Event, MpsState, TrialState};

use crate::support::engines::{config, engine_story, run_to_end, FakeTenant};
use crate::support::InProcessAgent;
use multitenant::proto::v1::RunStatus;

/// The MPS events of a trial's agent stream: `(state, detail)`.
fn mps_story(path: &std::path::Path) -> Vec<(MpsState, String)> {
    read_stream(path)
        .expect("agent stream")
        .events
        .into_iter()
        .filter_map(|l| match l.event {
            Event::Mps(m) => Some((m.state, m.detail)),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mps_trial_sets_defaults_first_verifies_every_client_and_quits() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let agent = InProcessAgent::start(tmp.path()).await;
    let tenants = [
        FakeTenant::new("a", "ok")
            .keys("mps_thread_percentage: 60, mps_pinned_memory_limit: \"0=2G\", "),
        FakeTenant::new("b", "ok"),
    ];
    let text = config(
        &tenants,
        "[mps]",
        "2s",
        "mps: {default_active_thread_percentage: 50}",
    );
    assert_eq!(
        run_to_end(&agent, "shared", &text).await,
        RunStatus::Finished
    );

    let trial = tmp.path().join("shared/mps");
    let (_, end) = engine_story(&trial.join("agent.jsonl"));
    assert_eq!(end.expect("end").0, TrialState::Finished);
    let story = mps_story(&trial.join("agent.jsonl"));
    let states: Vec<MpsState> = story.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        states,
        [MpsState::Started, MpsState::Verified, MpsState::Stopped],
        "{story:?}"
    );
    assert!(
        story[0].1.starts_with("CUDA_MPS_PIPE_DIRECTORY="),
        "{story:?}"
    );
    assert!(
        story[1].1.contains("a: [") && story[1].1.contains("b: ["),
        "{story:?}"
    );

    // The default was set before any engine started, and the daemon was told to quit.
    let commands = std::fs::read_to_string(trial.join("mps/commands.log")).expect("commands");
    let lines: Vec<&str> = commands.lines().collect();
    let set = lines
        .iter()
        .position(|l| *l == "set_default_active_thread_percentage 50")
        .expect("default set");
    assert!(
        set < lines
            .iter()
            .position(|l| *l == "get_server_list")
            .expect("verified"),
        "{lines:?}"
    );
    assert_eq!(lines.last(), Some(&"quit"));
    let log_a = std::fs::read_to_string(trial.join("logs/a.log")).expect("log a");
    assert!(
        log_a
            .contains("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=60 CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=2G"),
        "{log_a}"
    );
    let log_b = std::fs::read_to_string(trial.join("logs/b.log")).expect("log b");
    assert!(
        log_b.contains("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=unset"),
        "{log_b}"
    );
    let control = std::fs::read_to_string(trial.join("mps/control.log")).expect("control log");
    assert!(control.contains("quit"), "the daemon quit: {control}");
    let pipe = story[0].1.trim_start_matches("CUDA_MPS_PIPE_DIRECTORY=");
    assert!(
        !std::path::Path::new(pipe).exists(),
        "the private pipe folder is removed"
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_outside_mps_or_a_node_without_mps_is_never_measured() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let agent = InProcessAgent::start(tmp.path()).await;
    let tenants = [
        FakeTenant::new("a", "ok"),
        FakeTenant::new("stray", "no-mps-client"),
    ];
    let text = config(&tenants, "[mps]", "2s", "");
    assert_eq!(
        run_to_end(&agent, "stray", &text).await,
        RunStatus::Finished
    );
    let trial = tmp.path().join("stray/mps");
    let (_, end) = engine_story(&trial.join("agent.jsonl"));
    let (state, reason) = end.expect("end");
    assert_eq!(state, TrialState::Invalid);
    let reason = reason.expect("reason");
    assert!(
        reason.contains("the engine of stray is not an MPS client")
            && reason.contains("refusing to measure"),
        "{reason}"
    );
    assert!(!trial.join("a.jsonl").exists(), "no load was generated");
    let states: Vec<MpsState> = mps_story(&trial.join("agent.jsonl"))
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(
        states,
        [MpsState::Started, MpsState::Failed, MpsState::Stopped]
    );
    agent.stop().await;

    // A node whose agent has no MPS control program: the preflight (the agent's doctor, kept
    // in nodes/<node>/doctor.json) refuses the mps trial, with the doctor's reason, before any
    // of its engines starts; the solo trial runs.
    let tmp = tempfile::tempdir().expect("tempdir");
    let agent = InProcessAgent::start_with_mps_control(tmp.path(), "no-such-mps-control").await;
    let cfg = tmp.path().join("nompss.yaml");
    std::fs::write(&cfg, config(&tenants[..1], "[solo, mps]", "2s", "")).expect("config");
    let outcome = agent.run_experiment(&cfg, &tmp.path().join("runs")).await;
    let doctor: serde_json::Value = serde_json::from_slice(
        &std::fs::read(outcome.dir.join("nodes/n/doctor.json")).expect("doctor.json"),
    )
    .expect("json");
    let mps_check = doctor["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == "mps")
        .expect("an mps check");
    assert_eq!(mps_check["status"], "missing", "{doctor}");
    assert_eq!(doctor["refusals"][0]["trial"], "mps", "{doctor}");
    let said = doctor["refusals"][0]["reasons"][0]
        .as_str()
        .expect("reason");
    assert!(
        said.contains("an mps trial needs the MPS control daemon, and no-such-mps-control was not found on this node (agent doctor: mps missing)"),
        "{said}"
    );
    let trials = &outcome.summary.nodes[0].trials;
    let solo = trials.iter().find(|t| t.trial == "solo-a").expect("solo");
    assert_eq!(solo.state, multitenant::analysis::TrialStatus::Finished);
    let mps = trials.iter().find(|t| t.trial == "mps").expect("mps");
    let reason = mps.reason.as_deref().expect("reason");
    assert!(
        reason.starts_with("refused before any engine started: ") && reason.contains(said),
        "{reason}"
    );
    let run_dir = std::fs::read_dir(tmp.path())
        .expect("data dir")
        .map(|e| e.expect("entry").path())
        .find(|p| p.join("mps/agent.jsonl").is_file())
        .expect("the agent's run folder");
    let (engines, end) = engine_story(&run_dir.join("mps/agent.jsonl"));
    assert!(engines.is_empty(), "no engine may start: {engines:?}");
    assert_eq!(end.expect("end").0, TrialState::Invalid);
    agent.stop().await;
}
