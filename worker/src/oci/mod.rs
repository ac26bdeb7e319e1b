//! The real container runtime: OCI runtime binaries (runc by default, or crun) driven through
//! their command line, one monitor process ([`shim`]) per container.
//!
//! Everything about a task lives in `<data>/tasks/<task id>/`, so that a daemon killed and
//! started again finds its containers ([`OciRuntime`]'s `restore`):
//!
//! ```text
//!   task.json       the assignment (secret data left out) and the image config
//!   config.json     the OCI bundle's config; the bundle is the task directory itself
//!   rootfs/         overlayfs of the image layers, upper/ and work/ beside it
//!   etc/            hostname, hosts, resolv.conf (bind-mounted read-only)
//!   secrets/        a tmpfs holding the secrets and configs (nothing on disk)
//!   volumes/        anonymous volumes (removed with the task)
//!   shim.pid pid    the monitor's pid, the container init's pid
//!   started created written by the monitor once `run --detach` succeeded (or create-error);
//!                   a monitor of an older version wrote `created` after `create`, and the
//!                   daemon `started` after `start`
//!   container.log   `<RFC 3339 nanos> <stdout|stderr> <text>` lines
//!   exit            JSON exit status (code, signal, oom_killed, finished_at), by the shim
//!   unhealthy       the last healthcheck output, when the healthcheck killed the container
//! ```
//!
//! A removed task's directory is renamed into `<data>/trash/` and deleted there in the
//! background.
//!
//! Named volumes live in `<data>/volumes/<name>/_data` and outlive tasks. The runtime's own
//! state is under `<data>/oci/<runtime name>` (its `--root`).

pub mod bench;
pub mod shim;
pub mod spec;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use proto::spec::{Assignment, HealthCheck, MountKind};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::image::{Image, ImageConfig, ImageStore};
use crate::runtime::{Restored, RestoredState, Runtime, RuntimeError, RuntimeOp};
use shim::{files, ExitStatus};
use spec::MountPlan;

/// How often `wait` and `start` look at the task directory.
const POLL: Duration = Duration::from_millis(50);
/// How long the shim gets to report `create`.
const CREATE_TIMEOUT: Duration = Duration::from_secs(60);

/// Configuration of [`OciRuntime`].
#[derive(Clone)]
pub struct OciConfig {
    /// The node's data directory (`tasks/`, `volumes/`, `oci/` go under it).
    pub data_dir: PathBuf,
    /// `runc`, `crun` or a path to either.
    pub runtime: String,
    pub images: Arc<ImageStore>,
    /// How to start the monitor: program and leading arguments, to which `run …` or
    /// `exec-ns …` are added. Default: `[<current executable>, "shim"]`.
    pub shim_command: Vec<String>,
    /// Extra environment for the monitor (tests use it to enter their own shim hook).
    pub shim_env: Vec<(String, String)>,
    /// Networking hook: if `<netns_dir>/<task id>` exists at prepare, the container joins
    /// that network namespace instead of getting a new empty one.
    pub netns_dir: Option<PathBuf>,
}

impl OciConfig {
    pub fn new(data_dir: impl Into<PathBuf>, images: Arc<ImageStore>) -> OciConfig {
        let exe = std::env::current_exe()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "shoal".into());
        OciConfig {
            data_dir: data_dir.into(),
            runtime: "runc".into(),
            images,
            shim_command: vec![exe, "shim".into()],
            shim_env: Vec::new(),
            netns_dir: None,
        }
    }
}

/// What the daemon keeps about a task on disk (`task.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct TaskRecord {
    /// Secrets and configs with their data removed.
    assignment: Assignment,
    image: ImageConfig,
}

impl TaskRecord {
    fn healthcheck(&self) -> Option<HealthCheck> {
        merge_healthcheck(
            self.assignment.spec.healthcheck.as_ref(),
            self.image.healthcheck.as_ref(),
        )
    }

    fn stop_signal(&self) -> i32 {
        let spec = &self.assignment.spec.stop_signal;
        let text = if !spec.is_empty() {
            spec
        } else {
            &self.image.stop_signal
        };
        if text.is_empty() {
            return libc::SIGTERM;
        }
        spec::parse_signal(text).unwrap_or(libc::SIGTERM)
    }
}

