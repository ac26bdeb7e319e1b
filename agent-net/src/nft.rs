//! nftables rules: service VIPs, the ingress routing mesh, host-mode ports and egress.
//!
//! Two pure renderers turn a node's [`NodeNetState`] into one nft script each, and [`apply`]
//! feeds a script to `nft -f -` inside a network namespace. A script always rebuilds its
//! tables whole (`table X {}` / `delete table X` / `table X { … }`), and nft runs a script as
//! one transaction, so no packet ever meets half a ruleset and re-applying is idempotent.
//!
//! ```text
//!  node namespace, table ip shoal                 container namespace, table ip shoal
//!  prerouting/output (to a local address):        output:
//!    P → numgen over backends:                      VIP → numgen over the backends'
//!        local task  → its 172.30.0.x               addresses on that network
//!        remote task → its ingress address          (no backends: reject)
//!                      via shoal_ing, masqueraded
//!    (no backends: reject)
//!  postrouting: egress of 172.30.0.0/24 masqueraded
//!  table bridge shoal_gw: no traffic between two ports of shoal0 (Docker's icc=false)
//! ```
//!
//! A local backend is reached over the gateway bridge, so its replies go back through this
//! node and the client's source address is kept. Traffic from 127.0.0.0/8 to a published port
//! is masqueraded to the bridge's address; the kernel routes it only when
//! `net.ipv4.conf.<bridge>.route_localnet` (and the same on the sandbox interface) is 1.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;

use nix::sched::CloneFlags;
use proto::spec::{Backend, EndpointMode, NodeNetState, PortProtocol, PublishMode};
use tokio::io::AsyncWriteExt;

/// The table both renderers write (family and name, as nft spells them).
pub const TABLE: &str = "ip shoal";
/// The node's bridge-family table that keeps containers on the gateway bridge apart.
pub const GATEWAY_TABLE: &str = "bridge shoal_gw";

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("nft not found: install nftables (looked in PATH, /usr/sbin, /sbin)")]
    NotFound,
    #[error("opening network namespace {path}: {source}")]
    Netns {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("running {nft}: {source}")]
    Spawn {
        nft: PathBuf,
        #[source]
        source: io::Error,
    },
    /// nft refused the script; `stderr` is its own explanation (line, column, reason).
    #[error("nft failed in {netns}: {stderr}")]
    Failed { netns: String, stderr: String },
    #[error("invalid nft table {0:?}: expected \"<family> <name>\", e.g. \"ip shoal\"")]
    BadTable(String),
}

/// What the node's table is made from.
#[derive(Clone, Debug)]
pub struct NodeRules<'a> {
    pub state: &'a NodeNetState,
    /// This node's tasks and their addresses on the gateway bridge.
    pub local_gateway_addrs: BTreeMap<String, Ipv4Addr>,
    /// The gateway bridge's subnet (any address in it, and the prefix length).
    pub gateway_subnet: (Ipv4Addr, u8),
    pub gateway_bridge: String,
    /// The name prefix of the bridge's ports (the host ends of the containers' veths).
    pub gateway_port_prefix: String,
    /// The ingress sandbox's interface in the node namespace.
    pub sandbox_if: String,
    /// Ports the node uses itself ([`proto::spec::NODE_PORTS`], its manager port): never
    /// published, whatever the state says, and passed over before any published port.
    pub reserved_ports: BTreeSet<(PortProtocol, u16)>,
}

impl<'a> NodeRules<'a> {
    /// With the node-local network's defaults: 172.30.0.0/24 on `shoal0` (ports `vs…`) and
    /// the sandbox interface `shoal_ing`.
    pub fn new(
        state: &'a NodeNetState,
        local_gateway_addrs: BTreeMap<String, Ipv4Addr>,
    ) -> NodeRules<'a> {
        NodeRules {
            state,
            local_gateway_addrs,
            gateway_subnet: (Ipv4Addr::new(172, 30, 0, 0), 24),
            gateway_bridge: "shoal0".into(),
            gateway_port_prefix: "vs".into(),
            sandbox_if: "shoal_ing".into(),
            reserved_ports: proto::spec::NODE_PORTS
                .iter()
                .map(|(proto, port, _)| (*proto, *port))
                .collect(),
        }
    }
}

/// One published port on this node and where its connections go, round robin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortForward {
    pub protocol: PortProtocol,
    pub port: u16,
    pub mode: PublishMode,
    pub service: String,
    /// (address, port); empty: the port rejects.
    pub targets: Vec<(Ipv4Addr, u16)>,
}

