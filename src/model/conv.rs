//! How the UNet's convolutions run. Burn's own `conv2d` on the GPU backends autotunes only
//! between a direct kernel and tensor-core implicit GEMMs; with f32 on wgpu no tensor-core path
//! exists, so every dense `k x k` forward convolution lands on the direct kernel, which a kernel
//! profile of `ddpm-cifar10` at batch 128 on an H100 put at 73% of all device time (the backward
//! passes already use im2col + matmul). On the CPU, Burn's `flex` convolution spent most of a
//! training step in its weight gradient (README, CPU profile).
//!
//! Three implementations, chosen process-wide ([`set_conv_algorithm`]):
//! - [`ConvAlgorithm::Im2col`]: our im2col kernels, one autodiff node each. On GPU devices
//!   [`super::im2col`] (our im2col kernel + Burn's matmul forward, Burn's gradients backward;
//!   needs a GPU backend feature); on the CPU [`crate::cpu::conv`] (im2col + GEMM forward and for
//!   both gradients). Grouped convolutions and non-f32 CPU tensors go to Burn's.
//! - [`ConvAlgorithm::Gemm`]: the same lowering as plain tensor ops ([`conv2d_gemm`]: one strided
//!   slice per filter tap, a concatenation, one batched matmul) that autodiff differentiates op
//!   by op. Runs on every backend; it is the reference the kernels are tested against. Measured
//!   on an H100 (wgpu on Vulkan, ddpm-cifar10, batch 128): sampling 183 -> 807 image-steps/s,
//!   but training 112 -> 65 images/s, because the backward of the slices costs more than the
//!   direct forward it replaces.
//! - [`ConvAlgorithm::Direct`]: Burn's `conv2d`.
//!
//! [`ConvAlgorithm::Auto`], the default, is `Im2col`. Weights, their layout and the parameter
//! count are the same either way.

use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::tensor::ops::{ConvOptions, PadMode};
use burn::tensor::{Tensor, s};
use std::sync::atomic::{AtomicU8, Ordering};

/// Which implementation computes a convolution's forward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ConvAlgorithm {
    /// `Im2col` (the default).
    Auto = 0,
    /// Burn's `conv2d` (and whatever kernel its backend picks).
    Direct = 1,
    /// im2col by strided slices + one batched matmul, as tensor ops.
    Gemm = 2,
    /// Our im2col kernels: on GPU devices im2col + Burn's matmul forward and Burn's gradients
    /// backward, on the CPU im2col + GEMM for the forward and both gradients.
    Im2col = 3,
}

impl ConvAlgorithm {
    /// Every algorithm, indexed by its discriminant.
    pub const ALL: [ConvAlgorithm; 4] = [Self::Auto, Self::Direct, Self::Gemm, Self::Im2col];
    pub const NAMES: [&'static str; 4] = ["auto", "direct", "gemm", "im2col"];

    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }
}

impl std::str::FromStr for ConvAlgorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown convolution algorithm {s:?} (expected one of {})",
                    Self::NAMES.join(", ")
                )
            })
    }
}

static ALGORITHM: AtomicU8 = AtomicU8::new(ConvAlgorithm::Auto as u8);

/// Sets the convolution algorithm of every model in this process (default `Auto`).
pub fn set_conv_algorithm(a: ConvAlgorithm) {
    ALGORITHM.store(a as u8, Ordering::Relaxed);
}

/// The algorithm set by [`set_conv_algorithm`].
pub fn conv_algorithm() -> ConvAlgorithm {
    ConvAlgorithm::ALL[ALGORITHM.load(Ordering::Relaxed) as usize]
}

/// `conv.forward(x)` by the process's algorithm.
pub fn forward(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    match options_of(conv) {
        Some(options) => conv2d(
            x,
            conv.weight.val(),
            conv.bias.as_ref().map(|b| b.val()),
            options,
        ),
        None => conv.forward(x),
    }
}

/// `conv.forward(x)` for networks outside the UNet (the scoring extractors): our CPU kernel on
/// `flex` (unless the process's algorithm is `direct`), Burn's module on every other device, so
/// their GPU path stays the one their parity tests pin.
pub fn forward_on_cpu_kernel(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    match options_of(conv) {
        Some(options) if uses_cpu_kernel(&x, &options) => crate::cpu::conv2d(
            x,
            conv.weight.val(),
            conv.bias.as_ref().map(|b| b.val()),
            options,
        ),
        _ => conv.forward(x),
    }
}

/// `conv.forward(x) + extra` with `extra` `[B, Cout]` added to every pixel (a ResBlock's
/// timestep embedding): on the CPU the sum is the convolution's per-image bias, with no pass of
/// its own.
pub fn forward_plus(conv: &Conv2d, x: Tensor<4>, extra: Tensor<2>) -> Tensor<4> {
    let [b, c] = extra.dims();
    match options_of(conv) {
        Some(options) if uses_cpu_kernel(&x, &options) => {
            let bias = match &conv.bias {
                Some(bias) => bias.val().reshape([1, c]) + extra,
                None => extra,
            };
            crate::cpu::conv2d_image_bias(x, conv.weight.val(), bias, options)
        }
        _ => forward(conv, x) + extra.reshape([b, c, 1, 1]),
    }
}

