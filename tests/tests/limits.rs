//! Requests beyond the cluster's limits and out-of-range settings, refused at the manager
//! (lab hosts; need root).

use std::time::Duration;

use anyhow::{anyhow, ensure, Result};
use harness::{eventually, LabGuard};
use serde_json::Value;

const HEARTBEAT: Duration = Duration::from_millis(500);

fn refused(r: Result<String>, what: &str, expect: &str) -> Result<()> {
    match r {
        Ok(out) => Err(anyhow!("{what} was accepted: {out}")),
        Err(e) if e.to_string().contains(expect) => Ok(()),
        Err(e) => Err(anyhow!("{what}: expected {expect:?}, got {e}")),
    }
}

#[test]
fn lab_requests_beyond_the_cluster_limits_are_refused() -> Result<()> {
    let lab = LabGuard::up("lim", 1, 1, HEARTBEAT)?;
    let create = |name: &str, replicas: &str| {
        lab.shoal(
            "m1",
            &[
                "service",
                "create",
                "--detach",
                "--name",
                name,
                "--replicas",
                replicas,
                "img:1",
            ],
        )
    };
    // Accepted before: the managers then grew until the OOM killer ended them.
    refused(
        create("huge", "1000000000"),
        "a billion replicas",
        "replicas 1000000000 exceeds the cluster limit of 100000 (swarm update --max-replicas)",
    )?;
    ensure!(
        !lab.shoal("m1", &["service", "ls"])?.contains("huge"),
        "the refused service exists"
    );

    lab.shoal(
        "m1",
        &["swarm", "update", "--max-replicas", "3", "--max-tasks", "5"],
    )?;
    let info = lab.shoal("m1", &["info"])?;
    ensure!(
        info.contains("Max Replicas Per Service: 3") && info.contains("Max Tasks: 5"),
        "info does not show the limits:\n{info}"
    );
    let json: Value = serde_json::from_str(lab.shoal("m1", &["info", "--format", "json"])?.trim())?;
    ensure!(
        json["Spec"]["Orchestration"]["MaxTasks"] == 5,
        "info --format json: {json}"
    );
    refused(create("four", "4"), "4 replicas", "--max-replicas")?;
    create("web", "3")?;
    refused(create("more", "3"), "8 tasks in all", "--max-tasks")?;
    refused(
        lab.shoal(
            "m1",
            &["service", "update", "--detach", "--replicas", "4", "web"],
        ),
        "scaling to 4",
        "--max-replicas",
    )?;
    refused(
        lab.shoal("m1", &["swarm", "update", "--max-replicas", "6"]),
        "max-replicas above max-tasks",
        "--max-replicas 6 is above the cluster's task limit (5)",
    )?;

    // Out-of-range durations: the first panicked the leader at the next join.
    refused(
        lab.shoal(
            "m1",
            &["swarm", "update", "--cert-expiry", "2562047788015h"],
        ),
        "--cert-expiry 2562047788015h",
        "--cert-expiry 2562047788015h is too long",
    )?;
    refused(
        lab.shoal(
            "m1",
            &["swarm", "update", "--dispatcher-heartbeat", "1000000h"],
        ),
        "--dispatcher-heartbeat 1000000h",
        "--dispatcher-heartbeat 1000000h is too long",
    )?;
    refused(
        lab.shoal(
            "m1",
            &[
                "service",
                "create",
                "--detach",
                "--name",
                "slow",
                "--restart-delay",
                "1000000h",
                "img:1",
            ],
        ),
        "--restart-delay 1000000h",
        "--restart-delay 1000000h is too long",
    )?;

    // The cluster still converges.
    eventually("web's 3 tasks running", Duration::from_secs(30), || {
        let ps = lab.shoal(
            "m1",
            &["service", "ps", "web", "--filter", "desired-state=running"],
        )?;
        let running = ps.lines().filter(|l| l.contains("Running")).count();
        ensure!(running == 3, "{running} running:\n{ps}");
        Ok(())
    })?;
    Ok(())
}
