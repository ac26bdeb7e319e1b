//! Orchestration rounds on hand-made store states.

use std::collections::BTreeMap;

use proto::security::Role;
use proto::spec::{
    FailureAction, RestartCondition, ServiceMode, ServiceSpec, TaskSpec, TaskState, TaskStatus,
    UpdateConfig, UpdateOrder,
};

use super::plan;
use crate::store::{
    Availability, Node, NodeDescription, NodeState, Object, Op, Service, StoreData, Task,
    UpdateState, UpdateStatus,
};

fn node(id: &str) -> Node {
    Node {
        ingress_addr: None,
        id: id.into(),
        version: 1,
        raft_id: 1,
        role: Role::Worker,
        desired_role: Role::Worker,
        availability: Availability::Active,
        labels: BTreeMap::new(),
        description: NodeDescription {
            hostname: id.into(),
            ..Default::default()
        },
        state: NodeState::Ready,
        status_message: String::new(),
        created_at_ms: 0,
        updated_at_ms: 0,
        cert_not_after_ms: 0,
    }
}

fn service(replicas: u64, image: &str) -> Service {
    let mut task = TaskSpec {
        image: image.into(),
        ..Default::default()
    };
    task.restart.delay_ms = 1000;
    Service {
        endpoint: Default::default(),
        id: "svc".into(),
        version: 1,
        spec: ServiceSpec {
            name: "web".into(),
            labels: BTreeMap::new(),
            mode: ServiceMode::Replicated { replicas },
            task,
            update: UpdateConfig::default(),
            rollback: UpdateConfig::default(),
            endpoint: Default::default(),
        },
        spec_version: 1,
        previous_spec: None,
        update_status: None,
        created_at_ms: 0,
        updated_at_ms: 0,
    }
}

/// Apply a round's ops to the data (versions are not checked here).
fn apply(d: &mut StoreData, ops: Vec<Op>) {
    for op in ops {
        match op {
            Op::Create(Object::Task(t)) | Op::Update(Object::Task(t)) => {
                d.tasks.insert(t.id.clone(), t);
            }
            Op::CreateTask(t) => {
                let spec = std::sync::Arc::new(d.services[&t.service_id].spec.task.clone());
                d.tasks.insert(t.id.clone(), t.to_task(spec, 0));
            }
            Op::Update(Object::Service(s)) => {
                d.services.insert(s.id.clone(), *s);
            }
            Op::Delete { id, .. } => {
                d.tasks.remove(&id);
            }
            other => panic!("unexpected op {other:?}"),
        }
    }
    d.rebuild_indexes();
}

/// Play scheduler and workers: assign unplaced tasks round-robin, and bring every assigned
/// task that should run to RUNNING (or as `outcome` says for an image), stop those told to.
fn settle(d: &mut StoreData, now: i64, outcome: impl Fn(&Task) -> TaskState) {
    let nodes: Vec<String> = d
        .nodes
        .values()
        .filter(|n| n.state == NodeState::Ready && n.availability == Availability::Active)
        .map(|n| n.id.clone())
        .collect();
    let mut i = 0;
    for t in d.tasks.values_mut() {
        if t.desired_state == TaskState::Running && t.node_id.is_empty() && !nodes.is_empty() {
            t.node_id = nodes[i % nodes.len()].clone();
            i += 1;
        }
        let alive = d
            .nodes
            .get(&t.node_id)
            .is_some_and(|n| n.state == NodeState::Ready);
        if !alive {
            continue;
        }
        if t.desired_state == TaskState::Running && t.status.state < TaskState::Running {
            t.status = TaskStatus {
                state: outcome(t),
                timestamp_ms: now,
                ..Default::default()
            };
        } else if t.desired_state > TaskState::Running && !t.status.state.is_terminal() {
            t.status = TaskStatus {
                state: TaskState::Shutdown,
                timestamp_ms: now,
                ..Default::default()
            };
        }
    }
    d.rebuild_indexes();
}

fn running(d: &StoreData) -> Vec<&Task> {
    d.tasks
        .values()
        .filter(|t| t.desired_state == TaskState::Running && t.status.state == TaskState::Running)
        .collect()
}

