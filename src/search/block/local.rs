//! Local search (ALGORITHMS.md section 6): every block's candidate paths are scored on a fixed,
//! cached evaluation set (teacher traces of fixed batches), giving a table of (path, loss, cost)
//! per block. Selection is then a pure function of the tables:
//!
//! - [`choose`]: per block, the cheapest path (MACs) whose loss is at most `gamma` times the
//!   teacher-shaped path's loss; ties on MACs go to the lower loss, then fewer parameters.
//! - [`global_budget`]: the comparison mode, minimising the summed loss under a MAC budget
//!   for all blocks together (exact, by merging per-block Pareto fronts).
//!
//! A block's table is exhaustive when its space has at most `max_exhaustive` paths. Larger
//! spaces are searched by sampling: `samples` uniform paths plus the teacher's, then `rounds`
//! generations in which every path on the current (MACs, loss) Pareto front spawns
//! `children` single-unit mutations.

use super::supernet::BlockSupernet;
use super::{BlockSpace, Path, PathCost};
use crate::genome::{Genome, ResBlockGene};
use crate::model::BlockIo;
use burn::tensor::Tensor;
use rand::RngExt;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// One scored candidate of a block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scored {
    pub path: Path,
    /// Mean block-wise MSE on the evaluation set.
    pub loss: f64,
    pub cost: PathCost,
}

/// How a block's candidates are enumerated.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LocalSearchConfig {
    /// Score every path when a block has at most this many.
    pub max_exhaustive: u128,
    /// Otherwise: uniform samples ...
    pub samples: usize,
    /// ... then this many generations of mutating the Pareto front ...
    pub rounds: usize,
    /// ... with this many single-unit mutations per front member.
    pub children: usize,
    pub seed: u64,
}

impl Default for LocalSearchConfig {
    fn default() -> Self {
        LocalSearchConfig {
            max_exhaustive: 1296,
            samples: 300,
            rounds: 4,
            children: 8,
            seed: 0,
        }
    }
}

/// One block's scored table and how it was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlockTable {
    pub block: crate::model::BlockId,
    /// Paths in the block's space.
    pub space_size: String,
    pub exhaustive: bool,
    /// The teacher-shaped path's entry.
    pub reference: Scored,
    pub scored: Vec<Scored>,
}

/// Mean block loss of `path` over the cached evaluation batches (`evals[i]` is this block's
/// trace in batch `i`, `embs[i]` the batch's timestep embedding), on the plain device.
pub fn path_loss(
    net: &BlockSupernet,
    path: &[ResBlockGene],
    evals: &[BlockIo],
    embs: &[Tensor<2>],
) -> f64 {
    let mut sum = 0.0;
    for (io, emb) in evals.iter().zip(embs) {
        let out = net.forward(path, io.input.clone(), &io.skips, emb.clone());
        sum += super::distill::block_loss(&out, &io.outputs).into_scalar::<f32>() as f64;
    }
    sum / evals.len() as f64
}

/// Score a block's candidates (see the module docs for the enumeration).
pub fn score_block(
    space: &BlockSpace,
    teacher: &Genome,
    mut loss: impl FnMut(&[ResBlockGene]) -> f64,
    cfg: &LocalSearchConfig,
    mut progress: impl FnMut(usize),
) -> BlockTable {
    let size = space.size();
    let mut seen: HashSet<String> = HashSet::new();
    let mut scored: Vec<Scored> = Vec::new();
    let key = |p: &[ResBlockGene]| serde_json::to_string(p).expect("genes serialise");
    let mut eval = |p: Path, scored: &mut Vec<Scored>| {
        if seen.insert(key(&p)) {
            let l = loss(&p);
            scored.push(Scored {
                cost: space.cost(&p, teacher),
                path: p,
                loss: l,
            });
            progress(scored.len());
        }
    };
    let teacher_path = space.teacher_path();
    eval(teacher_path.clone(), &mut scored);
    let exhaustive = size <= cfg.max_exhaustive;
    if exhaustive {
        for i in 0..size {
            eval(space.path(i), &mut scored);
        }
    } else {
        let mut rng = rand::rngs::ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x10ca_15ea_4c40);
        let random = |rng: &mut rand::rngs::ChaCha8Rng| -> Path {
            space
                .units
                .iter()
                .map(|u| u.gene(rng.random_range(0..u.len())))
                .collect()
        };
        for _ in 0..cfg.samples {
            let p = random(&mut rng);
            eval(p, &mut scored);
        }
        for _ in 0..cfg.rounds {
            let front: Vec<Path> = pareto(&scored)
                .into_iter()
                .map(|i| scored[i].path.clone())
                .collect();
            for parent in front {
                for _ in 0..cfg.children {
                    let mut child = parent.clone();
                    let u = rng.random_range(0..space.units.len());
                    let unit = &space.units[u];
                    child[u] = unit.gene(rng.random_range(0..unit.len()));
                    eval(child, &mut scored);
                }
            }
        }
    }
    let reference = scored
        .iter()
        .find(|s| s.path == teacher_path)
        .expect("the teacher path is scored first")
        .clone();
    BlockTable {
        block: space.id,
        space_size: size.to_string(),
        exhaustive,
        reference,
        scored,
    }
}

