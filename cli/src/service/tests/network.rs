use super::*;

#[test]
fn network_flag() {
    assert_eq!(
        parse_network("front").unwrap(),
        NetworkAttachmentConfig {
            target: "front".into(),
            aliases: vec![],
        }
    );
    assert_eq!(
        parse_network("name=front,alias=web,alias=www,alias=web").unwrap(),
        NetworkAttachmentConfig {
            target: "front".into(),
            aliases: vec!["web".into(), "www".into()],
        }
    );
    for (s, want) in [
        ("", "use NAME or name=NAME,alias=ALIAS"),
        ("a,b", "use NAME or name=NAME,alias=ALIAS"),
        ("alias=x", "name is required"),
        ("name=x,alias=", "empty alias"),
        ("name=x,color=red", "unknown field \"color\""),
        ("name=x,driver-opt=a=b", "driver-opt is not supported"),
        ("name=x,alias", "is not KEY=VALUE"),
    ] {
        let e = parse_network(s).expect_err(s);
        assert!(e.starts_with("invalid network"), "{e}");
        assert!(e.contains(want), "{s:?}: {e}");
    }
}

#[test]
fn dns_flags() {
    assert_eq!(parse_dns_server(" 10.0.0.2 ").unwrap(), "10.0.0.2");
    assert_eq!(parse_dns_server("fd00::1").unwrap(), "fd00::1");
    let e = parse_dns_server("dns.example").unwrap_err();
    assert!(
        e.contains("invalid DNS server \"dns.example\": use an IP address"),
        "{e}"
    );
    assert_eq!(parse_dns_search("example.com").unwrap(), "example.com");
    assert_eq!(
        parse_dns_search("corp.example.com.").unwrap(),
        "corp.example.com."
    );
    assert_eq!(parse_dns_search(".").unwrap(), ".");
    for bad in ["", "-bad.com", "a..b", "1.2.3.4", "x_y.com"] {
        let e = parse_dns_search(bad).expect_err(bad);
        assert!(e.contains("invalid DNS search domain"), "{e}");
    }
    assert_eq!(parse_dns_option("ndots:2").unwrap(), "ndots:2");
    assert!(parse_dns_option("ndots 2")
        .unwrap_err()
        .contains("invalid DNS option"));
    assert!(parse_endpoint_mode("dnsrr").is_ok());
    let e = usage_error(&["create", "--endpoint-mode", "rr", "busybox"]);
    assert!(
        e.contains("invalid endpoint mode \"rr\": use vip or dnsrr"),
        "{e}"
    );
    let e = usage_error(&["create", "--dns", "nope", "busybox"]);
    assert!(e.contains("invalid DNS server"), "{e}");
}

#[test]
fn create_networking_flags_fill_the_spec() {
    let s = create_spec(&[
        "--network",
        "front",
        "--network",
        "name=back,alias=db",
        "-p",
        "8080:80",
        "--publish",
        "mode=host,published=9090,target=90,protocol=udp",
        "-p",
        "443",
        "--dns",
        "10.0.0.2",
        "--dns",
        "10.0.0.3",
        "--dns-search",
        "example.com",
        "--dns-option",
        "ndots:2",
        "--endpoint-mode",
        "vip",
        "--hostname",
        "{{.Service.Name}}-{{.Task.Slot}}",
        "busybox",
    ])
    .unwrap();
    let t = &s.task;
    let targets: Vec<&str> = t.networks.iter().map(|n| n.target.as_str()).collect();
    assert_eq!(targets, vec!["front", "back"]);
    assert_eq!(t.networks[1].aliases, vec!["db"]);
    assert_eq!(s.endpoint.mode, EndpointMode::Vip);
    assert_eq!(s.endpoint.ports.len(), 3);
    assert_eq!(s.endpoint.ports[0], port(8080, 80));
    assert_eq!(s.endpoint.ports[1].publish_mode, PublishMode::Host);
    assert_eq!(s.endpoint.ports[2], port(0, 443));
    assert_eq!(t.dns.nameservers, vec!["10.0.0.2", "10.0.0.3"]);
    assert_eq!(t.dns.search, vec!["example.com"]);
    assert_eq!(t.dns.options, vec!["ndots:2"]);
    assert_eq!(t.hostname, "{{.Service.Name}}-{{.Task.Slot}}");
    // No flags: no networks, ports or DNS; VIP mode.
    let s = create_spec(&["busybox"]).unwrap();
    assert!(s.task.networks.is_empty() && s.endpoint.ports.is_empty());
    assert_eq!(s.endpoint.mode, EndpointMode::Vip);
    assert_eq!(s.task.dns, DnsConfig::default());
    // dnsrr with a host-mode port is fine.
    let s = create_spec(&[
        "--endpoint-mode",
        "dnsrr",
        "-p",
        "mode=host,published=80,target=80",
        "busybox",
    ])
    .unwrap();
    assert_eq!(s.endpoint.mode, EndpointMode::Dnsrr);
}

#[test]
fn create_networking_conflicts_are_refused() {
    for (args, want) in [
        (
            vec!["--endpoint-mode", "dnsrr", "-p", "8080:80", "busybox"],
            "port *:8080->80/tcp is published in ingress mode, which dnsrr cannot serve",
        ),
        (
            vec!["-p", "8080:80", "-p", "8080:81", "busybox"],
            "port 8080/tcp is published more than once",
        ),
        (
            vec!["--network", "a", "--network", "name=a,alias=x", "busybox"],
            "network a is given more than once",
        ),
    ] {
        let e = create_spec(&args).expect_err(&format!("{args:?}"));
        assert!(e.contains(want), "{args:?}: {e}");
    }
    // The same port on two protocols is two ports.
    assert!(create_spec(&["-p", "53:53", "-p", "53:53/udp", "busybox"]).is_ok());
}

