//! Privileged: the embedded DNS server on real sockets. Each test makes a network namespace to
//! play the container (unnamed, held by an fd, so it dies with the test even on a crash), serves
//! 127.0.0.11:53 in it and queries from a thread inside it. Fake upstreams listen on 127.0.0.1
//! of the test's own namespace, which plays the daemon's. Needs root.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use agent_net::dns::Dns;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use nix::sched::{setns, unshare, CloneFlags};
use proto::spec::{Backend, EndpointMode, NodeNetState, ServiceNet, ServiceOnNetwork};
use rtnetlink::LinkUnspec;

const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// What the fake upstream answers for every name.
const UPSTREAM_ANSWER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 53);
const DNS: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(127, 0, 0, 11)), 53);

/// A container's network namespace with `lo` up.
struct Ns {
    file: File,
}

impl Ns {
    async fn new() -> Ns {
        let file = std::thread::spawn(|| {
            unshare(CloneFlags::CLONE_NEWNET).expect("unshare");
            File::open("/proc/thread-self/ns/net").expect("opening the new namespace")
        })
        .join()
        .expect("namespace thread");
        let ns = Ns { file };
        let rt = tokio::runtime::Handle::current();
        let (conn, handle) = ns
            .run(move || {
                let _rt = rt.enter();
                let (conn, handle, _) = rtnetlink::new_connection().expect("netlink");
                (conn, handle)
            })
            .await;
        let conn = tokio::spawn(conn);
        // In a new namespace `lo` is always index 1.
        handle
            .link()
            .set(LinkUnspec::new_with_index(1).up().build())
            .execute()
            .await
            .expect("lo up");
        conn.abort();
        ns
    }

    /// The namespace file, as `serve` takes it.
    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }

    /// Runs `f` on a thread of its own inside the namespace, without blocking the runtime.
    async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let ns = self.file.try_clone().expect("dup");
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            setns(&ns, CloneFlags::CLONE_NEWNET).expect("setns");
            let _ = tx.send(f());
        });
        rx.await.expect("the thread in the namespace panicked")
    }

    async fn udp(&self, name: &str, qtype: RecordType) -> Message {
        let name = name.to_string();
        self.run(move || udp_query(&name, qtype).expect("udp query"))
            .await
    }

    async fn tcp(&self, name: &str, qtype: RecordType) -> Message {
        let name = name.to_string();
        self.run(move || tcp_query(&name, qtype).expect("tcp query"))
            .await
    }
}

fn query(name: &str, qtype: RecordType) -> (u16, Vec<u8>) {
    let id: u16 = rand::random();
    let mut msg = Message::new(id, MessageType::Query, OpCode::Query);
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(Name::from_ascii(name).expect("name"), qtype));
    (id, msg.to_vec().expect("encoding"))
}

fn checked(id: u16, bytes: &[u8]) -> std::io::Result<Message> {
    let reply = Message::from_vec(bytes).map_err(std::io::Error::other)?;
    assert_eq!(reply.metadata.id, id, "the reply's id is the query's");
    assert_eq!(reply.metadata.message_type, MessageType::Response);
    Ok(reply)
}

fn udp_query(name: &str, qtype: RecordType) -> std::io::Result<Message> {
    let (id, bytes) = query(name, qtype);
    let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    sock.set_read_timeout(Some(IO_TIMEOUT))?;
    // Connected, so a closed port is an error at once rather than a timeout.
    sock.connect(DNS)?;
    sock.send(&bytes)?;
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf)?;
    checked(id, &buf[..n])
}

fn tcp_query(name: &str, qtype: RecordType) -> std::io::Result<Message> {
    let (id, bytes) = query(name, qtype);
    let mut s = TcpStream::connect_timeout(&DNS, IO_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&bytes);
    s.write_all(&framed)?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len)?;
    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut buf)?;
    checked(id, &buf)
}

fn addrs(reply: &Message) -> Vec<Ipv4Addr> {
    let mut v: Vec<Ipv4Addr> = reply
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

fn ip(net: u8, last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, net, last)
}

