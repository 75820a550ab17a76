//! The prompt, rebuilt from scratch every round (ALGORITHMS.md section 3): role, task, fixed
//! skeleton, search space with allowed values, budget, the search memory, the request and the
//! output format.

use super::client::Message;
use super::parse::Rejected;
use crate::genome::{Genome, SearchSpace};
use crate::search::TrialRecord;

/// How much of the history the prompt carries when it is long.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MemoryLimits {
    /// The best N successful trials...
    pub top: usize,
    /// ...plus the M most recent trials (of any status).
    pub recent: usize,
    /// Rejected proposals (invalid, over budget, duplicates) listed, newest first.
    pub rejected: usize,
}

impl Default for MemoryLimits {
    fn default() -> Self {
        MemoryLimits {
            top: super::defaults::MEMORY_TOP,
            recent: super::defaults::MEMORY_RECENT,
            rejected: super::defaults::MEMORY_REJECTED,
        }
    }
}

fn line(r: &TrialRecord, metric: &str) -> String {
    let o = &r.outcome;
    let result = match r.score() {
        Some(s) => format!("{metric} = {s:.4}"),
        None => format!(
            "{:?}: {}",
            o.status,
            o.reason.as_deref().unwrap_or("no reason recorded")
        )
        .to_lowercase(),
    };
    format!(
        "- trial {} [{}] {result}; params = {}; MACs = {}; genome = {}",
        r.index,
        r.hash,
        o.params.map_or("?".into(), |p| p.to_string()),
        o.macs.map_or("?".into(), |m| m.to_string()),
        r.genome.canonical_json()
    )
}

/// The search memory as prompt text: best first, then recent ones not already listed, then
/// rejected proposals with their errors.
pub fn memory_text(
    log: &[TrialRecord],
    rejected: &[Rejected],
    limits: &MemoryLimits,
    metric: &str,
) -> String {
    if log.is_empty() && rejected.is_empty() {
        return "No architecture has been evaluated yet.".into();
    }
    let mut ok: Vec<&TrialRecord> = log.iter().filter(|r| r.score().is_some()).collect();
    ok.sort_by(|a, b| a.score().partial_cmp(&b.score()).expect("finite scores"));
    let top: Vec<&TrialRecord> = ok.into_iter().take(limits.top).collect();
    let mut s = String::new();
    if !top.is_empty() {
        s.push_str(&format!(
            "Evaluated architectures, best first (lower {metric} is better):\n"
        ));
        for r in &top {
            s.push_str(&line(r, metric));
            s.push('\n');
        }
    }
    let recent: Vec<&TrialRecord> = log
        .iter()
        .rev()
        .filter(|r| !top.iter().any(|t| t.index == r.index))
        .take(limits.recent)
        .collect();
    if !recent.is_empty() {
        s.push_str("Other recent trials, newest first:\n");
        for r in recent {
            s.push_str(&line(r, metric));
            s.push('\n');
        }
    }
    let omitted = log.len().saturating_sub(top.len() + limits.recent);
    if omitted > 0 {
        s.push_str(&format!("({omitted} older trials not shown.)\n"));
    }
    if !rejected.is_empty() {
        s.push_str("Proposals rejected before training (do not repeat these mistakes):\n");
        for r in rejected.iter().rev().take(limits.rejected) {
            s.push_str(&format!("- {} -> {}\n", r.candidate, r.error));
        }
    }
    s
}

/// Everything the prompt needs.
pub struct PromptInput<'a> {
    pub dataset: &'a str,
    pub space: &'a SearchSpace,
    pub metric: &'a str,
    pub memory: String,
    pub k: usize,
    /// A valid genome showing the format.
    pub example: &'a Genome,
}

pub const SYSTEM: &str = "You are an expert in neural architecture search and in diffusion \
models (DDPM, IDDPM). You design UNet denoisers and reply with JSON only.";

/// The round's messages.
pub fn build_messages(p: &PromptInput) -> Vec<Message> {
    let space = serde_json::to_string_pretty(p.space).expect("space serialises");
    let budget = serde_json::to_string(&p.space.budget).expect("budget serialises");
    let user = format!(
        "Task: find a UNet noise-prediction network for a DDPM diffusion model on {dataset} \
(images {c}x{s}x{s}) with the lowest {metric} (a Frechet distance of 8-bit samples after a short \
rapid-convergence training run; lower is better).

Fixed skeleton: conv stem -> encoder levels (each: ResBlocks, self-attention at the listed \
resolutions, then a strided-conv downsample except after the last level) -> middle \
(ResBlock, attention, ResBlock) -> decoder levels (each has one more ResBlock than its encoder \
level; inputs are concatenated with the encoder's skips; nearest-x2 upsample + conv) -> \
GroupNorm, SiLU, conv head. Each ResBlock: GroupNorm, SiLU, conv (kernels[0]) to \
hidden_mult x width, timestep embedding added, GroupNorm, SiLU, dropout, conv (kernels[1]). \
Channels of level l = base_channels x channel_mult of level l. Sinusoidal timestep embedding, \
MLP of width time_embed_mult x base_channels.

Search space (every value must be one of these; attention only at resolutions <= \
attention_max_resolution that exist in the network; base_channels x every multiplier and the \
hidden widths must be divisible by norm_groups):
{space}

Budget (parameters and multiply-accumulates per image): {budget}

Search memory:
{memory}

Request: propose {k} new architectures that you expect to reach a lower {metric} than the best \
so far. Do not repeat or closely imitate evaluated architectures; explain nothing.

Output format: a JSON array of {k} genome objects and nothing else, each exactly in this form:
{example}",
        dataset = p.dataset,
        c = p.space.image.channels,
        s = p.space.image.size,
        metric = p.metric,
        memory = p.memory.trim_end(),
        k = p.k,
        example = p.example.canonical_json(),
    );
    vec![Message::system(SYSTEM), Message::user(user)]
}

/// The one re-prompt after a reply with rejected candidates.
pub fn correction(rejected: &[Rejected], missing: usize) -> Message {
    let mut s = format!("{} of your candidates cannot be used:\n", rejected.len());
    for r in rejected {
        s.push_str(&format!("- {}\n", r.error));
    }
    s.push_str(&format!(
        "Reply with a JSON array of {missing} corrected, new genome objects in the same format, \
         and nothing else."
    ));
    Message::user(s)
}
