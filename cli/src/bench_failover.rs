//! `shoal bench failover`: how long a lab swarm with default settings takes to recover from
//! the two faults an operator meets most, each measured many times.
//!
//! ```text
//!   kill:   settled leader ──SIGKILL──▶ t0 ─ writes (config create, the CLI's own retries)
//!           through a surviving manager ─▶ first one acknowledged ─▶ figure; daemon restarted
//!   cutoff: worker w runs slots S ──all its packets dropped──▶ t0 ─▶ w Down (figure)
//!           ─▶ every slot of S RUNNING on another host (figure); healed, service whole again
//!   baseline: the cutoffs again after `swarm update --dispatcher-heartbeat 5s` (Swarm's and
//!           shoal's former default), in the same run
//! ```
//!
//! The lab is the chaos bench's ([`crate::bench_chaos`]): hosts are network namespaces, the
//! runtime is the fake one (a task's start costs no container), a cut-off host keeps running.
//! Raft terms are sampled all along: every kill needs one election, more are reported.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use deploy::{Lab, LabConfig};
use proto::pb;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::bench_chaos::{
    bench_lab, converged, host_sockets, host_state, local_state, lock, ms, p50, sampler, secs,
    secs_ms, wait_settled, Shared, RECOVER_TIMEOUT,
};

/// Targets of the issue.
const WRITE_P50_TARGET: Duration = Duration::from_secs(1);
const WRITE_MAX_TARGET: Duration = Duration::from_secs(2);
const REPLACED_MAX_TARGET: Duration = Duration::from_secs(6);
/// One attempt of a write (each attempt retries by itself while there is no leader).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// A fault that has not recovered by then counts as never.
const GIVE_UP: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(25);
const SERVICE: &str = "failover";

/// One figure per fault, in ms (None: not recovered within [`GIVE_UP`]).
type Figures = Vec<Option<u64>>;

pub struct FailoverArgs {
    pub kills: usize,
    pub cutoffs: usize,
    /// The heartbeat period of the baseline cutoffs (none: no baseline cutoffs).
    pub baseline_heartbeat: Option<Duration>,
    /// Leader kills again with openraft's election timer alone (the former behaviour).
    pub baseline_kills: usize,
    pub managers: usize,
    pub workers: usize,
    pub replicas: u32,
    pub prefix: String,
    pub logs: Option<PathBuf>,
    pub json: bool,
}

/// Figures of one series of faults, in ms (None: not recovered within [`GIVE_UP`]).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Series {
    #[serde(rename = "Ms")]
    pub ms: Vec<Option<u64>>,
    #[serde(rename = "P50Ms")]
    pub p50_ms: Option<u64>,
    #[serde(rename = "MaxMs")]
    pub max_ms: Option<u64>,
}

