//! Real containers on lab hosts: images pulled from a registry of the lab's own network, run
//! by runc through shoal's runtime, reached on their container addresses; scale, rolling
//! update and rollback; cgroup limits and an OOM kill; secrets; logs; exec; live restore
//! across a SIGKILL of the worker's daemon; restart attempts of an on-failure policy.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use harness::{eventually, in_netns, LabGuard};
use proto::spec::TaskState;
use serde_json::Value;

const HEARTBEAT: Duration = Duration::from_millis(500);
const WAIT: Duration = Duration::from_secs(90);

fn lines(out: &str) -> Result<Vec<Value>> {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(|e| anyhow!("bad JSON line {l:?}: {e}")))
        .collect()
}

fn tasks(lab: &LabGuard, service: &str, running_only: bool) -> Result<Vec<Value>> {
    let mut args = vec!["service", "ps", "--no-trunc", "--format", "json"];
    if running_only {
        args.extend(["--filter", "desired-state=running"]);
    }
    args.push(service);
    lines(&lab.shoal("m1", &args)?)
}

/// Every desired-running task of `service` is RUNNING, and there are `n` of them.
fn all_running(lab: &LabGuard, service: &str, n: usize) -> Result<Vec<Value>> {
    let ts = tasks(lab, service, true)?;
    let running: Vec<Value> = ts
        .iter()
        .filter(|t| {
            t["CurrentState"]
                .as_str()
                .unwrap_or("")
                .starts_with("Running")
        })
        .cloned()
        .collect();
    if running.len() != n || ts.len() != n {
        // Show every task, with its error, not only the desired-running ones.
        let all: Vec<String> = tasks(lab, service, false)?
            .iter()
            .take(12)
            .map(|t| {
                format!(
                    "{} {} {} {}",
                    t["Name"], t["Node"], t["CurrentState"], t["Error"]
                )
            })
            .collect();
        bail!("{} of {n} running; tasks: {all:#?}", running.len());
    }
    Ok(running)
}

/// `service create -d ARGS` on m1.
fn create(lab: &LabGuard, args: &[&str]) -> Result<()> {
    let mut all = vec!["service", "create", "-d"];
    all.extend_from_slice(args);
    lab.shoal("m1", &all).map(|_| ())
}

/// The ERROR of `service`'s first task comes to contain `needle`.
fn first_error_contains(lab: &LabGuard, what: &str, service: &str, needle: &str) -> Result<()> {
    eventually(what, WAIT, || {
        let ts = tasks(lab, service, false)?;
        let err = ts
            .first()
            .and_then(|t| t["Error"].as_str())
            .unwrap_or_default();
        ensure!(err.contains(needle), "{ts:#?}");
        Ok(())
    })
}

/// The address the node-local network leased to a task (`<data>/net/leases/<ip>`).
fn task_ip(lab: &LabGuard, node: &str, task_id: &str) -> Result<String> {
    let dir = lab.host_data_dir(node)?.join("net/leases");
    for e in std::fs::read_dir(&dir).with_context(|| dir.display().to_string())? {
        let e = e?;
        if std::fs::read_to_string(e.path())? == task_id {
            return Ok(e.file_name().to_string_lossy().into_owned());
        }
    }
    bail!("no lease for {task_id} on {node}")
}

/// `GET /` on `ip:80` from inside `node`'s namespace; the body.
fn http_get(lab: &LabGuard, node: &str, ip: &str) -> Result<String> {
    let addr: SocketAddr = format!("{ip}:80").parse()?;
    in_netns(&lab.netns(node)?, move || -> Result<String> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")?;
        let mut buf = String::new();
        s.read_to_string(&mut buf)?;
        let body = buf
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.trim().to_string())
            .ok_or_else(|| anyhow!("no HTTP body in {buf:?}"))?;
        Ok(body)
    })?
}

/// Every running replica of `service` answers on its own address with `expect(slot)`.
fn replicas_answer(
    lab: &LabGuard,
    service: &str,
    n: usize,
    expect: impl Fn(&str) -> String,
) -> Result<()> {
    let ts = all_running(lab, service, n)?;
    for t in ts {
        let id = t["ID"].as_str().unwrap_or_default();
        let node = t["Node"].as_str().unwrap_or_default();
        let name = t["Name"].as_str().unwrap_or_default();
        let slot = name.rsplit('.').next().unwrap_or_default();
        let ip = task_ip(lab, node, id)?;
        let body = http_get(lab, node, &ip)?;
        let want = expect(slot);
        ensure!(
            body == want,
            "{name} on {node} ({ip}) answered {body:?}, want {want:?}"
        );
    }
    Ok(())
}

