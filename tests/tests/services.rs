//! Services on lab hosts with the fake runtime: placement, scaling, global services,
//! restarts, rolling updates and rollback, node failure, leader failure mid-update.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Result};
use harness::{eventually, LabGuard};
use serde_json::Value;

const HEARTBEAT: Duration = Duration::from_millis(500);
const WAIT: Duration = Duration::from_secs(60);

fn lines(out: &str) -> Result<Vec<Value>> {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(|e| anyhow!("bad JSON line {l:?}: {e}")))
        .collect()
}

/// `service ps SERVICE --filter desired-state=running` as JSON objects.
fn running_tasks(lab: &LabGuard, from: &str, service: &str) -> Result<Vec<Value>> {
    let out = lab.shoal(
        from,
        &[
            "service",
            "ps",
            "--format",
            "json",
            "--filter",
            "desired-state=running",
            service,
        ],
    )?;
    lines(&out)
}

fn replicas(lab: &LabGuard, from: &str, service: &str) -> Result<String> {
    let out = lab.shoal(from, &["service", "ls", "--format", "json"])?;
    let all = lines(&out)?;
    let s = all
        .iter()
        .find(|s| s["Name"] == service)
        .ok_or_else(|| anyhow!("no service {service} in {all:?}"))?;
    Ok(s["Replicas"].as_str().unwrap_or_default().to_string())
}

fn per_node(tasks: &[Value]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for t in tasks {
        if t["CurrentState"]
            .as_str()
            .unwrap_or("")
            .starts_with("Running")
        {
            *m.entry(t["Node"].as_str().unwrap_or("").to_string())
                .or_default() += 1;
        }
    }
    m
}

fn converged(lab: &LabGuard, service: &str, want: usize) -> Result<BTreeMap<String, usize>> {
    eventually(&format!("{service} at {want}/{want}"), WAIT, || {
        let r = replicas(lab, "m1", service)?;
        ensure!(r.starts_with(&format!("{want}/{want}")), "replicas {r}");
        let tasks = running_tasks(lab, "m1", service)?;
        let spread = per_node(&tasks);
        ensure!(spread.values().sum::<usize>() == want, "{spread:?}");
        Ok(spread)
    })
}

