//! Sends open-loop arrivals on time.
//!
//! tokio's timer wheel has a 1 ms resolution, so an arrival woken by `sleep_until` is up to a
//! millisecond late. Each open-loop tenant therefore gets a thread of its own that sleeps with
//! the kernel's timer slack set to 1 ns until shortly before the arrival, spins the last
//! stretch, and then hands the request to the runtime. What is left as lag is the hand-over to
//! a worker thread (microseconds on an idle runtime), and it is measured for every request.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::clock::RunClock;

/// The last stretch before an arrival that is spun instead of slept: long enough to cover the
/// wake-up latency of a sleeping thread, short enough that spinning stays cheap.
const SPIN: Duration = Duration::from_micros(60);
/// Longest single sleep, so a stop is noticed promptly.
const MAX_SLEEP: Duration = Duration::from_millis(5);

/// Calls `send(at_ns)` for each arrival of `arrivals` (absolute run-clock times, ascending) at
/// that time, until an arrival is at or past `end_ns`, `send` returns `false`, or `stop` is
/// cancelled. Blocks the calling thread: run it on a thread of its own.
pub fn dispatch(
    clock: RunClock,
    arrivals: impl Iterator<Item = u64>,
    end_ns: u64,
    stop: &CancellationToken,
    mut send: impl FnMut(u64) -> bool,
) {
    // Without this, each sleep may end up to 50 µs late (the default timer slack).
    if let Err(e) = nix::sys::prctl::set_timerslack(1) {
        tracing::debug!("timer slack stays at its default: {e}");
    }
    for at_ns in arrivals {
        if at_ns >= end_ns {
            wait_until(clock, end_ns, stop);
            return;
        }
        if !wait_until(clock, at_ns, stop) || !send(at_ns) {
            return;
        }
    }
}

/// Waits until the run clock reads `at_ns`; `false` when `stop` came first.
fn wait_until(clock: RunClock, at_ns: u64, stop: &CancellationToken) -> bool {
    let spin_ns = SPIN.as_nanos() as u64;
    loop {
        if stop.is_cancelled() {
            return false;
        }
        let now = clock.now_ns();
        if now >= at_ns {
            return true;
        }
        let left = at_ns - now;
        if left > spin_ns {
            std::thread::sleep(Duration::from_nanos(left - spin_ns).min(MAX_SLEEP));
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
        dispatch(clock, arrivals, end, &CancellationToken::new(), |at| {
            lags.push(clock.now_ns() - at);
            true
        });
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
        dispatch(
            clock,
            [clock.now_ns() + 1_000].into_iter(),
            u64::MAX,
            &stop,
            |_| {
                calls += 1;
                true
            },
        );
        assert_eq!(calls, 0);
        let now = clock.now_ns();
        dispatch(
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
    }
}
