use super::*;
use crate::store::tests::node;
use crate::store::{Service, Txn};
use proptest::prelude::*;
use proto::spec::{NetworkAttachmentConfig, ServiceMode, TaskSpec};

fn net_spec(name: &str, subnet: &str) -> NetworkSpec {
    NetworkSpec {
        name: name.into(),
        driver: "overlay".into(),
        subnet: subnet.into(),
        ..Default::default()
    }
}

fn pool() -> Vec<String> {
    default_addr_pool()
}

/// A store with the ingress network and network `net` (10.0.1.0/24).
pub fn data_with_networks() -> StoreData {
    let mut d = StoreData::default();
    let mut ing = new_network(&d, &net_spec("ingress", ""), &pool(), 24, "ing".into(), 0).unwrap();
    ing.spec.ingress = true;
    d.apply_txn(1, &Txn::new(vec![Op::Create(Object::Network(ing))]))
        .unwrap();
    let n = new_network(&d, &net_spec("net", ""), &pool(), 24, "net1".into(), 0).unwrap();
    d.apply_txn(2, &Txn::new(vec![Op::Create(Object::Network(n))]))
        .unwrap();
    d
}

pub fn service(id: &str, nets: &[&str], ports: Vec<PortConfig>) -> Service {
    Service {
        id: id.into(),
        version: 0,
        spec: ServiceSpec {
            name: id.into(),
            labels: Default::default(),
            mode: ServiceMode::Replicated { replicas: 1 },
            task: TaskSpec {
                image: "busybox".into(),
                networks: nets
                    .iter()
                    .map(|n| NetworkAttachmentConfig {
                        target: n.to_string(),
                        aliases: vec![format!("{id}-alias")],
                    })
                    .collect(),
                ..Default::default()
            },
            update: Default::default(),
            rollback: Default::default(),
            endpoint: proto::spec::EndpointSpec {
                mode: EndpointMode::Vip,
                ports,
            },
        },
        spec_version: 1,
        previous_spec: None,
        update_status: None,
        created_at_ms: 0,
        updated_at_ms: 0,
        endpoint: Default::default(),
    }
}

pub fn port(published: u16, target: u16) -> PortConfig {
    PortConfig {
        protocol: PortProtocol::Tcp,
        target_port: target,
        published_port: published,
        publish_mode: PublishMode::Ingress,
    }
}

#[test]
fn cidr_parsing_is_strict() {
    assert_eq!(
        "10.0.1.0/24".parse::<Cidr>().unwrap().to_string(),
        "10.0.1.0/24"
    );
    for bad in [
        "10.0.1.1/24",
        "10.0.1.0",
        "10.0.1.0/33",
        "10.0.1.0/",
        "x/24",
        "10.0.1.0/+4",
    ] {
        assert!(bad.parse::<Cidr>().is_err(), "{bad}");
    }
    let c: Cidr = "10.0.1.0/24".parse().unwrap();
    assert!(c.is_host("10.0.1.1".parse().unwrap()));
    assert!(!c.is_host("10.0.1.0".parse().unwrap()));
    assert!(!c.is_host("10.0.1.255".parse().unwrap()));
    assert!(c.overlaps(&"10.0.0.0/16".parse().unwrap()));
    assert!(!c.overlaps(&"10.0.2.0/24".parse().unwrap()));
}

#[test]
fn networks_take_the_next_free_subnet_and_vni() {
    let d = data_with_networks();
    assert_eq!(d.networks["ing"].subnet, "10.0.0.0/24");
    assert_eq!(d.networks["ing"].gateway, Ipv4Addr::new(10, 0, 0, 1));
    assert_eq!(d.networks["ing"].vni, ipam::FIRST_VNI);
    assert_eq!(d.networks["net1"].subnet, "10.0.1.0/24");
    assert_eq!(d.networks["net1"].vni, ipam::FIRST_VNI + 1);
    // An explicit subnet that overlaps is refused, naming the other network.
    let e = new_network(
        &d,
        &net_spec("x", "10.0.0.0/16"),
        &pool(),
        24,
        "x".into(),
        0,
    )
    .unwrap_err();
    assert!(e.to_string().contains("overlaps network ingress"), "{e}");
    // Gateway outside the subnet.
    let mut s = net_spec("x", "192.168.5.0/24");
    s.gateway = "192.168.6.1".into();
    let e = new_network(&d, &s, &pool(), 24, "x".into(), 0).unwrap_err();
    assert!(e.to_string().contains("--gateway"), "{e}");
    s.gateway = "192.168.5.254".into();
    let n = new_network(&d, &s, &pool(), 24, "x".into(), 0).unwrap();
    assert_eq!(n.gateway, Ipv4Addr::new(192, 168, 5, 254));
    // An explicit subnet skips the pool's next subnet when it holds it.
    let mut d2 = d.clone();
    let n = new_network(
        &d2,
        &net_spec("y", "10.0.2.0/23"),
        &pool(),
        24,
        "y".into(),
        0,
    )
    .unwrap();
    d2.apply_txn(3, &Txn::new(vec![Op::Create(Object::Network(n))]))
        .unwrap();
    let n = new_network(&d2, &net_spec("z", ""), &pool(), 24, "z".into(), 0).unwrap();
    assert_eq!(n.subnet, "10.0.4.0/24");
}