#[test]
fn lab_services_place_scale_restart_and_follow_nodes() -> Result<()> {
    let mut lab = LabGuard::up("sv", 3, 2, HEARTBEAT)?;

    // 12 replicas over 5 nodes: balanced within one task.
    lab.shoal(
        "m1",
        &[
            "service",
            "create",
            "--detach",
            "--name",
            "web",
            "--replicas",
            "12",
            "busybox",
        ],
    )?;
    let spread = converged(&lab, "web", 12)?;
    let (lo, hi) = (
        spread.values().min().copied().unwrap_or(0),
        spread.values().max().copied().unwrap_or(0),
    );
    ensure!(spread.len() == 5 && hi - lo <= 1, "unbalanced: {spread:?}");

    // `node ps` (default: this node, `self`) lists the tasks of the nodes named, of every
    // service; `node inspect self` is this node.
    let mine = lines(&lab.shoal("m1", &["node", "ps", "--format", "json"])?)?;
    ensure!(
        !mine.is_empty() && mine.iter().all(|t| t["Node"] == "m1"),
        "{mine:?}"
    );
    let both = lines(&lab.shoal("m1", &["node", "ps", "--format", "json", "w1", "w2"])?)?;
    ensure!(
        both.iter().filter(|t| t["Node"] == "w1").count() == spread["w1"]
            && both.iter().filter(|t| t["Node"] == "w2").count() == spread["w2"],
        "{both:?} vs {spread:?}"
    );
    let me: Value = serde_json::from_str(&lab.shoal("m2", &["node", "inspect", "self"])?)?;
    ensure!(me[0]["Description"]["Hostname"] == "m2", "{me}");
    ensure!(lab.shoal("m1", &["node", "ps", "nosuch"]).is_err());

    // Scale up and down.
    lab.shoal("m2", &["service", "scale", "--detach", "web=20"])?;
    converged(&lab, "web", 20)?;
    lab.shoal("m3", &["service", "scale", "--detach", "web=5"])?;
    converged(&lab, "web", 5)?;

    // Constraint: managers only.
    lab.shoal(
        "m1",
        &[
            "service",
            "create",
            "--detach",
            "--name",
            "mgr",
            "--replicas",
            "6",
            "--constraint",
            "node.role==manager",
            "busybox",
        ],
    )?;
    let spread = converged(&lab, "mgr", 6)?;
    ensure!(
        spread.keys().all(|n| n.starts_with('m')),
        "placed on a worker: {spread:?}"
    );

    // An impossible constraint: pending, with the reason shown.
    lab.shoal(
        "m1",
        &[
            "service",
            "create",
            "--detach",
            "--name",
            "nowhere",
            "--constraint",
            "node.labels.zone==mars",
            "busybox",
        ],
    )?;
    eventually("pending reason", WAIT, || {
        let out = lab.shoal("m1", &["service", "ps", "--format", "json", "nowhere"])?;
        let t = lines(&out)?;
        ensure!(
            t.iter().any(|t| t["Error"]
                .as_str()
                .unwrap_or("")
                .contains("no suitable node")),
            "{t:?}"
        );
        Ok(())
    })?;
    lab.shoal("m1", &["service", "rm", "nowhere"])?;

    // A failing task restarts per policy: 1 run + 2 restarts, then no more.
    lab.shoal(
        "m1",
        &[
            "service",
            "create",
            "--detach",
            "--name",
            "crash",
            "--env",
            "SHOAL_FAKE_EXIT_AFTER_MS=200",
            "--env",
            "SHOAL_FAKE_EXIT_CODE=3",
            "--restart-condition",
            "on-failure",
            "--restart-delay",
            "300ms",
            "--restart-max-attempts",
            "2",
            "busybox",
        ],
    )?;
    eventually("three failed attempts", WAIT, || {
        let out = lab.shoal("m1", &["service", "ps", "--format", "json", "crash"])?;
        let t = lines(&out)?;
        let failed = t
            .iter()
            .filter(|t| {
                t["CurrentState"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("Failed")
            })
            .count();
        ensure!(failed == 3 && t.len() == 3, "{t:?}");
        ensure!(
            t.iter()
                .all(|t| t["Error"].as_str().unwrap_or("").contains("exit")),
            "{t:?}"
        );
        Ok(())
    })?;

    // Global service: one task per node; drain removes it there.
    lab.shoal(
        "m1",
        &[
            "service", "create", "--detach", "--name", "agent", "--mode", "global", "busybox",
        ],
    )?;
    let spread = converged(&lab, "agent", 5)?;
    ensure!(spread.values().all(|n| *n == 1), "{spread:?}");
    lab.shoal("m1", &["node", "update", "--availability", "drain", "w1"])?;
    let spread = eventually("global off w1", WAIT, || {
        let tasks = running_tasks(&lab, "m1", "agent")?;
        let spread = per_node(&tasks);
        ensure!(
            spread.len() == 4 && !spread.contains_key("w1"),
            "{spread:?}"
        );
        Ok(spread)
    })?;
    ensure!(spread.values().all(|n| *n == 1));
    // Draining also moved web's tasks off w1.
    let web = per_node(&running_tasks(&lab, "m1", "web")?);
    ensure!(!web.contains_key("w1"), "web still on drained w1: {web:?}");
    lab.shoal("m1", &["node", "update", "--availability", "active", "w1"])?;
    converged(&lab, "agent", 5)?;

    // kill -9 a worker: once it is down its tasks run elsewhere.
    lab.shoal("m1", &["service", "scale", "--detach", "web=10"])?;
    converged(&lab, "web", 10)?;
    let killed = Instant::now();
    lab.lab.kill_daemon("w2")?;
    eventually("w2 down", WAIT, || {
        let out = lab.shoal("m1", &["node", "ls", "--format", "json"])?;
        ensure!(lines(&out)?
            .iter()
            .any(|n| n["Hostname"] == "w2" && n["Status"] == "Down"));
        Ok(())
    })?;
    let down = killed.elapsed();
    let spread = eventually("web rescheduled off w2", WAIT, || {
        let spread = per_node(&running_tasks(&lab, "m1", "web")?);
        ensure!(
            !spread.contains_key("w2") && spread.values().sum::<usize>() == 10,
            "{spread:?}"
        );
        Ok(spread)
    })?;
    println!(
        "FIGURE node_down_ms={} tasks_rescheduled_after_kill_ms={} spread={spread:?}",
        down.as_millis(),
        killed.elapsed().as_millis()
    );
    Ok(())
}

#[test]
fn lab_rolling_update_rollback_and_leader_failover() -> Result<()> {
    let lab = LabGuard::up("ru", 3, 2, HEARTBEAT)?;
    let mut lab = lab;
    lab.shoal(
        "m1",
        &[
            "service",
            "create",
            "--detach",
            "--name",
            "app",
            "--replicas",
            "8",
            "--update-parallelism",
            "2",
            "--update-monitor",
            "300ms",
            "--env",
            "SHOAL_FAKE_START_MS=300",
            "busybox:1",
        ],
    )?;
    converged(&lab, "app", 8)?;

    // A rolling update never has more than 2 slots updating.
    lab.shoal(
        "m1",
        &[
            "service",
            "update",
            "--detach",
            "--image",
            "busybox:2",
            "app",
        ],
    )?;
    let mut max_updating = 0;
    eventually("update done", WAIT, || {
        let tasks = running_tasks(&lab, "m1", "app")?;
        let updating = tasks
            .iter()
            .filter(|t| {
                t["Image"] == "busybox:2"
                    && !t["CurrentState"]
                        .as_str()
                        .unwrap_or("")
                        .starts_with("Running")
            })
            .count();
        max_updating = max_updating.max(updating);
        let new_running = tasks
            .iter()
            .filter(|t| {
                t["Image"] == "busybox:2"
                    && t["CurrentState"]
                        .as_str()
                        .unwrap_or("")
                        .starts_with("Running")
            })
            .count();
        ensure!(new_running == 8, "{new_running} of 8 on the new image");
        Ok(())
    })?;
    println!("FIGURE max_slots_updating={max_updating}");
    ensure!(max_updating <= 2, "{max_updating} slots updating at once");

    // An update whose tasks fail rolls back automatically.
    lab.shoal(
        "m1",
        &[
            "service",
            "update",
            "--detach",
            "--image",
            "busybox:3",
            "--env-add",
            "SHOAL_FAKE_FAIL=start",
            "--update-failure-action",
            "rollback",
            "app",
        ],
    )?;
    eventually("automatic rollback", WAIT, || {
        let out = lab.shoal("m1", &["service", "inspect", "app"])?;
        let v: Value = serde_json::from_str(&out)?;
        let st = v[0]["UpdateStatus"]["State"].as_str().unwrap_or("");
        ensure!(st == "rollback_completed", "update state {st}");
        let tasks = running_tasks(&lab, "m1", "app")?;
        ensure!(
            tasks.len() == 8 && tasks.iter().all(|t| t["Image"] == "busybox:2"),
            "{tasks:?}"
        );
        Ok(())
    })?;

    // Manual rollback goes back to the previous spec (busybox:2 -> its predecessor).
    // Then kill the leader during a rolling update: the new leader completes it.
    lab.shoal(
        "m1",
        &[
            "service",
            "update",
            "--detach",
            "--image",
            "busybox:4",
            "--update-parallelism",
            "1",
            "app",
        ],
    )?;
    let leader = {
        let out = lab.shoal("m1", &["node", "ls", "--format", "json"])?;
        lines(&out)?
            .into_iter()
            .find(|n| n["ManagerStatus"] == "Leader")
            .and_then(|n| n["Hostname"].as_str().map(String::from))
            .ok_or_else(|| anyhow!("no leader"))?
    };
    lab.lab.kill_daemon(&leader)?;
    let other = ["m1", "m2", "m3"]
        .into_iter()
        .find(|m| *m != leader)
        .unwrap_or("m2");
    eventually("update completed under the new leader", WAIT, || {
        let out = lab.shoal(other, &["service", "inspect", "app"])?;
        let v: Value = serde_json::from_str(&out)?;
        let st = v[0]["UpdateStatus"]["State"].as_str().unwrap_or("");
        ensure!(st == "completed", "update state {st}");
        let tasks = running_tasks(&lab, other, "app")?;
        let on_new = tasks
            .iter()
            .filter(|t| {
                t["Image"] == "busybox:4"
                    && t["CurrentState"]
                        .as_str()
                        .unwrap_or("")
                        .starts_with("Running")
            })
            .count();
        ensure!(on_new == 8, "{on_new} of 8 on busybox:4");
        Ok(())
    })?;
    Ok(())
}

#[test]
fn lab_join_gets_global_task_and_rebalanced_replicas() -> Result<()> {
    let mut lab = LabGuard::up("rb", 1, 1, HEARTBEAT)?;
    lab.shoal(
        "m1",
        &[
            "service",
            "create",
            "--detach",
            "--name",
            "web",
            "--replicas",
            "8",
            "--update-parallelism",
            "2",
            "busybox",
        ],
    )?;
    let spread = converged(&lab, "web", 8)?;
    ensure!(spread.len() == 2, "{spread:?}");
    lab.shoal(
        "m1",
        &[
            "service", "create", "--detach", "--name", "g", "--mode", "global", "busybox",
        ],
    )?;
    converged(&lab, "g", 2)?;
    lab.shoal("m1", &["swarm", "update", "--rebalance-on-join"])?;
    let w2 = lab.lab.add_host(false)?;
    let ip = lab.addr(&w2)?;
    let m1 = lab.addr("m1")?;
    let token = lab.join_token("m1", "worker")?;
    lab.shoal(
        &w2,
        &[
            "swarm",
            "join",
            "--token",
            &token,
            "--advertise-addr",
            &ip,
            &m1,
        ],
    )?;
    let spread = eventually("tasks spread onto the new node", WAIT, || {
        let spread = per_node(&running_tasks(&lab, "m1", "web")?);
        let lo = spread.values().min().copied().unwrap_or(0);
        let hi = spread.values().max().copied().unwrap_or(0);
        ensure!(
            spread.len() == 3 && hi - lo <= 1 && spread.values().sum::<usize>() == 8,
            "{spread:?}"
        );
        Ok(spread)
    })?;
    println!("FIGURE rebalanced_spread={spread:?}");
    // The global service follows the join.
    let g = converged(&lab, "g", 3)?;
    ensure!(
        g.get(&w2) == Some(&1),
        "global service not on the new node: {g:?}"
    );
    Ok(())
}
