//! The corpus of inputs that once broke something (`tests/fixtures/crashers`, each described in
//! its README.md), replayed on every run: configs are refused with their reason, streams are
//! read and analysed with their damage counted, SSE bodies end their request as recorded; none
//! panics.

use std::path::{Path, PathBuf};

use agent::clock::RunClock;
use agent::loadgen::client::{self, Target};
use agent::loadgen::connections::LoadClient;
use multitenant::config::{Api, Experiment};
use multitenant::events::{read_stream, MAX_NAMED_SKIPS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::support::{fixture, four_word_prompt};

/// The files of `crashers/<kind>`, sorted; the corpus must not be empty.
fn corpus(kind: &str) -> Vec<PathBuf> {
    let dir = fixture("crashers").join(kind);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no crashers in {}", dir.display());
    files
}

#[test]
fn every_config_crasher_is_refused_with_its_reason() {
    for path in corpus("config") {
        let text = std::fs::read_to_string(&path).expect("read");
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{}: first line must be `# expect: ...`", path.display()));
        // Named neutrally, so that the file's own name cannot satisfy the expectation.
        let refused = Experiment::from_yaml(&text, "crasher.yaml")
            .map(|_| ())
            .expect_err(&path.display().to_string())
            .to_string();
        assert!(
            refused.contains(expect),
            "{}: the error does not say {expect:?}:\n{refused}",
            path.display()
        );
    }
}

/// Puts `stream` as tenant `t` of trial `solo-t` on node `n` of a new experiment folder.
fn experiment_with(stream: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tmp");
    let trial = dir.path().join("nodes/n/solo-t");
    std::fs::create_dir_all(&trial).expect("mkdir");
    std::fs::copy(stream, trial.join("t.jsonl")).expect("copy");
    dir
}

#[test]
fn implausible_times_are_counted_and_left_out_of_every_figure() {
    let dir = experiment_with(&fixture("crashers/stream/implausible-times.jsonl"));
    let summary = multitenant::analysis::analyze_dir(dir.path()).expect("analysis");
    let (_, trial) = summary.trials().next().expect("the trial");
    let m = &trial.tenants[0].metrics;
    assert_eq!(m.implausible, 3, "{m:?}");
    // The one plausible request alone: TTFT 20 ms, E2E 60 ms.
    let ttft = m.ttft_ms.expect("ttft");
    assert_eq!((ttft.count, ttft.max), (1, 20.0));
    assert_eq!(m.e2e_ms.expect("e2e").max, 60.0);
    assert!(
        summary.warnings.iter().any(|w| w.contains("implausible")),
        "{:?}",
        summary.warnings
    );
}

#[test]
fn garbage_lines_are_named_up_to_a_bound_and_the_good_request_is_read() {
    let path = fixture("crashers/stream/garbage-lines.jsonl");
    let contents = read_stream(&path).expect("read");
    let requests: Vec<_> = contents.requests().collect();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].id, "t-0");
    let w = &contents.warnings;
    assert!(
        w.len() <= MAX_NAMED_SKIPS + 1 && w.len() > MAX_NAMED_SKIPS,
        "{} warnings: {w:#?}",
        w.len()
    );
    assert!(
        w[0].contains("garbage-lines.jsonl:3"),
        "named by file:line: {}",
        w[0]
    );
    // And the analysis of a folder holding it goes through.
    let dir = experiment_with(&path);
    let summary = multitenant::analysis::analyze_dir(dir.path()).expect("analysis");
    let (_, trial) = summary.trials().next().expect("the trial");
    assert_eq!(trial.tenants[0].metrics.completed, 1);
}

/// Serves `body` as a streamed 200 answer to each request on a loopback port, closing each
/// connection after it; returns the base URL.
async fn serve_once_per_connection(body: Vec<u8>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                // The request's head and body: enough to have read it all before answering.
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";
                let _ = socket.write_all(head).await;
                let _ = socket.write_all(&body).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sse_crasher_ends_its_request_as_recorded() {
    let clock = RunClock::start();
    let http = LoadClient::new(clock).expect("client");
    let abort = CancellationToken::new();
    let prompt = four_word_prompt();
    for path in corpus("sse") {
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let (outcome, _) = name
            .split_once("--")
            .unwrap_or_else(|| panic!("{name}: name it <outcome>--<what>.sse"));
        let body = std::fs::read(&path).expect("read");
        let target = Target {
            base_url: serve_once_per_connection(body).await,
            api: Api::Chat,
            model: "m".into(),
            api_key: None,
            stream: true,
            ignore_eos: true,
            request_fields: serde_json::Map::new(),
        };
        let request = client::Outgoing::alone(&name, &prompt);
        let m = client::execute(&http, &target, request, &clock, &abort).await;
        match (outcome, &m.error) {
            ("ok", None) => assert!(m.first_token_ns.is_some(), "{name}: {m:?}"),
            ("ok", Some(e)) => panic!("{name}: failed: {e:?}"),
            (kind, Some(e)) => assert_eq!(e.kind.as_str(), kind, "{name}: {e:?}"),
            (kind, None) => panic!("{name}: should have failed as {kind}: {m:?}"),
        }
        assert!(m.done_ns >= m.sent_ns, "{name}: {m:?}");
    }
}