#[test]
fn update_networks_by_name_or_id() {
    let nets = vec![net("netfront0001", "front"), net("netback00002", "back")];
    let mut spec = base();
    // As the manager stores them: ids.
    spec.task.networks = vec![
        NetworkAttachmentConfig {
            target: "netfront0001".into(),
            aliases: vec![],
        },
        NetworkAttachmentConfig {
            target: "netback00002".into(),
            aliases: vec!["db".into()],
        },
    ];
    let upd = |spec: ServiceSpec, args: &[&str]| {
        let mut v = vec!["update"];
        v.extend_from_slice(args);
        v.push("web");
        match parse(&v) {
            ServiceCmd::Update(a) => {
                assert!(update_needs_networks(&a));
                update_spec(spec, &a, &nets)
            }
            _ => unreachable!(),
        }
    };
    let u = upd(spec.clone(), &["--network-rm", "front"]).unwrap();
    let targets: Vec<&str> = u.task.networks.iter().map(|n| n.target.as_str()).collect();
    assert_eq!(targets, vec!["netback00002"]);
    let u = upd(spec.clone(), &["--network-rm", "netback"]).unwrap();
    assert_eq!(u.task.networks.len(), 1);
    assert_eq!(u.task.networks[0].target, "netfront0001");
    let e = upd(spec.clone(), &["--network-add", "back"]).unwrap_err();
    assert_eq!(e, "service is already attached to network back");
    let u = upd(
        spec.clone(),
        &[
            "--network-rm",
            "back",
            "--network-add",
            "name=back,alias=store",
        ],
    )
    .unwrap();
    assert_eq!(u.task.networks[1].target, "back");
    assert_eq!(u.task.networks[1].aliases, vec!["store"]);
    let u = upd(spec.clone(), &["--network-add", "other"]).unwrap();
    assert_eq!(u.task.networks.len(), 3);
    // Removing a network the service is not on changes nothing (as Docker).
    let u = upd(spec.clone(), &["--network-rm", "nope"]).unwrap();
    assert_eq!(u.task.networks, spec.task.networks);
}

#[test]
fn update_ports_dns_and_endpoint_mode() {
    let mut spec = base();
    spec.endpoint.ports = vec![port(8080, 80), port(0, 443)];
    let u = update(spec.clone(), &["--publish-add", "9090:90"]).unwrap();
    assert_eq!(
        u.endpoint.ports,
        vec![port(8080, 80), port(0, 443), port(9090, 90)]
    );
    // The same port again: kept once; the same published port: replaced.
    let u = update(spec.clone(), &["--publish-add", "8080:80"]).unwrap();
    assert_eq!(u.endpoint.ports, spec.endpoint.ports);
    let u = update(spec.clone(), &["--publish-add", "8080:81"]).unwrap();
    assert_eq!(u.endpoint.ports, vec![port(0, 443), port(8080, 81)]);
    let u = update(spec.clone(), &["--publish-rm", "80"]).unwrap();
    assert_eq!(u.endpoint.ports, vec![port(0, 443)]);
    let u = update(spec.clone(), &["--publish-rm", "published=8080"]).unwrap();
    assert_eq!(u.endpoint.ports, vec![port(0, 443)]);
    let u = update(
        spec.clone(),
        &["--publish-rm", "8080:80", "--publish-rm", "443"],
    )
    .unwrap();
    assert!(u.endpoint.ports.is_empty());
    let u = update(spec.clone(), &["--publish-rm", "80/udp"]).unwrap();
    assert_eq!(u.endpoint.ports, spec.endpoint.ports);
    // Docker's order: remove, then add.
    let u = update(
        spec.clone(),
        &["--publish-rm", "80", "--publish-add", "8080:8000"],
    )
    .unwrap();
    assert_eq!(u.endpoint.ports, vec![port(0, 443), port(8080, 8000)]);
    let e = update(spec.clone(), &["--endpoint-mode", "dnsrr"]).unwrap_err();
    assert!(e.contains("dnsrr cannot serve"), "{e}");
    let u = update(
        spec.clone(),
        &[
            "--endpoint-mode",
            "dnsrr",
            "--publish-rm",
            "80",
            "--publish-rm",
            "443",
        ],
    )
    .unwrap();
    assert_eq!(u.endpoint.mode, EndpointMode::Dnsrr);

    spec.task.dns = DnsConfig {
        nameservers: vec!["10.0.0.2".into()],
        search: vec!["a.example".into()],
        options: vec!["ndots:2".into()],
    };
    let u = update(
        spec.clone(),
        &[
            "--dns-add",
            "10.0.0.3",
            "--dns-add",
            "10.0.0.2",
            "--dns-rm",
            "10.0.0.9",
            "--dns-search-rm",
            "a.example",
            "--dns-search-add",
            "b.example",
            "--dns-option-add",
            "rotate",
            "--dns-option-rm",
            "ndots:2",
            "--hostname",
            "h1",
        ],
    )
    .unwrap();
    assert_eq!(u.task.dns.nameservers, vec!["10.0.0.2", "10.0.0.3"]);
    assert_eq!(u.task.dns.search, vec!["b.example"]);
    assert_eq!(u.task.dns.options, vec!["rotate"]);
    assert_eq!(u.task.hostname, "h1");
    let u = update(spec.clone(), &["--dns-rm", "10.0.0.2"]).unwrap();
    assert!(u.task.dns.nameservers.is_empty());
}