/// One VIP seen from a container and the backends behind it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VipForward {
    pub vip: Ipv4Addr,
    pub service: String,
    /// Empty: the VIP rejects.
    pub backends: Vec<Ipv4Addr>,
}

/// The backends in task id order, each once, so the same state renders the same script.
fn sorted_backends(backends: &[Backend]) -> Vec<&Backend> {
    let mut seen = BTreeSet::new();
    let mut v: Vec<&Backend> = backends
        .iter()
        .filter(|b| seen.insert(b.task_id.as_str()))
        .collect();
    v.sort_by(|a, b| a.task_id.cmp(&b.task_id));
    v
}

fn addr_on(b: &Backend, network_id: &str) -> Option<Ipv4Addr> {
    b.addrs
        .iter()
        .find(|(n, _)| n == network_id)
        .map(|(_, a)| *a)
}

/// The node's published ports, by (protocol, port); when two services claim one port (the
/// manager should not let them), the first in the state wins.
pub fn plan_ports(rules: &NodeRules) -> Vec<PortForward> {
    let state = rules.state;
    let ingress_net = state
        .networks
        .iter()
        .find(|n| n.ingress)
        .map(|n| n.id.as_str());
    let mut ports: BTreeMap<(PortProtocol, u16), PortForward> = BTreeMap::new();
    for svc in &state.services {
        let backends = sorted_backends(&svc.backends);
        for pc in &svc.ports {
            let key = (pc.protocol, pc.published_port);
            if pc.published_port == 0
                || ports.contains_key(&key)
                || rules.reserved_ports.contains(&key)
            {
                continue;
            }
            let local = |b: &Backend| rules.local_gateway_addrs.get(&b.task_id).copied();
            let targets: Vec<(Ipv4Addr, u16)> = match pc.publish_mode {
                PublishMode::Ingress => backends
                    .iter()
                    .filter_map(|b| local(b).or_else(|| addr_on(b, ingress_net?)))
                    .map(|a| (a, pc.target_port))
                    .collect(),
                PublishMode::Host => backends
                    .iter()
                    .filter_map(|b| local(b))
                    .map(|a| (a, pc.target_port))
                    .collect(),
            };
            if pc.publish_mode == PublishMode::Host && targets.is_empty() {
                // Host mode opens the port only where a task runs.
                continue;
            }
            ports.insert(
                (pc.protocol, pc.published_port),
                PortForward {
                    protocol: pc.protocol,
                    port: pc.published_port,
                    mode: pc.publish_mode,
                    service: svc.name.clone(),
                    targets,
                },
            );
        }
    }
    ports.into_values().collect()
}

/// The VIPs a container on `task_networks` (network ids) reaches, by address; dnsrr services
/// have none. When two services claim one VIP, the first in the state wins.
pub fn plan_vips(state: &NodeNetState, task_networks: &[String]) -> Vec<VipForward> {
    let mut vips: BTreeMap<Ipv4Addr, VipForward> = BTreeMap::new();
    for svc in &state.services {
        if svc.mode != EndpointMode::Vip {
            continue;
        }
        let backends = sorted_backends(&svc.backends);
        for on in &svc.networks {
            let Some(vip) = on.vip else { continue };
            if !task_networks.contains(&on.network_id) || vips.contains_key(&vip) {
                continue;
            }
            vips.insert(
                vip,
                VipForward {
                    vip,
                    service: svc.name.clone(),
                    backends: backends
                        .iter()
                        .filter_map(|b| addr_on(b, &on.network_id))
                        .collect(),
                },
            );
        }
    }
    vips.into_values().collect()
}

/// A rule comment naming the service, with only characters nft takes in a quoted string.
fn comment(service: &str) -> String {
    let s: String = service
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        .take(64)
        .collect();
    format!("comment \"{s}\"")
}

/// An interface name (or `prefix*` pattern) as nft wants it quoted: the characters an
/// interface name may hold, nothing that ends the string.
fn ifname(name: &str) -> String {
    name.chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '@' | ':'))
        .take(15)
        .collect()
}

fn replace_table(out: &mut String, table: &str) {
    // Creating the table first makes the delete succeed when it does not exist yet.
    let _ = writeln!(out, "table {table} {{}}");
    let _ = writeln!(out, "delete table {table}");
}

