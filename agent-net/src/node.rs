//! A node's whole network: the gateway bridge, the overlays, the embedded DNS servers and the
//! nftables rules, kept in step with the state the dispatcher sends and the tasks that run
//! here.
//!
//! ```text
//!   dispatcher ──NodeNetState──▶ set_state ─┐
//!   runtime ──attach/detach(task)──────────┤──▶ reconcile: overlay.apply (FDB, neighbours,
//!                                           │       namespaces, sandbox), node rules (mesh,
//!                                           │       host ports, egress), per-task VIP rules,
//!                                           │       DNS records
//! ```
//!
//! Every side effect goes through a [`Dataplane`] (the kernel's, or an in-memory fake in the
//! unit tests below), so the order of attach and detach and what a reconcile does are tested
//! without root.
//!
//! Attaches and detaches of different tasks run side by side (each task has its own
//! namespace, veth and lease; the overlays serialise their own changes). The overlay part of a
//! reconcile excludes them all, and the networks of tasks still being attached count as in
//! use, so a reconcile never removes a network a task is being attached to. Rules are
//! rendered from the state and applied only when their text changed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use proto::spec::{Assignment, NodeNetState, PortProtocol, TaskNetwork};
use tokio_util::sync::CancellationToken;

use crate::dataplane::{Dataplane, KernelDataplane};
use crate::dns::Dns;
use crate::local::NetError;
use crate::nft;

/// A task attached on this node.
#[derive(Clone, Debug)]
struct LocalTask {
    netns: PathBuf,
    networks: Vec<TaskNetwork>,
    /// Its address on the gateway bridge (None: only internal networks).
    gateway_addr: Option<Ipv4Addr>,
    service_id: String,
}

/// How long a starting task may take to listen on its published TCP ports before it counts
/// as running anyway.
pub const LISTEN_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Default)]
struct State {
    net: NodeNetState,
    tasks: BTreeMap<String, LocalTask>,
    /// Rules as last applied: the node's, and each task's.
    node_rules: Option<String>,
    task_rules: BTreeMap<String, String>,
    /// The networks of tasks being attached or restored, not yet in `tasks`.
    attaching: BTreeMap<String, Vec<String>>,
    /// The overlay state and networks in use as last applied.
    overlays_applied: Option<(NodeNetState, BTreeSet<String>)>,
}

pub struct NodeNet {
    dp: Arc<dyn Dataplane>,
    dns: Dns,
    state: Mutex<State>,
    /// Attach, detach and restore hold it shared; the overlay part of a reconcile alone.
    datapath: tokio::sync::RwLock<()>,
    /// Serialises the overlay applies of attaches (each task's networks must be among the
    /// networks in use of every later apply).
    overlays: tokio::sync::Mutex<()>,
    kick: tokio::sync::Notify,
    /// True once the dispatcher has said where this node's underlay is.
    known: tokio::sync::watch::Sender<bool>,
    /// Ports this node listens on besides [`proto::spec::NODE_PORTS`] (its manager port).
    reserved_ports: Mutex<BTreeSet<(PortProtocol, u16)>>,
}

/// How long an attach waits for the node's first network state (sent with the first
/// assignments, so normally there already).
const STATE_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

/// What `attach` gives the container runtime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attached {
    pub netns: PathBuf,
    pub gateway_addr: Option<Ipv4Addr>,
}

impl NodeNet {
    /// `dir`: `<data dir>/net`. The node's namespace is the calling thread's.
    /// `upstreams`: where the embedded DNS forwards names it does not know.
    pub fn new(dir: &Path, upstreams: Vec<SocketAddr>) -> Result<Arc<NodeNet>, NetError> {
        Ok(NodeNet::with_dataplane(
            Arc::new(KernelDataplane::new(dir)?),
            upstreams,
        ))
    }

