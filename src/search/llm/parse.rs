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
        });
        return out;
    };
    let mut fresh = HashSet::new();
    for (i, c) in candidates(v).into_iter().enumerate() {
        let text = c.to_string();
        let reject = |e: String| Rejected {
            candidate: text.clone(),
            error: format!("candidate {i}: {e}"),
        };
        let g = match Genome::from_json(&text) {
            Ok(g) => g,
            Err(e) => {
                out.rejected.push(reject(e.to_string()));
                continue;
            }
        };
        if let Err(e) = space.validate(&g) {
            out.rejected.push(reject(e.to_string()));
            continue;
        }
        let h = g.hash();
        if seen.contains(&h) {
            out.rejected
                .push(reject(format!("duplicate of evaluated genome {h}")));
            continue;
        }
        if !fresh.insert(h.clone()) {
            out.rejected
                .push(reject(format!("repeats genome {h} of this reply")));
            continue;
        }
        out.genomes.push(g);
    }
    out
}
