//! Which runs a daemon agent keeps: a coordinator's confirmation of its copy, and the sweep
//! that deletes confirmed runs as [`Retention`] says ([`crate::retention`] decides, this
//! applies it to the runs and their folders).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::{Run, RunManager, RunState, RunTimes};
use crate::clock::unix_now;
use crate::retention::{folder_bytes, human_bytes, EndedRun, Expiry, Retention};

/// Prefix of a run folder being deleted: renamed out of its id first, so that the id is free
/// at once and a folder half deleted is never taken for a run.
pub(super) const DELETING_PREFIX: &str = ".deleting-";

/// Why a run was not confirmed.
#[derive(Debug, thiserror::Error)]
pub enum ConfirmError {
    /// No such run.
    #[error("no run {0} on this agent")]
    NotFound(String),
    /// The run is not ended, or a copy does not match.
    #[error("{0}")]
    Refused(String),
    /// The confirmation could not be recorded; the run stays unconfirmed.
    #[error("cannot record the confirmation in {path}: {source}")]
    Record {
        /// The run's folder.
        path: String,
        /// What failed.
        source: std::io::Error,
    },
}

impl RunManager {
    /// Records that a coordinator holds a copy of ended run `id` whose streams have the
    /// SHA-256 of `copies` (path → hex): from then on retention may delete it. Refused, naming
    /// the stream, unless every stream of the run matches a copy and no copy is extra. Returns
    /// how long ago the run ended.
    pub fn confirm(
        &self,
        id: &str,
        copies: &HashMap<String, String>,
    ) -> Result<Duration, ConfirmError> {
        let run = self
            .get(id)
            .ok_or_else(|| ConfirmError::NotFound(id.to_owned()))?;
        let state = run.state();
        if state == RunState::Running {
            return Err(ConfirmError::Refused(format!(
                "run {id} is still running: only an ended run is confirmed"
            )));
        }
        let streams = run.streams.all();
        for stream in &streams {
            let snap = stream.snapshot();
            let refused = |why: String| ConfirmError::Refused(format!("{}: {why}", snap.rel_path));
            let Some(sha) = &snap.sha256_hex else {
                return Err(refused("the agent has not closed it".into()));
            };
            match copies.get(&snap.rel_path) {
                None => return Err(refused("the coordinator holds no copy of it".into())),
                Some(theirs) if theirs != sha => {
                    return Err(refused(format!(
                        "the coordinator's copy has SHA-256 {theirs}, the agent's {sha}"
                    )))
                }
                Some(_) => {}
            }
        }
        if let Some(extra) = copies
            .keys()
            .find(|path| !streams.iter().any(|s| s.rel_path() == path.as_str()))
        {
            return Err(ConfirmError::Refused(format!(
                "{extra}: not a stream of run {id}"
            )));
        }
        // Held across the write: two confirmations of one run record one after the other,
        // and the run counts as confirmed only once its record says so.
        let mut times = run.times.lock().unwrap_or_else(|p| p.into_inner());
        let now = unix_now();
        if times.confirmed_unix_s.is_none() {
            let confirmed = RunTimes {
                confirmed_unix_s: Some(now),
                ..*times
            };
            run.record_with(&state, confirmed)
                .write(run.streams.root())
                .map_err(|source| ConfirmError::Record {
                    path: run.streams.root().display().to_string(),
                    source,
                })?;
            *times = confirmed;
        }
        Ok(Duration::from_secs(
            now.saturating_sub(times.ended_unix_s.unwrap_or(now)),
        ))
    }

