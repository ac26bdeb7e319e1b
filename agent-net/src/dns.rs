//! The embedded DNS server every container uses at 127.0.0.11 (service discovery).
//!
//! One [`Dns`] per node holds the record table, rebuilt by a pure function ([`Records::build`])
//! from the [`NodeNetState`] the dispatcher sends and swapped in whole by [`Dns::set_state`].
//! Per task, [`Dns::serve`] opens a UDP and a TCP socket bound to 127.0.0.11:53 *inside* the
//! task's network namespace (on a short-lived thread that `setns`es there; a socket keeps the
//! namespace it was made in) and serves them with `hickory-server` on the daemon's runtime:
//!
//! ```text
//!   task namespace                          node namespace (the daemon)
//!   resolver ── 127.0.0.11:53 udp/tcp ═══▶ TaskHandler ── known name ──▶ record table (TTL 0)
//!                                                      └─ other name ──▶ upstream (udp/tcp, 2 s)
//! ```
//!
//! Names known on one of the task's networks are answered from the table: a service name or
//! alias gives the VIP (vip mode) or its backends' addresses on that network (dnsrr, rotated at
//! every answer), `tasks.<name>` / `tasks.<alias>` the backends' addresses. TTL 0, so a task
//! that leaves the backends is never served from a cache. A known name with no address is
//! NXDOMAIN; other record types of a known name get an empty NOERROR. The ingress network
//! gives no names, as in Swarm. Every other name is forwarded, from the daemon's namespace, to
//! the service's `--dns` servers or else the node's, with a fresh query id and a 2 s budget;
//! SERVFAIL when none answers.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use hickory_proto::op::{
    Edns, Header, HeaderCounts, Message, MessageType, Metadata, OpCode, Query, ResponseCode,
};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageResponse, MessageResponseBuilder};
use hickory_server::Server as DnsServer;
use nix::sched::{setns, CloneFlags};
use proto::spec::{EndpointMode, NodeNetState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Where containers find the embedded server.
pub const DNS_ADDR: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 11);
pub const DNS_PORT: u16 = 53;
/// How long a forwarded query may take, over all upstreams, before the client gets SERVFAIL.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);
/// A TCP client that sends nothing for this long is dropped.
const TCP_IDLE: Duration = Duration::from_secs(5);
/// Replies queued per TCP connection before the server waits for the client to read.
const TCP_REPLY_BUFFER: usize = 32;
/// How long a replaced or stopped server may take to close its sockets.
const STOP_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("task {task_id}: opening the network namespace {}: {source}", netns.display())]
    Netns {
        task_id: String,
        netns: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "task {task_id}: binding {proto} {DNS_ADDR}:{DNS_PORT} in {}: {source} \
         (is another DNS server running in that namespace?)",
        netns.display()
    )]
    Bind {
        task_id: String,
        netns: PathBuf,
        proto: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("task {task_id}: {context}: {source}")]
    Io {
        task_id: String,
        context: String,
        #[source]
        source: std::io::Error,
    },
}

/// The names every network gives, built from a [`NodeNetState`]. Keys are lowercase and
/// without a trailing dot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Records {
    /// network id → name → addresses (empty: known, but nothing to answer).
    by_network: HashMap<String, HashMap<String, Vec<Ipv4Addr>>>,
}

/// What the table says about a name, seen from a set of networks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Known, with these addresses (never empty).
    Found(Vec<Ipv4Addr>),
    /// Known on one of the networks, but with no address (a dnsrr service with no task up).
    NoAddress,
    /// Not one of ours: forward it.
    Unknown,
}

