//! Stacks on lab hosts (fake runtime): a compose application in the shape of Docker's
//! voting app deployed, redeployed unchanged (nothing moves), redeployed with one image
//! changed (only that service rolls), pruned, removed with nothing left; an invalid file
//! refused with its place and nothing created.

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, ensure, Result};
use harness::{eventually, LabGuard};
use serde_json::Value;

const HEARTBEAT: Duration = Duration::from_millis(500);
const WAIT: Duration = Duration::from_secs(60);

const APP: &str = r#"
version: "3.8"
services:
  vote:
    image: vote:${VOTE_TAG:-v1}
    ports: ["5000:80"]
    networks: [front]
    deploy:
      replicas: 2
    depends_on: [redis]
  redis:
    image: redis:alpine
    networks: [front]
    volumes: [redis-data:/data]
  worker:
    image: worker:v1
    networks: [front, back]
    secrets: [db_password]
    depends_on:
      db:
        condition: service_started
  db:
    image: postgres:15
    networks: [back]
    secrets: [db_password]
    configs:
      - source: db_init
        target: /docker-entrypoint-initdb.d/init.sql
  result:
    image: result:v1
    ports: ["5001:80"]
    networks: [back]
networks:
  front: {}
  back: {}
volumes:
  redis-data: {}
secrets:
  db_password:
    file: ./db_password.txt
configs:
  db_init:
    file: ./init.sql
"#;

fn json_lines(out: &str) -> Result<Vec<Value>> {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(|e| anyhow!("bad JSON line {l:?}: {e}")))
        .collect()
}

fn versions(lab: &LabGuard) -> Result<Vec<(String, u64)>> {
    let mut out = Vec::new();
    for s in json_lines(&lab.shoal("m1", &["stack", "services", "vote", "--format", "json"])?)? {
        let name = s["Name"].as_str().unwrap_or_default().to_string();
        let inspect: Value =
            serde_json::from_str(&lab.shoal("m1", &["service", "inspect", &name])?)?;
        let v = inspect[0]["version"]
            .as_u64()
            .or_else(|| inspect[0]["Version"]["Index"].as_u64())
            .ok_or_else(|| anyhow!("no version in {inspect}"))?;
        out.push((name, v));
    }
    out.sort();
    Ok(out)
}