    /// The controller over `dp` (tests: [`crate::dataplane::fake::FakeDataplane`]).
    pub fn with_dataplane(dp: Arc<dyn Dataplane>, upstreams: Vec<SocketAddr>) -> Arc<NodeNet> {
        Arc::new(NodeNet {
            dp,
            dns: Dns::new(upstreams),
            state: Mutex::new(State::default()),
            datapath: tokio::sync::RwLock::new(()),
            overlays: tokio::sync::Mutex::new(()),
            kick: tokio::sync::Notify::new(),
            known: tokio::sync::watch::Sender::new(false),
            reserved_ports: Mutex::new(BTreeSet::new()),
        })
    }

    /// Keep `port` out of the routing mesh: the node listens on it itself.
    pub fn reserve_port(&self, protocol: PortProtocol, port: u16) {
        let added = self
            .reserved_ports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((protocol, port));
        if added {
            self.kick.notify_one();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The dispatcher's latest word.
    pub fn set_state(&self, net: NodeNetState) {
        self.dns.set_state(&net);
        let known = net.node_ip.is_some();
        self.lock().net = net;
        self.known.send_if_modified(|k| {
            let changed = *k != known;
            *k = known;
            changed
        });
        self.kick.notify_one();
    }

    /// The task's namespace with its interfaces: `eth0..` on its overlays, then the gateway
    /// bridge's (unless every network is internal); its DNS server and VIP rules are in place
    /// before this returns, so the container starts with a working network.
    pub async fn attach(&self, task: &Assignment) -> Result<Attached, NetError> {
        let nets = &task.networks;
        if !nets.is_empty() {
            let mut known = self.known.subscribe();
            let waited = tokio::time::timeout(STATE_WAIT, known.wait_for(|k| *k)).await;
            if !matches!(waited, Ok(Ok(_))) {
                return Err(NetError::Overlay {
                    network: nets[0].network_name.clone(),
                    reason: "this node has not yet been told its underlay address by the managers"
                        .into(),
                });
            }
        }
        let t0 = std::time::Instant::now();
        let _dp = self.datapath.read().await;
        let t_lock = t0.elapsed();
        let _attaching = self.attaching(task);
        if !nets.is_empty() {
            // The task's networks exist, with every peer's entries, before its interfaces.
            let _one = self.overlays.lock().await;
            self.apply_overlays(false).await?;
        }
        let internal_only = !nets.is_empty() && nets.iter().all(|n| n.internal);
        let gw_if = format!("eth{}", nets.len());
        let (netns, gateway_addr) = if internal_only {
            (self.dp.ensure_task_netns(&task.task_id).await?, None)
        } else {
            let a = self.dp.attach_gateway(&task.task_id, &gw_if).await?;
            (a.netns, Some(a.ip))
        };
        if !nets.is_empty() {
            self.dp.attach_overlays(&task.task_id, &netns, nets).await?;
        }
        let t_links = t0.elapsed();
        self.register(task, &netns, gateway_addr).await?;
        tracing::debug!(
            task = %task.task_id,
            lock_ms = t_lock.as_secs_f64() * 1e3,
            links_ms = (t_links - t_lock).as_secs_f64() * 1e3,
            register_ms = (t0.elapsed() - t_links).as_secs_f64() * 1e3,
            "network attach"
        );
        Ok(Attached {
            netns,
            gateway_addr,
        })
    }

    /// Records a task (attached now, or found running after a restart): its DNS server and
    /// VIP rules.
    async fn register(
        &self,
        task: &Assignment,
        netns: &Path,
        gateway_addr: Option<Ipv4Addr>,
    ) -> Result<(), NetError> {
        let local = LocalTask {
            netns: netns.to_path_buf(),
            networks: task.networks.clone(),
            gateway_addr,
            service_id: task.service_id.clone(),
        };
        if !task.networks.is_empty() {
            let upstreams: Vec<SocketAddr> = task
                .spec
                .dns
                .nameservers
                .iter()
                .filter_map(|s| {
                    s.parse::<SocketAddr>()
                        .ok()
                        .or_else(|| s.parse::<Ipv4Addr>().ok().map(|ip| (ip, 53).into()))
                })
                .collect();
            let ids = task.networks.iter().map(|n| n.network_id.clone()).collect();
            self.dns
                .serve_on(
                    &task.task_id,
                    ids,
                    upstreams,
                    self.dp.dns_sockets(&task.task_id, netns),
                )
                .await
                .map_err(|e| NetError::Io {
                    context: format!("starting the DNS server of task {}", task.task_id),
                    source: std::io::Error::other(e.to_string()),
                })?;
        }
        let script = {
            let mut st = self.lock();
            st.tasks.insert(task.task_id.clone(), local.clone());
            task_script(&st.net, &local)
        };
        if let Some(script) = script {
            self.apply_task_rules(&task.task_id, &local.netns, script)
                .await?;
        }
        self.kick.notify_one();
        Ok(())
    }

    /// Re-registers tasks that outlived a daemon restart (their namespaces persist).
    pub async fn restore(&self, task: &Assignment) -> Result<(), NetError> {
        let _dp = self.datapath.read().await;
        let _attaching = self.attaching(task);
        let netns = self.dp.task_netns(&task.task_id);
        if !self.dp.netns_exists(&netns) {
            return Ok(());
        }
        let gateway_addr = self.dp.gateway_address(&task.task_id);
        if !task.networks.is_empty() {
            self.dp
                .attach_overlays(&task.task_id, &netns, &task.networks)
                .await?;
        }
        self.register(task, &netns, gateway_addr).await
    }

    /// True when the task takes traffic through DNS or a load balancer, so it must be drained
    /// before it is stopped.
    pub fn is_endpoint(&self, task_id: &str) -> bool {
        self.lock()
            .tasks
            .get(task_id)
            .is_some_and(|t| !t.networks.is_empty())
    }

    /// Waits (at most [`LISTEN_WAIT`]) until the started task accepts connections on every
    /// TCP port its service publishes, so the routing mesh never sends a request to a process
    /// that is not listening yet (the task joins the backends once it is reported RUNNING).
    /// Returns whether it listens.
    pub async fn wait_listening(&self, task_id: &str) -> bool {
        let (netns, ports) = {
            let st = self.lock();
            let Some(t) = st.tasks.get(task_id) else {
                return true;
            };
            let ports: Vec<u16> = st
                .net
                .services
                .iter()
                .filter(|s| s.id == t.service_id)
                .flat_map(|s| s.ports.iter())
                .filter(|p| p.protocol == proto::spec::PortProtocol::Tcp)
                .map(|p| p.target_port)
                .collect::<BTreeSet<u16>>()
                .into_iter()
                .collect();
            (t.netns.clone(), ports)
        };
        if ports.is_empty() {
            return true;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name("shoal-listen".into())
            .spawn(move || {
                let _ = tx.send(probe_ports(&netns, &ports, LISTEN_WAIT));
            });
        if spawned.is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    /// Undo `attach` (idempotent).
    pub async fn detach(&self, task_id: &str) -> Result<(), NetError> {
        self.dns.stop(task_id);
        {
            let mut st = self.lock();
            st.tasks.remove(task_id);
            st.task_rules.remove(task_id);
        }
        let _dp = self.datapath.read().await;
        let overlay = self.dp.detach_overlays(task_id).await;
        let local = self.dp.detach_gateway(task_id).await;
        self.kick.notify_one();
        overlay.and(local)
    }

    /// Keeps the datapath in step until cancelled; a failed pass is retried.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut retry = false;
        loop {
            let wait = if retry {
                std::time::Duration::from_millis(500)
            } else {
                std::time::Duration::from_secs(30)
            };
            // A kick (a task attached or left, new state) re-applies what changed; the
            // periodic pass, and one after a failure, re-applies everything.
            let full = tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.kick.notified() => retry,
                _ = tokio::time::sleep(wait) => true,
            };
            retry = match self.reconcile_pass(full).await {
                Ok(()) => false,
                Err(e) => {
                    tracing::warn!(error = %e, "programming the node's network failed; retrying");
                    true
                }
            };
        }
    }

    /// The state, and the networks in use: those of the tasks attached here and of those
    /// being attached.
    fn snapshot(&self) -> (NodeNetState, BTreeSet<String>) {
        let st = self.lock();
        let in_use: BTreeSet<String> = st
            .tasks
            .values()
            .flat_map(|t| t.networks.iter().map(|n| n.network_id.clone()))
            .chain(st.attaching.values().flatten().cloned())
            .collect();
        (st.net.clone(), in_use)
    }

    /// Counts `task`'s networks as in use until the returned guard is dropped (by then the
    /// task is registered, or its attach failed).
    fn attaching(&self, task: &Assignment) -> Attaching<'_> {
        let ids = task.networks.iter().map(|n| n.network_id.clone()).collect();
        self.lock().attaching.insert(task.task_id.clone(), ids);
        Attaching {
            net: self,
            task_id: task.task_id.clone(),
        }
    }

    /// The overlays as the state and the networks in use want them; unless `full`, nothing
    /// is done when neither changed since the last apply. Callers hold `overlays`.
    async fn apply_overlays(&self, full: bool) -> Result<(), NetError> {
        let wanted = self.snapshot();
        if !full && self.lock().overlays_applied.as_ref() == Some(&wanted) {
            return Ok(());
        }
        let applied = self.dp.apply_overlays(&wanted.0, &wanted.1).await;
        self.lock().overlays_applied = applied.is_ok().then_some(wanted);
        applied
    }

    /// One full pass: overlays, node rules, task rules.
    pub async fn reconcile(&self) -> Result<(), NetError> {
        self.reconcile_pass(true).await
    }

    /// One pass; unless `full`, the overlays are left alone when neither the state nor the
    /// networks in use changed since they were last applied.
    async fn reconcile_pass(&self, full: bool) -> Result<(), NetError> {
        let t0 = std::time::Instant::now();
        let wanted = self.snapshot();
        let unchanged = !full && self.lock().overlays_applied.as_ref() == Some(&wanted);
        if wanted.0.node_ip.is_some() && !unchanged {
            let _dp = self.datapath.write().await;
            let _one = self.overlays.lock().await;
            self.apply_overlays(full).await?;
        }
        let t_overlays = t0.elapsed();
        let (node_script, tasks) = {
            let st = self.lock();
            let gw: BTreeMap<String, Ipv4Addr> = st
                .tasks
                .iter()
                .filter_map(|(id, t)| t.gateway_addr.map(|a| (id.clone(), a)))
                .collect();
            let mut rules = nft::NodeRules::new(&st.net, gw);
            rules.reserved_ports.extend(
                self.reserved_ports
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .copied(),
            );
            let script = nft::render_node(&rules);
            let node_script = (st.node_rules.as_deref() != Some(script.as_str())).then_some(script);
            let tasks: Vec<(String, PathBuf, String)> = st
                .tasks
                .iter()
                .filter_map(|(id, t)| {
                    let s = task_script(&st.net, t)?;
                    (st.task_rules.get(id) != Some(&s)).then(|| (id.clone(), t.netns.clone(), s))
                })
                .collect();
            (node_script, tasks)
        };
        let mut first_err = None;
        if let Some(script) = node_script {
            match self.dp.apply_rules(None, &script).await {
                Ok(()) => self.lock().node_rules = Some(script),
                Err(e) => first_err = Some(nft_error("the node's rules", e)),
            }
        }
        let t_node = t0.elapsed();
        let n_tasks = tasks.len();
        for (id, netns, script) in tasks {
            if let Err(e) = self.apply_task_rules(&id, &netns, script).await {
                first_err.get_or_insert(e);
            }
        }
        tracing::debug!(
            overlays_ms = t_overlays.as_secs_f64() * 1e3,
            node_rules_ms = (t_node - t_overlays).as_secs_f64() * 1e3,
            task_rules = n_tasks,
            task_rules_ms = (t0.elapsed() - t_node).as_secs_f64() * 1e3,
            "network reconcile"
        );
        first_err.map_or(Ok(()), Err)
    }

    async fn apply_task_rules(
        &self,
        task_id: &str,
        netns: &Path,
        script: String,
    ) -> Result<(), NetError> {
        self.dp
            .apply_rules(Some(netns), &script)
            .await
            .map_err(|e| nft_error(&format!("the rules of task {task_id}"), e))?;
        let mut st = self.lock();
        if st.tasks.contains_key(task_id) {
            st.task_rules.insert(task_id.to_string(), script);
        }
        Ok(())
    }

    /// Remove everything this node programmed (leaving the swarm).
    pub async fn teardown(&self) -> Result<(), NetError> {
        let _dp = self.datapath.write().await;
        let r = self.dp.teardown_overlays().await;
        self.lock().overlays_applied = None;
        let _ = self.dp.remove_rules(None, nft::TABLE).await;
        self.lock().node_rules = None;
        r
    }
}

/// A task being attached: its networks count as in use until this is dropped.
struct Attaching<'a> {
    net: &'a NodeNet,
    task_id: String,
}

