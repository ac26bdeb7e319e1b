//! Requests that used to be accepted and broke the cluster, refused by the managers' control
//! API with a clear one-line message: publishing the nodes' own ports, image references
//! outside Docker's grammar, `--user` with three parts, an overlay subnet holding a node's
//! address, node labels of 100 KB (through the CLI) and 3 MB (a raw gRPC call).
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
