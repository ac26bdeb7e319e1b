//! The CLI: Docker's verbs, flags and output shapes.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use proto::pb;
use serde_json::{json, Value};
use tonic::transport::Channel;
use tonic::Status;

use crate::client::{daemon_channel, Client};
use crate::output::{json_line, print_rows, title, Format};
use crate::units::{parse_duration, parse_size};

#[derive(Parser, Debug)]
#[command(
    name = "shoal",
    version,
    about = "A container cluster orchestrator in the manner of Docker Swarm mode"
)]
pub struct Cli {
    /// Daemon socket to connect to (unix://PATH). Before the command, as Docker's: after it,
    /// `--host` is `service create`'s extra /etc/hosts entry.
    #[arg(
        short = 'H',
        long = "host",
        env = "SHOAL_HOST",
        default_value = "unix:///run/shoal/shoal.sock"
    )]
    pub host: String,
    /// Log level of the daemon and the lab (error, warn, info, debug, trace).
    #[arg(long = "log-level", global = true, default_value = "info")]
    pub log_level: String,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Run a node.
    Daemon(DaemonArgs),
    /// Manage the swarm.
    #[command(subcommand)]
    Swarm(SwarmCmd),
    /// Manage swarm nodes.
    #[command(subcommand)]
    Node(NodeCmd),
    /// Manage swarm services.
    #[command(subcommand)]
    Service(crate::service::ServiceCmd),
    /// Manage swarm networks.
    #[command(subcommand)]
    Network(crate::network::NetworkCmd),
    /// Manage swarm stacks (compose files).
    #[command(subcommand)]
    Stack(crate::stack::StackCmd),
    /// Show this node's swarm state.
    Info(InfoArgs),
    /// Benchmarks that print figures.
    #[command(subcommand)]
    Bench(BenchCmd),
    /// A multi-host cluster on this machine, each host a network namespace.
    #[command(subcommand)]
    Lab(LabCmd),
    /// Run a command in a running task's container (on the node that runs it).
    Exec(ExecArgs),
    /// Return low-level information on swarm objects (services, nodes, networks, secrets,
    /// configs) by name or id.
    Inspect {
        /// Only objects of this type: service, node, network, secret or config.
        #[arg(long = "type", value_parser = ["service", "node", "network", "secret", "config"])]
        kind: Option<String>,
        /// Format output: json (a JSON array) or a Go template (e.g. '{{.ID}}').
        #[arg(short, long, default_value = "json")]
        format: String,
        /// Names or ids.
        #[arg(required = true, value_name = "NAME|ID")]
        names: Vec<String>,
    },
    /// Manage this node's images.
    #[command(subcommand)]
    Image(crate::image::ImageCmd),
    /// Manage swarm secrets.
    #[command(subcommand)]
    Secret(crate::secret::FileObjectCmd<crate::secret::Secrets>),
    /// Manage swarm configs.
    #[command(subcommand)]
    Config(crate::secret::FileObjectCmd<crate::secret::Configs>),
    /// Print the completion script for a shell (e.g. `shoal completion bash >
    /// /etc/bash_completion.d/shoal`).
    Completion {
        /// The shell: bash, zsh, fish or powershell.
        #[arg(value_enum)]
        shell: crate::manual::CompletionShell,
    },
    /// Print the man page of shoal, or write one per command into a directory.
    Man {
        /// Write shoal.1, shoal-service.1, shoal-service-create.1, … into this directory
        /// (it must exist) instead of printing shoal.1.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// The per-container monitor (started by the daemon, not by hand).
    #[command(hide = true)]
    Shim {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Args, Debug)]
pub struct ExecArgs {
    /// Keep STDIN open (it always is: the command runs with this terminal's stdio).
    #[arg(short, long)]
    pub interactive: bool,
    /// Allocate a pseudo-TTY (not supported: the command gets this process's stdio).
    #[arg(short, long)]
    pub tty: bool,
    /// Task running on this node: its name as `service ps` shows it (web.1), or its id (or a
    /// unique prefix).
    pub task: String,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub cmd: Vec<String>,
}

#[derive(Args, Debug)]
pub struct DaemonArgs {
    /// Directory for the node's keys, certificates, raft log and state.
    #[arg(long, default_value = "/var/lib/shoal")]
    pub data_dir: PathBuf,
    /// Unix socket for the CLI.
    #[arg(long, default_value = "/run/shoal/shoal.sock")]
    pub socket: PathBuf,
    /// Node name to use instead of the OS hostname.
    #[arg(long)]
    pub hostname: Option<String>,
    /// Raft heartbeat interval.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    pub raft_heartbeat: Duration,
    /// Container runtime for this node's tasks: `oci` (real containers through
    /// --oci-runtime), `fake` (in-memory processes, for tests and benchmarks) or `none`
    /// (tasks placed here are rejected).
    #[arg(long, default_value = "oci")]
    pub runtime: String,
    /// The OCI runtime binary: runc, crun or a path to one.
    #[arg(long, default_value = "runc")]
    pub oci_runtime: String,
    /// Registry (host:port) spoken to over plain HTTP; repeatable.
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    pub insecure_registries: Vec<String>,
    /// Credentials for a registry: HOST:PORT=USER:PASSWORD; repeatable.
    #[arg(long = "registry-auth", value_name = "HOST=USER:PASSWORD")]
    pub registry_auth: Vec<String>,
    /// Start-up time of a fake task (with --runtime fake).
    #[arg(long, default_value = "50ms", value_parser = parse_duration)]
    pub fake_start_delay: Duration,
    /// CPUs this node offers for reservations (default: all of the machine's).
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Memory this node offers for reservations, e.g. 4G (default: the machine's).
    #[arg(long, value_parser = parse_size)]
    pub memory: Option<u64>,
    /// Raft election timeout (the lower bound; the upper is 13/9 of it, the leader lease
    /// equals it and a raft message may take 5/9 of it).
    #[arg(long, default_value = "450ms", value_parser = parse_duration)]
    pub election_timeout: Duration,
    /// Start an election as soon as a silent leader's lease has run out (false: only on
    /// openraft's timer, the former behaviour; for `bench failover`'s baseline).
    #[arg(long, hide = true, default_value_t = true, action = clap::ArgAction::Set)]
    pub raft_prompt_election: bool,
    /// Log format on stderr: text (coloured only on a terminal) or json (one object a line).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum SwarmCmd {
    /// Initialize a swarm.
    Init {
        /// Advertised address (IP[:PORT]).
        #[arg(long)]
        advertise_addr: Option<String>,
        /// Listen address (IP[:PORT]).
        #[arg(long, default_value = "0.0.0.0:2377")]
        listen_addr: String,
        /// Enable manager autolocking (requiring an unlock key to start a stopped manager).
        #[arg(long)]
        autolock: bool,
        /// Dispatcher heartbeat period (default 1s; a node is Down after 3 missed).
        #[arg(long, value_parser = parse_duration)]
        dispatcher_heartbeat: Option<Duration>,
        /// Validity period for node certificates.
        #[arg(long, value_parser = parse_duration)]
        cert_expiry: Option<Duration>,
        /// Default address pool in CIDR format (repeatable; default 10.0.0.0/8).
        #[arg(long = "default-addr-pool", value_name = "CIDR")]
        default_addr_pool: Vec<String>,
        /// Subnet prefix length for networks taken from the default address pools.
        #[arg(
            long = "default-addr-pool-mask-length",
            default_value_t = 24,
            value_name = "N"
        )]
        default_addr_pool_mask_length: u32,
        /// Force create a new cluster from current state (on a manager that lost its quorum).
        #[arg(long)]
        force_new_cluster: bool,
    },
    /// Join a swarm as a node and/or manager.
    Join {
        /// Token for entry into the swarm.
        #[arg(long)]
        token: String,
        /// Advertised address (IP[:PORT]).
        #[arg(long)]
        advertise_addr: Option<String>,
        /// Listen address (IP[:PORT]).
        #[arg(long, default_value = "0.0.0.0:2377")]
        listen_addr: String,
        /// A manager's address: HOST:PORT.
        remote: String,
    },
    /// Manage join tokens.
    JoinToken {
        /// Only display the token.
        #[arg(short, long)]
        quiet: bool,
        /// Rotate the join token.
        #[arg(long)]
        rotate: bool,
        /// worker or manager.
        role: String,
    },
    /// Leave the swarm.
    Leave {
        /// Force this node to leave the swarm, ignoring warnings.
        #[arg(short, long)]
        force: bool,
    },
    /// Unlock a swarm manager (the unlock key is read from stdin).
    Unlock,
    /// Manage the unlock key.
    UnlockKey {
        /// Only display the key.
        #[arg(short, long)]
        quiet: bool,
        /// Rotate the unlock key.
        #[arg(long)]
        rotate: bool,
    },
    /// Update the swarm.
    Update {
        /// Change manager autolocking setting (true|false).
        #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = clap::value_parser!(bool))]
        autolock: Option<bool>,
        /// Spread replicated tasks onto nodes that join or come back with fewer tasks
        /// (moving `--update-parallelism` tasks at a time).
        #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = clap::value_parser!(bool))]
        rebalance_on_join: Option<bool>,
        /// Dispatcher heartbeat period (a node is Down after 3 missed).
        #[arg(long, value_parser = parse_duration)]
        dispatcher_heartbeat: Option<Duration>,
        /// Validity period for node certificates.
        #[arg(long, value_parser = parse_duration)]
        cert_expiry: Option<Duration>,
        /// Most replicas one service may have (default 100000).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        max_replicas: Option<u64>,
        /// Most tasks the whole cluster may run (default 1000000).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        max_tasks: Option<u64>,
    },
}

