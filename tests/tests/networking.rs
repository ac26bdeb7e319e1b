//! Networking on lab hosts, with real containers: overlay networks across hosts, the embedded
//! DNS (VIPs, `tasks.`, aliases, dnsrr, forwarding), VIP load balancing, isolation between
//! networks, egress through masquerade, the ingress routing mesh (every host, spread over
//! every replica, client address kept for local replicas), host-mode publish, UDP, zero
//! failed requests during a rolling update and a scale-down, a daemon restart that rebuilds
//! the datapath, and a teardown that leaves nothing.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Result};
use harness::{eventually, in_netns, LabGuard};
use serde_json::Value;

const HEARTBEAT: Duration = Duration::from_millis(500);
const WAIT: Duration = Duration::from_secs(90);

fn lines(out: &str) -> Result<Vec<Value>> {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(|e| anyhow!("bad JSON line {l:?}: {e}")))
        .collect()
}

/// Desired-running tasks of `service`, once there are `n` and all are RUNNING.
fn running(lab: &LabGuard, service: &str, n: usize) -> Result<Vec<Value>> {
    let out = lab.shoal(
        "m1",
        &[
            "service",
            "ps",
            "--no-trunc",
            "--format",
            "json",
            "--filter",
            "desired-state=running",
            service,
        ],
    )?;
    let ts = lines(&out)?;
    let ok = ts
        .iter()
        .filter(|t| {
            t["CurrentState"]
                .as_str()
                .unwrap_or("")
                .starts_with("Running")
        })
        .count();
    ensure!(ok == n && ts.len() == n, "{ok} of {n} running: {ts:#?}");
    Ok(ts)
}

fn wait_running(lab: &LabGuard, service: &str, n: usize) -> Result<Vec<Value>> {
    eventually(&format!("{n} tasks of {service} running"), WAIT, || {
        running(lab, service, n)
    })
}

fn create(lab: &LabGuard, args: &[&str]) -> Result<()> {
    let mut all = vec!["service", "create", "-d"];
    all.extend_from_slice(args);
    lab.shoal("m1", &all).map(|_| ())
}

/// Runs `sh -c script` in the container of task `name` (e.g. `client.1`).
fn sh(lab: &LabGuard, name: &str, script: &str) -> Result<String> {
    let service = name.split('.').next().unwrap_or_default();
    let ts = running(lab, service, 1).or_else(|_| {
        lines(&lab.shoal(
            "m1",
            &[
                "service",
                "ps",
                "--format",
                "json",
                "--filter",
                "desired-state=running",
                service,
            ],
        )?)
    })?;
    let node = ts
        .iter()
        .find(|t| t["Name"].as_str().is_some_and(|n| n.starts_with(name)))
        .and_then(|t| t["Node"].as_str())
        .ok_or_else(|| anyhow!("no task {name}"))?
        .to_string();
    lab.shoal(&node, &["exec", name, "--", "sh", "-c", script])
}

/// The addresses busybox nslookup prints for `name` (the server's own lines left out);
/// empty when the name is unknown.
fn lookup(lab: &LabGuard, from: &str, name: &str) -> Result<BTreeSet<String>> {
    let out = sh(lab, from, &format!("nslookup {name} 2>&1 || true"))?;
    Ok(parse_nslookup(&out))
}

fn parse_nslookup(out: &str) -> BTreeSet<String> {
    let mut answers = false;
    let mut found = BTreeSet::new();
    for l in out.lines() {
        if l.starts_with("Name:") {
            answers = true;
        } else if answers {
            if let Some(a) = l.strip_prefix("Address:") {
                let a = a.trim();
                if a.parse::<std::net::Ipv4Addr>().is_ok() {
                    found.insert(a.to_string());
                }
            }
        }
    }
    found
}

