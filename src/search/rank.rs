//! Does the proxy rank like the real thing? Spearman's rank correlation between proxy scores
//! and longer-training scores of the same architectures (ALGORITHMS.md section 4).

/// Ranks from 1, ties sharing their average rank (as scipy's `rankdata`).
pub fn ranks(x: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[a].partial_cmp(&x[b]).expect("finite values"));
    let mut r = vec![0.0; x.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && x[idx[j + 1]] == x[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            r[k] = avg;
        }
        i = j + 1;
    }
    r
}

/// Spearman's rho: Pearson's correlation of the ranks. None with fewer than 2 pairs or when
/// one side is constant.
pub fn spearman(a: &[f64], b: &[f64]) -> Option<f64> {
    assert_eq!(a.len(), b.len(), "paired samples");
    if a.len() < 2 {
        return None;
    }
    let (ra, rb) = (ranks(a), ranks(b));
    let n = a.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let cov: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = ra.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = rb.iter().map(|y| (y - mb).powi(2)).sum();
    (va > 0.0 && vb > 0.0).then(|| cov / (va * vb).sqrt())
}

use super::config::SearchConfig;
use super::{SearchError, TrialLog, TrialRecord, io_err};
use crate::trial::Evaluator;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::atomic::AtomicBool;

/// The folder of a proxy check inside its search's folder.
pub const PROXY_CHECK_DIR: &str = "proxy-check";

/// One line of `proxy-check/results.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProxyCheckRow {
    pub hash: String,
    pub proxy_score: f64,
    pub long_score: Option<f64>,
    pub long_seconds: f64,
    pub proxy_seconds: f64,
    pub reason: Option<String>,
}

/// `proxy-check/summary.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProxyCheckSummary {
    pub metric: String,
    pub proxy_steps: u64,
    pub long_steps: u64,
    /// Architectures with both scores.
    pub architectures: usize,
    pub spearman_rho: Option<f64>,
    pub rows: Vec<ProxyCheckRow>,
}

/// `k` of a search's scored trials spread evenly over its ranking, best first.
pub fn spread_picks(log: &TrialLog, k: usize) -> Vec<&TrialRecord> {
    let mut scored: Vec<&TrialRecord> =
        log.records.iter().filter(|r| r.score().is_some()).collect();
    scored.sort_by(|x, y| x.score().partial_cmp(&y.score()).expect("finite"));
    let k = k.min(scored.len());
    if k < 2 {
        return scored.into_iter().take(k).collect();
    }
    (0..k)
        .map(|i| scored[i * (scored.len() - 1) / (k - 1)])
        .collect()
}

/// The search's trial configuration stretched to `steps` (warm-up and checkpoints scale).
pub fn long_config(cfg: &SearchConfig, steps: u64) -> SearchConfig {
    let mut c = cfg.clone();
    let t = &mut c.trial.train;
    t.steps = steps;
    t.warmup_steps = (steps / 20).max(1);
    t.checkpoint_every = (steps / 4).max(1);
    c
}

/// Re-train `picks` with `evaluator` (the search's, stretched by [`long_config`]) into
/// `dir/proxy-check/<hash>/` and rank the long scores against the proxy's. Resumable: rows
/// already in `results.jsonl` are kept, and each new one is appended as it finishes.
/// `on_start(i, record)` and `on_done(row)` report progress.
#[allow(clippy::too_many_arguments)]
pub fn proxy_check(
    dir: &Path,
    metric: &str,
    proxy_steps: u64,
    long_steps: u64,
    picks: &[&TrialRecord],
    evaluator: &mut dyn Evaluator,
    on_start: &mut dyn FnMut(usize, &TrialRecord),
    on_done: &mut dyn FnMut(&ProxyCheckRow),
) -> Result<ProxyCheckSummary, SearchError> {
    let out = dir.join(PROXY_CHECK_DIR);
    std::fs::create_dir_all(&out).map_err(|e| io_err(&out, e))?;
    let rows_path = out.join("results.jsonl");
    let mut rows: Vec<ProxyCheckRow> = std::fs::read_to_string(&rows_path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let stop = AtomicBool::new(false);
    for (i, r) in picks.iter().enumerate() {
        if rows.iter().any(|x| x.hash == r.hash) {
            continue;
        }
        on_start(i, r);
        let o = evaluator.evaluate(&r.genome, Some(&out.join(&r.hash)), &stop);
        let row = ProxyCheckRow {
            hash: r.hash.clone(),
            proxy_score: r.score().unwrap_or(f64::NAN),
            long_score: o.score,
            long_seconds: o.seconds,
            proxy_seconds: r.outcome.seconds,
            reason: o.reason,
        };
        on_done(&row);
        super::append_line(&rows_path, &row)?;
        rows.push(row);
    }
    let pairs: Vec<(f64, f64)> = rows
        .iter()
        .filter_map(|r| Some((r.proxy_score, r.long_score?)))
        .collect();
    let (p, l): (Vec<f64>, Vec<f64>) = pairs.iter().copied().unzip();
    let summary = ProxyCheckSummary {
        metric: metric.to_string(),
        proxy_steps,
        long_steps,
        architectures: pairs.len(),
        spearman_rho: spearman(&p, &l),
        rows,
    };
    let p = out.join("summary.json");
    let text = serde_json::to_string_pretty(&summary).expect("serialises");
    crate::train::write_atomic(&p, text.as_bytes()).map_err(|e| io_err(&p, e))?;
    Ok(summary)
}
