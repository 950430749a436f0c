//! Injected time, so that "59 days idle" is a test input rather than a wait.

use chrono::{DateTime, Duration, Utc};
use std::fmt;
use std::sync::{Arc, Mutex};

/// A source of the current wall-clock time.
pub trait Clock: Send + Sync + fmt::Debug {
    fn now(&self) -> DateTime<Utc>;
}

/// Shared handle to a clock.
pub type SharedClock = Arc<dyn Clock>;

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that only moves when told to (tests, simulations).
#[derive(Debug)]
pub struct ManualClock(Mutex<DateTime<Utc>>);

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> Arc<Self> {
        Arc::new(ManualClock(Mutex::new(start)))
    }

    pub fn set(&self, t: DateTime<Utc>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = t;
    }

    pub fn advance(&self, d: Duration) {
        let mut t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *t += d;
    }
}

/// A clock that runs `speed` times faster than real time from `start`, so the demo can let 60
/// days pass in minutes (`demo --speed 86400`: a day per second).
#[derive(Debug)]
pub struct ScaledClock {
    start: DateTime<Utc>,
    real_start: std::time::Instant,
    speed: f64,
}

impl ScaledClock {
    pub fn new(start: DateTime<Utc>, speed: f64) -> Arc<Self> {
        Arc::new(ScaledClock {
            start,
            real_start: std::time::Instant::now(),
            speed: speed.max(0.0),
        })
    }
}

impl Clock for ScaledClock {
    fn now(&self) -> DateTime<Utc> {
        let real = self.real_start.elapsed().as_secs_f64() * self.speed;
        self.start + Duration::microseconds((real * 1e6).min(1e17) as i64)
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scaled_clock_runs_speed_times_faster_than_real_time() {
        let start = Utc::now();
        let c = ScaledClock::new(start, 86_400.0);
        std::thread::sleep(std::time::Duration::from_millis(50));
        let passed = c.now() - start;
        // 50 ms at a day per second is 72 minutes (the sleep may overshoot a little).
        assert!(passed >= Duration::minutes(72), "{passed}");
        assert!(passed < Duration::hours(24), "{passed}");
    }
}