#[derive(Subcommand, Debug)]
pub enum NodeCmd {
    /// List nodes in the swarm.
    #[command(alias = "list")]
    Ls(crate::output::ListArgs),
    /// Display detailed information on one or more nodes.
    Inspect {
        /// Print the information in a human friendly format.
        #[arg(long)]
        pretty: bool,
        /// Format output: json (a JSON array) or a Go template (e.g. '{{.Status.State}}').
        #[arg(short, long, default_value = "json")]
        format: String,
        /// Nodes: id, unique id prefix or hostname.
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Update a node.
    Update {
        /// Availability of the node (active, pause, drain).
        #[arg(long)]
        availability: Option<String>,
        /// Role of the node (worker, manager).
        #[arg(long)]
        role: Option<String>,
        /// Add or update a node label (key=value).
        #[arg(long = "label-add")]
        label_add: Vec<String>,
        /// Remove a node label if exists.
        #[arg(long = "label-rm")]
        label_rm: Vec<String>,
        /// The node: id, unique id prefix or hostname.
        node: String,
    },
    /// Promote one or more nodes to manager in the swarm.
    Promote {
        /// Nodes: id, unique id prefix or hostname.
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Demote one or more nodes from manager in the swarm.
    Demote {
        /// Nodes: id, unique id prefix or hostname.
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// List tasks running on one or more nodes, defaults to current node.
    Ps {
        /// Do not truncate output.
        #[arg(long)]
        no_trunc: bool,
        /// Filter output: desired-state=running|shutdown|accepted.
        #[arg(short, long = "filter", value_name = "KEY=VALUE")]
        filter: Vec<String>,
        /// Format output: table or json.
        #[arg(long, default_value = "table")]
        format: Format,
        /// Only display task IDs.
        #[arg(short, long)]
        quiet: bool,
        /// Nodes: id, unique id prefix, hostname, or `self` (the default).
        #[arg(value_name = "NODE")]
        nodes: Vec<String>,
    },
    /// Remove one or more nodes from the swarm.
    #[command(alias = "remove")]
    Rm {
        /// Force remove a node from the swarm.
        #[arg(short, long)]
        force: bool,
        /// Nodes: id, unique id prefix or hostname.
        #[arg(required = true)]
        nodes: Vec<String>,
    },
}

#[derive(Args, Debug)]
pub struct InfoArgs {
    /// Output format: table or json.
    #[arg(long, default_value = "table")]
    pub format: Format,
}

#[derive(Subcommand, Debug)]
pub enum BenchCmd {
    /// Real managers (raft on disk, mTLS gRPC on loopback) and simulated workers in one
    /// process: time until every task of one service is RUNNING.
    Cluster {
        /// Managers (1, 3 or 5).
        #[arg(long, default_value_t = 3)]
        managers: usize,
        /// Simulated workers.
        #[arg(long, default_value_t = 100)]
        workers: usize,
        /// Replicas of the one service.
        #[arg(long, default_value_t = 1000)]
        tasks: u64,
        /// Give up after this long.
        #[arg(long, default_value = "10m", value_parser = parse_duration)]
        timeout: Duration,
        /// Stop when the process's memory passes this (e.g. 16G): print what was reached.
        #[arg(long, default_value = "16G", value_parser = parse_size)]
        max_rss: u64,
        /// Output format: table or json.
        #[arg(long, default_value = "table")]
        format: Format,
    },
    /// The simulated workers of `bench cluster` when they run in a process of their own
    /// (fed on stdin by the bench).
    #[command(hide = true)]
    ClusterAgents,
    /// One container life cycle (`true`) through shoal's OCI runtime vs bare `<runtime> run`
    /// of the same bundle: medians and their ratio, per runtime.
    Runtime {
        /// Life cycles per runtime (the median is reported).
        #[arg(long, default_value_t = 20)]
        rounds: usize,
        /// OCI runtimes to measure, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "runc,crun")]
        runtimes: Vec<String>,
        /// Output format: table or json.
        #[arg(long, default_value = "table")]
        format: Format,
    },
    /// Time from `service create --replicas N` to every task RUNNING on one lab worker, per
    /// runtime (`fake` is the orchestration-only baseline); ratios against runc.
    Replicas {
        /// Replicas of the service.
        #[arg(long, default_value_t = 50)]
        replicas: u32,
        /// Runtimes to measure, comma-separated: fake, runc, crun or a path.
        #[arg(long, value_delimiter = ',', default_value = "fake,runc,crun")]
        runtimes: Vec<String>,
        /// Prefix of the labs the benchmark creates (a digit is appended per runtime).
        #[arg(long, default_value = "bench")]
        prefix: String,
        /// Give up on one runtime after this long.
        #[arg(long, default_value = "5m", value_parser = parse_duration)]
        timeout: Duration,
        /// Output format: table or json.
        #[arg(long, default_value = "table")]
        format: Format,
    },
    /// A rolling update of N replicas (web:v1 → v2, `--update-parallelism P --update-delay
    /// 0s`, default monitor) and its rollback on a one-host lab, timed to every task running
    /// the new image and to the update completed; Docker Swarm the same when `dockerd` is on
    /// PATH (a private daemon in its own network namespace), and the ratios.
    Update {
        /// Replicas of the service.
        #[arg(long, default_value_t = 50)]
        replicas: u32,
        /// Tasks updated at a time (--update-parallelism).
        #[arg(long, default_value_t = 10)]
        parallelism: u32,
        /// runc, crun, or fake (orchestration only, no registry).
        #[arg(long, default_value = "runc")]
        runtime: String,
        /// Prefix of the lab the benchmark creates and removes.
        #[arg(long, default_value = "upd")]
        prefix: String,
        /// Do not measure Docker Swarm even when dockerd is installed.
        #[arg(long)]
        no_swarm: bool,
        /// Give up on one phase after this long.
        #[arg(long, default_value = "5m", value_parser = parse_duration)]
        timeout: Duration,
        /// Output format: table or json.
        #[arg(long, default_value = "table")]
        format: Format,
    },
    /// TCP throughput (iperf3) between containers on two lab workers over shoal's overlay vs
    /// the workers' underlay vs a hand-built VXLAN; medians and ratios of one run.
    Overlay {
        #[command(flatten)]
        net: NetBenchFlags,
    },
    /// A fault run on a lab (fake runtime): clients write through every manager while a
    /// seeded nemesis kills, partitions and restarts managers; prints writes acknowledged /
    /// lost, unavailability per fault kind and the invariants' results (exit 1 if one fails).
    Chaos {
        /// Faults to inject (kinds in a seeded order, each once per four rounds).
        #[arg(long, default_value_t = 8)]
        rounds: usize,
        /// Seed of the nemesis (default: a random one, printed).
        #[arg(long)]
        seed: Option<u64>,
        /// Managers of the lab.
        #[arg(long, default_value_t = 3)]
        managers: usize,
        /// Workers of the lab.
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// Replicas of the service whose slots are checked for duplicates.
        #[arg(long, default_value_t = 4)]
        replicas: u32,
        /// Dispatcher heartbeat period of the lab's swarm.
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        dispatcher_heartbeat: Duration,
        /// Prefix of the lab the run creates and removes.
        #[arg(long, default_value = "chaos")]
        prefix: String,
        /// Keep the daemons' logs in this directory.
        #[arg(long)]
        logs: Option<PathBuf>,
        /// Output format: table or json.
        #[arg(long, default_value = "table")]
        format: Format,
    },
    /// Failover with default settings on a lab (fake runtime): the leader killed `--kills`
    /// times (→ a write accepted again), workers cut off `--cutoffs` times (→ Down, → their
    /// tasks running elsewhere), the cutoffs again with the baseline heartbeat; p50 and max.
    Failover {
        /// Times the leader is killed.
        #[arg(long, default_value_t = 20)]
        kills: usize,
        /// Times a worker is cut off.
        #[arg(long, default_value_t = 5)]
        cutoffs: usize,
        /// Heartbeat period of the baseline cutoffs (0s: none).
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        baseline_heartbeat: Duration,
        /// Leader kills with elections on openraft's timer alone, the former behaviour
        /// (default: as many as --kills).
        #[arg(long)]
        baseline_kills: Option<usize>,
        /// Managers of the lab.
        #[arg(long, default_value_t = 3)]
        managers: usize,
        /// Workers of the lab.
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// Replicas of the service whose tasks are moved.
        #[arg(long, default_value_t = 10)]
        replicas: u32,
        /// Prefix of the lab the run creates and removes.
        #[arg(long, default_value = "failover")]
        prefix: String,
        /// Keep the daemons' logs in this directory.
        #[arg(long)]
        logs: Option<PathBuf>,
        /// Output format: table or json.
        #[arg(long, default_value = "table")]
        format: Format,
    },
    /// Requests/s (wrk, from outside the workers) through shoal's ingress routing mesh vs one
    /// container straight vs haproxy vs a hand-built nft DNAT over a hand-built VXLAN.
    Mesh {
        #[command(flatten)]
        net: NetBenchFlags,
        /// wrk connections.
        #[arg(long, default_value_t = 32)]
        connections: u32,
    },
    /// Manager CPU and session bytes per task change with many nodes on one overlay (in
    /// process, fake runtime); `--before` prints an older build's figures beside.
    OverlayChurn(crate::bench_wire::OverlayChurnArgs),
    /// Raft write throughput: clients create and update tasks through on-disk managers in
    /// one process, `--batch` operations a transaction, beside one a transaction.
    Raft {
        /// Managers (1, 3 or 5).
        #[arg(long, default_value_t = 3)]
        managers: usize,
        /// Task writes of the batched run (the unbatched baseline makes a tenth, at most 5,000).
        #[arg(long, default_value_t = 100_000)]
        writes: u64,
        /// Operations a transaction.
        #[arg(long, default_value_t = 100)]
        batch: usize,
        /// Writers at once.
        #[arg(long, default_value_t = 8)]
        clients: usize,
        /// Output format: table or json.
        #[arg(long, default_value = "table")]
        format: Format,
    },
}

/// Flags shared by the network benchmarks.
#[derive(clap::Args, Debug)]
pub struct NetBenchFlags {
    /// Length of one measurement, in seconds.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Measurements per path (interleaved across paths); the median is reported.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Prefix of the lab the benchmark creates (default: bn<pid>).
    #[arg(long)]
    pub prefix: Option<String>,
    /// Give up waiting for the lab's services after this long.
    #[arg(long, default_value = "3m", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Output format: table or json.
    #[arg(long, default_value = "table")]
    pub format: Format,
}

impl NetBenchFlags {
    fn args(&self, connections: u32) -> crate::bench_net::NetBenchArgs {
        crate::bench_net::NetBenchArgs {
            seconds: self.seconds.max(1),
            rounds: self.rounds.max(1),
            connections,
            prefix: self
                .prefix
                .clone()
                .unwrap_or_else(crate::bench_net::default_prefix),
            timeout: self.timeout,
            json: matches!(self.format, Format::Json),
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum LabCmd {
    /// Create the hosts, start a daemon on each and join them into one swarm.
    Up {
        /// Manager hosts.
        #[arg(long, default_value_t = 1)]
        managers: usize,
        /// Worker hosts.
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// Prefix of everything the lab creates (1-8 of a-z, 0-9).
        #[arg(long, default_value = "shoal")]
        prefix: String,
        /// Dispatcher heartbeat period of the lab's swarm.
        #[arg(long, value_parser = parse_duration)]
        dispatcher_heartbeat: Option<Duration>,
        /// Container runtime of the lab's daemons (fake, oci or none).
        #[arg(long, default_value = "fake")]
        runtime: String,
        /// OCI runtime of the lab's daemons with `--runtime oci` (runc, crun or a path).
        #[arg(long)]
        oci_runtime: Option<String>,
        /// Run a registry on the lab's underlay at 192.168.77.2:5000 holding the images
        /// web:v1, web:v2 (busybox httpd answering "<hostname> v1|v2"), sleep:1 and health:1
        /// (healthy while /tmp/healthy exists).
        #[arg(long)]
        registry: bool,
    },
    /// Stop the lab's daemons and remove its hosts, also after a crash.
    Down {
        /// Prefix of the lab.
        #[arg(long, default_value = "shoal")]
        prefix: String,
    },
    /// Kill a lab host's daemon with SIGKILL, as a crash would.
    Kill {
        /// Prefix of the lab.
        #[arg(long, default_value = "shoal")]
        prefix: String,
        /// The lab host (m1, w2, …).
        host: String,
    },
    /// Start a lab host's daemon again on its data dir.
    Start {
        /// Prefix of the lab.
        #[arg(long, default_value = "shoal")]
        prefix: String,
        /// The lab host (m1, w2, …).
        host: String,
    },
    /// Cut a lab host off from other lab hosts (both ways), as a network partition would.
    Partition {
        /// Prefix of the lab.
        #[arg(long, default_value = "shoal")]
        prefix: String,
        /// The lab host to cut off (m1, w2, …).
        host: String,
        /// The hosts it can no longer reach, comma-separated (e.g. m2,m3).
        #[arg(long, value_delimiter = ',', required = true)]
        from: Vec<String>,
    },
    /// Undo `lab partition` for one host, or for every host.
    Heal {
        /// Prefix of the lab.
        #[arg(long, default_value = "shoal")]
        prefix: String,
        /// The host to heal (default: every host). Not `host`: that id is the global
        /// `--host`, whose default would fill it in.
        #[arg(value_name = "HOST")]
        target: Option<String>,
    },
    /// Run a command on a lab host (SHOAL_HOST points at its daemon).
    Exec {
        /// Prefix of the lab.
        #[arg(long, default_value = "shoal")]
        prefix: String,
        /// The lab host (m1, w2, …).
        host: String,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
}

/// clap's usage errors span several lines (the error, tips, usage); users get one line.
pub fn one_line_usage_error(rendered: &str) -> String {
    let parts: Vec<&str> = rendered
        .lines()
        .take_while(|l| !l.starts_with("Usage:"))
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("tip:"))
        .collect();
    format!("{} (see 'shoal --help')", parts.join(" "))
}

/// A one-line error for the user.
#[derive(Debug)]
pub struct CliError(pub String);

impl From<Status> for CliError {
    fn from(s: Status) -> Self {
        CliError(format!(
            "Error response from daemon: {}",
            crate::api_fields::message(&s)
        ))
    }
}

impl From<deploy::LabError> for CliError {
    fn from(e: deploy::LabError) -> Self {
        CliError(format!("Error: {e}"))
    }
}

type CliResult = Result<(), CliError>;

/// Print every error but the last on stderr; the last is the command's (exit 1).
pub(crate) fn last_error(mut errs: Vec<String>) -> Result<(), CliError> {
    let Some(last) = errs.pop() else {
        return Ok(());
    };
    for e in &errs {
        eprintln!("{e}");
    }
    Err(CliError(last))
}

pub fn run(cli: Cli) -> i32 {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let res = match cli.cmd {
        Cmd::Daemon(args) => return rt.block_on(run_daemon(args, &cli.log_level)),
        Cmd::Lab(cmd) => run_lab(cmd, &cli.log_level),
        Cmd::Bench(BenchCmd::Cluster {
            managers,
            workers,
            tasks,
            timeout,
            max_rss,
            format,
        }) => {
            init_tracing("error");
            let max_rss_mb = max_rss as f64 / (1024.0 * 1024.0);
            rt.block_on(crate::bench::run_cluster(crate::bench::BenchConfig {
                managers,
                workers,
                tasks,
                timeout,
                max_rss_mb,
                json: matches!(format, Format::Json),
            }))
            .map_err(|e| CliError(format!("Error: bench: {e:#}")))
        }
        Cmd::Bench(BenchCmd::ClusterAgents) => {
            init_tracing("error");
            rt.block_on(crate::bench::run_agents())
                .map_err(|e| CliError(format!("Error: bench agents: {e:#}")))
        }
        Cmd::Bench(BenchCmd::Runtime {
            rounds,
            runtimes,
            format,
        }) => {
            init_tracing("error");
            rt.block_on(crate::bench_containers::run_runtime(
                rounds,
                &runtimes,
                matches!(format, Format::Json),
            ))
            .map_err(|e| CliError(format!("Error: bench: {e:#}")))
        }
        Cmd::Bench(BenchCmd::Replicas {
            replicas,
            runtimes,
            prefix,
            timeout,
            format,
        }) => {
            init_tracing("error");
            crate::bench_containers::run_replicas(
                replicas,
                &runtimes,
                &prefix,
                timeout,
                matches!(format, Format::Json),
            )
            .map_err(|e| CliError(format!("Error: bench: {e:#}")))
        }
        Cmd::Bench(BenchCmd::Update {
            replicas,
            parallelism,
            runtime,
            prefix,
            no_swarm,
            timeout,
            format,
        }) => {
            init_tracing("error");
            crate::bench_update::run_update(&crate::bench_update::UpdateArgs {
                replicas,
                parallelism,
                runtime,
                prefix,
                timeout,
                swarm: !no_swarm,
                json: matches!(format, Format::Json),
            })
            .map_err(|e| CliError(format!("Error: bench update: {e:#}")))
        }
        Cmd::Bench(BenchCmd::Chaos {
            rounds,
            seed,
            managers,
            workers,
            replicas,
            dispatcher_heartbeat,
            prefix,
            logs,
            format,
        }) => {
            init_tracing("error");
            let args = crate::bench_chaos::ChaosArgs {
                rounds,
                seed: seed.unwrap_or_else(rand::random),
                managers,
                workers,
                replicas,
                heartbeat: dispatcher_heartbeat,
                prefix,
                logs,
                json: matches!(format, Format::Json),
            };
            match rt.block_on(crate::bench_chaos::run_chaos(args)) {
                Ok(rep) if rep.passed() => Ok(()),
                Ok(rep) => Err(CliError(format!(
                    "Error: chaos: {} of {} checks failed",
                    rep.checks.iter().filter(|c| !c.pass).count(),
                    rep.checks.len()
                ))),
                Err(e) => Err(CliError(format!("Error: bench chaos: {e:#}"))),
            }
        }
        Cmd::Bench(BenchCmd::Failover {
            kills,
            cutoffs,
            baseline_heartbeat,
            baseline_kills,
            managers,
            workers,
            replicas,
            prefix,
            logs,
            format,
        }) => {
            init_tracing("error");
            let args = crate::bench_failover::FailoverArgs {
                kills,
                cutoffs,
                baseline_heartbeat: Some(baseline_heartbeat).filter(|d| !d.is_zero()),
                baseline_kills: baseline_kills.unwrap_or(kills),
                managers,
                workers,
                replicas,
                prefix,
                logs,
                json: matches!(format, Format::Json),
            };
            rt.block_on(crate::bench_failover::run_failover(args))
                .map(|_| ())
                .map_err(|e| CliError(format!("Error: bench failover: {e:#}")))
        }
        Cmd::Bench(BenchCmd::Raft {
            managers,
            writes,
            batch,
            clients,
            format,
        }) => {
            init_tracing("error");
            rt.block_on(crate::bench_raft::run(crate::bench_raft::RaftBenchConfig {
                managers,
                writes,
                batch,
                clients,
                json: matches!(format, Format::Json),
            }))
            .map_err(|e| CliError(format!("Error: bench raft: {e:#}")))
        }
        Cmd::Bench(BenchCmd::OverlayChurn(a)) => {
            init_tracing("error");
            crate::bench_wire::run(a)
                .map_err(|e| CliError(format!("Error: bench overlay-churn: {e:#}")))
        }
        Cmd::Bench(BenchCmd::Overlay { net }) => {
            init_tracing("error");
            crate::bench_net::run_overlay(&net.args(0))
                .map_err(|e| CliError(format!("Error: bench overlay: {e:#}")))
        }
        Cmd::Bench(BenchCmd::Mesh { net, connections }) => {
            init_tracing("error");
            crate::bench_net::run_mesh(&net.args(connections.max(1)))
                .map_err(|e| CliError(format!("Error: bench mesh: {e:#}")))
        }
        Cmd::Shim { .. } => {
            eprintln!("Error: shim is started by the daemon");
            return 2;
        }
        Cmd::Completion { shell } => crate::manual::completion(shell, &mut std::io::stdout()),
        Cmd::Man { dir: None } => crate::manual::man_page(&mut std::io::stdout()),
        Cmd::Man { dir: Some(dir) } => crate::manual::man_pages(&dir).map(|n| {
            println!("{n} man pages written to {}", dir.display());
        }),
        Cmd::Exec(a) => rt.block_on(exec(&cli.host, a)),
        Cmd::Image(c) => rt.block_on(async {
            let client = node_local(&cli.host).await?;
            crate::image::run(c, client).await
        }),
        cmd => rt.block_on(async {
            check_locally(&cmd)?;
            let client = Client::connect(&cli.host).await?;
            match cmd {
                Cmd::Swarm(c) => swarm(client, c).await,
                Cmd::Node(c) => node(client, c).await,
                Cmd::Service(c) => crate::service::run(client, c).await,
                Cmd::Network(c) => crate::network::run(client, c).await,
                Cmd::Stack(c) => crate::stack::run(client, c).await,
                Cmd::Inspect {
                    kind,
                    format,
                    names,
                } => inspect_any(&client, kind.as_deref(), &format, &names).await,
                Cmd::Info(a) => info(client, a).await,
                Cmd::Secret(c) => crate::secret::run(client, c).await,
                Cmd::Config(c) => crate::secret::run(client, c).await,
                Cmd::Daemon(_)
                | Cmd::Lab(_)
                | Cmd::Bench(_)
                | Cmd::Shim { .. }
                | Cmd::Completion { .. }
                | Cmd::Man { .. }
                | Cmd::Exec(_)
                | Cmd::Image(_) => {
                    unreachable!("handled above")
                }
            }
        }),
    };
    match res {
        Ok(()) => 0,
        Err(CliError(msg)) => {
            eprintln!("{}", msg.lines().next().unwrap_or_default());
            1
        }
    }
}

/// What can be refused without the daemon is refused before connecting to it.
fn check_locally(cmd: &Cmd) -> CliResult {
    let r = match cmd {
        Cmd::Network(crate::network::NetworkCmd::Create(a)) => {
            crate::network::build_network_spec(a).map(|_| ())
        }
        Cmd::Service(crate::service::ServiceCmd::Create(a)) => {
            crate::service::build_spec(a, a.name.clone().unwrap_or_default()).map(|_| ())
        }
        // A bad compose file is refused before connecting (and so changes nothing).
        Cmd::Stack(crate::stack::StackCmd::Deploy(a)) if !a.files.iter().any(|f| f == "-") => {
            return crate::stack::load(a).map(|_| ());
        }
        Cmd::Swarm(SwarmCmd::Init {
            default_addr_pool,
            default_addr_pool_mask_length,
            ..
        }) => crate::network::check_addr_pools(default_addr_pool, *default_addr_pool_mask_length),
        _ => Ok(()),
    };
    r.map_err(|e| CliError(format!("Error: {e}")))
}

fn init_tracing(level: &str) {
    init_tracing_as(level, LogFormat::Text);
}

/// Logs on stderr; colour codes only when stderr is a terminal (a daemon's stderr is
/// usually a log file or a journal, where they are noise).
fn init_tracing_as(level: &str, format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!(
            "{level},openraft=warn,h2=warn,tower=warn,hyper=warn"
        ))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
    };
}

async fn run_daemon(args: DaemonArgs, level: &str) -> i32 {
    init_tracing_as(level, args.log_format);
    let hostname = args.hostname.clone().unwrap_or_else(os_hostname);
    let cfg = crate::daemon::DaemonConfig {
        data_dir: args.data_dir,
        socket: args.socket,
        hostname,
        tuning: manager::raft::RaftTuning {
            prompt_election: args.raft_prompt_election,
            ..manager::raft::RaftTuning::with_election(args.raft_heartbeat, args.election_timeout)
        },
        runtime: match args.runtime.as_str() {
            "none" => crate::daemon::RuntimeChoice::Unavailable,
            "fake" => crate::daemon::RuntimeChoice::Fake {
                start_delay: args.fake_start_delay,
            },
            "oci" => {
                let mut auth = Vec::new();
                for a in &args.registry_auth {
                    let parsed = a
                        .split_once('=')
                        .and_then(|(h, c)| c.split_once(':').map(|(u, p)| (h, u, p)));
                    match parsed {
                        Some((h, u, p)) => auth.push((h.to_string(), u.to_string(), p.to_string())),
                        None => {
                            eprintln!(
                                "Error: invalid --registry-auth {a:?}: expected HOST=USER:PASSWORD"
                            );
                            return 2;
                        }
                    }
                }
                crate::daemon::RuntimeChoice::Oci {
                    runtime: args.oci_runtime.clone(),
                    registry: worker::image::RegistryOptions {
                        insecure: args.insecure_registries.clone(),
                        auth,
                    },
                }
            }
            other => {
                eprintln!("Error: unknown --runtime {other:?}: use oci, fake or none");
                return 2;
            }
        },
        nano_cpus: (args.cpus.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get() as f64)
                .unwrap_or(1.0)
        }) * 1e9) as u64,
        memory_bytes: args.memory.unwrap_or_else(machine_memory),
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let s = shutdown.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("signal handler");
        let mut int = signal(SignalKind::interrupt()).expect("signal handler");
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        tracing::info!("shutting down");
        s.cancel();
    });
    match crate::daemon::run(cfg, shutdown).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("Error: {e}");
            1
        }
    }
}

