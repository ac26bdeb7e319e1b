use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;

use proto::spec::{NetPeer, TaskState, TaskStatus};

use super::*;
use crate::allocator::tests::{data_with_networks, port, service};
use crate::allocator::{allocate_endpoint, node_ingress_ops, task_networks};
use crate::store::tests::node;
use crate::store::Store;

fn task(
    d: &StoreData,
    id: &str,
    svc: &crate::store::Service,
    node: &str,
    state: TaskState,
) -> Task {
    let mut taken = BTreeSet::new();
    Task {
        id: id.into(),
        version: 0,
        service_id: svc.id.clone(),
        service_name: svc.spec.name.clone(),
        slot: 1,
        node_id: node.into(),
        spec: std::sync::Arc::new(svc.spec.task.clone()),
        spec_version: 1,
        desired_state: TaskState::Running,
        status: TaskStatus {
            state,
            ..Default::default()
        },
        created_at_ms: 0,
        restart_count: 0,
        networks: task_networks(d, &svc.spec, id, &mut taken).unwrap(),
        awaiting_addresses: false,
    }
}

#[test]
fn net_state_lists_peers_services_and_backends() {
    let mut d = data_with_networks();
    let mut ops = Vec::new();
    for (i, (id, state)) in [
        ("n1", NodeState::Ready),
        ("n2", NodeState::Ready),
        ("n3", NodeState::Down),
    ]
    .into_iter()
    .enumerate()
    {
        let mut n = node(id, id);
        n.state = state;
        n.description.addr = format!("192.168.1.{}:4242", i + 1);
        ops.push(Op::Create(Object::Node(n)));
    }
    d.apply_txn(3, &Txn::new(ops)).unwrap();
    d.apply_txn(4, &Txn::new(node_ingress_ops(&d, &mut BTreeSet::new())))
        .unwrap();
    let mut web = service("web", &["net1"], vec![port(8080, 80)]);
    web.endpoint = allocate_endpoint(&d, "web", &web.spec, &Default::default()).unwrap();
    let other = service("other", &[], vec![]);
    d.apply_txn(
        5,
        &Txn::new(vec![
            Op::Create(Object::Service(Box::new(web.clone()))),
            Op::Create(Object::Service(Box::new(other))),
        ]),
    )
    .unwrap();
    // One at a time, so each sees the addresses of the ones before.
    for (i, (id, n, st)) in [
        ("t1", "n1", TaskState::Running),
        ("t2", "n2", TaskState::Running),
        ("t3", "n3", TaskState::Running),
        ("t4", "n2", TaskState::Failed),
        ("t5", "n2", TaskState::Starting),
    ]
    .into_iter()
    .enumerate()
    {
        let t = task(&d, id, &web, n, st);
        d.apply_txn(6 + i as u64, &Txn::new(vec![Op::Create(Object::Task(t))]))
            .unwrap();
    }
    let st = node_net_state(&d, "n1");
    assert_eq!(st.node_ip, Some(Ipv4Addr::new(192, 168, 1, 1)));
    assert_eq!(st.ingress_addr, d.nodes["n1"].ingress_addr);
    let ids: Vec<&str> = st.networks.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(ids, vec!["ing", "net1"]);
    let addr_of = |t: &str, net: &str| {
        d.tasks[t]
            .networks
            .iter()
            .find(|n| n.network_id == net)
            .unwrap()
            .addr
    };
    let n2 = Ipv4Addr::new(192, 168, 1, 2);
    let n3 = Ipv4Addr::new(192, 168, 1, 3);
    let mut want = vec![
        NetPeer {
            addr: addr_of("t2", "net1"),
            node_ip: n2,
        },
        NetPeer {
            addr: addr_of("t3", "net1"),
            node_ip: n3,
        },
        NetPeer {
            addr: addr_of("t5", "net1"),
            node_ip: n2,
        },
    ];
    want.sort();
    assert_eq!(st.networks[1].peers, want);
    // On ingress: the other nodes' tasks and sandboxes, never our own.
    let ing = &st.networks[0].peers;
    assert_eq!(ing.len(), 5);
    assert!(ing.contains(&NetPeer {
        addr: d.nodes["n2"].ingress_addr.unwrap(),
        node_ip: n2
    }));
    assert!(!ing
        .iter()
        .any(|p| p.addr == d.nodes["n1"].ingress_addr.unwrap()));
    assert!(!ing.iter().any(|p| p.addr == addr_of("t1", "ing")));
    // Services: web only; backends: running tasks on ready nodes.
    assert_eq!(st.services.len(), 1);
    let s = &st.services[0];
    assert_eq!(s.name, "web");
    assert_eq!(s.ports[0].published_port, 8080);
    assert_eq!(s.networks.len(), 2);
    assert_eq!(s.networks[0].vip, web.endpoint.vips.get("ing").copied());
    assert_eq!(s.networks[1].aliases, vec!["web-alias".to_string()]);
    let b: Vec<&str> = s.backends.iter().map(|b| b.task_id.as_str()).collect();
    assert_eq!(b, vec!["t1", "t2"]);
    assert_eq!(s.backends[0].addrs.len(), 2);
    // A node with no tasks still gets ingress and the published services.
    let mut lone = node("n4", "n4");
    lone.description.addr = "192.168.1.4:4242".into();
    d.apply_txn(20, &Txn::new(vec![Op::Create(Object::Node(lone))]))
        .unwrap();
    let st = node_net_state(&d, "n4");
    assert_eq!(st.networks.len(), 1);
    assert!(st.networks[0].ingress);
    assert_eq!(st.services.len(), 1);
}

