//! `--publish` and `--publish-rm` in Docker's two syntaxes.

use proto::spec::{PortConfig, PortProtocol, PublishMode};

/// One `--publish` value: one port, or several for a range (`8080-8081:80-81`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published(pub Vec<PortConfig>);

/// A port pattern of `--publish-rm`: the fields given must all match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortMatch {
    pub published: Option<u16>,
    pub target: Option<u16>,
    pub protocol: PortProtocol,
    pub mode: Option<PublishMode>,
}

impl PortMatch {
    pub fn matches(&self, p: &PortConfig) -> bool {
        // A spec's published 0 is "any": the manager picked the port; then the target decides.
        let published_ok = match self.published {
            None => true,
            Some(x) => x == p.published_port || (p.published_port == 0 && self.target.is_some()),
        };
        self.protocol == p.protocol
            && published_ok
            && self.target.is_none_or(|t| t == p.target_port)
            && self.mode.is_none_or(|m| m == p.publish_mode)
    }
}

/// One `--publish-rm` value (several patterns for a range).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortMatches(pub Vec<PortMatch>);

/// `N` or `N-M` of the short syntax.
fn port_range(
    s: &str,
    what: &str,
    min: u16,
    bad: &dyn Fn(String) -> String,
) -> Result<(u16, u16), String> {
    let msg = || bad(format!("{what} port must be {min}-65535"));
    let num = |x: &str| -> Result<u16, String> {
        let x = x.trim();
        if x.is_empty() || !x.chars().all(|c| c.is_ascii_digit()) {
            return Err(msg());
        }
        match x.parse::<u32>() {
            Ok(n) if n >= u32::from(min) && n <= 65535 => Ok(n as u16),
            _ => Err(msg()),
        }
    };
    match s.split_once('-') {
        None => {
            let n = num(s)?;
            Ok((n, n))
        }
        Some((a, b)) => {
            let (a, b) = (num(a)?, num(b)?);
            if b < a {
                return Err(bad(format!("{what} port range {s} ends before it starts")));
            }
            Ok((a, b))
        }
    }
}

fn parse_protocol(p: &str, bad: &dyn Fn(String) -> String) -> Result<PortProtocol, String> {
    match p.trim().to_ascii_lowercase().as_str() {
        "tcp" | "" => Ok(PortProtocol::Tcp),
        "udp" => Ok(PortProtocol::Udp),
        "sctp" => Err(bad("protocol sctp is not supported: use tcp or udp".into())),
        other => Err(bad(format!("unknown protocol {other:?}: use tcp or udp"))),
    }
}

/// The ports a `--publish`/`--publish-rm` value names, fields left open where not given.
/// `need_target`: `--publish` (a target is required) rather than `--publish-rm` (published
/// alone will do).
fn parse_ports(s: &str, need_target: bool) -> Result<Vec<PortMatch>, String> {
    let t = s.trim();
    let bad = |why: String| format!("invalid publish {s:?}: {why}");
    if t.is_empty() {
        return Err(bad("empty value".into()));
    }
    if t.contains('=') {
        return parse_long_port(s, need_target).map(|m| vec![m]);
    }
    let (ports, proto) = match t.rsplit_once('/') {
        Some((ports, proto)) => (ports, parse_protocol(proto, &bad)?),
        None => (t, PortProtocol::Tcp),
    };
    let parts: Vec<&str> = ports.split(':').collect();
    let (published, target) = match parts.as_slice() {
        [target] => (None, *target),
        [published, target] => (Some(*published), *target),
        [_, _, _] => {
            return Err(bad(
                "a host IP is not supported (the port is published on every node): use PUBLISHED:TARGET".into(),
            ))
        }
        _ => {
            return Err(bad(
                "use [PUBLISHED:]TARGET[/PROTOCOL] or published=P,target=T".into(),
            ))
        }
    };
    let (t0, t1) = port_range(target, "target", 1, &bad)?;
    let n = t1 - t0;
    let pubs = match published {
        None => None,
        Some(p) => {
            let (p0, p1) = port_range(p, "published", 0, &bad)?;
            if p1 - p0 != n {
                return Err(bad(format!(
                    "published range {p} and target range {target} differ in length"
                )));
            }
            Some(p0)
        }
    };
    Ok((0..=n)
        .map(|i| PortMatch {
            published: pubs.map(|p| p + i),
            target: Some(t0 + i),
            protocol: proto,
            mode: None,
        })
        .collect())
}

/// `[mode=ingress|host,]published=P,target=T[,protocol=tcp|udp]`.
fn parse_long_port(s: &str, need_target: bool) -> Result<PortMatch, String> {
    let bad = |why: String| format!("invalid publish {s:?}: {why}");
    let mut m = PortMatch::default();
    for field in s.trim().split(',').map(str::trim).filter(|f| !f.is_empty()) {
        let Some((k, v)) = field.split_once('=') else {
            return Err(bad(format!("field {field:?} is not KEY=VALUE")));
        };
        let v = v.trim();
        match k.trim().to_ascii_lowercase().as_str() {
            "mode" => {
                m.mode = Some(match v {
                    "ingress" => PublishMode::Ingress,
                    "host" => PublishMode::Host,
                    _ => return Err(bad(format!("mode {v:?}: use ingress or host"))),
                })
            }
            "target" => {
                m.target = Some(port_range(v, "target", 1, &bad).and_then(|(a, b)| {
                    if a == b {
                        Ok(a)
                    } else {
                        Err(bad("target must be a single port".into()))
                    }
                })?)
            }
            "published" => {
                m.published = Some(port_range(v, "published", 0, &bad).and_then(|(a, b)| {
                    if a == b {
                        Ok(a)
                    } else {
                        Err(bad("published must be a single port".into()))
                    }
                })?)
            }
            "protocol" => m.protocol = parse_protocol(v, &bad)?,
            other => {
                return Err(bad(format!(
                    "unknown field {other:?}: use mode, published, target and protocol"
                )))
            }
        }
    }
    if need_target && m.target.is_none() {
        return Err(bad("target is required (target=PORT)".into()));
    }
    if m.target.is_none() && m.published.is_none() {
        return Err(bad("give target=PORT or published=PORT".into()));
    }
    Ok(m)
}

/// `--publish` in Docker's two syntaxes: `8080:80`, `8080:80/udp`, `80` (the manager picks the
/// published port), `8080-8081:80-81`, or `[mode=ingress|host,]published=P,target=T[,protocol=…]`.
pub fn parse_publish(s: &str) -> Result<Published, String> {
    let ms = parse_ports(s, true)?;
    Ok(Published(
        ms.into_iter()
            .map(|m| PortConfig {
                protocol: m.protocol,
                target_port: m.target.unwrap_or_default(),
                published_port: m.published.unwrap_or(0),
                publish_mode: m.mode.unwrap_or_default(),
            })
            .collect(),
    ))
}

/// `--publish-rm`: `80` (by target port), `8080:80`, `80/udp`, or the long syntax with any of
/// its fields (`published=8080`).
pub fn parse_publish_rm(s: &str) -> Result<PortMatches, String> {
    parse_ports(s, false).map(PortMatches)
}
