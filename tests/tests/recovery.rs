//! Quorum-loss recovery on lab hosts (fake runtime): `swarm init --force-new-cluster` on the
//! one manager left after two of three were lost with their data.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

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

/// Names listed by `<kind> ls --format json` on `from`.
fn names(lab: &LabGuard, from: &str, kind: &str) -> Result<BTreeSet<String>> {
    let out = lab.shoal(from, &[kind, "ls", "--format", "json"])?;
    Ok(lines(&out)?
        .iter()
        .map(|v| v["Name"].as_str().unwrap_or_default().to_string())
        .collect())
}

/// Running tasks of `service`: task id → node hostname.
fn running(lab: &LabGuard, from: &str, service: &str) -> Result<BTreeMap<String, String>> {
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
    Ok(lines(&out)?
        .iter()
        .filter(|t| {
            t["CurrentState"]
                .as_str()
                .unwrap_or_default()
                .starts_with("Running")
        })
        .map(|t| {
            (
                t["ID"].as_str().unwrap_or_default().to_string(),
                t["Node"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect())
}

fn converged(
    lab: &LabGuard,
    from: &str,
    service: &str,
    want: usize,
) -> Result<BTreeMap<String, String>> {
    eventually(&format!("{service} at {want} running"), WAIT, || {
        let tasks = running(lab, from, service)?;
        ensure!(tasks.len() == want, "{tasks:?}");
        Ok(tasks)
    })
}

/// Node ids by hostname, as `from` lists them.
fn node_ids(lab: &LabGuard, from: &str) -> Result<BTreeMap<String, Value>> {
    Ok(lab
        .nodes(from)?
        .into_iter()
        .map(|n| (n["ID"].as_str().unwrap_or_default().to_string(), n))
        .collect())
}

#[test]
fn lab_force_new_cluster_after_two_of_three_managers_are_lost() -> Result<()> {
    let mut lab = LabGuard::up("fn", 3, 2, HEARTBEAT)?;
    let secret_file = lab.lab.dir.join("secret.txt");
    std::fs::write(&secret_file, "s3cret-value")?;
    let secret_path = secret_file.to_string_lossy().to_string();

    // One of every kind of object, and a service running on all five nodes.
    lab.shoal("m1", &["network", "create", "-d", "overlay", "appnet"])?;
    lab.shoal("m1", &["secret", "create", "dbpass", &secret_path])?;
    lab.shoal("m1", &["config", "create", "appconf", &secret_path])?;
    lab.shoal(
        "m1",
        &[
            "service",
            "create",
            "--detach",
            "--name",
            "web",
            "--replicas",
            "5",
            "--network",
            "appnet",
            "--secret",
            "dbpass",
            "--config",
            "appconf",
            "busybox",
        ],
    )?;
    let tasks_before = converged(&lab, "m1", "web", 5)?;
    let objects = |lab: &LabGuard, from: &str| -> Result<Vec<BTreeSet<String>>> {
        ["service", "network", "secret", "config"]
            .into_iter()
            .map(|k| names(lab, from, k))
            .collect()
    };
    let objects_before = objects(&lab, "m1")?;
    let nodes_before = node_ids(&lab, "m1")?;
    let worker_token = lab.join_token("m1", "worker")?;
    let manager_token = lab.join_token("m1", "manager")?;
    let id_of = |host: &str| -> String {
        nodes_before
            .iter()
            .find(|(_, n)| n["Hostname"] == host)
            .map(|(id, _)| id.clone())
            .unwrap_or_default()
    };

    // While the managers have a quorum, forcing a new cluster would split the swarm: refused
    // on the leader and on a follower.
    let leader = lab.leader("m1")?;
    let follower = ["m1", "m2", "m3"]
        .into_iter()
        .find(|m| *m != leader)
        .expect("a follower");
    for m in [leader.as_str(), follower] {
        let e = lab
            .shoal(m, &["swarm", "init", "--force-new-cluster"])
            .expect_err("force-new-cluster with a quorum");
        ensure!(e.to_string().contains("still has a quorum"), "{m}: {e}");
    }

    // Lose two managers for good, the leader among them: killed, data gone.
    let survivor = ["m1", "m2", "m3"]
        .into_iter()
        .rfind(|m| *m != leader)
        .expect("a survivor");
    let lost: Vec<&str> = ["m1", "m2", "m3"]
        .into_iter()
        .filter(|m| *m != survivor)
        .collect();
    for m in &lost {
        lab.lab.kill_daemon(m)?;
        std::fs::remove_dir_all(lab.host_data_dir(m)?)?;
    }
    // A plain init is refused: the node is still a member of the (quorum-less) swarm.
    let e = lab
        .shoal(survivor, &["swarm", "init"])
        .expect_err("init on a swarm member");
    ensure!(e.to_string().contains("already part of a swarm"), "{e}");

    let addr = format!("{}:2377", lab.addr(survivor)?);
    let e = lab
        .shoal(
            survivor,
            &[
                "swarm",
                "init",
                "--force-new-cluster",
                "--cert-expiry",
                "48h",
            ],
        )
        .expect_err("settings with force-new-cluster");
    ensure!(e.to_string().contains("keeps the swarm's settings"), "{e}");
    let t0 = std::time::Instant::now();
    let out = lab.shoal(
        survivor,
        &[
            "swarm",
            "init",
            "--force-new-cluster",
            "--advertise-addr",
            &addr,
        ],
    )?;
    ensure!(out.contains("Swarm initialized"), "{out}");
    println!(
        "FIGURE force_new_cluster_command_ms={}",
        t0.elapsed().as_millis()
    );
    // The old raft database is kept, readable by root only.
    let raft_dir = lab.host_data_dir(survivor)?.join("raft");
    let backups: Vec<_> = std::fs::read_dir(&raft_dir)?
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .contains("before-force-new-cluster")
        })
        .collect();
    ensure!(backups.len() == 1, "backups in {}", raft_dir.display());
    let mode = std::os::unix::fs::PermissionsExt::mode(&backups[0].metadata()?.permissions());
    ensure!(mode & 0o777 == 0o600, "backup mode {mode:o}");

    // One manager, the leader; the lost ones are Down and no longer managers.
    eventually("the survivor leads", WAIT, || {
        ensure!(lab.leader(survivor)? == survivor, "not yet");
        Ok(())
    })?;
    let info: Value = serde_json::from_str(&lab.shoal(survivor, &["info", "--format", "json"])?)?;
    ensure!(
        info["Managers"] == serde_json::json!([addr]) && info["IsLeader"] == true,
        "{info}"
    );
    // Every object kept, with the same ids and tokens; workers Ready again.
    ensure!(
        objects(&lab, survivor)? == objects_before,
        "objects changed"
    );
    ensure!(lab.join_token(survivor, "worker")? == worker_token);
    ensure!(lab.join_token(survivor, "manager")? == manager_token);
    eventually("workers ready, lost managers down", WAIT, || {
        let nodes = node_ids(&lab, survivor)?;
        ensure!(
            nodes.keys().collect::<BTreeSet<_>>() == nodes_before.keys().collect(),
            "node set changed: {nodes:?}"
        );
        for (id, n) in &nodes {
            let host = n["Hostname"].as_str().unwrap_or_default();
            if lost.contains(&host) {
                ensure!(
                    n["Status"] == "Down" && n["ManagerStatus"] == "",
                    "{host} {n}"
                );
            } else {
                ensure!(n["Status"] == "Ready", "{host} {n}");
            }
            ensure!(n["ID"] == id.as_str());
        }
        Ok(())
    })?;
    // Tasks on the nodes that are still there kept running; the lost ones are replaced.
    let tasks_after = converged(&lab, survivor, "web", 5)?;
    for (id, node) in &tasks_before {
        if !lost.contains(&node.as_str()) {
            ensure!(
                tasks_after.get(id) == Some(node),
                "task {id} on {node} did not survive: {tasks_after:?}"
            );
        }
    }
    // Writes work again.
    println!(
        "FIGURE force_new_cluster_to_converged_ms={}",
        t0.elapsed().as_millis()
    );
    lab.shoal(survivor, &["service", "scale", "--detach", "web=7"])?;
    converged(&lab, survivor, "web", 7)?;
    lab.shoal(survivor, &["secret", "create", "later", &secret_path])?;

    // A lost manager comes back empty and joins again as a manager, at its old address; the
    // objects of the lost managers are removed.
    let back = lost[0];
    lab.lab.start_daemon(back)?;
    let back_addr = format!("{}:2377", lab.addr(back)?);
    lab.shoal(
        back,
        &[
            "swarm",
            "join",
            "--token",
            &manager_token,
            "--advertise-addr",
            &back_addr,
            &addr,
        ],
    )?;
    for m in &lost {
        lab.shoal(survivor, &["node", "rm", &id_of(m)])?;
    }
    eventually("two managers, both reachable", WAIT, || {
        let nodes = lab.nodes(survivor)?;
        let mut managers: Vec<String> = nodes
            .iter()
            .filter(|n| n["ManagerStatus"] != "")
            .map(|n| {
                format!(
                    "{}={}",
                    n["Hostname"].as_str().unwrap_or_default(),
                    n["ManagerStatus"].as_str().unwrap_or_default()
                )
            })
            .collect();
        managers.sort();
        let mut want = vec![format!("{back}=Reachable"), format!("{survivor}=Leader")];
        want.sort();
        ensure!(managers == want, "{managers:?}");
        // The lost managers' objects are gone, the rejoined one is new.
        ensure!(nodes.len() == 4, "{} nodes", nodes.len());
        Ok(())
    })?;
    // The rejoined manager serves reads and writes of the recovered state.
    ensure!(objects(&lab, back)?[0] == objects_before[0]);
    lab.shoal(
        back,
        &["node", "update", "--label-add", "recovered=yes", "w1"],
    )?;
    let w1 = lab.shoal(survivor, &["node", "inspect", "w1"])?;
    ensure!(w1.contains("\"recovered\": \"yes\""), "{w1}");
    Ok(())
}