#[test]
fn assignments_carry_task_networks() {
    let mut d = data_with_networks();
    d.apply_txn(
        3,
        &Txn::new(vec![Op::Create(Object::Node(node("n1", "h")))]),
    )
    .unwrap();
    let web = service("web", &["net1"], vec![]);
    let t = task(&d, "t1", &web, "n1", TaskState::Assigned);
    d.apply_txn(4, &Txn::new(vec![Op::Create(Object::Task(t.clone()))]))
        .unwrap();
    let a = assignments_for(&d, "n1", &crate::keys::Kek::generate().unwrap());
    assert_eq!(a["t1"].networks, t.networks);
    assert_eq!(a["t1"].networks.len(), 1);
}

fn put(d: &mut StoreData, index: &mut u64, t: Task) {
    *index += 1;
    let op = if d.tasks.contains_key(&t.id) {
        let mut t = t;
        t.version = d.tasks[&t.id].version;
        Op::Update(Object::Task(t))
    } else {
        Op::Create(Object::Task(t))
    };
    d.apply_txn(*index, &Txn::new(vec![op])).unwrap();
}

use crate::store::{NodeState, Object, Op, StoreData, Task, Txn};

/// A node that applies the assignments messages it is given as the agent does: increments
/// only on top of the version it holds.
#[derive(Default)]
struct Node {
    version: Option<u64>,
    tasks: BTreeMap<String, pb::Assignment>,
    files: BTreeMap<proto::convert::FileKey, Vec<u8>>,
}

use std::collections::BTreeMap;

impl Node {
    /// False: the increment does not follow on what it holds (it asks for a resync).
    fn apply(&mut self, a: pb::Assignments) -> bool {
        if a.full {
            self.tasks.clear();
            self.files.clear();
        } else if self.version != Some(a.base_version) {
            self.version = None;
            return false;
        }
        self.version = Some(a.version);
        for f in a.files {
            self.files
                .insert(f.key.unwrap().try_into().unwrap(), f.data);
        }
        for k in a.removed_files {
            self.files
                .remove(&proto::convert::FileKey::try_from(k).unwrap());
        }
        for id in a.removed {
            self.tasks.remove(&id);
        }
        for u in a.upsert {
            self.tasks.insert(u.task_id.clone(), u);
        }
        true
    }

    fn assignments(&self) -> BTreeMap<String, proto::spec::Assignment> {
        self.tasks
            .iter()
            .map(|(id, a)| {
                let mut a = proto::spec::Assignment::try_from(a.clone()).unwrap();
                proto::convert::fill_files(&mut a, &self.files);
                (id.clone(), a)
            })
            .collect()
    }
}

