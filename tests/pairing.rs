//! The agent as a daemon on a machine rented by hand: `agent init` makes its identity and
//! pairing string, `agent serve --state-dir` serves it over mutual TLS, `coordinator pair`
//! enrols, and a `static` launcher entry that names only the node runs an experiment. Every
//! refusal the trust model promises is tried: damaged strings, a wrong token, another agent's
//! CA or certificate, and a connection without a client certificate.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use multitenant::auth::BearerToken;
use multitenant::pairing::PairingCode;
use multitenant::proto::v1::InfoRequest;
use multitenant::tls::AGENT_SERVER_NAME;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::support::{binaries, read_summary, results_dir};

/// `agent init` in `state` for `url`; its pairing string (stdout) and its stderr.
fn init(state: &Path, url: &str, rotate: bool) -> (String, String) {
    let (agent, _) = binaries();
    let mut command = Command::new(agent);
    command
        .args(["init", "--state-dir"])
        .arg(state)
        .args(["--url", url]);
    if rotate {
        command.arg("--rotate");
    }
    let out = command.output().expect("agent init");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A daemon agent serving `state` on `listen`, ended (by its PID) when dropped.
struct Daemon(Child);

impl Daemon {
    fn start(state: &Path, listen: &str) -> Self {
        Self::start_with(state, listen, &[])
    }

    /// [`Daemon::start`] with more arguments for `agent serve`.
    fn start_with(state: &Path, listen: &str, more: &[&str]) -> Self {
        let (agent, _) = binaries();
        let mut child = Command::new(agent)
            .args(["serve", "--state-dir"])
            .arg(state)
            .args(["--listen", listen])
            .args(more)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("agent serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read");
        assert!(line.starts_with("listening on "), "{line:?}");
        Self(child)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The coordinator binary with `args`, its paired agents in `config_dir`, `stdin` fed in.
fn coordinator(config_dir: &Path, args: &[&str], stdin: &str) -> Output {
    let (_, coordinator) = binaries();
    let mut child = Command::new(coordinator)
        .args(args)
        .env("MULTITENANT_CONFIG_DIR", config_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("coordinator");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("coordinator output")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paired_daemon_agent_runs_an_experiment_whose_config_names_only_its_node() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let state = tmp.path().join("state");
    let coord = tmp.path().join("coordinator");
    let (pairing, said) = init(&state, "https://127.0.0.1:18481", false);
    assert!(said.contains("made a new agent identity"), "{said}");
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&state.join("token")), 0o600);
    // Run again, init keeps the identity: the same string.
    let (again, said) = init(&state, "https://127.0.0.1:18481", false);
    assert_eq!(again, pairing);
    assert!(said.contains("kept the agent identity"), "{said}");
    let daemon = Daemon::start(&state, "127.0.0.1:18481");

    let out = coordinator(&coord, &["pair", &pairing, "--node", "gpu-a"], "");
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("paired node gpu-a with the agent at https://127.0.0.1:18481"));
    let record = coord.join("agents/gpu-a.json");
    assert_eq!(mode(&record), 0o600);
    let token = std::fs::read_to_string(state.join("token")).expect("token");
    assert!(std::fs::read_to_string(&record)
        .expect("record")
        .contains(token.trim()));
    // A node already paired is kept unless --replace; `-` reads the string from stdin.
    let out = coordinator(&coord, &["pair", &pairing, "--node", "gpu-a"], "");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("already paired"), "{}", text(&out));
    let out = coordinator(
        &coord,
        &["pair", "-", "--node", "gpu-a", "--replace"],
        &pairing,
    );
    assert!(out.status.success(), "{}", text(&out));
    // The agent enrolled two coordinators' keys.
    let clients = std::fs::read_to_string(state.join("clients.jsonl")).expect("clients");
    assert_eq!(clients.lines().count(), 2, "{clients}");

    let out = coordinator(&coord, &["agents"], "");
    let listed = text(&out);
    assert!(out.status.success(), "{listed}");
    assert!(
        listed.contains("gpu-a  https://127.0.0.1:18481  answers: agent ")
            && listed.contains("MPS not ready"),
        "{listed}"
    );

    let config = "name: paired\nlauncher:\n  kind: static\n  agents:\n    - {node: gpu-a}\nworkloads:\n  chat: {arrival: {kind: constant, rate: 20}, data: {prompt_tokens: 8, output_tokens: 8}, warmup: 0s, duration: 2s}\nnodes:\n  - name: gpu-a\n    trials: [mps]\n    tenants:\n      - {name: small, engine: {kind: simulated}, workload: chat}\n      - {name: large, engine: {kind: simulated, timing: {decode_step_us: 8000}}, workload: chat}\n";
    let cfg = tmp.path().join("paired.yaml");
    std::fs::write(&cfg, config).expect("config");
    let runs = tmp.path().join("runs");
    let (cfg_arg, runs_arg) = (cfg.display().to_string(), runs.display().to_string());
    let out = tokio::task::spawn_blocking(move || {
        coordinator(&coord, &["run", &cfg_arg, "--output-dir", &runs_arg], "")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{}", text(&out));
    // The coordinator confirmed its verified copy; the daemon's default retention applies.
    assert!(
        text(&out).contains(
            "gpu-a: the agent recorded that this folder holds a verified copy of the run; the agent deletes it in 30days"
        ),
        "{}",
        text(&out)
    );
    let summary = read_summary(&results_dir(&stdout));
    let (_, trial) = summary.trials().next().expect("the trial");
    assert!(trial.state.is_finished(), "{:?}", trial.state);
    let completed: Vec<(String, u64)> = trial
        .tenants
        .iter()
        .map(|t| (t.tenant.clone(), t.metrics.completed))
        .collect();
    assert_eq!(
        completed,
        [("large".to_owned(), 40), ("small".to_owned(), 40)],
        "2 s at 20/s each"
    );

    // Restarted, the agent serves the finished run's streams again, byte for byte.
    let dir = results_dir(&stdout);
    let run_id = dir
        .file_name()
        .expect("run id")
        .to_string_lossy()
        .into_owned();
    drop(daemon);
    let daemon = Daemon::start(&state, "127.0.0.1:18481");
    let code: PairingCode = pairing.parse().expect("string");
    let identity = identity_from(&state);
    let served = stream_all("https://127.0.0.1:18481", &code, identity, &run_id).await;
    assert!(served.len() >= 6, "{:?}", served.keys().collect::<Vec<_>>());
    for (path, bytes) in &served {
        let ours = std::fs::read(dir.join("nodes/gpu-a").join(path)).expect("collected copy");
        assert!(ours == *bytes, "{path} differs after the restart");
    }
    // Restarted to keep runs no time at all, the agent deletes the run whose copy the
    // coordinator confirmed: the confirmation outlived the restarts.
    drop(daemon);
    let run_folder = state.join("runs").join(&run_id);
    assert!(
        run_folder.join(".run.json").is_file(),
        "{}",
        run_folder.display()
    );
    let _daemon = Daemon::start_with(&state, "127.0.0.1:18481", &["--keep-runs-for", "0s"]);
    let start = std::time::Instant::now();
    while run_folder.exists() && start.elapsed() < std::time::Duration::from_secs(10) {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(!run_folder.exists(), "the confirmed run was not deleted");
}

/// Every stream of run `run_id`, read whole through `StreamEvents`.
async fn stream_all(
    url: &str,
    code: &PairingCode,
    identity: Identity,
    run_id: &str,
) -> std::collections::BTreeMap<String, Vec<u8>> {
    use multitenant::proto::v1::StreamEventsRequest;
    let tls = tls(&code.ca_pem(), Some(identity));
    let mut client = coordinator::agent_client::connect(url, code.token.clone(), Some(tls))
        .await
        .expect("connect");
    let mut events = client
        .stream_events(StreamEventsRequest {
            run_id: run_id.to_owned(),
            cursors: Vec::new(),
        })
        .await
        .expect("the run is served after the restart")
        .into_inner();
    let mut files = std::collections::BTreeMap::<String, Vec<u8>>::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while let Some(chunk) = events.message().await.expect("chunk") {
            files.entry(chunk.path).or_default().extend(chunk.data);
        }
    });
    read.await.expect("the stream of an ended run ends");
    files
}

/// TLS that trusts `ca_pem` and checks the agents' name, optionally presenting `identity`.
fn tls(ca_pem: &str, identity: Option<Identity>) -> ClientTlsConfig {
    let config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name(AGENT_SERVER_NAME);
    match identity {
        Some(identity) => config.identity(identity),
        None => config,
    }
}

/// `Info` from the agent at `url` with `token`, over `tls`: the status message if refused.
async fn info(url: &str, token: &BearerToken, tls: ClientTlsConfig) -> Result<(), String> {
    let mut client = coordinator::agent_client::connect(url, token.clone(), Some(tls))
        .await
        .map_err(|e| format!("connect: {e:#}"))?;
    client.info(InfoRequest {}).await.map(drop).map_err(|s| {
        format!(
            "{:?}: {}",
            s.code(),
            coordinator::agent_client::first_call_refused(&s, true)
        )
    })
}

/// A client identity signed by the CA in `state` (as if that agent had enrolled us).
fn identity_from(state: &Path) -> Identity {
    let read = |f: &str| std::fs::read_to_string(state.join(f)).expect("state file");
    let issuer = rcgen::Issuer::from_ca_cert_pem(
        &read("ca.pem"),
        rcgen::KeyPair::from_pem(&read("ca.key")).expect("ca key"),
    )
    .expect("issuer");
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer).expect("signed");
    Identity::from_pem(cert.pem(), key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pairing_and_calls_are_refused_without_the_token_the_ca_and_a_client_certificate() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (a_state, b_state) = (tmp.path().join("a"), tmp.path().join("b"));
    let coord = tmp.path().join("coordinator");
    let url = "https://127.0.0.1:18482";
    let (a_string, _) = init(&a_state, url, false);
    let (b_string, _) = init(&b_state, "https://127.0.0.1:18483", false);
    let daemon = Daemon::start(&a_state, "127.0.0.1:18482");
    let a: PairingCode = a_string.parse().expect("a's string");
    let b: PairingCode = b_string.parse().expect("b's string");
    let refused = |string: String| {
        let coord = coord.clone();
        async move {
            let dir = coord.clone();
            let out = tokio::task::spawn_blocking(move || {
                coordinator(&dir, &["pair", &string, "--node", "gpu-a"], "")
            })
            .await
            .expect("join");
            assert_eq!(out.status.code(), Some(1), "{}", text(&out));
            assert!(!coord.join("agents/gpu-a.json").exists(), "nothing stored");
            text(&out)
        }
    };

    // Cut, or one character changed: named before anything is sent.
    let cut = &a_string[..a_string.len() * 2 / 3];
    assert!(refused(cut.to_owned()).await.contains("it was cut"));
    let mut parts: Vec<String> = a_string.split('.').map(str::to_owned).collect();
    let flipped = if parts[2].starts_with('a') { "b" } else { "a" };
    parts[2].replace_range(0..1, flipped);
    let said = refused(parts.join(".")).await;
    assert!(said.contains("part 5 of the pairing string"), "{said}");
    // A well-formed string with another token: the agent refuses the enrolment.
    let wrong_token = PairingCode {
        token: BearerToken::from_random_bytes([9; 32]),
        ..a.clone()
    };
    let said = refused(wrong_token.to_string()).await;
    assert!(
        said.contains("refused the pairing: wrong agent token"),
        "{said}"
    );
    // Another agent's CA: agent a's certificate does not verify, so no token is sent.
    let other_ca = PairingCode {
        url: url.to_owned(),
        ..b.clone()
    };
    let said = refused(other_ca.to_string()).await;
    assert!(
        said.contains("over TLS with the pairing string's CA"),
        "{said}"
    );

    // Calls without a client certificate, or with one of another agent's CA, are refused
    // even with the right token.
    let bare = info(url, &a.token, tls(&a.ca_pem(), None)).await;
    assert!(
        bare.as_ref()
            .is_err_and(|e| e.contains("Unauthenticated") && e.contains("client certificate")),
        "{bare:?}"
    );
    let foreign = info(
        url,
        &a.token,
        tls(&a.ca_pem(), Some(identity_from(&b_state))),
    )
    .await;
    // The refusal comes as a closed connection after the handshake (or, when the alert is read
    // first, as the alert): either way the reason names the client certificate.
    assert!(
        foreign
            .as_ref()
            .is_err_and(|e| e.contains("client certificate") || e.contains("our certificate")),
        "a certificate of b's CA: {foreign:?}"
    );
    // One of a's own CA is what pairing hands out: with it, the call goes through.
    let own = info(
        url,
        &a.token,
        tls(&a.ca_pem(), Some(identity_from(&a_state))),
    )
    .await;
    assert_eq!(own, Ok(()));

    // Rotation: a new token and CA; the coordinator paired before no longer gets in.
    let out = coordinator(&coord, &["pair", &a_string, "--node", "gpu-a"], "");
    assert!(out.status.success(), "{}", text(&out));
    drop(daemon);
    let (rotated, said) = init(&a_state, url, true);
    assert!(said.contains("rotated the token and CA"), "{said}");
    assert_ne!(rotated, a_string);
    let _daemon = Daemon::start(&a_state, "127.0.0.1:18482");
    let out = coordinator(&coord, &["agents"], "");
    let listed = text(&out);
    assert!(
        listed.contains("gpu-a  https://127.0.0.1:18482  does not answer"),
        "{listed}"
    );
    let out = coordinator(
        &coord,
        &["pair", &rotated, "--node", "gpu-a", "--replace"],
        "",
    );
    assert!(out.status.success(), "{}", text(&out));
    let listed = text(&coordinator(&coord, &["agents"], ""));
    assert!(
        listed.contains("gpu-a  https://127.0.0.1:18482  answers"),
        "{listed}"
    );
}

#[test]
fn the_service_unit_reads_its_secrets_from_the_state_folder_and_restarts_on_failure() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let state = tmp.path().join("state");
    let (agent, _) = binaries();
    let print = |state: &Path| {
        Command::new(agent)
            .args(["install-service", "--print", "--state-dir"])
            .arg(state)
            .output()
            .expect("install-service")
    };
    let out = print(&state);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("agent init --state-dir"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    init(&state, "https://127.0.0.1:18484", false);
    let out = print(&state);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let unit = String::from_utf8_lossy(&out.stdout).into_owned();
    let exec = format!(
        "ExecStart={} serve --state-dir {} --listen 0.0.0.0:7777 --mps-control /usr/bin/nvidia-cuda-mps-control",
        agent.display(),
        state.display()
    );
    for line in [
        exec.as_str(),
        "Restart=on-failure",
        "LimitNOFILE=1048576",
        "StandardOutput=journal",
        "StandardError=journal",
        "KillMode=mixed",
        "WantedBy=multi-user.target",
    ] {
        assert!(
            unit.lines().any(|l| l == line),
            "{line:?} missing from\n{unit}"
        );
    }
    let token = std::fs::read_to_string(state.join("token")).expect("token");
    assert!(
        !unit.contains(token.trim()),
        "the token is never in the unit"
    );
    assert!(!unit.contains("BEGIN"), "nor any PEM");
    verify_with_systemd(tmp.path(), &unit);
    // Retention bounds given to install-service reach the daemon's command line, in words
    // that `agent serve` reads back as the same bounds; a size that is not one is refused
    // before anything is written.
    let bounded = Command::new(agent)
        .args([
            "install-service",
            "--print",
            "--keep-runs-for",
            "1d 2h",
            "--keep-runs-size",
            "20GiB",
            "--state-dir",
        ])
        .arg(&state)
        .output()
        .expect("install-service");
    let unit = String::from_utf8_lossy(&bounded.stdout);
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap_or_else(|| panic!("no ExecStart in\n{unit}"));
    assert!(
        exec.ends_with(" --keep-runs-for 1day2h --keep-runs-size 20GiB"),
        "{exec}"
    );
    let parsed = <agent::cli::Cli as clap::Parser>::try_parse_from(exec.split(' '))
        .unwrap_or_else(|e| panic!("{exec}: {e}"));
    let agent::cli::Command::Serve { retention, .. } = parsed.command else {
        panic!("{exec} is not `agent serve`");
    };
    use agent::retention::Limit;
    assert_eq!(
        (retention.keep_runs_for, retention.keep_runs_size),
        (
            Some(Limit::At(std::time::Duration::from_secs(26 * 3600))),
            Some(Limit::At(20 << 30))
        )
    );
    let refused = Command::new(agent)
        .args([
            "install-service",
            "--print",
            "--keep-runs-size",
            "20 parsecs",
            "--state-dir",
        ])
        .arg(&state)
        .output()
        .expect("install-service");
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("unknown unit \"parsecs\""));
}

/// `systemd-analyze verify` on the unit, where systemd's tools are installed.
fn verify_with_systemd(dir: &Path, unit: &str) {
    let Some(analyze) = agent::engine::find_executable("systemd-analyze") else {
        eprintln!("systemd-analyze not installed: the unit is checked by its lines only");
        return;
    };
    let path = dir.join("multitenant-agent.service");
    std::fs::write(&path, unit).expect("unit file");
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze");
    let said = String::from_utf8_lossy(&out.stderr);
    let about_unit: Vec<&str> = said
        .lines()
        .filter(|l| l.contains("multitenant-agent.service"))
        .collect();
    assert!(out.status.success() && about_unit.is_empty(), "{said}");
}
