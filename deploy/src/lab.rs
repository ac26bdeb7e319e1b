//! Building, driving and tearing down a lab: namespaces and veths via `ip`,
//! daemons and swarm formation via the `shoal` binary, state in `lab.json`.

use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io;
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::{images, lab_dir, validate_prefix, LabConfig, LabError};

const BRIDGE: &str = "br0";
const SWARM_PORT: u16 = 2377;
const SOCKET_TIMEOUT: Duration = Duration::from_secs(20);
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// One simulated machine of a lab.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LabHost {
    pub name: String,
    pub netns: String,
    pub addr: Ipv4Addr,
    pub manager: bool,
    pub data_dir: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    pub pid: Option<u32>,
}

/// A lab as recorded in `<dir>/lab.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Lab {
    pub prefix: String,
    pub shoal_bin: PathBuf,
    pub dir: PathBuf,
    pub hosts: Vec<LabHost>,
    /// Extra `shoal daemon` arguments every host runs with (also after a restart).
    #[serde(default)]
    pub daemon_args: Vec<String>,
    /// Address of the lab's registry, if it runs one.
    #[serde(default)]
    pub registry: Option<String>,
}

impl Lab {
    /// Create the namespaces, start one daemon per host, form the swarm and
    /// wait until every node is Ready. Leftovers of an earlier lab with the
    /// same prefix are removed first; on failure everything is removed again.
    pub fn up(cfg: &LabConfig) -> Result<Lab, LabError> {
        cfg.validate()?;
        if lab_dir(&cfg.prefix).exists() || !lab_netns(&cfg.prefix)?.is_empty() {
            warn!(prefix = %cfg.prefix, "removing leftovers of a previous lab");
            Lab::down(&cfg.prefix)?;
        }
        let mut lab = Lab {
            prefix: cfg.prefix.clone(),
            shoal_bin: cfg.shoal_bin.clone(),
            dir: lab_dir(&cfg.prefix),
            hosts: Vec::new(),
            daemon_args: cfg.daemon_args.clone(),
            registry: None,
        };
        match lab.build(cfg) {
            Ok(()) => Ok(lab),
            Err(err) => {
                if let Err(down_err) = Lab::down(&cfg.prefix) {
                    warn!(prefix = %cfg.prefix, error = %down_err, "cleanup after failed lab up");
                }
                Err(err)
            }
        }
    }

    fn build(&mut self, cfg: &LabConfig) -> Result<(), LabError> {
        create_dir(&self.dir)?;
        let ul = underlay_netns(&self.prefix);
        run(Command::new("ip").args(["netns", "add", &ul]))?;
        run(Command::new("ip").args(["-n", &ul, "link", "add", BRIDGE, "type", "bridge"]))?;
        run(Command::new("ip").args(["-n", &ul, "link", "set", BRIDGE, "up"]))?;
        if cfg.registry {
            self.start_registry()?;
        }

        for (i, (name, manager)) in host_names(cfg.managers, cfg.workers)
            .into_iter()
            .enumerate()
        {
            let addr = host_addr(i + 1).ok_or_else(|| LabError::AddressesExhausted {
                prefix: self.prefix.clone(),
            })?;
            let host = self.new_host(name, manager, addr);
            self.hosts.push(host.clone());
            self.save()?;
            self.create_netns(&host)?;
        }

        // Start every daemon before waiting on any, so their start-up overlaps.
        let mut children = Vec::new();
        for i in 0..self.hosts.len() {
            let child = self.spawn_daemon(&self.hosts[i])?;
            self.hosts[i].pid = Some(child.id());
            self.save()?;
            children.push(child);
        }
        for (host, child) in self.hosts.iter().zip(children.iter_mut()) {
            wait_for_socket(host, child)?;
        }

        self.form_swarm(cfg)?;
        self.save()
    }

