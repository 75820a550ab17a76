//! How the UNet's GroupNorms run, with what follows them: the SiLU and, in IDDPM's scale-shift
//! ResBlock, the per-image scale and shift from the timestep embedding. On the CPU (`flex`)
//! this is one fused kernel ([`crate::cpu::norm`]), on GPU devices (f32, with a GPU backend
//! feature) one fused CubeCL kernel (`model::gpu_norm`), elsewhere Burn's `GroupNorm` and tensor
//! ops. [`NormAlgorithm::Burn`] forces Burn's ops everywhere, for comparison.

use burn::nn::GroupNorm;
use burn::tensor::Tensor;
use burn::tensor::activation::silu;
use std::sync::atomic::{AtomicBool, Ordering};

/// Which implementation computes a GroupNorm (+ SiLU).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormAlgorithm {
    /// Our fused kernels on the CPU and on GPU devices, Burn's ops elsewhere (the default).
    Fused,
    /// Burn's `GroupNorm` and tensor ops on every device.
    Burn,
}

impl NormAlgorithm {
    pub const NAMES: [&'static str; 2] = ["fused", "burn"];

    pub fn name(self) -> &'static str {
        match self {
            NormAlgorithm::Fused => "fused",
            NormAlgorithm::Burn => "burn",
        }
    }
}

impl std::str::FromStr for NormAlgorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fused" => Ok(NormAlgorithm::Fused),
            "burn" => Ok(NormAlgorithm::Burn),
            _ => Err(format!(
                "unknown group-norm algorithm {s:?} (expected one of {})",
                Self::NAMES.join(", ")
            )),
        }
    }
}

static BURN: AtomicBool = AtomicBool::new(false);

/// Sets the GroupNorm algorithm of every model in this process (default `Fused`).
pub fn set_norm_algorithm(a: NormAlgorithm) {
    BURN.store(a == NormAlgorithm::Burn, Ordering::Relaxed);
}

/// The algorithm set by [`set_norm_algorithm`].
pub fn norm_algorithm() -> NormAlgorithm {
    if BURN.load(Ordering::Relaxed) {
        NormAlgorithm::Burn
    } else {
        NormAlgorithm::Fused
    }
}

/// `act(norm(x) * (1 + scale) + shift)`: `norm` over `x` `[B, C, H, W]`, then the optional
/// per-image `(scale, shift)` (`[B, C]` each), then SiLU when `silu`.
pub fn group_norm_act(
    norm: &GroupNorm,
    x: Tensor<4>,
    modulation: Option<(Tensor<2>, Tensor<2>)>,
    silu_after: bool,
) -> Tensor<4> {
    if let Some(kernel) = fused_kernel(&x) {
        let (scale, shift) = image_affine(norm, &x, modulation);
        return kernel(x, scale, shift, norm.num_groups, norm.epsilon, silu_after);
    }
    let h = norm.forward(x);
    let h = match modulation {
        Some((s, t)) => {
            let [b, c, _, _] = h.dims();
            h * (s.reshape([b, c, 1, 1]) + 1.0) + t.reshape([b, c, 1, 1])
        }
        None => h,
    };
    if silu_after { silu(h) } else { h }
}

/// A fused GroupNorm kernel: `act(n * scale + shift)` with per-image `scale` and `shift`
/// `[B, C]`, given the groups, epsilon and whether SiLU follows.
type FusedNorm = fn(Tensor<4>, Tensor<2>, Tensor<2>, usize, f64, bool) -> Tensor<4>;

/// The fused kernel that takes `x` under [`NormAlgorithm::Fused`]: the CPU's on flex, the GPU
/// one on CubeCL devices; `None` means Burn's ops.
fn fused_kernel(x: &Tensor<4>) -> Option<FusedNorm> {
    if norm_algorithm() != NormAlgorithm::Fused {
        return None;
    }
    if crate::cpu::group_norm_supported(x) {
        return Some(crate::cpu::group_norm);
    }
    #[cfg(feature = "gpu-kernels")]
    if super::gpu_norm::supported(x) {
        return Some(super::gpu_norm::group_norm);
    }
    None
}

/// The per-image affine `(scale, shift)` `[B, C]` the fused kernels apply after normalising:
/// `n * gamma * (1 + s) + beta * (1 + s) + t` folded into one (ones and zeros without affine).
fn image_affine(
    norm: &GroupNorm,
    x: &Tensor<4>,
    modulation: Option<(Tensor<2>, Tensor<2>)>,
) -> (Tensor<2>, Tensor<2>) {
    let [b, c, _, _] = x.dims();
    let device = x.device();
    let gamma = match &norm.gamma {
        Some(g) => g.val().reshape([1, c]),
        None => Tensor::ones([1, c], &device),
    };
    let beta = match &norm.beta {
        Some(b) => b.val().reshape([1, c]),
        None => Tensor::zeros([1, c], &device),
    };
    match modulation {
        Some((s, t)) => {
            let s1 = s + 1.0;
            (gamma * s1.clone(), beta * s1 + t)
        }
        None => (gamma.expand([b, c]), beta.expand([b, c])),
    }
}
