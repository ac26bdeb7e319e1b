//! Variable interpolation in compose files, as Docker's: `$VAR`, `${VAR}`,
//! `${VAR:-default}` / `${VAR-default}`, `${VAR:?error}` / `${VAR?error}`,
//! `${VAR:+other}` / `${VAR+other}`, and `$$` for a literal `$`.

use std::collections::BTreeMap;
use std::path::Path;

use super::yaml::{Node, Value};

/// Where variables come from: this process's environment over a `.env` file.
#[derive(Clone, Debug, Default)]
pub struct Vars(pub BTreeMap<String, String>);

impl Vars {
    /// The process's environment over the `KEY=VALUE` lines of `dir/.env` (if there is one).
    pub fn load(dir: &Path) -> Result<Vars, String> {
        let mut vars = BTreeMap::new();
        let path = dir.join(".env");
        if let Ok(text) = std::fs::read_to_string(&path) {
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let line = line.strip_prefix("export ").unwrap_or(line);
                let (k, v) = line
                    .split_once('=')
                    .ok_or_else(|| format!("{}:{}: expected KEY=VALUE", path.display(), n + 1))?;
                let v = v.trim();
                let v = v
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                    .unwrap_or(v);
                vars.insert(k.trim().to_string(), v.to_string());
            }
        }
        vars.extend(std::env::vars());
        Ok(Vars(vars))
    }

    fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }
}

fn is_name_start(c: char) -> bool {
    c == '_' || c.is_ascii_alphabetic()
}

fn is_name(c: char) -> bool {
    c == '_' || c.is_ascii_alphanumeric()
}

/// `text` with its variables replaced.
pub fn interpolate(text: &str, vars: &Vars) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(r) = after.strip_prefix('{') {
            let end = closing_brace(r).ok_or_else(|| {
                format!("invalid interpolation format in {text:?}: no closing }}")
            })?;
            out.push_str(&braced(&r[..end], vars, text)?);
            rest = &r[end + 1..];
        } else if after.starts_with(is_name_start) {
            let end = after.find(|c| !is_name(c)).unwrap_or(after.len());
            out.push_str(vars.get(&after[..end]).unwrap_or(""));
            rest = &after[end..];
        } else {
            return Err(format!(
                "invalid interpolation format in {text:?}: write $$ for a literal $"
            ));
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The position of the `}` closing a `${`, counting nested `${…}` in defaults.
fn closing_brace(s: &str) -> Option<usize> {
    let mut depth = 0usize;
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'$' if b.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 1;
            }
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

fn braced(inner: &str, vars: &Vars, text: &str) -> Result<String, String> {
    let end = inner.find(|c| !is_name(c)).unwrap_or(inner.len());
    let (name, op) = inner.split_at(end);
    if name.is_empty() || !name.starts_with(is_name_start) {
        return Err(format!(
            "invalid interpolation format in {text:?}: bad variable name"
        ));
    }
    let val = vars.get(name);
    let set_nonempty = val.is_some_and(|v| !v.is_empty());
    let ok = |s: &str| interpolate(s, vars);
    Ok(match op {
        "" => val.unwrap_or("").to_string(),
        _ if op.starts_with(":-") => match set_nonempty {
            true => val.unwrap_or("").to_string(),
            false => ok(&op[2..])?,
        },
        _ if op.starts_with('-') => match val {
            Some(v) => v.to_string(),
            None => ok(&op[1..])?,
        },
        _ if op.starts_with(":?") || op.starts_with('?') => {
            let (need_nonempty, msg) = match op.strip_prefix(":?") {
                Some(m) => (true, m),
                None => (false, &op[1..]),
            };
            match val {
                Some(v) if !need_nonempty || !v.is_empty() => v.to_string(),
                _ => {
                    let msg = ok(msg)?;
                    return Err(match msg.is_empty() {
                        true => format!("required variable {name} is missing a value"),
                        false => format!("required variable {name} is missing a value: {msg}"),
                    });
                }
            }
        }
        _ if op.starts_with(":+") => match set_nonempty {
            true => ok(&op[2..])?,
            false => String::new(),
        },
        _ if op.starts_with('+') => match val {
            Some(_) => ok(&op[1..])?,
            None => String::new(),
        },
        _ => {
            return Err(format!(
                "invalid interpolation format in {text:?}: unknown operator after {name}"
            ))
        }
    })
}

/// Interpolate every string value of the tree (keys are left as written, as Docker does);
/// an error names the value's place.
pub fn interpolate_tree(n: &mut Node, vars: &Vars, path: &str) -> Result<(), String> {
    match &mut n.value {
        Value::Str(s) => {
            *s = interpolate(s, vars).map_err(|e| format!("{}: {path}: {e}", n.at))?;
        }
        Value::Seq(items) => {
            for (i, c) in items.iter_mut().enumerate() {
                interpolate_tree(c, vars, &format!("{path}[{i}]"))?;
            }
        }
        Value::Map(entries) => {
            for (k, c) in entries.iter_mut() {
                // Extension fields are templates for anchors, not read.
                if k.starts_with("x-") {
                    continue;
                }
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                interpolate_tree(c, vars, &p)?;
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vars {
        Vars(
            [("A", "1"), ("E", ""), ("TAG", "v2")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn every_form_of_docker_interpolation() {
        let v = vars();
        for (text, want) in [
            ("plain", "plain"),
            ("$A", "1"),
            ("x${A}y", "x1y"),
            ("img:${TAG}", "img:v2"),
            ("${MISSING}", ""),
            ("${MISSING:-d}", "d"),
            ("${E:-d}", "d"),
            ("${E-d}", ""),
            ("${MISSING-d}", "d"),
            ("${A:-d}", "1"),
            ("${A:+alt}", "alt"),
            ("${E:+alt}", ""),
            ("${E+alt}", "alt"),
            ("$$A", "$A"),
            ("cost $$5", "cost $5"),
            ("${MISSING:-${A}}", "1"),
        ] {
            assert_eq!(interpolate(text, &v).unwrap(), want, "{text}");
        }
    }

    #[test]
    fn required_and_malformed_variables_are_errors() {
        let v = vars();
        let e = interpolate("${MISSING:?set it}", &v).unwrap_err();
        assert!(
            e.contains("required variable MISSING") && e.contains("set it"),
            "{e}"
        );
        assert!(interpolate("${E:?}", &v).is_err());
        assert_eq!(interpolate("${E?}", &v).unwrap(), "");
        for bad in ["${A", "$5", "${}", "${A%x}"] {
            assert!(interpolate(bad, &v).is_err(), "{bad}");
        }
    }
}