/// The check a task runs: the service's fields over the image's, as Docker merges them: an
/// empty test or a zero timing of the service keeps the image's (so `--health-start-period`
/// alone only changes the start period); a test of `NONE` turns checking off.
fn merge_healthcheck(
    service: Option<&HealthCheck>,
    image: Option<&HealthCheck>,
) -> Option<HealthCheck> {
    let check = match (service, image) {
        (None, None) => return None,
        (None, Some(i)) => i.clone(),
        (Some(s), None) => s.clone(),
        (Some(s), Some(i)) => {
            let pick = |a: u64, b: u64| if a == 0 { b } else { a };
            HealthCheck {
                test: if s.test.is_empty() {
                    i.test.clone()
                } else {
                    s.test.clone()
                },
                interval_ms: pick(s.interval_ms, i.interval_ms),
                timeout_ms: pick(s.timeout_ms, i.timeout_ms),
                retries: pick(s.retries, i.retries),
                start_period_ms: pick(s.start_period_ms, i.start_period_ms),
                start_interval_ms: pick(s.start_interval_ms, i.start_interval_ms),
            }
        }
    };
    match check.test.first().map(String::as_str) {
        None | Some("NONE") => None,
        _ => Some(check),
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Health {
    Starting,
    Healthy,
    Unhealthy,
}

struct Live {
    health: watch::Sender<Health>,
    cancel: CancellationToken,
}

/// The state behind [`OciRuntime`].
pub(crate) struct State {
    config: OciConfig,
    /// Runtime binary as given (`runc`, `/usr/bin/crun`).
    binary: String,
    /// `--root` of the runtime.
    root: PathBuf,
    /// crun on a hybrid-cgroup host: run it in a mount namespace without cgroup2.
    mask: bool,
    pinned: Mutex<HashMap<String, Image>>,
    live: Mutex<HashMap<String, Arc<Live>>>,
    /// The monitor server (`shim serve`), started with the first container.
    server: tokio::sync::Mutex<Option<MonitorServer>>,
    /// Durations of the steps of `start` and `remove`, when asked for (benchmarks).
    steps: Mutex<Option<Vec<(&'static str, Duration)>>>,
    /// Tasks the managers forgot before this node removed them: their logs are not kept.
    forgotten: Mutex<std::collections::HashSet<String>>,
}

/// Forgotten tasks remembered until their removal, at most (a node is told of each once;
/// past this the oldest bound applies: the kept logs' own limits).
const FORGOTTEN_MAX: usize = 10_000;

/// The process that forks the monitors, and the daemon's end of its request pipe. Dropping
/// it closes the pipe, which ends the server (not the monitors).
struct MonitorServer {
    pipe: tokio::net::UnixStream,
    /// Held, not waited for: tokio reaps it once it ends.
    _process: tokio::process::Child,
}

impl MonitorServer {
    /// Ask for a monitor with `args` (those of `shim run`); returns its pid.
    async fn request(&mut self, args: &[String]) -> std::io::Result<i32> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        self.pipe.write_all(&shim::serve_request(args)).await?;
        let mut reply = [0u8; 4];
        self.pipe.read_exact(&mut reply).await?;
        let pid = i32::from_le_bytes(reply);
        if pid <= 0 {
            return Err(std::io::Error::from_raw_os_error(-pid));
        }
        Ok(pid)
    }
}

impl State {
    fn new(config: OciConfig) -> Result<State, RuntimeError> {
        let binary = if config.runtime.is_empty() {
            "runc".to_string()
        } else {
            config.runtime.clone()
        };
        let name = Path::new(&binary)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| binary.clone());
        let root = config.data_dir.join("oci").join(&name);
        let trash = config.data_dir.join("trash");
        // What a daemon stopped before it finished deleting.
        if std::fs::read_dir(&trash).is_ok_and(|mut d| d.next().is_some()) {
            let old = trash.clone();
            std::thread::spawn(move || {
                for entry in std::fs::read_dir(&old).into_iter().flatten().flatten() {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            });
        }
        for dir in [&root, &config.data_dir.join("tasks"), &trash] {
            std::fs::create_dir_all(dir).map_err(|source| RuntimeError::Io {
                task_id: String::new(),
                op: RuntimeOp::Prepare,
                context: format!("creating {}", dir.display()),
                source,
            })?;
        }
        let mask = name.contains("crun") && Path::new("/sys/fs/cgroup/unified").exists();
        Ok(State {
            config,
            binary,
            root,
            mask,
            pinned: Mutex::new(HashMap::new()),
            live: Mutex::new(HashMap::new()),
            server: tokio::sync::Mutex::new(None),
            steps: Mutex::new(None),
            forgotten: Mutex::new(Default::default()),
        })
    }

    /// Use `image` for tasks naming `reference`, without asking the image store (tests, and
    /// images the node built itself).
    pub fn pin_image(&self, reference: &str, image: Image) {
        lock(&self.pinned).insert(reference.to_string(), image);
    }

    /// `step` of `task_id` took since `since`: recorded if steps are being recorded, and
    /// logged at debug level (`ms` field); returns now.
    fn step(
        &self,
        task_id: &str,
        step: &'static str,
        since: std::time::Instant,
    ) -> std::time::Instant {
        let now = std::time::Instant::now();
        let took = now - since;
        if let Some(steps) = lock(&self.steps).as_mut() {
            steps.push((step, took));
        }
        tracing::debug!(
            task = task_id,
            step,
            ms = took.as_secs_f64() * 1e3,
            "runtime step"
        );
        now
    }

    pub fn task_dir(&self, task_id: &str) -> PathBuf {
        self.config.data_dir.join("tasks").join(task_id)
    }

    /// Where the log of a removed task is kept (`<data>/logs/<task>.log`).
    fn retained_log(&self, task_id: &str) -> PathBuf {
        self.config
            .data_dir
            .join("logs")
            .join(format!("{task_id}.log"))
    }

    /// A new name under `<data>/trash/` for the directory of a removed task.
    fn trash_name(&self, task_id: &str) -> PathBuf {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        self.config
            .data_dir
            .join("trash")
            .join(format!("{task_id}.{nanos}"))
    }

    /// The runtime binary and its `--root`, as the runtime CLI takes them.
    pub fn runtime_base(&self) -> Vec<String> {
        vec![
            self.binary.clone(),
            "--root".into(),
            self.root.to_string_lossy().into_owned(),
        ]
    }

    fn record(&self, task_id: &str, op: RuntimeOp) -> Result<TaskRecord, RuntimeError> {
        let path = self.task_dir(task_id).join("task.json");
        let text = std::fs::read(&path).map_err(|_| unknown(task_id, op))?;
        serde_json::from_slice(&text).map_err(|e| failed(task_id, op, format!("{path:?}: {e}")))
    }

    async fn image_for(&self, reference: &str) -> Result<Image, String> {
        if let Some(image) = lock(&self.pinned).get(reference).cloned() {
            return Ok(image);
        }
        self.config
            .images
            .ensure(reference)
            .await
            .map_err(|e| e.to_string())
    }

    /// Run the runtime binary with `args`; returns stdout, or the trimmed error.
    async fn runtime_cmd(&self, args: &[&str]) -> Result<String, String> {
        let out = self.runtime_output(args).await?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stdout));
            Err(trim_runtime_error(&text))
        }
    }

    /// The runtime run with `args`, to its end: status and output.
    async fn runtime_output(&self, args: &[&str]) -> Result<std::process::Output, String> {
        let mut cmd = tokio::process::Command::new(&self.binary);
        cmd.arg("--root").arg(&self.root).args(args);
        cmd.stdin(std::process::Stdio::null());
        cmd.kill_on_drop(true);
        if self.mask {
            // SAFETY: mask_cgroup2 only makes system calls.
            unsafe { cmd.pre_exec(shim::mask_cgroup2) };
        }
        cmd.output()
            .await
            .map_err(|e| format!("{}: {e}", self.binary))
    }

    fn shim_alive(&self, task_id: &str) -> bool {
        read_pid(&self.task_dir(task_id).join(files::SHIM_PID)).is_some_and(pid_alive)
    }

    /// Until the monitor of `task_id` has ended, for at most 3 s.
    async fn monitor_gone(&self, task_id: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        let mut pause = Duration::from_millis(1);
        while self.shim_alive(task_id) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(POLL);
        }
    }

    fn exit_status(&self, task_id: &str) -> Option<ExitStatus> {
        let text = std::fs::read(self.task_dir(task_id).join(files::EXIT)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    async fn prepare_inner(&self, task: &Assignment) -> Result<(), String> {
        let dir = self.task_dir(&task.task_id);
        let task_id = task.task_id.as_str();
        let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
        let t = std::time::Instant::now();
        let image = self.image_for(&task.spec.image).await?;
        let t = self.step(task_id, "prepare: image", t);
        if image.layers.is_empty() {
            return Err(format!("image {} has no layers", image.reference));
        }
        std::fs::create_dir_all(&dir).map_err(|e| io("creating the task directory", e))?;
        for sub in ["rootfs", "upper", "work", "etc"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(|e| io(sub, e))?;
        }
        let lower: Vec<String> = image
            .layers
            .iter()
            .rev()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.join(":"),
            dir.join("upper").display(),
            dir.join("work").display()
        );
        let rootfs = dir.join("rootfs");
        if !is_mountpoint(&rootfs) {
            mount_layers(&rootfs, &options, &dir.join("work"))?;
        }
        let t = self.step(task_id, "prepare: rootfs", t);

        let hostname = spec::hostname(task);
        let etc = dir.join("etc");
        std::fs::write(etc.join("hostname"), format!("{hostname}\n"))
            .map_err(|e| io("/etc/hostname", e))?;
        // On overlays the hostname names the task's first overlay address, as in Docker.
        let own = task
            .networks
            .iter()
            .find(|n| !n.ingress)
            .map(|n| n.addr.to_string())
            .unwrap_or_else(|| "127.0.1.1".into());
        let mut hosts = format!(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{own}\t{hostname}\n"
        );
        // `--host HOST:IP` entries (IP NAME), after the task's own, as Docker writes them.
        for h in &task.spec.hosts {
            if let Some((ip, names)) = h.trim().split_once(char::is_whitespace) {
                hosts.push_str(&format!("{ip}\t{}\n", names.trim()));
            }
        }
        std::fs::write(etc.join("hosts"), hosts).map_err(|e| io("/etc/hosts", e))?;
        let resolv = if task.networks.is_empty() {
            std::fs::read("/etc/resolv.conf").unwrap_or_default()
        } else {
            spec::resolv_conf(&task.spec.dns).into_bytes()
        };
        std::fs::write(etc.join("resolv.conf"), resolv).map_err(|e| io("/etc/resolv.conf", e))?;

        let user_text = if task.spec.user.is_empty() {
            &image.config.user
        } else {
            &task.spec.user
        };
        let user = spec::resolve_user(user_text, &rootfs)?;
        let (uid, gid) = (user.uid, user.gid);

        let mut mounts = Vec::new();
        if task.spec.init {
            let init = spec::host_init().ok_or(
                "--init: this node has no init to run (install Debian's tini package: /usr/bin/tini-static)",
            )?;
            mounts.push(MountPlan::Bind {
                source: init,
                target: spec::INIT_PATH.to_string(),
                readonly: true,
            });
        }
        for (i, mount) in task.spec.mounts.iter().enumerate() {
            if !mount.target.starts_with('/') {
                return Err(format!(
                    "invalid mount target {:?}: it must be an absolute path",
                    mount.target
                ));
            }
            mounts.push(match mount.kind {
                MountKind::Bind => {
                    let source = PathBuf::from(&mount.source);
                    if !source.exists() {
                        return Err(format!(
                            "invalid mount config for type \"bind\": bind source path does not exist: {}",
                            mount.source
                        ));
                    }
                    MountPlan::Bind {
                        source,
                        target: mount.target.clone(),
                        readonly: mount.readonly,
                    }
                }
                MountKind::Volume => {
                    // A name may hold templates: a volume per task or slot.
                    let name = spec::expand(&mount.source, task);
                    let source = if name.is_empty() {
                        dir.join("volumes").join(i.to_string())
                    } else {
                        if name.contains('/') || name.starts_with('.') {
                            return Err(format!("invalid volume name {name:?}"));
                        }
                        self.config.data_dir.join("volumes").join(&name).join("_data")
                    };
                    std::fs::create_dir_all(&source).map_err(|e| io("creating the volume", e))?;
                    if !mount.volume_options.is_empty() {
                        mount_volume(&source, &mount.volume_options)?;
                    }
                    MountPlan::Bind {
                        source,
                        target: mount.target.clone(),
                        readonly: mount.readonly,
                    }
                }
                MountKind::Tmpfs => MountPlan::Tmpfs {
                    target: mount.target.clone(),
                    readonly: mount.readonly,
                },
            });
        }
        for name in ["hostname", "hosts", "resolv.conf"] {
            mounts.push(MountPlan::Bind {
                source: etc.join(name),
                target: format!("/etc/{name}"),
                readonly: false,
            });
        }
        if !task.secrets.is_empty() || !task.configs.is_empty() {
            let secrets = dir.join("secrets");
            std::fs::create_dir_all(&secrets).map_err(|e| io("secrets directory", e))?;
            if !is_mountpoint(&secrets) {
                nix::mount::mount(
                    Some("tmpfs"),
                    &secrets,
                    Some("tmpfs"),
                    nix::mount::MsFlags::MS_NOEXEC
                        | nix::mount::MsFlags::MS_NOSUID
                        | nix::mount::MsFlags::MS_NODEV,
                    Some("mode=0700,size=16m"),
                )
                .map_err(|e| format!("mounting the secrets tmpfs: {e}"))?;
            }
            let files = task
                .secrets
                .iter()
                .map(|f| (f, true))
                .chain(task.configs.iter().map(|f| (f, false)));
            for (i, (file, secret)) in files.enumerate() {
                let name = if file.target.is_empty() {
                    &file.name
                } else {
                    &file.target
                };
                let target = match (secret, name.starts_with('/')) {
                    (_, true) => name.clone(),
                    (true, false) => format!("/run/secrets/{name}"),
                    (false, false) => format!("/{name}"),
                };
                let host = secrets.join(format!("{}{i}", if secret { "s" } else { "c" }));
                std::fs::write(&host, &file.data).map_err(|e| io("writing a secret", e))?;
                // Owned by the container's user (unless uid=/gid= say otherwise), so that
                // 0400 still lets it read them.
                std::os::unix::fs::chown(
                    &host,
                    Some(file.uid.unwrap_or(uid)),
                    Some(file.gid.unwrap_or(gid)),
                )
                .map_err(|e| io("secret owner", e))?;
                let mode = file.mode.unwrap_or(if secret { 0o400 } else { 0o444 });
                std::fs::set_permissions(&host, std::fs::Permissions::from_mode(mode))
                    .map_err(|e| io("secret permissions", e))?;
                mounts.push(MountPlan::Bind {
                    source: host,
                    target,
                    readonly: true,
                });
            }
        }
        let netns_path = self
            .config
            .netns_dir
            .as_ref()
            .map(|d| d.join(&task.task_id))
            .filter(|p| p.exists());
        let t = self.step(task_id, "prepare: files and mounts", t);
        let config = spec::build(&spec::BundleInput {
            task,
            image: &image.config,
            rootfs: &rootfs,
            hostname: &hostname,
            user,
            mounts,
            netns_path,
        })?;
        config
            .save(dir.join("config.json"))
            .map_err(|e| format!("writing config.json: {e}"))?;
        let mut stripped = task.clone();
        for file in stripped
            .secrets
            .iter_mut()
            .chain(stripped.configs.iter_mut())
        {
            file.data.clear();
        }
        let record = TaskRecord {
            assignment: stripped,
            image: image.config.clone(),
        };
        let json = serde_json::to_vec_pretty(&record).map_err(|e| e.to_string())?;
        shim::write_atomic(&dir.join("task.json"), &json).map_err(|e| io("task.json", e))?;
        self.step(task_id, "prepare: config.json and task.json", t);
        Ok(())
    }

    /// The arguments of `shim run` for `task_id`.
    fn monitor_args(&self, task_id: &str) -> Vec<String> {
        let mut args = vec![
            "--task-dir".to_string(),
            self.task_dir(task_id).to_string_lossy().into_owned(),
            "--runtime".to_string(),
            self.binary.clone(),
            "--root".to_string(),
            self.root.to_string_lossy().into_owned(),
            "--id".to_string(),
            task_id.to_string(),
        ];
        if self.mask {
            args.push("--mask-cgroup2".into());
        }
        // The log's rotation, as the task's spec asks (checked at the API; a record that
        // cannot be read gets the default).
        let driver = self
            .record(task_id, RuntimeOp::Start)
            .ok()
            .and_then(|r| r.assignment.spec.log_driver);
        match proto::limits::log_rotation(driver.as_ref()) {
            Ok(None) => args.push("--log-none".into()),
            Ok(Some((bytes, files))) => {
                args.push("--log-rotate".into());
                args.push(format!("{bytes}:{files}"));
            }
            Err(_) => {}
        }
        args
    }

    /// Start the monitor of `task_id`: forked by the monitor server (started here if there is
    /// none yet, or again if it went away), or on its own if the server cannot be had.
    async fn spawn_shim(&self, task_id: &str) -> Result<(), String> {
        let args = self.monitor_args(task_id);
        {
            let mut server = self.server.lock().await;
            for _attempt in 0..2 {
                if server.is_none() {
                    match self.start_server() {
                        Ok(started) => *server = Some(started),
                        Err(e) => {
                            tracing::warn!(error = %e, "monitor server not started; starting monitors on their own");
                            break;
                        }
                    }
                }
                if let Some(live) = server.as_mut() {
                    match live.request(&args).await {
                        Ok(_pid) => return Ok(()),
                        Err(e) => {
                            tracing::debug!(error = %e, "monitor server failed; starting another");
                            *server = None;
                        }
                    }
                }
            }
        }
        self.spawn_shim_alone(&args).await
    }

    fn shim_program(&self) -> Result<(&String, &[String]), String> {
        self.config
            .shim_command
            .split_first()
            .ok_or_else(|| "no shim command configured".to_string())
    }

    fn start_server(&self) -> Result<MonitorServer, String> {
        let (program, lead) = self.shim_program()?;
        let (ours, theirs) =
            std::os::unix::net::UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
        ours.set_nonblocking(true)
            .map_err(|e| format!("socketpair: {e}"))?;
        let pipe =
            tokio::net::UnixStream::from_std(ours).map_err(|e| format!("socketpair: {e}"))?;
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(lead)
            .arg("serve")
            .arg("--tasks")
            .arg(self.config.data_dir.join("tasks"))
            .envs(self.config.shim_env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::from(std::os::fd::OwnedFd::from(
                theirs.try_clone().map_err(|e| format!("socketpair: {e}"))?,
            )))
            .stdout(std::process::Stdio::from(std::os::fd::OwnedFd::from(
                theirs,
            )))
            // Not a pipe: the monitors keep their stdio, and a pipe would never close.
            .stderr(std::process::Stdio::null());
        let process = cmd
            .spawn()
            .map_err(|e| format!("starting the monitor server {program}: {e}"))?;
        Ok(MonitorServer {
            pipe,
            _process: process,
        })
    }

    /// A monitor executed on its own (`shim run`): the first process forks and exits at once;
    /// its child is the monitor.
    async fn spawn_shim_alone(&self, args: &[String]) -> Result<(), String> {
        let (program, lead) = self.shim_program()?;
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(lead)
            .arg("run")
            .args(args)
            .envs(self.config.shim_env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            // Not a pipe: the monitor keeps its stdio, and a pipe would never close.
            .stderr(std::process::Stdio::null());
        let status = cmd
            .status()
            .await
            .map_err(|e| format!("starting the container monitor {program}: {e}"))?;
        if !status.success() {
            return Err(format!("the container monitor {program} failed: {status}"));
        }
        Ok(())
    }

    async fn start_inner(&self, task_id: &str) -> Result<(), String> {
        let dir = self.task_dir(task_id);
        if dir.join(files::STARTED).exists() || dir.join(files::EXIT).exists() {
            return Ok(());
        }
        let created = dir.join(files::CREATED);
        let create_error = dir.join(files::CREATE_ERROR);
        let mut t = std::time::Instant::now();
        if !created.exists() {
            if !self.shim_alive(task_id) {
                let _ = std::fs::remove_file(&create_error);
                let _ = std::fs::remove_file(dir.join(files::SHIM_PID));
                self.spawn_shim(task_id).await?;
                t = self.step(task_id, "start: monitor forked", t);
            }
            let deadline = tokio::time::Instant::now() + CREATE_TIMEOUT;
            loop {
                if created.exists() {
                    break;
                }
                if let Ok(text) = std::fs::read_to_string(&create_error) {
                    return Err(format!("starting container: {}", trim_runtime_error(&text)));
                }
                let shim_pid = read_pid(&dir.join(files::SHIM_PID));
                if shim_pid.is_some_and(|pid| !pid_alive(pid))
                    && !created.exists()
                    && !create_error.exists()
                {
                    return Err("starting container: the container monitor exited".into());
                }
                if tokio::time::Instant::now() > deadline {
                    return Err("starting container: the runtime did not create it in time".into());
                }
                wait_for_file(&dir, &[files::CREATED, files::CREATE_ERROR], POLL * 4).await;
            }
        }
        t = self.step(task_id, "start: runtime run --detach, until `created`", t);
        // The monitor ran the container (`run --detach`) and said so before `created`; only
        // one of an older version left it created for us to start.
        if dir.join(files::STARTED).exists() {
            return Ok(());
        }
        self.runtime_cmd(&["start", task_id])
            .await
            .map_err(|e| format!("starting container: {e}"))?;
        let _ = std::fs::write(dir.join(files::STARTED), b"");
        self.step(task_id, "start: runtime start (older monitor)", t);
        Ok(())
    }

    /// Start watching the health of a running task, if it has a healthcheck.
    fn watch_health(self: &Arc<Self>, task_id: &str, record: &TaskRecord) -> Option<Arc<Live>> {
        let check = record.healthcheck()?;
        let live = Arc::new(Live {
            health: watch::Sender::new(Health::Starting),
            cancel: CancellationToken::new(),
        });
        if let Some(old) = lock(&self.live).insert(task_id.to_string(), live.clone()) {
            old.cancel.cancel();
        }
        let this = self.clone();
        let id = task_id.to_string();
        let live2 = live.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = live2.cancel.cancelled() => {}
                _ = this.health_loop(&id, check, &live2) => {}
            }
        });
        Some(live)
    }

    async fn health_loop(&self, task_id: &str, check: HealthCheck, live: &Live) {
        let ms = |v: u64, default: u64| Duration::from_millis(if v == 0 { default } else { v });
        let interval = ms(check.interval_ms, 30_000);
        let timeout = ms(check.timeout_ms, 30_000);
        let retries = if check.retries == 0 { 3 } else { check.retries };
        let start_period = Duration::from_millis(check.start_period_ms);
        let start_interval = ms(check.start_interval_ms, interval.as_millis() as u64);
        let argv: Vec<String> = match check.test.first().map(String::as_str) {
            Some("CMD-SHELL") => vec!["/bin/sh".into(), "-c".into(), check.test[1..].join(" ")],
            Some("CMD") => check.test[1..].to_vec(),
            _ => check.test.clone(),
        };
        let started = tokio::time::Instant::now();
        let mut failures = 0u64;
        loop {
            // Faster while starting (`--health-start-interval`), so a slow-starting service
            // counts as healthy soon after it is, without probing often for ever.
            let starting =
                started.elapsed() < start_period && *live.health.borrow() == Health::Starting;
            tokio::time::sleep(if starting { start_interval } else { interval }).await;
            if self.exit_status(task_id).is_some() {
                return;
            }
            let mut args = vec!["exec", task_id];
            args.extend(argv.iter().map(String::as_str));
            let (ok, output) = match tokio::time::timeout(timeout, self.runtime_output(&args)).await
            {
                Ok(Ok(out)) if out.status.success() => (true, String::new()),
                Ok(Ok(out)) => (false, probe_failure(&out)),
                Ok(Err(e)) => (false, e),
                Err(_) => (false, format!("probe timed out after {timeout:?}")),
            };
            if ok {
                failures = 0;
                live.health.send_replace(Health::Healthy);
                continue;
            }
            if started.elapsed() < start_period && *live.health.borrow() == Health::Starting {
                continue;
            }
            failures += 1;
            if failures >= retries {
                let _ = std::fs::write(self.task_dir(task_id).join("unhealthy"), output);
                live.health.send_replace(Health::Unhealthy);
                let _ = self.runtime_cmd(&["kill", task_id, "KILL"]).await;
                return;
            }
        }
    }

    fn forget_live(&self, task_id: &str) {
        if let Some(live) = lock(&self.live).remove(task_id) {
            live.cancel.cancel();
        }
    }
}