/// The explicit options of a convolution module (None for Burn's "same" padding with a
/// stride, which only Burn's module resolves).
fn options_of(conv: &Conv2d) -> Option<ConvOptions<2>> {
    let [kh, kw] = conv.kernel_size;
    let padding = match conv.padding {
        PaddingConfig2d::Explicit(t, l, b, r) => [(t, b), (l, r)],
        PaddingConfig2d::Valid => [(0, 0), (0, 0)],
        PaddingConfig2d::Same => {
            // "same" for stride 1; Burn pads the extra row/column of an even kernel at the end.
            let (ph, pw) = ((kh - 1) / 2, (kw - 1) / 2);
            [(ph, kh - 1 - ph), (pw, kw - 1 - pw)]
        }
    };
    (!matches!(conv.padding, PaddingConfig2d::Same) || conv.stride == [1, 1])
        .then(|| ConvOptions::new_with_padding(conv.stride, padding, conv.dilation, conv.groups))
}

/// The process's algorithm with `Auto` resolved.
fn resolved() -> ConvAlgorithm {
    match conv_algorithm() {
        ConvAlgorithm::Auto => ConvAlgorithm::Im2col,
        a => a,
    }
}

/// Whether this convolution runs on our CPU kernel (f32 only: a 16-bit precision goes through
/// [`conv2d`]'s casts).
fn uses_cpu_kernel(x: &Tensor<4>, options: &ConvOptions<2>) -> bool {
    resolved() == ConvAlgorithm::Im2col
        && crate::precision::current() == crate::precision::Precision::F32
        && crate::cpu::conv2d_supported(x, options)
}

/// `burn::tensor::module::conv2d` by the process's algorithm (the gemm path takes groups 1 and
/// dilation 1 and passes anything else to Burn), in the calling thread's precision
/// ([`crate::precision`]): with a 16-bit one, input and weights are cast to it, the output
/// back to f32, and the bias added in f32.
pub fn conv2d(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    options: ConvOptions<2>,
) -> Tensor<4> {
    if crate::precision::current() != crate::precision::Precision::F32 {
        use crate::precision::{to_compute, to_f32};
        let out = to_f32(conv2d_in_dtype(
            to_compute(x),
            to_compute(weight),
            None,
            options,
        ));
        return match bias {
            Some(bias) => {
                let c = bias.dims()[0];
                out + bias.reshape([1, c, 1, 1])
            }
            None => out,
        };
    }
    conv2d_in_dtype(x, weight, bias, options)
}

/// [`conv2d`] in the dtype of its inputs.
fn conv2d_in_dtype(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    options: ConvOptions<2>,
) -> Tensor<4> {
    match resolved() {
        ConvAlgorithm::Gemm if options.groups == 1 && options.dilation == [1, 1] => {
            conv2d_gemm(x, weight, bias, options.stride, options.padding)
        }
        ConvAlgorithm::Im2col if crate::cpu::conv2d_supported(&x, &options) => {
            crate::cpu::conv2d(x, weight, bias, options)
        }
        #[cfg(feature = "gpu-kernels")]
        ConvAlgorithm::Im2col if on_gpu(&x) => super::im2col::conv2d(x, weight, bias, options),
        _ => burn::tensor::module::conv2d(x, weight, bias, options),
    }
}

/// A device that reports an identity is a CubeCL device (wgpu, Vulkan, CUDA, ...); `flex`
/// reports none.
#[cfg(feature = "gpu-kernels")]
fn on_gpu(x: &Tensor<4>) -> bool {
    x.device().identity().is_some()
}

/// The convolution as im2col + matmul: `[B, Cin, H, W]` with weights `[Cout, Cin, KH, KW]`,
/// zero padding `padding` = `[(top, bottom), (left, right)]` -> `[B, Cout, OH, OW]`.
pub fn conv2d_gemm(
    x: Tensor<4>,
    w: Tensor<4>,
    bias: Option<Tensor<1>>,
    stride: [usize; 2],
    padding: [(usize, usize); 2],
) -> Tensor<4> {
    let [cout, cin, kh, kw] = w.dims();
    let [b, c, h, wd] = x.dims();
    assert_eq!(c, cin, "convolution expects {cin} input channels, got {c}");
    let [sh, sw] = stride;
    let [(top, bottom), (left, right)] = padding;
    let (hp, wp) = (h + top + bottom, wd + left + right);
    assert!(
        hp >= kh && wp >= kw,
        "a {kh}x{kw} kernel does not fit a padded {hp}x{wp} input"
    );
    let (oh, ow) = ((hp - kh) / sh + 1, (wp - kw) / sw + 1);
    let out = if kh == 1 && kw == 1 && (sh, sw) == (1, 1) && top + bottom + left + right == 0 {
        // Pointwise: no im2col at all.
        w.reshape([1, cout, cin])
            .matmul(x.reshape([b, cin, h * wd]))
    } else {
        let xp = if top + bottom + left + right > 0 {
            x.pad((left, right, top, bottom), PadMode::Constant(0.0))
        } else {
            x
        };
        // Tap-major columns: channel index (i * kw + j) * cin + ci.
        let mut taps = Vec::with_capacity(kh * kw);
        for i in 0..kh {
            for j in 0..kw {
                let (he, we) = (i + sh * (oh - 1) + 1, j + sw * (ow - 1) + 1);
                taps.push(if (sh, sw) == (1, 1) {
                    xp.clone().slice(s![.., .., i..he, j..we])
                } else {
                    xp.clone()
                        .slice(s![.., .., i..he;sh as isize, j..we;sw as isize])
                });
            }
        }
        let cols = Tensor::cat(taps, 1).reshape([b, kh * kw * cin, oh * ow]);
        // [Cout, Cin, KH, KW] -> [Cout, KH, KW, Cin] -> [1, Cout, KH*KW*Cin]
        w.permute([0, 2, 3, 1])
            .reshape([1, cout, kh * kw * cin])
            .matmul(cols)
    };
    let out = out.reshape([b, cout, oh, ow]);
    match bias {
        Some(bias) => out + bias.reshape([1, cout, 1, 1]),
        None => out,
    }
}
