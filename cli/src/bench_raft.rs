//! `shoal bench raft`: raft write throughput. Real managers in one process (raft on disk in a
//! temp dir, gRPC with mutual TLS on loopback); clients create and update task objects
//! through the leader store's normal write path ([`manager::store::Store::propose`]), `batch`
//! operations a transaction, and the same kind of writes one operation a transaction as the
//! baseline of the same run. At the end every acknowledged write is looked up in every
//! manager's store.
//!
//! The tasks are ended ones (desired and observed state past RUNNING) of services with no
//! replicas: nothing the leader's orchestrator, scheduler or dispatcher would write to, so
//! the writes measured are the clients' alone and what the stores hold at the end is known.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use manager::clock::{Clock, SystemClock};
use manager::store::{Object, Op, Service, Task, Txn};
use manager::Manager;
use proto::security::Role;
use proto::spec::{ServiceMode, ServiceSpec, TaskSpec, TaskState, TaskStatus};

use crate::bench::{bench_cluster, bench_manager, node, propose_all};

/// Tasks of one service: the orchestrator's round over a service touched by the writes reads
/// its tasks, so services stay small as a real cluster's do.
const TASKS_PER_SERVICE: u64 = 1_000;
/// The baseline's writes at most (one raft round trip each, shared by the clients').
const BASELINE_MAX_WRITES: u64 = 5_000;

#[derive(Clone, Debug)]
pub struct RaftBenchConfig {
    pub managers: usize,
    /// Task writes (operations) of the batched run.
    pub writes: u64,
    /// Operations a transaction.
    pub batch: usize,
    /// Writers at once.
    pub clients: usize,
    pub json: bool,
}

/// One phase's figures.
#[derive(Debug, Default, Clone, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct PhaseFigures {
    pub ops_per_txn: usize,
    /// Task writes acknowledged.
    pub writes: u64,
    pub seconds: f64,
    pub writes_per_s: f64,
    /// From proposal to acknowledgement, per transaction.
    pub commit_p50_ms: f64,
    pub commit_p99_ms: f64,
    /// Raft entries appended, summed over the managers.
    pub entries: u64,
    pub bytes_per_entry: f64,
    /// Durable commits of the raft databases per second, summed over the managers.
    pub syncs_per_s: f64,
    /// Writes refused or failed (none expected), and the first reason.
    pub failed: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub first_error: String,
}

#[derive(Debug, Default, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RaftFigures {
    pub managers: usize,
    pub clients: usize,
    pub batched: PhaseFigures,
    pub unbatched: PhaseFigures,
    /// Batched writes/s over unbatched writes/s.
    pub ratio: f64,
    /// Acknowledged writes checked on every manager, and those found there as written.
    pub acknowledged: u64,
    pub found_everywhere: u64,
    pub peak_rss_mib: f64,
}

impl RaftFigures {
    fn print(&self, json: bool) {
        if json {
            println!("{}", serde_json::to_string(self).unwrap_or_default());
            return;
        }
        println!(
            "{} managers on disk, {} clients",
            self.managers, self.clients
        );
        println!(
            "{:<10} {:>7} {:>9} {:>8} {:>10} {:>9} {:>9} {:>8} {:>11} {:>8} {:>6}",
            "PATH",
            "OPS/TXN",
            "WRITES",
            "SECONDS",
            "WRITES/S",
            "P50 MS",
            "P99 MS",
            "ENTRIES",
            "BYTES/ENTRY",
            "SYNCS/S",
            "FAILED"
        );
        for (name, p) in [("batched", &self.batched), ("unbatched", &self.unbatched)] {
            println!(
                "{:<10} {:>7} {:>9} {:>8.2} {:>10.0} {:>9.1} {:>9.1} {:>8} {:>11.0} {:>8.0} {:>6}",
                name,
                p.ops_per_txn,
                p.writes,
                p.seconds,
                p.writes_per_s,
                p.commit_p50_ms,
                p.commit_p99_ms,
                p.entries,
                p.bytes_per_entry,
                p.syncs_per_s,
                p.failed
            );
        }
        for p in [&self.batched, &self.unbatched] {
            if !p.first_error.is_empty() {
                println!("first failed write: {}", p.first_error);
            }
        }
        println!("batched / unbatched: {:.1}x", self.ratio);
        println!(
            "acknowledged writes in every manager's store: {} of {}",
            self.found_everywhere, self.acknowledged
        );
        println!(
            "peak RSS of the process (all managers): {:.0} MiB",
            self.peak_rss_mib
        );
    }
}

