//! The search space: allowed values, budget, validation with JSON paths, random sampling,
//! mutation and crossover (NNI's vocabulary: the space a strategy samples from).

use super::{
    AttentionGene, DecoderLevel, EncoderLevel, Genome, GenomeError, GenomeErrors, ImageSpec,
    Middle, ResBlockGene, cost,
};
use rand::RngExt;
use rand::seq::IndexedRandom;
use serde::{Deserialize, Serialize};

/// A parameter and/or MAC window a genome must fit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_params: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_macs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_params: Option<u64>,
}

/// The allowed value of every knob, plus the budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchSpace {
    /// The data's image spec: every genome must match it.
    pub image: ImageSpec,
    pub base_channels: Vec<usize>,
    /// Allowed numbers of resolution levels.
    pub num_levels: Vec<usize>,
    pub channel_mults: Vec<usize>,
    /// Allowed ResBlocks per encoder level (the decoder level has one more).
    pub res_blocks: Vec<usize>,
    pub kernels: Vec<usize>,
    pub hidden_mults: Vec<f64>,
    pub heads: Vec<usize>,
    pub dropouts: Vec<f64>,
    pub scale_shift_norm: Vec<bool>,
    pub norm_groups: Vec<usize>,
    pub time_embed_mults: Vec<usize>,
    /// Self-attention is allowed only at resolutions up to this size (its cost is quadratic
    /// in the number of pixels).
    pub attention_max_resolution: usize,
    pub budget: Budget,
    /// Every genome of the space learns its variance (a search trained with `L_hybrid`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub learn_sigma: bool,
}

fn not_one_of<T: std::fmt::Debug + PartialEq>(
    errs: &mut Vec<GenomeError>,
    path: String,
    value: &T,
    allowed: &[T],
) {
    if !allowed.contains(value) {
        errs.push(GenomeError::new(
            path,
            format!("{value:?} is not one of {allowed:?}"),
        ));
    }
}

impl SearchSpace {
    /// The default space for images of a given spec (ALGORITHMS.md section 2).
    pub fn for_image(image: ImageSpec) -> SearchSpace {
        let num_levels = (2..=4)
            .filter(|&l| image.size.is_multiple_of(1 << (l - 1)) && (image.size >> (l - 1)) >= 4)
            .collect();
        SearchSpace {
            image,
            base_channels: vec![16, 24, 32, 48, 64, 96, 128, 192, 256],
            num_levels,
            channel_mults: vec![1, 2, 3, 4],
            res_blocks: vec![1, 2, 3],
            kernels: vec![1, 3, 5],
            hidden_mults: vec![0.5, 0.75, 1.0, 1.25],
            heads: vec![1, 2, 4, 8],
            dropouts: vec![0.0, 0.1, 0.2, 0.3],
            scale_shift_norm: vec![false, true],
            norm_groups: vec![8, 16, 32],
            time_embed_mults: vec![2, 4],
            attention_max_resolution: 16,
            budget: Budget::default(),
            learn_sigma: false,
        }
    }

    pub fn with_budget(mut self, budget: Budget) -> Self {
        self.budget = budget;
        self
    }

