use std::net::Ipv4Addr;

use proptest::prelude::*;

use super::*;
use crate::spec::*;

pub(crate) fn s() -> impl Strategy<Value = String> {
    "[a-z0-9/=._-]{0,8}"
}

pub(crate) fn strings() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(s(), 0..3)
}

pub(crate) fn ip() -> impl Strategy<Value = Ipv4Addr> {
    any::<u32>().prop_map(Ipv4Addr::from)
}

pub(crate) fn state() -> impl Strategy<Value = TaskState> {
    prop::sample::select(
        ALL_STATES
            .iter()
            .map(|s| TaskState::from(*s))
            .collect::<Vec<_>>(),
    )
}

pub(crate) fn status() -> impl Strategy<Value = TaskStatus> {
    (state(), s(), s(), any::<Option<i32>>(), any::<i64>()).prop_map(
        |(state, message, err, exit_code, timestamp_ms)| TaskStatus {
            state,
            message,
            err,
            exit_code,
            timestamp_ms,
        },
    )
}

pub(crate) fn file_refs() -> impl Strategy<Value = Vec<FileRef>> {
    prop::collection::vec(
        (s(), s(), prop::option::of(0u32..0o7777)).prop_map(|(name, target, mode)| FileRef {
            name,
            target,
            uid: mode.map(|m| m + 1),
            gid: None,
            mode,
        }),
        0..3,
    )
}

pub(crate) fn task_spec() -> impl Strategy<Value = TaskSpec> {
    let head = (s(), strings(), strings(), strings(), any::<[u64; 5]>());
    let restart = (
        prop::sample::select(vec![
            RestartCondition::Any,
            RestartCondition::None,
            RestartCondition::OnFailure,
        ]),
        any::<[u64; 3]>(),
    )
        .prop_map(
            |(condition, [delay_ms, max_attempts, window_ms])| RestartPolicy {
                condition,
                delay_ms,
                max_attempts,
                window_ms,
            },
        );
    let placement = (strings(), strings(), any::<u64>()).prop_map(
        |(constraints, preferences, max_replicas)| Placement {
            constraints,
            preferences,
            max_replicas,
        },
    );
    let mounts = prop::collection::vec(
        (
            prop::sample::select(vec![MountKind::Bind, MountKind::Volume, MountKind::Tmpfs]),
            s(),
            s(),
            any::<bool>(),
            prop::collection::btree_map(s(), s(), 0..2),
        )
            .prop_map(|(kind, source, target, readonly, volume_options)| Mount {
                kind,
                source,
                target,
                readonly,
                volume_options,
            }),
        0..3,
    );
    let health = prop::option::of((strings(), any::<[u64; 4]>()).prop_map(
        |(test, [interval_ms, timeout_ms, retries, start_period_ms])| HealthCheck {
            test,
            interval_ms,
            timeout_ms,
            retries,
            start_period_ms,
            start_interval_ms: interval_ms / 2,
        },
    ));
    let networks = prop::collection::vec(
        (s(), strings()).prop_map(|(target, aliases)| NetworkAttachmentConfig { target, aliases }),
        0..3,
    );
    let dns =
        (strings(), strings(), strings()).prop_map(|(nameservers, search, options)| DnsConfig {
            nameservers,
            search,
            options,
        });
    let tail = (
        any::<(u64, u64)>(),
        (s(), s(), s(), s()),
        mounts,
        file_refs(),
        file_refs(),
        health,
        networks,
        dns,
        strings(),
        (
            any::<bool>(),
            strings(),
            strings(),
            prop::collection::btree_map(s(), s(), 0..3),
            prop::collection::vec(
                (s(), any::<(i64, i64)>()).prop_map(|(name, (soft, hard))| Ulimit {
                    name,
                    soft,
                    hard,
                }),
                0..3,
            ),
        ),
    );
    (head, restart, placement, tail).prop_map(
        |(
            (image, command, args, env, r),
            restart,
            placement,
            (
                (stop_grace_period_ms, force_update),
                (stop_signal, hostname, user, workdir),
                mounts,
                secrets,
                configs,
                healthcheck,
                networks,
                dns,
                hosts,
                (read_only, cap_add, cap_drop, sysctls, ulimits),
            ),
        )| {
            // Both shapes: none (the default rotation), and a driver with options.
            let container_labels = if read_only {
                sysctls.clone()
            } else {
                Default::default()
            };
            let log_driver = read_only.then(|| crate::spec::LogDriver {
                name: hostname.clone(),
                options: sysctls.clone(),
            });
            TaskSpec {
                image,
                command,
                args,
                env,
                resources: Resources {
                    reserve_nano_cpus: r[0],
                    reserve_memory: r[1],
                    limit_nano_cpus: r[2],
                    limit_memory: r[3],
                    limit_pids: r[4],
                },
                restart,
                placement,
                stop_grace_period_ms,
                stop_signal,
                force_update,
                hostname,
                user,
                workdir,
                mounts,
                secrets,
                configs,
                healthcheck,
                networks,
                dns,
                hosts,
                read_only,
                cap_add,
                cap_drop,
                sysctls,
                ulimits,
                init: log_driver.is_none() && !read_only,
                container_labels,
                log_driver,
            }
        },
    )
}

