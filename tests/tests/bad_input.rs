//! Requests that used to be accepted and broke the cluster, refused by the managers' control
//! API with a clear one-line message: publishing the nodes' own ports, image references
//! outside Docker's grammar, `--user` with three parts, an overlay subnet holding a node's
//! address, node labels of 100 KB (through the CLI) and 3 MB (a raw gRPC call), mounts only an
//! API client would send, an ingress network over the node's own address.
//!
//! A one-node swarm on loopback (its manager on a free port of 127.0.0.1), no lab needed.

use anyhow::{ensure, Context, Result};
use harness::SoloDaemon;
use proto::pb;

/// A one-node swarm; its manager listens on a free port of 127.0.0.1, returned too.
fn swarm() -> Result<(SoloDaemon, u16)> {
    let d = SoloDaemon::start(&[])?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr = format!("127.0.0.1:{port}");
    d.shoal(&[
        "swarm",
        "init",
        "--advertise-addr",
        &addr,
        "--listen-addr",
        &addr,
    ])
    .context("swarm init")?;
    Ok((d, port))
}

/// `shoal <args>` fails and its one-line message is `want` (after "Error response from
/// daemon: " or "Error: ").
fn refused(d: &SoloDaemon, args: &[&str], want: &str) -> Result<()> {
    let result = d.shoal(args);
    // The arguments as a failure shows them: long ones cut.
    let args: Vec<String> = args.iter().map(|a| a.chars().take(60).collect()).collect();
    let e = match result {
        Ok(out) => anyhow::bail!("{args:?} was accepted: {out}"),
        Err(e) => e.to_string(),
    };
    ensure!(e.lines().count() == 1, "not one line: {e}");
    ensure!(e.ends_with(want), "{args:?}: expected {want:?}, got {e:?}");
    Ok(())
}

#[test]
fn bad_requests_are_refused_with_a_clear_message() -> Result<()> {
    let (d, port) = swarm()?;
    // Item 7: the nodes' own ports.
    refused(
        &d,
        &["service", "create", "-p", "2377:80", "busybox"],
        "port 2377/tcp cannot be published: the nodes use it for the managers' control port; publish another port",
    )?;
    refused(
        &d,
        &["service", "create", "-p", "4789:80/udp", "busybox"],
        "port 4789/udp cannot be published: the nodes use it for overlay network traffic (VXLAN); publish another port",
    )?;
    let own = format!("{port}:80");
    let e = d
        .shoal(&["service", "create", "-p", &own, "busybox"])
        .err()
        .context("publishing the manager's own port was accepted")?;
    ensure!(e.to_string().contains("the control port of manager"), "{e}");
    // Item 8: image references, in Docker's words.
    refused(
        &d,
        &["service", "create", "foo bar"],
        "invalid reference format",
    )?;
    refused(
        &d,
        &["service", "create", "Foo"],
        "invalid reference format: repository name (library/Foo) must be lowercase",
    )?;
    let long = "a".repeat(300);
    refused(
        &d,
        &["service", "create", &long],
        "invalid reference format: repository name must not be more than 255 characters",
    )?;
    refused(
        &d,
        &["service", "create", "--user", "root:root:root", "busybox"],
        "invalid --user \"root:root:root\": expected USER[:GROUP], each a name or a numeric id",
    )?;
    // An overlay holding the node's own address.
    let e = d
        .shoal(&["network", "create", "--subnet", "127.0.0.0/24", "lo-net"])
        .err()
        .context("an overlay over the node's address was accepted")?;
    ensure!(
        e.to_string()
            .contains("holds the address 127.0.0.1 of node"),
        "{e}"
    );
    // Nothing of the above was stored.
    ensure!(d.shoal(&["service", "ls", "-q"])?.trim().is_empty());
    // A well-formed request still goes through.
    d.shoal(&[
        "service",
        "create",
        "--detach",
        "--name",
        "ok",
        "-p",
        "8080:80",
        "busybox:1.36",
    ])?;
    Ok(())
}

#[test]
fn node_labels_of_100kb_and_3mb_are_refused() -> Result<()> {
    let (d, _) = swarm()?;
    let id = d.shoal(&["node", "ls", "-q"])?.trim().to_string();
    let label = format!("big={}", "v".repeat(100 * 1024));
    refused(
        &d,
        &["node", "update", "--label-add", &label, &id],
        "node label \"big\" has a value of 102400 bytes; the limit is 4096",
    )?;
    // 3 MB straight to the control API over the local socket.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let status = rt.block_on(async {
        let ch = proto::transport::unix_channel(d.socket()).await?;
        let mut c = pb::control_client::ControlClient::new(ch);
        let req = pb::UpdateNodeRequest {
            id: id.clone(),
            label_add: vec![format!("huge={}", "v".repeat(3 << 20))],
            ..Default::default()
        };
        anyhow::Ok(c.update_node(req).await)
    })?;
    let e = match status {
        Ok(_) => anyhow::bail!("a 3 MB label was accepted"),
        Err(e) => e,
    };
    ensure!(
        e.message().contains("message length too large"),
        "expected the request size limit, got {e:?}"
    );
    let node = d.shoal(&["node", "inspect", &id])?;
    ensure!(!node.contains("huge") && !node.contains("big"), "{node}");
    Ok(())
}

