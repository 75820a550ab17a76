//! The precision the UNet's convolutions and attention matmuls compute in: `f32` (the default),
//! or `f16` / `bf16` with everything else kept in f32 (mixed precision, as PyTorch's autocast).
//!
//! What runs in 16 bits: the inputs and weights of every UNet convolution and the two matmuls
//! of attention (each is cast on the way in, its output cast back to f32; the bias is added in
//! f32). What stays f32: the weights themselves (the master copy the optimizer updates), the
//! AdamW moments and the EMA, GroupNorm's statistics, the softmax, the time embedding, the loss
//! and the samplers. Autodiff's backward of a cast is the cast back, so the gradients of the
//! 16-bit products are computed in 16 bits and reach the weights as f32.
//!
//! `f16` has 5 exponent bits: gradients of a small loss underflow and large ones overflow, so a
//! run in f16 scales its loss dynamically (`train::LossScale`, PyTorch's `GradScaler` rule:
//! start at 2^16, halve and skip the step when a gradient is not finite, double after 2,000
//! clean steps). `bf16` has f32's exponent range and needs no scaling.
//!
//! The precision is a property of the calling thread, set for a scope ([`scope`]): a run sets it
//! for its training and sampling, and two runs on two threads of one process (the tests, the
//! parallel trials) never see each other's. The default is f32 everywhere.
//!
//! Support is the device's (Burn's `supports_dtype`): WGSL has f16 where the adapter offers
//! `shader-f16` and no bf16 at all; SPIR-V (the `vulkan` build) has f16 arithmetic where the
//! device does and bf16 only for conversions and cooperative matrices, so not as a tensor type;
//! CUDA has both; `flex` computes both on the CPU (correct, slower than f32: it is there for
//! tests). [`Precision::check`]
//! refuses what the device cannot compute, before any work starts.

use burn::tensor::{Device, FloatDType};
use serde::{Deserialize, Serialize};
use std::cell::Cell;

/// The compute precision of convolutions and attention matmuls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in f32 (the default).
    #[default]
    F32,
    /// Convolutions and attention matmuls in IEEE half precision, with dynamic loss scaling.
    F16,
    /// Convolutions and attention matmuls in bfloat16 (f32's exponent range, 8 mantissa bits).
    Bf16,
}

impl Precision {
    pub const ALL: [Precision; 3] = [Self::F32, Self::F16, Self::Bf16];
    pub const NAMES: [&'static str; 3] = ["f32", "f16", "bf16"];

    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    /// Whether this is the default, f32 (serde's `skip_serializing_if`).
    pub fn is_f32(&self) -> bool {
        *self == Self::F32
    }

    /// The 16-bit type products are computed in, or None for f32.
    pub fn compute_dtype(self) -> Option<FloatDType> {
        match self {
            Self::F32 => None,
            Self::F16 => Some(FloatDType::F16),
            Self::Bf16 => Some(FloatDType::BF16),
        }
    }

    /// Whether training in this precision scales its loss (f16's narrow exponent range).
    pub fn scales_loss(self) -> bool {
        self == Self::F16
    }

    /// Ok when `device` can compute in this precision; otherwise why not, naming the setting.
    pub fn check(self, device: &Device) -> Result<(), String> {
        let Some(dtype) = self.compute_dtype() else {
            return Ok(());
        };
        if device.supports_dtype(dtype) {
            return Ok(());
        }
        let hint = match self {
            Self::Bf16 => {
                "WGSL has no bf16, and SPIR-V allows it only in conversions and cooperative \
                 matrices; use --precision f16 where the adapter has shader-f16, or the `cuda` \
                 build for bf16"
            }
            _ => {
                "the adapter does not offer shader-f16 (`diffnas devices` lists what each \
                 adapter has); use --precision f32"
            }
        };
        Err(format!(
            "--precision {}: the device {device:?} has no {} arithmetic ({hint})",
            self.name(),
            self.name()
        ))
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown precision {s:?} (expected one of {})",
                    Self::NAMES.join(", ")
                )
            })
    }
}

thread_local! {
    static CURRENT: Cell<Precision> = const { Cell::new(Precision::F32) };
}

/// The precision of the calling thread (f32 unless a [`scope`] set another).
pub fn current() -> Precision {
    CURRENT.with(Cell::get)
}

/// Sets the calling thread's precision until the returned guard drops (then the previous one
/// is back, so scopes nest).
#[must_use = "the precision is reset when the guard drops"]
pub fn scope(p: Precision) -> Scope {
    Scope(CURRENT.with(|c| c.replace(p)))
}

/// The guard of [`scope`].
pub struct Scope(Precision);

impl Drop for Scope {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(self.0));
    }
}

/// `tensor` in the calling thread's compute type (unchanged in f32).
pub fn to_compute<const D: usize>(tensor: burn::tensor::Tensor<D>) -> burn::tensor::Tensor<D> {
    match current().compute_dtype() {
        Some(dtype) => tensor.cast(dtype),
        None => tensor,
    }
}

/// `tensor` back in f32 (unchanged when it already is).
pub fn to_f32<const D: usize>(tensor: burn::tensor::Tensor<D>) -> burn::tensor::Tensor<D> {
    tensor.cast(FloatDType::F32)
}
