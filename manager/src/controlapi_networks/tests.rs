use super::*;
use crate::allocator::tests::{data_with_networks, port, service};
use proto::spec::NetworkAttachmentConfig;

fn spec(name: &str, subnet: &str) -> NetworkSpec {
    NetworkSpec {
        name: name.into(),
        driver: String::new(),
        subnet: subnet.into(),
        ..Default::default()
    }
}

#[test]
fn create_validates_each_field() {
    let d = data_with_networks();
    let n = plan_create(&d, &spec("back", ""), "b".into(), 0).unwrap();
    assert_eq!(n.spec.driver, "overlay");
    assert_eq!(n.subnet, "10.0.2.0/24");
    let msg = |s: NetworkSpec| {
        plan_create(&d, &s, "x".into(), 0)
            .unwrap_err()
            .message()
            .to_string()
    };
    assert!(msg(spec("-x", "")).contains("invalid network name"));
    let mut s = spec("x", "");
    s.driver = "bridge".into();
    assert!(msg(s).starts_with("spec.driver: unsupported driver"));
    assert!(msg(spec("net", "")).contains("already exists"));
    assert!(msg(spec("x", "10.0.1.128/25")).contains("overlaps network net"));
    assert!(msg(spec("x", "10.5.0.0/33")).contains("invalid --subnet"));
    let mut s = spec("x", "10.5.0.0/24");
    s.gateway = "10.6.0.1".into();
    assert!(msg(s).contains("--gateway"));
    let mut s = spec("ing2", "");
    s.ingress = true;
    assert!(msg(s).contains("already the ingress network"));
}

#[test]
fn find_by_id_name_and_prefix() {
    let d = data_with_networks();
    assert_eq!(find_network(&d, "net").unwrap().id, "net1");
    assert_eq!(find_network(&d, "net1").unwrap().id, "net1");
    assert_eq!(find_network(&d, "in").unwrap().id, "ing");
    assert_eq!(
        find_network(&d, "zzz").unwrap_err().message(),
        "network zzz not found"
    );
}

#[test]
fn remove_is_refused_while_services_use_it() {
    let mut d = data_with_networks();
    let mut a = service("a", &["net1"], vec![]);
    a.endpoint =
        crate::allocator::allocate_endpoint(&d, "a", &a.spec, &Default::default()).unwrap();
    d.apply_txn(3, &Txn::new(vec![Op::Create(Object::Service(Box::new(a)))]))
        .unwrap();
    let mut b = service("b", &["net1"], vec![port(80, 80)]);
    b.endpoint =
        crate::allocator::allocate_endpoint(&d, "b", &b.spec, &Default::default()).unwrap();
    d.apply_txn(4, &Txn::new(vec![Op::Create(Object::Service(Box::new(b)))]))
        .unwrap();
    let e = check_remove(&d, &d.networks["net1"]).unwrap_err();
    assert!(
        e.message()
            .starts_with("network net is in use by services a, b"),
        "{}",
        e.message()
    );
    let e = check_remove(&d, &d.networks["ing"]).unwrap_err();
    assert!(e.message().contains(": b;"), "{}", e.message());
    assert_eq!(
        network_view(&d, &d.networks["net1"]).services,
        vec!["a", "b"]
    );
}

#[test]
fn service_networks_resolve_to_ids() {
    use crate::controlapi_services::resolve_networks;
    let d = data_with_networks();
    let mut s = service("web", &["net"], vec![]).spec;
    resolve_networks(&d, &mut s).unwrap();
    assert_eq!(s.task.networks[0].target, "net1");
    let mut s = service("web", &["nope"], vec![]).spec;
    assert_eq!(
        resolve_networks(&d, &mut s).unwrap_err().message(),
        "network nope not found"
    );
    let mut s = service("web", &["ingress"], vec![]).spec;
    assert!(resolve_networks(&d, &mut s)
        .unwrap_err()
        .message()
        .contains("routing mesh"));
    let mut s = service("web", &["net", "net1"], vec![]).spec;
    s.task.networks.push(NetworkAttachmentConfig {
        target: "net".into(),
        aliases: vec![],
    });
    assert!(resolve_networks(&d, &mut s)
        .unwrap_err()
        .message()
        .contains("more than once"));
}

#[test]
fn service_ports_are_checked() {
    use crate::controlapi_services::validate_spec;
    let mut s = service("web", &[], vec![port(80, 0)]).spec;
    assert!(validate_spec(&s)
        .unwrap_err()
        .message()
        .contains("target port"));
    s.endpoint.ports = vec![port(80, 80), port(80, 81)];
    assert!(validate_spec(&s).unwrap_err().message().contains("twice"));
    s.endpoint.ports = vec![port(80, 80)];
    s.endpoint.mode = proto::spec::EndpointMode::Dnsrr;
    assert!(validate_spec(&s).unwrap_err().message().contains("dnsrr"));
    s.endpoint.ports[0].publish_mode = proto::spec::PublishMode::Host;
    assert!(validate_spec(&s).is_ok());
}

/// Published ports need the routing mesh's network: without it (removed) a service that
/// publishes is refused, one that does not is not.
#[test]
fn publishing_needs_an_ingress_network() {
    use crate::controlapi_services::with_spec;
    let mut d = data_with_networks();
    let mut s = service("web", &[], vec![port(8080, 80)]);
    with_spec(&d, &mut s.clone(), s.spec.clone()).unwrap();
    d.networks.remove("ing");
    let e = with_spec(&d, &mut s.clone(), s.spec.clone()).unwrap_err();
    assert_eq!(
        e.message(),
        "service needs ingress network, but no ingress network is present"
    );
    s.spec.endpoint.ports.clear();
    with_spec(&d, &mut s.clone(), s.spec.clone()).unwrap();
}
