//! Container benchmarks, each printing its figures as ratios measured in one run:
//!
//! - `shoal bench runtime`: one container life cycle (`true`) through shoal's OCI runtime
//!   (monitor, create, start, exit file, delete) against bare `<runtime> run` of the same
//!   bundle;
//! - `shoal bench replicas`: wall time of `shoal service create --replicas N` until every
//!   task is RUNNING on one worker of a lab, per runtime (fake as the orchestration baseline,
//!   runc, crun), the image already on the worker; against N bare `<runtime> run --detach`
//!   of bundles prepared alike, two at a time, measured in the same run; and the memory of
//!   everything shoal runs on the worker with the N replicas running (the daemon, the monitor
//!   server and the per-container monitors: Pss and private bytes from `smaps_rollup`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use deploy::images::{self, TestImage};
use worker::image::Image;
use worker::image::{ImageStore, RegistryOptions};
use worker::oci::bench::{bench_bare_starts, bench_lifecycle, BenchFigures};
use worker::oci::OciConfig;

/// The busybox image of the benchmarks, loaded into a store under `dir`.
async fn bench_image(dir: &std::path::Path) -> Result<(Arc<ImageStore>, Image)> {
    let layout = dir.join("layout");
    images::build_busybox_image(
        &layout,
        "bench:1",
        TestImage {
            cmd: vec!["true".into()],
            ..Default::default()
        },
    )?;
    let tarball = dir.join("bench.tar");
    images::oci_archive(&layout, &tarball)?;
    let store = Arc::new(ImageStore::open(
        &dir.join("images"),
        RegistryOptions::default(),
    )?);
    store.load(&tarball)?;
    let image = store
        .get("bench:1")
        .await?
        .ok_or_else(|| anyhow!("the bench image did not load"))?;
    Ok((store, image))
}

/// `shoal bench runtime`: `rounds` life cycles per runtime, medians and their ratio.
pub async fn run_runtime(rounds: usize, runtimes: &[String], json: bool) -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("shoal-bench-runtime-")
        .tempdir()?;
    let (store, image) = bench_image(dir.path()).await?;
    let mut all: Vec<BenchFigures> = Vec::new();
    for rt in runtimes {
        let config = OciConfig::new(dir.path().join(format!("data-{rt}")), store.clone());
        let figures = bench_lifecycle(rt, rounds, config, image.clone())
            .await
            .map_err(|e| anyhow!("{rt}: {e}"))?;
        if !json {
            println!("{figures}");
        }
        all.push(figures);
    }
    if json {
        for f in &all {
            println!(
                "{}",
                serde_json::json!({
                    "Runtime": f.runtime,
                    "Rounds": f.rounds,
                    "ShoalMedianMs": f.shoal_median.as_secs_f64() * 1e3,
                    "BareMedianMs": f.bare_median.as_secs_f64() * 1e3,
                    "Ratio": f.ratio,
                    "StartMs": f.phases[0].as_secs_f64() * 1e3,
                    "WaitMs": f.phases[1].as_secs_f64() * 1e3,
                    "RemoveMs": f.phases[2].as_secs_f64() * 1e3,
                    "BareRunMs": f.bare_phases[0].as_secs_f64() * 1e3,
                    "BareDeleteMs": f.bare_phases[1].as_secs_f64() * 1e3,
                    "StepsMs": f
                        .steps
                        .iter()
                        .map(|(step, took)| (step.to_string(), serde_json::json!(took.as_secs_f64() * 1e3)))
                        .collect::<serde_json::Map<_, _>>(),
                })
            );
        }
    }
    Ok(())
}

/// One runtime's figure of `bench replicas`.
struct ReplicaFigure {
    runtime: String,
    seconds: f64,
    /// N bare `run --detach`, two at a time (not for `fake`).
    bare_seconds: Option<f64>,
    memory: NodeMemory,
}

/// Pss and private (clean + dirty) bytes of one process, in KiB.
#[derive(Clone, Copy, Debug, Default)]
struct Mem {
    pss: u64,
    private: u64,
}

impl std::ops::AddAssign for Mem {
    fn add_assign(&mut self, other: Mem) {
        self.pss += other.pss;
        self.private += other.private;
    }
}

/// What shoal runs on one node: the daemon, the monitor server, the container monitors.
#[derive(Clone, Debug, Default)]
struct NodeMemory {
    daemon: Mem,
    server: Mem,
    monitors: Mem,
    monitor_count: usize,
}