/// Lowercase, no trailing dot: the form of every key and every looked-up name.
pub fn normalize(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

fn push_unique(list: &mut Vec<Ipv4Addr>, addrs: impl IntoIterator<Item = Ipv4Addr>) {
    for a in addrs {
        if !list.contains(&a) {
            list.push(a);
        }
    }
}

impl Records {
    /// The table for `state`: per network the service names and aliases (VIP, or backends'
    /// addresses for dnsrr or a service without VIP) and `tasks.<name>` for each (backends'
    /// addresses on that network). Two services claiming one name share it (union).
    pub fn build(state: &NodeNetState) -> Records {
        let ingress: Vec<&str> = state
            .networks
            .iter()
            .filter(|n| n.ingress)
            .map(|n| n.id.as_str())
            .collect();
        let mut by_network: HashMap<String, HashMap<String, Vec<Ipv4Addr>>> = HashMap::new();
        for svc in &state.services {
            for on in &svc.networks {
                if ingress.contains(&on.network_id.as_str()) {
                    continue;
                }
                let backends: Vec<Ipv4Addr> = svc
                    .backends
                    .iter()
                    .flat_map(|b| b.addrs.iter())
                    .filter(|(net, _)| *net == on.network_id)
                    .map(|(_, addr)| *addr)
                    .collect();
                let service_addrs = match (svc.mode, on.vip) {
                    (EndpointMode::Vip, Some(vip)) => vec![vip],
                    _ => backends.clone(),
                };
                let names = std::iter::once(&svc.name).chain(on.aliases.iter());
                let table = by_network.entry(on.network_id.clone()).or_default();
                for name in names {
                    let name = normalize(name);
                    if name.is_empty() {
                        continue;
                    }
                    push_unique(
                        table.entry(format!("tasks.{name}")).or_default(),
                        backends.iter().copied(),
                    );
                    push_unique(
                        table.entry(name).or_default(),
                        service_addrs.iter().copied(),
                    );
                }
            }
        }
        Records { by_network }
    }

    /// `name` as seen from a task on `networks` (ids, in the task's order): the first network
    /// that gives it addresses wins.
    pub fn lookup(&self, networks: &[String], name: &str) -> Lookup {
        let name = normalize(name);
        let mut known = false;
        for net in networks {
            if let Some(addrs) = self.by_network.get(net).and_then(|t| t.get(&name)) {
                if !addrs.is_empty() {
                    return Lookup::Found(addrs.clone());
                }
                known = true;
            }
        }
        if known {
            Lookup::NoAddress
        } else {
            Lookup::Unknown
        }
    }
}

/// The nameservers of a resolv.conf text, port 53, in order.
///
/// Loopback ones (systemd-resolved's 127.0.0.53, a local dnsmasq) are kept: queries are
/// forwarded from the daemon's own namespace, where they are reachable, and the embedded
/// server only ever listens inside containers' namespaces, so there is no loop. IPv6
/// addresses with a zone (`fe80::1%eth0`) are skipped.
pub fn system_resolvers(resolv_conf: &str) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|line| {
            let line = line.split(['#', ';']).next().unwrap_or("");
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next())
                .flatten()
                .and_then(|a| a.parse::<IpAddr>().ok())
                .map(|ip| SocketAddr::new(ip, DNS_PORT))
        })
        .collect()
}

/// A container's /etc/resolv.conf: the embedded server, then the service's search domains and
/// options. `ndots:0` unless the options set ndots, as Docker does, so that a service name is
/// looked up as it is before any search domain is tried.
pub fn resolv_conf(search: &[String], options: &[String]) -> String {
    let mut out = format!("nameserver {DNS_ADDR}\n");
    if !search.is_empty() {
        out.push_str(&format!("search {}\n", search.join(" ")));
    }
    let mut opts: Vec<&str> = Vec::new();
    if !options.iter().any(|o| o.starts_with("ndots:")) {
        opts.push("ndots:0");
    }
    opts.extend(options.iter().map(String::as_str));
    out.push_str(&format!("options {}\n", opts.join(" ")));
    out
}

/// The node's embedded DNS: the record table and the per-task servers. Cheap to clone.
#[derive(Clone)]
pub struct Dns {
    shared: Arc<Shared>,
}

struct Shared {
    defaults: Vec<SocketAddr>,
    records: RwLock<Arc<Records>>,
    /// Rotates dnsrr answers.
    turn: AtomicUsize,
    servers: Mutex<HashMap<String, Server>>,
}

/// A task's server: cancelling `stop` closes its sockets; `done` ends when they are closed.
struct Server {
    stop: CancellationToken,
    done: JoinHandle<()>,
}

