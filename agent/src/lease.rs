//! Leases: an agent goes on only while a coordinator shows it is there.
//!
//! Every authenticated call, and every second an event stream stays open, renews the contact
//! of the agent and of the run it names (a stream into a cut link stays open until the
//! server's pings go unanswered, at most 10 s). A run whose contact is older than its lease (the
//! config's `launcher.lease`) is stopped: its engines end and its files stay. An agent
//! started with `--exit-when-idle` exits once no run is running and no call came for that
//! long, so a node whose coordinator vanished goes idle and its autostop can take it down.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use tokio_util::sync::CancellationToken;

/// When a coordinator was last heard from.
#[derive(Debug)]
pub struct Contact {
    last: Mutex<Instant>,
}

impl Default for Contact {
    fn default() -> Self {
        Self {
            last: Mutex::new(Instant::now()),
        }
    }
}

impl Contact {
    /// Records that a coordinator is there now.
    pub fn renew(&self) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    /// How long nobody has been heard from.
    pub fn silent_for(&self) -> Duration {
        self.last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
    }
}

/// How often leases are checked: a lapse acts within this of its deadline.
pub const CHECK_EVERY: Duration = Duration::from_millis(250);

/// Waits until `contact` has been silent for `lease`, or `until` is cancelled; returns how
/// long the silence was when it lapsed, `None` when `until` came first.
pub async fn lapse(
    contact: &Contact,
    lease: Duration,
    until: &CancellationToken,
) -> Option<Duration> {
    loop {
        let silent = contact.silent_for();
        if silent >= lease {
            return Some(silent);
        }
        let wait = (lease - silent).min(CHECK_EVERY);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = until.cancelled() => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real time, scaled down (tokio's paused clock needs its `test-util` feature, which
    /// would give the test builds a tokio, and all that is built on it, of their own).
    #[tokio::test]
    async fn lapses_after_a_whole_lease_of_silence_counted_from_the_last_renewal() {
        let contact = std::sync::Arc::new(Contact::default());
        let never = CancellationToken::new();
        let lease = Duration::from_secs(1);
        let renewed_after = Duration::from_millis(600);
        let began = Instant::now();
        let renewer = {
            let contact = contact.clone();
            tokio::spawn(async move {
                tokio::time::sleep(renewed_after).await;
                contact.renew();
            })
        };
        let silent = lapse(&contact, lease, &never).await.expect("lapsed");
        renewer.await.expect("renewer");
        assert!(silent >= lease);
        let at = began.elapsed();
        // Counted from the start, it would lapse at 1 s; a lapse more than a few checks late
        // would be a lease not watched.
        assert!(
            at >= renewed_after + lease && at < renewed_after + lease + CHECK_EVERY * 8,
            "lapsed at {at:?}, not 0.6 s + the lease"
        );
    }

    #[tokio::test]
    async fn an_ended_run_stops_watching() {
        let ended = CancellationToken::new();
        ended.cancel();
        assert_eq!(
            lapse(&Contact::default(), Duration::from_secs(1), &ended).await,
            None
        );
    }
}
