//! Beta schedules in f64 and the derived quantities of DDPM (Ho et al. 2020, eq. 4, 6, 7) with
//! the IDDPM cosine schedule (Nichol & Dhariwal 2021, eq. 17). Invariants are asserted on
//! construction: 0 < beta <= 0.999 and `alphas_cumprod` strictly decreasing.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BetaSchedule {
    /// Linear from 1e-4 to 0.02, scaled by 1000 / T so any T keeps DDPM's endpoints (IDDPM).
    Linear,
    /// `alpha_bar(t) = cos^2(((t/T + s)/(1 + s)) * pi/2)`, s = 0.008, betas clipped at 0.999.
    Cosine,
}

impl std::fmt::Display for BetaSchedule {
    /// The name [`std::str::FromStr`] reads.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BetaSchedule::Linear => "linear",
            BetaSchedule::Cosine => "cosine",
        })
    }
}

impl std::str::FromStr for BetaSchedule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "linear" => Ok(BetaSchedule::Linear),
            "cosine" => Ok(BetaSchedule::Cosine),
            other => Err(format!(
                "unknown beta schedule {other:?}: expected linear or cosine"
            )),
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScheduleError {
    #[error("num_timesteps = {0} is too small (at least 2)")]
    TooFewSteps(usize),
    #[error("beta[{index}] = {value} is outside (0, 0.999]")]
    BetaOutOfRange { index: usize, value: f64 },
    #[error("alphas_cumprod is not strictly decreasing at index {0}")]
    NotDecreasing(usize),
}

/// Everything the forward process and the samplers need, in f64.
#[derive(Debug, Clone, PartialEq)]
pub struct NoiseSchedule {
    pub kind: BetaSchedule,
    pub betas: Vec<f64>,
    pub alphas_cumprod: Vec<f64>,
    pub alphas_cumprod_prev: Vec<f64>,
    pub sqrt_alphas_cumprod: Vec<f64>,
    pub sqrt_one_minus_alphas_cumprod: Vec<f64>,
    /// `beta_tilde_t = beta_t (1 - abar_{t-1}) / (1 - abar_t)` (DDPM eq. 7).
    pub posterior_variance: Vec<f64>,
    /// Coefficients of `x0` and `x_t` in the posterior mean (DDPM eq. 7).
    pub posterior_mean_coef1: Vec<f64>,
    pub posterior_mean_coef2: Vec<f64>,
    /// `log beta_tilde_t` with t = 0 (where beta_tilde is 0) taking t = 1's value, as IDDPM.
    pub posterior_log_variance_clipped: Vec<f64>,
    pub log_betas: Vec<f64>,
    pub log_one_minus_alphas_cumprod: Vec<f64>,
    /// `sqrt(1 / abar_t)` and `sqrt(1 / abar_t - 1)`: x0 from x_t and epsilon.
    pub sqrt_recip_alphas_cumprod: Vec<f64>,
    pub sqrt_recipm1_alphas_cumprod: Vec<f64>,
}

impl NoiseSchedule {
    pub fn new(kind: BetaSchedule, num_timesteps: usize) -> Result<Self, ScheduleError> {
        if num_timesteps < 2 {
            return Err(ScheduleError::TooFewSteps(num_timesteps));
        }
        let t = num_timesteps;
        let betas: Vec<f64> = match kind {
            BetaSchedule::Linear => {
                let scale = 1000.0 / t as f64;
                let (start, end) = (scale * 1e-4, scale * 0.02);
                (0..t)
                    .map(|i| start + (end - start) * i as f64 / (t - 1) as f64)
                    .collect()
            }
            BetaSchedule::Cosine => {
                let s = 0.008;
                let abar = |x: f64| {
                    ((x + s) / (1.0 + s) * std::f64::consts::FRAC_PI_2)
                        .cos()
                        .powi(2)
                };
                (0..t)
                    .map(|i| {
                        let (t1, t2) = (i as f64 / t as f64, (i + 1) as f64 / t as f64);
                        (1.0 - abar(t2) / abar(t1)).min(0.999)
                    })
                    .collect()
            }
        };
        Self::from_betas(kind, betas)
    }