fn setup(replicas: u64) -> StoreData {
    let mut d = StoreData::default();
    for n in ["n1", "n2", "n3"] {
        d.nodes.insert(n.into(), node(n));
    }
    let s = service(replicas, "img:1");
    d.services.insert(s.id.clone(), s);
    d
}

/// Begin a rolling update of "svc" at `now` to its spec changed by `change`.
fn start_update(d: &mut StoreData, now: i64, change: impl FnOnce(&mut ServiceSpec)) {
    let s = d.services.get_mut("svc").unwrap();
    s.previous_spec = Some(s.spec.clone());
    change(&mut s.spec);
    s.spec_version = 2;
    s.update_status = Some(UpdateStatus {
        state: UpdateState::Updating,
        started_ms: now,
        completed_ms: 0,
        message: String::new(),
    });
}

fn converge(
    d: &mut StoreData,
    now: &mut i64,
    rounds: usize,
    outcome: impl Fn(&Task) -> TaskState + Copy,
) {
    for _ in 0..rounds {
        let ops = plan(d, *now);
        apply(d, ops);
        settle(d, *now, outcome);
        *now += 500;
    }
}

#[test]
fn creates_scales_up_and_down_with_one_task_per_slot() {
    let mut d = setup(5);
    let mut now = 1_000;
    converge(&mut d, &mut now, 3, |_| TaskState::Running);
    assert_eq!(running(&d).len(), 5);
    let mut slots: Vec<u64> = running(&d).iter().map(|t| t.slot).collect();
    slots.sort();
    assert_eq!(slots, vec![1, 2, 3, 4, 5]);

    d.services.get_mut("svc").unwrap().spec.mode = ServiceMode::Replicated { replicas: 2 };
    converge(&mut d, &mut now, 3, |_| TaskState::Running);
    assert_eq!(running(&d).len(), 2);

    d.services.get_mut("svc").unwrap().spec.mode = ServiceMode::Replicated { replicas: 4 };
    converge(&mut d, &mut now, 3, |_| TaskState::Running);
    assert_eq!(running(&d).len(), 4);
    let mut slots: Vec<u64> = running(&d).iter().map(|t| t.slot).collect();
    slots.sort();
    slots.dedup();
    assert_eq!(slots.len(), 4, "one running task per slot");
}

#[test]
fn failed_tasks_restart_after_the_delay_up_to_max_attempts() {
    let mut d = setup(1);
    {
        let s = d.services.get_mut("svc").unwrap();
        s.spec.task.restart.condition = RestartCondition::OnFailure;
        s.spec.task.restart.max_attempts = 2;
    }
    let mut now = 1_000;
    // Every task fails as soon as it starts.
    converge(&mut d, &mut now, 20, |_| TaskState::Failed);
    let tasks: Vec<&Task> = d.tasks.values().collect();
    // The first attempt plus two restarts.
    assert_eq!(tasks.len(), 3, "{tasks:#?}");
    let mut created: Vec<i64> = tasks.iter().map(|t| t.created_at_ms).collect();
    created.sort();
    assert!(
        created[1] - created[0] >= 1000,
        "restart delay not honoured: {created:?}"
    );
}

#[test]
fn tasks_of_a_down_node_are_replaced_at_once() {
    let mut d = setup(3);
    let mut now = 1_000;
    converge(&mut d, &mut now, 2, |_| TaskState::Running);
    let victim = running(&d)[0].node_id.clone();
    d.nodes.get_mut(&victim).unwrap().state = NodeState::Down;
    converge(&mut d, &mut now, 2, |_| TaskState::Running);
    let live: Vec<&Task> = running(&d)
        .into_iter()
        .filter(|t| t.node_id != victim)
        .collect();
    assert_eq!(live.len(), 3);
}

