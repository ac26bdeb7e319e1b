//! `shoal bench chaos`: a fault run on lab hosts, in the manner of Jepsen.
//!
//! ```text
//!   writers (one per client, each on a different manager's socket) ──▶ config create
//!   sampler (every 100 ms, every host's LocalState) ──▶ raft term/state, leader claim,
//!                                                      tasks each executor runs
//!   nemesis (seeded) ──▶ kill-leader | partition-leader | partition-minority | restart-manager
//! ```
//!
//! Every acknowledged write is recorded; after the last fault is healed, every manager's own
//! copy of the store (read locally, not through the leader) must hold all of them. From the
//! samples: no two managers are raft leader of the same term, a leader cut off from the other
//! managers stops claiming leadership within [`STEP_DOWN_LIMIT`], no two managers claim
//! leadership at once for longer than that, and no task slot runs twice for longer than the
//! heartbeat grace (tasks on the host that is cut off are left out while it is: nothing can
//! stop them there). Figures: writes acknowledged / lost, and per fault kind the time from the
//! fault to the first write (started after it) acknowledged again, and the longest gap
//! between acknowledged writes.
//!
//! The recording ([`Record`]) and its analysis ([`analyze`]) are apart, so that the checks are
//! unit-tested on made-up histories; the CI test (`tests/tests/chaos.rs`) runs this command
//! with `--format json` and asserts on its checks.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use deploy::{Lab, LabConfig};
use proto::pb;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// A leader cut off from the other managers must stop claiming leadership within this (an
/// election timeout and a margin).
pub const STEP_DOWN_LIMIT: Duration = Duration::from_secs(3);
/// Targets of the issue: writes again after a leader kill, p50 and max; after a leader
/// partition, max.
const KILL_P50_TARGET: Duration = Duration::from_secs(2);
const KILL_MAX_TARGET: Duration = Duration::from_secs(5);
const PARTITION_MAX_TARGET: Duration = Duration::from_secs(5);

const SAMPLE_EVERY: Duration = Duration::from_millis(100);
const CALL_TIMEOUT: Duration = Duration::from_secs(1);
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
const WRITE_PAUSE: Duration = Duration::from_millis(50);
/// How long the cluster gets to look healthy again between faults, and to converge at the end.
pub(crate) const RECOVER_TIMEOUT: Duration = Duration::from_secs(30);
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);
const QUIET: Duration = Duration::from_secs(2);
/// A partition lasts this, plus 3 heartbeats, plus up to 2 s: the election, the new leader's
/// grace for nodes (3 s, `manager::dispatcher::NEW_LEADER_GRACE`) and 3 missed heartbeats
/// pass, so a node still attached to the cut-off leader is marked Down and its tasks
/// replaced about 6 s before the heal (longer than the heartbeat grace), unless it moved to
/// the new leader in time.
const PARTITION_HOLD: Duration = Duration::from_secs(11);
const SERVICE: &str = "chaos";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    KillLeader,
    PartitionLeader,
    PartitionMinority,
    RestartManager,
}

impl FaultKind {
    pub const ALL: [FaultKind; 4] = [
        FaultKind::KillLeader,
        FaultKind::PartitionLeader,
        FaultKind::PartitionMinority,
        FaultKind::RestartManager,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillLeader => "kill-leader",
            FaultKind::PartitionLeader => "partition-leader",
            FaultKind::PartitionMinority => "partition-minority",
            FaultKind::RestartManager => "restart-manager",
        }
    }
}

pub struct ChaosArgs {
    pub rounds: usize,
    pub seed: u64,
    pub managers: usize,
    pub workers: usize,
    pub replicas: u32,
    pub heartbeat: Duration,
    pub prefix: String,
    /// Copy the daemons' logs here before the lab goes down.
    pub logs: Option<PathBuf>,
    pub json: bool,
}

/// One host's view at one sampling instant (None: it did not answer).
#[derive(Clone, Debug, Default)]
pub struct HostState {
    pub term: u64,
    pub raft_leader: bool,
    pub claims_leader: bool,
    /// (task id, `service.slot`) of the tasks its executor runs.
    pub running: Vec<(String, String)>,
}

#[derive(Clone, Debug)]
pub struct Sample {
    pub at: Duration,
    pub hosts: BTreeMap<String, Option<HostState>>,
    /// The host cut off from the others at this instant.
    pub cut: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Ack {
    pub name: String,
    pub started: Duration,
    pub acked: Duration,
}

#[derive(Clone, Debug)]
pub struct Fault {
    pub kind: FaultKind,
    pub target: String,
    pub at: Duration,
    /// When the fault was undone (daemon started again, partition healed).
    pub healed: Duration,
    /// When the next fault began (or the run ended): the end of this fault's window.
    pub window_end: Duration,
}

/// Everything a run observed.
#[derive(Clone, Debug, Default)]
pub struct Record {
    pub managers: Vec<String>,
    pub acks: Vec<Ack>,
    /// Unacknowledged writes by the error the client saw.
    pub write_errors: BTreeMap<String, u64>,
    pub samples: Vec<Sample>,
    pub faults: Vec<Fault>,
    /// Acknowledged writes each manager's own store lacks at the end.
    pub missing: BTreeMap<String, Vec<String>>,
    /// Why the service did not run its replicas, each once, after the run (None: it did).
    pub not_converged: Option<String>,
    pub heartbeat: Duration,
}

#[derive(Clone, Debug, Serialize)]
pub struct Check {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Pass")]
    pub pass: bool,
    #[serde(rename = "Detail")]
    pub detail: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct KindFigures {
    #[serde(rename = "Kind")]
    pub kind: FaultKind,
    #[serde(rename = "Faults")]
    pub faults: usize,
    /// Fault → first write started after it and acknowledged, per fault (ms); None: none.
    #[serde(rename = "UnavailableMs")]
    pub unavailable_ms: Vec<Option<u64>>,
    #[serde(rename = "UnavailableP50Ms")]
    pub p50_ms: Option<u64>,
    #[serde(rename = "UnavailableMaxMs")]
    pub max_ms: Option<u64>,
    #[serde(rename = "LongestGapMs")]
    pub longest_gap_ms: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    #[serde(rename = "Acknowledged")]
    pub acknowledged: usize,
    #[serde(rename = "Lost")]
    pub lost: usize,
    #[serde(rename = "FailedWrites")]
    pub failed_writes: u64,
    /// The commonest errors of unacknowledged writes, with their counts.
    #[serde(rename = "WriteErrors")]
    pub write_errors: Vec<(String, u64)>,
    #[serde(rename = "Kinds")]
    pub kinds: Vec<KindFigures>,
    /// Per partition-leader fault: cut → its IsLeader false (ms); None: not while cut.
    #[serde(rename = "StepDownMs")]
    pub step_down_ms: Vec<Option<u64>>,
    #[serde(rename = "LongestDualClaimMs")]
    pub longest_dual_claim_ms: u64,
    #[serde(rename = "LongestDuplicateMs")]
    pub longest_duplicate_ms: u64,
    #[serde(rename = "Checks")]
    pub checks: Vec<Check>,
    #[serde(rename = "Targets")]
    pub targets: Vec<Check>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.pass)
    }
}

