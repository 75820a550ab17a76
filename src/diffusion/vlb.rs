//! The variational bound of IDDPM (Nichol & Dhariwal 2021): the learned reverse variance
//! (eq. 15), the terms `L_t` of the bound (eq. 4-6 of the paper: Gaussian KLs in closed form,
//! the discretized Gaussian decoder at t = 0, the prior term at T), `L_hybrid` (eq. 16) and the
//! importance-sampled timesteps of section 3.3. Every term is in bits per dimension (the mean
//! over channels and pixels divided by ln 2), as the paper reports it.

use super::schedule::NoiseSchedule;
use super::{per_sample, timestep_tensor};
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

/// The training loss of a run: IDDPM's `L_simple` (epsilon MSE, fixed variances) or
/// `L_hybrid = L_simple + lambda L_vlb` (a learned variance, eq. 16).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LossKind {
    #[default]
    Simple,
    Hybrid,
}

impl LossKind {
    pub fn is_simple(&self) -> bool {
        *self == LossKind::Simple
    }
}

impl std::fmt::Display for LossKind {
    /// The name [`std::str::FromStr`] reads.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LossKind::Simple => "simple",
            LossKind::Hybrid => "hybrid",
        })
    }
}

impl std::str::FromStr for LossKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "simple" => Ok(LossKind::Simple),
            "hybrid" => Ok(LossKind::Hybrid),
            other => Err(format!("unknown loss {other:?}: expected simple or hybrid")),
        }
    }
}

/// lambda of `L_hybrid` (IDDPM eq. 16).
pub const HYBRID_LAMBDA: f64 = 0.001;

/// How `L_hybrid` draws its timesteps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TimestepSampling {
    /// t ~ U{0, T-1}.
    #[default]
    Uniform,
    /// p_t proportional to sqrt(E[L_t^2]) over the last 10 values of each term, uniform until
    /// every t has its 10 (IDDPM section 3.3); each sample's `L_vlb` term is weighted by
    /// 1 / (T p_t) so the estimate stays unbiased.
    Importance,
}

impl std::fmt::Display for TimestepSampling {
    /// The name [`std::str::FromStr`] reads.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TimestepSampling::Uniform => "uniform",
            TimestepSampling::Importance => "importance",
        })
    }
}

impl std::str::FromStr for TimestepSampling {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "uniform" => Ok(TimestepSampling::Uniform),
            "importance" => Ok(TimestepSampling::Importance),
            other => Err(format!(
                "unknown timestep sampling {other:?}: expected uniform or importance"
            )),
        }
    }
}

/// Elementwise KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) in nats.
pub fn normal_kl(
    mean1: Tensor<4>,
    logvar1: Tensor<4>,
    mean2: Tensor<4>,
    logvar2: Tensor<4>,
) -> Tensor<4> {
    let diff = logvar1.clone() - logvar2.clone();
    ((logvar2.clone() - logvar1) + diff.exp() + (mean1 - mean2).square() * (-logvar2).exp() - 1.0)
        * 0.5
}

/// The standard normal CDF by the tanh approximation IDDPM uses for its decoder.
pub fn approx_standard_normal_cdf(x: Tensor<4>) -> Tensor<4> {
    let c = (2.0 / std::f64::consts::PI).sqrt();
    ((x.clone() + x.powi_scalar(3) * 0.044715) * c).tanh() * 0.5 + 0.5
}

