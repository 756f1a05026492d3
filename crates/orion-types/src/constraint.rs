//! Placement constraints: `node.id != node2`, `node.labels.zone == a`,
//! `node.labels.zone in (a, b)`, `node.labels.disk not in ssd,nvme`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// What a constraint looks at on a node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum NodeAttr {
    Id,
    Label(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ConstraintOp {
    Eq,
    Ne,
    In,
    NotIn,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Constraint {
    pub attr: NodeAttr,
    pub op: ConstraintOp,
    /// One value for `==`/`!=`, one or more for `in`/`not in`.
    pub values: Vec<String>,
}

impl Constraint {
    /// Parses the text form. The error says what is wrong, for a `400` naming the field.
    pub fn parse(text: &str) -> Result<Constraint, String> {
        let t = text.trim();
        // Longest operators first, so "not in" is not read as "in" and "!=" not as "=".
        let ops: [(&str, ConstraintOp); 5] = [
            (" not in ", ConstraintOp::NotIn),
            (" in ", ConstraintOp::In),
            ("!=", ConstraintOp::Ne),
            ("==", ConstraintOp::Eq),
            ("=", ConstraintOp::Eq),
        ];
        let (lhs, op, rhs) = ops
            .iter()
            .find_map(|(tok, op)| t.find(tok).map(|i| (&t[..i], *op, &t[i + tok.len()..])))
            .ok_or_else(|| {
                format!("{text:?} has no operator; use ==, !=, in or not in, e.g. \"node.labels.zone == a\"")
            })?;
        let lhs = lhs.trim();
        let attr = if lhs == "node.id" {
            NodeAttr::Id
        } else if let Some(key) = lhs.strip_prefix("node.labels.") {
            if key.is_empty() || key.chars().any(char::is_whitespace) {
                return Err(format!("{text:?} has an empty or malformed label name"));
            }
            NodeAttr::Label(key.to_string())
        } else {
            return Err(format!(
                "{text:?} constrains {lhs:?}; only node.id and node.labels.<name> are known"
            ));
        };
        let rhs = rhs.trim();
        let values: Vec<String> = match op {
            ConstraintOp::Eq | ConstraintOp::Ne => vec![rhs.to_string()],
            ConstraintOp::In | ConstraintOp::NotIn => {
                let inner = rhs
                    .strip_prefix('(')
                    .and_then(|r| r.strip_suffix(')'))
                    .unwrap_or(rhs);
                inner
                    .split(',')
                    .map(|v| v.trim().to_string())
                    .filter(|v| !v.is_empty())
                    .collect()
            }
        };
        if values.is_empty()
            || values
                .iter()
                .any(|v| v.is_empty() || v.contains(char::is_whitespace))
        {
            return Err(format!("{text:?} has an empty or malformed value"));
        }
        Ok(Constraint { attr, op, values })
    }

    /// Whether a node with this id and these labels satisfies the constraint. A missing label
    /// satisfies only the negative operators.
    pub fn matches(&self, node_id: &str, labels: &BTreeMap<String, String>) -> bool {
        let value = match &self.attr {
            NodeAttr::Id => Some(node_id),
            NodeAttr::Label(k) => labels.get(k).map(String::as_str),
        };
        let contained = value.is_some_and(|v| self.values.iter().any(|x| x == v));
        match self.op {
            ConstraintOp::Eq | ConstraintOp::In => contained,
            ConstraintOp::Ne | ConstraintOp::NotIn => !contained,
        }
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.attr {
            NodeAttr::Id => write!(f, "node.id")?,
            NodeAttr::Label(k) => write!(f, "node.labels.{k}")?,
        }
        match self.op {
            ConstraintOp::Eq => write!(f, " == {}", self.values[0]),
            ConstraintOp::Ne => write!(f, " != {}", self.values[0]),
            ConstraintOp::In => write!(f, " in ({})", self.values.join(", ")),
            ConstraintOp::NotIn => write!(f, " not in ({})", self.values.join(", ")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_and_matches_each_operator() {
        let zone_a = labels(&[("zone", "a")]);
        let cases: &[(&str, &str, bool)] = &[
            ("node.labels.zone == a", "n1", true),
            ("node.labels.zone==b", "n1", false),
            ("node.labels.zone = a", "n1", true),
            ("node.id != n1", "n1", false),
            ("node.id != n2", "n1", true),
            ("node.labels.zone in (a, b)", "n1", true),
            ("node.labels.zone in b,c", "n1", false),
            ("node.labels.zone not in (b)", "n1", true),
            ("node.labels.rack == r1", "n1", false),
            ("node.labels.rack != r1", "n1", true),
        ];
        for (text, node, want) in cases {
            let c = Constraint::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(c.matches(node, &zone_a), *want, "{text}");
            // The display form parses back to the same constraint.
            assert_eq!(Constraint::parse(&c.to_string()), Ok(c.clone()), "{text}");
        }
    }

    #[test]
    fn rejects_malformed_text() {
        for text in [
            "zone == a",
            "node.labels. == a",
            "node.id ==",
            "node.id",
            "node.cpu == 3",
            "",
        ] {
            assert!(
                Constraint::parse(text).is_err(),
                "{text:?} should be refused"
            );
        }
    }
}