pub(crate) fn task_network() -> impl Strategy<Value = TaskNetwork> {
    (
        s(),
        s(),
        any::<u32>(),
        s(),
        ip(),
        ip(),
        any::<(bool, bool)>(),
        strings(),
    )
        .prop_map(
            |(
                network_id,
                network_name,
                vni,
                subnet,
                gateway,
                addr,
                (internal, ingress),
                aliases,
            )| {
                TaskNetwork {
                    network_id,
                    network_name,
                    vni,
                    subnet,
                    gateway,
                    addr,
                    internal,
                    ingress,
                    aliases,
                }
            },
        )
}

fn assignment() -> impl Strategy<Value = Assignment> {
    (
        (s(), s(), s(), any::<u64>()),
        task_spec(),
        state(),
        (s(), s()),
        prop::collection::vec(task_network(), 0..3),
        prop::collection::btree_map(s(), s(), 0..3),
    )
        .prop_map(
            |(
                (task_id, service_id, service_name, slot),
                spec,
                desired_state,
                (node_hostname, node_id),
                networks,
                service_labels,
            )| {
                Assignment {
                    task_id,
                    service_id,
                    service_name,
                    slot,
                    spec,
                    desired_state,
                    node_hostname,
                    secrets: Vec::new(),
                    configs: Vec::new(),
                    networks,
                    node_id,
                    service_labels,
                }
            },
        )
}

pub(crate) fn port_config() -> impl Strategy<Value = PortConfig> {
    (
        prop::sample::select(vec![PortProtocol::Tcp, PortProtocol::Udp]),
        any::<(u16, u16)>(),
        prop::sample::select(vec![PublishMode::Ingress, PublishMode::Host]),
    )
        .prop_map(
            |(protocol, (target_port, published_port), publish_mode)| PortConfig {
                protocol,
                target_port,
                published_port,
                publish_mode,
            },
        )
}

fn network_state() -> impl Strategy<Value = NetworkState> {
    (
        (s(), s(), any::<u32>(), s()),
        prop::option::of(ip()),
        any::<(bool, bool)>(),
        prop::collection::vec(
            (ip(), ip()).prop_map(|(addr, node_ip)| NetPeer { addr, node_ip }),
            0..4,
        ),
    )
        .prop_map(
            |((id, name, vni, subnet), gateway, (internal, ingress), peers)| NetworkState {
                id,
                name,
                vni,
                subnet,
                gateway,
                internal,
                ingress,
                peers,
            },
        )
}

fn service_net() -> impl Strategy<Value = ServiceNet> {
    let on_net = (s(), prop::option::of(ip()), strings()).prop_map(|(network_id, vip, aliases)| {
        ServiceOnNetwork {
            network_id,
            vip,
            aliases,
        }
    });
    let backend = (s(), s(), prop::collection::vec((s(), ip()), 0..3)).prop_map(
        |(task_id, node_id, addrs)| Backend {
            task_id,
            node_id,
            addrs,
        },
    );
    (
        s(),
        s(),
        prop::sample::select(vec![EndpointMode::Vip, EndpointMode::Dnsrr]),
        prop::collection::vec(port_config(), 0..3),
        prop::collection::vec(on_net, 0..3),
        prop::collection::vec(backend, 0..3),
    )
        .prop_map(|(id, name, mode, ports, networks, backends)| ServiceNet {
            id,
            name,
            mode,
            ports,
            networks,
            backends,
        })
}

