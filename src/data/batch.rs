//! Deterministic shuffled batches: sample `j` of step `s` is element `(s * B + j) mod N` of the
//! epoch's permutation, and the permutation of epoch `e` is drawn from (seed, e). Any step's
//! batch is therefore a pure function of (seed, step), which makes resuming exact.

use super::Dataset;
use burn::tensor::{Device, Tensor, TensorData};
use rand::SeedableRng;
use rand::rngs::ChaCha8Rng;
use rand::seq::SliceRandom;

pub struct Batcher {
    seed: u64,
    batch_size: usize,
    len: usize,
    epoch: Option<(u64, Vec<u32>)>,
}

impl Batcher {
    pub fn new(seed: u64, batch_size: usize, len: usize) -> Self {
        assert!(
            len > 0 && batch_size > 0,
            "a batcher needs data and a batch size"
        );
        Batcher {
            seed,
            batch_size,
            len,
            epoch: None,
        }
    }

    fn permutation(&mut self, epoch: u64) -> &[u32] {
        if self.epoch.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let mut perm: Vec<u32> = (0..self.len as u32).collect();
            let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ 0xda7a_0000_0000_0000);
            rng.set_stream(epoch);
            perm.shuffle(&mut rng);
            self.epoch = Some((epoch, perm));
        }
        &self.epoch.as_ref().expect("set above").1
    }

    /// Dataset indices of the batch of `step`.
    pub fn indices(&mut self, step: u64) -> Vec<usize> {
        let n = self.len as u64;
        (0..self.batch_size as u64)
            .map(|j| {
                let p = step * self.batch_size as u64 + j;
                let (epoch, k) = (p / n, (p % n) as usize);
                self.permutation(epoch)[k] as usize
            })
            .collect()
    }
}

impl Dataset {
    /// Images `indices` as a `[B, C, H, W]` tensor scaled to [-1, 1].
    pub fn batch(&self, indices: &[usize], device: &Device) -> Tensor<4> {
        let per = self.channels * self.height * self.width;
        let mut v = Vec::with_capacity(indices.len() * per);
        for &i in indices {
            v.extend(self.image(i).iter().map(|&p| p as f32 / 127.5 - 1.0));
        }
        Tensor::from_data(
            TensorData::new(v, [indices.len(), self.channels, self.height, self.width]),
            device,
        )
    }
}
