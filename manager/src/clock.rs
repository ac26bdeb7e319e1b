//! The time manager decisions are made at, injected: the system clock on a real manager, a
//! clock that follows tokio's (possibly paused) time in simulations and tests, so that restart
//! delays, update deadlines and status timestamps follow virtual time.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now_ms(&self) -> i64;
}

pub type SharedClock = Arc<dyn Clock>;

/// The machine's clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    }
}

/// The system clock, shared.
pub fn system() -> SharedClock {
    Arc::new(SystemClock)
}

/// Tokio's clock (paused in simulations), reading `epoch_ms` when it was made.
#[derive(Clone, Copy, Debug)]
pub struct TokioClock {
    anchor: tokio::time::Instant,
    epoch_ms: i64,
}

impl TokioClock {
    pub fn starting_at(epoch_ms: i64) -> TokioClock {
        TokioClock {
            anchor: tokio::time::Instant::now(),
            epoch_ms,
        }
    }

    pub fn shared(epoch_ms: i64) -> SharedClock {
        Arc::new(TokioClock::starting_at(epoch_ms))
    }
}

impl Clock for TokioClock {
    fn now_ms(&self) -> i64 {
        let elapsed = tokio::time::Instant::now().duration_since(self.anchor);
        self.epoch_ms
            .saturating_add(i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_follows_virtual_time() {
        let c = TokioClock::starting_at(1_000);
        assert_eq!(c.now_ms(), 1_000);
        tokio::time::advance(std::time::Duration::from_millis(2_500)).await;
        assert_eq!(c.now_ms(), 3_500);
    }

    #[test]
    fn system_clock_is_after_2020() {
        assert!(SystemClock.now_ms() > 1_577_836_800_000);
    }
}
