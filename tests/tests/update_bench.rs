//! Smoke run of `shoal bench update` at tiny sizes (fake runtime, 3 replicas, Swarm not
//! measured): the command works, both phases reach every task running the new spec and then
//! complete, and completion waits for the monitor period. The figures are printed, not
//! asserted against the targets (a benchmark, not a timed test). Needs root.

use std::process::{Command, Stdio};

use anyhow::{ensure, Context, Result};
use harness::{shoal_bin, unique_prefix};
use serde_json::Value;

#[test]
fn update_bench_smoke_run_updates_and_rolls_back() -> Result<()> {
    let prefix = unique_prefix("up");
    let bin = shoal_bin();
    let out = Command::new(&bin)
        .args(["bench", "update", "--replicas", "3", "--parallelism", "2"])
        .args(["--runtime", "fake", "--no-swarm", "--timeout", "60s"])
        .args(["--format", "json", "--prefix", &prefix])
        .stdin(Stdio::null())
        .output()
        .context("run shoal bench update")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        // The run removes its lab itself; make sure of it when it failed.
        let _ = Command::new(&bin)
            .args(["lab", "down", "--prefix", &prefix])
            .status();
    }
    ensure!(
        out.status.success(),
        "shoal bench update exited {}",
        out.status
    );
    let report: Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .with_context(|| format!("no JSON report; stdout: {stdout}"))?;
    println!("FIGURE update {}", report["Shoal"]);
    ensure!(
        report["SwarmMeasured"] == Value::Bool(false) && report["Swarm"].is_null(),
        "Swarm asked not to be measured: {report}"
    );
    for phase in ["Update", "Rollback"] {
        let p = &report["Shoal"][phase];
        let running = p["AllRunningSeconds"].as_f64().unwrap_or(-1.0);
        let completed = p["CompletedSeconds"].as_f64().unwrap_or(-1.0);
        ensure!(running > 0.0, "{phase}: every task running: {p}");
        // The default monitor period (5 s) runs after the last new task is running.
        ensure!(
            completed >= running + 4.5,
            "{phase}: completed before the monitor period ended: {p}"
        );
        ensure!(
            p["Breakdown"]["TailMs"]
                .as_i64()
                .is_some_and(|t| t >= 5_000),
            "{phase}: the tail holds the monitor period: {p}"
        );
    }
    Ok(())
}