/// Writes `<matcher> dnat ip to numgen inc mod N map { 0 : …, … }`, round robin over
/// `targets` (each as the map writes it, and alone), and after it the same rule to the first
/// target alone. The map is an anonymous set made with its rule, and a packet that meets a
/// just-committed rule before the set's elements are live finds no element, and the rule
/// does not match: without the second rule it went on untranslated (to the node itself,
/// which reset it). Seen here about once in 10,000 new connections while backends were
/// swapped (kernel 6.18; `swapping_backends_never_fails_a_connection` in
/// agent-net/tests/nft.rs, 3 of 40 runs failed, 0 of 40 with the second rule).
fn dnat_round_robin(out: &mut String, matcher: &str, targets: &[(String, String)], c: &str) {
    let entries: Vec<String> = targets
        .iter()
        .enumerate()
        .map(|(i, (entry, _))| format!("{i} : {entry}"))
        .collect();
    let _ = writeln!(
        out,
        "\t\t{matcher} dnat ip to numgen inc mod {} map {{ {} }} {c}",
        targets.len(),
        entries.join(", ")
    );
    let _ = writeln!(out, "\t\t{matcher} dnat ip to {} {c}", targets[0].1);
}

/// The node namespace's script: tables `ip shoal` and `bridge shoal_gw`.
pub fn render_node(rules: &NodeRules) -> String {
    let ports = plan_ports(rules);
    let (net, prefix) = rules.gateway_subnet;
    let prefix = prefix.min(32);
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    let subnet = format!("{}/{prefix}", Ipv4Addr::from(u32::from(net) & mask));
    let bridge = ifname(&rules.gateway_bridge);
    let sandbox = ifname(&rules.sandbox_if);
    let ports_prefix = ifname(&rules.gateway_port_prefix);

    let mut out = String::new();
    replace_table(&mut out, TABLE);
    let _ = writeln!(out, "table {TABLE} {{");
    let (open, closed): (Vec<_>, Vec<_>) = ports.iter().partition(|p| !p.targets.is_empty());
    if !open.is_empty() {
        out.push_str(
            "\tchain prerouting {\n\
             \t\ttype nat hook prerouting priority dstnat; policy accept;\n\
             \t\tfib daddr type local jump published\n\
             \t}\n\
             \tchain output {\n\
             \t\ttype nat hook output priority -100; policy accept;\n\
             \t\tfib daddr type local jump published\n\
             \t}\n\
             \tchain published {\n",
        );
        // The node's own ports leave the chain before any DNAT rule can meet them, so even a
        // state that publishes one cannot take the node's control or overlay traffic.
        for proto in [PortProtocol::Tcp, PortProtocol::Udp] {
            let own: Vec<String> = rules
                .reserved_ports
                .iter()
                .filter(|(p, _)| *p == proto)
                .map(|(_, port)| port.to_string())
                .collect();
            if !own.is_empty() {
                let _ = writeln!(
                    out,
                    "\t\t{} dport {{ {} }} return",
                    proto.as_str(),
                    own.join(", ")
                );
            }
        }
        for p in &open {
            let targets: Vec<(String, String)> = p
                .targets
                .iter()
                .map(|(a, t)| (format!("{a} . {t}"), format!("{a}:{t}")))
                .collect();
            let matcher = format!("{} dport {}", p.protocol.as_str(), p.port);
            dnat_round_robin(&mut out, &matcher, &targets, &comment(&p.service));
        }
        out.push_str("\t}\n");
    }
    if !closed.is_empty() {
        out.push_str(
            "\tchain closed {\n\
             \t\ttype filter hook input priority filter; policy accept;\n",
        );
        for p in &closed {
            let reject = match p.protocol {
                PortProtocol::Tcp => "reject with tcp reset",
                PortProtocol::Udp => "reject",
            };
            let _ = writeln!(
                out,
                "\t\t{} dport {} fib daddr type local {reject} {}",
                p.protocol.as_str(),
                p.port,
                comment(&p.service),
            );
        }
        out.push_str("\t}\n");
    }
    // icc off for routed traffic: a container may not use the node as a router to its
    // neighbour; a connection to a published port that lands on a neighbour (DNAT) may.
    let _ = write!(
        out,
        "\tchain forward {{\n\
         \t\ttype filter hook forward priority filter; policy accept;\n\
         \t\tiifname \"{bridge}\" oifname \"{bridge}\" ct status & dnat == 0 drop\n\
         \t}}\n"
    );
    let _ = write!(
        out,
        "\tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\toifname \"{bridge}\" ip saddr {subnet} ct status dnat masquerade\n\
         \t\toifname \"{bridge}\" ip saddr 127.0.0.0/8 ct status dnat masquerade\n\
         \t\toifname \"{sandbox}\" ct status dnat masquerade\n\
         \t\tip saddr {subnet} oifname != \"{bridge}\" masquerade\n\
         \t}}\n\
         }}\n"
    );
    replace_table(&mut out, GATEWAY_TABLE);
    let _ = write!(
        out,
        "table {GATEWAY_TABLE} {{\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter; policy accept;\n\
         \t\tiifname \"{ports_prefix}*\" oifname \"{ports_prefix}*\" meta pkttype != host drop\n\
         \t}}\n\
         }}\n"
    );
    out
}