fn machine_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

fn os_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// The daemon's node-local service (images, exec).
pub async fn node_local(
    host: &str,
) -> Result<proto::pb::node_local_client::NodeLocalClient<Channel>, CliError> {
    Ok(crate::image::client(daemon_channel(host).await?))
}

/// `exec TASK -- CMD`: the daemon names the argv that enters the container; this process
/// becomes it, so the command has this terminal's stdin, stdout and stderr, and its exit code
/// is ours.
async fn exec(host: &str, a: ExecArgs) -> CliResult {
    if a.tty {
        return Err(CliError(
            "Error: --tty is not supported: the command runs with this terminal's stdio".into(),
        ));
    }
    let mut client = node_local(host).await?;
    let argv = client
        .exec_argv(proto::pb::ExecArgvRequest {
            task: a.task.clone(),
            cmd: a.cmd.clone(),
        })
        .await
        .map_err(|s| CliError(format!("Error response from daemon: {}", s.message())))?
        .into_inner()
        .argv;
    let Some((prog, rest)) = argv.split_first() else {
        return Err(CliError("Error: the daemon returned no command".into()));
    };
    use std::os::unix::process::CommandExt;
    let err = std::process::Command::new(prog).args(rest).exec();
    Err(CliError(format!("Error: running {prog}: {err}")))
}