    /// Build from explicit betas (used by respacing), checking the invariants.
    pub fn from_betas(kind: BetaSchedule, betas: Vec<f64>) -> Result<Self, ScheduleError> {
        if betas.is_empty() {
            return Err(ScheduleError::TooFewSteps(betas.len()));
        }
        for (index, &value) in betas.iter().enumerate() {
            if !(value > 0.0 && value <= 0.999) {
                return Err(ScheduleError::BetaOutOfRange { index, value });
            }
        }
        let mut alphas_cumprod = Vec::with_capacity(betas.len());
        let mut acc = 1.0;
        for b in &betas {
            acc *= 1.0 - b;
            alphas_cumprod.push(acc);
        }
        for i in 1..alphas_cumprod.len() {
            if alphas_cumprod[i] >= alphas_cumprod[i - 1] {
                return Err(ScheduleError::NotDecreasing(i));
            }
        }
        let mut alphas_cumprod_prev = vec![1.0];
        alphas_cumprod_prev.extend_from_slice(&alphas_cumprod[..alphas_cumprod.len() - 1]);
        let n = betas.len();
        let mut posterior_variance = Vec::with_capacity(n);
        let mut c1 = Vec::with_capacity(n);
        let mut c2 = Vec::with_capacity(n);
        for i in 0..n {
            let (ab, abp, b) = (alphas_cumprod[i], alphas_cumprod_prev[i], betas[i]);
            posterior_variance.push(b * (1.0 - abp) / (1.0 - ab));
            c1.push(b * abp.sqrt() / (1.0 - ab));
            c2.push((1.0 - abp) * (1.0 - b).sqrt() / (1.0 - ab));
        }
        let mut posterior_log_variance_clipped: Vec<f64> =
            posterior_variance.iter().map(|v| v.ln()).collect();
        posterior_log_variance_clipped[0] = match posterior_variance.get(1) {
            Some(v) => v.ln(),
            None => betas[0].ln(),
        };
        Ok(NoiseSchedule {
            kind,
            posterior_log_variance_clipped,
            log_betas: betas.iter().map(|b| b.ln()).collect(),
            log_one_minus_alphas_cumprod: alphas_cumprod.iter().map(|a| (1.0 - a).ln()).collect(),
            sqrt_recip_alphas_cumprod: alphas_cumprod.iter().map(|a| (1.0 / a).sqrt()).collect(),
            sqrt_recipm1_alphas_cumprod: alphas_cumprod
                .iter()
                .map(|a| (1.0 / a - 1.0).sqrt())
                .collect(),
            sqrt_alphas_cumprod: alphas_cumprod.iter().map(|a| a.sqrt()).collect(),
            sqrt_one_minus_alphas_cumprod: alphas_cumprod
                .iter()
                .map(|a| (1.0 - a).sqrt())
                .collect(),
            betas,
            alphas_cumprod,
            alphas_cumprod_prev,
            posterior_variance,
            posterior_mean_coef1: c1,
            posterior_mean_coef2: c2,
        })
    }

    pub fn num_timesteps(&self) -> usize {
        self.betas.len()
    }

    /// The forward process `x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps` for per-sample `t`.
    pub fn q_sample(
        &self,
        x0: burn::tensor::Tensor<4>,
        t: &[usize],
        eps: burn::tensor::Tensor<4>,
    ) -> burn::tensor::Tensor<4> {
        let device = x0.device();
        let a = super::per_sample(&self.sqrt_alphas_cumprod, t, &device);
        let b = super::per_sample(&self.sqrt_one_minus_alphas_cumprod, t, &device);
        x0 * a + eps * b
    }
}