impl Dns {
    /// `upstreams`: the node's resolvers, for tasks whose service sets no `--dns`.
    pub fn new(upstreams: Vec<SocketAddr>) -> Dns {
        Dns {
            shared: Arc::new(Shared {
                defaults: upstreams,
                records: RwLock::new(Arc::new(Records::default())),
                turn: AtomicUsize::new(0),
                servers: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Swaps in the table for `state`; every server answers from it at once.
    pub fn set_state(&self, state: &NodeNetState) {
        let records = Arc::new(Records::build(state));
        *self
            .shared
            .records
            .write()
            .unwrap_or_else(|e| e.into_inner()) = records;
    }

    /// The current table.
    pub fn records(&self) -> Arc<Records> {
        self.shared
            .records
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Serves 127.0.0.11:53 (UDP and TCP) inside the namespace file `netns` for `task_id`,
    /// which is on `networks` (network ids, in its order) and forwards to `upstreams` (empty:
    /// the node's). Returns once the sockets are bound; they are served in the background, on
    /// the caller's runtime, until [`Dns::stop`]. A server already running for the task is
    /// stopped first (re-attach after a daemon restart, or a second call).
    pub async fn serve(
        &self,
        task_id: &str,
        netns: &Path,
        networks: Vec<String>,
        upstreams: Vec<SocketAddr>,
    ) -> Result<(), DnsError> {
        self.serve_on(task_id, networks, upstreams, bind_in(task_id, netns))
            .await
    }

    /// [`Dns::serve`] on the sockets `bind` gives (awaited once an earlier server of the
    /// task has closed its sockets): the node's controller binds them through its
    /// [`crate::dataplane::Dataplane`].
    pub async fn serve_on(
        &self,
        task_id: &str,
        networks: Vec<String>,
        upstreams: Vec<SocketAddr>,
        bind: impl std::future::Future<
            Output = Result<(std::net::UdpSocket, std::net::TcpListener), DnsError>,
        >,
    ) -> Result<(), DnsError> {
        let old = self.take(task_id);
        if let Some(old) = old {
            old.stop.cancel();
            // Its sockets must be closed before ours can bind the same address.
            let _ = tokio::time::timeout(STOP_WAIT, old.done).await;
        }
        let (udp, tcp) = bind.await?;
        let io_err = |context: &str| {
            let task_id = task_id.to_string();
            let context = context.to_string();
            move |source| DnsError::Io {
                task_id,
                context,
                source,
            }
        };
        let udp =
            tokio::net::UdpSocket::from_std(udp).map_err(io_err("registering the UDP socket"))?;
        let tcp =
            tokio::net::TcpListener::from_std(tcp).map_err(io_err("registering the TCP socket"))?;
        let handler = TaskHandler {
            shared: self.shared.clone(),
            task_id: task_id.to_string(),
            networks,
            upstreams,
        };
        let mut server = DnsServer::new(handler);
        server.register_socket(udp);
        server.register_listener(tcp, TCP_IDLE, TCP_REPLY_BUFFER);
        // Cancelling it ends the server's loops, which drops (closes) both sockets.
        let stop = server.shutdown_token().clone();
        let id = task_id.to_string();
        let done = tokio::spawn(async move {
            let r = server.block_until_done().await;
            if !server.shutdown_token().is_cancelled() {
                tracing::warn!(task = %id, "embedded DNS server ended: {r:?}");
            }
        });
        let replaced = self
            .shared
            .servers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(task_id.to_string(), Server { stop, done });
        // A concurrent serve for the same task lost the race: only one may stay.
        if let Some(other) = replaced {
            other.stop.cancel();
        }
        Ok(())
    }

    /// Stops the task's server; its sockets close right after (asynchronously). A later
    /// `serve` for the same task waits for that. Call it when the task's networking is torn
    /// down: the sockets hold a reference to the task's namespace and keep it alive.
    pub fn stop(&self, task_id: &str) {
        let mut servers = self
            .shared
            .servers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(server) = servers.get(task_id) {
            server.stop.cancel();
        }
        // Keep the stopped entry (its `done`) for a following serve; drop finished ones.
        servers.retain(|id, s| id == task_id || !s.done.is_finished());
    }

    /// Task ids with a server (stopped ones until their sockets are closed).
    pub fn serving(&self) -> Vec<String> {
        let servers = self
            .shared
            .servers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut ids: Vec<String> = servers
            .iter()
            .filter(|(_, s)| !s.done.is_finished())
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }

    fn take(&self, task_id: &str) -> Option<Server> {
        self.shared
            .servers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(task_id)
    }
}

/// Binds UDP and TCP 127.0.0.11:53 inside `netns`, on a thread of its own (namespaces are
/// per thread); the sockets stay in that namespace wherever they are used.
pub(crate) async fn bind_in(
    task_id: &str,
    netns: &Path,
) -> Result<(std::net::UdpSocket, std::net::TcpListener), DnsError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let id = task_id.to_string();
    let path = netns.to_path_buf();
    std::thread::Builder::new()
        .name("shoal-dns-bind".into())
        .spawn(move || {
            let _ = tx.send(bind_on_this_thread(&id, &path));
        })
        .map_err(|source| DnsError::Io {
            task_id: task_id.to_string(),
            context: "starting a thread".into(),
            source,
        })?;
    rx.await.unwrap_or_else(|_| {
        Err(DnsError::Io {
            task_id: task_id.to_string(),
            context: "binding the DNS sockets".into(),
            source: std::io::Error::other("the thread panicked"),
        })
    })
}

fn bind_on_this_thread(
    task_id: &str,
    netns: &Path,
) -> Result<(std::net::UdpSocket, std::net::TcpListener), DnsError> {
    let ns_err = |source| DnsError::Netns {
        task_id: task_id.to_string(),
        netns: netns.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(netns).map_err(ns_err)?;
    setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| ns_err(e.into()))?;
    let addr = SocketAddr::from((DNS_ADDR, DNS_PORT));
    let bind_err = |proto| {
        move |source| DnsError::Bind {
            task_id: task_id.to_string(),
            netns: netns.to_path_buf(),
            proto,
            source,
        }
    };
    let udp = std::net::UdpSocket::bind(addr).map_err(bind_err("udp"))?;
    // std sets SO_REUSEADDR on listeners, so connections in TIME_WAIT do not block a rebind.
    let tcp = std::net::TcpListener::bind(addr).map_err(bind_err("tcp"))?;
    udp.set_nonblocking(true).map_err(bind_err("udp"))?;
    tcp.set_nonblocking(true).map_err(bind_err("tcp"))?;
    Ok((udp, tcp))
}

/// Answers one task's queries.
struct TaskHandler {
    shared: Arc<Shared>,
    task_id: String,
    networks: Vec<String>,
    upstreams: Vec<SocketAddr>,
}

/// What to reply to a query, decided from the table alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// A records (possibly none, for another record type of a known name).
    Local(Vec<Ipv4Addr>),
    NxDomain,
    Forward,
}

/// The reply to a query of `qtype`/`qclass` for `name` from a task on `networks`.
pub fn answer(
    records: &Records,
    networks: &[String],
    name: &str,
    qtype: RecordType,
    qclass: DNSClass,
) -> Answer {
    if qclass != DNSClass::IN {
        return Answer::Forward;
    }
    match records.lookup(networks, name) {
        Lookup::Unknown => Answer::Forward,
        Lookup::NoAddress => Answer::NxDomain,
        Lookup::Found(addrs) => match qtype {
            RecordType::A | RecordType::ANY => Answer::Local(addrs),
            _ => Answer::Local(Vec::new()),
        },
    }
}

#[async_trait::async_trait]
impl RequestHandler for TaskHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let edns = request.edns.as_ref().map(|e| {
            let mut ours = Edns::new();
            ours.set_max_payload(e.max_payload().max(512));
            ours
        });
        let error = |code| {
            MessageResponseBuilder::from_message_request(request).error_msg(&request.metadata, code)
        };
        if request.metadata.message_type != MessageType::Query
            || request.metadata.op_code != OpCode::Query
        {
            return send(&mut response, error(ResponseCode::NotImp)).await;
        }
        let Ok(info) = request.request_info() else {
            return send(&mut response, error(ResponseCode::FormErr)).await;
        };
        let query = info.query.original().clone();
        let records = self
            .shared
            .records
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let decided = answer(
            &records,
            &self.networks,
            &query.name().to_ascii(),
            query.query_type(),
            query.query_class(),
        );
        let mut meta = Metadata::response_from_request(&request.metadata);
        meta.recursion_available = true;
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(edns) = &edns {
            builder.edns(edns);
        }
        match decided {
            Answer::Local(mut addrs) => {
                if addrs.len() > 1 {
                    let turn = self.shared.turn.fetch_add(1, Ordering::Relaxed);
                    let n = addrs.len();
                    addrs.rotate_left(turn % n);
                }
                let records: Vec<Record> = addrs
                    .into_iter()
                    .map(|a| Record::from_rdata(query.name().clone(), 0, RData::A(A(a))))
                    .collect();
                meta.authoritative = true;
                let msg = builder.build(meta, records.iter(), [], [], []);
                send(&mut response, msg).await
            }
            Answer::NxDomain => {
                meta.authoritative = true;
                meta.response_code = ResponseCode::NXDomain;
                send(&mut response, builder.build_no_records(meta)).await
            }
            Answer::Forward => {
                let upstreams = if self.upstreams.is_empty() {
                    &self.shared.defaults
                } else {
                    &self.upstreams
                };
                let tcp = request.protocol() == Protocol::Tcp;
                match forward(upstreams, &query, request, tcp).await {
                    Some(reply) => {
                        meta.response_code = reply.metadata.response_code;
                        meta.recursion_available = reply.metadata.recursion_available;
                        meta.truncation = reply.metadata.truncation;
                        meta.authentic_data = reply.metadata.authentic_data;
                        let msg = builder.build(
                            meta,
                            reply.answers.iter(),
                            reply.authorities.iter(),
                            [],
                            reply.additionals.iter(),
                        );
                        send(&mut response, msg).await
                    }
                    None => {
                        tracing::debug!(task = %self.task_id, name = %query.name(),
                            "no upstream answered: SERVFAIL");
                        meta.response_code = ResponseCode::ServFail;
                        send(&mut response, builder.build_no_records(meta)).await
                    }
                }
            }
        }
    }
}

async fn send<'a, R: ResponseHandler>(
    response: &mut R,
    msg: MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
) -> ResponseInfo {
    let id = msg.metadata().id;
    let op_code = msg.metadata().op_code;
    match response.send_response(msg).await {
        Ok(info) => info,
        Err(e) => {
            tracing::debug!("sending a DNS reply: {e}");
            let mut metadata = Metadata::new(id, MessageType::Response, op_code);
            metadata.response_code = ResponseCode::ServFail;
            Header {
                metadata,
                counts: HeaderCounts::default(),
            }
            .into()
        }
    }
}