    /// Structural validity, membership of every knob, and the budget. Every error names its
    /// JSON path and the allowed values.
    pub fn validate(&self, g: &Genome) -> Result<(), GenomeErrors> {
        let mut errs = match g.check() {
            Ok(()) => Vec::new(),
            Err(GenomeErrors(e)) => e,
        };
        if g.image != self.image {
            errs.push(GenomeError::new(
                "image",
                format!(
                    "{}x{}x{} does not match the data ({}x{}x{})",
                    g.image.channels,
                    g.image.size,
                    g.image.size,
                    self.image.channels,
                    self.image.size,
                    self.image.size
                ),
            ));
        }
        if g.learn_sigma != self.learn_sigma {
            errs.push(GenomeError::new(
                "learn_sigma",
                format!(
                    "{} in a space whose genomes {} their variance (the search's loss decides it)",
                    g.learn_sigma,
                    if self.learn_sigma {
                        "learn"
                    } else {
                        "do not learn"
                    }
                ),
            ));
        }
        not_one_of(
            &mut errs,
            "base_channels".into(),
            &g.base_channels,
            &self.base_channels,
        );
        not_one_of(
            &mut errs,
            "encoder".into(),
            &g.encoder.len(),
            &self.num_levels,
        );
        if !self.num_levels.contains(&g.encoder.len())
            && let Some(last) = errs.last_mut()
        {
            last.message = format!(
                "has {} levels; allowed level counts are {:?}",
                g.encoder.len(),
                self.num_levels
            );
        }
        not_one_of(
            &mut errs,
            "time_embed_mult".into(),
            &g.time_embed_mult,
            &self.time_embed_mults,
        );
        not_one_of(
            &mut errs,
            "norm_groups".into(),
            &g.norm_groups,
            &self.norm_groups,
        );
        not_one_of(&mut errs, "dropout".into(), &g.dropout, &self.dropouts);
        not_one_of(
            &mut errs,
            "scale_shift_norm".into(),
            &g.scale_shift_norm,
            &self.scale_shift_norm,
        );
        if g.attention.head_channels.is_none() {
            not_one_of(
                &mut errs,
                "attention.heads".into(),
                &g.attention.heads,
                &self.heads,
            );
        }
        for (i, r) in g.attention.resolutions.iter().enumerate() {
            if *r > self.attention_max_resolution {
                errs.push(GenomeError::new(
                    format!("attention.resolutions[{i}]"),
                    format!(
                        "{r} is above the space's attention_max_resolution = {}",
                        self.attention_max_resolution
                    ),
                ));
            }
        }
        let block = |errs: &mut Vec<GenomeError>, path: String, b: &ResBlockGene| {
            for k in 0..2 {
                not_one_of(
                    errs,
                    format!("{path}.kernels[{k}]"),
                    &b.kernels[k],
                    &self.kernels,
                );
            }
            not_one_of(
                errs,
                format!("{path}.hidden_mult"),
                &b.hidden_mult,
                &self.hidden_mults,
            );
        };
        for (l, level) in g.encoder.iter().enumerate() {
            not_one_of(
                &mut errs,
                format!("encoder[{l}].channel_mult"),
                &level.channel_mult,
                &self.channel_mults,
            );
            if !self.res_blocks.contains(&level.res_blocks.len()) {
                errs.push(GenomeError::new(
                    format!("encoder[{l}].res_blocks"),
                    format!(
                        "has {} blocks; allowed counts are {:?}",
                        level.res_blocks.len(),
                        self.res_blocks
                    ),
                ));
            }
            for (b, rb) in level.res_blocks.iter().enumerate() {
                block(&mut errs, format!("encoder[{l}].res_blocks[{b}]"), rb);
            }
        }
        for (b, rb) in g.middle.res_blocks.iter().enumerate() {
            block(&mut errs, format!("middle.res_blocks[{b}]"), rb);
        }
        for (d, level) in g.decoder.iter().enumerate() {
            for (b, rb) in level.res_blocks.iter().enumerate() {
                block(&mut errs, format!("decoder[{d}].res_blocks[{b}]"), rb);
            }
        }
        if errs.is_empty() {
            self.check_budget(g)?;
            return Ok(());
        }
        Err(GenomeErrors(errs))
    }

    /// Only the budget (assumes a structurally valid genome).
    pub fn check_budget(&self, g: &Genome) -> Result<(), GenomeErrors> {
        let c = cost(g)?;
        let mut errs = Vec::new();
        if let Some(max) = self.budget.max_params
            && c.params > max
        {
            errs.push(GenomeError::new(
                "(cost).params",
                format!(
                    "{} parameters exceed the budget max_params = {max}",
                    c.params
                ),
            ));
        }
        if let Some(min) = self.budget.min_params
            && c.params < min
        {
            errs.push(GenomeError::new(
                "(cost).params",
                format!(
                    "{} parameters are below the budget min_params = {min}",
                    c.params
                ),
            ));
        }
        if let Some(max) = self.budget.max_macs
            && c.macs > max
        {
            errs.push(GenomeError::new(
                "(cost).macs",
                format!(
                    "{} MACs per image exceed the budget max_macs = {max}",
                    c.macs
                ),
            ));
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(GenomeErrors(errs))
        }
    }

    fn random_block<R: rand::Rng + ?Sized>(&self, rng: &mut R) -> ResBlockGene {
        ResBlockGene {
            kernels: [
                *self.kernels.choose(rng).expect("non-empty kernels"),
                *self.kernels.choose(rng).expect("non-empty kernels"),
            ],
            hidden_mult: *self
                .hidden_mults
                .choose(rng)
                .expect("non-empty hidden_mults"),
        }
    }