    /// Deletes the confirmed runs its retention lets go (folders and all); returns one line
    /// per run deleted, and one more when the runs left still take more than it allows.
    /// Sweeps run one at a time.
    pub fn sweep(&self) -> Vec<String> {
        let policy = &self.retention;
        if *policy == Retention::default() {
            return Vec::new();
        }
        let _one_at_a_time = self.sweeping.lock().unwrap_or_else(|p| p.into_inner());
        let now = unix_now();
        let runs: Vec<Arc<Run>> = self
            .runs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        let mut running_bytes = 0;
        let mut ended = Vec::new();
        for run in &runs {
            let bytes = folder_bytes(run.streams.root());
            let times = *run.times.lock().unwrap_or_else(|p| p.into_inner());
            match times.ended_unix_s {
                Some(at) if run.state() != RunState::Running => ended.push(EndedRun {
                    id: run.id.clone(),
                    ended_ago: Duration::from_secs(now.saturating_sub(at)),
                    confirmed: times.confirmed_unix_s.is_some(),
                    bytes,
                }),
                _ => running_bytes += bytes,
            }
        }
        let swept = crate::retention::sweep(&ended, running_bytes, policy);
        let mut said = Vec::new();
        for (id, why) in &swept.delete {
            let Some(run) = runs.iter().find(|r| r.id == *id) else {
                continue;
            };
            let why = match why {
                Expiry::Age => format!(
                    "it ended over {} ago",
                    humantime::format_duration(policy.keep_for.unwrap_or_default())
                ),
                Expiry::Size => format!(
                    "the runs took more than {}, and it was the oldest confirmed",
                    human_bytes(policy.max_bytes.unwrap_or_default())
                ),
            };
            said.push(match self.take_out(run) {
                Ok(Some(())) => {
                    format!("run {id}: deleted, as a coordinator had confirmed its copy and {why}")
                }
                Ok(None) => continue,
                Err(e) => format!(
                    "run {id}: cannot delete {} ({e}); no longer served",
                    run.streams.root().display()
                ),
            });
        }
        if swept.over(policy) {
            let mut kept = vec![format!(
                "{} of runs still running",
                human_bytes(running_bytes)
            )];
            if swept.kept_unconfirmed > 0 {
                kept.insert(
                    0,
                    format!(
                        "{} ended run(s) no coordinator has confirmed",
                        swept.kept_unconfirmed
                    ),
                );
            }
            said.push(format!(
                "the runs in {} take {}, over the {} allowed; kept: {}",
                self.data_dir.display(),
                human_bytes(swept.bytes_left),
                human_bytes(policy.max_bytes.unwrap_or_default()),
                kept.join(", ")
            ));
        }
        said
    }

    /// Takes `run` out of the registry, if it is still the one registered under its id, and
    /// deletes its folder: renamed out of its id while the registry is locked, so that the
    /// id can be used again at once. `Ok(None)` when the registry holds another run by now.
    fn take_out(&self, run: &Arc<Run>) -> std::io::Result<Option<()>> {
        let root = run.streams.root();
        let doomed = self.data_dir.join(format!("{DELETING_PREFIX}{}", run.id));
        {
            let mut runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
            if !runs.get(&run.id).is_some_and(|r| Arc::ptr_eq(r, run)) {
                return Ok(None);
            }
            runs.remove(&run.id);
            std::fs::rename(root, &doomed)?;
        }
        std::fs::remove_dir_all(&doomed)?;
        Ok(Some(()))
    }
}

