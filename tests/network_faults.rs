//! Network faults for real: the agent runs in a network namespace made by the test (root is
//! needed), reached from the coordinator through a second namespace that routes between them
//! and a forwarder beside the agent.
//!
//! - **A partition**: a blackhole route cuts the link, so packets vanish and connections hang
//!   as on a real partition (nothing is closed, nothing is refused). One shorter than the lease
//!   loses nothing: collection resumes and the copy equals the agent's files byte for byte.
//!   One longer than the lease stops the run as the lease says: the agent ends its trial
//!   "stopped" with the lapse as its reason, and what the coordinator holds is the agent's
//!   files up to a whole line.
//! - **A slow, lossy link**: the router's interfaces are shaped with a token bucket (`tc tbf`)
//!   slower than the streams and with a queue of two packets, so collection falls behind,
//!   packets wait and are dropped, and TCP resends them; the copy still equals the agent's.
//!   `tc netem`'s fixed delay and random loss need the kernel's sch_netem, which this machine's
//!   kernel lacks; tbf is there, and its drops are real ones, counted by the kernel and
//!   required by the test.

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

/// A network namespace for the agent, reached from this one through a second namespace that
/// routes between them, as a router on the path would: `10.<a>.<b>.1` here, `.2` and `.5` the
/// router's, `.6` the agent's. Removed when dropped.
///
/// The router is what makes shaping lose packets: a queue on the sending host's own interface
/// pushes back on the sender's sockets (TCP small queues) and so never overflows, while one on
/// a router drops what does not fit, and TCP must resend.
struct Netns {
    name: String,
    router: String,
    host_if: String,
    inside_ip: String,
}