impl Drop for Attaching<'_> {
    fn drop(&mut self) {
        self.net.lock().attaching.remove(&self.task_id);
    }
}

/// On this (new) thread: enter `netns` and connect to 127.0.0.1 on each port until all accept
/// or `limit` passes.
fn probe_ports(netns: &Path, ports: &[u16], limit: std::time::Duration) -> bool {
    let Ok(ns) = std::fs::File::open(netns) else {
        return false;
    };
    if nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).is_err() {
        return false;
    }
    let deadline = std::time::Instant::now() + limit;
    let mut waiting: Vec<u16> = ports.to_vec();
    while std::time::Instant::now() < deadline {
        waiting.retain(|p| {
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, *p));
            std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(200))
                .is_err()
        });
        if waiting.is_empty() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    false
}

/// The VIP rules of one task; None for a task on no overlay.
fn task_script(net: &NodeNetState, t: &LocalTask) -> Option<String> {
    if t.networks.is_empty() {
        return None;
    }
    let ids: Vec<String> = t.networks.iter().map(|n| n.network_id.clone()).collect();
    Some(nft::render_task(net, &ids))
}

fn nft_error(what: &str, e: nft::NftError) -> NetError {
    NetError::Io {
        context: format!("applying {what}"),
        source: std::io::Error::other(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    //! The controller over the in-memory dataplane: attach, detach and reconcile, without
    //! root.

    use super::*;
    use crate::dataplane::fake::FakeDataplane;
    use crate::dataplane::Observe;
    use crate::overlay::{task_peer_ifname, PeerEntries, BRIDGE, SANDBOX};
    use proto::spec::{overlay_mac, NetPeer, NetworkState, TaskSpec, TaskState};

    const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 5);
    const ING: u32 = 4096;
    const FRONT: u32 = 10;
    const BACK: u32 = 11;

    fn fake() -> Arc<FakeDataplane> {
        let dp = Arc::new(FakeDataplane::new());
        dp.add_underlay("ul0", NODE_IP, 24, 1500);
        dp
    }

    fn controller(dp: &Arc<FakeDataplane>) -> Arc<NodeNet> {
        NodeNet::with_dataplane(dp.clone(), vec![])
    }

    fn subnet(vni: u32) -> &'static str {
        match vni {
            ING => "10.255.0.0/16",
            FRONT => "10.0.1.0/24",
            _ => "10.0.2.0/24",
        }
    }

    fn id(vni: u32) -> String {
        match vni {
            ING => "ingress".into(),
            FRONT => "front".into(),
            _ => "back".into(),
        }
    }

    fn network(vni: u32, peers: &[(Ipv4Addr, Ipv4Addr)]) -> NetworkState {
        NetworkState {
            id: id(vni),
            name: id(vni),
            vni,
            subnet: subnet(vni).into(),
            gateway: None,
            internal: false,
            ingress: vni == ING,
            peers: peers
                .iter()
                .map(|&(addr, node_ip)| NetPeer { addr, node_ip })
                .collect(),
        }
    }

    /// The node's state listing ingress and `nets` (VNI, peers).
    fn state(nets: &[(u32, &[(Ipv4Addr, Ipv4Addr)])]) -> NodeNetState {
        let mut networks = vec![network(ING, &[])];
        networks.extend(nets.iter().map(|(vni, peers)| network(*vni, peers)));
        NodeNetState {
            node_id: "n1".into(),
            node_ip: Some(NODE_IP),
            ingress_addr: Some(Ipv4Addr::new(10, 255, 0, 5)),
            networks,
            services: vec![],
        }
    }

    fn tnet(vni: u32, addr: Ipv4Addr, internal: bool) -> TaskNetwork {
        TaskNetwork {
            network_id: id(vni),
            network_name: id(vni),
            vni,
            subnet: subnet(vni).into(),
            gateway: Ipv4Addr::new(10, 0, 0, 1),
            addr,
            internal,
            ingress: vni == ING,
            aliases: vec![],
        }
    }

    fn task(id: &str, networks: Vec<TaskNetwork>) -> Assignment {
        Assignment {
            task_id: id.into(),
            service_id: "svc".into(),
            service_name: "web".into(),
            slot: 1,
            spec: TaskSpec::default(),
            desired_state: TaskState::Running,
            node_hostname: "n1".into(),
            node_id: String::new(),
            service_labels: Default::default(),
            secrets: vec![],
            configs: vec![],
            networks,
        }
    }

    fn a(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 1, last)
    }

    fn position(log: &[String], entry: &str) -> usize {
        log.iter()
            .position(|l| l == entry)
            .unwrap_or_else(|| panic!("{entry:?} not in {log:#?}"))
    }

    #[tokio::test]
    async fn attach_builds_the_network_first_and_returns_with_dns_and_rules_in_place() {
        let dp = fake();
        let net = controller(&dp);
        let mut st = state(&[(FRONT, &[])]);
        st.services.push(proto::spec::ServiceNet {
            id: "svc".into(),
            name: "web".into(),
            mode: proto::spec::EndpointMode::Vip,
            ports: vec![],
            networks: vec![proto::spec::ServiceOnNetwork {
                network_id: id(FRONT),
                vip: Some(a(100)),
                aliases: vec![],
            }],
            backends: vec![],
        });
        net.set_state(st);
        let t = task("t1", vec![tnet(FRONT, a(2), false)]);
        let att = net.attach(&t).await.expect("attach");
        assert_eq!(att.netns, dp.task_netns("t1"));
        assert_eq!(att.gateway_addr, Some(Ipv4Addr::new(172, 30, 0, 2)));

        let inside = dp.links(Some(&att.netns)).await.unwrap();
        assert_eq!(inside["eth0"].addrs, [(a(2), 24)].into(), "{inside:?}");
        assert!(inside["eth0"].up);
        let gw = (Ipv4Addr::new(172, 30, 0, 2), 24);
        assert_eq!(inside["eth1"].addrs, [gw].into());
        let ov = dp.links(Some(&dp.network_netns(FRONT))).await.unwrap();
        assert_eq!(ov["vx-10"].controller.as_deref(), Some(BRIDGE));
        assert_eq!(
            ov[&task_peer_ifname("t1")].controller.as_deref(),
            Some(BRIDGE)
        );
        // The network and its entries exist before the task's interface is made on it; the
        // task's DNS server and VIP rules are there when attach returns.
        let log = dp.log();
        assert!(position(&log, "network+ 10") < position(&log, "link+ t1/eth0"));
        assert!(position(&log, "link+ t1/eth0") < position(&log, "dns t1"));
        assert!(position(&log, "dns t1") < position(&log, "rules t1"));
        assert!(dp
            .tables(Some(&att.netns))
            .await
            .unwrap()
            .contains(nft::TABLE));
        assert!(net.is_endpoint("t1"));
    }

    #[tokio::test]
    async fn a_task_on_internal_networks_only_gets_no_way_out() {
        let dp = fake();
        let net = controller(&dp);
        net.set_state(state(&[(FRONT, &[])]));
        let att = net
            .attach(&task("t1", vec![tnet(FRONT, a(2), true)]))
            .await
            .expect("attach");
        assert_eq!(att.gateway_addr, None);
        let inside = dp.links(Some(&att.netns)).await.unwrap();
        assert_eq!(
            inside.keys().cloned().collect::<Vec<_>>(),
            ["eth0", "lo"],
            "{inside:?}"
        );
        assert!(dp.leases().is_empty());
    }

    #[tokio::test]
    async fn detach_removes_the_task_everywhere_and_is_idempotent() {
        let dp = fake();
        let net = controller(&dp);
        net.set_state(state(&[(FRONT, &[])]));
        let t = task("t1", vec![tnet(FRONT, a(2), false)]);
        let att = net.attach(&t).await.unwrap();
        net.detach("t1").await.expect("detach");
        assert!(!dp.netns_exists(&att.netns));
        assert!(dp.leases().is_empty());
        let node = dp.links(None).await.unwrap();
        assert!(!node.keys().any(|n| n.starts_with("vs")), "{node:?}");
        let ov = dp.links(Some(&dp.network_netns(FRONT))).await.unwrap();
        assert!(!ov.contains_key(&task_peer_ifname("t1")), "{ov:?}");
        assert!(!net.is_endpoint("t1"));
        // The network stays while the managers list it.
        net.reconcile().await.unwrap();
        assert!(dp.netns_exists(&dp.network_netns(FRONT)));
        net.detach("t1").await.expect("a second detach");
        // The same task can be attached again (a restart of its container).
        net.attach(&t).await.expect("attach again");
    }

    #[tokio::test]
    async fn a_network_is_removed_once_neither_listed_nor_used() {
        let dp = fake();
        let net = controller(&dp);
        // The managers do not list the task's network yet: it is made for the task and kept.
        net.set_state(state(&[]));
        net.attach(&task("t1", vec![tnet(FRONT, a(2), false)]))
            .await
            .unwrap();
        net.reconcile().await.unwrap();
        assert!(dp.netns_exists(&dp.network_netns(FRONT)));
        // Listed, then its last task goes: kept while listed.
        net.set_state(state(&[(FRONT, &[])]));
        net.detach("t1").await.unwrap();
        net.reconcile().await.unwrap();
        assert!(dp.netns_exists(&dp.network_netns(FRONT)));
        // No longer listed: removed, with its VXLAN device; ingress and the sandbox stay.
        net.set_state(state(&[]));
        net.reconcile().await.unwrap();
        assert!(!dp.netns_exists(&dp.network_netns(FRONT)));
        assert!(dp.netns_exists(&dp.network_netns(ING)));
        assert!(dp.links(None).await.unwrap().contains_key(SANDBOX));
        assert!(dp.log().contains(&"network- 10".to_string()));
        assert!(dp.forwarding());
        assert!(dp.tables(None).await.unwrap().contains(nft::TABLE));
    }

    #[tokio::test]
    async fn fdb_and_neighbours_follow_the_peers() {
        let dp = fake();
        let net = controller(&dp);
        let (b, c) = (Ipv4Addr::new(192, 168, 0, 6), Ipv4Addr::new(192, 168, 0, 7));
        net.set_state(state(&[(FRONT, &[(a(3), b)])]));
        net.attach(&task("t1", vec![tnet(FRONT, a(2), false)]))
            .await
            .unwrap();
        let entries = |peers: &[(Ipv4Addr, Ipv4Addr)]| PeerEntries {
            fdb: peers.iter().map(|(x, n)| (overlay_mac(*x), *n)).collect(),
            neighbours: peers.iter().map(|(x, _)| (*x, overlay_mac(*x))).collect(),
        };
        assert_eq!(dp.peers(FRONT).await.unwrap(), entries(&[(a(3), b)]));
        // A peer comes, on another node.
        net.set_state(state(&[(FRONT, &[(a(3), b), (a(4), c)])]));
        net.reconcile().await.unwrap();
        assert_eq!(
            dp.peers(FRONT).await.unwrap(),
            entries(&[(a(3), b), (a(4), c)])
        );
        // One moves (its address now on another node), the other goes.
        net.set_state(state(&[(FRONT, &[(a(4), b)])]));
        net.reconcile().await.unwrap();
        assert_eq!(dp.peers(FRONT).await.unwrap(), entries(&[(a(4), b)]));
        net.set_state(state(&[(FRONT, &[])]));
        net.reconcile().await.unwrap();
        assert_eq!(dp.peers(FRONT).await.unwrap(), PeerEntries::default());
        // Nothing changed, nothing programmed.
        dp.clear_log();
        net.reconcile().await.unwrap();
        assert!(
            !dp.log().iter().any(|l| l.starts_with("peers")),
            "{:?}",
            dp.log()
        );
    }

    #[tokio::test]
    async fn a_restarted_controller_restores_its_tasks_and_removes_leftovers() {
        let dp = fake();
        let before = controller(&dp);
        before.set_state(state(&[(FRONT, &[]), (BACK, &[])]));
        before
            .attach(&task("t1", vec![tnet(FRONT, a(2), false)]))
            .await
            .unwrap();
        let t2 = task("t2", vec![tnet(BACK, Ipv4Addr::new(10, 0, 2, 2), false)]);
        before.attach(&t2).await.unwrap();
        drop(before);

        // The daemon restarts: the kernel keeps what it made. t1 still runs; t2 is gone and
        // its network is no longer listed.
        let net = controller(&dp);
        net.set_state(state(&[(FRONT, &[])]));
        net.restore(&task("t1", vec![tnet(FRONT, a(2), false)]))
            .await
            .expect("restore");
        assert!(net.is_endpoint("t1"));
        // A task whose namespace is gone is not restored.
        net.restore(&task("t9", vec![tnet(FRONT, a(9), false)]))
            .await
            .unwrap();
        assert!(!net.is_endpoint("t9"));
        net.reconcile().await.unwrap();
        assert!(!dp.netns_exists(&dp.network_netns(BACK)));
        assert!(dp.netns_exists(&dp.network_netns(FRONT)));
        let inside = dp.links(Some(&dp.task_netns("t1"))).await.unwrap();
        assert_eq!(inside["eth0"].addrs, [(a(2), 24)].into());
        assert!(inside.contains_key("eth1"));
        // t2's leftovers: its namespace and lease until the executor removes it.
        assert!(dp.netns_exists(&dp.task_netns("t2")));
        net.detach("t2").await.unwrap();
        assert!(!dp.netns_exists(&dp.task_netns("t2")));
        assert_eq!(dp.leases().values().collect::<Vec<_>>(), ["t1"]);
    }

    #[tokio::test]
    async fn teardown_removes_every_network_and_the_node_rules() {
        let dp = fake();
        let net = controller(&dp);
        net.set_state(state(&[(FRONT, &[])]));
        net.attach(&task("t1", vec![tnet(FRONT, a(2), false)]))
            .await
            .unwrap();
        net.reconcile().await.unwrap();
        assert!(dp.tables(None).await.unwrap().contains(nft::TABLE));
        net.detach("t1").await.unwrap();
        net.teardown().await.expect("teardown");
        assert!(dp.namespaces().is_empty(), "{:?}", dp.namespaces());
        assert!(!dp.links(None).await.unwrap().contains_key(SANDBOX));
        assert!(!dp.tables(None).await.unwrap().contains(nft::TABLE));
    }
}