/// Why a health probe failed, as `service ps` shows it after "container unhealthy: ": its
/// exit code and the end of its output (`exit 1: connection refused`, `exit 1, no output`).
fn probe_failure(out: &std::process::Output) -> String {
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    let text = text.trim();
    // The end of a long output: what a probe says last is what explains it.
    let skip = text.chars().count().saturating_sub(300);
    let tail: String = text.chars().skip(skip).collect();
    let tail = tail.replace('\n', " ");
    let code = match out.status.code() {
        Some(c) => format!("exit {c}"),
        None => "killed by a signal".to_string(),
    };
    if tail.is_empty() {
        format!("{code}, no output")
    } else {
        format!("{code}: {tail}")
    }
}

/// The real runtime. See the module documentation. Cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct OciRuntime {
    inner: Arc<State>,
}

impl OciRuntime {
    pub fn new(config: OciConfig) -> Result<OciRuntime, RuntimeError> {
        Ok(OciRuntime {
            inner: Arc::new(State::new(config)?),
        })
    }

    /// Use `image` for tasks naming `reference`, without asking the image store (tests, and
    /// images the node built itself).
    pub fn pin_image(&self, reference: &str, image: Image) {
        self.inner.pin_image(reference, image)
    }

    /// `<data>/tasks/<task id>`.
    pub fn task_dir(&self, task_id: &str) -> PathBuf {
        self.inner.task_dir(task_id)
    }

