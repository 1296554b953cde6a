//! The SkyPilot launcher: preflight, then one cluster per node launched at once, and every
//! cluster torn down at the end whatever happened (unless the config keeps them). The `sky`
//! CLI, the task files and the cluster ledger are in [`crate::skypilot`].

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use multitenant::auth::{BearerToken, TOKEN_ENV};
use multitenant::config::SkyPilotSettings;
use tokio_util::sync::CancellationToken;

use super::{find_agent_binary, AgentEndpoint, Launched, Launcher, Teardown};
use crate::console::say;
use crate::run::ExperimentRun;
use crate::skypilot::{self, ClusterState, JobState, LaunchStep, Ledger, Sky, TaskFile};
use crate::tls::ExperimentTls;

/// How often a node that is still launching says so.
const PROGRESS_EVERY: Duration = Duration::from_secs(15);
/// How often a node's job (its setup, then the agent) is looked at while its agent is not up.
const JOB_POLL: Duration = Duration::from_secs(3);
/// Polls in a row without the job's log or state after which the node is given up.
const UNANSWERED_POLLS: u32 = 20;
/// How long a node's setup (building the agent, installing vLLM) may take before its agent
/// must listen.
const JOB_DEADLINE: Duration = Duration::from_secs(60 * 60);

/// One cluster per node through `sky`.
pub struct SkyPilotLauncher<'a> {
    settings: &'a SkyPilotSettings,
    /// Whether the config keeps the clusters up (`launcher.keep`).
    keep: bool,
    /// The experiment folder, for the teardown's advice.
    dir: std::path::PathBuf,
    /// Set once the preflight passed.
    launched: Option<(Sky, Ledger)>,
}

impl<'a> SkyPilotLauncher<'a> {
    /// A launcher with the config's settings.
    pub fn new(settings: &'a SkyPilotSettings, keep: bool) -> Self {
        Self {
            settings,
            keep,
            dir: std::path::PathBuf::new(),
            launched: None,
        }
    }
}

/// Launches one node's cluster and asks for its agent's endpoint, saying every
/// [`PROGRESS_EVERY`] that it is still at it; `cancel` abandons it.
async fn launch_cluster(
    sky: &Sky,
    ledger: &Ledger,
    tls: &ExperimentTls,
    settings: &SkyPilotSettings,
    task: &TaskFile,
    log: &std::path::Path,
    cancel: &CancellationToken,
) -> Result<AgentEndpoint, String> {
    ledger.set(
        &task.node,
        &task.cluster,
        ClusterState::Launching,
        "sky launch started",
    );
    say!(
        "node {}: launching cluster {} (output in {})",
        task.node,
        task.cluster,
        log.display()
    );
    let started = Instant::now();
    let step = std::sync::Mutex::new(LaunchStep::Provisioning);
    let brought_up = async {
        let token = BearerToken::from_random_bytes(rand::random());
        let mut env: Vec<(String, String)> =
            vec![(TOKEN_ENV.to_owned(), token.expose().to_owned())];
        env.extend(
            tls.agent_secrets()?
                .env
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v)),
        );
        let follow_step = |line: &str| {
            if let Some(next) = LaunchStep::from_line(line) {
                let mut now = step.lock().unwrap_or_else(|e| e.into_inner());
                if *now != next {
                    *now = next;
                    say!(
                        "node {}: {} ({} s)",
                        task.node,
                        next.describe(),
                        started.elapsed().as_secs()
                    );
                }
            }
        };
        let job = sky.launch(task, &env, log, &follow_step).await?;
        let job_log = log.with_file_name(format!("{}.job.log", task.node));
        follow_job(sky, task, job, &job_log, &follow_step).await?;
        let address = sky.endpoint(&task.cluster, settings.agent_port).await?;
        anyhow::Ok(AgentEndpoint {
            url: format!("https://{address}"),
            token,
            tls: Some(tls.client_config()),
        })
    };
    let still_launching = async {
        let mut every = tokio::time::interval(PROGRESS_EVERY);
        every.tick().await;
        loop {
            every.tick().await;
            let now = *step.lock().unwrap_or_else(|e| e.into_inner());
            say!(
                "node {}: still launching cluster {}: {} ({} s)",
                task.node,
                task.cluster,
                now.describe(),
                started.elapsed().as_secs()
            );
        }
    };
    let result = tokio::select! {
        r = brought_up => r,
        () = cancel.cancelled() => Err(anyhow::anyhow!("interrupted while launching")),
        () = still_launching => unreachable!("the progress ticker never ends"),
    };
    match result {
        Ok(endpoint) => {
            let url = endpoint.url.clone();
            ledger.set(&task.node, &task.cluster, ClusterState::Up, url.clone());
            say!(
                "node {}: agent up at {url} ({} s)",
                task.node,
                started.elapsed().as_secs()
            );
            Ok(endpoint)
        }
        Err(e) => {
            let reason = format!("launching cluster {}: {e:#}", task.cluster);
            let state = ClusterState::LaunchFailed;
            ledger.set(&task.node, &task.cluster, state, reason.clone());
            say!("node {}: {reason}", task.node);
            // The end of the run names the node once more: one line, the whole is above.
            let first = reason.lines().next().unwrap_or_default();
            Err(if first.len() < reason.len() {
                format!(
                    "{first} (printed above; the launch's output is in {})",
                    log.display()
                )
            } else {
                reason
            })
        }
    }
}

