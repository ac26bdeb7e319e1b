use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;
use proto::security::Role;
use proto::spec::{TaskSpec, TaskState, TaskStatus};

use super::*;
use crate::store::{Availability, Node, NodeDescription, NodeState, Task};

const GIB: u64 = 1 << 30;

fn node(id: &str) -> Node {
    Node {
        ingress_addr: None,
        id: id.into(),
        version: 1,
        raft_id: 0,
        role: Role::Worker,
        desired_role: Role::Worker,
        availability: Availability::Active,
        labels: BTreeMap::new(),
        description: NodeDescription {
            hostname: format!("host-{id}"),
            ..Default::default()
        },
        state: NodeState::Ready,
        status_message: String::new(),
        created_at_ms: 0,
        updated_at_ms: 0,
        cert_not_after_ms: 0,
    }
}

fn labelled(id: &str, key: &str, value: &str) -> Node {
    let mut n = node(id);
    n.labels.insert(key.into(), value.into());
    n
}

fn task(id: &str, service: &str) -> Task {
    Task {
        networks: Vec::new(),
        awaiting_addresses: false,
        id: id.into(),
        version: 1,
        service_id: service.into(),
        service_name: service.into(),
        slot: 1,
        node_id: String::new(),
        spec: Arc::new(TaskSpec {
            image: "busybox".into(),
            ..Default::default()
        }),
        spec_version: 1,
        desired_state: TaskState::Running,
        status: TaskStatus::default(),
        created_at_ms: 0,
        restart_count: 0,
    }
}

/// `n` waiting tasks of `service`, ids `{service}-{i:05}`, with a spec adjusted by `f`.
fn tasks(service: &str, n: usize, f: impl Fn(&mut TaskSpec)) -> Vec<Task> {
    (0..n)
        .map(|i| {
            let mut t = task(&format!("{service}-{i:05}"), service);
            f(Arc::make_mut(&mut t.spec));
            t
        })
        .collect()
}

fn running_on(id: &str, service: &str, node: &str) -> Task {
    let mut t = task(id, service);
    t.node_id = node.into();
    t.status.state = TaskState::Running;
    t
}

fn store(nodes: Vec<Node>, tasks: Vec<Task>) -> StoreData {
    let mut data = StoreData::default();
    for n in nodes {
        data.nodes.insert(n.id.clone(), n);
    }
    for t in tasks {
        data.tasks.insert(t.id.clone(), t);
    }
    data.rebuild_indexes();
    data
}

/// Tasks assigned per node.
fn per_node(decisions: &[Decision]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for d in decisions {
        if let Decision::Assign { node_id, .. } = d {
            *m.entry(node_id.clone()).or_insert(0) += 1;
        }
    }
    m
}

fn pending_messages(decisions: &[Decision]) -> Vec<&str> {
    decisions
        .iter()
        .filter_map(|d| match d {
            Decision::Pending { message, .. } => Some(message.as_str()),
            _ => None,
        })
        .collect()
}

fn assigned_to<'a>(decisions: &'a [Decision], task_id: &str) -> Option<&'a str> {
    decisions.iter().find_map(|d| match d {
        Decision::Assign {
            task_id: t,
            node_id,
        } if t == task_id => Some(node_id.as_str()),
        _ => None,
    })
}

fn constrained(constraints: &[&str]) -> Vec<Decision> {
    let mut m = labelled("m", "zone", "a");
    m.role = Role::Manager;
    let w = labelled("w", "zone", "b");
    let plain = node("x");
    let owned: Vec<String> = constraints.iter().map(|c| c.to_string()).collect();
    let t = tasks("s", 1, |s| s.placement.constraints = owned.clone());
    plan(&store(vec![m, w, plain], t))
}

#[test]
fn spreads_replicas_evenly_over_nodes() {
    let data = store(vec![node("a"), node("b")], tasks("web", 12, |_| {}));
    let d = plan(&data);
    assert_eq!(d.len(), 12);
    assert_eq!(
        per_node(&d),
        BTreeMap::from([("a".into(), 6), ("b".into(), 6)])
    );
}