fn ms(d: Option<Duration>) -> u64 {
    // Clamped, not truncated: a huge value must reach the manager's range check as huge.
    d.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

async fn swarm(c: Client, cmd: SwarmCmd) -> CliResult {
    match cmd {
        SwarmCmd::Init {
            advertise_addr,
            listen_addr,
            autolock,
            dispatcher_heartbeat,
            cert_expiry,
            default_addr_pool,
            default_addr_pool_mask_length,
            force_new_cluster,
        } => {
            crate::network::check_addr_pools(&default_addr_pool, default_addr_pool_mask_length)
                .map_err(|e| CliError(format!("Error: {e}")))?;
            let r = c
                .swarm_init(pb::SwarmInitRequest {
                    advertise_addr: advertise_addr.unwrap_or_default(),
                    listen_addr,
                    heartbeat_period_ms: ms(dispatcher_heartbeat),
                    cert_expiry_ms: ms(cert_expiry),
                    default_addr_pool,
                    default_addr_pool_mask_len: default_addr_pool_mask_length,
                    force_new_cluster,
                    autolock,
                })
                .await?;
            println!(
                "Swarm initialized: current node ({}) is now a manager.\n",
                r.node_id
            );
            println!(
                "To add a worker to this swarm, run the following command:\n\n    {}\n",
                r.worker_join_command
            );
            println!("To add a manager to this swarm, run 'shoal swarm join-token manager' and follow the instructions.\n");
            if !r.unlock_key.is_empty() {
                print_unlock_key(&r.unlock_key);
            }
        }
        SwarmCmd::Unlock => {
            let key = read_unlock_key()?;
            c.swarm_unlock(key).await?;
        }
        SwarmCmd::UnlockKey { quiet, rotate } => {
            let k = c.get_unlock_key(rotate).await?;
            if quiet {
                println!("{}", k.unlock_key);
            } else {
                if rotate {
                    println!("Successfully rotated manager unlock key.\n");
                }
                print_unlock_key(&k.unlock_key);
            }
        }
        SwarmCmd::Join {
            token,
            advertise_addr,
            listen_addr,
            remote,
        } => {
            let r = c
                .swarm_join(pb::SwarmJoinRequest {
                    token,
                    remote_addr: remote,
                    advertise_addr: advertise_addr.unwrap_or_default(),
                    listen_addr,
                })
                .await?;
            println!("This node joined a swarm as a {}.", r.node_role().label());
        }
        SwarmCmd::JoinToken {
            quiet,
            rotate,
            role,
        } => {
            if role != "worker" && role != "manager" {
                return Err(CliError(format!(
                    "Error: unknown role {role:?}: use worker or manager"
                )));
            }
            let worker = role == "worker";
            let req = pb::GetJoinTokensRequest {
                rotate_worker: rotate && worker,
                rotate_manager: rotate && !worker,
            };
            let t = c.get_join_tokens(req).await?;
            let token = if worker { t.worker } else { t.manager };
            if rotate && !quiet {
                println!("Successfully rotated {role} join token.\n");
            }
            if quiet {
                println!("{token}");
            } else {
                let info = c.info().await?;
                println!("To add a {role} to this swarm, run the following command:\n\n    shoal swarm join --token {token} {}\n", info.node_addr);
            }
        }
        SwarmCmd::Leave { force } => {
            c.swarm_leave(force).await?;
            println!("Node left the swarm.");
        }
        SwarmCmd::Update {
            autolock,
            dispatcher_heartbeat,
            cert_expiry,
            rebalance_on_join,
            max_replicas,
            max_tasks,
        } => {
            let req = pb::UpdateClusterRequest {
                heartbeat_period_ms: ms(dispatcher_heartbeat),
                cert_expiry_ms: ms(cert_expiry),
                max_replicas: max_replicas.unwrap_or(0),
                max_tasks: max_tasks.unwrap_or(0),
                rebalance_on_join: match rebalance_on_join {
                    None => 0,
                    Some(true) => 1,
                    Some(false) => 2,
                },
                autolock: match autolock {
                    None => 0,
                    Some(true) => 1,
                    Some(false) => 2,
                },
            };
            c.update_cluster(req).await?;
            println!("Swarm updated.");
            if autolock == Some(true) {
                let k = c.get_unlock_key(false).await?;
                print_unlock_key(&k.unlock_key);
            }
        }
    }
    Ok(())
}

/// Docker's words around an unlock key.
fn print_unlock_key(key: &str) {
    println!(
        "To unlock a swarm manager after it restarts, run the `shoal swarm unlock`\ncommand and provide the following key:\n\n    {key}\n\nPlease remember to store this key in a password manager, since without it you\nwill not be able to restart the manager."
    );
}

/// The unlock key from stdin (one line), with a prompt when stdin is a terminal.
fn read_unlock_key() -> Result<String, CliError> {
    use std::io::{BufRead, IsTerminal, Write};
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        print!("Enter unlock key: ");
        let _ = std::io::stdout().flush();
    }
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .map_err(|e| CliError(format!("Error: reading the unlock key: {e}")))?;
    let key = line.trim().to_string();
    if key.is_empty() {
        return Err(CliError("Error: no unlock key given on stdin".into()));
    }
    Ok(key)
}

