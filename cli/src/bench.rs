//! `shoal bench cluster`: real managers (raft on disk, gRPC with mutual TLS on loopback) and
//! many simulated workers (the real agent and executor over the fake runtime) in one process.
//! Creates one service of T replicas and measures until every task reports RUNNING.
//!
//! Workers are given certificates directly by the cluster CA and written to the store in bulk
//! rather than joining one by one: the figure is about scheduling and dispatch, not joins.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use manager::clock::{Clock, SystemClock};
use manager::controlapi::ControlApi;
use manager::raft::RaftTuning;
use manager::store::{Change, Cluster, Node, NodeDescription, NodeState, Object, Op, Txn};
use manager::{Manager, ManagerConfig};
use proto::security::{new_key_and_csr, random_id, JoinToken, Role, RootCa};
use proto::spec::{ServiceMode, ServiceSpec, TaskSpec, TaskState, UpdateConfig};
use proto::transport::{Credentials, Identity};
use tokio_util::sync::CancellationToken;
use worker::agent::{Agent, AgentConfig};

/// Workers whose sessions may be starting at once while the bench sets up.
const REGISTRATION_WINDOW: usize = 200;
/// How long the workers may take to register before the bench goes on with those that did.
const REGISTRATION_TIMEOUT: Duration = Duration::from_secs(120);

pub struct BenchConfig {
    pub managers: usize,
    pub workers: usize,
    pub tasks: u64,
    pub timeout: Duration,
    /// Stop (and print what was reached) when the process's resident memory passes this.
    pub max_rss_mb: f64,
    /// Print the figures as one JSON object.
    pub json: bool,
}

/// A memory figure of this process from /proc/self/status (`VmRSS`, `VmHWM`), in MiB.
pub(crate) fn status_mb(key: &str) -> f64 {
    ProcStatus::open().map_or(0.0, |p| p.mb(key))
}

/// This process's `/proc/self/status`, opened once: read again after thousands of simulated
/// nodes' sockets may have taken every file this process may open.
pub(crate) struct ProcStatus(std::sync::Mutex<std::fs::File>);

impl ProcStatus {
    pub(crate) fn open() -> Result<ProcStatus> {
        Ok(ProcStatus(std::sync::Mutex::new(std::fs::File::open(
            "/proc/self/status",
        )?)))
    }

    /// The size `key` gives, in MiB (0 if it cannot be read).
    pub(crate) fn mb(&self, key: &str) -> f64 {
        use std::io::{Read, Seek};
        let mut f = self.0.lock().expect("status file lock");
        let mut text = String::new();
        if f.seek(std::io::SeekFrom::Start(0))
            .and_then(|_| f.read_to_string(&mut text))
            .is_err()
        {
            return 0.0;
        }
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    }
}

/// One simulated node: the real agent and executor over the fake runtime, with a session to
/// `manager`, until `cancel`.
pub(crate) async fn simulated_node(
    hostname: String,
    creds: Arc<Credentials>,
    manager: String,
    initial_period: Duration,
    cancel: CancellationToken,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(4096);
    let runtime = Arc::new(worker::runtime::FakeRuntime::new(Duration::ZERO));
    let executor = Arc::new(worker::executor::Executor::new(runtime, tx));
    let (events_tx, mut events_rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move { while events_rx.recv().await.is_some() {} });
    let agent = Agent::new(
        AgentConfig {
            hostname,
            platform: "linux/bench".into(),
            managers: vec![manager],
            initial_period,
            nano_cpus: 0,
            memory_bytes: 0,
        },
        creds,
        events_tx,
        executor,
        rx,
    );
    agent.run(cancel).await
}

pub(crate) fn identity(cluster: &Cluster, node_id: &str, role: Role) -> Result<Identity> {
    let (key, csr) = new_key_and_csr()?;
    let (cert, _) =
        manager::ca::issue(cluster, &csr, node_id, role).map_err(|s| anyhow!("{}", s.message()))?;
    Ok(Identity::new(&cert, &key, &cluster.root_ca.cert_pem)?)
}

