//! One start instant for the loads of a trial that run together.
//!
//! Each load first opens its connections, which takes as long as its engine takes to answer;
//! a load that started its clock as soon as its own pool was open would run ahead of its
//! neighbours by that difference, and a trace replayed to several tenants would lose the
//! very alignment of their bursts it is replayed for. So every load takes a [`StartTicket`],
//! and all start their clocks at the instant the last one is ready. A ticket dropped unused
//! (a load that failed before starting) counts as ready, so no load waits for it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::sync::Notify;

use crate::clock::RunClock;

struct Line {
    clock: RunClock,
    waiting: AtomicUsize,
    start_ns: OnceLock<u64>,
    ready: Notify,
}

/// One load's place on a start line.
pub struct StartTicket {
    line: Arc<Line>,
    arrived: bool,
}

/// `n` tickets of one start line on `clock`.
pub fn start_line(clock: RunClock, n: usize) -> Vec<StartTicket> {
    let line = Arc::new(Line {
        clock,
        waiting: AtomicUsize::new(n),
        start_ns: OnceLock::new(),
        ready: Notify::new(),
    });
    (0..n)
        .map(|_| StartTicket {
            line: line.clone(),
            arrived: false,
        })
        .collect()
}

impl StartTicket {
    /// A ticket of its own: the load starts as soon as it is ready.
    pub fn alone(clock: RunClock) -> Self {
        start_line(clock, 1).remove(0)
    }

    /// Marks this load ready and waits for the others; the run-clock time all of them start.
    pub async fn start(mut self) -> u64 {
        self.arrive();
        loop {
            // Made before the check: `notify_waiters` wakes every future made before it.
            let ready = self.line.ready.notified();
            if let Some(&start_ns) = self.line.start_ns.get() {
                return start_ns;
            }
            ready.await;
        }
    }

    fn arrive(&mut self) {
        if std::mem::replace(&mut self.arrived, true) {
            return;
        }
        if self.line.waiting.fetch_sub(1, Ordering::SeqCst) == 1 {
            let clock = self.line.clock;
            self.line.start_ns.get_or_init(|| clock.now_ns());
            self.line.ready.notify_waiters();
        }
    }
}

impl Drop for StartTicket {
    fn drop(&mut self) {
        self.arrive();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn loads_start_together_when_the_last_is_ready() {
        let clock = RunClock::start();
        let mut tickets = start_line(clock, 3);
        let (c, b, a) = (
            tickets.pop().expect("3"),
            tickets.pop().expect("2"),
            tickets.pop().expect("1"),
        );
        let early = tokio::spawn(a.start());
        let later = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            b.start().await
        });
        // The third load fails before it starts: its dropped ticket lets the others go.
        let failed = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(60)).await;
            drop(c);
        });
        let (early, later) = (early.await.expect("a"), later.await.expect("b"));
        failed.await.expect("c");
        assert_eq!(early, later, "one start instant for all");
        assert!(
            early >= 60_000_000,
            "started at {early} ns, before the last load was ready"
        );
        let alone = StartTicket::alone(clock).start().await;
        assert!(alone >= early);
    }
}