impl NodeMemory {
    fn total(&self) -> Mem {
        let mut all = self.daemon;
        all += self.server;
        all += self.monitors;
        all
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn smaps_rollup(pid: u32) -> Option<Mem> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let kib = |key: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    Some(Mem {
        pss: kib("Pss:"),
        private: kib("Private_Clean:") + kib("Private_Dirty:"),
    })
}

/// The memory of the daemon `daemon` (data directory `data_dir`) and of the shim processes
/// of that node (`shoal shim …` with the data directory in their command line): the one whose
/// parent is the daemon is the monitor server, the others are monitors.
fn node_memory(daemon: u32, data_dir: &std::path::Path) -> Result<NodeMemory> {
    let mut memory = NodeMemory {
        daemon: smaps_rollup(daemon).ok_or_else(|| anyhow!("daemon {daemon} not found"))?,
        ..Default::default()
    };
    let needle = data_dir.as_os_str().as_encoded_bytes();
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if args.get(1) != Some(&&b"shim"[..]) || !args.iter().any(|a| a.starts_with(needle)) {
            continue;
        }
        let Some(mem) = smaps_rollup(pid) else {
            continue;
        };
        let parent = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| {
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
            });
        if parent == Some(daemon) {
            memory.server += mem;
        } else {
            memory.monitors += mem;
            memory.monitor_count += 1;
        }
    }
    Ok(memory)
}

/// N bare `<runtime> run --detach`, two at a time, of bundles of the bench image.
fn bare_starts(runtime: &str, n: usize) -> Result<f64> {
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    tokio.block_on(async {
        let dir = tempfile::Builder::new()
            .prefix("shoal-bench-bare-")
            .tempdir()?;
        let (store, image) = bench_image(dir.path()).await?;
        let config = OciConfig::new(dir.path().join("data"), store);
        let took = bench_bare_starts(runtime, n, 2, config, image)
            .await
            .map_err(|e| anyhow!("{runtime}: {e}"))?;
        Ok(took.as_secs_f64())
    })
}

/// `shoal bench replicas`: per runtime, a lab of one manager (drained) and one worker, with
/// the lab registry; the image is pulled by a warm-up service first, so the timed region is
/// scheduling, dispatch and container start-up. Then, with the replicas running, the memory
/// on the worker; and N bare starts of the runtime, two at a time.
pub fn run_replicas(
    replicas: u32,
    runtimes: &[String],
    prefix: &str,
    timeout: Duration,
    json: bool,
) -> Result<()> {
    let bin = std::env::current_exe().context("finding the shoal binary")?;
    let image = format!("{}/sleep:1", deploy::LAB_REGISTRY);
    let mut figures = Vec::new();
    for (i, rt) in runtimes.iter().enumerate() {
        let lab_prefix = format!("{prefix}{i}");
        let mut cfg = deploy::LabConfig::new(&lab_prefix, 1, 1, bin.clone());
        cfg.daemon_args = match rt.as_str() {
            "fake" => vec!["--runtime".into(), "fake".into()],
            other => vec![
                "--runtime".into(),
                "oci".into(),
                "--oci-runtime".into(),
                other.into(),
            ],
        };
        cfg.registry = true;
        let lab = deploy::Lab::up(&cfg).with_context(|| format!("lab for {rt}"))?;
        let result = time_replicas(&lab, &image, replicas, timeout).and_then(|seconds| {
            let w1 = lab.host("w1").map_err(|e| anyhow!("{e}"))?;
            let pid = w1.pid.ok_or_else(|| anyhow!("no daemon pid for w1"))?;
            Ok((seconds, node_memory(pid, &w1.data_dir)?))
        });
        let down = deploy::Lab::down(&lab_prefix);
        let (seconds, memory) = result.with_context(|| format!("{replicas} replicas with {rt}"))?;
        down?;
        let bare_seconds = match rt.as_str() {
            "fake" => None,
            other => Some(bare_starts(other, replicas as usize)?),
        };
        let figure = ReplicaFigure {
            runtime: rt.clone(),
            seconds,
            bare_seconds,
            memory,
        };
        if !json {
            print_replicas(&figure, replicas);
        }
        figures.push(figure);
    }
    let base = figures
        .iter()
        .find(|f| f.runtime == "runc")
        .or(figures.first())
        .map(|f| (f.runtime.clone(), f.seconds))
        .unwrap_or_default();
    if json {
        for f in &figures {
            let m = &f.memory;
            let total = m.total();
            println!(
                "{}",
                serde_json::json!({
                    "Runtime": f.runtime,
                    "Replicas": replicas,
                    "Seconds": f.seconds,
                    "TasksPerSecond": replicas as f64 / f.seconds,
                    "Baseline": base.0,
                    "RatioToBaseline": f.seconds / base.1,
                    "BareSeconds": f.bare_seconds,
                    "RatioToBare": f.bare_seconds.map(|b| f.seconds / b),
                    "Memory": {
                        "DaemonPssKiB": m.daemon.pss,
                        "DaemonPrivateKiB": m.daemon.private,
                        "ServerPssKiB": m.server.pss,
                        "ServerPrivateKiB": m.server.private,
                        "Monitors": m.monitor_count,
                        "MonitorsPssKiB": m.monitors.pss,
                        "MonitorsPrivateKiB": m.monitors.private,
                        "TotalPssKiB": total.pss,
                        "TotalPrivateKiB": total.private,
                    },
                })
            );
        }
        return Ok(());
    }
    println!();
    println!(
        "{:<10}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10}{:>12}{:>14}",
        "RUNTIME",
        "REPLICAS",
        "SECONDS",
        "TASKS/S",
        format!("VS {}", base.0.to_uppercase()),
        "BARE S",
        "VS BARE",
        "PSS MIB",
        "PRIVATE MIB"
    );
    let dash = || "-".to_string();
    for f in &figures {
        let total = f.memory.total();
        println!(
            "{:<10}{:>10}{:>10.2}{:>10.1}{:>10.2}{:>10}{:>10}{:>12.1}{:>14.1}",
            f.runtime,
            replicas,
            f.seconds,
            replicas as f64 / f.seconds,
            f.seconds / base.1,
            f.bare_seconds
                .map(|b| format!("{b:.2}"))
                .unwrap_or_else(dash),
            f.bare_seconds
                .map(|b| format!("{:.2}", f.seconds / b))
                .unwrap_or_else(dash),
            mib(total.pss),
            mib(total.private),
        );
    }
    Ok(())
}

