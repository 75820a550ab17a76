//! Host-side Gaussian noise from counter-based ChaCha8 streams.
//!
//! Noise is drawn on the host and uploaded, so that (a) every backend (flex, wgpu, the browser)
//! sees the same numbers for the same seed, (b) an image's noise depends only on the seed and
//! the image's index, never on the batch it was sampled in, and (c) training randomness is a
//! function of (seed, step), which makes resuming after a kill exact.

use burn::tensor::{Device, Tensor, TensorData};
use rand::SeedableRng;
use rand::rngs::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

/// `n` standard normal f32 values from `rng`.
pub fn normals(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| StandardNormal.sample(rng)).collect()
}

/// The RNG of one training step: the stream is the step number.
pub fn training_rng(seed: u64, step: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(step);
    rng
}

/// One independent stream per image of a sampling run.
pub struct NoiseSource {
    streams: Vec<ChaCha8Rng>,
    image_shape: [usize; 3],
}

impl NoiseSource {
    /// Streams for images `first .. first + count` of the run seeded with `seed`. The stream
    /// of image `i` is `i` with the seed's key offset so sampling streams never coincide with
    /// training streams of the same seed.
    pub fn new(seed: u64, first: u64, count: usize, image_shape: [usize; 3]) -> Self {
        let streams = (0..count as u64)
            .map(|i| {
                let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_5a3b_1e5d_0000);
                rng.set_stream(first + i);
                rng
            })
            .collect();
        NoiseSource {
            streams,
            image_shape,
        }
    }

    /// The next `[count, C, H, W]` block of standard normal noise.
    pub fn next(&mut self, device: &Device) -> Tensor<4> {
        let per = self.image_shape.iter().product::<usize>();
        let mut v = Vec::with_capacity(per * self.streams.len());
        for rng in &mut self.streams {
            v.extend(normals(rng, per));
        }
        let [c, h, w] = self.image_shape;
        Tensor::from_data(TensorData::new(v, [self.streams.len(), c, h, w]), device)
    }
}
