//! Privileged: `LocalNet` on real netlink, inside a network namespace the test makes to play
//! the node, so nothing is created in the machine's own namespace. Needs root.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use agent_net::local::{Attachment, LocalNet};
use futures::TryStreamExt;
use nix::mount::{umount2, MntFlags};
use nix::sched::{setns, unshare, CloneFlags};
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteProtocol};
use rtnetlink::{Handle, RouteMessageBuilder};

const GATEWAY: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 1);
const IO_TIMEOUT: Duration = Duration::from_secs(5);

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

/// The test's "node": an unnamed network namespace kept alive by an fd (so it cannot outlive
/// the test process), and the data dir. Dropping it unmounts what `LocalNet` mounted.
struct Lab {
    node: File,
    dir: tempfile::TempDir,
}

impl Lab {
    fn new() -> Lab {
        let node = std::thread::spawn(|| {
            unshare(CloneFlags::CLONE_NEWNET).expect("unshare");
            File::open("/proc/thread-self/ns/net").expect("opening the new namespace")
        })
        .join()
        .expect("namespace thread");
        let dir = tempfile::Builder::new()
            .prefix("zln")
            .tempdir()
            .expect("temp dir");
        Lab { node, dir }
    }

    fn ns_dir(&self) -> PathBuf {
        self.dir.path().join("ns")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let ns_dir = self.ns_dir();
        if let Ok(entries) = std::fs::read_dir(&ns_dir) {
            for e in entries.flatten() {
                let _ = umount2(&e.path(), MntFlags::MNT_DETACH);
            }
        }
        // The directory's bind mount over itself.
        while umount2(&ns_dir, MntFlags::MNT_DETACH).is_ok() {}
    }
}

/// A netlink handle in `ns`, driven on the current runtime.
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

fn controller_of(l: &LinkMessage) -> Option<u32> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::Controller(i) => Some(*i),
        _ => None,
    })
}

async fn link(h: &Handle, name: &str) -> Option<LinkMessage> {
    links(h)
        .await
        .into_iter()
        .find(|l| name_of(l) == Some(name))
}

fn host_ifname(task_id: &str) -> String {
    format!("vs{}", &task_id[..task_id.len().min(11)])
}

/// The task's namespace has `eth0` up with its address and a default route via the
/// gateway, `lo` up, and the host end is up on the bridge.
async fn assert_attached(node: &Handle, task_id: &str, att: &Attachment) {
    let ns = File::open(&att.netns).expect("namespace file");
    let task = netlink_in(&ns);

    let all = links(&task).await;
    let names: Vec<_> = all.iter().filter_map(name_of).collect();
    let eth0 = all
        .iter()
        .find(|l| name_of(l) == Some("eth0"))
        .unwrap_or_else(|| panic!("{task_id}: no eth0 in {names:?}"));
    assert!(
        eth0.header.flags.contains(LinkFlags::Up),
        "{task_id}: eth0 down"
    );
    let lo = all.iter().find(|l| name_of(l) == Some("lo")).unwrap();
    assert!(
        lo.header.flags.contains(LinkFlags::Up),
        "{task_id}: lo down"
    );

    let addrs: Vec<_> = task
        .address()
        .get()
        .set_link_index_filter(eth0.header.index)
        .execute()
        .try_collect()
        .await
        .expect("addresses");
    let v4: Vec<_> = addrs
        .iter()
        .filter_map(|a| {
            a.attributes.iter().find_map(|x| match x {
                AddressAttribute::Address(ip) => Some((*ip, a.header.prefix_len)),
                _ => None,
            })
        })
        .filter(|(ip, _)| ip.is_ipv4())
        .collect();
    assert_eq!(v4, vec![(att.ip.into(), 24)], "{task_id}: addresses");

    let routes: Vec<_> = task
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .expect("routes");
    let default = routes
        .iter()
        .find(|r| r.header.destination_prefix_length == 0)
        .unwrap_or_else(|| panic!("{task_id}: no default route"));
    assert!(
        default
            .attributes
            .contains(&RouteAttribute::Gateway(RouteAddress::Inet(GATEWAY))),
        "{task_id}: default route {:?}",
        default.attributes
    );
    assert!(default
        .attributes
        .contains(&RouteAttribute::Oif(eth0.header.index)));
    assert_eq!(default.header.protocol, RouteProtocol::Boot);

    let bridge = link(node, "shoal0").await.expect("bridge shoal0");
    let host = link(node, &host_ifname(task_id))
        .await
        .unwrap_or_else(|| panic!("{task_id}: no host end"));
    assert_eq!(controller_of(&host), Some(bridge.header.index), "{task_id}");
    assert!(
        host.header.flags.contains(LinkFlags::Up),
        "{task_id}: host end down"
    );
}

