//! Shared helpers of the integration tests.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Tensor, TensorData};
use diffnas::genome::{Genome, ImageSpec};
use rand::SeedableRng;
use rand::rngs::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

/// The test preset at 16x16 grayscale: the smallest network every test can afford.
pub fn tiny16() -> Genome {
    Genome::tiny_for(ImageSpec {
        channels: 1,
        size: 16,
    })
}

/// Replace every parameter by seeded N(0, std) values, so that no gradient is trivially zero
/// (the UNet zero-initialises its output convolutions).
pub struct Randomize {
    pub rng: ChaCha8Rng,
    pub std: f32,
}

impl Randomize {
    pub fn new(seed: u64, std: f32) -> Self {
        Randomize {
            rng: ChaCha8Rng::seed_from_u64(seed),
            std,
        }
    }
}

impl ModuleMapper for Randomize {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let normal = Normal::new(0.0f32, self.std).expect("valid std");
        let rng = &mut self.rng;
        param.map(|t| {
            let shape = t.shape();
            let n = shape.num_elements();
            let v: Vec<f32> = (0..n).map(|_| normal.sample(rng)).collect();
            let (tracked, device) = (t.is_require_grad(), t.device());
            let new = Tensor::from_data(TensorData::new(v, shape), &device);
            if tracked { new.require_grad() } else { new }
        })
    }
}

/// All parameter values of a module, in visiting order.
pub fn param_values<M: Module>(m: &M) -> Vec<Vec<f32>> {
    struct V(Vec<Vec<f32>>);
    impl ModuleVisitor for V {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            self.0.push(
                p.val()
                    .into_data()
                    .convert::<f32>()
                    .try_into_vec::<f32>()
                    .expect("f32 data"),
            );
        }
    }
    let mut v = V(Vec::new());
    m.visit(&mut v);
    v.0
}

pub fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 data")
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Flip one byte of `path` at `offset` (from the start; negative from the end).
pub fn flip(path: &std::path::Path, offset: i64) {
    let mut bytes = std::fs::read(path).unwrap();
    let i = if offset < 0 {
        (bytes.len() as i64 + offset) as usize
    } else {
        offset as usize
    };
    bytes[i] ^= 0x10;
    std::fs::write(path, bytes).unwrap();
}

/// Our AdamW and Burn's with the same constants (the reference of the optimizer tests).
pub fn adamw_pair(
    beta_1: f32,
    beta_2: f32,
    epsilon: f32,
    weight_decay: f32,
) -> (diffnas::train::FusedAdamW, burn::optim::AdamW) {
    let burn = burn::optim::AdamWConfig::new()
        .with_beta_1(beta_1)
        .with_beta_2(beta_2)
        .with_epsilon(epsilon)
        .with_weight_decay(weight_decay)
        .build();
    let ours = diffnas::train::FusedAdamW::new(beta_1, beta_2, epsilon, weight_decay);
    (ours, burn)
}
