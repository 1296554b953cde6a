//! Sends open-loop arrivals on time.
//!
//! tokio's timer wheel has a 1 ms resolution, so an arrival woken by `sleep_until` is up to a
//! millisecond late. Each open-loop tenant therefore gets a thread of its own that sleeps with
//! the kernel's timer slack set to 1 ns until shortly before the arrival, spins the last
//! stretch, and then hands the request to the runtime. What is left as lag is the hand-over to
//! a worker thread (microseconds on an idle runtime), and it is measured for every request.
//!
//! The same thread releases the later turns of conversations ([`FollowUp`]): a turn asked for
//! while arrivals are dispatched waits in a queue ordered by time and is released as exactly
//! as an arrival, however its time falls between theirs.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::clock::RunClock;

/// The last stretch before an arrival that is spun instead of slept: long enough to cover the
/// wake-up latency of a sleeping thread, short enough that spinning stays cheap.
const SPIN: Duration = Duration::from_micros(60);
/// Longest single sleep, so a stop is noticed promptly.
const MAX_SLEEP: Duration = Duration::from_millis(5);

/// A send asked for during dispatch: released at `at_ns` by sending on `release`, or dropped
/// unsent (the receiver then sees its sender gone) when its time is at or past the end or the
/// dispatch stops first.
pub struct FollowUp {
    /// When it is due, on the run clock.
    pub at_ns: u64,
    /// Told when it is due.
    pub release: tokio::sync::oneshot::Sender<()>,
}

/// A queued follow-up, ordered by its time, then by when it was asked for.
struct Queued {
    at_ns: u64,
    order: u64,
    release: tokio::sync::oneshot::Sender<()>,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.at_ns, self.order) == (other.at_ns, other.order)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at_ns, self.order).cmp(&(other.at_ns, other.order))
    }
}

/// How a dispatch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dispatched {
    /// Every arrival before the end was released.
    ToTheEnd,
    /// `stop` was cancelled, or `send` refused, before the arrival due at `next_ns` (absolute
    /// run-clock time) was released: it and every later one went unsent.
    CutShort {
        /// The first arrival not released.
        next_ns: u64,
    },
}

/// Calls `send(at_ns)` for each arrival of `arrivals` (absolute run-clock times, ascending) at
/// that time, until an arrival is at or past `end_ns`, `send` returns `false`, or `stop` is
/// cancelled. Blocks the calling thread: run it on a thread of its own.
pub fn dispatch(
    clock: RunClock,
    arrivals: impl Iterator<Item = u64>,
    end_ns: u64,
    stop: &CancellationToken,
    send: impl FnMut(u64) -> bool,
) -> Dispatched {
    dispatch_with_follow_ups(clock, arrivals, None, end_ns, stop, send)
}

