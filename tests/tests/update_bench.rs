//! Smoke run of `shoal bench update` at tiny sizes (fake runtime, 3 replicas, Swarm not
//! measured): the command works, both phases reach every task running the new spec and then
//! complete, and completion waits for the monitor period. The figures are printed, not
//! asserted against the targets (a benchmark, not a timed test). Needs root.

use anyhow::{ensure, Result};
use harness::{bench_report, unique_prefix};
use serde_json::Value;

#[test]
fn update_bench_smoke_run_updates_and_rolls_back() -> Result<()> {
    let prefix = unique_prefix("up");
    let report = bench_report(
        &prefix,
        &[
            "update",
            "--replicas",
            "3",
            "--parallelism",
            "2",
            "--runtime",
            "fake",
            "--no-swarm",
            "--timeout",
            "60s",
        ],
    )?;
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
