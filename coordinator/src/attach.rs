//! `coordinator attach <experiment dir>`: finishes an experiment whose coordinator ended before
//! it did (killed, its laptop asleep, its terminal closed).
//!
//! Per node, as the folder's config says it was launched:
//! - `static`: the agent is called again at its address with the config's token and CA;
//!   collection resumes from the lines the folder holds (nothing doubled) until the run ends,
//!   or until the lease's time without an answer.
//! - `local`: the agent died with its coordinator, but left its own copy under
//!   `.agent/<node>/<run id>/`. Each stream there that the agent closed is verified against the
//!   SHA-256 it listed in `SHA256SUMS`; one it never closed is taken up to its last whole line.
//!   What the folder already holds must be a prefix of that copy, byte for byte; the longer
//!   copy is adopted.
//! - `skypilot`: the run's token and client certificate were made for that run and are not
//!   kept, so its agents cannot be called again; what was collected is analysed, and
//!   `coordinator down` ends what is still up.
//!
//! Then the summary, CSV and report are written as `run` writes them, and the exit code is
//! `run`'s: an experiment whose trials did not all end is interrupted (4).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use multitenant::analysis::{analyze, Analysis, Summary, TrialStatus};
use multitenant::config::{Experiment, LauncherKind};
use multitenant::layout::{self, ExperimentDir, SUMS_FILE};
use multitenant::proto::v1::GetRunRequest;
use sha2::{Digest, Sha256};

use crate::agent_client;
use crate::collect::Collector;
use crate::console::say;
use crate::launch::{AgentEndpoint, StaticLauncher};
use crate::progress::{Progress, View};

/// What adopting one node's local agent copy did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Adopted {
    /// Streams in the agent's copy.
    pub streams: usize,
    /// Of those, verified against the SHA-256 the agent listed when it closed them.
    pub verified: usize,
    /// Of those, never closed by the agent: taken up to their last whole line.
    pub unclosed: usize,
    /// Streams the folder held less of (or none of), now replaced by the agent's copy.
    pub extended: usize,
    /// Whether the copy had no `SHA256SUMS`: the agent closed none of its streams.
    pub no_sums: bool,
    /// Streams not adopted, each with why (damaged, or not an extension of the folder's):
    /// the folder keeps what it collected of them.
    pub refused: Vec<String>,
}

