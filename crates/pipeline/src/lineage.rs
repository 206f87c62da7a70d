//! Field-level lineage across the pipeline: a graph whose vertices are `node.field` (the
//! fields of what a source, stage or sink puts out) and whose edges say which upstream
//! field flows into which (**selected**) or decides its rows without flowing into it
//! (**non-selected**: filters, group keys, joins), and which node makes the edge.
//!
//! Each node contributes the edges from the writers of its input topic to its own
//! fields: a SQL stage from its query's plan ([`hifi_sql::lineage`]), a transform stage
//! from its transforms (a filter's fields are non-selected for every field; set, rename,
//! remove and redact act on the fields they name; the rest passes through), a sink
//! passes every field through. Fields are top-level names; a topic without a schema has
//! fields not known in advance, written `*`: an edge `a.* → b.*` says that every field
//! passes, and queries follow it for any name.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::Serialize;

use crate::config::{LoadedConfig, TransformConfig};
use crate::schemas::Derived;

/// Any field of a node whose fields are not known (its topic has no schema).
pub const ANY: &str = "*";

/// How a field reaches another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Use {
    /// Its values flow into the field.
    Selected,
    /// It decides which rows exist (filters, group keys, joins) without flowing in.
    NonSelected,
}

impl Use {
    /// `selected` or `non-selected`.
    pub fn as_str(self) -> &'static str {
        match self {
            Use::Selected => "selected",
            Use::NonSelected => "non-selected",
        }
    }
}

/// One edge: `from` (`node.field`) reaches `to` the way `use` says, made by node `via`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Edge {
    /// Upstream `node.field`.
    pub from: String,
    /// Downstream `node.field`.
    pub to: String,
    /// Selected or non-selected.
    #[serde(rename = "use")]
    pub how: Use,
    /// The node that makes the edge (the downstream node).
    pub via: String,
    /// What the node does on the way, when it changes the value (`redact (hash)`,
    /// `rename from /a`, `sql`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// On an `a.* → b.*` edge: the fields that do not pass (removed, renamed away, or
    /// with edges of their own).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<String>,
    /// The node redacts the whole value (hash or mask): it no longer carries PII.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub redacted: bool,
}

/// The pipeline's lineage: every node's fields and the edges between them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Graph {
    /// Node → the fields it puts out (`*` when not known).
    pub nodes: BTreeMap<String, Vec<String>>,
    /// Every edge, sorted.
    pub edges: Vec<Edge>,
}

/// One field reached by a query, with how and by which path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reached {
    /// `node.field`.
    pub field: String,
    /// Selected when some path to it is selected on every edge.
    #[serde(rename = "use")]
    pub how: Use,
    /// The fields on the way, from the queried field to this one.
    pub path: Vec<String>,
}

/// Input fields reaching one output field of a stage.
#[derive(Debug, Clone, Default)]
struct Sources {
    selected: BTreeSet<String>,
    non_selected: BTreeSet<String>,
    note: Option<String>,
    /// Of `selected`, the inputs whose values arrive hashed or masked.
    redacted: BTreeSet<String>,
}

/// A node's output fields, and the input fields that do not pass through its `*` (they
/// were removed or renamed away; fields it names have their own edges).
#[derive(Debug, Default)]
struct Fields {
    out: BTreeMap<String, Sources>,
    gone: BTreeSet<String>,
}