    /// The runtime binary and its `--root`, as the runtime CLI takes them.
    pub fn runtime_base(&self) -> Vec<String> {
        self.inner.runtime_base()
    }

    /// Record the duration of each step of `start` and `remove` from now on (benchmarks).
    pub fn record_steps(&self) {
        *lock(&self.inner.steps) = Some(Vec::new());
    }

    /// The steps recorded since the last call, in order.
    pub fn take_steps(&self) -> Vec<(&'static str, Duration)> {
        lock(&self.inner.steps)
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Whether runtime commands run in a masked mount namespace (crun on a hybrid host).
    pub fn masks_cgroup2(&self) -> bool {
        self.inner.mask
    }

    /// Stop watching health in this process (the handle is going away; for tests that
    /// simulate a daemon restart with a second runtime on the same directory).
    pub fn detach(&self) {
        for (_, live) in lock(&self.inner.live).drain() {
            live.cancel.cancel();
        }
    }
}

#[async_trait::async_trait]
impl Runtime for OciRuntime {
    async fn prepare(&self, task: &Assignment) -> Result<(), RuntimeError> {
        let id = task.task_id.as_str();
        self.inner
            .prepare_inner(task)
            .await
            .map_err(|reason| failed(id, RuntimeOp::Prepare, reason))
    }