pub(crate) fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

pub(crate) fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

pub(crate) fn secs_ms(v: Option<u64>) -> String {
    v.map(|m| secs(Duration::from_millis(m)))
        .unwrap_or_else(|| "never".into())
}

/// The median of `v` (the lower one of an even count), with None (never) sorting last.
pub(crate) fn p50(v: &[Option<u64>]) -> Option<u64> {
    let mut s: Vec<u64> = v.iter().map(|x| x.unwrap_or(u64::MAX)).collect();
    s.sort_unstable();
    let m = *s.get(s.len().saturating_sub(1) / 2)?;
    (m != u64::MAX).then_some(m)
}

/// Longest stretch of consecutive samples for which `on` holds, from the first such sample
/// to the first that ends it (or the last sample).
fn longest_span(samples: &[Sample], mut on: impl FnMut(&Sample) -> bool) -> (Duration, Duration) {
    let mut best = (Duration::ZERO, Duration::ZERO);
    let mut start: Option<Duration> = None;
    for s in samples {
        match (on(s), start) {
            (true, None) => start = Some(s.at),
            (false, Some(st)) => {
                if s.at - st > best.1 {
                    best = (st, s.at - st);
                }
                start = None;
            }
            _ => {}
        }
    }
    if let (Some(st), Some(last)) = (start, samples.last()) {
        if last.at - st > best.1 {
            best = (st, last.at - st);
        }
    }
    best
}

/// Slots (`service.slot`) that run as two or more tasks in this sample, leaving out the host
/// that is cut off.
fn duplicated_slots(s: &Sample) -> BTreeSet<String> {
    let mut by_slot: HashMap<&str, BTreeSet<&str>> = HashMap::new();
    for (host, st) in &s.hosts {
        if s.cut.as_deref() == Some(host.as_str()) {
            continue;
        }
        for (id, name) in st.iter().flat_map(|st| st.running.iter()) {
            by_slot.entry(name).or_default().insert(id);
        }
    }
    by_slot
        .into_iter()
        .filter(|(_, ids)| ids.len() > 1)
        .map(|(n, _)| n.to_string())
        .collect()
}

