//! Samplers with diffusers' vocabulary (`set_timesteps`, `step`): DDPM ancestral sampling
//! (Ho et al. 2020, Algorithm 2) respaced to any number of steps as in IDDPM section 4, and DDIM
//! (Song et al. 2021, eq. 12) with configurable eta.

use super::noise::NoiseSource;
use super::schedule::NoiseSchedule;
use super::{Denoiser, Prediction, timestep_tensor};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SamplerKind {
    Ddpm,
    Ddim,
}

impl std::str::FromStr for SamplerKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ddpm" => Ok(SamplerKind::Ddpm),
            "ddim" => Ok(SamplerKind::Ddim),
            other => Err(format!("unknown sampler {other:?}: expected ddpm or ddim")),
        }
    }
}

/// Reverse-process variance of the DDPM sampler (DDPM section 3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VarianceKind {
    /// sigma^2 = beta_t (the choice DDPM used for CIFAR-10).
    FixedLarge,
    /// sigma^2 = beta_tilde_t, the true posterior variance.
    FixedSmall,
}

impl std::str::FromStr for VarianceKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fixed-large" => Ok(VarianceKind::FixedLarge),
            "fixed-small" => Ok(VarianceKind::FixedSmall),
            other => Err(format!(
                "unknown variance {other:?}: expected fixed-large or fixed-small"
            )),
        }
    }
}

impl std::fmt::Display for VarianceKind {
    /// The name [`std::str::FromStr`] reads.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            VarianceKind::FixedLarge => "fixed-large",
            VarianceKind::FixedSmall => "fixed-small",
        })
    }
}

/// `n` timesteps evenly spread over `0..T`, descending, always containing `T - 1` and `0`.
pub fn respaced_timesteps(num_train_timesteps: usize, n: usize) -> Vec<usize> {
    let t = num_train_timesteps;
    let n = n.clamp(1, t);
    if n == 1 {
        return vec![t - 1];
    }
    let mut v: Vec<usize> = (0..n)
        .map(|i| ((i as f64) * (t - 1) as f64 / (n - 1) as f64).round() as usize)
        .collect();
    v.dedup();
    v.reverse();
    v
}

/// A reverse-process sampler over a (possibly respaced) subset of the training timesteps.
pub trait Sampler {
    /// Use `n` evenly spaced timesteps (1 <= n <= T).
    fn set_timesteps(&mut self, n: usize);
    /// The timesteps in the order they are visited (descending).
    fn timesteps(&self) -> &[usize];
    /// Whether step `i` adds fresh noise (and so needs `noise` in [`Sampler::step`]).
    fn needs_noise(&self, i: usize) -> bool;
    /// One reverse step from `x_t` at `timesteps()[i]` to the next visited timestep.
    fn step(&self, eps: Tensor<4>, i: usize, x_t: Tensor<4>, noise: Option<Tensor<4>>)
    -> Tensor<4>;
    /// [`Sampler::step`] from a whole [`Prediction`]: a sampler that can use a learned variance
    /// does (DDPM); the others ignore it (DDIM).
    fn step_predicted(
        &self,
        pred: Prediction,
        i: usize,
        x_t: Tensor<4>,
        noise: Option<Tensor<4>>,
    ) -> Tensor<4> {
        self.step(pred.eps, i, x_t, noise)
    }
}

fn alphas(schedule: &NoiseSchedule, timesteps: &[usize], i: usize) -> (f64, f64) {
    let abar_t = schedule.alphas_cumprod[timesteps[i]];
    let abar_prev = timesteps
        .get(i + 1)
        .map_or(1.0, |&tp| schedule.alphas_cumprod[tp]);
    (abar_t, abar_prev)
}

/// Predicted x0 from eps, optionally clipped to the data range.
fn predict_x0(x_t: Tensor<4>, eps: Tensor<4>, abar_t: f64, clip: bool) -> Tensor<4> {
    let x0 = x_t * (1.0 / abar_t).sqrt() - eps * (1.0 / abar_t - 1.0).sqrt();
    if clip { x0.clamp(-1.0, 1.0) } else { x0 }
}

/// DDPM ancestral sampling.
#[derive(Debug, Clone)]
pub struct Ddpm {
    schedule: NoiseSchedule,
    timesteps: Vec<usize>,
    pub variance: VarianceKind,
    /// Clip the predicted x0 to [-1, 1] before forming the posterior mean.
    pub clip_denoised: bool,
}