    /// Start the lab's registry on the underlay bridge ([`crate::LAB_REGISTRY`]), push the
    /// lab images to it and have every daemon trust it over plain HTTP. The registry runs in
    /// a session of its own, like the daemons, and `down` ends it.
    fn start_registry(&mut self) -> Result<(), LabError> {
        let ul = underlay_netns(&self.prefix);
        let addr = crate::LAB_REGISTRY.to_string();
        let ip = addr.split(':').next().unwrap_or_default();
        // lo carries traffic to the namespace's own address (the readiness probe, skopeo).
        run(Command::new("ip").args(["-n", &ul, "link", "set", "lo", "up"]))?;
        run(Command::new("ip").args([
            "-n",
            &ul,
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            BRIDGE,
        ]))?;
        let dir = self.dir.join("registry");
        create_dir(&dir)?;
        let err = |e: anyhow::Error| LabError::Registry(format!("{e:#}"));
        let config = images::registry_config(&dir, &addr, None).map_err(err)?;
        let log = dir.join("registry.log");
        let mut cmd = images::registry_command(Some(&ul), &config, &log).map_err(err)?;
        // SAFETY: setsid is async-signal-safe and touches no memory (see `spawn_daemon`).
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() == -1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|source| spawn_err(&cmd, source))?;
        images::wait_registry(&addr, Some(&ul), &mut child, &log).map_err(err)?;
        for (tag, spec) in images::lab_images() {
            let layout = dir.join("images").join(tag.replace(':', "-"));
            images::build_busybox_image(&layout, tag, spec).map_err(err)?;
            images::push_from(Some(&ul), &layout, &addr, tag, None).map_err(err)?;
        }
        info!(%addr, "lab registry serving the lab images");
        self.daemon_args
            .extend(["--insecure-registry".to_string(), addr.clone()]);
        self.registry = Some(addr);
        self.save()
    }

    fn form_swarm(&self, cfg: &LabConfig) -> Result<(), LabError> {
        let first = &self.hosts[0];
        let leader_addr = format!("{}:{SWARM_PORT}", first.addr);
        let mut init = vec!["swarm".to_string(), "init".into()];
        init.extend(["--advertise-addr".into(), leader_addr.clone()]);
        if let Some(ms) = cfg.heartbeat_ms {
            init.extend(["--dispatcher-heartbeat".into(), format!("{ms}ms")]);
        }
        let init: Vec<&str> = init.iter().map(String::as_str).collect();
        self.shoal(&first.name, &init)?;
        let worker_token = self.shoal(&first.name, &["swarm", "join-token", "-q", "worker"])?;
        let manager_token = self.shoal(&first.name, &["swarm", "join-token", "-q", "manager"])?;

        // Managers strictly one after the other: each join changes raft
        // membership, and the CLI returns only once the join has completed.
        let others = self.hosts[1..].iter();
        for host in others
            .clone()
            .filter(|h| h.manager)
            .chain(others.filter(|h| !h.manager))
        {
            let token = if host.manager {
                &manager_token
            } else {
                &worker_token
            };
            let advertise = format!("{}:{SWARM_PORT}", host.addr);
            self.shoal(
                &host.name,
                &[
                    "swarm",
                    "join",
                    "--token",
                    token.trim(),
                    "--advertise-addr",
                    &advertise,
                    &leader_addr,
                ],
            )?;
            info!(host = %host.name, "joined swarm");
        }
        self.wait_ready(cfg.ready_timeout)
    }

    fn wait_ready(&self, timeout: Duration) -> Result<(), LabError> {
        let expected = self.hosts.len();
        let deadline = Instant::now() + timeout;
        let first = &self.hosts[0].name;
        loop {
            // Errors are expected while raft settles after the joins; only
            // the last one matters if we give up.
            let (ready, last) = match self.shoal(first, &["node", "ls", "--format", "json"]) {
                Ok(out) => {
                    let (total, ready) = count_ready(&out);
                    if total == expected && ready == expected {
                        return Ok(());
                    }
                    (ready, one_line(&out))
                }
                Err(err) => (0, err.to_string()),
            };
            if Instant::now() >= deadline {
                return Err(LabError::ClusterNotReady {
                    expected,
                    ready,
                    timeout,
                    last,
                });
            }
            sleep(Duration::from_millis(250));
        }
    }

    /// Read `lab.json` of the lab with this prefix.
    pub fn load(prefix: &str) -> Result<Lab, LabError> {
        validate_prefix(prefix)?;
        let path = state_file(&lab_dir(prefix));
        let data = fs::read(&path).map_err(|source| LabError::Io {
            path: path.clone(),
            source,
        })?;
        serde_json::from_slice(&data).map_err(|source| LabError::State { path, source })
    }

    /// Remove every trace of the lab: its daemons, namespaces and state dir.
    /// Does not rely on `lab.json` being present or intact.
    pub fn down(prefix: &str) -> Result<(), LabError> {
        validate_prefix(prefix)?;
        let dir = lab_dir(prefix);
        if state_file(&dir).exists() {
            match Lab::load(prefix) {
                Ok(lab) => {
                    for host in &lab.hosts {
                        if let Some(pid) = host.pid {
                            kill_daemon_pid(pid, &host.name, true, |d| d == host.data_dir)?;
                        }
                    }
                }
                Err(err) => warn!(error = %err, "ignoring unreadable lab state"),
            }
        }
        // Catches daemons whose pid never made it into lab.json (crash
        // between spawn and save, or a corrupt state file).
        let own = std::process::id();
        for pid in proc_pids().into_iter().filter(|&p| p != own) {
            kill_daemon_pid(pid, "unrecorded lab daemon", true, |d| d.starts_with(&dir))?;
        }
        remove_containers(&dir);
        kill_registries(&dir);
        for ns in lab_netns(prefix)? {
            run(Command::new("ip").args(["netns", "del", &ns]))?;
        }
        match fs::remove_dir_all(&dir) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => Err(LabError::Io {
                path: dir,
                source: err,
            }),
            _ => Ok(()),
        }
    }

    pub fn host(&self, name: &str) -> Result<&LabHost, LabError> {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .ok_or_else(|| LabError::UnknownHost {
                prefix: self.prefix.clone(),
                host: name.to_string(),
            })
    }

    fn host_mut(&mut self, name: &str) -> Result<&mut LabHost, LabError> {
        self.host(name)?;
        Ok(self
            .hosts
            .iter_mut()
            .find(|h| h.name == name)
            .expect("host checked above"))
    }

    /// The command [`Lab::exec`] runs, for a caller that spawns it (e.g. to follow its
    /// output).
    pub fn exec_command(&self, host: &str, argv: &[String]) -> Result<Command, LabError> {
        let h = self.host(host)?;
        if argv.is_empty() {
            return Err(LabError::EmptyCommand {
                host: host.to_string(),
            });
        }
        // The lab's own `shoal` comes first on PATH, so `lab exec m1 -- shoal node ls` runs the
        // binary that started the lab.
        let mut path = std::ffi::OsString::new();
        if let Some(dir) = self.shoal_bin.parent() {
            path.push(dir);
            path.push(":");
        }
        path.push(
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
        );
        let mut cmd = netns_command(&h.netns);
        cmd.args(argv)
            .env("SHOAL_HOST", unix_url(&h.socket))
            .env("PATH", path);
        Ok(cmd)
    }

    /// Run a command inside host's netns with SHOAL_HOST=unix://<its socket> set.
    pub fn exec(&self, host: &str, argv: &[String]) -> Result<Output, LabError> {
        let mut cmd = self.exec_command(host, argv)?;
        cmd.stdin(Stdio::null())
            .output()
            .map_err(|source| spawn_err(&cmd, source))
    }

    /// Like [`Lab::exec`] but with the caller's stdio, for interactive use.
    pub fn exec_status(&self, host: &str, argv: &[String]) -> Result<ExitStatus, LabError> {
        let mut cmd = self.exec_command(host, argv)?;
        cmd.status().map_err(|source| spawn_err(&cmd, source))
    }

    /// Run `shoal -H unix://<sock> <args>` in host's netns; stdout on success.
    pub fn shoal(&self, host: &str, args: &[&str]) -> Result<String, LabError> {
        let h = self.host(host)?;
        let mut cmd = netns_command(&h.netns);
        cmd.arg(&self.shoal_bin)
            .arg("-H")
            .arg(unix_url(&h.socket))
            .args(args);
        run(&mut cmd)
    }

    /// SIGKILL the host's daemon (after checking the pid is still it) and
    /// wait for it to be gone, simulating a crash.
    pub fn kill_daemon(&mut self, host: &str) -> Result<(), LabError> {
        let h = self.host_mut(host)?;
        if let Some(pid) = h.pid.take() {
            let data_dir = h.data_dir.clone();
            let name = h.name.clone();
            kill_daemon_pid(pid, &name, false, |d| d == data_dir)?;
        }
        self.save()
    }

    /// Start the host's daemon again on its existing data dir and socket.
    pub fn start_daemon(&mut self, host: &str) -> Result<(), LabError> {
        let h = self.host(host)?.clone();
        if let Some(pid) = h.pid.filter(|&p| is_daemon_of(p, &h.data_dir)) {
            return Err(LabError::DaemonRunning { host: h.name, pid });
        }
        // A daemon killed with SIGKILL leaves its socket file behind, which
        // would make the readiness check below pass too early.
        remove_file_if_exists(&h.socket)?;
        let mut child = self.spawn_daemon(&h)?;
        self.host_mut(host)?.pid = Some(child.id());
        self.save()?;
        wait_for_socket(&h, &mut child)
    }

    /// Stop the host's daemon gracefully (SIGTERM, as an operator's restart would) and wait
    /// for it to exit; SIGKILL if it is still there after `timeout`.
    pub fn stop_daemon(&mut self, host: &str, timeout: Duration) -> Result<(), LabError> {
        let h = self.host_mut(host)?;
        if let Some(pid) = h.pid.take() {
            let data_dir = h.data_dir.clone();
            let name = h.name.clone();
            if let (true, Ok(raw)) = (is_daemon_of(pid, &data_dir), libc::pid_t::try_from(pid)) {
                // SAFETY: a plain kill of a pid whose command line was just checked.
                unsafe { libc::kill(raw, libc::SIGTERM) };
                let deadline = Instant::now() + timeout;
                loop {
                    // SAFETY: a null status pointer is allowed by waitpid.
                    unsafe { libc::waitpid(raw, std::ptr::null_mut(), libc::WNOHANG) };
                    if !is_running(pid) || Instant::now() >= deadline {
                        break;
                    }
                    sleep(Duration::from_millis(20));
                }
                kill_daemon_pid(pid, &name, false, |d| d == data_dir)?;
            }
        }
        self.save()
    }

    /// Cut `host` off from `peers`: every packet between it and their lab addresses is
    /// dropped, both ways, by an nftables table inside `host`'s namespace (so `down`, which
    /// deletes the namespace, removes it too). Adds to an earlier cut of the same host.
    pub fn partition(&self, host: &str, peers: &[String]) -> Result<(), LabError> {
        let h = self.host(host)?;
        if peers.is_empty() {
            return Err(LabError::Partition {
                host: host.to_string(),
                reason: "no hosts to cut it off from".into(),
            });
        }
        let mut addrs = Vec::new();
        for p in peers {
            if p == host {
                return Err(LabError::Partition {
                    host: host.to_string(),
                    reason: "a host cannot be cut off from itself".into(),
                });
            }
            addrs.push(self.host(p)?.addr);
        }
        let script = if self.partition_table_exists(h) {
            partition_add_script(&addrs)
        } else {
            partition_script(&addrs)
        };
        let path = self.dir.join(format!("{}-partition.nft", h.name));
        fs::write(&path, script).map_err(|source| io_err(&path, source))?;
        let mut cmd = netns_command(&h.netns);
        cmd.arg("nft").arg("-f").arg(&path);
        run(&mut cmd)?;
        info!(host = %h.name, ?peers, "partitioned");
        Ok(())
    }

    /// Undo [`Lab::partition`] for `host`, or for every host of the lab.
    pub fn heal(&self, host: Option<&str>) -> Result<(), LabError> {
        let hosts: Vec<&LabHost> = match host {
            Some(name) => vec![self.host(name)?],
            None => self.hosts.iter().collect(),
        };
        for h in hosts {
            if self.partition_table_exists(h) {
                let mut cmd = netns_command(&h.netns);
                cmd.args(["nft", "delete", "table", "inet", PARTITION_TABLE]);
                run(&mut cmd)?;
                info!(host = %h.name, "healed");
            }
        }
        Ok(())
    }

    fn partition_table_exists(&self, h: &LabHost) -> bool {
        let mut cmd = netns_command(&h.netns);
        cmd.args(["nft", "list", "table", "inet", PARTITION_TABLE]);
        run(&mut cmd).is_ok()
    }

    /// Add a host with its own namespace and running daemon, not yet part of
    /// the swarm (tests join it explicitly). Returns its name.
    pub fn add_host(&mut self, manager: bool) -> Result<String, LabError> {
        let letter = if manager { 'm' } else { 'w' };
        let number = self
            .hosts
            .iter()
            .filter_map(|h| h.name.strip_prefix(letter)?.parse::<usize>().ok())
            .max()
            .unwrap_or(0)
            + 1;
        let next_octet = self
            .hosts
            .iter()
            .map(|h| h.addr.octets()[3])
            .max()
            .unwrap_or(10);
        let addr = next_octet
            .checked_add(1)
            .filter(|&o| o < 255)
            .map(|o| Ipv4Addr::new(192, 168, 77, o))
            .ok_or_else(|| LabError::AddressesExhausted {
                prefix: self.prefix.clone(),
            })?;
        let host = self.new_host(format!("{letter}{number}"), manager, addr);
        let name = host.name.clone();
        // Recorded before anything is created so that `down` sees it even if
        // we fail half-way.
        self.hosts.push(host.clone());
        self.save()?;
        self.create_netns(&host)?;
        let mut child = self.spawn_daemon(&host)?;
        self.host_mut(&name)?.pid = Some(child.id());
        self.save()?;
        wait_for_socket(&host, &mut child)?;
        Ok(name)
    }

    /// Write `lab.json`, atomically so that a crash never leaves half a file.
    pub fn save(&self) -> Result<(), LabError> {
        let path = state_file(&self.dir);
        let tmp = path.with_extension("json.tmp");
        let data = serde_json::to_vec_pretty(self).map_err(|source| LabError::State {
            path: path.clone(),
            source,
        })?;
        fs::write(&tmp, data).map_err(|source| LabError::Io {
            path: tmp.clone(),
            source,
        })?;
        fs::rename(&tmp, &path).map_err(|source| LabError::Io { path, source })
    }

    fn new_host(&self, name: String, manager: bool, addr: Ipv4Addr) -> LabHost {
        let dir = self.dir.join(&name);
        LabHost {
            netns: format!("{}-{name}", self.prefix),
            addr,
            manager,
            data_dir: dir.join("data"),
            socket: dir.join("shoal.sock"),
            log: dir.join("daemon.log"),
            pid: None,
            name,
        }
    }

    fn create_netns(&self, host: &LabHost) -> Result<(), LabError> {
        let ul = underlay_netns(&self.prefix);
        let ns = host.netns.as_str();
        let peer = format!("v{}", host.name);
        let cidr = format!("{}/24", host.addr);
        run(Command::new("ip").args(["netns", "add", ns]))?;
        run(Command::new("ip").args(["-n", ns, "link", "set", "lo", "up"]))?;
        run(Command::new("ip").args([
            "netns", "exec", &ul, "ip", "link", "add", &peer, "type", "veth", "peer", "name",
            "eth0", "netns", ns,
        ]))?;
        run(Command::new("ip").args(["-n", &ul, "link", "set", &peer, "master", BRIDGE]))?;
        run(Command::new("ip").args(["-n", &ul, "link", "set", &peer, "up"]))?;
        run(Command::new("ip").args(["-n", ns, "addr", "add", &cidr, "dev", "eth0"]))?;
        run(Command::new("ip").args(["-n", ns, "link", "set", "eth0", "up"]))?;
        Ok(())
    }

    fn spawn_daemon(&self, host: &LabHost) -> Result<Child, LabError> {
        create_dir(&host.data_dir)?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&host.log)
            .map_err(|source| io_err(&host.log, source))?;
        let log_err = log
            .try_clone()
            .map_err(|source| io_err(&host.log, source))?;
        let mut cmd = netns_command(&host.netns);
        cmd.arg(&self.shoal_bin)
            .arg("daemon")
            .arg("--data-dir")
            .arg(&host.data_dir)
            .arg("--socket")
            .arg(&host.socket)
            .arg("--hostname")
            .arg(&host.name)
            .args(&self.daemon_args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        // SAFETY: setsid is async-signal-safe and touches no memory. A session
        // of its own detaches the daemon from our terminal, so it outlives
        // `shoal lab up` and ignores a Ctrl-C aimed at the CLI.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() == -1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|source| spawn_err(&cmd, source))?;
        debug!(host = %host.name, pid = child.id(), "daemon started");
        Ok(child)
    }
}

