//! How long a daemon agent keeps the runs it recorded.
//!
//! A run is deleted only once it has ended and a coordinator has confirmed, by `ConfirmRun`,
//! that it holds a copy whose every stream matches the agent's SHA-256: nothing that nobody
//! collected is ever deleted. Among confirmed runs, those that ended longer ago than
//! `keep_for` go first, then the oldest while the data folder's runs take more than
//! `max_bytes`. A folder over its size with only unconfirmed runs left stays over it, and
//! says so.

use std::time::Duration;

/// The retention policy: which bounds apply. Both `None`: runs are kept until deleted by hand.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Confirmed runs that ended longer ago than this are deleted.
    pub keep_for: Option<Duration>,
    /// Confirmed runs are deleted, oldest first, while all runs take more than this.
    pub max_bytes: Option<u64>,
}

/// How long a daemon (`agent serve --state-dir`) keeps confirmed runs unless told otherwise.
pub const DAEMON_KEEP_FOR: Duration = Duration::from_secs(30 * 24 * 3600);
/// How much a daemon's runs may take unless told otherwise: 100 GiB.
pub const DAEMON_MAX_BYTES: u64 = 100 << 30;

/// A bound given on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit<T> {
    /// No bound (`forever`, `unlimited`).
    Unbounded,
    /// This bound.
    At(T),
}

impl<T> Limit<T> {
    fn bound(self) -> Option<T> {
        match self {
            Limit::Unbounded => None,
            Limit::At(value) => Some(value),
        }
    }
}

/// Reads `--keep-runs-for`: a duration such as `30d`, or `forever`.
pub fn parse_keep_for(text: &str) -> Result<Limit<Duration>, String> {
    if text == "forever" {
        return Ok(Limit::Unbounded);
    }
    humantime::parse_duration(text)
        .map(Limit::At)
        .map_err(|e| format!("{text:?}: {e} (write e.g. 30d, 12h, or forever)"))
}

/// Reads `--keep-runs-size`: a size such as `100GiB`, or `unlimited`.
pub fn parse_keep_size(text: &str) -> Result<Limit<u64>, String> {
    if text == "unlimited" {
        return Ok(Limit::Unbounded);
    }
    parse_size(text).map(Limit::At)
}

/// Which kind of agent serves: what retention applies when none is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serving {
    /// A daemon (`agent serve --state-dir`), which lives for months.
    Daemon,
    /// An agent a launcher started for one experiment, whose runs end with that experiment's
    /// folder.
    ForALauncher,
}

impl Retention {
    /// The policy of `agent serve` given `keep_for` and `keep_size` on its command line: where
    /// one is not given, a daemon's default ([`DAEMON_KEEP_FOR`], [`DAEMON_MAX_BYTES`]), and
    /// no bound for an agent a launcher started.
    pub fn of_serve(
        keep_for: Option<Limit<Duration>>,
        keep_size: Option<Limit<u64>>,
        serving: Serving,
    ) -> Self {
        let daemon = serving == Serving::Daemon;
        Self {
            keep_for: keep_for.map_or(daemon.then_some(DAEMON_KEEP_FOR), Limit::bound),
            max_bytes: keep_size.map_or(daemon.then_some(DAEMON_MAX_BYTES), Limit::bound),
        }
    }

    /// What a confirmed run that ended `ended_ago` ago can expect, for the coordinator; empty
    /// without a policy.
    pub fn describe_for(&self, ended_ago: Duration) -> String {
        match (self.keep_for, self.max_bytes) {
            (None, None) => String::new(),
            (None, Some(max)) => format!(
                "the agent deletes it once its runs take more than {}, oldest first",
                human_bytes(max)
            ),
            (Some(keep_for), max) => format!(
                "the agent deletes it in {}{}",
                humantime::format_duration(roughly(keep_for.saturating_sub(ended_ago))),
                max.map(|b| format!(
                    ", or sooner while the agent's runs take more than {}",
                    human_bytes(b)
                ))
                .unwrap_or_default()
            ),
        }
    }

    /// The policy in words, for the agent's start-up lines.
    pub fn describe(&self) -> String {
        let age = self
            .keep_for
            .map(|k| format!("{} after they ended", humantime::format_duration(k)));
        let size = self.max_bytes.map(|b| {
            format!(
                "oldest first while all runs take more than {}",
                human_bytes(b)
            )
        });
        let deleted = "retention: runs a coordinator confirmed are deleted";
        match (age, size) {
            (None, None) => "retention: none; every run is kept until deleted by hand".into(),
            (Some(age), None) => format!("{deleted} {age}"),
            (None, Some(size)) => format!("{deleted} {size}"),
            (Some(age), Some(size)) => format!("{deleted} {age}, or sooner, {size}"),
        }
    }
}