fn node_row(n: &pb::Node, self_id: &str) -> (Vec<String>, String) {
    let host = n
        .description
        .as_ref()
        .map(|d| d.hostname.clone())
        .unwrap_or_default();
    let engine = n
        .description
        .as_ref()
        .map(|d| d.engine_version.clone())
        .unwrap_or_default();
    let is_self = n.id == self_id;
    let json = json_line(vec![
        ("Availability", json!(title(n.spec_availability().label()))),
        ("EngineVersion", json!(engine)),
        ("Hostname", json!(host)),
        ("ID", json!(n.id)),
        ("ManagerStatus", json!(title(n.reachability().label()))),
        ("Self", json!(is_self)),
        ("Status", json!(title(n.state().label()))),
        ("TLSStatus", json!("Ready")),
    ]);
    let id = if is_self {
        format!("{} *", n.id)
    } else {
        n.id.clone()
    };
    (
        vec![
            id,
            host,
            title(n.state().label()),
            title(n.spec_availability().label()),
            title(n.reachability().label()),
            engine,
        ],
        json,
    )
}

/// The swarm's nodes by hostname, then id.
async fn list_nodes(c: &Client) -> Result<Vec<pb::Node>, CliError> {
    let mut nodes = c.list_nodes().await?;
    nodes.sort_by(|a, b| {
        let h = |n: &pb::Node| {
            n.description
                .as_ref()
                .map(|d| d.hostname.clone())
                .unwrap_or_default()
        };
        h(a).cmp(&h(b)).then(a.id.cmp(&b.id))
    });
    Ok(nodes)
}