/// The checks and figures of a run.
pub fn analyze(r: &Record) -> Report {
    let mut checks = Vec::new();

    // Lost writes.
    let lost: BTreeSet<&String> = r.missing.values().flatten().collect();
    checks.push(Check {
        name: "no acknowledged write lost".into(),
        pass: lost.is_empty(),
        detail: if lost.is_empty() {
            format!("all {} present on every manager", r.acks.len())
        } else {
            let per: Vec<String> = r
                .missing
                .iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(m, v)| format!("{m} lacks {} (e.g. {})", v.len(), v[0]))
                .collect();
            format!(
                "{} of {} lost: {}",
                lost.len(),
                r.acks.len(),
                per.join("; ")
            )
        },
    });

    // One leader per term.
    let mut leaders: BTreeMap<u64, BTreeSet<&str>> = BTreeMap::new();
    for s in &r.samples {
        for (h, st) in &s.hosts {
            if let Some(st) = st.as_ref().filter(|st| st.raft_leader) {
                leaders.entry(st.term).or_default().insert(h);
            }
        }
    }
    let bad: Vec<String> = leaders
        .iter()
        .filter(|(_, hs)| hs.len() > 1)
        .map(|(t, hs)| {
            format!(
                "term {t}: {}",
                hs.iter().copied().collect::<Vec<_>>().join(", ")
            )
        })
        .collect();
    checks.push(Check {
        name: "one leader per term".into(),
        pass: bad.is_empty(),
        detail: if bad.is_empty() {
            format!("{} terms with a leader seen", leaders.len())
        } else {
            bad.join("; ")
        },
    });

    // A cut-off leader steps down.
    let mut step_down_ms = Vec::new();
    let mut late = Vec::new();
    for f in r
        .faults
        .iter()
        .filter(|f| f.kind == FaultKind::PartitionLeader)
    {
        let stepped = r
            .samples
            .iter()
            .filter(|s| s.at >= f.at && s.at <= f.healed)
            .find(|s| {
                s.hosts
                    .get(&f.target)
                    .and_then(|h| h.as_ref())
                    .is_some_and(|h| !h.claims_leader)
            })
            .map(|s| s.at - f.at);
        step_down_ms.push(stepped.map(ms));
        match stepped {
            Some(d) if d <= STEP_DOWN_LIMIT => {}
            Some(d) => late.push(format!("{} after {}", f.target, secs(d))),
            None => late.push(format!(
                "{} still leader {} after the cut, until healed",
                f.target,
                secs(f.healed - f.at)
            )),
        }
    }
    checks.push(Check {
        name: format!(
            "a leader cut off from the managers steps down within {}",
            secs(STEP_DOWN_LIMIT)
        ),
        pass: late.is_empty(),
        detail: if late.is_empty() {
            format!(
                "{} partition(s): {}",
                step_down_ms.len(),
                step_down_ms
                    .iter()
                    .map(|v| secs_ms(*v))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        } else {
            late.join("; ")
        },
    });

    // Two managers claiming leadership at once.
    let (dual_at, dual) = longest_span(&r.samples, |s| {
        s.hosts
            .values()
            .filter(|h| h.as_ref().is_some_and(|h| h.claims_leader))
            .count()
            > 1
    });
    checks.push(Check {
        name: format!(
            "no two managers claim leadership for longer than {}",
            secs(STEP_DOWN_LIMIT)
        ),
        pass: dual <= STEP_DOWN_LIMIT,
        detail: format!("longest {} (from {})", secs(dual), secs(dual_at)),
    });

    // A restarted manager claiming leadership of a term older than the leader's.
    let mut stale = Vec::new();
    for f in r
        .faults
        .iter()
        .filter(|f| matches!(f.kind, FaultKind::KillLeader | FaultKind::RestartManager))
    {
        let window = r
            .samples
            .iter()
            .filter(|s| s.at >= f.healed && s.at <= f.window_end);
        let (mut first, mut last) = (None, None);
        for s in window {
            let newest = s
                .hosts
                .values()
                .flatten()
                .filter(|h| h.raft_leader)
                .map(|h| h.term)
                .max();
            let claims_old = s
                .hosts
                .get(&f.target)
                .and_then(|h| h.as_ref())
                .is_some_and(|h| h.claims_leader && newest.is_some_and(|n| n > h.term));
            if claims_old {
                first.get_or_insert(s.at);
                last = Some(s.at);
            }
        }
        if let (Some(a), Some(b)) = (first, last) {
            stale.push(format!(
                "{} ({}) from {} to {} after its restart",
                f.target,
                f.kind.name(),
                secs(a - f.healed),
                secs(b - f.healed)
            ));
        }
    }
    checks.push(Check {
        name: "a restarted manager never claims leadership of an old term".into(),
        pass: stale.is_empty(),
        detail: if stale.is_empty() {
            "never".into()
        } else {
            stale.join("; ")
        },
    });

    // Duplicate tasks of a slot.
    let grace = r.heartbeat * 3;
    let mut longest_dup = (Duration::ZERO, Duration::ZERO, String::new());
    let slots: BTreeSet<String> = r.samples.iter().flat_map(duplicated_slots).collect();
    for slot in &slots {
        let (at, d) = longest_span(&r.samples, |s| duplicated_slots(s).contains(slot));
        if d > longest_dup.1 {
            longest_dup = (at, d, slot.clone());
        }
    }
    checks.push(Check {
        name: format!(
            "no task slot runs twice for longer than the heartbeat grace ({})",
            secs(grace)
        ),
        pass: longest_dup.1 <= grace,
        detail: if slots.is_empty() {
            "never".into()
        } else {
            // Where it ran twice, and which fault was last injected before.
            let on: Vec<&str> = r
                .samples
                .iter()
                .find(|s| s.at == longest_dup.0)
                .map(|s| {
                    s.hosts
                        .iter()
                        .filter(|(_, h)| {
                            h.as_ref()
                                .is_some_and(|h| h.running.iter().any(|(_, n)| *n == longest_dup.2))
                        })
                        .map(|(h, _)| h.as_str())
                        .collect()
                })
                .unwrap_or_default();
            let after = r
                .faults
                .iter()
                .rev()
                .find(|f| f.at <= longest_dup.0)
                .map(|f| {
                    format!(
                        ", {} on {} at {}, healed at {}",
                        f.kind.name(),
                        f.target,
                        secs(f.at),
                        secs(f.healed)
                    )
                })
                .unwrap_or_default();
            format!(
                "longest {} ({} on {} from {}{after})",
                secs(longest_dup.1),
                longest_dup.2,
                on.join(" and "),
                secs(longest_dup.0)
            )
        },
    });

    checks.push(Check {
        name: "the service runs each replica once after healing".into(),
        pass: r.not_converged.is_none(),
        detail: r.not_converged.clone().unwrap_or_else(|| "yes".into()),
    });

    // Unavailability per fault kind.
    let mut ack_ends: Vec<Duration> = r.acks.iter().map(|a| a.acked).collect();
    ack_ends.sort();
    let mut kinds = Vec::new();
    for kind in FaultKind::ALL {
        let faults: Vec<&Fault> = r.faults.iter().filter(|f| f.kind == kind).collect();
        if faults.is_empty() {
            continue;
        }
        let mut unavailable = Vec::new();
        let mut gap = Duration::ZERO;
        for f in &faults {
            let first = r
                .acks
                .iter()
                .filter(|a| a.started >= f.at && a.acked <= f.window_end)
                .map(|a| a.acked)
                .min();
            unavailable.push(first.map(|t| ms(t - f.at)));
            let mut prev = f.at;
            for &t in ack_ends.iter().filter(|&&t| t >= f.at && t <= f.window_end) {
                gap = gap.max(t - prev);
                prev = t;
            }
            gap = gap.max(f.window_end.saturating_sub(prev));
        }
        kinds.push(KindFigures {
            kind,
            faults: faults.len(),
            p50_ms: p50(&unavailable),
            max_ms: if unavailable.iter().any(Option::is_none) {
                None
            } else {
                unavailable.iter().flatten().max().copied()
            },
            unavailable_ms: unavailable,
            longest_gap_ms: ms(gap),
        });
    }

    let mut targets = Vec::new();
    for k in &kinds {
        let within = |v: Option<u64>, limit: Duration| v.is_some_and(|v| v <= ms(limit));
        match k.kind {
            FaultKind::KillLeader => targets.push(Check {
                name: format!(
                    "kill-leader: writes again p50 ≤ {}, max ≤ {}",
                    secs(KILL_P50_TARGET),
                    secs(KILL_MAX_TARGET)
                ),
                pass: within(k.p50_ms, KILL_P50_TARGET) && within(k.max_ms, KILL_MAX_TARGET),
                detail: format!("p50 {}, max {}", secs_ms(k.p50_ms), secs_ms(k.max_ms)),
            }),
            FaultKind::PartitionLeader => targets.push(Check {
                name: format!(
                    "partition-leader: writes again max ≤ {}",
                    secs(PARTITION_MAX_TARGET)
                ),
                pass: within(k.max_ms, PARTITION_MAX_TARGET),
                detail: format!("p50 {}, max {}", secs_ms(k.p50_ms), secs_ms(k.max_ms)),
            }),
            _ => {}
        }
    }

    Report {
        acknowledged: r.acks.len(),
        lost: lost.len(),
        failed_writes: r.write_errors.values().sum(),
        write_errors: {
            let mut v: Vec<(String, u64)> = r
                .write_errors
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect();
            v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            v.truncate(6);
            v
        },
        kinds,
        step_down_ms,
        longest_dual_claim_ms: ms(dual),
        longest_duplicate_ms: ms(longest_dup.1),
        checks,
        targets,
    }
}