fn print_replicas(f: &ReplicaFigure, replicas: u32) {
    let m = &f.memory;
    let total = m.total();
    let bare = f
        .bare_seconds
        .map(|b| {
            format!(
                "; {replicas} bare `{} run --detach`, two at a time: {b:.2} s (ratio {:.2})",
                f.runtime,
                f.seconds / b
            )
        })
        .unwrap_or_default();
    println!(
        "{}: {replicas} replicas RUNNING after {:.2} s{bare}",
        f.runtime, f.seconds
    );
    let each = if m.monitor_count > 0 {
        m.monitors.pss / m.monitor_count as u64
    } else {
        0
    };
    println!(
        "  memory on the worker: daemon {:.1} MiB Pss ({:.1} private); monitor server {:.1} ({:.1}); {} monitors {:.1} ({:.1}), {each} KiB Pss each; all {:.1} MiB Pss ({:.1} private)",
        mib(m.daemon.pss),
        mib(m.daemon.private),
        mib(m.server.pss),
        mib(m.server.private),
        m.monitor_count,
        mib(m.monitors.pss),
        mib(m.monitors.private),
        mib(total.pss),
        mib(total.private),
    );
}

fn time_replicas(lab: &deploy::Lab, image: &str, replicas: u32, timeout: Duration) -> Result<f64> {
    let shoal = |args: &[&str]| lab.shoal("m1", args).map_err(|e| anyhow!("{e}"));
    shoal(&["node", "update", "--availability", "drain", "m1"])?;
    // Warm-up: the worker pulls and unpacks the image once.
    shoal(&["service", "create", "-q", "--name", "warm", image])?;
    shoal(&["service", "rm", "warm"])?;
    let worker = lab.host("w1").map_err(|e| anyhow!("{e}"))?;
    let tasks_dir = worker.data_dir.join("tasks");
    let deadline = Instant::now() + timeout;
    // The warm-up container is gone before the timed run starts.
    while std::fs::read_dir(&tasks_dir).is_ok_and(|mut d| d.next().is_some()) {
        if Instant::now() >= deadline {
            bail!("the warm-up task on w1 was not removed");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let n = replicas.to_string();
    let t0 = Instant::now();
    // Without --detach the CLI returns once every task is RUNNING (or fails).
    shoal(&[
        "service",
        "create",
        "-q",
        "--name",
        "bench",
        "--replicas",
        &n,
        image,
    ])?;
    let seconds = t0.elapsed().as_secs_f64();
    let out = shoal(&[
        "service",
        "ps",
        "--filter",
        "desired-state=running",
        "--format",
        "json",
        "bench",
    ])?;
    let running = out.lines().filter(|l| l.contains("\"Running ")).count();
    if running != replicas as usize {
        bail!("{running} of {replicas} tasks RUNNING after `service create` returned");
    }
    Ok(seconds)
}