pub async fn run(cfg: RaftBenchConfig) -> Result<()> {
    let fig = run_figures(cfg.clone()).await?;
    fig.print(cfg.json);
    if fig.found_everywhere != fig.acknowledged {
        return Err(anyhow!(
            "{} acknowledged writes are missing from a manager's store",
            fig.acknowledged - fig.found_everywhere
        ));
    }
    Ok(())
}

/// Runs the bench, handing back its figures (printed by [`run`]).
pub async fn run_figures(cfg: RaftBenchConfig) -> Result<RaftFigures> {
    if cfg.managers == 0 || cfg.batch == 0 || cfg.clients == 0 {
        return Err(anyhow!(
            "--managers, --batch and --clients must be at least 1"
        ));
    }
    let dir = tempfile::Builder::new()
        .prefix("shoal-bench-raft-")
        .tempdir()?;
    let cluster = bench_cluster(5000)?;
    let mut managers: Vec<Arc<Manager>> = Vec::new();
    let mut ops = vec![Op::Create(Object::Cluster(cluster.clone()))];
    for i in 0..cfg.managers {
        let (m, node_id, addr) = bench_manager(&cluster, dir.path(), i).await?;
        let mut n = node(
            &node_id,
            i as u64 + 1,
            Role::Manager,
            format!("m{i}"),
            addr.to_string(),
        );
        n.state = manager::store::NodeState::Ready;
        n.availability = manager::store::Availability::Drain;
        ops.push(Op::Create(Object::Node(n)));
        managers.push(m);
    }
    let result = bench(&cfg, &managers, ops).await;
    for m in &managers {
        if tokio::time::timeout(Duration::from_secs(10), m.shutdown())
            .await
            .is_err()
        {
            eprintln!("a manager did not stop within 10 s");
        }
    }
    result
}

async fn bench(
    cfg: &RaftBenchConfig,
    managers: &[Arc<Manager>],
    mut ops: Vec<Op>,
) -> Result<RaftFigures> {
    let leader = managers[0].clone();
    leader.initialize().await.map_err(|e| anyhow!("{e}"))?;
    leader
        .wait_for_leader(Duration::from_secs(10))
        .await
        .ok_or_else(|| anyhow!("no leader"))?;
    let baseline_writes = (cfg.writes / 10).clamp(2, BASELINE_MAX_WRITES);
    // Each task is written twice (created, then updated): the services for them all.
    let tasks = cfg.writes.div_ceil(2) + baseline_writes.div_ceil(2);
    let services: Vec<String> = (0..tasks.div_ceil(TASKS_PER_SERVICE))
        .map(|i| format!("bench-raft-{i}"))
        .collect();
    for id in &services {
        ops.push(Op::Create(Object::Service(Box::new(service(id)))));
    }
    propose_all(&leader, ops).await?;
    crate::bench::managers_joined(&leader, cfg.managers).await?;
    wait_applied(managers, Duration::from_secs(60)).await?;

    let services = Arc::new(services);
    let managers = Arc::new(managers.to_vec());
    let mut acked = BTreeMap::new();
    let unbatched = phase(
        &managers,
        cfg,
        1,
        baseline_writes,
        "u",
        &services,
        &mut acked,
    )
    .await;
    let batched = phase(
        &managers, cfg, cfg.batch, cfg.writes, "b", &services, &mut acked,
    )
    .await;

    // Every acknowledged write, on every manager.
    wait_applied(&managers, Duration::from_secs(60)).await?;
    let mut found = u64::MAX;
    for m in managers.iter() {
        let here = m.store.view(|d| {
            acked
                .iter()
                .filter(|(id, a)| d.tasks.get(*id).is_some_and(|t| t.version >= a.index))
                .map(|(_, a)| a.writes)
                .sum::<u64>()
        });
        found = found.min(here);
    }
    let acknowledged: u64 = acked.values().map(|a| a.writes).sum();
    let ratio = if unbatched.writes_per_s > 0.0 {
        batched.writes_per_s / unbatched.writes_per_s
    } else {
        0.0
    };
    Ok(RaftFigures {
        managers: cfg.managers,
        clients: cfg.clients,
        batched,
        unbatched,
        ratio,
        acknowledged,
        found_everywhere: found,
        peak_rss_mib: crate::bench::status_mb("VmHWM:"),
    })
}