    async fn start(&self, task_id: &str) -> Result<(), RuntimeError> {
        let record = self.inner.record(task_id, RuntimeOp::Start)?;
        self.inner
            .start_inner(task_id)
            .await
            .map_err(|reason| failed(task_id, RuntimeOp::Start, reason))?;
        // A task with a healthcheck counts as running once healthy.
        if let Some(live) = self.inner.watch_health(task_id, &record) {
            let mut health = live.health.subscribe();
            loop {
                if *health.borrow_and_update() != Health::Starting
                    || self.inner.exit_status(task_id).is_some()
                {
                    break;
                }
                tokio::select! {
                    changed = health.changed() => if changed.is_err() { break },
                    _ = tokio::time::sleep(POLL) => {}
                }
            }
        }
        Ok(())
    }

    async fn wait(&self, task_id: &str) -> Result<i32, RuntimeError> {
        let dir = self.inner.task_dir(task_id);
        if !dir.join("task.json").exists() {
            return Err(unknown(task_id, RuntimeOp::Wait));
        }
        // Only reads files: cancel-safe.
        loop {
            if let Some(exit) = self.inner.exit_status(task_id) {
                return Ok(exit.code);
            }
            if !self.inner.shim_alive(task_id) {
                if let Some(exit) = self.inner.exit_status(task_id) {
                    return Ok(exit.code);
                }
                if !dir.join(files::CREATED).exists() {
                    return Err(failed(
                        task_id,
                        RuntimeOp::Wait,
                        "the container was never created".into(),
                    ));
                }
                return Err(failed(
                    task_id,
                    RuntimeOp::Wait,
                    "the container monitor died without recording an exit status".into(),
                ));
            }
            // Woken by the exit file; the timeout only re-checks that the monitor lives.
            wait_for_file(&dir, &[files::EXIT], Duration::from_secs(1)).await;
        }
    }