/// [`dispatch`], also releasing each [`FollowUp`] that comes through `follow_ups` at its
/// time. With follow-ups, it runs until `end_ns` even once the arrivals are over (a
/// conversation under way may still ask for a turn), and every follow-up still queued then
/// is dropped unsent.
pub fn dispatch_with_follow_ups(
    clock: RunClock,
    arrivals: impl Iterator<Item = u64>,
    follow_ups: Option<&Receiver<FollowUp>>,
    end_ns: u64,
    stop: &CancellationToken,
    mut send: impl FnMut(u64) -> bool,
) -> Dispatched {
    // Without this, each sleep may end up to 50 µs late (the default timer slack).
    if let Err(e) = nix::sys::prctl::set_timerslack(1) {
        tracing::debug!("timer slack stays at its default: {e}");
    }
    let mut arrivals = arrivals.peekable();
    let mut queued: BinaryHeap<Reverse<Queued>> = BinaryHeap::new();
    let mut asked = 0u64;
    loop {
        let next_arrival = arrivals.peek().copied().filter(|&at| at < end_ns);
        // What a stop now leaves unsent: this arrival and those after it; past the end, none.
        let stopped_here = || match next_arrival {
            Some(next_ns) => Dispatched::CutShort { next_ns },
            None => Dispatched::ToTheEnd,
        };
        if arrivals.peek().is_none() && follow_ups.is_none() {
            return Dispatched::ToTheEnd;
        }
        let next_follow_up = queued.peek().map(|Reverse(q)| q.at_ns);
        let due = [next_arrival, next_follow_up]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(end_ns)
            .min(end_ns);
        match wait_until(clock, due, stop, follow_ups) {
            Woke::Stopped => return stopped_here(),
            Woke::Asked(f) => {
                if f.at_ns < end_ns {
                    queued.push(Reverse(Queued {
                        at_ns: f.at_ns,
                        order: asked,
                        release: f.release,
                    }));
                    asked += 1;
                }
            }
            Woke::Due if due >= end_ns => return Dispatched::ToTheEnd,
            Woke::Due if next_arrival == Some(due) => {
                if !send(due) {
                    return stopped_here();
                }
                arrivals.next();
            }
            Woke::Due => {
                if let Some(Reverse(q)) = queued.pop() {
                    // Its conversation may have ended meanwhile (the run stopped): nothing
                    // waits for it then.
                    let _ = q.release.send(());
                }
            }
        }
    }
}

/// What ended a wait.
enum Woke {
    /// The time came.
    Due,
    /// `stop` was cancelled.
    Stopped,
    /// A follow-up was asked for first.
    Asked(FollowUp),
}