/// One container's script: its VIPs, on the networks `task_networks` (ids) it is on. With
/// no VIP the script only removes the table.
pub fn render_task(state: &NodeNetState, task_networks: &[String]) -> String {
    let vips = plan_vips(state, task_networks);
    let mut out = String::new();
    replace_table(&mut out, TABLE);
    if vips.is_empty() {
        return out;
    }
    let _ = writeln!(out, "table {TABLE} {{");
    let (open, closed): (Vec<_>, Vec<_>) = vips.iter().partition(|v| !v.backends.is_empty());
    if !open.is_empty() {
        out.push_str(
            "\tchain output {\n\
             \t\ttype nat hook output priority -100; policy accept;\n",
        );
        for v in &open {
            let targets: Vec<(String, String)> = v
                .backends
                .iter()
                .map(|a| (a.to_string(), a.to_string()))
                .collect();
            let matcher = format!("ip daddr {}", v.vip);
            dnat_round_robin(&mut out, &matcher, &targets, &comment(&v.service));
        }
        out.push_str("\t}\n");
    }
    if !closed.is_empty() {
        // After the nat chain (priority -100): a VIP that was translated is no longer seen.
        out.push_str(
            "\tchain closed {\n\
             \t\ttype filter hook output priority filter; policy accept;\n",
        );
        for v in &closed {
            let c = comment(&v.service);
            let _ = writeln!(
                out,
                "\t\tip daddr {} meta l4proto tcp reject with tcp reset {c}",
                v.vip
            );
            let _ = writeln!(out, "\t\tip daddr {} reject {c}", v.vip);
        }
        out.push_str("\t}\n");
    }
    out.push_str("}\n");
    out
}

/// The script that removes `table` ("<family> <name>") whether or not it exists.
pub fn render_remove(table: &str) -> Result<String, NftError> {
    let mut words = table.split(' ');
    let ok = match (words.next(), words.next(), words.next()) {
        (Some(family), Some(name), None) => {
            matches!(family, "ip" | "ip6" | "inet" | "arp" | "bridge" | "netdev")
                && !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        }
        _ => false,
    };
    if !ok {
        return Err(NftError::BadTable(table.to_string()));
    }
    let mut out = String::new();
    replace_table(&mut out, table);
    Ok(out)
}

/// The `nft` binary, looked up once.
fn nft_binary() -> Result<&'static Path, NftError> {
    static NFT: OnceLock<Option<PathBuf>> = OnceLock::new();
    NFT.get_or_init(|| {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
            .map(|d| d.join("nft"))
            .find(|p| p.is_file())
    })
    .as_deref()
    .ok_or(NftError::NotFound)
}

/// Runs `script` as one nft transaction in the namespace `netns` (a namespace file such as
/// `/run/netns/NAME` or `/proc/PID/ns/net`; None: the caller's own).
pub async fn apply(netns: Option<&Path>, script: &str) -> Result<(), NftError> {
    run(netns, &["-f", "-"], script).await.map(|_| ())
}

/// The tables in `netns` ("<family> <name>", as [`TABLE`] writes them).
pub async fn list_tables(netns: Option<&Path>) -> Result<BTreeSet<String>, NftError> {
    let out = run(netns, &["list", "tables"], "").await?;
    Ok(String::from_utf8_lossy(&out)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("table "))
        .map(str::to_string)
        .collect())
}

