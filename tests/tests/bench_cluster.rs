//! `shoal bench cluster` past the open-file limit: the simulated workers run in a process of
//! their own (one process could not hold both ends of every worker's connection), and the
//! run still reaches every task RUNNING.

use std::process::Command;

use anyhow::{Context, Result};
use harness::shoal_bin;

#[test]
fn the_workers_move_to_a_process_of_their_own_past_the_file_limit() -> Result<()> {
    // 200 workers want 2 × 200 + 4096 files in one process: over 4,400, under it without
    // the workers' own ends.
    let out = Command::new("prlimit")
        .arg("--nofile=4400:4400")
        .arg(shoal_bin())
        .args(["bench", "cluster", "--managers", "1", "--workers", "200"])
        .args(["--tasks", "400", "--timeout", "120s", "--format", "json"])
        .output()
        .context("run prlimit shoal bench cluster")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let fig: serde_json::Value = serde_json::from_str(stdout.trim())
        .with_context(|| format!("figures: {stdout}\n{stderr}"))?;
    assert_eq!(fig["AgentProcesses"], 1, "{fig}");
    assert_eq!(fig["WorkersReady"], 200, "{fig}");
    assert_eq!(fig["AllRunning"], true, "{fig}");
    assert!(
        stderr.contains("the workers run in a process of their own"),
        "{stderr}"
    );
    Ok(())
}