fn read_trim(p: &Path) -> Result<String> {
    Ok(std::fs::read_to_string(p)
        .with_context(|| p.display().to_string())?
        .trim()
        .to_string())
}

/// Files below `root` on the same filesystem as `root` (mounts such as a task's secrets
/// tmpfs are not the node's disk) containing `needle`.
fn files_containing(root: &Path, needle: &[u8]) -> Vec<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let Ok(dev) = std::fs::metadata(root).map(|m| m.dev()) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if m.dev() != dev {
                continue;
            }
            if m.is_dir() {
                stack.push(p);
            } else if m.is_file() && m.len() < 64 << 20 {
                if let Ok(data) = std::fs::read(&p) {
                    if data.windows(needle.len()).any(|w| w == needle) {
                        found.push(p);
                    }
                }
            }
        }
    }
    found
}

#[test]
fn lab_real_containers() -> Result<()> {
    // The lab's registry listens on its underlay, reached by every host and nothing else,
    // and holds web:v1, web:v2 (busybox httpd answering "<hostname> v1|v2") and sleep:1,
    // built from busybox-static and pushed with skopeo.
    let args = ["--runtime".to_string(), "oci".to_string()];
    let lab = LabGuard::up_with("ct", 1, 2, HEARTBEAT, &args, true)?;
    let reg = lab
        .lab
        .registry
        .clone()
        .ok_or_else(|| anyhow!("the lab has no registry"))?;
    let web1 = format!("{reg}/web:v1");
    let web2 = format!("{reg}/web:v2");
    let sleep = format!("{reg}/sleep:1");

    // Six replicas over the three nodes, each answering with its own hostname (a template,
    // spaces inside the braces as Go templates allow).
    create(
        &lab,
        &[
            "--name",
            "web",
            "--replicas",
            "6",
            "--hostname",
            "{{ .Service.Name }}-{{.Task.Slot}}",
            "--update-delay",
            "0s",
            &web1,
        ],
    )?;
    eventually("6 web replicas answer", WAIT, || {
        replicas_answer(&lab, "web", 6, |slot| format!("web-{slot} v1"))
    })?;
    let nodes: std::collections::BTreeSet<String> = all_running(&lab, "web", 6)?
        .iter()
        .map(|t| t["Node"].as_str().unwrap_or_default().to_string())
        .collect();
    ensure!(nodes.len() == 3, "replicas on {nodes:?}");

    // Scale, rolling update to v2, rollback to v1.
    lab.shoal("m1", &["service", "scale", "-d", "web=3"])?;
    eventually("3 web replicas", WAIT, || {
        replicas_answer(&lab, "web", 3, |slot| format!("web-{slot} v1"))
    })?;
    lab.shoal("m1", &["service", "update", "-q", "--image", &web2, "web"])?;
    eventually("web on v2", WAIT, || {
        replicas_answer(&lab, "web", 3, |slot| format!("web-{slot} v2"))
    })?;
    lab.shoal("m1", &["service", "rollback", "-q", "web"])?;
    eventually("web back on v1", WAIT, || {
        replicas_answer(&lab, "web", 3, |slot| format!("web-{slot} v1"))
    })?;

    // Logs come from every node through the managers.
    let logs = lab.shoal("m1", &["service", "logs", "web"])?;
    ensure!(logs.matches("serving").count() >= 3, "logs: {logs}");
    // Tasks that ended (scaled down, replaced by the update and the rollback) keep their
    // logs while the managers keep them in the history.
    let task_ids = |out: &str| -> std::collections::BTreeSet<String> {
        out.lines()
            .filter(|l| l.contains("| serving"))
            .filter_map(|l| l.split('@').next()?.rsplit('.').next().map(str::to_string))
            .collect()
    };
    let all = task_ids(&lab.shoal("m1", &["service", "logs", "--no-trunc", "web"])?);
    ensure!(all.len() > 3, "only the running tasks' logs: {all:?}");
    let raw = lab.shoal("m1", &["service", "logs", "--raw", "--tail", "1", "web"])?;
    ensure!(raw.lines().all(|l| l == "serving"), "--raw: {raw}");

    // `logs -f` follows tasks that start later.
    let mut follow = lab
        .lab
        .exec_command(
            "m1",
            &[
                lab.lab.shoal_bin.display().to_string(),
                "service".into(),
                "logs".into(),
                "-f".into(),
                "--tail".into(),
                "1".into(),
                "--no-trunc".into(),
                "web".into(),
            ],
        )?
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let out = follow.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Scaled once the stream has started (the running tasks' last lines came): the new task
    // is not among those the stream began with.
    let deadline = std::time::Instant::now() + WAIT;
    let mut seen = Vec::new();
    while seen
        .iter()
        .filter(|l: &&String| l.contains("| serving"))
        .count()
        < all.len()
    {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => seen.push(l),
            Err(_) => {
                let _ = follow.kill();
                let _ = follow.wait();
                return Err(anyhow!("logs -f never started: {seen:?}"));
            }
        }
    }
    seen.clear();
    lab.shoal("m1", &["service", "scale", "-d", "web=4"])?;
    let followed = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left.min(Duration::from_secs(1))) {
            Ok(l) if l.starts_with("web.4.") && l.contains("| serving") => break Ok(l),
            Ok(l) => seen.push(l),
            Err(_) if std::time::Instant::now() < deadline => {}
            Err(_) => break Err(anyhow!("no new task followed within {WAIT:?}: {seen:?}")),
        }
    };
    // Ours to end: by pid.
    let _ = follow.kill();
    let _ = follow.wait();
    let _ = reader.join();
    followed?;

    // `image load` (a file, and stdin as `docker load < FILE`) and `image ls` on one node; a
    // service of that image runs there without any registry.
    let dir = tempfile::tempdir()?;
    let layout = dir.path().join("layout");
    harness::images::build_busybox_image(&layout, "local:1", harness::images::TestImage::sleep())?;
    harness::images::build_busybox_image(&layout, "local:2", harness::images::TestImage::sleep())?;
    let archive = dir.path().join("local.tar");
    harness::images::oci_archive(&layout, &archive)?;
    let archive_s = archive.to_string_lossy().into_owned();
    let loaded = lab.shoal("w1", &["image", "load", &archive_s])?;
    ensure!(loaded.contains("Loaded image: local:1"), "{loaded}");
    let ns = lab.netns("w1")?;
    let sock = lab
        .lab
        .host("w1")
        .map_err(|e| anyhow!("{e}"))?
        .socket
        .clone();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "nsenter --net=/run/netns/{ns} {} -H unix://{} image load < '{archive_s}'",
            harness::shoal_bin().display(),
            sock.display()
        ))
        .output()?;
    ensure!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("local:2"),
        "image load from stdin: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let ls = lines(&lab.shoal("w1", &["image", "ls", "--format", "json"])?)?;
    ensure!(
        ls.iter().any(|i| i["Repository"]
            .as_str()
            .is_some_and(|r| r.ends_with("local"))
            && i["Tag"] == "1"),
        "image ls: {ls:#?}"
    );
    create(
        &lab,
        &[
            "--name",
            "loc",
            "--constraint",
            "node.hostname==w1",
            "local:1",
        ],
    )?;
    eventually("service of a loaded image running", WAIT, || {
        all_running(&lab, "loc", 1)
    })?;
    // A replaced task's log is kept on its node while the managers' history holds the task;
    // once the task leaves the history (here: the service is removed) the node drops it.
    let first = all_running(&lab, "loc", 1)?[0]["ID"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    lab.shoal("m1", &["service", "update", "-q", "--force", "loc"])?;
    let kept = lab.host_data_dir("w1")?.join(format!("logs/{first}.log"));
    eventually("the replaced task's log kept on its node", WAIT, || {
        let running = all_running(&lab, "loc", 1)?;
        ensure!(running[0]["ID"] != first.as_str(), "not replaced yet");
        ensure!(kept.exists(), "{} missing", kept.display());
        Ok(())
    })?;
    lab.shoal("m1", &["service", "rm", "loc"])?;
    eventually("the kept log dropped with the task", WAIT, || {
        ensure!(!kept.exists(), "{} still there", kept.display());
        Ok(())
    })?;

    // Limits read back from the cgroup files; an allocating process is OOM-killed.
    create(
        &lab,
        &[
            "--name",
            "lim",
            "--limit-memory",
            "64M",
            "--limit-pids",
            "50",
            "--limit-cpu",
            "0.5",
            &sleep,
        ],
    )?;
    let t = eventually("lim running", WAIT, || all_running(&lab, "lim", 1))?.remove(0);
    let id = t["ID"].as_str().unwrap_or_default().to_string();
    let cg = |ctrl: &str, file: &str| {
        read_trim(
            &Path::new("/sys/fs/cgroup")
                .join(ctrl)
                .join("shoal")
                .join(&id)
                .join(file),
        )
    };
    ensure!(cg("memory", "memory.limit_in_bytes")? == (64u64 << 20).to_string());
    ensure!(cg("pids", "pids.max")? == "50");
    ensure!(cg("cpu", "cpu.cfs_quota_us")? == "50000");
    ensure!(cg("cpu", "cpu.cfs_period_us")? == "100000");
    create(
        &lab,
        &[
            "--name",
            "oom",
            "--limit-memory",
            "32M",
            "--restart-condition",
            "none",
            &sleep,
            "sh",
            "-c",
            "a=xxxxxxxxxxxxxxxx; while true; do a=\"$a$a\"; done",
        ],
    )?;
    first_error_contains(&lab, "oom task failed with an OOM error", "oom", "OOM")?;

    // A missing binary says so in plain words.
    create(
        &lab,
        &[
            "--name",
            "nobin",
            "--restart-condition",
            "none",
            &sleep,
            "/no/such/binary",
        ],
    )?;
    first_error_contains(&lab, "missing binary reported", "nobin", "/no/such/binary")?;

    // An image the registry does not have: the registry's own words in ERROR, and the pull
    // is tried again (after the restart delay) rather than given up.
    let missing = format!("{reg}/web:nope");
    create(
        &lab,
        &["--name", "noimg", "--restart-delay", "200ms", &missing],
    )?;
    eventually("pull error shown and retried", WAIT, || {
        let ts = tasks(&lab, "noimg", false)?;
        let rejected: Vec<&Value> = ts
            .iter()
            .filter(|t| {
                t["CurrentState"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("Rejected")
            })
            .collect();
        ensure!(rejected.len() >= 2, "{ts:#?}");
        let err = rejected[0]["Error"].as_str().unwrap_or_default();
        ensure!(err.contains("manifest unknown"), "{ts:#?}");
        Ok(())
    })?;
    lab.shoal("m1", &["service", "rm", "noimg"])?;

    // Secrets: readable in the container, absent from the worker's disk.
    let secret = "s3cr3t-value-of-the-lab";
    let ns = lab.netns("m1")?;
    let out = std::process::Command::new("sh")
        .args([
            "-c",
            &format!(
                "printf '%s' '{secret}' | ip netns exec {ns} {} -H unix://{} secret create dbpass -",
                harness::shoal_bin().display(),
                lab.lab.host("m1").map_err(|e| anyhow!("{e}"))?.socket.display()
            ),
        ])
        .output()?;
    ensure!(
        out.status.success(),
        "secret create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    create(&lab, &["--name", "sec", "--secret", "dbpass", &sleep])?;
    let t = eventually("sec running", WAIT, || all_running(&lab, "sec", 1))?.remove(0);
    let node = t["Node"].as_str().unwrap_or_default().to_string();
    let id = t["ID"].as_str().unwrap_or_default().to_string();
    let seen = lab.shoal(&node, &["exec", &id, "--", "cat", "/run/secrets/dbpass"])?;
    ensure!(seen == secret, "secret in the container: {seen:?}");
    // The task's name as `service ps` shows it works too, as does name.id-prefix.
    let by_name = lab.shoal(
        &node,
        &["exec", "sec.1", "--", "cat", "/run/secrets/dbpass"],
    )?;
    ensure!(by_name == secret, "exec by name: {by_name:?}");
    let full = format!("sec.1.{}", &id[..6]);
    let by_full = lab.shoal(&node, &["exec", &full, "--", "hostname"])?;
    ensure!(!by_full.trim().is_empty(), "exec by name.id: {by_full:?}");
    let leaks = files_containing(&lab.host_data_dir(&node)?, secret.as_bytes());
    ensure!(leaks.is_empty(), "secret on the worker's disk: {leaks:?}");

    // The image's HEALTHCHECK gates RUNNING, and an unhealthy task is replaced. The image
    // probes every 500 ms with 2 retries; a long start period (the service's, over the
    // image's other fields) keeps the task from being failed before the test makes it
    // healthy, whatever the machine's load: failures before the first success do not count
    // in it, as in Docker.
    let health = format!("{reg}/health:1");
    create(
        &lab,
        &["--name", "hc", "--health-start-period", "5m", &health],
    )?;
    let t = eventually("hc placed and starting", WAIT, || {
        let ts = tasks(&lab, "hc", true)?;
        let t = ts.first().cloned().ok_or_else(|| anyhow!("no hc task"))?;
        let state = t["CurrentState"].as_str().unwrap_or_default();
        ensure!(state.starts_with("Starting"), "{ts:#?}");
        Ok(t)
    })?;
    let hc_node = t["Node"].as_str().unwrap_or_default().to_string();
    let hc_id = t["ID"].as_str().unwrap_or_default().to_string();
    // Starting is reported as the start begins: the container may not run yet.
    eventually("hc made healthy", WAIT, || {
        lab.shoal(&hc_node, &["exec", &hc_id, "--", "touch", "/tmp/healthy"])
    })?;
    eventually("hc running once healthy", WAIT, || {
        all_running(&lab, "hc", 1)
    })?;
    lab.shoal(&hc_node, &["exec", &hc_id, "--", "rm", "/tmp/healthy"])?;
    eventually("unhealthy hc replaced", WAIT, || {
        let ts = tasks(&lab, "hc", false)?;
        let old = ts
            .iter()
            .find(|t| t["ID"] == hc_id.as_str())
            .ok_or_else(|| anyhow!("{hc_id} gone"))?;
        ensure!(
            old["CurrentState"]
                .as_str()
                .unwrap_or("")
                .starts_with("Failed")
                && old["Error"].as_str().unwrap_or("").contains("unhealthy")
                && ts.len() >= 2,
            "{ts:#?}"
        );
        Ok(())
    })?;
    lab.shoal("m1", &["service", "rm", "hc"])?;

    // Live restore: SIGKILL a worker's daemon; containers keep running, an exit that happens
    // meanwhile is reported after the restart. The daemon is down for some seconds, longer
    // than the lab's 500 ms heartbeat allows before the node counts as Down and its tasks are
    // rescheduled (as Swarm does), so the period is raised first.
    lab.shoal("m1", &["swarm", "update", "--dispatcher-heartbeat", "10s"])?;
    create(
        &lab,
        &[
            "--name",
            "keep",
            "--constraint",
            "node.hostname==w1",
            &sleep,
        ],
    )?;
    create(
        &lab,
        &[
            "--name",
            "ender",
            "--constraint",
            "node.hostname==w1",
            "--restart-condition",
            "none",
            &sleep,
            "sh",
            "-c",
            "sleep 4; exit 7",
        ],
    )?;
    let keep = eventually("keep running", WAIT, || all_running(&lab, "keep", 1))?.remove(0);
    let ender = eventually("ender running", WAIT, || all_running(&lab, "ender", 1))?.remove(0);
    let keep_id = keep["ID"].as_str().unwrap_or_default().to_string();
    let ender_id = ender["ID"].as_str().unwrap_or_default().to_string();
    let pid_before = container_pid(&lab, "w1", &keep_id)?;
    // The worker's task table (beside its state, read as the daemon reads it) records both.
    let table = lab.host_data_dir("w1")?.join(worker::executor::table::FILE);
    let recorded = |id: &str| -> Result<(TaskState, Option<i32>)> {
        let (tasks, _) = worker::executor::table::read(&table)?;
        let rec = tasks.get(id).with_context(|| {
            let ids: Vec<_> = tasks.keys().collect();
            format!("{id} not in the task table {} ({ids:?})", table.display())
        })?;
        Ok((rec.state, rec.exit_code))
    };
    ensure!(
        recorded(&keep_id)?.0 == TaskState::Running,
        "keep: {:?}",
        recorded(&keep_id)
    );
    ensure!(
        recorded(&ender_id)?.0 == TaskState::Running,
        "ender: {:?}",
        recorded(&ender_id)
    );
    let mut lab = lab;
    lab.lab.kill_daemon("w1").map_err(|e| anyhow!("{e}"))?;
    let exit_file = lab
        .host_data_dir("w1")?
        .join("tasks")
        .join(&ender_id)
        .join("exit");
    eventually(
        "ender exits while its daemon is down",
        Duration::from_secs(20),
        || {
            ensure!(exit_file.exists(), "no {}", exit_file.display());
            Ok(())
        },
    )?;
    lab.lab.start_daemon("w1").map_err(|e| anyhow!("{e}"))?;
    first_error_contains(&lab, "ender reported with exit code 7", "ender", "(7)")?;
    eventually("keep still running", WAIT, || all_running(&lab, "keep", 1))?;
    let pid_after = container_pid(&lab, "w1", &keep_id)?;
    ensure!(
        pid_before == pid_after,
        "container restarted: {pid_before} → {pid_after}"
    );
    ensure!(tasks(&lab, "keep", false)?.len() == 1, "keep was replaced");
    // The restarted daemon went on with the table it had written: keep is still recorded
    // RUNNING, and ender either FAILED (7) or, once the managers no longer assign the ended
    // task, forgotten.
    ensure!(
        recorded(&keep_id)?.0 == TaskState::Running,
        "keep: {:?}",
        recorded(&keep_id)
    );
    let (recorded_now, _) = worker::executor::table::read(&table)?;
    let ender_now = recorded_now.get(&ender_id).map(|r| (r.state, r.exit_code));
    ensure!(
        matches!(ender_now, None | Some((TaskState::Failed, Some(7)))),
        "ender: {ender_now:?}"
    );

    // on-failure counts attempts: one task and two restarts, then no more.
    create(
        &lab,
        &[
            "--name",
            "flaky",
            "--restart-condition",
            "on-failure",
            "--restart-max-attempts",
            "2",
            "--restart-delay",
            "100ms",
            &sleep,
            "sh",
            "-c",
            "exit 1",
        ],
    )?;
    eventually("three failed attempts", WAIT, || {
        let ts = tasks(&lab, "flaky", false)?;
        let failed = ts
            .iter()
            .filter(|t| {
                t["CurrentState"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("Failed")
            })
            .count();
        ensure!(failed == 3 && ts.len() == 3, "{ts:#?}");
        Ok(())
    })?;

    // `lab down` leaves no process (daemon, monitor, container, registry), mount or
    // namespace of the lab behind, although containers outlive their daemon by design.
    let dir = lab.lab.dir.clone();
    let prefix = lab.lab.prefix.clone();
    let pids = container_pids(&lab)?;
    ensure!(!pids.is_empty(), "no container processes seen");
    drop(lab);
    let needle = dir.to_string_lossy().into_owned();
    let mut left = Vec::new();
    for e in std::fs::read_dir("/proc")?.flatten() {
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            left.push(String::from_utf8_lossy(&cmdline).replace('\0', " "));
        }
    }
    let alive: Vec<String> = pids
        .into_iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        // A zombie has ended; it only waits for init to reap it.
        .filter(|stat| {
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
        .collect();
    let mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")?
        .lines()
        .filter(|l| l.contains(&needle))
        .map(String::from)
        .collect();
    let netns = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()?;
    let netns: Vec<String> = String::from_utf8_lossy(&netns.stdout)
        .lines()
        .filter(|l| l.starts_with(&format!("{prefix}-")))
        .map(String::from)
        .collect();
    ensure!(
        left.is_empty() && alive.is_empty() && mounts.is_empty() && netns.is_empty() && !dir.exists(),
        "after lab down: processes {left:?}, container pids {alive:?}, mounts {mounts:?}, netns {netns:?}, dir exists {}",
        dir.exists()
    );
    Ok(())
}

/// The pids of every container the lab's hosts run (runc's state of each).
fn container_pids(lab: &LabGuard) -> Result<Vec<u32>> {
    let mut pids = Vec::new();
    for h in &lab.lab.hosts {
        let root = h.data_dir.join("oci/runc");
        let Ok(entries) = std::fs::read_dir(&root) else {
            continue;
        };
        for e in entries.flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            if let Ok(pid) = container_pid(lab, &h.name, &id) {
                pids.push(pid);
            }
        }
    }
    Ok(pids)
}

/// The pid of a task's container, from the OCI runtime's state.
fn container_pid(lab: &LabGuard, node: &str, task_id: &str) -> Result<u32> {
    let root = lab.host_data_dir(node)?.join("oci/runc");
    let out = std::process::Command::new("runc")
        .arg("--root")
        .arg(&root)
        .args(["state", task_id])
        .output()?;
    ensure!(
        out.status.success(),
        "runc state: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout)?;
    v["pid"]
        .as_u64()
        .map(|p| p as u32)
        .ok_or_else(|| anyhow!("no pid in {v}"))
}