/// Follows job `job` on `task`'s cluster until its agent listens: its log (`sky logs`, copied
/// into `job_log`, each new line to `on_line`) and its state (`sky queue`) every
/// [`JOB_POLL`]. A job that ends first, or whose agent is not up within [`JOB_DEADLINE`], is an
/// error with what its log says (an agent build's failure and its tail, else the last lines).
async fn follow_job(
    sky: &Sky,
    task: &TaskFile,
    job: u32,
    job_log: &std::path::Path,
    mut on_line: impl FnMut(&str),
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut lines: Vec<String> = Vec::new();
    // Polls in a row where neither the log nor the job's state could be had: the cluster is
    // gone (preempted, taken down) or SkyPilot cannot reach it.
    let mut unanswered = 0;
    loop {
        let fetched = fetch_job_log(sky, task, job, job_log, &mut lines, &mut on_line).await;
        if lines.iter().any(|l| l.starts_with("listening on ")) {
            return Ok(());
        }
        let state = sky.job_state(&task.cluster, job).await;
        match (&fetched, &state) {
            (Err(_), Err(_) | Ok(None)) => unanswered += 1,
            _ => unanswered = 0,
        }
        if unanswered >= UNANSWERED_POLLS {
            let why = match (fetched, state) {
                (_, Err(e)) | (Err(e), _) => format!("{e:#}"),
                _ => "the job is not in `sky queue`".to_owned(),
            };
            anyhow::bail!(
                "the node's job {job} could not be followed for {} polls in a row (the cluster gone?): {why}",
                UNANSWERED_POLLS
            );
        }
        if let Ok(Some(JobState::Ended(how))) = state {
            // What the job printed last may have come after the previous fetch.
            let _ = fetch_job_log(sky, task, job, job_log, &mut lines, &mut on_line).await;
            anyhow::bail!(
                "job {job} on the node ended before its agent listened: {how}: {} (its log: {})",
                skypilot::launch_failure(&lines),
                job_log.display()
            );
        }
        if started.elapsed() > JOB_DEADLINE {
            anyhow::bail!(
                "the node's setup did not bring its agent up within {} min: {} (its log: {})",
                JOB_DEADLINE.as_secs() / 60,
                skypilot::launch_failure(&lines),
                job_log.display()
            );
        }
        tokio::time::sleep(JOB_POLL).await;
    }
}