/// Log-likelihood (nats, elementwise) of 8-bit data `x` in [-1, 1] under a Gaussian of `means`
/// and `log_scales` (log standard deviations) discretized to the 256 bins of width 2/255, the
/// outermost bins extended to -inf and +inf (IDDPM's decoder, after DDPM section 3.3).
pub fn discretized_gaussian_log_likelihood(
    x: Tensor<4>,
    means: Tensor<4>,
    log_scales: Tensor<4>,
) -> Tensor<4> {
    let centered = x.clone() - means;
    let inv_stdv = (-log_scales).exp();
    let cdf_plus = approx_standard_normal_cdf((centered.clone() + 1.0 / 255.0) * inv_stdv.clone());
    let cdf_min = approx_standard_normal_cdf((centered - 1.0 / 255.0) * inv_stdv);
    let log_cdf_plus = cdf_plus.clone().clamp_min(1e-12).log();
    let log_one_minus_cdf_min = (-cdf_min.clone() + 1.0).clamp_min(1e-12).log();
    let log_delta = (cdf_plus - cdf_min).clamp_min(1e-12).log();
    log_delta
        .mask_where(x.clone().greater_elem(0.999), log_one_minus_cdf_min)
        .mask_where(x.lower_elem(-0.999), log_cdf_plus)
}

/// The mean over every dimension but the batch, in bits: `[B, C, H, W]` -> `[B]`.
pub fn mean_bits(x: Tensor<4>) -> Tensor<1> {
    let b = x.dims()[0];
    x.reshape([b as i32, -1]).mean_dim(1).reshape([b]) / std::f64::consts::LN_2
}

/// IDDPM eq. 15: `log Sigma = v log beta_t + (1 - v) log beta_tilde_t` with `v = (out + 1) / 2`
/// from the network's raw variance output (so an output of -1 gives beta_tilde, +1 gives
/// beta). `min_log` and `max_log` are `[B, 1, 1, 1]`.
pub fn learned_log_variance(raw: Tensor<4>, min_log: Tensor<4>, max_log: Tensor<4>) -> Tensor<4> {
    let frac = (raw + 1.0) * 0.5;
    frac.clone() * max_log + (-frac + 1.0) * min_log
}

/// One reverse step's parameters: mean and log-variance, `[B, C, H, W]`.
pub struct Posterior {
    pub mean: Tensor<4>,
    pub log_variance: Tensor<4>,
}

/// The true posterior `q(x_{t-1} | x_t, x0)` (DDPM eq. 6-7), its log-variance clipped at t = 0
/// as IDDPM does (where beta_tilde_0 = 0).
pub fn q_posterior(
    schedule: &NoiseSchedule,
    x0: Tensor<4>,
    x_t: Tensor<4>,
    t: &[usize],
) -> Posterior {
    let device = x0.device();
    let c1 = per_sample(&schedule.posterior_mean_coef1, t, &device);
    let c2 = per_sample(&schedule.posterior_mean_coef2, t, &device);
    let lv = per_sample(&schedule.posterior_log_variance_clipped, t, &device);
    let dims = x0.dims();
    Posterior {
        mean: x0 * c1 + x_t * c2,
        log_variance: lv.expand(dims),
    }
}

/// The model's reverse step `p(x_{t-1} | x_t)` from its epsilon and raw variance outputs:
/// the mean through the predicted x0 (clipped to [-1, 1] when `clip`), the variance by eq. 15.
pub fn p_posterior(
    schedule: &NoiseSchedule,
    x_t: Tensor<4>,
    t: &[usize],
    eps: Tensor<4>,
    raw_variance: Tensor<4>,
    clip: bool,
) -> Posterior {
    let device = x_t.device();
    let recip = per_sample(&schedule.sqrt_recip_alphas_cumprod, t, &device);
    let recip_m1 = per_sample(&schedule.sqrt_recipm1_alphas_cumprod, t, &device);
    let x0 = x_t.clone() * recip - eps * recip_m1;
    let x0 = if clip { x0.clamp(-1.0, 1.0) } else { x0 };
    let c1 = per_sample(&schedule.posterior_mean_coef1, t, &device);
    let c2 = per_sample(&schedule.posterior_mean_coef2, t, &device);
    let min_log = per_sample(&schedule.posterior_log_variance_clipped, t, &device);
    let max_log = per_sample(&schedule.log_betas, t, &device);
    Posterior {
        mean: x0 * c1 + x_t * c2,
        log_variance: learned_log_variance(raw_variance, min_log, max_log),
    }
}