#[test]
fn touched_tasks_diff_as_the_full_recomputation_does() {
    let mut d = data_with_networks();
    for n in ["n1", "n2"] {
        d.apply_txn(3, &Txn::new(vec![Op::Create(Object::Node(node(n, n)))]))
            .unwrap();
    }
    let web = service("web", &["net1"], vec![]);
    let mut index = 10;
    for (id, node, state) in [
        ("t1", "n1", TaskState::Assigned),
        ("t2", "n1", TaskState::Running),
        ("t3", "n2", TaskState::Assigned),
    ] {
        let t = task(&d, id, &web, node, state);
        put(&mut d, &mut index, t);
    }
    let kek = crate::keys::Kek::generate().unwrap();
    let mut asg = NodeAssignments::default();
    let mut n1 = Node::default();
    assert!(n1.apply(asg.full(&d, "n1", &kek)));
    assert_eq!(asg.sent(), &fingerprints(&assignments_for(&d, "n1", &kek)));
    assert_eq!(n1.assignments(), assignments_for(&d, "n1", &kek));
    assert!(asg
        .touched(&d, "n1", &kek, ["t1", "t2", "t3"], false)
        .is_none());
    // t1 told to stop, t2 ended and no longer wanted: one upsert, one removal.
    let mut t1s = d.tasks["t1"].clone();
    t1s.desired_state = TaskState::Shutdown;
    put(&mut d, &mut index, t1s);
    let mut t2s = d.tasks["t2"].clone();
    t2s.desired_state = TaskState::Shutdown;
    t2s.status.state = TaskState::Shutdown;
    put(&mut d, &mut index, t2s);
    let mut other = NodeAssignments::default();
    other.full(&d, "n1", &kek);
    let inc = asg
        .touched(&d, "n1", &kek, ["t1", "t2", "t3"], false)
        .unwrap();
    assert_eq!((inc.base_version, inc.version), (1, 2));
    assert_eq!(inc.removed, vec!["t2".to_string()]);
    assert_eq!(inc.upsert.len(), 1);
    assert_eq!(asg.sent(), other.sent());
    assert!(n1.apply(inc));
    assert_eq!(n1.assignments(), assignments_for(&d, "n1", &kek));
    assert!(asg.touched(&d, "n1", &kek, ["t1", "t3"], false).is_none());
}

/// A dropped increment: the next one does not follow on what the node holds, the node asks
/// for a resync, and the full set brings it to the store's state.
#[test]
fn a_dropped_increment_leads_to_a_resync_and_the_node_converges() {
    let mut d = data_with_networks();
    d.apply_txn(
        3,
        &Txn::new(vec![Op::Create(Object::Node(node("n1", "h")))]),
    )
    .unwrap();
    let web = service("web", &[], vec![]);
    let kek = crate::keys::Kek::generate().unwrap();
    let mut index = 10;
    let mut asg = NodeAssignments::default();
    let mut n1 = Node::default();
    assert!(n1.apply(asg.full(&d, "n1", &kek)));
    let mut resyncs = 0;
    for i in 0..6 {
        let id = format!("t{i}");
        let t = task(&d, &id, &web, "n1", TaskState::Assigned);
        put(&mut d, &mut index, t);
        let inc = asg.touched(&d, "n1", &kek, [id.as_str()], false).unwrap();
        if i == 2 {
            continue; // lost
        }
        if !n1.apply(inc) {
            resyncs += 1;
            // What the session does on Resync.
            assert!(n1.apply(asg.full(&d, "n1", &kek)));
        }
    }
    assert_eq!(resyncs, 1);
    assert_eq!(n1.version, Some(asg.version()));
    assert_eq!(n1.assignments(), assignments_for(&d, "n1", &kek));
    assert_eq!(n1.tasks.len(), 6);
}

fn with_secret(d: &mut StoreData, kek: &crate::keys::Kek, name: &str, data: &[u8]) {
    let key = match d.data_key.clone() {
        Some(k) => kek.open_data_key(&k).unwrap(),
        None => {
            let k = crate::secrets::new_data_key().unwrap();
            d.apply_txn(
                1,
                &Txn::new(vec![Op::Create(Object::DataKey(
                    kek.seal_data_key(&k).unwrap(),
                ))]),
            )
            .unwrap();
            k
        }
    };
    let id = format!("id-{name}");
    let o = crate::store::FileObject {
        id: id.clone(),
        version: 0,
        name: name.into(),
        labels: Default::default(),
        created_at_ms: 0,
        updated_at_ms: 0,
        sealed: crate::secrets::seal(&key, &id, data).unwrap(),
    };
    d.apply_txn(2, &Txn::new(vec![Op::Create(Object::Secret(o))]))
        .unwrap();
}

