//! `shoal network …`: overlay networks with Docker's verbs, flags and output shapes.
//!
//! The flag → spec conversion ([`build_network_spec`]), the address checks ([`parse_cidr`],
//! [`parse_ipv4`]), the filters ([`NetFilter`]) and the renderings ([`ls_rows`],
//! [`inspect_json`]) are pure; the async functions at the bottom only talk to the daemon and
//! print.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use clap::{Args, Subcommand};
use proto::api::NetworkView;
use proto::spec::NetworkSpec;
use serde_json::{json, Value};

use crate::client::Client;
use crate::commands::{last_error, CliError};
use crate::output::{json_line, print_rows, Format};

/// The only driver: VXLAN overlays spanning the swarm.
pub const OVERLAY: &str = "overlay";

/// Every shoal network spans the swarm.
pub const SCOPE: &str = "swarm";

/// The option under which Docker shows an overlay's VNI.
pub const VXLANID_OPTION: &str = "com.docker.network.driver.overlay.vxlanid_list";

// ---------------------------------------------------------------- flags

#[derive(Subcommand, Debug)]
pub enum NetworkCmd {
    /// Create a network.
    Create(CreateArgs),
    /// List networks.
    #[command(alias = "list")]
    Ls(LsArgs),
    /// Display detailed information on one or more networks.
    Inspect(InspectArgs),
    /// Remove one or more networks.
    #[command(alias = "remove")]
    Rm(RmArgs),
}

#[derive(Args, Debug, Clone)]
pub struct CreateArgs {
    /// Driver to manage the network (only "overlay").
    #[arg(short = 'd', long, default_value = OVERLAY)]
    pub driver: String,
    /// Subnet in CIDR format, e.g. 10.0.9.0/24 (default: the next free one from the swarm's
    /// address pool).
    #[arg(long, value_name = "CIDR")]
    pub subnet: Option<String>,
    /// Gateway of the subnet (default: its first address); needs --subnet.
    #[arg(long, value_name = "IP")]
    pub gateway: Option<String>,
    /// Enable manual container attachment.
    #[arg(long)]
    pub attachable: bool,
    /// Restrict external access to the network.
    #[arg(long)]
    pub internal: bool,
    /// Create the swarm routing-mesh network.
    #[arg(long)]
    pub ingress: bool,
    /// Set metadata on the network (KEY=VALUE).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Set driver specific options (KEY=VALUE).
    #[arg(short = 'o', long = "opt", value_name = "KEY=VALUE")]
    pub opts: Vec<String>,
    /// Name of the network.
    pub name: String,
}

#[derive(Args, Debug, Clone)]
pub struct LsArgs {
    /// Provide filter values (e.g. name=front, driver=overlay, id=3f2a, label=env=prod).
    #[arg(short, long = "filter", value_name = "KEY=VALUE")]
    pub filter: Vec<String>,
    /// Format output: table or json.
    #[arg(long, default_value = "table")]
    pub format: Format,
    /// Do not truncate the output.
    #[arg(long)]
    pub no_trunc: bool,
    /// Only display network IDs.
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Args, Debug, Clone)]
pub struct InspectArgs {
    /// Format output: json (Docker's default, a JSON array).
    #[arg(short, long, default_value = "json")]
    pub format: String,
    /// Networks: id, unique id prefix or name.
    #[arg(required = true, value_name = "NETWORK")]
    pub networks: Vec<String>,
}

#[derive(Args, Debug, Clone)]
pub struct RmArgs {
    /// Networks: id, unique id prefix or name.
    #[arg(required = true, value_name = "NETWORK")]
    pub networks: Vec<String>,
}

// ---------------------------------------------------------------- addresses

/// An IPv4 address as the user wrote it for `flag`.
pub fn parse_ipv4(flag: &str, s: &str) -> Result<Ipv4Addr, String> {
    s.trim()
        .parse::<Ipv4Addr>()
        .map_err(|_| format!("invalid {flag} {s:?}: use an IPv4 address such as 10.0.9.1"))
}