    fn random_attention<R: rand::Rng + ?Sized>(&self, rng: &mut R, levels: usize) -> Vec<usize> {
        (0..levels)
            .map(|l| self.image.size >> l)
            .filter(|&r| r <= self.attention_max_resolution && rng.random_bool(0.5))
            .collect()
    }

    /// One uniform draw of every knob (not yet checked).
    fn draw<R: rand::Rng + ?Sized>(&self, rng: &mut R) -> Genome {
        let levels = *self.num_levels.choose(rng).expect("non-empty num_levels");
        let norm_groups = *self.norm_groups.choose(rng).expect("non-empty norm_groups");
        let encoder: Vec<EncoderLevel> = (0..levels)
            .map(|_| {
                let n = *self.res_blocks.choose(rng).expect("non-empty res_blocks");
                EncoderLevel {
                    channel_mult: *self.channel_mults.choose(rng).expect("non-empty mults"),
                    res_blocks: (0..n).map(|_| self.random_block(rng)).collect(),
                }
            })
            .collect();
        let decoder = encoder
            .iter()
            .rev()
            .map(|e| DecoderLevel {
                res_blocks: (0..=e.res_blocks.len())
                    .map(|_| self.random_block(rng))
                    .collect(),
            })
            .collect();
        Genome {
            image: self.image,
            base_channels: *self
                .base_channels
                .choose(rng)
                .expect("non-empty base_channels"),
            time_embed_mult: *self.time_embed_mults.choose(rng).expect("non-empty"),
            norm_groups,
            dropout: *self.dropouts.choose(rng).expect("non-empty dropouts"),
            scale_shift_norm: *self.scale_shift_norm.choose(rng).expect("non-empty"),
            attention: AttentionGene {
                resolutions: self.random_attention(rng, levels),
                heads: *self.heads.choose(rng).expect("non-empty heads"),
                head_channels: None,
            },
            encoder,
            middle: Middle {
                res_blocks: [self.random_block(rng), self.random_block(rng)],
            },
            decoder,
            learn_sigma: self.learn_sigma,
        }
    }

    /// A uniformly drawn genome that validates (rejection sampling). None when no valid genome
    /// was found in `max_tries` draws (an over-tight budget).
    pub fn random<R: rand::Rng + ?Sized>(&self, rng: &mut R, max_tries: usize) -> Option<Genome> {
        (0..max_tries)
            .map(|_| self.draw(rng))
            .find(|g| self.validate(g).is_ok())
    }

    /// One local change (a knob of one block, one level, or a global knob) that yields a
    /// different valid genome; None when `max_tries` attempts all failed.
    pub fn mutate<R: rand::Rng + ?Sized>(
        &self,
        parent: &Genome,
        rng: &mut R,
        max_tries: usize,
    ) -> Option<Genome> {
        let parent_json = parent.canonical_json();
        for _ in 0..max_tries {
            let mut g = parent.clone();
            self.mutate_once(&mut g, rng);
            if self.validate(&g).is_ok() && g.canonical_json() != parent_json {
                return Some(g);
            }
        }
        None
    }

    fn all_blocks_mut(g: &mut Genome) -> Vec<&mut ResBlockGene> {
        g.encoder
            .iter_mut()
            .flat_map(|l| l.res_blocks.iter_mut())
            .chain(g.middle.res_blocks.iter_mut())
            .chain(g.decoder.iter_mut().flat_map(|l| l.res_blocks.iter_mut()))
            .collect()
    }