/// A 500 KiB secret used by 10 tasks on one node goes to the node once: the assignments stay
/// far below the 4 MiB message limit (inside every task, as JSON numbers, they were ~18 MB),
/// and it leaves the node when no task names it any more.
#[test]
fn a_secret_goes_to_a_node_once_whatever_the_tasks_that_use_it() {
    let mut d = data_with_networks();
    let kek = crate::keys::Kek::generate().unwrap();
    let big: Vec<u8> = (0..500 * 1024).map(|i| (i % 251) as u8).collect();
    with_secret(&mut d, &kek, "big", &big);
    d.apply_txn(
        3,
        &Txn::new(vec![Op::Create(Object::Node(node("n1", "h")))]),
    )
    .unwrap();
    let mut web = service("web", &[], vec![]);
    web.spec.task.secrets = vec![proto::spec::FileRef {
        name: "big".into(),
        target: String::new(),
        ..Default::default()
    }];
    let mut index = 10;
    let mut asg = NodeAssignments::default();
    let mut n1 = Node::default();
    n1.apply(asg.full(&d, "n1", &kek));
    let mut sizes = Vec::new();
    for i in 0..10 {
        let id = format!("t{i}");
        let t = task(&d, &id, &web, "n1", TaskState::Assigned);
        put(&mut d, &mut index, t);
        let inc = asg.touched(&d, "n1", &kek, [id.as_str()], false).unwrap();
        sizes.push(inc.encoded_len());
        assert!(n1.apply(inc));
    }
    // The first increment carries the data, the others only the task.
    assert!(sizes[0] > 500 * 1024 && sizes[0] < 520 * 1024, "{sizes:?}");
    assert!(sizes[1..].iter().all(|s| *s < 4096), "{sizes:?}");
    let full = NodeAssignments::default().full(&d, "n1", &kek);
    assert_eq!(full.files.len(), 1);
    assert_eq!(full.upsert.len(), 10);
    assert!(full.encoded_len() < 520 * 1024, "{}", full.encoded_len());
    let got = n1.assignments();
    assert_eq!(got, assignments_for(&d, "n1", &kek));
    assert_eq!(got["t3"].secrets[0].data, big);
    assert_eq!(got["t3"].secrets[0].target, "big");
    // Gone with the last task that names it.
    for i in 0..10 {
        let id = format!("t{i}");
        let mut t = d.tasks[&id].clone();
        t.desired_state = TaskState::Shutdown;
        t.status.state = TaskState::Shutdown;
        put(&mut d, &mut index, t);
        let inc = asg.touched(&d, "n1", &kek, [id.as_str()], false).unwrap();
        assert_eq!(inc.removed_files.len(), usize::from(i == 9));
        assert!(n1.apply(inc));
    }
    assert!(n1.files.is_empty() && n1.tasks.is_empty());
}

