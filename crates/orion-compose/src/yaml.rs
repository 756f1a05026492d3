//! The compose file as a tree that remembers where each key and value came from (file and
//! line), read with saphyr, interpolated, with YAML merge keys (`<<: *anchor`) applied, and
//! several files merged as `docker compose -f a -f b` merges them.
//!
//! Scalars are kept as their text (saphyr's "representation", not parsed into YAML types):
//! compose interpolates text first and then reads numbers, booleans and durations, so
//! `replicas: ${N:-2}` and `mode: 0440` are read by the converter, which knows what each key
//! takes.

use crate::Error;
use crate::interp::interpolate;
use saphyr::{MarkedYamlOwned, YamlDataOwned, YamlLoader};
use saphyr_parser::{Parser, ScalarStyle};
use std::collections::BTreeMap;

/// A compose file's text is bounded: a real one is a few KiB; 1 MiB is far beyond any.
pub const FILE_BYTES_MAX: usize = 1024 * 1024;
/// Alias expansion budget (nodes): stops a "billion laughs" file.
const ALIAS_NODES_MAX: usize = 100_000;
/// Nesting depth of maps and lists: compose files are a handful of levels deep.
const DEPTH_MAX: usize = 64;

/// Where something is: the index of its file in the input and a 1-based line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct At {
    pub file: usize,
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    /// A scalar's text, interpolated. `quoted`: it was written in quotes, so `"null"` is text.
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<Entry>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub at: At,
    pub v: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub key: String,
    pub at: At,
    pub node: Node,
}

impl Node {
    pub fn get(&self, key: &str) -> Option<&Entry> {
        match &self.v {
            Value::Map(m) => m.iter().find(|e| e.key == key),
            _ => None,
        }
    }
}

/// Loads one file: parse, interpolate every scalar value with `vars`, apply merge keys.
pub fn load(
    file: usize,
    name: &str,
    text: &str,
    vars: &BTreeMap<String, String>,
) -> Result<Node, Error> {
    let at0 = At { file, line: 1 };
    if text.len() > FILE_BYTES_MAX {
        return Err(Error::at(
            at0,
            "",
            format!("{name} is larger than {FILE_BYTES_MAX} bytes"),
        ));
    }
    let mut parser = Parser::new_from_str(text);
    let mut loader: YamlLoader<MarkedYamlOwned> = YamlLoader::default();
    loader.early_parse(false);
    loader.alias_limit(ALIAS_NODES_MAX);
    let parsed = parser.load(&mut loader, true);
    if let Some(e) = loader.error().cloned().or(parsed.err()) {
        let at = At {
            file,
            line: e.marker().line(),
        };
        return Err(Error::at(at, "", format!("not valid YAML: {}", e.info())));
    }
    let mut docs = loader.into_documents();
    if docs.len() > 1 {
        return Err(Error::at(at0, "", "holds more than one YAML document"));
    }
    let Some(doc) = docs.pop() else {
        return Err(Error::at(at0, "", "is empty"));
    };
    let node = convert(file, doc, vars, "", 0)?;
    if !matches!(node.v, Value::Map(_)) {
        return Err(Error::at(
            node.at,
            "",
            "must be a mapping of top-level keys",
        ));
    }
    Ok(node)
}