/// Finishes the experiment in `dir`; the verdict `run` would have given.
pub async fn attach(dir: &Path, fail_on_slo: bool) -> anyhow::Result<crate::Verdict> {
    let folder = ExperimentDir::new(dir);
    if !folder.is_experiment() {
        bail!(
            "{} is not an experiment folder (it has no nodes/)",
            dir.display()
        );
    }
    let _lock = crate::folder_lock::FolderLock::take(dir, "coordinator attach")?;
    let config = folder.file(layout::CONFIG_FILE);
    let experiment = Experiment::load(&config)
        .with_context(|| format!("reading the experiment's own {}", config.display()))?;
    let run_id = dir
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{}: the folder's name is its run id", dir.display()))?
        .to_owned();
    let had_summary = folder.file(layout::SUMMARY_JSON).is_file();
    let mut refused = Vec::new();
    match &experiment.launcher.kind {
        LauncherKind::Local => {
            for node in &experiment.nodes {
                let copy = folder.local_agent_data(&node.name).join(&run_id);
                if !copy.is_dir() {
                    say!(
                        "node {}: no agent copy at {}; analysing what was collected",
                        node.name,
                        copy.display()
                    );
                    continue;
                }
                let adopted = adopt(&copy, &folder.node(&node.name).path)
                    .with_context(|| format!("node {}: adopting {}", node.name, copy.display()))?;
                if adopted.no_sums {
                    say!(
                        "node {}: the agent's copy has no {SUMS_FILE}: it closed none of its streams, so each is taken to its last whole line",
                        node.name
                    );
                }
                say!(
                    "node {}: adopted the agent's copy: {} streams, {} verified against its {SUMS_FILE}, {} never closed (taken to their last whole line), {} longer than what was collected",
                    node.name,
                    adopted.streams - adopted.refused.len(),
                    adopted.verified,
                    adopted.unclosed,
                    adopted.extended
                );
                for reason in &adopted.refused {
                    say!("node {}: not adopted: {reason}", node.name);
                    refused.push(format!("node {}: not adopted: {reason}", node.name));
                }
            }
        }
        LauncherKind::Static(agents) => {
            let endpoints = StaticLauncher::from_config(&experiment, agents)?.into_endpoints();
            let progress = Progress::new(&experiment, View::for_stderr());
            let stop_printing = tokio_util::sync::CancellationToken::new();
            let lease = experiment.launcher.lease;
            // Every node at once, as `run` collects them, under one live view.
            let resumes = experiment.nodes.iter().zip(endpoints).map(|(node, endpoint)| {
                let (progress, run_id) = (&progress, &run_id);
                let node_dir = folder.node(&node.name).path;
                async move {
                    match resume(&endpoint, &node.name, &node_dir, run_id, progress, lease).await {
                        Ok(streams) => say!(
                            "node {}: collected to the run's end from {}: {streams} streams verified",
                            node.name,
                            endpoint.url
                        ),
                        Err(e) => say!(
                            "node {}: could not resume from {}: {e:#}; analysing what was collected",
                            node.name,
                            endpoint.url
                        ),
                    }
                }
            });
            tokio::join!(
                async {
                    futures_util::future::join_all(resumes).await;
                    stop_printing.cancel();
                },
                progress.show_until(stop_printing.clone()),
            );
        }
        LauncherKind::SkyPilot(_) => say!(
            "the run's agents were launched through SkyPilot with a token and client certificate made for that run and not kept, so they cannot be called again: analysing what was collected; `coordinator down {}` ends any cluster still up",
            dir.display()
        ),
    }
    let Analysis {
        mut summary,
        series,
    } = analyze(dir).context("analysing the experiment")?;
    let marker = folder.file(layout::INTERRUPTED_FILE);
    if all_trials_ended(&summary) {
        // An earlier attach, before the agents were done, marked it: now it is complete.
        if summary.interrupted && marker.is_file() {
            std::fs::remove_file(&marker)
                .with_context(|| format!("removing {}", marker.display()))?;
            summary.interrupted = false;
            say!("every trial has ended now: the experiment is no longer marked interrupted");
        }
    } else if !had_summary && !summary.interrupted {
        std::fs::write(
            &marker,
            "its coordinator ended before the run did; `coordinator attach` summarised what the agents recorded\n",
        )
        .with_context(|| format!("writing {}", marker.display()))?;
        summary.interrupted = true;
    }
    crate::report::write_summary_files(dir, &summary, &series)?;
    print!("{}", crate::report::render_table(&summary));
    println!("results: {}", dir.display());
    if !refused.is_empty() {
        bail!(
            "{}\n(the summary covers what the folder held of those streams)",
            refused.join("\n")
        );
    }
    Ok(crate::run_verdict(&summary, fail_on_slo))
}

/// Whether every trial and probe in the summary reached an end of its own (finished or
/// invalid), rather than being stopped, cut short or never run.
fn all_trials_ended(summary: &Summary) -> bool {
    summary
        .trials()
        .chain(summary.probes())
        .all(|(_, t)| matches!(t.state, TrialStatus::Finished | TrialStatus::Invalid))
}

/// Calls the agent at `endpoint` again and collects `run_id` into `node_dir` from the lines held
/// there; the number of streams verified.
async fn resume(
    endpoint: &AgentEndpoint,
    node: &str,
    node_dir: &Path,
    run_id: &str,
    progress: &Progress,
    lease: std::time::Duration,
) -> anyhow::Result<usize> {
    let mut client =
        agent_client::connect(&endpoint.url, endpoint.token.clone(), endpoint.tls.clone()).await?;
    let run = client
        .get_run(GetRunRequest {
            run_id: run_id.to_owned(),
        })
        .await
        .map_err(|s| match s.code() {
            tonic::Code::NotFound => anyhow::anyhow!("the agent has no run {run_id}"),
            _ => anyhow::anyhow!(
                "the agent refused GetRun: {}",
                agent_client::first_call_refused(&s, endpoint.tls.is_some())
            ),
        })?
        .into_inner();
    progress.set_trials(node, &run.trials);
    let report = Collector::new(node, node_dir, progress, lease)
        .collect(&mut client, run_id)
        .await?;
    Ok(report.streams)
}