#[test]
fn rolling_update_respects_parallelism_and_completes() {
    let mut d = setup(6);
    let mut now = 1_000;
    converge(&mut d, &mut now, 2, |_| TaskState::Running);
    start_update(&mut d, now, |spec| {
        spec.task.image = "img:2".into();
        spec.update.parallelism = 2;
        spec.update.monitor_ms = 0;
    });
    for _ in 0..40 {
        let ops = plan(&d, now);
        apply(&mut d, ops);
        // Slots being replaced: the new task is not running yet.
        let updating = d
            .tasks
            .values()
            .filter(|t| {
                t.spec.image == "img:2"
                    && t.desired_state == TaskState::Running
                    && t.status.state < TaskState::Running
            })
            .count();
        assert!(updating <= 2, "{updating} slots updating at once");
        settle(&mut d, now, |_| TaskState::Running);
        now += 500;
    }
    assert!(running(&d).iter().all(|t| t.spec.image == "img:2"));
    assert_eq!(running(&d).len(), 6);
    assert_eq!(
        d.services["svc"].update_status.as_ref().unwrap().state,
        UpdateState::Completed
    );
}

#[test]
fn stop_first_update_starts_the_new_task_only_once_the_old_one_stopped() {
    let mut d = setup(1);
    let mut now = 1_000;
    converge(&mut d, &mut now, 2, |_| TaskState::Running);
    let old_id = running(&d)[0].id.clone();
    start_update(&mut d, now, |spec| {
        spec.task.image = "img:2".into();
        spec.update.order = UpdateOrder::StopFirst;
    });
    // The old task takes its time to stop (a stop grace period): the new one is placed but
    // held at READY meanwhile.
    for _ in 0..4 {
        let ops = plan(&d, now);
        apply(&mut d, ops);
        let new: Vec<&Task> = d
            .tasks
            .values()
            .filter(|t| t.spec.image == "img:2")
            .collect();
        assert_eq!(new.len(), 1);
        assert_eq!(new[0].desired_state, TaskState::Ready);
        assert_eq!(d.tasks[&old_id].desired_state, TaskState::Shutdown);
        assert_eq!(d.tasks[&old_id].status.state, TaskState::Running);
        now += 500;
    }
    d.tasks.get_mut(&old_id).unwrap().status = TaskStatus {
        state: TaskState::Shutdown,
        timestamp_ms: now,
        ..Default::default()
    };
    d.rebuild_indexes();
    converge(&mut d, &mut now, 4, |_| TaskState::Running);
    let run = running(&d);
    assert_eq!(run.len(), 1);
    assert_eq!(run[0].spec.image, "img:2");
}

#[test]
fn failing_update_rolls_back_automatically() {
    let mut d = setup(4);
    let mut now = 1_000;
    converge(&mut d, &mut now, 2, |_| TaskState::Running);
    start_update(&mut d, now, |spec| {
        spec.task.image = "broken".into();
        spec.update.failure_action = FailureAction::Rollback;
        spec.update.monitor_ms = 0;
        spec.rollback.monitor_ms = 0;
        spec.task.restart.condition = RestartCondition::None;
    });
    converge(&mut d, &mut now, 30, |t| {
        if t.spec.image == "broken" {
            TaskState::Failed
        } else {
            TaskState::Running
        }
    });
    let s = &d.services["svc"];
    assert_eq!(s.spec.task.image, "img:1");
    assert_eq!(
        s.update_status.as_ref().unwrap().state,
        UpdateState::RollbackCompleted
    );
    assert_eq!(running(&d).len(), 4);
    assert!(running(&d).iter().all(|t| t.spec.image == "img:1"));
}

#[test]
fn history_is_bounded_per_slot() {
    let mut d = setup(1);
    d.services
        .get_mut("svc")
        .unwrap()
        .spec
        .task
        .restart
        .delay_ms = 0;
    let mut now = 1_000;
    converge(&mut d, &mut now, 30, |_| TaskState::Failed);
    let ended = d
        .tasks
        .values()
        .filter(|t| t.status.state.is_terminal())
        .count();
    // The limit, plus the task that failed in the last round and the one shut down in it
    // (the reaper sees them from the next round on).
    assert!(
        ended <= super::reaper::TASK_HISTORY_LIMIT + 2,
        "{ended} ended tasks kept"
    );
}