#[test]
fn pool_validation() {
    assert_eq!(
        validate_pool(&[], 0).unwrap(),
        (vec!["10.0.0.0/8".to_string()], 24)
    );
    assert!(validate_pool(&["10.20.0.0/16".into()], 16).is_ok());
    let e = validate_pool(&["10.20.0.0/16".into()], 8).unwrap_err();
    assert!(e.to_string().contains("between 16"), "{e}");
    assert!(validate_pool(&["10.20.0.0/16".into()], 30).is_err());
    let e = validate_pool(&["10.20.0.1/16".into()], 24).unwrap_err();
    assert!(e.to_string().contains("--default-addr-pool"), "{e}");
}

#[test]
fn endpoint_gets_vips_and_ports() {
    let d = data_with_networks();
    let s = service("web", &["net1"], vec![port(0, 80), port(8080, 81)]);
    let ep = allocate_endpoint(&d, "web", &s.spec, &Default::default()).unwrap();
    assert_eq!(ep.ports[0].published_port, 30000);
    assert_eq!(ep.ports[1].published_port, 8080);
    assert_eq!(ep.vips.len(), 2);
    assert!(ep.vips.contains_key("ing") && ep.vips.contains_key("net1"));
    // Re-allocating keeps what was given.
    let again = allocate_endpoint(&d, "web", &s.spec, &ep).unwrap();
    assert_eq!(again, ep);
    // Another service cannot publish 8080, and gets the next dynamic port.
    let mut d2 = d.clone();
    let mut web = s.clone();
    web.endpoint = ep;
    d2.apply_txn(
        3,
        &Txn::new(vec![Op::Create(Object::Service(Box::new(web)))]),
    )
    .unwrap();
    let other = service("api", &[], vec![port(8080, 80)]);
    let e = allocate_endpoint(&d2, "api", &other.spec, &Default::default()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "port 8080/tcp is already published by service web"
    );
    let other = service("api", &[], vec![port(0, 80)]);
    let ep = allocate_endpoint(&d2, "api", &other.spec, &Default::default()).unwrap();
    assert_eq!(ep.ports[0].published_port, 30001);
    // dnsrr: no VIPs.
    let mut dn = service("dn", &["net1"], vec![]);
    dn.spec.endpoint.mode = EndpointMode::Dnsrr;
    assert!(allocate_endpoint(&d2, "dn", &dn.spec, &Default::default())
        .unwrap()
        .vips
        .is_empty());
}

#[test]
fn task_networks_put_ingress_first_and_never_share_an_address() {
    let d = data_with_networks();
    let s = service("web", &["net1"], vec![port(0, 80)]);
    let mut taken = BTreeSet::new();
    let a = task_networks(&d, &s.spec, "task-a", &mut taken).unwrap();
    let b = task_networks(&d, &s.spec, "task-a", &mut taken).unwrap();
    assert_eq!(a.len(), 2);
    assert!(a[0].ingress && !a[1].ingress);
    assert_eq!(a[1].network_name, "net");
    assert_eq!(a[1].aliases, vec!["web-alias".to_string()]);
    assert_eq!(a[1].vni, d.networks["net1"].vni);
    // The same seed twice in one plan still gets distinct addresses.
    assert_ne!(a[0].addr, b[0].addr);
    assert_ne!(a[1].addr, b[1].addr);
    // No networks, no ports: nothing to do.
    let plain = service("p", &[], vec![]);
    assert!(task_networks(&d, &plain.spec, "t", &mut taken)
        .unwrap()
        .is_empty());
}

#[test]
fn nodes_get_distinct_ingress_addresses() {
    let mut d = data_with_networks();
    d.apply_txn(
        3,
        &Txn::new(vec![
            Op::Create(Object::Node(node("n1", "h1"))),
            Op::Create(Object::Node(node("n2", "h2"))),
        ]),
    )
    .unwrap();
    let ops = node_ingress_ops(&d, &mut BTreeSet::new());
    assert_eq!(ops.len(), 2);
    d.apply_txn(4, &Txn::new(ops)).unwrap();
    let a = d.nodes["n1"].ingress_addr.unwrap();
    let b = d.nodes["n2"].ingress_addr.unwrap();
    assert_ne!(a, b);
    assert!(node_ingress_ops(&d, &mut BTreeSet::new()).is_empty());
    assert!(d.addr_holder("ing", a).is_some());
}