/// Builds the graph of a checked configuration (`derived`: its schemas and queries).
pub fn build(loaded: &LoadedConfig, derived: &Derived) -> Graph {
    let cfg = &loaded.config;
    let mut writers: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (name, s) in &cfg.sources {
        writers.entry(s.topic.get_ref()).or_default().push(name);
    }
    for (name, s) in &cfg.stages {
        writers.entry(s.output.get_ref()).or_default().push(name);
    }
    // A topic's fields: its schema's, or what its writers put out.
    let fields_of = |g: &Graph, topic: &str| -> Vec<String> {
        if let Some(s) = derived.schemas.get(topic) {
            return s.fields.iter().map(|f| f.name.clone()).collect();
        }
        let mut all = BTreeSet::new();
        for w in writers.get(topic).into_iter().flatten() {
            match g.nodes.get(*w) {
                Some(f) => all.extend(f.iter().cloned()),
                None => {
                    all.insert(ANY.to_owned());
                }
            }
        }
        if all.is_empty() {
            all.insert(ANY.to_owned());
        }
        all.into_iter().collect()
    };
    let add = |g: &mut Graph, node: &str, input: &str, fields: Fields| {
        let named: Vec<String> = fields.out.keys().filter(|f| *f != ANY).cloned().collect();
        let mut except: Vec<String> = fields.gone.iter().cloned().chain(named).collect();
        except.sort();
        except.dedup();
        for w in writers.get(input).into_iter().flatten() {
            for (field, s) in &fields.out {
                let non = s.non_selected.iter().filter(|c| !s.selected.contains(*c));
                let uses = s.selected.iter().map(|c| (c, Use::Selected));
                for (c, how) in uses.chain(non.map(|c| (c, Use::NonSelected))) {
                    let every = c == ANY && field == ANY;
                    g.edges.push(Edge {
                        from: format!("{w}.{c}"),
                        to: format!("{node}.{field}"),
                        how,
                        via: node.to_owned(),
                        note: s.note.clone(),
                        except: if every { except.clone() } else { Vec::new() },
                        redacted: how == Use::Selected && s.redacted.contains(c),
                    });
                }
            }
        }
        g.nodes
            .insert(node.to_owned(), fields.out.into_keys().collect());
    };
    let mut g = Graph::default();
    for (name, s) in &cfg.sources {
        let topic = s.topic.get_ref();
        let fields = match derived.schemas.get(topic) {
            Some(s) => s.fields.iter().map(|f| f.name.clone()).collect(),
            None => vec![ANY.to_owned()],
        };
        g.nodes.insert(name.clone(), fields);
    }
    // Stages once the writers of their input are known (the graph has no cycles).
    let mut pending: Vec<&String> = cfg.stages.keys().collect();
    while !pending.is_empty() {
        let ready = |n: &&String| {
            let input = cfg.stages[*n].input.get_ref();
            let ws = writers.get(input.as_str()).into_iter().flatten();
            ws.filter(|w| **w != n.as_str())
                .all(|w| g.nodes.contains_key(*w))
        };
        let (mut now, later): (Vec<&String>, Vec<&String>) =
            pending.iter().copied().partition(ready);
        if now.is_empty() {
            now = later.clone(); // not reached: validation refuses cycles
        }
        for name in &now {
            let s = &cfg.stages[*name];
            let input = s.input.get_ref();
            let fields = match (derived.queries.get(*name), derived.windows.get(*name)) {
                #[cfg(feature = "sql")]
                (Some(q), _) => of_query(q.lineage()),
                #[cfg(feature = "sql")]
                (None, Some(q)) => of_query(q.lineage()),
                #[cfg(not(feature = "sql"))]
                (Some(q), _) => match **q {},
                #[cfg(not(feature = "sql"))]
                (None, Some(q)) => match **q {},
                (None, None) => of_transforms(&fields_of(&g, input), &s.transforms),
            };
            add(&mut g, name, input, fields);
        }
        pending = later.into_iter().filter(|n| !now.contains(n)).collect();
    }
    for (name, s) in &cfg.sinks {
        let input = s.input.get_ref();
        let fields = Fields {
            out: pass_through(&fields_of(&g, input)),
            gone: BTreeSet::new(),
        };
        add(&mut g, name, input, fields);
    }
    g.edges.sort();
    g.edges.dedup();
    g
}

#[cfg(feature = "sql")]
fn of_query(lineage: &[hifi_sql::FieldLineage]) -> Fields {
    let out = lineage
        .iter()
        .map(|f| {
            let s = Sources {
                selected: f.selected.iter().cloned().collect(),
                non_selected: f.non_selected.iter().cloned().collect(),
                note: Some("sql".into()),
                redacted: BTreeSet::new(),
            };
            (f.field.clone(), s)
        })
        .collect();
    Fields {
        out,
        gone: BTreeSet::new(),
    }
}

fn pass_through(fields: &[String]) -> BTreeMap<String, Sources> {
    fields
        .iter()
        .map(|f| {
            let s = Sources {
                selected: BTreeSet::from([f.clone()]),
                ..Sources::default()
            };
            (f.clone(), s)
        })
        .collect()
}