/// Adopts the agent's run folder `copy` into the node folder `node_dir`: each stream verified or
/// cut to whole lines, then written over the folder's where the folder holds a prefix of it.
pub fn adopt(copy: &Path, node_dir: &Path) -> anyhow::Result<Adopted> {
    let sums = read_sums(&copy.join(SUMS_FILE))?;
    let mut adopted = Adopted {
        no_sums: sums.is_none(),
        ..Adopted::default()
    };
    let sums = sums.unwrap_or_default();
    for rel in streams_under(copy)? {
        let key = rel.to_string_lossy().into_owned();
        let theirs_path = copy.join(&rel);
        let mut theirs = std::fs::read(&theirs_path)
            .with_context(|| format!("reading {}", theirs_path.display()))?;
        match sums.get(&key) {
            Some(listed) => {
                let sha = hex::encode(Sha256::digest(&theirs));
                if &sha != listed {
                    adopted.streams += 1;
                    adopted.refused.push(format!(
                        "{} is damaged: its SHA-256 is {sha}, but the agent listed {listed} when it closed it",
                        theirs_path.display()
                    ));
                    continue;
                }
                adopted.verified += 1;
            }
            None => {
                let whole = theirs
                    .iter()
                    .rposition(|&b| b == b'\n')
                    .map_or(0, |i| i + 1);
                theirs.truncate(whole);
                adopted.unclosed += 1;
            }
        }
        adopted.streams += 1;
        let ours_path = node_dir.join(&rel);
        let ours = match std::fs::read(&ours_path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", ours_path.display())),
        };
        if !theirs.starts_with(&ours) {
            adopted.refused.push(format!(
                "{} is not a prefix of the agent's {}: the two copies differ, so neither is adopted over the other",
                ours_path.display(),
                theirs_path.display()
            ));
            continue;
        }
        if theirs.len() > ours.len() {
            write_whole(&ours_path, &theirs)?;
            adopted.extended += 1;
        }
    }
    // The agent died holding its reserve; its run is over, and the space is the user's again.
    let reserve = copy.join(layout::RESERVE_FILE);
    if let Err(e) = std::fs::remove_file(&reserve) {
        if e.kind() != std::io::ErrorKind::NotFound {
            say!("cannot remove {}: {e}", reserve.display());
        }
    }
    Ok(adopted)
}

/// `path` replaced by `bytes` at once (written beside it, then renamed over it).
fn write_whole(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let mut partial = path.as_os_str().to_owned();
    partial.push(".adopting");
    let partial = PathBuf::from(partial);
    std::fs::write(&partial, bytes).with_context(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, path).with_context(|| format!("replacing {}", path.display()))
}

/// `SHA256SUMS` as `<sha>  <path>` lines, by path; `None` when there is none (the agent
/// closed nothing).
fn read_sums(path: &Path) -> anyhow::Result<Option<BTreeMap<String, String>>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut sums = BTreeMap::new();
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        // A line cut by the agent's death lists nothing: its stream counts as never closed.
        let Some((sha, rel)) = line.split_once("  ") else {
            continue;
        };
        if sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            sums.insert(rel.to_owned(), sha.to_owned());
        } else if i + 1 < lines.len() {
            bail!(
                "{}:{}: not a `<sha256>  <path>` line",
                path.display(),
                i + 1
            );
        }
    }
    Ok(Some(sums))
}

