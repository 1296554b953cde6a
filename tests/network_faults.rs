//! Network faults for real: the agent runs in a network namespace made by the test (root is
//! needed), reached from the coordinator over a veth pair through a forwarder inside the
//! namespace, and the link is cut by a blackhole route, so packets vanish and connections hang
//! as on a real partition (nothing is closed, nothing is refused). A partition shorter than the
//! lease loses nothing: collection resumes and the copy equals the agent's files byte for byte.
//! One longer than the lease stops the run as the lease says: the agent ends its trial
//! "stopped" with the lapse as its reason, and what the coordinator holds is the agent's files
//! up to a whole line. (`tc netem` delay and loss need the kernel's sch_netem, which this
//! machine's kernel lacks; the partition is what the lease is for.)

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use coordinator::launch::AgentEndpoint;
use coordinator::run::{run_experiment, Launch};
use multitenant::events::{read_stream, Event, TrialState};
use tokio::io::AsyncBufReadExt;
use tokio_util::sync::CancellationToken;

use crate::support::engines::AgentProcess;
use crate::support::{files_under, test_token};

/// The port the forwarder listens on inside the namespace.
const FORWARD_PORT: u16 = 8000;

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("ip runs");
    assert!(
        status.success(),
        "ip {} failed ({status}): these tests need root, as CI has",
        args.join(" ")
    );
}

/// A network namespace joined to this one by a veth pair, `10.<a>.<b>.1` here and
/// `10.<a>.<b>.2` inside; removed when dropped.
struct Netns {
    name: String,
    host_if: String,
    inside_ip: String,
}

