//! Regularized evolution (Real et al. 2019, "aging evolution"), on the same evaluator and
//! budget as every other strategy.
//!
//! Knobs:
//! - `population` (P): the population is the P most recent successful trials; older ones age
//!   out whatever their score (this is the regularization).
//! - `sample` (S): each new candidate mutates the best of S trials drawn uniformly, without
//!   replacement, from the population (tournament selection).
//! - The first P trials are uniform random draws (the initial population).
//! - `crossover` (probability, 0 by default as in the paper): instead of mutating the
//!   tournament winner alone, cross it with the winner of a second tournament, then mutate.
//!
//! Failed and invalid trials never enter the population. Everything is a pure function of the
//! seed and the log, so a resumed search continues exactly.

use super::{Proposal, SearchError, Strategy, TrialRecord, strategy_rng};
use crate::genome::SearchSpace;
use rand::RngExt;
use rand::seq::index::sample;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EvolutionConfig {
    pub population: usize,
    pub sample: usize,
    pub crossover: f64,
}

impl Default for EvolutionConfig {
    fn default() -> Self {
        EvolutionConfig {
            population: 8,
            sample: 3,
            crossover: crate::search::config::defaults::CROSSOVER,
        }
    }
}

pub struct Evolution {
    pub seed: u64,
    pub cfg: EvolutionConfig,
}

impl Evolution {
    pub fn new(seed: u64, cfg: EvolutionConfig) -> Result<Self, SearchError> {
        if cfg.population < 2 || cfg.sample < 1 || cfg.sample > cfg.population {
            return Err(SearchError::Strategy(format!(
                "evolution needs population >= 2 and 1 <= sample <= population (got population \
                 {}, sample {})",
                cfg.population, cfg.sample
            )));
        }
        if !(0.0..=1.0).contains(&cfg.crossover) {
            return Err(SearchError::Strategy(format!(
                "crossover probability {} is not in [0, 1]",
                cfg.crossover
            )));
        }
        Ok(Evolution { seed, cfg })
    }
}

impl Strategy for Evolution {
    fn name(&self) -> String {
        "evolution".into()
    }

    fn propose(
        &mut self,
        log: &[TrialRecord],
        space: &SearchSpace,
    ) -> Result<Vec<Proposal>, SearchError> {
        let alive: Vec<&TrialRecord> = log.iter().filter(|r| r.score().is_some()).collect();
        let mut rng = strategy_rng(self.seed, log.len(), 0);
        if alive.len() < self.cfg.population {
            let mut random = super::random::RandomSearch::new(self.seed);
            let mut p = random.propose(log, space)?;
            for x in &mut p {
                x.origin = "random (initial population)".into();
            }
            return Ok(p);
        }
        let population = &alive[alive.len() - self.cfg.population..];
        let tournament = |rng: &mut rand::rngs::ChaCha8Rng| {
            sample(rng, population.len(), self.cfg.sample)
                .into_iter()
                .map(|i| population[i])
                .min_by(|a, b| a.score().partial_cmp(&b.score()).expect("finite"))
                .expect("sample >= 1")
        };
        let parent = tournament(&mut rng);
        let (base, origin) = if self.cfg.crossover > 0.0 && rng.random_bool(self.cfg.crossover) {
            let other = tournament(&mut rng);
            let child = space.crossover(&parent.genome, &other.genome, &mut rng, 50);
            (
                child,
                format!("crossover of {} and {}, mutated", parent.hash, other.hash),
            )
        } else {
            (
                parent.genome.clone(),
                format!("mutation of {}", parent.hash),
            )
        };
        // A child the log does not hold yet, if a few tries find one.
        let mut child = None;
        let seen = super::seen_hashes(log);
        for _ in 0..16 {
            match space.mutate(&base, &mut rng, 200) {
                Some(g) if !seen.contains(&g.hash()) => {
                    child = Some(g);
                    break;
                }
                Some(g) => child = Some(g),
                None => {}
            }
        }
        Ok(child
            .map(|genome| Proposal { genome, origin })
            .into_iter()
            .collect())
    }
}