impl Netns {
    fn create(index: u8) -> Self {
        let pid = std::process::id();
        let (a, b) = (200 + pid % 50, u32::from(index));
        let net = |host: u32| format!("10.{a}.{b}.{host}");
        let ns = Self {
            name: format!("mt-{pid}-{index}"),
            router: format!("mt-{pid}-{index}r"),
            host_if: format!("mt{}h{index}", pid % 100_000),
            inside_ip: net(6),
        };
        let (agent, router) = (ns.name.as_str(), ns.router.as_str());
        ip(&["netns", "add", router]);
        ip(&["netns", "add", agent]);
        let veth = |here: &str, peer: &str, peer_ns: &str, in_ns: Option<&str>| {
            let mut args = Vec::new();
            if let Some(ns) = in_ns {
                args.extend(["-n", ns]);
            }
            args.extend([
                "link", "add", here, "type", "veth", "peer", "name", peer, "netns", peer_ns,
            ]);
            ip(&args);
        };
        veth(&ns.host_if, "up0", router, None);
        veth("down0", "eth0", agent, Some(router));
        ip(&["addr", "add", &format!("{}/30", net(1)), "dev", &ns.host_if]);
        ip(&["link", "set", &ns.host_if, "up"]);
        for (dev, addr) in [("up0", net(2)), ("down0", net(5))] {
            ip(&[
                "-n",
                router,
                "addr",
                "add",
                &format!("{addr}/30"),
                "dev",
                dev,
            ]);
            ip(&["-n", router, "link", "set", dev, "up"]);
        }
        ip(&[
            "-n",
            agent,
            "addr",
            "add",
            &format!("{}/30", net(6)),
            "dev",
            "eth0",
        ]);
        ip(&["-n", agent, "link", "set", "eth0", "up"]);
        ip(&["-n", agent, "link", "set", "lo", "up"]);
        ip(&["-n", agent, "route", "add", "default", "via", &net(5)]);
        ip(&["route", "add", &format!("{}/30", net(4)), "via", &net(2)]);
        let forwarding = Command::new("ip")
            .args(["netns", "exec", router, "sh", "-c"])
            .arg("echo 1 > /proc/sys/net/ipv4/ip_forward")
            .status()
            .expect("sh runs");
        assert!(forwarding.success(), "the router does not forward");
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

    /// Shapes the router's link both ways with a token bucket (`tc tbf`): at most `rate` (as
    /// tc reads it, `1mbit`), with a queue of `limit` bytes; what finds the queue full is
    /// dropped. So the link is slow, packets wait in the queue, and bursts lose packets that
    /// TCP must send again.
    fn shape(&self, rate: &str, limit: &str) {
        for dev in ["up0", "down0"] {
            ip(&[
                "netns",
                "exec",
                &self.router,
                "tc",
                "qdisc",
                "add",
                "dev",
                dev,
                "root",
                "tbf",
                "rate",
                rate,
                "burst",
                "4kb",
                "limit",
                limit,
            ]);
        }
    }

    /// Packets the shaping dropped so far, both ways.
    fn dropped(&self) -> u64 {
        ["up0", "down0"]
            .into_iter()
            .map(|dev| {
                let out = Command::new("ip")
                    .args([
                        "netns",
                        "exec",
                        &self.router,
                        "tc",
                        "-s",
                        "qdisc",
                        "show",
                        "dev",
                        dev,
                    ])
                    .output()
                    .expect("tc runs");
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                // "Sent 1234 bytes 56 pkt (dropped 7, overlimits 8 requeues 0)"
                text.split("(dropped ")
                    .nth(1)
                    .and_then(|rest| rest.split(',').next())
                    .and_then(|n| n.trim().parse::<u64>().ok())
                    .unwrap_or_else(|| panic!("no drop count in: {text}"))
            })
            .sum()
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
        let (via, _) = self.inside_ip.rsplit_once('.').expect("an address");
        let routed = format!("{via}.4/30");
        for args in [
            vec!["route", "del", "blackhole", route.as_str()],
            vec!["route", "del", routed.as_str()],
            vec!["link", "del", self.host_if.as_str()],
            vec!["netns", "del", self.name.as_str()],
            vec!["netns", "del", self.router.as_str()],
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

/// Every stream of the finished 8 s run in `dir` (its `copies`) equals the agent's, and its
/// tenant recorded every request.
fn collected_whole(copies: &[(PathBuf, Vec<u8>, Vec<u8>)], dir: &Path) {
    assert_eq!(
        copies.len(),
        5,
        "agent, host, tenant, prompts, engine metrics"
    );
    for (rel, theirs, copy) in copies {
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
        (node.as_str(), report.status),
        ("node-a", multitenant::proto::v1::RunStatus::Finished)
    );
    let run_id = dir.file_name().expect("name");
    let copies = streams(&agent_dir.join(run_id), &dir.join("nodes/node-a"));
    collected_whole(&copies, &dir);
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
        Ok(outcome) => assert_eq!(
            outcome.nodes[0].1.status,
            multitenant::proto::v1::RunStatus::Stopped
        ),
        Err(e) => assert!(e.contains("node-a"), "{e}"),
    }
}

/// A slow link that drops packets (`tc tbf`: this kernel has no `sch_netem`, but a token bucket
/// with a short queue makes packets wait and drops what overflows it, so TCP must resend) for
/// the whole run: collection lags and catches up, and loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_lossy_link_loses_nothing() {
    const RATE: &str = "128kbit";
    let tmp = tempfile::tempdir().expect("tempdir");
    let ns = Netns::create(3);
    ns.shape(RATE, "3kb");
    let cfg = config(tmp.path(), "30s", "8s");
    let agent_dir = tmp.path().join("agent");
    let started = std::time::Instant::now();
    // No partition: a cut of no length.
    let (outcome, dir) = run_with_partition(
        &ns,
        &agent_dir,
        &cfg,
        &tmp.path().join("runs"),
        Duration::from_secs(1),
        Duration::ZERO,
    )
    .await;
    let took = started.elapsed();
    let outcome = outcome.expect("the experiment");
    assert_eq!(
        outcome.nodes[0].1.status,
        multitenant::proto::v1::RunStatus::Finished
    );
    let run_id = dir.file_name().expect("name");
    let copies = streams(&agent_dir.join(run_id), &dir.join("nodes/node-a"));
    let bytes: usize = copies.iter().map(|(_, theirs, _)| theirs.len()).sum();
    let dropped = ns.dropped();
    eprintln!(
        "over a {RATE} link: {bytes} bytes of streams collected, {dropped} packets dropped, the run took {:.1} s",
        took.as_secs_f64()
    );
    assert!(dropped >= 10, "{dropped} packets lost: hardly a lossy link");
    collected_whole(&copies, &dir);
}
