//! Container benchmarks, each printing its figures as ratios measured in one run:
//!
//! - `shoal bench runtime`: one container life cycle (`true`) through shoal's OCI runtime
//!   (monitor, create, start, exit file, delete) against bare `<runtime> run` of the same
//!   bundle;
//! - `shoal bench replicas`: wall time of `shoal service create --replicas N` until every
//!   task is RUNNING on one worker of a lab, per runtime (fake as the orchestration baseline,
//!   runc, crun), the image already on the worker.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use deploy::images::{self, TestImage};
use worker::image::{ImageStore, RegistryOptions};
use worker::oci::bench::{bench_lifecycle, BenchFigures};
use worker::oci::OciConfig;

/// `shoal bench runtime`: `rounds` life cycles per runtime, medians and their ratio.
pub async fn run_runtime(rounds: usize, runtimes: &[String], json: bool) -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("shoal-bench-runtime-")
        .tempdir()?;
    let layout = dir.path().join("layout");
    images::build_busybox_image(
        &layout,
        "bench:1",
        TestImage {
            cmd: vec!["true".into()],
            ..Default::default()
        },
    )?;
    let tarball = dir.path().join("bench.tar");
    images::oci_archive(&layout, &tarball)?;
    let store = Arc::new(ImageStore::open(
        &dir.path().join("images"),
        RegistryOptions::default(),
    )?);
    store.load(&tarball)?;
    let image = store
        .get("bench:1")
        .await?
        .ok_or_else(|| anyhow!("the bench image did not load"))?;
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
}

/// `shoal bench replicas`: per runtime, a lab of one manager (drained) and one worker, with
/// the lab registry; the image is pulled by a warm-up service first, so the timed region is
/// scheduling, dispatch and container start-up.
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
        let result = time_replicas(&lab, &image, replicas, timeout);
        let down = deploy::Lab::down(&lab_prefix);
        let seconds = result.with_context(|| format!("{replicas} replicas with {rt}"))?;
        down?;
        if !json {
            println!("{rt}: {replicas} replicas RUNNING after {seconds:.2} s");
        }
        figures.push(ReplicaFigure {
            runtime: rt.clone(),
            seconds,
        });
    }
    let base = figures
        .iter()
        .find(|f| f.runtime == "runc")
        .or(figures.first())
        .map(|f| (f.runtime.clone(), f.seconds))
        .unwrap_or_default();
    if json {
        for f in &figures {
            println!(
                "{}",
                serde_json::json!({
                    "Runtime": f.runtime,
                    "Replicas": replicas,
                    "Seconds": f.seconds,
                    "TasksPerSecond": replicas as f64 / f.seconds,
                    "Baseline": base.0,
                    "RatioToBaseline": f.seconds / base.1,
                })
            );
        }
        return Ok(());
    }
    println!();
    println!(
        "{:<10}{:>10}{:>12}{:>10}{:>12}",
        "RUNTIME",
        "REPLICAS",
        "SECONDS",
        "TASKS/S",
        format!("VS {}", base.0.to_uppercase())
    );
    for f in &figures {
        println!(
            "{:<10}{:>10}{:>12.2}{:>10.1}{:>12.2}",
            f.runtime,
            replicas,
            f.seconds,
            replicas as f64 / f.seconds,
            f.seconds / base.1
        );
    }
    Ok(())
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
