//! Training configuration: by default the DDPM recipe (AdamW with PyTorch's eps and no weight
//! decay, warm-up then constant LR, global-norm clipping at 1, EMA 0.9999) at the `tiny`
//! preset's size ([`defaults`]).

use crate::diffusion::BetaSchedule;
use crate::diffusion::vlb::{LossKind, TimestepSampling};
use crate::precision::Precision;
use burn::config::Config;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    /// Warm-up, then the peak rate until the end (DDPM).
    Constant,
    /// Warm-up, then cosine decay to `min_lr_ratio * lr` (the rapid-convergence schedule).
    Cosine,
}

impl std::fmt::Display for LrSchedule {
    /// The name [`std::str::FromStr`] reads.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LrSchedule::Constant => "constant",
            LrSchedule::Cosine => "cosine",
        })
    }
}

impl std::str::FromStr for LrSchedule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "constant" => Ok(LrSchedule::Constant),
            "cosine" => Ok(LrSchedule::Cosine),
            o => Err(format!(
                "unknown LR schedule {o:?}: expected constant or cosine"
            )),
        }
    }
}

/// The defaults of [`TrainConfig`] that `diffnas train` shows in its help (the rest are the
/// DDPM recipe's: AdamW with PyTorch's eps and no weight decay, clipping at 1, EMA 0.9999).
/// They suit the `tiny` preset; the DDPM recipe for `ddpm-cifar10` is 800,000 steps of 128
/// images at LR 2e-4 with 5,000 warm-up steps.
pub mod defaults {
    pub const STEPS: u64 = 4000;
    pub const BATCH_SIZE: usize = 32;
    pub const LR: f64 = 5e-4;
    pub const WARMUP_STEPS: u64 = 200;
    pub const MIN_LR_RATIO: f64 = 0.0;
    pub const WEIGHT_DECAY: f64 = 0.0;
    pub const ADAM_EPS: f64 = 1e-8;
    pub const GRAD_CLIP: f64 = 1.0;
    pub const EMA_DECAY: f64 = 0.9999;
    pub const TIMESTEPS: usize = 1000;
    /// T of IDDPM's recipe (a learned-variance genome's default).
    pub const IDDPM_TIMESTEPS: usize = 4000;
    pub const SEED: u64 = 0;
    /// A kill loses at most this many steps.
    pub const CHECKPOINT_EVERY: u64 = 250;
    pub const LOG_EVERY: u64 = 50;
    pub const LR_SCHEDULE: super::LrSchedule = super::LrSchedule::Constant;
    pub const BETA_SCHEDULE: crate::diffusion::BetaSchedule =
        crate::diffusion::BetaSchedule::Linear;
}

#[derive(Config, Debug, PartialEq)]
pub struct TrainConfig {
    /// Total optimizer steps.
    #[config(default = "defaults::STEPS")]
    pub steps: u64,
    /// Images per step.
    #[config(default = "defaults::BATCH_SIZE")]
    pub batch_size: usize,
    /// Peak learning rate.
    #[config(default = "defaults::LR")]
    pub lr: f64,
    /// Linear warm-up steps (from lr / warmup_steps up to lr).
    #[config(default = "defaults::WARMUP_STEPS")]
    pub warmup_steps: u64,
    /// What the LR does after warm-up.
    #[config(default = "defaults::LR_SCHEDULE")]
    pub lr_schedule: LrSchedule,
    /// Floor of the cosine schedule as a fraction of the peak rate.
    #[config(default = "defaults::MIN_LR_RATIO")]
    pub min_lr_ratio: f64,
    /// AdamW beta1.
    #[config(default = 0.9)]
    pub beta1: f64,
    /// AdamW beta2.
    #[config(default = 0.999)]
    pub beta2: f64,
    /// AdamW epsilon (PyTorch's default; Burn's own default is 1e-5).
    #[config(default = "defaults::ADAM_EPS")]
    pub adam_eps: f64,
    /// Decoupled weight decay (DDPM uses none; Burn's own default is 1e-4).
    #[config(default = "defaults::WEIGHT_DECAY")]
    pub weight_decay: f64,
    /// Global gradient-norm clip (0 disables).
    #[config(default = "defaults::GRAD_CLIP")]
    pub grad_clip: f64,
    /// EMA decay of the weights used for sampling.
    #[config(default = "defaults::EMA_DECAY")]
    pub ema_decay: f64,
    /// EMA warm-up: decay_n = min(decay, (1 + n) / (10 + n)).
    #[config(default = true)]
    pub ema_warmup: bool,
    /// Diffusion timesteps T.
    #[config(default = "defaults::TIMESTEPS")]
    pub timesteps: usize,
    /// Beta schedule.
    #[config(default = "defaults::BETA_SCHEDULE")]
    pub beta_schedule: BetaSchedule,
    /// Seed of everything random in the run (initial weights, batches, timesteps, noise, dropout).
    #[config(default = "defaults::SEED")]
    pub seed: u64,
    /// Steps between checkpoints (0: only at the end).
    #[config(default = "defaults::CHECKPOINT_EVERY")]
    pub checkpoint_every: u64,
    /// Steps between loss readings (each is a device sync) and log lines.
    #[config(default = "defaults::LOG_EVERY")]
    pub log_every: u64,
    /// Checkpoints kept on disk (the newest ones).
    #[config(default = 2)]
    pub keep_checkpoints: usize,
    /// The loss: `simple` (epsilon MSE, fixed variances) or `hybrid` (IDDPM's `L_hybrid`, for a
    /// genome with `learn_sigma`). Absent (runs written before it existed): simple.
    pub loss: Option<LossKind>,
    /// How `L_hybrid` draws timesteps (absent: uniform).
    pub timestep_sampling: Option<TimestepSampling>,
    /// What the convolutions and attention matmuls compute in: f32, or f16 / bf16 with f32
    /// master weights and optimizer state (`crate::precision`). Absent (runs written before it
    /// existed): f32.
    pub precision: Option<Precision>,
}