    async fn stop(&self, task_id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let record = self.inner.record(task_id, RuntimeOp::Stop)?;
        let dir = self.inner.task_dir(task_id);
        if self.inner.exit_status(task_id).is_some() || !dir.join(files::CREATED).exists() {
            return Ok(());
        }
        let signal = record.stop_signal().to_string();
        if let Err(e) = self.inner.runtime_cmd(&["kill", task_id, &signal]).await {
            if self.inner.exit_status(task_id).is_some() {
                return Ok(());
            }
            tracing::debug!(task = task_id, error = %e, "stop signal not delivered");
        }
        let deadline = tokio::time::Instant::now() + grace;
        while tokio::time::Instant::now() < deadline {
            if self.inner.exit_status(task_id).is_some() || !self.inner.shim_alive(task_id) {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            wait_for_file(&dir, &[files::EXIT], left.min(Duration::from_secs(1))).await;
        }
        if let Err(e) = self.inner.runtime_cmd(&["kill", task_id, "KILL"]).await {
            if self.inner.exit_status(task_id).is_none() && self.inner.shim_alive(task_id) {
                return Err(failed(task_id, RuntimeOp::Stop, format!("killing: {e}")));
            }
        }
        Ok(())
    }

    async fn remove(&self, task_id: &str) -> Result<(), RuntimeError> {
        self.inner.forget_live(task_id);
        let dir = self.inner.task_dir(task_id);
        if !dir.exists() {
            return Ok(());
        }
        let t = std::time::Instant::now();
        // A container whose init the monitor reaped has no process left (its PID namespace
        // died with its init): what `<runtime> delete` would do is remove the cgroups (done
        // below in any case) and the runtime's state directory, done here without starting
        // the runtime once more. Anything else (still running, never started, no monitor)
        // goes through the runtime.
        let exited = self.inner.exit_status(task_id).is_some();
        if exited {
            // It writes the exit status last, then ends.
            self.inner.monitor_gone(task_id).await;
        }
        if exited && !self.inner.shim_alive(task_id) {
            let state = self.inner.root.join(task_id);
            if let Err(e) = std::fs::remove_dir_all(&state) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::debug!(task = task_id, error = %e, "runtime state left; asking the runtime");
                    let _ = self
                        .inner
                        .runtime_cmd(&["delete", "--force", task_id])
                        .await;
                }
            }
        } else {
            let _ = self
                .inner
                .runtime_cmd(&["delete", "--force", task_id])
                .await;
        }
        let t = self.inner.step(task_id, "remove: runtime delete", t);
        // Let the monitor record the end before the directory goes.
        self.inner.monitor_gone(task_id).await;
        let t = self.inner.step(task_id, "remove: monitor gone", t);
        // Anonymous volumes made with volume options may be mounts of their own.
        let anonymous = std::fs::read_dir(dir.join("volumes"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path());
        let subs = ["rootfs", "secrets"].into_iter().map(|s| dir.join(s));
        for path in anonymous.chain(subs) {
            while is_mountpoint(&path) {
                if nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH).is_err() {
                    break;
                }
            }
        }
        let t = self.inner.step(task_id, "remove: unmount", t);
        remove_cgroups(task_id);
        let t = self.inner.step(task_id, "remove: cgroups", t);
        // The log outlives the task (a job's output, a crash's last words), as Docker keeps
        // a stopped container's: readable by `service logs` while the managers keep the task
        // in their history; the oldest go past [`RETAINED_LOGS`] or [`RETAINED_LOG_BYTES`].
        let log = dir.join(files::LOG);
        let forgotten = lock(&self.inner.forgotten).remove(task_id);
        if log.exists() && !forgotten {
            let kept = self.inner.retained_log(task_id);
            let moved = kept
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| std::fs::rename(&log, &kept));
            if let Err(e) = moved {
                tracing::debug!(task = task_id, error = %e, "the log of a removed task is not kept");
            }
            if let Some(logs) = kept.parent().map(Path::to_path_buf) {
                tokio::task::spawn_blocking(move || prune_retained_logs(&logs));
            }
        }
        // Out of the way in one rename, deleted in the background: a few dozen unlinks wait
        // on the file system's journal, tens of milliseconds on a busy disk.
        let trash = self.inner.trash_name(task_id);
        let removed = match std::fs::rename(&dir, &trash) {
            Ok(()) => {
                tokio::task::spawn_blocking(move || std::fs::remove_dir_all(trash));
                Ok(())
            }
            Err(_) => std::fs::remove_dir_all(&dir),
        }
        .map_err(|source| RuntimeError::Io {
            task_id: task_id.to_string(),
            op: RuntimeOp::Remove,
            context: format!("removing {}", dir.display()),
            source,
        });
        self.inner.step(task_id, "remove: task directory", t);
        removed
    }

    fn forget(&self, task_id: &str) {
        let _ = std::fs::remove_file(self.inner.retained_log(task_id));
        if self.inner.task_dir(task_id).exists() {
            let mut f = lock(&self.inner.forgotten);
            if f.len() >= FORGOTTEN_MAX {
                f.clear();
            }
            f.insert(task_id.to_string());
        }
    }

    fn log_path(&self, task_id: &str) -> Option<PathBuf> {
        let live = self.inner.task_dir(task_id).join(files::LOG);
        let kept = self.inner.retained_log(task_id);
        Some(if !live.exists() && kept.exists() {
            kept
        } else {
            live
        })
    }

    async fn restore(&self) -> Vec<Restored> {
        let Ok(entries) = std::fs::read_dir(self.inner.config.data_dir.join("tasks")) else {
            return Vec::new();
        };
        let mut restored = Vec::new();
        for entry in entries.flatten() {
            let task_id = entry.file_name().to_string_lossy().into_owned();
            let Ok(record) = self.inner.record(&task_id, RuntimeOp::Start) else {
                continue;
            };
            let dir = entry.path();
            let state = if let Some(exit) = self.inner.exit_status(&task_id) {
                RestoredState::Exited(exit.code)
            } else if dir.join(files::STARTED).exists() {
                let pid = read_pid(&dir.join(files::INIT_PID)).unwrap_or(0);
                if self.inner.shim_alive(&task_id) {
                    self.inner.watch_health(&task_id, &record);
                }
                RestoredState::Running { pid }
            } else {
                RestoredState::Created
            };
            restored.push(Restored {
                task_id,
                assignment: record.assignment,
                state,
            });
        }
        restored.sort_by(|a, b| a.task_id.cmp(&b.task_id));
        restored
    }

    async fn exit_detail(&self, task_id: &str) -> Option<String> {
        let dir = self.inner.task_dir(task_id);
        let exit = self.inner.exit_status(task_id)?;
        if let Ok(output) = std::fs::read_to_string(dir.join("unhealthy")) {
            return Some(format!("container unhealthy: {}", output.trim()));
        }
        if exit.oom_killed {
            let limit = self
                .inner
                .record(task_id, RuntimeOp::Wait)
                .map(|r| r.assignment.spec.resources.limit_memory)
                .unwrap_or(0);
            return Some(if limit > 0 {
                format!(
                    "OOM killed: memory limit {} exceeded (exit {})",
                    human_bytes(limit),
                    exit.code
                )
            } else {
                format!("OOM killed (exit {})", exit.code)
            });
        }
        None
    }

    fn exec_argv(&self, task_id: &str, cmd: &[String]) -> Result<Vec<String>, RuntimeError> {
        if !self.inner.task_dir(task_id).join(files::CREATED).exists() {
            return Err(failed(
                task_id,
                RuntimeOp::Start,
                "exec: the container is not running".into(),
            ));
        }
        let mut argv = Vec::new();
        if self.inner.mask {
            argv.extend(self.inner.config.shim_command.iter().cloned());
            argv.extend(["exec-ns".to_string(), "--".to_string()]);
        }
        argv.extend(self.inner.runtime_base());
        argv.push("exec".into());
        argv.push(task_id.into());
        argv.extend(cmd.iter().cloned());
        Ok(argv)
    }
}

