//! One conformance suite for both dataplanes: every case runs on the in-memory
//! [`FakeDataplane`] and on the [`KernelDataplane`] (privileged: in a network namespace the
//! test makes, kept alive only by an fd, with its data dir under a unique temp prefix that is
//! unmounted and removed at the end). The same bodies, so the fake the controller's unit
//! tests rely on behaves as the kernel does.

use std::collections::BTreeSet;
use std::fs::File;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;

use agent_net::dataplane::fake::FakeDataplane;
use agent_net::dataplane::{Dataplane, KernelDataplane, Observe};
use agent_net::overlay::{task_peer_ifname, PeerEntries, BRIDGE, SANDBOX};
use nix::mount::{umount2, MntFlags};
use nix::sched::{setns, unshare, CloneFlags};
use proto::spec::{overlay_mac, NetPeer, NetworkState, NodeNetState, TaskNetwork};
use rtnetlink::{LinkUnspec, LinkVeth};

const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 203, 5);
const ING: u32 = 4096;
const FRONT: u32 = 4110;
const TABLE: &str = "ip shoal";

trait Plane: Dataplane + Observe {}
impl<T: Dataplane + Observe> Plane for T {}

type P = Arc<dyn Plane>;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn run_fake<F: Future<Output = ()>>(case: impl FnOnce(P) -> F) {
    let dp = Arc::new(FakeDataplane::new());
    dp.add_underlay("ul0", NODE_IP, 24, 1500);
    runtime().block_on(case(dp));
}

/// The kernel's side: a namespace and data dir of the test's own, removed after.
struct Host {
    ns: File,
    dir: tempfile::TempDir,
}

impl Drop for Host {
    fn drop(&mut self) {
        let ns_dir = self.dir.path().join("net").join("ns");
        if let Ok(entries) = std::fs::read_dir(&ns_dir) {
            for e in entries.flatten() {
                let _ = umount2(&e.path(), MntFlags::MNT_DETACH);
            }
        }
        while umount2(&ns_dir, MntFlags::MNT_DETACH).is_ok() {}
    }
}

fn run_kernel<F: Future<Output = ()>>(case: impl FnOnce(P) -> F) {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: needs root (network namespaces, mounts)");
        return;
    }
    let ns = std::thread::spawn(|| {
        unshare(CloneFlags::CLONE_NEWNET).expect("unshare");
        File::open("/proc/thread-self/ns/net").expect("opening the new namespace")
    })
    .join()
    .expect("namespace thread");
    let host = Host {
        ns,
        dir: tempfile::Builder::new()
            .prefix(&format!("zdp{}", std::process::id()))
            .tempdir()
            .expect("temp dir"),
    };
    let rt = runtime();
    let ns_path = format!("/proc/{}/fd/{}", std::process::id(), host.ns.as_raw_fd());
    let dir = host.dir.path().join("net");
    let (dp, conn, h) = std::thread::scope(|s| {
        s.spawn(|| {
            setns(&host.ns, CloneFlags::CLONE_NEWNET).expect("setns");
            let dp = KernelDataplane::in_namespace(&dir, Path::new(&ns_path)).expect("dataplane");
            let _rt = rt.enter();
            let (conn, h, _) = rtnetlink::new_connection().expect("netlink");
            (dp, conn, h)
        })
        .join()
        .expect("dataplane thread")
    });
    rt.block_on(async {
        tokio::spawn(conn);
        // The underlay: one end of a veth pair holding the node's address (no dummy module
        // on every kernel).
        h.link()
            .add(LinkVeth::new("ul0", "ul1").mtu(1500).build())
            .execute()
            .await
            .expect("underlay link");
        let index = h
            .link()
            .get()
            .match_name("ul0".to_string())
            .execute()
            .try_next()
            .await
            .expect("ul0")
            .expect("ul0")
            .header
            .index;
        h.link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .expect("ul0 up");
        h.address()
            .add(index, IpAddr::V4(NODE_IP), 24)
            .execute()
            .await
            .expect("underlay address");
        case(Arc::new(dp)).await;
    });
    drop(rt);
    drop(host);
}

