//! From a task (and its image) to an OCI runtime `config.json`: the pure part of the runtime.
//!
//! Everything here is a function of its inputs and files it is pointed at (the image's
//! `/etc/passwd` and `/etc/group`), so that the Docker compatibility rules — how command and
//! args merge with the image's entrypoint and cmd, how env merges, which user a `--user`
//! names — are unit tested without a container.

use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;
use proto::spec::Assignment;
use serde_json::{json, Value};

use crate::image::ImageConfig;

/// Docker's default PATH, used when neither the image nor the task sets one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// CFS period used for CPU limits, in microseconds (Docker's).
pub const CPU_PERIOD_US: u64 = 100_000;

/// Docker's default capability set.
pub const DEFAULT_CAPABILITIES: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Paths Docker hides from containers (bind-mounted over with /dev/null or an empty tmpfs).
pub const MASKED_PATHS: [&str; 11] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths Docker makes read-only in containers.
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The process to run, Docker's way: the task's command replaces the image's entrypoint, the
/// task's args replace the image's cmd, and a task that sets a command but no args drops the
/// image's cmd (it was written for the image's entrypoint).
pub fn merge_args(
    command: &[String],
    args: &[String],
    image: &ImageConfig,
) -> Result<Vec<String>, String> {
    let entrypoint = if command.is_empty() {
        &image.entrypoint
    } else {
        command
    };
    let cmd: &[String] = if !args.is_empty() {
        args
    } else if command.is_empty() {
        &image.cmd
    } else {
        &[]
    };
    let merged: Vec<String> = entrypoint.iter().chain(cmd).cloned().collect();
    if merged.is_empty() {
        return Err("no command specified".into());
    }
    Ok(merged)
}

/// The image's env overlaid with the task's (the task wins, key by key, keeping the first
/// position of a key), with PATH defaulted as Docker does and HOSTNAME set.
pub fn merge_env(image_env: &[String], task_env: &[String], hostname: &str) -> Vec<String> {
    let mut merged: Vec<(String, String)> = Vec::new();
    let mut set = |entry: &str| {
        let (key, value) = entry.split_once('=').unwrap_or((entry, ""));
        match merged.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value.to_string(),
            None => merged.push((key.to_string(), value.to_string())),
        }
    };
    set(&format!("PATH={DEFAULT_PATH}"));
    set(&format!("HOSTNAME={hostname}"));
    for entry in image_env.iter().chain(task_env) {
        set(entry);
    }
    merged
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect()
}

/// The resolv.conf of a container on overlay networks: the embedded DNS server the node runs
/// inside its namespace, plus the service's `--dns-search` and `--dns-option` lines (Docker's
/// `ndots:0` unless options say otherwise). `--dns` servers are the embedded server's
/// forwarders, not lines here, so service names keep resolving.
pub fn resolv_conf(dns: &proto::spec::DnsConfig) -> String {
    let mut out = String::from("nameserver 127.0.0.11\n");
    if !dns.search.is_empty() {
        out.push_str(&format!("search {}\n", dns.search.join(" ")));
    }
    let mut options = dns.options.clone();
    if !options.iter().any(|o| o.starts_with("ndots:")) {
        options.push("ndots:0".into());
    }
    out.push_str(&format!("options {}\n", options.join(" ")));
    out
}

/// The container's capabilities, as Docker works them out: its default set, less `drop`
/// (all of it for `ALL`), plus `add` (every capability for `ALL`).
pub fn capabilities(add: &[String], drop: &[String]) -> Vec<String> {
    let all = || {
        proto::limits::CAPABILITIES
            .iter()
            .map(|c| format!("CAP_{c}"))
            .collect::<Vec<_>>()
    };
    if add.iter().any(|c| c == "ALL") {
        return all();
    }
    let mut caps: Vec<String> = if drop.iter().any(|c| c == "ALL") {
        Vec::new()
    } else {
        DEFAULT_CAPABILITIES
            .iter()
            .map(|c| c.to_string())
            .filter(|c| !drop.contains(c))
            .collect()
    };
    for c in add {
        if !caps.contains(c) {
            caps.push(c.clone());
        }
    }
    caps
}

