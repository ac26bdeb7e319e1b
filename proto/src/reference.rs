//! Image references as Docker reads them: the distribution reference grammar, checked by
//! the managers before a service is stored, with Docker's error messages.
//!
//! ```text
//!  reference   := name [ ":" tag ] [ "@" digest ]
//!  name        := [ domain "/" ] path-component *( "/" path-component )   (≤ 255 chars)
//!  domain      := host [ ":" port ]      host: dns labels (any case) | "[" ipv6 "]"
//!  path-comp.  := [a-z0-9]+ *( separator [a-z0-9]+ )   separator: "." | "_" | "__" | "-"+
//!  tag         := [\w][\w.-]{0,127}
//!  digest      := algorithm ":" hex      sha256: 64, sha384: 96, sha512: 128 lower-case hex
//! ```
//!
//! Names are checked as Docker normalises them (`busybox` is `docker.io/library/busybox`),
//! so the length limit and the messages match what `docker` says for the same input.

use std::fmt;

/// The longest name (domain and path) a reference may have.
pub const NAME_TOTAL_LENGTH_MAX: usize = 255;
const TAG_MAX: usize = 128;
const DEFAULT_DOMAIN: &str = "docker.io";
const LEGACY_DEFAULT_DOMAIN: &str = "index.docker.io";

/// Why a reference was refused; `Display` is Docker's wording.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReferenceError {
    /// Not in the grammar at all (spaces, stray characters, an empty tag, …).
    InvalidFormat,
    /// Upper case in the repository path, named as normalised (`library/Foo`).
    Uppercase(String),
    /// Upper case somewhere the grammar allows none, outside the path checked above.
    ContainsUppercase,
    NameEmpty,
    NameTooLong,
    /// 64 hex digits alone look like an image id, not a name.
    HexName(String),
    DigestUnsupported,
    DigestLength,
    DigestFormat,
}

impl fmt::Display for ReferenceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReferenceError::InvalidFormat => f.write_str("invalid reference format"),
            ReferenceError::Uppercase(repo) => write!(
                f,
                "invalid reference format: repository name ({repo}) must be lowercase"
            ),
            ReferenceError::ContainsUppercase => {
                f.write_str("invalid reference format: repository name must be lowercase")
            }
            ReferenceError::NameEmpty => {
                f.write_str("invalid reference format: repository name must have at least one component")
            }
            ReferenceError::NameTooLong => write!(
                f,
                "invalid reference format: repository name must not be more than {NAME_TOTAL_LENGTH_MAX} characters"
            ),
            ReferenceError::HexName(s) => write!(
                f,
                "invalid repository name ({s}), cannot specify 64-byte hexadecimal strings"
            ),
            ReferenceError::DigestUnsupported => f.write_str("unsupported digest algorithm"),
            ReferenceError::DigestLength => f.write_str("invalid checksum digest length"),
            ReferenceError::DigestFormat => f.write_str("invalid checksum digest format"),
        }
    }
}

impl std::error::Error for ReferenceError {}

/// A reference split into its parts (as written; the name is not normalised).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference<'a> {
    pub name: &'a str,
    pub tag: Option<&'a str>,
    pub digest: Option<&'a str>,
}

/// Check `s` as `docker pull` / `docker service create` would (ParseNormalizedNamed).
pub fn parse_normalized(s: &str) -> Result<(), ReferenceError> {
    if s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(ReferenceError::HexName(s.to_string()));
    }
    let (domain, remainder) = split_docker_domain(s);
    let remote = remainder.split(':').next().unwrap_or_default();
    if remote.to_lowercase() != remote {
        return Err(ReferenceError::Uppercase(remote.to_string()));
    }
    parse(&format!("{domain}/{remainder}")).map(|_| ())
}

/// Docker's default registry and `library/` for names without a domain.
fn split_docker_domain(name: &str) -> (String, String) {
    let (mut domain, mut remainder) = match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.to_lowercase() != first =>
        {
            (first.to_string(), rest.to_string())
        }
        _ => (DEFAULT_DOMAIN.to_string(), name.to_string()),
    };
    if domain == LEGACY_DEFAULT_DOMAIN {
        domain = DEFAULT_DOMAIN.to_string();
    }
    if domain == DEFAULT_DOMAIN && !remainder.contains('/') {
        remainder = format!("library/{remainder}");
    }
    (domain, remainder)
}

/// The reference grammar alone (distribution's `Parse`), without normalisation.
pub fn parse(s: &str) -> Result<Reference<'_>, ReferenceError> {
    let Some(r) = split(s) else {
        if s.is_empty() {
            return Err(ReferenceError::NameEmpty);
        }
        if split(&s.to_lowercase()).is_some() {
            return Err(ReferenceError::ContainsUppercase);
        }
        return Err(ReferenceError::InvalidFormat);
    };
    if r.name.len() > NAME_TOTAL_LENGTH_MAX {
        return Err(ReferenceError::NameTooLong);
    }
    if let Some(d) = r.digest {
        check_digest(d)?;
    }
    Ok(r)
}

/// The parts of `s` if it is in the grammar (digest only matched, not yet validated).
fn split(s: &str) -> Option<Reference<'_>> {
    let (rest, digest) = match s.split_once('@') {
        Some((rest, d)) => (rest, Some(d)),
        None => (s, None),
    };
    if let Some(d) = digest {
        if !digest_shape(d) {
            return None;
        }
    }
    // A tag's colon comes after the last slash; a port's before it.
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(t) = tag {
        if !is_tag(t) {
            return None;
        }
    }
    if !is_name(name) {
        return None;
    }
    Some(Reference { name, tag, digest })
}