/// `n` GETs of `/` on `ip:80` from inside a container; the bodies.
fn get_from(lab: &LabGuard, from: &str, ip: &str, n: usize) -> Result<Vec<String>> {
    let script = format!(
        "for i in $(seq {n}); do printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {ip} 80 | tail -n 1; done"
    );
    let out = sh(lab, from, &script)?;
    Ok(out
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect())
}

fn vip(lab: &LabGuard, service: &str, network_id: &str) -> Result<String> {
    let out = lab.shoal("m1", &["service", "inspect", service])?;
    let v: Value = serde_json::from_str(&out)?;
    let svc = if v.is_array() { &v[0] } else { &v };
    let vips = svc["Endpoint"]["VirtualIPs"]
        .as_array()
        .ok_or_else(|| anyhow!("no VirtualIPs in {svc:#}"))?;
    vips.iter()
        .find(|x| x["NetworkID"] == network_id)
        .and_then(|x| x["Addr"].as_str())
        .map(|a| a.split('/').next().unwrap_or_default().to_string())
        .ok_or_else(|| anyhow!("no VIP of {service} on {network_id}: {vips:?}"))
}

fn network_id(lab: &LabGuard, name: &str) -> Result<String> {
    let out = lab.shoal("m1", &["network", "inspect", name])?;
    let v: Value = serde_json::from_str(&out)?;
    v[0]["Id"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("no Id in {v:#}"))
}

/// `GET path` on `addr` from the underlay (outside the cluster); the body.
fn get_outside(ul: &str, addr: SocketAddr, path: &'static str) -> Result<String> {
    in_netns(ul, move || -> Result<String> { get(addr, path) })?
}

fn get(addr: SocketAddr, path: &str) -> Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n")?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    ensure!(
        buf.starts_with("HTTP/1.") && buf.contains(" 200 "),
        "{buf:?}"
    );
    // CGI answers end their headers with a bare "\n\n".
    buf.split_once("\r\n\r\n")
        .or_else(|| buf.split_once("\n\n"))
        .map(|(_, b)| b.trim().to_string())
        .ok_or_else(|| anyhow!("no HTTP body in {buf:?}"))
}

/// A DNS server on `addr` (UDP) that answers every A question with `answer`.
fn fake_upstream(ul: &str, addr: SocketAddr, answer: [u8; 4], stop: Arc<AtomicBool>) -> Result<()> {
    let sock = in_netns(ul, move || UdpSocket::bind(addr))??;
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while !stop.load(Ordering::Relaxed) {
            let Ok((n, peer)) = sock.recv_from(&mut buf) else {
                continue;
            };
            if n < 12 {
                continue;
            }
            // Header: same id, QR + RD + RA, one question, one answer.
            let mut r = buf[..n].to_vec();
            r[2] = 0x81;
            r[3] = 0x80;
            r[6] = 0;
            r[7] = 1;
            r[8..12].fill(0);
            let qtype_a = n >= 4 && buf[n - 4..n - 2] == [0, 1];
            if qtype_a {
                r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4]);
                r.extend_from_slice(&answer);
            } else {
                r[7] = 0;
            }
            let _ = sock.send_to(&r, peer);
        }
    });
    Ok(())
}