#[test]
fn balances_the_service_first_then_all_tasks() {
    // Both nodes hold one task of web; b is otherwise busier, so the new web task goes to a.
    let mut all = vec![
        running_on("web-old-1", "web", "a"),
        running_on("web-old-2", "web", "b"),
        running_on("db-1", "db", "b"),
        running_on("db-2", "db", "b"),
    ];
    all.push(task("web-new", "web"));
    let d = plan(&store(vec![node("a"), node("b")], all));
    assert_eq!(assigned_to(&d, "web-new"), Some("a"));

    // The service count wins over the overall count: a holds more web tasks than b.
    let all = vec![
        running_on("web-old-1", "web", "a"),
        running_on("db-1", "db", "b"),
        running_on("db-2", "db", "b"),
        task("web-new", "web"),
    ];
    let d = plan(&store(vec![node("a"), node("b")], all));
    assert_eq!(assigned_to(&d, "web-new"), Some("b"));
}

#[test]
fn finished_and_stopping_tasks_do_not_count() {
    let mut done = running_on("old-1", "web", "a");
    done.status.state = TaskState::Failed;
    let mut stopping = running_on("old-2", "web", "a");
    stopping.desired_state = TaskState::Shutdown;
    let busy = running_on("old-3", "web", "b");
    let d = plan(&store(
        vec![node("a"), node("b")],
        vec![done, stopping, busy, task("new", "web")],
    ));
    assert_eq!(assigned_to(&d, "new"), Some("a"));
}

#[test]
fn explains_why_no_node_fits() {
    let mut drained = node("a");
    drained.availability = Availability::Drain;
    let mut down = node("b");
    down.state = NodeState::Down;
    let mut small = node("c");
    small.description.memory_bytes = GIB;
    let t = tasks("s", 1, |s| s.resources.reserve_memory = 2 * GIB);
    let d = plan(&store(vec![drained, down, small], t));
    assert_eq!(
        pending_messages(&d),
        ["no suitable node (2 nodes not available for new tasks; 1 node lacks memory)"]
    );
}

#[test]
fn explains_an_empty_swarm() {
    let d = plan(&store(vec![], tasks("s", 2, |_| {})));
    assert_eq!(
        pending_messages(&d),
        ["no suitable node (no nodes in the swarm)"; 2]
    );
}

#[test]
fn counts_a_node_under_the_first_filter_it_fails() {
    // Paused and short of CPU: counted as not available only.
    let mut paused = node("a");
    paused.availability = Availability::Pause;
    paused.description.nano_cpus = 1;
    let mut small = node("b");
    small.description.nano_cpus = 1_000_000_000;
    let mut other = labelled("c", "zone", "b");
    other.description.nano_cpus = 1;
    let t = tasks("s", 1, |s| {
        s.resources.reserve_nano_cpus = 2_000_000_000;
        s.placement.constraints = vec!["node.labels.zone==a".into()];
    });
    let d = plan(&store(vec![paused, small, other], t));
    assert_eq!(
        pending_messages(&d),
        ["no suitable node (1 node not available for new tasks; 2 nodes lack CPU)"]
    );
}

#[test]
fn reservations_include_earlier_decisions_of_the_same_plan() {
    let mut a = node("a");
    a.description.memory_bytes = GIB + GIB / 2;
    let mut drained = node("b");
    drained.availability = Availability::Drain;
    let existing = {
        let mut t = running_on("old", "other", "a");
        Arc::make_mut(&mut t.spec).resources.reserve_memory = GIB / 2;
        t
    };
    let mut all = tasks("s", 3, |s| s.resources.reserve_memory = GIB / 2);
    all.push(existing);
    let d = plan(&store(vec![a, drained], all));
    assert_eq!(per_node(&d), BTreeMap::from([("a".into(), 2)]));
    assert_eq!(
        pending_messages(&d),
        ["no suitable node (1 node not available for new tasks; 1 node lacks memory)"]
    );
}

#[test]
fn unknown_capacity_is_unlimited() {
    let t = tasks("s", 4, |s| {
        s.resources.reserve_memory = 1000 * GIB;
        s.resources.reserve_nano_cpus = 1000 * 1_000_000_000;
    });
    let d = plan(&store(vec![node("a")], t));
    assert_eq!(per_node(&d), BTreeMap::from([("a".into(), 4)]));
}