#[test]
fn rebalances_onto_a_new_node_only_when_enabled() {
    let mut d = setup(8);
    d.nodes.remove("n3");
    d.rebuild_indexes();
    let mut now = 1_000;
    converge(&mut d, &mut now, 3, |_| TaskState::Running);
    d.nodes.insert("n3".into(), node("n3"));
    converge(&mut d, &mut now, 5, |_| TaskState::Running);
    let on_n3 = running(&d).iter().filter(|t| t.node_id == "n3").count();
    assert_eq!(on_n3, 0, "moved without the setting");

    let mut cluster = cluster_with(Default::default());
    cluster.rebalance_on_join = true;
    cluster.version = 2;
    d.cluster = Some(cluster);
    d.services.get_mut("svc").unwrap().spec.update.parallelism = 1;
    // The test scheduler places unplaced tasks round-robin; steer them to the empty node.
    for _ in 0..20 {
        let ops = plan(&d, now);
        apply(&mut d, ops);
        for t in d.tasks.values_mut() {
            if t.node_id.is_empty() && t.desired_state == TaskState::Running {
                t.node_id = "n3".into();
            }
        }
        settle(&mut d, now, |_| TaskState::Running);
        now += 500;
    }
    let mut per: BTreeMap<String, usize> = BTreeMap::new();
    for t in running(&d) {
        *per.entry(t.node_id.clone()).or_default() += 1;
    }
    assert_eq!(running(&d).len(), 8);
    let (lo, hi) = (
        per.values().min().copied().unwrap(),
        per.values().max().copied().unwrap(),
    );
    assert!(per.len() == 3 && hi - lo <= 1, "{per:?}");
}

#[test]
fn new_tasks_get_distinct_addresses_and_nodes_ingress_addresses() {
    // Ids are random, and so are the addresses they seed: many rounds make a clash between
    // a new task's and a new node's ingress address (one transaction) show up if possible.
    for _ in 0..100 {
        tasks_and_nodes_allocated_together();
    }
}

fn tasks_and_nodes_allocated_together() {
    use crate::allocator::tests::{data_with_networks, port, service as net_service};
    use crate::store::Txn;
    let mut d = data_with_networks();
    let mut s = net_service("svc", &["net1"], vec![port(8080, 80)]);
    s.spec.mode = ServiceMode::Replicated { replicas: 5 };
    s.endpoint =
        crate::allocator::allocate_endpoint(&d, "svc", &s.spec, &Default::default()).unwrap();
    d.apply_txn(
        3,
        &Txn::new(vec![
            Op::Create(Object::Service(Box::new(s))),
            Op::Create(Object::Node(node("n1"))),
            Op::Create(Object::Node(node("n2"))),
        ]),
    )
    .unwrap();
    let ops = plan(&d, 0);
    d.apply_txn(4, &Txn::new(ops)).unwrap();
    assert_eq!(d.tasks.len(), 5);
    let mut seen = std::collections::BTreeSet::new();
    for t in d.tasks.values() {
        assert_eq!(t.networks.len(), 2);
        assert!(t.networks[0].ingress);
        assert_eq!(t.networks[1].network_id, "net1");
        for n in &t.networks {
            assert!(seen.insert((n.network_id.clone(), n.addr)));
        }
    }
    assert!(d.nodes.values().all(|n| n.ingress_addr.is_some()));
    // Nothing more to allocate.
    assert!(plan(&d, 0).iter().all(|op| !matches!(
        op,
        Op::Create(_) | Op::CreateTask(_) | Op::Update(Object::Node(_))
    )));
}