/// A transform stage's fields from its input's, transform by transform.
fn of_transforms(input: &[String], transforms: &[TransformConfig]) -> Fields {
    let mut out = pass_through(input);
    let mut gone = BTreeSet::new();
    let open = input.iter().any(|f| f == ANY);
    let mut rows: BTreeSet<String> = BTreeSet::new();
    // The top-level field a pointer names (`/a/b` → `a`); `None` for a bad pointer
    // (validation refused it already).
    let top = |p: &str| {
        crate::transform::parse_pointer(p)
            .ok()
            .map(|v| (v[0].clone(), v.len()))
    };
    for t in transforms {
        match t {
            TransformConfig::Filter { condition } => rows.extend(filter_fields(condition)),
            TransformConfig::Set { field, .. } => {
                if let Some((f, depth)) = top(field) {
                    // Setting `/user/checked` on an input of unknown fields keeps the rest
                    // of `user` flowing through.
                    let e = out.entry(f.clone()).or_insert_with(|| seed(open, &f));
                    if depth == 1 {
                        // A constant replaces the value: nothing flows in any more.
                        *e = Sources::default();
                    }
                }
            }
            TransformConfig::Rename { from, to } => {
                let (Some((f, fd)), Some((t, td))) = (top(from), top(to)) else {
                    continue;
                };
                let moved = match out.get(&f) {
                    Some(s) => s.clone(),
                    None if open => Sources {
                        selected: BTreeSet::from([f.clone()]),
                        ..Sources::default()
                    },
                    None => continue,
                };
                if fd == 1 {
                    out.remove(&f);
                    gone.insert(f);
                }
                let e = out
                    .entry(t.clone())
                    .or_insert_with(|| seed(open && td > 1, &t));
                if td == 1 {
                    // The moved value replaces the field.
                    *e = moved;
                } else {
                    e.selected.extend(moved.selected);
                    e.non_selected.extend(moved.non_selected);
                    e.redacted.extend(moved.redacted);
                }
                e.note = Some(format!("rename from {from}"));
            }
            TransformConfig::Remove { fields } => {
                for p in fields {
                    if let Some((f, 1)) = top(p) {
                        out.remove(&f);
                        gone.insert(f);
                    }
                }
            }
            TransformConfig::Redact {
                field,
                mode,
                keep_last,
                ..
            } => {
                if let Some((f, depth)) = top(field) {
                    let e = out.entry(f.clone()).or_insert_with(|| Sources {
                        selected: BTreeSet::from([f]),
                        ..Sources::default()
                    });
                    // Redacting part of a value (`/user/email`) leaves the rest as it was;
                    // a mask that leaves more than a few characters visible hides little.
                    let hides = *mode == crate::config::RedactMode::Hash
                        || *keep_last <= MASK_KEEP_LAST_MAX;
                    if depth == 1 && hides {
                        e.redacted = e.selected.clone();
                    }
                    let how = match mode {
                        crate::config::RedactMode::Hash => "redact (hash)",
                        crate::config::RedactMode::Mask => "redact (mask)",
                    };
                    e.note = Some(how.into());
                }
            }
        }
    }
    for s in out.values_mut() {
        s.non_selected.extend(rows.iter().cloned());
    }
    Fields { out, gone }
}

/// A field a transform names first: on an input of unknown fields (`*`), it carries the
/// input's field of that name; otherwise it starts empty.
fn seed(open: bool, f: &str) -> Sources {
    if open {
        Sources {
            selected: BTreeSet::from([f.to_owned()]),
            ..Sources::default()
        }
    } else {
        Sources::default()
    }
}

/// A `mask` redact ends PII only when it leaves at most this many characters visible.
pub const MASK_KEEP_LAST_MAX: usize = 4;

/// The top-level event fields a CEL condition reads (`event.a`, `event["a"]`); `*` when it
/// uses the whole event.
fn filter_fields(condition: &str) -> BTreeSet<String> {
    use cel_parser::{Atom, Expression as E, Member};
    fn walk(e: &E, out: &mut BTreeSet<String>) {
        match e {
            E::Member(inner, m) if matches!(&**inner, E::Ident(v) if v.as_str() == "event") => {
                match &**m {
                    Member::Attribute(name) => {
                        out.insert(name.to_string());
                    }
                    Member::Index(i) => match &**i {
                        E::Atom(Atom::String(name)) => {
                            out.insert(name.to_string());
                        }
                        other => {
                            out.insert(ANY.to_owned());
                            walk(other, out);
                        }
                    },
                    Member::Fields(_) => {
                        out.insert(ANY.to_owned());
                    }
                }
            }
            E::Ident(v) if v.as_str() == "event" => {
                out.insert(ANY.to_owned());
            }
            E::Ident(_) | E::Atom(_) => {}
            E::Arithmetic(a, _, b) | E::Relation(a, _, b) | E::Or(a, b) | E::And(a, b) => {
                walk(a, out);
                walk(b, out);
            }
            E::Ternary(a, b, c) => {
                for x in [a, b, c] {
                    walk(x, out);
                }
            }
            E::Unary(_, a) => walk(a, out),
            E::Member(inner, m) => {
                walk(inner, out);
                match &**m {
                    Member::Index(i) => walk(i, out),
                    Member::Fields(fs) => fs.iter().for_each(|(_, x)| walk(x, out)),
                    Member::Attribute(_) => {}
                }
            }
            E::FunctionCall(f, target, args) => {
                walk(f, out);
                if let Some(t) = target {
                    walk(t, out);
                }
                args.iter().for_each(|a| walk(a, out));
            }
            E::List(xs) => xs.iter().for_each(|x| walk(x, out)),
            E::Map(kv) => kv.iter().for_each(|(k, v)| {
                walk(k, out);
                walk(v, out);
            }),
        }
    }
    let mut out = BTreeSet::new();
    match cel_parser::parse(condition) {
        Ok(e) => walk(&e, &mut out),
        Err(_) => {
            out.insert(ANY.to_owned());
        }
    }
    out
}

