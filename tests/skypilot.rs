//! The SkyPilot launcher through the real `coordinator` binary against a scripted `sky`
//! stand-in (tests/fixtures/fake-sky.sh) that runs each task's setup and run in a home folder
//! of its own, so real agents serve with TLS on loopback. In every case, each cluster launched
//! gets a `sky down`, and clusters.json says so. The tests copy this machine's agent
//! (`agent_install: binary`) but one, which builds the agent on the "node" from the source the
//! coordinator carries.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::support::{binaries, read_summary};
use multitenant::analysis::TrialStatus;

/// A folder with `sky` (the stand-in) in `bin/` and its state in `state/`.
struct SkyStandIn {
    root: tempfile::TempDir,
}

impl SkyStandIn {
    fn new() -> Self {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(root.path().join("bin")).expect("bin");
        std::fs::create_dir_all(root.path().join("state")).expect("state");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fake-sky.sh");
        std::fs::copy(script, root.path().join("bin/sky")).expect("install the stand-in");
        Self { root }
    }

    fn state(&self) -> PathBuf {
        self.root.path().join("state")
    }

    /// `coordinator <args>` with the stand-in first on PATH.
    fn coordinator(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        let (_, coordinator) = binaries();
        let mut cmd = Command::new(coordinator);
        let path = format!(
            "{}:{}",
            self.root.path().join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        cmd.args(args)
            .env("PATH", path)
            .env("FAKE_SKY_STATE", self.state())
            .envs(env.iter().copied());
        // The stand-in reads task files with PyYAML: SkyPilot's venv has it.
        if let Ok(python) = std::env::var("MULTITENANT_SKYPILOT_PYTHON") {
            cmd.env("FAKE_SKY_PYTHON", python);
        }
        cmd
    }

    /// `coordinator run <cfg> --output-dir <runs>`, to its end.
    fn run(&self, cfg: &Path, runs: &Path, env: &[(&str, &str)]) -> Output {
        self.coordinator(
            &[
                "run",
                cfg.to_str().expect("utf-8"),
                "--output-dir",
                runs.to_str().expect("utf-8"),
            ],
            env,
        )
        .output()
        .expect("coordinator")
    }

    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.state().join("calls.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn launched(&self) -> Vec<String> {
        self.calls()
            .iter()
            .filter_map(|c| {
                c.strip_prefix("launch -c ")?
                    .split(' ')
                    .next()
                    .map(str::to_owned)
            })
            .collect()
    }

    fn downed(&self) -> Vec<String> {
        self.calls()
            .iter()
            .filter_map(|c| c.strip_prefix("down -y ").map(str::to_owned))
            .collect()
    }

    /// Whether the agent the stand-in started for `cluster` still runs.
    fn agent_running(&self, cluster: &str) -> bool {
        let Ok(pid) = std::fs::read_to_string(self.state().join(format!("{cluster}.pid"))) else {
            return false;
        };
        let pid = nix::unistd::Pid::from_raw(pid.trim().parse().expect("pid"));
        // A zombie has exited; only a live process counts.
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            !s.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
    }
}

fn config(dir: &Path, nodes: &[&str], launcher_extra: &str, duration: &str) -> PathBuf {
    let mut text = format!(
        "name: sky\nlauncher:\n  kind: skypilot\n{launcher_extra}  skypilot: {{infra: aws, idle_minutes_to_autostop: 15, agent_install: binary}}\nworkloads:\n  w: {{arrival: {{kind: constant, rate: 10}}, data: {{prompt_tokens: 8, output_tokens: 8}}, warmup: 0s, duration: {duration}}}\nnodes:\n"
    );
    for node in nodes {
        text.push_str(&format!(
            "  - {{name: {node}, accelerators: \"L4:1\", trials: [mps], tenants: [{{name: t, engine: {{kind: simulated}}, workload: w}}]}}\n"
        ));
    }
    let path = dir.join("sky.yaml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// The one experiment folder under `runs`.
fn experiment_dir(runs: &Path) -> PathBuf {
    let dirs: Vec<PathBuf> = std::fs::read_dir(runs)
        .expect("runs folder")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs.into_iter().next().expect("one")
}

fn clusters(dir: &Path) -> Vec<serde_json::Value> {
    serde_json::from_slice(&std::fs::read(dir.join("clusters.json")).expect("clusters.json"))
        .expect("json")
}

fn text(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn two_nodes_run_over_tls_and_every_cluster_is_torn_down() {
    let sky = SkyStandIn::new();
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = config(tmp.path(), &["a", "b"], "", "2s");
    let runs = tmp.path().join("runs");
    let out = sky.run(&cfg, &runs, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let dir = experiment_dir(&runs);

    let launched = sky.launched();
    assert_eq!(launched.len(), 2, "{:?}", sky.calls());
    let mut downed = sky.downed();
    downed.sort();
    let mut expected = launched.clone();
    expected.sort();
    assert_eq!(downed, expected);
    for record in clusters(&dir) {
        assert_eq!(record["state"], "down", "{record}");
    }
    for cluster in &launched {
        assert!(!sky.agent_running(cluster), "{cluster}'s agent still runs");
        // The secrets arrived through the environment; the task file holds none of them.
        let secrets = std::fs::read_to_string(sky.state().join(format!("{cluster}.secrets")))
            .expect("secrets");
        for name in [
            "MULTITENANT_AGENT_TOKEN",
            "MULTITENANT_TLS_CERT",
            "MULTITENANT_TLS_KEY",
            "MULTITENANT_TLS_CLIENT_CA",
        ] {
            assert!(secrets.contains(name), "{name} missing: {secrets}");
        }
        let task =
            std::fs::read_to_string(sky.state().join(format!("{cluster}.yaml"))).expect("task");
        assert!(!task.contains("BEGIN"), "a PEM in the task file");
        assert!(!task.contains("envs:"), "secrets must not be envs");
    }
    // The agents spoke TLS: the coordinator reached them over https with the experiment's CA.
    assert!(dir.join("ca.pem").is_file());
    let summary = read_summary(&dir);
    let nodes: Vec<&str> = summary.nodes.iter().map(|n| n.node.as_str()).collect();
    assert_eq!(nodes, ["a", "b"]);
    for node in &summary.nodes {
        let tenant = &node.trials[0].tenants[0];
        assert!(
            tenant.metrics.completed >= 15,
            "{}: {:?}",
            node.node,
            tenant.metrics
        );
    }
}

#[test]
fn a_launch_failure_on_one_of_three_nodes_tears_down_all_three() {
    let sky = SkyStandIn::new();
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = config(tmp.path(), &["a", "b", "c"], "", "2s");
    let runs = tmp.path().join("runs");
    let out = sky.run(&cfg, &runs, &[("FAKE_SKY_FAIL_LAUNCH", "-b-")]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("node b: launching cluster")
            && text(&out).contains("ResourcesUnavailableError"),
        "{}",
        text(&out)
    );
    let dir = experiment_dir(&runs);
    let mut launched = sky.launched();
    launched.sort();
    let mut downed = sky.downed();
    downed.sort();
    assert_eq!(launched.len(), 3);
    assert_eq!(
        downed, launched,
        "every launched cluster, failed or not, gets a sky down"
    );
    for record in clusters(&dir) {
        assert_eq!(record["state"], "down", "{record}");
    }
    for cluster in &launched {
        assert!(!sky.agent_running(cluster));
    }
}

#[test]
fn an_interrupted_run_and_a_failing_sky_down_still_end_with_nothing_up() {
    let sky = SkyStandIn::new();
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = config(tmp.path(), &["a", "b"], "", "60s");
    let runs = tmp.path().join("runs");
    let child = sky
        .coordinator(
            &[
                "run",
                cfg.to_str().expect("utf-8"),
                "--output-dir",
                runs.to_str().expect("utf-8"),
            ],
            &[("FAKE_SKY_FAIL_DOWN_ONCE", "1")],
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("coordinator");
    // Wait until both agents are up and their trials run, then Ctrl-C.
    let deadline = Instant::now() + Duration::from_secs(60);
    while sky
        .calls()
        .iter()
        .filter(|c| c.starts_with("status "))
        .count()
        < 2
    {
        assert!(
            Instant::now() < deadline,
            "nodes never came up: {:?}",
            sky.calls()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(3));
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT");
    let started = Instant::now();
    let out = child.wait_with_output().expect("wait");
    assert!(
        started.elapsed() < Duration::from_secs(45),
        "teardown took too long"
    );
    let dir = experiment_dir(&runs);
    let launched = sky.launched();
    assert_eq!(launched.len(), 2);
    for cluster in &launched {
        let downs = sky.downed().iter().filter(|d| *d == cluster).count();
        assert_eq!(downs, 2, "{cluster}: the failed sky down is retried once");
        assert!(!sky.agent_running(cluster));
    }
    for record in clusters(&dir) {
        assert_eq!(record["state"], "down", "{record}");
        assert!(
            record["detail"]
                .as_str()
                .is_some_and(|d| d.contains("attempt 2")),
            "{record}"
        );
    }
    // What was recorded before the interrupt is collected and summarised.
    assert!(dir.join("summary.json").is_file(), "{}", text(&out));
}

#[test]
fn a_node_whose_agent_refuses_our_certificate_is_reported_and_the_others_run() {
    let sky = SkyStandIn::new();
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = config(
        tmp.path(),
        &["a", "b"],
        "  on_node_failure: continue\n",
        "2s",
    );
    let runs = tmp.path().join("runs");
    let out = sky.run(&cfg, &runs, &[("FAKE_SKY_FOREIGN_CA", "-b-")]);
    assert!(!out.status.success(), "the failed node makes the run fail");
    let said = text(&out);
    assert!(
        said.contains("node b: the agent at https://")
            && said.contains("refused Info")
            && said.contains("certificate"),
        "{said}"
    );
    let dir = experiment_dir(&runs);
    let summary = read_summary(&dir);
    let nodes: Vec<&str> = summary.nodes.iter().map(|n| n.node.as_str()).collect();
    assert_eq!(nodes, ["a", "b"]);
    assert!(
        summary.nodes[0]
            .trials
            .iter()
            .all(|t| t.state == TrialStatus::Finished),
        "node a ran"
    );
    // Node b's planned trials are there, named as never run, with no figure.
    for trial in &summary.nodes[1].trials {
        assert_eq!(trial.state, TrialStatus::Missing, "{trial:?}");
        assert!(trial.tenants.is_empty() && !trial.missing.is_empty());
    }
    assert_eq!(sky.downed().len(), 2);
    for record in clusters(&dir) {
        assert_eq!(record["state"], "down", "{record}");
    }
}

#[test]
fn kept_clusters_stay_up_until_coordinator_down() {
    let sky = SkyStandIn::new();
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = config(tmp.path(), &["a"], "  keep: true\n", "1s");
    let runs = tmp.path().join("runs");
    let out = sky.run(&cfg, &runs, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let dir = experiment_dir(&runs);
    assert!(sky.downed().is_empty());
    assert_eq!(clusters(&dir)[0]["state"], "kept");
    let summary = read_summary(&dir);
    assert!(
        summary
            .warnings
            .iter()
            .any(|w| w.contains("kept up on purpose")),
        "{:?}",
        summary.warnings
    );
    let cluster = sky.launched().pop().expect("launched");
    assert!(sky.agent_running(&cluster));

    let out = sky
        .coordinator(&["down", dir.to_str().expect("utf-8")], &[])
        .output()
        .expect("down");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(sky.downed(), std::slice::from_ref(&cluster));
    assert_eq!(clusters(&dir)[0]["state"], "down");
    assert!(!sky.agent_running(&cluster));
}

#[test]
fn no_cloud_an_old_sky_or_no_sky_is_refused_before_anything_is_launched() {
    let sky = SkyStandIn::new();
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = config(tmp.path(), &["a"], "", "1s");
    let runs = tmp.path().join("runs");
    let args = [
        "run",
        cfg.to_str().expect("utf-8"),
        "--output-dir",
        runs.to_str().expect("utf-8"),
    ];
    let out = sky
        .coordinator(&args, &[("FAKE_SKY_NO_CLOUD", "1")])
        .output()
        .expect("coordinator");
    assert!(!out.status.success());
    assert!(
        text(&out).contains("SkyPilot has no cloud or Kubernetes enabled"),
        "{}",
        text(&out)
    );
    assert!(sky.launched().is_empty(), "{:?}", sky.calls());

    for (env, says) in [
        (
            ("FAKE_SKY_VERSION", "0.9.3"),
            "SkyPilot 0.9.3 is too old: the skypilot launcher needs 0.14 or newer",
        ),
        (
            ("FAKE_SKY_NO_ENDPOINT", "1"),
            "has no `sky status --endpoint`, which finds each node's agent: install SkyPilot 0.14 or newer",
        ),
    ] {
        let out = sky.coordinator(&args, &[env]).output().expect("coordinator");
        assert!(!out.status.success());
        assert!(text(&out).contains(says), "{}", text(&out));
        assert!(sky.launched().is_empty(), "{:?}", sky.calls());
    }

    let out = sky
        .coordinator(&args, &[("PATH", "/usr/bin:/bin")])
        .output()
        .expect("coordinator");
    assert!(!out.status.success());
    assert!(
        text(&out).contains("needs the `sky` command on PATH"),
        "{}",
        text(&out)
    );
}

/// `coordinator plan` writes one task file per node; SkyPilot's own parser
/// (`sky.Task.from_yaml` + `validate()`, through scripts/validate-sky-task.py) accepts each
/// and reads back the fields that matter. The parser runs when MULTITENANT_SKYPILOT_PYTHON
/// names a Python with SkyPilot 0.14 (set by .ci/run); the fields are checked either way.
#[test]
fn planned_task_files_are_what_skypilot_reads() {
    let sky = SkyStandIn::new();
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        tmp.path().join("prompts.jsonl"),
        "{\"prompt\": \"hi\", \"output_tokens\": 4}\n",
    )
    .expect("dataset");
    let cfg = tmp.path().join("plan.yaml");
    std::fs::write(
        &cfg,
        "name: plan\nlauncher:\n  kind: skypilot\n  skypilot: {infra: aws, use_spot: true, disk_size: 300, idle_minutes_to_autostop: 20}\nworkloads:\n  w: {arrival: {kind: poisson, rate: 2}, data: {kind: jsonl, path: prompts.jsonl}, duration: 60s}\nnodes:\n  - name: gpu-a\n    accelerators: H100:1\n    tenants:\n      - {name: llama, workload: w, engine: {kind: vllm, model: meta-llama/Llama-3.1-8B-Instruct, gpu_memory_fraction: 0.45, env_from: [HF_TOKEN]}}\n      - {name: qwen, workload: w, engine: {kind: vllm, model: Qwen/Qwen2.5-3B-Instruct, gpu_memory_fraction: 0.4}}\n  - name: gpu-b\n    accelerators: A100:2\n    tenants: [{name: sim, workload: w, engine: {kind: simulated}}]\n",
    )
    .expect("config");
    let out_dir = tmp.path().join("plan");
    let out = sky
        .coordinator(
            &[
                "plan",
                cfg.to_str().expect("utf-8"),
                "--output-dir",
                out_dir.to_str().expect("utf-8"),
            ],
            &[],
        )
        .output()
        .expect("plan");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        sky.calls().is_empty(),
        "plan launches nothing: {:?}",
        sky.calls()
    );
    let files = [
        out_dir.join("skypilot/gpu-a.yaml"),
        out_dir.join("skypilot/gpu-b.yaml"),
    ];
    for (file, accelerators) in files.iter().zip(["H100:1", "A100:2"]) {
        let task: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(file).expect("task")).expect("yaml");
        assert_eq!(task["resources"]["accelerators"], accelerators);
        assert_eq!(task["resources"]["ports"], 7777);
        assert_eq!(task["resources"]["autostop"]["down"], true);
        assert!(task.get("envs").is_none(), "nothing in envs");
        let secrets = task["secrets"].as_mapping().expect("secrets");
        assert!(
            secrets.values().all(serde_yaml::Value::is_null),
            "secret values never in the file"
        );
        let run = task["run"].as_str().expect("run");
        assert!(run.contains("serve --listen 0.0.0.0:7777 --tls"), "{run}");
        // The agent ends its job once idle for a lease, so autostop can take the node down.
        assert!(
            run.contains("--exit-when-idle 180s --first-run-within 20m"),
            "{run}"
        );
        let mounts = task["file_mounts"].as_mapping().expect("mounts");
        assert!(mounts
            .keys()
            .any(|k| k.as_str().is_some_and(|k| k.ends_with("-prompts.jsonl"))));
    }
    let a: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&files[0]).expect("task")).expect("yaml");
    // The agent is built on the node from the source this coordinator carries; vLLM goes
    // into a virtualenv of its own at the pinned version, first on the agent's PATH.
    let setup = a["setup"].as_str().expect("setup");
    assert!(setup.contains("MT_AGENT_INSTALL=\"source\""), "{setup}");
    assert!(
        setup.contains("cargo build --release --locked -p agent"),
        "{setup}"
    );
    assert!(
        setup.contains(&format!(
            "\"vllm=={}\"",
            multitenant::config::DEFAULT_VLLM_VERSION
        )),
        "{setup}"
    );
    assert!(a["run"]
        .as_str()
        .expect("run")
        .contains("export PATH=\"$HOME/.multitenant/vllm-venv/bin:$PATH\""));
    let mounts = a["file_mounts"].as_mapping().expect("mounts");
    let archive = mounts
        .iter()
        .find(|(k, _)| k.as_str().is_some_and(|k| k.contains("agent-source-")))
        .map(|(_, v)| PathBuf::from(v.as_str().expect("local path")))
        .expect("the source archive is mounted");
    assert!(
        archive.is_file(),
        "{archive:?} written beside the task files"
    );
    assert!(
        a["secrets"].get("HF_TOKEN").is_some(),
        "env_from secrets go through SkyPilot secrets"
    );

    let Ok(python) = std::env::var("MULTITENANT_SKYPILOT_PYTHON") else {
        eprintln!("SkyPilot's parser skipped: set MULTITENANT_SKYPILOT_PYTHON to a Python with skypilot 0.14 (see .ci/run)");
        return;
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/validate-sky-task.py");
    let out = Command::new(python)
        .arg(script)
        .arg("--offline")
        .args(&files)
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "SkyPilot refused a task: {}",
        text(&out)
    );
    let read: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(read.len(), 2);
    for (task, (name, count)) in read.iter().zip([("H100", 1), ("A100", 2)]) {
        let resources = &task["resources"][0];
        assert_eq!(resources["accelerators"][name], count, "{task}");
        assert_eq!(resources["cloud"], "AWS");
        assert_eq!(resources["use_spot"], true);
        assert_eq!(resources["ports"], serde_json::json!(["7777"]));
        assert!(
            resources["autostop"]
                .as_str()
                .is_some_and(|a| a.contains("down=True")),
            "{task}"
        );
        assert_eq!(task["envs"], serde_json::json!([]));
        assert_eq!(task["secrets_inline"], serde_json::json!([]));
        let from_launch = task["secrets_from_launch"].as_array().expect("secrets");
        for name in [
            "MULTITENANT_AGENT_TOKEN",
            "MULTITENANT_TLS_CERT",
            "MULTITENANT_TLS_KEY",
            "MULTITENANT_TLS_CLIENT_CA",
        ] {
            assert!(from_launch.iter().any(|s| s == name), "{name}: {task}");
        }
    }
    assert!(read[0]["secrets_from_launch"]
        .as_array()
        .expect("a")
        .iter()
        .any(|s| s == "HF_TOKEN"));
}

/// The default `agent_install: source`, as a laptop of any platform would launch: the node's
/// setup builds the agent from the source archive this coordinator carries (with the locked
/// dependencies, `cargo build --release`), the run starts the built agent, which serves a
/// two-tenant trial over TLS, and the cluster is torn down. A second experiment on the same
/// machine (one home for both, like a kept cluster) finds the build and skips it.
///
/// Heavy: the first build compiles the agent in release mode (about 4 min on two cores with
/// nothing cached); `CARGO_TARGET_DIR` for the node's build is kept in ~/.cache between runs
/// of this test on one machine, as a node's own target folder would be.
#[test]
#[ignore = "heavy: builds the agent in release mode; scripts/test.sh runs it alone"]
fn the_agent_is_built_on_the_node_from_the_shipped_source() {
    let sky = SkyStandIn::new();
    let tmp = tempfile::tempdir().expect("tempdir");
    let home = tmp.path().join("node-home");
    let target = std::env::var_os("HOME")
        .map(PathBuf::from)
        .expect("HOME")
        .join(".cache/multitenant/node-build-target");
    let cfg = tmp.path().join("source.yaml");
    std::fs::write(
        &cfg,
        "name: built-on-the-node\nlauncher:\n  kind: skypilot\n  skypilot: {infra: aws}\nworkloads:\n  w: {arrival: {kind: constant, rate: 10}, data: {prompt_tokens: 8, output_tokens: 8}, warmup: 0s, duration: 2s}\nnodes:\n  - {name: a, accelerators: \"L4:1\", trials: [mps], tenants: [{name: t1, engine: {kind: simulated}, workload: w}, {name: t2, engine: {kind: simulated}, workload: w}]}\n",
    )
    .expect("config");
    let env = [
        ("FAKE_SKY_HOME", home.to_str().expect("utf-8")),
        ("CARGO_TARGET_DIR", target.to_str().expect("utf-8")),
    ];
    let first = tmp.path().join("first");
    let out = sky.run(&cfg, &first, &env);
    let printed = text(&out);
    assert!(out.status.success(), "{printed}");
    assert!(
        printed.contains("node a: setup: building the agent"),
        "{printed}"
    );
    assert!(
        printed.contains("node a: agent up at https://127.0.0.1:"),
        "{printed}"
    );
    let dir = experiment_dir(&first);
    // The setup runs in the job: its lines are in the job's log as `sky logs` gave it, with
    // SkyPilot's `(setup pid=N)` marks taken off.
    let job_log = std::fs::read_to_string(dir.join("skypilot/a.job.log")).expect("job log");
    assert!(
        job_log.contains("\nmultitenant: setup: building the agent from source source-")
            || job_log.starts_with("multitenant: setup: building the agent from source source-"),
        "{job_log}"
    );
    assert!(
        job_log.contains("multitenant: setup: agent ready: agent "),
        "{job_log}"
    );
    assert!(!job_log.contains("(setup pid="), "{job_log}");
    // The agent that served is the one built on the node, not this machine's.
    let agents: Vec<PathBuf> = std::fs::read_dir(home.join(".multitenant/agents"))
        .expect("installed agents")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(agents.len(), 1, "{agents:?}");
    assert!(agents[0]
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("source-")));
    let linked = std::fs::read_link(home.join(".multitenant/bin/agent")).expect("bin/agent");
    assert_eq!(linked, agents[0].join("agent"));
    let summary = read_summary(&dir);
    let trial = &summary.nodes[0].trials[0];
    assert_eq!(trial.tenants.len(), 2);
    for tenant in &trial.tenants {
        assert!(tenant.metrics.completed >= 15, "{:?}", tenant.metrics);
    }
    assert_eq!(clusters(&dir)[0]["state"], "down");
    let cluster = sky.launched()[0].clone();
    assert!(!sky.agent_running(&cluster));

    // The same machine again: the agent of this source is there already.
    let second = tmp.path().join("second");
    let out = sky.run(&cfg, &second, &env);
    assert!(out.status.success(), "{}", text(&out));
    let log = std::fs::read_to_string(experiment_dir(&second).join("skypilot/a.job.log"))
        .expect("job log");
    assert!(
        log.contains("is installed already (kept from an earlier launch)"),
        "{log}"
    );
    assert!(!log.contains("building the agent"), "{log}");
}

/// A node whose agent build fails: the build log's tail is in the terminal, the node is
/// reported, and every cluster (the one that built and the one that did not) is torn down.
#[test]
fn a_failed_agent_build_shows_its_log_and_tears_everything_down() {
    let sky = SkyStandIn::new();
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = config(tmp.path(), &["a", "b"], "  on_node_failure: stop\n", "1s")
        .to_str()
        .expect("utf-8")
        .to_owned();
    let text_cfg = std::fs::read_to_string(&cfg)
        .expect("config")
        .replace(", agent_install: binary", "");
    std::fs::write(&cfg, text_cfg).expect("config");
    let runs = tmp.path().join("runs");
    // A compiler that cannot run: cargo fails at once, as a broken toolchain on a node would.
    let out = sky.run(Path::new(&cfg), &runs, &[("RUSTC", "/bin/false")]);
    let printed = text(&out);
    assert!(!out.status.success(), "{printed}");
    assert!(
        printed.contains("the agent build failed on the node:\n    multitenant: setup: the agent build failed; the last 40 lines of"),
        "{printed}"
    );
    assert!(
        printed.contains("/bin/false"),
        "the build's own error: {printed}"
    );
    assert!(printed.contains("node a: launching cluster"), "{printed}");
    assert!(
        printed.contains("ended before its agent listened: its setup failed: "),
        "the job's state from `sky queue`: {printed}"
    );
    let launched = sky.launched();
    assert_eq!(launched.len(), 2, "{:?}", sky.calls());
    let mut downed = sky.downed();
    downed.sort();
    let mut expected = launched.clone();
    expected.sort();
    assert_eq!(downed, expected, "every cluster torn down");
    for record in clusters(&experiment_dir(&runs)) {
        assert_eq!(record["state"], "down", "{record}");
    }
}
