//! The engine supervisor with a stand-in `vllm` (tests/fixtures/fake-vllm.sh): an engine that
//! fails to start, one that never becomes healthy, one killed mid-trial, and the agent itself
//! killed with SIGKILL. In every case no engine process is left behind and the agent's stream
//! says what happened.

use std::time::Duration;

use multitenant::events::{read_stream, EngineState, Event, TrialState};
use nix::sys::signal::Signal;

use crate::support::engines::{
    config, engine_story, group_gone, process_groups, processes_running, run_to_end, run_to_end_at,
    start_run_at, AgentProcess, FakeTenant,
};
use crate::support::InProcessAgent;
use multitenant::proto::v1::RunStatus;

fn tenant<'a>(name: &'a str, model: &'a str, args: &'a str) -> FakeTenant<'a> {
    FakeTenant::new(name, model).args(args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_unhealthy_and_crashed_engines_are_reported_and_leave_nothing_behind() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let agent = InProcessAgent::start(tmp.path()).await;

    // A flag vLLM rejects: its own error line comes back, the trial is invalid, the run goes on.
    let bad_flag = config(
        &[tenant("a", "ok", "\"--bogus-flag\"")],
        "[timeslice]",
        "1s",
        "",
    );
    assert_eq!(
        run_to_end(&agent, "bad-flag", &bad_flag).await,
        RunStatus::Finished
    );
    let (story, end) = engine_story(&tmp.path().join("bad-flag/timeslice/agent.jsonl"));
    let (_, state, detail) = story.last().expect("engine events");
    assert_eq!(*state, EngineState::Failed);
    assert!(
        detail.contains("exit status 2")
            && detail.contains("error: vllm serve: error: unrecognized arguments: --bogus-flag"),
        "{detail}"
    );
    assert_eq!(end.expect("end").0, TrialState::Invalid);

    // Never healthy: the startup deadline passes, the process group is ended.
    let hung = config(&[tenant("a", "never-healthy", "")], "[timeslice]", "1s", "");
    assert_eq!(run_to_end(&agent, "hung", &hung).await, RunStatus::Finished);
    let (story, end) = engine_story(&tmp.path().join("hung/timeslice/agent.jsonl"));
    let (_, state, detail) = story.last().expect("engine events");
    assert_eq!(*state, EngineState::Failed);
    assert!(
        detail.contains("did not become healthy within 3s"),
        "{detail}"
    );
    assert!(end
        .expect("end")
        .1
        .expect("reason")
        .contains("did not become healthy"));
    let log =
        std::fs::read_to_string(tmp.path().join("hung/timeslice/logs/a.log")).expect("engine log");
    assert!(log.contains("fake-vllm: serving never-healthy"), "{log}");
    assert_eq!(
        processes_running(&["sleep", "600"]),
        0,
        "the hung engine was left running"
    );

    // Killed mid-trial: the exit is an event naming the tenant and status; the other tenant's
    // engine is stopped too, the trial is invalid, and the next trial still runs.
    let crash = config(
        &[tenant("a", "crash-after-2", ""), tenant("b", "ok", "")],
        "[timeslice, solo]",
        "4s",
        "",
    );
    assert_eq!(
        run_to_end(&agent, "crash", &crash).await,
        RunStatus::Finished
    );
    let (story, end) = engine_story(&tmp.path().join("crash/timeslice/agent.jsonl"));
    let died = story.iter().find(|(t, s, d)| {
        t == "a" && *s == EngineState::Exited && d.starts_with("exited during the trial")
    });
    let (_, _, detail) = died.unwrap_or_else(|| panic!("no exit event in {story:?}"));
    assert!(detail.contains("killed by signal 9"), "{detail}");
    let (state, reason) = end.expect("end");
    assert_eq!(state, TrialState::Invalid);
    assert!(reason
        .expect("reason")
        .contains("the engine of a exited during the trial"));
    let mut groups = process_groups(&story);
    assert_eq!(groups.len(), 2, "{story:?}");
    let (story, _) = engine_story(&tmp.path().join("crash/solo-b/agent.jsonl"));
    assert!(
        story
            .iter()
            .any(|(t, s, _)| t == "b" && *s == EngineState::Ready),
        "the next trial ran: {story:?}"
    );
    groups.extend(process_groups(&story));
    let host = read_stream(&tmp.path().join("crash/solo-b/host.jsonl")).expect("host stream");
    let engine_samples: Vec<_> = host
        .events
        .iter()
        .filter_map(|l| match &l.event {
            Event::HostSample(h) => h.engines.first().cloned(),
            _ => None,
        })
        .collect();
    assert!(
        !engine_samples.is_empty(),
        "host samples name the engine's processes"
    );
    assert!(
        engine_samples
            .iter()
            .all(|e| e.tenant == "b" && e.pids.len() >= 3 && e.memory_rss_bytes > 0),
        "{engine_samples:?}"
    );
    for pgid in groups {
        assert!(group_gone(pgid), "process group {pgid} is still alive");
    }
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_with_sigkill_takes_its_engines_with_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let agent = AgentProcess::spawn(tmp.path(), None).await;
    let tenants = [tenant("a", "ok", ""), tenant("b", "ok", "")];
    start_run_at(
        &agent.url,
        "doomed",
        &config(&tenants, "[timeslice]", "60s", ""),
    )
    .await;

    let agent_log = tmp.path().join("doomed/timeslice/agent.jsonl");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let groups = loop {
        // The stream may not exist yet, or hold no complete header yet.
        let groups = if read_stream(&agent_log).is_ok() {
            process_groups(&engine_story(&agent_log).0)
        } else {
            Vec::new()
        };
        if groups.len() == 2 {
            break groups;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "engines did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(groups.iter().all(|&g| !group_gone(g)));
    agent.signal_and_reap(Signal::SIGKILL).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(25);
    while !groups.iter().all(|&g| group_gone(g)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "engines outlived the agent: {groups:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_nobody_calls_about_stops_when_its_lease_lapses_and_an_idle_agent_exits() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut agent = AgentProcess::spawn_with(tmp.path(), None, &["--exit-when-idle", "15s"]).await;
    let leased = format!(
        "{}launcher: {{lease: 6s}}\n",
        config(&[tenant("a", "ok", "")], "[solo]", "60s", "")
    );
    start_run_at(&agent.url, "forgotten", &leased).await;
    let called = tokio::time::Instant::now();
    let agent_log = tmp.path().join("forgotten/solo-a/agent.jsonl");
    let group = loop {
        let groups = if read_stream(&agent_log).is_ok() {
            process_groups(&engine_story(&agent_log).0)
        } else {
            Vec::new()
        };
        if let [group] = groups[..] {
            break group;
        }
        assert!(called.elapsed() < Duration::from_secs(30), "no engine");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Nobody calls: six seconds after the start call the run stops, its engine ends and the
    // trial's end is recorded.
    let end = loop {
        let (_, end) = engine_story(&agent_log);
        if let (Some(end), true) = (end, group_gone(group)) {
            break end;
        }
        assert!(
            called.elapsed() < Duration::from_secs(30),
            "the run outlived its lease"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(end.0, TrialState::Stopped);
    let reason = end.1.unwrap_or_default();
    assert!(reason.contains("its lease lapsed"), "{reason}");
    assert!(called.elapsed() >= Duration::from_secs(6), "stopped early");
    let mut client = multitenant::proto::v1::agent_client::AgentClient::connect(agent.url.clone())
        .await
        .expect("connect");
    let get = multitenant::proto::v1::GetRunRequest {
        run_id: "forgotten".into(),
    };
    let run = client
        .get_run(
            crate::support::test_token()
                .attach(tonic::Request::new(get))
                .expect("attach"),
        )
        .await
        .expect("get")
        .into_inner();
    assert_eq!(run.status(), RunStatus::Stopped);
    assert!(run.error.contains("lease lapsed"), "{}", run.error);
    // No run and no call for 15 s: the agent exits by itself, cleanly. (Longer than the
    // lease plus the wait for the engine's end above, so the idle clock, which counts from the
    // start call, cannot run out before this test's last call: with 10 s it did on a busy CI
    // machine.)
    let asked = tokio::time::Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(35), agent.child.wait())
        .await
        .expect("the idle agent exits")
        .expect("reaped");
    assert!(status.success(), "{status}");
    assert!(asked.elapsed() >= Duration::from_secs(14), "exited early");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_in_use_or_a_missing_model_is_refused_before_any_engine_starts() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let agent = InProcessAgent::start(tmp.path()).await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let port_key = format!("port: {port}, ");
    let tenants = [
        FakeTenant::new("a", "ok"),
        FakeTenant::new("b", "ok").keys(&port_key),
        FakeTenant::new("c", "/no/such/model"),
    ];
    let text = config(&tenants, "[timeslice]", "1s", "");
    assert_eq!(
        run_to_end(&agent, "preflight", &text).await,
        RunStatus::Finished
    );
    let (engines, end) = engine_story(&tmp.path().join("preflight/timeslice/agent.jsonl"));
    assert!(engines.is_empty(), "no engine may start: {engines:?}");
    let (state, reason) = end.expect("end");
    assert_eq!(state, TrialState::Invalid);
    let reason = reason.expect("reason");
    assert!(
        reason.starts_with("refused before any engine started"),
        "{reason}"
    );
    assert!(
        reason.contains(&format!("tenant b: cannot listen on 127.0.0.1:{port}")),
        "{reason}"
    );
    assert!(
        reason.contains("tenant c: model path /no/such/model does not exist"),
        "{reason}"
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_model_is_synced_to_local_disk_before_vllm_starts() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let bin = tmp.path().join("bin");
    std::fs::create_dir_all(&bin).expect("bin");
    // A stand-in `aws`: `aws s3 sync SRC DEST …` makes DEST hold a model, and fails for any
    // source ending in "missing".
    let aws = bin.join("aws");
    std::fs::write(&aws, "#!/bin/sh\necho \"aws $*\"\ncase \"$3\" in *missing) echo 'fatal error: NoSuchBucket' >&2; exit 1 ;; esac\nmkdir -p \"$4\" && echo '{}' > \"$4/config.json\"\n").expect("write aws");
    std::fs::set_permissions(&aws, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let data = tmp.path().join("agent");
    let agent = AgentProcess::spawn(&data, Some(&bin)).await;
    let url = agent.url.clone();

    let synced = config(
        &[tenant("a", "s3://bucket/tiny", "")],
        "[timeslice]",
        "1s",
        "",
    );
    assert_eq!(
        run_to_end_at(&url, "synced", &synced).await,
        RunStatus::Finished
    );
    let (_, end) = engine_story(&data.join("synced/timeslice/agent.jsonl"));
    assert_eq!(end.expect("end").0, TrialState::Finished);
    let local = data.join(".models/s3___bucket_tiny");
    assert!(
        local.join("config.json").is_file(),
        "the model was synced into the cache"
    );
    let engine_log =
        std::fs::read_to_string(data.join("synced/timeslice/logs/a.log")).expect("engine log");
    assert!(
        engine_log.contains(&format!("serving {} as a", local.display())),
        "{engine_log}"
    );
    let sync_log =
        std::fs::read_to_string(data.join("synced/timeslice/logs/a.sync.log")).expect("sync log");
    assert!(
        sync_log.contains("aws s3 sync s3://bucket/tiny"),
        "{sync_log}"
    );

    let missing = config(
        &[tenant("a", "s3://bucket/missing", "")],
        "[timeslice]",
        "1s",
        "",
    );
    assert_eq!(
        run_to_end_at(&url, "missing", &missing).await,
        RunStatus::Finished
    );
    let (engines, end) = engine_story(&data.join("missing/timeslice/agent.jsonl"));
    let (state, reason) = end.expect("end");
    assert_eq!(state, TrialState::Invalid);
    let reason = reason.expect("reason");
    assert!(
        reason.contains("syncing s3://bucket/missing") && reason.contains("NoSuchBucket"),
        "{reason}"
    );
    assert!(
        engines.iter().all(|(_, s, _)| *s != EngineState::Ready),
        "{engines:?}"
    );

    agent.signal_and_reap(Signal::SIGTERM).await;
}
