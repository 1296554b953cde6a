//! The connections of one tenant's HTTP client: opened before the measured load starts, and
//! any opened during it timed, so that a TCP connect is never counted as time to first token.
//!
//! HTTP/1.1 carries one stream per connection, so a tenant's client opens about as many
//! connections as it has requests in flight. A request that finds no idle one waits for a new
//! connect before its first byte is written; at 256 streams started together that wait lifted
//! measured TTFT p99 by tens of milliseconds above the engine's truth. Two things remove it:
//! [`LoadClient::preopen`] fills the pool before the first scheduled send, and [`ConnectLog`]
//! times every connect the client makes (a tower layer around reqwest's connector), keyed by
//! the connection's local address, so the first request on a new connection records the
//! connect it waited for (`connect_ns`) and its `sent_ns` is the instant the connection was
//! ready, the instant just before the request could be written (docs/metrics.md).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::{Connection, HttpInfo};

use crate::clock::RunClock;

/// A tenant's HTTP client and the log of its connects.
#[derive(Debug, Clone)]
pub struct LoadClient {
    /// The client: a pool without an idle limit, `TCP_NODELAY`, every connect timed.
    pub http: reqwest::Client,
    /// Its connects not yet claimed by a request.
    pub connects: ConnectLog,
}

impl LoadClient {
    /// A client whose connects are timed on `clock`.
    pub fn new(clock: RunClock) -> reqwest::Result<Self> {
        let connects = ConnectLog::new(clock);
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(usize::MAX)
            .tcp_nodelay(true)
            .connector_layer(connects.layer())
            .build()?;
        Ok(Self { http, connects })
    }

    /// Opens `count` connections to `base_url` at once, by as many concurrent
    /// `GET /v1/models`, and leaves them idle in the pool; returns how many were answered.
    /// Failures are not errors: the load then opens its connections itself, and times them.
    ///
    /// The first round opens them; the pool can lose one there. Each request races a check
    /// for an idle connection against a connect of its own, and waits on the pool meanwhile:
    /// an early connection handed back to a request whose own connect had just won is dropped
    /// with it (hyper-util's legacy pool, `put` to a waiter that is about to go). CI saw a cold
    /// closed loop of 32 find 31. So rounds follow, at most four, until one
    /// opens nothing: all `count` checks then found an idle connection and none waited, so
    /// none was lost.
    pub async fn preopen(&self, base_url: &str, api_key: Option<&str>, count: u32) -> u32 {
        let url = format!("{base_url}/v1/models");
        let answered = self.preopen_round(&url, api_key, count).await;
        for _ in 0..PREOPEN_CHECKS {
            self.connects.forget_all();
            self.preopen_round(&url, api_key, count).await;
            if self.connects.is_empty() {
                break;
            }
        }
        // No request waited for these connects.
        self.connects.forget_all();
        answered
    }

    /// Sends `count` `GET url` at once and reads them all; returns how many were answered.
    async fn preopen_round(&self, url: &str, api_key: Option<&str>, count: u32) -> u32 {
        let requests = (0..count).map(|_| {
            let mut request = self.http.get(url);
            if let Some(key) = api_key {
                request = request.bearer_auth(key);
            }
            // Each send alone is bounded, not its body: a request's own timeout would run on
            // while its answer is held below, and fail the reading of every held body.
            tokio::time::timeout(PREOPEN_TIMEOUT, request.send())
        });
        // Every answer is held until all have come, so that no request is answered on another
        // one's connection after its answer is read (read as they came, a fast answer's
        // connection served a later request, and the load found fewer connections than it
        // had asked for).
        let answers: Vec<reqwest::Response> = futures_util::future::join_all(requests)
            .await
            .into_iter()
            .filter_map(|sent| sent.ok()?.ok())
            .collect();
        let bodies = answers
            .into_iter()
            .map(|a| tokio::time::timeout(PREOPEN_TIMEOUT, a.bytes()));
        let answered = futures_util::future::join_all(bodies)
            .await
            .into_iter()
            .filter(|read| matches!(read, Ok(Ok(_))))
            .count();
        // A connection goes back to the pool from its own task.
        tokio::time::sleep(PREOPEN_SETTLE).await;
        u32::try_from(answered).unwrap_or(u32::MAX)
    }
}

/// One connect the client made: when it started and when the connection was ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connect {
    /// Run-clock instant the connect started.
    pub started_ns: u64,
    /// Run-clock instant the connection was ready.
    pub ready_ns: u64,
}

