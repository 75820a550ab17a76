//! LLM-guided search ([LLM] DiffNAS, ALGORITHMS.md section 3): each round a chat model gets the
//! space, the budget and the search memory and proposes K genomes; they are parsed, validated
//! and deduplicated, with one re-prompt carrying the errors; the valid ones are trained and
//! scored like any other strategy's.
//!
//! Every round's messages and raw replies go to `RUN_DIR/llm/round-NNN.json` (never the API
//! key). A round file is written once the round's proposals are final, so a resumed search
//! replays it instead of asking again: no trial is lost, repeated or paid for twice.

/// The defaults of an LLM-guided search (`diffnas search llm` shows them in its help).
pub mod defaults {
    pub const MODEL: &str = "gpt-4o";
    pub const API_KEY_ENV: &str = "OPENAI_API_KEY";
    pub const TEMPERATURE: f64 = 0.7;
    pub const MAX_TOKENS: usize = 4096;
    pub const TIMEOUT_S: f64 = 120.0;
    pub const RETRIES: usize = 4;
    pub const BACKOFF_S: f64 = 2.0;
    pub const ROUNDS: usize = 10;
    pub const PER_ROUND: usize = 2;
    /// The search memory in the prompt: the best trials, the most recent ones, the rejected
    /// proposals.
    pub const MEMORY_TOP: usize = 20;
    pub const MEMORY_RECENT: usize = 10;
    pub const MEMORY_REJECTED: usize = 10;
}

pub mod client;
pub mod parse;
pub mod prompt;

use super::{Proposal, SearchError, Strategy, TrialRecord};
use crate::genome::{Genome, SearchSpace};
use client::{Chat, Message};
use parse::{Rejected, parse_reply};
use prompt::{MemoryLimits, PromptInput, build_messages, correction, memory_text};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlmSearchConfig {
    /// Rounds R.
    pub rounds: usize,
    /// Candidates K asked for per round.
    pub per_round: usize,
    pub memory: MemoryLimits,
    /// Dataset name for the prompt.
    pub dataset: String,
    /// Score name for the prompt (`RFID`, `RFD-classifier`).
    pub metric: String,
}

/// One request and its answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Exchange {
    pub messages: Vec<Message>,
    pub reply: String,
}

/// `llm/round-NNN.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundFile {
    pub round: usize,
    pub exchanges: Vec<Exchange>,
    pub proposals: Vec<Genome>,
    pub rejected: Vec<Rejected>,
}

/// Told about each round once its proposals are final.
pub type RoundHook = Box<dyn FnMut(&RoundFile)>;

pub struct LlmSearch {
    pub chat: Box<dyn Chat>,
    pub cfg: LlmSearchConfig,
    /// The search's run directory.
    pub dir: PathBuf,
    /// Called when a round's proposals are final (round, proposals, rejected).
    pub on_round: Option<RoundHook>,
}

pub fn round_path(dir: &Path, round: usize) -> PathBuf {
    dir.join("llm").join(format!("round-{round:03}.json"))
}

/// Every candidate the rounds written so far in `dir` rejected, in round order.
pub fn rejections(dir: &Path) -> Result<Vec<Rejected>, SearchError> {
    let mut out = Vec::new();
    for r in 0.. {
        let p = round_path(dir, r);
        if !p.is_file() {
            break;
        }
        let text = std::fs::read_to_string(&p).map_err(|e| super::io_err(&p, e))?;
        let rf: RoundFile = serde_json::from_str(&text).map_err(|e| super::io_err(&p, e))?;
        out.extend(rf.rejected);
    }
    Ok(out)
}

impl LlmSearch {
    fn read_round(&self, r: usize) -> Result<Option<RoundFile>, SearchError> {
        let p = round_path(&self.dir, r);
        if !p.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&p).map_err(|e| super::io_err(&p, e))?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| super::io_err(&p, e))
    }

    fn ask(&self, messages: &[Message]) -> Result<String, SearchError> {
        self.chat
            .chat(messages)
            .map_err(|e| SearchError::Strategy(e.to_string()))
    }

    fn new_round(
        &mut self,
        r: usize,
        log: &[TrialRecord],
        rejected_before: &[Rejected],
        space: &SearchSpace,
    ) -> Result<RoundFile, SearchError> {
        let k = self.cfg.per_round;
        let example = Genome::tiny_for(space.image);
        let input = PromptInput {
            dataset: &self.cfg.dataset,
            space,
            metric: &self.cfg.metric,
            memory: memory_text(log, rejected_before, &self.cfg.memory, &self.cfg.metric),
            k,
            example: &example,
        };
        let messages = build_messages(&input);
        let reply = self.ask(&messages)?;
        let mut seen: HashSet<String> = super::seen_hashes(log);
        let mut parsed = parse_reply(&reply, space, &seen);
        let mut exchanges = vec![Exchange {
            messages: messages.clone(),
            reply: reply.clone(),
        }];
        if !parsed.rejected.is_empty() && parsed.genomes.len() < k {
            let mut again = messages;
            again.push(Message::assistant(reply));
            again.push(correction(&parsed.rejected, k - parsed.genomes.len()));
            let reply2 = self.ask(&again)?;
            seen.extend(parsed.genomes.iter().map(|g| g.hash()));
            let second = parse_reply(&reply2, space, &seen);
            exchanges.push(Exchange {
                messages: again,
                reply: reply2,
            });
            parsed.genomes.extend(second.genomes);
            parsed.rejected.extend(second.rejected);
        }
        parsed.genomes.truncate(k);
        let rf = RoundFile {
            round: r,
            exchanges,
            proposals: parsed.genomes,
            rejected: parsed.rejected,
        };
        let p = round_path(&self.dir, r);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).map_err(|e| super::io_err(d, e))?;
        }
        let json = serde_json::to_vec_pretty(&rf).expect("round serialises");
        crate::train::write_atomic(&p, &json).map_err(|e| super::io_err(&p, e))?;
        Ok(rf)
    }
}

impl Strategy for LlmSearch {
    fn name(&self) -> String {
        "llm".into()
    }

    /// A round's replies are asked for once the previous round's trials have all ended.
    fn synchronous(&self) -> bool {
        true
    }

    fn propose(
        &mut self,
        log: &[TrialRecord],
        space: &SearchSpace,
    ) -> Result<Vec<Proposal>, SearchError> {
        let done = super::seen_hashes(log);
        let mut rejected = Vec::new();
        for r in 0..self.cfg.rounds {
            let rf = match self.read_round(r)? {
                Some(rf) => rf,
                None => {
                    let rf = self.new_round(r, log, &rejected, space)?;
                    if let Some(f) = &mut self.on_round {
                        f(&rf);
                    }
                    rf
                }
            };
            rejected.extend(rf.rejected.iter().cloned());
            let pending: Vec<Proposal> = rf
                .proposals
                .iter()
                .filter(|g| !done.contains(&g.hash()))
                .map(|g| Proposal {
                    genome: g.clone(),
                    origin: format!("llm round {r}"),
                })
                .collect();
            if !pending.is_empty() {
                return Ok(pending);
            }
        }
        Ok(Vec::new())
    }
}
