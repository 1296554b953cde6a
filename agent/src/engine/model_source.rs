//! Where a vLLM model comes from: a hub id or a local folder is handed to vLLM as it is; an
//! `s3://` or `gs://` folder is first synced to the node's disk (incrementally, into a cache
//! shared by runs), with the cloud's own CLI, so vLLM loads it locally.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use super::{find_executable, EngineError};

/// A bucket folder and the command that syncs it.
struct Bucket {
    scheme: &'static str,
    tool: &'static str,
}

const BUCKETS: [Bucket; 2] = [
    Bucket {
        scheme: "s3://",
        tool: "aws",
    },
    Bucket {
        scheme: "gs://",
        tool: "gcloud",
    },
];

fn bucket(model: &str) -> Option<&'static Bucket> {
    BUCKETS.iter().find(|b| model.starts_with(b.scheme))
}

/// Checks that the tool a bucket model needs is installed.
pub fn preflight(tenant: &str, model: &str) -> Result<(), EngineError> {
    match bucket(model) {
        Some(b) if find_executable(b.tool).is_none() => Err(EngineError::NotFound {
            tenant: tenant.to_owned(),
            executable: format!("{} (needed to sync {} models)", b.tool, b.scheme),
        }),
        _ => Ok(()),
    }
}

/// The folder where `model` is cached under `cache`.
pub fn cache_path(cache: &Path, model: &str) -> PathBuf {
    let name: String = model
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    cache.join(name)
}

/// What vLLM should load: `model` itself, or the local copy of a bucket folder, synced now
/// (output to `log`), within `timeout`.
pub async fn resolve(
    tenant: &str,
    model: &str,
    cache: &Path,
    log: &Path,
    timeout: Duration,
) -> Result<String, EngineError> {
    let Some(b) = bucket(model) else {
        return Ok(model.to_owned());
    };
    preflight(tenant, model)?;
    let dest = cache_path(cache, model);
    let failed = |message: String| EngineError::Sync {
        tenant: tenant.to_owned(),
        model: model.to_owned(),
        message,
    };
    std::fs::create_dir_all(&dest)
        .map_err(|e| failed(format!("creating {}: {e}", dest.display())))?;
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).map_err(|e| failed(e.to_string()))?;
    }
    let out = std::fs::File::create(log)
        .map_err(|e| failed(format!("creating {}: {e}", log.display())))?;
    let dest_arg = dest.display().to_string();
    let args: Vec<&str> = match b.tool {
        "aws" => vec!["s3", "sync", model, &dest_arg, "--only-show-errors"],
        _ => vec!["storage", "rsync", "--recursive", model, &dest_arg],
    };
    let status = tokio::process::Command::new(b.tool)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(out.try_clone().map_err(|e| failed(e.to_string()))?)
        .stderr(out)
        .kill_on_drop(true)
        .status();
    let status = tokio::time::timeout(timeout, status)
        .await
        .map_err(|_| failed(format!("not done within {timeout:?}")))?
        .map_err(|e| failed(format!("running {}: {e}", b.tool)))?;
    if !status.success() {
        let tail = super::process::log_tail(log, 3).join(" | ");
        return Err(failed(format!(
            "{} {} exited with {status}: {tail}",
            b.tool,
            args.join(" ")
        )));
    }
    Ok(dest_arg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_folders_get_a_cache_folder_and_others_are_left_alone() {
        let cache = Path::new("/cache");
        assert_eq!(
            cache_path(cache, "s3://bucket/models/qwen-3b"),
            Path::new("/cache/s3___bucket_models_qwen-3b")
        );
        assert!(bucket("gs://b/m").is_some_and(|b| b.tool == "gcloud"));
        assert!(bucket("meta-llama/Llama-3.1-8B-Instruct").is_none());
        assert!(bucket("/models/local").is_none());
    }
}