/// Waits until every manager has applied the leader's last log entry.
async fn wait_applied(managers: &[Arc<Manager>], timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let last = |m: &Manager| m.raft.metrics().borrow().last_applied.map(|l| l.index);
    loop {
        let target = managers
            .iter()
            .filter(|m| m.is_leader())
            .filter_map(|m| m.raft.metrics().borrow().last_log_index)
            .max();
        if let Some(target) = target {
            if managers.iter().all(|m| last(m) >= Some(target)) {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(anyhow!(
                "the managers did not apply the log within {timeout:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A service of no replicas: the orchestrator leaves its ended tasks as they are.
fn service(id: &str) -> Service {
    let now = SystemClock.now_ms();
    Service {
        id: id.into(),
        version: 0,
        spec: ServiceSpec {
            name: id.into(),
            labels: Default::default(),
            mode: ServiceMode::Replicated { replicas: 0 },
            task: TaskSpec {
                image: "bench".into(),
                ..Default::default()
            },
            update: Default::default(),
            rollback: Default::default(),
            endpoint: Default::default(),
        },
        spec_version: 1,
        previous_spec: None,
        update_status: None,
        created_at_ms: now,
        updated_at_ms: now,
        endpoint: Default::default(),
    }
}

/// An ended task of slot `slot` of `service` (see the module's comment).
fn task(id: String, service: &str, slot: u64) -> Task {
    let now = SystemClock.now_ms();
    Task {
        id,
        version: 0,
        service_id: service.into(),
        service_name: service.into(),
        slot,
        node_id: String::new(),
        spec: Arc::new(TaskSpec {
            image: "bench".into(),
            ..Default::default()
        }),
        spec_version: 1,
        desired_state: TaskState::Shutdown,
        status: TaskStatus {
            state: TaskState::Complete,
            message: "created".into(),
            err: String::new(),
            exit_code: Some(0),
            timestamp_ms: now,
        },
        created_at_ms: now,
        restart_count: 0,
        networks: Vec::new(),
        awaiting_addresses: false,
    }
}

/// A task's last acknowledged write: the index it committed at (its version in the stores),
/// and how many of its writes were acknowledged.
#[derive(Debug, Clone, Copy)]
struct Acked {
    index: u64,
    writes: u64,
}

/// The manager that leads now, waited for up to 10 s.
async fn current_leader(managers: &[Arc<Manager>]) -> Result<Arc<Manager>, String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(m) = managers.iter().find(|m| m.is_leader()) {
            return Ok(m.clone());
        }
        if Instant::now() > deadline {
            return Err("no leader for 10 s".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Writes `txn` (creates, or `updated` of `tasks`) through the leader, noting how long it
/// took. A write that fails for a lost leadership has an unknown outcome: the new leader's
/// store says whether it committed (only the bench writes these tasks), else it is written
/// again there. The index the writes committed at.
async fn write(
    managers: &[Arc<Manager>],
    txn: Txn,
    tasks: &[Task],
    updated: bool,
    latencies: &mut Vec<Duration>,
) -> Result<u64, String> {
    let start = Instant::now();
    let mut last = String::new();
    for _ in 0..5 {
        let leader = current_leader(managers).await?;
        match leader.store.propose(txn.clone()).await {
            Ok(index) => {
                latencies.push(start.elapsed());
                return Ok(index);
            }
            Err(e) => last = e.to_string(),
        }
        let leader = current_leader(managers).await?;
        if leader.linearizable().await.is_err() {
            continue;
        }
        let settled = leader.store.view(|d| {
            let mut index = 0;
            for t in tasks {
                match d.tasks.get(&t.id) {
                    Some(s) if !updated || s.status.message == t.status.message => {
                        index = index.max(s.version)
                    }
                    _ => return None,
                }
            }
            Some(index)
        });
        if let Some(index) = settled {
            latencies.push(start.elapsed());
            return Ok(index);
        }
    }
    Err(last)
}

/// One client's writes: tasks `first..first + count` created in transactions of `batch`
/// operations, each transaction's tasks then updated in one more.
async fn client(
    managers: Arc<Vec<Arc<Manager>>>,
    prefix: String,
    services: Arc<Vec<String>>,
    first: u64,
    writes: u64,
    batch: usize,
) -> (Vec<Duration>, BTreeMap<String, Acked>, u64, String) {
    let mut latencies = Vec::new();
    let mut acked = BTreeMap::new();
    let mut failed = 0u64;
    let mut first_error = String::new();
    let mut done = 0u64;
    let mut next = first;
    while done < writes {
        // Creates of up to `batch` tasks, then their updates: `2 * n` writes at most.
        let n = ((writes - done).div_ceil(2) as usize).min(batch);
        let mut created: Vec<Task> = (0..n as u64)
            .map(|k| {
                let i = next + k;
                let svc = &services[(i / TASKS_PER_SERVICE) as usize % services.len()];
                task(format!("{prefix}{i:09}"), svc, i % TASKS_PER_SERVICE + 1)
            })
            .collect();
        next += n as u64;
        // With one operation a transaction the writes go one by one; with more, in batches.
        let mut updates = Vec::with_capacity(n);
        for chunk in created.chunks_mut(batch) {
            let ops = chunk
                .iter()
                .map(|t| Op::Create(Object::Task(t.clone())))
                .collect();
            match write(&managers, Txn::new(ops), chunk, false, &mut latencies).await {
                Ok(index) => {
                    for t in chunk.iter_mut() {
                        t.version = index;
                        acked.insert(t.id.clone(), Acked { index, writes: 1 });
                        updates.push(t.clone());
                    }
                }
                Err(e) => {
                    failed += chunk.len() as u64;
                    if first_error.is_empty() {
                        first_error = e;
                    }
                }
            }
        }
        done += n as u64;
        let room = (writes - done) as usize;
        for t in updates.iter_mut().take(room) {
            t.status.message = "updated".into();
            t.status.timestamp_ms = SystemClock.now_ms();
        }
        let updates: Vec<Task> = updates.into_iter().take(room).collect();
        for chunk in updates.chunks(batch) {
            let ops = chunk
                .iter()
                .map(|t| Op::Update(Object::Task(t.clone())))
                .collect();
            match write(&managers, Txn::new(ops), chunk, true, &mut latencies).await {
                Ok(index) => {
                    for t in chunk {
                        if let Some(a) = acked.get_mut(&t.id) {
                            *a = Acked {
                                index,
                                writes: a.writes + 1,
                            };
                        }
                    }
                }
                Err(e) => {
                    failed += chunk.len() as u64;
                    if first_error.is_empty() {
                        first_error = e;
                    }
                }
            }
        }
        done += updates.len() as u64;
    }
    (latencies, acked, failed, first_error)
}

/// `writes` task writes by the clients at once, `batch` operations a transaction.
async fn phase(
    managers: &Arc<Vec<Arc<Manager>>>,
    cfg: &RaftBenchConfig,
    batch: usize,
    writes: u64,
    prefix: &str,
    services: &Arc<Vec<String>>,
    acked: &mut BTreeMap<String, Acked>,
) -> PhaseFigures {
    let before = manager::raft::log_stats();
    let start = Instant::now();
    let clients = cfg.clients as u64;
    let mut handles = Vec::new();
    // Task numbers: each client its own range, the phases after one another.
    let base = acked.len() as u64;
    for c in 0..clients {
        let share = writes / clients + u64::from(c < writes % clients);
        let first = base + c * (writes / clients + 1);
        handles.push(tokio::spawn(client(
            managers.clone(),
            format!("{prefix}{c:03}-"),
            services.clone(),
            first,
            share,
            batch,
        )));
    }
    let mut latencies = Vec::new();
    let mut failed = 0;
    let mut first_error = String::new();
    for h in handles {
        match h.await {
            Ok((l, a, f, e)) => {
                latencies.extend(l);
                acked.extend(a);
                failed += f;
                if first_error.is_empty() {
                    first_error = e;
                }
            }
            Err(_) => failed += writes / clients,
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let after = manager::raft::log_stats();
    latencies.sort_unstable();
    let q = |p: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * p) as usize)
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(0.0)
    };
    let entries = after.entries - before.entries;
    let done = writes.saturating_sub(failed);
    PhaseFigures {
        ops_per_txn: batch,
        writes: done,
        seconds,
        writes_per_s: done as f64 / seconds.max(1e-9),
        commit_p50_ms: q(0.5),
        commit_p99_ms: q(0.99),
        entries,
        bytes_per_entry: (after.bytes - before.bytes) as f64 / entries.max(1) as f64,
        syncs_per_s: (after.syncs - before.syncs) as f64 / seconds.max(1e-9),
        failed,
        first_error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A smoke run with tiny sizes: both phases run, every acknowledged write is on every
    /// manager, and batching puts several operations in a transaction.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tiny_raft_bench_loses_no_acknowledged_write() {
        let fig = run_figures(RaftBenchConfig {
            managers: 3,
            writes: 400,
            batch: 20,
            clients: 4,
            json: true,
        })
        .await
        .expect("bench");
        assert_eq!(fig.batched.writes, 400, "{fig:?}");
        assert_eq!(fig.batched.failed + fig.unbatched.failed, 0, "{fig:?}");
        assert_eq!(fig.unbatched.writes, 40, "{fig:?}");
        assert_eq!(fig.acknowledged, 440, "{fig:?}");
        assert_eq!(fig.found_everywhere, fig.acknowledged, "{fig:?}");
        assert!(fig.batched.entries > 0 && fig.batched.bytes_per_entry > 0.0);
        assert!(fig.peak_rss_mib > 0.0);
    }
}
