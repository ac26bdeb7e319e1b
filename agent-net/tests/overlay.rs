//! Privileged: `Overlay` on real netlink between two "hosts", each a network namespace the
//! test makes (kept alive by an fd, so none outlives the test process), joined by an underlay
//! veth whose 192.168.201.0/24 addresses exist only there. Each host runs an `Overlay` and a
//! `LocalNet` on its own data dir, as a node does. Needs root.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use agent_net::local::LocalNet;
use agent_net::overlay::{Overlay, SANDBOX, SANDBOX_PEER, VXLAN_PORT};
use futures::TryStreamExt;
use nix::mount::{umount2, MntFlags};
use nix::sched::{setns, unshare, CloneFlags};
use proto::spec::{overlay_mac, NetPeer, NetworkState, NodeNetState, TaskNetwork};
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{
    InfoData, InfoVeth, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourState,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, LinkUnspec, LinkVeth};

const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection that must not happen is given.
const REFUSED_WITHIN: Duration = Duration::from_millis(700);
const UNDERLAY_MTU: u32 = 1400;
const A_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 201, 1);
const B_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 201, 2);

const ING: u32 = 4096;
const N1: u32 = 4101;
const N2: u32 = 4102;

fn ip(d: u8, last: u8) -> Ipv4Addr {
    match d {
        0 => Ipv4Addr::new(10, 255, 0, last),
        _ => Ipv4Addr::new(10, 11, 0, last),
    }
}

