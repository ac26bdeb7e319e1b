//! Network benchmarks on a lab, each printing ratios against baselines measured in the same
//! run (the machine is small and every path is CPU-bound, so absolute figures mean little):
//!
//! - `shoal bench overlay`: TCP throughput (iperf3) between two containers on two workers
//!   over shoal's overlay, against the workers' underlay addresses and against a hand-built
//!   VXLAN between the same two host namespaces;
//! - `shoal bench mesh`: requests/s (wrk, from the lab's underlay namespace playing the
//!   outside client) through shoal's ingress routing mesh, against one container straight
//!   (routed, no balancing), Debian's haproxy (TCP mode) and a hand-built nftables DNAT
//!   (`numgen inc`) over a hand-built VXLAN to the same two containers.
//!
//! The hand-built fabric, per worker's namespace (`bn*` names, a VNI of its own, the
//! standard VXLAN port shared with shoal's devices):
//!
//! ```text
//!   worker namespace                                   extra or container namespace
//!   eth0 (underlay) ◀── bnvx0 (VXLAN, learning off) ─┐
//!                                                    bnbr0 ── bnvN ════ bneth0 192.168.250.x
//!   static FDB: remote MAC → remote underlay; static neighbours in every endpoint
//! ```
//!
//! Everything a benchmark creates (its lab, extra namespaces, links, routes, nft tables,
//! haproxy/iperf3/wrk processes, by pid) is undone by a [`Cleanup`] guard, also on error.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

/// VNIs of the hand-built fabrics: far above what shoal's allocator hands out.
const VNI_OVERLAY: u32 = 16_700_001;
const VNI_MESH: u32 = 16_700_002;
const VXLAN_PORT: u16 = 4789;
/// The hand-built fabric's MTU: the underlay's 1500 less VXLAN's 50.
const FABRIC_MTU: u32 = 1450;
const BRIDGE: &str = "bnbr0";
const VXLAN: &str = "bnvx0";
const EP_IF: &str = "bneth0";
const IPERF_PORT: u16 = 5201;
const MESH_PORT: u16 = 8080;
const NFT_PORT: u16 = 8091;
const HAPROXY_PORT: u16 = 8092;
const NFT_TABLE: &str = "bench_mesh";

/// What both benchmarks take from the command line.
#[derive(Clone, Debug)]
pub struct NetBenchArgs {
    /// Length of one measurement.
    pub seconds: u64,
    /// Measurements per path, interleaved across paths; the median is reported.
    pub rounds: usize,
    /// wrk connections (mesh only).
    pub connections: u32,
    /// Lab prefix (1-8 of a-z, 0-9).
    pub prefix: String,
    /// Bound on waiting for the lab's services.
    pub timeout: Duration,
    pub json: bool,
}

/// A prefix no other lab on this machine uses right now.
pub fn default_prefix() -> String {
    format!("bn{}", std::process::id() % 1_000_000)
}

// ---------------------------------------------------------------------------------------
// Pure parts: parsing, planning, rendering.

/// Bits per second received, from `iperf3 -J` output.
pub fn parse_iperf(json_text: &str) -> Result<f64> {
    let v: Value = serde_json::from_str(json_text).context("iperf3 -J output is not JSON")?;
    if let Some(e) = v["error"].as_str() {
        bail!("iperf3: {e}");
    }
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .ok_or_else(|| anyhow!("iperf3 -J output has no end.sum_received.bits_per_second"))
}

/// One wrk run's figures.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WrkFigures {
    pub requests_per_sec: f64,
    /// Socket errors (connect, read, write, timeout) plus non-2xx/3xx responses.
    pub errors: u64,
}

/// Requests/s and errors from wrk's text output.
pub fn parse_wrk(text: &str) -> Result<WrkFigures> {
    let mut f = WrkFigures::default();
    let mut found = false;
    for line in text.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            f.requests_per_sec = v.trim().parse().context("wrk Requests/sec")?;
            found = true;
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 2, write 0, timeout 0"
            f.errors += v
                .split(',')
                .filter_map(|p| p.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            f.errors += v.trim().parse::<u64>().unwrap_or(0);
        }
    }
    if !found {
        bail!("wrk printed no Requests/sec: {text}");
    }
    Ok(f)
}

pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// `a / b`, NaN when either is missing.
fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// A host of the hand-built fabric: a lab host's namespace (by name, under /run/netns).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FabricHost {
    pub netns: String,
    pub underlay: Ipv4Addr,
}

/// Where an endpoint of the fabric lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Place {
    /// The address is on the host's bridge itself.
    Bridge,
    /// A veth: `bneth0` in namespace `ns` (a file), `host_if` on the host's bridge.
    Veth { ns: PathBuf, host_if: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Index into the hosts.
    pub host: usize,
    pub addr: Ipv4Addr,
    pub place: Place,
}

impl Endpoint {
    fn mac(&self) -> String {
        mac_string(proto::spec::overlay_mac(self.addr))
    }
}