/// The bound's term at each sample's timestep, `[B]` in bits per dimension: for t > 0
/// `L_{t} = KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t))`, for t = 0 the decoder's negative
/// log-likelihood `-log p(x0 | x_1)` (discretized Gaussian).
pub fn vlb_terms(
    schedule: &NoiseSchedule,
    x0: Tensor<4>,
    x_t: Tensor<4>,
    t: &[usize],
    eps: Tensor<4>,
    raw_variance: Tensor<4>,
    clip: bool,
) -> Tensor<1> {
    let device = x0.device();
    let q = q_posterior(schedule, x0.clone(), x_t.clone(), t);
    let p = p_posterior(schedule, x_t, t, eps, raw_variance, clip);
    let kl = mean_bits(normal_kl(
        q.mean,
        q.log_variance,
        p.mean.clone(),
        p.log_variance.clone(),
    ));
    if t.iter().all(|&s| s != 0) {
        return kl;
    }
    let nll = -mean_bits(discretized_gaussian_log_likelihood(
        x0,
        p.mean,
        p.log_variance * 0.5,
    ));
    let at_zero: Vec<bool> = t.iter().map(|&s| s == 0).collect();
    let mask =
        Tensor::<1, burn::tensor::Bool>::from_data(TensorData::new(at_zero, [t.len()]), &device);
    kl.mask_where(mask, nll)
}

/// The prior term `KL(q(x_T | x0) || N(0, I))`, `[B]` in bits per dimension (no parameters).
pub fn prior_bits(schedule: &NoiseSchedule, x0: Tensor<4>) -> Tensor<1> {
    let last = schedule.num_timesteps() - 1;
    let dims = x0.dims();
    let device = x0.device();
    let t = vec![last; dims[0]];
    let mean = x0 * per_sample(&schedule.sqrt_alphas_cumprod, &t, &device);
    let lv = per_sample(&schedule.log_one_minus_alphas_cumprod, &t, &device).expand(dims);
    let zeros = Tensor::<4>::zeros(dims, &device);
    mean_bits(normal_kl(mean, lv, zeros.clone(), zeros))
}

/// `L_hybrid` per IDDPM (eq. 16 and its reference code): the epsilon MSE plus
/// `lambda * T * L_t` with the stop-gradient on the mean (the VLB term trains only the
/// variance). `weights` (`[B]`, from importance sampling: `1 / (T p_t)`) multiply each
/// sample's whole loss, so the estimate stays that of uniform timesteps; `None` is uniform.
/// Returns the scalar loss and the per-sample VLB terms (detached), which the importance
/// sampler records.
#[allow(clippy::too_many_arguments)]
pub fn hybrid_loss(
    schedule: &NoiseSchedule,
    x0: Tensor<4>,
    x_t: Tensor<4>,
    t: &[usize],
    eps: Tensor<4>,
    eps_pred: Tensor<4>,
    raw_variance: Tensor<4>,
    weights: Option<Tensor<1>>,
) -> (Tensor<1>, Tensor<1>) {
    let mse = mean_bits((eps_pred.clone() - eps).square()) * std::f64::consts::LN_2;
    let vb = vlb_terms(schedule, x0, x_t, t, eps_pred.detach(), raw_variance, false);
    let scale = HYBRID_LAMBDA * schedule.num_timesteps() as f64;
    let per_sample = mse + vb.clone() * scale;
    let per_sample = match weights {
        Some(w) => per_sample * w,
        None => per_sample,
    };
    (per_sample.mean(), vb.detach())
}

