//! The value parsers of the service flags: modes, policies, mounts, networks, DNS.

use proto::spec::{
    EndpointMode, FailureAction, FileRef, Mount, MountKind, NetworkAttachmentConfig,
    RestartCondition, UpdateOrder,
};

use super::flags::ModeFlag;

pub fn parse_mode(s: &str) -> Result<ModeFlag, String> {
    match s {
        "replicated" => Ok(ModeFlag::Replicated),
        "global" => Ok(ModeFlag::Global),
        "replicated-job" => Ok(ModeFlag::ReplicatedJob),
        "global-job" => Ok(ModeFlag::GlobalJob),
        _ => Err(format!(
            "invalid mode {s:?}: use replicated, global, replicated-job or global-job"
        )),
    }
}

pub fn parse_restart_condition(s: &str) -> Result<RestartCondition, String> {
    match s {
        "none" => Ok(RestartCondition::None),
        "on-failure" => Ok(RestartCondition::OnFailure),
        "any" => Ok(RestartCondition::Any),
        _ => Err(format!(
            "invalid restart condition {s:?}: use none, on-failure or any"
        )),
    }
}

pub fn parse_order(s: &str) -> Result<UpdateOrder, String> {
    match s {
        "stop-first" => Ok(UpdateOrder::StopFirst),
        "start-first" => Ok(UpdateOrder::StartFirst),
        _ => Err(format!(
            "invalid order {s:?}: use stop-first or start-first"
        )),
    }
}

pub fn parse_update_failure_action(s: &str) -> Result<FailureAction, String> {
    match s {
        "pause" => Ok(FailureAction::Pause),
        "continue" => Ok(FailureAction::Continue),
        "rollback" => Ok(FailureAction::Rollback),
        _ => Err(format!(
            "invalid failure action {s:?}: use pause, continue or rollback"
        )),
    }
}

pub fn parse_rollback_failure_action(s: &str) -> Result<FailureAction, String> {
    match s {
        "pause" => Ok(FailureAction::Pause),
        "continue" => Ok(FailureAction::Continue),
        _ => Err(format!(
            "invalid failure action {s:?}: use pause or continue"
        )),
    }
}

pub fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err(format!("invalid ratio {s:?}: use a number between 0 and 1")),
    }
}

/// CPUs as a decimal number ("0.5", "2") → nano-CPUs.
pub fn parse_cpu(s: &str) -> Result<u64, String> {
    let bad = || format!("invalid CPU value {s:?}: use e.g. 0.5 or 2");
    let f: f64 = s.trim().parse().map_err(|_| bad())?;
    if !f.is_finite() || !(0.0..=1e9).contains(&f) {
        return Err(bad());
    }
    Ok((f * 1e9).round() as u64)
}

pub(super) fn parse_label(flag: &str, s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').unwrap_or((s, ""));
    if k.trim().is_empty() {
        return Err(format!(
            "invalid argument {s:?} for \"{flag}\" flag: empty key"
        ));
    }
    Ok((k.to_string(), v.to_string()))
}

pub(super) fn env_key(e: &str) -> &str {
    e.split_once('=').map(|(k, _)| k).unwrap_or(e)
}

pub(super) fn check_env(flag: &str, e: &str) -> Result<(), String> {
    if env_key(e).trim().is_empty() {
        return Err(format!(
            "invalid argument {e:?} for \"{flag}\" flag: empty variable name"
        ));
    }
    Ok(())
}

/// The comma-separated fields of a flag's value, read as CSV as Docker does: a field in
/// double quotes may hold commas (`"volume-opt=o=size=1m,uid=1000"`), `""` is a quote.
fn csv_fields(s: &str) -> Result<Vec<String>, String> {
    let mut out = vec![String::new()];
    let mut quoted = false;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        let field = out.last_mut().expect("never empty");
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(String::new()),
            c => field.push(c),
        }
    }
    if quoted {
        return Err(format!("invalid value {s:?}: a quote is not closed"));
    }
    Ok(out)
}