#[test]
fn tasks_wait_pending_for_a_free_address_then_take_one() {
    use crate::allocator::tests::{data_with_networks, service as net_service};
    use crate::allocator::{allocate_endpoint, new_network};
    use crate::scheduler::needs_scheduling;
    use crate::store::default_addr_pool;
    use crate::store::{Kind, Txn};
    let mut d = data_with_networks();
    // A /29: gateway .1, then five host addresses; the service's VIP takes one.
    let spec = proto::spec::NetworkSpec {
        name: "small".into(),
        driver: "overlay".into(),
        subnet: "10.9.9.0/29".into(),
        ..Default::default()
    };
    let n = new_network(&d, &spec, &default_addr_pool(), 24, "small1".into(), 0).unwrap();
    let mut s = net_service("svc", &["small1"], vec![]);
    s.spec.mode = ServiceMode::Replicated { replicas: 6 };
    d.apply_txn(3, &Txn::new(vec![Op::Create(Object::Network(n))]))
        .unwrap();
    s.endpoint = allocate_endpoint(&d, "svc", &s.spec, &Default::default()).unwrap();
    d.apply_txn(
        4,
        &Txn::new(vec![
            Op::Create(Object::Service(Box::new(s))),
            Op::Create(Object::Node(node("n1"))),
        ]),
    )
    .unwrap();
    d.apply_txn(5, &Txn::new(plan(&d, 0))).unwrap();
    let (placed, waiting): (Vec<&Task>, Vec<&Task>) =
        d.tasks.values().partition(|t| !t.awaiting_addresses);
    assert_eq!((placed.len(), waiting.len()), (4, 2));
    for t in &waiting {
        assert!(t.networks.is_empty());
        assert_eq!(t.status.state, TaskState::Pending);
        assert_eq!(
            t.status.message,
            "network small has no free address left; remove tasks or services from it"
        );
        assert!(
            !needs_scheduling(t),
            "a task without its addresses is not placed"
        );
    }
    for t in &placed {
        assert_eq!(t.networks.len(), 1);
        assert!(needs_scheduling(t));
    }
    // Another round changes nothing while the network is full.
    assert!(plan(&d, 500).is_empty());

    // A task goes away: its address goes to a waiting task (in the same round, the slot it
    // leaves gets a new task, which waits in its turn).
    let gone = placed[0].id.clone();
    let was_waiting: Vec<String> = waiting.iter().map(|t| t.id.clone()).collect();
    d.apply_txn(
        6,
        &Txn::new(vec![Op::Delete {
            kind: Kind::Task,
            id: gone,
        }]),
    )
    .unwrap();
    d.apply_txn(7, &Txn::new(plan(&d, 1000))).unwrap();
    let now_placed: Vec<&Task> = d
        .tasks
        .values()
        .filter(|t| was_waiting.contains(&t.id) && !t.awaiting_addresses)
        .collect();
    assert_eq!(now_placed.len(), 1);
    assert_eq!(now_placed[0].status.state, TaskState::Pending);
    assert_eq!(now_placed[0].status.message, super::ALLOCATED_MESSAGE);
    assert_eq!(now_placed[0].networks.len(), 1);
    assert!(needs_scheduling(now_placed[0]));
    assert_eq!(d.tasks.len(), 6);
    assert_eq!(d.tasks.values().filter(|t| t.awaiting_addresses).count(), 2);
}

fn cluster_with(limits: crate::store::ClusterLimits) -> crate::store::Cluster {
    crate::store::Cluster {
        default_addr_pool: crate::store::default_addr_pool(),
        default_addr_pool_mask_len: 24,
        limits,
        id: "c".into(),
        version: 1,
        created_at_ms: 0,
        root_ca: proto::security::RootCa {
            cert_pem: String::new(),
            key_pem: String::new(),
        },
        worker_token: String::new(),
        manager_token: String::new(),
        heartbeat_period_ms: 5000,
        cert_expiry_ms: 1,
        removed_nodes: Default::default(),
        rebalance_on_join: false,
        unlock_key: None,
    }
}

#[test]
fn a_large_service_is_created_in_bounded_rounds() {
    let total = super::MAX_CREATES_PER_ROUND * 5 / 2;
    let mut d = setup(total as u64);
    let mut now = 1_000;
    let mut rounds = 0;
    while d.tasks.len() < total {
        let ops = plan(&d, now);
        let creates = ops
            .iter()
            .filter(|o| matches!(o, Op::CreateTask(_)))
            .count();
        assert!(
            creates <= super::MAX_CREATES_PER_ROUND,
            "{creates} tasks in one round"
        );
        apply(&mut d, ops);
        settle(&mut d, now, |_| TaskState::Running);
        now += 500;
        rounds += 1;
        assert!(rounds <= 3, "not converging");
    }
    assert_eq!(rounds, 3);
    assert_eq!(running(&d).len(), total);
}