fn mac_string(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A command to run inside a namespace (a file such as `/run/netns/x`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NsCmd {
    pub ns: PathBuf,
    pub argv: Vec<String>,
}

fn named_ns(name: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(name)
}

fn cmd(ns: &Path, argv: &str) -> NsCmd {
    NsCmd {
        ns: ns.to_path_buf(),
        argv: argv.split_whitespace().map(String::from).collect(),
    }
}

/// The commands that build the hand-built fabric, in order: per host a bridge and a VXLAN
/// device (VNI `vni`, learning off, static FDB entries for every remote endpoint), per
/// endpoint its address (and veth), and in every endpoint static neighbour entries for the
/// endpoints on other hosts (there is no flooding over the VXLAN, so no ARP across it).
pub fn fabric_plan(hosts: &[FabricHost], eps: &[Endpoint], vni: u32) -> Vec<NsCmd> {
    let mut out = Vec::new();
    for (h, host) in hosts.iter().enumerate() {
        let hns = named_ns(&host.netns);
        let bridge_ep = eps.iter().find(|e| e.host == h && e.place == Place::Bridge);
        let mac = bridge_ep
            .map(|e| format!(" address {}", e.mac()))
            .unwrap_or_default();
        out.push(cmd(&hns, &format!("ip link add {BRIDGE}{mac} type bridge")));
        out.push(cmd(
            &hns,
            &format!(
                "ip link add {VXLAN} type vxlan id {vni} local {} dstport {VXLAN_PORT} nolearning dev eth0",
                host.underlay
            ),
        ));
        out.push(cmd(&hns, &format!("ip link set {VXLAN} master {BRIDGE}")));
        out.push(cmd(&hns, &format!("ip link set {VXLAN} up")));
        out.push(cmd(&hns, &format!("ip link set {BRIDGE} up")));
        for e in eps.iter().filter(|e| e.host == h) {
            match &e.place {
                Place::Bridge => {
                    out.push(cmd(
                        &hns,
                        &format!("ip addr add {}/24 dev {BRIDGE}", e.addr),
                    ));
                }
                Place::Veth { ns, host_if } => {
                    out.push(cmd(
                        ns,
                        &format!(
                            "ip link add {EP_IF} address {} mtu {FABRIC_MTU} type veth peer name {host_if} mtu {FABRIC_MTU} netns {}",
                            e.mac(),
                            host.netns
                        ),
                    ));
                    out.push(cmd(ns, &format!("ip addr add {}/24 dev {EP_IF}", e.addr)));
                    out.push(cmd(ns, &format!("ip link set {EP_IF} up")));
                    out.push(cmd(&hns, &format!("ip link set {host_if} master {BRIDGE}")));
                    out.push(cmd(&hns, &format!("ip link set {host_if} up")));
                }
            }
        }
        for remote in eps.iter().filter(|e| e.host != h) {
            let dst = hosts[remote.host].underlay;
            let mac = remote.mac();
            out.push(cmd(
                &hns,
                &format!("bridge fdb add {mac} dev {VXLAN} self dst {dst} permanent"),
            ));
            out.push(cmd(
                &hns,
                &format!("bridge fdb add {mac} dev {VXLAN} master static"),
            ));
            for local in eps.iter().filter(|e| e.host == h) {
                let (ns, dev) = match &local.place {
                    Place::Bridge => (hns.clone(), BRIDGE),
                    Place::Veth { ns, .. } => (ns.clone(), EP_IF),
                };
                out.push(cmd(
                    &ns,
                    &format!(
                        "ip neigh replace {} lladdr {mac} dev {dev} nud permanent",
                        remote.addr
                    ),
                ));
            }
        }
    }
    out
}

/// The commands that remove the fabric: each veth by its host end (which takes its peer
/// along), then each host's VXLAN device and bridge. Each may fail harmlessly when the thing
/// is already gone.
pub fn fabric_teardown(hosts: &[FabricHost], eps: &[Endpoint]) -> Vec<NsCmd> {
    let mut out = Vec::new();
    for e in eps {
        if let Place::Veth { host_if, .. } = &e.place {
            let hns = named_ns(&hosts[e.host].netns);
            out.push(cmd(&hns, &format!("ip link del {host_if}")));
        }
    }
    for host in hosts {
        let hns = named_ns(&host.netns);
        out.push(cmd(&hns, &format!("ip link del {VXLAN}")));
        out.push(cmd(&hns, &format!("ip link del {BRIDGE}")));
    }
    out
}

/// The hand-built balancer: DNAT of `vip:port` round-robin (`numgen inc`) over `backends`
/// (port 80), masqueraded out of the fabric's bridge so the replies come back through here.
pub fn nft_rules(vip: Ipv4Addr, port: u16, backends: &[Ipv4Addr]) -> String {
    let map = backends
        .iter()
        .enumerate()
        .map(|(i, b)| format!("{i} : {b} . 80"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "table ip {NFT_TABLE} {{\n\
         \tchain prerouting {{\n\
         \t\ttype nat hook prerouting priority dstnat; policy accept;\n\
         \t\tip daddr {vip} tcp dport {port} dnat ip to numgen inc mod {n} map {{ {map} }}\n\
         \t}}\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\toifname \"{BRIDGE}\" ct status dnat masquerade\n\
         \t}}\n\
         }}\n",
        n = backends.len()
    )
}

/// haproxy in TCP mode (an L4 balancer like the others: one backend connection per client
/// connection), round-robin over `backends` port 80.
pub fn haproxy_config(bind: Ipv4Addr, port: u16, backends: &[Ipv4Addr]) -> String {
    let mut s = format!(
        "global\n\tmaxconn 4096\n\
         defaults\n\tmode tcp\n\ttimeout connect 5s\n\ttimeout client 60s\n\ttimeout server 60s\n\
         frontend bench\n\tbind {bind}:{port}\n\tdefault_backend replicas\n\
         backend replicas\n\tbalance roundrobin\n"
    );
    for (i, b) in backends.iter().enumerate() {
        s.push_str(&format!("\tserver r{i} {b}:80\n"));
    }
    s
}

/// One measured path: its samples (Gbit/s or requests/s) or why it was not measured.
#[derive(Clone, Debug, Default)]
pub struct PathFigures {
    pub name: String,
    /// How it was measured, for the reader.
    pub how: String,
    pub samples: Vec<f64>,
    pub errors: u64,
    pub skipped: Option<String>,
}

impl PathFigures {
    fn new(name: &str, how: String) -> PathFigures {
        PathFigures {
            name: name.into(),
            how,
            ..Default::default()
        }
    }

    fn value(&self) -> Option<f64> {
        (self.skipped.is_none() && !self.samples.is_empty()).then(|| median(&self.samples))
    }
}

/// The table (or JSON object) of a benchmark: one row per path with its median and its ratio
/// to the path named `baseline`, then the key ratios `(label, numerator, denominator,
/// target)`.
pub fn render(
    bench: &str,
    unit: &str,
    paths: &[PathFigures],
    baseline: &str,
    key: &[(&str, &str, &str, Option<f64>)],
    json_out: bool,
) -> String {
    let value = |n: &str| paths.iter().find(|p| p.name == n).and_then(|p| p.value());
    let base = value(baseline);
    if json_out {
        let rows: Vec<Value> = paths
            .iter()
            .map(|p| {
                json!({
                    "Path": p.name, "How": p.how, "Median": p.value(), "Samples": p.samples,
                    "Errors": p.errors, "Skipped": p.skipped,
                    "RatioToBaseline": ratio(p.value(), base),
                })
            })
            .collect();
        let ratios: Vec<Value> = key
            .iter()
            .map(|(label, a, b, target)| {
                json!({"Ratio": label, "Value": ratio(value(a), value(b)), "Target": target})
            })
            .collect();
        return json!({"Bench": bench, "Unit": unit, "Baseline": baseline, "Paths": rows,
                      "Ratios": ratios})
        .to_string()
            + "\n";
    }
    let fmt = |v: Option<f64>, prec: usize| match v {
        Some(v) => format!("{v:.prec$}"),
        None => "-".to_string(),
    };
    let mut s = format!(
        "{:<22}{:>12}{:>13}{:>8}  {}\n",
        "PATH",
        unit.to_uppercase(),
        format!("VS {}", baseline.to_uppercase()),
        "ERRORS",
        "HOW"
    );
    for p in paths {
        let prec = if unit == "req/s" { 0 } else { 2 };
        let how = match &p.skipped {
            Some(why) => format!("not measured: {why}"),
            None => p.how.clone(),
        };
        let line = format!(
            "{:<22}{:>12}{:>13}{:>8}  {}",
            p.name,
            fmt(p.value(), prec),
            fmt(ratio(p.value(), base), 2),
            p.errors,
            how
        );
        s.push_str(line.trim_end());
        s.push('\n');
    }
    s.push('\n');
    for (label, a, b, target) in key {
        let t = target
            .map(|t| format!(" (target ≥ {t:.2})"))
            .unwrap_or_default();
        s.push_str(&format!(
            "{label}: {}{t}\n",
            fmt(ratio(value(a), value(b)), 3)
        ));
    }
    s
}

// ---------------------------------------------------------------------------------------
// Side effects: commands in namespaces, processes, the cleanup guard.

fn ns_command(ns: &Path, argv: &[String]) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={}", ns.display()))
        .arg("--")
        .args(argv);
    c
}

/// Run to completion; stdout on success, otherwise the command and its stderr.
fn run_ns(c: &NsCmd) -> Result<String> {
    let out = ns_command(&c.ns, &c.argv)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {:?}", c.argv))?;
    if !out.status.success() {
        bail!(
            "`{}` in {}: {}",
            c.argv.join(" "),
            c.ns.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn sh(ns: &Path, argv: &str) -> Result<String> {
    run_ns(&cmd(ns, argv))
}

/// A process killed (by its pid) and reaped when dropped.
struct Proc {
    child: Child,
    what: String,
    /// What it wrote to stderr, once it has exited.
    stderr: Option<String>,
}

impl Proc {
    fn spawn(ns: &Path, argv: &[String], what: &str) -> Result<Proc> {
        // nsenter execs the program, so the pid is the program's own.
        let child = ns_command(ns, argv)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        Ok(Proc {
            child,
            what: what.into(),
            stderr: None,
        })
    }

    /// Error out (with what it said) if it has exited.
    fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            if let Some(mut e) = self.child.stderr.take() {
                use std::io::Read;
                let mut err = String::new();
                let _ = e.read_to_string(&mut err);
                self.stderr = Some(err.trim().to_string());
            }
            bail!(
                "{} exited ({status}): {}",
                self.what,
                self.stderr.as_deref().unwrap_or_default()
            );
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

enum Undo {
    Cmd(NsCmd),
    DeleteNetns(String),
    LabDown(String),
    Proc(Proc),
}

/// Everything a benchmark created, undone in reverse order when dropped (errors of the undo
/// steps are ignored: the thing may already be gone with its namespace).
#[derive(Default)]
pub struct Cleanup {
    undo: Vec<Undo>,
}

impl Cleanup {
    fn push(&mut self, u: Undo) {
        self.undo.push(u);
    }

    fn cmds(&mut self, cmds: Vec<NsCmd>) {
        // Pushed in reverse so that they run in the order given.
        for c in cmds.into_iter().rev() {
            self.push(Undo::Cmd(c));
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        while let Some(u) = self.undo.pop() {
            match u {
                Undo::Cmd(c) => {
                    let _ = run_ns(&c);
                }
                Undo::DeleteNetns(n) => {
                    let _ = Command::new("ip").args(["netns", "del", &n]).output();
                }
                Undo::LabDown(p) => {
                    if let Err(e) = deploy::Lab::down(&p) {
                        eprintln!("warning: removing lab {p}: {e}");
                    }
                }
                Undo::Proc(p) => drop(p),
            }
        }
    }
}

fn poll<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match f() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => String::new(),
            Err(e) => format!(": {e:#}"),
        };
        if Instant::now() >= deadline {
            bail!("{what}: not after {timeout:?}{last}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether something listens on TCP `port` in `ns`.
fn listening(ns: &Path, port: u16) -> Result<bool> {
    let out = sh(ns, &format!("ss -Hltn sport = :{port}"))?;
    Ok(!out.trim().is_empty())
}

/// iperf3 from `client` to a one-shot server on `addr` in `server`: Gbit/s received.
fn iperf(server: &Path, addr: Ipv4Addr, client: &Path, seconds: u64) -> Result<f64> {
    let argv = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
    let mut srv = Proc::spawn(
        server,
        &argv(&format!("iperf3 -s -1 -B {addr} -p {IPERF_PORT}")),
        "iperf3 server",
    )?;
    poll(Duration::from_secs(10), "iperf3 server listening", || {
        srv.check_alive()?;
        Ok(listening(server, IPERF_PORT)?.then_some(()))
    })?;
    // -O 1: the first second (slow start) is left out of the figure.
    let out = ns_command(
        client,
        &argv(&format!(
            "iperf3 -c {addr} -p {IPERF_PORT} -t {seconds} -O 1 -J"
        )),
    )
    .stdin(Stdio::null())
    .output()
    .context("running iperf3")?;
    let bps = parse_iperf(&String::from_utf8_lossy(&out.stdout))
        .with_context(|| format!("iperf3 to {addr}"))?;
    drop(srv);
    Ok(bps / 1e9)
}

/// wrk from namespace `client` against `url`.
fn wrk(client: &Path, url: &str, seconds: u64, connections: u32) -> Result<WrkFigures> {
    let argv: Vec<String> = format!("wrk -t2 -c{connections} -d{seconds}s {url}")
        .split_whitespace()
        .map(String::from)
        .collect();
    let out = ns_command(client, &argv)
        .stdin(Stdio::null())
        .output()
        .context("running wrk")?;
    if !out.status.success() {
        bail!("wrk {url}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    parse_wrk(&String::from_utf8_lossy(&out.stdout))
}

/// `n` one-shot GETs of `addr` from lab namespace `netns`: the distinct bodies (hostnames).
fn probe(netns: &str, addr: &str, n: usize) -> Result<BTreeSet<String>> {
    let addr = addr.to_string();
    deploy::in_netns(netns, move || {
        let mut seen = BTreeSet::new();
        for _ in 0..n {
            let (code, body) = deploy::images::http_get(&addr, "/")?;
            if code != 200 {
                bail!("GET http://{addr}/: {code}");
            }
            seen.insert(body.trim().to_string());
        }
        Ok(seen)
    })?
}

/// (device, address, prefix length) of each line of `ip -4 -o addr show`.
pub fn parse_addrs(text: &str) -> Vec<(String, Ipv4Addr, u8)> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let dev = w.nth(1)?.split('@').next()?.to_string();
            w.find(|x| *x == "inet")?;
            let (a, p) = w.next()?.split_once('/')?;
            Some((dev, a.parse().ok()?, p.parse().ok()?))
        })
        .collect()
}

/// Whether `addr` lies in `cidr` (`10.0.1.0/24`).
pub fn in_subnet(addr: Ipv4Addr, cidr: &str) -> bool {
    let Some((net, len)) = cidr.split_once('/') else {
        return false;
    };
    let (Ok(net), Ok(len)) = (net.parse::<Ipv4Addr>(), len.parse::<u32>()) else {
        return false;
    };
    let mask = u32::MAX.checked_shl(32 - len.min(32)).unwrap_or(0);
    u32::from(addr) & mask == u32::from(net) & mask
}

/// The IPv4 addresses (with prefix length) of `dev` in `ns`.
fn addrs_of(ns: &Path, dev: &str) -> Result<Vec<(Ipv4Addr, u8)>> {
    let out = sh(ns, &format!("ip -4 -o addr show dev {dev}"))?;
    Ok(parse_addrs(&out)
        .into_iter()
        .map(|(_, a, l)| (a, l))
        .collect())
}

/// The address in `ns` that lies in `cidr`.
fn addr_in(ns: &Path, cidr: &str) -> Result<Ipv4Addr> {
    let out = sh(ns, "ip -4 -o addr show")?;
    parse_addrs(&out)
        .into_iter()
        .map(|(_, a, _)| a)
        .find(|a| in_subnet(*a, cidr))
        .ok_or_else(|| anyhow!("no address in {cidr} in {}: {out}", ns.display()))
}

/// The subnet of network `name` (`network inspect`).
fn network_subnet(lab: &deploy::Lab, name: &str) -> Result<String> {
    let out = shoal(lab, &["network", "inspect", name])?;
    let v: Value = serde_json::from_str(&out).context("network inspect output")?;
    v[0]["IPAM"]["Config"][0]["Subnet"]
        .as_str()
        .map(String::from)
        .ok_or_else(|| anyhow!("network inspect {name}: no IPAM.Config[0].Subnet in {out}"))
}

/// The device of the default route in `ns`.
fn default_dev(ns: &Path) -> Result<String> {
    let out = sh(ns, "ip -4 route show default")?;
    out.split_whitespace()
        .skip_while(|w| *w != "dev")
        .nth(1)
        .map(String::from)
        .ok_or_else(|| anyhow!("no default route in {}: {out:?}", ns.display()))
}

/// Set `net.ipv4.ip_forward` to 1 in lab namespace `netns` if it is not, undoing it later.
fn ensure_forwarding(netns: &str, cleanup: &mut Cleanup) -> Result<()> {
    let ns = named_ns(netns);
    if sh(&ns, "sysctl -n net.ipv4.ip_forward")?.trim() != "1" {
        sh(&ns, "sysctl -qw net.ipv4.ip_forward=1")?;
        cleanup.push(Undo::Cmd(cmd(&ns, "sysctl -qw net.ipv4.ip_forward=0")));
    }
    Ok(())
}

/// Build the hand-built fabric, registering its removal first.
fn build_fabric(
    hosts: &[FabricHost],
    eps: &[Endpoint],
    vni: u32,
    cleanup: &mut Cleanup,
) -> Result<()> {
    cleanup.cmds(fabric_teardown(hosts, eps));
    for c in fabric_plan(hosts, eps, vni) {
        run_ns(&c).context("building the hand-built VXLAN fabric")?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The lab and shoal's side.

fn lab_up(args: &NetBenchArgs, cleanup: &mut Cleanup) -> Result<deploy::Lab> {
    let bin = std::env::current_exe().context("finding the shoal binary")?;
    let mut cfg = deploy::LabConfig::new(&args.prefix, 1, 2, bin);
    cfg.daemon_args = vec!["--runtime".into(), "oci".into()];
    cfg.registry = true;
    // Registered before `up`: a half-built lab is removed too.
    cleanup.push(Undo::LabDown(args.prefix.clone()));
    let lab = deploy::Lab::up(&cfg).context("lab up")?;
    shoal(&lab, &["node", "update", "--availability", "drain", "m1"])?;
    Ok(lab)
}

fn shoal(lab: &deploy::Lab, args: &[&str]) -> Result<String> {
    lab.shoal("m1", args).map_err(|e| anyhow!("{e}"))
}

/// Whether this build's `service create` knows `flag` (the networking flags land
/// separately).
fn service_create_has(lab: &deploy::Lab, flag: &str) -> bool {
    shoal(lab, &["service", "create", "--help"]).is_ok_and(|h| h.contains(flag))
}

/// A task of a service as seen on its worker.
#[derive(Clone, Debug)]
struct Task {
    id: String,
    node: String,
    /// Its network namespace file on the worker.
    ns: PathBuf,
}

/// Create a global service on the workers and wait until it runs one task on each, its
/// namespace file present; the tasks in worker order (w1, w2).
fn global_service(
    lab: &deploy::Lab,
    name: &str,
    image: &str,
    extra: &[&str],
    timeout: Duration,
) -> Result<Vec<Task>> {
    let image = format!("{}/{image}", deploy::LAB_REGISTRY);
    let mut argv = vec![
        "service",
        "create",
        "-q",
        "--name",
        name,
        "--mode",
        "global",
        "--constraint",
        "node.role==worker",
    ];
    argv.extend_from_slice(extra);
    argv.push(&image);
    shoal(lab, &argv)?;
    poll(
        timeout,
        &format!("service {name} running on w1 and w2"),
        || {
            let out = shoal(
                lab,
                &[
                    "service",
                    "ps",
                    "--no-trunc",
                    "--format",
                    "json",
                    "--filter",
                    "desired-state=running",
                    name,
                ],
            )?;
            let mut tasks = Vec::new();
            for line in out.lines().filter(|l| !l.trim().is_empty()) {
                let v: Value = serde_json::from_str(line)?;
                if !v["CurrentState"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("Running"))
                {
                    continue;
                }
                let node = v["Node"].as_str().unwrap_or_default().to_string();
                let id = v["ID"].as_str().unwrap_or_default().to_string();
                let host = lab.host(&node).map_err(|e| anyhow!("{e}"))?;
                let ns = host.data_dir.join("net").join("ns").join(&id);
                if ns.exists() {
                    tasks.push(Task { id, node, ns });
                }
            }
            tasks.sort_by(|a, b| a.node.cmp(&b.node));
            let nodes: Vec<&str> = tasks.iter().map(|t| t.node.as_str()).collect();
            Ok((nodes == ["w1", "w2"]).then_some(tasks))
        },
    )
}

fn host_ns(lab: &deploy::Lab, name: &str) -> Result<(String, Ipv4Addr)> {
    let h = lab.host(name).map_err(|e| anyhow!("{e}"))?;
    Ok((h.netns.clone(), h.addr))
}

// ---------------------------------------------------------------------------------------
// `shoal bench overlay`

/// `shoal bench overlay`: see the module doc.
pub fn run_overlay(args: &NetBenchArgs) -> Result<()> {
    let mut cleanup = Cleanup::default();
    let lab = lab_up(args, &mut cleanup)?;
    let (w1, w1_addr) = host_ns(&lab, "w1")?;
    let (w2, w2_addr) = host_ns(&lab, "w2")?;
    let hosts = vec![
        FabricHost {
            netns: w1.clone(),
            underlay: w1_addr,
        },
        FabricHost {
            netns: w2.clone(),
            underlay: w2_addr,
        },
    ];

    // Two extra namespaces, one per worker, joined by the hand-built VXLAN.
    let mut eps = Vec::new();
    for (i, host) in ["hb1", "hb2"].iter().enumerate() {
        let name = format!("{}-{host}", args.prefix);
        cleanup.push(Undo::DeleteNetns(name.clone()));
        let out = Command::new("ip").args(["netns", "add", &name]).output()?;
        if !out.status.success() {
            bail!(
                "ip netns add {name}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        sh(&named_ns(&name), "ip link set lo up")?;
        eps.push(Endpoint {
            host: i,
            addr: Ipv4Addr::new(192, 168, 250, 11 + i as u8),
            place: Place::Veth {
                ns: named_ns(&name),
                host_if: format!("bnv{}", i + 1),
            },
        });
    }
    build_fabric(&hosts, &eps, VNI_OVERLAY, &mut cleanup)?;

    let mut underlay = PathFigures::new("underlay", format!("{w1} → {w2_addr} ({w2})"));
    let mut handbuilt = PathFigures::new(
        "hand-built VXLAN",
        format!(
            "{}-hb1 → {} ({}-hb2), VNI {VNI_OVERLAY}",
            args.prefix, eps[1].addr, args.prefix
        ),
    );
    let mut overlay = PathFigures::new("shoal overlay", String::new());

    // shoal's overlay: a network and one container on each worker.
    let shoal_ends = if service_create_has(&lab, "--network") {
        let r = (|| -> Result<(PathBuf, PathBuf, Ipv4Addr)> {
            shoal(
                &lab,
                &["network", "create", "--driver", "overlay", "benchnet"],
            )?;
            let tasks = global_service(
                &lab,
                "ovl",
                "sleep:1",
                &["--network", "benchnet"],
                args.timeout,
            )?;
            let subnet = network_subnet(&lab, "benchnet")?;
            let addr = addr_in(&tasks[1].ns, &subnet)?;
            overlay.how = format!("task on w1 → {addr} (task {} on w2)", tasks[1].id);
            Ok((tasks[0].ns.clone(), tasks[1].ns.clone(), addr))
        })();
        match r {
            Ok(ends) => Some(ends),
            Err(e) => {
                overlay.skipped = Some(format!("{e:#}"));
                None
            }
        }
    } else {
        overlay.skipped = Some("this build's `service create` has no --network".into());
        None
    };

    for round in 0..args.rounds {
        let one = |p: &mut PathFigures, server: &Path, addr: Ipv4Addr, client: &Path| match iperf(
            server,
            addr,
            client,
            args.seconds,
        ) {
            Ok(g) => p.samples.push(g),
            Err(e) => {
                p.errors += 1;
                eprintln!("round {round}, {}: {e:#}", p.name);
            }
        };
        one(&mut underlay, &named_ns(&w2), w2_addr, &named_ns(&w1));
        if let (Place::Veth { ns: c, .. }, Place::Veth { ns: s, .. }) =
            (&eps[0].place, &eps[1].place)
        {
            one(&mut handbuilt, s, eps[1].addr, c);
        }
        if let Some((c, s, addr)) = &shoal_ends {
            one(&mut overlay, s, *addr, c);
        }
    }
    let paths = vec![underlay, handbuilt, overlay];
    print!(
        "{}",
        render(
            "overlay",
            "Gbit/s",
            &paths,
            "underlay",
            &[
                (
                    "shoal overlay / hand-built VXLAN",
                    "shoal overlay",
                    "hand-built VXLAN",
                    Some(0.95)
                ),
                (
                    "hand-built VXLAN / underlay",
                    "hand-built VXLAN",
                    "underlay",
                    None
                ),
            ],
            args.json
        )
    );
    drop(cleanup);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// `shoal bench mesh`

/// `shoal bench mesh`: see the module doc.
pub fn run_mesh(args: &NetBenchArgs) -> Result<()> {
    let mut cleanup = Cleanup::default();
    let lab = lab_up(args, &mut cleanup)?;
    let (w1, w1_addr) = host_ns(&lab, "w1")?;
    let (w2, w2_addr) = host_ns(&lab, "w2")?;
    let ul = format!("{}-ul", args.prefix);

    let mesh_ok = service_create_has(&lab, "--publish");
    let publish = format!("{MESH_PORT}:80");
    let extra: Vec<&str> = if mesh_ok {
        vec!["--publish", &publish]
    } else {
        vec![]
    };
    let tasks = global_service(&lab, "fast", "fast:1", &extra, args.timeout)?;

    // The hand-built fabric: w1's bridge holds 192.168.250.1 (the balancers' source), a veth
    // of its own in each container.
    let hosts = vec![
        FabricHost {
            netns: w1.clone(),
            underlay: w1_addr,
        },
        FabricHost {
            netns: w2.clone(),
            underlay: w2_addr,
        },
    ];
    let mut eps = vec![Endpoint {
        host: 0,
        addr: Ipv4Addr::new(192, 168, 250, 1),
        place: Place::Bridge,
    }];
    for (i, t) in tasks.iter().enumerate() {
        eps.push(Endpoint {
            host: i,
            addr: Ipv4Addr::new(192, 168, 250, 11 + i as u8),
            place: Place::Veth {
                ns: t.ns.clone(),
                host_if: format!("bnv{}", i + 1),
            },
        });
    }
    build_fabric(&hosts, &eps, VNI_MESH, &mut cleanup)?;
    let backends = [eps[1].addr, eps[2].addr];
    ensure_forwarding(&w1, &mut cleanup)?;

    // The hand-built nft balancer in w1's namespace.
    let w1ns = named_ns(&w1);
    cleanup.push(Undo::Cmd(cmd(
        &w1ns,
        &format!("nft delete table ip {NFT_TABLE}"),
    )));
    let rules = nft_rules(w1_addr, NFT_PORT, &backends);
    let rules_file = tempfile::NamedTempFile::new()?;
    std::fs::write(rules_file.path(), &rules)?;
    run_ns(&NsCmd {
        ns: w1ns.clone(),
        argv: vec![
            "nft".into(),
            "-f".into(),
            rules_file.path().display().to_string(),
        ],
    })
    .context("loading the hand-built nft balancer")?;

    // haproxy in w1's namespace, balancing the same two containers over the same fabric.
    let hap_dir = tempfile::Builder::new()
        .prefix("shoal-bench-haproxy-")
        .tempdir()?;
    let hap_cfg = hap_dir.path().join("haproxy.cfg");
    std::fs::write(&hap_cfg, haproxy_config(w1_addr, HAPROXY_PORT, &backends))?;
    let mut hap = Proc::spawn(
        &w1ns,
        &[
            "haproxy".into(),
            "-db".into(),
            "-f".into(),
            hap_cfg.display().to_string(),
        ],
        "haproxy",
    )?;
    poll(Duration::from_secs(10), "haproxy listening", || {
        hap.check_alive()?;
        Ok(listening(&w1ns, HAPROXY_PORT)?.then_some(()))
    })?;
    cleanup.push(Undo::Proc(hap));

    // Direct: the w1 container at its gateway-bridge address, routed from the underlay
    // namespace through w1 (no NAT, no balancing, no VXLAN).
    let gw_dev = default_dev(&tasks[0].ns)?;
    let (gw_addr, gw_len) = *addrs_of(&tasks[0].ns, &gw_dev)?
        .first()
        .ok_or_else(|| anyhow!("the w1 task has no address on {gw_dev}"))?;
    let gw_net = Ipv4Addr::from(u32::from(gw_addr) & (u32::MAX << (32 - gw_len as u32)));
    let ulns = named_ns(&ul);
    let route = format!("{gw_net}/{gw_len} via {w1_addr}");
    sh(&ulns, &format!("ip route add {route}"))?;
    cleanup.push(Undo::Cmd(cmd(&ulns, &format!("ip route del {route}"))));
    let (direct_client, direct_how) = match probe(&ul, &format!("{gw_addr}:80"), 1) {
        Ok(_) => (ul.clone(), format!("{ul} → {gw_addr}:80 routed via w1")),
        Err(e) => {
            eprintln!(
                "note: {gw_addr} not reachable from {ul} ({e:#}); direct from w1's namespace"
            );
            (
                w1.clone(),
                format!("{w1} → {gw_addr}:80 (w1's gateway bridge)"),
            )
        }
    };

    let mut paths = vec![
        PathFigures::new("direct", direct_how),
        PathFigures::new(
            "hand-built nft",
            format!("{ul} → {w1_addr}:{NFT_PORT}, DNAT numgen over VXLAN {VNI_MESH}"),
        ),
        PathFigures::new(
            "haproxy",
            format!("{ul} → {w1_addr}:{HAPROXY_PORT}, TCP mode over VXLAN {VNI_MESH}"),
        ),
        PathFigures::new("shoal mesh", format!("{ul} → {w1_addr}:{MESH_PORT}")),
    ];
    let targets = [
        (direct_client.clone(), format!("{gw_addr}:80"), 1usize),
        (ul.clone(), format!("{w1_addr}:{NFT_PORT}"), 2),
        (ul.clone(), format!("{w1_addr}:{HAPROXY_PORT}"), 2),
        (ul.clone(), format!("{w1_addr}:{MESH_PORT}"), 2),
    ];
    if !mesh_ok {
        paths[3].skipped = Some("this build's `service create` has no --publish".into());
    }
    // Each path must answer, and the balanced ones from both containers.
    for (p, (client, addr, want)) in paths.iter_mut().zip(&targets) {
        if p.skipped.is_some() {
            continue;
        }
        match probe(client, addr, 8) {
            Ok(seen) if seen.len() == *want => {}
            Ok(seen) => p.skipped = Some(format!("answered by {seen:?}, expected {want} hosts")),
            Err(e) => p.skipped = Some(format!("{e:#}")),
        }
    }
    for round in 0..args.rounds {
        for (p, (client, addr, _)) in paths.iter_mut().zip(&targets) {
            if p.skipped.is_some() {
                continue;
            }
            let url = format!("http://{addr}/");
            match wrk(&named_ns(client), &url, args.seconds, args.connections) {
                Ok(f) => {
                    p.samples.push(f.requests_per_sec);
                    p.errors += f.errors;
                }
                Err(e) => {
                    p.errors += 1;
                    eprintln!("round {round}, {}: {e:#}", p.name);
                }
            }
        }
    }
    print!(
        "{}",
        render(
            "mesh",
            "req/s",
            &paths,
            "direct",
            &[
                (
                    "shoal mesh / hand-built nft",
                    "shoal mesh",
                    "hand-built nft",
                    Some(0.95)
                ),
                ("shoal mesh / direct", "shoal mesh", "direct", None),
                ("shoal mesh / haproxy", "shoal mesh", "haproxy", None),
                ("hand-built nft / direct", "hand-built nft", "direct", None),
                (
                    "hand-built nft / haproxy",
                    "hand-built nft",
                    "haproxy",
                    None
                ),
            ],
            args.json
        )
    );
    drop(cleanup);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iperf_and_wrk_output_parse() {
        let j = r#"{"start":{},"end":{"sum_sent":{"bits_per_second":2e9},"sum_received":{"bits_per_second":1.5e9}}}"#;
        assert_eq!(parse_iperf(j).unwrap(), 1.5e9);
        assert!(parse_iperf(r#"{"error":"unable to connect"}"#)
            .unwrap_err()
            .to_string()
            .contains("unable to connect"));
        let w = "Running 5s test @ http://1.2.3.4:8080/\n  2 threads and 32 connections\n\
                 153241 requests in 5.00s, 9.79MB read\n  Socket errors: connect 0, read 3, write 1, timeout 2\n\
                 \x20 Non-2xx or 3xx responses: 4\nRequests/sec:  30641.77\nTransfer/sec:      1.96MB\n";
        assert_eq!(
            parse_wrk(w).unwrap(),
            WrkFigures {
                requests_per_sec: 30641.77,
                errors: 10
            }
        );
        assert!(parse_wrk("unable to connect").is_err());
    }

    #[test]
    fn addresses_and_subnets() {
        let out = "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever\n\
                   12: eth0@if13    inet 10.0.1.5/24 brd 10.0.1.255 scope global eth0\n\
                   14: eth1@if15    inet 172.30.0.2/24 brd 172.30.0.255 scope global eth1\n";
        let a = parse_addrs(out);
        assert_eq!(a[1], ("eth0".to_string(), Ipv4Addr::new(10, 0, 1, 5), 24));
        assert_eq!(a.len(), 3);
        assert!(in_subnet(Ipv4Addr::new(10, 0, 1, 5), "10.0.1.0/24"));
        assert!(!in_subnet(Ipv4Addr::new(10, 0, 2, 5), "10.0.1.0/24"));
        assert!(in_subnet(Ipv4Addr::new(10, 9, 2, 5), "10.0.0.0/8"));
        assert!(in_subnet(Ipv4Addr::new(1, 2, 3, 4), "0.0.0.0/0"));
        assert!(!in_subnet(Ipv4Addr::new(1, 2, 3, 4), "bad"));
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    fn two_hosts() -> Vec<FabricHost> {
        vec![
            FabricHost {
                netns: "p-w1".into(),
                underlay: Ipv4Addr::new(192, 168, 77, 12),
            },
            FabricHost {
                netns: "p-w2".into(),
                underlay: Ipv4Addr::new(192, 168, 77, 13),
            },
        ]
    }

    fn lines(cmds: &[NsCmd]) -> Vec<String> {
        cmds.iter()
            .map(|c| format!("{}: {}", c.ns.display(), c.argv.join(" ")))
            .collect()
    }

    #[test]
    fn fabric_plan_programs_remote_endpoints_statically() {
        let eps = vec![
            Endpoint {
                host: 0,
                addr: Ipv4Addr::new(192, 168, 250, 1),
                place: Place::Bridge,
            },
            Endpoint {
                host: 1,
                addr: Ipv4Addr::new(192, 168, 250, 12),
                place: Place::Veth {
                    ns: "/d/ns/t2".into(),
                    host_if: "bnv2".into(),
                },
            },
        ];
        let plan = lines(&fabric_plan(&two_hosts(), &eps, 7));
        let has = |s: &str| plan.iter().any(|l| l == s);
        assert!(has(
            "/run/netns/p-w1: ip link add bnbr0 address 02:42:c0:a8:fa:01 type bridge"
        ));
        assert!(has("/run/netns/p-w2: ip link add bnbr0 type bridge"));
        assert!(has("/run/netns/p-w1: ip link add bnvx0 type vxlan id 7 local 192.168.77.12 dstport 4789 nolearning dev eth0"));
        assert!(has(
            "/run/netns/p-w1: ip addr add 192.168.250.1/24 dev bnbr0"
        ));
        assert!(has("/d/ns/t2: ip link add bneth0 address 02:42:c0:a8:fa:0c mtu 1450 type veth peer name bnv2 mtu 1450 netns p-w2"));
        // w1 sends the veth's MAC to w2, w2 the bridge's MAC to w1; both sides know the
        // other's neighbour entry.
        assert!(has("/run/netns/p-w1: bridge fdb add 02:42:c0:a8:fa:0c dev bnvx0 self dst 192.168.77.13 permanent"));
        assert!(has("/run/netns/p-w2: bridge fdb add 02:42:c0:a8:fa:01 dev bnvx0 self dst 192.168.77.12 permanent"));
        assert!(has("/run/netns/p-w1: ip neigh replace 192.168.250.12 lladdr 02:42:c0:a8:fa:0c dev bnbr0 nud permanent"));
        assert!(has("/d/ns/t2: ip neigh replace 192.168.250.1 lladdr 02:42:c0:a8:fa:01 dev bneth0 nud permanent"));
        // No entry points at the host's own underlay.
        assert!(!plan
            .iter()
            .any(|l| l.starts_with("/run/netns/p-w1: bridge fdb add")
                && l.contains("dst 192.168.77.12")));
        // The veth is created before it is enslaved.
        let pos = |s: &str| plan.iter().position(|l| l.contains(s)).unwrap();
        assert!(pos("peer name bnv2") < pos("ip link set bnv2 master bnbr0"));
        let down = lines(&fabric_teardown(&two_hosts(), &eps));
        assert_eq!(
            down,
            [
                "/run/netns/p-w2: ip link del bnv2",
                "/run/netns/p-w1: ip link del bnvx0",
                "/run/netns/p-w1: ip link del bnbr0",
                "/run/netns/p-w2: ip link del bnvx0",
                "/run/netns/p-w2: ip link del bnbr0",
            ]
        );
    }

    #[test]
    fn balancer_configs() {
        let b = [
            Ipv4Addr::new(192, 168, 250, 11),
            Ipv4Addr::new(192, 168, 250, 12),
        ];
        let nft = nft_rules(Ipv4Addr::new(192, 168, 77, 12), 8091, &b);
        assert!(nft.contains("ip daddr 192.168.77.12 tcp dport 8091 dnat ip to numgen inc mod 2 map { 0 : 192.168.250.11 . 80, 1 : 192.168.250.12 . 80 }"), "{nft}");
        assert!(nft.contains("oifname \"bnbr0\" ct status dnat masquerade"));
        let hap = haproxy_config(Ipv4Addr::new(192, 168, 77, 12), 8092, &b);
        assert!(hap.contains("bind 192.168.77.12:8092"));
        assert!(hap.contains("mode tcp"));
        assert!(hap.contains("server r1 192.168.250.12:80"));
    }

    #[test]
    fn rendering_ratios_and_missing_paths() {
        let p = |name: &str, s: &[f64]| PathFigures {
            name: name.into(),
            samples: s.to_vec(),
            ..Default::default()
        };
        let mut paths = vec![p("underlay", &[10.0, 12.0, 11.0]), p("hand", &[7.0])];
        paths.push(PathFigures {
            skipped: Some("no overlay".into()),
            ..p("shoal", &[])
        });
        let key = [
            ("shoal / hand", "shoal", "hand", Some(0.95)),
            ("hand / underlay", "hand", "underlay", None),
        ];
        let t = render("overlay", "Gbit/s", &paths, "underlay", &key, false);
        assert!(
            t.contains("underlay                     11.00         1.00       0\n"),
            "{t}"
        );
        assert!(
            t.contains("hand                          7.00         0.64       0\n"),
            "{t}"
        );
        assert!(t.contains("not measured: no overlay"), "{t}");
        assert!(t.contains("shoal / hand: - (target ≥ 0.95)"), "{t}");
        assert!(t.contains("hand / underlay: 0.636"), "{t}");
        let j: Value =
            serde_json::from_str(&render("overlay", "Gbit/s", &paths, "underlay", &key, true))
                .unwrap();
        assert_eq!(j["Paths"][0]["Median"], 11.0);
        assert_eq!(j["Paths"][2]["Median"], Value::Null);
        assert_eq!(j["Ratios"][1]["Value"].as_f64().unwrap(), 7.0 / 11.0);
    }
}