/// An IPv4 network in CIDR notation with no host bits set: `10.0.9.0/24`.
pub fn parse_cidr(flag: &str, s: &str) -> Result<(Ipv4Addr, u8), String> {
    let bad = || format!("invalid {flag} {s:?}: use an IPv4 CIDR such as 10.0.9.0/24");
    let (addr, len) = s.trim().split_once('/').ok_or_else(bad)?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
    if len.is_empty() || !len.chars().all(|c| c.is_ascii_digit()) {
        return Err(bad());
    }
    let len: u8 = len.parse().map_err(|_| bad())?;
    if len > 32 {
        return Err(bad());
    }
    let net = Ipv4Addr::from(u32::from(addr) & mask(len));
    if net != addr {
        return Err(format!(
            "invalid {flag} {s:?}: host bits are set; the network is {net}/{len}"
        ));
    }
    Ok((addr, len))
}

fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

/// Whether `ip` is a usable host address of `net/len` (not the network or broadcast address).
pub fn is_host_of(ip: Ipv4Addr, net: Ipv4Addr, len: u8) -> bool {
    let (ip, net, m) = (u32::from(ip), u32::from(net), mask(len));
    ip & m == net && ip != net && ip != (net | !m)
}

/// `swarm init --default-addr-pool CIDR… --default-addr-pool-mask-length N`: the pools, and a
/// mask length that fits inside every one of them.
pub fn check_addr_pools(pools: &[String], mask_len: u32) -> Result<(), String> {
    if !(8..=29).contains(&mask_len) {
        return Err(format!(
            "invalid --default-addr-pool-mask-length {mask_len}: use a prefix length from 8 to 29"
        ));
    }
    for p in pools {
        let (_, len) = parse_cidr("--default-addr-pool", p)?;
        if u32::from(len) > mask_len {
            return Err(format!(
                "--default-addr-pool {p} is smaller than a /{mask_len} subnet: use a larger pool or a longer --default-addr-pool-mask-length"
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- flags → spec

/// Docker's network names: a letter or digit, then letters, digits, `_`, `.` or `-`.
pub fn check_network_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !first_ok || !rest_ok || name.len() > 63 {
        return Err(format!(
            "invalid network name {name:?}: use up to 63 letters, digits, '_', '.' or '-', starting with a letter or digit"
        ));
    }
    Ok(())
}

fn key_value(flag: &str, s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').unwrap_or((s, ""));
    if k.trim().is_empty() {
        return Err(format!(
            "invalid argument {s:?} for \"{flag}\" flag: empty key"
        ));
    }
    Ok((k.to_string(), v.to_string()))
}

/// The spec `network create` sends, with everything checked that can be without the cluster.
pub fn build_network_spec(a: &CreateArgs) -> Result<NetworkSpec, String> {
    check_network_name(&a.name)?;
    if a.driver != OVERLAY {
        return Err(format!(
            "invalid driver {:?}: only the overlay driver is supported",
            a.driver
        ));
    }
    if let Some(o) = a.opts.first() {
        let (k, _) = key_value("--opt", o)?;
        return Err(if k == "encrypted" {
            "--opt encrypted: encrypted overlay networks are not supported".to_string()
        } else {
            format!("--opt {k:?}: unsupported option (shoal's overlay driver takes no options)")
        });
    }
    let mut subnet = String::new();
    let mut gateway = String::new();
    if let Some(s) = &a.subnet {
        let (net, len) = parse_cidr("--subnet", s)?;
        if len > 29 {
            return Err(format!(
                "--subnet {s} is too small for an overlay: use a prefix of /29 or shorter"
            ));
        }
        subnet = format!("{net}/{len}");
        if let Some(g) = &a.gateway {
            let ip = parse_ipv4("--gateway", g)?;
            if !is_host_of(ip, net, len) {
                return Err(format!(
                    "--gateway {ip} is not a host address of --subnet {subnet}"
                ));
            }
            gateway = ip.to_string();
        }
    } else if let Some(g) = &a.gateway {
        parse_ipv4("--gateway", g)?;
        return Err(format!(
            "--gateway {g} needs --subnet: give the subnet the gateway belongs to"
        ));
    }
    if a.ingress && a.attachable {
        return Err(
            "--ingress and --attachable conflict: the ingress network cannot be attachable".into(),
        );
    }
    let mut labels = BTreeMap::new();
    for l in &a.labels {
        let (k, v) = key_value("--label", l)?;
        labels.insert(k, v);
    }
    Ok(NetworkSpec {
        name: a.name.clone(),
        driver: OVERLAY.into(),
        subnet,
        gateway,
        attachable: a.attachable,
        internal: a.internal,
        ingress: a.ingress,
        labels,
    })
}

// ---------------------------------------------------------------- lookups

/// The network `s` names, as the manager resolves it: exact name, exact id, or unique id
/// prefix.
pub fn resolve<'a>(nets: &'a [NetworkView], s: &str) -> Option<&'a NetworkView> {
    if s.is_empty() {
        return None;
    }
    if let Some(n) = nets.iter().find(|n| n.spec.name == s) {
        return Some(n);
    }
    if let Some(n) = nets.iter().find(|n| n.id == s) {
        return Some(n);
    }
    let mut prefixed = nets.iter().filter(|n| n.id.starts_with(s));
    match (prefixed.next(), prefixed.next()) {
        (Some(n), None) => Some(n),
        _ => None,
    }
}

/// The id `s` stands for if it names a known network, else `s` itself.
pub fn canonical(nets: &[NetworkView], s: &str) -> String {
    resolve(nets, s)
        .map(|n| n.id.clone())
        .unwrap_or_else(|| s.to_string())
}

/// The name to show for a network target (an id once the manager normalised the spec).
pub fn display_name(nets: &[NetworkView], target: &str) -> String {
    resolve(nets, target)
        .map(|n| n.spec.name.clone())
        .unwrap_or_else(|| target.to_string())
}

// ---------------------------------------------------------------- filters

/// `network ls --filter`: values of one key are alternatives, different keys must all match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetFilter {
    pub name: Vec<String>,
    pub id: Vec<String>,
    pub driver: Vec<String>,
    pub scope: Vec<String>,
    /// `KEY` or `KEY=VALUE`.
    pub label: Vec<String>,
    /// `custom` or `builtin` (every shoal network is custom).
    pub kind: Vec<String>,
}

impl NetFilter {
    pub fn parse(filters: &[String]) -> Result<Self, String> {
        let mut f = NetFilter::default();
        for s in filters {
            let Some((k, v)) = s.split_once('=') else {
                return Err(format!(
                    "invalid filter '{s}': use KEY=VALUE with name, id, driver, scope, label or type"
                ));
            };
            let list = match k.trim() {
                "name" => &mut f.name,
                "id" => &mut f.id,
                "driver" => &mut f.driver,
                "scope" => &mut f.scope,
                "label" => &mut f.label,
                "type" => {
                    if v != "custom" && v != "builtin" {
                        return Err(format!("invalid filter 'type={v}': use custom or builtin"));
                    }
                    &mut f.kind
                }
                other => {
                    return Err(format!(
                        "invalid filter '{other}': use name, id, driver, scope, label or type"
                    ))
                }
            };
            list.push(v.to_string());
        }
        Ok(f)
    }

    pub fn matches(&self, n: &NetworkView) -> bool {
        let any = |vals: &[String], pred: &dyn Fn(&str) -> bool| {
            vals.is_empty() || vals.iter().any(|v| pred(v))
        };
        any(&self.name, &|v| n.spec.name.contains(v))
            && any(&self.id, &|v| n.id.contains(v))
            && any(&self.driver, &|v| n.spec.driver == v)
            && any(&self.scope, &|v| v == SCOPE)
            && any(&self.label, &|v| match v.split_once('=') {
                Some((k, val)) => n.spec.labels.get(k).is_some_and(|x| x == val),
                None => n.spec.labels.contains_key(v),
            })
            && any(&self.kind, &|v| v == "custom")
    }
}

// ---------------------------------------------------------------- rendering

pub const LS_HEADERS: [&str; 4] = ["NETWORK ID", "NAME", "DRIVER", "SCOPE"];

/// Go's `time.Time` as `{{.CreatedAt}}` prints it: `2024-01-09 09:31:08.497 +0000 UTC`.
pub fn go_time(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    let s = humantime::format_rfc3339_millis(t).to_string();
    let s = s.trim_end_matches('Z').replacen('T', " ", 1);
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s} +0000 UTC")
}