fn backend(task: &str, addrs: &[(&str, Ipv4Addr)]) -> Backend {
    Backend {
        task_id: task.into(),
        node_id: "n1".into(),
        addrs: addrs.iter().map(|(n, a)| (n.to_string(), *a)).collect(),
    }
}

/// `web` (vip, alias `www`) and `db` (dnsrr) on `net1`; `hidden` only on `net2`.
fn state() -> NodeNetState {
    NodeNetState {
        node_id: "n1".into(),
        services: vec![
            ServiceNet {
                id: "s1".into(),
                name: "web".into(),
                mode: EndpointMode::Vip,
                networks: vec![ServiceOnNetwork {
                    network_id: "net1".into(),
                    vip: Some(ip(1, 2)),
                    aliases: vec!["www".into()],
                }],
                backends: vec![
                    backend("t1", &[("net1", ip(1, 3))]),
                    backend("t2", &[("net1", ip(1, 4))]),
                ],
                ..Default::default()
            },
            ServiceNet {
                id: "s2".into(),
                name: "db".into(),
                mode: EndpointMode::Dnsrr,
                networks: vec![ServiceOnNetwork {
                    network_id: "net1".into(),
                    vip: None,
                    aliases: vec![],
                }],
                backends: vec![
                    backend("t3", &[("net1", ip(1, 5))]),
                    backend("t4", &[("net1", ip(1, 6))]),
                ],
                ..Default::default()
            },
            ServiceNet {
                id: "s3".into(),
                name: "hidden".into(),
                mode: EndpointMode::Dnsrr,
                networks: vec![ServiceOnNetwork {
                    network_id: "net2".into(),
                    vip: None,
                    aliases: vec![],
                }],
                backends: vec![backend("t5", &[("net2", ip(2, 3))])],
                ..Default::default()
            },
        ],
        ..Default::default()
    }
}

fn fake_answer(query: &Message) -> Vec<u8> {
    let mut reply = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
    reply.metadata.recursion_available = true;
    reply.add_queries(query.queries.to_vec());
    if let Some(q) = query.queries.first() {
        reply.add_answer(Record::from_rdata(
            q.name().clone(),
            60,
            RData::A(A(UPSTREAM_ANSWER)),
        ));
    }
    reply.to_vec().expect("encoding")
}

/// An upstream on 127.0.0.1 (UDP and TCP, one port) answering [`UPSTREAM_ANSWER`] to all.
async fn fake_upstream() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let tcp = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind tcp");
    let addr = tcp.local_addr().unwrap();
    let udp = tokio::net::UdpSocket::bind(addr).await.expect("bind udp");
    let task = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = vec![0u8; 4096];
        loop {
            tokio::select! {
                r = udp.recv_from(&mut buf) => {
                    let (n, from) = r.expect("recv");
                    let q = Message::from_vec(&buf[..n]).expect("query");
                    udp.send_to(&fake_answer(&q), from).await.expect("send");
                }
                r = tcp.accept() => {
                    let (mut s, _) = r.expect("accept");
                    tokio::spawn(async move {
                        let n = s.read_u16().await.expect("len") as usize;
                        let mut b = vec![0u8; n];
                        s.read_exact(&mut b).await.expect("query");
                        let reply = fake_answer(&Message::from_vec(&b).expect("query"));
                        s.write_u16(reply.len() as u16).await.expect("len");
                        s.write_all(&reply).await.expect("reply");
                    });
                }
            }
        }
    });
    (addr, task)
}

/// An address on 127.0.0.1 where nothing listens.
fn dead_upstream() -> SocketAddr {
    let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    s.local_addr().unwrap()
}