/// Runs `f` on a thread inside the namespace `ns`; a panic there is the caller's panic.
fn in_netns<T: Send>(ns: &File, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            setns(ns, CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// One "host": its namespace and data dir. Dropping it unmounts what was mounted there.
struct Host {
    ns: File,
    dir: tempfile::TempDir,
}

impl Host {
    fn new() -> Host {
        let ns = std::thread::spawn(|| {
            unshare(CloneFlags::CLONE_NEWNET).expect("unshare");
            File::open("/proc/thread-self/ns/net").expect("opening the new namespace")
        })
        .join()
        .expect("namespace thread");
        let dir = tempfile::Builder::new()
            .prefix(&format!("zov{}", std::process::id()))
            .tempdir()
            .expect("temp dir");
        Host { ns, dir }
    }

    fn net_dir(&self) -> PathBuf {
        self.dir.path().join("net")
    }

    fn overlay(&self) -> Overlay {
        let dir = self.net_dir();
        in_netns(&self.ns, || Overlay::new(&dir).expect("Overlay::new"))
    }

    fn local(&self) -> LocalNet {
        let dir = self.net_dir();
        in_netns(&self.ns, || LocalNet::new(&dir).expect("LocalNet::new"))
    }

    fn overlay_files(&self) -> Vec<String> {
        std::fs::read_dir(self.net_dir().join("ns"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("ov-"))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let ns_dir = self.net_dir().join("ns");
        if let Ok(entries) = std::fs::read_dir(&ns_dir) {
            for e in entries.flatten() {
                let _ = umount2(&e.path(), MntFlags::MNT_DETACH);
            }
        }
        while umount2(&ns_dir, MntFlags::MNT_DETACH).is_ok() {}
    }
}

fn netlink_in(ns: &File) -> Handle {
    let rt = tokio::runtime::Handle::current();
    let (conn, handle) = in_netns(ns, || {
        let _rt = rt.enter();
        let (conn, handle, _) = rtnetlink::new_connection().expect("netlink");
        (conn, handle)
    });
    tokio::spawn(conn);
    handle
}

async fn links(h: &Handle) -> Vec<LinkMessage> {
    h.link().get().execute().try_collect().await.expect("links")
}

fn name_of(l: &LinkMessage) -> Option<&str> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

async fn link(h: &Handle, name: &str) -> Option<LinkMessage> {
    links(h)
        .await
        .into_iter()
        .find(|l| name_of(l) == Some(name))
}

fn attr<T>(l: &LinkMessage, f: impl Fn(&LinkAttribute) -> Option<T>) -> Option<T> {
    l.attributes.iter().find_map(f)
}

fn mtu(l: &LinkMessage) -> u32 {
    attr(l, |a| match a {
        LinkAttribute::Mtu(m) => Some(*m),
        _ => None,
    })
    .unwrap()
}

fn vxlan_info(l: &LinkMessage) -> Vec<InfoVxlan> {
    attr(l, |a| match a {
        LinkAttribute::LinkInfo(i) => i.iter().find_map(|i| match i {
            LinkInfo::Data(InfoData::Vxlan(v)) => Some(v.clone()),
            _ => None,
        }),
        _ => None,
    })
    .expect("a VXLAN device")
}

/// Builds the underlay: `ul0` in each host, up, with the host's address.
async fn underlay(a: &Host, b: &Host) {
    let ha = netlink_in(&a.ns);
    let hb = netlink_in(&b.ns);
    let peer = LinkUnspec::new_with_name("ul0")
        .setns_by_fd(std::os::fd::AsRawFd::as_raw_fd(&b.ns))
        .build();
    ha.link()
        .add(
            LinkVeth::new("ul0", "ul0")
                .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
                .build(),
        )
        .execute()
        .await
        .expect("underlay veth");
    for (h, addr) in [(&ha, A_IP), (&hb, B_IP)] {
        for name in ["ul0", "lo"] {
            let l = link(h, name).await.unwrap();
            h.link()
                .set(
                    LinkUnspec::new_with_index(l.header.index)
                        .mtu(if name == "lo" { 65536 } else { UNDERLAY_MTU })
                        .up()
                        .build(),
                )
                .execute()
                .await
                .unwrap();
        }
        let ul = link(h, "ul0").await.unwrap().header.index;
        h.address()
            .add(ul, IpAddr::V4(addr), 24)
            .execute()
            .await
            .unwrap();
    }
}

fn tnet(id: &str, vni: u32, addr: Ipv4Addr) -> TaskNetwork {
    let ingress = vni == ING;
    TaskNetwork {
        network_id: id.into(),
        network_name: id.into(),
        vni,
        subnet: if ingress {
            "10.255.0.0/16"
        } else {
            "10.11.0.0/24"
        }
        .into(),
        gateway: if ingress { ip(0, 1) } else { ip(1, 1) },
        addr,
        internal: false,
        ingress,
        aliases: vec![],
    }
}

fn nstate(id: &str, vni: u32, peers: &[(Ipv4Addr, Ipv4Addr)]) -> NetworkState {
    let t = tnet(id, vni, ip(1, 1));
    NetworkState {
        id: id.into(),
        name: id.into(),
        vni,
        subnet: t.subnet,
        gateway: Some(t.gateway),
        internal: false,
        ingress: t.ingress,
        peers: peers
            .iter()
            .map(|&(addr, node_ip)| NetPeer { addr, node_ip })
            .collect(),
    }
}

fn in_use(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

/// Host A: ta1 on n1 (10.11.0.2), ta2 on n2 (10.11.0.4), sandbox 10.255.0.2.
fn state_a(n1_peers: &[(Ipv4Addr, Ipv4Addr)]) -> NodeNetState {
    NodeNetState {
        node_id: "a".into(),
        node_ip: Some(A_IP),
        ingress_addr: Some(ip(0, 2)),
        networks: vec![
            nstate("ing", ING, &[(ip(0, 3), B_IP), (ip(0, 10), B_IP)]),
            nstate("n1", N1, n1_peers),
            nstate("n2", N2, &[(ip(1, 5), B_IP)]),
        ],
        services: vec![],
    }
}

/// Host B: tb1 on n1 (10.11.0.3) and ingress (10.255.0.10), tb2 on n2 (10.11.0.5, the same
/// subnet as n1), sandbox 10.255.0.3.
fn state_b() -> NodeNetState {
    NodeNetState {
        node_id: "b".into(),
        node_ip: Some(B_IP),
        ingress_addr: Some(ip(0, 3)),
        networks: vec![
            nstate("ing", ING, &[(ip(0, 2), A_IP)]),
            nstate("n1", N1, &[(ip(1, 2), A_IP)]),
            nstate("n2", N2, &[(ip(1, 4), A_IP)]),
        ],
        services: vec![],
    }
}

/// A TCP exchange from namespace `from` to a listener on `to_addr` in namespace `to`.
fn assert_tcp(from: &File, to: &File, to_addr: Ipv4Addr, from_addr: Ipv4Addr) {
    let listener = in_netns(to, || TcpListener::bind((to_addr, 0)).expect("bind"));
    let addr = listener.local_addr().unwrap();
    let mut client = in_netns(from, || {
        TcpStream::connect_timeout(&addr, IO_TIMEOUT)
            .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"))
    });
    // The handshake is complete, so the connection waits in the accept queue.
    listener.set_nonblocking(true).unwrap();
    let (mut server, peer) = listener.accept().expect("accept");
    server.set_nonblocking(false).unwrap();
    assert_eq!(peer.ip(), IpAddr::V4(from_addr));
    for s in [&client, &server] {
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    }
    client.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    server.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    server.write_all(b"pong").unwrap();
    client.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"pong");
}

/// No connection from `from` reaches `to_addr` (a listener waits there in `to`).
fn assert_no_tcp(from: &File, to: &File, to_addr: Ipv4Addr) {
    let listener = in_netns(to, || TcpListener::bind((to_addr, 0)).expect("bind"));
    let addr: SocketAddr = listener.local_addr().unwrap();
    let r = in_netns(from, || TcpStream::connect_timeout(&addr, REFUSED_WITHIN));
    assert!(r.is_err(), "{addr} was reachable");
}

/// The VXLAN device's FDB entries (MAC → underlay address) and neighbour entries.
type Entries = (
    BTreeSet<([u8; 6], Ipv4Addr)>,
    BTreeSet<(Ipv4Addr, [u8; 6], bool)>,
);

async fn entries(h: &Handle, vni: u32) -> Entries {
    let vx = link(h, &format!("vx-{vni}")).await.unwrap().header.index;
    let mut fdb = BTreeSet::new();
    let mut neigh = BTreeSet::new();
    for family in [AddressFamily::Bridge, AddressFamily::Inet] {
        let all: Vec<_> = h
            .neighbours()
            .get()
            .set_address_family(family)
            .execute()
            .try_collect()
            .await
            .unwrap();
        for m in all.iter().filter(|m| m.header.ifindex == vx) {
            let mac = m.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::LinkLayerAddress(l) => <[u8; 6]>::try_from(l.as_slice()).ok(),
                _ => None,
            });
            let dst = m.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
                NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                    <[u8; 4]>::try_from(b.as_slice()).ok().map(Ipv4Addr::from)
                }
                _ => None,
            });
            if family == AddressFamily::Bridge {
                if m.header.flags.contains(NeighbourFlags::Own) {
                    fdb.insert((mac.unwrap(), dst.expect("an FDB entry without dst")));
                }
            } else {
                neigh.insert((
                    dst.unwrap(),
                    mac.unwrap_or_default(),
                    m.header.state == NeighbourState::Permanent,
                ));
            }
        }
    }
    (fdb, neigh)
}

