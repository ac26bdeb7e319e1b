//! `shoal bench overlay-churn`: what a task change costs the leader on the dispatcher
//! sessions when many nodes share one overlay network.
//!
//! One manager (raft on disk, mTLS gRPC on loopback) and N simulated nodes (the real agent
//! and executor over the fake runtime) in one process, as `bench cluster`; one overlay
//! network and one service on it with a task per node. Then the service is scaled up by one
//! and back, again and again: each task started or stopped is one change. Printed: the
//! manager's CPU time per change (the threads of the manager's runtime only; the simulated
//! nodes run on another) and the bytes and messages the sessions sent per change.
//!
//! `--before FILE` takes the `--format json` output of a run of an older build and prints
//! both figures side by side.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use manager::controlapi::ControlApi;
use manager::store::{Cluster, NodeState, Object, Op};
use manager::Manager;
use proto::pb;
use proto::security::{random_id, Role};
use proto::spec::{
    NetworkAttachmentConfig, NetworkSpec, ServiceMode, ServiceSpec, TaskSpec, TaskState,
};
use proto::transport::Credentials;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::bench::{identity, node, propose_all, simulated_node};
use crate::output::Format;

#[derive(clap::Args, Debug, Clone)]
pub struct OverlayChurnArgs {
    /// Simulated nodes, each with a session and one task on the overlay.
    #[arg(long, default_value_t = 1000)]
    pub nodes: usize,
    /// Task changes to measure (one task started or stopped each).
    #[arg(long, default_value_t = 40)]
    pub changes: usize,
    /// Give up after this long.
    #[arg(long, default_value = "10m", value_parser = crate::units::parse_duration)]
    pub timeout: Duration,
    /// The `--format json` output of a run of another build, printed as "before".
    #[arg(long)]
    pub before: Option<PathBuf>,
    /// Output format: table or json.
    #[arg(long, default_value = "table")]
    pub format: Format,
}

/// The figures of one run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Figures {
    pub nodes: usize,
    pub changes: usize,
    /// Manager CPU (user + system) per task change, in milliseconds.
    pub cpu_ms_per_change: f64,
    /// Encoded bytes the dispatcher sessions sent per task change.
    pub bytes_per_change: f64,
    pub messages_per_change: f64,
    /// Seconds until every node held a session and its task ran (not a per-change figure).
    pub setup_s: f64,
}

/// CPU time (user + system) of each of this process's threads whose name starts with
/// `prefix`, by thread id, in clock ticks.
fn threads_cpu(prefix: &str) -> HashMap<u64, u64> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(tid) = e.file_name().to_str().and_then(|t| t.parse::<u64>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ...: comm may hold spaces, so split after the last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if !stat[open + 1..close].starts_with(prefix) {
            continue;
        }
        let f: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        let field = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        // utime and stime are fields 14 and 15 of stat; 12 and 13 after the state.
        out.insert(tid, field(11) + field(12));
    }
    out
}

/// The CPU time the threads of `now` used since `before` (a thread not in `before` started
/// since). Per thread, not as sums: a thread of the runtime that ended in between (a blocking
/// thread, or a worker handed over by `block_in_place`) took its whole CPU time out of a
/// later sum, so the difference of two sums could be far too small or nothing.
fn cpu_since(before: &HashMap<u64, u64>, now: &HashMap<u64, u64>) -> Duration {
    let ticks: u64 = now
        .iter()
        .map(|(tid, t)| t.saturating_sub(before.get(tid).copied().unwrap_or(0)))
        .sum();
    Duration::from_secs_f64(ticks as f64 / 100.0) // USER_HZ on Linux
}

const MGR_THREADS: &str = "shoal-mgr";

/// One manager and `nodes` simulated nodes in this process.
pub struct Sim {
    pub mgr: Arc<Manager>,
    mgr_rt: tokio::runtime::Runtime,
    node_rt: tokio::runtime::Runtime,
    cancel: CancellationToken,
    dir: PathBuf,
}