    fn mutate_once<R: rand::Rng + ?Sized>(&self, g: &mut Genome, rng: &mut R) {
        let levels = g.encoder.len();
        let mut knob = rng.random_range(0..10);
        if knob == 6 && g.attention.resolutions.is_empty() {
            // Heads matter only where attention exists: without any, toggle attention instead.
            knob = 5;
        }
        match knob {
            0 => g.base_channels = *self.base_channels.choose(rng).expect("non-empty"),
            1 => {
                let l = rng.random_range(0..levels);
                g.encoder[l].channel_mult = *self.channel_mults.choose(rng).expect("non-empty");
            }
            2 => {
                // Add or remove a ResBlock in one level; the mirrored decoder level follows.
                let l = rng.random_range(0..levels);
                let n = *self.res_blocks.choose(rng).expect("non-empty");
                let d = levels - 1 - l;
                g.encoder[l].res_blocks.resize(n, ResBlockGene::STANDARD);
                g.decoder[d]
                    .res_blocks
                    .resize(n + 1, ResBlockGene::STANDARD);
            }
            3 => {
                let mut blocks = Self::all_blocks_mut(g);
                let i = rng.random_range(0..blocks.len());
                let k = rng.random_range(0..2);
                blocks[i].kernels[k] = *self.kernels.choose(rng).expect("non-empty");
            }
            4 => {
                let mut blocks = Self::all_blocks_mut(g);
                let i = rng.random_range(0..blocks.len());
                blocks[i].hidden_mult = *self.hidden_mults.choose(rng).expect("non-empty");
            }
            5 => {
                let r = self.image.size >> rng.random_range(0..levels);
                if let Some(pos) = g.attention.resolutions.iter().position(|&x| x == r) {
                    g.attention.resolutions.remove(pos);
                } else {
                    g.attention.resolutions.push(r);
                    g.attention.resolutions.sort_unstable_by(|a, b| b.cmp(a));
                }
            }
            6 => {
                g.attention.heads = *self.heads.choose(rng).expect("non-empty");
                g.attention.head_channels = None;
            }
            7 => g.dropout = *self.dropouts.choose(rng).expect("non-empty"),
            8 => {
                if rng.random_bool(0.5) {
                    g.scale_shift_norm = *self.scale_shift_norm.choose(rng).expect("non-empty");
                } else {
                    g.norm_groups = *self.norm_groups.choose(rng).expect("non-empty");
                }
            }
            _ => {
                // Change the number of levels: drop the deepest or add one below it.
                let target = *self.num_levels.choose(rng).expect("non-empty");
                while g.encoder.len() > target {
                    g.encoder.pop();
                    g.decoder.remove(0);
                }
                while g.encoder.len() < target {
                    let mult = g.encoder.last().map_or(1, |l| l.channel_mult);
                    let n = *self.res_blocks.choose(rng).expect("non-empty");
                    g.encoder.push(EncoderLevel {
                        channel_mult: mult,
                        res_blocks: vec![ResBlockGene::STANDARD; n],
                    });
                    g.decoder.insert(
                        0,
                        DecoderLevel {
                            res_blocks: vec![ResBlockGene::STANDARD; n + 1],
                        },
                    );
                }
                let lowest = self.image.size >> (g.encoder.len() - 1);
                g.attention.resolutions.retain(|&r| r >= lowest);
            }
        }
    }

    /// Uniform crossover of two parents with the same number of levels: each global knob and
    /// each level (encoder level together with its mirrored decoder level) comes from either
    /// parent. Returns a child that validates, trying `max_tries` mixes; falls back to a copy of
    /// `a` (also for parents of different depth).
    pub fn crossover<R: rand::Rng + ?Sized>(
        &self,
        a: &Genome,
        b: &Genome,
        rng: &mut R,
        max_tries: usize,
    ) -> Genome {
        if a.encoder.len() != b.encoder.len() {
            return a.clone();
        }
        (0..max_tries)
            .map(|_| self.mix(a, b, rng))
            .find(|g| self.validate(g).is_ok())
            .unwrap_or_else(|| a.clone())
    }

    fn mix<R: rand::Rng + ?Sized>(&self, a: &Genome, b: &Genome, rng: &mut R) -> Genome {
        let pick = |rng: &mut R| rng.random_bool(0.5);
        let mut g = a.clone();
        if pick(rng) {
            g.base_channels = b.base_channels;
        }
        if pick(rng) {
            g.norm_groups = b.norm_groups;
        }
        if pick(rng) {
            g.dropout = b.dropout;
        }
        if pick(rng) {
            g.scale_shift_norm = b.scale_shift_norm;
        }
        if pick(rng) {
            g.time_embed_mult = b.time_embed_mult;
        }
        if pick(rng) {
            g.attention = b.attention.clone();
        }
        if pick(rng) {
            g.middle = b.middle.clone();
        }
        let levels = a.encoder.len();
        for l in 0..levels {
            if pick(rng) {
                g.encoder[l] = b.encoder[l].clone();
                g.decoder[levels - 1 - l] = b.decoder[levels - 1 - l].clone();
            }
        }
        g
    }
}
