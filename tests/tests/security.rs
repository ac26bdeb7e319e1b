//! Security on lab hosts: keys at rest and autolock, concurrent first secret/config creates,
//! a demoted manager's old certificate, a removed node, and `swarm leave` ending a worker's
//! containers. Need root.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use harness::{call_as, eventually, node_identity, LabGuard};
use proto::pb;
use proto::pb::control_client::ControlClient;
use tonic::transport::Channel;

const HEARTBEAT: Duration = Duration::from_millis(500);
const WAIT: Duration = Duration::from_secs(60);
const SECRET: &str = "pa55-recognisable-secret-value";

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

async fn client(lab: &LabGuard, host: &str) -> Result<ControlClient<Channel>> {
    let sock = lab.lab.host(host)?.socket.clone();
    let ch = proto::transport::unix_channel(sock).await?;
    Ok(ControlClient::new(ch))
}

/// Every regular file below `root` on the same filesystem.
fn files(root: &Path) -> Vec<PathBuf> {
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
            } else if m.is_file() {
                found.push(p);
            }
        }
    }
    found
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// What a look at the data dirs of `hosts` finds that it must not: the secret's value, a
/// private key other than the node's own, the data key in the clear, the KEK in the clear
/// (`locked`), a file readable by others. Returns how many stored data keys it saw sealed.
fn check_disk(lab: &LabGuard, hosts: &[&str], locked: bool) -> Result<usize> {
    use std::os::unix::fs::PermissionsExt;
    let mut sealed_keys = 0;
    for h in hosts {
        let dir = lab.host_data_dir(h)?;
        for d in [dir.clone(), dir.join("certs"), dir.join("raft")] {
            if let Ok(m) = std::fs::metadata(&d) {
                let mode = m.permissions().mode() & 0o777;
                ensure!(mode == 0o700, "{}: mode {mode:o}", d.display());
            }
        }
        for f in files(&dir) {
            let data = std::fs::read(&f).with_context(|| f.display().to_string())?;
            let name = f.display().to_string();
            ensure!(
                !contains(&data, SECRET.as_bytes()),
                "secret value in {name}"
            );
            if contains(&data, b"PRIVATE KEY") {
                ensure!(f.ends_with("certs/node.key"), "a private key in {name}");
            }
            // The data key as the store serialises it: {"id":"data-key","version":N,"key":"…"}.
            let mut at = 0;
            while let Some(i) = data[at..]
                .windows(15)
                .position(|w| w == b"\"id\":\"data-key\"")
            {
                let start = at + i;
                let window = &data[start..(start + 200).min(data.len())];
                if let Some(k) = window.windows(7).position(|w| w == b"\"key\":\"") {
                    let value = &window[k + 7..];
                    ensure!(
                        value.starts_with(b"kek1:"),
                        "data key in the clear in {name}: {}",
                        String::from_utf8_lossy(&value[..value.len().min(20)])
                    );
                    sealed_keys += 1;
                }
                at = start + 15;
            }
            if f.ends_with("kek.json") {
                let text = String::from_utf8_lossy(&data);
                ensure!(
                    text.contains("sealed_kek") == locked && text.contains("\"kek\"") != locked,
                    "{name} (locked: {locked}): {text}"
                );
            }
            let under = |d: &str| f.starts_with(dir.join(d));
            if under("certs") || under("raft") || f.parent() == Some(dir.as_path()) {
                let mode = std::fs::metadata(&f)?.permissions().mode() & 0o777;
                ensure!(mode == 0o600, "{name}: mode {mode:o}");
            }
        }
    }
    Ok(sealed_keys)
}