impl Netns {
    fn create(index: u8) -> Self {
        let pid = std::process::id();
        let (a, b) = (200 + pid % 50, u32::from(index));
        let ns = Self {
            name: format!("mt-{pid}-{index}"),
            host_if: format!("mt{}h{index}", pid % 100_000),
            inside_ip: format!("10.{a}.{b}.2"),
        };
        ip(&["netns", "add", &ns.name]);
        ip(&[
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &ns.name,
        ]);
        ip(&[
            "addr",
            "add",
            &format!("10.{a}.{b}.1/30"),
            "dev",
            &ns.host_if,
        ]);
        ip(&["link", "set", &ns.host_if, "up"]);
        let inside = format!("{}/30", ns.inside_ip);
        ip(&["-n", &ns.name, "addr", "add", &inside, "dev", "eth0"]);
        ip(&["-n", &ns.name, "link", "set", "eth0", "up"]);
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    /// Starts tests/fixtures/tcp-forward.py inside, from `<inside ip>:FORWARD_PORT` to the
    /// namespace's `127.0.0.1:<port>`; killed when dropped.
    async fn forward_to(&self, port: u16) -> tokio::process::Child {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tcp-forward.py");
        let mut child = tokio::process::Command::new("ip")
            .args(["netns", "exec", &self.name, "python3"])
            .arg(script)
            .arg(format!("{}:{FORWARD_PORT}", self.inside_ip))
            .arg(format!("127.0.0.1:{port}"))
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("forwarder");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("the forwarder starts")
            .expect("read");
        assert_eq!(first.as_deref(), Some("forwarding"));
        child
    }

    /// Packets to the inside vanish from here on (a blackhole route), until [`Self::heal`].
    fn partition(&self) {
        ip(&[
            "route",
            "add",
            "blackhole",
            &format!("{}/32", self.inside_ip),
        ]);
    }

    fn heal(&self) {
        ip(&[
            "route",
            "del",
            "blackhole",
            &format!("{}/32", self.inside_ip),
        ]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let route = format!("{}/32", self.inside_ip);
        for args in [
            vec!["route", "del", "blackhole", route.as_str()],
            vec!["link", "del", self.host_if.as_str()],
            vec!["netns", "del", self.name.as_str()],
        ] {
            let _ = Command::new("ip")
                .args(&args)
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

fn config(dir: &Path, lease: &str, duration: &str) -> PathBuf {
    let path = dir.join("partition.yaml");
    std::fs::write(
        &path,
        format!(
            "name: partition\nseed: 3\nlauncher: {{lease: {lease}}}\nworkloads:\n  w: {{arrival: {{kind: constant, rate: 40}}, data: {{prompt_tokens: 16, output_tokens: 8}}, warmup: 0s, duration: {duration}}}\nnodes:\n  - {{name: node-a, trials: [timeslice], tenants: [{{name: a, engine: {{kind: simulated, timing: {{decode_step_us: 2000}}}}, workload: w}}]}}\n"
        ),
    )
    .expect("config");
    path
}

/// The agent in `ns`, its forwarder, and a coordinator run of `cfg` against it, with the link
/// cut from `cut_at` for `cut_for`; the coordinator's outcome (or why it failed) and the
/// experiment folder.
async fn run_with_partition(
    ns: &Netns,
    agent_dir: &Path,
    cfg: &Path,
    out: &Path,
    cut_at: Duration,
    cut_for: Duration,
) -> (Result<coordinator::run::Outcome, String>, PathBuf) {
    let agent = AgentProcess::spawn_in_netns(agent_dir, &ns.name).await;
    let port: u16 = agent
        .url
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("the agent's port");
    let _forwarder = ns.forward_to(port).await;
    let endpoint = AgentEndpoint {
        url: format!("http://{}:{FORWARD_PORT}", ns.inside_ip),
        token: test_token(),
        tls: None,
    };
    let run = tokio::spawn({
        let (cfg, out) = (cfg.to_owned(), out.to_owned());
        async move {
            run_experiment(
                &cfg,
                Some(&out),
                Launch::Static(vec![endpoint]),
                CancellationToken::new(),
            )
            .await
        }
    });
    tokio::time::sleep(cut_at).await;
    ns.partition();
    tokio::time::sleep(cut_for).await;
    ns.heal();
    let outcome = tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .expect("the coordinator ends within 90 s of the heal")
        .expect("join")
        .map_err(|e| format!("{e:#}"));
    let dir = std::fs::read_dir(out)
        .expect("runs")
        .next()
        .expect("the experiment folder")
        .expect("entry")
        .path();
    drop(agent);
    (outcome, dir)
}

/// Each stream the agent wrote, with the coordinator's copy of it.
fn streams(agent_run: &Path, ours: &Path) -> Vec<(PathBuf, Vec<u8>, Vec<u8>)> {
    files_under(agent_run)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .map(|rel| {
            let theirs = std::fs::read(agent_run.join(&rel)).expect("agent file");
            let copy = std::fs::read(ours.join(&rel)).unwrap_or_default();
            (rel, theirs, copy)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_shorter_than_the_lease_loses_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ns = Netns::create(1);
    let cfg = config(tmp.path(), "30s", "8s");
    let agent_dir = tmp.path().join("agent");
    let (outcome, dir) = run_with_partition(
        &ns,
        &agent_dir,
        &cfg,
        &tmp.path().join("runs"),
        Duration::from_secs(2),
        Duration::from_secs(4),
    )
    .await;
    let outcome = outcome.expect("the experiment");
    let (node, report) = &outcome.nodes[0];
    assert_eq!(
        (node.as_str(), report.state.as_str()),
        ("node-a", "finished")
    );
    let run_id = dir.file_name().expect("name");
    let copies = streams(&agent_dir.join(run_id), &dir.join("nodes/node-a"));
    assert_eq!(
        copies.len(),
        5,
        "agent, host, tenant, prompts, engine metrics"
    );
    for (rel, theirs, copy) in &copies {
        assert!(theirs == copy, "{} differs from the agent's", rel.display());
    }
    let tenant = read_stream(&dir.join("nodes/node-a/timeslice/a.jsonl")).expect("tenant");
    let requests = tenant
        .events
        .iter()
        .filter(|l| matches!(l.event, Event::Request(_)))
        .count();
    assert_eq!(requests, 320, "40/s for 8 s, every one recorded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_longer_than_the_lease_stops_the_run_as_the_lease_says() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ns = Netns::create(2);
    let cfg = config(tmp.path(), "3s", "24s");
    let agent_dir = tmp.path().join("agent");
    let (outcome, dir) = run_with_partition(
        &ns,
        &agent_dir,
        &cfg,
        &tmp.path().join("runs"),
        Duration::from_secs(2),
        Duration::from_secs(16),
    )
    .await;
    let run_id = dir.file_name().expect("name");
    let agent_run = agent_dir.join(run_id);
    // The agent stopped the trial once nobody had called for the lease, well before its end.
    let agent_log = read_stream(&agent_run.join("timeslice/agent.jsonl")).expect("agent.jsonl");
    let end = agent_log.events.iter().find_map(|l| match &l.event {
        Event::Trial(t) if t.state != TrialState::Started => Some(t.clone()),
        _ => None,
    });
    let end = end.expect("the trial's end is recorded");
    assert_eq!(end.state, TrialState::Stopped, "{end:?}");
    let reason = end.reason.unwrap_or_default();
    assert!(reason.contains("its lease lapsed"), "{reason}");
    let tenant = read_stream(&agent_run.join("timeslice/a.jsonl")).expect("tenant");
    let requests = tenant
        .events
        .iter()
        .filter(|l| matches!(l.event, Event::Request(_)))
        .count();
    // The link went at 2 s; the agent's pings went unanswered by 12 s, and the lease ran
    // out 3 s later.
    assert!(
        requests < 40 * 17,
        "stopped about 15 s in, not at the 24 s end: {requests} requests"
    );
    // What the coordinator holds of each stream is the agent's, cut at a whole line.
    for (rel, theirs, copy) in streams(&agent_run, &dir.join("nodes/node-a")) {
        assert!(
            theirs.starts_with(&copy),
            "{}: the copy is not the agent's",
            rel.display()
        );
        assert!(
            copy.is_empty() || copy.ends_with(b"\n"),
            "{}: the copy ends inside a line",
            rel.display()
        );
    }
    // And the coordinator says what happened to the node, whichever way it learnt it.
    match outcome {
        Ok(outcome) => assert_eq!(outcome.nodes[0].1.state, "stopped"),
        Err(e) => assert!(e.contains("node-a"), "{e}"),
    }
}
