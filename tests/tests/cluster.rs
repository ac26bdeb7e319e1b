//! Multi-host cluster tests on lab hosts (network namespaces); need root.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Result};
use harness::{call_as, eventually, node_identity, LabGuard};
use serde_json::Value;

const HEARTBEAT: Duration = Duration::from_millis(500);
const WAIT: Duration = Duration::from_secs(30);

fn managers_of(nodes: &[Value]) -> Vec<String> {
    nodes
        .iter()
        .filter(|n| n["ManagerStatus"] != "")
        .map(|n| {
            format!(
                "{}={}",
                n["Hostname"].as_str().unwrap_or(""),
                n["ManagerStatus"].as_str().unwrap_or("")
            )
        })
        .collect()
}

/// The replicated state a restart must preserve: the tokens, and every node's identity and spec.
fn replicated_state(lab: &LabGuard, from: &str) -> Result<BTreeMap<String, Value>> {
    let mut state = BTreeMap::new();
    state.insert(
        "worker-token".into(),
        Value::String(lab.shoal(from, &["swarm", "join-token", "-q", "worker"])?),
    );
    state.insert(
        "manager-token".into(),
        Value::String(lab.shoal(from, &["swarm", "join-token", "-q", "manager"])?),
    );
    for n in lab.nodes(from)? {
        let host = n["Hostname"].as_str().unwrap_or_default().to_string();
        let inspect: Value = serde_json::from_str(&lab.shoal(from, &["node", "inspect", &host])?)?;
        let i = &inspect[0];
        state.insert(
            host,
            serde_json::json!({"ID": i["ID"], "Spec": i["Spec"], "RaftID": i["RaftID"], "Addr": i["Status"]["Addr"], "CreatedAt": i["CreatedAt"]}),
        );
    }
    Ok(state)
}

#[test]
fn lab_failover_restart_and_full_restart() -> Result<()> {
    let mut lab = LabGuard::up("fo", 3, 2, HEARTBEAT)?;

    // All five Ready, one leader, two reachable managers, two workers.
    let nodes = lab.nodes("m1")?;
    ensure!(nodes.len() == 5, "expected 5 nodes, got {nodes:?}");
    ensure!(
        nodes
            .iter()
            .all(|n| n["Status"] == "Ready" && n["Availability"] == "Active"),
        "{nodes:?}"
    );
    let mut statuses: Vec<String> = nodes
        .iter()
        .map(|n| n["ManagerStatus"].as_str().unwrap_or("?").to_string())
        .collect();
    statuses.sort();
    ensure!(
        statuses == ["", "", "Leader", "Reachable", "Reachable"],
        "manager statuses {statuses:?}"
    );

    // kill -9 the leader: another manager accepts writes.
    let old = lab.leader("m1")?;
    let survivor = ["m1", "m2", "m3"].into_iter().find(|m| *m != old).unwrap();
    let t0 = Instant::now();
    lab.lab.kill_daemon(&old)?;
    eventually("a write after failover", WAIT, || {
        lab.shoal(
            survivor,
            &["node", "update", "--label-add", "failover=yes", "w1"],
        )
        .map(|_| ())
    })?;
    let failover = t0.elapsed();
    println!(
        "FIGURE failover_to_accepted_write_ms={}",
        failover.as_millis()
    );
    let new = eventually("a new leader", WAIT, || {
        let l = lab.leader(survivor)?;
        ensure!(l != old, "still {l}");
        Ok(l)
    })?;
    eventually("old leader seen down", WAIT, || {
        let n = lab.node(survivor, &old)?;
        ensure!(
            n["Status"] == "Down" && n["ManagerStatus"] == "Unreachable",
            "{n}"
        );
        Ok(())
    })?;

    // The killed manager comes back and rejoins as Reachable.
    lab.lab.start_daemon(&old)?;
    eventually("restarted manager reachable", WAIT, || {
        let n = lab.node(&old, &old)?;
        ensure!(
            n["Status"] == "Ready" && n["ManagerStatus"] == "Reachable",
            "{n}"
        );
        Ok(())
    })?;
    ensure!(lab.leader(&old)? == new, "leadership moved unexpectedly");
    let labels = lab.shoal(&old, &["node", "inspect", "w1"])?;
    ensure!(
        labels.contains("\"failover\": \"yes\""),
        "write made during failover lost: {labels}"
    );

    // Restart all three managers with kill -9: the replicated state is identical.
    lab.shoal("m1", &["node", "update", "--availability", "drain", "w2"])?;
    let before = replicated_state(&lab, "m1")?;
    for m in ["m1", "m2", "m3"] {
        lab.lab.kill_daemon(m)?;
    }
    for m in ["m1", "m2", "m3"] {
        lab.lab.start_daemon(m)?;
    }
    eventually("cluster back after full restart", WAIT, || {
        let nodes = lab.nodes("m1")?;
        ensure!(
            nodes.iter().all(|n| n["Status"] == "Ready"),
            "{:?}",
            managers_of(&nodes)
        );
        lab.leader("m1").map(|_| ())
    })?;
    let after = replicated_state(&lab, "m2")?;
    ensure!(
        before == after,
        "state changed across restart:\nbefore {before:#?}\nafter {after:#?}"
    );
    Ok(())
}