/// `--mount type=bind|volume|tmpfs,source=…,target=…[,readonly][,volume-opt=K=V…]`, Docker's
/// syntax.
pub fn parse_mount(s: &str) -> Result<Mount, String> {
    let mut m = Mount::default();
    let mut target = None;
    let mut volume_keys = None;
    for part in csv_fields(s)?
        .iter()
        .map(|p| p.trim())
        .filter(|p| !p.is_empty())
    {
        let (k, v) = match part.split_once('=') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v.trim())),
            None => (part.to_ascii_lowercase(), None),
        };
        match (k.as_str(), v) {
            ("type", Some(v)) => {
                m.kind = match v {
                    "bind" => MountKind::Bind,
                    "volume" => MountKind::Volume,
                    "tmpfs" => MountKind::Tmpfs,
                    other => {
                        return Err(format!(
                            "invalid mount type \"{other}\": expected bind, volume or tmpfs"
                        ))
                    }
                }
            }
            ("source" | "src", Some(v)) => m.source = v.to_string(),
            ("target" | "dst" | "destination", Some(v)) => target = Some(v.to_string()),
            ("readonly" | "ro", None) => m.readonly = true,
            ("readonly" | "ro", Some(v)) => {
                m.readonly = match v {
                    "1" | "true" => true,
                    "0" | "false" => false,
                    _ => return Err(format!("invalid value for {k}: {v}")),
                }
            }
            // Volumes are the node's local ones: Docker's default driver, named or not.
            ("volume-driver", Some("local")) => {}
            ("volume-driver", Some(d)) => {
                return Err(format!(
                    "volume driver \"{d}\" is not supported: volumes are local to their node (volume-driver=local)"
                ))
            }
            ("volume-nocopy", _) => {}
            // `volume-opt=type=tmpfs`, `volume-opt=o=size=10m,uid=1000` (quoted, as Docker's
            // CSV reading has it, when the value holds commas).
            ("volume-opt", Some(opt)) => {
                let (ok, ov) = opt.split_once('=').ok_or_else(|| {
                    format!("invalid volume-opt {opt:?}: use volume-opt=KEY=VALUE")
                })?;
                m.volume_options.insert(ok.to_string(), ov.to_string());
            }
            _ => return Err(format!("unexpected key '{k}' in '{part}'")),
        }
        if k.starts_with("volume-") {
            volume_keys.get_or_insert(k);
        }
    }
    if let Some(k) = volume_keys.filter(|_| m.kind != MountKind::Volume) {
        return Err(format!(
            "cannot mix '{k}' options with mount type '{}'",
            super::render::kebab(&m.kind)
        ));
    }
    if let Some(e) = m.volume_options_error() {
        return Err(e);
    }
    m.target = target.ok_or_else(|| "target is required".to_string())?;
    if !m.target.starts_with('/') {
        return Err(format!(
            "invalid mount target \"{}\": must be an absolute path",
            m.target
        ));
    }
    match m.kind {
        MountKind::Bind if !m.source.starts_with('/') => Err(
            "invalid mount config for type \"bind\": source must be an absolute host path".into(),
        ),
        MountKind::Tmpfs if !m.source.is_empty() => {
            Err("invalid mount config for type \"tmpfs\": source must not be specified".into())
        }
        MountKind::Volume if m.source.contains('/') => Err(format!(
            "invalid volume name \"{}\": a volume name cannot contain '/'",
            m.source
        )),
        _ => Ok(m),
    }
}

pub fn parse_secret_ref(s: &str) -> Result<FileRef, String> {
    crate::secret::parse_file_ref("--secret", s)
}

pub fn parse_config_ref(s: &str) -> Result<FileRef, String> {
    crate::secret::parse_file_ref("--config", s)
}