#[test]
fn constraints_on_id_hostname_role_and_labels() {
    let only = |d: &[Decision]| per_node(d).into_keys().collect::<Vec<_>>();
    assert_eq!(only(&constrained(&["node.id==w"])), ["w"]);
    assert_eq!(only(&constrained(&["node.id != w", "node.id!=x"])), ["m"]);
    assert_eq!(only(&constrained(&["node.hostname==HOST-x"])), ["x"]);
    assert_eq!(
        only(&constrained(&[
            "node.hostname!=host-m",
            "node.hostname != host-x"
        ])),
        ["w"]
    );
    assert_eq!(only(&constrained(&["node.role==manager"])), ["m"]);
    assert_eq!(
        only(&constrained(&["node.role!=manager", "node.id!=w"])),
        ["x"]
    );
    assert_eq!(only(&constrained(&["node.labels.zone == b"])), ["w"]);
    // A node without the label passes `!=`.
    assert_eq!(
        only(&constrained(&["node.labels.zone!=a", "node.id!=w"])),
        ["x"]
    );
    assert_eq!(
        pending_messages(&constrained(&["node.labels.zone==c"])),
        ["no suitable node (3 nodes do not satisfy constraints)"]
    );
}

#[test]
fn an_invalid_constraint_refuses_every_node() {
    let d = constrained(&["node.role==worker", "node.zone==a"]);
    assert_eq!(
        pending_messages(&d),
        [
            "no suitable node (3 nodes have an invalid constraint (\"node.zone==a\": unknown key \
             \"node.zone\"; use node.id, node.hostname, node.role or node.labels.KEY))"
        ]
    );
}

#[test]
fn max_replicas_per_node() {
    let existing = running_on("old", "s", "a");
    let mut all = tasks("s", 4, |s| s.placement.max_replicas = 2);
    all.push(existing);
    let d = plan(&store(vec![node("a"), node("b")], all));
    assert_eq!(
        per_node(&d),
        BTreeMap::from([("a".into(), 1), ("b".into(), 2)])
    );
    assert_eq!(
        pending_messages(&d),
        ["no suitable node (2 nodes have the maximum number of replicas of the service)"]
    );
}

#[test]
fn spread_preference_balances_label_values_first() {
    let nodes = vec![
        labelled("a1", "zone", "a"),
        labelled("a2", "zone", "a"),
        labelled("a3", "zone", "a"),
        labelled("b1", "zone", "b"),
    ];
    let t = tasks("s", 4, |s| {
        s.placement.preferences = vec!["spread=node.labels.zone".into()]
    });
    let d = plan(&store(nodes, t));
    let by_node = per_node(&d);
    assert_eq!(by_node.get("b1"), Some(&2));
    assert_eq!(by_node.values().sum::<usize>(), 4);
    // Within zone a the two tasks go to different nodes.
    assert!(by_node.iter().all(|(n, c)| n == "b1" || *c == 1));
}

#[test]
fn nodes_without_the_label_form_their_own_group_and_preferences_nest() {
    let mut nodes = vec![
        labelled("a1", "zone", "a"),
        labelled("a2", "zone", "a"),
        labelled("b1", "zone", "b"),
        node("n1"),
    ];
    nodes[0].labels.insert("rack".into(), "1".into());
    nodes[1].labels.insert("rack".into(), "2".into());
    let t = tasks("s", 6, |s| {
        s.placement.preferences = vec![
            "spread=node.labels.zone".into(),
            "spread=node.labels.rack".into(),
        ]
    });
    let by_node = per_node(&plan(&store(nodes, t)));
    assert_eq!(
        by_node,
        BTreeMap::from([
            ("a1".into(), 1),
            ("a2".into(), 1),
            ("b1".into(), 2),
            ("n1".into(), 2)
        ])
    );
}

#[test]
fn spread_counts_tasks_already_running_in_each_zone() {
    let nodes = vec![labelled("a1", "zone", "a"), labelled("b1", "zone", "b")];
    let mut all = vec![
        running_on("old-1", "s", "a1"),
        running_on("old-2", "s", "a1"),
    ];
    all.extend(tasks("s", 2, |s| {
        s.placement.preferences = vec!["spread=node.labels.zone".into()]
    }));
    let d = plan(&store(nodes, all));
    assert_eq!(per_node(&d), BTreeMap::from([("b1".into(), 2)]));
}