/// The container's hostname: the task's template expanded, or the task id's first 12
/// characters.
pub fn hostname(task: &Assignment) -> String {
    let template = task.spec.hostname.trim();
    if template.is_empty() {
        return task.task_id.chars().take(12).collect();
    }
    expand(template, task)
}

/// Docker's placeholders of `--hostname`, `--env` and `--mount source=` filled in for
/// `task`: `{{.Service.ID}}`, `{{.Service.Name}}`, `{{.Service.Labels}}` (and `{{index
/// .Service.Labels "KEY"}}`), `{{.Node.ID}}`, `{{.Node.Hostname}}`, `{{.Task.ID}}`,
/// `{{.Task.Name}}`, `{{.Task.Slot}}`, with or without spaces inside the braces. Anything
/// else is left as written.
pub fn expand(template: &str, task: &Assignment) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        let Some(len) = rest[open + 2..].find("}}") else {
            break;
        };
        out.push_str(&rest[..open]);
        let whole = &rest[open..open + 2 + len + 2];
        match placeholder(rest[open + 2..open + 2 + len].trim(), task) {
            Some(v) => out.push_str(&v),
            None => out.push_str(whole),
        }
        rest = &rest[open + 2 + len + 2..];
    }
    out.push_str(rest);
    out
}

fn placeholder(name: &str, t: &Assignment) -> Option<String> {
    Some(match name {
        ".Service.ID" => t.service_id.clone(),
        ".Service.Name" => t.service_name.clone(),
        // As Go prints a map: map[k1:v1 k2:v2], keys sorted.
        ".Service.Labels" => {
            let pairs: Vec<String> = t
                .service_labels
                .iter()
                .map(|(k, v)| format!("{k}:{v}"))
                .collect();
            format!("map[{}]", pairs.join(" "))
        }
        ".Node.ID" => t.node_id.clone(),
        ".Node.Hostname" => t.node_hostname.clone(),
        ".Task.ID" => t.task_id.clone(),
        ".Task.Slot" => t.slot.to_string(),
        // Docker's task name: service.slot.id, or service.node.id for a global task.
        ".Task.Name" if t.slot > 0 => format!("{}.{}.{}", t.service_name, t.slot, t.task_id),
        ".Task.Name" => format!("{}.{}.{}", t.service_name, t.node_id, t.task_id),
        _ => {
            let key = name
                .strip_prefix("index")?
                .trim_start()
                .strip_prefix(".Service.Labels")?
                .trim();
            let key = key.strip_prefix('"')?.strip_suffix('"')?;
            t.service_labels.get(key).cloned().unwrap_or_default()
        }
    })
}

/// CFS quota for a limit in nano CPUs (1e9 = one CPU), over [`CPU_PERIOD_US`].
pub fn cpu_quota(nano_cpus: u64) -> i64 {
    (u128::from(nano_cpus) * u128::from(CPU_PERIOD_US) / 1_000_000_000) as i64
}

/// A signal by name (`SIGINT`, `INT`, any case) or number.
pub fn parse_signal(text: &str) -> Result<i32, String> {
    let text = text.trim();
    if let Ok(n) = text.parse::<i32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
        return Err(format!("invalid signal number {n}"));
    }
    let upper = text.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<nix::sys::signal::Signal>()
        .map(|s| s as i32)
        .map_err(|_| format!("invalid signal {text:?}"))
}

/// `--user` as written: `name|uid[:group|gid]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserSpec {
    pub user: String,
    pub group: Option<String>,
}

impl UserSpec {
    pub fn parse(text: &str) -> UserSpec {
        match text.split_once(':') {
            Some((user, group)) => UserSpec {
                user: user.to_string(),
                group: Some(group.to_string()),
            },
            None => UserSpec {
                user: text.to_string(),
                group: None,
            },
        }
    }
}