/// The nftables table a partition lives in, inside the cut host's namespace.
const PARTITION_TABLE: &str = "shoal_lab_partition";

/// The table that drops traffic between its host and `peers`, early (before conntrack), so
/// that established connections stall as they would on a real partition.
fn partition_script(peers: &[Ipv4Addr]) -> String {
    format!(
        "table inet {PARTITION_TABLE} {{\n\
         \tset peers {{ type ipv4_addr; elements = {{ {} }}; }}\n\
         \tchain pre {{ type filter hook prerouting priority -300; policy accept; ip saddr @peers drop; }}\n\
         \tchain out {{ type filter hook output priority -300; policy accept; ip daddr @peers drop; }}\n\
         }}\n",
        addr_list(peers)
    )
}

/// More peers for a table [`partition_script`] created.
fn partition_add_script(peers: &[Ipv4Addr]) -> String {
    format!(
        "add element inet {PARTITION_TABLE} peers {{ {} }}\n",
        addr_list(peers)
    )
}

fn addr_list(addrs: &[Ipv4Addr]) -> String {
    addrs
        .iter()
        .map(Ipv4Addr::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Host names in address order: managers `m1..`, then workers `w1..`.
fn host_names(managers: usize, workers: usize) -> Vec<(String, bool)> {
    let m = (1..=managers).map(|i| (format!("m{i}"), true));
    let w = (1..=workers).map(|i| (format!("w{i}"), false));
    m.chain(w).collect()
}

/// Address of the `index`-th host (1-based), if it still fits the /24.
fn host_addr(index: usize) -> Option<Ipv4Addr> {
    u8::try_from(10 + index)
        .ok()
        .filter(|&o| o < 255)
        .map(|o| Ipv4Addr::new(192, 168, 77, o))
}

fn underlay_netns(prefix: &str) -> String {
    format!("{prefix}-ul")
}

/// Whether `ns` is one of the namespaces a lab with `prefix` creates.
fn is_lab_netns(ns: &str, prefix: &str) -> bool {
    let Some(rest) = ns.strip_prefix(prefix).and_then(|r| r.strip_prefix('-')) else {
        return false;
    };
    if rest == "ul" {
        return true;
    }
    let digits = rest.strip_prefix(['m', 'w']).unwrap_or("");
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

fn lab_netns(prefix: &str) -> Result<Vec<String>, LabError> {
    let out = run(Command::new("ip").args(["netns", "list"]))?;
    // Lines look like "name" or "name (id: 3)".
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|ns| is_lab_netns(ns, prefix))
        .map(str::to_string)
        .collect())
}

/// The `--data-dir` argument of a NUL-separated `/proc/<pid>/cmdline`; it
/// identifies a lab daemon more reliably than any process name.
fn daemon_data_dir(cmdline: &[u8]) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let mut args = cmdline.split(|&b| b == 0);
    args.by_ref().find(|a| *a == b"--data-dir")?;
    args.next()
        .filter(|a| !a.is_empty())
        .map(|a| PathBuf::from(OsStr::from_bytes(a)))
}