impl Graph {
    /// Every field `field` (`node.field`) comes from, nearest first.
    pub fn upstream(&self, field: &str) -> Result<Vec<Reached>, String> {
        self.check(field)?;
        Ok(self.reach_by(field, |e| (&e.to, &e.from), |_| true))
    }

    /// Every field `field` (`node.field`) reaches, nearest first.
    pub fn impact(&self, field: &str) -> Result<Vec<Reached>, String> {
        self.check(field)?;
        Ok(self.reach_by(field, |e| (&e.from, &e.to), |_| true))
    }

    /// Every field PII in `field` (`node.field`) reaches: along selected edges that do
    /// not redact it (a removed field has no edge on).
    pub fn pii_reach(&self, field: &str) -> Vec<Reached> {
        let carries = |e: &Edge| e.how == Use::Selected && !e.redacted;
        self.reach_by(field, |e| (&e.from, &e.to), carries)
    }

    fn check(&self, field: &str) -> Result<(), String> {
        let (node, f) = field
            .split_once('.')
            .ok_or_else(|| format!("{field:?}: write it as NODE.FIELD (e.g. api.email)"))?;
        let Some(fields) = self.nodes.get(node) else {
            let known: Vec<&str> = self.nodes.keys().map(String::as_str).collect();
            return Err(format!("no node {node:?}; nodes: {}", known.join(", ")));
        };
        if !fields.iter().any(|x| x == f || x == ANY) {
            return Err(format!(
                "{node} has no field {f:?}; its fields: {}",
                fields.join(", ")
            ));
        }
        Ok(())
    }

    /// Breadth-first along the edges `follow` accepts (`ends` gives an edge's near and
    /// far end), following `n.*` edges for any field name; a field is reported once,
    /// selected if some path to it is.
    fn reach_by(
        &self,
        start: &str,
        ends: impl Fn(&Edge) -> (&String, &String),
        follow: impl Fn(&Edge) -> bool,
    ) -> Vec<Reached> {
        let mut best: BTreeMap<String, (Use, Vec<String>)> = BTreeMap::new();
        let mut queue = VecDeque::from([(start.to_owned(), Use::Selected, vec![start.to_owned()])]);
        let mut order = Vec::new();
        while let Some((at, how, path)) = queue.pop_front() {
            let (node, field) = at.split_once('.').unwrap_or((&at, ""));
            for e in self.edges.iter().filter(|e| follow(e)) {
                let (near, far) = ends(e);
                let (near_node, near_field) = near.split_once('.').unwrap_or((near, ""));
                let matches = near == &at || (near_node == node && near_field == ANY);
                if !matches || (near_field == ANY && e.except.iter().any(|x| x == field)) {
                    continue;
                }
                // `a.* → b.*` carries this very field; an edge to a named field is itself.
                let (far_node, far_field) = far.split_once('.').unwrap_or((far, ""));
                let next = if far_field == ANY && near_field == ANY && field != ANY {
                    format!("{far_node}.{field}")
                } else {
                    far.clone()
                };
                let next_how = how.max(e.how);
                let known = best.get(&next).map(|(h, _)| *h);
                if known.is_some_and(|h| h <= next_how) || next == start {
                    continue;
                }
                let mut p = path.clone();
                p.push(next.clone());
                if known.is_none() {
                    order.push(next.clone());
                }
                best.insert(next.clone(), (next_how, p.clone()));
                queue.push_back((next, next_how, p));
            }
        }
        order
            .into_iter()
            .map(|f| {
                let (how, path) = best.remove(&f).expect("recorded");
                Reached {
                    field: f,
                    how,
                    path,
                }
            })
            .collect()
    }
}
