//! The converge display: progress bars on a terminal, plain lines otherwise, and the
//! poll loop behind them.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::Duration;

use proto::api::{ServiceView, TaskView, UpdateStatusView};
use proto::spec::TaskState;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::commands::CliError;

use super::watch::{SlotLine, Snapshot, Verdict, Watch};
use crate::client::Client;

/// Shows progress while waiting.
pub trait Render {
    fn show(&mut self, s: &Snapshot);
    /// The wait ended: converged (`ok`) or failed.
    fn finish(&mut self, ok: bool);
}

/// Shows nothing (`--quiet`).
pub struct QuietRender;

impl Render for QuietRender {
    fn show(&mut self, _: &Snapshot) {}
    fn finish(&mut self, _: bool) {}
}

/// Plain lines, each printed only when something changed (not a terminal).
pub struct PlainRender<W: Write> {
    out: W,
    overall: Option<String>,
    slots: BTreeMap<String, String>,
}

impl<W: Write> PlainRender<W> {
    pub fn new(out: W) -> Self {
        PlainRender {
            out,
            overall: None,
            slots: BTreeMap::new(),
        }
    }
    pub fn into_inner(self) -> W {
        self.out
    }
}

impl<W: Write> Render for PlainRender<W> {
    fn show(&mut self, s: &Snapshot) {
        if let Some(n) = &s.note {
            let _ = writeln!(self.out, "{n}");
        }
        let overall = s.overall_line();
        if self.overall.as_ref() != Some(&overall) {
            let _ = writeln!(self.out, "{overall}");
            self.overall = Some(overall);
        }
        for l in &s.slots {
            let line = l.text();
            if self.slots.get(&l.key) != Some(&line) {
                let _ = writeln!(self.out, "{line}");
                self.slots.insert(l.key.clone(), line);
            }
        }
        let _ = self.out.flush();
    }
    fn finish(&mut self, ok: bool) {
        if ok {
            let _ = writeln!(self.out, "verify: Service converged");
        }
        let _ = self.out.flush();
    }
}

/// Above this many slots a terminal shows only the overall line (as Docker).
const MAX_BARS: usize = 20;

/// indicatif bars: one per slot and an overall line (stdout is a terminal).
pub struct BarsRender {
    multi: indicatif::MultiProgress,
    overall: indicatif::ProgressBar,
    bars: BTreeMap<String, indicatif::ProgressBar>,
}

impl Default for BarsRender {
    fn default() -> Self {
        Self::new()
    }
}

impl BarsRender {
    pub fn new() -> Self {
        use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
        let overall = multi.add(ProgressBar::new(0));
        if let Ok(st) = ProgressStyle::with_template("{msg}") {
            overall.set_style(st);
        }
        BarsRender {
            multi,
            overall,
            bars: BTreeMap::new(),
        }
    }

    fn bar_position(state: TaskState) -> u64 {
        match state {
            TaskState::Complete => TaskState::Running as u64,
            s if s <= TaskState::Running => s as u64,
            _ => 0,
        }
    }
}

impl Render for BarsRender {
    fn show(&mut self, s: &Snapshot) {
        use indicatif::{ProgressBar, ProgressStyle};
        if let Some(n) = &s.note {
            let _ = self.multi.println(n);
        }
        let shown: Vec<&SlotLine> = if s.slots.len() > MAX_BARS {
            Vec::new()
        } else {
            s.slots.iter().collect()
        };
        let keys: HashSet<&str> = shown.iter().map(|l| l.key.as_str()).collect();
        let gone: Vec<String> = self
            .bars
            .keys()
            .filter(|k| !keys.contains(k.as_str()))
            .cloned()
            .collect();
        for k in gone {
            if let Some(b) = self.bars.remove(&k) {
                b.finish_and_clear();
                self.multi.remove(&b);
            }
        }
        let width = shown.iter().map(|l| l.label.len()).max().unwrap_or(0);
        for l in shown {
            let bar = self.bars.entry(l.key.clone()).or_insert_with(|| {
                let b = self.multi.add(ProgressBar::new(TaskState::Running as u64));
                if let Ok(st) = ProgressStyle::with_template("{prefix} [{bar:40}] {msg}") {
                    b.set_style(st.progress_chars("=> "));
                }
                b
            });
            bar.set_prefix(format!("{:>width$}: {:<10}", l.label, l.state.as_str()));
            bar.set_message(l.detail.clone());
            bar.set_position(Self::bar_position(l.state));
        }
        // Last: a frame drawn while the bars move never shows the counter ahead of them.
        self.overall.set_message(s.overall_line());
    }
    fn finish(&mut self, ok: bool) {
        for b in self.bars.values() {
            if ok {
                b.finish();
            } else {
                b.abandon();
            }
        }
        if ok {
            self.overall.finish();
            // Below the finished bars, which stay on the screen.
            println!("verify: Service converged");
        } else {
            self.overall.abandon();
        }
    }
}