use futures::TryStreamExt;

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod fake {
            $( #[test] fn $case() { super::run_fake(super::$case); } )*
        }
        mod kernel {
            $( #[test] fn $case() { super::run_kernel(super::$case); } )*
        }
    };
}

conformance!(
    gateway_attach_addresses_the_task_on_the_bridge_and_detach_undoes_it,
    overlay_attach_into_a_missing_namespace_fails,
    overlay_attach_builds_the_network_and_the_endpoint_idempotently,
    fdb_and_neighbours_are_exactly_the_peers,
    a_network_neither_listed_nor_used_is_removed,
    the_ingress_sandbox_follows_the_node_state,
    an_underlay_address_no_interface_holds_is_refused,
    rules_replace_tables_in_the_namespace_asked,
    dns_sockets_need_the_namespace,
    teardown_removes_every_network,
);

fn network(vni: u32, peers: &[(Ipv4Addr, Ipv4Addr)]) -> NetworkState {
    let ingress = vni == ING;
    NetworkState {
        id: format!("net{vni}"),
        name: format!("net{vni}"),
        vni,
        subnet: if ingress {
            "10.255.0.0/16"
        } else {
            "10.12.0.0/24"
        }
        .into(),
        gateway: None,
        internal: false,
        ingress,
        peers: peers
            .iter()
            .map(|&(addr, node_ip)| NetPeer { addr, node_ip })
            .collect(),
    }
}

fn state(nets: Vec<NetworkState>, sandbox: bool) -> NodeNetState {
    NodeNetState {
        node_id: "n1".into(),
        node_ip: Some(NODE_IP),
        ingress_addr: sandbox.then_some(Ipv4Addr::new(10, 255, 0, 5)),
        networks: nets,
        services: vec![],
    }
}

fn tnet(vni: u32, addr: Ipv4Addr) -> TaskNetwork {
    TaskNetwork {
        network_id: format!("net{vni}"),
        network_name: format!("net{vni}"),
        vni,
        subnet: "10.12.0.0/24".into(),
        gateway: Ipv4Addr::new(10, 12, 0, 1),
        addr,
        internal: false,
        ingress: false,
        aliases: vec![],
    }
}

fn a(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 12, 0, last)
}

fn in_use(ids: &[u32]) -> BTreeSet<String> {
    ids.iter().map(|v| format!("net{v}")).collect()
}

async fn gateway_attach_addresses_the_task_on_the_bridge_and_detach_undoes_it(p: P) {
    let att = p.attach_gateway("t1", "eth0").await.expect("attach");
    assert_eq!(att.netns, p.task_netns("t1"));
    assert!(p.netns_exists(&att.netns));
    assert_eq!(att.ip, Ipv4Addr::new(172, 30, 0, 2));
    assert_eq!(p.gateway_address("t1"), Some(att.ip));
    let inside = p.links(Some(&att.netns)).await.unwrap();
    assert_eq!(inside["eth0"].kind, "veth");
    assert_eq!(inside["eth0"].addrs, [(att.ip, 24)].into());
    assert!(inside["eth0"].up && inside["lo"].up);
    let node = p.links(None).await.unwrap();
    assert_eq!(node["shoal0"].kind, "bridge");
    assert!(node["shoal0"]
        .addrs
        .contains(&(Ipv4Addr::new(172, 30, 0, 1), 24)));
    let host_end: Vec<_> = node
        .iter()
        .filter(|(_, l)| l.controller.as_deref() == Some("shoal0"))
        .map(|(n, _)| n.clone())
        .collect();
    assert_eq!(host_end.len(), 1, "{node:?}");
    // Again: the same lease and interface.
    let again = p.attach_gateway("t1", "eth0").await.expect("attach again");
    assert_eq!(again, att);
    let second = p.attach_gateway("t2", "eth0").await.expect("attach t2");
    assert_ne!(second.ip, att.ip);

    p.detach_gateway("t1").await.expect("detach");
    assert!(!p.netns_exists(&att.netns));
    assert_eq!(p.gateway_address("t1"), None);
    let node = p.links(None).await.unwrap();
    assert!(!node.contains_key(&host_end[0]), "{node:?}");
    p.detach_gateway("t1").await.expect("a second detach");
    p.detach_gateway("t2").await.expect("detach t2");
}