/// `64MiB`, `1GiB`, `1000B`: a memory size the way users write limits.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, size) in UNITS {
        if n >= size && n.is_multiple_of(size) {
            return format!("{}{unit}", n / size);
        }
    }
    for (unit, size) in UNITS {
        if n >= size {
            return format!("{:.1}{unit}", n as f64 / size as f64);
        }
    }
    format!("{n}B")
}

/// The essence of a runtime's error output: its last message, without log decoration and the
/// runtime's own framing (`runc create failed: unable to start container process: `).
pub fn trim_runtime_error(text: &str) -> String {
    let line = text
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    let mut message = match line.find("msg=\"") {
        Some(at) => {
            let rest = &line[at + 5..];
            let mut out = String::new();
            let mut chars = rest.chars();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(next) = chars.next() {
                            out.push(next);
                        }
                    }
                    '"' => break,
                    c => out.push(c),
                }
            }
            out
        }
        None => line.to_string(),
    };
    if let Some(at) = message.rfind("unable to start container process: ") {
        message = message[at + "unable to start container process: ".len()..].to_string();
    }
    for prefix in ["runc: ", "crun: ", "Error: ", "error: "] {
        if let Some(rest) = message.strip_prefix(prefix) {
            message = rest.to_string();
        }
    }
    message
}

/// Wait until one of `names` exists in `dir`, or `timeout` passes; true if one exists. Sleeps
/// on inotify (falls back to a short sleep if inotify is unavailable). Cancel-safe.
async fn wait_for_file(dir: &Path, names: &[&str], timeout: Duration) -> bool {
    let exists = || names.iter().any(|n| dir.join(n).exists());
    let Some(watch) = Inotify::watch(dir) else {
        if !exists() {
            tokio::time::sleep(timeout.min(POLL)).await;
        }
        return exists();
    };
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        // Checked after the watch is in place: a file created in between is not missed.
        if exists() {
            return true;
        }
        match tokio::time::timeout_at(deadline, watch.changed()).await {
            Ok(true) => continue,
            _ => return exists(),
        }
    }
}

/// One inotify watch on a directory (entries created or renamed in).
struct Inotify {
    fd: tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>,
}

impl Inotify {
    fn watch(dir: &Path) -> Option<Inotify> {
        use std::os::fd::FromRawFd;
        use std::os::unix::ffi::OsStrExt;
        // SAFETY: plain system calls; the fd is owned right away.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if raw < 0 {
            return None;
        }
        // SAFETY: `raw` is a new fd nobody else owns.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
        let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
        // SAFETY: valid fd and NUL-terminated path.
        let wd = unsafe {
            libc::inotify_add_watch(
                raw,
                path.as_ptr(),
                libc::IN_CREATE | libc::IN_MOVED_TO | libc::IN_CLOSE_WRITE,
            )
        };
        if wd < 0 {
            return None;
        }
        Some(Inotify {
            // SAFETY: the fd is owned by the AsyncFd and closed only when it is dropped.
            fd: unsafe { tokio::io::unix::AsyncFd::register(fd) }.ok()?,
        })
    }

    /// Something happened in the directory (false: the watch broke).
    async fn changed(&self) -> bool {
        use std::os::fd::AsRawFd;
        loop {
            let Ok(mut guard) = self.fd.readable().await else {
                return false;
            };
            let mut buf = [0u8; 4096];
            // SAFETY: reading into a local buffer from our own fd.
            let n = unsafe {
                libc::read(
                    self.fd.get_ref().as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            };
            if n > 0 {
                return true;
            }
            guard.clear_ready();
        }
    }
}

/// Logs of removed tasks kept on a node at most, and their bytes at most: the oldest go
/// first.
pub const RETAINED_LOGS: usize = 1000;
pub const RETAINED_LOG_BYTES: u64 = 1 << 30;

/// Remove the oldest kept logs in `dir` past [`RETAINED_LOGS`] files or
/// [`RETAINED_LOG_BYTES`] bytes.
pub fn prune_retained_logs(dir: &Path) {
    prune_logs(dir, RETAINED_LOGS, RETAINED_LOG_BYTES)
}

fn prune_logs(dir: &Path, max_files: usize, max_bytes: u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut logs: Vec<(std::time::SystemTime, u64, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            Some((m.modified().ok()?, m.len(), e.path()))
        })
        .collect();
    // Newest first: what is kept is a prefix.
    logs.sort_by_key(|l| std::cmp::Reverse(l.0));
    let mut bytes = 0u64;
    for (i, (_, len, path)) in logs.into_iter().enumerate() {
        bytes = bytes.saturating_add(len);
        if i >= max_files || bytes > max_bytes {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn remove_cgroups(task_id: &str) {
    let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    let mut dirs = vec![PathBuf::from("/sys/fs/cgroup/shoal").join(task_id)];
    for entry in entries.flatten() {
        dirs.push(entry.path().join("shoal").join(task_id));
    }
    for dir in dirs {
        if dir.is_dir() {
            let _ = std::fs::remove_dir(&dir);
        }
    }
}

/// Mount the image layers at `rootfs`: overlayfs, `volatile` where the kernel has it (5.10
/// and later). A container's writable layer does not outlive the machine: unmounting a
/// volatile overlay does not sync the whole upper file system, which took tens of
/// milliseconds per container removal. After a crash the kernel refuses a volatile work
/// directory it finds again until its marker is removed, which this does.
fn mount_layers(rootfs: &Path, options: &str, work: &Path) -> Result<(), String> {
    let mount = |options: &str| {
        nix::mount::mount(
            Some("overlay"),
            rootfs,
            Some("overlay"),
            nix::mount::MsFlags::empty(),
            Some(options),
        )
    };
    let _ = std::fs::remove_dir_all(work.join("work").join("incompat"));
    mount(&format!("{options},volatile"))
        .or_else(|_| mount(options))
        .map_err(|e| format!("mounting the image layers (overlay): {e}"))
}

/// Whether `p` is the root of a mount, from `statx` (one system call; reading
/// /proc/self/mountinfo costs time in proportion to the node's mounts, hundreds with many
/// containers); the mount table where the kernel does not say.
/// Makes the volume at `dir` as the local driver's options say (`type`, `device`, `o`, as
/// `mount -t TYPE -o O DEVICE DIR`; type `none` with `o=bind` binds `device`), unless it is
/// made already: the first task that uses it creates it, the next ones share it.
fn mount_volume(
    dir: &Path,
    opts: &std::collections::BTreeMap<String, String>,
) -> Result<(), String> {
    use nix::mount::MsFlags;
    if is_mountpoint(dir) {
        return Ok(());
    }
    let ty = opts.get("type").map(String::as_str).unwrap_or("");
    let mut device = opts.get("device").map(String::as_str).unwrap_or("");
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in opts.get("o").into_iter().flat_map(|o| o.split(',')) {
        match o {
            "" => {}
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" => {}
            "bind" => flags |= MsFlags::MS_BIND,
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            other => data.push(other),
        }
    }
    if ty == "tmpfs" && device.is_empty() {
        device = "tmpfs";
    }
    if flags.contains(MsFlags::MS_BIND) && !Path::new(device).exists() {
        return Err(format!(
            "creating the volume: its device {device} does not exist on this node"
        ));
    }
    let data = data.join(",");
    let fstype = (ty != "none").then_some(ty);
    let bind = flags.contains(MsFlags::MS_BIND);
    nix::mount::mount(
        Some(device),
        dir,
        fstype,
        flags,
        (!data.is_empty()).then_some(data.as_str()),
    )
    .map_err(|e| format!("creating the volume: mount -t {ty} {device}: {e}"))?;
    // A bind ignores ro on its first mount: made read-only by a remount.
    if bind && flags.contains(MsFlags::MS_RDONLY) {
        nix::mount::mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(|e| format!("creating the volume: read-only remount: {e}"))?;
    }
    Ok(())
}

fn is_mountpoint(path: &Path) -> bool {
    if let Some(root) = statx_mount_root(path) {
        return root;
    }
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let Ok(path) = path.canonicalize() else {
        return false;
    };
    let wanted = path.to_string_lossy();
    mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mp| unescape_mount(mp) == wanted)
}

/// `Some(is a mount root)`, or None if `statx` cannot tell (absent path: `Some(false)`).
fn statx_mount_root(path: &Path) -> Option<bool> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statx is plain data; all zeroes is a valid value.
    let mut out: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: statx only writes into the struct it is given; the path is NUL-terminated.
    let failed = unsafe { libc::statx(libc::AT_FDCWD, c_path.as_ptr(), 0, 0, &mut out) } != 0;
    if failed {
        let errno = std::io::Error::last_os_error().raw_os_error();
        return (errno == Some(libc::ENOENT)).then_some(false);
    }
    let bit = libc::STATX_ATTR_MOUNT_ROOT as u64;
    if out.stx_attributes_mask & bit == 0 {
        return None;
    }
    Some(out.stx_attributes & bit != 0)
}