/// Poll with `fetch` until the watch says converged or failed. No deadline (as Docker);
/// Ctrl-C ends the process. Between polls: `every`, or less when `changed` is notified (the
/// manager said the service changed), but never less than the last poll took (nor
/// [`MIN_POLL_GAP`]), so that a large service changing all the time is not read back to back.
pub async fn watch_until<F, Fut>(
    mut fetch: F,
    mut watch: Watch,
    render: &mut dyn Render,
    every: Duration,
    changed: Option<&Notify>,
) -> Result<(), CliError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(ServiceView, Vec<TaskView>), CliError>>,
{
    loop {
        let started = Instant::now();
        let (view, tasks) = match fetch().await {
            Ok(x) => x,
            Err(e) => {
                render.finish(false);
                return Err(e);
            }
        };
        let snap = watch.observe(&view, &tasks);
        render.show(&snap);
        match snap.verdict {
            Verdict::Converged => {
                render.finish(true);
                return Ok(());
            }
            Verdict::Failed(m) => {
                render.finish(false);
                return Err(CliError(format!("Error: {m}")));
            }
            Verdict::Waiting => {
                let now = Instant::now();
                let earliest = now + (now - started).max(MIN_POLL_GAP).min(every);
                match changed {
                    Some(n) => {
                        if tokio::time::timeout(every, n.notified()).await.is_ok() {
                            tokio::time::sleep_until(earliest).await;
                        }
                    }
                    None => tokio::time::sleep(every).await,
                }
            }
        }
    }
}

/// The shortest pause between two polls woken by changes.
const MIN_POLL_GAP: Duration = Duration::from_millis(10);

/// Wakes `changed` whenever the manager says service `id` changed, until the returned task
/// is aborted; `None` when the manager cannot watch (an older one, or too many watches):
/// the caller then polls on its period alone.
async fn watch_changes(c: &Client, id: &str) -> Option<(Arc<Notify>, AbortOnDrop)> {
    let mut stream = match c.watch_service(id).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(error = %e, "no service watch; polling");
            return None;
        }
    };
    let changed = Arc::new(Notify::new());
    let n = changed.clone();
    let task = tokio::spawn(async move {
        while let Ok(Some(m)) = stream.message().await {
            n.notify_one();
            if m.removed {
                return;
            }
        }
    });
    Some((changed, AbortOnDrop(task)))
}

/// Ends a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Wait for `service_id` to converge, showing progress as the terminal allows.
pub(crate) async fn wait(
    c: &Client,
    service_id: &str,
    rollback: bool,
    baseline: Option<UpdateStatusView>,
    quiet: bool,
) -> Result<(), CliError> {
    let mut render: Box<dyn Render> = if quiet {
        Box::new(QuietRender)
    } else if std::io::stdout().is_terminal() {
        Box::new(BarsRender::new())
    } else {
        Box::new(PlainRender::new(std::io::stdout()))
    };
    let fetch = || async {
        let view = c.get_service(service_id).await?;
        let desired = if view.spec.mode.is_job() {
            ""
        } else {
            "running"
        };
        let tasks = c.list_tasks(&view.id, "", desired).await?;
        Ok((view, tasks))
    };
    // Subscribed before the first poll: a change after it wakes the next one.
    let changes = watch_changes(c, service_id).await;
    watch_until(
        fetch,
        Watch::new(rollback, baseline),
        render.as_mut(),
        Duration::from_millis(250),
        changes.as_ref().map(|(n, _)| &**n),
    )
    .await
}
