//! `shoal bench update`: a rolling update and its rollback, shoal beside Docker Swarm in one
//! run.
//!
//! shoal runs on a lab of one host (manager and worker, like a one-node swarm) with the lab
//! registry; `web:v1` with N replicas, then `service update --image web:v2
//! --update-parallelism P --update-delay 0s` (monitor: the default 5 s) timed to (a) every
//! task running v2 and (b) the update state `completed`; then `service rollback` to the same
//! two points. Both images are on the node before the timed part.
//!
//! When `dockerd` is on PATH, Docker Swarm does the same: a private dockerd (its own data
//! root, exec root, pid file and socket under a temporary directory) inside a network
//! namespace the bench creates (its bridges and iptables rules stay there), `swarm init` on
//! an address (on a veth pair)  of that namespace, the same two images loaded with `docker load`
//! (`skopeo copy` of their OCI layout into a docker-archive), the same commands and flags.
//! dockerd runs with `DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1` so that its tasks do not try a
//! registry for images it has (shoal's node has them too). Everything is stopped by pid and
//! removed at the end.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use deploy::images::{self, TestImage};
use proto::api::{ServiceView, TaskView};
use proto::spec::TaskState;

/// What `shoal bench update` measures.
#[derive(Clone, Debug)]
pub struct UpdateArgs {
    pub replicas: u32,
    pub parallelism: u32,
    /// runc, crun or fake (orchestration only; no registry).
    pub runtime: String,
    pub prefix: String,
    /// Give up on one phase after this long.
    pub timeout: Duration,
    /// Measure Docker Swarm too when `dockerd` is on PATH.
    pub swarm: bool,
    pub json: bool,
}

/// One phase (update or rollback), seconds from the command to each point.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Phase {
    /// Every task meant to run is running the new spec.
    #[serde(rename = "AllRunningSeconds")]
    pub all_running: f64,
    /// The update status says completed (after the monitor period).
    #[serde(rename = "CompletedSeconds")]
    pub completed: f64,
    /// Where shoal's time went (from the tasks' own timestamps); none for Swarm.
    #[serde(rename = "Breakdown", skip_serializing_if = "Option::is_none")]
    pub breakdown: Option<Breakdown>,
}

/// Medians over the slots one phase replaced, in ms, from the tasks' timestamps.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Breakdown {
    /// Command → the first new task created.
    #[serde(rename = "KickOffMs")]
    pub kick_off: i64,
    /// New task created → its slot's old task reported stopped.
    #[serde(rename = "StopMs")]
    pub stop: i64,
    /// Old task stopped → new task reported running.
    #[serde(rename = "StartMs")]
    pub start: i64,
    /// A slot's new task running → the next slot's new task created (the updater's wait
    /// between batches), median over consecutive creations.
    #[serde(rename = "NextBatchMs")]
    pub next_batch: i64,
    /// The last new task running → the update completed (the monitor period and the wait
    /// to notice its end).
    #[serde(rename = "TailMs")]
    pub tail: i64,
}

/// Figures of one orchestrator.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Figures {
    #[serde(rename = "Update")]
    pub update: Phase,
    #[serde(rename = "Rollback")]
    pub rollback: Phase,
    /// Create of N replicas → all running (not the subject, printed for context).
    #[serde(rename = "CreateSeconds")]
    pub create: f64,
}