fn nets(ids: &[&str]) -> Vec<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_service_names_over_udp_and_tcp() {
    let (upstream, up) = fake_upstream().await;
    let dns = Dns::new(vec![upstream]);
    dns.set_state(&state());
    let ns = Ns::new().await;
    dns.serve("t9", &ns.path(), nets(&["net1"]), vec![])
        .await
        .expect("serve");

    for reply in [
        ns.udp("web", RecordType::A).await,
        ns.tcp("web.", RecordType::A).await,
        ns.udp("WWW", RecordType::A).await,
    ] {
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert_eq!(addrs(&reply), vec![ip(1, 2)], "{reply:?}");
        assert!(reply.answers.iter().all(|r| r.ttl == 0));
    }
    assert_eq!(
        addrs(&ns.udp("tasks.web", RecordType::A).await),
        vec![ip(1, 3), ip(1, 4)]
    );
    assert_eq!(
        addrs(&ns.tcp("tasks.www", RecordType::A).await),
        vec![ip(1, 3), ip(1, 4)]
    );
    assert_eq!(
        addrs(&ns.udp("db", RecordType::A).await),
        vec![ip(1, 5), ip(1, 6)]
    );
    assert_eq!(
        addrs(&ns.tcp("db", RecordType::A).await),
        vec![ip(1, 5), ip(1, 6)]
    );

    // dnsrr answers rotate, so clients that take the first spread over the tasks.
    let first = |m: &Message| match &m.answers[0].data {
        RData::A(a) => a.0,
        other => panic!("{other:?}"),
    };
    let a = first(&ns.udp("db", RecordType::A).await);
    let b = first(&ns.udp("db", RecordType::A).await);
    assert_ne!(a, b, "two answers in a row start with the same address");

    let aaaa = ns.udp("web", RecordType::AAAA).await;
    assert_eq!(aaaa.metadata.response_code, ResponseCode::NoError);
    assert!(aaaa.answers.is_empty());

    // A name of a network the task is not on is not ours: it goes upstream.
    let hidden = ns.udp("hidden", RecordType::A).await;
    assert_eq!(addrs(&hidden), vec![UPSTREAM_ANSWER]);

    dns.stop("t9");
    up.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_state_takes_effect_at_once() {
    let dns = Dns::new(vec![dead_upstream()]);
    let mut s = state();
    dns.set_state(&s);
    let ns = Ns::new().await;
    dns.serve("t9", &ns.path(), nets(&["net1"]), vec![])
        .await
        .expect("serve");
    assert_eq!(
        addrs(&ns.udp("db", RecordType::A).await),
        vec![ip(1, 5), ip(1, 6)]
    );

    s.services[1].backends.remove(0);
    dns.set_state(&s);
    assert_eq!(addrs(&ns.udp("db", RecordType::A).await), vec![ip(1, 6)]);
    assert_eq!(
        addrs(&ns.tcp("tasks.db", RecordType::A).await),
        vec![ip(1, 6)]
    );

    // The last one gone: the name is known but has no address.
    s.services[1].backends.clear();
    dns.set_state(&s);
    let reply = ns.udp("db", RecordType::A).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
    assert!(reply.answers.is_empty());
    dns.stop("t9");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_unknown_names_to_the_services_then_the_nodes_upstreams() {
    let (upstream, up) = fake_upstream().await;
    let ns1 = Ns::new().await;
    let ns2 = Ns::new().await;
    // The node's resolver is dead: only the service's own one answers.
    let dns = Dns::new(vec![dead_upstream()]);
    dns.serve("t1", &ns1.path(), nets(&["net1"]), vec![upstream])
        .await
        .expect("serve t1");
    for reply in [
        ns1.udp("example.com", RecordType::A).await,
        ns1.tcp("example.com.", RecordType::A).await,
    ] {
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert_eq!(addrs(&reply), vec![UPSTREAM_ANSWER]);
        assert_eq!(reply.queries[0].name().to_ascii(), "example.com.");
    }

    // A task without --dns uses the node's.
    let dns2 = Dns::new(vec![upstream]);
    dns2.serve("t2", &ns2.path(), nets(&["net1"]), vec![])
        .await
        .expect("serve t2");
    assert_eq!(
        addrs(&ns2.udp("example.org", RecordType::A).await),
        vec![UPSTREAM_ANSWER]
    );
    dns.stop("t1");
    dns2.stop("t2");
    up.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servfail_when_upstreams_are_dead_or_silent() {
    let ns = Ns::new().await;
    // Closed port: refused at once.
    let dns = Dns::new(vec![dead_upstream()]);
    dns.serve("t1", &ns.path(), nets(&["net1"]), vec![])
        .await
        .expect("serve");
    let started = Instant::now();
    let reply = ns.udp("example.com", RecordType::A).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
    let reply = ns.tcp("example.com", RecordType::A).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
    println!("refused upstream: SERVFAIL after {:?}", started.elapsed());

    // A socket that never answers: SERVFAIL when the forwarding budget is spent (the client's
    // own timeout is longer, so this reply is the server's).
    let silent = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    dns.serve(
        "t1",
        &ns.path(),
        nets(&["net1"]),
        vec![silent.local_addr().unwrap()],
    )
    .await
    .expect("serve again");
    let started = Instant::now();
    let reply = ns.udp("example.com", RecordType::A).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
    println!("silent upstream: SERVFAIL after {:?}", started.elapsed());

    // No upstream at all.
    let none = Dns::new(vec![]);
    let ns2 = Ns::new().await;
    none.serve("t2", &ns2.path(), nets(&[]), vec![])
        .await
        .expect("serve");
    assert_eq!(
        ns2.udp("example.com", RecordType::A)
            .await
            .metadata
            .response_code,
        ResponseCode::ServFail
    );
    dns.stop("t1");
    none.stop("t2");
}

/// Binds 127.0.0.11:53 (UDP and TCP) in `ns` and lets go at once.
async fn port_free(ns: &Ns) -> bool {
    ns.run(|| UdpSocket::bind(DNS).is_ok() && std::net::TcpListener::bind(DNS).is_ok())
        .await
}

async fn wait_port_free(ns: &Ns) {
    let deadline = Instant::now() + IO_TIMEOUT;
    while !port_free(ns).await {
        assert!(Instant::now() < deadline, "stop did not free 127.0.0.11:53");
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_frees_the_port_and_serve_twice_replaces() {
    let dns = Dns::new(vec![dead_upstream()]);
    dns.set_state(&state());
    let ns = Ns::new().await;
    let path = ns.path();

    dns.serve("t1", &path, nets(&["net1"]), vec![])
        .await
        .expect("serve");
    assert!(!port_free(&ns).await, "the server holds the port");
    // Again for the same task: the old server goes first, no "address in use".
    dns.serve("t1", &path, nets(&["net1"]), vec![])
        .await
        .expect("serve twice");
    assert_eq!(dns.serving(), vec!["t1".to_string()]);
    assert_eq!(addrs(&ns.udp("web", RecordType::A).await), vec![ip(1, 2)]);
    assert_eq!(addrs(&ns.tcp("web", RecordType::A).await), vec![ip(1, 2)]);

    dns.stop("t1");
    wait_port_free(&ns).await;
    assert!(dns.serving().is_empty());
    let refused = ns.run(|| udp_query("web", RecordType::A)).await;
    assert!(refused.is_err(), "nobody answers after stop: {refused:?}");

    // And it can serve again after a stop.
    dns.serve("t1", &path, nets(&["net1"]), vec![])
        .await
        .expect("serve after stop");
    assert_eq!(addrs(&ns.udp("web", RecordType::A).await), vec![ip(1, 2)]);

    // Another process (or a leftover) holding the port: an error that says so.
    dns.stop("t1");
    wait_port_free(&ns).await;
    let other = Dns::new(vec![]);
    other
        .serve("t2", &path, nets(&["net1"]), vec![])
        .await
        .expect("serve t2");
    let err = dns
        .serve("t1", &path, nets(&["net1"]), vec![])
        .await
        .expect_err("port taken");
    assert!(err.to_string().contains("127.0.0.11:53"), "{err}");
    other.stop("t2");

    let missing = dns
        .serve(
            "t3",
            std::path::Path::new("/nonexistent/ns"),
            vec![],
            vec![],
        )
        .await
        .expect_err("no such namespace");
    assert!(missing.to_string().contains("/nonexistent/ns"), "{missing}");
}
