//! The one poll loop, for everything polled with a deadline (sources, event tables): one poll
//! at a time, the deadline, backoff after failures, and the self-health of each poll through
//! [`Health`].

use super::health::{Health, Outcome};
use crate::clock::SharedClock;
use crate::config::Schedule;
use crate::model::CollectError;
use futures_util::FutureExt;
use std::future::Future;
use std::pin::Pin;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

/// A thing polled with a deadline.
pub trait Polled: Send + 'static {
    /// Its `source` name.
    fn source(&self) -> &str;
    fn schedule(&self) -> Schedule;
    /// One poll, without the deadline (the runner applies it).
    fn poll(&mut self) -> impl Future<Output = Result<Outcome, CollectError>> + Send;
    /// A poll failed (or missed its deadline): the last values stay.
    fn failed(&mut self) {}
    /// Release connections at shutdown.
    fn close(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// Runs one [`Polled`].
pub struct Runner<P> {
    polled: P,
    health: Health,
    clock: SharedClock,
    /// The last poll took over half its timeout (logged when that starts and ends).
    slow: bool,
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A poll loop of any kind, as the exporter holds them.
pub trait Poll: Send {
    /// Its `source` name.
    fn source(&self) -> &str;
    /// One poll with its deadline and self-health; whether it succeeded.
    fn poll_once(&mut self) -> BoxFuture<'_, bool>;
    /// Poll until `shutdown`.
    fn run(self: Box<Self>, shutdown: CancellationToken) -> BoxFuture<'static, ()>;
}

impl<P: Polled> Runner<P> {
    pub fn new(polled: P, health: Health, clock: SharedClock) -> Self {
        Runner {
            polled,
            health,
            clock,
            slow: false,
        }
    }

    pub fn polled(&self) -> &P {
        &self.polled
    }

    /// One poll. Returns whether it succeeded.
    pub async fn poll_once(&mut self) -> bool {
        let started = Instant::now();
        let timeout = self.polled.schedule().timeout;
        // A panic in the poll (a driver's decoder, a bug of ours) fails this poll like any
        // error instead of ending the source's task: its values and counters stay, the next
        // poll runs, and `reason="internal"` counts it.
        let poll = std::panic::AssertUnwindSafe(self.polled.poll()).catch_unwind();
        let result = match tokio::time::timeout(timeout, poll).await {
            Ok(Ok(r)) => r,
            Ok(Err(panic)) => Err(CollectError::Panicked(panic_message(panic.as_ref()))),
            Err(_) => Err(CollectError::Timeout(timeout)),
        };
        let took = started.elapsed();
        self.slow_poll(took, timeout);
        let took = Some(took);
        match result {
            Ok(outcome) => {
                self.health.succeeded(self.clock.now(), took, outcome);
                true
            }
            Err(e) => {
                self.polled.failed();
                self.health.failed(&e, took);
                false
            }
        }
    }

    /// Warn when polls start taking over half their timeout (they are at risk of failing), and
    /// say when they no longer do; the duration of every poll is exported.
    fn slow_poll(&mut self, took: std::time::Duration, timeout: std::time::Duration) {
        let slow = took > timeout / 2;
        if slow && !self.slow {
            tracing::warn!(source = self.polled.source(), seconds = took.as_secs_f64(), timeout_seconds = timeout.as_secs_f64(), "A poll took over half its timeout; raise the timeout or narrow the query before polls fail.");
        } else if !slow && self.slow {
            tracing::info!(
                source = self.polled.source(),
                seconds = took.as_secs_f64(),
                "Polls take less than half their timeout again."
            );
        }
        self.slow = slow;
    }

    /// Poll until `shutdown`; after a failure wait the interval doubled per consecutive
    /// failure, up to `backoff_max`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        loop {
            let ok = self.poll_once().await;
            let delay = self
                .polled
                .schedule()
                .next_delay(ok, self.health.failures());
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
        }
        self.polled.close().await;
    }
}

impl<P: Polled> Poll for Runner<P> {
    fn source(&self) -> &str {
        self.polled.source()
    }

    fn poll_once(&mut self) -> BoxFuture<'_, bool> {
        Box::pin(Runner::poll_once(self))
    }

    fn run(self: Box<Self>, shutdown: CancellationToken) -> BoxFuture<'static, ()> {
        Box::pin(Runner::run(*self, shutdown))
    }
}

/// A panic's message (`panic!` with a literal or a format), or that it had none.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Schedule;
    use crate::pipeline::health::Subject;
    use crate::telemetry::live::Live;
    use std::sync::Arc;
    use std::time::Duration;

    /// Panics at its first poll, succeeds after.
    struct PanicsOnce(u32);

    impl Polled for PanicsOnce {
        fn source(&self) -> &str {
            "app"
        }
        fn schedule(&self) -> Schedule {
            Schedule {
                interval: Duration::from_secs(30),
                timeout: Duration::from_secs(10),
                backoff_max: Duration::from_secs(150),
            }
        }
        async fn poll(&mut self) -> Result<Outcome, CollectError> {
            self.0 += 1;
            if self.0 == 1 {
                panic!("`NaiveDateTime + TimeDelta` overflowed");
            }
            Ok(Outcome::default())
        }
    }

    #[tokio::test]
    async fn a_panicking_poll_fails_that_poll_only_and_is_counted_as_internal() {
        let live = Arc::new(Live::new());
        let health = Health::new(live.clone(), "app", Subject::Source, "xero");
        let clock: SharedClock = crate::clock::ManualClock::new(chrono::Utc::now());
        let mut runner = Runner::new(PanicsOnce(0), health, clock);
        assert!(!runner.poll_once().await, "the panicking poll failed");
        assert_eq!(runner.health.failures(), 1);
        let internal = crate::telemetry::catalogue::SourceReasonLabels {
            source: "app".into(),
            reason: "internal",
        };
        assert_eq!(live.errors.get_or_create(&internal).get(), 1);
        assert!(runner.poll_once().await, "the next poll runs and succeeds");
        assert_eq!(runner.polled().0, 2);
        assert_eq!(live.errors.get_or_create(&internal).get(), 1);
    }

    #[test]
    fn backoff_doubles_per_failure_up_to_the_maximum() {
        let s = Schedule {
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
            backoff_max: Duration::from_secs(150),
        };
        assert_eq!(s.next_delay(true, 0), Duration::from_secs(30));
        assert_eq!(s.next_delay(false, 1), Duration::from_secs(30));
        assert_eq!(s.next_delay(false, 2), Duration::from_secs(60));
        assert_eq!(s.next_delay(false, 3), Duration::from_secs(120));
        assert_eq!(s.next_delay(false, 4), Duration::from_secs(150));
        assert_eq!(s.next_delay(false, 40), Duration::from_secs(150));
    }
}
