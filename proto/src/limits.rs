//! Size limits: how large a request, a label or a spec field may be. A manager keeps every
//! object in memory, in the raft log and in each task made from it, so nothing a user sends
//! may be unbounded; the managers check these on every call (the CLI checks them too, only
//! to answer sooner).

use crate::spec::{ServiceSpec, TaskSpec};

/// Largest gRPC request the control API (TCP and the local socket) decodes: a service spec
/// (256 KiB), or a secret or config (500 KiB) with its labels, fit with room to spare.
pub const MAX_CONTROL_REQUEST_BYTES: usize = 1 << 20;

pub const MAX_LABELS: usize = 256;
pub const MAX_LABEL_KEY_BYTES: usize = 256;
pub const MAX_LABEL_VALUE_BYTES: usize = 4096;
/// All keys and values of one object's labels together.
pub const MAX_LABELS_TOTAL_BYTES: usize = 64 * 1024;

pub const MAX_ENV_ENTRIES: usize = 1024;
/// One `--env` entry, or one word of the command and its arguments.
pub const MAX_ENTRY_BYTES: usize = 32 * 1024;
/// Words of the command and its arguments together.
pub const MAX_ARGV_ENTRIES: usize = 1024;
/// Any other list of a spec: constraints, preferences, mounts, secrets, configs, networks,
/// aliases, published ports, DNS servers, search domains and options.
pub const MAX_LIST_ENTRIES: usize = 256;
/// Any other single text field: hostname, user, working directory, a constraint, a path.
pub const MAX_FIELD_BYTES: usize = 4096;

/// `labels` of `what` (e.g. "node label", "service label") within the limits: keys not empty,
/// without control characters, and no key, value, count or total over its limit.
pub fn check_labels<'a>(
    what: &str,
    labels: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<(), String> {
    let mut count = 0;
    let mut total = 0;
    for (k, v) in labels {
        count += 1;
        total += k.len() + v.len();
        if k.is_empty() {
            return Err(format!("invalid {what}: the key may not be empty"));
        }
        if k.chars().any(char::is_control) {
            return Err(format!(
                "invalid {what} key {:?}: control characters are not allowed",
                truncated(k)
            ));
        }
        if k.len() > MAX_LABEL_KEY_BYTES {
            return Err(format!(
                "{what} key {:?} is {} bytes; the limit is {MAX_LABEL_KEY_BYTES}",
                truncated(k),
                k.len()
            ));
        }
        if v.len() > MAX_LABEL_VALUE_BYTES {
            return Err(format!(
                "{what} {:?} has a value of {} bytes; the limit is {MAX_LABEL_VALUE_BYTES}",
                truncated(k),
                v.len()
            ));
        }
    }
    if count > MAX_LABELS {
        return Err(format!("{count} {what}s; the limit is {MAX_LABELS}"));
    }
    if total > MAX_LABELS_TOTAL_BYTES {
        return Err(format!(
            "{what}s take {total} bytes; the limit is {MAX_LABELS_TOTAL_BYTES} in all"
        ));
    }
    Ok(())
}