#[test]
fn lab_overlay_networks() -> Result<()> {
    let args = ["--runtime".to_string(), "oci".to_string()];
    let mut lab = LabGuard::up_with("ov", 1, 2, HEARTBEAT, &args, true)?;
    let reg = lab
        .lab
        .registry
        .clone()
        .ok_or_else(|| anyhow!("no registry"))?;
    let ul = format!("{}-ul", lab.lab.prefix);
    let web = format!("{reg}/web:v1");
    let sleep = format!("{reg}/sleep:1");

    lab.shoal("m1", &["network", "create", "-d", "overlay", "appnet"])?;
    lab.shoal("m1", &["network", "create", "--driver", "overlay", "other"])?;
    let appnet = network_id(&lab, "appnet")?;

    // The DNS upstream of the client: a fake server on the underlay, outside the cluster.
    let stop = Arc::new(AtomicBool::new(false));
    fake_upstream(
        &ul,
        "192.168.77.2:53".parse()?,
        [203, 0, 113, 7],
        stop.clone(),
    )?;
    // "The internet" for egress: tells each client the address it came from.
    let egress = in_netns(&ul, || TcpListener::bind("192.168.77.2:7000"))??;
    std::thread::spawn(move || {
        for c in egress.incoming().flatten() {
            let mut c = c;
            let peer = c
                .peer_addr()
                .map(|p| p.ip().to_string())
                .unwrap_or_default();
            let _ = writeln!(c, "{peer}");
        }
    });

    create(
        &lab,
        &[
            "--name",
            "web",
            "--replicas",
            "3",
            "--network",
            "name=appnet,alias=www",
            "--hostname",
            "{{.Service.Name}}-{{.Task.Slot}}",
            &web,
        ],
    )?;
    create(
        &lab,
        &[
            "--name",
            "rr",
            "--replicas",
            "2",
            "--endpoint-mode",
            "dnsrr",
            "--network",
            "appnet",
            &sleep,
        ],
    )?;
    create(
        &lab,
        &[
            "--name",
            "client",
            "--network",
            "appnet",
            "--dns",
            "192.168.77.2",
            &sleep,
        ],
    )?;
    create(&lab, &["--name", "outsider", "--network", "other", &sleep])?;
    let webs = wait_running(&lab, "web", 3)?;
    wait_running(&lab, "rr", 2)?;
    wait_running(&lab, "client", 1)?;
    wait_running(&lab, "outsider", 1)?;
    let hosts: BTreeSet<&str> = webs.iter().filter_map(|t| t["Node"].as_str()).collect();
    ensure!(hosts.len() >= 2, "web should span hosts: {hosts:?}");

    // Names: the service and its alias resolve to the VIP, tasks.web to the three tasks,
    // the dnsrr service to both of its tasks.
    let web_vip = vip(&lab, "web", &appnet)?;
    eventually("web resolves to its VIP", WAIT, || {
        let got = lookup(&lab, "client.1", "web")?;
        ensure!(
            got == BTreeSet::from([web_vip.clone()]),
            "web -> {got:?}, VIP {web_vip}"
        );
        Ok(())
    })?;
    ensure!(lookup(&lab, "client.1", "www")? == BTreeSet::from([web_vip.clone()]));
    let task_addrs = lookup(&lab, "client.1", "tasks.web")?;
    ensure!(task_addrs.len() == 3, "tasks.web -> {task_addrs:?}");
    ensure!(!task_addrs.contains(&web_vip));
    let rr = lookup(&lab, "client.1", "rr")?;
    ensure!(rr.len() == 2, "dnsrr rr -> {rr:?}");
    // Other names go to the client's --dns server.
    let ext = lookup(&lab, "client.1", "example.test")?;
    ensure!(
        ext == BTreeSet::from(["203.0.113.7".to_string()]),
        "forwarded: {ext:?}"
    );

    // Each task address answers with its own replica; the VIP spreads over all three.
    let mut by_addr = BTreeSet::new();
    for a in &task_addrs {
        by_addr.extend(get_from(&lab, "client.1", a, 1)?);
    }
    let all3: BTreeSet<String> = (1..=3).map(|i| format!("web-{i} v1")).collect();
    ensure!(by_addr == all3, "task addresses answered {by_addr:?}");
    let through_vip: BTreeSet<String> = get_from(&lab, "client.1", &web_vip, 9)?
        .into_iter()
        .collect();
    ensure!(through_vip == all3, "VIP answered {through_vip:?}");

    // Isolation: a task on another network neither resolves nor reaches web.
    ensure!(
        lookup(&lab, "outsider.1", "web")?.is_empty(),
        "web visible from other"
    );
    let a = task_addrs.iter().next().cloned().unwrap_or_default();
    let reach = sh(
        &lab,
        "outsider.1",
        &format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 1 {a} 80 || echo unreachable"),
    )?;
    ensure!(
        !reach.contains("web-"),
        "other network reached {a}: {reach:?}"
    );

    // Egress: the outside sees the host's underlay address (masquerade).
    let seen = sh(&lab, "client.1", "nc -w 2 192.168.77.2 7000")?;
    let client_node = running(&lab, "client", 1)?[0]["Node"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    ensure!(
        seen.trim() == lab.addr(&client_node)?,
        "egress seen from {seen:?}, host {client_node} is {}",
        lab.addr(&client_node)?
    );

    // A stopped task leaves DNS and the VIP within 1 s of the scale-down.
    let before = task_addrs.clone();
    lab.shoal("m1", &["service", "scale", "-d", "web=2"])?;
    let t0 = Instant::now();
    let after = eventually("tasks.web drops to 2", Duration::from_secs(10), || {
        let got = lookup(&lab, "client.1", "tasks.web")?;
        ensure!(got.len() == 2, "{got:?}");
        Ok(got)
    })?;
    let gone_after = t0.elapsed();
    eprintln!(
        "a stopped task left DNS {} ms after the scale-down",
        gone_after.as_millis()
    );
    ensure!(gone_after < Duration::from_secs(1), "took {gone_after:?}");
    ensure!(after.is_subset(&before));
    let left: BTreeSet<String> = running(&lab, "web", 2)
        .or_else(|_| wait_running(&lab, "web", 2))?
        .iter()
        .filter_map(|t| t["Name"].as_str())
        .map(|n| format!("web-{} v1", n.split('.').nth(1).unwrap_or_default()))
        .collect();
    let answers: BTreeSet<String> = get_from(&lab, "client.1", &web_vip, 6)?
        .into_iter()
        .collect();
    ensure!(
        answers == left,
        "after scale-down the VIP answered {answers:?}, running {left:?}"
    );

    // network rm is refused while in use, and names the users.
    let err = lab
        .shoal("m1", &["network", "rm", "appnet"])
        .err()
        .ok_or_else(|| anyhow!("rm of a used network succeeded"))?;
    ensure!(err.to_string().contains("web"), "{err}");

    // A daemon restart rebuilds the datapath: remove the node's rules while it is down.
    let w = webs
        .iter()
        .filter_map(|t| t["Node"].as_str())
        .find(|n| *n != "m1")
        .unwrap_or("w1")
        .to_string();
    lab.lab.kill_daemon(&w).map_err(|e| anyhow!("{e}"))?;
    let wns = lab.netns(&w)?;
    let nft = |args: &[&str]| -> Result<String> {
        let out = deploy::netns_command(&wns).arg("nft").args(args).output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    nft(&["delete", "table", "ip", "shoal"])?;
    let has_table = |out: String| out.lines().any(|l| l.trim() == "table ip shoal");
    ensure!(!has_table(nft(&["list", "tables"])?));
    lab.lab.start_daemon(&w).map_err(|e| anyhow!("{e}"))?;
    eventually("the restarted node's rules are back", WAIT, || {
        ensure!(has_table(nft(&["list", "tables"])?));
        Ok(())
    })?;
    eventually("the VIP still reaches both replicas", WAIT, || {
        let answers: BTreeSet<String> = get_from(&lab, "client.1", &web_vip, 6)?
            .into_iter()
            .collect();
        ensure!(answers == left, "{answers:?}");
        Ok(())
    })?;

    // Networks go away with their last user; ingress stays.
    for s in ["web", "rr", "client", "outsider"] {
        lab.shoal("m1", &["service", "rm", s])?;
    }
    eventually("appnet can be removed", WAIT, || {
        lab.shoal("m1", &["network", "rm", "appnet", "other"])
            .map(|_| ())
    })?;
    let ls = lab.shoal("m1", &["network", "ls", "--format", "json"])?;
    let names: BTreeSet<String> = lines(&ls)?
        .iter()
        .filter_map(|n| n["Name"].as_str().map(str::to_string))
        .collect();
    ensure!(
        names == BTreeSet::from(["ingress".to_string()]),
        "{names:?}"
    );

    stop.store(true, Ordering::Relaxed);
    let prefix = lab.lab.prefix.clone();
    drop(lab);
    assert_nothing_left(&prefix)
}

/// After `lab down`: no namespace, mount, link or nft table of the lab anywhere.
fn assert_nothing_left(prefix: &str) -> Result<()> {
    let ns = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()?;
    let ns = String::from_utf8_lossy(&ns.stdout);
    ensure!(
        !ns.lines().any(|l| l.starts_with(prefix)),
        "namespaces left: {ns}"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    ensure!(!mounts.contains(prefix), "mounts left: {mounts}");
    let links = std::process::Command::new("ip")
        .args(["-o", "link"])
        .output()?;
    let links = String::from_utf8_lossy(&links.stdout);
    ensure!(
        !links.contains("shoal_ing") && !links.contains("shoal0"),
        "links left in the root namespace: {links}"
    );
    let tables = std::process::Command::new("nft")
        .args(["list", "tables"])
        .output()?;
    ensure!(
        !String::from_utf8_lossy(&tables.stdout).contains("shoal"),
        "nft tables left in the root namespace"
    );
    Ok(())
}

/// Sends GETs through the mesh from the underlay until stopped: (sent, failed, first errors).
struct Load {
    sent: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    errors: Arc<std::sync::Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(ul: &str, targets: Vec<SocketAddr>, threads: usize) -> Result<Load> {
        let load = Load {
            sent: Arc::default(),
            failed: Arc::default(),
            errors: Arc::default(),
            stop: Arc::default(),
            threads: Vec::new(),
        };
        let mut handles = Vec::new();
        for i in 0..threads {
            let (sent, failed, errors, stop) = (
                load.sent.clone(),
                load.failed.clone(),
                load.errors.clone(),
                load.stop.clone(),
            );
            let targets = targets.clone();
            let ns = std::fs::File::open(format!("/run/netns/{ul}"))?;
            handles.push(std::thread::spawn(move || {
                use std::os::fd::AsRawFd;
                // SAFETY: setns on a namespace fd we hold; it affects this thread only.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    failed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                let mut k = i;
                while !stop.load(Ordering::Relaxed) {
                    let t = targets[k % targets.len()];
                    k += 1;
                    sent.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = get(t, "/") {
                        failed.fetch_add(1, Ordering::Relaxed);
                        let mut errs = errors.lock().unwrap_or_else(|e| e.into_inner());
                        if errs.len() < 10 {
                            errs.push(format!("{t}: {e}"));
                        }
                    }
                }
            }));
        }
        Ok(Load {
            threads: handles,
            ..load
        })
    }

    fn counts(&self) -> (u64, u64) {
        (
            self.sent.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }

    /// Waits until `n` more requests were sent since `from`.
    fn until(&self, from: u64, n: u64) -> Result<()> {
        eventually(
            &format!("{n} requests through the mesh"),
            Duration::from_secs(300),
            || {
                let (sent, _) = self.counts();
                ensure!(sent >= from + n, "{} sent", sent - from);
                Ok(())
            },
        )
    }

    fn stop(mut self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[test]
fn lab_ingress_mesh() -> Result<()> {
    let args = ["--runtime".to_string(), "oci".to_string()];
    let lab = LabGuard::up_with("ing", 1, 2, HEARTBEAT, &args, true)?;
    let reg = lab
        .lab
        .registry
        .clone()
        .ok_or_else(|| anyhow!("no registry"))?;
    let ul = format!("{}-ul", lab.lab.prefix);
    let web1 = format!("{reg}/web:v1");
    let web2 = format!("{reg}/web:v2");
    let hosts = ["m1", "w1", "w2"];
    let addrs: Vec<String> = hosts.iter().map(|h| lab.addr(h)).collect::<Result<_>>()?;

    lab.shoal("m1", &["network", "create", "-d", "overlay", "front"])?;
    create(
        &lab,
        &[
            "--name",
            "web",
            "--replicas",
            "6",
            "--network",
            "front",
            "--publish",
            "published=8080,target=80",
            "--hostname",
            "{{.Service.Name}}-{{.Task.Slot}}",
            "--update-parallelism",
            "2",
            "--update-delay",
            "0s",
            &web1,
        ],
    )?;
    let ts = wait_running(&lab, "web", 6)?;
    let spread: BTreeSet<&str> = ts.iter().filter_map(|t| t["Node"].as_str()).collect();
    ensure!(spread.len() == 3, "replicas on {spread:?}");
    let ls = lab.shoal("m1", &["service", "ls"])?;
    ensure!(ls.contains("*:8080->80/tcp"), "service ls: {ls}");

    // Every host answers on 8080 and spreads over all six replicas, wherever they run.
    let all6: BTreeSet<String> = (1..=6).map(|i| format!("web-{i} v1")).collect();
    for a in &addrs {
        let target: SocketAddr = format!("{a}:8080").parse()?;
        eventually(&format!("{target} reaches all replicas"), WAIT, || {
            let mut seen = BTreeSet::new();
            for _ in 0..18 {
                seen.insert(get_outside(&ul, target, "/")?);
            }
            ensure!(seen == all6, "{target} answered {seen:?}");
            Ok(())
        })?;
    }

    // The client's own address is visible to replicas on the host it asked; replicas on
    // other hosts see that host's ingress address.
    let target: SocketAddr = format!("{}:8080", addrs[1]).parse()?;
    let mut sources = BTreeSet::new();
    for _ in 0..12 {
        sources.insert(get_outside(&ul, target, "/cgi-bin/ip")?);
    }
    ensure!(
        // busybox httpd shows IPv4 clients as `[::ffff:a.b.c.d]`.
        sources.iter().any(|s| s.contains("192.168.77.2")),
        "client address never seen: {sources:?}"
    );

    // Host mode: the port answers only where a task runs.
    create(
        &lab,
        &[
            "--name",
            "hm",
            "--publish",
            "mode=host,published=8081,target=80",
            "--hostname",
            "hm",
            &web1,
        ],
    )?;
    let hm = wait_running(&lab, "hm", 1)?;
    let hm_node = hm[0]["Node"].as_str().unwrap_or_default().to_string();
    for (h, a) in hosts.iter().zip(&addrs) {
        let target: SocketAddr = format!("{a}:8081").parse()?;
        if *h == hm_node {
            eventually("host-mode port answers", WAIT, || {
                let body = get_outside(&ul, target, "/")?;
                ensure!(body == "hm v1", "{body}");
                Ok(())
            })?;
        } else {
            ensure!(
                get_outside(&ul, target, "/").is_err(),
                "{h}:8081 answered without a task"
            );
        }
    }

    // UDP through the mesh.
    create(
        &lab,
        &[
            "--name",
            "echo",
            "--replicas",
            "2",
            "-p",
            "9000:9000/udp",
            "--hostname",
            "echo-{{.Task.Slot}}",
            &format!("{reg}/udpecho:1"),
        ],
    )?;
    wait_running(&lab, "echo", 2)?;
    for a in &addrs {
        let target: SocketAddr = format!("{a}:9000").parse()?;
        eventually(&format!("UDP {target} echoes"), WAIT, || {
            let reply = in_netns(&ul, move || -> Result<String> {
                let s = UdpSocket::bind("0.0.0.0:0")?;
                s.set_read_timeout(Some(Duration::from_secs(1)))?;
                s.send_to(b"ping", target)?;
                let mut buf = [0u8; 256];
                let (n, _) = s.recv_from(&mut buf)?;
                Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string())
            })??;
            ensure!(
                reply.starts_with("echo-") && reply.ends_with("ping"),
                "{reply:?}"
            );
            Ok(())
        })?;
    }

    // Zero failed requests through the mesh during a rolling update and a scale-down.
    let targets: Vec<SocketAddr> = addrs
        .iter()
        .map(|a| format!("{a}:8080").parse())
        .collect::<Result<_, _>>()?;
    let load = Load::start(&ul, targets, 4)?;
    let (s0, _) = load.counts();
    lab.shoal("m1", &["service", "update", "--image", &web2, "-q", "web"])?;
    load.until(s0, 10_000)?;
    let (s1, f1) = load.counts();
    ensure!(
        f1 == 0,
        "{f1} of {} failed during the update: {:?}",
        s1 - s0,
        load.errors.lock().map(|e| e.clone())
    );
    let versions = {
        let target: SocketAddr = format!("{}:8080", addrs[0]).parse()?;
        let mut seen = BTreeSet::new();
        for _ in 0..12 {
            seen.insert(get_outside(&ul, target, "/")?);
        }
        seen
    };
    ensure!(
        versions.iter().all(|v| v.ends_with(" v2")),
        "after the update: {versions:?}"
    );
    lab.shoal("m1", &["service", "scale", "web=3"])?;
    load.until(s1, 10_000)?;
    let (s2, f2) = load.counts();
    let errors = load.stop();
    eprintln!(
        "mesh under change: {} requests during the update, {} during the scale-down, {} failed",
        s1 - s0,
        s2 - s1,
        f2
    );
    ensure!(f2 == 0, "{f2} failed during the scale-down: {errors:?}");
    wait_running(&lab, "web", 3)?;
    Ok(())
}

#[test]
fn nslookup_output_is_parsed() {
    let out = "Server:\t\t127.0.0.11\nAddress:\t127.0.0.11:53\n\nName:\tweb\nAddress: 10.0.1.2\n\nName:\tweb\nAddress: 10.0.1.3\n";
    assert_eq!(
        parse_nslookup(out),
        BTreeSet::from(["10.0.1.2".to_string(), "10.0.1.3".to_string()])
    );
    assert!(parse_nslookup("** server can't find web: NXDOMAIN\n").is_empty());
}

/// A stack with real containers in the shape of Docker's voting app: a front end published
/// through the mesh on two overlay networks, a back end with a secret, a config and a named
/// volume, a worker, a database and a result service; `depends_on`; redeployed with the
/// front end's image changed (only it rolls); pruned; removed with nothing left.
#[test]
fn lab_stack_real_containers() -> Result<()> {
    let args = ["--runtime".to_string(), "oci".to_string()];
    let lab = LabGuard::up_with("stk", 1, 2, HEARTBEAT, &args, true)?;
    let reg = lab
        .lab
        .registry
        .clone()
        .ok_or_else(|| anyhow!("no registry"))?;
    let ul = format!("{}-ul", lab.lab.prefix);
    let dir = tempfile::tempdir()?;
    let compose = format!(
        r#"
services:
  front:
    image: {reg}/web:${{FRONT:-v1}}
    hostname: "{{{{.Service.Name}}}}-{{{{.Task.Slot}}}}"
    ports: ["8080:80"]
    networks: [front, back]
    deploy:
      replicas: 2
      update_config: {{parallelism: 2, delay: 0s}}
    depends_on: [back]
  back:
    image: {reg}/sleep:1
    networks: [back]
    secrets: [token]
    configs:
      - source: settings
        target: /etc/settings
    volumes: [data:/data]
  worker:
    image: {reg}/sleep:1
    networks: [back]
    depends_on:
      db:
        condition: service_started
  db:
    image: {reg}/sleep:1
    networks: [back]
    volumes: [data:/var/lib/db]
  result:
    image: {reg}/sleep:1
    networks: [front]
networks:
  front: {{}}
  back: {{}}
volumes:
  data: {{}}
secrets:
  token:
    file: ./token
configs:
  settings:
    file: ./settings
"#
    );
    let file = dir.path().join("docker-compose.yml");
    std::fs::write(&file, compose)?;
    std::fs::write(dir.path().join("token"), "t0ken")?;
    std::fs::write(dir.path().join("settings"), "mode=fast")?;
    let f = file.display().to_string();
    let out = lab.shoal("m1", &["stack", "deploy", "-c", &f, "st"])?;
    ensure!(out.contains("Creating service st_front"), "{out}");
    wait_running(&lab, "st_front", 2)?;
    wait_running(&lab, "st_back", 1)?;
    wait_running(&lab, "st_worker", 1)?;
    wait_running(&lab, "st_db", 1)?;
    wait_running(&lab, "st_result", 1)?;
    // The secret and the config are in the back end's container.
    let files = sh(
        &lab,
        "st_back.1",
        "cat /run/secrets/token; echo; cat /etc/settings",
    )?;
    ensure!(
        files.contains("t0ken") && files.contains("mode=fast"),
        "{files}"
    );

    let addrs: Vec<String> = ["m1", "w1", "w2"]
        .iter()
        .map(|h| lab.addr(h))
        .collect::<Result<_>>()?;
    let answers = |version: &str| -> Result<()> {
        let want: BTreeSet<String> = (1..=2).map(|i| format!("st_front-{i} {version}")).collect();
        for a in &addrs {
            let target: SocketAddr = format!("{a}:8080").parse()?;
            eventually(&format!("{target} answers {version}"), WAIT, || {
                let mut seen = BTreeSet::new();
                for _ in 0..8 {
                    seen.insert(get_outside(&ul, target, "/")?);
                }
                ensure!(seen == want, "{target} answered {seen:?}");
                Ok(())
            })?;
        }
        Ok(())
    };
    answers("v1")?;

    // One image changed: only the front end rolls.
    std::fs::write(dir.path().join(".env"), "FRONT=v2\n")?;
    let out = lab.shoal("m1", &["stack", "deploy", "-c", &f, "st"])?;
    let updated: Vec<&str> = out.lines().filter(|l| l.starts_with("Updating")).collect();
    ensure!(
        updated.len() == 1 && updated[0].starts_with("Updating service st_front"),
        "{out}"
    );
    answers("v2")?;

    // Pruned: a service taken out of the file goes; the rest stay as they are.
    let smaller = dir.path().join("smaller.yml");
    let text = std::fs::read_to_string(&file)?;
    let cut = text
        .find("  result:")
        .and_then(|a| text[a..].find("networks:\n  front").map(|b| (a, a + b)))
        .ok_or_else(|| anyhow!("no result service in the file"))?;
    std::fs::write(&smaller, format!("{}{}", &text[..cut.0], &text[cut.1..]))?;
    let s = smaller.display().to_string();
    let out = lab.shoal("m1", &["stack", "deploy", "--prune", "-c", &s, "st"])?;
    ensure!(out.contains("Removing service st_result"), "{out}");
    ensure!(!out.contains("Updating"), "{out}");
    answers("v2")?;

    let out = lab.shoal("m1", &["stack", "rm", "st"])?;
    ensure!(out.contains("Removing network st_front"), "{out}");
    eventually("nothing of the stack left", WAIT, || {
        for what in ["service", "network", "secret", "config"] {
            let ls = lab.shoal("m1", &[what, "ls"])?;
            ensure!(!ls.contains("st_"), "{what} ls: {ls}");
        }
        Ok(())
    })?;
    Ok(())
}