/// `left` to the hour (to the minute under an hour, the second under a minute): a run
/// confirmed a second after it ended goes "in 30days", not "in 29days 23h 59m 59s".
fn roughly(left: Duration) -> Duration {
    let secs = left.as_secs();
    let unit = match secs {
        3600.. => 3600,
        60.. => 60,
        _ => 1,
    };
    Duration::from_secs((secs + unit / 2) / unit * unit)
}

/// One ended run, as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndedRun {
    /// The run's id.
    pub id: String,
    /// How long ago it ended.
    pub ended_ago: Duration,
    /// Whether a coordinator confirmed its copy.
    pub confirmed: bool,
    /// What its folder takes.
    pub bytes: u64,
}

/// Why a run is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// It ended longer ago than `keep_for`.
    Age,
    /// The runs took more than `max_bytes` and it was the oldest confirmed one.
    Size,
}

/// What a sweep decided.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Sweep {
    /// Runs to delete, with why, oldest first.
    pub delete: Vec<(String, Expiry)>,
    /// Bytes all runs take after those deletions.
    pub bytes_left: u64,
    /// Runs that would have gone but no coordinator confirmed them.
    pub kept_unconfirmed: usize,
}

impl Sweep {
    /// Whether the runs left still take more than `policy` allows.
    pub fn over(&self, policy: &Retention) -> bool {
        policy.max_bytes.is_some_and(|max| self.bytes_left > max)
    }
}

/// Decides which of `ended` go under `policy`; `running_bytes` is what runs still running
/// take (they count towards the size, and are never deleted).
pub fn sweep(ended: &[EndedRun], running_bytes: u64, policy: &Retention) -> Sweep {
    let mut by_age: Vec<&EndedRun> = ended.iter().collect();
    by_age.sort_by(|a, b| b.ended_ago.cmp(&a.ended_ago).then(a.id.cmp(&b.id)));
    let mut bytes_left = running_bytes + ended.iter().map(|r| r.bytes).sum::<u64>();
    let mut out = Sweep::default();
    for run in by_age {
        let expired = policy.keep_for.is_some_and(|k| run.ended_ago >= k);
        let too_big = policy.max_bytes.is_some_and(|max| bytes_left > max);
        let why = match (expired, too_big) {
            (true, _) => Expiry::Age,
            (false, true) => Expiry::Size,
            (false, false) => continue,
        };
        if run.confirmed {
            out.delete.push((run.id.clone(), why));
            bytes_left -= run.bytes;
        } else {
            out.kept_unconfirmed += 1;
        }
    }
    out.bytes_left = bytes_left;
    out
}

/// Reads a size such as `100GiB`, `500 MB`, `1.5TiB` or `4096` (bytes).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size: write e.g. 100GiB, 500MB or 4096"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        other => {
            return Err(format!(
                "{text:?}: unknown unit {other:?} (B, KB, MB, GB, TB, KiB, MiB, GiB or TiB)"
            ))
        }
    };
    let bytes = number * scale as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 {
        return Err(format!("{text:?} is not a size from 1 byte to 16 EiB"));
    }
    Ok(bytes as u64)
}