/// The first characters of a long value, for a message.
fn truncated(s: &str) -> String {
    const SHOWN: usize = 40;
    match s.char_indices().nth(SHOWN) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// One extra /etc/hosts line of a spec (`hosts`): `IP NAME [NAME…]`, the address IPv4 or
/// IPv6, each name letters, digits, '-', '_' and '.' (at most 253 bytes).
pub fn check_host_entry(entry: &str) -> Result<(), String> {
    let bad = |why: &str| {
        Err(format!(
            "invalid --host entry {:?}: {why}",
            truncated(entry)
        ))
    };
    let mut words = entry.split_whitespace();
    let Some(ip) = words.next() else {
        return bad("expected IP NAME");
    };
    if ip.parse::<std::net::IpAddr>().is_err() {
        return bad("not an IP address");
    }
    let names: Vec<&str> = words.collect();
    if names.is_empty() {
        return bad("expected IP NAME");
    }
    let name_ok = |n: &str| {
        n.len() <= 253
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    };
    if !names.iter().all(|n| name_ok(n)) {
        return bad("a host name may hold letters, digits, '-', '_' and '.'");
    }
    Ok(())
}

/// Docker's `--host HOST:IP` (also `HOST=IP`) as a spec's hosts line, `IP HOST`. The IP may
/// be IPv6 (`db:fe80::1`: the host is what comes before the first ':').
pub fn host_entry(flag: &str) -> Result<String, String> {
    let (host, ip) = flag
        .split_once(['=', ':'])
        .ok_or_else(|| format!("invalid --host {:?}: expected HOST:IP", truncated(flag)))?;
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(format!(
            "invalid --host {:?}: expected HOST:IP",
            truncated(flag)
        ));
    }
    let ip = ip.trim_start_matches('[').trim_end_matches(']');
    let entry = format!("{ip} {host}");
    check_host_entry(&entry)?;
    Ok(entry)
}

/// Linux capabilities by name (without `CAP_`), as `--cap-add`/`--cap-drop` take them.
pub const CAPABILITIES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// A capability as `--cap-add` takes it (`net_admin`, `CAP_NET_ADMIN`, `ALL`), in the
/// spec's form: `CAP_NET_ADMIN` or `ALL`.
pub fn capability(name: &str) -> Result<String, String> {
    let upper = name.trim().to_ascii_uppercase();
    if upper == "ALL" {
        return Ok(upper);
    }
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    if CAPABILITIES.contains(&bare) {
        Ok(format!("CAP_{bare}"))
    } else {
        Err(format!("unknown capability {:?}", truncated(name)))
    }
}

/// A `--sysctl` key Docker lets a container set: those of its own namespaces (IPC:
/// `kernel.msg*`, `kernel.sem`, `kernel.shm*`, `fs.mqueue.*`; network: `net.*`).
pub fn check_sysctl(key: &str, value: &str) -> Result<(), String> {
    const IPC: [&str; 8] = [
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    let key_ok = key.len() <= 256
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))
        && (IPC.contains(&key) || key.starts_with("fs.mqueue.") || key.starts_with("net."));
    if !key_ok {
        return Err(format!(
            "sysctl {:?} is not allowed: only namespaced ones (net.*, kernel.msg*, kernel.sem, kernel.shm*, fs.mqueue.*)",
            truncated(key)
        ));
    }
    if value.is_empty() || value.len() > 1024 || value.contains(['\n', '\0']) {
        return Err(format!(
            "invalid value for sysctl {key}: {:?}",
            truncated(value)
        ));
    }
    Ok(())
}

/// The resource limits `--ulimit` knows (RLIMIT_ names in lower case).
pub const ULIMITS: [&str; 16] = [
    "as",
    "core",
    "cpu",
    "data",
    "fsize",
    "locks",
    "memlock",
    "msgqueue",
    "nice",
    "nofile",
    "nproc",
    "rss",
    "rtprio",
    "rttime",
    "sigpending",
    "stack",
];

/// A container log is rotated past this many bytes, unless `--log-opt max-size` says
/// otherwise; this many files are kept (the live one included).
pub const DEFAULT_LOG_MAX_SIZE: u64 = 50 << 20;
pub const DEFAULT_LOG_MAX_FILE: u32 = 3;

/// The log drivers a task may name: the container's output in files on its node, or
/// nowhere.
pub const LOG_DRIVERS: &[&str] = &["json-file", "local", "none"];