impl Sim {
    /// `limit`: how long the nodes may take to hold their sessions.
    pub fn start(nodes: usize, limit: Duration) -> Result<Sim> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mgr_rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(MGR_THREADS)
            // Idle blocking threads stay: one that ended during the churn would take its CPU
            // time with it (planning rounds run in `block_in_place`, which hands a worker's
            // thread over to the blocking pool).
            .thread_keep_alive(Duration::from_secs(24 * 3600))
            .enable_all()
            .build()?;
        let node_rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("shoal-node")
            .enable_all()
            .build()?;
        let dir = std::env::temp_dir().join(format!(
            "shoal-bench-wire-{}-{}",
            std::process::id(),
            random_id(6)
        ));
        std::fs::create_dir_all(&dir)?;
        let cancel = CancellationToken::new();
        let (mgr, cluster, ids) = mgr_rt.block_on(start_manager(&dir, nodes))?;
        let leader_addr = mgr.config.advertise_addr.clone();
        for (i, id) in ids.iter().enumerate() {
            let creds = Credentials::new(Some(identity(&cluster, id, Role::Worker)?));
            let c = cancel.clone();
            let addr = leader_addr.clone();
            node_rt.spawn(simulated_node(
                format!("w{i}"),
                creds,
                addr,
                Duration::from_secs(30),
                c,
            ));
        }
        let sim = Sim {
            mgr,
            mgr_rt,
            node_rt,
            cancel,
            dir,
        };
        sim.wait("every node ready", limit, |d| {
            d.nodes
                .values()
                .filter(|n| n.state == NodeState::Ready)
                .count()
                > nodes
        })?;
        Ok(sim)
    }

    /// Poll the leader's store until `done` holds.
    pub fn wait(
        &self,
        what: &str,
        limit: Duration,
        done: impl Fn(&manager::store::StoreData) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + limit;
        while !self.mgr.store.view(&done) {
            if Instant::now() > deadline {
                return Err(anyhow!("{what}: not within {limit:?}"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// Run a control API call on the manager's runtime.
    pub fn api<T>(&self, f: impl AsyncFnOnce(ControlApi) -> Result<T, tonic::Status>) -> Result<T> {
        let api = ControlApi::new(self.mgr.clone());
        self.mgr_rt
            .block_on(f(api))
            .map_err(|s| anyhow!("{}", s.message()))
    }

    /// Tasks of service `name` that run.
    pub fn running(&self, name: &str) -> usize {
        self.mgr.store.view(|d| {
            d.tasks
                .values()
                .filter(|t| t.service_name == name && t.status.state == TaskState::Running)
                .count()
        })
    }

    pub fn shutdown(self) {
        self.cancel.cancel();
        let mgr = self.mgr.clone();
        self.mgr_rt.block_on(async move { mgr.shutdown().await });
        self.node_rt.shutdown_timeout(Duration::from_secs(5));
        self.mgr_rt.shutdown_timeout(Duration::from_secs(5));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A one-manager cluster with `nodes` worker nodes in its store (they hold no session yet).
async fn start_manager(
    dir: &std::path::Path,
    nodes: usize,
) -> Result<(Arc<Manager>, Cluster, Vec<String>)> {
    // Heartbeats are not what is measured: few of them.
    let cluster = crate::bench::bench_cluster(30_000)?;
    let (mgr, node_id, addr) = crate::bench::bench_manager(&cluster, dir, 0).await?;
    mgr.initialize().await.map_err(|e| anyhow!("{e}"))?;
    mgr.wait_for_leader(Duration::from_secs(10))
        .await
        .ok_or_else(|| anyhow!("no leader"))?;
    let mut m = node(&node_id, 1, Role::Manager, "m0".into(), addr.to_string());
    m.state = NodeState::Ready;
    m.availability = manager::store::Availability::Drain;
    let mut ops = vec![
        Op::Create(Object::Cluster(cluster.clone())),
        Op::Create(Object::Node(m)),
    ];
    let mut ids = Vec::new();
    for i in 0..nodes {
        let id = random_id(25);
        // Distinct underlay addresses, as real nodes have (the overlay peers name them).
        let ip = std::net::Ipv4Addr::from(0x0a64_0000u32 + i as u32 + 1);
        ops.push(Op::Create(Object::Node(node(
            &id,
            0,
            Role::Worker,
            format!("w{i}"),
            format!("{ip}:2377"),
        ))));
        ids.push(id);
    }
    propose_all(&mgr, ops).await?;
    Ok((mgr, cluster, ids))
}

fn service_spec(name: &str, network: &str, replicas: u64) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        labels: Default::default(),
        mode: ServiceMode::Replicated { replicas },
        task: TaskSpec {
            image: "bench".into(),
            networks: vec![NetworkAttachmentConfig {
                target: network.into(),
                aliases: Vec::new(),
            }],
            ..Default::default()
        },
        update: Default::default(),
        rollback: Default::default(),
        endpoint: Default::default(),
    }
}

/// Set the replicas of the bench's service and wait until that many tasks run.
fn scale(sim: &Sim, spec: &mut ServiceSpec, replicas: u64, limit: Duration) -> Result<()> {
    spec.mode = ServiceMode::Replicated { replicas };
    let wire = pb::ServiceSpec::from(&*spec);
    let name = spec.name.clone();
    sim.api(async move |api| {
        api.update_service(pb::UpdateServiceRequest {
            id: name,
            spec: Some(wire),
            rollback: false,
            version: 0,
        })
        .await
    })?;
    let deadline = Instant::now() + limit;
    while sim.running(&spec.name) != replicas as usize {
        if Instant::now() > deadline {
            return Err(anyhow!(
                "{} of {replicas} tasks running after {limit:?}",
                sim.running(&spec.name)
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

/// The run itself: set up, churn, figures.
pub fn measure(nodes: usize, changes: usize, timeout: Duration) -> Result<Figures> {
    let setup = Instant::now();
    let sim = Sim::start(nodes, timeout)?;
    let res = churn(&sim, nodes, changes, timeout, setup);
    sim.shutdown();
    res
}

/// The overlay's subnet: room for a task on every node, the churned one and the gateway
/// (the cluster's default, a /24, holds 253 tasks: with more nodes the rest never got an
/// address and the setup waited for them until its timeout).
fn churn_subnet(nodes: usize) -> String {
    let mut prefix = 24u32;
    while prefix > 8 && (1usize << (32 - prefix)) < nodes + 8 {
        prefix -= 1;
    }
    format!("10.128.0.0/{prefix}")
}

fn churn(
    sim: &Sim,
    nodes: usize,
    changes: usize,
    timeout: Duration,
    setup: Instant,
) -> Result<Figures> {
    let net = pb::NetworkSpec::from(&NetworkSpec {
        name: "churn-net".into(),
        driver: "overlay".into(),
        subnet: churn_subnet(nodes),
        ..Default::default()
    });
    sim.api(async move |api| {
        api.create_network(pb::NetworkSpecRequest { spec: Some(net) })
            .await
    })?;
    let mut spec = service_spec("churn", "churn-net", nodes as u64);
    let wire = pb::ServiceSpec::from(&spec);
    sim.api(async move |api| {
        api.create_service(pb::ServiceSpecRequest { spec: Some(wire) })
            .await
    })?;
    let deadline = Instant::now() + timeout;
    while sim.running("churn") < nodes {
        if Instant::now() > deadline {
            return Err(anyhow!(
                "setup: {} of {nodes} tasks running after {timeout:?}",
                sim.running("churn")
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let setup_s = setup.elapsed().as_secs_f64();
    // Let the last status writes and network updates go out before measuring.
    std::thread::sleep(Duration::from_millis(500));
    let stats = &sim.mgr.dispatcher.stats;
    let cpu0 = threads_cpu(MGR_THREADS);
    let bytes0 = stats.bytes.load(Ordering::Relaxed);
    let msgs0 = stats.messages.load(Ordering::Relaxed);
    let per = timeout / (changes.max(1) as u32);
    for i in 0..changes {
        let replicas = if i % 2 == 0 { nodes + 1 } else { nodes };
        scale(sim, &mut spec, replicas as u64, per)?;
    }
    let cpu = cpu_since(&cpu0, &threads_cpu(MGR_THREADS));
    let bytes = stats.bytes.load(Ordering::Relaxed) - bytes0;
    let msgs = stats.messages.load(Ordering::Relaxed) - msgs0;
    let n = changes.max(1) as f64;
    Ok(Figures {
        nodes,
        changes,
        cpu_ms_per_change: cpu.as_secs_f64() * 1000.0 / n,
        bytes_per_change: bytes as f64 / n,
        messages_per_change: msgs as f64 / n,
        setup_s,
    })
}

pub fn run(args: OverlayChurnArgs) -> Result<()> {
    let before: Option<Figures> = match &args.before {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("{}", p.display()))?;
            Some(serde_json::from_str(text.trim()).with_context(|| format!("{}", p.display()))?)
        }
        None => None,
    };
    let after = measure(args.nodes, args.changes, args.timeout)?;
    match args.format {
        Format::Json | Format::Template(_) => match &before {
            Some(b) => println!("{}", serde_json::json!({ "before": b, "after": after })),
            None => println!("{}", serde_json::to_string(&after)?),
        },
        Format::Table => {
            println!(
                "overlay churn: {} nodes on one overlay, {} task changes (setup {:.1}s)",
                after.nodes, after.changes, after.setup_s
            );
            let row = |label: &str, f: &Figures| {
                vec![
                    label.to_string(),
                    format!("{:.2}", f.cpu_ms_per_change),
                    format!("{:.0}", f.bytes_per_change),
                    format!("{:.0}", f.messages_per_change),
                ]
            };
            let mut rows = Vec::new();
            if let Some(b) = &before {
                rows.push(row("before", b));
            }
            rows.push(row(
                if before.is_some() {
                    "after"
                } else {
                    "this build"
                },
                &after,
            ));
            print!(
                "{}",
                crate::output::table(
                    &[
                        "",
                        "MANAGER CPU MS/CHANGE",
                        "BYTES/CHANGE",
                        "MESSAGES/CHANGE"
                    ],
                    &rows
                )
            );
            if let Some(b) = &before {
                let ratio = |x: f64, y: f64| if y > 0.0 { x / y } else { f64::NAN };
                println!(
                    "after/before: CPU {:.3}x, bytes {:.3}x",
                    ratio(after.cpu_ms_per_change, b.cpu_ms_per_change),
                    ratio(after.bytes_per_change, b.bytes_per_change)
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The overlay holds a task on every node and the churned one, whatever the node count.
    #[test]
    fn the_churn_subnet_holds_every_task() {
        for nodes in [1, 3, 200, 253, 254, 1000, 5000] {
            let s = churn_subnet(nodes);
            let prefix: u32 = s
                .rsplit('/')
                .next()
                .and_then(|p| p.parse().ok())
                .expect("prefix");
            // Usable hosts: all but network, broadcast and gateway.
            let hosts = (1usize << (32 - prefix)) - 3;
            assert!(hosts > nodes, "{nodes} nodes: {s}");
        }
        assert_eq!(churn_subnet(200), "10.128.0.0/24");
    }

    /// CPU time is counted per thread: a thread gone since the first reading takes nothing
    /// away, a new one counts whole.
    #[test]
    fn cpu_is_counted_per_thread() {
        let before = HashMap::from([(1, 500), (2, 300), (3, 9000)]);
        // Thread 3 ended, thread 4 is new.
        let now = HashMap::from([(1, 600), (2, 300), (4, 50)]);
        assert_eq!(cpu_since(&before, &now), Duration::from_millis(1500));
    }

    /// The manager's threads of this process are found and their CPU time read.
    #[test]
    fn the_threads_of_a_named_runtime_are_read() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("bench-cpu-test")
            .build()
            .expect("runtime");
        let busy = rt.block_on(async {
            tokio::spawn(async {
                let t = Instant::now();
                let mut x = 0u64;
                while t.elapsed() < Duration::from_millis(300) {
                    x = x.wrapping_add(std::hint::black_box(1));
                }
                x
            })
            .await
        });
        assert!(busy.is_ok());
        let cpu = threads_cpu("bench-cpu-test");
        assert!(!cpu.is_empty(), "no thread named bench-cpu-test");
        assert!(
            cpu_since(&HashMap::new(), &cpu) > Duration::ZERO,
            "{cpu:?}: 300 ms of spinning not counted"
        );
    }

    /// The bench with tiny sizes: it runs and its figures are figures.
    #[test]
    fn overlay_churn_smoke() {
        let f = measure(3, 2, Duration::from_secs(60)).expect("bench runs");
        assert_eq!((f.nodes, f.changes), (3, 2));
        assert!(f.bytes_per_change > 0.0, "{f:?}");
        assert!(f.messages_per_change > 0.0, "{f:?}");
    }

    /// A 500 KiB secret used by 10 tasks on one node: the node gets its data once, and the
    /// tasks run (with the data inside every task the assignments passed the 4 MiB message
    /// limit and the node never got them).
    #[test]
    fn a_500k_secret_used_by_ten_tasks_on_one_node_runs() {
        let sim = Sim::start(1, Duration::from_secs(60)).expect("cluster");
        let data: Vec<u8> = (0..500 * 1024).map(|i| (i * 7 % 256) as u8).collect();
        let req = pb::CreateFileObjectRequest {
            name: "big".into(),
            data,
            labels: Default::default(),
        };
        sim.api(async move |api| {
            api.create_file_object(manager::secrets::FileKind::Secret, req)
                .await
        })
        .expect("secret");
        let bytes0 = sim.mgr.dispatcher.stats.bytes.load(Ordering::Relaxed);
        let mut spec = service_spec("big", "", 10);
        spec.task.networks.clear();
        spec.task.secrets = vec![proto::spec::FileRef {
            name: "big".into(),
            ..Default::default()
        }];
        let wire = pb::ServiceSpec::from(&spec);
        sim.api(async move |api| {
            api.create_service(pb::ServiceSpecRequest { spec: Some(wire) })
                .await
        })
        .expect("service");
        let deadline = Instant::now() + Duration::from_secs(60);
        while sim.running("big") < 10 {
            assert!(
                Instant::now() < deadline,
                "{} of 10 tasks running",
                sim.running("big")
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let sent = sim.mgr.dispatcher.stats.bytes.load(Ordering::Relaxed) - bytes0;
        sim.shutdown();
        assert!(
            sent < 1024 * 1024,
            "{sent} bytes sent: the secret went more than once"
        );
        assert!(
            sent > 500 * 1024,
            "{sent} bytes sent: the secret did not go"
        );
    }
}