/// `--endpoint-mode vip|dnsrr`.
pub fn parse_endpoint_mode(s: &str) -> Result<EndpointMode, String> {
    match s {
        "vip" => Ok(EndpointMode::Vip),
        "dnsrr" => Ok(EndpointMode::Dnsrr),
        _ => Err(format!("invalid endpoint mode {s:?}: use vip or dnsrr")),
    }
}

/// `--network NAME` or `--network name=NAME,alias=A[,alias=B]`.
pub fn parse_network(s: &str) -> Result<NetworkAttachmentConfig, String> {
    let t = s.trim();
    let usage = "use NAME or name=NAME,alias=ALIAS";
    if t.is_empty() {
        return Err(format!("invalid network {s:?}: {usage}"));
    }
    if !t.contains('=') {
        if t.contains(',') {
            return Err(format!("invalid network {s:?}: {usage}"));
        }
        return Ok(NetworkAttachmentConfig {
            target: t.to_string(),
            aliases: Vec::new(),
        });
    }
    let mut n = NetworkAttachmentConfig::default();
    for field in t.split(',').map(str::trim) {
        let Some((k, v)) = field.split_once('=') else {
            return Err(format!(
                "invalid network {s:?}: field {field:?} is not KEY=VALUE; {usage}"
            ));
        };
        let v = v.trim();
        match k.trim().to_ascii_lowercase().as_str() {
            "name" | "target" => n.target = v.to_string(),
            "alias" => {
                if v.is_empty() {
                    return Err(format!("invalid network {s:?}: empty alias"));
                }
                if !n.aliases.iter().any(|a| a == v) {
                    n.aliases.push(v.to_string());
                }
            }
            "driver-opt" => {
                return Err(format!(
                    "invalid network {s:?}: driver-opt is not supported"
                ))
            }
            other => {
                return Err(format!(
                    "invalid network {s:?}: unknown field {other:?}; {usage}"
                ))
            }
        }
    }
    if n.target.is_empty() {
        return Err(format!("invalid network {s:?}: name is required; {usage}"));
    }
    Ok(n)
}

/// `--dns`: an IPv4 or IPv6 address.
pub fn parse_dns_server(s: &str) -> Result<String, String> {
    s.trim()
        .parse::<std::net::IpAddr>()
        .map(|ip| ip.to_string())
        .map_err(|_| format!("invalid DNS server {s:?}: use an IP address such as 10.0.0.2"))
}

/// `--dns-search`: a domain name (or `.` for none).
pub fn parse_dns_search(s: &str) -> Result<String, String> {
    let t = s.trim();
    if t == "." {
        return Ok(t.to_string());
    }
    let d = t.strip_suffix('.').unwrap_or(t);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if d.is_empty()
        || d.len() > 253
        || !d.split('.').all(label_ok)
        || !d.chars().any(|c| c.is_ascii_alphabetic())
    {
        return Err(format!(
            "invalid DNS search domain {s:?}: use a domain name such as example.com"
        ));
    }
    Ok(t.to_string())
}

/// `--dns-option`: a resolv.conf option such as `ndots:2` or `rotate`.
pub fn parse_dns_option(s: &str) -> Result<String, String> {
    let t = s.trim();
    if t.is_empty() || t.contains(char::is_whitespace) {
        return Err(format!(
            "invalid DNS option {s:?}: use one resolv.conf option such as ndots:2"
        ));
    }
    Ok(t.to_string())
}

/// `S=N` of `service scale`.
pub fn parse_scale(s: &str) -> Result<(String, u64), String> {
    match s.split_once('=') {
        Some((name, n)) if !name.is_empty() => n
            .parse::<u64>()
            .map(|n| (name.to_string(), n))
            .map_err(|_| format!("invalid replicas value {n:?} in {s:?}: use a number")),
        _ => Err(format!(
            "invalid scale specifier {s:?}: use SERVICE=REPLICAS"
        )),
    }
}
