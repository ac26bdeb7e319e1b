use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::api::*;
use crate::convert::tests::{
    port_config, s, state, status, strings, task_network, task_spec, wire,
};
use crate::spec::*;

fn labels() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map(s(), s(), 0..3)
}

fn mode() -> impl Strategy<Value = ServiceMode> {
    prop_oneof![
        any::<u64>().prop_map(|replicas| ServiceMode::Replicated { replicas }),
        Just(ServiceMode::Global),
        any::<(u64, u64)>().prop_map(|(max_concurrent, total_completions)| {
            ServiceMode::ReplicatedJob {
                max_concurrent,
                total_completions,
            }
        }),
        Just(ServiceMode::GlobalJob),
    ]
}

fn update_config() -> impl Strategy<Value = UpdateConfig> {
    (
        any::<[u64; 4]>(),
        prop::sample::select(vec![
            FailureAction::Pause,
            FailureAction::Continue,
            FailureAction::Rollback,
        ]),
        -1e9..1e9f64,
        prop::sample::select(vec![UpdateOrder::StopFirst, UpdateOrder::StartFirst]),
    )
        .prop_map(
            |(
                [parallelism, delay_ms, monitor_ms, task_deadline_ms],
                failure_action,
                ratio,
                order,
            )| {
                UpdateConfig {
                    parallelism,
                    delay_ms,
                    failure_action,
                    monitor_ms,
                    max_failure_ratio: ratio,
                    order,
                    task_deadline_ms,
                }
            },
        )
}

fn endpoint_spec() -> impl Strategy<Value = EndpointSpec> {
    (
        prop::sample::select(vec![EndpointMode::Vip, EndpointMode::Dnsrr]),
        prop::collection::vec(port_config(), 0..3),
    )
        .prop_map(|(mode, ports)| EndpointSpec { mode, ports })
}

fn service_spec() -> impl Strategy<Value = ServiceSpec> {
    (
        s(),
        labels(),
        mode(),
        task_spec(),
        update_config(),
        update_config(),
        endpoint_spec(),
    )
        .prop_map(
            |(name, labels, mode, task, update, rollback, endpoint)| ServiceSpec {
                name,
                labels,
                mode,
                task,
                update,
                rollback,
                endpoint,
            },
        )
}

fn service_view() -> impl Strategy<Value = ServiceView> {
    let update_status =
        (s(), any::<(i64, i64)>(), s()).prop_map(|(state, (started_ms, completed_ms), message)| {
            UpdateStatusView {
                state,
                started_ms,
                completed_ms,
                message,
            }
        });
    let endpoint = (
        prop::collection::vec(
            (s(), s()).prop_map(|(network_id, addr)| VirtualIpView { network_id, addr }),
            0..3,
        ),
        prop::collection::vec(port_config(), 0..3),
    )
        .prop_map(|(virtual_ips, ports)| EndpointView { virtual_ips, ports });
    (
        (s(), any::<(u64, u64)>()),
        service_spec(),
        prop::option::of(service_spec()),
        prop::option::of(update_status),
        any::<(i64, i64)>(),
        any::<[u64; 3]>(),
        endpoint,
    )
        .prop_map(
            |(
                (id, (version, spec_version)),
                spec,
                previous_spec,
                update_status,
                (created_at_ms, updated_at_ms),
                [running, desired, completed],
                endpoint,
            )| ServiceView {
                id,
                version,
                spec,
                spec_version,
                previous_spec,
                update_status,
                created_at_ms,
                updated_at_ms,
                running,
                desired,
                completed,
                endpoint,
            },
        )
}

