//! Deterministic, non-pretrained weights and pixels from a formula ("splitmix").
//!
//! Used to test the FID Inception against pytorch-fid without the pretrained file, and to
//! benchmark the extractor where that file is absent. Reproduced bit for bit by
//! `tests/fixtures/make_fid_fixture.py`: a tensor's values come from SplitMix64 seeded with the
//! FNV-1a hash of its name, element `i` using state `seed + (i + 1) * golden`, mapped to
//! [-1, 1) in f64, scaled by a rule that depends on the tensor's kind, rounded once to f32.
//! Never used for a reported FID.

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// FNV-1a, 64-bit.
pub fn fnv1a64(s: &str) -> u64 {
    s.bytes().fold(0xCBF2_9CE4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

fn mix(seed: u64, i: u64) -> u64 {
    let mut z = seed.wrapping_add((i + 1).wrapping_mul(GOLDEN));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `n` values in [-1, 1) (f64), the stream named by `seed`.
pub fn unit(seed: u64, n: usize) -> Vec<f64> {
    (0..n as u64)
        .map(|i| 2.0 * ((mix(seed, i) >> 11) as f64 * (1.0 / (1u64 << 53) as f64)) - 1.0)
        .collect()
}

/// `n` pixel values (the top byte of each SplitMix64 output).
pub fn bytes(seed: u64, n: usize) -> Vec<u8> {
    (0..n as u64).map(|i| (mix(seed, i) >> 56) as u8).collect()
}

/// The formula value of the Inception tensor `name` with shape `shape`.
pub fn inception_tensor(name: &str, shape: &[usize]) -> Vec<f32> {
    let n = shape.iter().product::<usize>().max(1);
    let v = unit(fnv1a64(name), n);
    let scale: Box<dyn Fn(f64) -> f64> = if name.ends_with("conv.weight") {
        let fan_in: usize = shape[1..].iter().product();
        let a = (6.0 / fan_in as f64).sqrt();
        Box::new(move |x| x * a)
    } else if name.ends_with("bn.weight") {
        Box::new(|x| 1.0 + 0.2 * x)
    } else if name.ends_with("bn.bias") || name.ends_with("bn.running_mean") {
        Box::new(|x| 0.1 * x)
    } else if name.ends_with("bn.running_var") {
        Box::new(|x| 1.25 + 0.25 * x)
    } else {
        Box::new(|x| 0.01 * x)
    };
    v.into_iter().map(|x| scale(x) as f32).collect()
}