fn unescape_mount(text: &str) -> String {
    text.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn pid_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // A zombie is dead for our purpose.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn unknown(task_id: &str, op: RuntimeOp) -> RuntimeError {
    RuntimeError::UnknownTask {
        task_id: task_id.to_string(),
        op,
    }
}

fn failed(task_id: &str, op: RuntimeOp, reason: String) -> RuntimeError {
    RuntimeError::Failed {
        task_id: task_id.to_string(),
        op,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kept logs go oldest first, past a count or a size.
    #[test]
    fn kept_logs_are_bounded_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = std::time::SystemTime::now() - std::time::Duration::from_secs(100);
        for i in 0..5u64 {
            let p = dir.path().join(format!("t{i}.log"));
            std::fs::write(&p, vec![b'x'; 100]).unwrap();
            let f = std::fs::File::options().write(true).open(&p).unwrap();
            f.set_modified(t0 + std::time::Duration::from_secs(i))
                .unwrap();
        }
        let names = || {
            let mut v: Vec<String> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        prune_logs(dir.path(), 4, u64::MAX);
        assert_eq!(names(), ["t1.log", "t2.log", "t3.log", "t4.log"]);
        prune_logs(dir.path(), 10, 250);
        assert_eq!(names(), ["t3.log", "t4.log"]);
    }

    #[test]
    fn a_failed_probe_says_its_exit_code_and_the_end_of_its_output() {
        use std::os::unix::process::ExitStatusExt;
        let out = |raw: i32, stdout: &str, stderr: &str| std::process::Output {
            status: std::process::ExitStatus::from_raw(raw),
            stdout: stdout.as_bytes().to_vec(),
            stderr: stderr.as_bytes().to_vec(),
        };
        assert_eq!(probe_failure(&out(1 << 8, "", "")), "exit 1, no output");
        assert_eq!(
            probe_failure(&out(2 << 8, "checking\n", "refused\n")),
            "exit 2: checking refused"
        );
        assert_eq!(
            probe_failure(&out(9, "", "")),
            "killed by a signal, no output"
        );
        let long = format!("{}END", "x".repeat(1000));
        let said = probe_failure(&out(1 << 8, &long, ""));
        assert!(
            said.ends_with("END") && said.len() == "exit 1: ".len() + 300,
            "{said}"
        );
    }

    #[test]
    fn runtime_errors_are_trimmed_to_their_essence() {
        let runc = "time=\"2026-11-23T18:00:00Z\" level=error msg=\"runc create failed: unable to start container process: exec: \\\"nope\\\": executable file not found in $PATH\"\n";
        assert_eq!(
            trim_runtime_error(runc),
            "exec: \"nope\": executable file not found in $PATH"
        );
        let crun = "crun: executable file `nope` not found in $PATH: No such file or directory\n";
        assert_eq!(
            trim_runtime_error(crun),
            "executable file `nope` not found in $PATH: No such file or directory"
        );
    }

    #[test]
    fn service_healthcheck_fields_fall_back_to_the_image() {
        let image = HealthCheck {
            test: vec!["CMD-SHELL".into(), "test -e /ok".into()],
            interval_ms: 500,
            timeout_ms: 1000,
            retries: 2,
            start_period_ms: 0,
            start_interval_ms: 100,
        };
        // Only a start period given: the image's test and other timings stay.
        let only_start = HealthCheck {
            start_period_ms: 300_000,
            ..Default::default()
        };
        let got = merge_healthcheck(Some(&only_start), Some(&image)).unwrap();
        assert_eq!(got.test, image.test);
        assert_eq!(
            (
                got.interval_ms,
                got.timeout_ms,
                got.retries,
                got.start_period_ms
            ),
            (500, 1000, 2, 300_000)
        );
        // A test of the service's own replaces the image's.
        let own = HealthCheck {
            test: vec!["CMD".into(), "true".into()],
            ..Default::default()
        };
        let got = merge_healthcheck(Some(&own), Some(&image)).unwrap();
        assert_eq!(got.test, own.test);
        assert_eq!(got.interval_ms, 500);
        // NONE turns it off; nothing anywhere means no check.
        let none = HealthCheck {
            test: vec!["NONE".into()],
            ..Default::default()
        };
        assert_eq!(merge_healthcheck(Some(&none), Some(&image)), None);
        assert_eq!(merge_healthcheck(None, None), None);
        assert_eq!(merge_healthcheck(Some(&only_start), None), None);
        assert_eq!(merge_healthcheck(None, Some(&image)), Some(image.clone()));
    }

    #[test]
    fn sizes_read_as_users_write_them() {
        assert_eq!(human_bytes(64 << 20), "64MiB");
        assert_eq!(human_bytes(1 << 30), "1GiB");
        assert_eq!(human_bytes(1500), "1.5KiB");
        assert_eq!(human_bytes(10), "10B");
    }
}
