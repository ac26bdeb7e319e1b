//! `shoal bench runtime`: one container life cycle through [`OciRuntime`] against the bare
//! runtime CLI running the same bundle.
//!
//! Per round, both sides run `true` in a container built from the same prepared bundle:
//! - shoal: `start` (monitor + `run --detach`) → `wait` (exit file) → `remove` (`delete`,
//!   unmounts, directory removal), with the median of each step of `start` and `remove`;
//! - bare: `<runtime> run --bundle B ID` in the foreground, then `<runtime> delete`.
//!
//! Bundle preparation (overlay mount, config) is outside the timed region on both sides.

use std::time::{Duration, Instant};

use proto::spec::{Assignment, TaskSpec, TaskState};

use super::{shim, OciConfig, OciRuntime};
use crate::image::Image;
use crate::runtime::Runtime;

/// Medians of a life-cycle benchmark.
#[derive(Clone, Debug)]
pub struct BenchFigures {
    pub runtime: String,
    pub rounds: usize,
    pub shoal_median: Duration,
    pub bare_median: Duration,
    /// shoal / bare.
    pub ratio: f64,
    /// Medians of shoal's phases: start (monitor, create, start), wait (until the exit status
    /// is recorded), remove (delete, unmount, directory).
    pub phases: [Duration; 3],
    /// Medians of the steps of shoal's `start` and `remove`, in their order.
    pub steps: Vec<(&'static str, Duration)>,
    /// Medians of the bare side's two commands: `run`, `delete`.
    pub bare_phases: [Duration; 2],
}

impl std::fmt::Display for BenchFigures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} rounds; shoal life cycle median {:.1} ms (start {:.1}, wait {:.1}, remove {:.1}), bare `{} run` + delete median {:.1} ms, ratio {:.2}",
            self.runtime,
            self.rounds,
            self.shoal_median.as_secs_f64() * 1e3,
            self.phases[0].as_secs_f64() * 1e3,
            self.phases[1].as_secs_f64() * 1e3,
            self.phases[2].as_secs_f64() * 1e3,
            self.runtime,
            self.bare_median.as_secs_f64() * 1e3,
            self.ratio
        )?;
        write!(
            f,
            "\n  bare: run {:.1} ms, delete {:.1} ms",
            self.bare_phases[0].as_secs_f64() * 1e3,
            self.bare_phases[1].as_secs_f64() * 1e3
        )?;
        for (step, took) in &self.steps {
            write!(f, "\n  {step}: {:.1} ms", took.as_secs_f64() * 1e3)?;
        }
        Ok(())
    }
}

/// A task of the bench service running `command` in the image pinned as `bench`.
fn bench_task(id: String, command: &[&str]) -> Assignment {
    Assignment {
        task_id: id,
        service_id: "bench".into(),
        service_name: "bench".into(),
        slot: 1,
        spec: TaskSpec {
            image: "bench".into(),
            command: command.iter().map(|c| c.to_string()).collect(),
            ..Default::default()
        },
        desired_state: TaskState::Running,
        node_hostname: String::new(),
        node_id: String::new(),
        service_labels: Default::default(),
        secrets: vec![],
        configs: vec![],
        networks: vec![],
    }
}