#[test]
fn lab_membership_tokens_and_roles() -> Result<()> {
    let mut lab = LabGuard::up("mb", 3, 2, HEARTBEAT)?;

    // Demote m3: it leaves raft and gets a worker certificate; promote it back.
    lab.shoal("m1", &["node", "demote", "m3"])?;
    eventually("m3 demoted", WAIT, || {
        let n = lab.node("m1", "m3")?;
        ensure!(n["ManagerStatus"] == "", "{n}");
        let err = lab
            .shoal("m3", &["node", "ls"])
            .err()
            .ok_or_else(|| anyhow!("m3 still serves node ls"))?;
        ensure!(err.to_string().contains("not a swarm manager"), "{err}");
        Ok(())
    })?;
    lab.shoal("m1", &["node", "promote", "m3"])?;
    eventually("m3 promoted", WAIT, || {
        let n = lab.node("m3", "m3")?;
        ensure!(n["ManagerStatus"] == "Reachable", "{n}");
        Ok(())
    })?;
    let err = lab.shoal("m1", &["node", "demote", "m1", "m2", "m3"]).err();
    ensure!(
        err.is_some_and(|e| e.to_string().contains("last manager")),
        "demoting every manager was accepted"
    );
    // Promote the two that were demoted (promote is idempotent), then every manager serves
    // the API itself once its daemon has switched roles.
    lab.shoal("m3", &["node", "promote", "m1", "m2"])?;
    eventually("managers restored", WAIT, || {
        for m in ["m1", "m2", "m3"] {
            let nodes = lab.nodes(m)?;
            ensure!(
                managers_of(&nodes).len() == 3 && nodes.iter().all(|n| n["Status"] == "Ready"),
                "{:?}",
                managers_of(&nodes)
            );
        }
        Ok(())
    })?;

    // Drain.
    lab.shoal("m2", &["node", "update", "--availability", "drain", "w1"])?;
    ensure!(lab.node("m1", "w1")?["Availability"] == "Drain");
    let bad = lab
        .shoal(
            "m1",
            &["node", "update", "--availability", "sideways", "w1"],
        )
        .err();
    ensure!(
        bad.is_some_and(|e| e.to_string().contains("invalid availability")),
        "bad availability accepted"
    );

    // A worker's certificate is refused on control and raft calls; a manager's is not.
    let m1_addr = format!("{}:2377", lab.addr("m1")?);
    let worker_id = node_identity(&lab.host_data_dir("w2")?)?;
    let (control, raft) = call_as(&lab.netns("w2")?, &m1_addr, worker_id)?;
    ensure!(
        control == tonic::Code::PermissionDenied && raft == tonic::Code::PermissionDenied,
        "worker cert got {control:?} / {raft:?}"
    );
    let manager_id = node_identity(&lab.host_data_dir("m2")?)?;
    let (control, raft) = call_as(&lab.netns("m2")?, &m1_addr, manager_id)?;
    ensure!(
        control == tonic::Code::Ok && raft == tonic::Code::InvalidArgument,
        "manager cert got {control:?} / {raft:?}"
    );

    // Wrong and rotated tokens are refused and change nothing.
    let w3 = lab.lab.add_host(false)?;
    let w3_ip = lab.addr(&w3)?;
    let m1 = lab.addr("m1")?;
    let old_token = lab.join_token("m1", "worker")?;
    let garbage = lab
        .shoal(
            &w3,
            &[
                "swarm",
                "join",
                "--token",
                "SWMTKN-1-nope",
                "--advertise-addr",
                &w3_ip,
                &m1,
            ],
        )
        .err();
    ensure!(
        garbage.is_some_and(|e| e.to_string().contains("invalid join token")),
        "garbage token accepted"
    );
    let forged = format!("SWMTKN-1-{}-{}", "0".repeat(64), "a".repeat(25));
    let forged = lab
        .shoal(
            &w3,
            &[
                "swarm",
                "join",
                "--token",
                &forged,
                "--advertise-addr",
                &w3_ip,
                &m1,
            ],
        )
        .err();
    ensure!(
        forged.is_some_and(|e| e.to_string().contains("does not match")),
        "token with a foreign CA digest accepted"
    );
    lab.shoal("m1", &["swarm", "join-token", "--rotate", "-q", "worker"])?;
    let rotated = lab
        .shoal(
            &w3,
            &[
                "swarm",
                "join",
                "--token",
                &old_token,
                "--advertise-addr",
                &w3_ip,
                &m1,
            ],
        )
        .err();
    ensure!(
        rotated.is_some_and(|e| e.to_string().contains("rotated")),
        "rotated token accepted"
    );
    ensure!(
        lab.nodes("m1")?.len() == 5,
        "a refused join changed the node list"
    );
    let new_token = lab.join_token("m1", "worker")?;
    lab.shoal(
        &w3,
        &[
            "swarm",
            "join",
            "--token",
            &new_token,
            "--advertise-addr",
            &w3_ip,
            &m1,
        ],
    )?;
    eventually("w3 ready", WAIT, || {
        ensure!(lab.node("m1", &w3)?["Status"] == "Ready");
        Ok(())
    })?;

    // node rm: refused while the node is up, done once it is down.
    let up = lab.shoal("m1", &["node", "rm", "w1"]).err();
    ensure!(
        up.is_some_and(|e| e.to_string().contains("not down")),
        "removing a live node was accepted"
    );
    let killed = Instant::now();
    lab.lab.kill_daemon("w2")?;
    eventually("w2 down", WAIT, || {
        ensure!(lab.node("m1", "w2")?["Status"] == "Down");
        Ok(())
    })?;
    // Down is declared after 3 missed periods (1.5 s here); allow scheduling and polling slack.
    let down_after = killed.elapsed();
    println!(
        "FIGURE worker_down_after_kill_ms={} (heartbeat {}ms)",
        down_after.as_millis(),
        HEARTBEAT.as_millis()
    );
    ensure!(
        down_after < HEARTBEAT * 3 + Duration::from_millis(1500),
        "down only after {down_after:?}"
    );
    lab.shoal("m1", &["node", "rm", "w2"])?;
    ensure!(lab.node("m1", "w2").is_err(), "w2 still listed after rm");
    let unknown = lab.shoal("m1", &["node", "rm", "nosuchnode"]).err();
    ensure!(
        unknown.is_some_and(|e| e.to_string().contains("not found")),
        "rm of an unknown node"
    );

    // A 4th manager joins, becomes a raft member, and is removed again.
    let m4 = lab.lab.add_host(true)?;
    let m4_ip = lab.addr(&m4)?;
    let mtoken = lab.join_token("m2", "manager")?;
    lab.shoal(
        &m4,
        &[
            "swarm",
            "join",
            "--token",
            &mtoken,
            "--advertise-addr",
            &m4_ip,
            &m1,
        ],
    )?;
    eventually("4 managers", WAIT, || {
        let nodes = lab.nodes(&m4)?;
        let ms = managers_of(&nodes);
        ensure!(
            ms.len() == 4 && lab.node("m1", &m4)?["ManagerStatus"] == "Reachable",
            "{ms:?}"
        );
        let info: Value = serde_json::from_str(&lab.shoal("m1", &["info", "--format", "json"])?)?;
        ensure!(
            info["Managers"].as_array().map(|a| a.len()) == Some(4),
            "raft members {}",
            info["Managers"]
        );
        Ok(())
    })?;
    lab.shoal("m1", &["node", "demote", &m4])?;
    eventually("m4 out of raft", WAIT, || {
        let info: Value = serde_json::from_str(&lab.shoal("m1", &["info", "--format", "json"])?)?;
        ensure!(
            info["Managers"].as_array().map(|a| a.len()) == Some(3),
            "raft members {}",
            info["Managers"]
        );
        let mi: Value = serde_json::from_str(&lab.shoal(&m4, &["info", "--format", "json"])?)?;
        ensure!(mi["Role"] == "worker", "m4 role {}", mi["Role"]);
        Ok(())
    })?;
    lab.shoal(&m4, &["swarm", "leave"])?;
    eventually("m4 down", WAIT, || {
        ensure!(lab.node("m1", &m4)?["Status"] == "Down");
        Ok(())
    })?;
    lab.shoal("m1", &["node", "rm", &m4])?;
    let nodes = lab.nodes("m1")?;
    let hosts: Vec<&str> = nodes
        .iter()
        .filter_map(|n| n["Hostname"].as_str())
        .collect();
    if hosts != ["m1", "m2", "m3", "w1", w3.as_str()] {
        bail!("unexpected final node set {hosts:?}");
    }

    // A manager that does not lead forwards the calls it gets to the leader: a write (only
    // the leader commits) and a list larger than gRPC's default 4 MiB message (the follower
    // passes the leader's answer through without decoding it).
    let leader = lab.leader("m1")?;
    let follower = ["m1", "m2", "m3"]
        .into_iter()
        .find(|m| *m != leader)
        .expect("a follower");
    lab.shoal(
        follower,
        &["node", "update", "--label-add", "via=follower", "w1"],
    )?;
    let w1 = lab.shoal(&leader, &["node", "inspect", "w1"])?;
    ensure!(w1.contains("\"via\": \"follower\""), "{w1}");
    let env: Vec<String> = (0..8)
        .map(|i| format!("E{i}={}", "x".repeat(30_000)))
        .collect();
    const BIG: usize = 24;
    for n in 0..BIG {
        let name = format!("big{n}");
        let mut args = vec!["service", "create", "--detach", "--replicas", "0"];
        args.extend(["--name", &name]);
        for e in &env {
            args.extend(["--env", e.as_str()]);
        }
        args.push("busybox:1.36");
        lab.shoal(follower, &args)?;
    }
    // The leader's answer to ListServices holds every spec: about 5.8 MB.
    let listed = lab.shoal(follower, &["service", "ls"])?;
    ensure!(
        (0..BIG).all(|n| listed.contains(&format!("big{n} "))),
        "{listed}"
    );
    ensure!(
        lab.leader(follower)? == leader,
        "leadership moved during the check"
    );

    // A manager that joins raft again after those large writes catches up through them:
    // appends are cut to what fits the message timeout (before, hundreds of 240 KB entries
    // went in one message that timed out every time, and the manager never caught up).
    lab.shoal(&leader, &["node", "demote", follower])?;
    eventually("the follower demoted", WAIT, || {
        let n = lab.node(&leader, follower)?;
        ensure!(n["ManagerStatus"] == "", "{n}");
        Ok(())
    })?;
    lab.shoal(&leader, &["node", "promote", follower])?;
    eventually("the promoted manager caught up", WAIT, || {
        let n = lab.node(follower, follower)?;
        ensure!(n["ManagerStatus"] == "Reachable", "{n}");
        let listed = lab.shoal(follower, &["service", "ls"])?;
        ensure!(listed.contains(&format!("big{} ", BIG - 1)), "{listed}");
        Ok(())
    })?;
    Ok(())
}