impl Ddpm {
    pub fn new(schedule: NoiseSchedule) -> Self {
        let timesteps = respaced_timesteps(schedule.num_timesteps(), schedule.num_timesteps());
        Ddpm {
            schedule,
            timesteps,
            variance: VarianceKind::FixedLarge,
            clip_denoised: true,
        }
    }
}

impl Ddpm {
    /// The respaced process's beta and posterior variance at step `i` (IDDPM section 4).
    fn respaced(&self, i: usize) -> (f64, f64, f64, f64) {
        let (abar_t, abar_prev) = alphas(&self.schedule, &self.timesteps, i);
        let beta = 1.0 - abar_t / abar_prev;
        (
            abar_t,
            abar_prev,
            beta,
            beta * (1.0 - abar_prev) / (1.0 - abar_t),
        )
    }

    fn step_with(
        &self,
        eps: Tensor<4>,
        variance: Option<Tensor<4>>,
        i: usize,
        x_t: Tensor<4>,
        noise: Option<Tensor<4>>,
    ) -> Tensor<4> {
        let (abar_t, abar_prev, beta, posterior) = self.respaced(i);
        let x0 = predict_x0(x_t.clone(), eps, abar_t, self.clip_denoised);
        let c1 = beta * abar_prev.sqrt() / (1.0 - abar_t);
        let c2 = (1.0 - abar_prev) * (1.0 - beta).sqrt() / (1.0 - abar_t);
        let mean = x0 * c1 + x_t * c2;
        if !self.needs_noise(i) {
            return mean;
        }
        let z = noise.expect("needs_noise(i) is true: the caller passes noise");
        match variance {
            // IDDPM eq. 15 between the respaced process's beta and beta_tilde; beta_tilde of
            // the step that ends at 0 is 0, so that step takes the next one's (as IDDPM clips).
            Some(raw) => {
                let min_log = if posterior > 0.0 {
                    posterior.ln()
                } else {
                    self.respaced(i.saturating_sub(1)).3.ln()
                };
                let (dims, device) = (raw.dims(), raw.device());
                let log_var = super::vlb::learned_log_variance(
                    raw,
                    Tensor::full(dims, min_log, &device),
                    Tensor::full(dims, beta.ln(), &device),
                );
                mean + z * (log_var * 0.5).exp()
            }
            None => {
                let var = match self.variance {
                    VarianceKind::FixedLarge => beta,
                    VarianceKind::FixedSmall => posterior,
                };
                mean + z * var.sqrt()
            }
        }
    }
}

impl Sampler for Ddpm {
    fn set_timesteps(&mut self, n: usize) {
        self.timesteps = respaced_timesteps(self.schedule.num_timesteps(), n);
    }
    fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }
    fn needs_noise(&self, i: usize) -> bool {
        i + 1 < self.timesteps.len()
    }
    fn step(
        &self,
        eps: Tensor<4>,
        i: usize,
        x_t: Tensor<4>,
        noise: Option<Tensor<4>>,
    ) -> Tensor<4> {
        self.step_with(eps, None, i, x_t, noise)
    }
    /// With a learned variance (IDDPM eq. 15), the noise added is the model's own.
    fn step_predicted(
        &self,
        pred: Prediction,
        i: usize,
        x_t: Tensor<4>,
        noise: Option<Tensor<4>>,
    ) -> Tensor<4> {
        self.step_with(pred.eps, pred.variance, i, x_t, noise)
    }
}

/// DDIM: deterministic for eta = 0, DDPM-like for eta = 1.
#[derive(Debug, Clone)]
pub struct Ddim {
    schedule: NoiseSchedule,
    timesteps: Vec<usize>,
    pub eta: f64,
    pub clip_denoised: bool,
}

impl Ddim {
    pub fn new(schedule: NoiseSchedule, eta: f64) -> Self {
        let timesteps = respaced_timesteps(schedule.num_timesteps(), 50);
        Ddim {
            schedule,
            timesteps,
            eta,
            clip_denoised: true,
        }
    }
}

