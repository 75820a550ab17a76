//! Random search: uniform draws from the search space within the budget (ALGORITHMS.md
//! section 7), skipping genomes already in the log.

use super::{Proposal, SearchError, Strategy, TrialRecord, strategy_rng};
use crate::genome::SearchSpace;

pub struct RandomSearch {
    pub seed: u64,
    /// Draws before giving up on finding a valid genome. Rejection sampling keeps the draw
    /// uniform over the valid genomes; a tight budget accepts few draws (about 1 in 1,200 for
    /// 1 M parameters and 40 M MACs at 28x28), and a draw costs microseconds.
    pub max_tries: usize,
}

impl RandomSearch {
    pub fn new(seed: u64) -> Self {
        RandomSearch {
            seed,
            max_tries: 200_000,
        }
    }
}

impl Strategy for RandomSearch {
    fn name(&self) -> String {
        "random".into()
    }

    fn propose(
        &mut self,
        log: &[TrialRecord],
        space: &SearchSpace,
    ) -> Result<Vec<Proposal>, SearchError> {
        // A few attempts at a genome the log does not hold yet; the loop skips (and counts) a
        // duplicate if every attempt collides.
        let mut last = None;
        let seen = super::seen_hashes(log);
        for k in 0..16 {
            let mut rng = strategy_rng(self.seed, log.len(), k);
            let Some(g) = space.random(&mut rng, self.max_tries) else {
                return Err(SearchError::Strategy(format!(
                    "no valid genome in {} random draws: the budget window may be empty",
                    self.max_tries
                )));
            };
            let fresh = !seen.contains(&g.hash());
            last = Some(g);
            if fresh {
                break;
            }
        }
        Ok(last
            .map(|genome| Proposal {
                genome,
                origin: "random".into(),
            })
            .into_iter()
            .collect())
    }
}