/// Every `.jsonl` under `root`, relative to it, sorted.
fn streams_under(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(rel) = pending.pop() {
        let here = root.join(&rel);
        for entry in
            std::fs::read_dir(&here).with_context(|| format!("listing {}", here.display()))?
        {
            let entry = entry?;
            let name = rel.join(entry.file_name());
            let kind = entry.file_type()?;
            if kind.is_dir() {
                pending.push(name);
            } else if kind.is_file() && name.extension().is_some_and(|e| e == "jsonl") {
                found.push(name);
            }
        }
    }
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    #[test]
    fn a_longer_copy_is_adopted_verified_or_cut_to_whole_lines() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (copy, ours) = (tmp.path().join("copy"), tmp.path().join("ours"));
        std::fs::create_dir_all(copy.join("solo")).expect("mkdir");
        std::fs::create_dir_all(ours.join("solo")).expect("mkdir");
        let closed = b"{\"seq\":0}\n{\"seq\":1}\n{\"seq\":2}\n";
        std::fs::write(copy.join("solo/a.jsonl"), closed).expect("write");
        std::fs::write(
            copy.join("solo/agent.jsonl"),
            b"{\"seq\":0}\n{\"seq\":1}\n{\"se",
        )
        .expect("write");
        std::fs::write(
            copy.join(SUMS_FILE),
            format!("{}  solo/a.jsonl\n", sha(closed)),
        )
        .expect("write");
        // The coordinator had collected one line of a.jsonl, nothing of agent.jsonl.
        std::fs::write(ours.join("solo/a.jsonl"), b"{\"seq\":0}\n").expect("write");
        // The agent died holding its disk reserve.
        std::fs::write(copy.join(layout::RESERVE_FILE), [0u8; 64]).expect("write");
        let adopted = adopt(&copy, &ours).expect("adopted");
        assert_eq!(
            adopted,
            Adopted {
                streams: 2,
                verified: 1,
                unclosed: 1,
                extended: 2,
                no_sums: false,
                refused: Vec::new(),
            }
        );
        assert!(
            !copy.join(layout::RESERVE_FILE).exists(),
            "the dead agent's reserve is given back"
        );
        assert_eq!(
            std::fs::read(ours.join("solo/a.jsonl")).expect("read"),
            closed
        );
        assert_eq!(
            std::fs::read(ours.join("solo/agent.jsonl")).expect("read"),
            b"{\"seq\":0}\n{\"seq\":1}\n",
            "the half line is not taken"
        );
        // Adopting again changes nothing.
        let again = adopt(&copy, &ours).expect("adopted again");
        assert_eq!(again.extended, 0);
    }

    #[test]
    fn a_damaged_or_diverged_stream_is_refused_by_name_and_the_others_adopted() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (copy, ours) = (tmp.path().join("copy"), tmp.path().join("ours"));
        std::fs::create_dir_all(copy.join("solo")).expect("mkdir");
        std::fs::create_dir_all(ours.join("solo")).expect("mkdir");
        let lines = b"{\"seq\":0}\n{\"seq\":1}\n";
        std::fs::write(copy.join("solo/a.jsonl"), lines).expect("write");
        std::fs::write(copy.join("solo/b.jsonl"), lines).expect("write");
        std::fs::write(
            copy.join(SUMS_FILE),
            format!(
                "{}  solo/a.jsonl\n{}  solo/b.jsonl\n",
                sha(b"other"),
                sha(lines)
            ),
        )
        .expect("write");
        let adopted = adopt(&copy, &ours).expect("adopted");
        assert_eq!(
            (adopted.streams, adopted.verified, adopted.extended),
            (2, 1, 1)
        );
        assert_eq!(adopted.refused.len(), 1, "{:?}", adopted.refused);
        assert!(
            adopted.refused[0].contains("solo/a.jsonl is damaged"),
            "{:?}",
            adopted.refused
        );
        assert!(
            !ours.join("solo/a.jsonl").exists(),
            "a damaged stream is not taken"
        );
        assert_eq!(
            std::fs::read(ours.join("solo/b.jsonl")).expect("read"),
            lines
        );

        // Without SHA256SUMS every stream counts as never closed, and says so.
        std::fs::remove_file(copy.join(SUMS_FILE)).expect("rm");
        std::fs::write(ours.join("solo/a.jsonl"), b"{\"seq\":0,\"x\":1}\n").expect("write");
        let adopted = adopt(&copy, &ours).expect("adopted");
        assert!(adopted.no_sums);
        assert_eq!((adopted.unclosed, adopted.refused.len()), (2, 1));
        assert!(
            adopted.refused[0].contains("is not a prefix of the agent's"),
            "{:?}",
            adopted.refused
        );
        assert_eq!(
            std::fs::read(ours.join("solo/a.jsonl")).expect("read"),
            b"{\"seq\":0,\"x\":1}\n",
            "nothing is written over a copy that differs"
        );
    }
}
