//! Smoke run of `shoal bench failover` at tiny sizes (two leader kills, one worker cutoff, one
//! baseline kill, no baseline cutoff) on a lab with default settings: the command works and every fault recovered.
//! The figures are printed, not asserted against the targets (a benchmark, not a timed
//! test). Needs root.

use anyhow::{ensure, Result};
use harness::{bench_report, unique_prefix};
use serde_json::Value;

#[test]
fn failover_bench_smoke_run_recovers_from_every_fault() -> Result<()> {
    let prefix = unique_prefix("fo");
    let report = bench_report(
        &prefix,
        &[
            "failover",
            "--kills",
            "2",
            "--cutoffs",
            "1",
            "--baseline-heartbeat",
            "0s",
            "--baseline-kills",
            "1",
            "--replicas",
            "4",
        ],
    )?;
    println!(
        "FIGURE failover_write_again_ms={} cutoff_down_ms={} cutoff_replaced_ms={} elections={}",
        report["WriteAgain"]["Ms"],
        report["Cutoffs"]["Down"]["Ms"],
        report["Cutoffs"]["Replaced"]["Ms"],
        report["Elections"]
    );
    let recovered = |v: &Value, n: usize| {
        v.as_array()
            .is_some_and(|a| a.len() == n && a.iter().all(Value::is_u64))
    };
    ensure!(
        recovered(&report["WriteAgain"]["Ms"], 2),
        "a write after each kill: {report}"
    );
    ensure!(
        recovered(&report["Cutoffs"]["Down"]["Ms"], 1)
            && recovered(&report["Cutoffs"]["Replaced"]["Ms"], 1),
        "the cut-off worker Down and its tasks replaced: {report}"
    );
    ensure!(
        report["Elections"].as_u64().is_some_and(|e| e >= 2),
        "each kill needs an election: {report}"
    );
    ensure!(
        recovered(&report["BaselineWriteAgain"]["Ms"], 1),
        "a write after the baseline kill: {report}"
    );
    ensure!(
        report["Baseline"].is_null(),
        "no baseline cutoffs asked: {report}"
    );
    Ok(())
}