/// Waits until the run clock reads `at_ns`, unless `stop` or a follow-up comes first.
fn wait_until(
    clock: RunClock,
    at_ns: u64,
    stop: &CancellationToken,
    follow_ups: Option<&Receiver<FollowUp>>,
) -> Woke {
    let spin_ns = SPIN.as_nanos() as u64;
    loop {
        if stop.is_cancelled() {
            return Woke::Stopped;
        }
        if let Some(f) = follow_ups.and_then(|rx| rx.try_recv().ok()) {
            return Woke::Asked(f);
        }
        let now = clock.now_ns();
        if now >= at_ns {
            return Woke::Due;
        }
        let left = at_ns - now;
        if left > spin_ns {
            let nap = Duration::from_nanos(left - spin_ns).min(MAX_SLEEP);
            match follow_ups.map(|rx| rx.recv_timeout(nap)) {
                Some(Ok(f)) => return Woke::Asked(f),
                Some(Err(RecvTimeoutError::Timeout)) => {}
                Some(Err(RecvTimeoutError::Disconnected)) | None => std::thread::sleep(nap),
            }
        } else {
            std::hint::spin_loop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrivals_are_released_on_time_and_stop_at_the_end() {
        let clock = RunClock::start();
        let start = clock.now_ns() + 2_000_000;
        // 200 arrivals 250 µs apart, the last 50 past the end.
        let arrivals = (0..200u64).map(|i| start + i * 250_000);
        let end = start + 150 * 250_000;
        let mut lags = Vec::new();
        let dispatched = dispatch(clock, arrivals, end, &CancellationToken::new(), |at| {
            lags.push(clock.now_ns() - at);
            true
        });
        assert_eq!(dispatched, Dispatched::ToTheEnd);
        assert_eq!(lags.len(), 150);
        assert!(clock.now_ns() >= end, "returned before the end");
        lags.sort_unstable();
        // A loaded CI machine may deschedule the thread now and then; the median must hold.
        assert!(lags[75] < 100_000, "median lag {} ns", lags[75]);
    }

    #[test]
    fn a_stop_or_a_refusal_ends_dispatch() {
        let clock = RunClock::start();
        let stop = CancellationToken::new();
        stop.cancel();
        let mut calls = 0;
        let first = clock.now_ns() + 1_000;
        let dispatched = dispatch(clock, [first].into_iter(), u64::MAX, &stop, |_| {
            calls += 1;
            true
        });
        assert_eq!(calls, 0);
        assert_eq!(dispatched, Dispatched::CutShort { next_ns: first });
        let now = clock.now_ns();
        let dispatched = dispatch(
            clock,
            (0..10).map(|i| now + i),
            u64::MAX,
            &CancellationToken::new(),
            |_| {
                calls += 1;
                calls < 3
            },
        );
        assert_eq!(calls, 3);
        // The third was refused: it is the first not sent.
        assert_eq!(dispatched, Dispatched::CutShort { next_ns: now + 2 });
    }

    /// A stop between two arrivals names the later one, however long after the stop the
    /// dispatcher noticed it: what was due before it was sent.
    #[test]
    fn a_stop_names_the_first_arrival_it_kept_from_being_sent() {
        let clock = RunClock::start();
        let start = clock.now_ns() + 1_000_000;
        let arrivals = (0..100u64).map(|i| start + i * 2_000_000);
        let stop = CancellationToken::new();
        let mut sent = Vec::new();
        let dispatched = dispatch(clock, arrivals, u64::MAX, &stop, |at| {
            sent.push(at);
            if sent.len() == 4 {
                stop.cancel();
            }
            true
        });
        assert_eq!(sent.len(), 4);
        assert_eq!(
            dispatched,
            Dispatched::CutShort {
                next_ns: start + 4 * 2_000_000
            }
        );
    }

    #[test]
    fn follow_ups_are_released_on_time_between_arrivals_and_dropped_at_the_end() {
        let clock = RunClock::start();
        let start = clock.now_ns() + 2_000_000;
        let end = start + 60_000_000;
        let (queue, follow_ups) = std::sync::mpsc::channel();
        let asker = {
            let queue = queue.clone();
            std::thread::spawn(move || {
                // Asked for out of order, one past the end.
                let mut waits = Vec::new();
                for at in [start + 30_000_000, start + 10_500_000, end + 1] {
                    let (release, released) = tokio::sync::oneshot::channel();
                    queue.send(FollowUp { at_ns: at, release }).expect("queued");
                    waits.push((at, released));
                }
                // Poll them all until each is released or dropped: the receiving side.
                let mut seen: Vec<(u64, Option<Option<u64>>)> =
                    waits.iter().map(|(at, _)| (*at, None)).collect();
                while seen.iter().any(|(_, s)| s.is_none()) {
                    for ((_, state), (_, released)) in seen.iter_mut().zip(waits.iter_mut()) {
                        if state.is_some() {
                            continue;
                        }
                        match released.try_recv() {
                            Ok(()) => *state = Some(Some(clock.now_ns())),
                            Err(tokio::sync::oneshot::error::TryRecvError::Closed) => {
                                *state = Some(None)
                            }
                            Err(_) => std::hint::spin_loop(),
                        }
                    }
                }
                seen.into_iter()
                    .map(|(at, s)| (at, s.flatten()))
                    .collect::<Vec<_>>()
            })
        };
        let arrivals = (0..5u64).map(|i| start + i * 10_000_000);
        let mut sent = Vec::new();
        dispatch_with_follow_ups(
            clock,
            arrivals,
            Some(&follow_ups),
            end,
            &CancellationToken::new(),
            |at| {
                sent.push(at);
                true
            },
        );
        assert!(
            clock.now_ns() >= end,
            "follow-ups keep it running to the end"
        );
        assert_eq!(sent.len(), 5);
        drop(queue);
        let released = asker.join().expect("asker");
        for (at, when) in &released[..2] {
            let when = when.expect("released before the end");
            // The poller spins, so its own delay is small; a loaded CI machine may
            // deschedule it now and then.
            assert!(
                when >= *at && when - at < 5_000_000,
                "{at} released at {when}"
            );
        }
        assert_eq!(released[2].1, None, "past the end: dropped unsent");
    }
}
