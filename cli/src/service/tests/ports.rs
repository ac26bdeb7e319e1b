use super::*;

#[test]
fn publish_short_syntax() {
    assert_eq!(ports("8080:80"), vec![port(8080, 80)]);
    assert_eq!(ports("80"), vec![port(0, 80)], "the manager picks the port");
    let udp = ports("8080:80/udp");
    assert_eq!(udp[0].protocol, PortProtocol::Udp);
    assert_eq!((udp[0].published_port, udp[0].target_port), (8080, 80));
    assert_eq!(ports("53/UDP")[0].protocol, PortProtocol::Udp);
    assert_eq!(ports("8080:80/tcp"), vec![port(8080, 80)]);
    assert_eq!(
        ports("8080-8082:80-82"),
        vec![port(8080, 80), port(8081, 81), port(8082, 82)]
    );
    assert_eq!(ports("80-81"), vec![port(0, 80), port(0, 81)]);
}

#[test]
fn publish_long_syntax() {
    assert_eq!(ports("published=8080,target=80"), vec![port(8080, 80)]);
    assert_eq!(ports("target=80"), vec![port(0, 80)]);
    let p = ports("mode=host,published=8080,target=80,protocol=udp");
    assert_eq!(
        p,
        vec![PortConfig {
            protocol: PortProtocol::Udp,
            target_port: 80,
            published_port: 8080,
            publish_mode: PublishMode::Host,
        }]
    );
    assert_eq!(
        ports("mode=ingress, target=80")[0].publish_mode,
        PublishMode::Ingress
    );
}

#[test]
fn publish_errors_say_what_is_wrong() {
    for (s, want) in [
        (
            "8080:abc",
            "invalid publish \"8080:abc\": target port must be 1-65535",
        ),
        (
            "abc:80",
            "invalid publish \"abc:80\": published port must be 0-65535",
        ),
        ("0", "target port must be 1-65535"),
        ("70000", "target port must be 1-65535"),
        ("8080:", "target port must be 1-65535"),
        ("", "empty value"),
        ("1.2.3.4:8080:80", "a host IP is not supported"),
        ("a:b:c:d", "use [PUBLISHED:]TARGET"),
        ("80/sctp", "protocol sctp is not supported: use tcp or udp"),
        ("80/icmp", "unknown protocol \"icmp\""),
        ("8080-8081:80", "differ in length"),
        ("82-80", "ends before it starts"),
        ("published=8080", "target is required"),
        ("published=8080,target=x", "target port must be 1-65535"),
        ("target=80,mode=mesh", "mode \"mesh\": use ingress or host"),
        ("target=80,color=red", "unknown field \"color\""),
        ("target=80,udp", "is not KEY=VALUE"),
        ("target=80-81", "target must be a single port"),
    ] {
        let e = parse_publish(s).expect_err(s);
        assert!(e.contains(want), "{s:?}: {e}");
        assert!(!e.contains('\n'));
    }
    let e = usage_error(&["create", "-p", "8080:abc", "busybox"]);
    assert!(
        e.contains("invalid publish \"8080:abc\": target port must be 1-65535")
            && !e.contains('\n'),
        "{e}"
    );
}

#[test]
fn publish_rm_patterns() {
    let m = |s: &str| parse_publish_rm(s).unwrap().0;
    let p = port(8080, 80);
    assert!(m("80")[0].matches(&p));
    assert!(m("8080:80")[0].matches(&p));
    assert!(!m("8081:80")[0].matches(&p));
    assert!(!m("80/udp")[0].matches(&p));
    assert!(m("published=8080")[0].matches(&p));
    assert!(!m("published=8081")[0].matches(&p));
    assert!(m("published=8080,mode=ingress")[0].matches(&p));
    assert!(!m("published=8080,mode=host")[0].matches(&p));
    // A spec's published 0: the target decides.
    assert!(m("30001:80")[0].matches(&port(0, 80)));
    assert!(!m("published=30001")[0].matches(&port(0, 80)));
    let e = parse_publish_rm("mode=host").unwrap_err();
    assert!(e.contains("give target=PORT or published=PORT"), "{e}");
    assert_eq!(m("80-81").len(), 2);
}

#[test]
fn ports_text_as_docker() {
    assert_eq!(ports_text(&[]), "");
    assert_eq!(ports_text(&[port(8080, 80)]), "*:8080->80/tcp");
    let mut udp = port(53, 53);
    udp.protocol = PortProtocol::Udp;
    assert_eq!(
        ports_text(&[udp.clone(), port(9090, 90), port(8080, 80)]),
        "*:8080->80/tcp, *:9090->90/tcp, *:53->53/udp"
    );
    assert_eq!(
        ports_text(&[
            port(8081, 81),
            port(8080, 80),
            port(8082, 82),
            port(9000, 83)
        ]),
        "*:8080-8082->80-82/tcp, *:9000->83/tcp"
    );
    assert_eq!(ports_text(&[port(0, 80)]), "80/tcp");
    let mut host = port(8081, 81);
    host.publish_mode = PublishMode::Host;
    assert_eq!(
        ports_text(&[port(8080, 80), host]),
        "*:8080->80/tcp, *:8081->81/tcp"
    );
}

#[test]
fn ls_ports_column_prefers_resolved_ports() {
    let mut v = view("web", ServiceMode::Replicated { replicas: 1 }, 1, 1);
    v.spec.endpoint.ports = vec![port(0, 80), port(8443, 443)];
    let rows = ls_rows(std::slice::from_ref(&v));
    assert_eq!(rows[0].0[5], "80/tcp, *:8443->443/tcp");
    v.endpoint.ports = vec![port(30000, 80), port(8443, 443)];
    let rows = ls_rows(&[v]);
    assert_eq!(rows[0].0[5], "*:8443->443/tcp, *:30000->80/tcp");
    let j: Value = serde_json::from_str(&rows[0].1).unwrap();
    assert_eq!(j["Ports"], "*:8443->443/tcp, *:30000->80/tcp");
}