/// Runs `nft ARGS` in `netns` with `input` on its stdin; its stdout.
async fn run(netns: Option<&Path>, args: &[&str], input: &str) -> Result<Vec<u8>, NftError> {
    let nft = nft_binary()?;
    let ns = netns
        .map(|p| {
            std::fs::File::open(p).map_err(|source| NftError::Netns {
                path: p.to_path_buf(),
                source,
            })
        })
        .transpose()?;
    let mut cmd = tokio::process::Command::new(nft);
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(ns) = &ns {
        let fd = ns.as_raw_fd();
        // SAFETY: the closure runs in the forked child before exec and only makes the setns
        // syscall (async-signal-safe, no allocation); `ns` outlives the spawn, so `fd` is
        // open in the child.
        unsafe {
            cmd.pre_exec(move || {
                nix::sched::setns(BorrowedFd::borrow_raw(fd), CloneFlags::CLONE_NEWNET)
                    .map_err(io::Error::from)
            });
        }
    }
    let spawn_err = |source| NftError::Spawn {
        nft: nft.to_path_buf(),
        source,
    };
    let mut child = cmd.spawn().map_err(spawn_err)?;
    drop(ns);
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let write = async move {
        let r = stdin.write_all(input.as_bytes()).await;
        drop(stdin);
        r
    };
    let (written, output) = tokio::join!(write, child.wait_with_output());
    let output = output.map_err(spawn_err)?;
    let where_ = || {
        netns.map_or_else(
            || "the current namespace".to_string(),
            |p| p.display().to_string(),
        )
    };
    if !output.status.success() {
        return Err(NftError::Failed {
            netns: where_(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    // nft read the whole script before it succeeded, so a failed write means a short script.
    written.map_err(spawn_err)?;
    Ok(output.stdout)
}

/// Removes `table` ("<family> <name>", e.g. [`TABLE`]) in `netns`; no error if it is absent.
pub async fn remove(netns: Option<&Path>, table: &str) -> Result<(), NftError> {
    apply(netns, &render_remove(table)?).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proto::spec::{NetworkState, PortConfig, ServiceNet, ServiceOnNetwork};

    const ING: &str = "ingress-id";
    const NET: &str = "net-id";

    fn backend(task: &str, node: &str, ing: Option<Ipv4Addr>, net: Option<Ipv4Addr>) -> Backend {
        let mut addrs = vec![];
        if let Some(a) = ing {
            addrs.push((ING.to_string(), a));
        }
        if let Some(a) = net {
            addrs.push((NET.to_string(), a));
        }
        Backend {
            task_id: task.into(),
            node_id: node.into(),
            addrs,
        }
    }

    fn port(proto: PortProtocol, published: u16, target: u16, mode: PublishMode) -> PortConfig {
        PortConfig {
            protocol: proto,
            target_port: target,
            published_port: published,
            publish_mode: mode,
        }
    }

    fn state(services: Vec<ServiceNet>) -> NodeNetState {
        NodeNetState {
            node_id: "n1".into(),
            node_ip: Some(Ipv4Addr::new(192, 168, 0, 1)),
            ingress_addr: Some(Ipv4Addr::new(10, 255, 0, 2)),
            networks: vec![
                NetworkState {
                    id: ING.into(),
                    name: "ingress".into(),
                    ingress: true,
                    ..Default::default()
                },
                NetworkState {
                    id: NET.into(),
                    name: "net".into(),
                    ..Default::default()
                },
            ],
            services,
        }
    }

    fn web(ports: Vec<PortConfig>, backends: Vec<Backend>) -> ServiceNet {
        ServiceNet {
            id: "s1".into(),
            name: "web".into(),
            mode: EndpointMode::Vip,
            ports,
            networks: vec![
                ServiceOnNetwork {
                    network_id: ING.into(),
                    vip: Some(Ipv4Addr::new(10, 255, 0, 9)),
                    aliases: vec![],
                },
                ServiceOnNetwork {
                    network_id: NET.into(),
                    vip: Some(Ipv4Addr::new(10, 0, 1, 2)),
                    aliases: vec![],
                },
            ],
            backends,
        }
    }

    fn ip(d: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 255, 0, d)
    }

    #[test]
    fn ingress_port_goes_to_local_tasks_on_the_bridge_and_remote_ones_over_ingress() {
        let st = state(vec![web(
            vec![port(PortProtocol::Tcp, 8080, 80, PublishMode::Ingress)],
            vec![
                backend("t2", "n2", Some(ip(12)), None),
                backend("t1", "n1", Some(ip(11)), None),
            ],
        )]);
        let local = BTreeMap::from([("t1".to_string(), Ipv4Addr::new(172, 30, 0, 5))]);
        let script = render_node(&NodeRules::new(&st, local));
        assert!(
            script.contains(
                "tcp dport 8080 dnat ip to numgen inc mod 2 map \
                 { 0 : 172.30.0.5 . 80, 1 : 10.255.0.12 . 80 } comment \"web\"\n\
                 \t\ttcp dport 8080 dnat ip to 172.30.0.5:80 comment \"web\"\n"
            ),
            "{script}"
        );
        assert!(script.contains("fib daddr type local jump published"));
        assert!(script.contains("oifname \"shoal_ing\" ct status dnat masquerade"));
        assert!(script.contains("ip saddr 172.30.0.0/24 oifname != \"shoal0\" masquerade"));
        assert!(script.contains("iifname \"vs*\" oifname \"vs*\" meta pkttype != host drop"));
        assert!(script.contains("iifname \"shoal0\" oifname \"shoal0\" ct status & dnat == 0 drop"));
        assert!(!script.contains("chain closed"));
        assert!(script.starts_with("table ip shoal {}\ndelete table ip shoal\ntable ip shoal {"));
    }

    #[test]
    fn the_nodes_own_ports_are_never_captured_by_the_mesh() {
        // A state that publishes the manager port, VXLAN and this node's manager port (it
        // listens on 2400) must leave them alone; 8080 is still published.
        let st = state(vec![web(
            vec![
                port(PortProtocol::Tcp, 2377, 80, PublishMode::Ingress),
                port(PortProtocol::Udp, 4789, 80, PublishMode::Ingress),
                port(PortProtocol::Tcp, 2400, 80, PublishMode::Host),
                port(PortProtocol::Tcp, 8080, 80, PublishMode::Ingress),
            ],
            vec![backend("t1", "n1", Some(ip(11)), None)],
        )]);
        let local = BTreeMap::from([("t1".to_string(), Ipv4Addr::new(172, 30, 0, 5))]);
        let mut rules = NodeRules::new(&st, local);
        rules.reserved_ports.insert((PortProtocol::Tcp, 2400));
        let planned: Vec<u16> = plan_ports(&rules).iter().map(|p| p.port).collect();
        assert_eq!(planned, vec![8080]);
        let script = render_node(&rules);
        for own in ["dport 2377 ", "dport 4789 ", "dport 2400 "] {
            assert!(!script.contains(own), "{own} is published:\n{script}");
        }
        let published = script.find("chain published {").expect("published chain");
        let returns = script
            .find("tcp dport { 2377, 2400 } return\n\t\tudp dport { 4789 } return\n")
            .unwrap_or_else(|| panic!("no return rules:\n{script}"));
        let first_dnat = script.find("dnat").expect("a dnat rule");
        assert!(published < returns && returns < first_dnat, "{script}");
    }

    #[test]
    fn port_without_backends_rejects() {
        let st = state(vec![web(
            vec![
                port(PortProtocol::Tcp, 8080, 80, PublishMode::Ingress),
                port(PortProtocol::Udp, 8080, 80, PublishMode::Ingress),
            ],
            vec![],
        )]);
        let script = render_node(&NodeRules::new(&st, BTreeMap::new()));
        assert!(script.contains("tcp dport 8080 fib daddr type local reject with tcp reset"));
        assert!(script.contains("udp dport 8080 fib daddr type local reject"));
        assert!(!script.contains("dnat ip to"), "{script}");
        assert!(!script.contains("chain prerouting"));
    }

    #[test]
    fn host_mode_only_reaches_local_tasks_and_is_absent_without_them() {
        let svc = web(
            vec![port(PortProtocol::Udp, 9000, 53, PublishMode::Host)],
            vec![
                backend("t1", "n1", None, None),
                backend("t2", "n2", Some(ip(12)), None),
            ],
        );
        let st = state(vec![svc]);
        let local = BTreeMap::from([("t1".to_string(), Ipv4Addr::new(172, 30, 0, 5))]);
        let script = render_node(&NodeRules::new(&st, local));
        assert!(script
            .contains("udp dport 9000 dnat ip to numgen inc mod 1 map { 0 : 172.30.0.5 . 53 }"));
        let script = render_node(&NodeRules::new(&st, BTreeMap::new()));
        assert!(!script.contains("9000"), "{script}");
    }

    #[test]
    fn first_service_wins_a_port_claimed_twice_and_unset_ports_are_skipped() {
        let mut a = web(
            vec![
                port(PortProtocol::Tcp, 8080, 80, PublishMode::Ingress),
                port(PortProtocol::Tcp, 0, 81, PublishMode::Ingress),
            ],
            vec![backend("t1", "n2", Some(ip(11)), None)],
        );
        a.name = "a".into();
        let mut b = a.clone();
        b.name = "b".into();
        let st = state(vec![a, b]);
        let ports = plan_ports(&NodeRules::new(&st, BTreeMap::new()));
        assert_eq!(ports.len(), 1);
        assert_eq!(ports[0].service, "a");
    }

    #[test]
    fn local_task_without_gateway_address_goes_over_ingress() {
        let st = state(vec![web(
            vec![port(PortProtocol::Tcp, 8080, 80, PublishMode::Ingress)],
            vec![backend("t1", "n1", Some(ip(11)), None)],
        )]);
        let ports = plan_ports(&NodeRules::new(&st, BTreeMap::new()));
        assert_eq!(ports[0].targets, vec![(ip(11), 80)]);
    }

    #[test]
    fn gateway_subnet_is_normalised_and_names_are_sanitised() {
        let st = state(vec![]);
        let mut r = NodeRules::new(&st, BTreeMap::new());
        r.gateway_subnet = (Ipv4Addr::new(172, 30, 0, 1), 24);
        r.gateway_bridge = "br\"; drop".into();
        let script = render_node(&r);
        assert!(script.contains("ip saddr 172.30.0.0/24"));
        assert!(script.contains("oifname != \"brdrop\""), "{script}");
    }

    #[test]
    fn task_gets_the_vips_of_its_networks_only() {
        let mut dnsrr = web(vec![], vec![backend("t9", "n1", None, Some(ip(99)))]);
        dnsrr.name = "rr".into();
        dnsrr.mode = EndpointMode::Dnsrr;
        dnsrr.networks[1].vip = Some(Ipv4Addr::new(10, 0, 1, 77));
        let st = state(vec![
            web(
                vec![],
                vec![
                    backend("t2", "n2", Some(ip(12)), Some(Ipv4Addr::new(10, 0, 1, 12))),
                    backend("t1", "n1", Some(ip(11)), Some(Ipv4Addr::new(10, 0, 1, 11))),
                    backend("t3", "n1", Some(ip(13)), None),
                ],
            ),
            dnsrr,
        ]);
        let script = render_task(&st, &[NET.to_string()]);
        assert!(script.contains(
            "ip daddr 10.0.1.2 dnat ip to numgen inc mod 2 map { 0 : 10.0.1.11, 1 : 10.0.1.12 }"
        ));
        assert!(script.contains("\t\tip daddr 10.0.1.2 dnat ip to 10.0.1.11 "));
        assert!(!script.contains("10.255.0.9"));
        assert!(!script.contains("10.0.1.77"));
        let none = render_task(&st, &["other".to_string()]);
        assert_eq!(none, "table ip shoal {}\ndelete table ip shoal\n");
    }

    #[test]
    fn vip_without_backends_rejects() {
        let st = state(vec![web(vec![], vec![])]);
        let script = render_task(&st, &[NET.to_string()]);
        assert!(script.contains("ip daddr 10.0.1.2 meta l4proto tcp reject with tcp reset"));
        assert!(script.contains("ip daddr 10.0.1.2 reject"));
        assert!(!script.contains("dnat ip to"));
    }

    #[test]
    fn remove_takes_family_and_name() {
        assert_eq!(
            render_remove("ip shoal").unwrap(),
            "table ip shoal {}\ndelete table ip shoal\n"
        );
        assert!(render_remove("shoal").is_err());
        assert!(render_remove("ip shoal; flush ruleset").is_err());
        assert!(render_remove("foo shoal").is_err());
    }

    /// The numgen maps of a script: (modulus, keys, values).
    fn maps(script: &str) -> Vec<(usize, Vec<usize>, Vec<String>)> {
        script
            .lines()
            .filter_map(|l| {
                let rest = l.split("numgen inc mod ").nth(1)?;
                let (n, rest) = rest.split_once(" map { ")?;
                let (body, _) = rest.split_once(" }")?;
                let (keys, vals) = body
                    .split(", ")
                    .map(|e| {
                        let (k, v) = e.split_once(" : ").unwrap();
                        (k.parse::<usize>().unwrap(), v.to_string())
                    })
                    .unzip();
                Some((n.parse().unwrap(), keys, vals))
            })
            .collect()
    }

    fn arb_backends() -> impl Strategy<Value = Vec<(u8, bool, bool, bool)>> {
        // (task number, local, on ingress, on net)
        prop::collection::vec(
            (0u8..20, any::<bool>(), any::<bool>(), any::<bool>()),
            0..12,
        )
    }

    /// Backends as (task number, local, on ingress, on net); ports as (udp, port, host).
    type ArbService = (Vec<(u8, bool, bool, bool)>, Vec<(bool, u16, bool)>);

    fn arb_service() -> impl Strategy<Value = ArbService> {
        (
            arb_backends(),
            // (udp, published port, host mode)
            prop::collection::vec((any::<bool>(), 30000u16..30006, any::<bool>()), 0..4),
        )
    }

    fn build(services: &[ArbService]) -> (NodeNetState, BTreeMap<String, Ipv4Addr>) {
        let mut local = BTreeMap::new();
        let svcs = services
            .iter()
            .enumerate()
            .map(|(i, (bs, ps))| {
                let mut s = web(
                    ps.iter()
                        .map(|&(udp, p, host)| {
                            port(
                                if udp {
                                    PortProtocol::Udp
                                } else {
                                    PortProtocol::Tcp
                                },
                                p,
                                80,
                                if host {
                                    PublishMode::Host
                                } else {
                                    PublishMode::Ingress
                                },
                            )
                        })
                        .collect(),
                    bs.iter()
                        .map(|&(t, is_local, on_ing, on_net)| {
                            let task = format!("s{i}t{t}");
                            if is_local {
                                local.insert(task.clone(), Ipv4Addr::new(172, 30, i as u8, t));
                            }
                            backend(
                                &task,
                                if is_local { "n1" } else { "n2" },
                                on_ing.then(|| Ipv4Addr::new(10, 255, i as u8, t)),
                                on_net.then(|| Ipv4Addr::new(10, 0, i as u8, t)),
                            )
                        })
                        .collect(),
                );
                s.name = format!("svc{i}");
                s.networks[1].vip = Some(Ipv4Addr::new(10, 0, 200, i as u8));
                s
            })
            .collect();
        (state(svcs), local)
    }

    proptest! {
        #[test]
        fn node_maps_are_well_formed(services in prop::collection::vec(arb_service(), 0..4)) {
            let (st, local) = build(&services);
            let rules = NodeRules::new(&st, local.clone());
            let script = render_node(&rules);
            let plan = plan_ports(&rules);
            // Every (protocol, port) once.
            let keys: BTreeSet<_> = plan.iter().map(|p| (p.protocol, p.port)).collect();
            prop_assert_eq!(keys.len(), plan.len());
            for m in maps(&script) {
                prop_assert_eq!(m.1.clone(), (0..m.0).collect::<Vec<_>>());
                prop_assert!(m.0 > 0);
            }
            prop_assert_eq!(maps(&script).len(), plan.iter().filter(|p| !p.targets.is_empty()).count());
            // Every backend that can be reached is in its port's map, once.
            for p in &plan {
                let svc = st.services.iter().find(|s| s.name == p.service).unwrap();
                let mut tasks: Vec<&Backend> = vec![];
                for b in &svc.backends {
                    if !tasks.iter().any(|t| t.task_id == b.task_id) {
                        tasks.push(b);
                    }
                }
                tasks.sort_by(|a, b| a.task_id.cmp(&b.task_id));
                let want: Vec<(Ipv4Addr, u16)> = tasks.iter().filter_map(|b| {
                    local.get(&b.task_id).copied().or_else(|| {
                        if p.mode == PublishMode::Host { None } else { addr_on(b, ING) }
                    })
                }).map(|a| (a, 80)).collect();
                prop_assert_eq!(&p.targets, &want);
                let line = script.lines().find(|l| l.contains(&format!("{} dport {} ", p.protocol.as_str(), p.port)));
                if p.targets.is_empty() {
                    prop_assert!(p.mode == PublishMode::Ingress);
                    prop_assert!(line.unwrap().contains("reject"));
                } else {
                    let want = format!("mod {} map", p.targets.len());
                    prop_assert!(line.unwrap().contains(&want));
                }
            }
            prop_assert!(script.contains("ip saddr 172.30.0.0/24 oifname != \"shoal0\" masquerade"));
        }

        #[test]
        fn task_maps_are_well_formed(services in prop::collection::vec(arb_service(), 0..4)) {
            let (st, _) = build(&services);
            let script = render_task(&st, &[NET.to_string()]);
            let plan = plan_vips(&st, &[NET.to_string()]);
            prop_assert_eq!(plan.len(), st.services.len());
            for m in maps(&script) {
                prop_assert_eq!(m.1.clone(), (0..m.0).collect::<Vec<_>>());
            }
            for v in &plan {
                let svc = st.services.iter().find(|s| s.name == v.service).unwrap();
                let on_net: BTreeSet<Ipv4Addr> = sorted_backends(&svc.backends).iter().filter_map(|b| addr_on(b, NET)).collect();
                let got: BTreeSet<Ipv4Addr> = v.backends.iter().copied().collect();
                prop_assert_eq!(got, on_net);
                if v.backends.is_empty() {
                    let want = format!("ip daddr {} reject", v.vip);
                    prop_assert!(script.contains(&want));
                } else {
                    let want = format!("ip daddr {} dnat ip to numgen inc mod {} map", v.vip, v.backends.len());
                    prop_assert!(script.contains(&want));
                }
            }
            let empty = render_task(&st, &[]);
            prop_assert_eq!(empty, "table ip shoal {}\ndelete table ip shoal\n");
        }
    }
}