/// When a stream of the run in `root` last changed, in seconds since the Unix epoch: the
/// end of a run whose agent died before recording it.
pub(super) fn last_change(root: &Path) -> Option<u64> {
    let mut streams = Vec::new();
    crate::recorder::jsonl_files(root, root, &mut streams).ok()?;
    streams
        .iter()
        .filter_map(|rel| {
            std::fs::metadata(root.join(rel))
                .and_then(|m| m.modified())
                .ok()
        })
        .max()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use super::super::{RunEnd, RunRecord};
    use super::*;
    use crate::gpu::NodeGpus;

    /// A finished run recorded in `dir/id` that ended `days_ago` days ago, with one stream.
    fn finished_run(dir: &Path, id: &str, days_ago: u64) -> String {
        let root = dir.join(id);
        std::fs::create_dir_all(root.join("solo")).expect("run folder");
        let stream = b"{\"a\":1}\n";
        std::fs::write(root.join("solo/t.jsonl"), stream).expect("stream");
        RunRecord {
            config_sha256: "abc".into(),
            trials: vec!["solo".into()],
            ended: Some((RunEnd::Finished, String::new())),
            times: RunTimes {
                ended_unix_s: Some(unix_now() - days_ago * 24 * 3600),
                confirmed_unix_s: None,
            },
        }
        .write(&root)
        .expect("record");
        hex::encode(Sha256::digest(stream))
    }

    #[test]
    fn only_a_run_whose_copy_a_coordinator_confirmed_is_deleted_and_a_restart_remembers_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let old_sha = finished_run(dir.path(), "old", 40);
        finished_run(dir.path(), "old-unconfirmed", 50);
        let young_sha = finished_run(dir.path(), "young", 2);
        // A folder a sweep was deleting when its agent died: finished off, never a run.
        std::fs::create_dir_all(dir.path().join(".deleting-gone/solo")).expect("leftover");
        let manager = |retention| {
            let m = RunManager::new(
                dir.path().to_owned(),
                NodeGpus::unavailable("tests run without a GPU"),
                "no-mps".into(),
            )
            .with_retention(retention);
            m.recover();
            m
        };
        let agent = manager(Retention::default());
        assert!(!dir.path().join(".deleting-gone").exists());
        assert!(agent.get(".deleting-gone").is_none());
        let copy = |sha: &str| HashMap::from([("solo/t.jsonl".to_string(), sha.to_string())]);
        // A wrong, a missing or an extra copy is refused, naming the stream.
        let wrong = agent
            .confirm("old", &copy(&"0".repeat(64)))
            .expect_err("refused");
        assert!(
            wrong
                .to_string()
                .starts_with("solo/t.jsonl: the coordinator's copy has SHA-256 000"),
            "{wrong}"
        );
        let missing = agent.confirm("old", &HashMap::new()).expect_err("refused");
        assert!(missing.to_string().contains("holds no copy"), "{missing}");
        let mut extra = copy(&old_sha);
        extra.insert("solo/u.jsonl".into(), old_sha.clone());
        let extra = agent.confirm("old", &extra).expect_err("refused");
        assert!(
            extra
                .to_string()
                .contains("solo/u.jsonl: not a stream of run old"),
            "{extra}"
        );
        assert!(matches!(
            agent.confirm("nope", &copy(&old_sha)),
            Err(ConfirmError::NotFound(_))
        ));
        let ended_ago = agent.confirm("old", &copy(&old_sha)).expect("confirmed");
        assert!(ended_ago >= Duration::from_secs(40 * 24 * 3600));
        agent
            .confirm("young", &copy(&young_sha))
            .expect("confirmed");
        assert!(agent.sweep().is_empty(), "no retention set: nothing goes");
        // A restarted agent reads the confirmations from the records.
        let restarted = manager(Retention {
            keep_for: Some(Duration::from_secs(30 * 24 * 3600)),
            max_bytes: None,
        });
        let said = restarted.sweep();
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(
            said[0].starts_with(
                "run old: deleted, as a coordinator had confirmed its copy and it ended over 30days ago"
            ),
            "{said:?}"
        );
        assert!(!dir.path().join("old").exists());
        assert!(!dir.path().join(".deleting-old").exists());
        assert!(restarted.get("old").is_none(), "no longer served");
        assert!(
            dir.path().join("old-unconfirmed/solo/t.jsonl").is_file(),
            "never confirmed: kept"
        );
        assert!(
            dir.path().join("young/solo/t.jsonl").is_file(),
            "confirmed but young: kept"
        );
        // Over a size that only the unconfirmed run keeps it above, the young one goes and
        // the agent says why the rest stays.
        let tiny = manager(Retention {
            keep_for: None,
            max_bytes: Some(1),
        });
        let said = tiny.sweep();
        assert_eq!(said.len(), 2, "{said:?}");
        assert!(said[0].starts_with("run young: deleted"), "{said:?}");
        assert!(
            said[1].contains("over the 1 B allowed; kept: 1 ended run(s) no coordinator has confirmed, 0 B of runs still running"),
            "{said:?}"
        );
        assert!(dir.path().join("old-unconfirmed").exists());
    }
}