/// `CreateService` / `UpdateService` from an API client that is not the CLI (the CLI's own
/// parser would never build these specs): a bad mount is refused with a one-line error naming
/// the spec's field, and nothing is created or changed (before, the service was stored and its
/// tasks were REJECTED on the nodes).
#[test]
fn bad_mounts_from_an_api_client_are_refused_and_nothing_is_created() -> Result<()> {
    let (d, _) = swarm()?;
    use proto::spec::{Mount, MountKind, ServiceMode, ServiceSpec, TaskSpec};
    let spec = |name: &str, mounts: Vec<Mount>| {
        Some(pb::ServiceSpec::from(&ServiceSpec {
            name: name.into(),
            labels: Default::default(),
            mode: ServiceMode::Replicated { replicas: 1 },
            task: TaskSpec {
                image: "busybox:1.36".into(),
                mounts,
                ..Default::default()
            },
            update: Default::default(),
            rollback: Default::default(),
            endpoint: Default::default(),
        }))
    };
    let m = |kind, source: &str, target: &str| Mount {
        kind,
        source: source.into(),
        target: target.into(),
        readonly: false,
        volume_options: Default::default(),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let bad = [
        (
            vec![m(MountKind::Bind, "relative/dir", "/data")],
            "spec.task.mounts[0].source: invalid mount config for type \"bind\": source \"relative/dir\" must be an absolute host path",
        ),
        (
            vec![m(MountKind::Tmpfs, "", "data")],
            "spec.task.mounts[0].target: invalid mount target \"data\": must be an absolute path",
        ),
        (
            vec![m(MountKind::Volume, "../../etc", "/x")],
            "spec.task.mounts[0].source: invalid volume name \"../../etc\": use letters, digits, '_', '.' or '-', starting with a letter or digit",
        ),
        (
            vec![m(MountKind::Tmpfs, "", "/x"), m(MountKind::Volume, "v", "/x")],
            "spec.task.mounts[1].target: duplicate mount point \"/x\": mount each target once",
        ),
    ];
    rt.block_on(async {
        let ch = proto::transport::unix_channel(d.socket()).await?;
        let mut c = pb::control_client::ControlClient::new(ch);
        for (mounts, want) in &bad {
            let e = c
                .create_service(pb::ServiceSpecRequest {
                    spec: spec("bad", mounts.clone()),
                })
                .await
                .err()
                .with_context(|| format!("{mounts:?} was accepted"))?;
            ensure!(e.code() == tonic::Code::InvalidArgument, "{e:?}");
            ensure!(e.message() == *want, "{mounts:?}: {:?}", e.message());
        }
        // A good service, then a bad update of it: refused, the spec unchanged.
        c.create_service(pb::ServiceSpecRequest {
            spec: spec("good", vec![m(MountKind::Tmpfs, "", "/x")]),
        })
        .await?;
        let e = c
            .update_service(pb::UpdateServiceRequest {
                id: "good".into(),
                spec: spec("good", bad[0].0.clone()),
                ..Default::default()
            })
            .await
            .err()
            .context("a bad mount was accepted by an update")?;
        ensure!(e.message() == bad[0].1, "{:?}", e.message());
        anyhow::Ok(())
    })?;
    let services = d.shoal(&["service", "ls"])?;
    ensure!(
        services.contains("good") && !services.contains("bad"),
        "services: {services}"
    );
    let inspect = d.shoal(&["service", "inspect", "good"])?;
    ensure!(
        inspect.contains("/x") && !inspect.contains("relative/dir"),
        "{inspect}"
    );
    Ok(())
}

/// `swarm init` on a node whose address is in the default address pool: the ingress network
/// takes a subnet that does not hold it, and a pool with no such subnet is refused.
#[test]
fn the_ingress_network_does_not_hold_the_nodes_address() -> Result<()> {
    let init = |d: &SoloDaemon, pool: &str, mask: &str| {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr = format!("127.0.0.1:{port}");
        d.shoal(&[
            "swarm",
            "init",
            "--advertise-addr",
            &addr,
            "--listen-addr",
            &addr,
            "--default-addr-pool",
            pool,
            "--default-addr-pool-mask-length",
            mask,
        ])
    };
    let d = SoloDaemon::start(&[])?;
    let e = init(&d, "127.0.0.0/24", "24")
        .err()
        .context("an ingress network over the node's own address was accepted")?;
    ensure!(
        e.to_string().ends_with(
            ": every /24 subnet of 127.0.0.0/24 holds an address of this node (127.0.0.1), and the ingress network must not; choose another pool (--default-addr-pool)"
        ),
        "{e}"
    );
    init(&d, "127.0.0.0/16", "24").context("swarm init")?;
    let ingress: serde_json::Value =
        serde_json::from_str(&d.shoal(&["network", "inspect", "ingress"])?)?;
    let subnet = ingress
        .pointer("/0/IPAM/Config/0/Subnet")
        .or_else(|| ingress.pointer("/0/subnet"))
        .or_else(|| ingress.pointer("/subnet"))
        .and_then(|s| s.as_str())
        .with_context(|| format!("no subnet in {ingress}"))?
        .to_string();
    ensure!(subnet == "127.0.1.0/24", "ingress subnet {subnet}");
    Ok(())
}
