//! Placement constraints (`node.labels.zone==a`) and spread preferences
//! (`spread=node.labels.zone`), parsed once per group of tasks and matched against nodes.
//!
//! Public so that the control API can refuse a bad constraint when the service is created,
//! with the same message the scheduler would otherwise leave on the pending task.

use proto::security::Role;

use crate::store::Node;

const LABEL_PREFIX: &str = "node.labels.";

/// One `KEY==VALUE` or `KEY!=VALUE` expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Constraint {
    key: Key,
    equal: bool,
    value: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Key {
    Id,
    Hostname,
    Role,
    Label(String),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConstraintError {
    #[error("{0:?} has no == or != operator; write e.g. node.role==worker")]
    NoOperator(String),
    #[error("{0:?} has more than one operator; write one KEY==VALUE or KEY!=VALUE")]
    ExtraOperator(String),
    #[error(
        "{constraint:?}: unknown key {key:?}; use node.id, node.hostname, node.role or node.labels.KEY"
    )]
    UnknownKey { constraint: String, key: String },
    #[error("{0:?} has an empty value")]
    EmptyValue(String),
    #[error("{0:?}: node.role is either manager or worker")]
    BadRole(String),
}

impl Constraint {
    /// Keys are matched without regard to case, as Swarm does, except the label name itself.
    pub fn parse(text: &str) -> Result<Constraint, ConstraintError> {
        let (at, equal) = match (text.find("=="), text.find("!=")) {
            (Some(e), Some(n)) if e < n => (e, true),
            (Some(e), None) => (e, true),
            (_, Some(n)) => (n, false),
            (None, None) => return Err(ConstraintError::NoOperator(text.to_string())),
        };
        let key = text[..at].trim();
        let value = text[at + 2..].trim();
        if value.contains('=') {
            return Err(ConstraintError::ExtraOperator(text.to_string()));
        }
        if value.is_empty() {
            return Err(ConstraintError::EmptyValue(text.to_string()));
        }
        let key = match key.to_ascii_lowercase().as_str() {
            "node.id" => Key::Id,
            "node.hostname" => Key::Hostname,
            "node.role" => Key::Role,
            _ => match label_name(key) {
                Some(name) => Key::Label(name.to_string()),
                None => {
                    return Err(ConstraintError::UnknownKey {
                        constraint: text.to_string(),
                        key: key.to_string(),
                    })
                }
            },
        };
        if key == Key::Role
            && !["manager", "worker"]
                .iter()
                .any(|r| r.eq_ignore_ascii_case(value))
        {
            return Err(ConstraintError::BadRole(text.to_string()));
        }
        Ok(Constraint {
            key,
            equal,
            value: value.to_string(),
        })
    }

    /// Values compare without regard to (ASCII) case, as Swarm's do. A node without the label
    /// fails `==` and passes `!=`.
    pub fn matches(&self, node: &Node) -> bool {
        let actual = match &self.key {
            Key::Id => Some(node.id.as_str()),
            Key::Hostname => Some(node.description.hostname.as_str()),
            Key::Role => Some(match node.role {
                Role::Manager => "manager",
                Role::Worker => "worker",
            }),
            Key::Label(name) => node.labels.get(name).map(String::as_str),
        };
        let same = actual.is_some_and(|a| a.eq_ignore_ascii_case(&self.value));
        same == self.equal
    }
}

/// All of a task's constraints; the first bad one spoils the lot.
pub fn parse_all(texts: &[String]) -> Result<Vec<Constraint>, ConstraintError> {
    texts.iter().map(|t| Constraint::parse(t)).collect()
}

/// The label names of `spread=node.labels.X` preferences, in order. Swarm spreads only over
/// labels and its scheduler passes over other descriptors, so they are skipped here too (the
/// control API is the place to refuse them).
pub fn spread_labels(preferences: &[String]) -> Vec<String> {
    preferences
        .iter()
        .filter_map(|p| {
            let (kind, descriptor) = p.split_once('=')?;
            if !kind.trim().eq_ignore_ascii_case("spread") {
                return None;
            }
            label_name(descriptor.trim()).map(str::to_string)
        })
        .collect()
}

fn label_name(key: &str) -> Option<&str> {
    let prefix = key.get(..LABEL_PREFIX.len())?;
    let name = &key[LABEL_PREFIX.len()..];
    (prefix.eq_ignore_ascii_case(LABEL_PREFIX) && !name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_key_and_both_operators() {
        let c = Constraint::parse("node.labels.zone == a").unwrap();
        assert_eq!(c.key, Key::Label("zone".into()));
        assert!(c.equal);
        assert_eq!(c.value, "a");
        let c = Constraint::parse("Node.Role!=Manager").unwrap();
        assert_eq!(c.key, Key::Role);
        assert!(!c.equal);
        assert_eq!(Constraint::parse("node.id==x").unwrap().key, Key::Id);
        assert_eq!(
            Constraint::parse(" node.hostname ==w1").unwrap().key,
            Key::Hostname
        );
    }

    #[test]
    fn refuses_malformed_constraints_with_a_reason() {
        assert!(matches!(
            Constraint::parse("node.role=worker"),
            Err(ConstraintError::NoOperator(_))
        ));
        assert!(matches!(
            Constraint::parse("node.labels.a==b==c"),
            Err(ConstraintError::ExtraOperator(_))
        ));
        assert!(matches!(
            Constraint::parse("node.zone==a"),
            Err(ConstraintError::UnknownKey { .. })
        ));
        assert!(matches!(
            Constraint::parse("node.labels.==a"),
            Err(ConstraintError::UnknownKey { .. })
        ));
        assert!(matches!(
            Constraint::parse("node.hostname== "),
            Err(ConstraintError::EmptyValue(_))
        ));
        assert!(matches!(
            Constraint::parse("node.role==boss"),
            Err(ConstraintError::BadRole(_))
        ));
    }

    #[test]
    fn reads_spread_preferences_over_labels_only() {
        let prefs = vec![
            "spread=node.labels.zone".to_string(),
            "spread = node.labels.rack".to_string(),
            "spread=node.hostname".to_string(),
            "binpack=node.labels.x".to_string(),
        ];
        assert_eq!(spread_labels(&prefs), vec!["zone", "rack"]);
    }
}