fn node_net_state() -> impl Strategy<Value = NodeNetState> {
    (
        s(),
        prop::option::of(ip()),
        prop::option::of(ip()),
        prop::collection::btree_map(s(), network_state(), 0..3),
        prop::collection::btree_map(s(), service_net(), 0..3),
    )
        .prop_map(
            |(node_id, node_ip, ingress_addr, nets, svcs)| NodeNetState {
                node_id,
                node_ip,
                ingress_addr,
                // The assembler keys them by id: ids unique, in id order.
                networks: nets
                    .into_iter()
                    .map(|(id, n)| NetworkState { id, ..n })
                    .collect(),
                services: svcs
                    .into_iter()
                    .map(|(id, sv)| ServiceNet { id, ..sv })
                    .collect(),
            },
        )
}

/// Through the protobuf encoding too: what the peer decodes is what was sent.
pub(crate) fn wire<M: prost::Message + Default>(m: M) -> M {
    M::decode(m.encode_to_vec().as_slice()).expect("decode what was encoded")
}

proptest! {
    #[test]
    fn status_reports_round_trip(task_id in s(), status in status()) {
        let r = StatusReport { task_id, status };
        prop_assert_eq!(StatusReport::try_from(wire(pb::StatusReport::from(&r))), Ok(r));
    }

    #[test]
    fn task_specs_round_trip(spec in task_spec()) {
        prop_assert_eq!(TaskSpec::try_from(wire(pb::TaskSpec::from(&spec))), Ok(spec));
    }

    #[test]
    fn assignments_round_trip(a in assignment()) {
        prop_assert_eq!(Assignment::try_from(wire(pb::Assignment::from(&a))), Ok(a));
    }

    #[test]
    fn task_networks_round_trip(n in task_network()) {
        prop_assert_eq!(TaskNetwork::try_from(wire(pb::TaskNetwork::from(&n))), Ok(n));
    }

    #[test]
    fn ports_round_trip(p in port_config()) {
        prop_assert_eq!(PortConfig::try_from(wire(pb::PortConfig::from(&p))), Ok(p));
    }

    #[test]
    fn network_states_round_trip(n in network_state()) {
        prop_assert_eq!(NetworkState::try_from(wire(pb::NetworkState::from(&n))), Ok(n));
    }

    #[test]
    fn service_nets_round_trip(sv in service_net()) {
        prop_assert_eq!(ServiceNet::try_from(wire(pb::ServiceNet::from(&sv))), Ok(sv));
    }

    #[test]
    fn node_net_states_round_trip(st in node_net_state()) {
        let mut asm = NetAssembler::default();
        prop_assert_eq!(asm.apply(wire(pb::NetworkUpdate::from(&st))), st);
    }

    #[test]
    fn file_keys_round_trip(secret in any::<bool>(), name in s()) {
        let k: FileKey = (if secret { FileKind::Secret } else { FileKind::Config }, name);
        prop_assert_eq!(FileKey::try_from(wire(pb::FileKey::from(&k))), Ok(k));
    }

    /// Any wire value is some task state, and a known one is itself.
    #[test]
    fn any_task_state_value_is_a_state(v in any::<i32>()) {
        let st = task_state("test", v);
        if let Ok(known) = pb::TaskState::try_from(v) {
            prop_assert_eq!(st, TaskState::from(known));
        } else {
            prop_assert!(v < 0 || (pb::TaskState::from(st) as i32) < v);
        }
    }
}

#[test]
fn an_unknown_task_state_is_the_nearest_known_below() {
    assert_eq!(task_state("t", 600), TaskState::Complete);
    assert_eq!(task_state("t", 513), TaskState::Running);
    assert_eq!(task_state("t", 5000), TaskState::Orphaned);
    assert_eq!(task_state("t", -3), TaskState::New);
}