/// The ids the container process runs with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

/// Resolve `--user` (or the image's USER) against the rootfs' `/etc/passwd` and `/etc/group`.
/// Empty: root. A numeric uid absent from passwd runs with gid 0, as Docker does.
pub fn resolve_user(text: &str, rootfs: &Path) -> Result<ResolvedUser, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(ResolvedUser::default());
    }
    let spec = UserSpec::parse(text);
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap_or_default();
    let group_file = std::fs::read_to_string(rootfs.join("etc/group")).unwrap_or_default();
    // name:x:uid:gid:...
    let entry = passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() < 4 {
            return None;
        }
        let uid: u32 = fields[2].parse().ok()?;
        let gid: u32 = fields[3].parse().ok()?;
        let matches = fields[0] == spec.user || spec.user.parse::<u32>() == Ok(uid);
        matches.then(|| (fields[0].to_string(), uid, gid))
    });
    let (name, uid, mut gid) = match (entry, spec.user.parse::<u32>()) {
        (Some(found), _) => found,
        (None, Ok(uid)) => (String::new(), uid, 0),
        (None, Err(_)) => {
            return Err(format!(
                "unable to find user {}: no matching entries in passwd file",
                spec.user
            ))
        }
    };
    let groups: Vec<(String, u32, Vec<String>)> = group_file
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() < 3 {
                return None;
            }
            let members = fields
                .get(3)
                .map(|m| {
                    m.split(',')
                        .filter(|s| !s.is_empty())
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default();
            Some((fields[0].to_string(), fields[2].parse().ok()?, members))
        })
        .collect();
    if let Some(group) = &spec.group {
        gid = match group.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => groups
                .iter()
                .find(|(n, _, _)| n == group)
                .map(|(_, gid, _)| *gid)
                .ok_or_else(|| {
                    format!("unable to find group {group}: no matching entries in group file")
                })?,
        };
    }
    let additional_gids = if name.is_empty() {
        Vec::new()
    } else {
        groups
            .iter()
            .filter(|(_, g, members)| *g != gid && members.contains(&name))
            .map(|(_, g, _)| *g)
            .collect()
    };
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
    })
}

/// One extra mount of the container, with its host side already resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MountPlan {
    Bind {
        source: PathBuf,
        target: String,
        readonly: bool,
    },
    Tmpfs {
        target: String,
        readonly: bool,
    },
}

/// Everything [`build`] needs beyond the task itself.
/// Where `--init`'s init is in the container (Docker's path).
pub const INIT_PATH: &str = "/sbin/docker-init";