/// Asks `upstreams` in turn, within [`FORWARD_TIMEOUT`] in all; the first reply wins.
async fn forward(
    upstreams: &[SocketAddr],
    query: &Query,
    request: &Request,
    tcp: bool,
) -> Option<Message> {
    if upstreams.is_empty() {
        return None;
    }
    let id: u16 = rand::random();
    let mut msg = Message::new(id, MessageType::Query, OpCode::Query);
    msg.metadata.recursion_desired = request.metadata.recursion_desired;
    msg.metadata.checking_disabled = request.metadata.checking_disabled;
    msg.add_query(query.clone());
    if let Some(e) = &request.edns {
        let mut ours = Edns::new();
        ours.set_max_payload(e.max_payload().max(512));
        ours.set_dnssec_ok(e.flags().dnssec_ok);
        msg.set_edns(ours);
    }
    let bytes = msg.to_vec().ok()?;
    let deadline = tokio::time::Instant::now() + FORWARD_TIMEOUT;
    // Each upstream gets its share of the budget, the last one what is left.
    let share = FORWARD_TIMEOUT / upstreams.len() as u32;
    for (i, up) in upstreams.iter().enumerate() {
        let until = if i + 1 == upstreams.len() {
            deadline
        } else {
            (tokio::time::Instant::now() + share).min(deadline)
        };
        let attempt = async {
            if tcp {
                ask_tcp(*up, &bytes, id).await
            } else {
                ask_udp(*up, &bytes, id).await
            }
        };
        match tokio::time::timeout_at(until, attempt).await {
            Ok(Ok(reply)) => return Some(reply),
            Ok(Err(e)) => tracing::debug!(upstream = %up, "forwarding: {e}"),
            Err(_) => tracing::debug!(upstream = %up, "forwarding: no answer in time"),
        }
    }
    None
}