/// Run the bare runtime of `oci` with `args`, stdio on /dev/null; blocks.
fn bare_runtime(
    oci: &OciRuntime,
) -> impl Fn(&[&str]) -> std::io::Result<std::process::ExitStatus> + Clone + Send + 'static {
    let base = oci.runtime_base();
    let mask = oci.masks_cgroup2();
    move |args: &[&str]| {
        let mut cmd = std::process::Command::new(&base[0]);
        cmd.args(&base[1..]).args(args);
        cmd.stdin(std::process::Stdio::null());
        cmd.stdout(std::process::Stdio::null());
        cmd.stderr(std::process::Stdio::null());
        if mask {
            use std::os::unix::process::CommandExt;
            // SAFETY: mask_cgroup2 only makes system calls.
            unsafe { cmd.pre_exec(shim::mask_cgroup2) };
        }
        cmd.status()
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// Run `n` rounds of each side with `config` (its `runtime` is replaced by `runtime`) and
/// `image` (any image with `/bin/true`; pinned under the reference `bench`).
pub async fn bench_lifecycle(
    runtime: &str,
    n: usize,
    mut config: OciConfig,
    image: Image,
) -> Result<BenchFigures, String> {
    config.runtime = runtime.to_string();
    let oci = OciRuntime::new(config).map_err(|e| e.to_string())?;
    oci.pin_image("bench", image);
    oci.record_steps();
    let task = |id: String| bench_task(id, &["/bin/true"]);
    let prefix = format!("bench{}x", std::process::id());
    let mut ours = Vec::with_capacity(n);
    let mut bare = Vec::with_capacity(n);
    let mut phases: [Vec<Duration>; 3] = Default::default();
    let mut bare_phases: [Vec<Duration>; 2] = Default::default();
    let mut steps: Vec<(&'static str, Vec<Duration>)> = Vec::new();
    for round in 0..n {
        let id = format!("{prefix}o{round}");
        oci.prepare(&task(id.clone()))
            .await
            .map_err(|e| e.to_string())?;
        oci.take_steps();
        let t0 = Instant::now();
        let mut marks = [Duration::ZERO; 3];
        let result = async {
            oci.start(&id).await?;
            marks[0] = t0.elapsed();
            oci.wait(&id).await?;
            marks[1] = t0.elapsed();
            oci.remove(&id).await
        }
        .await;
        let total = t0.elapsed();
        ours.push(total);
        phases[0].push(marks[0]);
        phases[1].push(marks[1].saturating_sub(marks[0]));
        phases[2].push(total.saturating_sub(marks[1]));
        for (step, took) in oci.take_steps() {
            match steps.iter_mut().find(|(s, _)| *s == step) {
                Some((_, v)) => v.push(took),
                None => steps.push((step, vec![took])),
            }
        }
        if let Err(e) = result {
            let _ = oci.remove(&id).await;
            return Err(e.to_string());
        }

        let id = format!("{prefix}b{round}");
        oci.prepare(&task(id.clone()))
            .await
            .map_err(|e| e.to_string())?;
        let dir = oci.task_dir(&id);
        let run = bare_runtime(&oci);
        let t0 = Instant::now();
        let status = tokio::task::spawn_blocking(move || {
            let dir = dir.to_string_lossy().into_owned();
            let status = run(&["run", "--bundle", &dir, &id]);
            let ran = t0.elapsed();
            let _ = run(&["delete", "--force", &id]);
            (status, ran)
        })
        .await
        .map_err(|e| e.to_string())?;
        let (status, ran) = status;
        let total = t0.elapsed();
        bare.push(total);
        bare_phases[0].push(ran);
        bare_phases[1].push(total - ran);
        let _ = oci.remove(&format!("{prefix}b{round}")).await;
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => return Err(format!("bare {runtime} run: {s}")),
            Err(e) => return Err(format!("bare {runtime} run: {e}")),
        }
    }
    let shoal_median = median(ours);
    let bare_median = median(bare);
    Ok(BenchFigures {
        runtime: runtime.to_string(),
        rounds: n,
        shoal_median,
        bare_median,
        ratio: shoal_median.as_secs_f64() / bare_median.as_secs_f64().max(1e-9),
        phases: phases.map(median),
        steps: steps.into_iter().map(|(s, v)| (s, median(v))).collect(),
        bare_phases: bare_phases.map(median),
    })
}

/// The bare figure of `shoal bench replicas`: `n` containers started with
/// `<runtime> run --detach` (each `sleep` in a bundle of its own, all prepared alike before
/// the clock starts), `parallel` at a time; returns the wall time until all had started. The
/// containers are deleted afterwards.
pub async fn bench_bare_starts(
    runtime: &str,
    n: usize,
    parallel: usize,
    mut config: OciConfig,
    image: Image,
) -> Result<Duration, String> {
    config.runtime = runtime.to_string();
    let oci = OciRuntime::new(config).map_err(|e| e.to_string())?;
    oci.pin_image("bench", image);
    let prefix = format!("bare{}x", std::process::id());
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
    for id in &ids {
        oci.prepare(&bench_task(id.clone(), &["sleep", "3600"]))
            .await
            .map_err(|e| e.to_string())?;
    }
    let run = bare_runtime(&oci);
    let dirs: Vec<String> = ids
        .iter()
        .map(|id| oci.task_dir(id).to_string_lossy().into_owned())
        .collect();
    let ids2 = ids.clone();
    let run2 = run.clone();
    let (elapsed, failures) = tokio::task::spawn_blocking(move || {
        let next = std::sync::atomic::AtomicUsize::new(0);
        let failures = std::sync::Mutex::new(Vec::new());
        let t0 = Instant::now();
        std::thread::scope(|scope| {
            for _ in 0..parallel.max(1) {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(id) = ids2.get(i) else { break };
                    match run2(&["run", "--detach", "--bundle", &dirs[i], id]) {
                        Ok(s) if s.success() => {}
                        other => failures
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .push(format!("{id}: {other:?}")),
                    }
                });
            }
        });
        (
            t0.elapsed(),
            failures
                .into_inner()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    })
    .await
    .map_err(|e| e.to_string())?;
    let ids3 = ids.clone();
    let _ = tokio::task::spawn_blocking(move || {
        for id in &ids3 {
            let _ = run(&["delete", "--force", id]);
        }
    })
    .await;
    for id in &ids {
        let _ = oci.remove(id).await;
    }
    match failures.first() {
        Some(first) => Err(format!(
            "bare {runtime} run --detach failed for {} of {n} containers, e.g. {first}",
            failures.len()
        )),
        None => Ok(elapsed),
    }
}