fn is_daemon_of(pid: u32, data_dir: &Path) -> bool {
    fs::read(format!("/proc/{pid}/cmdline"))
        .ok()
        .and_then(|c| daemon_data_dir(&c))
        .is_some_and(|d| d == data_dir)
}

fn proc_pids() -> Vec<u32> {
    fs::read_dir("/proc")
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// SIGKILL `pid` if its `--data-dir` satisfies `is_ours`, then wait until
/// it is gone. With `group`, the daemon's process group (it is the leader,
/// see `spawn_daemon`) goes too, taking anything the daemon started with it.
fn kill_daemon_pid(
    pid: u32,
    what: &str,
    group: bool,
    is_ours: impl Fn(&Path) -> bool,
) -> Result<(), LabError> {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return Ok(());
    };
    if !daemon_data_dir(&cmdline).is_some_and(|d| is_ours(&d)) {
        return Ok(());
    }
    let Ok(raw) = libc::pid_t::try_from(pid) else {
        return Ok(());
    };
    // SAFETY: plain syscalls on a pid whose identity was checked just above.
    unsafe {
        if group && libc::getpgid(raw) == raw {
            libc::kill(-raw, libc::SIGKILL);
        }
        libc::kill(raw, libc::SIGKILL);
    }
    debug!(pid, what, "sent SIGKILL");
    let deadline = Instant::now() + EXIT_TIMEOUT;
    loop {
        // If we spawned it ourselves it lingers as a zombie until reaped;
        // for anyone else's child this fails with ECHILD, which is fine.
        // SAFETY: a null status pointer is allowed by waitpid.
        unsafe { libc::waitpid(raw, std::ptr::null_mut(), libc::WNOHANG) };
        if !is_running(pid) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(LabError::KillTimeout {
                pid,
                what: what.to_string(),
                timeout: EXIT_TIMEOUT,
            });
        }
        sleep(Duration::from_millis(20));
    }
}