/// `shoal swarm unlock` on `host` with `key` on stdin.
fn unlock(lab: &LabGuard, host: &str, key: &str) -> Result<()> {
    let h = lab.lab.host(host)?;
    let mut child = Command::new("ip")
        .args(["netns", "exec", &h.netns])
        .arg(harness::shoal_bin())
        .arg("-H")
        .arg(format!("unix://{}", h.socket.display()))
        .args(["swarm", "unlock"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .ok_or_else(|| anyhow!("no stdin"))?
        .write_all(format!("{key}\n").as_bytes())?;
    let out = child.wait_with_output()?;
    if out.status.success() {
        Ok(())
    } else {
        bail!("{}", String::from_utf8_lossy(&out.stderr).trim())
    }
}

fn info(lab: &LabGuard, host: &str) -> Result<String> {
    lab.shoal(host, &["info"])
}

/// 25 creates of secrets and configs through the three managers of `lab`, all at once if
/// `concurrent` (`obj0`…`obj24`; `obj0` a secret holding [`SECRET`], odd ones configs
/// holding "data N").
fn create_objects(lab: &LabGuard, concurrent: bool) -> Result<()> {
    let managers = ["m1", "m2", "m3"];
    // 25 concurrent first creates of secrets and configs through the three managers: the
    // first ones race to make the data key, and all succeed.
    let results = rt().block_on(async {
        let mut clients = Vec::new();
        for m in managers {
            clients.push(client(lab, m).await?);
        }
        let mut calls = tokio::task::JoinSet::new();
        for i in 0..25usize {
            let mut c = clients[i % 3].clone();
            let call = async move {
                let req = pb::CreateFileObjectRequest {
                    name: format!("obj{i}"),
                    data: if i == 0 {
                        SECRET.as_bytes().to_vec()
                    } else {
                        format!("data {i}").into_bytes()
                    },
                    labels: Default::default(),
                };
                if i % 2 == 0 {
                    c.create_secret(req).await.map(|_| ())
                } else {
                    c.create_config(req).await.map(|_| ())
                }
            };
            if concurrent {
                calls.spawn(call);
            } else {
                let r = call.await;
                calls.spawn(async move { r });
            }
        }
        Ok::<_, anyhow::Error>(calls.join_all().await)
    })?;
    let failed: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().err().map(|s| s.message().to_string()))
        .collect();
    ensure!(
        failed.is_empty(),
        "{} of 25 creates failed: {failed:?}",
        failed.len()
    );
    Ok(())
}

#[test]
fn lab_concurrent_first_secret_and_config_creates_all_succeed() -> Result<()> {
    let lab = LabGuard::up("sc", 3, 0, HEARTBEAT)?;
    create_objects(&lab, true)
}

#[test]
fn lab_keys_at_rest_and_autolock() -> Result<()> {
    let mut lab = LabGuard::up("sk", 3, 1, HEARTBEAT)?;
    let managers = ["m1", "m2", "m3"];
    create_objects(&lab, false)?;

    // At rest: no data dir holds the value, the data key or the CA key in the clear.
    let seen = eventually("data key on every manager's disk", WAIT, || {
        let n = check_disk(&lab, &["m1", "m2", "m3", "w1"], false)?;
        ensure!(n >= 3, "the data key was seen {n} times");
        Ok(n)
    })?;
    println!("FIGURE sealed_data_key_records_seen={seen}");

    // Autolock on: every manager's key file gets wrapped with the unlock key.
    let out = lab.shoal("m1", &["swarm", "update", "--autolock=true"])?;
    let key = out
        .split_whitespace()
        .find(|w| w.starts_with("SWMKEY-1-"))
        .ok_or_else(|| anyhow!("no unlock key in {out:?}"))?
        .to_string();
    ensure!(out.contains("shoal swarm unlock"), "{out}");
    ensure!(
        lab.shoal("m2", &["swarm", "unlock-key", "-q"])?.trim() == key,
        "unlock-key -q differs"
    );
    eventually("key files locked", WAIT, || {
        check_disk(&lab, &["m1", "m2", "m3", "w1"], true)
    })?;

    // Restart every manager: each waits for its unlock key and says so.
    for m in managers {
        lab.lab.kill_daemon(m)?;
    }
    for m in managers {
        lab.lab.start_daemon(m)?;
    }
    for m in managers {
        let i = info(&lab, m)?;
        ensure!(i.contains("Swarm: locked"), "{m}: {i}");
        let err = lab
            .shoal(m, &["node", "ls"])
            .err()
            .ok_or_else(|| anyhow!("a locked {m} served node ls"))?;
        ensure!(
            err.to_string()
                .contains("this node is locked: run `shoal swarm unlock`"),
            "{err}"
        );
    }
    let wrong = format!("SWMKEY-1-{}", "ab".repeat(32));
    let e = unlock(&lab, "m1", &wrong)
        .err()
        .ok_or_else(|| anyhow!("wrong key accepted"))?;
    ensure!(e.to_string().contains("invalid key"), "{e}");
    let e = unlock(&lab, "m1", "nonsense")
        .err()
        .ok_or_else(|| anyhow!("garbage accepted"))?;
    ensure!(e.to_string().contains("invalid unlock key"), "{e}");
    ensure!(info(&lab, "m1")?.contains("Swarm: locked"));
    for m in managers {
        unlock(&lab, m, &key)?;
    }
    let e = unlock(&lab, "m1", &key)
        .err()
        .ok_or_else(|| anyhow!("unlocked twice"))?;
    ensure!(e.to_string().contains("not locked"), "{e}");

    // Unlocked, the store's keys open again: config data comes back, and the CA signs a new
    // node's certificate.
    eventually("managers back", WAIT, || {
        let nodes = lab.nodes("m2")?;
        ensure!(
            nodes
                .iter()
                .filter(|n| n["ManagerStatus"] == "Leader" || n["ManagerStatus"] == "Reachable")
                .count()
                == 3,
            "{nodes:?}"
        );
        Ok(())
    })?;
    let data = eventually("config readable", WAIT, || {
        rt().block_on(async {
            let mut c = client(&lab, "m3").await?;
            Ok(c.get_config(pb::GetFileObjectRequest { id: "obj1".into() })
                .await?
                .into_inner()
                .data)
        })
    })?;
    ensure!(data == b"data 1", "config data {data:?}");
    let w2 = lab.lab.add_host(false)?;
    let token = lab.join_token("m1", "worker")?;
    let m1 = lab.addr("m1")?;
    let w2_ip = lab.addr(&w2)?;
    lab.shoal(
        &w2,
        &[
            "swarm",
            "join",
            "--token",
            &token,
            "--advertise-addr",
            &w2_ip,
            &m1,
        ],
    )?;
    eventually("w2 ready", WAIT, || {
        let n = lab.node("m1", &w2)?;
        ensure!(n["Status"] == "Ready", "{n}");
        Ok(())
    })?;
    // A manager that joins under autolock writes its key file locked from the start.
    let m4 = lab.lab.add_host(true)?;
    let m4_ip = lab.addr(&m4)?;
    let mtoken = lab.join_token("m1", "manager")?;
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
    check_disk(&lab, &["m1", "m2", "m3", "w1", &w2, &m4], true)?;
    // Demoted, it keeps no key file.
    lab.shoal("m1", &["node", "demote", &m4])?;
    eventually("m4 demoted, its key file gone", WAIT, || {
        let f = lab.host_data_dir(&m4)?.join("raft/kek.json");
        ensure!(!f.exists(), "{} still exists", f.display());
        Ok(())
    })?;

    // Autolock off: key files in the clear again, managers restart without a key.
    lab.shoal("m1", &["swarm", "update", "--autolock=false"])?;
    let e = lab
        .shoal("m1", &["swarm", "unlock-key"])
        .err()
        .ok_or_else(|| anyhow!("unlock-key with autolock off"))?;
    ensure!(e.to_string().contains("no unlock key is set"), "{e}");
    eventually("key files clear", WAIT, || {
        check_disk(&lab, &["m1", "m2", "m3"], false)
    })?;
    lab.lab.kill_daemon("m2")?;
    lab.lab.start_daemon("m2")?;
    ensure!(info(&lab, "m2")?.contains("Swarm: active"));
    Ok(())
}

#[test]
fn lab_demoted_managers_certificate_gets_no_manager_answers() -> Result<()> {
    let lab = LabGuard::up("sd", 3, 0, HEARTBEAT)?;
    let m1_addr = format!("{}:2377", lab.addr("m1")?);

    // A demoted manager's old certificate gets no manager answers.
    let old = node_identity(&lab.host_data_dir("m3")?)?;
    let (control, _) = call_as(&lab.netns("m3")?, &m1_addr, old.clone())?;
    ensure!(
        control == tonic::Code::Ok,
        "manager cert before demotion: {control:?}"
    );
    lab.shoal("m1", &["node", "demote", "m3"])?;
    eventually("m3 demoted", WAIT, || {
        let n = lab.node("m1", "m3")?;
        ensure!(n["ManagerStatus"] == "" && n["Status"] == "Ready", "{n}");
        Ok(())
    })?;
    let (control, raft) = call_as(&lab.netns("m3")?, &m1_addr, old)?;
    ensure!(
        control == tonic::Code::PermissionDenied && raft == tonic::Code::PermissionDenied,
        "demoted manager's old cert got {control:?} / {raft:?}"
    );
    Ok(())
}

#[test]
fn lab_removed_node_says_so_and_can_leave_and_join() -> Result<()> {
    let mut lab = LabGuard::up("sr", 1, 2, HEARTBEAT)?;
    // A removed node, restarted, says it was removed, and can leave and join again.
    lab.lab.kill_daemon("w2")?;
    eventually("w2 down", WAIT, || {
        let n = lab.node("m1", "w2")?;
        ensure!(n["Status"] == "Down", "{n}");
        Ok(())
    })?;
    lab.shoal("m1", &["node", "rm", "w2"])?;
    lab.lab.start_daemon("w2")?;
    eventually("w2 reports its removal", WAIT, || {
        let i = info(&lab, "w2")?;
        ensure!(
            i.contains("Swarm: error")
                && i.contains(
                    "this node was removed from the swarm; run `shoal swarm leave` and join again"
                ),
            "{i}"
        );
        Ok(())
    })?;
    lab.shoal("w2", &["swarm", "leave"])?;
    ensure!(info(&lab, "w2")?.contains("Swarm: inactive"));
    let token = lab.join_token("m1", "worker")?;
    let w2_ip = lab.addr("w2")?;
    let m1 = lab.addr("m1")?;
    lab.shoal(
        "w2",
        &[
            "swarm",
            "join",
            "--token",
            &token,
            "--advertise-addr",
            &w2_ip,
            &m1,
        ],
    )?;
    eventually("w2 back", WAIT, || {
        let ready = lab
            .nodes("m1")?
            .into_iter()
            .filter(|n| n["Hostname"] == "w2" && n["Status"] == "Ready")
            .count();
        ensure!(ready == 1, "{ready} ready w2 nodes");
        ensure!(info(&lab, "w2")?.contains("Swarm: active"));
        Ok(())
    })?;
    Ok(())
}

/// Containers (runc state dirs) and task dirs a host's daemon has.
fn containers_on(lab: &LabGuard, host: &str) -> Result<Vec<String>> {
    let dir = lab.host_data_dir(host)?;
    let mut out = Vec::new();
    for sub in ["oci/runc", "tasks"] {
        if let Ok(entries) = std::fs::read_dir(dir.join(sub)) {
            for e in entries.flatten() {
                out.push(format!("{sub}/{}", e.file_name().to_string_lossy()));
            }
        }
    }
    Ok(out)
}

#[test]
fn lab_leave_stops_and_removes_the_workers_containers() -> Result<()> {
    let args = ["--runtime".to_string(), "oci".to_string()];
    let lab = LabGuard::up_with("sl", 1, 1, HEARTBEAT, &args, true)?;
    let reg = lab
        .lab
        .registry
        .clone()
        .ok_or_else(|| anyhow!("the lab has no registry"))?;
    let sleep = format!("{reg}/sleep:1");
    lab.shoal(
        "m1",
        &[
            "service",
            "create",
            "--detach",
            "--name",
            "nap",
            "--replicas",
            "2",
            "--constraint",
            "node.role==worker",
            &sleep,
        ],
    )?;
    eventually("tasks running on w1", Duration::from_secs(120), || {
        let out = lab.shoal(
            "m1",
            &[
                "service",
                "ps",
                "--format",
                "json",
                "--filter",
                "desired-state=running",
                "nap",
            ],
        )?;
        let mut running = 0;
        for l in out.lines().filter(|l| !l.trim().is_empty()) {
            let t: serde_json::Value = serde_json::from_str(l)?;
            if t["CurrentState"]
                .as_str()
                .unwrap_or("")
                .starts_with("Running")
            {
                running += 1;
            }
        }
        ensure!(running == 2, "{out}");
        Ok(())
    })?;
    ensure!(
        !containers_on(&lab, "w1")?.is_empty(),
        "no containers seen on w1"
    );
    lab.shoal("w1", &["swarm", "leave"])?;
    let left = containers_on(&lab, "w1")?;
    ensure!(left.is_empty(), "after leave, w1 still has {left:?}");
    Ok(())
}

#[test]
fn lab_init_with_autolock_locks_a_restarted_manager() -> Result<()> {
    let mut lab = LabGuard::up("si", 1, 0, HEARTBEAT)?;
    let m = lab.lab.add_host(true)?;
    let ip = lab.addr(&m)?;
    let out = lab.shoal(
        &m,
        &["swarm", "init", "--autolock", "--advertise-addr", &ip],
    )?;
    let key = out
        .split_whitespace()
        .find(|w| w.starts_with("SWMKEY-1-"))
        .ok_or_else(|| anyhow!("no unlock key in {out:?}"))?
        .to_string();
    ensure!(
        out.contains("To unlock a swarm manager after it restarts, run the `shoal swarm unlock`"),
        "{out}"
    );
    // The key file was never in the clear.
    check_disk(&lab, &[&m], true)?;
    lab.lab.kill_daemon(&m)?;
    lab.lab.start_daemon(&m)?;
    ensure!(info(&lab, &m)?.contains("Swarm: locked"));
    unlock(&lab, &m, &key)?;
    eventually("unlocked manager serves", WAIT, || {
        lab.shoal(&m, &["node", "ls"]).map(|_| ())
    })?;
    Ok(())
}