#[test]
fn no_task_is_created_beyond_the_cluster_limits() {
    // A service stored before the limits were lowered: it gets no more than they allow.
    let mut d = setup(1_000_000_000);
    d.cluster = Some(cluster_with(crate::store::ClusterLimits {
        max_replicas: 50,
        max_tasks: 1_000,
    }));
    let mut now = 1_000;
    converge(&mut d, &mut now, 3, |_| TaskState::Running);
    assert_eq!(running(&d).len(), 50);
    // Lowering the limit below what runs keeps the tasks, and adds none.
    d.cluster.as_mut().unwrap().limits.max_replicas = 10;
    converge(&mut d, &mut now, 3, |_| TaskState::Running);
    assert_eq!(running(&d).len(), 50);
    // The cluster-wide limit holds across services.
    let mut other = service(40, "img:1");
    other.id = "svc2".into();
    other.spec.name = "other".into();
    d.services.insert(other.id.clone(), other);
    d.cluster.as_mut().unwrap().limits = crate::store::ClusterLimits {
        max_replicas: 100,
        max_tasks: 60,
    };
    converge(&mut d, &mut now, 3, |_| TaskState::Running);
    assert_eq!(running(&d).len(), 60);
}

#[test]
fn a_near_max_restart_delay_does_not_panic_the_orchestrator() {
    let mut d = setup(2);
    {
        let s = d.services.get_mut("svc").unwrap();
        s.spec.task.restart.delay_ms = i64::MAX as u64;
        s.spec.task.restart.window_ms = u64::MAX;
        s.spec.update.monitor_ms = u64::MAX;
        s.spec.update.delay_ms = u64::MAX;
        s.spec.update.task_deadline_ms = u64::MAX;
        s.spec.task.stop_grace_period_ms = u64::MAX;
    }
    let mut now = 1_000;
    converge(&mut d, &mut now, 2, |_| TaskState::Running);
    // Tasks fail: their restarts wait (for ever) instead of overflowing.
    converge(&mut d, &mut now, 1, |_| TaskState::Failed);
    for t in d.tasks.values_mut() {
        t.status.state = TaskState::Failed;
        t.status.timestamp_ms = now;
    }
    d.rebuild_indexes();
    converge(&mut d, &mut now, 3, |_| TaskState::Running);
    assert!(running(&d).is_empty(), "restarted before its delay");
    // A rolling update with near-max monitor, delay and deadline goes through its rounds.
    start_update(&mut d, now, |s| s.task.image = "img:2".into());
    converge(&mut d, &mut now, 5, |_| TaskState::Running);
}

#[test]
fn the_tasks_of_a_removed_service_are_told_to_go() {
    let mut d = setup(300);
    let mut now = 1_000;
    converge(&mut d, &mut now, 2, |_| TaskState::Running);
    assert_eq!(running(&d).len(), 300);
    // `service rm` marked only the first batch.
    d.services.clear();
    for t in d.tasks.values_mut().take(199) {
        t.desired_state = TaskState::Remove;
    }
    d.rebuild_indexes();
    let ops = plan(&d, now);
    apply(&mut d, ops);
    assert!(d
        .tasks
        .values()
        .all(|t| t.desired_state == TaskState::Remove));
}