/// Exists and is not a zombie (a zombie nobody reaps is as good as gone).
fn is_running(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the parenthesised command name, which may itself
    // contain spaces and parentheses.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, r)| r.trim_start().chars().next());
    !matches!(state, Some('Z' | 'X') | None)
}

fn wait_for_socket(host: &LabHost, child: &mut Child) -> Result<(), LabError> {
    let deadline = Instant::now() + SOCKET_TIMEOUT;
    loop {
        if host.socket.exists() && UnixStream::connect(&host.socket).is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(LabError::DaemonExited {
                host: host.name.clone(),
                status,
                last_log: last_line(&host.log),
            });
        }
        if Instant::now() >= deadline {
            return Err(LabError::DaemonNotReady {
                host: host.name.clone(),
                socket: host.socket.clone(),
                log: host.log.clone(),
                timeout: SOCKET_TIMEOUT,
            });
        }
        sleep(Duration::from_millis(50));
    }
}

/// (lines, lines with Status "Ready") of `node ls --format json` output.
fn count_ready(out: &str) -> (usize, usize) {
    let lines: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
    let ready = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("Status").and_then(|s| s.as_str()) == Some("Ready"))
        .count();
    (lines.len(), ready)
}

/// Run to completion; stdout on success, otherwise the command line and stderr.
fn run(cmd: &mut Command) -> Result<String, LabError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| spawn_err(cmd, source))?;
    if !out.status.success() {
        return Err(LabError::CommandFailed {
            cmd: command_line(cmd),
            status: out.status,
            stderr: one_line(&String::from_utf8_lossy(&out.stderr)),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn command_line(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Multi-line output squeezed into one line for an error message.
fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" | ")
}

fn last_line(path: &Path) -> String {
    fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(str::to_string)
        })
        .unwrap_or_default()
}