impl Series {
    fn of(ms: Vec<Option<u64>>) -> Series {
        let max_ms = if ms.iter().any(Option::is_none) {
            None
        } else {
            ms.iter().flatten().copied().max()
        };
        Series {
            p50_ms: p50(&ms),
            max_ms,
            ms,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Cutoffs {
    #[serde(rename = "HeartbeatMs")]
    pub heartbeat_ms: u64,
    /// Cut → the node Down in the store.
    #[serde(rename = "Down")]
    pub down: Series,
    /// Cut → every slot it ran RUNNING on another host.
    #[serde(rename = "Replaced")]
    pub replaced: Series,
}

#[derive(Clone, Debug, Serialize)]
pub struct Target {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Met")]
    pub met: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Leader killed → a write started after the kill acknowledged.
    #[serde(rename = "WriteAgain")]
    pub write_again: Series,
    /// Elections seen during the kills (one per kill is the least possible).
    #[serde(rename = "Elections")]
    pub elections: u64,
    /// The same with elections on openraft's timer alone (the former code path).
    #[serde(rename = "BaselineWriteAgain")]
    pub baseline_write_again: Option<Series>,
    #[serde(rename = "Cutoffs")]
    pub cutoffs: Cutoffs,
    #[serde(rename = "Baseline")]
    pub baseline: Option<Cutoffs>,
    #[serde(rename = "Targets")]
    pub targets: Vec<Target>,
    /// The machine's load averages (1, 5, 15 min) at the end of the run.
    #[serde(rename = "LoadAvg")]
    pub load_avg: String,
    #[serde(rename = "TookMs")]
    pub took_ms: u64,
}

fn target(name: String, value: Option<u64>, limit: Duration) -> Target {
    Target {
        met: value.is_some_and(|v| v < ms(limit)),
        name,
    }
}

fn targets(r: &Report) -> Vec<Target> {
    let mut t = Vec::new();
    if !r.write_again.ms.is_empty() {
        t.push(target(
            format!(
                "leader killed → writes again: p50 < {}",
                secs(WRITE_P50_TARGET)
            ),
            r.write_again.p50_ms,
            WRITE_P50_TARGET,
        ));
        t.push(target(
            format!(
                "leader killed → writes again: max < {}",
                secs(WRITE_MAX_TARGET)
            ),
            r.write_again.max_ms,
            WRITE_MAX_TARGET,
        ));
    }
    if !r.cutoffs.replaced.ms.is_empty() {
        t.push(target(
            format!(
                "worker cut off → its tasks running elsewhere: max < {}",
                secs(REPLACED_MAX_TARGET)
            ),
            r.cutoffs.replaced.max_ms,
            REPLACED_MAX_TARGET,
        ));
    }
    t
}

fn ratio(a: Option<u64>, b: Option<u64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0 => format!("{:.2}", a as f64 / b as f64),
        _ => "-".into(),
    }
}

pub fn render(r: &Report, args: &FailoverArgs) -> String {
    let mut out = format!(
        "failover: {} managers + {} workers (fake runtime), {} replicas; load {}; {}\n\n",
        args.managers,
        args.workers,
        args.replicas,
        r.load_avg,
        secs(Duration::from_millis(r.took_ms))
    );
    let row = |name: &str, s: &Series, base: Option<&Series>| {
        format!(
            "{name:<44} {:>4} {:>8} {:>8} {:>8} {:>8}\n",
            s.ms.len(),
            secs_ms(s.p50_ms),
            secs_ms(s.max_ms),
            base.map(|b| secs_ms(b.p50_ms))
                .unwrap_or_else(|| "-".into()),
            base.map(|b| ratio(s.p50_ms, b.p50_ms))
                .unwrap_or_else(|| "-".into()),
        )
    };
    out.push_str(&format!(
        "{:<44} {:>4} {:>8} {:>8} {:>8} {:>8}\n",
        "figure", "n", "p50", "max", "baseline", "ratio"
    ));
    out.push_str(&row(
        "leader killed → writes again",
        &r.write_again,
        r.baseline_write_again.as_ref(),
    ));
    let hb = humantime::format_duration(Duration::from_millis(r.cutoffs.heartbeat_ms));
    let base = r.baseline.as_ref();
    out.push_str(&row(
        &format!("worker cut off → Down (heartbeat {hb})"),
        &r.cutoffs.down,
        base.map(|b| &b.down),
    ));
    out.push_str(&row(
        "worker cut off → tasks running elsewhere",
        &r.cutoffs.replaced,
        base.map(|b| &b.replaced),
    ));
    if r.baseline_write_again.is_some() {
        out.push_str("(baseline of kills: elections on openraft's timer alone)\n");
    }
    if let Some(b) = base {
        let hb = humantime::format_duration(Duration::from_millis(b.heartbeat_ms));
        out.push_str(&format!("(baseline of cutoffs: heartbeat {hb})\n"));
    }
    out.push_str(&format!(
        "elections during {} kills: {}\n",
        r.write_again.ms.len(),
        r.elections
    ));
    for t in &r.targets {
        out.push_str(&format!(
            "target {}: {}\n",
            if t.met { "met" } else { "MISSED" },
            t.name
        ));
    }
    out
}

fn load_avg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// The newest raft term any manager reported in the last sample.
fn newest_term(shared: &Shared) -> u64 {
    shared
        .last_sample()
        .map(|s| {
            s.hosts
                .values()
                .flatten()
                .map(|h| h.term)
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

/// Writes through `socket` until one is acknowledged; when, after `t0`.
async fn first_write(socket: &std::path::Path, t0: Instant, seq: &mut u64) -> Option<Duration> {
    let host = format!("unix://{}", socket.display());
    while t0.elapsed() < GIVE_UP {
        *seq += 1;
        let name = format!("failover-{seq}");
        let call = async {
            let c = crate::client::Client::connect(&host)
                .await
                .map_err(|e| anyhow!("{}", e.0))?;
            c.create_file_object(
                crate::client::FileKind::Config,
                pb::CreateFileObjectRequest {
                    name,
                    data: b"failover".to_vec(),
                    labels: Default::default(),
                },
            )
            .await
            .map_err(|e| anyhow!("{e}"))
        };
        match tokio::time::timeout(ATTEMPT_TIMEOUT, call).await {
            Ok(Ok(_)) => return Some(t0.elapsed()),
            Ok(Err(_)) | Err(_) => tokio::time::sleep(POLL).await,
        }
    }
    None
}

/// The `service.slot` names a host's executor runs.
async fn slots_on(socket: &std::path::Path) -> BTreeSet<String> {
    match local_state(socket, false).await {
        Ok(v) => host_state(&v).running.into_iter().map(|(_, n)| n).collect(),
        Err(_) => BTreeSet::new(),
    }
}

/// After `target` was cut off at `t0`: when a manager first lists it Down, and when every
/// slot in `slots` runs on one of `others`.
async fn replaced(
    target: &str,
    slots: &BTreeSet<String>,
    others: &[(String, PathBuf)],
    manager: &std::path::Path,
    t0: Instant,
) -> (Option<Duration>, Option<Duration>) {
    let host = format!("unix://{}", manager.display());
    let (mut down, mut moved) = (None, None);
    while t0.elapsed() < GIVE_UP && (down.is_none() || moved.is_none()) {
        if down.is_none() {
            if let Ok(c) = crate::client::Client::connect(&host).await {
                if let Ok(Ok(nodes)) = tokio::time::timeout(ATTEMPT_TIMEOUT, c.list_nodes()).await {
                    let is_down = nodes.iter().any(|n| {
                        n.description.as_ref().is_some_and(|d| d.hostname == target)
                            && n.state == pb::NodeState::Down as i32
                    });
                    if is_down {
                        down = Some(t0.elapsed());
                    }
                }
            }
        }
        if moved.is_none() {
            let mut running = BTreeSet::new();
            for (_, sock) in others {
                running.extend(slots_on(sock).await);
            }
            if slots.is_subset(&running) {
                moved = Some(t0.elapsed());
            }
        }
        tokio::time::sleep(POLL).await;
    }
    (down, moved)
}

fn names(hosts: &[(String, PathBuf)]) -> Vec<String> {
    hosts.iter().map(|(h, _)| h.clone()).collect()
}

/// What the fault series share: the lab's hosts, the samples, the runtime to wait on.
struct Run<'a> {
    shared: &'a Shared,
    hosts: Vec<(String, PathBuf)>,
    managers: Vec<(String, PathBuf)>,
    workers: Vec<String>,
    replicas: u32,
    rt: tokio::runtime::Handle,
    log: &'a dyn Fn(String),
}

/// Kills the settled leader `n` times (restarting it after each measure).
fn run_kills(lab: &mut Lab, n: usize, run: &Run) -> Result<(Figures, u64)> {
    let (shared, managers, rt, log) = (run.shared, &run.managers, &run.rt, run.log);
    let names = names(managers);
    let mut out = Vec::new();
    let mut seq = 0u64;
    let mut elections = 0;
    for i in 0..n {
        let leader = wait_settled(shared, &names, RECOVER_TIMEOUT)
            .ok_or_else(|| anyhow!("kill {}: no settled leader", i + 1))?;
        let term = newest_term(shared);
        let (_, sock) = managers
            .iter()
            .find(|(m, _)| *m != leader)
            .context("a surviving manager")?;
        lab.kill_daemon(&leader)?;
        let t0 = Instant::now();
        let took = rt.block_on(first_write(sock, t0, &mut seq));
        log(format!(
            "kill {}: {leader} → writes again after {}",
            i + 1,
            secs_ms(took.map(ms))
        ));
        out.push(took.map(ms));
        lab.start_daemon(&leader)?;
        wait_settled(shared, &names, RECOVER_TIMEOUT)
            .ok_or_else(|| anyhow!("kill {}: no settled leader after it", i + 1))?;
        elections += newest_term(shared).saturating_sub(term);
    }
    Ok((out, elections))
}

/// Cuts the workers off in turn, `n` times, and heals each once its tasks moved; node
/// states are read through `manager`, which stays up.
fn run_cutoffs(
    lab: &mut Lab,
    n: usize,
    manager: &std::path::Path,
    run: &Run,
) -> Result<(Figures, Figures)> {
    let (shared, hosts, workers, replicas) = (run.shared, &run.hosts, &run.workers, run.replicas);
    let (rt, log) = (&run.rt, run.log);
    let (mut downs, mut moves) = (Vec::new(), Vec::new());
    for i in 0..n {
        rt.block_on(converged(hosts, replicas))
            .map_err(|e| anyhow!("cutoff {}: the service is not whole: {e}", i + 1))?;
        // The worker that runs most of the service (one cut off earlier may run none now:
        // nothing moves tasks back to it).
        let mut most: Option<(String, BTreeSet<String>)> = None;
        for w in workers {
            if let Some((_, sock)) = hosts.iter().find(|(h, _)| h == w) {
                let slots = rt.block_on(slots_on(sock));
                if most.as_ref().is_none_or(|(_, m)| slots.len() > m.len()) {
                    most = Some((w.clone(), slots));
                }
            }
        }
        let (target, slots) = most.context("a worker")?;
        let target = &target;
        if slots.is_empty() {
            bail!("cutoff {}: no worker runs a task of the service", i + 1);
        }
        let others: Vec<(String, PathBuf)> =
            hosts.iter().filter(|(h, _)| h != target).cloned().collect();
        let peers: Vec<String> = others.iter().map(|(h, _)| h.clone()).collect();
        *lock(&shared.cut) = Some(target.clone());
        lab.partition(target, &peers)?;
        let t0 = Instant::now();
        let (down, moved) = rt.block_on(replaced(target, &slots, &others, manager, t0));
        let healed = lab.heal(Some(target));
        *lock(&shared.cut) = None;
        healed?;
        log(format!(
            "cutoff {}: {target} ({} tasks) Down after {}, its tasks running elsewhere after {}",
            i + 1,
            slots.len(),
            secs_ms(down.map(ms)),
            secs_ms(moved.map(ms))
        ));
        downs.push(down.map(ms));
        moves.push(moved.map(ms));
    }
    Ok((downs, moves))
}

/// `shoal bench failover`.
pub async fn run_failover(args: FailoverArgs) -> Result<Report> {
    let took = Instant::now();
    if args.managers < 3 && args.kills > 0 {
        bail!("--managers must be at least 3 to kill the leader: a quorum must survive");
    }
    if args.workers == 0 && args.cutoffs > 0 {
        bail!("--workers must be at least 1 to cut one off");
    }
    let bin = std::env::current_exe().context("the shoal binary")?;
    // Default settings: no --dispatcher-heartbeat, the daemons' default raft timing.
    let cfg = LabConfig::new(&args.prefix, args.managers, args.workers, bin);
    let (mut lab, _teardown, log) =
        bench_lab(cfg, args.logs.clone(), "failover", args.json).await?;
    let hosts = host_sockets(&lab, false);
    let managers = host_sockets(&lab, true);
    let workers: Vec<String> = lab
        .hosts
        .iter()
        .filter(|h| !h.manager)
        .map(|h| h.name.clone())
        .collect();
    let replicas = args.replicas.to_string();
    let first = managers[0].0.clone();
    lab = tokio::task::spawn_blocking(move || {
        lab.shoal(
            &first,
            &[
                "service",
                "create",
                "--detach",
                "--name",
                SERVICE,
                "--replicas",
                &replicas,
                "failover",
            ],
        )
        .map(|_| lab)
    })
    .await??;
    converged(&hosts, args.replicas)
        .await
        .map_err(|e| anyhow!("the service did not start: {e}"))?;

    let shared = Arc::new(Shared::new());
    let stop = CancellationToken::new();
    let sampling = tokio::spawn(sampler(hosts.clone(), shared.clone(), stop.clone()));
    let rt = tokio::runtime::Handle::current();
    let (sh, kills, cutoffs, replicas, baseline) = (
        shared.clone(),
        args.kills,
        args.cutoffs,
        args.replicas,
        args.baseline_heartbeat,
    );
    let baseline_kills = args.baseline_kills;
    let res = tokio::task::spawn_blocking(move || {
        let run = Run {
            shared: &sh,
            hosts,
            managers,
            workers,
            replicas,
            rt,
            log: &log,
        };
        let res = (|| {
            let (write_again, elections) = run_kills(&mut lab, kills, &run)?;
            // Node states are read through a manager that stays up from here.
            let msock = run.managers[0].1.clone();
            let (downs, moves) = run_cutoffs(&mut lab, cutoffs, &msock, &run)?;
            let base = match baseline.filter(|_| cutoffs > 0) {
                None => None,
                Some(hb) => {
                    let hb_s = format!("{}ms", hb.as_millis());
                    lab.shoal(
                        &run.managers[0].0,
                        &["swarm", "update", "--dispatcher-heartbeat", &hb_s],
                    )?;
                    log(format!("baseline: heartbeat {hb_s}"));
                    let (d, m) = run_cutoffs(&mut lab, cutoffs, &msock, &run)?;
                    Some(Cutoffs {
                        heartbeat_ms: ms(hb),
                        down: Series::of(d),
                        replaced: Series::of(m),
                    })
                }
            };
            let base_kills = if baseline_kills > 0 {
                // Every manager restarted, one at a time, with elections on the timer alone.
                lab.daemon_args.push("--raft-prompt-election=false".into());
                for (m, _) in &run.managers {
                    wait_settled(run.shared, &names(&run.managers), RECOVER_TIMEOUT)
                        .ok_or_else(|| anyhow!("baseline: no settled leader"))?;
                    lab.stop_daemon(m, Duration::from_secs(10))?;
                    lab.start_daemon(m)?;
                }
                log("baseline: elections on openraft's timer alone".into());
                Some(Series::of(run_kills(&mut lab, baseline_kills, &run)?.0))
            } else {
                None
            };
            Ok::<_, anyhow::Error>((write_again, elections, downs, moves, base, base_kills))
        })();
        // Whatever happened, nothing stays cut off or down.
        let _ = lab.heal(None);
        for h in lab.hosts.clone() {
            if h.pid.is_none() {
                let _ = lab.start_daemon(&h.name);
            }
        }
        res
    })
    .await?;
    stop.cancel();
    let _ = sampling.await;
    let (write_again, elections, downs, moves, baseline, baseline_write_again) = res?;
    let mut report = Report {
        write_again: Series::of(write_again),
        elections,
        baseline_write_again,
        cutoffs: Cutoffs {
            heartbeat_ms: ms(manager::dispatcher::DEFAULT_HEARTBEAT),
            down: Series::of(downs),
            replaced: Series::of(moves),
        },
        baseline,
        targets: Vec::new(),
        load_avg: load_avg(),
        took_ms: ms(took.elapsed()),
    };
    report.targets = targets(&report);
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", render(&report, &args));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_series_that_never_recovered_has_no_max_and_misses_its_target() {
        let s = Series::of(vec![Some(900), Some(700), Some(1200)]);
        assert_eq!((s.p50_ms, s.max_ms), (Some(900), Some(1200)));
        let s = Series::of(vec![Some(900), None, Some(700)]);
        assert_eq!((s.p50_ms, s.max_ms), (Some(900), None));
        let mut r = Report {
            write_again: s,
            elections: 3,
            baseline_write_again: None,
            cutoffs: Cutoffs::default(),
            baseline: None,
            targets: Vec::new(),
            load_avg: String::new(),
            took_ms: 0,
        };
        let t = targets(&r);
        assert_eq!(t.len(), 2, "no cutoffs, no cutoff target");
        assert!(t[0].met && !t[1].met, "{t:?}");
        r.cutoffs.replaced = Series::of(vec![Some(5999), Some(6000)]);
        assert!(!targets(&r)[2].met);
        assert_eq!(ratio(Some(3000), Some(12000)), "0.25");
        assert_eq!(ratio(None, Some(1)), "-");
    }
}