/// A setting that a resumed run was asked to change (see [`TrainConfig::resumed_as`]); its
/// message names the flag of the same name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "--{} {given} differs from the {stored} stored, and a resumed run keeps its settings (only \
     --steps may grow; --checkpoint-every and --log-every may change)",
    field.replace('_', "-")
)]
pub struct ChangedSetting {
    /// The field's name in the configuration (as in `train.json`).
    pub field: String,
    pub stored: String,
    pub given: String,
}

impl TrainConfig {
    /// Settings a resumed run may take from `new`: more `steps` (a cosine schedule then spans
    /// the new total), and how often it checkpoints and logs (neither changes the weights).
    /// Any other difference, or fewer steps, is refused with the first setting that differs:
    /// resuming continues the same run.
    pub fn resumed_as(&self, new: &TrainConfig) -> Result<TrainConfig, ChangedSetting> {
        const FREE: [&str; 3] = ["checkpoint_every", "log_every", "keep_checkpoints"];
        let value = |c: &TrainConfig| match serde_json::to_value(c) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => unreachable!("a TrainConfig serialises to an object"),
        };
        let show = |v: &serde_json::Value| v.as_str().map_or_else(|| v.to_string(), str::to_string);
        // An absent loss option is its default (runs written before the option existed).
        let settled = |c: &TrainConfig| {
            let mut c = c.clone();
            c.loss.get_or_insert_default();
            c.timestep_sampling.get_or_insert_default();
            c.precision.get_or_insert_default();
            c
        };
        let (old, given) = (value(&settled(self)), value(&settled(new)));
        for (field, stored) in &old {
            let asked = &given[field];
            let refused = match field.as_str() {
                "steps" => new.steps < self.steps,
                f => !FREE.contains(&f) && asked != stored,
            };
            if refused {
                return Err(ChangedSetting {
                    field: field.clone(),
                    stored: show(stored),
                    given: show(asked),
                });
            }
        }
        Ok(new.clone())
    }

    /// The names of the settings, as in `train.json` (and as `diffnas train` names its flags).
    pub fn fields() -> Vec<String> {
        match serde_json::to_value(TrainConfig::new()) {
            Ok(serde_json::Value::Object(m)) => m.keys().cloned().collect(),
            _ => unreachable!("a TrainConfig serialises to an object"),
        }
    }

    /// This configuration with the named `fields` (as in `train.json`) taken from `other`.
    pub fn with_fields_of(&self, other: &TrainConfig, fields: &[&str]) -> TrainConfig {
        let mut mine = serde_json::to_value(self).expect("serialises");
        let theirs = serde_json::to_value(other).expect("serialises");
        for f in fields {
            mine[*f] = theirs[*f].clone();
        }
        serde_json::from_value(mine).expect("fields of a TrainConfig make a TrainConfig")
    }

    /// The loss this run trains with ([`LossKind::Simple`] when absent).
    /// The run's compute precision (f32 when absent).
    pub fn precision(&self) -> Precision {
        self.precision.unwrap_or_default()
    }

    pub fn loss_kind(&self) -> LossKind {
        self.loss.unwrap_or_default()
    }

    /// The timestep sampling of `L_hybrid` (uniform when absent).
    pub fn timesteps_drawn(&self) -> TimestepSampling {
        self.timestep_sampling.unwrap_or_default()
    }

    /// The defaults for `genome`: IDDPM's recipe for a learned-variance genome (`L_hybrid`,
    /// the cosine schedule, T = 4,000), the DDPM defaults for any other.
    pub fn recipe_for(genome: &crate::genome::Genome) -> TrainConfig {
        let c = TrainConfig::new();
        if genome.learn_sigma {
            c.with_loss(Some(LossKind::Hybrid))
                .with_beta_schedule(BetaSchedule::Cosine)
                .with_timesteps(defaults::IDDPM_TIMESTEPS)
        } else {
            c.with_loss(Some(LossKind::Simple))
        }
    }

    /// A fresh run of `genome`: its recipe ([`TrainConfig::recipe_for`]) with the `given`
    /// fields (as in `train.json`) taken from `flags`, and the network that loss trains
    /// ([`TrainConfig::genome_for`]). Errors name the flag.
    pub fn fresh_run(
        genome: &crate::genome::Genome,
        flags: &TrainConfig,
        given: &[&str],
    ) -> Result<(TrainConfig, crate::genome::Genome), String> {
        // The network first (a given --loss decides its head), then that network's recipe, so
        // `--loss hybrid` on any genome trains IDDPM's way unless flags say otherwise.
        let loss = if given.contains(&"loss") {
            flags.loss_kind()
        } else {
            TrainConfig::recipe_for(genome).loss_kind()
        };
        let genome = TrainConfig::new()
            .with_loss(Some(loss))
            .genome_for(genome)
            .map_err(|e| format!("--loss {loss}: {e}"))?;
        let config = TrainConfig::recipe_for(&genome).with_fields_of(flags, given);
        config
            .check_genome(&genome)
            .map_err(|e| format!("--loss {}: {e}", config.loss_kind()))?;
        Ok((config, genome))
    }

    /// The network this loss trains: `genome` itself, or for `L_hybrid` the same network with
    /// the learned variance (`learn_sigma`) it needs. `L_simple` on a learned-variance genome
    /// is refused (the variance would stay untrained).
    pub fn genome_for(
        &self,
        genome: &crate::genome::Genome,
    ) -> Result<crate::genome::Genome, String> {
        let mut g = genome.clone();
        if self.loss_kind() == LossKind::Hybrid {
            g.learn_sigma = true;
        }
        self.check_genome(&g)?;
        Ok(g)
    }

    /// Whether the loss suits the network: `L_hybrid` trains a learned variance, so it needs a
    /// genome with `learn_sigma`, and `L_simple` would leave such a genome's variance untrained.
    pub fn check_genome(&self, genome: &crate::genome::Genome) -> Result<(), String> {
        match (self.loss_kind(), genome.learn_sigma) {
            (LossKind::Hybrid, false) => Err(
                "train.loss: hybrid trains a learned variance, and the genome has none (set \
                 \"learn_sigma\": true in it)"
                    .into(),
            ),
            (LossKind::Simple, true) => Err(
                "train.loss: simple leaves the genome's learned variance (learn_sigma) untrained: \
                 use hybrid"
                    .into(),
            ),
            _ => Ok(()),
        }
    }

    /// A few hundred steps of the test preset: for tests and smoke runs.
    pub fn tiny() -> Self {
        TrainConfig::new()
            .with_steps(200)
            .with_batch_size(16)
            .with_lr(1e-3)
            .with_warmup_steps(20)
            .with_ema_decay(0.999)
            .with_checkpoint_every(100)
            .with_log_every(10)
    }

    /// Learning rate at `step` (0-based).
    pub fn lr_at(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        match self.lr_schedule {
            LrSchedule::Constant => self.lr,
            LrSchedule::Cosine => {
                let span = self.steps.saturating_sub(self.warmup_steps).max(1) as f64;
                let p = ((step - self.warmup_steps) as f64 / span).min(1.0);
                let floor = self.lr * self.min_lr_ratio;
                floor + (self.lr - floor) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
            }
        }
    }

    /// EMA decay used for update number `n` (0-based).
    pub fn ema_decay_at(&self, n: u64) -> f64 {
        if self.ema_warmup {
            self.ema_decay.min((1.0 + n as f64) / (10.0 + n as f64))
        } else {
            self.ema_decay
        }
    }

    /// Errors name the bad field.
    pub fn check(&self) -> Result<(), String> {
        let bad = |f: &str, v: String, why: &str| Err(format!("train.{f}: {v} {why}"));
        if self.steps == 0 {
            return bad("steps", "0".into(), "must be at least 1");
        }
        if self.batch_size == 0 {
            return bad("batch_size", "0".into(), "must be at least 1");
        }
        if !(self.lr > 0.0 && self.lr <= 1.0) {
            return bad("lr", self.lr.to_string(), "must be in (0, 1]");
        }
        if !(0.0..1.0).contains(&self.ema_decay) {
            return bad("ema_decay", self.ema_decay.to_string(), "must be in [0, 1)");
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return bad(
                "min_lr_ratio",
                self.min_lr_ratio.to_string(),
                "must be in [0, 1]",
            );
        }
        if self.grad_clip < 0.0 || self.grad_clip.is_nan() {
            return bad("grad_clip", self.grad_clip.to_string(), "must be >= 0");
        }
        if self.timesteps < 2 {
            return bad(
                "timesteps",
                self.timesteps.to_string(),
                "must be at least 2",
            );
        }
        if self.timesteps_drawn() == TimestepSampling::Importance
            && self.loss_kind() != LossKind::Hybrid
        {
            return bad(
                "timestep_sampling",
                "importance".into(),
                "needs loss hybrid (it samples the terms of L_vlb)",
            );
        }
        if self.log_every == 0 {
            return bad("log_every", "0".into(), "must be at least 1");
        }
        Ok(())
    }
}