/// A log size as Docker writes it: bytes, or with k, m, g (powers of 1024).
pub fn log_size(text: &str) -> Result<u64, String> {
    let t = text.trim().to_ascii_lowercase();
    let (num, mult) = match t.trim_end_matches('b').chars().last() {
        Some('k') => (&t[..t.trim_end_matches('b').len() - 1], 1u64 << 10),
        Some('m') => (&t[..t.trim_end_matches('b').len() - 1], 1 << 20),
        Some('g') => (&t[..t.trim_end_matches('b').len() - 1], 1 << 30),
        _ => (t.trim_end_matches('b'), 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|n| (1024..=(64 << 30)).contains(n))
        .ok_or_else(|| format!("invalid max-size {text:?}: use e.g. 10m or 1g (1k to 64g)"))
}

/// The rotation a log driver asks for: (bytes per file, files kept); `None` for `none`.
pub fn log_rotation(d: Option<&crate::spec::LogDriver>) -> Result<Option<(u64, u32)>, String> {
    let Some(d) = d else {
        return Ok(Some((DEFAULT_LOG_MAX_SIZE, DEFAULT_LOG_MAX_FILE)));
    };
    if !LOG_DRIVERS.contains(&d.name.as_str()) {
        return Err(format!(
            "--log-driver {:?} is not supported: use json-file, local or none",
            truncated(&d.name)
        ));
    }
    let mut size = DEFAULT_LOG_MAX_SIZE;
    let mut files = DEFAULT_LOG_MAX_FILE;
    for (k, v) in &d.options {
        match k.as_str() {
            "max-size" => size = log_size(v)?,
            "max-file" => {
                files = v
                    .trim()
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=100).contains(n))
                    .ok_or_else(|| format!("invalid max-file {:?}: use 1 to 100", truncated(v)))?
            }
            // Accepted and without effect here: the kept files are not compressed.
            "compress" => {}
            other => {
                return Err(format!(
                    "--log-opt {:?} is not supported: use max-size and max-file",
                    truncated(other)
                ))
            }
        }
    }
    Ok((d.name != "none").then_some((size, files)))
}

/// One `--ulimit` as Docker writes it: `NAME=SOFT[:HARD]` (-1: unlimited).
pub fn ulimit(text: &str) -> Result<crate::spec::Ulimit, String> {
    let bad = |why: &str| format!("invalid --ulimit {:?}: {why}", truncated(text));
    let (name, limits) = text
        .split_once('=')
        .ok_or_else(|| bad("expected NAME=SOFT[:HARD]"))?;
    let (soft, hard) = limits.split_once(':').unwrap_or((limits, limits));
    let num = |v: &str| {
        v.trim()
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= -1)
            .ok_or_else(|| bad("limits are whole numbers, -1 for unlimited"))
    };
    let u = crate::spec::Ulimit {
        name: name.trim().to_ascii_lowercase(),
        soft: num(soft)?,
        hard: num(hard)?,
    };
    check_ulimit(&u)?;
    Ok(u)
}

/// A spec's ulimit: a known name, soft not above hard (-1 above everything).
pub fn check_ulimit(u: &crate::spec::Ulimit) -> Result<(), String> {
    if !ULIMITS.contains(&u.name.as_str()) {
        return Err(format!("unknown ulimit {:?}", truncated(&u.name)));
    }
    let as_u = |v: i64| if v == -1 { u64::MAX } else { v.max(0) as u64 };
    if u.soft < -1 || u.hard < -1 || as_u(u.soft) > as_u(u.hard) {
        return Err(format!(
            "ulimit {}: soft limit {} is above hard limit {} (or below -1)",
            u.name, u.soft, u.hard
        ));
    }
    Ok(())
}

/// `--user` as Docker takes it: `user[:group]`, each a name or a numeric id.
pub fn check_user(user: &str) -> Result<(), String> {
    if user.is_empty() {
        return Ok(());
    }
    let bad = || {
        Err(format!(
            "invalid --user {:?}: expected USER[:GROUP], each a name or a numeric id",
            truncated(user)
        ))
    };
    if user.len() > MAX_FIELD_BYTES {
        return bad();
    }
    let mut parts = user.split(':');
    let (name, group) = (parts.next().unwrap_or_default(), parts.next());
    if parts.next().is_some() {
        return bad();
    }
    let part_ok = |p: &str| {
        !p.is_empty()
            && p.chars()
                .all(|c| !c.is_whitespace() && !c.is_control() && c != '/')
    };
    if !part_ok(name) || group.is_some_and(|g| !part_ok(g)) {
        return bad();
    }
    Ok(())
}