/// `bytes` as [`parse_size`] reads it back exactly: in the largest binary unit that divides
/// it, else in bytes.
pub fn exact_size(bytes: u64) -> String {
    for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// `bytes` in the largest binary unit that keeps it at or above 1.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// What the files under `dir` take, in bytes (links not followed; unreadable entries skipped).
pub fn folder_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => folder_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn run(id: &str, days_ago: u64, confirmed: bool, bytes: u64) -> EndedRun {
        EndedRun {
            id: id.into(),
            ended_ago: DAY * days_ago as u32,
            confirmed,
            bytes,
        }
    }

    #[test]
    fn old_confirmed_runs_go_and_unconfirmed_ones_stay_whatever_their_age() {
        let policy = Retention {
            keep_for: Some(DAY * 30),
            max_bytes: None,
        };
        let runs = [
            run("old", 40, true, 10),
            run("old-unconfirmed", 50, false, 10),
            run("young", 3, true, 10),
        ];
        let swept = sweep(&runs, 0, &policy);
        assert_eq!(swept.delete, vec![("old".to_string(), Expiry::Age)]);
        assert_eq!(swept.kept_unconfirmed, 1);
        assert_eq!(swept.bytes_left, 20);
    }

    #[test]
    fn over_its_size_the_oldest_confirmed_runs_go_until_it_fits() {
        let policy = Retention {
            keep_for: None,
            max_bytes: Some(100),
        };
        let runs = [
            run("c", 1, true, 40),
            run("a", 9, true, 40),
            run("b", 5, false, 40),
            run("d", 0, true, 40),
        ];
        // 160 bytes: a (the oldest) goes, b is not confirmed, c goes; 80 fit, so d stays.
        let swept = sweep(&runs, 0, &policy);
        assert_eq!(
            swept.delete,
            vec![
                ("a".to_string(), Expiry::Size),
                ("c".to_string(), Expiry::Size)
            ]
        );
        assert_eq!((swept.bytes_left, swept.kept_unconfirmed), (80, 1));
        assert!(!swept.over(&policy));
        // With d unconfirmed too and 30 bytes still running, it cannot fit: it says so.
        let mut unconfirmed = runs.clone();
        unconfirmed[3].confirmed = false;
        let swept = sweep(&unconfirmed, 30, &policy);
        assert_eq!(swept.delete.len(), 2);
        assert_eq!((swept.bytes_left, swept.kept_unconfirmed), (110, 2));
        assert!(swept.over(&policy));
    }

    #[test]
    fn no_policy_deletes_nothing() {
        let runs = [run("a", 900, true, 1 << 40)];
        let swept = sweep(&runs, 0, &Retention::default());
        assert!(swept.delete.is_empty());
        assert!(!swept.over(&Retention::default()));
    }

    #[test]
    fn sizes_read_in_decimal_and_binary_units_and_refuse_the_rest() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("100GiB"), Ok(100 << 30));
        assert_eq!(parse_size("1.5 KiB"), Ok(1536));
        assert_eq!(parse_size("500MB"), Ok(500_000_000));
        assert!(parse_size("10 parsecs")
            .expect_err("refused")
            .contains("unknown unit"));
        assert!(parse_size("GiB")
            .expect_err("refused")
            .contains("not a size"));
        assert!(parse_size("0").expect_err("refused").contains("1 byte"));
        assert_eq!(human_bytes(100 << 30), "100.0 GiB");
        for bytes in [1, 1023, 1 << 10, 3 << 20, (20 << 30) + 1, 5 << 40] {
            assert_eq!(parse_size(&exact_size(bytes)), Ok(bytes), "{bytes}");
        }
        assert_eq!(exact_size(20 << 30), "20GiB");
        assert_eq!(human_bytes(12), "12 B");
    }

    #[test]
    fn a_daemon_keeps_runs_30_days_or_100_gib_unless_told_and_a_launched_agent_keeps_all() {
        let daemon = Retention::of_serve(None, None, Serving::Daemon);
        assert_eq!(daemon.keep_for, Some(DAEMON_KEEP_FOR));
        assert_eq!(daemon.max_bytes, Some(DAEMON_MAX_BYTES));
        assert_eq!(
            Retention::of_serve(None, None, Serving::ForALauncher),
            Retention::default()
        );
        let forever = Retention::of_serve(
            Some(parse_keep_for("forever").expect("forever")),
            Some(parse_keep_size("2GiB").expect("size")),
            Serving::Daemon,
        );
        assert_eq!((forever.keep_for, forever.max_bytes), (None, Some(2 << 30)));
        assert!(parse_keep_for("soon")
            .expect_err("refused")
            .contains("or forever"));
        assert_eq!(
            daemon.describe(),
            "retention: runs a coordinator confirmed are deleted 30days after they ended, or sooner, oldest first while all runs take more than 100.0 GiB"
        );
        assert!(Retention::default()
            .describe()
            .contains("until deleted by hand"));
    }

    #[test]
    fn a_confirmed_run_is_told_when_it_goes() {
        let policy = Retention {
            keep_for: Some(DAY * 30),
            max_bytes: Some(DAEMON_MAX_BYTES),
        };
        let just_ended = policy.describe_for(Duration::from_secs(1));
        assert!(
            just_ended.starts_with("the agent deletes it in 30days,"),
            "{just_ended}"
        );
        let said = policy.describe_for(DAY * 10);
        assert!(said.starts_with("the agent deletes it in 20days"), "{said}");
        assert!(said.contains("100.0 GiB"), "{said}");
        assert_eq!(Retention::default().describe_for(DAY), "");
    }
}
