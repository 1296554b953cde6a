//! `report.html` of a real local run (two simulated tenants, solo then shared, one SLO met and
//! one missed), opened in headless Chromium (Debian's `chromium`, installed by `.ci/run`):
//! no console message, the sort script ran, every table and plot is there with data, and a
//! screenshot is kept in `target/test-artifacts/report.png`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::run_experiment;

const CHROMIUM: &str = "/usr/bin/chromium";

/// Runs Chromium headless on `page` with `extra` arguments; returns (stdout, stderr).
pub(crate) fn chromium(page: &Path, profile: &Path, extra: &[&str]) -> (String, String) {
    assert!(
        Path::new(CHROMIUM).is_file(),
        "{CHROMIUM} not found: .ci/run installs Debian's chromium package (apt-get install chromium)"
    );
    let out = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("start chromium");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "chromium failed: {stderr}");
    (String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
}

fn run_two_tenants(tmp: &Path) -> PathBuf {
    run_experiment(
        tmp,
        "report",
        "name: report\nworkloads:\n  w: {arrival: {kind: poisson, rate: 8}, data: {prompt_tokens: 16, output_tokens: 16}, warmup: 1s, duration: 3s, slo: {ttft_ms: {p99: 1000}}}\n  strict: {arrival: {kind: constant, rate: 5}, data: {prompt_tokens: 16, output_tokens: 16}, warmup: 1s, duration: 3s, slo: {ttft_ms: {p50: 0.5}}}\nnodes:\n  - name: n\n    trials: [solo, mps]\n    tenants:\n      - {name: small, engine: {kind: simulated, timing: {decode_step_us: 3000}}, workload: w}\n      - {name: large, engine: {kind: simulated, timing: {decode_step_us: 8000}}, workload: strict}\n",
    )
}

/// How many times `needle` occurs in `haystack`.
fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[test]
fn the_report_of_a_local_run_renders_in_chromium() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = run_two_tenants(tmp.path());
    let report = dir.join("report.html");
    let html = std::fs::read_to_string(&report).expect("report.html written by run");
    assert!(
        !html.contains("NaN") && !html.contains("inf<"),
        "a number from nothing"
    );
    // Self-contained: nothing is fetched (the SVG namespace URI is a name, not a fetch).
    for fetch in ["src=\"http", "href=\"http", "url(http", "<link", "@import"] {
        assert!(!html.contains(fetch), "the page fetches something: {fetch}");
    }

    // The SVG files: two tenants × TTFT and TPOT CDFs, the timeline, offered vs achieved and
    // slowdown; each with its data drawn (lines, points or bars).
    let plots = dir.join("plots");
    let mut files: Vec<String> = std::fs::read_dir(&plots)
        .expect("plots/")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "n-large-tpot-cdf.svg",
            "n-large-ttft-cdf.svg",
            "n-offered-vs-achieved.svg",
            "n-slowdown.svg",
            "n-small-tpot-cdf.svg",
            "n-small-ttft-cdf.svg",
            "n-timeline.svg"
        ]
    );
    for file in &files {
        let svg = std::fs::read_to_string(plots.join(file)).expect("svg");
        let marks = count(&svg, "<polyline") + count(&svg, "<circle") + count(&svg, "<rect");
        assert!(marks >= 4, "{file} has {marks} marks");
        assert!(
            html.contains(&format!("data-plot=\"{file}\"")),
            "{file} not in the page"
        );
    }
    let cdf = std::fs::read_to_string(plots.join("n-small-ttft-cdf.svg")).expect("svg");
    assert!(
        cdf.contains("solo-small (n=") && cdf.contains("mps (n="),
        "{cdf}"
    );

    let profile = tmp.path().join("chromium-profile");
    let (dom, stderr) = chromium(&report, &profile, &["--dump-dom"]);
    let console: Vec<&str> = stderr.lines().filter(|l| l.contains(":CONSOLE")).collect();
    assert!(console.is_empty(), "console messages: {console:#?}");
    assert!(
        dom.contains("<div id=\"script-errors\" role=\"alert\"></div>"),
        "script errors shown"
    );
    // The sort script ran: it made every header a button.
    assert_eq!(
        count(&dom, "<th role=\"button\""),
        count(&dom, "<th") - count(&dom, "<thead"),
        "headers not wired"
    );
    assert_eq!(
        count(&dom, "<table class=\"sortable\""),
        4,
        "tenants, trials, SLO checks, definitions"
    );
    assert_eq!(count(&dom, "<figure"), files.len());
    // One SLO met, one missed, coloured; the simulated engine labelled.
    assert!(dom.contains("<td class=\"pass\">pass</td>"), "no pass cell");
    assert!(dom.contains("<td class=\"fail\">FAIL</td>"), "no fail cell");
    assert!(dom.contains("SIMULATED engine"));
    assert!(
        dom.contains("no GPU sample was recorded"),
        "the missing GPU plot is explained"
    );

    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).expect("artifacts dir");
    let screenshot = artifacts.join("report.png");
    let _ = std::fs::remove_file(&screenshot);
    chromium(
        &report,
        &profile,
        &[
            "--window-size=1300,2600",
            "--hide-scrollbars",
            &format!("--screenshot={}", screenshot.display()),
        ],
    );
    let png = std::fs::read(&screenshot).expect("screenshot written");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    // A blank 1300×2600 page compresses to a few KiB; tables and plots make it far larger.
    assert!(
        png.len() > 100_000,
        "screenshot of {} bytes looks blank",
        png.len()
    );
}