fn expected(peers: &[Ipv4Addr], node: Ipv4Addr) -> Entries {
    (
        peers.iter().map(|p| (overlay_mac(*p), node)).collect(),
        peers.iter().map(|p| (*p, overlay_mac(*p), true)).collect(),
    )
}

/// Interface indexes in a network's namespace, to see that nothing was made again.
async fn indexes(h: &Handle) -> Vec<(String, u32)> {
    let mut v: Vec<_> = links(h)
        .await
        .iter()
        .map(|l| (name_of(l).unwrap_or("").to_string(), l.header.index))
        .collect();
    v.sort();
    v
}

fn is_root() -> bool {
    let root = nix::unistd::Uid::effective().is_root();
    if !root {
        eprintln!("skipped: needs root (network namespaces, mounts)");
    }
    root
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

struct Task {
    ns: File,
    path: PathBuf,
}

async fn task(local: &LocalNet, ov: &Overlay, id: &str, nets: &[TaskNetwork]) -> Task {
    let att = local
        .attach(id, &format!("eth{}", nets.len()))
        .await
        .expect("local attach");
    ov.attach(id, &att.netns, nets)
        .await
        .expect("overlay attach");
    Task {
        ns: File::open(&att.netns).unwrap(),
        path: att.netns,
    }
}

fn ns_file(p: &Path) -> File {
    File::open(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn tasks_on_two_hosts_talk_over_their_overlay_and_only_theirs() {
    if !is_root() {
        return;
    }
    let (a, b) = (Host::new(), Host::new());
    runtime().block_on(async {
        underlay(&a, &b).await;
        let (ova, ovb) = (a.overlay(), b.overlay());
        let (la, lb) = (a.local(), b.local());
        ova.apply(&state_a(&[(ip(1, 3), B_IP)]), &in_use(&["n1", "n2"]))
            .await
            .expect("apply a");
        ovb.apply(&state_b(), &in_use(&["n1", "n2", "ing"]))
            .await
            .expect("apply b");

        let ta1 = task(&la, &ova, "ta1", &[tnet("n1", N1, ip(1, 2))]).await;
        let ta2 = task(&la, &ova, "ta2", &[tnet("n2", N2, ip(1, 4))]).await;
        let tb1 = task(
            &lb,
            &ovb,
            "tb1",
            &[tnet("n1", N1, ip(1, 3)), tnet("ing", ING, ip(0, 10))],
        )
        .await;
        let tb2 = task(&lb, &ovb, "tb2", &[tnet("n2", N2, ip(1, 5))]).await;

        // Across hosts, on each network.
        assert_tcp(&ta1.ns, &tb1.ns, ip(1, 3), ip(1, 2));
        assert_tcp(&tb1.ns, &ta1.ns, ip(1, 2), ip(1, 3));
        assert_tcp(&ta2.ns, &tb2.ns, ip(1, 5), ip(1, 4));
        // n2 shares n1's subnet, yet neither reaches the other.
        assert_no_tcp(&ta1.ns, &tb2.ns, ip(1, 5));
        assert_no_tcp(&ta2.ns, &tb1.ns, ip(1, 3));
        assert_no_tcp(&ta1.ns, &ta2.ns, ip(1, 4));
        // The sandbox: from host A's own namespace to tb1 on host B over ingress.
        assert_tcp(&a.ns, &tb1.ns, ip(0, 10), ip(0, 2));
        // The local bridge still holds the default route (eth1 for ta1, eth2 for tb1).
        assert_tcp(&ta1.ns, &a.ns, la.gateway(), la.address_of("ta1").unwrap());
        assert_tcp(&tb1.ns, &b.ns, lb.gateway(), lb.address_of("tb1").unwrap());

        // The devices.
        let ha = netlink_in(&a.ns);
        let n1a = netlink_in(&ns_file(&ova.netns_path(N1)));
        let vx = link(&n1a, "vx-4101")
            .await
            .expect("vx-4101 in n1's namespace");
        let info = vxlan_info(&vx);
        for want in [
            InfoVxlan::Id(N1),
            InfoVxlan::Local(A_IP),
            InfoVxlan::Port(VXLAN_PORT),
            InfoVxlan::Learning(false),
            InfoVxlan::Proxy(true),
        ] {
            assert!(info.contains(&want), "{want:?} not in {info:?}");
        }
        let br = link(&n1a, "br0").await.unwrap();
        assert!(br.header.flags.contains(LinkFlags::Up));
        assert!(vx.header.flags.contains(LinkFlags::Up));
        assert_eq!(
            attr(&vx, |a| match a {
                LinkAttribute::Controller(c) => Some(*c),
                _ => None,
            }),
            Some(br.header.index)
        );
        let want_mtu = UNDERLAY_MTU - 50;
        assert_eq!((mtu(&vx), mtu(&br)), (want_mtu, want_mtu));
        let peer = link(&n1a, "vtta1").await.expect("ta1's end on br0");
        assert_eq!(mtu(&peer), want_mtu);
        let h1 = netlink_in(&ta1.ns);
        let eth0 = link(&h1, "eth0").await.unwrap();
        assert_eq!(mtu(&eth0), want_mtu);
        assert_eq!(
            attr(&eth0, |a| match a {
                LinkAttribute::Address(m) => Some(m.clone()),
                _ => None,
            }),
            Some(overlay_mac(ip(1, 2)).to_vec())
        );
        let addrs: Vec<_> = h1
            .address()
            .get()
            .set_link_index_filter(eth0.header.index)
            .execute()
            .try_collect()
            .await
            .unwrap();
        assert!(addrs.iter().any(|m| m.header.prefix_len == 24
            && m.attributes
                .contains(&AddressAttribute::Address(IpAddr::V4(ip(1, 2))))));
        let sandbox = link(&ha, SANDBOX).await.expect("the sandbox");
        assert!(sandbox.header.flags.contains(LinkFlags::Up));
        let inga = netlink_in(&ns_file(&ova.netns_path(ING)));
        assert!(link(&inga, SANDBOX_PEER).await.is_some());
        let fwd = in_netns(&a.ns, || {
            std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap()
        });
        assert_eq!(fwd.trim(), "1");

        // Entries are exactly the peers.
        assert_eq!(entries(&n1a, N1).await, expected(&[ip(1, 3)], B_IP));
        let ingb = netlink_in(&ns_file(&ovb.netns_path(ING)));
        assert_eq!(entries(&ingb, ING).await, expected(&[ip(0, 2)], A_IP));
        assert_eq!(
            entries(&inga, ING).await,
            expected(&[ip(0, 3), ip(0, 10)], B_IP)
        );

        // Idempotent: the same state and attachments again change nothing.
        let before = (indexes(&n1a).await, indexes(&ha).await);
        ova.apply(&state_a(&[(ip(1, 3), B_IP)]), &in_use(&["n1", "n2"]))
            .await
            .expect("apply again");
        ova.attach("ta1", &ta1.path, &[tnet("n1", N1, ip(1, 2))])
            .await
            .expect("attach again");
        assert_eq!((indexes(&n1a).await, indexes(&ha).await), before);
        assert_eq!(entries(&n1a, N1).await, expected(&[ip(1, 3)], B_IP));

        // A restarted daemon adopts it all.
        drop(ova);
        let ova = a.overlay();
        ova.apply(&state_a(&[(ip(1, 3), B_IP)]), &in_use(&["n1", "n2"]))
            .await
            .expect("apply after restart");
        ova.attach("ta1", &ta1.path, &[tnet("n1", N1, ip(1, 2))])
            .await
            .expect("attach after restart");
        assert_eq!((indexes(&n1a).await, indexes(&ha).await), before);
        assert_tcp(&ta1.ns, &tb1.ns, ip(1, 3), ip(1, 2));

        // A peer gone: its entries go, and it is out of reach.
        ova.apply(&state_a(&[]), &in_use(&["n1", "n2"]))
            .await
            .expect("apply without the peer");
        assert_eq!(entries(&n1a, N1).await, expected(&[], B_IP));
        assert_no_tcp(&ta1.ns, &tb1.ns, ip(1, 3));
        // A peer moved to another node: its entry follows.
        ova.apply(&state_a(&[(ip(1, 3), A_IP)]), &in_use(&["n1", "n2"]))
            .await
            .unwrap();
        assert_eq!(entries(&n1a, N1).await, expected(&[ip(1, 3)], A_IP));
        ova.apply(&state_a(&[(ip(1, 3), B_IP)]), &in_use(&["n1", "n2"]))
            .await
            .unwrap();
        assert_eq!(entries(&n1a, N1).await, expected(&[ip(1, 3)], B_IP));
        assert_tcp(&ta1.ns, &tb1.ns, ip(1, 3), ip(1, 2));

        // Detach: the task's end goes from the bridge and from its namespace.
        ova.detach("ta1").await.expect("detach");
        ova.detach("ta1").await.expect("detach twice");
        assert!(link(&n1a, "vtta1").await.is_none());
        assert!(link(&h1, "eth0").await.is_none());
        assert!(link(&h1, "eth1").await.is_some(), "the local network's end");

        // n2 neither listed nor in use: removed. n1 not listed but in use: kept.
        let mut s = state_a(&[]);
        s.networks.retain(|n| n.vni == ING);
        ova.apply(&s, &in_use(&["n1"]))
            .await
            .expect("apply without n2");
        let mut files = a.overlay_files();
        files.sort();
        assert_eq!(files, ["ov-4096", "ov-4101"]);
        assert!(!ova.netns_path(N2).exists());
        assert!(link(&h1, "eth0").await.is_none());
        // Without an ingress address, no sandbox.
        s.ingress_addr = None;
        ova.apply(&s, &in_use(&["n1"])).await.unwrap();
        assert!(link(&ha, SANDBOX).await.is_none());

        // Leaving: nothing is left.
        for (host, ov) in [(&a, &ova), (&b, &ovb)] {
            ov.teardown().await.expect("teardown");
            ov.teardown().await.expect("teardown twice");
            assert!(host.overlay_files().is_empty());
            let h = netlink_in(&host.ns);
            let left: Vec<_> = links(&h)
                .await
                .iter()
                .filter_map(|l| name_of(l).map(str::to_string))
                .filter(|n| n.starts_with("vx-") || n == SANDBOX)
                .collect();
            assert!(left.is_empty(), "{left:?}");
        }
        assert!(link(&netlink_in(&ta2.ns), "eth0").await.is_none());
        for t in ["ta1", "ta2"] {
            la.detach(t).await.unwrap();
        }
        for t in ["tb1", "tb2"] {
            lb.detach(t).await.unwrap();
        }
        drop((tb1, tb2));
    });
}

#[test]
fn a_setup_cut_short_completes() {
    if !is_root() {
        return;
    }
    let (a, b) = (Host::new(), Host::new());
    runtime().block_on(async {
        underlay(&a, &b).await;
        let ova = a.overlay();
        let la = a.local();
        let ha = netlink_in(&a.ns);

        // Before any state, the underlay address is unknown: a clear error, nothing made.
        let att = la.attach("tc1", "eth1").await.unwrap();
        let err = ova
            .attach("tc1", &att.netns, &[tnet("n1", N1, ip(1, 2))])
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("underlay address"), "{err}");

        // The node's address is remembered across a restart.
        let mut s = state_a(&[(ip(1, 3), B_IP)]);
        s.networks.retain(|n| n.vni == ING);
        ova.apply(&s, &in_use(&[])).await.unwrap();
        let ova = a.overlay();
        // A VXLAN device left in the node's namespace, and an unbound namespace file.
        ha.link()
            .add(
                rtnetlink::LinkVxlan::new("vx-4101", N1)
                    .local(A_IP)
                    .port(VXLAN_PORT)
                    .build(),
            )
            .execute()
            .await
            .unwrap();
        std::fs::File::create(ova.netns_path(N1)).unwrap();
        ova.attach("tc1", &att.netns, &[tnet("n1", N1, ip(1, 2))])
            .await
            .expect("attach over leftovers");
        assert!(link(&ha, "vx-4101").await.is_none());
        let n1 = netlink_in(&ns_file(&ova.netns_path(N1)));
        assert!(link(&n1, "vx-4101").await.is_some());
        // A bridge end without its pair, and an address that is not the task's any more.
        let tc = netlink_in(&ns_file(&att.netns));
        let eth0 = link(&tc, "eth0").await.unwrap().header.index;
        tc.link().del(eth0).execute().await.unwrap();
        let n1_file = ns_file(&ova.netns_path(N1));
        let peer = LinkUnspec::new_with_name("vttc1")
            .setns_by_fd(std::os::fd::AsRawFd::as_raw_fd(&n1_file))
            .build();
        ha.link()
            .add(
                LinkVeth::new("zstray", "vttc1")
                    .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
                    .build(),
            )
            .execute()
            .await
            .unwrap();
        ova.attach("tc1", &att.netns, &[tnet("n1", N1, ip(1, 7))])
            .await
            .expect("attach again");
        assert!(link(&ha, "zstray").await.is_none());
        let eth0 = link(&tc, "eth0").await.unwrap();
        let addrs: Vec<_> = tc
            .address()
            .get()
            .set_link_index_filter(eth0.header.index)
            .execute()
            .try_collect()
            .await
            .unwrap();
        let v4: Vec<_> = addrs
            .iter()
            .filter_map(|m| {
                m.attributes.iter().find_map(|x| match x {
                    AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
                    _ => None,
                })
            })
            .collect();
        assert_eq!(v4, [ip(1, 7)]);

        ova.teardown().await.unwrap();
        la.detach("tc1").await.unwrap();
        assert!(a.overlay_files().is_empty());
    });
}