#[test]
fn global_task_on_a_drained_node_stays_pending() {
    let mut drained = node("a");
    drained.availability = Availability::Drain;
    let mut bound = task("g-a", "g");
    bound.slot = 0;
    bound.node_id = "a".into();
    let mut ok = bound.clone();
    ok.id = "g-b".into();
    ok.node_id = "b".into();
    let data = store(vec![drained, node("b")], vec![bound, ok]);
    let d = plan(&data);
    let message = "no suitable node (1 node not available for new tasks)";
    assert_eq!(
        d,
        [
            Decision::Pending {
                task_id: "g-a".into(),
                message: message.into()
            },
            Decision::Assign {
                task_id: "g-b".into(),
                node_id: "b".into()
            },
        ]
    );

    // Once written, the same reason is not written again.
    let mut data = data;
    let waiting = data.tasks.get_mut("g-a").unwrap();
    waiting.status.state = TaskState::Pending;
    waiting.status.message = message.into();
    let d = plan(&data);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].task_id(), "g-b");
}

#[test]
fn bound_tasks_claim_their_node_before_free_ones() {
    let mut a = node("a");
    a.description.memory_bytes = GIB;
    // "free" sorts before "global": id order alone would hand it the node first.
    let mut all = tasks("free", 1, |s| s.resources.reserve_memory = GIB);
    let mut bound = task("global-a", "global");
    bound.node_id = "a".into();
    Arc::make_mut(&mut bound.spec).resources.reserve_memory = GIB;
    all.push(bound);
    let d = plan(&store(vec![a], all));
    assert_eq!(assigned_to(&d, "global-a"), Some("a"));
    assert_eq!(
        pending_messages(&d),
        ["no suitable node (1 node lacks memory)"]
    );
}

#[test]
fn tasks_past_pending_or_not_meant_to_run_are_left_alone() {
    let mut assigned = task("t1", "s");
    assigned.node_id = "a".into();
    assigned.status.state = TaskState::Assigned;
    let mut stopped = task("t2", "s");
    stopped.desired_state = TaskState::Shutdown;
    let d = plan(&store(vec![node("a")], vec![assigned, stopped]));
    assert!(d.is_empty());
}

#[test]
fn same_input_same_decisions() {
    let nodes: Vec<Node> = (0..7)
        .map(|i| labelled(&format!("n{i}"), "zone", ["a", "b", "c"][i % 3]))
        .collect();
    let mut all = tasks("s1", 40, |s| {
        s.placement.preferences = vec!["spread=node.labels.zone".into()]
    });
    all.extend(tasks("s2", 25, |s| s.placement.max_replicas = 3));
    let data = store(nodes, all);
    let first = plan(&data);
    assert_eq!(first, plan(&data.clone()));
    assert_eq!(first, plan(&data));
}

#[test]
fn groups_by_spec_but_balances_the_whole_service() {
    // Half the service on an old spec, half on a new one (a rolling update).
    let mut all = tasks("s", 4, |_| {});
    for t in &mut all[2..] {
        Arc::make_mut(&mut t.spec).image = "busybox:new".into();
    }
    let d = plan(&store(vec![node("a"), node("b")], all));
    assert_eq!(
        per_node(&d),
        BTreeMap::from([("a".into(), 2), ("b".into(), 2)])
    );
}

#[test]
fn places_ten_thousand_tasks_evenly() {
    let nodes: Vec<Node> = (0..100).map(|i| node(&format!("n{i:03}"))).collect();
    let mut all = tasks("s", 10_000, |_| {});
    // Some load elsewhere, so the overall tie-break has work to do.
    all.extend((0..150).map(|i| running_on(&format!("x{i}"), "x", &format!("n{:03}", i % 100))));
    let d = plan(&store(nodes, all));
    let by_node = per_node(&d);
    assert_eq!(by_node.len(), 100);
    assert_eq!(by_node.values().sum::<usize>(), 10_000);
    assert_eq!(by_node.values().min(), Some(&100));
    assert_eq!(by_node.values().max(), Some(&100));
}