/// The node's init for `--init`: a static tini (Debian's `tini` package), as Docker's
/// docker-init is.
pub fn host_init() -> Option<PathBuf> {
    [
        "/usr/bin/tini-static",
        "/usr/bin/docker-init",
        "/usr/libexec/docker/docker-init",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

pub struct BundleInput<'a> {
    pub task: &'a Assignment,
    pub image: &'a ImageConfig,
    pub rootfs: &'a Path,
    pub hostname: &'a str,
    pub user: ResolvedUser,
    /// Extra mounts in order: the task's mounts, then /etc files, secrets and configs.
    pub mounts: Vec<MountPlan>,
    /// Join this network namespace instead of creating a new empty one.
    pub netns_path: Option<PathBuf>,
}

/// The runtime config of a task.
pub fn build(input: &BundleInput<'_>) -> Result<Spec, String> {
    let task = input.task;
    let spec = &task.spec;
    let mut args = merge_args(&spec.command, &spec.args, input.image)?;
    if spec.init {
        // The init bind-mounted by the runtime ([`INIT_PATH`]) runs the process.
        args.splice(0..0, [INIT_PATH.to_string(), "--".to_string()]);
    }
    let task_env: Vec<String> = spec.env.iter().map(|e| expand(e, task)).collect();
    let env = merge_env(&input.image.env, &task_env, input.hostname);
    let cwd = if !spec.workdir.is_empty() {
        spec.workdir.clone()
    } else if !input.image.working_dir.is_empty() {
        input.image.working_dir.clone()
    } else {
        "/".to_string()
    };
    if !cwd.starts_with('/') {
        return Err(format!(
            "the working directory {cwd:?} is invalid: it needs to be an absolute path"
        ));
    }
    let caps = capabilities(&spec.cap_add, &spec.cap_drop);
    let rlimits: Vec<Value> = spec
        .ulimits
        .iter()
        .map(|u| {
            // -1 is unlimited: the kernel's RLIM_INFINITY.
            let v = |n: i64| if n < 0 { u64::MAX } else { n as u64 };
            json!({"type": format!("RLIMIT_{}", u.name.to_ascii_uppercase()),
                   "soft": v(u.soft), "hard": v(u.hard)})
        })
        .collect();
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
               "options": ["nosuid", "noexec", "nodev", "ro"]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
               "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
    ];
    for mount in &input.mounts {
        mounts.push(match mount {
            MountPlan::Bind {
                source,
                target,
                readonly,
            } => {
                let mut options = vec!["rbind", "rprivate"];
                if *readonly {
                    options.push("ro");
                }
                json!({"destination": target, "type": "bind", "source": source, "options": options})
            }
            MountPlan::Tmpfs { target, readonly } => {
                let mut options = vec!["nosuid", "nodev", "mode=1777"];
                if *readonly {
                    options.push("ro");
                }
                json!({"destination": target, "type": "tmpfs", "source": "tmpfs", "options": options})
            }
        });
    }
    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
    ];
    namespaces.push(match &input.netns_path {
        Some(path) => json!({"type": "network", "path": path}),
        None => json!({"type": "network"}),
    });
    let mut resources = json!({
        "devices": [{"allow": false, "access": "rwm"}],
    });
    let limits = &spec.resources;
    if limits.limit_memory > 0 {
        resources["memory"] = json!({"limit": limits.limit_memory as i64});
    }
    if limits.limit_nano_cpus > 0 {
        resources["cpu"] = json!({
            "quota": cpu_quota(limits.limit_nano_cpus),
            "period": CPU_PERIOD_US,
        });
    }
    if limits.limit_pids > 0 {
        resources["pids"] = json!({"limit": limits.limit_pids as i64});
    }
    let config: Value = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {
                "uid": input.user.uid,
                "gid": input.user.gid,
                "additionalGids": input.user.additional_gids,
            },
            "args": args,
            "env": env,
            "cwd": cwd,
            "capabilities": {
                "bounding": caps, "effective": caps, "permitted": caps,
            },
            "rlimits": rlimits,
            "noNewPrivileges": true,
        },
        "root": {"path": input.rootfs, "readonly": spec.read_only},
        "annotations": spec.container_labels,
        "hostname": input.hostname,
        "mounts": mounts,
        "linux": {
            "cgroupsPath": format!("/shoal/{}", task.task_id),
            "resources": resources,
            "namespaces": namespaces,
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
            "sysctl": spec.sysctls,
        },
    });
    serde_json::from_value(config).map_err(|e| format!("building the runtime config: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::spec::{Resources, TaskSpec, TaskState};

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn image(entrypoint: &[&str], cmd: &[&str]) -> ImageConfig {
        ImageConfig {
            entrypoint: strings(entrypoint),
            cmd: strings(cmd),
            ..Default::default()
        }
    }

    fn task() -> Assignment {
        Assignment {
            task_id: "abcdefghijklmnopqrstuvwxyz".into(),
            service_id: "svc123".into(),
            service_name: "web".into(),
            slot: 4,
            spec: TaskSpec::default(),
            desired_state: TaskState::Running,
            node_hostname: "node-a".into(),
            node_id: String::new(),
            service_labels: Default::default(),
            secrets: vec![],
            configs: vec![],
            networks: vec![],
        }
    }

    #[test]
    fn args_merge_as_docker() {
        let img = image(&["/entry"], &["a", "b"]);
        assert_eq!(merge_args(&[], &[], &img).unwrap(), ["/entry", "a", "b"]);
        assert_eq!(
            merge_args(&[], &strings(&["x"]), &img).unwrap(),
            ["/entry", "x"]
        );
        assert_eq!(
            merge_args(&strings(&["/bin/sh"]), &[], &img).unwrap(),
            ["/bin/sh"],
            "a command drops the image's cmd"
        );
        assert_eq!(
            merge_args(&strings(&["/bin/sh"]), &strings(&["-c", "x"]), &img).unwrap(),
            ["/bin/sh", "-c", "x"]
        );
        let cmd_only = image(&[], &["/bin/true"]);
        assert_eq!(merge_args(&[], &[], &cmd_only).unwrap(), ["/bin/true"]);
        let err = merge_args(&[], &[], &image(&[], &[])).unwrap_err();
        assert_eq!(err, "no command specified");
    }

    #[test]
    fn env_merges_with_task_winning_by_key() {
        let env = merge_env(
            &strings(&["A=1", "PATH=/img", "B=2"]),
            &strings(&["B=3", "C=4", "NOVALUE"]),
            "h1",
        );
        assert_eq!(
            env,
            ["PATH=/img", "HOSTNAME=h1", "A=1", "B=3", "C=4", "NOVALUE="]
        );
        let env = merge_env(&[], &[], "h");
        assert_eq!(env[0], format!("PATH={DEFAULT_PATH}"));
    }

    #[test]
    fn overlay_tasks_resolve_through_the_embedded_server() {
        let plain = resolv_conf(&Default::default());
        assert_eq!(plain, "nameserver 127.0.0.11\noptions ndots:0\n");
        let dns = proto::spec::DnsConfig {
            nameservers: vec!["192.0.2.53".into()],
            search: vec!["corp.example".into()],
            options: vec!["ndots:2".into(), "timeout:1".into()],
        };
        let text = resolv_conf(&dns);
        assert_eq!(
            text,
            "nameserver 127.0.0.11\nsearch corp.example\noptions ndots:2 timeout:1\n"
        );
        assert!(
            !text.contains("192.0.2.53"),
            "forwarders stay out of resolv.conf"
        );
    }

    /// The runtime config of `t` with the default image, as JSON.
    fn config_of(t: &Assignment) -> Value {
        let image = ImageConfig::default();
        let input = BundleInput {
            task: t,
            image: &image,
            rootfs: Path::new("/tmp/rootfs"),
            hostname: "h",
            user: ResolvedUser::default(),
            mounts: Vec::new(),
            netns_path: None,
        };
        serde_json::to_value(build(&input).unwrap()).unwrap()
    }

    #[test]
    fn every_placeholder_docker_has_expands_with_or_without_spaces() {
        let mut t = task();
        t.node_id = "node9".into();
        t.service_labels = [
            ("tier".to_string(), "front".to_string()),
            ("a".into(), "b".into()),
        ]
        .into_iter()
        .collect();
        let cases = [
            ("{{ .Service.ID }}", "svc123"),
            ("{{.Service.Name}}", "web"),
            ("{{.Service.Labels}}", "map[a:b tier:front]"),
            ("{{ index .Service.Labels \"tier\" }}", "front"),
            ("{{index .Service.Labels \"nope\"}}", ""),
            ("{{.Node.ID}}", "node9"),
            ("{{ .Node.Hostname}}", "node-a"),
            ("{{.Task.ID }}", "abcdefghijklmnopqrstuvwxyz"),
            ("{{.Task.Name}}", "web.4.abcdefghijklmnopqrstuvwxyz"),
            ("{{.Task.Slot}}", "4"),
            ("x-{{.Nope}}-{{.Task.Slot}}", "x-{{.Nope}}-4"),
            ("unclosed {{.Task.Slot", "unclosed {{.Task.Slot"),
            ("no templates", "no templates"),
        ];
        for (template, want) in cases {
            assert_eq!(expand(template, &t), want, "{template}");
        }
        t.slot = 0;
        assert_eq!(
            expand("{{.Task.Name}}", &t),
            "web.node9.abcdefghijklmnopqrstuvwxyz"
        );
        // In the environment too.
        t.spec.env = vec!["WHO={{.Service.Name}}.{{ .Task.Slot }}".into()];
        t.spec.command = strings(&["true"]);
        let value = config_of(&t);
        let env = &value["process"]["env"];
        assert!(
            env.as_array().unwrap().contains(&Value::from("WHO=web.0")),
            "{env}"
        );
    }

    #[test]
    fn read_only_capabilities_sysctls_and_ulimits_reach_the_runtime_config() {
        assert_eq!(capabilities(&[], &[]).len(), DEFAULT_CAPABILITIES.len());
        let caps = capabilities(&["CAP_NET_ADMIN".into()], &["CAP_CHOWN".into()]);
        assert!(caps.contains(&"CAP_NET_ADMIN".to_string()));
        assert!(!caps.contains(&"CAP_CHOWN".to_string()));
        assert_eq!(
            capabilities(&["CAP_KILL".into()], &["ALL".into()]),
            ["CAP_KILL"]
        );
        assert_eq!(capabilities(&["ALL".into()], &[]).len(), 41);

        let mut t = task();
        t.spec.command = strings(&["true"]);
        t.spec.read_only = true;
        t.spec.cap_add = vec!["CAP_NET_ADMIN".into()];
        t.spec.sysctls = [("net.ipv4.ip_forward".to_string(), "1".to_string())]
            .into_iter()
            .collect();
        t.spec.ulimits = vec![
            proto::spec::Ulimit {
                name: "nofile".into(),
                soft: 1024,
                hard: 2048,
            },
            proto::spec::Ulimit {
                name: "core".into(),
                soft: -1,
                hard: -1,
            },
        ];
        let v = config_of(&t);
        assert_eq!(v["root"]["readonly"], true);
        assert_eq!(v["linux"]["sysctl"]["net.ipv4.ip_forward"], "1");
        let bounding = v["process"]["capabilities"]["bounding"].as_array().unwrap();
        assert!(bounding.contains(&Value::from("CAP_NET_ADMIN")));
        let rl = v["process"]["rlimits"].as_array().unwrap();
        assert_eq!(rl[0]["type"], "RLIMIT_NOFILE");
        assert_eq!(
            (rl[0]["soft"].as_u64(), rl[0]["hard"].as_u64()),
            (Some(1024), Some(2048))
        );
        assert_eq!(rl[1]["hard"].as_u64(), Some(u64::MAX));
    }

    /// `--container-label` as the runtime config's annotations; `--init` runs the process
    /// under the init.
    #[test]
    fn container_labels_and_init() {
        let mut t = task();
        t.spec.command = vec!["sh".into(), "-c".into(), "true".into()];
        t.spec.container_labels = [("team".to_string(), "web".to_string())]
            .into_iter()
            .collect();
        t.spec.init = true;
        let v = config_of(&t);
        assert_eq!(v["annotations"]["team"], "web");
        let args = v["process"]["args"].as_array().unwrap();
        assert_eq!(args[0], INIT_PATH);
        assert_eq!(args[1], "--");
        assert_eq!(args[2], "sh");
    }

    #[test]
    fn hostname_templates_expand() {
        let mut t = task();
        assert_eq!(hostname(&t), "abcdefghijkl");
        t.spec.hostname =
            "{{.Service.Name}}-{{.Task.Slot}}.{{.Node.Hostname}}.{{.Service.ID}}".into();
        assert_eq!(hostname(&t), "web-4.node-a.svc123");
        t.spec.hostname = "t-{{.Task.ID}}".into();
        assert_eq!(hostname(&t), "t-abcdefghijklmnopqrstuvwxyz");
    }

    #[test]
    fn cpu_quota_over_the_default_period() {
        assert_eq!(cpu_quota(500_000_000), 50_000);
        assert_eq!(cpu_quota(1_500_000_000), 150_000);
        assert_eq!(cpu_quota(1_000), 0);
    }

    #[test]
    fn signals_by_name_or_number() {
        assert_eq!(parse_signal("SIGINT"), Ok(2));
        assert_eq!(parse_signal("int"), Ok(2));
        assert_eq!(parse_signal("15"), Ok(15));
        assert_eq!(parse_signal("KILL"), Ok(9));
        assert!(parse_signal("NOPE").is_err());
        assert!(parse_signal("0").is_err());
    }

    #[test]
    fn users_resolve_from_the_image_files() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        std::fs::write(
            root.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nwww:x:33:33::/var/www:/bin/false\n",
        )
        .unwrap();
        std::fs::write(
            root.path().join("etc/group"),
            "root:x:0:\nwww:x:33:\nlog:x:4:www,other\nstaff:x:50:\n",
        )
        .unwrap();
        let r = |s: &str| resolve_user(s, root.path());
        assert_eq!(r("").unwrap(), ResolvedUser::default());
        assert_eq!(
            r("www").unwrap(),
            ResolvedUser {
                uid: 33,
                gid: 33,
                additional_gids: vec![4]
            }
        );
        assert_eq!(r("33:staff").unwrap().gid, 50);
        assert_eq!(r("www:7").unwrap().gid, 7);
        assert_eq!(
            r("1234").unwrap(),
            ResolvedUser {
                uid: 1234,
                gid: 0,
                additional_gids: vec![]
            }
        );
        assert_eq!(
            r("1234:5").unwrap(),
            ResolvedUser {
                uid: 1234,
                gid: 5,
                additional_gids: vec![]
            }
        );
        assert!(r("nobody")
            .unwrap_err()
            .contains("unable to find user nobody"));
        assert!(r("www:nogroup").unwrap_err().contains("nogroup"));
        assert_eq!(
            UserSpec::parse("a:b"),
            UserSpec {
                user: "a".into(),
                group: Some("b".into())
            }
        );
    }

    #[test]
    fn spec_carries_limits_namespaces_and_process() {
        let mut t = task();
        t.spec.command = strings(&["/bin/sh", "-c", "exit 3"]);
        t.spec.resources = Resources {
            limit_memory: 64 << 20,
            limit_nano_cpus: 500_000_000,
            limit_pids: 100,
            ..Default::default()
        };
        let img = ImageConfig::default();
        let input = BundleInput {
            task: &t,
            image: &img,
            rootfs: Path::new("/tmp/rootfs"),
            hostname: "h",
            user: ResolvedUser::default(),
            mounts: vec![MountPlan::Bind {
                source: "/src".into(),
                target: "/dst".into(),
                readonly: true,
            }],
            netns_path: Some("/run/netns/x".into()),
        };
        let spec = build(&input).unwrap();
        let value = serde_json::to_value(&spec).unwrap();
        let linux = &value["linux"];
        assert_eq!(linux["cgroupsPath"], format!("/shoal/{}", t.task_id));
        assert_eq!(linux["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(linux["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(linux["resources"]["cpu"]["period"], 100_000);
        assert_eq!(linux["resources"]["pids"]["limit"], 100);
        let netns = linux["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["type"] == "network")
            .unwrap();
        assert_eq!(netns["path"], "/run/netns/x");
        assert_eq!(value["process"]["args"][2], "exit 3");
        assert_eq!(value["process"]["noNewPrivileges"], true);
        assert_eq!(
            value["process"]["capabilities"]["bounding"]
                .as_array()
                .unwrap()
                .len(),
            14
        );
        let bind = value["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/dst")
            .unwrap();
        assert!(bind["options"]
            .as_array()
            .unwrap()
            .contains(&Value::from("ro")));
        let mut relative = t.clone();
        relative.spec.workdir = "relative".into();
        let input = BundleInput {
            task: &relative,
            ..input
        };
        assert!(build(&input).unwrap_err().contains("absolute path"));
    }
}