fn unix_url(socket: &Path) -> String {
    format!("unix://{}", socket.display())
}

fn state_file(dir: &Path) -> PathBuf {
    dir.join("lab.json")
}

fn create_dir(path: &Path) -> Result<(), LabError> {
    fs::create_dir_all(path).map_err(|source| io_err(path, source))
}

fn remove_file_if_exists(path: &Path) -> Result<(), LabError> {
    match fs::remove_file(path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(io_err(path, err)),
        _ => Ok(()),
    }
}

fn io_err(path: &Path, source: io::Error) -> LabError {
    LabError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn spawn_err(cmd: &Command, source: io::Error) -> LabError {
    LabError::Spawn {
        cmd: command_line(cmd),
        source,
    }
}

/// Containers outlive their daemon by design (a per-container monitor holds them), so a lab
/// going down ends them explicitly: the monitors of its hosts (by pid, recognised by a path
/// under the lab dir in their command line), every container in the OCI runtimes' state dirs
/// under the lab dir, and every mount left below it.
fn remove_containers(dir: &Path) {
    kill_lab_processes(dir, "container monitor", |args| {
        args.get(1).is_some_and(|a| *a == b"shim")
    });
    let mut container_pids = Vec::new();
    for root in runtime_roots(dir, 4) {
        let Some(rt) = root
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
        else {
            continue;
        };
        let Ok(entries) = fs::read_dir(&root) else {
            continue;
        };
        for e in entries.flatten() {
            if !e.path().is_dir() {
                continue;
            }
            let id = e.file_name().to_string_lossy().to_string();
            // crun refuses hybrid cgroup hosts unless cgroup2 is out of its sight.
            let script = format!(
                "umount -l /sys/fs/cgroup/unified 2>/dev/null; {rt} --root '{root}' state '{id}'; exec {rt} --root '{root}' delete --force '{id}'",
                root = root.display()
            );
            let out = Command::new("unshare")
                .args(["-m", "--propagation", "slave", "sh", "-c", &script])
                .output();
            if let Ok(o) = out {
                if !o.status.success() {
                    debug!(%id, stderr = %String::from_utf8_lossy(&o.stderr), "container delete");
                }
                // `state` printed the container's pid before `delete` killed it.
                let state: serde_json::Value =
                    serde_json::from_slice(&o.stdout).unwrap_or_default();
                if let Some(pid) = state["pid"].as_u64().filter(|&p| p > 0) {
                    container_pids.push(pid as u32);
                }
            }
        }
    }
    // SIGKILL is not instant: wait (bounded) until the containers are really gone, so that
    // nothing of the lab runs once `down` returns.
    let deadline = Instant::now() + EXIT_TIMEOUT;
    while container_pids.iter().any(|&p| is_running(p)) && Instant::now() < deadline {
        sleep(Duration::from_millis(20));
    }
    let mut mounts: Vec<String> = fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| Path::new(m).starts_with(dir))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in mounts {
        let _ = Command::new("umount").args(["-l", &m]).output();
    }
}

