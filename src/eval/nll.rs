//! Negative log-likelihood in bits per dimension: the full variational bound of a model on
//! images of a dataset split, as IDDPM reports it (its `calc_bpd_loop`: the prior term plus
//! every `L_t`, t = T-1 .. 0, each at a fresh `x_t`). A model with fixed variances is scored
//! with the variance its DDPM sampler uses.

use crate::data::Dataset;
use crate::diffusion::vlb::{bits_per_dim, prior_bits};
use crate::diffusion::{Denoiser, NoiseSchedule, VarianceKind, normals, training_rng};
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

pub mod defaults {
    /// Images scored (IDDPM scores the whole test split; this is a quick estimate).
    pub const N: usize = 1000;
    pub const BATCH_SIZE: usize = 50;
    pub const SEED: u64 = 0;
}

/// What to score and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NllConfig {
    /// The first `n` images of the split.
    pub n: usize,
    pub batch_size: usize,
    /// Seed of the noise of every `x_t`.
    pub seed: u64,
    /// Clip the predicted x0 to [-1, 1] (IDDPM's `image_nll.py` default).
    pub clip_denoised: bool,
    /// The variance of a model that does not learn it.
    pub fixed_variance: VarianceKind,
}

impl Default for NllConfig {
    fn default() -> Self {
        NllConfig {
            n: defaults::N,
            batch_size: defaults::BATCH_SIZE,
            seed: defaults::SEED,
            clip_denoised: true,
            fixed_variance: VarianceKind::FixedLarge,
        }
    }
}

/// The bound over the scored images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Nll {
    /// Mean over images of the full bound, bits per dimension.
    pub bits_per_dim: f64,
    /// Of which the prior term `KL(q(x_T | x0) || N(0, I))`, bits per dimension.
    pub prior_bits_per_dim: f64,
    pub images: usize,
    pub timesteps: usize,
    /// `learned`, or the fixed variance used.
    pub variance: String,
    pub clip_denoised: bool,
    pub seed: u64,
}

/// The raw variance output (IDDPM eq. 15) that reproduces a fixed variance: -1 is beta_tilde,
/// +1 is beta, and at t = 0 both fixed choices take the clipped beta_tilde_1 (as IDDPM's
/// `FIXED_LARGE`, whose first variance is beta_tilde_1).
fn fixed_raw(kind: VarianceKind, t0: bool, like: &Tensor<4>) -> Tensor<4> {
    let v = match (kind, t0) {
        (VarianceKind::FixedLarge, false) => 1.0,
        _ => -1.0,
    };
    Tensor::full(like.dims(), v, &like.device())
}

/// The bound of `model` on the first `cfg.n` images of `data`; `progress(done, total)` counts
/// model evaluations (images x timesteps).
pub fn nll<D: Denoiser + ?Sized>(
    model: &D,
    schedule: &NoiseSchedule,
    data: &Dataset,
    cfg: &NllConfig,
    device: &Device,
    progress: &mut dyn FnMut(u64, u64),
) -> Nll {
    let n = cfg.n.min(data.len);
    let t_total = schedule.num_timesteps();
    let total = (n * t_total) as u64;
    let shape = [data.channels, data.height, data.width];
    let per: usize = shape.iter().product();
    let (mut sum, mut prior_sum, mut learned) = (0.0f64, 0.0f64, false);
    let mut start = 0;
    while start < n {
        let k = cfg.batch_size.max(1).min(n - start);
        let indices: Vec<usize> = (start..start + k).collect();
        let x0 = data.batch(&indices, device);
        let batch_no = (start / cfg.batch_size.max(1)) as u64;
        let mut noise = |t: usize| {
            // Stream (batch, t) of the seed: the same x_t whatever else is scored.
            let mut rng = training_rng(cfg.seed, batch_no * t_total as u64 + t as u64);
            Tensor::<4>::from_data(
                TensorData::new(
                    normals(&mut rng, k * per),
                    [k, shape[0], shape[1], shape[2]],
                ),
                device,
            )
        };
        let mut predict = |x_t: Tensor<4>, t: Tensor<1>, step: usize| {
            let p = model.predict(x_t, t);
            match p.variance {
                Some(v) => {
                    learned = true;
                    (p.eps, v)
                }
                None => {
                    let raw = fixed_raw(cfg.fixed_variance, step == 0, &p.eps);
                    (p.eps, raw)
                }
            }
        };
        let done_before = (start * t_total) as u64;
        let bpd = bits_per_dim(
            schedule,
            x0.clone(),
            &mut predict,
            &mut noise,
            cfg.clip_denoised,
            &mut |d, _| progress(done_before + (d * k) as u64, total),
        );
        sum += bpd.sum().into_scalar::<f32>() as f64;
        prior_sum += prior_bits(schedule, x0).sum().into_scalar::<f32>() as f64;
        start += k;
    }
    Nll {
        bits_per_dim: sum / n.max(1) as f64,
        prior_bits_per_dim: prior_sum / n.max(1) as f64,
        images: n,
        timesteps: t_total,
        variance: if learned {
            "learned".into()
        } else {
            cfg.fixed_variance.to_string()
        },
        clip_denoised: cfg.clip_denoised,
        seed: cfg.seed,
    }
}