/// A TCP exchange from `from`'s namespace to a listener in `to`'s.
fn assert_tcp(from: &Attachment, to: &Attachment) {
    let to_ns = File::open(&to.netns).unwrap();
    let from_ns = File::open(&from.netns).unwrap();
    let listener = in_netns(&to_ns, || TcpListener::bind((to.ip, 0)).expect("bind"));
    let addr = listener.local_addr().unwrap();
    let mut client = in_netns(&from_ns, || {
        TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect")
    });
    // The handshake is complete, so the connection waits in the accept queue.
    listener.set_nonblocking(true).unwrap();
    let (mut server, peer) = listener.accept().expect("accept");
    server.set_nonblocking(false).unwrap();
    assert_eq!(peer.ip(), std::net::IpAddr::V4(from.ip));
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

fn is_mountpoint(p: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| Path::new(m) == p)
}

fn is_root() -> bool {
    let root = nix::unistd::Uid::effective().is_root();
    if !root {
        eprintln!("skipped: needs root (network namespaces, mounts)");
    }
    root
}

fn run(lab: &Lab, body: impl AsyncFnOnce(&Handle) + Send) {
    in_netns(&lab.node, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                let node = netlink_in(&lab.node);
                body(&node).await;
            })
    })
}

#[test]
fn tasks_get_namespaces_on_the_bridge_and_reach_each_other() {
    if !is_root() {
        return;
    }
    let lab = Lab::new();
    run(&lab, async |node| {
        let net = LocalNet::new(lab.dir.path()).unwrap();
        let a = net.attach("zlna", "eth0").await.expect("attach a");
        let b = net.attach("zlnb", "eth0").await.expect("attach b");
        assert_ne!(a.ip, b.ip);
        assert_eq!(a.netns, lab.ns_dir().join("zlna"));
        assert!(is_mountpoint(&a.netns) && is_mountpoint(&b.netns));
        assert_eq!(net.address_of("zlna"), Some(a.ip));
        assert_eq!(net.gateway(), GATEWAY);
        assert_attached(node, "zlna", &a).await;
        assert_attached(node, "zlnb", &b).await;
        assert_tcp(&a, &b);
        assert_tcp(&b, &a);

        let bridge = link(node, "shoal0").await.unwrap();
        assert!(bridge.header.flags.contains(LinkFlags::Up));
        net.ensure_bridge().await.expect("ensure_bridge again");
        assert_eq!(
            link(node, "shoal0").await.unwrap().header.index,
            bridge.header.index
        );

        net.detach("zlna").await.expect("detach");
        assert!(link(node, "vszlna").await.is_none(), "host end left");
        assert!(!a.netns.exists(), "namespace file left");
        assert!(!lab
            .dir
            .path()
            .join("leases")
            .join(a.ip.to_string())
            .exists());
        assert_eq!(net.address_of("zlna"), None);
        net.detach("zlna").await.expect("detach twice");
        // B is untouched.
        assert_attached(node, "zlnb", &b).await;
        net.detach("zlnb").await.expect("detach b");
        let left: Vec<_> = std::fs::read_dir(lab.ns_dir()).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    });
}

#[test]
fn attach_is_idempotent_and_completes_an_interrupted_setup() {
    if !is_root() {
        return;
    }
    let lab = Lab::new();
    run(&lab, async |node| {
        let net = LocalNet::new(lab.dir.path()).unwrap();
        let a = net.attach("zlna", "eth0").await.expect("attach");
        assert_eq!(net.attach("zlna", "eth0").await.expect("attach again"), a);
        assert_attached(node, "zlna", &a).await;

        // A restarted daemon.
        let net = LocalNet::new(lab.dir.path()).unwrap();
        assert_eq!(
            net.attach("zlna", "eth0")
                .await
                .expect("attach after restart"),
            a
        );
        assert_attached(node, "zlna", &a).await;

        // The veth gone (e.g. cut short before it was made): made again, same address.
        let host = link(node, "vszlna").await.unwrap();
        node.link().del(host.header.index).execute().await.unwrap();
        assert_eq!(
            net.attach("zlna", "eth0")
                .await
                .expect("attach without veth"),
            a
        );
        assert_attached(node, "zlna", &a).await;

        // A namespace file made but never bound.
        std::fs::File::create(lab.ns_dir().join("zlnc")).unwrap();
        let c = net
            .attach("zlnc", "eth0")
            .await
            .expect("attach over an empty file");
        assert_attached(node, "zlnc", &c).await;
        assert_tcp(&c, &a);

        for t in ["zlna", "zlnc"] {
            net.detach(t).await.expect("detach");
        }
        assert!(link(node, "vszlnc").await.is_none());
        assert!(std::fs::read_dir(lab.dir.path().join("leases"))
            .unwrap()
            .next()
            .is_none());
    });
}