/// A simulated worker's name and certificate, as the bench hands it to an agent.
#[derive(serde::Serialize, serde::Deserialize)]
struct AgentSpec {
    hostname: String,
    cert: String,
    key: String,
}

/// What an agent process needs before its first worker: where the leader is and the CA.
#[derive(serde::Serialize, serde::Deserialize)]
struct AgentsHeader {
    manager: String,
    ca: String,
}

impl AgentSpec {
    fn credentials(&self, ca: &str) -> Result<Arc<Credentials>> {
        Ok(Credentials::new(Some(Identity::new(
            &self.cert, &self.key, ca,
        )?)))
    }
}

/// The certificates of workers `ids`, issued on the blocking pool in parallel.
async fn issue_all(cluster: &Cluster, ids: &[String]) -> Result<Vec<AgentSpec>> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let per = ids.len().div_ceil(threads).max(1);
    let mut jobs = Vec::new();
    for (c, part) in ids.chunks(per).enumerate() {
        let (cluster, part) = (cluster.clone(), part.to_vec());
        jobs.push(tokio::task::spawn_blocking(move || {
            part.iter()
                .enumerate()
                .map(|(i, id)| {
                    let (key, csr) = new_key_and_csr()?;
                    let (cert, _) = manager::ca::issue(&cluster, &csr, id, Role::Worker)
                        .map_err(|s| anyhow!("{}", s.message()))?;
                    Ok(AgentSpec {
                        hostname: format!("w{}", c * per + i),
                        cert,
                        key,
                    })
                })
                .collect::<Result<Vec<_>>>()
        }));
    }
    let mut all = Vec::with_capacity(ids.len());
    for j in jobs {
        all.extend(j.await??);
    }
    Ok(all)
}

/// Files an agent process keeps for other things than its workers' connections.
const AGENT_SPARE_FILES: u64 = 1024;

/// Processes that run simulated workers for the bench when one process may not hold both
/// ends of every worker's connection (the open-file limit): `shoal bench cluster-agents`,
/// fed workers on stdin, ended by closing it.
struct AgentProcesses {
    children: Vec<(tokio::process::Child, tokio::process::ChildStdin)>,
    per_child: usize,
}