#[test]
fn a_round_plans_only_the_services_that_changed() {
    let mut d = setup(2);
    let mut other = service(2, "img:1");
    other.id = "other".into();
    other.spec.name = "other".into();
    d.services.insert(other.id.clone(), other);
    d.rebuild_indexes();

    let mut dirty = super::Dirty::default();
    assert!(dirty.is_empty());
    dirty.service("svc");
    let round = super::plan_dirty(&d, 1_000, &dirty);
    let touched: std::collections::BTreeSet<String> = round
        .ops
        .iter()
        .filter_map(|op| match op {
            Op::CreateTask(t) => Some(t.service_id.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(touched, ["svc".to_string()].into());

    // A changed node concerns the services with tasks on it.
    apply(&mut d, round.ops);
    settle(&mut d, 1_000, |_| TaskState::Running);
    let on_n1 = d
        .tasks
        .values()
        .find(|t| t.node_id == "n1")
        .unwrap()
        .clone();
    d.nodes.get_mut("n1").unwrap().state = NodeState::Down;
    let mut dirty = super::Dirty::default();
    dirty.note(&crate::store::Change::Put(Object::Node(
        d.nodes["n1"].clone(),
    )));
    let round = super::plan_dirty(&d, 2_000, &dirty);
    assert!(
        round.ops.iter().any(|op| matches!(op,
            Op::Update(Object::Task(t)) if t.id == on_n1.id && t.desired_state == TaskState::Shutdown)),
        "{:?}",
        round.ops
    );
    // Anything else (a network, the cluster) concerns every service.
    let mut dirty = super::Dirty::default();
    dirty.note(&crate::store::Change::Deleted {
        kind: crate::store::Kind::Network,
        id: "n".into(),
    });
    assert_eq!(dirty, super::Dirty::all());
}

#[test]
fn a_restart_delay_asks_for_a_round_when_it_ends() {
    let mut d = setup(1);
    d.rebuild_indexes();
    let mut now = 1_000;
    // The task fails at 1 s; the round at 1.5 s must not replace it yet (the delay is 1 s)
    // but ask to plan the service again at 2 s.
    converge(&mut d, &mut now, 1, |_| TaskState::Failed);
    let round = super::plan_dirty(&d, now, &super::Dirty::all());
    assert!(
        !round.ops.iter().any(|op| matches!(op, Op::CreateTask(_))),
        "{:?}",
        round.ops
    );
    assert_eq!(round.wakes.get("svc"), Some(&2_000));
}

/// The orchestrator and the scheduler as the leader runs them, on a bare store that writes
/// through [`crate::store::DirectProposer`] and tokio's paused clock: no raft, no manager.
#[tokio::test(start_paused = true)]
async fn components_run_on_a_store_and_a_clock() {
    let store = crate::store::Store::new();
    crate::store::DirectProposer::install(&store);
    let clock = crate::clock::TokioClock::shared(1_700_000_000_000);
    let mut ops = vec![Op::Create(Object::Service(Box::new(service(3, "img:1"))))];
    for n in ["n1", "n2"] {
        ops.push(Op::Create(Object::Node(node(n))));
    }
    store
        .propose(crate::store::Txn::new(ops))
        .await
        .expect("setup");
    let cancel = tokio_util::sync::CancellationToken::new();
    let o =
        tokio::spawn(super::Orchestrator::new(store.clone(), clock.clone()).run(cancel.clone()));
    let s = tokio::spawn(
        crate::scheduler::Scheduler::new(store.clone(), clock.clone()).run(cancel.clone()),
    );
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let assigned = store.view(|d| {
            d.tasks
                .values()
                .filter(|t| t.status.state == TaskState::Assigned && !t.node_id.is_empty())
                .count()
        });
        if assigned == 3 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{assigned} of 3 assigned"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let created = store.view(|d| d.tasks.values().map(|t| t.created_at_ms).min());
    assert!(
        created.is_some_and(|ms| ms >= 1_700_000_000_000),
        "{created:?}"
    );
    cancel.cancel();
    o.await.unwrap();
    s.await.unwrap();
}

/// Progress of a task (placed, starting, running) is not a decision for the orchestrator:
/// a service of 100,000 tasks is not planned again on each of their status reports. An end,
/// or a stop the orchestrator asked for, is.
#[test]
fn only_ends_and_stops_of_tasks_make_their_service_worth_planning() {
    let mut d = setup(3);
    let mut now = 1_000;
    converge(&mut d, &mut now, 1, |_| TaskState::Running);
    d.rebuild_indexes();
    let mut t = d.tasks.values().next().unwrap().clone();
    let put = |t: &Task| crate::store::Change::Put(Object::Task(t.clone()));

    let mut dirty = super::Dirty::default();
    for state in [TaskState::Assigned, TaskState::Starting, TaskState::Running] {
        t.status.state = state;
        dirty.note(&put(&t));
    }
    assert!(!dirty.is_empty(), "noted, to be planned when it matters");
    assert!(
        super::plan_dirty(&d, now, &dirty).ops.is_empty(),
        "a running service planned for its tasks' progress"
    );
    // Nothing is planned for it: the round reads no task of the service.
    assert!(dirty.resolve(&d).is_empty());

    // The same progress during a rolling update matters: the update waits for it.
    start_update(&mut d, now, |s| s.task.image = "img:2".into());
    assert_eq!(dirty.resolve(&d), ["svc".to_string()].into());

    let mut dirty = super::Dirty::default();
    t.status.state = TaskState::Failed;
    dirty.note(&put(&t));
    assert_eq!(dirty.resolve(&d), ["svc".to_string()].into());
    let mut dirty = super::Dirty::default();
    t.status.state = TaskState::Running;
    t.desired_state = TaskState::Shutdown;
    dirty.note(&put(&t));
    assert_eq!(dirty.resolve(&d), ["svc".to_string()].into());
}

/// A round that stops at its budget of new tasks asks for the next one itself (the tasks it
/// created are only progress, which no longer wakes the orchestrator).
#[test]
fn a_round_cut_at_its_budget_asks_for_the_next() {
    let replicas = super::MAX_CREATES_PER_ROUND as u64 + 10;
    let d = setup(replicas);
    let round = super::plan_dirty(&d, 1_000, &super::Dirty::all());
    assert_eq!(round.more, ["svc".to_string()].into());
    let mut d = d;
    apply(&mut d, round.ops);
    d.rebuild_indexes();
    let round = super::plan_dirty(&d, 1_500, &super::Dirty::all());
    assert_eq!(
        round
            .ops
            .iter()
            .filter(|o| matches!(o, Op::CreateTask(_)))
            .count(),
        10
    );
    assert!(round.more.is_empty());
}

/// A rolling update completes when its last new task has run for the monitor period: the
/// round before asks for a round at that moment (not at the next tick), which completes it.
#[test]
fn an_update_asks_for_a_round_when_its_monitor_period_ends() {
    let mut d = setup(2);
    let mut now = 1_000;
    converge(&mut d, &mut now, 2, |_| TaskState::Running);
    start_update(&mut d, now, |spec| {
        spec.task.image = "img:2".into();
        spec.update.parallelism = 0;
        spec.update.monitor_ms = 5_000;
    });
    converge(&mut d, &mut now, 6, |_| TaskState::Running);
    let new: Vec<&Task> = running(&d)
        .into_iter()
        .filter(|t| t.spec.image == "img:2")
        .collect();
    assert_eq!(new.len(), 2, "every slot updated");
    let last = new.iter().map(|t| t.status.timestamp_ms).max().unwrap();
    assert!(now < last + 5_000, "still in the monitor period");
    let round = super::plan_dirty(&d, now, &super::Dirty::all());
    assert!(round.ops.is_empty(), "nothing to do yet: {:?}", round.ops);
    assert_eq!(round.wakes.get("svc"), Some(&(last + 5_000)));
    let round = super::plan_dirty(&d, last + 4_999, &super::Dirty::all());
    assert!(round.ops.is_empty(), "not completed early: {:?}", round.ops);
    let ops = super::plan_dirty(&d, last + 5_000, &super::Dirty::all()).ops;
    apply(&mut d, ops);
    let status = d.services["svc"].update_status.clone().unwrap();
    assert_eq!(status.state, UpdateState::Completed);
    assert_eq!(status.completed_ms, last + 5_000);
}

#[test]
fn bringing_up_a_large_service_reads_it_a_bounded_number_of_times() {
    assert_eq!(super::creates_per_round(0), super::MAX_CREATES_PER_ROUND);
    assert_eq!(super::creates_per_round(1_000_000), 250_000);
    // Each round reads the whole service and creates its budget: from nothing to a million
    // tasks the reads add up to a few times the million, not hundreds of times.
    let target = 1_000_000usize;
    let (mut tasks, mut rounds, mut read) = (0usize, 0usize, 0usize);
    while tasks < target {
        read += tasks;
        tasks += super::creates_per_round(tasks).min(target - tasks);
        rounds += 1;
    }
    assert!(rounds <= 30, "{rounds} rounds");
    assert!(read <= 5 * target, "{read} tasks read");
}