async fn overlay_attach_into_a_missing_namespace_fails(p: P) {
    p.apply_overlays(&state(vec![network(FRONT, &[])], false), &in_use(&[]))
        .await
        .expect("apply");
    let missing = p.task_netns("gone");
    assert!(!p.netns_exists(&missing));
    let r = p
        .attach_overlays("gone", &missing, &[tnet(FRONT, a(2))])
        .await;
    assert!(
        r.is_err(),
        "a veth end sent to a namespace that does not exist"
    );
    let dns = p.dns_sockets("gone", &missing).await;
    assert!(dns.is_err());
}

async fn overlay_attach_builds_the_network_and_the_endpoint_idempotently(p: P) {
    p.apply_overlays(&state(vec![network(FRONT, &[])], false), &in_use(&[]))
        .await
        .expect("apply");
    let netns = p.ensure_task_netns("t1").await.expect("netns");
    let nets = [tnet(FRONT, a(2))];
    p.attach_overlays("t1", &netns, &nets)
        .await
        .expect("attach");
    let check = || async {
        let inside = p.links(Some(&netns)).await.unwrap();
        assert_eq!(inside["eth0"].addrs, [(a(2), 24)].into(), "{inside:?}");
        assert!(inside["eth0"].up);
        let ov = p.links(Some(&p.network_netns(FRONT))).await.unwrap();
        assert_eq!(ov[BRIDGE].kind, "bridge");
        assert!(ov[BRIDGE].up);
        let vx = &ov[&format!("vx-{FRONT}")];
        assert_eq!(vx.kind, "vxlan");
        assert_eq!(vx.controller.as_deref(), Some(BRIDGE));
        let peer = &ov[&task_peer_ifname("t1")];
        assert_eq!(peer.controller.as_deref(), Some(BRIDGE));
        assert!(peer.up);
    };
    check().await;
    p.attach_overlays("t1", &netns, &nets)
        .await
        .expect("attach again");
    check().await;

    p.detach_overlays("t1").await.expect("detach");
    let ov = p.links(Some(&p.network_netns(FRONT))).await.unwrap();
    assert!(!ov.contains_key(&task_peer_ifname("t1")));
    // The veth went as a pair.
    let inside = p.links(Some(&netns)).await.unwrap();
    assert!(!inside.contains_key("eth0"), "{inside:?}");
    p.detach_overlays("t1").await.expect("a second detach");
    p.detach_gateway("t1").await.expect("namespace removed");
}

async fn fdb_and_neighbours_are_exactly_the_peers(p: P) {
    let (b, c) = (
        Ipv4Addr::new(192, 168, 203, 6),
        Ipv4Addr::new(192, 168, 203, 7),
    );
    let entries = |peers: &[(Ipv4Addr, Ipv4Addr)]| PeerEntries {
        fdb: peers.iter().map(|(x, n)| (overlay_mac(*x), *n)).collect(),
        neighbours: peers.iter().map(|(x, _)| (*x, overlay_mac(*x))).collect(),
    };
    for peers in [
        vec![(a(3), b)],
        vec![(a(3), b), (a(4), c)],
        vec![(a(4), b)],
        vec![],
    ] {
        p.apply_overlays(
            &state(vec![network(FRONT, &peers)], false),
            &in_use(&[FRONT]),
        )
        .await
        .expect("apply");
        assert_eq!(p.peers(FRONT).await.unwrap(), entries(&peers), "{peers:?}");
    }
}

async fn a_network_neither_listed_nor_used_is_removed(p: P) {
    p.apply_overlays(
        &state(vec![network(ING, &[]), network(FRONT, &[])], false),
        &in_use(&[FRONT]),
    )
    .await
    .expect("apply");
    assert!(p.netns_exists(&p.network_netns(FRONT)));
    assert!(p.netns_exists(&p.network_netns(ING)));
    // Listed, not used here, not made: nothing to do.
    p.apply_overlays(
        &state(vec![network(ING, &[]), network(FRONT, &[])], false),
        &in_use(&[]),
    )
    .await
    .expect("apply");
    assert!(p.netns_exists(&p.network_netns(FRONT)));
    p.apply_overlays(&state(vec![network(ING, &[])], false), &in_use(&[]))
        .await
        .expect("apply");
    assert!(!p.netns_exists(&p.network_netns(FRONT)));
    assert!(p.netns_exists(&p.network_netns(ING)));
    let node = p.links(None).await.unwrap();
    assert!(!node.contains_key(&format!("vx-{FRONT}")));
}