fn task_view() -> impl Strategy<Value = TaskView> {
    (
        (s(), s(), s(), any::<u64>(), s(), s()),
        task_spec(),
        any::<u64>(),
        state(),
        status(),
        any::<i64>(),
        prop::collection::vec(task_network(), 0..3),
    )
        .prop_map(
            |(
                (id, service_id, service_name, slot, node_id, node_hostname),
                spec,
                spec_version,
                desired_state,
                status,
                created_at_ms,
                networks,
            )| TaskView {
                id,
                service_id,
                service_name,
                slot,
                node_id,
                node_hostname,
                spec,
                spec_version,
                desired_state,
                status,
                created_at_ms,
                networks,
            },
        )
}

fn network_spec() -> impl Strategy<Value = NetworkSpec> {
    ((s(), s(), s(), s()), any::<[bool; 3]>(), labels()).prop_map(
        |((name, driver, subnet, gateway), [attachable, internal, ingress], labels)| NetworkSpec {
            name,
            driver,
            subnet,
            gateway,
            attachable,
            internal,
            ingress,
            labels,
        },
    )
}

fn network_view() -> impl Strategy<Value = NetworkView> {
    (
        (s(), any::<u64>()),
        network_spec(),
        (any::<u32>(), s(), s()),
        any::<(i64, i64)>(),
        strings(),
    )
        .prop_map(
            |(
                (id, version),
                spec,
                (vni, subnet, gateway),
                (created_at_ms, updated_at_ms),
                services,
            )| NetworkView {
                id,
                version,
                spec,
                vni,
                subnet,
                gateway,
                created_at_ms,
                updated_at_ms,
                services,
            },
        )
}

proptest! {
    #[test]
    fn service_specs_round_trip(spec in service_spec()) {
        prop_assert_eq!(ServiceSpec::try_from(wire(pb::ServiceSpec::from(&spec))), Ok(spec));
    }

    #[test]
    fn service_modes_round_trip(m in mode()) {
        prop_assert_eq!(ServiceMode::try_from(wire(pb::ServiceMode::from(&m))), Ok(m));
    }

    #[test]
    fn update_configs_round_trip(u in update_config()) {
        prop_assert_eq!(UpdateConfig::from(wire(pb::UpdateConfig::from(&u))), u);
    }

    #[test]
    fn endpoint_specs_round_trip(e in endpoint_spec()) {
        prop_assert_eq!(EndpointSpec::try_from(wire(pb::EndpointSpec::from(&e))), Ok(e));
    }

    #[test]
    fn service_views_round_trip(v in service_view()) {
        prop_assert_eq!(ServiceView::try_from(wire(pb::ServiceView::from(&v))), Ok(v));
    }

    #[test]
    fn task_views_round_trip(t in task_view()) {
        prop_assert_eq!(TaskView::try_from(wire(pb::TaskView::from(&t))), Ok(t));
    }

    #[test]
    fn network_specs_round_trip(n in network_spec()) {
        prop_assert_eq!(NetworkSpec::from(wire(pb::NetworkSpec::from(&n))), n);
    }

    #[test]
    fn network_views_round_trip(n in network_view()) {
        prop_assert_eq!(NetworkView::try_from(wire(pb::NetworkView::from(&n))), Ok(n));
    }

    #[test]
    fn roles_round_trip(manager in any::<bool>()) {
        let r = if manager { Role::Manager } else { Role::Worker };
        let v = pb::NodeRole::from(r) as i32;
        prop_assert_eq!(requested_role("test", v), Ok(Some(r)));
    }
}

