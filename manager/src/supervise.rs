//! Supervision of the leader-only loops: a loop that panics or fails is restarted after a
//! backoff, so a leader never silently stops converging.
//!
//! ```text
//!   supervise(name, cancel, give_up, make)
//!     loop: spawn make(child of cancel) ── panics or fails ──▶ log, backoff, restart;
//!                                       ── ends cleanly ──▶ restart (a paused leader loop)
//!           more than `max_restarts` failures in `window` ──▶ fire give_up and stop
//! ```
//!
//! `give_up` says that restarting does not help: the node should hand leadership to another
//! manager, whose loops start from the store afresh.

use std::collections::VecDeque;
use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How often a loop may fail before the node gives up leading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Failures tolerated within `window`; one more fires `give_up`.
    pub max_restarts: usize,
    pub window: Duration,
    /// Backoff before the first restart, doubled after each failure up to `max_backoff`.
    pub first_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            max_restarts: 5,
            window: Duration::from_secs(60),
            first_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// How soon a loop that ended cleanly while its term lasts runs again.
const PAUSED_RESTART: Duration = Duration::from_millis(20);

/// What a loop's run returned: loops written as `async fn run(..)` return `()`, others a
/// `Result`.
pub trait LoopOutcome {
    /// The failure to report, if the run failed.
    fn failure(self) -> Option<String>;
}

impl LoopOutcome for () {
    fn failure(self) -> Option<String> {
        None
    }
}

impl<E: Display> LoopOutcome for Result<(), E> {
    fn failure(self) -> Option<String> {
        self.err().map(|e| e.to_string())
    }
}