async fn the_ingress_sandbox_follows_the_node_state(p: P) {
    p.apply_overlays(&state(vec![network(ING, &[])], true), &in_use(&[]))
        .await
        .expect("apply");
    let node = p.links(None).await.unwrap();
    let sandbox = &node[SANDBOX];
    assert_eq!(sandbox.addrs, [(Ipv4Addr::new(10, 255, 0, 5), 16)].into());
    assert!(sandbox.up);
    p.apply_overlays(&state(vec![network(ING, &[])], false), &in_use(&[]))
        .await
        .expect("apply");
    assert!(!p.links(None).await.unwrap().contains_key(SANDBOX));
}

async fn an_underlay_address_no_interface_holds_is_refused(p: P) {
    let mut st = state(vec![network(FRONT, &[])], false);
    st.node_ip = Some(Ipv4Addr::new(192, 168, 204, 9));
    let e = p
        .apply_overlays(&st, &in_use(&[FRONT]))
        .await
        .expect_err("no interface holds the address");
    assert!(e.to_string().contains("192.168.204.9"), "{e}");
}

async fn rules_replace_tables_in_the_namespace_asked(p: P) {
    let script = format!(
        "table {TABLE} {{}}\ndelete table {TABLE}\ntable {TABLE} {{\n\tchain output {{\n\t\t\
         type filter hook output priority 0; policy accept;\n\t}}\n}}\n"
    );
    p.apply_rules(None, &script).await.expect("node rules");
    assert!(p.tables(None).await.unwrap().contains(TABLE));
    let netns = p.ensure_task_netns("t1").await.unwrap();
    assert!(!p.tables(Some(&netns)).await.unwrap().contains(TABLE));
    p.apply_rules(Some(&netns), &script)
        .await
        .expect("task rules");
    p.apply_rules(Some(&netns), &script).await.expect("again");
    assert!(p.tables(Some(&netns)).await.unwrap().contains(TABLE));
    p.remove_rules(Some(&netns), TABLE).await.expect("remove");
    assert!(!p.tables(Some(&netns)).await.unwrap().contains(TABLE));
    p.remove_rules(Some(&netns), TABLE)
        .await
        .expect("remove what is absent");
    assert!(p.tables(None).await.unwrap().contains(TABLE));
    p.remove_rules(None, TABLE)
        .await
        .expect("remove node rules");
    assert!(!p.tables(None).await.unwrap().contains(TABLE));
    p.detach_gateway("t1").await.unwrap();
    assert!(p.apply_rules(Some(&netns), &script).await.is_err());
    assert!(p.remove_rules(None, "shoal").await.is_err(), "not a table");
}

async fn dns_sockets_need_the_namespace(p: P) {
    let netns = p.ensure_task_netns("t1").await.unwrap();
    let (udp, tcp) = p.dns_sockets("t1", &netns).await.expect("bound");
    assert!(udp.local_addr().is_ok() && tcp.local_addr().is_ok());
    drop((udp, tcp));
    p.detach_gateway("t1").await.unwrap();
    assert!(p.dns_sockets("t1", &netns).await.is_err());
}

async fn teardown_removes_every_network(p: P) {
    p.apply_overlays(
        &state(vec![network(ING, &[]), network(FRONT, &[])], true),
        &in_use(&[FRONT]),
    )
    .await
    .expect("apply");
    p.teardown_overlays().await.expect("teardown");
    assert!(!p.netns_exists(&p.network_netns(FRONT)));
    assert!(!p.netns_exists(&p.network_netns(ING)));
    assert!(!p.links(None).await.unwrap().contains_key(SANDBOX));
    p.teardown_overlays().await.expect("a second teardown");
}