/// SIGKILL the `docker-registry` processes whose configuration lies below `dir`.
fn kill_registries(dir: &Path) {
    kill_lab_processes(dir, "lab registry", |args| {
        args.first()
            .is_some_and(|a| a.ends_with(b"docker-registry"))
    });
}

/// SIGKILL every process (but this one) with an argument below `dir` whose arguments satisfy
/// `is_kind`.
fn kill_lab_processes(dir: &Path, what: &str, is_kind: impl Fn(&[&[u8]]) -> bool) {
    let own = std::process::id();
    let needle = dir.as_os_str().as_encoded_bytes();
    for pid in proc_pids().into_iter().filter(|&p| p != own) {
        let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if is_kind(&args) && args.iter().any(|a| a.starts_with(needle)) {
            if let Ok(raw) = libc::pid_t::try_from(pid) {
                // SAFETY: a plain kill of a pid whose command line was just checked.
                unsafe { libc::kill(raw, libc::SIGKILL) };
                debug!(pid, what, "sent SIGKILL");
            }
        }
    }
}

/// `<data dir>/oci/<runtime>` directories below `dir`, at most `depth` levels down.
fn runtime_roots(dir: &Path, depth: usize) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return found;
    };
    for e in entries.flatten() {
        let p = e.path();
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        if e.file_name() == "oci" {
            if let Ok(rts) = fs::read_dir(&p) {
                found.extend(rts.flatten().map(|r| r.path()).filter(|r| r.is_dir()));
            }
        } else if depth > 0 {
            found.extend(runtime_roots(&p, depth - 1));
        }
    }
    found
}