/// Fetches job `job`'s log: the lines after what it shares with `lines` go to `on_line`, then
/// the whole to `job_log`. A log that cannot be fetched now (the API server busy, the node
/// still coming up) is an error the caller counts, and fetched again at the next poll.
async fn fetch_job_log(
    sky: &Sky,
    task: &TaskFile,
    job: u32,
    job_log: &std::path::Path,
    lines: &mut Vec<String>,
    on_line: &mut impl FnMut(&str),
) -> anyhow::Result<()> {
    let text = sky.job_log(&task.cluster, job).await?;
    let now: Vec<String> = text.lines().map(skypilot::job_line).collect();
    let shared = lines.iter().zip(&now).take_while(|(a, b)| a == b).count();
    if now.len() > shared {
        for line in &now[shared..] {
            on_line(line);
        }
    }
    if now != *lines {
        // The copy is a record for the reader; the launch does not depend on it.
        let _ = std::fs::write(job_log, now.join("\n") + "\n");
        *lines = now;
    }
    Ok(())
}

impl Launcher for SkyPilotLauncher<'_> {
    fn name(&self) -> &'static str {
        "skypilot"
    }

    /// Everything that can be known wrong is refused before anything is launched: no `sky`,
    /// one too old, no cloud, an agent binary for another platform, no TLS material.
    async fn launch(
        &mut self,
        run: &ExperimentRun<'_>,
        cancel: &CancellationToken,
    ) -> anyhow::Result<Launched> {
        let experiment = run.experiment;
        self.dir = run.dir.to_owned();
        let sky = Sky::find()?;
        sky.check_version().await?;
        sky.check().await?;
        let tls = match &experiment.launcher.tls {
            Some(ca) => ExperimentTls::from_user_ca(ca)?,
            None => ExperimentTls::generate(&experiment.name)?,
        };
        tls.write_ca(run.dir)?;
        let run_tag = hex::encode(rand::random::<[u8; 3]>());
        let tasks = skypilot::write_task_files(
            run.dir,
            experiment,
            self.settings,
            &run_tag,
            find_agent_binary,
        )?;
        let config = skypilot::node_config(run.config, &skypilot::data_files(experiment))?;
        let ledger = Ledger::create(run.dir)?;
        let log_dir = run.dir.join(multitenant::layout::SKYPILOT_DIR);
        let nodes = join_all(tasks.iter().map(|task| {
            let log = log_dir.join(format!("{}.launch.log", task.node));
            let (sky, ledger, tls, settings) = (&sky, &ledger, &tls, self.settings);
            async move { launch_cluster(sky, ledger, tls, settings, task, &log, cancel).await }
        }))
        .await;
        self.launched = Some((sky, ledger));
        Ok(Launched { nodes, config })
    }

    async fn tear_down(&mut self) -> Teardown {
        let Some((sky, ledger)) = &self.launched else {
            return Teardown::default();
        };
        let mut teardown = Teardown::default();
        let still_up = if self.keep {
            ledger.keep_all();
            Vec::new()
        } else {
            ledger.tear_down(sky, Duration::from_secs(2), false).await
        };
        let dir = self.dir.display();
        if self.keep {
            let kept: Vec<String> = ledger
                .records()
                .into_iter()
                .filter(|r| r.state == ClusterState::Kept)
                .map(|r| r.cluster)
                .collect();
            teardown.notes.push(format!("clusters kept up on purpose (launcher.keep): {}; they cost money until `coordinator down {dir}`", kept.join(", ")));
        }
        if !still_up.is_empty() {
            let names: Vec<String> = still_up
                .iter()
                .map(|r| format!("{} ({})", r.cluster, r.detail))
                .collect();
            let failure = format!("TEARDOWN FAILED, these clusters may still be running and billing: {}; run `coordinator down {dir}` or `sky down -y <cluster>`", names.join("; "));
            teardown.notes.push(failure.clone());
            teardown.failures.push(failure);
        }
        teardown
    }
}