/// The connects of one client not yet used by a request, by the connection's local address.
#[derive(Debug, Clone)]
pub struct ConnectLog {
    clock: RunClock,
    unused: Arc<Mutex<HashMap<SocketAddr, Connect>>>,
}

impl ConnectLog {
    /// An empty log on `clock`.
    pub fn new(clock: RunClock) -> Self {
        Self {
            clock,
            unused: Arc::default(),
        }
    }

    /// The layer to give [`reqwest::ClientBuilder::connector_layer`]: it records here every
    /// connect of that client.
    pub fn layer(&self) -> TimedConnectLayer {
        TimedConnectLayer { log: self.clone() }
    }

    /// The connect that a request sent at `sent_ns` and answered on the connection from
    /// `local` waited for: `Some` only for the first request on that connection, and only if
    /// the connection was not ready before the request was sent.
    pub fn claim(&self, local: SocketAddr, sent_ns: u64) -> Option<Connect> {
        let connect = self.lock().remove(&local)?;
        (connect.ready_ns > sent_ns).then_some(connect)
    }

    /// Forgets every connect recorded so far: those of [`LoadClient::preopen`], which no
    /// request waited for.
    pub fn forget_all(&self) {
        self.lock().clear();
    }

    /// Whether no connect was recorded since the last [`ConnectLog::forget_all`] (or none
    /// claimed).
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    fn record(&self, local: SocketAddr, connect: Connect) {
        self.lock().insert(local, connect);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Connect>> {
        // A panic while holding it leaves a map still worth using.
        self.unused
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A tower layer that times the connects of the service it wraps into a [`ConnectLog`].
#[derive(Debug, Clone)]
pub struct TimedConnectLayer {
    log: ConnectLog,
}

impl<S> tower_layer::Layer<S> for TimedConnectLayer {
    type Service = TimedConnect<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TimedConnect {
            inner,
            log: self.log.clone(),
        }
    }
}

/// A connector whose connects are timed into a [`ConnectLog`].
#[derive(Debug, Clone)]
pub struct TimedConnect<S> {
    inner: S,
    log: ConnectLog,
}

impl<S, Request> tower_service::Service<Request> for TimedConnect<S>
where
    S: tower_service::Service<Request>,
    S::Response: Connection,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let log = self.log.clone();
        let started_ns = log.clock.now_ns();
        let connecting = self.inner.call(request);
        Box::pin(async move {
            let connection = connecting.await?;
            let ready_ns = log.clock.now_ns();
            let mut extras = http::Extensions::new();
            connection.connected().get_extras(&mut extras);
            if let Some(info) = extras.get::<HttpInfo>() {
                log.record(
                    info.local_addr(),
                    Connect {
                        started_ns,
                        ready_ns,
                    },
                );
            }
            Ok(connection)
        })
    }
}

/// The local address of the connection `response` came on, where the client knows it.
pub fn local_addr(response: &reqwest::Response) -> Option<SocketAddr> {
    response
        .extensions()
        .get::<HttpInfo>()
        .map(HttpInfo::local_addr)
}

/// The stretch at the start of an open-loop load whose sends each get a connection opened
/// ahead, in seconds.
const OPEN_LOOP_PREOPEN_S: f64 = 1.0;
/// Most connections opened ahead of any load.
pub const MAX_PREOPEN: u32 = 1_024;

/// How many connections to open before a load of `arrival` starts: one per worker of a closed
/// loop; an open loop's sends in one second at its highest rate (a random one's with room for
/// its bursts, three standard deviations of a Poisson count), for a replay the most sends of
/// its `replay` schedule in any one second (a request in flight longer than that is rare, and
/// later connects are timed anyway). Each arrival may bring `requests_per_arrival` requests
/// in flight (a conversation's turns). Capped at [`MAX_PREOPEN`] and at `max_in_flight`.
pub fn preopen_count(
    arrival: &multitenant::config::Arrival,
    replay: Option<super::schedule::ArrivalSchedule>,
    requests_per_arrival: u32,
    max_in_flight: u64,
) -> u32 {
    use multitenant::config::Arrival;
    let wanted = match *arrival {
        Arrival::Trace { .. } => {
            let window = std::time::Duration::from_secs_f64(OPEN_LOOP_PREOPEN_S);
            replay.map_or(1, |times| busiest_window(times, window)) as f64
        }
        Arrival::Concurrency { n } => f64::from(n),
        Arrival::Constant { rate } => (rate * OPEN_LOOP_PREOPEN_S).ceil(),
        Arrival::Poisson { rate } | Arrival::Gamma { rate, .. } => {
            let mean = rate * OPEN_LOOP_PREOPEN_S;
            (mean + 3.0 * mean.sqrt()).ceil()
        }
        Arrival::Ramp { from, to, .. } => (from.max(to) * OPEN_LOOP_PREOPEN_S).ceil(),
    };
    let wanted = wanted * f64::from(requests_per_arrival.max(1));
    let cap = u64::from(MAX_PREOPEN).min(max_in_flight);
    // `wanted` is finite and positive (validated rates), so the cast only saturates.
    (wanted as u64).clamp(1, cap.max(1)) as u32
}