/// A command that runs its arguments in the lab namespace `netns` and nowhere else: only the
/// network namespace is entered (`nsenter --net`), so the process sees the machine's mounts,
/// cgroup hierarchies included, as a daemon on a real host does. (`ip netns exec` would also
/// give it a private mount namespace with a fresh /sys, without the cgroup mounts that runc
/// and crun need.)
pub fn netns_command(netns: &str) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{netns}")).arg("--");
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_addresses() {
        let names = host_names(2, 3);
        let got: Vec<&str> = names.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(got, ["m1", "m2", "w1", "w2", "w3"]);
        assert_eq!(names.iter().filter(|(_, m)| *m).count(), 2);
        assert_eq!(host_addr(1), Some(Ipv4Addr::new(192, 168, 77, 11)));
        assert_eq!(host_addr(57), Some(Ipv4Addr::new(192, 168, 77, 67)));
        assert_eq!(host_addr(244), Some(Ipv4Addr::new(192, 168, 77, 254)));
        assert_eq!(host_addr(245), None);
    }

    #[test]
    fn partition_scripts() {
        let peers = [
            Ipv4Addr::new(192, 168, 77, 12),
            Ipv4Addr::new(192, 168, 77, 13),
        ];
        let s = partition_script(&peers);
        assert!(s.starts_with("table inet shoal_lab_partition {"), "{s}");
        assert!(
            s.contains("elements = { 192.168.77.12, 192.168.77.13 }"),
            "{s}"
        );
        assert!(s.contains("hook prerouting priority -300; policy accept; ip saddr @peers drop;"));
        assert!(s.contains("hook output priority -300; policy accept; ip daddr @peers drop;"));
        assert_eq!(
            partition_add_script(&peers[..1]),
            "add element inet shoal_lab_partition peers { 192.168.77.12 }\n"
        );
    }

    #[test]
    fn netns_matching() {
        for ns in ["lab-ul", "lab-m1", "lab-w12"] {
            assert!(is_lab_netns(ns, "lab"), "{ns}");
        }
        for ns in [
            "lab-x1", "lab-m", "lab-m1a", "labx-m1", "lab2-m1", "lab", "lab-", "other-ul",
        ] {
            assert!(!is_lab_netns(ns, "lab"), "{ns}");
        }
    }

    #[test]
    fn cmdline_matching() {
        let daemon = b"ip\0netns\0exec\0t-m1\0/bin/shoal\0daemon\0--data-dir\0/run/shoal-lab/t/m1/data\0--socket\0/run/shoal-lab/t/m1/shoal.sock\0";
        let dir = daemon_data_dir(daemon).unwrap();
        assert_eq!(dir, Path::new("/run/shoal-lab/t/m1/data"));
        assert!(dir.starts_with(lab_dir("t")));
        // Path::starts_with compares whole components, so a lab named "t"
        // never claims the daemons of lab "tt".
        assert!(!dir.starts_with(lab_dir("tt")));
        assert!(!Path::new("/run/shoal-lab/tt/m1/data").starts_with(lab_dir("t")));
        assert_eq!(
            daemon_data_dir(b"tail\0-f\0/run/shoal-lab/t/m1/daemon.log\0"),
            None
        );
        assert_eq!(daemon_data_dir(b"shoal\0daemon\0--data-dir\0"), None);
        assert_eq!(daemon_data_dir(b""), None);
    }

    #[test]
    fn ready_counting() {
        let out = concat!(
            r#"{"ID":"a","Hostname":"m1","Status":"Ready","Availability":"Active","ManagerStatus":"Leader"}"#,
            "\n",
            r#"{"ID":"b","Hostname":"w1","Status":"Down","Availability":"Active","ManagerStatus":""}"#,
            "\n\n",
            "not json\n",
        );
        assert_eq!(count_ready(out), (3, 1));
        assert_eq!(count_ready(""), (0, 0));
    }

    #[test]
    fn error_messages_are_single_line() {
        assert_eq!(
            one_line("  Error: no\n\n  hint: x \n"),
            "Error: no | hint: x"
        );
        let cmd = {
            let mut c = Command::new("ip");
            c.args(["netns", "add", "t-ul"]);
            c
        };
        assert_eq!(command_line(&cmd), "ip netns add t-ul");
    }
}
