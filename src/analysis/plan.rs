//! What `plan.json` says an experiment folder should hold, so that analysis can name the trial
//! folders and tenant streams that are missing instead of silently reporting less.

use std::collections::BTreeMap;
use std::path::Path;

use crate::config::SharingMode;

/// One trial the coordinator planned on a node.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PlannedTrial {
    /// Trial name (its folder).
    pub trial: String,
    /// Sharing mode.
    pub mode: SharingMode,
    /// Its tenants.
    pub tenants: Vec<String>,
}

/// Per node, its planned trials in plan order. No plan file gives an empty plan (nothing to
/// check against); an unreadable one gives an empty plan and a warning.
pub(crate) fn read_plan(
    dir: &Path,
    warnings: &mut Vec<String>,
) -> BTreeMap<String, Vec<PlannedTrial>> {
    let path = dir.join("plan.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return BTreeMap::new();
    };
    match parse(&text) {
        Some(plan) => plan,
        None => {
            warnings.push(format!(
                "{}: not a plan this version reads; missing trials and streams are not checked",
                path.display()
            ));
            BTreeMap::new()
        }
    }
}

fn parse(text: &str) -> Option<BTreeMap<String, Vec<PlannedTrial>>> {
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    let mut plan = BTreeMap::new();
    for node in value.get("nodes")?.as_array()? {
        let mut trials = Vec::new();
        for trial in node.get("trials")?.as_array()? {
            let tenants = trial
                .get("tenants")?
                .as_array()?
                .iter()
                // Older plans list names; newer ones objects with the tenant's arrival.
                .map(|t| t.as_str().or_else(|| t.get("tenant")?.as_str()))
                .map(|t| t.map(str::to_owned))
                .collect::<Option<Vec<String>>>()?;
            trials.push(PlannedTrial {
                trial: trial.get("trial")?.as_str()?.to_owned(),
                mode: serde_json::from_value(trial.get("mode")?.clone()).ok()?,
                tenants,
            });
        }
        plan.insert(node.get("node")?.as_str()?.to_owned(), trials);
    }
    Some(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_plan_layouts_and_refuses_others() {
        let plan = parse(
            r#"{"nodes":[{"node":"a","trials":[
                {"trial":"solo-x","mode":"solo","tenants":["x"]},
                {"trial":"mps","mode":"mps","tenants":[{"tenant":"x","arrival":"poisson"},{"tenant":"y"}]}]}]}"#,
        )
        .expect("a valid plan");
        let trials = &plan["a"];
        assert_eq!(trials[0].tenants, ["x"]);
        assert_eq!(trials[1].mode, SharingMode::Mps);
        assert_eq!(trials[1].tenants, ["x", "y"]);
        assert!(parse(r#"{"nodes":[{"node":"a","trials":[{"trial":"t"}]}]}"#).is_none());
        assert!(parse("not json").is_none());
    }
}