/// The most of `times` (in order) that fall within any one stretch of `window`.
fn busiest_window(
    times: impl Iterator<Item = std::time::Duration>,
    window: std::time::Duration,
) -> usize {
    let mut open = std::collections::VecDeque::new();
    let mut most = 0;
    for t in times {
        while open.front().is_some_and(|&first| t - first >= window) {
            open.pop_front();
        }
        open.push_back(t);
        most = most.max(open.len());
    }
    most
}

/// How long one pre-opening request may take.
const PREOPEN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Rounds of [`LoadClient::preopen`] after the first that check the pool is full, at most.
const PREOPEN_CHECKS: u32 = 4;
/// How long the opened connections are given to return to the pool before the load starts.
const PREOPEN_SETTLE: std::time::Duration = std::time::Duration::from_millis(10);

#[cfg(test)]
mod tests {
    use super::*;
    use multitenant::config::{Arrival, Spacing};

    #[test]
    fn a_closed_loop_opens_one_connection_per_worker_within_the_caps() {
        assert_eq!(
            preopen_count(&Arrival::Concurrency { n: 256 }, None, 1, 10_000),
            256
        );
        assert_eq!(
            preopen_count(&Arrival::Concurrency { n: 256 }, None, 1, 100),
            100
        );
        assert_eq!(
            preopen_count(&Arrival::Concurrency { n: 5_000 }, None, 1, 10_000),
            MAX_PREOPEN
        );
    }

    #[test]
    fn an_open_loop_opens_its_first_seconds_sends_at_its_highest_rate_with_room_for_bursts() {
        assert_eq!(
            preopen_count(&Arrival::Poisson { rate: 40.5 }, None, 1, 10_000),
            60,
            "40.5 and three standard deviations, 19.1"
        );
        assert_eq!(
            preopen_count(&Arrival::Constant { rate: 40.5 }, None, 1, 10_000),
            41
        );
        assert_eq!(
            preopen_count(&Arrival::Constant { rate: 40.5 }, None, 4, 10_000),
            164,
            "conversations of up to four turns"
        );
        assert_eq!(
            preopen_count(&Arrival::Constant { rate: 0.2 }, None, 1, 10_000),
            1
        );
        let ramp = Arrival::Ramp {
            from: 300.0,
            to: 20.0,
            spacing: Spacing::Constant,
        };
        assert_eq!(preopen_count(&ramp, None, 1, 10_000), 300);
        // A replay ×2 of records at 0, 3, 3.6, 4, 4.5 and 9 s sends them at 0, 1.5, 1.8, 2,
        // 2.25 and 4.5 s: at most four within one second (from 1.5 s).
        let s = 1_000_000_000;
        let times: std::sync::Arc<[u64]> =
            vec![0, 3 * s, 3_600_000_000, 4 * s, 4 * s + s / 2, 9 * s].into();
        let replay = super::super::schedule::ArrivalSchedule::replay(times, 2.0);
        assert_eq!(
            preopen_count(&Arrival::Trace { time_scale: 2.0 }, Some(replay), 1, 10_000),
            4
        );
    }

    #[test]
    fn a_connect_is_claimed_once_and_only_by_a_request_that_waited_for_it() {
        let log = ConnectLog::new(RunClock::start());
        let local: SocketAddr = "127.0.0.1:40000".parse().expect("addr");
        let connect = Connect {
            started_ns: 100,
            ready_ns: 400,
        };
        log.record(local, connect);
        // Sent after the connection was ready: it did not wait, and the connect is spent.
        assert_eq!(log.claim(local, 500), None);
        assert_eq!(log.claim(local, 200), None);
        log.record(local, connect);
        assert_eq!(log.claim(local, 200), Some(connect));
        assert_eq!(log.claim(local, 200), None);
        log.record(local, connect);
        log.forget_all();
        assert_eq!(log.claim(local, 200), None);
    }
}