/// A spec with an unknown failure action, order and endpoint mode (from a newer peer) keeps
/// everything else, with those at their defaults; an unknown port protocol refuses the spec
/// with the field named; an absent mode (a mode this version does not know) likewise.
#[test]
fn unknown_enum_values_in_a_service_spec_keep_the_rest() {
    let spec = ServiceSpec {
        name: "web".into(),
        labels: BTreeMap::from([("tier".to_string(), "front".to_string())]),
        mode: ServiceMode::Replicated { replicas: 3 },
        task: TaskSpec {
            image: "busybox".into(),
            ..Default::default()
        },
        update: UpdateConfig {
            parallelism: 2,
            failure_action: FailureAction::Rollback,
            order: UpdateOrder::StartFirst,
            ..Default::default()
        },
        rollback: UpdateConfig::default(),
        endpoint: EndpointSpec {
            mode: EndpointMode::Dnsrr,
            ports: vec![PortConfig {
                target_port: 80,
                publish_mode: PublishMode::Host,
                ..Default::default()
            }],
        },
    };
    let mut w = pb::ServiceSpec::from(&spec);
    let u = w.update.as_mut().unwrap();
    u.failure_action = 17;
    u.order = 9;
    w.endpoint.as_mut().unwrap().mode = 4;
    let back = ServiceSpec::try_from(wire(w.clone())).unwrap();
    assert_eq!(back.update.failure_action, FailureAction::Pause);
    assert_eq!(back.update.order, UpdateOrder::StopFirst);
    assert_eq!(back.update.parallelism, 2);
    assert_eq!(back.endpoint.mode, EndpointMode::Vip);
    assert_eq!(back.endpoint.ports, spec.endpoint.ports);
    assert_eq!(
        (back.name.as_str(), &back.labels, &back.mode, &back.task),
        (spec.name.as_str(), &spec.labels, &spec.mode, &spec.task)
    );

    let mut bad = w.clone();
    bad.endpoint.as_mut().unwrap().ports[0].protocol = 3;
    let err = ServiceSpec::try_from(bad).unwrap_err();
    assert_eq!(
        err,
        ConvertError::UnknownEnum {
            field: "PortConfig.protocol",
            value: 3
        }
    );
    let mut no_mode = w;
    no_mode.mode = Some(pb::ServiceMode { mode: None });
    assert_eq!(
        ServiceSpec::try_from(no_mode).unwrap_err().to_string(),
        "ServiceMode.mode: missing"
    );
}

/// A Node from a newer manager, with a role, availability, state and reachability this
/// version does not know, keeps the rest: those read as unspecified (shown empty or
/// "unknown"). A request that asks for a role not known here is refused, naming the field.
#[test]
fn unknown_enum_values_in_a_node_keep_the_rest() {
    let n = pb::Node {
        id: "n1".into(),
        version: 7,
        cert_role: 9,
        spec_role: 9,
        spec_availability: 12,
        state: 40,
        reachability: 8,
        labels: [("zone".to_string(), "a".to_string())].into(),
        description: Some(pb::NodeDescription {
            hostname: "w1".into(),
            ..Default::default()
        }),
        status_message: "heartbeat".into(),
        raft_id: 3,
        leader: true,
        ..Default::default()
    };
    let got = wire(n.clone());
    assert_eq!(got, n);
    assert_eq!(got.cert_role().label(), "");
    assert_eq!(got.spec_availability().label(), "");
    assert_eq!(got.state().label(), "unknown");
    assert_eq!(got.reachability().label(), "");
    assert_eq!(got.description.unwrap().hostname, "w1");
    assert_eq!((got.labels["zone"].as_str(), got.raft_id), ("a", 3));

    assert_eq!(requested_role("UpdateNodeRequest.set_role", 0), Ok(None));
    let e = requested_role("UpdateNodeRequest.set_role", 9).unwrap_err();
    assert_eq!(e.to_string(), "UpdateNodeRequest.set_role: unknown value 9");
}

/// The words shown are the ones the JSON documents carried before the wire was typed.
#[test]
fn node_enum_labels_are_the_old_words() {
    assert_eq!(
        pb::NodeRole::from(Role::Manager).label(),
        Role::Manager.as_str()
    );
    assert_eq!(
        pb::NodeRole::from(Role::Worker).label(),
        Role::Worker.as_str()
    );
    assert_eq!(pb::NodeAvailability::Drain.label(), "drain");
    assert_eq!(pb::NodeState::Disconnected.label(), "disconnected");
    assert_eq!(pb::ManagerReachability::Unreachable.label(), "unreachable");
}
