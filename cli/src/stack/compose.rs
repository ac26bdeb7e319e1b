//! Compose files → what a stack deploys: services as `service create` specs, and the
//! networks, secrets and configs they use. Read as `docker stack deploy` reads them
//! (compose file 3.x and the unversioned compose specification); every error names the
//! file, line, column and key; keys shoal does not know are warnings.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use clap::Parser;
use proto::spec::{FileRef, ServiceSpec};

use super::interp::{interpolate_tree, Vars};
use super::yaml::{self, At, Node, Value};
use crate::service::CreateArgs;

/// The label that names a stack's objects, as Docker's.
pub const NAMESPACE_LABEL: &str = "com.docker.stack.namespace";

/// Services one stack may hold (a bound on the work one file asks for).
pub const MAX_SERVICES: usize = 1000;

/// A service to deploy.
#[derive(Clone, Debug)]
pub struct ServiceDef {
    /// The name in the file.
    pub key: String,
    pub spec: ServiceSpec,
    /// Services (names in the file) to wait for, and whether they must be healthy.
    pub depends_on: Vec<(String, Condition)>,
    pub at: At,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Condition {
    Started,
    Healthy,
    Completed,
}

/// A network, secret or config the file declares.
#[derive(Clone, Debug, PartialEq)]
pub struct ObjectDef {
    pub key: String,
    /// The object's name in the cluster (`STACK_key`, `name:` or the external name).
    pub name: String,
    pub external: bool,
    pub labels: BTreeMap<String, String>,
    /// Networks: the driver options.
    pub driver: String,
    pub attachable: bool,
    pub internal: bool,
    pub subnet: String,
    /// Secrets and configs: the file the data comes from.
    pub file: Option<PathBuf>,
    pub at: At,
}

#[derive(Clone, Debug, Default)]
pub struct Stack {
    pub services: Vec<ServiceDef>,
    pub networks: Vec<ObjectDef>,
    pub secrets: Vec<ObjectDef>,
    pub configs: Vec<ObjectDef>,
    pub warnings: Vec<String>,
}

type R<T> = Result<T, String>;

fn err(n: &Node, path: &str, msg: impl std::fmt::Display) -> String {
    format!("{}: {path}: {msg}", n.at)
}

/// Reads, interpolates and merges `files` (later ones override earlier ones, as Docker
/// merges them), then converts them for stack `stack`.
pub fn load(files: &[PathBuf], stack: &str) -> R<Stack> {
    check_stack_name(stack)?;
    let first = files.first().ok_or("no compose file given (-c FILE)")?;
    let dir = first
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let vars = Vars::load(if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        &dir
    })?;
    let mut root: Option<Node> = None;
    for f in files {
        let text = read_file(f)?;
        let mut n = yaml::parse(&f.display().to_string(), &text)?;
        if !matches!(n.value, Value::Map(_)) {
            return Err(format!(
                "{}: a compose file is a mapping (services:, networks: …), not {}",
                n.at,
                n.value.kind()
            ));
        }
        interpolate_tree(&mut n, &vars, "")?;
        root = Some(match root {
            None => n,
            Some(mut base) => {
                merge(&mut base, n, "");
                base
            }
        });
    }
    let root = root.ok_or("no compose file given (-c FILE)")?;
    convert(&root, stack, &dir)
}

fn read_file(f: &Path) -> R<String> {
    let meta = std::fs::metadata(f).map_err(|e| format!("{}: {e}", f.display()))?;
    if meta.len() > yaml::MAX_FILE_BYTES {
        return Err(format!(
            "{}: {} bytes, more than a compose file may have ({})",
            f.display(),
            meta.len(),
            yaml::MAX_FILE_BYTES
        ));
    }
    std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))
}

/// A stack's name is the prefix of every object's name: Docker's rules for names.
pub fn check_stack_name(s: &str) -> R<()> {
    if s.is_empty()
        || s.len() > 63
        || !s.starts_with(|c: char| c.is_ascii_alphanumeric())
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
    {
        return Err(format!(
            "invalid stack name {s:?}: letters, digits, '_', '-' and '.', starting with a letter or digit, at most 63"
        ));
    }
    Ok(())
}

/// Keys whose lists a later file replaces rather than extends.
const REPLACED_LISTS: &[&str] = &[
    "command",
    "entrypoint",
    "test",
    "constraints",
    "preferences",
];

/// Merge `over` into `base`: mappings key by key, most lists appended (without doubles),
/// scalars and the lists of [`REPLACED_LISTS`] replaced.
fn merge(base: &mut Node, over: Node, key: &str) {
    match (&mut base.value, over.value) {
        (Value::Map(b), Value::Map(o)) => {
            for (k, v) in o {
                match b.iter_mut().find(|(bk, _)| *bk == k) {
                    Some((_, bv)) => merge(bv, v, &k),
                    None => b.push((k, v)),
                }
            }
        }
        (Value::Seq(b), Value::Seq(o)) if !REPLACED_LISTS.contains(&key) => {
            for v in o {
                if !b.iter().any(|x| x.value == v.value) {
                    b.push(v);
                }
            }
        }
        (_, v) => {
            base.value = v;
            base.at = over.at;
        }
    }
}

// ------------------------------------------------------------------------ value readers

fn entries<'a>(n: &'a Node, path: &str) -> R<&'a [(String, Node)]> {
    match &n.value {
        Value::Map(m) => Ok(m),
        Value::Null => Ok(&[]),
        v => Err(err(
            n,
            path,
            format!("expected a mapping, got {}", v.kind()),
        )),
    }
}

fn text(n: &Node, path: &str) -> R<String> {
    n.scalar().ok_or_else(|| {
        err(
            n,
            path,
            format!("expected a string, got {}", n.value.kind()),
        )
    })
}

fn uint(n: &Node, path: &str) -> R<u64> {
    let bad = || err(n, path, "expected an integer");
    match &n.value {
        Value::Int(i) => u64::try_from(*i).map_err(|_| bad()),
        Value::Str(s) => s.trim().parse().map_err(|_| bad()),
        _ => Err(bad()),
    }
}

