//! The SkyPilot launcher: preflight, then one cluster per node launched at once, and every
//! cluster torn down at the end whatever happened (unless the config keeps them). The `sky`
//! CLI, the task files and the cluster ledger are in [`crate::skypilot`].

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use multitenant::auth::{BearerToken, TOKEN_ENV};
use multitenant::config::SkyPilotSettings;
use tokio_util::sync::CancellationToken;

use super::{find_agent_binary, AgentEndpoint, Launched, Launcher, Teardown};
use crate::run::ExperimentRun;
use crate::skypilot::{self, ClusterState, Ledger, Sky, TaskFile};
use crate::tls::ExperimentTls;

/// How often a node that is still launching says so.
const PROGRESS_EVERY: Duration = Duration::from_secs(15);

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
    eprintln!(
        "node {}: launching cluster {} (output in {})",
        task.node,
        task.cluster,
        log.display()
    );
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
        sky.launch(task, &env, log).await?;
        let address = sky.endpoint(&task.cluster, settings.agent_port).await?;
        anyhow::Ok(AgentEndpoint {
            url: format!("https://{address}"),
            token,
            tls: Some(tls.client_config()),
        })
    };
    let started = Instant::now();
    let still_launching = async {
        let mut every = tokio::time::interval(PROGRESS_EVERY);
        every.tick().await;
        loop {
            every.tick().await;
            eprintln!(
                "node {}: still launching cluster {} ({} s)",
                task.node,
                task.cluster,
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
            eprintln!("node {}: up at {url}", task.node);
            Ok(endpoint)
        }
        Err(e) => {
            let reason = format!("launching cluster {}: {e:#}", task.cluster);
            let state = ClusterState::LaunchFailed;
            ledger.set(&task.node, &task.cluster, state, reason.clone());
            eprintln!("node {}: {reason}", task.node);
            Err(reason)
        }
    }
}

impl Launcher for SkyPilotLauncher<'_> {
    fn name(&self) -> &'static str {
        "skypilot"
    }

    /// Everything that can be known wrong is refused before anything is launched: no `sky`,
    /// no cloud, no agent binary, no TLS material.
    async fn launch(
        &mut self,
        run: &ExperimentRun<'_>,
        cancel: &CancellationToken,
    ) -> anyhow::Result<Launched> {
        let experiment = run.experiment;
        self.dir = run.dir.to_owned();
        let sky = Sky::find()?;
        sky.check().await?;
        let agent_bin = find_agent_binary()?;
        let tls = match &experiment.launcher.tls {
            Some(ca) => ExperimentTls::from_user_ca(ca)?,
            None => ExperimentTls::generate(&experiment.name)?,
        };
        tls.write_ca(run.dir)?;
        let run_tag = hex::encode(rand::random::<[u8; 3]>());
        let tasks =
            skypilot::write_task_files(run.dir, experiment, self.settings, &run_tag, &agent_bin)?;
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