/// The per-network deltas: a node is sent a network again only when that network changed,
/// and a node that is not on a network is not sent its changes.
#[test]
fn network_deltas_go_to_the_nodes_that_need_them() {
    let mut d = data_with_networks();
    let mut ops = Vec::new();
    for (i, id) in ["n1", "n2", "n3"].into_iter().enumerate() {
        let mut n = node(id, id);
        n.state = NodeState::Ready;
        n.description.addr = format!("192.168.1.{}:4242", i + 1);
        ops.push(Op::Create(Object::Node(n)));
    }
    d.apply_txn(3, &Txn::new(ops)).unwrap();
    let web = service("web", &["net1"], vec![]);
    d.apply_txn(
        4,
        &Txn::new(vec![Op::Create(Object::Service(Box::new(web.clone())))]),
    )
    .unwrap();
    let mut index = 10;
    let t = task(&d, "t1", &web, "n1", TaskState::Running);
    put(&mut d, &mut index, t);
    let t = task(&d, "t2", &web, "n2", TaskState::Running);
    put(&mut d, &mut index, t);
    let mut cache = NetCache::default();
    let mut nets: BTreeMap<&str, (NodeNet, proto::convert::NetAssembler)> = BTreeMap::new();
    for n in ["n1", "n2", "n3"] {
        let mut s = NodeNet::default();
        let u = s.update(&d, &mut cache, Some(index), n).unwrap();
        assert!(u.full);
        let mut asm = proto::convert::NetAssembler::default();
        assert_eq!(asm.apply(u), node_net_state(&d, n));
        nets.insert(n, (s, asm));
    }
    // n3 has no task on net1: it holds only ingress.
    assert_eq!(nets["n3"].1.state().networks.len(), 1);
    // A new task on n2 changes net1 (and the service's backends): n1 and n2 hear of it, with
    // net1 only; n3 hears nothing of net1.
    let t = task(&d, "t3", &web, "n2", TaskState::Running);
    put(&mut d, &mut index, t);
    for n in ["n1", "n2", "n3"] {
        let (s, asm) = nets.get_mut(n).unwrap();
        let u = s.update(&d, &mut cache, Some(index), n);
        let ids: Vec<String> = u
            .as_ref()
            .map(|u| {
                u.networks
                    .iter()
                    .map(|x| x.id.clone())
                    .chain(u.peer_changes.iter().map(|x| x.network_id.clone()))
                    .collect()
            })
            .unwrap_or_default();
        match n {
            "n3" => assert!(!ids.contains(&"net1".to_string()), "{n}: {ids:?}"),
            _ => assert!(ids.contains(&"net1".to_string()), "{n}: {ids:?}"),
        }
        // Only what changed: the new endpoint, and the service's new backend.
        if let Some(u) = &u {
            assert!(u.networks.is_empty() && u.services.is_empty(), "{n}: {u:?}");
            for c in &u.peer_changes {
                assert_eq!((c.added.len(), c.removed.len()), (1, 0), "{n}: {c:?}");
            }
            for c in &u.backend_changes {
                assert_eq!((c.upsert.len(), c.removed.len()), (1, 0), "{n}: {c:?}");
            }
        }
        if let Some(u) = u {
            assert!(!u.full);
            asm.apply(u);
        }
        assert_eq!(asm.state(), node_net_state(&d, n), "{n}");
    }
    // Nothing changed: nothing sent.
    for n in ["n1", "n2", "n3"] {
        let (s, _) = nets.get_mut(n).unwrap();
        assert!(s.update(&d, &mut cache, Some(index + 1), n).is_none());
    }
    // n1's task ends: n1 leaves net1.
    let mut t1 = d.tasks["t1"].clone();
    t1.status.state = TaskState::Failed;
    put(&mut d, &mut index, t1);
    let (s, asm) = nets.get_mut("n1").unwrap();
    let u = s.update(&d, &mut cache, Some(index), "n1").unwrap();
    assert_eq!(u.removed_networks, vec!["net1".to_string()]);
    asm.apply(u);
    assert_eq!(asm.state(), node_net_state(&d, "n1"));
}

/// A node with thousands of tasks gets its full set in chained messages of about 1 MiB
/// (gRPC refuses messages over 4 MiB), and applying them in turn gives it the full set.
#[test]
fn a_large_full_set_goes_in_chained_messages() {
    let mut d = data_with_networks();
    d.apply_txn(
        3,
        &Txn::new(vec![Op::Create(Object::Node(node("n1", "h")))]),
    )
    .unwrap();
    let mut web = service("web", &[], vec![]);
    web.spec.task.env = (0..20)
        .map(|i| format!("VAR{i}={}", "v".repeat(100)))
        .collect();
    let kek = crate::keys::Kek::generate().unwrap();
    let mut index = 10;
    for i in 0..3_000 {
        let t = task(&d, &format!("t{i:05}"), &web, "n1", TaskState::Assigned);
        put(&mut d, &mut index, t);
    }
    let mut asg = NodeAssignments::default();
    let full = asg.full(&d, "n1", &kek);
    assert!(full.encoded_len() > 4 << 20, "{} bytes", full.encoded_len());
    let parts = asg.chunks(full);
    assert!(parts.len() >= 5, "{} parts", parts.len());
    assert!(parts[0].full && parts[1..].iter().all(|p| !p.full));
    // Every part but the last says more follow: the node applies them together.
    let (last, rest) = parts.split_last().unwrap();
    assert!(rest.iter().all(|p| p.more) && !last.more);
    for w in parts.windows(2) {
        assert_eq!(w[1].base_version, w[0].version);
    }
    assert_eq!(asg.version(), parts.last().unwrap().version);
    let mut n1 = Node::default();
    for p in parts {
        assert!(
            p.encoded_len() <= assignments::MESSAGE_BYTES + 4096,
            "{}",
            p.encoded_len()
        );
        assert!(n1.apply(p));
    }
    assert_eq!(n1.assignments(), assignments_for(&d, "n1", &kek));
    // The next increment follows on the last part.
    let mut t = d.tasks["t00000"].clone();
    t.desired_state = TaskState::Shutdown;
    put(&mut d, &mut index, t);
    let inc = asg.touched(&d, "n1", &kek, ["t00000"], false).unwrap();
    assert!(n1.apply(inc));
    assert_eq!(n1.assignments(), assignments_for(&d, "n1", &kek));
}

