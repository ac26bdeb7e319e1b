//! Privileged: the rules of `agent_net::nft` on real nftables, in network namespaces the test
//! makes and removes. Needs root, `ip` and `nft`.
//!
//! ```text
//!   client 10.99.0.2 ── up0 10.99.0.1 [node] shoal0 172.30.0.1 ─┬─ vsc1 ═ c1 172.30.0.2
//!                                         │                      └─ vsc2 ═ c2 172.30.0.3
//!                                         shoal_ing 10.255.0.2 ═ remote 10.255.0.5
//! ```
//! `remote` plays a task on another node, reached on the ingress network; it has no route to
//! the client, so it answers only if the node masquerades.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use agent_net::nft::{self, NftError, NodeRules};
use nix::sched::{setns, CloneFlags};
use proto::spec::{
    Backend, EndpointMode, NetworkState, NodeNetState, PortConfig, PortProtocol, PublishMode,
    ServiceNet, ServiceOnNetwork,
};

const NODE_ADDR: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
const C1: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 2);
const C2: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 3);
const NODE_INGRESS: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 2);
const REMOTE: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 5);
const IO_TIMEOUT: Duration = Duration::from_secs(3);
const INGRESS: &str = "ingress-id";
const GW_NET: &str = "gw-net";

static LABS: AtomicUsize = AtomicUsize::new(0);

fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("running a set-up command");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `f` on a thread inside the namespace file `ns`.
fn in_ns<T: Send>(ns: &PathBuf, f: impl FnOnce() -> T + Send) -> T {
    let file = File::open(ns).expect("namespace file");
    std::thread::scope(|s| {
        s.spawn(|| {
            setns(&file, CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// Named namespaces `<prefix>node`, `…c1`, `…c2`, `…client`, `…remote`, wired as in the
/// module's diagram; removed on drop.
struct Lab {
    prefix: String,
    servers: Vec<Server>,
}

const ROLES: [&str; 5] = ["node", "c1", "c2", "client", "remote"];

impl Lab {
    fn new() -> Lab {
        let prefix = format!(
            "znft{}x{}",
            std::process::id(),
            LABS.fetch_add(1, Ordering::SeqCst)
        );
        let lab = Lab {
            prefix,
            servers: vec![],
        };
        for r in ROLES {
            run(&["ip", "netns", "add", &lab.name(r)]);
            run(&["ip", "-n", &lab.name(r), "link", "set", "lo", "up"]);
        }
        let node = lab.name("node");
        let ipn = |ns: &str, args: &[&str]| {
            let mut v = vec!["ip", "-n", ns];
            v.extend_from_slice(args);
            run(&v);
        };
        ipn(&node, &["link", "add", "shoal0", "type", "bridge"]);
        ipn(&node, &["addr", "add", "172.30.0.1/24", "dev", "shoal0"]);
        ipn(&node, &["link", "set", "shoal0", "up"]);
        for (c, addr) in [("c1", C1), ("c2", C2)] {
            let cns = lab.name(c);
            let port = format!("vs{c}");
            ipn(
                &node,
                &[
                    "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &cns,
                ],
            );
            ipn(&node, &["link", "set", &port, "master", "shoal0", "up"]);
            // With br_netfilter, a container reaching a published port that lands back on it
            // is bridged out the port it came in.
            ipn(
                &node,
                &[
                    "link",
                    "set",
                    &port,
                    "type",
                    "bridge_slave",
                    "hairpin",
                    "on",
                ],
            );
            ipn(&cns, &["addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
            ipn(&cns, &["link", "set", "eth0", "up"]);
            ipn(&cns, &["route", "add", "default", "via", "172.30.0.1"]);
        }
        let client = lab.name("client");
        ipn(
            &node,
            &[
                "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", &client,
            ],
        );
        ipn(&node, &["addr", "add", "10.99.0.1/24", "dev", "up0"]);
        ipn(&node, &["link", "set", "up0", "up"]);
        ipn(&client, &["addr", "add", "10.99.0.2/24", "dev", "eth0"]);
        ipn(&client, &["link", "set", "eth0", "up"]);
        ipn(&client, &["route", "add", "default", "via", "10.99.0.1"]);
        let remote = lab.name("remote");
        ipn(
            &node,
            &[
                "link",
                "add",
                "shoal_ing",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &remote,
            ],
        );
        ipn(&node, &["addr", "add", "10.255.0.2/16", "dev", "shoal_ing"]);
        ipn(&node, &["link", "set", "shoal_ing", "up"]);
        ipn(&remote, &["addr", "add", "10.255.0.5/16", "dev", "eth0"]);
        ipn(&remote, &["link", "set", "eth0", "up"]);
        run(&[
            "ip",
            "netns",
            "exec",
            &node,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
            "net.ipv4.conf.shoal0.route_localnet=1",
            "net.ipv4.conf.shoal_ing.route_localnet=1",
        ]);
        lab
    }

    fn name(&self, role: &str) -> String {
        format!("{}{role}", self.prefix)
    }

    fn ns(&self, role: &str) -> PathBuf {
        PathBuf::from("/run/netns").join(self.name(role))
    }

    /// Starts a server in `role`'s namespace answering "<role> <client address>" on TCP and
    /// UDP port 80.
    fn serve(&mut self, role: &str) {
        let (tcp, udp) = in_ns(&self.ns(role), || {
            (
                TcpListener::bind("0.0.0.0:80").expect("tcp bind"),
                UdpSocket::bind("0.0.0.0:80").expect("udp bind"),
            )
        });
        self.servers.push(Server::start(role.to_string(), tcp, udp));
    }

    fn nft_list(&self, role: &str) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name(role), "nft", "list", "ruleset"])
            .output()
            .expect("nft list");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.servers.clear();
        for r in ROLES {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name(r)])
                .status();
        }
    }
}

struct Server {
    stop: Arc<AtomicBool>,
    tcp_fd: i32,
    threads: Vec<JoinHandle<()>>,
}

impl Server {
    fn start(name: String, tcp: TcpListener, udp: UdpSocket) -> Server {
        let stop = Arc::new(AtomicBool::new(false));
        let tcp_fd = tcp.as_raw_fd();
        let (n, s) = (name.clone(), stop.clone());
        let t1 = std::thread::spawn(move || {
            for conn in tcp.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut conn) = conn else { continue };
                let n = n.clone();
                // Greets, then echoes until the client shuts its side.
                std::thread::spawn(move || {
                    let peer = conn.peer_addr().map(|a| a.ip().to_string());
                    let _ = writeln!(conn, "{n} {}", peer.unwrap_or_default());
                    let _ = conn.set_read_timeout(Some(IO_TIMEOUT));
                    let mut back = conn.try_clone().expect("clone");
                    let _ = std::io::copy(&mut conn, &mut back);
                });
            }
        });
        let s = stop.clone();
        udp.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("udp timeout");
        let t2 = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while !s.load(Ordering::SeqCst) {
                if let Ok((_, peer)) = udp.recv_from(&mut buf) {
                    let _ = udp.send_to(format!("{name} {}", peer.ip()).as_bytes(), peer);
                }
            }
        });
        Server {
            stop,
            tcp_fd,
            threads: vec![t1, t2],
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // SAFETY: the listener is still open (its thread owns it until it returns); SHUT_RD
        // wakes the blocked accept.
        unsafe { libc::shutdown(self.tcp_fd, libc::SHUT_RD) };
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// One TCP request: (server name, source address the server saw).
fn tcp_get(to: SocketAddr) -> std::io::Result<(String, String)> {
    let mut s = TcpStream::connect_timeout(&to, IO_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.shutdown(Shutdown::Write)?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    let (name, peer) = reply
        .trim()
        .split_once(' ')
        .ok_or_else(|| std::io::Error::new(ErrorKind::InvalidData, reply.clone()))?;
    Ok((name.to_string(), peer.to_string()))
}

/// One UDP request from a fresh socket (so a fresh conntrack flow).
fn udp_get(to: SocketAddr) -> std::io::Result<(String, String)> {
    let s = UdpSocket::bind("0.0.0.0:0")?;
    s.connect(to)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.send(b"hi")?;
    let mut buf = [0u8; 64];
    let n = s.recv(&mut buf)?;
    let reply = String::from_utf8_lossy(&buf[..n]).to_string();
    let (name, peer) = reply
        .split_once(' ')
        .ok_or_else(|| std::io::Error::new(ErrorKind::InvalidData, reply.clone()))?;
    Ok((name.to_string(), peer.to_string()))
}

fn backend(task: &str, node: &str, addrs: &[(&str, Ipv4Addr)]) -> Backend {
    Backend {
        task_id: task.into(),
        node_id: node.into(),
        addrs: addrs.iter().map(|(n, a)| (n.to_string(), *a)).collect(),
    }
}

fn port(protocol: PortProtocol, published: u16, mode: PublishMode) -> PortConfig {
    PortConfig {
        protocol,
        target_port: 80,
        published_port: published,
        publish_mode: mode,
    }
}

/// c1 and c2 are this node's tasks t1 and t2; `remote` is task t3 on node n2.
fn t1() -> Backend {
    backend("t1", "n1", &[(INGRESS, Ipv4Addr::new(10, 255, 0, 11))])
}
fn t2() -> Backend {
    backend("t2", "n1", &[(INGRESS, Ipv4Addr::new(10, 255, 0, 12))])
}
fn t3() -> Backend {
    backend("t3", "n2", &[(INGRESS, REMOTE)])
}

fn service(name: &str, ports: Vec<PortConfig>, backends: Vec<Backend>) -> ServiceNet {
    ServiceNet {
        id: format!("id-{name}"),
        name: name.into(),
        mode: EndpointMode::Vip,
        ports,
        networks: vec![],
        backends,
    }
}

fn node_state(services: Vec<ServiceNet>) -> NodeNetState {
    NodeNetState {
        node_id: "n1".into(),
        node_ip: None,
        ingress_addr: Some(NODE_INGRESS),
        networks: vec![NetworkState {
            id: INGRESS.into(),
            name: "ingress".into(),
            ingress: true,
            ..Default::default()
        }],
        services,
    }
}

fn local_addrs() -> BTreeMap<String, Ipv4Addr> {
    BTreeMap::from([("t1".to_string(), C1), ("t2".to_string(), C2)])
}

async fn apply_node(lab: &Lab, state: &NodeNetState) -> Duration {
    let script = nft::render_node(&NodeRules::new(state, local_addrs()));
    let start = Instant::now();
    nft::apply(Some(&lab.ns("node")), &script)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{script}"));
    start.elapsed()
}

fn mesh(port: u16) -> SocketAddr {
    SocketAddr::from((NODE_ADDR, port))
}

#[tokio::test]
async fn ingress_mesh_spreads_round_robin_and_keeps_the_client_address() {
    let mut lab = Lab::new();
    for r in ["c1", "c2", "remote"] {
        lab.serve(r);
    }
    let st = node_state(vec![service(
        "web",
        vec![port(PortProtocol::Tcp, 8080, PublishMode::Ingress)],
        vec![t1(), t2()],
    )]);
    let took = apply_node(&lab, &st).await;
    println!("nft apply (node, first) took {took:?}");
    let replies: Vec<(String, String)> = in_ns(&lab.ns("client"), || {
        (0..10)
            .map(|_| tcp_get(mesh(8080)).expect("request"))
            .collect()
    });
    let names: Vec<&str> = replies.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.iter().filter(|n| **n == "c1").count(), 5, "{names:?}");
    assert!(names.windows(2).all(|w| w[0] != w[1]), "{names:?}");
    assert!(
        replies.iter().all(|(_, p)| *p == CLIENT_ADDR.to_string()),
        "the backends saw {replies:?}"
    );

    // A remote backend is reached over the ingress interface, masqueraded.
    let st = node_state(vec![service(
        "web",
        vec![port(PortProtocol::Tcp, 8080, PublishMode::Ingress)],
        vec![t1(), t2(), t3()],
    )]);
    let took = apply_node(&lab, &st).await;
    println!("nft apply (node, again) took {took:?}");
    let replies: Vec<(String, String)> = in_ns(&lab.ns("client"), || {
        (0..9)
            .map(|_| tcp_get(mesh(8080)).expect("request"))
            .collect()
    });
    for who in ["c1", "c2", "remote"] {
        assert_eq!(
            replies.iter().filter(|(n, _)| n == who).count(),
            3,
            "{replies:?}"
        );
    }
    for (n, p) in &replies {
        let want = if n == "remote" {
            NODE_INGRESS
        } else {
            CLIENT_ADDR
        };
        assert_eq!(*p, want.to_string(), "{n} saw {p}");
    }

    // From the node itself (the output hook), to its own address and to localhost.
    let from_node: Vec<(String, String)> = in_ns(&lab.ns("node"), || {
        (0..3)
            .map(|_| tcp_get(mesh(8080)).expect("request from the node"))
            .chain((0..3).map(|_| tcp_get(([127, 0, 0, 1], 8080).into()).expect("localhost")))
            .collect()
    });
    let names = |r: &[(String, String)]| r.iter().map(|(n, _)| n.clone()).collect::<BTreeSet<_>>();
    assert_eq!(names(&from_node[..3]).len(), 3, "{from_node:?}");
    assert_eq!(names(&from_node[3..]).len(), 3, "{from_node:?}");
    // A container reaching the mesh on its own node: masqueraded to the bridge's address,
    // since with icc off its peer could not answer it directly.
    let from_c1: Vec<(String, String)> = in_ns(&lab.ns("c1"), || {
        (0..3)
            .map(|_| tcp_get(mesh(8080)).expect("request from c1"))
            .collect()
    });
    assert_eq!(names(&from_c1).len(), 3, "{from_c1:?}");
    assert!(
        from_c1.iter().all(|(n, p)| *p
            == if n == "remote" {
                NODE_INGRESS
            } else {
                Ipv4Addr::new(172, 30, 0, 1)
            }
            .to_string()),
        "{from_c1:?}"
    );

    nft::remove(Some(&lab.ns("node")), nft::TABLE)
        .await
        .unwrap();
    nft::remove(Some(&lab.ns("node")), nft::GATEWAY_TABLE)
        .await
        .unwrap();
    nft::remove(Some(&lab.ns("node")), nft::TABLE)
        .await
        .unwrap();
    assert_eq!(lab.nft_list("node").trim(), "");
}

#[tokio::test]
async fn swapping_backends_never_fails_a_connection() {
    let mut lab = Lab::new();
    lab.serve("c1");
    lab.serve("c2");
    let sets = [vec![t1()], vec![t2()], vec![t1(), t2()]];
    let states: Vec<NodeNetState> = sets
        .iter()
        .map(|b| {
            node_state(vec![service(
                "web",
                vec![port(PortProtocol::Tcp, 8080, PublishMode::Ingress)],
                b.clone(),
            )])
        })
        .collect();
    apply_node(&lab, &states[2]).await;
    let done = Arc::new(AtomicBool::new(false));
    let client_ns = lab.ns("client");
    let d = done.clone();
    let client = std::thread::spawn(move || {
        in_ns(&client_ns, || {
            let (mut ok, mut failed) = (0usize, vec![]);
            while !d.load(Ordering::SeqCst) {
                match tcp_get(mesh(8080)) {
                    Ok(_) => ok += 1,
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (ok, failed)
        })
    });
    let mut took = vec![];
    for i in 0..60 {
        took.push(apply_node(&lab, &states[i % 3]).await);
    }
    done.store(true, Ordering::SeqCst);
    let (ok, failed) = client.join().unwrap();
    took.sort();
    let (median, p90, max) = (took[30], took[54], took[59]);
    println!(
        "60 applies under load: median {median:?}, p90 {p90:?}, max {max:?}; \
         {ok} connections meanwhile"
    );
    assert!(failed.is_empty(), "{} failed: {:?}", failed.len(), failed);
    assert!(ok > 0);
    // Not a benchmark: only a gross regression (an apply that takes seconds) fails here.
    assert!(median < Duration::from_secs(1), "{median:?}");
}

#[tokio::test]
async fn established_connections_outlive_a_change_of_backends() {
    let mut lab = Lab::new();
    lab.serve("c1");
    lab.serve("c2");
    let with = |b: Vec<Backend>| {
        node_state(vec![service(
            "web",
            vec![port(PortProtocol::Tcp, 8080, PublishMode::Ingress)],
            b,
        )])
    };
    apply_node(&lab, &with(vec![t1()])).await;
    let (conn, greeting) = in_ns(&lab.ns("client"), || {
        let s = TcpStream::connect_timeout(&mesh(8080), IO_TIMEOUT).expect("connect");
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line).expect("greeting");
        (s, line)
    });
    assert!(greeting.starts_with("c1 "), "{greeting}");
    apply_node(&lab, &with(vec![t2()])).await;
    let fresh = in_ns(&lab.ns("client"), || tcp_get(mesh(8080)).expect("request"));
    assert_eq!(fresh.0, "c2");
    // The open connection still goes to c1 (conntrack keeps its translation).
    let mut w = &conn;
    w.write_all(b"still there\n").unwrap();
    let mut echo = String::new();
    BufReader::new(&conn).read_line(&mut echo).expect("echo");
    assert_eq!(echo, "still there\n");
}

#[tokio::test]
async fn udp_is_balanced_per_flow() {
    let mut lab = Lab::new();
    lab.serve("c1");
    lab.serve("c2");
    let st = node_state(vec![service(
        "dns",
        vec![port(PortProtocol::Udp, 5353, PublishMode::Ingress)],
        vec![t1(), t2()],
    )]);
    apply_node(&lab, &st).await;
    let replies: Vec<(String, String)> = in_ns(&lab.ns("client"), || {
        (0..4)
            .map(|_| udp_get(mesh(5353)).expect("udp request"))
            .collect()
    });
    assert_eq!(replies.iter().filter(|(n, _)| n == "c1").count(), 2);
    assert!(replies.iter().all(|(_, p)| *p == CLIENT_ADDR.to_string()));
}

#[tokio::test]
async fn host_mode_reaches_only_local_tasks() {
    let mut lab = Lab::new();
    lab.serve("c1");
    lab.serve("remote");
    let st = node_state(vec![
        service(
            "h",
            vec![port(PortProtocol::Tcp, 9090, PublishMode::Host)],
            vec![t1(), t3()],
        ),
        service(
            "elsewhere",
            vec![port(PortProtocol::Tcp, 9091, PublishMode::Host)],
            vec![t3()],
        ),
    ]);
    apply_node(&lab, &st).await;
    let (replies, elsewhere) = in_ns(&lab.ns("client"), || {
        let r: Vec<_> = (0..4)
            .map(|_| tcp_get(mesh(9090)).expect("request"))
            .collect();
        (r, tcp_get(mesh(9091)))
    });
    assert!(replies.iter().all(|(n, _)| n == "c1"), "{replies:?}");
    assert_eq!(
        elsewhere.expect_err("no task here").kind(),
        ErrorKind::ConnectionRefused
    );
}

#[tokio::test]
async fn the_mesh_never_takes_the_nodes_own_ports() {
    let mut lab = Lab::new();
    lab.serve("c1");
    lab.serve("c2");
    // The node's own listeners: the manager port and the VXLAN port.
    let (tcp, udp) = in_ns(&lab.ns("node"), || {
        (
            TcpListener::bind("0.0.0.0:2377").expect("tcp bind 2377"),
            UdpSocket::bind("0.0.0.0:4789").expect("udp bind 4789"),
        )
    });
    lab.servers
        .push(Server::start("manager".to_string(), tcp, udp));
    // A state that (wrongly) publishes them, next to an ordinary port.
    let st = node_state(vec![service(
        "greedy",
        vec![
            port(PortProtocol::Tcp, 2377, PublishMode::Ingress),
            port(PortProtocol::Udp, 4789, PublishMode::Ingress),
            port(PortProtocol::Tcp, 8080, PublishMode::Ingress),
        ],
        vec![t1(), t2()],
    )]);
    apply_node(&lab, &st).await;
    let (control, vxlan, web) = in_ns(&lab.ns("client"), || {
        (
            tcp_get(mesh(2377)),
            udp_get(mesh(4789)),
            tcp_get(mesh(8080)),
        )
    });
    assert_eq!(control.expect("2377/tcp").0, "manager");
    assert_eq!(vxlan.expect("4789/udp").0, "manager");
    let web = web.expect("8080/tcp").0;
    assert!(web == "c1" || web == "c2", "8080 went to {web}");
}

#[tokio::test]
async fn a_port_without_backends_rejects_at_once() {
    let lab = Lab::new();
    // Something on the node listens on the port: the rule must refuse before it.
    let _squatter = in_ns(&lab.ns("node"), || {
        (
            TcpListener::bind("0.0.0.0:8081").unwrap(),
            UdpSocket::bind("0.0.0.0:8081").unwrap(),
        )
    });
    let st = node_state(vec![service(
        "empty",
        vec![
            port(PortProtocol::Tcp, 8081, PublishMode::Ingress),
            port(PortProtocol::Udp, 8081, PublishMode::Ingress),
        ],
        vec![],
    )]);
    apply_node(&lab, &st).await;
    let (tcp, udp, took) = in_ns(&lab.ns("client"), || {
        let start = Instant::now();
        let tcp = tcp_get(mesh(8081));
        let udp = udp_get(mesh(8081));
        (tcp, udp, start.elapsed())
    });
    assert_eq!(tcp.unwrap_err().kind(), ErrorKind::ConnectionRefused);
    assert_eq!(udp.unwrap_err().kind(), ErrorKind::ConnectionRefused);
    assert!(took < Duration::from_secs(1), "{took:?}");
}

#[tokio::test]
async fn vip_in_a_container_goes_to_the_backends() {
    let mut lab = Lab::new();
    lab.serve("c2");
    let vip = Ipv4Addr::new(10, 0, 9, 9);
    let dead_vip = Ipv4Addr::new(10, 0, 9, 10);
    let on_gw = |vip| ServiceOnNetwork {
        network_id: GW_NET.into(),
        vip: Some(vip),
        aliases: vec![],
    };
    let mut api = service("api", vec![], vec![backend("t2", "n1", &[(GW_NET, C2)])]);
    api.networks = vec![on_gw(vip)];
    let mut dead = service("dead", vec![], vec![]);
    dead.networks = vec![on_gw(dead_vip)];
    let st = node_state(vec![api, dead]);
    let script = nft::render_task(&st, &[GW_NET.to_string()]);
    let start = Instant::now();
    nft::apply(Some(&lab.ns("c1")), &script)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{script}"));
    println!("nft apply (task) took {:?}", start.elapsed());
    let (tcp, udp, refused, took) = in_ns(&lab.ns("c1"), || {
        let tcp: Vec<_> = (0..3)
            .map(|_| tcp_get((vip, 80).into()).expect("tcp to the VIP"))
            .collect();
        let udp = udp_get((vip, 80).into()).expect("udp to the VIP");
        let start = Instant::now();
        let refused = tcp_get((dead_vip, 80).into());
        (tcp, udp, refused, start.elapsed())
    });
    assert!(tcp.iter().all(|(n, p)| n == "c2" && *p == C1.to_string()));
    assert_eq!(udp.0, "c2");
    assert_eq!(refused.unwrap_err().kind(), ErrorKind::ConnectionRefused);
    assert!(took < Duration::from_secs(1));

    // Not on the network: no rules at all.
    let script = nft::render_task(&st, &[]);
    nft::apply(Some(&lab.ns("c1")), &script).await.unwrap();
    assert_eq!(lab.nft_list("c1").trim(), "");
}

/// Containers on the gateway bridge cannot reach each other, directly or routed through the
/// node, but reach a published port that lands on a neighbour or on themselves; with and
/// without br_netfilter.
async fn bridge_isolation(br_netfilter: bool) {
    let mut lab = Lab::new();
    lab.serve("c1");
    lab.serve("c2");
    lab.serve("client");
    run(&[
        "ip",
        "netns",
        "exec",
        &lab.name("node"),
        "sysctl",
        "-qw",
        &format!(
            "net.bridge.bridge-nf-call-iptables={}",
            u8::from(br_netfilter)
        ),
    ]);
    let c2 = SocketAddr::from((C2, 80));
    let before = in_ns(&lab.ns("c1"), || tcp_get(c2));
    assert_eq!(before.expect("c1 reaches c2 before the rules").0, "c2");
    let st = node_state(vec![service(
        "web",
        vec![port(PortProtocol::Tcp, 8080, PublishMode::Ingress)],
        vec![t1(), t2()],
    )]);
    apply_node(&lab, &st).await;
    let c1_ns = lab.ns("c1");
    let (direct, mesh_replies, out) = in_ns(&c1_ns, || {
        let direct = TcpStream::connect_timeout(&c2, Duration::from_millis(300));
        let mesh_replies: Vec<_> = (0..4)
            .map(|_| tcp_get(mesh(8080)).expect("c1 to the mesh"))
            .collect();
        (direct, mesh_replies, tcp_get((CLIENT_ADDR, 80).into()))
    });
    assert!(direct.is_err(), "c1 still reaches c2 directly");
    let names: BTreeSet<_> = mesh_replies.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, BTreeSet::from(["c1", "c2"]), "{mesh_replies:?}");
    assert!(mesh_replies.iter().all(|(_, p)| p == "172.30.0.1"));
    let (name, seen) = out.expect("egress to the client");
    assert_eq!((name.as_str(), seen), ("client", NODE_ADDR.to_string()));
    // Nor through the node as a router.
    run(&[
        "ip",
        "-n",
        &lab.name("c1"),
        "route",
        "add",
        "172.30.0.3/32",
        "via",
        "172.30.0.1",
    ]);
    let routed = in_ns(&c1_ns, || {
        TcpStream::connect_timeout(&c2, Duration::from_millis(300))
    });
    assert!(routed.is_err(), "c1 reaches c2 through the node");
}

#[tokio::test]
async fn containers_on_the_bridge_are_isolated_and_egress_is_masqueraded() {
    bridge_isolation(true).await;
}

#[tokio::test]
async fn containers_on_the_bridge_are_isolated_without_br_netfilter() {
    bridge_isolation(false).await;
}

#[tokio::test]
async fn errors_say_what_went_wrong() {
    let lab = Lab::new();
    let err = nft::apply(
        Some(&lab.ns("node")),
        "table ip shoal { chain x { bogus } }\n",
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, NftError::Failed { stderr, .. } if stderr.contains("bogus")),
        "{err}"
    );
    let err = nft::apply(Some(&PathBuf::from("/nonexistent/ns")), "")
        .await
        .unwrap_err();
    assert!(matches!(err, NftError::Netns { .. }), "{err}");
    assert!(matches!(
        nft::remove(None, "ip shoal; flush ruleset").await,
        Err(NftError::BadTable(_))
    ));
}