fn check_list(field: &str, n: usize, max: usize) -> Result<(), String> {
    if n > max {
        return Err(format!("{n} {field} entries; the limit is {max}"));
    }
    Ok(())
}

fn check_text(field: &str, s: &str, max: usize) -> Result<(), String> {
    if s.len() > max {
        return Err(format!(
            "{field} {:?} is {} bytes; the limit is {max}",
            truncated(s),
            s.len()
        ));
    }
    Ok(())
}

/// Every field of a service spec within its limits (the grammar of each field is checked
/// elsewhere).
pub fn check_service_spec(spec: &ServiceSpec) -> Result<(), String> {
    check_labels(
        "service label",
        spec.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    )?;
    check_task_spec(&spec.task)?;
    check_list("--publish", spec.endpoint.ports.len(), MAX_LIST_ENTRIES)
}

fn check_task_spec(t: &TaskSpec) -> Result<(), String> {
    check_list("--env", t.env.len(), MAX_ENV_ENTRIES)?;
    for e in &t.env {
        check_text("--env entry", e, MAX_ENTRY_BYTES)?;
    }
    check_list(
        "command and argument",
        t.command.len() + t.args.len(),
        MAX_ARGV_ENTRIES,
    )?;
    for a in t.command.iter().chain(&t.args) {
        check_text("command word", a, MAX_ENTRY_BYTES)?;
    }
    for (field, s) in [
        ("--hostname", &t.hostname),
        ("--user", &t.user),
        ("--workdir", &t.workdir),
        ("--stop-signal", &t.stop_signal),
    ] {
        check_text(field, s, MAX_FIELD_BYTES)?;
    }
    let lists: [(&str, Vec<&String>); 6] = [
        ("--constraint", t.placement.constraints.iter().collect()),
        ("--placement-pref", t.placement.preferences.iter().collect()),
        ("--dns", t.dns.nameservers.iter().collect()),
        ("--dns-search", t.dns.search.iter().collect()),
        ("--dns-option", t.dns.options.iter().collect()),
        (
            "--network alias",
            t.networks.iter().flat_map(|n| &n.aliases).collect(),
        ),
    ];
    for (field, items) in lists {
        check_list(field, items.len(), MAX_LIST_ENTRIES)?;
        for s in items {
            check_text(field, s, MAX_FIELD_BYTES)?;
        }
    }
    check_list("--mount", t.mounts.len(), MAX_LIST_ENTRIES)?;
    for m in &t.mounts {
        check_text("--mount source", &m.source, MAX_FIELD_BYTES)?;
        check_text("--mount target", &m.target, MAX_FIELD_BYTES)?;
    }
    for (field, refs) in [("--secret", &t.secrets), ("--config", &t.configs)] {
        check_list(field, refs.len(), MAX_LIST_ENTRIES)?;
        for r in refs {
            check_text(field, &r.name, MAX_FIELD_BYTES)?;
            check_text(field, &r.target, MAX_FIELD_BYTES)?;
            if let Some(m) = r.mode.filter(|m| *m > 0o7777) {
                return Err(format!(
                    "{field} {}: mode {m:o} is not a file mode (at most 7777)",
                    r.name
                ));
            }
        }
    }
    for (field, caps) in [("--cap-add", &t.cap_add), ("--cap-drop", &t.cap_drop)] {
        check_list(field, caps.len(), MAX_LIST_ENTRIES)?;
        for c in caps {
            if capability(c).as_deref() != Ok(c.as_str()) {
                return Err(format!("{field}: unknown capability {:?}", truncated(c)));
            }
        }
    }
    check_list("--sysctl", t.sysctls.len(), MAX_LIST_ENTRIES)?;
    for (k, v) in &t.sysctls {
        check_sysctl(k, v)?;
    }
    check_list("--ulimit", t.ulimits.len(), ULIMITS.len())?;
    for u in &t.ulimits {
        check_ulimit(u)?;
    }
    check_list(
        "--container-label",
        t.container_labels.len(),
        MAX_LIST_ENTRIES,
    )?;
    for (k, v) in &t.container_labels {
        check_text("--container-label key", k, MAX_FIELD_BYTES)?;
        check_text("--container-label value", v, MAX_FIELD_BYTES)?;
    }
    if let Some(d) = &t.log_driver {
        check_list("--log-opt", d.options.len(), MAX_LIST_ENTRIES)?;
        log_rotation(Some(d))?;
    }
    check_list("--host", t.hosts.len(), MAX_LIST_ENTRIES)?;
    for h in &t.hosts {
        check_host_entry(h)?;
    }
    check_list("--network", t.networks.len(), MAX_LIST_ENTRIES)?;
    for n in &t.networks {
        check_text("--network", &n.target, MAX_FIELD_BYTES)?;
    }
    if let Some(h) = &t.healthcheck {
        check_list("--health-cmd", h.test.len(), MAX_ARGV_ENTRIES)?;
        for w in &h.test {
            check_text("--health-cmd", w, MAX_ENTRY_BYTES)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_drivers_and_their_rotation() {
        let d = |name: &str, opts: &[(&str, &str)]| crate::spec::LogDriver {
            name: name.into(),
            options: opts
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        assert_eq!(log_rotation(None), Ok(Some((50 << 20, 3))));
        assert_eq!(
            log_rotation(Some(&d(
                "json-file",
                &[("max-size", "10m"), ("max-file", "5")]
            ))),
            Ok(Some((10 << 20, 5)))
        );
        assert_eq!(
            log_rotation(Some(&d("local", &[("max-size", "2048")]))),
            Ok(Some((2048, 3)))
        );
        assert_eq!(log_rotation(Some(&d("none", &[]))), Ok(None));
        for (name, opts) in [
            ("syslog", vec![]),
            ("json-file", vec![("max-size", "1")]),
            ("json-file", vec![("max-size", "100g")]),
            ("json-file", vec![("max-file", "0")]),
            ("json-file", vec![("labels", "a")]),
        ] {
            assert!(
                log_rotation(Some(&d(name, &opts))).is_err(),
                "{name} {opts:?}"
            );
        }
    }

    #[test]
    fn capabilities_sysctls_and_ulimits() {
        assert_eq!(capability("net_admin").unwrap(), "CAP_NET_ADMIN");
        assert_eq!(capability("CAP_SYS_TIME").unwrap(), "CAP_SYS_TIME");
        assert_eq!(capability("all").unwrap(), "ALL");
        assert!(capability("NOPE").is_err());
        assert!(check_sysctl("net.ipv4.ip_forward", "1").is_ok());
        assert!(check_sysctl("kernel.shmmax", "1024").is_ok());
        assert!(check_sysctl("fs.mqueue.msg_max", "20").is_ok());
        assert!(check_sysctl("kernel.hostname", "x").is_err());
        assert!(check_sysctl("vm.swappiness", "1").is_err());
        assert!(check_sysctl("net.core.somaxconn", "").is_err());
        let u = ulimit("nofile=1024:2048").unwrap();
        assert_eq!((u.name.as_str(), u.soft, u.hard), ("nofile", 1024, 2048));
        let u = ulimit("NPROC=-1").unwrap();
        assert_eq!((u.soft, u.hard), (-1, -1));
        assert_eq!(ulimit("core=0:-1").unwrap().hard, -1);
        for bad in [
            "nofile",
            "nofile=x",
            "nofile=2048:1024",
            "nope=1",
            "nofile=-2",
            "nofile=-1:5",
        ] {
            assert!(ulimit(bad).is_err(), "{bad}");
        }
        let mut t = TaskSpec {
            cap_add: vec!["net_admin".into()],
            ..Default::default()
        };
        assert!(check_task_spec(&t).unwrap_err().contains("--cap-add"));
        t.cap_add = vec!["CAP_NET_ADMIN".into()];
        assert!(check_task_spec(&t).is_ok());
    }

    #[test]
    fn extra_host_entries() {
        assert_eq!(host_entry("db:10.0.0.5").unwrap(), "10.0.0.5 db");
        assert_eq!(host_entry("db=10.0.0.5").unwrap(), "10.0.0.5 db");
        assert_eq!(host_entry("v6:fe80::1").unwrap(), "fe80::1 v6");
        assert_eq!(host_entry("v6:[::1]").unwrap(), "::1 v6");
        for bad in ["db", "db:nope", "d b:10.0.0.1", ":10.0.0.1", "db:"] {
            assert!(host_entry(bad).is_err(), "{bad}");
        }
        assert!(check_host_entry("10.0.0.5 db db.local").is_ok());
        for bad in ["", "10.0.0.5", "x db", "10.0.0.5 d/b"] {
            assert!(check_host_entry(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn labels_are_bounded() {
        let ok = [("zone", "a"), ("tier", "")];
        assert_eq!(check_labels("node label", ok), Ok(()));
        let big = "v".repeat(100 * 1024);
        let e = check_labels("node label", [("k", big.as_str())]).unwrap_err();
        assert!(e.contains("the limit is 4096"), "{e}");
        let key = "k".repeat(MAX_LABEL_KEY_BYTES + 1);
        assert!(check_labels("node label", [(key.as_str(), "")]).is_err());
        assert!(check_labels("node label", [("", "v")])
            .unwrap_err()
            .contains("may not be empty"));
        assert!(check_labels("node label", [("a\nb", "v")]).is_err());
        let keys: Vec<String> = (0..=MAX_LABELS).map(|i| format!("k{i}")).collect();
        let e = check_labels("service label", keys.iter().map(|k| (k.as_str(), ""))).unwrap_err();
        assert!(e.contains("the limit is 256"), "{e}");
        let value = "v".repeat(MAX_LABEL_VALUE_BYTES);
        let keys: Vec<String> = (0..20).map(|i| format!("k{i}")).collect();
        let e = check_labels(
            "service label",
            keys.iter().map(|k| (k.as_str(), value.as_str())),
        )
        .unwrap_err();
        assert!(e.contains("in all"), "{e}");
    }

    #[test]
    fn user_is_user_and_optional_group() {
        for ok in [
            "",
            "root",
            "1000",
            "1000:1000",
            "www-data:adm",
            "nobody:65534",
        ] {
            assert_eq!(check_user(ok), Ok(()), "{ok:?}");
        }
        for bad in ["root:root:root", ":root", "root:", "a b", "a:b:", "x/y"] {
            let e = check_user(bad).unwrap_err();
            assert!(e.starts_with("invalid --user"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn spec_fields_are_bounded() {
        let mut spec = ServiceSpec {
            name: "web".into(),
            labels: Default::default(),
            mode: crate::spec::ServiceMode::Replicated { replicas: 1 },
            task: TaskSpec {
                image: "busybox".into(),
                ..Default::default()
            },
            update: Default::default(),
            rollback: Default::default(),
            endpoint: Default::default(),
        };
        assert_eq!(check_service_spec(&spec), Ok(()));
        spec.task.env = vec!["A=1".into(); MAX_ENV_ENTRIES + 1];
        assert!(check_service_spec(&spec).unwrap_err().contains("--env"));
        spec.task.env = vec![format!("A={}", "x".repeat(MAX_ENTRY_BYTES))];
        assert!(check_service_spec(&spec)
            .unwrap_err()
            .contains("--env entry"));
        spec.task.env.clear();
        spec.task.placement.constraints = vec!["node.role==worker".into(); MAX_LIST_ENTRIES + 1];
        assert!(check_service_spec(&spec)
            .unwrap_err()
            .contains("--constraint"));
        spec.task.placement.constraints.clear();
        spec.labels
            .insert("k".into(), "v".repeat(MAX_LABEL_VALUE_BYTES + 1));
        assert!(check_service_spec(&spec)
            .unwrap_err()
            .contains("service label"));
    }
}
