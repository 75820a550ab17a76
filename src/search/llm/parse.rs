//! Reading genomes out of a chat reply: the first JSON array or object in the text (code
//! fences and prose around it are tolerated), then each candidate on its own: parsed with
//! field paths, validated against the space (budget included), checked for duplicates. A reply
//! that is only partly valid keeps its valid candidates.

use crate::genome::{Genome, SearchSpace};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// A candidate the reply offered that will not be trained, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rejected {
    /// The candidate as the model wrote it (compact JSON), or a note when there was none.
    pub candidate: String,
    pub error: String,
    /// The kind of error, for counting (rounds written before kinds were recorded: `other`).
    #[serde(default)]
    pub kind: RejectKind,
}

/// Why a candidate was rejected, coarsely.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum RejectKind {
    /// The reply held no JSON at all.
    NoJson,
    /// JSON that is not a genome.
    NotAGenome,
    /// A genome with a knob outside the search space.
    OutsideSpace,
    /// A genome of the space over the parameter or MAC budget.
    OverBudget,
    /// A genome already evaluated or proposed.
    Duplicate,
    #[default]
    Other,
}

impl RejectKind {
    pub fn describe(self) -> &'static str {
        match self {
            RejectKind::NoJson => "replies with no JSON",
            RejectKind::NotAGenome => "JSON that is not a genome",
            RejectKind::OutsideSpace => "genomes outside the search space",
            RejectKind::OverBudget => "genomes over the budget",
            RejectKind::Duplicate => "duplicates",
            RejectKind::Other => "other",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Parsed {
    pub genomes: Vec<Genome>,
    pub rejected: Vec<Rejected>,
}

/// The first complete JSON array or object in `text`.
pub fn first_json(text: &str) -> Option<serde_json::Value> {
    for (i, c) in text.char_indices() {
        if c == '[' || c == '{' {
            let mut it =
                serde_json::Deserializer::from_str(&text[i..]).into_iter::<serde_json::Value>();
            if let Some(Ok(v)) = it.next()
                && (v.is_array() || v.is_object())
            {
                return Some(v);
            }
        }
    }
    None
}

/// Candidates in a reply: a JSON array of genomes, an object holding such an array under any
/// key (`{"genomes": [...]}`), or one genome object.
fn candidates(v: serde_json::Value) -> Vec<serde_json::Value> {
    match v {
        serde_json::Value::Array(a) => a,
        serde_json::Value::Object(ref o) if !o.contains_key("encoder") => o
            .values()
            .find_map(|x| x.as_array().cloned())
            .unwrap_or_else(|| vec![v.clone()]),
        other => vec![other],
    }
}

/// Parse `reply`; `seen` holds the canonical hashes already evaluated or proposed.
pub fn parse_reply(reply: &str, space: &SearchSpace, seen: &HashSet<String>) -> Parsed {
    let mut out = Parsed::default();
    let Some(v) = first_json(reply) else {
        out.rejected.push(Rejected {
            candidate: "(none)".into(),
            error: "the reply holds no JSON array or object".into(),
            kind: RejectKind::NoJson,
        });
        return out;
    };
    let mut fresh = HashSet::new();
    for (i, c) in candidates(v).into_iter().enumerate() {
        let text = c.to_string();
        let reject = |kind: RejectKind, e: String| Rejected {
            candidate: text.clone(),
            error: format!("candidate {i}: {e}"),
            kind,
        };
        let g = match Genome::from_json(&text) {
            Ok(g) => g,
            Err(e) => {
                out.rejected
                    .push(reject(RejectKind::NotAGenome, e.to_string()));
                continue;
            }
        };
        if let Err(e) = space.validate(&g) {
            // Budget errors name the cost, `(cost).params` or `(cost).macs`; the budget is
            // checked only once everything else is valid.
            let kind = if e.0.iter().all(|x| x.path.starts_with("(cost)")) {
                RejectKind::OverBudget
            } else {
                RejectKind::OutsideSpace
            };
            out.rejected.push(reject(kind, e.to_string()));
            continue;
        }
        let h = g.hash();
        if seen.contains(&h) {
            out.rejected.push(reject(
                RejectKind::Duplicate,
                format!("duplicate of evaluated genome {h}"),
            ));
            continue;
        }
        if !fresh.insert(h.clone()) {
            out.rejected.push(reject(
                RejectKind::Duplicate,
                format!("repeats genome {h} of this reply"),
            ));
            continue;
        }
        out.genomes.push(g);
    }
    out
}
