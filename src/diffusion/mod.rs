//! The diffusion process (DDPM, Ho et al. 2020; IDDPM, Nichol & Dhariwal 2021): noise schedules
//! in f64 on the host, the forward process `q_sample`, the epsilon-prediction loss, and the
//! DDPM-ancestral and DDIM samplers. The model is an argument (the [`Denoiser`] trait); this
//! module never sees a genome or a concrete network.

mod noise;
mod sampler;
mod schedule;
pub mod vlb;

pub use noise::{NoiseSource, normals, training_rng};
pub use sampler::{
    Ddim, Ddpm, Sampler, SamplerHandle, SamplerKind, SamplingRun, VarianceKind, make_sampler,
    respaced_timesteps,
};
pub use schedule::{BetaSchedule, NoiseSchedule, ScheduleError};
pub use vlb::LossKind;

use burn::tensor::{Device, Tensor, TensorData};

/// A network that predicts the noise in `x_t` at timestep `t`.
pub trait Denoiser {
    /// `x_t`: `[B, C, H, W]`; `t`: `[B]` timesteps on the original `0..T` scale (float, so a
    /// respaced sampler can pass its own). Returns the predicted epsilon, `[B, C, H, W]`.
    fn predict_eps(&self, x_t: Tensor<4>, t: Tensor<1>) -> Tensor<4>;

    /// The predicted epsilon and, for a model that learns its variance (IDDPM), its raw
    /// variance output `v` (`[B, C, H, W]`; the log-variance is
    /// [`vlb::learned_log_variance`] of it). The default has fixed variances.
    fn predict(&self, x_t: Tensor<4>, t: Tensor<1>) -> Prediction {
        Prediction {
            eps: self.predict_eps(x_t, t),
            variance: None,
        }
    }
}

/// What a [`Denoiser`] predicts at one step.
#[derive(Debug, Clone)]
pub struct Prediction {
    pub eps: Tensor<4>,
    /// The raw variance output of a learned-variance model; `None` for fixed variances.
    pub variance: Option<Tensor<4>>,
}

/// Per-sample coefficients `[B, 1, 1, 1]` gathered from a host-side schedule array.
pub fn per_sample(values: &[f64], t: &[usize], device: &Device) -> Tensor<4> {
    let v: Vec<f32> = t.iter().map(|&i| values[i] as f32).collect();
    Tensor::from_data(TensorData::new(v, [t.len(), 1, 1, 1]), device)
}

/// Timesteps as the float tensor a [`Denoiser`] takes.
pub fn timestep_tensor(t: &[usize], device: &Device) -> Tensor<1> {
    let v: Vec<f32> = t.iter().map(|&i| i as f32).collect();
    Tensor::from_data(TensorData::new(v, [t.len()]), device)
}

/// Epsilon-prediction loss `L_simple`: mean squared error over all elements.
pub fn eps_loss(eps_pred: Tensor<4>, eps: Tensor<4>) -> Tensor<1> {
    (eps_pred - eps).square().mean()
}

/// Map model outputs in [-1, 1] to 8-bit pixels (round half away from zero, clamped).
pub fn to_pixels(values: &[f32]) -> Vec<u8> {
    values
        .iter()
        .map(|&v| ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8)
        .collect()
}