proptest! {
    #[test]
    fn addresses_are_unique_hosts_of_the_subnet(
        prefix in 24u8..=29,
        seeds in proptest::collection::vec("[a-z0-9]{1,12}", 1..40),
    ) {
        let subnet = Cidr::new(Ipv4Addr::new(10, 9, 8, 0), prefix).unwrap();
        let gw = subnet.first_host();
        let mut taken = BTreeSet::new();
        for s in &seeds {
            match ipam::pick_addr(&subnet, gw, ipam::seed_of(s), |a| taken.contains(&a)) {
                Some(a) => {
                    prop_assert!(subnet.is_host(a));
                    prop_assert_ne!(a, gw);
                    prop_assert!(taken.insert(a), "{} given twice", a);
                }
                None => {
                    // Only when every host address but the gateway is taken.
                    let hosts = (1u32 << (32 - prefix as u32)) - 2;
                    prop_assert_eq!(taken.len() as u32, hosts - 1);
                }
            }
        }
    }

    #[test]
    fn subnets_never_overlap(mask in 16u8..=28, n in 1usize..30) {
        let pools = vec![Cidr::new(Ipv4Addr::new(10, 0, 0, 0), 12).unwrap()];
        let mut used: Vec<Cidr> = vec!["10.0.3.0/24".parse().unwrap()];
        for _ in 0..n {
            let Some(c) = ipam::next_subnet(&pools, mask, &used) else { break };
            prop_assert!(pools[0].covers(&c));
            prop_assert_eq!(c.prefix(), mask);
            prop_assert!(!used.iter().any(|u| u.overlaps(&c)));
            used.push(c);
        }
    }

    #[test]
    fn dynamic_ports_are_in_range_and_unique(n in 1usize..200, udp in any::<bool>()) {
        let proto = if udp { PortProtocol::Udp } else { PortProtocol::Tcp };
        let mut taken = BTreeSet::new();
        taken.insert((30005, proto));
        for _ in 0..n {
            let p = ipam::pick_port(proto, &taken).unwrap();
            prop_assert!(ipam::DYNAMIC_PORTS.contains(&p));
            prop_assert!(taken.insert((p, proto)));
        }
    }

    #[test]
    fn vnis_are_unique(n in 1usize..50) {
        let mut used = BTreeSet::new();
        for _ in 0..n {
            let v = ipam::next_vni(&used).unwrap();
            prop_assert!(v >= ipam::FIRST_VNI);
            prop_assert!(used.insert(v));
        }
    }
}

#[test]
fn the_nodes_own_ports_cannot_be_published_nor_handed_out() {
    let mut d = data_with_networks();
    let mut m = node("m1", "m1");
    m.role = proto::security::Role::Manager;
    m.desired_role = proto::security::Role::Manager;
    m.description.addr = "192.168.0.5:30000".into();
    let mut w = node("w1", "w1");
    w.description.addr = "192.168.0.6:30001".into();
    d.apply_txn(
        3,
        &Txn::new(vec![
            Op::Create(Object::Node(m)),
            Op::Create(Object::Node(w)),
        ]),
    )
    .unwrap();
    let refused = |p: PortConfig| {
        let s = service("web", &[], vec![p]);
        allocate_endpoint(&d, "web", &s.spec, &Default::default())
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        refused(port(2377, 80)),
        "port 2377/tcp cannot be published: the nodes use it for the managers' control port; publish another port"
    );
    let mut vx = port(4789, 80);
    vx.protocol = PortProtocol::Udp;
    assert!(refused(vx).contains("VXLAN"));
    let mut host = port(30000, 80);
    host.publish_mode = PublishMode::Host;
    assert!(refused(host).contains("the control port of manager m1"));
    // 4789/tcp and 2377/udp are not the nodes' own; a worker's address port is not a listener.
    let mut other = port(2377, 80);
    other.protocol = PortProtocol::Udp;
    let s = service("web", &[], vec![other, port(4789, 80), port(30001, 81)]);
    assert!(allocate_endpoint(&d, "web", &s.spec, &Default::default()).is_ok());
    // The dynamic range skips the manager's port.
    let s = service("web", &[], vec![port(0, 80)]);
    let ep = allocate_endpoint(&d, "web", &s.spec, &Default::default()).unwrap();
    assert_eq!(ep.ports[0].published_port, 30001);
}

#[test]
fn overlay_subnets_keep_clear_of_the_nodes_addresses() {
    let mut d = data_with_networks();
    let mut n = node("w1", "w1");
    n.description.addr = "10.0.2.7:2377".into();
    d.apply_txn(3, &Txn::new(vec![Op::Create(Object::Node(n))]))
        .unwrap();
    let e = new_network(
        &d,
        &net_spec("x", "10.0.2.0/23"),
        &pool(),
        24,
        "x".into(),
        0,
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "--subnet 10.0.2.0/23 holds the address 10.0.2.7 of node w1; choose a subnet that no node's address is in"
    );
    // From the pool: 10.0.2.0/24 holds the node, so the next one is taken.
    let auto = new_network(&d, &net_spec("x", ""), &pool(), 24, "x".into(), 0).unwrap();
    assert_eq!(auto.subnet, "10.0.3.0/24");
}