/// The report as text.
pub fn render(rep: &Report, args: &ChaosArgs, took: Duration) -> String {
    let mut out = format!(
        "chaos: seed {}, {} rounds, {} managers + {} worker(s), heartbeat {}, {}\n",
        args.seed,
        args.rounds,
        args.managers,
        args.workers,
        secs(args.heartbeat),
        secs(took)
    );
    out += &format!(
        "writes: {} acknowledged, {} lost ({} failed or timed out, not acknowledged)\n\n",
        rep.acknowledged, rep.lost, rep.failed_writes
    );
    if !rep.write_errors.is_empty() {
        out.truncate(out.len() - 1);
        out += "unacknowledged writes were told:\n";
        for (why, n) in &rep.write_errors {
            out += &format!("  {n:>6}  {why}\n");
        }
        out += "\n";
    }
    out += &format!(
        "{:<20} {:>6} {:>16} {:>16} {:>14}\n",
        "FAULT", "COUNT", "UNAVAILABLE P50", "UNAVAILABLE MAX", "LONGEST GAP"
    );
    for k in &rep.kinds {
        out += &format!(
            "{:<20} {:>6} {:>16} {:>16} {:>14}\n",
            k.kind.name(),
            k.faults,
            secs_ms(k.p50_ms),
            secs_ms(k.max_ms),
            secs(Duration::from_millis(k.longest_gap_ms))
        );
    }
    out += "\nchecks:\n";
    for c in &rep.checks {
        out += &format!(
            "  {} {}: {}\n",
            if c.pass { "PASS" } else { "FAIL" },
            c.name,
            c.detail
        );
    }
    out += "targets:\n";
    for c in &rep.targets {
        out += &format!(
            "  {} {}: {}\n",
            if c.pass { "MET " } else { "MISS" },
            c.name,
            c.detail
        );
    }
    out
}

// ---------------------------------------------------------------------------------------
// The run.

/// Removes the lab (after keeping its logs) however the run ends.
/// A lab of fake-runtime hosts for a bench, brought up from `cfg` (its hosts' logs copied into
/// `logs` and the lab torn down when the returned guard drops), and the bench's progress log:
/// plain lines, or prefixed with `tag` when the figures go to stdout as JSON.
pub(crate) async fn bench_lab(
    mut cfg: LabConfig,
    logs: Option<PathBuf>,
    tag: &'static str,
    json: bool,
) -> Result<(Lab, LabTeardown, impl Fn(String) + Copy)> {
    cfg.ready_timeout = Duration::from_secs(90);
    cfg.daemon_args = vec!["--runtime".into(), "fake".into()];
    let log = move |line: String| {
        if json {
            eprintln!("{tag}: {line}");
        } else {
            eprintln!("{line}");
        }
    };
    log(format!("bringing up lab {}", cfg.prefix));
    let prefix = cfg.prefix.clone();
    let lab = tokio::task::spawn_blocking(move || Lab::up(&cfg)).await??;
    let teardown = LabTeardown {
        prefix,
        logs,
        hosts: lab
            .hosts
            .iter()
            .map(|h| (h.name.clone(), h.log.clone()))
            .collect(),
    };
    Ok((lab, teardown, log))
}

/// The lab's hosts (or its managers only) with their daemon sockets.
pub(crate) fn host_sockets(lab: &Lab, managers_only: bool) -> Vec<(String, PathBuf)> {
    lab.hosts
        .iter()
        .filter(|h| h.manager || !managers_only)
        .map(|h| (h.name.clone(), h.socket.clone()))
        .collect()
}

pub(crate) struct LabTeardown {
    pub(crate) prefix: String,
    pub(crate) logs: Option<PathBuf>,
    pub(crate) hosts: Vec<(String, PathBuf)>,
}

impl Drop for LabTeardown {
    fn drop(&mut self) {
        if let Some(dir) = &self.logs {
            if std::fs::create_dir_all(dir).is_ok() {
                for (name, log) in &self.hosts {
                    let _ = std::fs::copy(log, dir.join(format!("{name}.log")));
                }
            }
        }
        if let Err(e) = Lab::down(&self.prefix) {
            eprintln!("lab {} teardown failed: {e}", self.prefix);
        }
    }
}

pub(crate) async fn local_state(socket: &Path, configs: bool) -> Result<pb::LocalStateResponse> {
    let call = async {
        let ch = proto::transport::unix_channel(socket.to_path_buf()).await?;
        let reply = pb::node_local_client::NodeLocalClient::new(ch)
            .max_decoding_message_size(64 << 20)
            .local_state(pb::LocalStateRequest { configs })
            .await?
            .into_inner();
        Ok::<_, anyhow::Error>(reply)
    };
    tokio::time::timeout(CALL_TIMEOUT * if configs { 10 } else { 1 }, call)
        .await
        .map_err(|_| anyhow!("timed out"))?
}