/// Refuses the writes it was given refusals for, in order, then applies writes at once.
#[derive(Default)]
pub(super) struct Refusing {
    refusals: Mutex<std::collections::VecDeque<crate::store::ProposeError>>,
    pub proposed: AtomicU64,
    inner: crate::store::DirectProposer,
}

impl Refusing {
    /// Makes `store` write through a new refusing proposer.
    pub fn install(store: &Store, refusals: Vec<crate::store::ProposeError>) -> Arc<Refusing> {
        let p = Arc::new(Refusing {
            refusals: Mutex::new(refusals.into()),
            ..Default::default()
        });
        store.set_proposer(p.clone());
        p
    }

    /// Refusals not yet given.
    pub fn left(&self) -> usize {
        self.refusals.lock().expect("refusals").len()
    }
}

impl crate::store::Proposer for Refusing {
    fn propose<'a>(&'a self, store: &'a Store, txn: Txn) -> crate::store::Proposal<'a> {
        self.proposed.fetch_add(1, Ordering::SeqCst);
        match self.refusals.lock().expect("refusals").pop_front() {
            Some(e) => Box::pin(std::future::ready(Err(e))),
            None => self.inner.propose(store, txn),
        }
    }
}

/// The status writer on a bare store: a node's reports for its own tasks are written, the
/// newest of each task's; reports for another node's task and backward moves are not; a
/// refused batch is written again.
#[tokio::test(start_paused = true)]
async fn the_status_writer_writes_forward_reports_of_a_nodes_own_tasks() {
    let store = Store::new();
    crate::store::DirectProposer::install(&store);
    let svc = service("web", &[], vec![]);
    let mut ops = vec![Op::Create(Object::Service(Box::new(svc.clone())))];
    for id in ["n1", "n2"] {
        let mut n = node(id, id);
        n.state = NodeState::Ready;
        ops.push(Op::Create(Object::Node(n)));
    }
    store.propose(Txn::new(ops)).await.expect("nodes");
    let tasks: Vec<Op> = store.view(|d| {
        [("t1", "n1"), ("t2", "n2"), ("t3", "n1")]
            .into_iter()
            .map(|(id, n)| Op::Create(Object::Task(task(d, id, &svc, n, TaskState::Assigned))))
            .collect()
    });
    store.propose(Txn::new(tasks)).await.expect("tasks");
    let report = |id: &str, state| proto::spec::StatusReport {
        task_id: id.into(),
        status: TaskStatus {
            state,
            ..Default::default()
        },
    };
    let state = |id: &str| store.view(|d| d.tasks[id].status.state);
    let p = Refusing::install(
        &store,
        vec![crate::store::ProposeError::Raft("no quorum".into())],
    );
    let writer = Arc::new(StatusWriter::new(store.clone()));
    let cancel = tokio_util::sync::CancellationToken::new();
    tokio::spawn(writer.clone().run(cancel.clone()));
    writer.queue(
        "n1",
        vec![
            report("t1", TaskState::Running),
            report("t2", TaskState::Running),
            report("t3", TaskState::Starting),
        ],
    );
    // An older report of t1 that arrives later does not replace its newest.
    writer.queue("n1", vec![report("t1", TaskState::Preparing)]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while state("t1") != TaskState::Running || state("t3") != TaskState::Starting {
        assert!(
            tokio::time::Instant::now() < deadline,
            "reports not written"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(p.left(), 0, "the first batch was refused");
    assert_eq!(p.proposed.load(Ordering::SeqCst), 2, "then written again");
    assert_eq!(
        state("t2"),
        TaskState::Assigned,
        "n2's task, reported by n1"
    );
    // A backward report is not written (the writer's filter, not the store's refusal).
    writer.queue("n1", vec![report("t1", TaskState::Starting)]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(state("t1"), TaskState::Running);
    assert_eq!(p.proposed.load(Ordering::SeqCst), 2);
    cancel.cancel();
}