/// The full bound in bits per dimension, `[B]`, as IDDPM's `calc_bpd_loop`: the prior term plus
/// every `L_t`, t = T-1 .. 0, each at a fresh `x_t ~ q(x_t | x0)` from `noise(t)`.
/// `predict(x_t, t, step)` returns the model's epsilon and raw variance output at timestep
/// `step`; `progress(done, total)` is called after each timestep.
pub fn bits_per_dim(
    schedule: &NoiseSchedule,
    x0: Tensor<4>,
    predict: &mut dyn FnMut(Tensor<4>, Tensor<1>, usize) -> (Tensor<4>, Tensor<4>),
    noise: &mut dyn FnMut(usize) -> Tensor<4>,
    clip: bool,
    progress: &mut dyn FnMut(usize, usize),
) -> Tensor<1> {
    let device: Device = x0.device();
    let b = x0.dims()[0];
    let total = schedule.num_timesteps();
    let mut sum = prior_bits(schedule, x0.clone());
    for (done, s) in (0..total).rev().enumerate() {
        let t = vec![s; b];
        let x_t = schedule.q_sample(x0.clone(), &t, noise(s));
        let (eps, raw) = predict(x_t.clone(), timestep_tensor(&t, &device), s);
        sum = sum + vlb_terms(schedule, x0.clone(), x_t, &t, eps, raw, clip);
        progress(done + 1, total);
    }
    sum
}

/// IDDPM's `LossSecondMomentResampler` (section 3.3): a history of the last
/// [`ImportanceSampler::HISTORY`] values of each `L_t`; p_t proportional to their root mean
/// square, mixed with 0.1% of uniform; uniform until every history is full. The state is plain
/// data so a checkpoint stores it and a resumed run draws the same timesteps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImportanceSampler {
    /// Per timestep, its last values of `L_t` (oldest first).
    pub history: Vec<Vec<f64>>,
}

impl ImportanceSampler {
    pub const HISTORY: usize = 10;
    pub const UNIFORM_PROB: f64 = 0.001;

    pub fn new(num_timesteps: usize) -> Self {
        ImportanceSampler {
            history: vec![Vec::new(); num_timesteps],
        }
    }

    pub fn warmed_up(&self) -> bool {
        self.history.iter().all(|h| h.len() == Self::HISTORY)
    }

    /// The sampling probabilities p_t.
    pub fn probabilities(&self) -> Vec<f64> {
        let n = self.history.len();
        if !self.warmed_up() {
            return vec![1.0 / n as f64; n];
        }
        let w: Vec<f64> = self
            .history
            .iter()
            .map(|h| (h.iter().map(|v| v * v).sum::<f64>() / h.len() as f64).sqrt())
            .collect();
        let total: f64 = w.iter().sum();
        w.iter()
            .map(|v| {
                let p = if total > 0.0 {
                    v / total
                } else {
                    1.0 / n as f64
                };
                p * (1.0 - Self::UNIFORM_PROB) + Self::UNIFORM_PROB / n as f64
            })
            .collect()
    }

    /// Draw `count` timesteps from uniforms `u` in [0, 1), with each one's weight
    /// `1 / (T p_t)`.
    pub fn draw(&self, u: &[f64]) -> (Vec<usize>, Vec<f64>) {
        let p = self.probabilities();
        let n = p.len();
        let mut cdf = Vec::with_capacity(n);
        let mut acc = 0.0;
        for v in &p {
            acc += v;
            cdf.push(acc);
        }
        let t: Vec<usize> = u
            .iter()
            .map(|&x| {
                let target = x * acc;
                cdf.partition_point(|&c| c <= target).min(n - 1)
            })
            .collect();
        let w = t.iter().map(|&s| 1.0 / (n as f64 * p[s])).collect();
        (t, w)
    }

    /// Record the terms a step computed at its timesteps.
    pub fn record(&mut self, t: &[usize], terms: &[f32]) {
        for (&s, &v) in t.iter().zip(terms) {
            let h = &mut self.history[s];
            if h.len() == Self::HISTORY {
                h.remove(0);
            }
            h.push(v as f64);
        }
    }
}