/// Indices of the (MACs, loss) Pareto front, cheapest first.
pub fn pareto(scored: &[Scored]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scored.len()).collect();
    idx.sort_by(|&a, &b| {
        let (x, y) = (&scored[a], &scored[b]);
        x.cost
            .macs
            .cmp(&y.cost.macs)
            .then(x.loss.total_cmp(&y.loss))
    });
    let mut front = Vec::new();
    let mut best = f64::INFINITY;
    for i in idx {
        if scored[i].loss < best {
            best = scored[i].loss;
            front.push(i);
        }
    }
    front
}

/// The cheapest entry (MACs) with `loss <= gamma * reference`; ties on MACs go to the lower
/// loss, then to fewer parameters, then to the earlier entry. None when nothing qualifies.
pub fn choose(scored: &[Scored], reference: f64, gamma: f64) -> Option<usize> {
    let limit = gamma * reference;
    (0..scored.len())
        .filter(|&i| scored[i].loss <= limit)
        .min_by(|&a, &b| {
            let (x, y) = (&scored[a], &scored[b]);
            x.cost
                .macs
                .cmp(&y.cost.macs)
                .then(x.loss.total_cmp(&y.loss))
                .then(x.cost.params.cmp(&y.cost.params))
                .then(a.cmp(&b))
        })
}

/// Per block, the index chosen at `gamma` (the teacher path's entry when nothing qualifies,
/// which happens only for `gamma < 1`).
pub fn choose_all(tables: &[BlockTable], gamma: f64) -> Vec<usize> {
    tables
        .iter()
        .map(|t| {
            choose(&t.scored, t.reference.loss, gamma).unwrap_or_else(|| {
                t.scored
                    .iter()
                    .position(|s| s.path == t.reference.path)
                    .expect("reference is in the table")
            })
        })
        .collect()
}

/// Minimise the summed loss over blocks subject to summed block MACs `<= budget`: one entry
/// per table. Exact: per-block Pareto fronts are merged pairwise, keeping only non-dominated
/// (MACs, loss) combinations. None when even the cheapest combination exceeds the budget.
pub fn global_budget(tables: &[Vec<Scored>], budget: u64) -> Option<Vec<usize>> {
    // (macs, loss, choices)
    let mut acc: Vec<(u64, f64, Vec<usize>)> = vec![(0, 0.0, Vec::new())];
    for t in tables {
        let front = pareto(t);
        let mut next: Vec<(u64, f64, Vec<usize>)> = Vec::new();
        for (m, l, c) in &acc {
            for &i in &front {
                let macs = m + t[i].cost.macs;
                if macs <= budget {
                    let mut c = c.clone();
                    c.push(i);
                    next.push((macs, l + t[i].loss, c));
                }
            }
        }
        next.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
        let mut best = f64::INFINITY;
        next.retain(|(_, l, _)| {
            let keep = *l < best;
            if keep {
                best = *l;
            }
            keep
        });
        if next.is_empty() {
            return None;
        }
        acc = next;
    }
    acc.into_iter()
        .min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)))
        .map(|(_, _, c)| c)
}
