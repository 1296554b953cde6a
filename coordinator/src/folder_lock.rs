//! One coordinator at a time in an experiment folder. `run` and `attach` both write into it
//! (collected streams, adopted copies, the summary); two at once would interleave their writes.
//! Each holds an exclusive `flock` on the folder's [`COORDINATOR_LOCK_FILE`] while it works,
//! with its own description written inside, and a second is refused with that description.
//! The kernel releases the lock when its holder ends, however it ends (even SIGKILL), so a
//! killed `run` never leaves the folder locked for the `attach` that finishes it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::Path;

use anyhow::{bail, Context};
use multitenant::layout::COORDINATOR_LOCK_FILE;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// The held lock; dropping it releases the folder.
#[derive(Debug)]
pub struct FolderLock {
    _held: Flock<File>,
}

impl FolderLock {
    /// Locks `dir` for `holder` (`coordinator run`, `coordinator attach`), or says which
    /// coordinator holds it.
    pub fn take(dir: &Path, holder: &str) -> anyhow::Result<Self> {
        let path = dir.join(COORDINATOR_LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let mut held = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(held) => held,
            Err((mut file, Errno::EWOULDBLOCK)) => {
                let mut other = String::new();
                let _ = file.read_to_string(&mut other);
                let other = other.trim();
                let other = if other.is_empty() {
                    "another coordinator"
                } else {
                    other
                };
                bail!(
                    "{} is in use by {other}: one coordinator at a time writes into an experiment folder; wait for it to end (or end it) and try again",
                    dir.display()
                );
            }
            Err((_, e)) => bail!("locking {}: {e}", path.display()),
        };
        let describe = format!(
            "{holder} (pid {}, since {})\n",
            std::process::id(),
            chrono::Utc::now().format("%Y-%m-%d %H:%M:%S UTC")
        );
        held.set_len(0)
            .and_then(|()| held.rewind())
            .and_then(|()| held.write_all(describe.as_bytes()))
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(Self { _held: held })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_name_until_it_lets_go() {
        let dir = tempfile::tempdir().expect("tmp");
        let first = FolderLock::take(dir.path(), "coordinator run").expect("free");
        let refused = FolderLock::take(dir.path(), "coordinator attach")
            .expect_err("held")
            .to_string();
        assert!(
            refused.contains("is in use by coordinator run (pid ")
                && refused.contains(&std::process::id().to_string()),
            "{refused}"
        );
        drop(first);
        let again = FolderLock::take(dir.path(), "coordinator attach").expect("let go");
        let text = std::fs::read_to_string(dir.path().join(COORDINATOR_LOCK_FILE)).expect("read");
        assert!(text.starts_with("coordinator attach (pid "), "{text}");
        drop(again);
    }
}
