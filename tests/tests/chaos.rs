//! The fault suite, short and seeded: `shoal bench chaos` on a lab of 3 managers and 1
//! worker (fake runtime) with one fault of each kind (leader kill, leader partition, minority
//! partition, manager restart) while 4 clients write through different managers. Asserts
//! every invariant the run checks: no acknowledged write lost, one leader per term, a
//! partitioned leader steps down, no long double leadership claims, no slot running twice
//! past the heartbeat grace, the service whole again afterwards. Needs root.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use harness::{shoal_bin, unique_prefix};
use serde_json::Value;

/// The whole run, lab up and down included, must fit the CI budget.
const BUDGET: Duration = Duration::from_secs(170);
const SEED: &str = "20261207";

#[test]
fn chaos_short_seeded_run_keeps_every_invariant() -> Result<()> {
    let prefix = unique_prefix("ch");
    let bin = shoal_bin();
    let logs = bin
        .parent()
        .map(|d| d.join("../lab-logs").join(&prefix))
        .context("target dir")?;
    let mut child = Command::new(&bin)
        .args(["bench", "chaos", "--rounds", "4", "--seed", SEED])
        .args(["--managers", "3", "--workers", "1", "--replicas", "4"])
        .args(["--dispatcher-heartbeat", "1s", "--format", "json"])
        .arg("--prefix")
        .arg(&prefix)
        .arg("--logs")
        .arg(&logs)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("start shoal bench chaos")?;
    // Drain both pipes on threads so that the child never blocks on a full pipe.
    let mut out = child.stdout.take().context("stdout")?;
    let mut err = child.stderr.take().context("stderr")?;
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + BUDGET;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break Some(st);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    eprintln!("{stderr}");
    let Some(status) = status else {
        // The run's own teardown did not happen: remove its lab here.
        let _ = Command::new(&bin)
            .args(["lab", "down", "--prefix", &prefix])
            .status();
        bail!("the chaos run took longer than {BUDGET:?}; daemons' logs in {logs:?}");
    };
    let report: Value = harness::json_report(&stdout).with_context(|| {
        format!("no JSON report (exit {status}); stdout: {stdout}; logs in {logs:?}")
    })?;
    println!(
        "FIGURE chaos_acknowledged={} lost={} step_down_ms={} longest_duplicate_ms={} longest_dual_claim_ms={}",
        report["Acknowledged"],
        report["Lost"],
        report["StepDownMs"],
        report["LongestDuplicateMs"],
        report["LongestDualClaimMs"]
    );
    for k in report["Kinds"].as_array().into_iter().flatten() {
        println!(
            "FIGURE chaos_{}_unavailable_p50_ms={} max_ms={} longest_gap_ms={}",
            k["Kind"].as_str().unwrap_or("?"),
            k["UnavailableP50Ms"],
            k["UnavailableMaxMs"],
            k["LongestGapMs"]
        );
    }
    let checks = report["Checks"].as_array().context("Checks")?;
    let kinds: Vec<&str> = report["Kinds"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|k| k["Kind"].as_str())
        .collect();
    ensure!(
        kinds.len() == 4,
        "every fault kind must have been injected once: {kinds:?}"
    );
    ensure!(
        report["Acknowledged"].as_u64().unwrap_or(0) > 0,
        "no write was acknowledged at all: {report}"
    );
    let failed: Vec<String> = checks
        .iter()
        .filter(|c| c["Pass"] != true)
        .map(|c| format!("{}: {}", c["Name"], c["Detail"]))
        .collect();
    ensure!(
        failed.is_empty(),
        "invariants broken (seed {SEED}; daemons' logs in {logs:?}):\n  {}",
        failed.join("\n  ")
    );
    ensure!(status.success(), "shoal bench chaos exited {status}");
    Ok(())
}