pub(crate) fn host_state(v: &pb::LocalStateResponse) -> HostState {
    HostState {
        term: v.raft_term,
        raft_leader: v.raft_state == "Leader",
        claims_leader: v.is_leader,
        running: v
            .running
            .iter()
            .map(|t| (t.id.clone(), t.name.clone()))
            .collect(),
    }
}

pub(crate) struct Shared {
    start: Instant,
    acks: Mutex<Vec<Ack>>,
    /// Unacknowledged writes by what the client was told.
    failed: Mutex<BTreeMap<String, u64>>,
    samples: Mutex<Vec<Sample>>,
    pub(crate) cut: Mutex<Option<String>>,
}

impl Shared {
    pub(crate) fn new() -> Shared {
        Shared {
            start: Instant::now(),
            acks: Mutex::default(),
            failed: Mutex::default(),
            samples: Mutex::default(),
            cut: Mutex::default(),
        }
    }
    fn now(&self) -> Duration {
        self.start.elapsed()
    }
    pub(crate) fn last_sample(&self) -> Option<Sample> {
        self.samples.lock().expect("samples").last().cloned()
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn writer(client: usize, socket: PathBuf, shared: Arc<Shared>, stop: CancellationToken) {
    let mut seq = 0u64;
    while !stop.is_cancelled() {
        seq += 1;
        let name = format!("chaos-c{client}-{seq}");
        let started = shared.now();
        let call = async {
            let ch = proto::transport::unix_channel(socket.clone()).await?;
            pb::control_client::ControlClient::new(ch)
                .create_config(pb::CreateFileObjectRequest {
                    name: name.clone(),
                    data: format!("written by client {client}").into_bytes(),
                    labels: Default::default(),
                })
                .await?;
            Ok::<_, anyhow::Error>(())
        };
        let res = tokio::time::timeout(WRITE_TIMEOUT, call).await;
        let ok = matches!(res, Ok(Ok(())));
        let why = match res {
            Ok(Ok(())) => None,
            Err(_) => Some(format!("no answer within {}", secs(WRITE_TIMEOUT))),
            Ok(Err(e)) => Some(match e.downcast_ref::<tonic::Status>() {
                Some(st) if !st.message().is_empty() => {
                    st.message().chars().take(160).collect::<String>()
                }
                Some(st) => format!("{:?}", st.code()),
                None => "the daemon's socket did not answer".into(),
            }),
        };
        match why {
            None => {
                let acked = shared.now();
                lock(&shared.acks).push(Ack {
                    name,
                    started,
                    acked,
                });
            }
            Some(why) => *lock(&shared.failed).entry(why).or_default() += 1,
        }
        let pause = if ok { WRITE_PAUSE } else { WRITE_PAUSE * 2 };
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(pause) => {}
        }
    }
}

pub(crate) async fn sampler(
    hosts: Vec<(String, PathBuf)>,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let at = shared.now();
        let cut = lock(&shared.cut).clone();
        let states = futures::future::join_all(
            hosts
                .iter()
                .map(|(_, sock)| async move { local_state(sock, false).await.ok() }),
        )
        .await;
        let sample = Sample {
            at,
            hosts: hosts
                .iter()
                .zip(states)
                .map(|((h, _), st)| (h.clone(), st.as_ref().map(host_state)))
                .collect(),
            cut,
        };
        lock(&shared.samples).push(sample);
    }
}

/// The manager every answering manager agrees is leader, once exactly one claims it.
fn settled_leader(s: &Sample, managers: &[String]) -> Option<String> {
    let answering = managers
        .iter()
        .filter(|m| s.hosts.get(*m).is_some_and(|h| h.is_some()))
        .count();
    let claims: Vec<&String> = managers
        .iter()
        .filter(|m| {
            s.hosts
                .get(*m)
                .and_then(|h| h.as_ref())
                .is_some_and(|h| h.claims_leader)
        })
        .collect();
    // A restarted leader may claim its old term for a moment, before the others' election.
    let newest = s.hosts.values().flatten().map(|h| h.term).max();
    match claims.as_slice() {
        [one]
            if answering == managers.len() && s.hosts[*one].as_ref().map(|h| h.term) == newest =>
        {
            Some((*one).clone())
        }
        _ => None,
    }
}

