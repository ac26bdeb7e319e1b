//! Docker compatibility: the commands of Docker's swarm tutorial and a table of command
//! lines as scripts write them, on lab hosts (fake runtime), checking the shapes Docker
//! gives: table headers, JSON paths of `inspect`, Go-template output, filters, `-q`.

use std::time::Duration;

use anyhow::{anyhow, ensure, Context, Result};
use harness::{eventually, LabGuard};
use serde_json::Value;

const HEARTBEAT: Duration = Duration::from_millis(500);
const WAIT: Duration = Duration::from_secs(60);

/// The columns of a table's header line (cells are two or more spaces apart).
fn header(out: &str) -> Vec<String> {
    out.lines()
        .next()
        .unwrap_or_default()
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect()
}

fn json(out: &str) -> Result<Value> {
    serde_json::from_str(out).with_context(|| format!("not JSON: {out}"))
}

#[test]
fn docker_swarm_tutorial_and_scripting_shapes() -> Result<()> {
    let lab = LabGuard::up("cp", 1, 2, HEARTBEAT)?;
    let sh = |args: &[&str]| lab.shoal("m1", args);

    // docker info
    ensure!(sh(&["info", "--format", "{{.Swarm.LocalNodeState}}"])?.trim() == "active");
    ensure!(sh(&["info", "--format", "{{.Swarm.ControlAvailable}}"])?.trim() == "true");

    // docker node ls
    let nodes = sh(&["node", "ls"])?;
    ensure!(
        header(&nodes)
            == [
                "ID",
                "HOSTNAME",
                "STATUS",
                "AVAILABILITY",
                "MANAGER STATUS",
                "ENGINE VERSION"
            ],
        "{nodes}"
    );
    eventually("three nodes Ready", WAIT, || {
        let st = sh(&["node", "ls", "--format", "{{.Hostname}} {{.Status}}"])?;
        ensure!(
            st.lines().filter(|l| l.ends_with(" Ready")).count() == 3,
            "{st}"
        );
        Ok(())
    })?;

    // docker service create --replicas 1 --name helloworld alpine ping docker.com
    let id = sh(&[
        "service",
        "create",
        "-d",
        "--replicas",
        "1",
        "--name",
        "helloworld",
        "alpine",
        "ping",
        "docker.com",
    ])?;
    ensure!(id.trim().len() == 25, "an id: {id}");
    // docker service ls
    let ls = sh(&["service", "ls"])?;
    ensure!(
        header(&ls) == ["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"],
        "{ls}"
    );
    eventually("helloworld 1/1", WAIT, || {
        let r = sh(&["service", "ls", "--format", "{{.Name}}: {{.Replicas}}"])?;
        ensure!(r.trim() == "helloworld: 1/1", "{r}");
        Ok(())
    })?;
    // docker service inspect --pretty helloworld
    let pretty = sh(&["service", "inspect", "--pretty", "helloworld"])?;
    for want in [
        "ID:",
        "Name:\t\thelloworld",
        "Service Mode:\tReplicated",
        " Replicas:\t1",
        "UpdateConfig:",
        "RollbackConfig:",
        "ContainerSpec:",
        " Image:",
        "Endpoint Mode:\tvip",
    ] {
        ensure!(pretty.contains(want), "{want:?} missing in:\n{pretty}");
    }
    // docker service inspect helloworld: Docker's JSON paths.
    let v = json(&sh(&["service", "inspect", "helloworld"])?)?;
    let s = &v[0];
    ensure!(s["ID"] == id.trim(), "{s}");
    ensure!(s["Spec"]["Name"] == "helloworld", "{s}");
    let c = &s["Spec"]["TaskTemplate"]["ContainerSpec"];
    ensure!(
        c["Image"] == "alpine" && c["Args"] == serde_json::json!(["ping", "docker.com"]),
        "{c}"
    );
    ensure!(s["Spec"]["Mode"]["Replicated"]["Replicas"] == 1, "{s}");
    ensure!(s["Spec"]["UpdateConfig"]["Parallelism"] == 1, "{s}");
    ensure!(s["Version"]["Index"].as_u64().is_some(), "{s}");
    ensure!(
        s["Spec"]["TaskTemplate"]["RestartPolicy"]["Condition"] == "any",
        "{s}"
    );
    // docker service ps helloworld
    let ps = sh(&["service", "ps", "helloworld"])?;
    ensure!(
        header(&ps)
            == [
                "ID",
                "NAME",
                "IMAGE",
                "NODE",
                "DESIRED STATE",
                "CURRENT STATE",
                "ERROR",
                "PORTS"
            ],
        "{ps}"
    );
    ensure!(
        sh(&[
            "service",
            "ps",
            "-q",
            "--filter",
            "desired-state=running",
            "helloworld"
        ])?
        .lines()
        .count()
            == 1
    );
    ensure!(
        sh(&["service", "ps", "--format", "{{.Name}}", "helloworld"])?.trim() == "helloworld.1"
    );
    // docker service scale helloworld=5
    let out = sh(&["service", "scale", "-d", "helloworld=5"])?;
    ensure!(
        out.lines().next() == Some("helloworld scaled to 5"),
        "{out}"
    );
    eventually("helloworld 5/5", WAIT, || {
        let r = sh(&[
            "service",
            "ls",
            "--filter",
            "name=hello",
            "--format",
            "{{.Replicas}}",
        ])?;
        ensure!(r.trim() == "5/5", "{r}");
        Ok(())
    })?;
    // docker service rm helloworld
    ensure!(sh(&["service", "rm", "helloworld"])?.trim() == "helloworld");

    // Rolling updates: docker service create --replicas 3 --name redis --update-delay 10s
    // redis:3.0.6; docker service update --image redis:3.0.7 redis
    sh(&[
        "service",
        "create",
        "-d",
        "--replicas",
        "3",
        "--name",
        "redis",
        "--update-delay",
        "10s",
        "redis:3.0.6",
    ])?;
    ensure!(
        sh(&[
            "service",
            "inspect",
            "-f",
            "{{.Spec.UpdateConfig.Delay}}",
            "redis"
        ])?
        .trim()
            == "10000000000"
    );
    sh(&[
        "service",
        "update",
        "-d",
        "--update-delay",
        "0s",
        "--image",
        "redis:3.0.7",
        "redis",
    ])?;
    ensure!(
        sh(&[
            "service",
            "inspect",
            "-f",
            "{{.Spec.TaskTemplate.ContainerSpec.Image}}",
            "redis"
        ])?
        .trim()
            == "redis:3.0.7"
    );
    eventually("the update done", WAIT, || {
        let st = sh(&[
            "service",
            "inspect",
            "-f",
            "{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}",
            "redis",
        ])?;
        ensure!(st.trim() == "completed", "{st}");
        Ok(())
    })?;

    // Drain a node: docker node update --availability drain w1
    ensure!(sh(&["node", "update", "--availability", "drain", "w1"])?.trim() == "w1");
    ensure!(sh(&["node", "inspect", "--pretty", "w1"])?.contains("Availability:\t\tDrain"));
    ensure!(sh(&["node", "inspect", "-f", "{{.Spec.Availability}}", "w1"])?.trim() == "drain");
    sh(&["node", "update", "--availability", "active", "w1"])?;
    ensure!(
        sh(&["node", "ls", "-q", "--filter", "role=worker"])?
            .lines()
            .count()
            == 2
    );

    // The routing mesh: docker service create --name my-web --publish
    // published=8080,target=80 --replicas 2 nginx
    sh(&[
        "service",
        "create",
        "-d",
        "--name",
        "my-web",
        "--publish",
        "published=8080,target=80",
        "--replicas",
        "2",
        "nginx",
    ])?;
    let ports = json(&sh(&[
        "service",
        "inspect",
        "-f",
        "{{json .Endpoint.Ports}}",
        "my-web",
    ])?)?;
    ensure!(
        ports[0]["PublishedPort"] == 8080 && ports[0]["TargetPort"] == 80,
        "{ports}"
    );
    ensure!(
        ports[0]["PublishMode"] == "ingress" && ports[0]["Protocol"] == "tcp",
        "{ports}"
    );
    let ls = sh(&[
        "service",
        "ls",
        "--filter",
        "name=my-web",
        "--format",
        "{{.Ports}}",
    ])?;
    ensure!(ls.trim() == "*:8080->80/tcp", "{ls}");

    // Networks: docker network create --driver overlay my-network
    let nid = sh(&["network", "create", "--driver", "overlay", "my-network"])?;
    ensure!(!nid.trim().is_empty());
    let nls = sh(&["network", "ls"])?;
    ensure!(
        header(&nls) == ["NETWORK ID", "NAME", "DRIVER", "SCOPE"],
        "{nls}"
    );
    ensure!(
        sh(&[
            "network",
            "inspect",
            "-f",
            "{{.Driver}} {{.Scope}}",
            "my-network"
        ])?
        .trim()
            == "overlay swarm"
    );
    ensure!(
        sh(&["network", "ls", "-q", "--filter", "name=my-network"])?
            .lines()
            .count()
            == 1
    );

    // Secrets: docker secret create my_secret FILE; docker secret ls; inspect.
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("s.txt");
    std::fs::write(&file, "s3cret")?;
    let f = file.display().to_string();
    sh(&["secret", "create", "--label", "env=prod", "my_secret", &f])?;
    let sls = sh(&["secret", "ls"])?;
    ensure!(
        header(&sls) == ["ID", "NAME", "DRIVER", "CREATED", "UPDATED"],
        "{sls}"
    );
    let sv = json(&sh(&["secret", "inspect", "my_secret"])?)?;
    ensure!(
        sv[0]["Spec"]["Name"] == "my_secret" && sv[0]["Spec"]["Labels"]["env"] == "prod",
        "{sv}"
    );
    ensure!(!sv.to_string().contains("s3cret"), "secret data in inspect");
    ensure!(
        sh(&[
            "secret",
            "ls",
            "--format",
            "{{.Name}}",
            "--filter",
            "label=env=prod"
        ])?
        .trim()
            == "my_secret"
    );
    let cls = sh(&["config", "ls"])?;
    ensure!(
        header(&cls) == ["ID", "NAME", "CREATED", "UPDATED"],
        "{cls}"
    );

    // Generic inspect and a missing object.
    ensure!(sh(&["inspect", "-f", "{{.Spec.Name}}", "redis"])?.trim() == "redis");
    let e = sh(&["inspect", "nothing-here"]).map(|_| ()).unwrap_err();
    ensure!(
        e.to_string().contains("No such object: nothing-here"),
        "{e}"
    );
    let e = sh(&["service", "ls", "--format", "{{.Name"])
        .map(|_| ())
        .err()
        .ok_or_else(|| anyhow!("a bad template was taken"))?;
    ensure!(e.to_string().contains("template"), "{e}");
    Ok(())
}