/// Go's RFC 3339 with the fraction's trailing zeros dropped, as Docker's JSON has it.
pub fn go_rfc3339(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    let s = humantime::format_rfc3339_millis(t).to_string();
    let s = s
        .trim_end_matches('Z')
        .trim_end_matches('0')
        .trim_end_matches('.');
    format!("{s}Z")
}

fn labels_text(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// `network ls` rows (table cells and JSON line each), sorted by name, filtered.
pub fn ls_rows(
    views: &[NetworkView],
    filter: &NetFilter,
    no_trunc: bool,
) -> Vec<(Vec<String>, String)> {
    let mut vs: Vec<&NetworkView> = views.iter().filter(|n| filter.matches(n)).collect();
    vs.sort_by(|a, b| a.spec.name.cmp(&b.spec.name).then(a.id.cmp(&b.id)));
    vs.into_iter()
        .map(|n| {
            let id = if no_trunc {
                n.id.clone()
            } else {
                crate::service::short_id(&n.id)
            };
            let cells = vec![
                id.clone(),
                n.spec.name.clone(),
                n.spec.driver.clone(),
                SCOPE.to_string(),
            ];
            // Docker renders every field of `network ls --format json` as a string.
            let j = json_line(vec![
                ("Attachable", json!(n.spec.attachable.to_string())),
                ("CreatedAt", json!(go_time(n.created_at_ms))),
                ("Driver", json!(n.spec.driver)),
                ("ID", json!(id)),
                ("IPv6", json!("false")),
                ("Ingress", json!(n.spec.ingress.to_string())),
                ("Internal", json!(n.spec.internal.to_string())),
                ("Labels", json!(labels_text(&n.spec.labels))),
                ("Name", json!(n.spec.name)),
                ("Scope", json!(SCOPE)),
                ("Subnet", json!(n.subnet)),
            ]);
            (cells, j)
        })
        .collect()
}

/// `network inspect`: one network as Docker shows it, plus the names of its services.
pub fn inspect_json(n: &NetworkView) -> Value {
    let mut ipam = serde_json::Map::new();
    ipam.insert("Subnet".into(), json!(n.subnet));
    if !n.gateway.is_empty() {
        ipam.insert("Gateway".into(), json!(n.gateway));
    }
    json!({
        "Name": n.spec.name,
        "Id": n.id,
        "Created": go_rfc3339(n.created_at_ms),
        "Scope": SCOPE,
        "Driver": n.spec.driver,
        "EnableIPv6": false,
        "IPAM": {
            "Driver": "default",
            "Options": null,
            "Config": [Value::Object(ipam)],
        },
        "Internal": n.spec.internal,
        "Attachable": n.spec.attachable,
        "Ingress": n.spec.ingress,
        "ConfigFrom": {"Network": ""},
        "ConfigOnly": false,
        "Options": { VXLANID_OPTION: n.vni.to_string() },
        "Labels": n.spec.labels,
        "Services": n.services,
    })
}

// ---------------------------------------------------------------- talking to the daemon

pub async fn run(c: Client, cmd: NetworkCmd) -> Result<(), CliError> {
    match cmd {
        NetworkCmd::Create(a) => {
            let spec = build_network_spec(&a).map_err(|e| CliError(format!("Error: {e}")))?;
            let v = c.create_network(&spec).await?;
            println!("{}", v.id);
            Ok(())
        }
        NetworkCmd::Ls(a) => {
            let filter =
                NetFilter::parse(&a.filter).map_err(|e| CliError(format!("Error: {e}")))?;
            let views = c.list_networks().await?;
            let rows = ls_rows(&views, &filter, a.no_trunc);
            if a.quiet {
                for (cells, _) in &rows {
                    println!("{}", cells[0]);
                }
                return Ok(());
            }
            print_rows(&LS_HEADERS, rows, a.format);
            Ok(())
        }
        NetworkCmd::Inspect(a) => {
            if !matches!(a.format.as_str(), "" | "json") {
                crate::template::Template::parse(&a.format)
                    .map_err(|e| CliError(format!("Error: {e}")))?;
            }
            let mut out = Vec::new();
            let mut errs = Vec::new();
            for n in &a.networks {
                match c.get_network(n).await {
                    Ok(v) => out.push(inspect_json(&v)),
                    Err(e) => errs.push(format!("Error: {e}")),
                }
            }
            crate::output::print_inspect(out, &a.format)
                .map_err(|e| CliError(format!("Error: {e}")))?;
            last_error(errs)
        }
        NetworkCmd::Rm(a) => {
            let mut errs = Vec::new();
            for n in &a.networks {
                let ingress = c.get_network(n).await.is_ok_and(|v| v.spec.ingress);
                match c.remove_network(n).await {
                    Ok(()) => {
                        if ingress {
                            eprintln!("{INGRESS_REMOVED}");
                        }
                        println!("{n}");
                    }
                    Err(e) => errs.push(CliError::from(e).0),
                }
            }
            last_error(errs)
        }
    }
}

/// Said when the routing mesh's network is removed.
pub const INGRESS_REMOVED: &str = "WARNING! The routing-mesh (ingress) network is removed: published ports (-p) are refused until one is created again (shoal network create -d overlay --ingress ingress)";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::{one_line_usage_error, Cli, Cmd};
    use crate::output::table;
    use clap::Parser;

    fn parse(args: &[&str]) -> NetworkCmd {
        let mut v = vec!["shoal", "network"];
        v.extend_from_slice(args);
        match Cli::try_parse_from(v).expect("parses").cmd {
            Cmd::Network(n) => n,
            other => panic!("not a network command: {other:?}"),
        }
    }

    fn create(args: &[&str]) -> Result<NetworkSpec, String> {
        let mut v = vec!["create"];
        v.extend_from_slice(args);
        match parse(&v) {
            NetworkCmd::Create(a) => build_network_spec(&a),
            _ => unreachable!(),
        }
    }

    fn view(id: &str, name: &str) -> NetworkView {
        NetworkView {
            id: id.into(),
            version: 1,
            spec: NetworkSpec {
                name: name.into(),
                driver: OVERLAY.into(),
                ..Default::default()
            },
            vni: 4097,
            subnet: "10.0.1.0/24".into(),
            gateway: "10.0.1.1".into(),
            created_at_ms: 1_704_792_668_497,
            updated_at_ms: 1_704_792_668_497,
            services: vec![],
        }
    }

    #[test]
    fn create_flags_fill_the_spec() {
        let s = create(&[
            "-d",
            "overlay",
            "--subnet",
            "10.0.9.0/24",
            "--gateway",
            "10.0.9.254",
            "--attachable",
            "--internal",
            "--label",
            "env=prod",
            "--label",
            "team",
            "backend",
        ])
        .unwrap();
        assert_eq!(s.name, "backend");
        assert_eq!(s.driver, "overlay");
        assert_eq!(
            (s.subnet.as_str(), s.gateway.as_str()),
            ("10.0.9.0/24", "10.0.9.254")
        );
        assert!(s.attachable && s.internal && !s.ingress);
        assert_eq!(s.labels["env"], "prod");
        assert_eq!(s.labels["team"], "");
        let s = create(&["--ingress", "ingress"]).unwrap();
        assert!(s.ingress);
        assert_eq!((s.subnet.as_str(), s.gateway.as_str()), ("", ""));
        assert_eq!(s.driver, "overlay");
    }

    #[test]
    fn create_errors_name_the_flag_and_the_fix() {
        for (args, want) in [
            (
                vec!["--driver", "bridge", "n"],
                "invalid driver \"bridge\": only the overlay driver is supported",
            ),
            (
                vec!["--subnet", "10.0.9.0", "n"],
                "invalid --subnet \"10.0.9.0\": use an IPv4 CIDR such as 10.0.9.0/24",
            ),
            (vec!["--subnet", "10.0.9.0/33", "n"], "use an IPv4 CIDR"),
            (vec!["--subnet", "10.0.9.300/24", "n"], "use an IPv4 CIDR"),
            (
                vec!["--subnet", "10.0.9.1/24", "n"],
                "invalid --subnet \"10.0.9.1/24\": host bits are set; the network is 10.0.9.0/24",
            ),
            (vec!["--subnet", "10.0.9.0/30", "n"], "too small"),
            (
                vec!["--gateway", "10.0.9.1", "n"],
                "--gateway 10.0.9.1 needs --subnet",
            ),
            (
                vec!["--gateway", "ten", "n"],
                "invalid --gateway \"ten\": use an IPv4 address",
            ),
            (
                vec!["--subnet", "10.0.9.0/24", "--gateway", "10.0.10.1", "n"],
                "--gateway 10.0.10.1 is not a host address of --subnet 10.0.9.0/24",
            ),
            (
                vec!["--subnet", "10.0.9.0/24", "--gateway", "10.0.9.255", "n"],
                "not a host address",
            ),
            (
                vec!["--subnet", "10.0.9.0/24", "--gateway", "10.0.9.0", "n"],
                "not a host address",
            ),
            (
                vec!["-o", "encrypted", "n"],
                "encrypted overlay networks are not supported",
            ),
            (vec!["-o", "mtu=1400", "n"], "unsupported option"),
            (
                vec!["--ingress", "--attachable", "n"],
                "cannot be attachable",
            ),
            (vec!["--label", "=x", "n"], "empty key"),
            (vec!["_bad"], "invalid network name"),
            (vec!["with space"], "invalid network name"),
        ] {
            let e = create(&args).map(|_| ()).expect_err(&format!("{args:?}"));
            assert!(e.contains(want), "{args:?}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn cidrs_and_pools() {
        assert_eq!(
            parse_cidr("--subnet", "10.0.0.0/8").unwrap(),
            (Ipv4Addr::new(10, 0, 0, 0), 8)
        );
        assert!(parse_cidr("--subnet", "0.0.0.0/0").is_ok());
        assert!(parse_cidr("--subnet", "10.0.0.0/+8").is_err());
        assert!(parse_cidr("--subnet", "10.0.0.0/").is_err());
        assert!(parse_cidr("--subnet", "fd00::/64").is_err());
        assert!(is_host_of(
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 0, 0),
            24
        ));
        assert!(!is_host_of(
            Ipv4Addr::new(10, 0, 1, 1),
            Ipv4Addr::new(10, 0, 0, 0),
            24
        ));
        assert!(check_addr_pools(&["10.0.0.0/8".into(), "192.168.0.0/16".into()], 24).is_ok());
        assert!(check_addr_pools(&[], 24).is_ok());
        let e = check_addr_pools(&["10.0.0.0/26".into()], 24).unwrap_err();
        assert!(e.contains("smaller than a /24 subnet"), "{e}");
        let e = check_addr_pools(&["10.0.0.0/8".into()], 31).unwrap_err();
        assert!(e.contains("--default-addr-pool-mask-length 31"), "{e}");
        let e = check_addr_pools(&["10.0.0/8".into()], 24).unwrap_err();
        assert!(
            e.contains("invalid --default-addr-pool \"10.0.0/8\""),
            "{e}"
        );
    }

    #[test]
    fn resolve_by_name_id_or_unique_prefix() {
        let nets = vec![view("abc123", "front"), view("abd456", "back")];
        assert_eq!(resolve(&nets, "front").unwrap().id, "abc123");
        assert_eq!(resolve(&nets, "abd456").unwrap().spec.name, "back");
        assert_eq!(resolve(&nets, "abc").unwrap().spec.name, "front");
        assert!(resolve(&nets, "ab").is_none(), "ambiguous prefix");
        assert!(resolve(&nets, "").is_none());
        assert_eq!(canonical(&nets, "back"), "abd456");
        assert_eq!(canonical(&nets, "nope"), "nope");
        assert_eq!(display_name(&nets, "abc123"), "front");
        assert_eq!(display_name(&nets, "zzz"), "zzz");
    }

    #[test]
    fn ls_table_and_json_as_docker() {
        let mut a = view("0123456789abcdefghijklmno", "web");
        a.spec.labels.insert("env".into(), "prod".into());
        a.spec.internal = true;
        let mut ing = view("zyxwvutsrqponmlkjihgfedcb", "ingress");
        ing.spec.ingress = true;
        let rows = ls_rows(&[a, ing], &NetFilter::default(), false);
        let cells: Vec<Vec<String>> = rows.iter().map(|(c, _)| c.clone()).collect();
        assert_eq!(
            table(&LS_HEADERS, &cells),
            "NETWORK ID     NAME      DRIVER    SCOPE\n\
             zyxwvutsrqpo   ingress   overlay   swarm\n\
             0123456789ab   web       overlay   swarm\n"
        );
        let j: Value = serde_json::from_str(&rows[1].1).unwrap();
        assert_eq!(j["ID"], "0123456789ab");
        assert_eq!(j["Name"], "web");
        assert_eq!(j["Driver"], "overlay");
        assert_eq!(j["Scope"], "swarm");
        assert_eq!(j["Internal"], "true");
        assert_eq!(j["Attachable"], "false");
        assert_eq!(j["Ingress"], "false");
        assert_eq!(j["IPv6"], "false");
        assert_eq!(j["Labels"], "env=prod");
        assert_eq!(j["Subnet"], "10.0.1.0/24");
        assert_eq!(j["CreatedAt"], "2024-01-09 09:31:08.497 +0000 UTC");
        let j: Value = serde_json::from_str(&rows[0].1).unwrap();
        assert_eq!(j["Ingress"], "true");
        let full = ls_rows(
            &[view("0123456789abcdefghijklmno", "web")],
            &NetFilter::default(),
            true,
        );
        assert_eq!(full[0].0[0], "0123456789abcdefghijklmno");
    }

    #[test]
    fn ls_filters() {
        let mut a = view("aaa111", "front-end");
        a.spec.labels.insert("env".into(), "prod".into());
        let b = view("bbb222", "back-end");
        let c = view("ccc333", "ingress");
        let nets = [a, b, c];
        let names = |f: &[&str]| -> Vec<String> {
            let f: Vec<String> = f.iter().map(|s| s.to_string()).collect();
            ls_rows(&nets, &NetFilter::parse(&f).unwrap(), false)
                .into_iter()
                .map(|(c, _)| c[1].clone())
                .collect()
        };
        assert_eq!(names(&["name=end"]), vec!["back-end", "front-end"]);
        assert_eq!(
            names(&["name=front", "name=ingress"]),
            vec!["front-end", "ingress"]
        );
        assert_eq!(names(&["name=end", "id=bbb"]), vec!["back-end"]);
        assert_eq!(names(&["driver=overlay"]).len(), 3);
        assert!(names(&["driver=bridge"]).is_empty());
        assert_eq!(names(&["label=env"]), vec!["front-end"]);
        assert_eq!(names(&["label=env=prod"]), vec!["front-end"]);
        assert!(names(&["label=env=dev"]).is_empty());
        assert_eq!(names(&["scope=swarm"]).len(), 3);
        assert!(names(&["scope=local"]).is_empty());
        assert_eq!(names(&["type=custom"]).len(), 3);
        assert!(names(&["type=builtin"]).is_empty());
        let e = NetFilter::parse(&["color=red".into()]).unwrap_err();
        assert!(e.contains("invalid filter 'color'"), "{e}");
        let e = NetFilter::parse(&["name".into()]).unwrap_err();
        assert!(e.contains("use KEY=VALUE"), "{e}");
        let e = NetFilter::parse(&["type=mine".into()]).unwrap_err();
        assert!(e.contains("use custom or builtin"), "{e}");
    }

    #[test]
    fn inspect_is_shaped_like_dockers() {
        let mut n = view("0123456789abcdefghijklmno", "web");
        n.services = vec!["api".into(), "db".into()];
        n.spec.labels.insert("env".into(), "prod".into());
        let j = inspect_json(&n);
        assert_eq!(j["Name"], "web");
        assert_eq!(j["Id"], "0123456789abcdefghijklmno");
        assert_eq!(j["Created"], "2024-01-09T09:31:08.497Z");
        assert_eq!(j["Scope"], "swarm");
        assert_eq!(j["Driver"], "overlay");
        assert_eq!(j["EnableIPv6"], false);
        assert_eq!(j["IPAM"]["Driver"], "default");
        assert_eq!(j["IPAM"]["Config"][0]["Subnet"], "10.0.1.0/24");
        assert_eq!(j["IPAM"]["Config"][0]["Gateway"], "10.0.1.1");
        assert_eq!(j["Internal"], false);
        assert_eq!(j["Attachable"], false);
        assert_eq!(j["Ingress"], false);
        assert_eq!(j["Options"][VXLANID_OPTION], "4097");
        assert_eq!(j["Labels"]["env"], "prod");
        assert_eq!(j["Services"], json!(["api", "db"]));
        assert_eq!(go_rfc3339(1_704_792_668_000), "2024-01-09T09:31:08Z");
        assert_eq!(go_time(1_704_792_668_000), "2024-01-09 09:31:08 +0000 UTC");
        assert_eq!(
            go_time(1_704_792_668_490),
            "2024-01-09 09:31:08.49 +0000 UTC"
        );
    }

    #[test]
    fn verbs_and_aliases_parse() {
        assert!(matches!(
            parse(&["ls", "-q"]),
            NetworkCmd::Ls(LsArgs { quiet: true, .. })
        ));
        assert!(matches!(parse(&["list"]), NetworkCmd::Ls(_)));
        match parse(&["rm", "a", "b"]) {
            NetworkCmd::Rm(r) => assert_eq!(r.networks, vec!["a", "b"]),
            _ => unreachable!(),
        }
        assert!(matches!(parse(&["remove", "a"]), NetworkCmd::Rm(_)));
        match parse(&["inspect", "a", "b"]) {
            NetworkCmd::Inspect(i) => {
                assert_eq!((i.networks.len(), i.format.as_str()), (2, "json"))
            }
            _ => unreachable!(),
        }
        match parse(&[
            "ls",
            "--filter",
            "name=x",
            "-f",
            "driver=overlay",
            "--format",
            "json",
        ]) {
            NetworkCmd::Ls(l) => {
                assert_eq!(l.filter, vec!["name=x", "driver=overlay"]);
                assert_eq!(l.format, Format::Json);
            }
            _ => unreachable!(),
        }
        let e = Cli::try_parse_from(["shoal", "network", "rm"]).expect_err("needs a name");
        let e = one_line_usage_error(&e.render().to_string());
        assert!(!e.contains('\n'), "{e}");
    }
}