/// Wait (bounded) until every manager answers and one of them, in the newest term, has
/// claimed to lead without a break for [`QUIET`].
pub(crate) fn wait_settled(
    shared: &Shared,
    managers: &[String],
    timeout: Duration,
) -> Option<String> {
    let deadline = Instant::now() + timeout;
    let mut since: Option<(String, Instant)> = None;
    loop {
        let now = shared
            .last_sample()
            .and_then(|s| settled_leader(&s, managers));
        match (now, &since) {
            (Some(l), Some((prev, t))) if l == *prev => {
                if t.elapsed() >= QUIET {
                    return Some(l);
                }
            }
            (Some(l), _) => since = Some((l, Instant::now())),
            (None, _) => since = None,
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(SAMPLE_EVERY);
    }
}

/// The nemesis: `rounds` faults, kinds in a seeded order that covers every kind once per
/// four rounds. Runs on a blocking thread (the lab's operations are synchronous).
fn nemesis(
    lab: &mut Lab,
    args: &ChaosArgs,
    shared: &Shared,
    managers: &[String],
    log: &dyn Fn(String),
) -> Result<Vec<Fault>> {
    let mut rng = StdRng::seed_from_u64(args.seed);
    let mut kinds = Vec::new();
    while kinds.len() < args.rounds {
        let mut block = FaultKind::ALL.to_vec();
        block.shuffle(&mut rng);
        kinds.extend(block);
    }
    kinds.truncate(args.rounds);
    let mut faults: Vec<Fault> = Vec::new();
    for (round, kind) in kinds.into_iter().enumerate() {
        let leader = match wait_settled(shared, managers, RECOVER_TIMEOUT) {
            Some(l) => l,
            None => {
                log(format!(
                    "round {}: no settled leader within {}; faulting the last claimant",
                    round + 1,
                    secs(RECOVER_TIMEOUT)
                ));
                shared
                    .last_sample()
                    .and_then(|s| {
                        managers
                            .iter()
                            .find(|m| {
                                s.hosts
                                    .get(*m)
                                    .and_then(|h| h.as_ref())
                                    .is_some_and(|h| h.claims_leader)
                            })
                            .cloned()
                    })
                    .unwrap_or_else(|| managers[0].clone())
            }
        };
        let others: Vec<String> = managers.iter().filter(|m| **m != leader).cloned().collect();
        // Kills and restarts are short; partitions outlast the time a new leader takes to
        // mark the cut-off nodes Down (its grace, then 3 heartbeats), so that their tasks are
        // replaced and the old ones must be stopped once the partition heals.
        let hold = match kind {
            FaultKind::KillLeader | FaultKind::RestartManager => {
                Duration::from_millis(rng.gen_range(2000..4000))
            }
            FaultKind::PartitionLeader | FaultKind::PartitionMinority => {
                PARTITION_HOLD + args.heartbeat * 3 + Duration::from_millis(rng.gen_range(0..2000))
            }
        };
        let target = match kind {
            FaultKind::KillLeader | FaultKind::PartitionLeader => leader.clone(),
            FaultKind::PartitionMinority => others
                .choose(&mut rng)
                .cloned()
                .unwrap_or_else(|| leader.clone()),
            FaultKind::RestartManager => managers
                .choose(&mut rng)
                .cloned()
                .unwrap_or_else(|| leader.clone()),
        };
        // A fault counts from when it has taken effect (the daemon is dead, the partition's
        // rules are in place): a write started while the rules were still being applied could
        // commit and would make the fault look shorter than it was.
        let mut at = shared.now();
        if let Some(prev) = faults.last_mut() {
            prev.window_end = at;
        }
        log(format!(
            "round {}: {} on {target} (leader {leader})",
            round + 1,
            kind.name()
        ));
        match kind {
            FaultKind::KillLeader => {
                lab.kill_daemon(&target)?;
                at = shared.now();
                std::thread::sleep(hold);
                lab.start_daemon(&target)?;
            }
            FaultKind::PartitionLeader | FaultKind::PartitionMinority => {
                // The leader loses the other managers only (workers still reach it); a
                // minority manager loses everyone.
                let from: Vec<String> = if kind == FaultKind::PartitionLeader {
                    others.clone()
                } else {
                    lab.hosts
                        .iter()
                        .map(|h| h.name.clone())
                        .filter(|h| *h != target)
                        .collect()
                };
                *lock(&shared.cut) = Some(target.clone());
                let res = lab.partition(&target, &from);
                if res.is_ok() {
                    at = shared.now();
                    std::thread::sleep(hold);
                }
                let healed = lab.heal(Some(&target));
                *lock(&shared.cut) = None;
                res?;
                healed?;
            }
            FaultKind::RestartManager => {
                lab.stop_daemon(&target, Duration::from_secs(10))?;
                lab.start_daemon(&target)?;
            }
        }
        let healed = shared.now();
        faults.push(Fault {
            kind,
            target,
            at,
            healed,
            window_end: healed,
        });
    }
    if wait_settled(shared, managers, RECOVER_TIMEOUT).is_none() {
        log("after the last fault: no settled leader".into());
    }
    if let Some(last) = faults.last_mut() {
        last.window_end = shared.now();
    }
    Ok(faults)
}

/// Wait until every manager's own store holds every acknowledged write; what is missing at
/// the deadline, per manager.
async fn catch_up(managers: &[(String, PathBuf)], acks: &[Ack]) -> BTreeMap<String, Vec<String>> {
    let deadline = Instant::now() + CATCH_UP_TIMEOUT;
    loop {
        let mut missing = BTreeMap::new();
        for (m, sock) in managers {
            let have: BTreeSet<String> = match local_state(sock, true).await {
                Ok(v) => v.configs.into_iter().collect(),
                Err(_) => BTreeSet::new(),
            };
            let lacks: Vec<String> = acks
                .iter()
                .filter(|a| !have.contains(&a.name))
                .map(|a| a.name.clone())
                .collect();
            missing.insert(m.clone(), lacks);
        }
        if missing.values().all(Vec::is_empty) || Instant::now() >= deadline {
            return missing;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Wait until the service's replicas each run exactly once across the hosts.
pub(crate) async fn converged(hosts: &[(String, PathBuf)], replicas: u32) -> Result<(), String> {
    let deadline = Instant::now() + RECOVER_TIMEOUT * 2;
    loop {
        let mut slots: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut silent = Vec::new();
        for (h, sock) in hosts {
            match local_state(sock, false).await {
                Ok(v) => {
                    for (id, name) in host_state(&v).running {
                        slots.entry(name).or_default().insert(id);
                    }
                }
                Err(_) => silent.push(h.clone()),
            }
        }
        let twice: Vec<&String> = slots
            .iter()
            .filter(|(_, ids)| ids.len() > 1)
            .map(|(n, _)| n)
            .collect();
        if silent.is_empty() && twice.is_empty() && slots.len() == replicas as usize {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "after {}: {} of {replicas} slots running, twice: {twice:?}, not answering: {silent:?}",
                secs(RECOVER_TIMEOUT * 2),
                slots.len()
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `shoal bench chaos`. Ok(report) once the run completed, whatever its checks say.
pub async fn run_chaos(args: ChaosArgs) -> Result<Report> {
    let took = Instant::now();
    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    if args.managers < 3 {
        bail!("--managers must be at least 3: a quorum must survive one fault");
    }
    let bin = std::env::current_exe().context("the shoal binary")?;
    let mut cfg = LabConfig::new(&args.prefix, args.managers, args.workers, bin);
    cfg.heartbeat_ms = Some(ms(args.heartbeat));
    let (mut lab, _teardown, log) = bench_lab(cfg, args.logs.clone(), "chaos", args.json).await?;
    let hosts = host_sockets(&lab, false);
    let manager_socks = host_sockets(&lab, true);
    let managers: Vec<String> = manager_socks.iter().map(|(m, _)| m.clone()).collect();

    let replicas = args.replicas.to_string();
    let first = managers[0].clone();
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
                "chaos",
            ],
        )
        .map(|_| lab)
    })
    .await??;
    converged(&hosts, args.replicas)
        .await
        .map_err(|e| anyhow!("the service did not start: {e}"))?;
    log(format!(
        "service {SERVICE} running {} replicas",
        args.replicas
    ));

    let shared = Arc::new(Shared::new());
    let stop = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(sampler(hosts.clone(), shared.clone(), stop.clone()));
    for client in 0..4 {
        let sock = manager_socks[client % manager_socks.len()].1.clone();
        tasks.spawn(writer(client, sock, shared.clone(), stop.clone()));
    }

    let heartbeat = args.heartbeat;
    let nemesis_args = ChaosArgs {
        logs: None,
        prefix: args.prefix.clone(),
        ..args
    };
    let (sh, mgrs) = (shared.clone(), managers.clone());
    let (lab, faults, nemesis_args) = tokio::task::spawn_blocking(move || {
        let res = nemesis(&mut lab, &nemesis_args, &sh, &mgrs, &log);
        // Whatever happened, nothing stays cut off or down.
        let _ = lab.heal(None);
        for h in lab.hosts.clone() {
            if h.pid.is_none() {
                let _ = lab.start_daemon(&h.name);
            }
        }
        (lab, res, nemesis_args)
    })
    .await?;
    stop.cancel();
    while tasks.join_next().await.is_some() {}
    drop(lab);
    let faults = faults?;

    let acks = lock(&shared.acks).clone();
    let missing = catch_up(&manager_socks, &acks).await;
    let converged = converged(&hosts, nemesis_args.replicas).await;
    let record = Record {
        managers,
        acks,
        write_errors: lock(&shared.failed).clone(),
        samples: lock(&shared.samples).clone(),
        faults,
        missing,
        not_converged: converged.err(),
        heartbeat,
    };
    let report = analyze(&record);
    if nemesis_args.json {
        let mut v = serde_json::to_value(&report)?;
        v["Seed"] = json!(nemesis_args.seed);
        v["Rounds"] = json!(nemesis_args.rounds);
        v["Faults"] = record
            .faults
            .iter()
            .map(|f| {
                json!({"Kind": f.kind, "Target": f.target, "AtMs": ms(f.at), "HealedMs": ms(f.healed)})
            })
            .collect();
        v["TookMs"] = json!(ms(took.elapsed()));
        println!("{v}");
    } else {
        print!("{}", render(&report, &nemesis_args, took.elapsed()));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(term: u64, leader: bool, running: &[(&str, &str)]) -> Option<HostState> {
        Some(HostState {
            term,
            raft_leader: leader,
            claims_leader: leader,
            running: running
                .iter()
                .map(|(i, n)| (i.to_string(), n.to_string()))
                .collect(),
        })
    }

    fn sample(at_ms: u64, hosts: Vec<(&str, Option<HostState>)>, cut: Option<&str>) -> Sample {
        Sample {
            at: Duration::from_millis(at_ms),
            hosts: hosts.into_iter().map(|(h, s)| (h.to_string(), s)).collect(),
            cut: cut.map(str::to_string),
        }
    }

    fn base() -> Record {
        Record {
            managers: vec!["m1".into(), "m2".into(), "m3".into()],
            heartbeat: Duration::from_secs(1),
            ..Default::default()
        }
    }

    fn check<'a>(rep: &'a Report, prefix: &str) -> &'a Check {
        rep.checks
            .iter()
            .find(|c| c.name.starts_with(prefix))
            .unwrap_or_else(|| panic!("no check {prefix}"))
    }

    #[test]
    fn two_leaders_of_one_term_fail() {
        let mut r = base();
        r.samples = vec![
            sample(
                0,
                vec![("m1", st(2, true, &[])), ("m2", st(2, false, &[]))],
                None,
            ),
            sample(
                100,
                vec![("m1", st(2, false, &[])), ("m2", st(2, true, &[]))],
                None,
            ),
        ];
        let rep = analyze(&r);
        let c = check(&rep, "one leader per term");
        assert!(!c.pass, "{c:?}");
        assert!(c.detail.contains("term 2: m1, m2"), "{c:?}");
        r.samples[1].hosts.insert("m2".into(), st(3, true, &[]));
        assert!(check(&analyze(&r), "one leader per term").pass);
    }

    #[test]
    fn partitioned_leader_must_step_down() {
        let mut r = base();
        r.faults = vec![Fault {
            kind: FaultKind::PartitionLeader,
            target: "m1".into(),
            at: Duration::from_secs(10),
            healed: Duration::from_secs(16),
            window_end: Duration::from_secs(20),
        }];
        // m1 keeps claiming while m2 leads a newer term: fails, and so does the dual claim.
        r.samples = (100..=160)
            .map(|t| {
                sample(
                    t * 100,
                    vec![("m1", st(2, true, &[])), ("m2", st(3, t >= 105, &[]))],
                    Some("m1"),
                )
            })
            .collect();
        let rep = analyze(&r);
        assert!(!check(&rep, "a leader cut off").pass);
        assert_eq!(rep.step_down_ms, vec![None]);
        assert!(!check(&rep, "no two managers claim").pass);
        // Stepping down 1.2 s after the cut passes both.
        for s in &mut r.samples {
            if s.at >= Duration::from_millis(11_200) {
                s.hosts.insert("m1".into(), st(3, false, &[]));
            }
        }
        let rep = analyze(&r);
        assert!(check(&rep, "a leader cut off").pass, "{:?}", rep.checks);
        assert_eq!(rep.step_down_ms, vec![Some(1200)]);
        assert!(check(&rep, "no two managers claim").pass);
        assert_eq!(rep.longest_dual_claim_ms, 700);
    }

    #[test]
    fn duplicates_count_only_outside_the_cut_host() {
        let mut r = base();
        // w1 and m2 both run chaos.1 for 5 s: longer than 3 heartbeats.
        r.samples = (0..=50)
            .map(|t| {
                sample(
                    t * 100,
                    vec![
                        ("w1", st(0, false, &[("a", "chaos.1")])),
                        ("m2", st(3, true, &[("b", "chaos.1"), ("c", "chaos.2")])),
                    ],
                    None,
                )
            })
            .collect();
        let rep = analyze(&r);
        let c = check(&rep, "no task slot");
        assert!(!c.pass, "{c:?}");
        assert!(
            c.detail.contains("chaos.1 on m2 and w1 from 0.00s"),
            "{c:?}"
        );
        assert_eq!(rep.longest_duplicate_ms, 5000);
        // The same while w1 is cut off: nothing could stop its task there.
        for s in &mut r.samples {
            s.cut = Some("w1".into());
        }
        let rep = analyze(&r);
        assert!(check(&rep, "no task slot").pass);
        assert_eq!(rep.longest_duplicate_ms, 0);
    }

    #[test]
    fn unavailability_and_lost_writes() {
        let mut r = base();
        let f = |kind, at: u64, end: u64| Fault {
            kind,
            target: "m1".into(),
            at: Duration::from_secs(at),
            healed: Duration::from_secs(at + 3),
            window_end: Duration::from_secs(end),
        };
        r.faults = vec![
            f(FaultKind::KillLeader, 10, 20),
            f(FaultKind::KillLeader, 20, 30),
            f(FaultKind::PartitionLeader, 30, 40),
        ];
        let ack = |name: &str, s: u64, e: u64| Ack {
            name: name.into(),
            started: Duration::from_millis(s),
            acked: Duration::from_millis(e),
        };
        r.acks = vec![
            // In flight across the fault: does not count as writes being possible again.
            ack("a", 9_900, 10_100),
            ack("b", 10_500, 11_500),
            ack("c", 20_200, 26_000),
            ack("d", 30_100, 30_300),
            ack("e", 35_000, 35_100),
        ];
        r.missing.insert("m2".into(), vec!["c".into()]);
        let rep = analyze(&r);
        assert_eq!(rep.lost, 1);
        assert!(!check(&rep, "no acknowledged write lost").pass);
        let kill = &rep.kinds[0];
        assert_eq!(kill.kind, FaultKind::KillLeader);
        assert_eq!(kill.unavailable_ms, vec![Some(1500), Some(6000)]);
        assert_eq!(kill.p50_ms, Some(1500));
        assert_eq!(kill.max_ms, Some(6000));
        // 26 s → 30 s (end of the window) is the longest gap.
        assert_eq!(kill.longest_gap_ms, 8500);
        let part = &rep.kinds[1];
        assert_eq!(part.unavailable_ms, vec![Some(300)]);
        assert_eq!(part.longest_gap_ms, 4900);
        assert!(!rep.targets[0].pass, "{:?}", rep.targets);
        assert!(rep.targets[1].pass, "{:?}", rep.targets);
    }

    #[test]
    fn restarted_leader_must_not_claim_its_old_term() {
        let mut r = base();
        r.faults = vec![Fault {
            kind: FaultKind::KillLeader,
            target: "m1".into(),
            at: Duration::from_secs(10),
            healed: Duration::from_secs(13),
            window_end: Duration::from_secs(20),
        }];
        let stale = |claims| {
            Some(HostState {
                term: 2,
                raft_leader: false,
                claims_leader: claims,
                running: Vec::new(),
            })
        };
        r.samples = (130..=200)
            .map(|t| {
                sample(
                    t * 100,
                    vec![("m1", stale(t < 150)), ("m2", st(3, true, &[]))],
                    None,
                )
            })
            .collect();
        let rep = analyze(&r);
        let c = check(&rep, "a restarted manager");
        assert!(!c.pass, "{c:?}");
        assert!(
            c.detail.contains("m1 (kill-leader) from 0.00s to 1.90s"),
            "{c:?}"
        );
        r.samples.iter_mut().for_each(|s| {
            s.hosts.insert("m1".into(), stale(false));
        });
        assert!(check(&analyze(&r), "a restarted manager").pass);
    }

    #[test]
    fn a_stale_claim_is_no_settled_leader() {
        let ms3 = ["m1", "m2", "m3"].map(String::from);
        let one = sample(
            0,
            vec![
                ("m1", st(4, true, &[])),
                ("m2", st(4, false, &[])),
                ("m3", st(4, false, &[])),
            ],
            None,
        );
        assert_eq!(settled_leader(&one, &ms3).as_deref(), Some("m1"));
        // m1 restarted and claims term 4 while the others already vote in term 5.
        let mut stale = one.clone();
        stale.hosts.insert("m2".into(), st(5, false, &[]));
        assert_eq!(settled_leader(&stale, &ms3), None);
        // A manager that does not answer: not settled either.
        let mut silent = one;
        silent.hosts.insert("m3".into(), None);
        assert_eq!(settled_leader(&silent, &ms3), None);
    }

    #[test]
    fn p50_counts_never_as_longest() {
        assert_eq!(p50(&[]), None);
        assert_eq!(p50(&[Some(3), None, Some(1)]), Some(3));
        assert_eq!(p50(&[None, None, Some(1)]), None);
        assert_eq!(p50(&[Some(4), Some(2)]), Some(2));
    }
}