impl AgentProcesses {
    async fn start(workers: usize, files: u64, header: &AgentsHeader) -> Result<AgentProcesses> {
        use tokio::io::AsyncWriteExt;
        let per_child = usize::try_from(files.saturating_sub(AGENT_SPARE_FILES))
            .unwrap_or(usize::MAX)
            .max(1);
        let exe = std::env::current_exe().context("this program's path")?;
        let mut children = Vec::new();
        for _ in 0..workers.div_ceil(per_child) {
            let mut child = tokio::process::Command::new(&exe)
                .args(["bench", "cluster-agents"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .context("start an agent process")?;
            let mut stdin = child.stdin.take().context("agent process stdin")?;
            let mut line = serde_json::to_vec(header)?;
            line.push(b'\n');
            stdin.write_all(&line).await?;
            children.push((child, stdin));
        }
        Ok(AgentProcesses {
            children,
            per_child,
        })
    }

    /// Worker `i` starts in its process.
    async fn add(&mut self, i: usize, spec: &AgentSpec) -> Result<()> {
        use tokio::io::AsyncWriteExt;
        let last = self.children.len() - 1;
        let (_, stdin) = &mut self.children[(i / self.per_child).min(last)];
        let mut line = serde_json::to_vec(spec)?;
        line.push(b'\n');
        stdin
            .write_all(&line)
            .await
            .context("an agent process ended")
    }

    /// Ends every agent process: stdin closed, then killed if it has not ended in 10 s.
    async fn stop(self) {
        for (mut child, stdin) in self.children {
            drop(stdin);
            if tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
    }
}

/// `shoal bench cluster-agents`: runs the simulated workers named on stdin (a header line,
/// then one line per worker) until stdin closes.
pub async fn run_agents() -> Result<()> {
    use tokio::io::AsyncBufReadExt;
    crate::limits::raise_open_files(u64::MAX)?;
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let header: AgentsHeader = match lines.next_line().await? {
        Some(l) => serde_json::from_str(&l).context("agents header")?,
        None => return Ok(()),
    };
    let cancel = CancellationToken::new();
    while let Some(l) = lines.next_line().await? {
        let spec: AgentSpec = serde_json::from_str(&l).context("agent line")?;
        tokio::spawn(simulated_node(
            spec.hostname.clone(),
            spec.credentials(&header.ca)?,
            header.manager.clone(),
            Duration::from_secs(5),
            cancel.clone(),
        ));
    }
    cancel.cancel();
    Ok(())
}

pub(crate) fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

pub(crate) fn node(id: &str, raft_id: u64, role: Role, hostname: String, addr: String) -> Node {
    let now = SystemClock.now_ms();
    Node {
        id: id.into(),
        version: 0,
        raft_id,
        role,
        desired_role: role,
        availability: Default::default(),
        labels: Default::default(),
        description: NodeDescription {
            hostname,
            addr,
            platform: "linux/bench".into(),
            engine_version: env!("CARGO_PKG_VERSION").into(),
            nano_cpus: 0,
            memory_bytes: 0,
        },
        state: NodeState::Unknown,
        status_message: String::new(),
        created_at_ms: now,
        updated_at_ms: now,
        cert_not_after_ms: 0,
        ingress_addr: None,
    }
}

pub(crate) async fn propose_all(mgr: &Manager, ops: Vec<Op>) -> Result<()> {
    for chunk in ops.chunks(manager::orchestrator::MAX_OPS_PER_TXN) {
        mgr.propose(Txn::new(chunk.to_vec()))
            .await
            .map_err(|e| anyhow!("bulk write: {e}"))?;
    }
    Ok(())
}

pub async fn run_cluster(cfg: BenchConfig) -> Result<()> {
    run_cluster_figures(cfg).await.map(|_| ())
}

/// As [`run_cluster`], handing back the figures it printed.
pub async fn run_cluster_figures(cfg: BenchConfig) -> Result<Figures> {
    let dir = tempfile::Builder::new().prefix("shoal-bench-").tempdir()?;
    // Stopped by a signal, the bench still removes its managers' data (with `dir`).
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        r = bench(&cfg, dir.path()) => r,
        _ = term.recv() => Err(anyhow!("stopped (SIGTERM); its data dir is removed")),
        _ = int.recv() => Err(anyhow!("stopped (SIGINT); its data dir is removed")),
    }
}

/// The cluster object of a bench's swarm (a new CA and tokens), with `heartbeat_period_ms`.
/// How many nodes are in each state, as the leader's store says: "9980 ready, 20 unknown".
fn node_states(leader: &Manager) -> String {
    let counts = leader.store.view(|d| {
        let mut counts = std::collections::BTreeMap::<String, usize>::new();
        for n in d.nodes.values() {
            *counts
                .entry(format!("{:?}", n.state).to_lowercase())
                .or_default() += 1;
        }
        counts
    });
    counts
        .iter()
        .map(|(state, n)| format!("{n} {state}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Wait (at most 60 s) until `managers` managers are members of the leader's raft group.
pub(crate) async fn managers_joined(leader: &Manager, managers: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while manager::raft::membership(&leader.raft).0.len() < managers {
        if Instant::now() > deadline {
            return Err(anyhow!("the managers did not join raft within 60 s"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

pub(crate) fn bench_cluster(heartbeat_period_ms: u64) -> Result<Cluster> {
    let cluster_id = random_id(25);
    let root_ca = RootCa::generate(&cluster_id)?;
    let digest = root_ca.digest()?;
    Ok(Cluster {
        id: cluster_id,
        version: 0,
        created_at_ms: SystemClock.now_ms(),
        root_ca,
        worker_token: JoinToken::generate(&digest).to_string(),
        manager_token: JoinToken::generate(&digest).to_string(),
        heartbeat_period_ms,
        cert_expiry_ms: 90 * 24 * 3600 * 1000,
        removed_nodes: Default::default(),
        rebalance_on_join: false,
        default_addr_pool: manager::store::default_addr_pool(),
        default_addr_pool_mask_len: manager::store::default_addr_pool_mask_len(),
        unlock_key: None,
        limits: Default::default(),
    })
}

/// Manager `i` of a bench's swarm (raft id `i + 1`, data in `dir/m{i}`, on a free loopback
/// port): the manager, its node id and its address.
pub(crate) async fn bench_manager(
    cluster: &Cluster,
    dir: &std::path::Path,
    i: usize,
) -> Result<(Arc<Manager>, String, SocketAddr)> {
    let node_id = random_id(25);
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let creds = Credentials::new(Some(identity(cluster, &node_id, Role::Manager)?));
    let mcfg = ManagerConfig {
        node_id: node_id.clone(),
        raft_id: i as u64 + 1,
        data_dir: dir.join(format!("m{i}")),
        listen_addr: addr,
        advertise_addr: addr.to_string(),
        tuning: RaftTuning::default(),
        kek: None,
        clock: manager::clock::system(),
    };
    let m = Manager::start(mcfg, creds, Box::new(|_| tonic::service::Routes::default()))
        .await
        .with_context(|| format!("manager {i}"))?;
    Ok((m, node_id, addr))
}

/// Runtimes shut down without waiting for their tasks when dropped (a runtime may not be
/// dropped plainly inside another one).
#[derive(Default)]
struct Runtimes(Vec<tokio::runtime::Runtime>);

impl Drop for Runtimes {
    fn drop(&mut self) {
        for rt in self.0.drain(..) {
            rt.shutdown_background();
        }
    }
}

async fn bench(cfg: &BenchConfig, dir: &std::path::Path) -> Result<Figures> {
    let setup = Instant::now();
    // Both ends of every node's connection are in this process, with the managers' files.
    let want = u64::try_from(cfg.workers)
        .unwrap_or(u64::MAX)
        .saturating_mul(2)
        .saturating_add(4096);
    let files = crate::limits::raise_open_files(want)?;
    let proc_status = ProcStatus::open()?;
    // Past the limit, the workers run in processes of their own (each with its own limit)
    // and this one holds the managers' ends only.
    let in_process = files >= want;
    let managers_want = want.saturating_sub(u64::try_from(cfg.workers).unwrap_or(u64::MAX));
    if !in_process && files < managers_want {
        note(
            cfg.json,
            &format!(
                "setup: open-file limit {files}, below the {managers_want} that the managers of {} workers need: some will not connect",
                cfg.workers
            ),
        );
    }
    let mut cluster = bench_cluster(5000)?;
    // As an operator of a swarm this size would (`swarm update --max-replicas`).
    cluster.limits.max_replicas = cluster.limits.max_replicas.max(cfg.tasks);
    cluster.limits.max_tasks = cluster.limits.max_tasks.max(cfg.tasks);

    // Managers.
    // Each manager runs on runtime threads of its own, as on a host of its own: its raft and
    // its answers to the other managers are not queued behind thousands of simulated agents'
    // tasks (which starved raft into endless elections once a thousand sessions started).
    let mut manager_rts = Runtimes::default();
    let mut managers: Vec<Arc<Manager>> = Vec::new();
    let mut manager_nodes = Vec::new();
    for i in 0..cfg.managers {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(format!("manager-{i}"))
            .enable_all()
            .build()?;
        let (c, d) = (cluster.clone(), dir.to_path_buf());
        let (m, node_id, addr) = rt
            .spawn(async move { bench_manager(&c, &d, i).await })
            .await??;
        manager_rts.0.push(rt);
        manager_nodes.push(node(
            &node_id,
            i as u64 + 1,
            Role::Manager,
            format!("m{i}"),
            addr.to_string(),
        ));
        managers.push(m);
    }
    let leader = managers[0].clone();
    leader.initialize().await.map_err(|e| anyhow!("{e}"))?;
    leader
        .wait_for_leader(Duration::from_secs(10))
        .await
        .ok_or_else(|| anyhow!("no leader"))?;
    let mut ops = vec![Op::Create(Object::Cluster(cluster.clone()))];
    for n in &manager_nodes {
        let mut n = n.clone();
        n.state = NodeState::Ready;
        // Dedicated managers, as in a large Swarm: they run no agent here, so no tasks.
        n.availability = manager::store::Availability::Drain;
        ops.push(Op::Create(Object::Node(n)));
    }

    // Workers: identities, store objects, agents.
    let mut worker_ids = Vec::new();
    for i in 0..cfg.workers {
        let id = random_id(25);
        ops.push(Op::Create(Object::Node(node(
            &id,
            0,
            Role::Worker,
            format!("w{i}"),
            "127.0.0.1:0".into(),
        ))));
        worker_ids.push(id);
    }
    propose_all(&leader, ops).await?;
    // Let the other managers join the raft group before the load starts.
    managers_joined(&leader, cfg.managers).await?;
    let leader_addr = leader.config.advertise_addr.clone();
    let cancel = CancellationToken::new();
    let registered = || {
        leader.store.view(|d| {
            d.nodes
                .values()
                .filter(|n| n.state == NodeState::Ready)
                .count()
        })
    };
    // Certificates first, on the blocking pool (in a real swarm every node makes its own key):
    // the figure is about the managers registering the nodes.
    let specs = issue_all(&cluster, &worker_ids).await?;
    let mut agents = if in_process {
        None
    } else {
        let header = AgentsHeader {
            manager: leader_addr.clone(),
            ca: cluster.root_ca.cert_pem.clone(),
        };
        let agents = AgentProcesses::start(cfg.workers, files, &header).await?;
        note(
            cfg.json,
            &match agents.children.len() {
                1 => format!(
                    "setup: open-file limit {files}: the workers run in a process of their own"
                ),
                n => format!(
                    "setup: open-file limit {files}: the workers run in {n} processes of their own"
                ),
            },
        );
        Some(agents)
    };
    let registration = Instant::now();
    let deadline = registration + REGISTRATION_TIMEOUT;
    let mut last_print = Instant::now();
    let mut ready = 0;
    for (i, spec) in specs.into_iter().enumerate() {
        // Admission: at most REGISTRATION_WINDOW sessions starting at once. A thousand TLS
        // handshakes and registrations at once on two cores starve the managers' raft into
        // elections.
        while ready + REGISTRATION_WINDOW <= i && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
            ready = registered().saturating_sub(cfg.managers);
            if last_print.elapsed() > Duration::from_secs(5) {
                last_print = Instant::now();
                note(
                    cfg.json,
                    &format!(
                        "setup: {ready} of {} workers registered after {:.1}s",
                        cfg.workers,
                        registration.elapsed().as_secs_f64()
                    ),
                );
            }
        }
        match &mut agents {
            Some(agents) => agents.add(i, &spec).await?,
            None => {
                tokio::spawn(simulated_node(
                    spec.hostname.clone(),
                    spec.credentials(&cluster.root_ca.cert_pem)?,
                    leader_addr.clone(),
                    Duration::from_secs(5),
                    cancel.clone(),
                ));
            }
        }
    }
    // When the last of them registered: with some that never do, the time it took the rest.
    let (mut last_count, mut last_at) = (0, registration.elapsed());
    let ready = loop {
        let ready = registered();
        if ready != last_count {
            (last_count, last_at) = (ready, registration.elapsed());
        }
        if ready >= cfg.workers + cfg.managers {
            break ready;
        }
        if Instant::now() > deadline {
            // Go on with the nodes that made it: the figure says how many.
            note(
                cfg.json,
                &format!(
                    "setup: only {} of {} workers registered within {}s ({}); going on with them",
                    ready.saturating_sub(cfg.managers),
                    cfg.workers,
                    REGISTRATION_TIMEOUT.as_secs(),
                    node_states(&leader)
                ),
            );
            break ready;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let registration_s = last_at.as_secs_f64();
    note(
        cfg.json,
        &format!(
            "setup: {} managers; {} of {} workers registered in {registration_s:.1}s ({:.0}/s); set-up {:.1}s in all",
            cfg.managers,
            ready.saturating_sub(cfg.managers),
            cfg.workers,
            ready.saturating_sub(cfg.managers) as f64 / registration_s.max(1e-9),
            setup.elapsed().as_secs_f64()
        ),
    );

    // The measured part. Whatever stops it (all running, the timeout, the memory limit, an
    // error), the figures reached are printed.
    let mut fig = Figures {
        managers: cfg.managers,
        workers: cfg.workers,
        workers_ready: ready.saturating_sub(cfg.managers),
        registration_s,
        tasks: cfg.tasks,
        agent_processes: agents.as_ref().map_or(0, |a| a.children.len()),
        setup_s: setup.elapsed().as_secs_f64(),
        ..Figures::default()
    };
    let outcome = measure(cfg, &leader, &mut fig, &proc_status).await;
    fig.outcome = match outcome {
        Ok(o) => o,
        Err(e) => format!("error: {e:#}"),
    };
    fig.peak_rss_mib = proc_status.mb("VmHWM:");
    fig.print(cfg.json);
    cancel.cancel();
    if let Some(agents) = agents {
        agents.stop().await;
    }
    // Bounded: a manager that cannot stop in time is left to the process's exit.
    for m in &managers {
        if tokio::time::timeout(Duration::from_secs(10), m.shutdown())
            .await
            .is_err()
        {
            eprintln!("a manager did not stop within 10 s");
        }
    }
    Ok(fig)
}

/// What a run reached, printed also when it missed.
#[derive(Debug, Default, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Figures {
    pub managers: usize,
    pub workers: usize,
    pub workers_ready: usize,
    /// Seconds from the first worker's start to the last one registered (or the give-up).
    pub registration_s: f64,
    pub tasks: u64,
    /// Processes of their own the simulated workers ran in (0: in the managers' process).
    pub agent_processes: usize,
    pub setup_s: f64,
    /// Tasks RUNNING when the run stopped.
    pub running: u64,
    /// Seconds from `service create` to all RUNNING, or to the stop.
    pub seconds: f64,
    pub all_running: bool,
    /// Seconds until the store held every task (0: not reached), and until every task was
    /// seen assigned.
    pub all_created_s: f64,
    pub all_assigned_s: f64,
    pub tasks_per_s: f64,
    /// Created → ASSIGNED, over the tasks seen assigned.
    pub latency_p50_ms: i64,
    pub latency_p99_ms: i64,
    pub latency_samples: usize,
    pub peak_rss_mib: f64,
    /// Raft log entries appended during the run, on all managers together.
    pub log_entries: u64,
    /// Their encoded bytes, per task of the run, on all managers together.
    pub log_bytes_per_task: f64,
    /// Messages the leader's dispatcher sent the nodes during the run (assignments,
    /// heartbeat answers).
    pub session_messages: u64,
    /// Store operations the leader applied during the run per task, by kind (create-task,
    /// place, status — of which running —, …): the writes each task cost.
    pub writes_per_task: std::collections::BTreeMap<String, f64>,
    /// `all running`, `timeout`, `memory limit` or the error that stopped the run.
    pub outcome: String,
}

impl Figures {
    fn print(&self, json: bool) {
        if json {
            println!("{}", serde_json::to_string(self).unwrap_or_default());
            return;
        }
        if self.all_running {
            println!("all {} tasks RUNNING in {:.2}s", self.tasks, self.seconds);
        } else {
            println!(
                "not all tasks reached RUNNING ({}): {} of {} running after {:.1}s",
                self.outcome, self.running, self.tasks, self.seconds
            );
        }
        println!("throughput: {:.0} tasks/s", self.tasks_per_s);
        let at = |s: f64| {
            if s > 0.0 {
                format!("{s:.2}s")
            } else {
                "not reached".into()
            }
        };
        println!(
            "all created: {}, all assigned: {}",
            at(self.all_created_s),
            at(self.all_assigned_s)
        );
        println!(
            "scheduling latency (created -> assigned): p50 {} ms, p99 {} ms ({} tasks)",
            self.latency_p50_ms, self.latency_p99_ms, self.latency_samples
        );
        println!(
            "peak RSS of the process ({}): {:.0} MiB",
            if self.agent_processes == 0 {
                "managers + simulated workers"
            } else {
                "managers; the workers ran in processes of their own"
            },
            self.peak_rss_mib
        );
        println!(
            "raft log (all managers): {} entries, {:.0} bytes per task; {} messages to the nodes",
            self.log_entries, self.log_bytes_per_task, self.session_messages
        );
        let writes: Vec<String> = self
            .writes_per_task
            .iter()
            .map(|(k, v)| format!("{k} {v:.2}"))
            .collect();
        println!("store writes per task: {}", writes.join(", "));
    }
}

/// A line about the run's progress: on stdout, or on stderr when stdout carries JSON.
fn note(json: bool, line: &str) {
    if json {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
}

/// The `p` quantile of sorted `v` (0 when empty).
fn quantile(v: &[i64], p: f64) -> i64 {
    if v.is_empty() {
        return 0;
    }
    v[((v.len() as f64 - 1.0) * p) as usize]
}

/// Create the service and follow it until every task runs, the timeout or the memory limit;
/// `fig` holds what was reached whatever the outcome.
async fn measure(
    cfg: &BenchConfig,
    leader: &Arc<Manager>,
    fig: &mut Figures,
    proc_status: &ProcStatus,
) -> Result<String> {
    let mut events = leader.store.watch();
    let spec = ServiceSpec {
        name: "bench".into(),
        labels: Default::default(),
        mode: ServiceMode::Replicated {
            replicas: cfg.tasks,
        },
        task: TaskSpec {
            image: "bench".into(),
            ..Default::default()
        },
        update: UpdateConfig::default(),
        rollback: UpdateConfig::default(),
        endpoint: Default::default(),
    };
    let start = Instant::now();
    let log_before = manager::raft::log_stats();
    let ops_before = manager::store::op_stats::snapshot();
    let sent = || leader.dispatcher.stats.messages.load(Ordering::Relaxed);
    let messages_before = sent();
    let deadline = start + cfg.timeout;
    let mut assigned: HashSet<String> = HashSet::new();
    let mut running: HashSet<String> = HashSet::new();
    let mut latencies: Vec<i64> = Vec::new();
    let result = async {
        tokio::time::timeout(
            cfg.timeout,
            ControlApi::new(leader.clone()).create_service(proto::pb::ServiceSpecRequest {
                spec: Some((&spec).into()),
            }),
        )
        .await
        .map_err(|_| anyhow!("create service: no answer within the timeout"))?
        .map_err(|s| anyhow!("create service: {}", s.message()))?;
        let mut last_check = Instant::now();
        loop {
            let ev = tokio::time::timeout(Duration::from_millis(100), events.recv()).await;
            let t_ms = SystemClock.now_ms();
            match ev {
                Ok(Ok(ev)) => {
                    for c in ev.changes.iter() {
                        match c {
                            Change::Put(Object::Task(t)) => {
                                if t.status.state >= TaskState::Assigned
                                    && assigned.insert(t.id.clone())
                                {
                                    latencies.push(t_ms - t.created_at_ms);
                                }
                                if t.status.state == TaskState::Running {
                                    running.insert(t.id.clone());
                                } else {
                                    running.remove(&t.id);
                                }
                            }
                            Change::Deleted { id, .. } => {
                                running.remove(id);
                            }
                            Change::Put(_) => {}
                        }
                    }
                }
                // Missed events: the tasks assigned meanwhile count as assigned now (an
                // upper bound of their latency); the running ones are counted afresh.
                Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {
                    leader.store.view(|d| {
                        running.clear();
                        for t in d.tasks.values() {
                            if t.status.state >= TaskState::Assigned && !assigned.contains(&t.id) {
                                assigned.insert(t.id.clone());
                                latencies.push(t_ms - t.created_at_ms);
                            }
                            if t.status.state == TaskState::Running {
                                running.insert(t.id.clone());
                            }
                        }
                    });
                }
                Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => {
                    return Err(anyhow!("the store closed"));
                }
                Err(_) => {}
            }
            if last_check.elapsed() >= Duration::from_millis(100) {
                last_check = Instant::now();
                // When the orchestrator had created every task, and the scheduler placed
                // every one: where the time to all RUNNING went.
                if fig.all_created_s == 0.0
                    && leader.store.view(|d| d.tasks.len() as u64) >= cfg.tasks
                {
                    fig.all_created_s = start.elapsed().as_secs_f64();
                }
                if fig.all_assigned_s == 0.0 && assigned.len() as u64 >= cfg.tasks {
                    fig.all_assigned_s = start.elapsed().as_secs_f64();
                }
                // Counted from the events (a scan of every task would hold the store up).
                let running = running.len() as u64;
                fig.running = running;
                fig.seconds = start.elapsed().as_secs_f64();
                if running >= cfg.tasks {
                    fig.all_running = true;
                    return Ok("all running".to_string());
                }
                if Instant::now() > deadline {
                    return Ok("timeout".to_string());
                }
                let rss = proc_status.mb("VmRSS:");
                if rss > cfg.max_rss_mb {
                    return Ok(format!(
                        "memory limit ({rss:.0} MiB > {:.0} MiB)",
                        cfg.max_rss_mb
                    ));
                }
            }
        }
    }
    .await;
    if fig.seconds == 0.0 {
        fig.seconds = start.elapsed().as_secs_f64();
    }
    if fig.seconds > 0.0 {
        fig.tasks_per_s = fig.running as f64 / fig.seconds;
    }
    let log = manager::raft::log_stats();
    fig.log_entries = log.entries.saturating_sub(log_before.entries);
    // Every manager of the process applies each write: divided by their number.
    let ops = manager::store::op_stats::snapshot();
    let per = (cfg.managers.max(1) as u64 * cfg.tasks.max(1)) as f64;
    fig.writes_per_task = manager::store::op_stats::KINDS
        .iter()
        .zip(ops.iter().zip(ops_before))
        .filter(|(_, (now, before))| *now > before)
        .map(|(k, (now, before))| (k.to_string(), (now - before) as f64 / per))
        .collect();
    fig.session_messages = sent().saturating_sub(messages_before);
    fig.log_bytes_per_task =
        log.bytes.saturating_sub(log_before.bytes) as f64 / cfg.tasks.max(1) as f64;
    latencies.sort_unstable();
    fig.latency_p50_ms = quantile(&latencies, 0.5);
    fig.latency_p99_ms = quantile(&latencies, 0.99);
    fig.latency_samples = latencies.len();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A smoke run with tiny sizes: the bench sets up, converges and reports.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tiny_cluster_bench_runs_to_the_end() {
        let fig = run_cluster_figures(BenchConfig {
            managers: 1,
            workers: 3,
            tasks: 12,
            timeout: Duration::from_secs(60),
            max_rss_mb: 16_384.0,
            json: true,
        })
        .await
        .expect("bench");
        assert!(fig.all_running, "{fig:?}");
        assert_eq!(fig.running, 12);
        assert_eq!(fig.workers_ready, 3);
        assert_eq!(fig.latency_samples, 12, "{fig:?}");
        assert!(fig.peak_rss_mib > 0.0);
    }

    #[test]
    fn quantiles_of_sorted_samples() {
        assert_eq!(quantile(&[], 0.5), 0);
        let v: Vec<i64> = (1..=100).collect();
        assert_eq!(quantile(&v, 0.5), 50);
        assert_eq!(quantile(&v, 0.99), 99);
        assert_eq!(quantile(&v, 1.0), 100);
    }
}