fn is_name(name: &str) -> bool {
    let parts: Vec<&str> = name.split('/').collect();
    // Either every component is a path component, or the first is a domain and the rest
    // (at least one) are path components.
    let path_ok = |p: &[&str]| !p.is_empty() && p.iter().all(|c| is_path_component(c));
    path_ok(&parts) || (parts.len() > 1 && is_domain(parts[0]) && path_ok(&parts[1..]))
}

fn is_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator: ".", "_", "__" or a run of "-", always between alphanumerics.
        let start = i;
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == start || i >= b.len() || !alnum(b[i]) {
            return false;
        }
    }
    true
}

fn is_domain(d: &str) -> bool {
    let (host, port) = if let Some(rest) = d.strip_prefix('[') {
        // [ipv6]:port
        let Some((addr, after)) = rest.split_once(']') else {
            return false;
        };
        if addr.is_empty() || !addr.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
            return false;
        }
        let port = match after {
            "" => None,
            p => match p.strip_prefix(':') {
                Some(p) => Some(p),
                None => return false,
            },
        };
        return port.is_none_or(is_port);
    } else {
        match d.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (d, None),
        }
    };
    port.is_none_or(is_port) && !host.is_empty() && host.split('.').all(is_domain_component)
}

fn is_port(p: &str) -> bool {
    !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())
}

fn is_domain_component(c: &str) -> bool {
    let b = c.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|x| x.is_ascii_alphanumeric() || *x == b'-')
}

fn is_tag(t: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= TAG_MAX
        && word(b[0])
        && b[1..].iter().all(|x| word(*x) || *x == b'.' || *x == b'-')
}

/// `algorithm:hex` as the grammar matches it: components of letters and digits starting
/// with a letter, joined by `-_+.`, and at least 32 hex digits.
fn digest_shape(d: &str) -> bool {
    let Some((alg, hex)) = d.split_once(':') else {
        return false;
    };
    let alg_ok = alg.split(['-', '_', '+', '.']).all(|c| {
        c.as_bytes().first().is_some_and(u8::is_ascii_alphabetic)
            && c.bytes().all(|b| b.is_ascii_alphanumeric())
    });
    alg_ok && hex.len() >= 32 && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

fn check_digest(d: &str) -> Result<(), ReferenceError> {
    let (alg, hex) = d.split_once(':').ok_or(ReferenceError::DigestFormat)?;
    let len = match alg {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return Err(ReferenceError::DigestUnsupported),
    };
    if hex.len() != len {
        return Err(ReferenceError::DigestLength);
    }
    if !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(ReferenceError::DigestFormat);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(s: &str) -> String {
        parse_normalized(s).unwrap_err().to_string()
    }

    #[test]
    fn docker_accepts_these() {
        let d = format!("sha256:{}", "a".repeat(64));
        for ok in [
            "busybox",
            "busybox:1.36",
            "library/busybox:latest",
            "someone/app",
            "a/b/c/d",
            "my-app_x.y__z--w",
            "localhost/web",
            "localhost:5000/web:v2",
            "127.0.0.1:5000/a/b",
            "Registry.Example.COM/team/app:V1.0-rc_1",
            "[::1]:5000/web",
            &format!("web@{d}"),
            &format!("host:5000/web:v1@{d}"),
            &"a".repeat(NAME_TOTAL_LENGTH_MAX - "docker.io/library/".len()),
        ] {
            assert_eq!(parse_normalized(ok), Ok(()), "{ok:?} refused");
        }
    }

    #[test]
    fn refusals_use_dockers_words() {
        assert_eq!(msg("foo bar"), "invalid reference format");
        assert_eq!(msg(" busybox"), "invalid reference format");
        assert_eq!(msg("busybox:"), "invalid reference format");
        assert_eq!(msg("web:a b"), "invalid reference format");
        assert_eq!(msg(""), "invalid reference format");
        assert_eq!(msg("a..b"), "invalid reference format");
        assert_eq!(msg("a___b"), "invalid reference format");
        assert_eq!(msg("-a"), "invalid reference format");
        assert_eq!(
            msg(&format!("web:{}", "t".repeat(129))),
            "invalid reference format"
        );
        assert_eq!(
            msg("Foo"),
            "invalid reference format: repository name (library/Foo) must be lowercase"
        );
        assert_eq!(
            msg("host:5000/Team/app"),
            "invalid reference format: repository name (Team/app) must be lowercase"
        );
        assert_eq!(
            msg(&"a".repeat(300)),
            "invalid reference format: repository name must not be more than 255 characters"
        );
        assert_eq!(
            msg(&"a".repeat(64)),
            format!(
                "invalid repository name ({}), cannot specify 64-byte hexadecimal strings",
                "a".repeat(64)
            )
        );
        assert_eq!(
            msg(&format!("web@md5:{}", "a".repeat(32))),
            "unsupported digest algorithm"
        );
        assert_eq!(
            msg(&format!("web@sha256:{}", "a".repeat(40))),
            "invalid checksum digest length"
        );
        assert_eq!(
            msg(&format!("web@sha256:{}", "A".repeat(64))),
            "invalid checksum digest format"
        );
    }

    #[test]
    fn the_grammar_splits_name_tag_and_digest() {
        let r = parse("host:5000/a/b:v2").unwrap();
        assert_eq!(
            (r.name, r.tag, r.digest),
            ("host:5000/a/b", Some("v2"), None)
        );
        let r = parse("localhost:5000").unwrap();
        assert_eq!((r.name, r.tag), ("localhost", Some("5000")));
        assert_eq!(parse("UPPER"), Err(ReferenceError::ContainsUppercase));
        assert!(
            parse("Upper/x").is_ok(),
            "a first component with upper case is a domain"
        );
        assert_eq!(parse(""), Err(ReferenceError::NameEmpty));
    }
}
