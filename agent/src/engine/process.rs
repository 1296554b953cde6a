//! Engine processes: started in their own process group behind a small shell guard, watched,
//! and stopped so that nothing they started outlives them — not even when the agent itself is
//! killed with SIGKILL.
//!
//! The guard is `sh` as the process-group leader. It runs the engine in the background and
//! holds the read end of a pipe whose write end only the agent has. When that pipe closes —
//! because the agent stops the engine, or because the agent died — the guard sends SIGTERM to
//! the whole group, waits up to a grace period for the engine to go, then SIGKILLs the group.
//! The guard exits with the engine's exit status, so an engine that dies on its own is seen as
//! the guard's exit.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, ChildStdin, Command};

/// How long an engine may take to stop after SIGTERM before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(15);

/// The guard script; `$1` is the grace period in seconds, the rest is the engine command.
const GUARD: &str = r#"grace=$1; shift
exec 3<&0 </dev/null
"$@" 3<&- &
engine=$!
(
  trap '' TERM
  read -r _ <&3
  kill -TERM 0 2>/dev/null
  i=0
  while [ "$i" -lt "$grace" ] && kill -0 "$engine" 2>/dev/null; do sleep 1; i=$((i + 1)); done
  kill -KILL 0
) &
wait "$engine"
"#;

/// A running engine process group.
pub struct EngineProcess {
    child: Child,
    pgid: Pid,
    lifeline: Option<ChildStdin>,
    log_path: PathBuf,
}

/// How an engine process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitReport {
    /// The exit status, in words (`exit status 1`, `killed by signal 9`).
    pub status: String,
    /// vLLM's own error line from the log, if one is there.
    pub error_line: Option<String>,
    /// The log's last lines.
    pub log_tail: Vec<String>,
}

impl ExitReport {
    /// One line for an event: status, error line, and the log's last lines.
    pub fn describe(&self) -> String {
        let mut text = self.status.clone();
        if let Some(line) = &self.error_line {
            text.push_str(&format!("; error: {line}"));
        }
        if !self.log_tail.is_empty() {
            text.push_str(&format!("; last log lines: {}", self.log_tail.join(" | ")));
        }
        text
    }
}

impl EngineProcess {
    /// Starts `program args…` with `env` added, its output appended to `log_path`.
    pub fn spawn(
        program: &str,
        args: &[String],
        env: &[(String, String)],
        log_path: &Path,
    ) -> std::io::Result<Self> {
        if let Some(dir) = log_path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)?;
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(GUARD)
            .arg("engine-guard")
            .arg(STOP_GRACE.as_secs().to_string())
            .arg(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()?;
        let pid = child
            .id()
            .ok_or_else(|| std::io::Error::other("the engine guard exited at once"))?;
        let pgid = Pid::from_raw(i32::try_from(pid).map_err(std::io::Error::other)?);
        let lifeline = child.stdin.take();
        Ok(Self {
            child,
            pgid,
            lifeline,
            log_path: log_path.to_owned(),
        })
    }

    /// The process group id (the guard's pid).
    pub fn pgid(&self) -> i32 {
        self.pgid.as_raw()
    }

    /// Waits until the engine exits on its own; cancel-safe.
    pub async fn wait(&mut self) -> ExitReport {
        let status = self.child.wait().await;
        self.report(status)
    }

    /// Stops the engine: the guard sends SIGTERM to the group, then SIGKILL after the grace
    /// period. Returns once no process of the group is left (SIGKILLing it if the guard could
    /// not), with how the engine ended.
    pub async fn stop(mut self) -> ExitReport {
        drop(self.lifeline.take());
        let deadline = tokio::time::Instant::now() + STOP_GRACE + Duration::from_secs(5);
        let status = match tokio::time::timeout_at(deadline, self.child.wait()).await {
            Ok(status) => status,
            Err(_) => {
                let _ = killpg(self.pgid, Signal::SIGKILL);
                self.child.wait().await
            }
        };
        while group_alive(self.pgid) {
            if tokio::time::Instant::now() >= deadline {
                let _ = killpg(self.pgid, Signal::SIGKILL);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.report(status)
    }

    fn report(&self, status: std::io::Result<ExitStatus>) -> ExitReport {
        let status = match status {
            Ok(s) => describe_status(s),
            Err(e) => format!("exit status unknown ({e})"),
        };
        let tail = log_tail(&self.log_path, 12);
        let error_line = tail
            .iter()
            .rev()
            .find(|l| {
                let lower = l.to_ascii_lowercase();
                lower.contains("error") && !lower.contains("leaked")
            })
            .cloned();
        ExitReport {
            status,
            error_line,
            log_tail: tail,
        }
    }
}

/// PIDs of the live processes in group `pgid`, from `/proc/<pid>/stat` (field 5).
pub fn group_pids(pgid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<i32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // The command name may hold spaces and parentheses: fields start after the last ')'.
            let fields = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
            fields
                .split_whitespace()
                .nth(2)
                .and_then(|g| g.parse::<i32>().ok())
                == Some(pgid)
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// Whether any process of group `pgid` is left (signal 0 probes without signalling).
pub fn group_alive(pgid: Pid) -> bool {
    killpg(pgid, None).is_ok()
}

fn describe_status(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        // The guard reports an engine killed by signal N as 128 + N.
        (Some(code), _) if code > 128 => format!("killed by signal {}", code - 128),
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => "ended".into(),
    }
}

/// The last `n` non-empty lines of `path` (reading at most its last 64 KiB).
pub fn log_tail(path: &Path, n: usize) -> Vec<String> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let len = file.metadata().map_or(0, |m| m.len());
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.trim_end().to_owned())
        .collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_engine_that_fails_reports_its_status_and_error_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("e.log");
        let script =
            "echo starting; echo 'vllm serve: error: unrecognized arguments: --bogus' >&2; exit 2";
        let mut engine =
            EngineProcess::spawn("sh", &["-c".into(), script.into()], &[], &log).expect("spawn");
        let report = engine.wait().await;
        assert_eq!(report.status, "exit status 2");
        assert_eq!(
            report.error_line.as_deref(),
            Some("vllm serve: error: unrecognized arguments: --bogus")
        );
        assert_eq!(report.log_tail[0], "starting");
        let pgid = engine.pgid;
        engine.stop().await;
        assert!(!group_alive(pgid));
    }

    #[tokio::test]
    async fn stop_ends_the_whole_group_even_a_child_that_ignores_sigterm() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("e.log");
        // A grandchild that ignores SIGTERM must still go (SIGKILL after the grace period is
        // not awaited here: the engine itself exits on SIGTERM, and the guard then kills the
        // group).
        let script = "(trap '' TERM; sleep 300) & sleep 300";
        let engine =
            EngineProcess::spawn("sh", &["-c".into(), script.into()], &[], &log).expect("spawn");
        let pgid = engine.pgid;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(group_alive(pgid));
        let members = group_pids(pgid.as_raw());
        assert!(
            members.contains(&pgid.as_raw()) && members.len() >= 4,
            "guard, watcher, engine, children: {members:?}"
        );
        let started = std::time::Instant::now();
        let report = engine.stop().await;
        assert!(!group_alive(pgid), "a process of the group survived");
        assert!(
            started.elapsed() < STOP_GRACE,
            "took {:?}",
            started.elapsed()
        );
        assert!(report.status.contains("signal"), "{}", report.status);
    }
}