/// Run `make(token)` until `cancel` fires, restarting it whenever it panics or fails (after a
/// backoff) or ends cleanly (at once). Returns then, or after firing `give_up` when the loop
/// failed more than the policy allows.
pub async fn supervise<F, Fut>(
    name: &'static str,
    cancel: CancellationToken,
    give_up: CancellationToken,
    policy: RestartPolicy,
    mut make: F,
) where
    F: FnMut(CancellationToken) -> Fut,
    Fut: Future + Send + 'static,
    Fut::Output: LoopOutcome + Send,
{
    let mut failures: VecDeque<Instant> = VecDeque::new();
    let mut backoff = policy.first_backoff;
    loop {
        if cancel.is_cancelled() {
            return;
        }
        let run = tokio::spawn(make(cancel.child_token()));
        let why = match run.await {
            Ok(out) => match out.failure() {
                Some(e) => format!("failed: {e}"),
                None => {
                    // A loop ends cleanly when it sees leadership go or pause (a write
                    // refused while the lease has lapsed) or the node stopping: not a failure.
                    // While the term lasts it runs again (see `Supervisor::ready`).
                    if cancel.is_cancelled() {
                        return;
                    }
                    tracing::debug!(r#loop = name, "leader loop paused");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(PAUSED_RESTART) => {}
                    }
                    continue;
                }
            },
            Err(e) if e.is_panic() => format!("panicked: {}", panic_message(e.into_panic())),
            Err(e) => format!("was aborted: {e}"),
        };
        if cancel.is_cancelled() {
            return;
        }
        let now = Instant::now();
        failures.push_back(now);
        while failures
            .front()
            .is_some_and(|t| now.duration_since(*t) > policy.window)
        {
            failures.pop_front();
        }
        if failures.len() > policy.max_restarts {
            tracing::error!(
                r#loop = name,
                failures = failures.len(),
                window = ?policy.window,
                "leader loop {why}; it keeps failing, giving up: this node should stop leading"
            );
            give_up.cancel();
            return;
        }
        tracing::error!(r#loop = name, retry_in = ?backoff, "leader loop {why}; restarting it");
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = backoff.saturating_mul(2).min(policy.max_backoff);
    }
}

/// Loops supervised alike: as tasks of `tracker`, with the default policy, until `cancel`,
/// firing `give_up`; every run (the first and each restart) begins once `ready(token)`
/// completes (a leader loop waits for the lease).
pub struct Supervisor<R> {
    pub tracker: TaskTracker,
    pub cancel: CancellationToken,
    pub give_up: CancellationToken,
    pub ready: R,
}

impl<R, RFut> Supervisor<R>
where
    R: Fn(CancellationToken) -> RFut + Clone + Send + 'static,
    RFut: Future<Output = ()> + Send + 'static,
{
    /// [`supervise`]s loop `name`, made by `make`.
    pub fn spawn<F, Fut>(&self, name: &'static str, mut make: F)
    where
        F: FnMut(CancellationToken) -> Fut + Send + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: LoopOutcome + Send,
    {
        let ready = self.ready.clone();
        self.tracker.spawn(supervise(
            name,
            self.cancel.clone(),
            self.give_up.clone(),
            RestartPolicy::default(),
            move |t: CancellationToken| {
                let ready = ready(t.clone());
                let run = make(t);
                async move {
                    ready.await;
                    run.await
                }
            },
        ));
    }
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn a_panicking_loop_is_restarted() {
        let runs = Arc::new(AtomicUsize::new(0));
        let cancel = CancellationToken::new();
        let give_up = CancellationToken::new();
        let r = runs.clone();
        let sup = tokio::spawn(supervise(
            "test",
            cancel.clone(),
            give_up.clone(),
            RestartPolicy::default(),
            move |t: CancellationToken| {
                let n = r.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n < 2 {
                        panic!("run {n} breaks");
                    }
                    t.cancelled().await;
                }
            },
        ));
        let deadline = Instant::now() + Duration::from_secs(10);
        while runs.load(Ordering::SeqCst) < 3 {
            assert!(Instant::now() < deadline, "the loop was not restarted");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!give_up.is_cancelled());
        cancel.cancel();
        sup.await.unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_clean_end_runs_again_while_the_term_lasts_and_is_no_failure() {
        let runs = Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        let cancel = CancellationToken::new();
        let give_up = CancellationToken::new();
        let sup = tokio::spawn(supervise(
            "test",
            cancel.clone(),
            give_up.clone(),
            RestartPolicy::default(),
            move |_t: CancellationToken| {
                r.fetch_add(1, Ordering::SeqCst);
                async {}
            },
        ));
        // Far more clean ends than the policy tolerates failures.
        let deadline = Instant::now() + Duration::from_secs(60);
        while runs.load(Ordering::SeqCst) < 20 {
            assert!(Instant::now() < deadline, "the loop was not run again");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!give_up.is_cancelled());
        cancel.cancel();
        sup.await.unwrap();
        let after = runs.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            runs.load(Ordering::SeqCst),
            after,
            "ran after its term ended"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn errors_restart_and_repeated_failure_gives_up() {
        let runs = Arc::new(AtomicUsize::new(0));
        let cancel = CancellationToken::new();
        let give_up = CancellationToken::new();
        let r = runs.clone();
        let policy = RestartPolicy {
            max_restarts: 3,
            ..Default::default()
        };
        let sup = tokio::spawn(supervise(
            "test",
            cancel.clone(),
            give_up.clone(),
            policy,
            move |_t: CancellationToken| {
                let n = r.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n.is_multiple_of(2) {
                        Err(format!("run {n} failed"))
                    } else {
                        panic!("run {n} breaks")
                    }
                }
            },
        ));
        tokio::time::timeout(Duration::from_secs(30), give_up.cancelled())
            .await
            .expect("gave up");
        sup.await.unwrap();
        // Three restarts allowed, the fourth failure gives up.
        assert_eq!(runs.load(Ordering::SeqCst), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_outside_the_window_are_forgotten() {
        let runs = Arc::new(AtomicUsize::new(0));
        let cancel = CancellationToken::new();
        let give_up = CancellationToken::new();
        let r = runs.clone();
        let policy = RestartPolicy {
            max_restarts: 1,
            window: Duration::from_secs(1),
            first_backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(2),
        };
        let sup = tokio::spawn(supervise(
            "test",
            cancel.clone(),
            give_up.clone(),
            policy,
            move |_t: CancellationToken| {
                r.fetch_add(1, Ordering::SeqCst);
                async move { Err::<(), _>("always") }
            },
        ));
        let deadline = Instant::now() + Duration::from_secs(60);
        while runs.load(Ordering::SeqCst) < 5 {
            assert!(Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(!give_up.is_cancelled());
        cancel.cancel();
        sup.await.unwrap();
    }
}