fn all_running(lab: &LabGuard, want: usize) -> Result<()> {
    eventually("every task of the stack running", WAIT, || {
        let tasks = json_lines(&lab.shoal(
            "m1",
            &[
                "stack",
                "ps",
                "vote",
                "--format",
                "json",
                "--filter",
                "desired-state=running",
            ],
        )?)?;
        let running = tasks
            .iter()
            .filter(|t| {
                t["CurrentState"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("Running")
            })
            .count();
        ensure!(running == want, "{running} of {want} running");
        Ok(())
    })
}

fn deploy(lab: &LabGuard, file: &Path, extra: &[&str]) -> Result<String> {
    let f = file.display().to_string();
    let mut args = vec!["stack", "deploy", "-c", f.as_str()];
    args.extend_from_slice(extra);
    args.push("vote");
    lab.shoal("m1", &args)
}

#[test]
fn a_stack_deploys_redeploys_only_what_changed_prunes_and_goes_away() -> Result<()> {
    let lab = LabGuard::up("st", 1, 2, HEARTBEAT)?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("docker-compose.yml");
    std::fs::write(&file, APP)?;
    std::fs::write(dir.path().join("db_password.txt"), "s3cret")?;
    std::fs::write(dir.path().join("init.sql"), "create table votes (id text);")?;

    // An invalid file: its place named, nothing created.
    let bad = dir.path().join("bad.yml");
    std::fs::write(&bad, APP.replace("replicas: 2", "replicas: two"))?;
    let e = deploy(&lab, &bad, &[]).unwrap_err().to_string();
    ensure!(
        e.contains("bad.yml:9:17: services.vote.deploy.replicas: expected an integer"),
        "{e}"
    );
    ensure!(
        lab.shoal("m1", &["stack", "ls"])?.lines().count() == 1,
        "a header only"
    );

    let out = deploy(&lab, &file, &[])?;
    for line in [
        "Creating network vote_front",
        "Creating network vote_back",
        "Creating secret vote_db_password",
        "Creating config vote_db_init",
        "Creating service vote_redis",
        "Creating service vote_vote",
    ] {
        ensure!(out.contains(line), "{line:?} in {out}");
    }
    // depends_on: the dependency is created (and converged) first.
    let pos = |s: &str| out.find(s).unwrap_or(usize::MAX);
    ensure!(
        pos("Creating service vote_redis") < pos("Creating service vote_vote"),
        "{out}"
    );
    ensure!(
        pos("Creating service vote_db") < pos("Creating service vote_worker"),
        "{out}"
    );
    let ls = json_lines(&lab.shoal("m1", &["stack", "ls", "--format", "json"])?)?;
    ensure!(
        ls == [serde_json::json!({"Name": "vote", "Services": "5"})],
        "{ls:?}"
    );
    all_running(&lab, 6)?;
    // Go templates, as scripts use them.
    ensure!(
        lab.shoal(
            "m1",
            &["stack", "ls", "--format", "{{.Name}}: {{.Services}}"]
        )? == "vote: 5\n"
    );
    ensure!(
        lab.shoal("m1", &["info", "--format", "{{.Swarm.LocalNodeState}}"])?
            .trim()
            == "active"
    );
    let t = lab.shoal(
        "m1",
        &[
            "stack",
            "services",
            "vote",
            "--format",
            "table {{.Name}}\\t{{.Replicas}}",
        ],
    )?;
    ensure!(t.lines().next() == Some("NAME          REPLICAS"), "{t}");
    ensure!(t.lines().any(|l| l == "vote_vote     2/2"), "{t}");
    let hosts = lab.shoal("m1", &["node", "ls", "--format", "{{.Hostname}}"])?;
    ensure!(hosts.lines().count() == 3, "{hosts}");
    // Docker's filters.
    let count = |args: &[&str]| -> Result<usize> { Ok(lab.shoal("m1", args)?.lines().count()) };
    ensure!(
        count(&[
            "service",
            "ls",
            "-q",
            "--filter",
            "label=com.docker.stack.namespace=vote"
        ])? == 5
    );
    ensure!(
        count(&[
            "service",
            "ls",
            "-q",
            "--filter",
            "name=vote_v",
            "--filter",
            "name=vote_r"
        ])? == 3
    );
    ensure!(count(&["service", "ls", "-q", "--filter", "mode=global"])? == 0);
    ensure!(
        lab.shoal(
            "m1",
            &[
                "node",
                "ls",
                "--filter",
                "role=manager",
                "--format",
                "{{.Hostname}}"
            ]
        )? == "m1\n"
    );
    ensure!(
        count(&[
            "secret",
            "ls",
            "-q",
            "--filter",
            "label=com.docker.stack.namespace=vote"
        ])? == 1
    );
    ensure!(count(&["network", "ls", "-q", "--filter", "name=vote_"])? == 2);
    ensure!(count(&["stack", "ps", "vote", "-q", "--filter", "name=vote_vote.2"])? == 1);
    ensure!(
        count(&[
            "stack",
            "services",
            "vote",
            "-q",
            "--filter",
            "name=vote_db"
        ])? == 1
    );
    // Inspect in Docker's shape, with templates; `inspect` of any object.
    let svc: Value = serde_json::from_str(&lab.shoal("m1", &["service", "inspect", "vote_vote"])?)?;
    ensure!(
        svc[0]["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"] == "vote:v1",
        "{svc}"
    );
    ensure!(
        svc[0]["Spec"]["Mode"]["Replicated"]["Replicas"] == 2,
        "{svc}"
    );
    ensure!(
        svc[0]["Endpoint"]["Ports"][0]["PublishedPort"] == 5000,
        "{svc}"
    );
    let tpl = "{{.Spec.Name}} {{index .Spec.Labels \"com.docker.stack.namespace\"}}";
    ensure!(
        lab.shoal("m1", &["service", "inspect", "-f", tpl, "vote_vote"])? == "vote_vote vote\n"
    );
    ensure!(lab.shoal("m1", &["inspect", "-f", "{{.Name}}", "vote_front"])? == "vote_front\n");
    let secret = [
        "inspect",
        "--type",
        "secret",
        "-f",
        "{{.Spec.Name}}",
        "vote_db_password",
    ];
    ensure!(lab.shoal("m1", &secret)? == "vote_db_password\n");
    ensure!(lab.shoal("m1", &["node", "inspect", "-f", "{{.Spec.Role}}", "self"])? == "manager\n");
    let e = lab
        .shoal("m1", &["inspect", "nosuchthing"])
        .unwrap_err()
        .to_string();
    ensure!(e.contains("No such object: nosuchthing"), "{e}");
    let e = lab
        .shoal("m1", &["service", "ls", "--filter", "colour=red"])
        .unwrap_err()
        .to_string();
    ensure!(e.contains("invalid filter 'colour'"), "{e}");
    let svc: Value = serde_json::from_str(&lab.shoal("m1", &["service", "inspect", "vote_vote"])?)?;
    ensure!(
        svc.to_string().contains("com.docker.stack.namespace"),
        "{svc}"
    );

    // Unchanged: nothing is created or updated.
    let before = versions(&lab)?;
    let out = deploy(&lab, &file, &[])?;
    ensure!(
        !out.contains("Creating") && !out.contains("Updating"),
        "{out}"
    );
    ensure!(versions(&lab)? == before, "versions moved");

    // One image changed: that service alone is updated.
    std::fs::write(dir.path().join(".env"), "VOTE_TAG=v2\n")?;
    let out = deploy(&lab, &file, &[])?;
    let updates: Vec<&str> = out.lines().filter(|l| l.starts_with("Updating")).collect();
    ensure!(
        updates.len() == 1 && updates[0].starts_with("Updating service vote_vote"),
        "{out}"
    );
    let after = versions(&lab)?;
    for ((name, v0), (_, v1)) in before.iter().zip(&after) {
        ensure!((v0 == v1) == (name != "vote_vote"), "{name}: {v0} -> {v1}");
    }

    // Pruned: a service no longer in the file goes.
    let smaller = dir.path().join("smaller.yml");
    std::fs::write(
        &smaller,
        APP.replace(
            "  result:\n    image: result:v1\n    ports: [\"5001:80\"]\n    networks: [back]\n",
            "",
        ),
    )?;
    let out = deploy(&lab, &smaller, &["--prune"])?;
    ensure!(out.contains("Removing service vote_result"), "{out}");
    all_running(&lab, 5)?;

    // Removed: nothing of it left.
    let out = lab.shoal("m1", &["stack", "rm", "vote"])?;
    ensure!(out.contains("Removing service vote_vote"), "{out}");
    ensure!(out.contains("Removing network vote_back"), "{out}");
    eventually("nothing of the stack left", WAIT, || {
        for what in ["service", "network", "secret", "config"] {
            let ls = lab.shoal("m1", &[what, "ls"])?;
            ensure!(!ls.contains("vote_"), "{what} ls: {ls}");
        }
        Ok(())
    })?;
    let e = lab
        .shoal("m1", &["stack", "ps", "vote"])
        .unwrap_err()
        .to_string();
    ensure!(e.contains("Nothing found in stack: vote"), "{e}");
    Ok(())
}
