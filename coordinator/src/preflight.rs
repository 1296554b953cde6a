//! A node's preflight, before its run starts: the agent's doctor against the node's part of the
//! config, kept as `nodes/<node>/doctor.json` and told in the terminal when it matters (a
//! trial the agent will refuse, or a missing piece on a node with vLLM tenants). The agent
//! refuses those trials itself when the run reaches them, before any of their engines start;
//! the run goes on with the others.

use std::path::Path;

use anyhow::Context;
use multitenant::config::{Engine, Node};
use multitenant::proto::v1::{DoctorRequest, DoctorResponse};
use serde::Serialize;

use crate::agent_client::Client;
use crate::console::say;

/// `doctor.json`.
#[derive(Debug, Serialize)]
struct DoctorFile<'a> {
    node: &'a str,
    checks: Vec<CheckLine<'a>>,
    refusals: Vec<RefusalLine<'a>>,
}

#[derive(Debug, Serialize)]
struct CheckLine<'a> {
    status: &'a str,
    name: &'a str,
    detail: &'a str,
}

#[derive(Debug, Serialize)]
struct RefusalLine<'a> {
    trial: &'a str,
    reasons: &'a [String],
}

/// Asks the agent for its preflight of `node`, writes `node_dir/doctor.json` and prints what
/// matters. An agent too old to have a preflight is said so, and the run goes on.
pub async fn run(
    client: &mut Client,
    config: &str,
    node: &Node,
    node_dir: &Path,
) -> anyhow::Result<()> {
    let response = client
        .doctor(DoctorRequest {
            config_yaml: config.to_owned(),
            node: node.name.clone(),
        })
        .await;
    let report = match response {
        Ok(r) => r.into_inner(),
        Err(status) if status.code() == tonic::Code::Unimplemented => {
            say!(
                "node {}: the agent has no preflight (it is older than this coordinator); trials it cannot run fail when they start",
                node.name
            );
            return Ok(());
        }
        Err(status) => {
            // The agent judges each trial again when it reaches it: the run can go on.
            say!(
                "node {}: warning: the agent's preflight failed ({}); trials it cannot run fail when they start",
                node.name,
                status.message()
            );
            return Ok(());
        }
    };
    write(&report, node, node_dir)?;
    let has_vllm = node
        .tenants
        .iter()
        .any(|t| matches!(t.engine, Engine::Vllm(_)));
    if has_vllm {
        for check in report
            .checks
            .iter()
            .filter(|c| matches!(c.status.as_str(), "missing" | "warn" | "FAIL"))
        {
            say!(
                "node {}: doctor: {} {}: {}",
                node.name,
                check.status,
                check.name,
                check.detail
            );
        }
    }
    for refusal in &report.refusals {
        say!(
            "node {}: trial {} will be refused: {}",
            node.name,
            refusal.trial,
            refusal.reasons.join("; ")
        );
    }
    Ok(())
}

fn write(report: &DoctorResponse, node: &Node, node_dir: &Path) -> anyhow::Result<()> {
    let file = DoctorFile {
        node: &node.name,
        checks: report
            .checks
            .iter()
            .map(|c| CheckLine {
                status: &c.status,
                name: &c.name,
                detail: &c.detail,
            })
            .collect(),
        refusals: report
            .refusals
            .iter()
            .map(|r| RefusalLine {
                trial: &r.trial,
                reasons: &r.reasons,
            })
            .collect(),
    };
    std::fs::create_dir_all(node_dir)
        .with_context(|| format!("creating {}", node_dir.display()))?;
    let path = node_dir.join(multitenant::layout::DOCTOR_FILE);
    std::fs::write(&path, serde_json::to_vec_pretty(&file)?)
        .with_context(|| format!("writing {}", path.display()))
}