fn convert(
    file: usize,
    y: MarkedYamlOwned,
    vars: &BTreeMap<String, String>,
    key: &str,
    depth: usize,
) -> Result<Node, Error> {
    let at = At {
        file,
        line: y.span.start.line(),
    };
    if depth > DEPTH_MAX {
        return Err(Error::at(
            at,
            key,
            format!("nests deeper than {DEPTH_MAX} levels"),
        ));
    }
    let v = match y.data {
        YamlDataOwned::Representation(text, style, tag) => {
            if tag.is_some() {
                return Err(Error::at(
                    at,
                    key,
                    "YAML tags (!!str, !custom) are not supported",
                ));
            }
            let plain = style == ScalarStyle::Plain;
            if plain && matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL") {
                Value::Null
            } else {
                Value::Str(interpolate(&text, vars).map_err(|m| Error::at(at, key, m))?)
            }
        }
        YamlDataOwned::Value(s) => Value::Str(format!("{s:?}")),
        YamlDataOwned::Sequence(items) => Value::Seq(
            items
                .into_iter()
                .map(|i| convert(file, i, vars, key, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        YamlDataOwned::Mapping(map) => {
            let mut entries: Vec<Entry> = Vec::new();
            let mut merged: Vec<Entry> = Vec::new();
            for (k, v) in map {
                let kat = At {
                    file,
                    line: k.span.start.line(),
                };
                let name = match k.data {
                    YamlDataOwned::Representation(text, _, None) => text,
                    _ => return Err(Error::at(kat, key, "a key must be plain text")),
                };
                let node = convert(file, v, vars, &name, depth + 1)?;
                if name == "<<" {
                    // YAML merge key: the keys of the anchored map(s), unless given here.
                    let sources = match node.v {
                        Value::Map(m) => vec![m],
                        Value::Seq(items) => items
                            .into_iter()
                            .map(|i| match i.v {
                                Value::Map(m) => Ok(m),
                                _ => Err(Error::at(i.at, "<<", "merges maps only")),
                            })
                            .collect::<Result<_, _>>()?,
                        _ => return Err(Error::at(kat, "<<", "merges maps only")),
                    };
                    for m in sources {
                        for e in m {
                            if !merged.iter().any(|x| x.key == e.key) {
                                merged.push(e);
                            }
                        }
                    }
                } else {
                    entries.push(Entry {
                        key: name,
                        at: kat,
                        node,
                    });
                }
            }
            for e in merged {
                if !entries.iter().any(|x| x.key == e.key) {
                    entries.push(e);
                }
            }
            Value::Map(entries)
        }
        YamlDataOwned::Tagged(_, _) => {
            return Err(Error::at(
                at,
                key,
                "YAML tags (!!str, !custom) are not supported",
            ));
        }
        YamlDataOwned::Alias(_) | YamlDataOwned::BadValue => {
            return Err(Error::at(at, key, "is not a value Orion can read"));
        }
    };
    Ok(Node { at, v })
}

/// Keys whose list value an override file replaces rather than extends (compose's merge
/// rules): a command is one thing, not a set.
const REPLACED_LISTS: &[&str] = &["command", "entrypoint", "test", "dns", "dns_search"];
/// Keys whose list form is a map in disguise (`K=V`), merged key by key.
const MAP_LISTS: &[&str] = &["environment", "labels", "depends_on"];

/// Merges `over` into `base` as `docker compose -f base -f over` does: maps merge key by key,
/// scalars and the lists of `REPLACED_LISTS` are replaced, other lists are appended (without
/// duplicates), and `environment`/`labels`/`depends_on` merge by name whatever their form.
pub fn merge(base: Node, over: Node, key: &str) -> Node {
    match (base.v, over.v) {
        (Value::Map(mut b), Value::Map(o)) => {
            for e in o {
                match b.iter().position(|x| x.key == e.key) {
                    Some(i) => {
                        let old = b.remove(i);
                        let node = merge(old.node, e.node, &e.key);
                        b.insert(
                            i,
                            Entry {
                                key: e.key,
                                at: e.at,
                                node,
                            },
                        );
                    }
                    None => b.push(e),
                }
            }
            Node {
                at: over.at,
                v: Value::Map(b),
            }
        }
        (Value::Seq(mut b), Value::Seq(o)) if !REPLACED_LISTS.contains(&key) => {
            if MAP_LISTS.contains(&key) {
                let b = Node {
                    at: base.at,
                    v: Value::Map(list_to_map(key, b)),
                };
                let o = Node {
                    at: over.at,
                    v: Value::Map(list_to_map(key, o)),
                };
                return merge(b, o, key);
            }
            for item in o {
                if !b.iter().any(|x| same(x, &item)) {
                    b.push(item);
                }
            }
            Node {
                at: over.at,
                v: Value::Seq(b),
            }
        }
        (Value::Seq(b), o @ Value::Map(_)) if MAP_LISTS.contains(&key) => merge(
            Node {
                at: base.at,
                v: Value::Map(list_to_map(key, b)),
            },
            Node { at: over.at, v: o },
            key,
        ),
        (b @ Value::Map(_), Value::Seq(o)) if MAP_LISTS.contains(&key) => merge(
            Node { at: base.at, v: b },
            Node {
                at: over.at,
                v: Value::Map(list_to_map(key, o)),
            },
            key,
        ),
        (_, o) => Node { at: over.at, v: o },
    }
}

/// Equality of values, ignoring where they were written.
fn same(a: &Node, b: &Node) -> bool {
    match (&a.v, &b.v) {
        (Value::Null, Value::Null) => true,
        (Value::Str(x), Value::Str(y)) => x == y,
        (Value::Seq(x), Value::Seq(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Value::Map(x), Value::Map(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|(a, b)| a.key == b.key && same(&a.node, &b.node))
        }
        _ => false,
    }
}

/// `["K=V", "K2"]` as `{K: V, K2: null}`; for `depends_on`, `["db"]` as `{db: {}}`. Items
/// that are not text are kept under an impossible key so that the converter reports them.
pub fn list_to_map(key: &str, items: Vec<Node>) -> Vec<Entry> {
    items
        .into_iter()
        .map(|n| match &n.v {
            Value::Str(s) if key == "depends_on" => Entry {
                key: s.clone(),
                at: n.at,
                node: Node {
                    at: n.at,
                    v: Value::Map(Vec::new()),
                },
            },
            Value::Str(s) => {
                let (k, v) = match s.split_once('=') {
                    Some((k, v)) => (k.to_string(), Value::Str(v.to_string())),
                    None => (s.clone(), Value::Null),
                };
                Entry {
                    key: k,
                    at: n.at,
                    node: Node { at: n.at, v },
                }
            }
            _ => Entry {
                key: String::new(),
                at: n.at,
                node: n,
            },
        })
        .collect()
}
