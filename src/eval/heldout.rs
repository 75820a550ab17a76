//! The held-out denoising loss: the epsilon-prediction error of a model on a fixed set of
//! `(x0, t, noise)` triples drawn once from images it was not trained on. Nearly free (one
//! forward pass per triple, no sampling), and the same triples for every model, so its values
//! rank models without the noise of a fresh draw of `t` and `eps` at each reading.

use crate::data::Dataset;
use crate::diffusion::{Denoiser, NoiseSchedule, normals, timestep_tensor};
use burn::tensor::{Device, Tensor, TensorData};
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

/// Triples drawn per set unless asked otherwise.
pub const DEFAULT_TRIPLES: usize = 512;

/// A fixed set of `(x0, t, eps)` triples.
#[derive(Debug, Clone, PartialEq)]
pub struct HeldOutSet {
    /// `[n, C, H, W]` in [-1, 1], row-major.
    x0: Vec<f32>,
    t: Vec<usize>,
    eps: Vec<f32>,
    shape: [usize; 3],
}

/// What a held-out set was drawn from, for records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeldOutInfo {
    pub data: String,
    pub triples: usize,
    pub seed: u64,
}

impl HeldOutSet {
    /// `n` triples: the first `n` images of `data` (cycled when it has fewer), timesteps
    /// uniform over `0..timesteps` and standard-normal noise, both from `seed`.
    pub fn new(data: &Dataset, n: usize, timesteps: usize, seed: u64) -> HeldOutSet {
        assert!(
            data.len > 0 && n > 0 && timesteps > 0,
            "a held-out set needs data"
        );
        let shape = [data.channels, data.height, data.width];
        let per = shape.iter().product::<usize>();
        let mut x0 = Vec::with_capacity(n * per);
        for i in 0..n {
            x0.extend(
                data.image(i % data.len)
                    .iter()
                    .map(|&p| p as f32 / 127.5 - 1.0),
            );
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x4e1d_0000_0000_0000);
        let t = (0..n).map(|_| rng.random_range(0..timesteps)).collect();
        let eps = normals(&mut rng, n * per);
        HeldOutSet { x0, t, eps, shape }
    }

    pub fn len(&self) -> usize {
        self.t.len()
    }

    pub fn is_empty(&self) -> bool {
        self.t.is_empty()
    }

    /// Mean squared error between `model`'s predicted noise and the true noise over every
    /// element of every triple, in batches of `batch`.
    pub fn eps_mse<D: Denoiser + ?Sized>(
        &self,
        model: &D,
        schedule: &NoiseSchedule,
        device: &Device,
        batch: usize,
    ) -> f64 {
        let per = self.shape.iter().product::<usize>();
        let [c, h, w] = self.shape;
        let mut sum = 0.0f64;
        let mut start = 0;
        while start < self.len() {
            let k = batch.max(1).min(self.len() - start);
            let range = start * per..(start + k) * per;
            let x0 = Tensor::<4>::from_data(
                TensorData::new(self.x0[range.clone()].to_vec(), [k, c, h, w]),
                device,
            );
            let eps = Tensor::<4>::from_data(
                TensorData::new(self.eps[range].to_vec(), [k, c, h, w]),
                device,
            );
            let t = &self.t[start..start + k];
            let x_t = schedule.q_sample(x0, t, eps.clone());
            let pred = model.predict_eps(x_t, timestep_tensor(t, device));
            let se = (pred - eps).square().sum().into_scalar::<f32>() as f64;
            sum += se;
            start += k;
        }
        sum / (self.len() * per) as f64
    }
}