#[test]
fn places_an_uneven_count_within_one() {
    let nodes: Vec<Node> = (0..7).map(|i| node(&format!("n{i}"))).collect();
    let by_node = per_node(&plan(&store(nodes, tasks("s", 1000, |_| {}))));
    let (min, max) = (by_node.values().min(), by_node.values().max());
    assert_eq!((min, max), (Some(&142), Some(&143)));
}

#[test]
fn decision_op_writes_only_what_still_applies() {
    let mut data = store(vec![node("a")], vec![task("t", "s")]);
    let assign = Decision::Assign {
        task_id: "t".into(),
        node_id: "a".into(),
    };
    // The status and the node only, applied as the task's placement.
    let Some(op @ Op::Place { version: 1, .. }) = decision_op(&data, &assign, 42) else {
        panic!("expected a placement");
    };
    let mut applied = data.clone();
    applied.apply_txn(2, &Txn::new(vec![op])).expect("applies");
    let t = &applied.tasks["t"];
    assert_eq!(t.node_id, "a");
    assert_eq!(t.status.state, TaskState::Assigned);
    assert_eq!(t.status.message, ASSIGNED_MESSAGE);
    assert_eq!(t.status.timestamp_ms, 42);
    assert_eq!(t.version, 2);

    let pending = Decision::Pending {
        task_id: "t".into(),
        message: "no suitable node (no nodes in the swarm)".into(),
    };
    let Some(Op::TaskStatus { status, .. }) = decision_op(&data, &pending, 43) else {
        panic!("expected a status");
    };
    assert_eq!(status.state, TaskState::Pending);

    data.tasks.get_mut("t").unwrap().desired_state = TaskState::Shutdown;
    assert_eq!(decision_op(&data, &assign, 44), None);
    data.tasks.clear();
    assert_eq!(decision_op(&data, &assign, 44), None);
}

fn arb_node(i: usize) -> impl Strategy<Value = Node> {
    (
        prop_oneof![
            Just(NodeState::Ready),
            Just(NodeState::Ready),
            Just(NodeState::Down)
        ],
        prop_oneof![
            Just(Availability::Active),
            Just(Availability::Active),
            Just(Availability::Drain)
        ],
        0usize..3,
    )
        .prop_map(move |(state, availability, zone)| {
            let mut n = labelled(&format!("n{i:02}"), "zone", ["a", "b", "c"][zone]);
            n.state = state;
            n.availability = availability;
            n
        })
}

proptest! {
    /// Tasks land only on nodes that pass every filter, evenly; otherwise every one waits.
    #[test]
    fn placements_respect_filters_and_balance(
        nodes in (1usize..12).prop_flat_map(|n| (0..n).map(arb_node).collect::<Vec<_>>()),
        count in 0usize..60,
        zone in prop_oneof![Just(None), Just(Some("a")), Just(Some("b"))],
    ) {
        let constraints: Vec<String> =
            zone.map(|z| format!("node.labels.zone=={z}")).into_iter().collect();
        let data = store(nodes, tasks("s", count, |s| s.placement.constraints = constraints.clone()));
        let d = plan(&data);
        prop_assert_eq!(d.len(), count);
        let fit: Vec<&Node> = data
            .nodes
            .values()
            .filter(|n| n.state == NodeState::Ready && n.availability == Availability::Active)
            .filter(|n| zone.is_none_or(|z| n.labels["zone"] == z))
            .collect();
        let by_node = per_node(&d);
        if fit.is_empty() {
            prop_assert_eq!(pending_messages(&d).len(), count);
        } else {
            prop_assert_eq!(by_node.values().sum::<usize>(), count);
            for id in by_node.keys() {
                prop_assert!(fit.iter().any(|n| &n.id == id));
            }
            let least = fit.iter().map(|n| by_node.get(&n.id).copied().unwrap_or(0)).min();
            let most = fit.iter().map(|n| by_node.get(&n.id).copied().unwrap_or(0)).max();
            prop_assert!(most.unwrap_or(0) - least.unwrap_or(0) <= 1);
        }
    }
}