#[test]
fn lab_certificates_renew_before_expiry() -> Result<()> {
    let lab = LabGuard::up("ce", 1, 1, HEARTBEAT)?;
    // Shortest allowed validity: nodes renew at half-life, so within ~15 s.
    lab.shoal("m1", &["swarm", "update", "--cert-expiry", "30s"])?;
    let expiry = |host: &str| -> Result<String> {
        let v: Value = serde_json::from_str(&lab.shoal("m1", &["node", "inspect", host])?)?;
        Ok(v[0]["Description"]["TLSInfo"]["CertNotAfter"]
            .as_str()
            .unwrap_or_default()
            .to_string())
    };
    let first = expiry("w1")?;
    let too_short = lab
        .shoal("m1", &["swarm", "update", "--cert-expiry", "1s"])
        .err();
    ensure!(
        too_short.is_some_and(|e| e.to_string().contains("at least")),
        "1s validity accepted"
    );
    // The 90-day certificates outlive the new policy, so they are replaced at once; the new
    // ones then renew at half-life, every ~15 s.
    let mut seen = vec![first.clone()];
    eventually(
        "w1's certificate replaced, then renewed",
        Duration::from_secs(60),
        || {
            let now = expiry("w1")?;
            if seen.last() != Some(&now) {
                seen.push(now);
            }
            ensure!(
                seen.len() >= 3,
                "certificate expiries seen so far: {seen:?}"
            );
            Ok(())
        },
    )?;
    // Renewal is at half-life, not on every heartbeat.
    ensure!(seen.len() == 3, "renewed too often: {seen:?}");
    let node_ls = lab.nodes("m1")?;
    ensure!(
        node_ls.iter().all(|n| n["Status"] == "Ready"),
        "{node_ls:?}"
    );
    Ok(())
}
