//! A compose file as a tree of YAML values, each with the file, line and column it came
//! from: every later error can say where it is ("compose.yml:12:7: services.web…").

use std::fmt;
use std::sync::Arc;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// Largest compose file read (Docker's example files are a few KB).
pub const MAX_FILE_BYTES: u64 = 4 << 20;

/// A value and where it is.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub value: Value,
    pub at: At,
}

/// A place in a file: its name (as given), line and column (from 1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct At {
    pub file: Arc<str>,
    pub line: u64,
    pub col: u64,
}

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.col)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// In the file's order.
    Map(Vec<(String, Node)>),
}

impl Value {
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "nothing",
            Value::Bool(_) => "a boolean",
            Value::Int(_) | Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

impl Node {
    /// The entry `key` of a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(m) => m.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// A scalar as text (numbers and booleans as YAML writes them).
    pub fn scalar(&self) -> Option<String> {
        match &self.value {
            Value::Str(s) => Some(s.clone()),
            Value::Int(i) => Some(i.to_string()),
            Value::Float(x) => Some(x.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }
}

/// Spans as serde-saphyr reports them, turned into [`Node`]s of `file`.
struct SpannedValue(Spanned<RawInner>);
struct RawInner(Value);

impl<'de> Deserialize<'de> for RawInner {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor).map(RawInner)
    }
}

impl<'de> Deserialize<'de> for SpannedValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Spanned::<RawInner>::deserialize(d).map(SpannedValue)
    }
}

/// Children are kept with their spans under a placeholder file name, filled in afterwards.
fn node_of(s: SpannedValue) -> Node {
    Node {
        at: At {
            file: Arc::from(""),
            line: s.0.referenced.line(),
            col: s.0.referenced.column(),
        },
        value: s.0.value.0,
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a YAML value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Value, E> {
        i64::try_from(v)
            .map(Value::Int)
            .map_err(|_| E::custom(format!("number {v} is too large")))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element::<SpannedValue>()? {
            out.push(node_of(v));
        }
        Ok(Value::Seq(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out: Vec<(String, Node)> = Vec::new();
        while let Some(k) = map.next_key::<KeyText>()? {
            let v = node_of(map.next_value::<SpannedValue>()?);
            // A key given twice: the last one counts, as in Docker's reader.
            out.retain(|(old, _)| *old != k.0);
            out.push((k.0, v));
        }
        Ok(Value::Map(out))
    }
}

/// A mapping key as text, whatever scalar it is written as (`8080:` or `"8080":`).
struct KeyText(String);

impl<'de> Deserialize<'de> for KeyText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match d.deserialize_any(ValueVisitor)? {
            Value::Str(s) => Ok(KeyText(s)),
            Value::Int(i) => Ok(KeyText(i.to_string())),
            Value::Float(x) => Ok(KeyText(x.to_string())),
            Value::Bool(b) => Ok(KeyText(b.to_string())),
            Value::Null => Ok(KeyText(String::new())),
            other => Err(serde::de::Error::custom(format!(
                "a mapping key must be a scalar, not {}",
                other.kind()
            ))),
        }
    }
}

fn set_file(n: &mut Node, file: &Arc<str>) {
    n.at.file = file.clone();
    match &mut n.value {
        Value::Seq(items) => items.iter_mut().for_each(|c| set_file(c, file)),
        Value::Map(entries) => entries.iter_mut().for_each(|(_, c)| set_file(c, file)),
        _ => {}
    }
}

/// Parse `text` (the contents of `file`) into a tree; errors say `file:line:col: what`.
pub fn parse(file: &str, text: &str) -> Result<Node, String> {
    let file: Arc<str> = Arc::from(file);
    let v: SpannedValue = serde_saphyr::from_str(text).map_err(|e| {
        let msg = e.to_string();
        let first = msg
            .lines()
            .next()
            .unwrap_or("invalid YAML")
            .trim()
            .to_string();
        match e.location() {
            Some(l) => format!("{file}:{}:{}: {first}", l.line(), l.column()),
            None => format!("{file}: {first}"),
        }
    })?;
    let mut n = node_of(v);
    set_file(&mut n, &file);
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_keep_their_places() {
        let n = parse(
            "c.yml",
            "version: \"3.8\"\nservices:\n  web:\n    image: nginx\n    deploy:\n      replicas: 3\n    ports:\n      - \"8080:80\"\n",
        )
        .unwrap();
        let web = n.get("services").and_then(|s| s.get("web")).unwrap();
        let r = web.get("deploy").and_then(|d| d.get("replicas")).unwrap();
        assert_eq!(r.value, Value::Int(3));
        assert_eq!((r.at.line, r.at.col), (6, 17));
        assert_eq!(r.at.to_string(), "c.yml:6:17");
        let Value::Seq(ports) = &web.get("ports").unwrap().value else {
            panic!("a list")
        };
        assert_eq!(ports[0].value, Value::Str("8080:80".into()));
        assert_eq!(ports[0].at.line, 8);
    }

    #[test]
    fn anchors_and_merge_keys_are_resolved() {
        let n = parse(
            "c.yml",
            "x-common: &c\n  image: busybox\n  user: nobody\nservices:\n  a:\n    <<: *c\n    user: root\n",
        )
        .unwrap();
        let a = n.get("services").and_then(|s| s.get("a")).unwrap();
        assert_eq!(a.get("image").unwrap().value, Value::Str("busybox".into()));
        assert_eq!(a.get("user").unwrap().value, Value::Str("root".into()));
    }

    #[test]
    fn a_syntax_error_names_file_line_and_column() {
        let e = parse("bad.yml", "services:\n  web: [1, 2\n").unwrap_err();
        assert!(e.starts_with("bad.yml:"), "{e}");
        assert!(
            e.split(':')
                .nth(1)
                .is_some_and(|l| l.parse::<u64>().is_ok()),
            "{e}"
        );
    }
}