/// A peer that meets enum values it does not know keeps the rest of the message: an
/// assignment with a new desired state and restart condition still converts; a status
/// report with an unknown state is the nearest known one; a mount of an unknown kind
/// rejects that assignment only, with the field named.
#[test]
fn unknown_enum_values_keep_the_rest_of_the_message() {
    let a = Assignment {
        task_id: "t1".into(),
        service_id: "s".into(),
        service_name: "web".into(),
        slot: 1,
        spec: TaskSpec {
            image: "busybox".into(),
            ..Default::default()
        },
        desired_state: TaskState::Running,
        node_hostname: "h".into(),
        node_id: String::new(),
        service_labels: Default::default(),
        secrets: Vec::new(),
        configs: Vec::new(),
        networks: Vec::new(),
    };
    let mut w = pb::Assignment::from(&a);
    w.desired_state = 520; // a state between RUNNING and COMPLETE
    w.spec.as_mut().unwrap().restart.as_mut().unwrap().condition = 9;
    let back = Assignment::try_from(wire(w.clone())).unwrap();
    assert_eq!(back.desired_state, TaskState::Running);
    assert_eq!(back.spec.restart.condition, RestartCondition::Any);
    assert_eq!(back.spec.image, "busybox");

    w.spec.as_mut().unwrap().mounts.push(pb::Mount {
        kind: 7,
        ..Default::default()
    });
    let err = Assignment::try_from(w).unwrap_err();
    assert_eq!(
        err,
        ConvertError::UnknownEnum {
            field: "Mount.kind",
            value: 7
        }
    );
    assert!(err.to_string().contains("Mount.kind"));

    let mut r = pb::StatusReport::from(&StatusReport {
        task_id: "t1".into(),
        status: TaskStatus {
            state: TaskState::Running,
            message: "started".into(),
            ..Default::default()
        },
    });
    r.status.as_mut().unwrap().state = 700;
    let back = StatusReport::try_from(wire(r)).unwrap();
    assert_eq!(back.status.state, TaskState::Shutdown);
    assert_eq!(back.status.message, "started");

    // A network update with one service of an unknown port protocol: the other service and
    // the networks still apply.
    let sv = |id: &str| ServiceNet {
        id: id.into(),
        name: id.into(),
        ports: vec![PortConfig {
            target_port: 80,
            published_port: 8080,
            ..Default::default()
        }],
        ..Default::default()
    };
    let st = NodeNetState {
        node_id: "n1".into(),
        services: vec![sv("a"), sv("b")],
        networks: vec![NetworkState {
            id: "net".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut u = pb::NetworkUpdate::from(&st);
    u.services[0].ports[0].protocol = 5;
    let got = NetAssembler::default().apply(wire(u));
    assert_eq!(got.networks, st.networks);
    assert_eq!(got.services, vec![sv("b")]);
}

#[test]
fn a_node_leaves_its_own_endpoints_out_of_the_peers() {
    let mut u = pb::NetworkUpdate {
        full: true,
        node_id: "me".into(),
        ..Default::default()
    };
    u.networks.push(pb::NetworkState {
        id: "net".into(),
        peers: vec![
            pb::NetPeer {
                addr: "10.0.0.2".into(),
                node_ip: "192.168.0.1".into(),
                node_id: "me".into(),
            },
            pb::NetPeer {
                addr: "10.0.0.3".into(),
                node_ip: "192.168.0.2".into(),
                node_id: "other".into(),
            },
        ],
        ..Default::default()
    });
    let mut asm = NetAssembler::default();
    let st = asm.apply(u);
    assert_eq!(st.networks[0].peers.len(), 1);
    assert_eq!(st.networks[0].peers[0].addr, Ipv4Addr::new(10, 0, 0, 3));
    // A later increment replaces one network and removes nothing else.
    let st2 = asm.apply(pb::NetworkUpdate {
        node_id: "me".into(),
        removed_networks: vec!["net".into()],
        ..Default::default()
    });
    assert!(st2.networks.is_empty());
}

#[test]
fn files_fill_assignments_with_default_targets() {
    let mut a = Assignment {
        task_id: "t".into(),
        service_id: String::new(),
        service_name: String::new(),
        slot: 0,
        spec: TaskSpec {
            secrets: vec![
                FileRef {
                    name: "db".into(),
                    ..Default::default()
                },
                FileRef {
                    name: "gone".into(),
                    ..Default::default()
                },
            ],
            configs: vec![FileRef {
                name: "site".into(),
                ..Default::default()
            }],
            ..Default::default()
        },
        desired_state: TaskState::Running,
        node_hostname: String::new(),
        node_id: String::new(),
        service_labels: Default::default(),
        secrets: Vec::new(),
        configs: Vec::new(),
        networks: Vec::new(),
    };
    let mut files = BTreeMap::new();
    files.insert((FileKind::Secret, "db".to_string()), b"pw".to_vec());
    files.insert((FileKind::Config, "site".to_string()), b"conf".to_vec());
    fill_files(&mut a, &files);
    assert_eq!(a.secrets.len(), 1);
    assert_eq!(
        (a.secrets[0].target.as_str(), &a.secrets[0].data[..]),
        ("db", &b"pw"[..])
    );
    assert_eq!(a.configs[0].target, "/site");
}