impl Sampler for Ddim {
    fn set_timesteps(&mut self, n: usize) {
        self.timesteps = respaced_timesteps(self.schedule.num_timesteps(), n);
    }
    fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }
    fn needs_noise(&self, i: usize) -> bool {
        self.eta > 0.0 && i + 1 < self.timesteps.len()
    }
    fn step(
        &self,
        eps: Tensor<4>,
        i: usize,
        x_t: Tensor<4>,
        noise: Option<Tensor<4>>,
    ) -> Tensor<4> {
        let (abar_t, abar_prev) = alphas(&self.schedule, &self.timesteps, i);
        let x0 = predict_x0(x_t.clone(), eps.clone(), abar_t, self.clip_denoised);
        // After clipping, the eps consistent with the clipped x0 (as improved-diffusion does).
        let eps = if self.clip_denoised {
            (x_t - x0.clone() * abar_t.sqrt()) * (1.0 / (1.0 - abar_t).sqrt())
        } else {
            eps
        };
        let sigma = self.eta
            * ((1.0 - abar_prev) / (1.0 - abar_t)).sqrt()
            * (1.0 - abar_t / abar_prev).sqrt();
        let dir = (1.0 - abar_prev - sigma * sigma).max(0.0).sqrt();
        let x_prev = x0 * abar_prev.sqrt() + eps * dir;
        if self.needs_noise(i) && sigma > 0.0 {
            let z = noise.expect("needs_noise(i) is true: the caller passes noise");
            x_prev + z * sigma
        } else {
            x_prev
        }
    }
}

/// Build a sampler by kind with `steps` respaced timesteps.
pub fn make_sampler(
    kind: SamplerKind,
    schedule: NoiseSchedule,
    steps: usize,
    eta: f64,
) -> Box<dyn Sampler> {
    let mut s: Box<dyn Sampler> = match kind {
        SamplerKind::Ddpm => Box::new(Ddpm::new(schedule)),
        SamplerKind::Ddim => Box::new(Ddim::new(schedule, eta)),
    };
    s.set_timesteps(steps);
    s
}

/// A sampler a [`SamplingRun`] borrows (`&dyn Sampler`) or owns (`Box<dyn Sampler>`).
pub trait SamplerHandle {
    fn get(&self) -> &dyn Sampler;
}

impl<'a> SamplerHandle for &'a (dyn Sampler + 'a) {
    fn get(&self) -> &dyn Sampler {
        *self
    }
}

impl SamplerHandle for Box<dyn Sampler> {
    fn get(&self) -> &dyn Sampler {
        self.as_ref()
    }
}

/// A sampling run driven one step at a time (the CLI loops over it; the browser yields to the
/// page between steps). Images `first .. first + count` of the seed's sequence. The sampler is
/// borrowed (`&dyn Sampler`) or owned (`Box<dyn Sampler>`, which the browser keeps across
/// calls).
pub struct SamplingRun<S: SamplerHandle> {
    sampler: S,
    noise: NoiseSource,
    x: Tensor<4>,
    i: usize,
    device: Device,
}

impl<S: SamplerHandle> SamplingRun<S> {
    pub fn new(
        sampler: S,
        seed: u64,
        first: u64,
        count: usize,
        image_shape: [usize; 3],
        device: &Device,
    ) -> Self {
        let mut noise = NoiseSource::new(seed, first, count, image_shape);
        let x = noise.next(device);
        SamplingRun {
            sampler,
            noise,
            x,
            i: 0,
            device: device.clone(),
        }
    }

    pub fn total_steps(&self) -> usize {
        self.sampler.get().timesteps().len()
    }

    pub fn steps_done(&self) -> usize {
        self.i
    }

    pub fn is_done(&self) -> bool {
        self.i >= self.total_steps()
    }

    /// Run one denoising step; returns false once all steps are done.
    pub fn step<D: Denoiser + ?Sized>(&mut self, model: &D) -> bool {
        if self.is_done() {
            return false;
        }
        let t = self.sampler.get().timesteps()[self.i];
        let b = self.x.dims()[0];
        let tt = timestep_tensor(&vec![t; b], &self.device);
        let pred = model.predict(self.x.clone(), tt);
        let sampler = self.sampler.get();
        let noise = sampler
            .needs_noise(self.i)
            .then(|| self.noise.next(&self.device));
        self.x = sampler.step_predicted(pred, self.i, self.x.clone(), noise);
        self.i += 1;
        true
    }

    /// Run the remaining steps, calling `progress(done, total)` after each.
    pub fn run<D: Denoiser + ?Sized>(
        mut self,
        model: &D,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Tensor<4> {
        let total = self.total_steps();
        while self.step(model) {
            progress(self.i, total);
        }
        self.x
    }

    /// The current images (x_0 once [`SamplingRun::is_done`]), `[count, C, H, W]` in [-1, 1].
    pub fn images(&self) -> Tensor<4> {
        self.x.clone()
    }
}