fn boolean(n: &Node, path: &str) -> R<bool> {
    match &n.value {
        Value::Bool(b) => Ok(*b),
        Value::Str(s) if matches!(s.as_str(), "true" | "yes" | "on") => Ok(true),
        Value::Str(s) if matches!(s.as_str(), "false" | "no" | "off") => Ok(false),
        _ => Err(err(n, path, "expected true or false")),
    }
}

/// A list of strings; a single string is a list of one.
fn strings(n: &Node, path: &str) -> R<Vec<String>> {
    match &n.value {
        Value::Seq(items) => items
            .iter()
            .enumerate()
            .map(|(i, c)| text(c, &format!("{path}[{i}]")))
            .collect(),
        Value::Null => Ok(Vec::new()),
        _ => Ok(vec![text(n, path)?]),
    }
}

/// A command: a list as it is, a string split as a shell would (quotes kept together).
fn command(n: &Node, path: &str) -> R<Vec<String>> {
    match &n.value {
        Value::Seq(_) => strings(n, path),
        _ => split_shell(&text(n, path)?).map_err(|e| err(n, path, e)),
    }
}

fn split_shell(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err("unterminated quote".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => cur.extend(chars.next()),
                        Some(c) => cur.push(c),
                        None => return Err("unterminated quote".into()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                cur.extend(chars.next());
            }
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

/// `environment:`, `labels:` and the like: a mapping (`KEY: value`, a null value meaning
/// "no value") or a list of `KEY=value` / `KEY`.
fn key_values(n: &Node, path: &str) -> R<Vec<(String, Option<String>)>> {
    match &n.value {
        Value::Map(m) => m
            .iter()
            .map(|(k, v)| {
                Ok((
                    k.clone(),
                    match v.value {
                        Value::Null => None,
                        _ => Some(text(v, &format!("{path}.{k}"))?),
                    },
                ))
            })
            .collect(),
        Value::Seq(_) => Ok(strings(n, path)?
            .into_iter()
            .map(|s| match s.split_once('=') {
                Some((k, v)) => (k.to_string(), Some(v.to_string())),
                None => (s, None),
            })
            .collect()),
        Value::Null => Ok(Vec::new()),
        v => Err(err(
            n,
            path,
            format!("expected a mapping or a list, got {}", v.kind()),
        )),
    }
}

fn labels(n: &Node, path: &str) -> R<BTreeMap<String, String>> {
    Ok(key_values(n, path)?
        .into_iter()
        .map(|(k, v)| (k, v.unwrap_or_default()))
        .collect())
}

/// Warn about the keys of mapping `n` that are not in `known` (extension `x-` keys
/// excepted).
fn unknown_keys(n: &Node, path: &str, known: &[&str], warnings: &mut Vec<String>) {
    if let Value::Map(m) = &n.value {
        for (k, v) in m {
            if !known.contains(&k.as_str()) && !k.starts_with("x-") {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                warnings.push(format!("{}: {p}: unsupported key, ignored", v.at));
            }
        }
    }
}

// ------------------------------------------------------------------------ conversion

const TOP_KEYS: &[&str] = &[
    "version", "name", "services", "networks", "volumes", "secrets", "configs",
];
const SERVICE_KEYS: &[&str] = &[
    "image",
    "command",
    "entrypoint",
    "environment",
    "env_file",
    "ports",
    "networks",
    "volumes",
    "secrets",
    "configs",
    "healthcheck",
    "hostname",
    "user",
    "working_dir",
    "stop_grace_period",
    "stop_signal",
    "labels",
    "cap_add",
    "cap_drop",
    "read_only",
    "init",
    "ulimits",
    "sysctls",
    "extra_hosts",
    "dns",
    "dns_search",
    "dns_opt",
    "deploy",
    "depends_on",
    "tmpfs",
    "expose",
    "logging",
];
/// Keys `docker stack deploy` ignores (they belong to `docker compose`): a warning each.
const COMPOSE_ONLY: &[&str] = &["build", "container_name", "restart", "links", "privileged"];
const DEPLOY_KEYS: &[&str] = &[
    "mode",
    "replicas",
    "placement",
    "resources",
    "restart_policy",
    "update_config",
    "rollback_config",
    "endpoint_mode",
    "labels",
];

/// One `service create` flag (with its value), and the place in the file it came from.
struct Flags {
    args: Vec<(String, String, String, At)>,
}

impl Flags {
    fn add(&mut self, flag: &str, value: impl Into<String>, path: &str, n: &Node) {
        self.args.push((
            flag.to_string(),
            value.into(),
            path.to_string(),
            n.at.clone(),
        ));
    }
}

#[derive(Parser, Debug)]
#[command(name = "create", no_binary_name = true)]
struct CreateParse {
    #[command(flatten)]
    args: CreateArgs,
}

fn parse_create(argv: &[String]) -> Result<CreateArgs, clap::Error> {
    CreateParse::try_parse_from(argv).map(|p| p.args)
}

/// The first line of a flag parser's complaint, without clap's "error: " and usage.
fn clap_message(e: &clap::Error) -> String {
    let s = e.to_string();
    let line = s.lines().next().unwrap_or("invalid value").trim();
    line.strip_prefix("error: ").unwrap_or(line).to_string()
}

fn convert(root: &Node, stack: &str, dir: &Path) -> R<Stack> {
    let mut st = Stack::default();
    unknown_keys(root, "", TOP_KEYS, &mut st.warnings);
    let scoped = |k: &str| format!("{stack}_{k}");

    // Networks, secrets, configs: what services may refer to.
    let mut networks: BTreeMap<String, ObjectDef> = BTreeMap::new();
    if let Some(n) = root.get("networks") {
        for (k, v) in entries(n, "networks")? {
            let path = format!("networks.{k}");
            let def = object(v, &path, k, &scoped(k), dir, &mut st.warnings, true)?;
            networks.insert(k.clone(), def);
        }
    }
    let secrets = file_objects(root, "secrets", &scoped, dir, &mut st.warnings)?;
    let configs = file_objects(root, "configs", &scoped, dir, &mut st.warnings)?;
    let mut volumes: BTreeMap<String, VolumeDef> = BTreeMap::new();
    if let Some(n) = root.get("volumes") {
        for (k, v) in entries(n, "volumes")? {
            let path = format!("volumes.{k}");
            unknown_keys(
                v,
                &path,
                &["external", "name", "driver", "driver_opts", "labels"],
                &mut st.warnings,
            );
            let external = match v.get("external") {
                Some(e) => boolean(e, &format!("{path}.external"))?,
                None => false,
            };
            if let Some(d) = v.get("driver") {
                let d = text(d, &format!("{path}.driver"))?;
                if d != "local" {
                    return Err(err(
                        v,
                        &path,
                        format!("volume driver {d:?} is not supported (local only)"),
                    ));
                }
            }
            let name = match v.get("name") {
                Some(n) => text(n, &format!("{path}.name"))?,
                None if external => k.clone(),
                None => scoped(k),
            };
            // driver_opts (type, device, o): the local driver's options, with which each
            // node makes the volume at its first use (`--mount …,volume-opt=K=V`).
            let mut options = BTreeMap::new();
            if let Some(o) = v.get("driver_opts") {
                let op = format!("{path}.driver_opts");
                for (ok, ov) in entries(o, &op)? {
                    options.insert(ok.clone(), text(ov, &format!("{op}.{ok}"))?);
                }
            }
            volumes.insert(k.clone(), VolumeDef { name, options });
        }
    }

    let services = root
        .get("services")
        .ok_or_else(|| format!("{}: services: a stack needs at least one service", root.at))?;
    let list = entries(services, "services")?;
    if list.is_empty() {
        return Err(err(
            services,
            "services",
            "a stack needs at least one service",
        ));
    }
    if list.len() > MAX_SERVICES {
        return Err(err(
            services,
            "services",
            format!(
                "{} services, more than a stack may have ({MAX_SERVICES})",
                list.len()
            ),
        ));
    }
    let mut used_default_network = false;
    let names: BTreeSet<&str> = list.iter().map(|(k, _)| k.as_str()).collect();
    for (key, svc) in list {
        let path = format!("services.{key}");
        let ctx = Ctx {
            stack,
            dir,
            networks: &networks,
            secrets: &secrets,
            configs: &configs,
            volumes: &volumes,
        };
        let (def, default_net) = service(svc, key, &path, &ctx, &mut st.warnings)?;
        used_default_network |= default_net;
        for (d, _) in &def.depends_on {
            if !names.contains(d.as_str()) {
                return Err(err(
                    svc,
                    &format!("{path}.depends_on"),
                    format!("service {d:?} is not defined in the file"),
                ));
            }
        }
        st.services.push(def);
    }
    order_by_dependencies(&mut st.services)?;
    if used_default_network && !networks.contains_key("default") {
        networks.insert(
            "default".into(),
            ObjectDef {
                key: "default".into(),
                name: scoped("default"),
                external: false,
                labels: BTreeMap::new(),
                driver: "overlay".into(),
                attachable: false,
                internal: false,
                subnet: String::new(),
                file: None,
                at: services.at.clone(),
            },
        );
    }
    // Only what the services use is created, as Docker does.
    let used = |kind: &str, name: &str| {
        st.services.iter().any(|s| match kind {
            "networks" => s.spec.task.networks.iter().any(|n| n.target == name),
            "secrets" => s.spec.task.secrets.iter().any(|f| f.name == name),
            _ => s.spec.task.configs.iter().any(|f| f.name == name),
        })
    };
    st.networks = networks
        .into_values()
        .filter(|d| used("networks", &d.name))
        .collect();
    st.secrets = secrets
        .into_values()
        .filter(|d| used("secrets", &d.name))
        .collect();
    st.configs = configs
        .into_values()
        .filter(|d| used("configs", &d.name))
        .collect();
    Ok(st)
}

fn file_objects(
    root: &Node,
    kind: &str,
    scoped: &dyn Fn(&str) -> String,
    dir: &Path,
    warnings: &mut Vec<String>,
) -> R<BTreeMap<String, ObjectDef>> {
    let mut out = BTreeMap::new();
    if let Some(n) = root.get(kind) {
        for (k, v) in entries(n, kind)? {
            let path = format!("{kind}.{k}");
            let def = object(v, &path, k, &scoped(k), dir, warnings, false)?;
            if !def.external && def.file.is_none() {
                return Err(err(v, &path, "needs file: PATH or external: true"));
            }
            out.insert(k.clone(), def);
        }
    }
    Ok(out)
}

/// A top-level network (`network`) or secret/config.
fn object(
    v: &Node,
    path: &str,
    key: &str,
    scoped: &str,
    dir: &Path,
    warnings: &mut Vec<String>,
    network: bool,
) -> R<ObjectDef> {
    let known: &[&str] = if network {
        &[
            "driver",
            "external",
            "name",
            "labels",
            "attachable",
            "internal",
            "ipam",
            "driver_opts",
        ]
    } else {
        &["file", "external", "name", "labels"]
    };
    unknown_keys(v, path, known, warnings);
    let external = match v.get("external") {
        Some(Node {
            value: Value::Map(m),
            ..
        }) => {
            // Compose 3.x: `external: {name: x}`.
            if let Some((_, n)) = m.iter().find(|(k, _)| k == "name") {
                return Ok(ObjectDef {
                    key: key.into(),
                    name: text(n, &format!("{path}.external.name"))?,
                    external: true,
                    ..blank(v)
                });
            }
            true
        }
        Some(e) => boolean(e, &format!("{path}.external"))?,
        None => false,
    };
    let name = match v.get("name") {
        Some(n) => text(n, &format!("{path}.name"))?,
        None if external => key.to_string(),
        None => scoped.to_string(),
    };
    let mut d = ObjectDef {
        key: key.into(),
        name,
        external,
        ..blank(v)
    };
    if external {
        return Ok(d);
    }
    if let Some(l) = v.get("labels") {
        d.labels = labels(l, &format!("{path}.labels"))?;
    }
    if network {
        d.driver = match v.get("driver") {
            Some(n) => text(n, &format!("{path}.driver"))?,
            None => "overlay".into(),
        };
        if d.driver != "overlay" {
            return Err(err(
                v,
                &format!("{path}.driver"),
                format!(
                    "network driver {:?} is not supported in a stack (overlay only)",
                    d.driver
                ),
            ));
        }
        if let Some(a) = v.get("attachable") {
            d.attachable = boolean(a, &format!("{path}.attachable"))?;
        }
        if let Some(a) = v.get("internal") {
            d.internal = boolean(a, &format!("{path}.internal"))?;
        }
        if let Some(cfg) = v.get("ipam").and_then(|i| i.get("config")) {
            if let Value::Seq(items) = &cfg.value {
                if let Some(s) = items.first().and_then(|c| c.get("subnet")) {
                    d.subnet = text(s, &format!("{path}.ipam.config[0].subnet"))?;
                }
            }
        }
    } else if let Some(f) = v.get("file") {
        let p = PathBuf::from(text(f, &format!("{path}.file"))?);
        d.file = Some(if p.is_absolute() { p } else { dir.join(p) });
    }
    Ok(d)
}

fn blank(v: &Node) -> ObjectDef {
    ObjectDef {
        key: String::new(),
        name: String::new(),
        external: false,
        labels: BTreeMap::new(),
        driver: String::new(),
        attachable: false,
        internal: false,
        subnet: String::new(),
        file: None,
        at: v.at.clone(),
    }
}

struct Ctx<'a> {
    stack: &'a str,
    dir: &'a Path,
    networks: &'a BTreeMap<String, ObjectDef>,
    secrets: &'a BTreeMap<String, ObjectDef>,
    configs: &'a BTreeMap<String, ObjectDef>,
    volumes: &'a BTreeMap<String, VolumeDef>,
}

/// Duration values as compose writes them (`10s`, `1m30s`), as the flag takes them.
fn duration_flag(f: &mut Flags, flag: &str, n: &Node, path: &str) -> R<()> {
    let t = text(n, path)?;
    crate::units::parse_duration(&t).map_err(|e| err(n, path, e))?;
    f.add(flag, t, path, n);
    Ok(())
}

/// One service: its spec and whether it is on the stack's default network.
fn service(
    svc: &Node,
    key: &str,
    path: &str,
    ctx: &Ctx<'_>,
    warnings: &mut Vec<String>,
) -> R<(ServiceDef, bool)> {
    let all: Vec<&str> = SERVICE_KEYS.iter().chain(COMPOSE_ONLY).copied().collect();
    unknown_keys(svc, path, &all, warnings);
    for k in COMPOSE_ONLY {
        if let Some(v) = svc.get(k) {
            warnings.push(format!(
                "{}: {path}.{k}: not used by a stack (docker stack deploy ignores it too)",
                v.at
            ));
        }
    }
    entries(svc, path)?;
    let p = |k: &str| format!("{path}.{k}");
    let image = svc.get("image").ok_or_else(|| {
        err(
            svc,
            path,
            "image: is required (a stack does not build images)",
        )
    })?;
    let image = text(image, &p("image"))?;
    let mut f = Flags { args: Vec::new() };
    let scoped = |k: &str| format!("{}_{k}", ctx.stack);
    let mut labels_out: Vec<(String, String)> = Vec::new();

    // Simple values straight to their flags.
    for (k, flag) in [
        ("hostname", "--hostname"),
        ("user", "--user"),
        ("working_dir", "--workdir"),
        ("stop_signal", "--stop-signal"),
    ] {
        if let Some(v) = svc.get(k) {
            f.add(flag, text(v, &p(k))?, &p(k), v);
        }
    }
    if let Some(v) = svc.get("stop_grace_period") {
        duration_flag(&mut f, "--stop-grace-period", v, &p("stop_grace_period"))?;
    }
    if let Some(v) = svc.get("read_only") {
        if boolean(v, &p("read_only"))? {
            f.add("--read-only", "", &p("read_only"), v);
        }
    }
    if let Some(v) = svc.get("init") {
        if boolean(v, &p("init"))? {
            f.add("--init", "", &p("init"), v);
        }
    }
    for (k, flag) in [
        ("cap_add", "--cap-add"),
        ("cap_drop", "--cap-drop"),
        ("dns", "--dns"),
        ("dns_search", "--dns-search"),
        ("dns_opt", "--dns-option"),
        ("env_file", "--env-file"),
    ] {
        if let Some(v) = svc.get(k) {
            for (i, s) in strings(v, &p(k))?.into_iter().enumerate() {
                let s = if k == "env_file" && !Path::new(&s).is_absolute() {
                    ctx.dir.join(s).display().to_string()
                } else {
                    s
                };
                f.add(flag, s, &format!("{}[{i}]", p(k)), v);
            }
        }
    }
    if let Some(v) = svc.get("extra_hosts") {
        for (k, val) in key_values(v, &p("extra_hosts"))? {
            // `host:ip` in a list, `host: ip` or `host=ip` in a mapping.
            let entry = match val {
                Some(ip) => format!("{k}:{ip}"),
                None => k,
            };
            f.add("--host", entry, &p("extra_hosts"), v);
        }
    }
    if let Some(v) = svc.get("sysctls") {
        for (k, val) in key_values(v, &p("sysctls"))? {
            f.add(
                "--sysctl",
                format!("{k}={}", val.unwrap_or_default()),
                &p("sysctls"),
                v,
            );
        }
    }
    if let Some(v) = svc.get("ulimits") {
        for (k, u) in entries(v, &p("ulimits"))? {
            let up = format!("{}.{k}", p("ulimits"));
            let val = match &u.value {
                Value::Map(_) => {
                    let soft = u
                        .get("soft")
                        .ok_or_else(|| err(u, &up, "needs soft: and hard:"))?;
                    let hard = u
                        .get("hard")
                        .ok_or_else(|| err(u, &up, "needs soft: and hard:"))?;
                    format!("{k}={}:{}", text(soft, &up)?, text(hard, &up)?)
                }
                _ => format!("{k}={}", text(u, &up)?),
            };
            f.add("--ulimit", val, &up, u);
        }
    }
    if let Some(v) = svc.get("environment") {
        for (k, val) in key_values(v, &p("environment"))? {
            match val {
                Some(val) => f.add("--env", format!("{k}={val}"), &p("environment"), v),
                // A bare name takes this shell's value, as Docker does; unset: left out.
                None => {
                    if let Ok(val) = std::env::var(&k) {
                        f.add("--env", format!("{k}={val}"), &p("environment"), v)
                    }
                }
            }
        }
    }
    if let Some(v) = svc.get("labels") {
        // A service's `labels:` label its containers (`deploy.labels`: the service).
        for (k, val) in key_values(v, &p("labels"))? {
            f.add(
                "--container-label",
                format!("{k}={}", val.unwrap_or_default()),
                &p("labels"),
                v,
            );
        }
    }
    if let Some(v) = svc.get("ports") {
        let Value::Seq(items) = &v.value else {
            return Err(err(v, &p("ports"), "expected a list"));
        };
        for (i, it) in items.iter().enumerate() {
            let ip = format!("{}[{i}]", p("ports"));
            let val = match &it.value {
                Value::Map(_) => {
                    unknown_keys(
                        it,
                        &ip,
                        &["target", "published", "protocol", "mode"],
                        warnings,
                    );
                    let mut parts = Vec::new();
                    if let Some(m) = it.get("mode") {
                        parts.push(format!("mode={}", text(m, &ip)?));
                    }
                    if let Some(pb) = it.get("published") {
                        parts.push(format!("published={}", text(pb, &ip)?));
                    }
                    let t = it
                        .get("target")
                        .ok_or_else(|| err(it, &ip, "target: is required"))?;
                    parts.push(format!("target={}", text(t, &ip)?));
                    if let Some(pr) = it.get("protocol") {
                        parts.push(format!("protocol={}", text(pr, &ip)?));
                    }
                    parts.join(",")
                }
                _ => text(it, &ip)?,
            };
            f.add("--publish", val, &ip, it);
        }
    }
    if let Some(v) = svc.get("volumes") {
        let Value::Seq(items) = &v.value else {
            return Err(err(v, &p("volumes"), "expected a list"));
        };
        for (i, it) in items.iter().enumerate() {
            let ip = format!("{}[{i}]", p("volumes"));
            let m = mount(it, &ip, ctx, warnings)?;
            f.add("--mount", m, &ip, it);
        }
    }
    if let Some(v) = svc.get("tmpfs") {
        for (i, t) in strings(v, &p("tmpfs"))?.into_iter().enumerate() {
            f.add(
                "--mount",
                format!("type=tmpfs,target={t}"),
                &format!("{}[{i}]", p("tmpfs")),
                v,
            );
        }
    }
    let mut file_refs: [Vec<FileRef>; 2] = [Vec::new(), Vec::new()];
    for (slot, (k, defs)) in [("secrets", ctx.secrets), ("configs", ctx.configs)]
        .into_iter()
        .enumerate()
    {
        let Some(v) = svc.get(k) else { continue };
        let Value::Seq(items) = &v.value else {
            return Err(err(v, &p(k), "expected a list"));
        };
        for (i, it) in items.iter().enumerate() {
            let ip = format!("{}[{i}]", p(k));
            let mut owner = FileRef::default();
            let (source, target) = match &it.value {
                Value::Map(_) => {
                    unknown_keys(
                        it,
                        &ip,
                        &["source", "target", "uid", "gid", "mode"],
                        warnings,
                    );
                    for (k, slot) in [("uid", &mut owner.uid), ("gid", &mut owner.gid)] {
                        if let Some(x) = it.get(k) {
                            let v = uint(x, &format!("{ip}.{k}"))?;
                            *slot = Some(u32::try_from(v).map_err(|_| {
                                err(x, &format!("{ip}.{k}"), "expected a user or group id")
                            })?);
                        }
                    }
                    if let Some(x) = it.get("mode") {
                        owner.mode = Some(file_mode(x, &format!("{ip}.mode"))?);
                    }
                    let s = it
                        .get("source")
                        .ok_or_else(|| err(it, &ip, "source: is required"))?;
                    (
                        text(s, &ip)?,
                        it.get("target").map(|t| text(t, &ip)).transpose()?,
                    )
                }
                _ => (text(it, &ip)?, None),
            };
            let def = defs.get(&source).ok_or_else(|| {
                err(
                    it,
                    &ip,
                    format!(
                        "{} {source:?} is not defined under top-level {k}:",
                        &k[..k.len() - 1]
                    ),
                )
            })?;
            let target = target.unwrap_or_else(|| {
                if k == "secrets" {
                    source.clone()
                } else {
                    format!("/{source}")
                }
            });
            file_refs[slot].push(FileRef {
                name: def.name.clone(),
                target,
                ..owner
            });
        }
    }
    // Networks: listed, or the stack's default one.
    let mut on_default = false;
    let mut nets: Vec<(String, Vec<String>)> = Vec::new();
    match svc.get("networks") {
        None => {
            on_default = true;
            nets.push((scoped("default"), Vec::new()));
        }
        Some(v) => {
            let list: Vec<(String, Option<&Node>)> = match &v.value {
                Value::Map(m) => m.iter().map(|(k, n)| (k.clone(), Some(n))).collect(),
                _ => strings(v, &p("networks"))?
                    .into_iter()
                    .map(|s| (s, None))
                    .collect(),
            };
            for (name, opts) in list {
                let np = format!("{}.{name}", p("networks"));
                let target = match ctx.networks.get(&name) {
                    Some(d) => d.name.clone(),
                    None if name == "default" => {
                        on_default = true;
                        scoped("default")
                    }
                    None => {
                        return Err(err(
                            v,
                            &np,
                            format!("network {name:?} is not defined under top-level networks:"),
                        ))
                    }
                };
                let mut aliases = Vec::new();
                if let Some(o) = opts.filter(|o| !matches!(o.value, Value::Null)) {
                    unknown_keys(o, &np, &["aliases"], warnings);
                    if let Some(a) = o.get("aliases") {
                        aliases = strings(a, &format!("{np}.aliases"))?;
                    }
                }
                nets.push((target, aliases));
            }
        }
    }
    for (target, aliases) in &nets {
        let mut v = format!("name={target}");
        for a in aliases {
            v.push_str(&format!(",alias={a}"));
        }
        f.add(
            "--network",
            v,
            &p("networks"),
            svc.get("networks").unwrap_or(svc),
        );
    }
    // Health check.
    let mut health_test: Option<Vec<String>> = None;
    if let Some(h) = svc.get("healthcheck") {
        let hp = p("healthcheck");
        unknown_keys(
            h,
            &hp,
            &[
                "test",
                "interval",
                "timeout",
                "retries",
                "start_period",
                "disable",
                "start_interval",
            ],
            warnings,
        );
        if let Some(d) = h.get("disable") {
            if boolean(d, &format!("{hp}.disable"))? {
                f.add("--no-healthcheck", "", &hp, d);
            }
        }
        if let Some(t) = h.get("test") {
            let test = match &t.value {
                Value::Seq(_) => strings(t, &format!("{hp}.test"))?,
                _ => vec!["CMD-SHELL".to_string(), text(t, &format!("{hp}.test"))?],
            };
            match test.first().map(String::as_str) {
                Some("NONE") => f.add("--no-healthcheck", "", &hp, t),
                Some("CMD") | Some("CMD-SHELL") if test.len() > 1 => {
                    // The flag makes the check; the exact test is put in below.
                    f.add(
                        "--health-cmd",
                        test[1..].join(" "),
                        &format!("{hp}.test"),
                        t,
                    );
                    health_test = Some(test);
                }
                _ => {
                    return Err(err(
                        t,
                        &format!("{hp}.test"),
                        "expected [\"CMD\", …], [\"CMD-SHELL\", \"…\"], [\"NONE\"] or a string",
                    ))
                }
            }
        }
        for (k, flag) in [
            ("interval", "--health-interval"),
            ("timeout", "--health-timeout"),
            ("start_period", "--health-start-period"),
            ("start_interval", "--health-start-interval"),
        ] {
            if let Some(v) = h.get(k) {
                duration_flag(&mut f, flag, v, &format!("{hp}.{k}"))?;
            }
        }
        if let Some(v) = h.get("retries") {
            f.add(
                "--health-retries",
                uint(v, &format!("{hp}.retries"))?.to_string(),
                &hp,
                v,
            );
        }
    }
    if let Some(l) = svc.get("logging") {
        let lp = p("logging");
        unknown_keys(l, &lp, &["driver", "options"], warnings);
        if let Some(d) = l.get("driver") {
            f.add("--log-driver", text(d, &lp)?, &format!("{lp}.driver"), d);
        }
        if let Some(o) = l.get("options") {
            for (k, v) in key_values(o, &format!("{lp}.options"))? {
                f.add(
                    "--log-opt",
                    format!("{k}={}", v.unwrap_or_default()),
                    &format!("{lp}.options.{k}"),
                    o,
                );
            }
        }
    }
    // deploy:
    if let Some(d) = svc.get("deploy") {
        deploy(d, &p("deploy"), &mut f, &mut labels_out, warnings)?;
    }
    labels_out.push((NAMESPACE_LABEL.to_string(), ctx.stack.to_string()));
    for (k, v) in &labels_out {
        f.add("--label", format!("{k}={v}"), &p("deploy.labels"), svc);
    }
    let depends_on = depends(svc, &p("depends_on"))?;

    // Each flag on its own first, so that an error names its key and place; then all.
    let mut argv: Vec<String> = Vec::new();
    for (flag, value, fpath, at) in &f.args {
        let one: Vec<String> = if value.is_empty() && !flag_takes_value(flag) {
            vec![flag.clone()]
        } else {
            vec![format!("{flag}={value}")]
        };
        let mut test = one.clone();
        test.push(image.clone());
        if let Err(e) = parse_create(&test) {
            return Err(format!("{at}: {fpath}: {}", clap_message(&e)));
        }
        argv.extend(one);
    }
    argv.push(image.clone());
    let args = parse_create(&argv).map_err(|e| err(svc, path, clap_message(&e)))?;
    let mut spec = crate::service::build_spec(&args, scoped(key)).map_err(|e| err(svc, path, e))?;
    spec.task.secrets = std::mem::take(&mut file_refs[0]);
    spec.task.configs = std::mem::take(&mut file_refs[1]);
    if let Some(c) = svc.get("command") {
        spec.task.args = command(c, &p("command"))?;
    }
    if let Some(e) = svc.get("entrypoint") {
        spec.task.command = command(e, &p("entrypoint"))?;
    }
    if let (Some(test), Some(hc)) = (health_test, spec.task.healthcheck.as_mut()) {
        hc.test = test;
    }
    Ok((
        ServiceDef {
            key: key.to_string(),
            spec,
            depends_on,
            at: svc.at.clone(),
        },
        on_default,
    ))
}

/// A file mode as compose files write it: `0440` (octal, as YAML 1.1 and Docker read a
/// leading zero; the YAML reader hands it over as the number 440.0), `0o440`, `"0440"`, or
/// a plain number taken as it is (`288`).
fn file_mode(n: &Node, path: &str) -> R<u32> {
    let bad = || err(n, path, "expected an octal file mode, e.g. 0440");
    let m = match &n.value {
        Value::Int(i) => u32::try_from(*i).map_err(|_| bad())?,
        Value::Float(f) if *f >= 0.0 && f.fract() == 0.0 && *f < 1e6 => {
            u32::from_str_radix(&(*f as u64).to_string(), 8).map_err(|_| bad())?
        }
        Value::Str(s) => {
            let t = s.trim();
            let t = t.strip_prefix("0o").unwrap_or(t);
            u32::from_str_radix(t, 8).map_err(|_| bad())?
        }
        _ => return Err(bad()),
    };
    if m > 0o7777 {
        return Err(bad());
    }
    Ok(m)
}

fn flag_takes_value(flag: &str) -> bool {
    !matches!(flag, "--read-only" | "--no-healthcheck" | "--init")
}

/// A top-level `volumes:` entry.
struct VolumeDef {
    name: String,
    /// `driver_opts`.
    options: BTreeMap<String, String>,
}

/// A `volumes:` entry of a service as a `--mount` value.
fn mount(it: &Node, ip: &str, ctx: &Ctx<'_>, warnings: &mut Vec<String>) -> R<String> {
    // The volume's name, and its driver_opts as volume-opt fields (quoted: `o` may hold
    // commas).
    let volume_name = |src: &str| -> R<String> {
        match ctx.volumes.get(src) {
            Some(def) => {
                let mut v = def.name.clone();
                for (k, o) in &def.options {
                    v.push_str(&format!(",\"volume-opt={k}={}\"", o.replace('"', "\"\"")));
                }
                Ok(v)
            }
            None => Err(err(
                it,
                ip,
                format!("volume {src:?} is not defined under top-level volumes:"),
            )),
        }
    };
    let host_path = |src: &str| -> String {
        let p = Path::new(src);
        if p.is_absolute() {
            src.to_string()
        } else {
            ctx.dir.join(p).display().to_string()
        }
    };
    match &it.value {
        Value::Map(_) => {
            unknown_keys(
                it,
                ip,
                &[
                    "type",
                    "source",
                    "target",
                    "read_only",
                    "volume",
                    "bind",
                    "tmpfs",
                ],
                warnings,
            );
            let kind = match it.get("type") {
                Some(t) => text(t, ip)?,
                None => "volume".into(),
            };
            let target = text(
                it.get("target")
                    .ok_or_else(|| err(it, ip, "target: is required"))?,
                ip,
            )?;
            let mut parts = vec![format!("type={kind}")];
            match (kind.as_str(), it.get("source")) {
                ("volume", Some(s)) => {
                    parts.push(format!("source={}", volume_name(&text(s, ip)?)?))
                }
                ("bind", Some(s)) => parts.push(format!("source={}", host_path(&text(s, ip)?))),
                ("bind", None) => return Err(err(it, ip, "a bind mount needs source:")),
                ("tmpfs", _) | ("volume", None) => {}
                (k, _) => {
                    return Err(err(
                        it,
                        ip,
                        format!("mount type {k:?}: use volume, bind or tmpfs"),
                    ))
                }
            }
            parts.push(format!("target={target}"));
            if let Some(r) = it.get("read_only") {
                if boolean(r, ip)? {
                    parts.push("readonly".into());
                }
            }
            if let Some(size) = it.get("tmpfs").and_then(|t| t.get("size")) {
                warnings.push(format!(
                    "{}: {ip}.tmpfs.size: not supported yet, ignored",
                    size.at
                ));
            }
            Ok(parts.join(","))
        }
        _ => {
            let s = text(it, ip)?;
            let fields: Vec<&str> = s.split(':').collect();
            let (src, target, mode) = match fields.as_slice() {
                [t] => (None, *t, None),
                [s, t] => (Some(*s), *t, None),
                [s, t, m] => (Some(*s), *t, Some(*m)),
                _ => return Err(err(it, ip, "expected [SOURCE:]TARGET[:MODE]")),
            };
            let ro = match mode {
                None | Some("rw") => false,
                Some("ro") => true,
                Some(m) => return Err(err(it, ip, format!("unknown mode {m:?}: use ro or rw"))),
            };
            let mut v = match src {
                None => format!("type=volume,target={target}"),
                Some(s) if s.starts_with('/') || s.starts_with('.') || s.starts_with('~') => {
                    format!("type=bind,source={},target={target}", host_path(s))
                }
                Some(s) => format!("type=volume,source={},target={target}", volume_name(s)?),
            };
            if ro {
                v.push_str(",readonly");
            }
            Ok(v)
        }
    }
}

fn deploy(
    d: &Node,
    path: &str,
    f: &mut Flags,
    labels_out: &mut Vec<(String, String)>,
    warnings: &mut Vec<String>,
) -> R<()> {
    unknown_keys(d, path, DEPLOY_KEYS, warnings);
    let p = |k: &str| format!("{path}.{k}");
    if let Some(m) = d.get("mode") {
        f.add("--mode", text(m, &p("mode"))?, &p("mode"), m);
    }
    if let Some(r) = d.get("replicas") {
        f.add(
            "--replicas",
            uint(r, &p("replicas"))?.to_string(),
            &p("replicas"),
            r,
        );
    }
    if let Some(e) = d.get("endpoint_mode") {
        f.add(
            "--endpoint-mode",
            text(e, &p("endpoint_mode"))?,
            &p("endpoint_mode"),
            e,
        );
    }
    if let Some(l) = d.get("labels") {
        labels_out.extend(labels(l, &p("labels"))?);
    }
    if let Some(pl) = d.get("placement") {
        let pp = p("placement");
        unknown_keys(
            pl,
            &pp,
            &["constraints", "preferences", "max_replicas_per_node"],
            warnings,
        );
        if let Some(c) = pl.get("constraints") {
            for c in strings(c, &format!("{pp}.constraints"))? {
                f.add("--constraint", c, &format!("{pp}.constraints"), pl);
            }
        }
        if let Some(prefs) = pl.get("preferences") {
            let Value::Seq(items) = &prefs.value else {
                return Err(err(prefs, &format!("{pp}.preferences"), "expected a list"));
            };
            for it in items {
                let s = it.get("spread").ok_or_else(|| {
                    err(it, &format!("{pp}.preferences"), "expected spread: LABEL")
                })?;
                f.add(
                    "--placement-pref",
                    format!("spread={}", text(s, &pp)?),
                    &format!("{pp}.preferences"),
                    it,
                );
            }
        }
        if let Some(m) = pl.get("max_replicas_per_node") {
            let mp = format!("{pp}.max_replicas_per_node");
            f.add("--replicas-max-per-node", uint(m, &mp)?.to_string(), &mp, m);
        }
    }
    if let Some(r) = d.get("resources") {
        let rp = p("resources");
        unknown_keys(r, &rp, &["limits", "reservations"], warnings);
        for (k, cpu, mem, pids) in [
            (
                "limits",
                "--limit-cpu",
                "--limit-memory",
                Some("--limit-pids"),
            ),
            ("reservations", "--reserve-cpu", "--reserve-memory", None),
        ] {
            let Some(s) = r.get(k) else { continue };
            let sp = format!("{rp}.{k}");
            unknown_keys(
                s,
                &sp,
                &["cpus", "memory", "pids", "devices", "generic_resources"],
                warnings,
            );
            if let Some(c) = s.get("cpus") {
                f.add(cpu, text(c, &sp)?, &format!("{sp}.cpus"), c);
            }
            if let Some(m) = s.get("memory") {
                f.add(mem, text(m, &sp)?, &format!("{sp}.memory"), m);
            }
            if let (Some(pf), Some(pv)) = (pids, s.get("pids")) {
                f.add(
                    pf,
                    uint(pv, &format!("{sp}.pids"))?.to_string(),
                    &format!("{sp}.pids"),
                    pv,
                );
            }
        }
    }
    if let Some(r) = d.get("restart_policy") {
        let rp = p("restart_policy");
        unknown_keys(
            r,
            &rp,
            &["condition", "delay", "max_attempts", "window"],
            warnings,
        );
        if let Some(c) = r.get("condition") {
            f.add(
                "--restart-condition",
                text(c, &rp)?,
                &format!("{rp}.condition"),
                c,
            );
        }
        if let Some(v) = r.get("delay") {
            duration_flag(f, "--restart-delay", v, &format!("{rp}.delay"))?;
        }
        if let Some(v) = r.get("max_attempts") {
            f.add(
                "--restart-max-attempts",
                uint(v, &rp)?.to_string(),
                &format!("{rp}.max_attempts"),
                v,
            );
        }
        if let Some(v) = r.get("window") {
            duration_flag(f, "--restart-window", v, &format!("{rp}.window"))?;
        }
    }
    for (k, pre) in [
        ("update_config", "--update-"),
        ("rollback_config", "--rollback-"),
    ] {
        let Some(u) = d.get(k) else { continue };
        let up = p(k);
        unknown_keys(
            u,
            &up,
            &[
                "parallelism",
                "delay",
                "failure_action",
                "monitor",
                "max_failure_ratio",
                "order",
            ],
            warnings,
        );
        if let Some(v) = u.get("parallelism") {
            f.add(
                &format!("{pre}parallelism"),
                uint(v, &up)?.to_string(),
                &format!("{up}.parallelism"),
                v,
            );
        }
        for dk in ["delay", "monitor"] {
            if let Some(v) = u.get(dk) {
                duration_flag(f, &format!("{pre}{dk}"), v, &format!("{up}.{dk}"))?;
            }
        }
        for (sk, flag) in [
            ("failure_action", "failure-action"),
            ("max_failure_ratio", "max-failure-ratio"),
            ("order", "order"),
        ] {
            if let Some(v) = u.get(sk) {
                f.add(
                    &format!("{pre}{flag}"),
                    text(v, &up)?,
                    &format!("{up}.{sk}"),
                    v,
                );
            }
        }
    }
    Ok(())
}

fn depends(svc: &Node, path: &str) -> R<Vec<(String, Condition)>> {
    let Some(d) = svc.get("depends_on") else {
        return Ok(Vec::new());
    };
    match &d.value {
        Value::Map(m) => m
            .iter()
            .map(|(k, v)| {
                let cp = format!("{path}.{k}.condition");
                let cond = match v.get("condition").map(|c| text(c, &cp)).transpose()?.as_deref() {
                    None | Some("service_started") => Condition::Started,
                    Some("service_healthy") => Condition::Healthy,
                    Some("service_completed_successfully") => Condition::Completed,
                    Some(other) => {
                        return Err(err(
                            v,
                            &cp,
                            format!("unknown condition {other:?}: use service_started, service_healthy or service_completed_successfully"),
                        ))
                    }
                };
                Ok((k.clone(), cond))
            })
            .collect(),
        _ => Ok(strings(d, path)?
            .into_iter()
            .map(|s| (s, Condition::Started))
            .collect()),
    }
}

/// Services in an order where each comes after those it depends on; a cycle is an error.
fn order_by_dependencies(services: &mut Vec<ServiceDef>) -> R<()> {
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut out: Vec<ServiceDef> = Vec::with_capacity(services.len());
    let mut left = std::mem::take(services);
    while !left.is_empty() {
        let before = left.len();
        let (ready, rest): (Vec<_>, Vec<_>) = left
            .into_iter()
            .partition(|s| s.depends_on.iter().all(|(d, _)| done.contains(d)));
        for s in &ready {
            done.insert(s.key.clone());
        }
        out.extend(ready);
        left = rest;
        if left.len() == before {
            let names: Vec<&str> = left.iter().map(|s| s.key.as_str()).collect();
            return Err(format!(
                "{}: depends_on: a cycle among services {}",
                left[0].at,
                names.join(", ")
            ));
        }
    }
    *services = out;
    Ok(())
}

#[cfg(test)]
mod tests;
