//! `--filter KEY=VALUE` as Docker's list commands take it: values of one key are
//! alternatives (any may match), different keys must all match; `label=KEY` or
//! `label=KEY=VALUE` filters must all match. Unknown keys are errors.

use std::collections::BTreeMap;

use crate::commands::CliError;

#[derive(Clone, Debug, Default)]
pub struct Filters(BTreeMap<String, Vec<String>>);

impl Filters {
    /// `list` checked against the keys this command knows.
    pub fn parse(list: &[String], allowed: &[&str]) -> Result<Filters, CliError> {
        let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for f in list {
            let (k, v) = f.split_once('=').ok_or_else(|| {
                CliError(format!(
                    "Error: bad format of filter (expected name=value): {f}"
                ))
            })?;
            let k = k.trim().to_ascii_lowercase();
            if !allowed.contains(&k.as_str()) {
                return Err(CliError(format!(
                    "Error: invalid filter '{k}' (use {})",
                    allowed.join(", ")
                )));
            }
            m.entry(k).or_default().push(v.to_string());
        }
        Ok(Filters(m))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The values given for `key`.
    pub fn values(&self, key: &str) -> &[String] {
        self.0.get(key).map_or(&[], Vec::as_slice)
    }

    /// True when `key` was not given or one of its values satisfies `pred`.
    pub fn any(&self, key: &str, pred: impl Fn(&str) -> bool) -> bool {
        match self.0.get(key) {
            None => true,
            Some(vs) => vs.iter().any(|v| pred(v)),
        }
    }

    /// An id filter: a prefix of the id.
    pub fn id(&self, id: &str) -> bool {
        self.any("id", |v| id.starts_with(v))
    }

    /// A name filter: a prefix of the name, as swarm's filters match names.
    pub fn name(&self, name: &str) -> bool {
        self.any("name", |v| name.starts_with(v))
    }

    /// Every `key` filter (`label`, `node.label`) holds for `labels`: `K` is present,
    /// `K=V` has that value.
    pub fn labels<'a>(
        &self,
        key: &str,
        labels: impl IntoIterator<Item = (&'a String, &'a String)> + Clone,
    ) -> bool {
        self.values(key).iter().all(|f| match f.split_once('=') {
            Some((k, v)) => labels
                .clone()
                .into_iter()
                .any(|(lk, lv)| lk == k && lv == v),
            None => labels.clone().into_iter().any(|(lk, _)| lk == f),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(list: &[&str]) -> Filters {
        let list: Vec<String> = list.iter().map(|s| s.to_string()).collect();
        Filters::parse(&list, &["id", "name", "label", "mode"]).unwrap()
    }

    #[test]
    fn docker_filter_semantics() {
        let labels: BTreeMap<String, String> = [
            ("tier".to_string(), "front".to_string()),
            ("x".to_string(), String::new()),
        ]
        .into_iter()
        .collect();
        assert!(f(&[]).name("web") && f(&[]).labels("label", &labels));
        assert!(f(&["name=we"]).name("web"));
        assert!(!f(&["name=eb"]).name("web"));
        assert!(f(&["name=db", "name=web"]).name("web"));
        assert!(f(&["id=ab"]).id("abc"));
        assert!(f(&["label=tier"]).labels("label", &labels));
        assert!(f(&["label=tier=front", "label=x"]).labels("label", &labels));
        assert!(!f(&["label=tier=back"]).labels("label", &labels));
        assert!(!f(&["label=tier", "label=nope"]).labels("label", &labels));
        assert!(f(&["mode=global"]).any("mode", |v| v == "global"));
    }

    #[test]
    fn unknown_keys_and_shapes_are_errors() {
        let e = Filters::parse(&["colour=red".into()], &["name"]).unwrap_err();
        assert_eq!(e.0, "Error: invalid filter 'colour' (use name)");
        assert!(Filters::parse(&["name".into()], &["name"]).is_err());
    }
}