pub fn run_update(args: &UpdateArgs) -> Result<()> {
    let load = || {
        std::fs::read_to_string("/proc/loadavg")
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    let shoal = run_shoal(args).context("shoal")?;
    let shoal_load = load();
    // Swarm runs real containers: beside the fake runtime it would compare nothing.
    let fake = args.runtime == "fake";
    let dockerd = if args.swarm && !fake {
        which("dockerd")
    } else {
        None
    };
    let swarm = match &dockerd {
        Some(d) => Some(run_swarm(args, d).context("Docker Swarm")?),
        None => None,
    };
    let swarm_load = swarm.map(|_| load());
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    if args.json {
        let ratios = swarm.map(|s| {
            serde_json::json!({
                "UpdateAllRunning": ratio(shoal.update.all_running, s.update.all_running),
                "UpdateCompleted": ratio(shoal.update.completed, s.update.completed),
                "RollbackAllRunning": ratio(shoal.rollback.all_running, s.rollback.all_running),
                "RollbackCompleted": ratio(shoal.rollback.completed, s.rollback.completed),
            })
        });
        println!(
            "{}",
            serde_json::json!({
                "Replicas": args.replicas,
                "Parallelism": args.parallelism,
                "Runtime": args.runtime,
                "Shoal": shoal,
                "ShoalLoad": shoal_load,
                "Swarm": swarm,
                "SwarmLoad": swarm_load,
                "SwarmMeasured": swarm.is_some(),
                "ShoalOverSwarm": ratios,
            })
        );
        return Ok(());
    }
    println!(
        "{} replicas, --update-parallelism {} --update-delay 0s, monitor 5 s (default), runtime {}",
        args.replicas, args.parallelism, args.runtime
    );
    println!(
        "{:<8}{:>12}{:>14}{:>14}{:>14}{:>14}  LOAD",
        "", "CREATE S", "UPDATE RUN S", "UPDATE DONE S", "ROLLBK RUN S", "ROLLBK DONE S"
    );
    let row = |name: &str, f: &Figures, load: &str| {
        println!(
            "{name:<8}{:>12.2}{:>14.2}{:>14.2}{:>14.2}{:>14.2}  {load}",
            f.create,
            f.update.all_running,
            f.update.completed,
            f.rollback.all_running,
            f.rollback.completed
        );
    };
    row("shoal", &shoal, &shoal_load);
    for (name, phase) in [("update", &shoal.update), ("rollback", &shoal.rollback)] {
        if let Some(b) = phase.breakdown {
            println!(
                "  shoal {name}, medians per slot: kick-off {} ms, old stopped {} ms after the new task's creation, new running {} ms after that, next creation {} ms after a run; last running → completed {} ms",
                b.kick_off, b.stop, b.start, b.next_batch, b.tail
            );
        }
    }
    match (swarm, swarm_load) {
        (Some(s), Some(l)) => {
            row("swarm", &s, &l);
            println!(
                "{:<8}{:>12.2}{:>14.2}{:>14.2}{:>14.2}{:>14.2}",
                "ratio",
                ratio(shoal.create, s.create),
                ratio(shoal.update.all_running, s.update.all_running),
                ratio(shoal.update.completed, s.update.completed),
                ratio(shoal.rollback.all_running, s.rollback.all_running),
                ratio(shoal.rollback.completed, s.rollback.completed),
            );
        }
        _ => println!(
            "Docker Swarm not measured ({})",
            if !args.swarm {
                "--no-swarm"
            } else if fake {
                "shoal ran the fake runtime"
            } else {
                "no dockerd on PATH"
            }
        ),
    }
    Ok(())
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

// ------------------------------------------------------------------ shoal

fn run_shoal(args: &UpdateArgs) -> Result<Figures> {
    let bin = std::env::current_exe().context("finding the shoal binary")?;
    let mut cfg = deploy::LabConfig::new(&args.prefix, 1, 0, bin);
    let fake = args.runtime == "fake";
    cfg.daemon_args = if fake {
        vec!["--runtime".into(), "fake".into()]
    } else {
        vec![
            "--runtime".into(),
            "oci".into(),
            "--oci-runtime".into(),
            args.runtime.clone(),
        ]
    };
    cfg.registry = !fake;
    let lab = deploy::Lab::up(&cfg).context("lab up")?;
    let result = shoal_phases(&lab, args, fake);
    let down = deploy::Lab::down(&args.prefix);
    let figures = result?;
    down?;
    Ok(figures)
}

fn shoal_phases(lab: &deploy::Lab, args: &UpdateArgs, fake: bool) -> Result<Figures> {
    let shoal = |a: &[&str]| lab.shoal("m1", a).map_err(|e| anyhow!("{e}"));
    let image = |tag: &str| {
        if fake {
            format!("web:{tag}")
        } else {
            format!("{}/web:{tag}", deploy::LAB_REGISTRY)
        }
    };
    let (v1, v2) = (image("v1"), image("v2"));
    // Both images on the node before the timed part (Swarm's are loaded beforehand too).
    for (i, img) in [&v1, &v2].into_iter().enumerate() {
        let name = format!("warm{i}");
        shoal(&["service", "create", "-q", "--name", &name, img])?;
        shoal(&["service", "rm", &name])?;
    }
    let (n, p) = (args.replicas.to_string(), args.parallelism.to_string());
    let t0 = Instant::now();
    shoal(&[
        "service",
        "create",
        "-q",
        "--name",
        "web",
        "--replicas",
        &n,
        "--update-parallelism",
        &p,
        "--update-delay",
        "0s",
        "--rollback-parallelism",
        &p,
        "--rollback-delay",
        "0s",
        &v1,
    ])?;
    let create = t0.elapsed().as_secs_f64();
    let socket = lab.host("m1").map_err(|e| anyhow!("{e}"))?.socket.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = rt
        .block_on(crate::client::Client::connect(&format!(
            "unix://{}",
            socket.display()
        )))
        .map_err(|e| anyhow!("{}", e.0))?;
    let poll = |done: &str| -> Result<Phase> {
        let t0 = Instant::now();
        let mut all_running = None;
        loop {
            let (view, tasks) = rt.block_on(async {
                let view = client.get_service("web").await?;
                let tasks = client.list_tasks(&view.id, "", "running").await?;
                Ok::<_, crate::client::ClientError>((view, tasks))
            })?;
            if all_running.is_none() && every_task_current(&view, &tasks, args.replicas) {
                all_running = Some(t0.elapsed().as_secs_f64());
            }
            let state = view.update_status.as_ref().map(|u| u.state.as_str());
            if let (Some(a), Some(s)) = (all_running, state) {
                if s == done {
                    let completed = t0.elapsed().as_secs_f64();
                    let all = rt
                        .block_on(client.list_tasks(&view.id, "", ""))
                        .map_err(|e| anyhow!("{e}"))?;
                    let status = view.update_status.as_ref();
                    return Ok(Phase {
                        all_running: a,
                        completed,
                        breakdown: status
                            .and_then(|u| breakdown(&all, u.started_ms, u.completed_ms)),
                    });
                }
            }
            if matches!(state, Some("paused" | "rollback_paused")) {
                bail!("the update paused: {:?}", view.update_status);
            }
            if t0.elapsed() > args.timeout {
                bail!("{done} not reached within {:?}", args.timeout);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let update_cmd = [
        "service",
        "update",
        "-d",
        "-q",
        "--image",
        &v2,
        "--update-parallelism",
        &p,
        "--update-delay",
        "0s",
        "web",
    ];
    shoal(&update_cmd)?;
    let update = poll("completed")?;
    shoal(&["service", "rollback", "-d", "-q", "web"])?;
    let rollback = poll("rollback_completed")?;
    Ok(Figures {
        update,
        rollback,
        create,
    })
}

fn median(mut v: Vec<i64>) -> i64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

/// Where a phase's time went: its new tasks (created since `started`) against the old task
/// of each one's slot.
fn breakdown(tasks: &[TaskView], started: i64, completed: i64) -> Option<Breakdown> {
    let mut new: Vec<&TaskView> = tasks
        .iter()
        .filter(|t| t.created_at_ms >= started && t.desired_state == TaskState::Running)
        .collect();
    new.sort_by_key(|t| t.created_at_ms);
    let first = new.first()?;
    let running_at =
        |t: &TaskView| (t.status.state == TaskState::Running).then_some(t.status.timestamp_ms);
    let (mut stop, mut start) = (Vec::new(), Vec::new());
    for t in &new {
        let old = tasks
            .iter()
            .filter(|o| o.slot == t.slot && o.created_at_ms < t.created_at_ms)
            .filter(|o| o.status.state.is_terminal())
            .max_by_key(|o| o.created_at_ms);
        if let (Some(o), Some(r)) = (old, running_at(t)) {
            stop.push(o.status.timestamp_ms - t.created_at_ms);
            start.push(r - o.status.timestamp_ms);
        }
    }
    // Each creation after the first waited for some earlier task to run: the latest
    // running time before it.
    let runs: Vec<i64> = new.iter().filter_map(|t| running_at(t)).collect();
    let next_batch = new
        .iter()
        .skip(1)
        .filter_map(|t| {
            runs.iter()
                .filter(|r| **r <= t.created_at_ms)
                .max()
                .map(|r| t.created_at_ms - r)
        })
        .collect();
    Some(Breakdown {
        kick_off: first.created_at_ms - started,
        stop: median(stop),
        start: median(start),
        next_batch: median(next_batch),
        tail: completed - runs.iter().max().copied().unwrap_or(completed),
    })
}

/// Every task meant to run runs the service's spec, and there are `n` of them.
fn every_task_current(view: &ServiceView, tasks: &[TaskView], n: u32) -> bool {
    let running: Vec<&TaskView> = tasks
        .iter()
        .filter(|t| matches!(t.desired_state, TaskState::Ready | TaskState::Running))
        .collect();
    running.len() == n as usize
        && running
            .iter()
            .all(|t| t.status.state == TaskState::Running && t.spec == view.spec.task)
}

// ------------------------------------------------------------------ Docker Swarm

/// A private dockerd in its own network namespace; stopped and removed on drop.
struct Dockerd {
    netns: String,
    dir: tempfile::TempDir,
    docker: PathBuf,
    child: Option<Child>,
}

const SWARM_ADDR: &str = "10.251.0.1";

impl Dockerd {
    fn start(dockerd: &Path, prefix: &str) -> Result<Dockerd> {
        let netns = format!("shoal-bench-{prefix}-{}", std::process::id());
        let dir = tempfile::Builder::new()
            .prefix("shoal-bench-swarm-")
            .tempdir()?;
        let docker = dockerd
            .parent()
            .map(|d| d.join("docker"))
            .filter(|p| p.is_file())
            .or_else(|| Some(PathBuf::from("/usr/bin/docker")).filter(|p| p.is_file()))
            .or_else(|| which("docker"))
            .ok_or_else(|| anyhow!("no docker CLI beside {}", dockerd.display()))?;
        let mut d = Dockerd {
            netns,
            dir,
            docker,
            child: None,
        };
        let ns = d.netns.clone();
        ip(&["netns", "add", &ns])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        // A veth pair, both ends inside (no dummy driver everywhere).
        ip(&[
            "-n", &ns, "link", "add", "dk0", "type", "veth", "peer", "name", "dk1",
        ])?;
        ip(&["-n", &ns, "link", "set", "dk1", "up"])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{SWARM_ADDR}/24"),
            "dev",
            "dk0",
        ])?;
        ip(&["-n", &ns, "link", "set", "dk0", "up"])?;
        let root = d.dir.path().to_path_buf();
        let log = std::fs::File::create(root.join("dockerd.log"))?;
        let child = deploy::netns_command(&ns)
            .arg(dockerd)
            .arg(format!("--data-root={}", root.join("data").display()))
            .arg(format!("--exec-root={}", root.join("exec").display()))
            .arg(format!("--pidfile={}", root.join("dockerd.pid").display()))
            .arg(format!(
                "--host=unix://{}",
                root.join("docker.sock").display()
            ))
            .arg(format!("--cgroup-parent=/{ns}"))
            .arg("--log-level=error")
            .env("DOCKER_SERVICE_PREFER_OFFLINE_IMAGE", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting dockerd")?;
        d.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while d.docker_cmd(&["version"]).is_err() {
            if let Some(c) = d.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    bail!("dockerd exited {status}: {}", d.log());
                }
            }
            if Instant::now() > deadline {
                bail!("dockerd did not answer within 60 s: {}", d.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(d)
    }

    fn log(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default();
        let start = text.len().saturating_sub(2000);
        text.get(start..).unwrap_or_default().to_string()
    }

    fn docker_cmd(&self, a: &[&str]) -> Result<String> {
        let out = Command::new(&self.docker)
            .arg("-H")
            .arg(format!(
                "unix://{}",
                self.dir.path().join("docker.sock").display()
            ))
            .args(a)
            .stdin(Stdio::null())
            .output()
            .context("running docker")?;
        if !out.status.success() {
            bail!(
                "docker {}: {}",
                a.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Removes the service's containers, leaves the swarm, stops dockerd by pid (its
    /// containerd with it), unmounts what it left under its directories, deletes the
    /// namespace.
    fn stop(&mut self) {
        let _ = self.docker_cmd(&["service", "rm", "web"]);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline
            && self
                .docker_cmd(&["ps", "-aq"])
                .is_ok_and(|o| !o.trim().is_empty())
        {
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = self.docker_cmd(&["swarm", "leave", "--force"]);
        if let Some(mut child) = self.child.take() {
            if let Ok(pid) = libc::pid_t::try_from(child.id()) {
                // SAFETY: signalling our own child, not yet reaped.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        }
        unmount_under(self.dir.path());
        remove_cgroups(&self.netns);
        let _ = ip(&["netns", "del", &self.netns]);
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        self.stop();
    }
}

fn ip(a: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(a).output().context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            a.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Removes the (empty, once dockerd is gone) cgroup `name` of the containers' parent and
/// what is under it, in every hierarchy.
fn remove_cgroups(name: &str) {
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    let mut roots: Vec<PathBuf> = vec![PathBuf::from("/sys/fs/cgroup").join(name)];
    roots.extend(hierarchies.flatten().map(|h| h.path().join(name)));
    for root in roots.iter().filter(|r| r.is_dir()) {
        let mut dirs = vec![root.clone()];
        let mut i = 0;
        while let Some(d) = dirs.get(i).cloned() {
            if let Ok(entries) = std::fs::read_dir(&d) {
                dirs.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
            }
            i += 1;
        }
        for d in dirs.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// Lazily unmounts every mount point under `dir`, deepest first.
fn unmount_under(dir: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<&str> = info
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|p| Path::new(p).starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = Command::new("umount").args(["-l", p]).status();
    }
}

fn run_swarm(args: &UpdateArgs, dockerd: &Path) -> Result<Figures> {
    let mut d = Dockerd::start(dockerd, &args.prefix)?;
    let result = swarm_phases(&d, args);
    d.stop();
    result
}

fn swarm_phases(d: &Dockerd, args: &UpdateArgs) -> Result<Figures> {
    d.docker_cmd(&["swarm", "init", "--advertise-addr", SWARM_ADDR])?;
    let layout = d.dir.path().join("layout");
    for tag in ["v1", "v2"] {
        let name = format!("web:{tag}");
        images::build_busybox_image(&layout, &name, TestImage::web_version(tag))?;
        let archive = d.dir.path().join(format!("web-{tag}.tar"));
        let out = Command::new("skopeo")
            .args(["copy", "--quiet"])
            .arg(format!("oci:{}:{name}", layout.display()))
            .arg(format!("docker-archive:{}:{name}", archive.display()))
            .output()
            .context("running skopeo")?;
        if !out.status.success() {
            bail!("skopeo: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        d.docker_cmd(&["load", "-q", "-i", &archive.display().to_string()])?;
    }
    let (n, p) = (args.replicas.to_string(), args.parallelism.to_string());
    let t0 = Instant::now();
    d.docker_cmd(&[
        "service",
        "create",
        "-d",
        "-q",
        "--no-resolve-image",
        "--name",
        "web",
        "--replicas",
        &n,
        "--update-parallelism",
        &p,
        "--update-delay",
        "0s",
        "--rollback-parallelism",
        &p,
        "--rollback-delay",
        "0s",
        "web:v1",
    ])?;
    let deadline = t0 + args.timeout;
    loop {
        let (image, running) = swarm_tasks(d)?;
        if running == args.replicas as usize && image.iter().all(|i| i == "web:v1") {
            break;
        }
        if Instant::now() > deadline {
            bail!("{running} of {n} Swarm tasks running");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let create = t0.elapsed().as_secs_f64();
    let poll = |want: &str, done: &str| -> Result<Phase> {
        let t0 = Instant::now();
        let mut all_running = None;
        loop {
            if all_running.is_none() {
                let (images, running) = swarm_tasks(d)?;
                if running == args.replicas as usize
                    && images.len() == running
                    && images.iter().all(|i| i == want)
                {
                    all_running = Some(t0.elapsed().as_secs_f64());
                }
            }
            let state = d.docker_cmd(&[
                "service",
                "inspect",
                "--format",
                "{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}",
                "web",
            ])?;
            let state = state.trim();
            if let (Some(a), true) = (all_running, state == done) {
                return Ok(Phase {
                    all_running: a,
                    completed: t0.elapsed().as_secs_f64(),
                    breakdown: None,
                });
            }
            if state.contains("paused") {
                bail!("the Swarm update paused");
            }
            if t0.elapsed() > args.timeout {
                bail!("Swarm: {done} not reached within {:?}", args.timeout);
            }
        }
    };
    d.docker_cmd(&[
        "service",
        "update",
        "-d",
        "-q",
        "--no-resolve-image",
        "--image",
        "web:v2",
        "--update-parallelism",
        &p,
        "--update-delay",
        "0s",
        "web",
    ])?;
    let update = poll("web:v2", "completed")?;
    d.docker_cmd(&["service", "rollback", "-d", "-q", "web"])?;
    let rollback = poll("web:v1", "rollback_completed")?;
    Ok(Figures {
        update,
        rollback,
        create,
    })
}

/// The images of the Swarm tasks meant to run that are running, and how many are.
fn swarm_tasks(d: &Dockerd) -> Result<(Vec<String>, usize)> {
    let out = d.docker_cmd(&[
        "service",
        "ps",
        "--filter",
        "desired-state=running",
        "--format",
        "{{.Image}}|{{.CurrentState}}",
        "web",
    ])?;
    let lines: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
    let images = lines
        .iter()
        .map(|l| l.split('|').next().unwrap_or_default().to_string())
        .collect();
    let running = lines
        .iter()
        .filter(|l| {
            l.split('|')
                .nth(1)
                .is_some_and(|s| s.starts_with("Running"))
        })
        .count();
    if running != lines.len() {
        return Ok((images, 0));
    }
    Ok((images, running))
}