fn ts(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

pub(crate) fn inspect_json(n: &pb::Node) -> Value {
    let d = n.description.clone().unwrap_or_default();
    let (os, arch) = d
        .platform
        .split_once('/')
        .unwrap_or((d.platform.as_str(), ""));
    let mut v = json!({
        "ID": n.id,
        "Version": {"Index": n.version},
        "CreatedAt": ts(n.created_at_ms),
        "UpdatedAt": ts(n.updated_at_ms),
        "Spec": {
            "Labels": n.labels,
            "Role": n.spec_role().label(),
            "Availability": n.spec_availability().label(),
        },
        "Description": {
            "Hostname": d.hostname,
            "Platform": {"Architecture": arch, "OS": os},
            "Engine": {"EngineVersion": d.engine_version},
            "TLSInfo": {"CertNotAfter": ts(n.cert_not_after_ms)},
        },
        "Status": {"State": n.state().label(), "Message": n.status_message, "Addr": d.addr.split(':').next().unwrap_or_default()},
        "RaftID": n.raft_id,
    });
    if n.cert_role() == pb::NodeRole::Manager {
        v["ManagerStatus"] = json!({
            "Leader": n.leader,
            "Reachability": n.reachability().label(),
            "Addr": d.addr,
        });
    }
    v
}

async fn node(c: Client, cmd: NodeCmd) -> CliResult {
    match cmd {
        NodeCmd::Ls(crate::output::ListArgs {
            format,
            quiet,
            filter,
        }) => {
            let f = crate::filter::Filters::parse(
                &filter,
                &["id", "label", "node.label", "membership", "name", "role"],
            )?;
            let self_id = c.info().await?.node_id;
            let nodes: Vec<pb::Node> = list_nodes(&c)
                .await?
                .into_iter()
                .filter(|n| {
                    let host = n.description.as_ref().map_or("", |d| d.hostname.as_str());
                    f.id(&n.id)
                        && f.any("name", |v| host.starts_with(v) || n.id.starts_with(v))
                        && f.labels("label", &n.labels)
                        && f.labels("node.label", &n.labels)
                        && f.any("membership", |m| m == "accepted")
                        && f.any("role", |r| n.spec_role().label() == r)
                })
                .collect();
            if quiet {
                for n in &nodes {
                    println!("{}", n.id);
                }
                return Ok(());
            }
            let rows: Vec<(Vec<String>, String)> =
                nodes.iter().map(|n| node_row(n, &self_id)).collect();
            print_rows(
                &[
                    "ID",
                    "HOSTNAME",
                    "STATUS",
                    "AVAILABILITY",
                    "MANAGER STATUS",
                    "ENGINE VERSION",
                ],
                rows,
                format,
            );
        }
        NodeCmd::Inspect {
            pretty,
            format,
            nodes,
        } => {
            let mut out = Vec::new();
            for id in &nodes {
                out.push(c.get_node(&self_node(&c, id).await?).await?);
            }
            if pretty {
                for n in &out {
                    let d = n.description.clone().unwrap_or_default();
                    println!("ID:\t\t\t{}", n.id);
                    println!("Hostname:\t\t{}", d.hostname);
                    println!("Joined at:\t\t{}", ts(n.created_at_ms));
                    println!(
                        "Status:\n State:\t\t\t{}\n Availability:\t\t{}\n Address:\t\t{}",
                        title(n.state().label()),
                        title(n.spec_availability().label()),
                        d.addr
                    );
                    if n.cert_role() == pb::NodeRole::Manager {
                        println!(
                            "Manager Status:\n Address:\t\t{}\n Raft Status:\t\t{}\n Leader:\t\t{}",
                            d.addr,
                            title(n.reachability().label()),
                            if n.leader { "Yes" } else { "No" }
                        );
                    }
                    if !n.labels.is_empty() {
                        println!("Labels:");
                        let mut labels: Vec<_> = n.labels.iter().collect();
                        labels.sort();
                        for (k, v) in labels {
                            println!(" - {k}={v}");
                        }
                    }
                    println!("Platform:\n Operating System:\t{}", d.platform);
                    println!("Engine Version:\t\t{}", d.engine_version);
                    println!(
                        "TLS Info:\n Certificate expires:\t{}",
                        ts(n.cert_not_after_ms)
                    );
                }
            } else {
                let arr: Vec<Value> = out.iter().map(inspect_json).collect();
                crate::output::print_inspect(arr, &format)
                    .map_err(|e| CliError(format!("Error: {e}")))?;
            }
        }
        NodeCmd::Update {
            availability,
            role,
            label_add,
            label_rm,
            node,
        } => {
            if availability.is_none()
                && role.is_none()
                && label_add.is_empty()
                && label_rm.is_empty()
            {
                return Err(CliError("Error: nothing to update: give --availability, --role, --label-add or --label-rm".into()));
            }
            let set_availability = match availability.as_deref() {
                None => pb::NodeAvailability::Unspecified,
                Some("active") => pb::NodeAvailability::Active,
                Some("pause") => pb::NodeAvailability::Pause,
                Some("drain") => pb::NodeAvailability::Drain,
                Some(other) => {
                    return Err(Status::invalid_argument(format!(
                        "invalid availability {other:?}: expected active, pause or drain"
                    ))
                    .into())
                }
            };
            let set_role = match role.as_deref() {
                None => pb::NodeRole::Unspecified,
                Some(r) => r
                    .parse::<proto::security::Role>()
                    .map_err(Status::invalid_argument)?
                    .into(),
            };
            c.update_node(pb::UpdateNodeRequest {
                id: node.clone(),
                set_availability: set_availability as i32,
                set_role: set_role as i32,
                label_add,
                label_rm,
            })
            .await?;
            // As Docker: the node as the user named it.
            println!("{node}");
        }
        NodeCmd::Promote { nodes } => {
            for id in nodes {
                let n = c
                    .update_node(pb::UpdateNodeRequest {
                        id: id.clone(),
                        set_role: pb::NodeRole::Manager as i32,
                        ..Default::default()
                    })
                    .await?;
                println!("Node {} promoted to a manager in the swarm.", n.id);
            }
        }
        NodeCmd::Demote { nodes } => {
            for id in nodes {
                let n = c
                    .update_node(pb::UpdateNodeRequest {
                        id: id.clone(),
                        set_role: pb::NodeRole::Worker as i32,
                        ..Default::default()
                    })
                    .await?;
                println!("Manager {} demoted in the swarm.", n.id);
            }
        }
        NodeCmd::Rm { force, nodes } => {
            for id in nodes {
                c.remove_node(&id, force).await?;
                println!("{id}");
            }
        }
        NodeCmd::Ps {
            no_trunc,
            filter,
            format,
            quiet,
            nodes,
        } => {
            let (states, node_filter) = crate::service::ps::parse_ps_filters(&filter)
                .map_err(|e| CliError(format!("Error: {e}")))?;
            if !node_filter.is_empty() {
                return Err(CliError(
                    "Error: invalid filter 'node': name the nodes as arguments".into(),
                ));
            }
            let states = if states.is_empty() {
                vec![String::new()]
            } else {
                states
            };
            let nodes = if nodes.is_empty() {
                vec!["self".to_string()]
            } else {
                nodes
            };
            let mut tasks = Vec::new();
            let mut seen = std::collections::HashSet::new();
            for n in &nodes {
                // Resolved first: an unknown node is an error even when it would list nothing.
                let id = c.get_node(&self_node(&c, n).await?).await?.id;
                for st in &states {
                    for t in c.list_tasks("", &id, st).await? {
                        if seen.insert(t.id.clone()) {
                            tasks.push(t);
                        }
                    }
                }
            }
            tasks.retain(|t| crate::service::ps::keep_task(&filter, t));
            crate::service::ps::print_tasks(&tasks, no_trunc, quiet, format);
        }
    }
    Ok(())
}

/// `shoal inspect`: each name looked up as a service, node, network, secret and config in
/// turn (or as `kind` only), printed in Docker's shape.
async fn inspect_any(c: &Client, kind: Option<&str>, format: &str, names: &[String]) -> CliResult {
    use crate::client::FileKind;
    if !matches!(format, "" | "json") {
        crate::template::Template::parse(format).map_err(|e| CliError(format!("Error: {e}")))?;
    }
    let want = |k: &str| kind.is_none_or(|x| x == k);
    let mut out = Vec::new();
    let mut missing = Vec::new();
    for n in names {
        let found = if let Some(v) = match want("service") {
            true => c.get_service(n).await.ok(),
            false => None,
        } {
            Some(crate::service::docker_json::service_json(&v))
        } else if let Some(v) = match want("node") {
            true => c.get_node(n).await.ok(),
            false => None,
        } {
            Some(inspect_json(&v))
        } else if let Some(v) = match want("network") {
            true => c.get_network(n).await.ok(),
            false => None,
        } {
            Some(crate::network::inspect_json(&v))
        } else {
            let mut hit = None;
            for (k, fk) in [("secret", FileKind::Secret), ("config", FileKind::Config)] {
                if hit.is_none() && want(k) {
                    if let Ok(o) = c.get_file_object(fk, n).await {
                        hit = Some(crate::secret::inspect_json(fk, &o));
                    }
                }
            }
            hit
        };
        match found {
            Some(v) => out.push(v),
            None => missing.push(format!("Error: No such object: {n}")),
        }
    }
    crate::output::print_inspect(out, format).map_err(|e| CliError(format!("Error: {e}")))?;
    match missing.is_empty() {
        true => Ok(()),
        false => Err(CliError(missing.join("; "))),
    }
}

/// A node as the user named it, with Docker's `self` for this node.
async fn self_node(c: &Client, name: &str) -> Result<String, CliError> {
    if name == "self" {
        let id = c.info().await?.node_id;
        if id.is_empty() {
            return Err(CliError("Error: this node is not part of a swarm".into()));
        }
        return Ok(id);
    }
    Ok(name.to_string())
}

async fn info(c: Client, a: InfoArgs) -> CliResult {
    let i = c.info().await?;
    let state = i.local_state().label();
    let role = i.node_role().label();
    // The cluster's settings, as Docker's info shows them on managers (left out when no
    // leader can answer: info must work without one).
    let settings = if state == "active" && role == "manager" {
        c.get_cluster().await.ok()
    } else {
        None
    };
    let info_json = || {
        json_line(vec![
            ("ClusterID", json!(i.cluster_id)),
            ("Error", json!(i.error)),
            ("IsLeader", json!(i.is_leader)),
            ("LeaderAddr", json!(i.leader_addr)),
            ("LocalNodeState", json!(state)),
            ("Managers", json!(i.managers)),
            ("NodeAddr", json!(i.node_addr)),
            ("NodeID", json!(i.node_id)),
            ("RaftStatus", json!(i.raft_status)),
            ("RaftState", json!(i.raft_state)),
            ("RaftTerm", json!(i.raft_term)),
            ("Role", json!(role)),
            (
                "Spec",
                settings.as_ref().map(settings_json).unwrap_or(Value::Null),
            ),
        ])
    };
    match a.format {
        Format::Json => println!("{}", info_json()),
        // Templates see Docker's shape too: `{{.Swarm.LocalNodeState}}`, `{{.Swarm.NodeID}}`.
        Format::Template(t) => {
            let mut v: Value = serde_json::from_str(&info_json()).unwrap_or(Value::Null);
            let swarm = json!({
                "LocalNodeState": state,
                "NodeID": i.node_id,
                "NodeAddr": i.node_addr,
                "ControlAvailable": role == "manager",
                "Error": i.error,
                "RemoteManagers": i.managers.iter().map(|m| json!({"Addr": m})).collect::<Vec<_>>(),
                "Managers": i.managers.len(),
                "Cluster": {"ID": i.cluster_id, "Spec": v.get("Spec").cloned().unwrap_or(Value::Null)},
            });
            if let Value::Object(m) = &mut v {
                m.insert("Swarm".into(), swarm);
            }
            crate::output::print_template(t, &[v.to_string()]);
        }
        Format::Table => {
            println!("Swarm: {state}");
            if !i.error.is_empty() {
                println!(" NodeID: {}\n Error: {}", i.node_id, i.error);
            }
            if state == "active" {
                println!(
                    " NodeID: {}\n Is Manager: {}\n ClusterID: {}\n Node Address: {}",
                    i.node_id,
                    role == "manager",
                    i.cluster_id,
                    i.node_addr
                );
                println!(" Manager Addresses:");
                for m in &i.managers {
                    println!("  {m}");
                }
                if role == "manager" {
                    println!(
                        " Leader: {}",
                        if i.is_leader {
                            "this node".to_string()
                        } else if !i.leader_addr.is_empty() {
                            i.leader_addr.clone()
                        } else {
                            format!("none ({})", i.raft_status)
                        }
                    );
                }
                println!(" Certificate expires: {}", ts(i.cert_not_after_ms));
                if let Some(c) = &settings {
                    print_settings(c);
                }
            }
        }
    }
    Ok(())
}

fn human_ms(ms: u64) -> String {
    manager::limits::human(Duration::from_millis(ms))
}

fn print_settings(c: &pb::ClusterInfo) {
    println!(
        " Dispatcher:
  Heartbeat Period: {}",
        human_ms(c.heartbeat_period_ms)
    );
    println!(
        " CA Configuration:
  Expiry Duration: {}",
        human_ms(c.cert_expiry_ms)
    );
    println!(
        " Orchestration:
  Rebalance On Join: {}
  Max Replicas Per Service: {}
  Max Tasks: {}",
        c.rebalance_on_join, c.max_replicas, c.max_tasks
    );
}

fn settings_json(c: &pb::ClusterInfo) -> Value {
    json!({
        "Dispatcher": {"HeartbeatPeriod": c.heartbeat_period_ms.saturating_mul(1_000_000)},
        "CAConfig": {"NodeCertExpiry": c.cert_expiry_ms.saturating_mul(1_000_000)},
        "Orchestration": {
            "RebalanceOnJoin": c.rebalance_on_join,
            "MaxReplicas": c.max_replicas,
            "MaxTasks": c.max_tasks,
        },
    })
}

fn run_lab(cmd: LabCmd, level: &str) -> CliResult {
    std::env::set_var(
        "RUST_LOG",
        std::env::var("RUST_LOG").unwrap_or_else(|_| level.to_string()),
    );
    match cmd {
        LabCmd::Up {
            managers,
            workers,
            prefix,
            dispatcher_heartbeat,
            runtime,
            oci_runtime,
            registry,
        } => {
            let bin = std::env::current_exe()
                .map_err(|e| CliError(format!("Error: cannot find the shoal binary: {e}")))?;
            let mut cfg = deploy::LabConfig::new(&prefix, managers, workers, bin);
            cfg.heartbeat_ms = dispatcher_heartbeat.map(|d| d.as_millis() as u64);
            cfg.daemon_args = vec!["--runtime".into(), runtime];
            if let Some(rt) = oci_runtime {
                cfg.daemon_args.extend(["--oci-runtime".into(), rt]);
            }
            cfg.registry = registry;
            let lab = deploy::Lab::up(&cfg)?;
            for h in &lab.hosts {
                println!(
                    "{}\t{}\t{}\t{}",
                    h.name,
                    if h.manager { "manager" } else { "worker" },
                    h.addr,
                    h.socket.display()
                );
            }
            if let Some(addr) = &lab.registry {
                println!("registry\t{addr}\t(images web:v1, web:v2, sleep:1, health:1)");
            }
            println!("\nTry: shoal lab exec --prefix {prefix} m1 -- shoal node ls");
        }
        LabCmd::Down { prefix } => {
            deploy::Lab::down(&prefix)?;
            println!("Lab {prefix} removed.");
        }
        LabCmd::Kill { prefix, host } => {
            deploy::Lab::load(&prefix)?.kill_daemon(&host)?;
            println!("Killed the daemon on {host}.");
        }
        LabCmd::Start { prefix, host } => {
            deploy::Lab::load(&prefix)?.start_daemon(&host)?;
            println!("Started the daemon on {host}.");
        }
        LabCmd::Partition { prefix, host, from } => {
            deploy::Lab::load(&prefix)?.partition(&host, &from)?;
            println!("Cut {host} off from {}.", from.join(", "));
        }
        LabCmd::Heal { prefix, target } => {
            deploy::Lab::load(&prefix)?.heal(target.as_deref())?;
            match target {
                Some(h) => println!("Healed {h}."),
                None => println!("Healed every host."),
            }
        }
        LabCmd::Exec { prefix, host, cmd } => {
            let lab = deploy::Lab::load(&prefix)?;
            let status = lab.exec_status(&host, &cmd)?;
            if !status.success() {
                std::process::exit(status.code().unwrap_or(1));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_partition_and_heal_parse() {
        let parse = |args: &[&str]| Cli::try_parse_from(args).expect("parses").cmd;
        match parse(&["shoal", "lab", "heal", "--prefix", "p"]) {
            Cmd::Lab(LabCmd::Heal { prefix, target }) => {
                assert_eq!((prefix.as_str(), target), ("p", None));
            }
            other => panic!("{other:?}"),
        }
        match parse(&["shoal", "lab", "heal", "m1"]) {
            Cmd::Lab(LabCmd::Heal { target, .. }) => assert_eq!(target.as_deref(), Some("m1")),
            other => panic!("{other:?}"),
        }
        match parse(&["shoal", "lab", "partition", "m1", "--from", "m2,m3"]) {
            Cmd::Lab(LabCmd::Partition { host, from, .. }) => {
                assert_eq!(host, "m1");
                assert_eq!(from, ["m2", "m3"]);
            }
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["shoal", "lab", "partition", "m1"]).is_err());
    }

    fn usage_error(args: &[&str]) -> String {
        let e = Cli::try_parse_from(args).expect_err("should not parse");
        one_line_usage_error(&e.render().to_string())
    }

    #[test]
    fn usage_errors_are_one_line_and_name_the_problem() {
        let e = usage_error(&["shoal", "node", "ls", "--bogus"]);
        assert!(!e.contains('\n') && e.contains("--bogus"), "{e}");
        let e = usage_error(&["shoal", "swarm", "join", "1.2.3.4:2377"]);
        assert!(!e.contains('\n') && e.contains("--token"), "{e}");
        let e = usage_error(&["shoal", "node", "ls", "--format", "yaml"]);
        assert!(!e.contains('\n') && e.contains("yaml"), "{e}");
        let e = usage_error(&["shoal", "swarm", "init", "--dispatcher-heartbeat", "soon"]);
        assert!(e.contains("invalid duration"), "{e}");
    }

    #[test]
    fn every_size_and_duration_flag_reads_one_grammar() {
        let daemon = |args: &[&str]| {
            let mut v = vec!["shoal", "daemon"];
            v.extend_from_slice(args);
            match Cli::try_parse_from(v).map(|c| c.cmd) {
                Ok(Cmd::Daemon(a)) => Ok(a),
                Ok(other) => panic!("{other:?}"),
                Err(e) => Err(one_line_usage_error(&e.render().to_string())),
            }
        };
        // Refused before: the daemon read sizes with a grammar of its own.
        assert_eq!(daemon(&["--memory", "1GiB"]).unwrap().memory, Some(1 << 30));
        assert_eq!(daemon(&["--memory", "1.5g"]).unwrap().memory, Some(3 << 29));
        assert_eq!(
            daemon(&["--memory", "512MB"]).unwrap().memory,
            Some(512 << 20)
        );
        assert_eq!(daemon(&[]).unwrap().memory, None);
        let e = daemon(&["--memory", "lots"]).unwrap_err();
        assert!(e.contains("--memory") && e.contains("invalid size"), "{e}");
        let a = daemon(&["--raft-heartbeat", "1m30s", "--election-timeout", "1.5s"]).unwrap();
        assert_eq!(a.raft_heartbeat, Duration::from_secs(90));
        assert_eq!(a.election_timeout, Duration::from_millis(1500));
        assert_eq!(
            daemon(&[]).unwrap().raft_heartbeat,
            Duration::from_millis(100)
        );
        let e = daemon(&["--raft-heartbeat", "1 s"]).unwrap_err();
        assert!(e.contains("invalid duration"), "{e}");
        match Cli::try_parse_from(["shoal", "bench", "cluster", "--max-rss", "2GiB"]) {
            Ok(Cli {
                cmd: Cmd::Bench(BenchCmd::Cluster { max_rss, .. }),
                ..
            }) => assert_eq!(max_rss, 2 << 30),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn swarm_init_address_pools() {
        let cli = Cli::try_parse_from([
            "shoal",
            "swarm",
            "init",
            "--default-addr-pool",
            "10.10.0.0/16",
            "--default-addr-pool",
            "10.20.0.0/16",
            "--default-addr-pool-mask-length",
            "26",
        ])
        .unwrap();
        match cli.cmd {
            Cmd::Swarm(SwarmCmd::Init {
                default_addr_pool,
                default_addr_pool_mask_length,
                ..
            }) => {
                assert_eq!(default_addr_pool, vec!["10.10.0.0/16", "10.20.0.0/16"]);
                assert_eq!(default_addr_pool_mask_length, 26);
                assert!(crate::network::check_addr_pools(
                    &default_addr_pool,
                    default_addr_pool_mask_length
                )
                .is_ok());
            }
            other => panic!("{other:?}"),
        }
        match Cli::try_parse_from(["shoal", "swarm", "init"]).unwrap().cmd {
            Cmd::Swarm(SwarmCmd::Init {
                default_addr_pool,
                default_addr_pool_mask_length,
                ..
            }) => {
                assert!(default_addr_pool.is_empty());
                assert_eq!(default_addr_pool_mask_length, 24);
            }
            other => panic!("{other:?}"),
        }
        let e = usage_error(&[
            "shoal",
            "swarm",
            "init",
            "--default-addr-pool-mask-length",
            "x",
        ]);
        assert!(
            !e.contains('\n') && e.contains("--default-addr-pool-mask-length"),
            "{e}"
        );
    }

    #[test]
    fn network_verbs_parse() {
        let cli =
            Cli::try_parse_from(["shoal", "network", "create", "-d", "overlay", "n"]).unwrap();
        assert!(matches!(
            cli.cmd,
            Cmd::Network(crate::network::NetworkCmd::Create(_))
        ));
    }

    #[test]
    fn docker_flags_parse() {
        let cli = Cli::try_parse_from([
            "shoal",
            "-H",
            "unix:///tmp/x.sock",
            "node",
            "update",
            "--availability",
            "drain",
            "--label-add",
            "a=b",
            "--label-rm",
            "c",
            "n1",
        ])
        .unwrap();
        assert_eq!(cli.host, "unix:///tmp/x.sock");
        assert!(matches!(cli.cmd, Cmd::Node(NodeCmd::Update { .. })));
        let cli = Cli::try_parse_from(["shoal", "swarm", "join-token", "-q", "--rotate", "worker"])
            .unwrap();
        assert!(matches!(
            cli.cmd,
            Cmd::Swarm(SwarmCmd::JoinToken {
                quiet: true,
                rotate: true,
                ..
            })
        ));
    }
}