fn matches(reply: &Message, id: u16, query: &[u8]) -> bool {
    let Ok(sent) = Message::from_vec(query) else {
        return false;
    };
    reply.metadata.id == id
        && reply.metadata.message_type == MessageType::Response
        && reply.queries == sent.queries
}

async fn ask_udp(up: SocketAddr, query: &[u8], id: u16) -> std::io::Result<Message> {
    let local: SocketAddr = if up.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = tokio::net::UdpSocket::bind(local).await?;
    // Connected: only the upstream's datagrams arrive, and a closed port fails fast.
    sock.connect(up).await?;
    sock.send(query).await?;
    let mut buf = vec![0u8; 65535];
    loop {
        let n = sock.recv(&mut buf).await?;
        match Message::from_vec(&buf[..n]) {
            Ok(reply) if matches(&reply, id, query) => return Ok(reply),
            _ => continue,
        }
    }
}

async fn ask_tcp(up: SocketAddr, query: &[u8], id: u16) -> std::io::Result<Message> {
    let mut stream = tokio::net::TcpStream::connect(up).await?;
    let len = u16::try_from(query.len()).map_err(std::io::Error::other)?;
    let mut framed = len.to_be_bytes().to_vec();
    framed.extend_from_slice(query);
    stream.write_all(&framed).await?;
    loop {
        let n = stream.read_u16().await? as usize;
        let mut buf = vec![0u8; n];
        stream.read_exact(&mut buf).await?;
        match Message::from_vec(&buf) {
            Ok(reply) if matches(&reply, id, query) => return Ok(reply),
            _ => continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proto::spec::{Backend, NetworkState, ServiceNet, ServiceOnNetwork};

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 1, last)
    }

    fn backend(task: &str, addrs: &[(&str, Ipv4Addr)]) -> Backend {
        Backend {
            task_id: task.into(),
            node_id: "n1".into(),
            addrs: addrs.iter().map(|(n, a)| (n.to_string(), *a)).collect(),
        }
    }

    fn net(id: &str, ingress: bool) -> NetworkState {
        NetworkState {
            id: id.into(),
            name: id.into(),
            ingress,
            ..Default::default()
        }
    }

    fn state() -> NodeNetState {
        NodeNetState {
            node_id: "n1".into(),
            networks: vec![net("front", false), net("back", false), net("ing", true)],
            services: vec![
                ServiceNet {
                    id: "s1".into(),
                    name: "Web".into(),
                    mode: EndpointMode::Vip,
                    networks: vec![
                        ServiceOnNetwork {
                            network_id: "front".into(),
                            vip: Some(ip(2)),
                            aliases: vec!["www".into()],
                        },
                        ServiceOnNetwork {
                            network_id: "ing".into(),
                            vip: Some(Ipv4Addr::new(10, 255, 0, 2)),
                            aliases: vec![],
                        },
                    ],
                    backends: vec![
                        backend(
                            "t1",
                            &[("front", ip(3)), ("ing", Ipv4Addr::new(10, 255, 0, 3))],
                        ),
                        backend("t2", &[("front", ip(4))]),
                    ],
                    ..Default::default()
                },
                ServiceNet {
                    id: "s2".into(),
                    name: "db".into(),
                    mode: EndpointMode::Dnsrr,
                    networks: vec![ServiceOnNetwork {
                        network_id: "back".into(),
                        vip: None,
                        aliases: vec!["pg".into()],
                    }],
                    backends: vec![
                        backend("t3", &[("back", Ipv4Addr::new(10, 0, 2, 3))]),
                        backend("t4", &[("back", Ipv4Addr::new(10, 0, 2, 4))]),
                    ],
                    ..Default::default()
                },
                ServiceNet {
                    id: "s3".into(),
                    name: "idle".into(),
                    mode: EndpointMode::Dnsrr,
                    networks: vec![ServiceOnNetwork {
                        network_id: "back".into(),
                        vip: None,
                        aliases: vec![],
                    }],
                    backends: vec![],
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    fn nets(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn vip_service_resolves_to_its_vip_and_tasks_to_backends() {
        let r = Records::build(&state());
        let on = nets(&["front"]);
        assert_eq!(r.lookup(&on, "web"), Lookup::Found(vec![ip(2)]));
        assert_eq!(r.lookup(&on, "WWW."), Lookup::Found(vec![ip(2)]));
        assert_eq!(
            r.lookup(&on, "tasks.web"),
            Lookup::Found(vec![ip(3), ip(4)])
        );
        assert_eq!(
            r.lookup(&on, "Tasks.WWW."),
            Lookup::Found(vec![ip(3), ip(4)])
        );
    }

    #[test]
    fn dnsrr_service_resolves_to_backends() {
        let r = Records::build(&state());
        let on = nets(&["back"]);
        let both = Lookup::Found(vec![Ipv4Addr::new(10, 0, 2, 3), Ipv4Addr::new(10, 0, 2, 4)]);
        assert_eq!(r.lookup(&on, "db"), both);
        assert_eq!(r.lookup(&on, "pg"), both);
        assert_eq!(r.lookup(&on, "tasks.pg"), both);
    }

    #[test]
    fn names_of_other_networks_and_ingress_are_unknown() {
        let r = Records::build(&state());
        assert_eq!(r.lookup(&nets(&["back"]), "web"), Lookup::Unknown);
        assert_eq!(r.lookup(&nets(&["front"]), "db"), Lookup::Unknown);
        assert_eq!(r.lookup(&nets(&["ing"]), "web"), Lookup::Unknown);
        assert_eq!(r.lookup(&nets(&[]), "web"), Lookup::Unknown);
        assert_eq!(r.lookup(&nets(&["front"]), "example.com"), Lookup::Unknown);
    }

    #[test]
    fn known_name_without_backends_is_nxdomain() {
        let r = Records::build(&state());
        let on = nets(&["back"]);
        assert_eq!(r.lookup(&on, "idle"), Lookup::NoAddress);
        assert_eq!(r.lookup(&on, "tasks.idle"), Lookup::NoAddress);
        assert_eq!(
            answer(&r, &on, "idle.", RecordType::A, DNSClass::IN),
            Answer::NxDomain
        );
    }

    #[test]
    fn answers_by_type() {
        let r = Records::build(&state());
        let on = nets(&["front", "back"]);
        assert_eq!(
            answer(&r, &on, "web.", RecordType::A, DNSClass::IN),
            Answer::Local(vec![ip(2)])
        );
        assert_eq!(
            answer(&r, &on, "web.", RecordType::AAAA, DNSClass::IN),
            Answer::Local(vec![])
        );
        assert_eq!(
            answer(&r, &on, "web.", RecordType::A, DNSClass::CH),
            Answer::Forward
        );
        assert_eq!(
            answer(&r, &on, "nope.", RecordType::A, DNSClass::IN),
            Answer::Forward
        );
    }

    #[test]
    fn vip_mode_without_vip_falls_back_to_backends() {
        let mut s = state();
        s.services[0].networks[0].vip = None;
        let r = Records::build(&s);
        assert_eq!(
            r.lookup(&nets(&["front"]), "web"),
            Lookup::Found(vec![ip(3), ip(4)])
        );
    }

    #[test]
    fn shared_alias_is_the_union() {
        let mut s = state();
        s.services[1].networks[0].aliases.push("idle".into());
        let r = Records::build(&s);
        assert_eq!(
            r.lookup(&nets(&["back"]), "idle"),
            Lookup::Found(vec![Ipv4Addr::new(10, 0, 2, 3), Ipv4Addr::new(10, 0, 2, 4)])
        );
    }

    #[test]
    fn first_network_with_addresses_wins() {
        let mut s = state();
        s.services[2].networks.push(ServiceOnNetwork {
            network_id: "front".into(),
            vip: None,
            aliases: vec![],
        });
        s.services[2].backends = vec![backend("t9", &[("front", ip(9))])];
        let r = Records::build(&s);
        assert_eq!(
            r.lookup(&nets(&["back", "front"]), "idle"),
            Lookup::Found(vec![ip(9)])
        );
    }

    #[test]
    fn resolvers_from_resolv_conf() {
        let text = "# generated\nnameserver 127.0.0.53\nsearch lan\n  nameserver\t1.1.1.1 # cf\n\
                    nameserver ::1\nnameserver fe80::1%eth0\nnameserver bogus\n;nameserver 9.9.9.9\n\
                    options edns0\n";
        assert_eq!(
            system_resolvers(text),
            vec![
                "127.0.0.53:53".parse::<SocketAddr>().unwrap(),
                "1.1.1.1:53".parse().unwrap(),
                "[::1]:53".parse().unwrap(),
            ]
        );
        assert!(system_resolvers("").is_empty());
    }

    #[test]
    fn container_resolv_conf() {
        assert_eq!(
            resolv_conf(&[], &[]),
            "nameserver 127.0.0.11\noptions ndots:0\n"
        );
        assert_eq!(
            resolv_conf(&["a.lan".into(), "b".into()], &["timeout:1".into()]),
            "nameserver 127.0.0.11\nsearch a.lan b\noptions ndots:0 timeout:1\n"
        );
        assert_eq!(
            resolv_conf(&[], &["ndots:2".into()]),
            "nameserver 127.0.0.11\noptions ndots:2\n"
        );
    }

    fn arb_state() -> impl Strategy<Value = NodeNetState> {
        let name = "[a-zA-Z][a-zA-Z0-9-]{0,6}";
        let nets = prop::sample::subsequence(vec!["n1", "n2", "n3"], 1..=3);
        let svc = (
            name,
            any::<bool>(),
            nets,
            prop::collection::vec(name, 0..2),
            prop::collection::vec((0u8..3, 1u8..250), 0..4),
        )
            .prop_map(|(name, dnsrr, nets, aliases, backends)| ServiceNet {
                id: name.clone(),
                name,
                mode: if dnsrr {
                    EndpointMode::Dnsrr
                } else {
                    EndpointMode::Vip
                },
                networks: nets
                    .iter()
                    .enumerate()
                    .map(|(i, n)| ServiceOnNetwork {
                        network_id: n.to_string(),
                        vip: (!dnsrr).then(|| Ipv4Addr::new(10, 9, i as u8, 1)),
                        aliases: aliases.clone(),
                    })
                    .collect(),
                backends: backends
                    .iter()
                    .map(|(n, last)| Backend {
                        task_id: format!("t{last}"),
                        node_id: "n".into(),
                        addrs: vec![(format!("n{}", n + 1), Ipv4Addr::new(10, 0, *n, *last))],
                    })
                    .collect(),
                ..Default::default()
            });
        prop::collection::vec(svc, 0..5).prop_map(|services| NodeNetState {
            networks: vec![net("n1", false), net("n2", false), net("n3", true)],
            services,
            ..Default::default()
        })
    }

    proptest! {
        #[test]
        fn lookup_ignores_case_and_trailing_dot(s in arb_state(), upper in any::<bool>()) {
            let r = Records::build(&s);
            let all = nets(&["n1", "n2", "n3"]);
            for svc in &s.services {
                for name in [svc.name.clone(), format!("tasks.{}", svc.name)] {
                    let asked = if upper { name.to_uppercase() } else { name.clone() };
                    prop_assert_eq!(r.lookup(&all, &format!("{asked}.")), r.lookup(&all, &name));
                }
            }
        }

        #[test]
        fn tasks_name_is_every_backend_on_the_network(s in arb_state()) {
            let r = Records::build(&s);
            for svc in &s.services {
                for on in &svc.networks {
                    let want: Vec<Ipv4Addr> = svc.backends.iter()
                        .flat_map(|b| &b.addrs)
                        .filter(|(n, _)| *n == on.network_id)
                        .map(|(_, a)| *a)
                        .collect();
                    let got = r.lookup(std::slice::from_ref(&on.network_id), &format!("tasks.{}", svc.name));
                    if on.network_id == "n3" {
                        // The ingress network gives no names.
                        prop_assert_eq!(got, Lookup::Unknown);
                    } else if want.is_empty() {
                        prop_assert!(got != Lookup::Unknown);
                    } else {
                        let Lookup::Found(got) = got else {
                            return Err(TestCaseError::fail("tasks name not found"));
                        };
                        for a in want {
                            prop_assert!(got.contains(&a));
                        }
                    }
                }
            }
        }

        #[test]
        fn answers_only_hold_addresses_of_the_asked_networks(s in arb_state()) {
            let r = Records::build(&s);
            for net in ["n1", "n2"] {
                let on = vec![net.to_string()];
                let allowed: Vec<Ipv4Addr> = s.services.iter()
                    .flat_map(|svc| {
                        let vips = svc.networks.iter()
                            .filter(|o| o.network_id == net)
                            .filter_map(|o| o.vip);
                        let backends = svc.backends.iter()
                            .flat_map(|b| b.addrs.iter())
                            .filter(|(n, _)| n == net)
                            .map(|(_, a)| *a);
                        vips.chain(backends).collect::<Vec<_>>()
                    })
                    .collect();
                for svc in &s.services {
                    if let Lookup::Found(addrs) = r.lookup(&on, &svc.name) {
                        for a in addrs {
                            prop_assert!(allowed.contains(&a), "{a} not on {net}");
                        }
                    }
                }
            }
        }
    }
}
