//! `plan.json`: what the coordinator planned for each node, written by the coordinator and
//! read by analysis through the same types, so that analysis can name the trial folders and
//! tenant streams that are missing instead of silently reporting less.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::{Cost, SharingMode};

/// The whole plan of an experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// The experiment's name.
    #[serde(default)]
    pub experiment: String,
    /// Which launcher brought the nodes up (`local`, `static`, `skypilot`).
    #[serde(default)]
    pub launcher: String,
    /// Per node, in config order.
    pub nodes: Vec<PlanNode>,
    /// What a GPU-hour costs, when the config priced it (`cost:`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<Cost>,
}

/// One node's planned trials.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanNode {
    /// The node.
    pub node: String,
    /// Its trials, in run order.
    pub trials: Vec<PlanTrial>,
    /// The traffic the config sends each tenant, requests/s: its open-loop or replay rate
    /// (closed-loop tenants have none).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub traffic: BTreeMap<String, f64>,
}

/// One planned trial.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanTrial {
    /// Trial name (its folder).
    pub trial: String,
    /// Sharing mode.
    pub mode: SharingMode,
    /// Its tenants.
    pub tenants: Vec<PlanTenant>,
}

/// One tenant of a planned trial. Older plans list bare names; they are read as tenants
/// without an arrival.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "TenantRepr")]
pub struct PlanTenant {
    /// The tenant.
    pub tenant: String,
    /// Its arrival process in this trial, as the plan describes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arrival: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum TenantRepr {
    Name(String),
    Entry {
        tenant: String,
        #[serde(default)]
        arrival: Option<String>,
    },
}

impl From<TenantRepr> for PlanTenant {
    fn from(repr: TenantRepr) -> Self {
        match repr {
            TenantRepr::Name(tenant) => Self {
                tenant,
                arrival: None,
            },
            TenantRepr::Entry { tenant, arrival } => Self { tenant, arrival },
        }
    }
}

/// Why a plan could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The file is not there or not readable.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a plan this version reads.
    #[error("{}: not a plan this version reads ({source})", path.display())]
    Parse {
        /// The file.
        path: std::path::PathBuf,
        /// What serde said.
        source: serde_json::Error,
    },
}

impl Plan {
    /// The plan as `plan.json` holds it: pretty JSON and a final newline.
    pub fn to_json(&self) -> String {
        // A plan is plain data: it always serialises.
        serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
    }

    /// Reads `path`.
    pub fn read(path: &Path) -> Result<Self, PlanError> {
        let text = std::fs::read_to_string(path).map_err(|source| PlanError::Read {
            path: path.to_owned(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| PlanError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// The trials planned on `node`, in plan order.
    pub fn trials_of(&self, node: &str) -> Vec<PlanTrial> {
        self.nodes
            .iter()
            .find(|n| n.node == node)
            .map(|n| n.trials.clone())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Option<Plan> {
        serde_json::from_str(text).ok()
    }

    #[test]
    fn reads_both_plan_layouts_and_refuses_others() {
        let plan = parse(
            r#"{"experiment":"e","launcher":"local","nodes":[{"node":"a","trials":[
                {"trial":"solo-x","mode":"solo","tenants":["x"]},
                {"trial":"mps","mode":"mps","tenants":[{"tenant":"x","arrival":"poisson"},{"tenant":"y"}]}]}]}"#,
        )
        .expect("a valid plan");
        let trials = plan.trials_of("a");
        let names = |t: &PlanTrial| {
            t.tenants
                .iter()
                .map(|t| t.tenant.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&trials[0]), ["x"]);
        assert_eq!(trials[1].mode, SharingMode::Mps);
        assert_eq!(names(&trials[1]), ["x", "y"]);
        assert_eq!(trials[1].tenants[0].arrival.as_deref(), Some("poisson"));
        assert!(parse(r#"{"experiment":"e","launcher":"local","nodes":[{"node":"a","trials":[{"trial":"t"}]}]}"#).is_none());
        assert!(parse("not json").is_none());
    }

    #[test]
    fn writes_what_it_reads_in_the_committed_layout() {
        let plan = Plan {
            experiment: "e".into(),
            launcher: "static".into(),
            nodes: vec![PlanNode {
                node: "n".into(),
                trials: vec![PlanTrial {
                    trial: "mps".into(),
                    mode: SharingMode::Mps,
                    tenants: vec![PlanTenant {
                        tenant: "a".into(),
                        arrival: Some("constant 2/s".into()),
                    }],
                }],
                traffic: BTreeMap::from([("a".into(), 2.0)]),
            }],
            cost: Some(Cost {
                gpu_hour: 2.49,
                currency: "USD".into(),
            }),
        };
        let text = plan.to_json();
        assert!(text.starts_with("{\n  \"experiment\": \"e\",\n  \"launcher\": \"static\","));
        assert!(text.contains("\"trial\": \"mps\",\n          \"mode\": \"mps\","));
        assert_eq!(parse(&text), Some(plan));
    }
}
