//! UNet building blocks: sinusoidal timestep embedding + MLP (DDPM section B), the ResBlock
//! with optional scale-shift norm (IDDPM), and multi-head self-attention over pixels.

use super::norm::group_norm_act;
use super::{conv, group_norm};
use crate::genome::ResBlockShape;
use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::{Dropout, DropoutConfig, GroupNorm, Linear, LinearConfig};
use burn::tensor::activation::{silu, softmax};
use burn::tensor::{Device, Tensor, TensorData};

/// Sinusoidal embedding of the timestep (improved-diffusion's `timestep_embedding`) followed by
/// Linear -> SiLU -> Linear.
#[derive(Module, Debug)]
pub struct TimeEmbedding {
    pub lin1: Linear,
    pub lin2: Linear,
    #[module(skip)]
    pub dim: usize,
}

impl TimeEmbedding {
    pub fn new(dim: usize, temb: usize, device: &Device) -> Self {
        TimeEmbedding {
            lin1: LinearConfig::new(dim, temb).init(device),
            lin2: LinearConfig::new(temb, temb).init(device),
            dim,
        }
    }

    /// `t`: `[B]` -> `[B, temb]`.
    pub fn forward(&self, t: Tensor<1>) -> Tensor<2> {
        let device = t.device();
        let half = self.dim / 2;
        let freqs: Vec<f32> = (0..half)
            .map(|i| (-(10000f64.ln()) * i as f64 / half as f64).exp() as f32)
            .collect();
        let freqs = Tensor::<2>::from_data(TensorData::new(freqs, [1, half]), &device);
        let b = t.dims()[0];
        let args = t.reshape([b, 1]) * freqs; // [B, half]
        let mut parts = vec![args.clone().cos(), args.sin()];
        if self.dim % 2 == 1 {
            parts.push(Tensor::zeros([b, 1], &device));
        }
        let emb = Tensor::cat(parts, 1); // [B, dim]
        self.lin2.forward(silu(self.lin1.forward(emb)))
    }
}

/// GroupNorm -> SiLU -> conv(k1) -> + emb -> GroupNorm -> SiLU -> dropout -> conv(k2), plus a
/// 1x1 skip when widths differ. With scale-shift norm the embedding gives `(scale, shift)`
/// applied as `norm(h) * (1 + scale) + shift` (IDDPM).
#[derive(Module, Debug)]
pub struct ResBlock {
    pub norm1: GroupNorm,
    pub conv1: Conv2d,
    pub emb: Linear,
    pub norm2: GroupNorm,
    pub dropout: Dropout,
    pub conv2: Conv2d,
    pub skip: Option<Conv2d>,
    #[module(skip)]
    pub scale_shift: bool,
}

impl ResBlock {
    pub fn new(
        s: &ResBlockShape,
        groups: usize,
        temb: usize,
        scale_shift: bool,
        dropout: f64,
        device: &Device,
    ) -> Self {
        let emb_out = if scale_shift { 2 } else { 1 } * s.hidden_channels;
        ResBlock {
            norm1: group_norm(groups, s.in_channels, device),
            conv1: conv(
                s.in_channels,
                s.hidden_channels,
                s.kernels[0],
                1,
                false,
                device,
            ),
            emb: LinearConfig::new(temb, emb_out).init(device),
            norm2: group_norm(groups, s.hidden_channels, device),
            dropout: DropoutConfig::new(dropout).init(),
            conv2: conv(
                s.hidden_channels,
                s.out_channels,
                s.kernels[1],
                1,
                true,
                device,
            ),
            skip: (s.in_channels != s.out_channels)
                .then(|| conv(s.in_channels, s.out_channels, 1, 1, false, device)),
            scale_shift,
        }
    }

    /// `x`: `[B, Cin, H, W]`, `emb`: `[B, temb]` (already through SiLU) -> `[B, Cout, H, W]`.
    pub fn forward(&self, x: Tensor<4>, emb: Tensor<2>) -> Tensor<4> {
        let a = group_norm_act(&self.norm1, x.clone(), None, true);
        let e = self.emb.forward(emb); // [B, C] or, with scale-shift, [B, 2C]
        let h = if self.scale_shift {
            let h = conv::forward(&self.conv1, a);
            let c = h.dims()[1];
            let scale = e.clone().narrow(1, 0, c);
            let shift = e.narrow(1, c, c);
            group_norm_act(&self.norm2, h, Some((scale, shift)), true)
        } else {
            group_norm_act(
                &self.norm2,
                conv::forward_plus(&self.conv1, a, e),
                None,
                true,
            )
        };
        let h = conv::forward(&self.conv2, self.dropout.forward(h));
        let x = match &self.skip {
            Some(skip) => conv::forward(skip, x),
            None => x,
        };
        x + h
    }
}

/// Multi-head self-attention over the pixels of a feature map, residual, output projection
/// zero-initialised (improved-diffusion's `AttentionBlock`).
#[derive(Module, Debug)]
pub struct AttentionBlock {
    pub norm: GroupNorm,
    pub qkv: Conv2d,
    pub proj: Conv2d,
    #[module(skip)]
    pub heads: usize,
}

impl AttentionBlock {
    pub fn new(channels: usize, heads: usize, groups: usize, device: &Device) -> Self {
        AttentionBlock {
            norm: group_norm(groups, channels, device),
            qkv: conv(channels, 3 * channels, 1, 1, false, device),
            proj: conv(channels, channels, 1, 1, true, device),
            heads,
        }
    }

    /// `[B, C, H, W] -> [B, C, H, W]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let qkv = conv::forward(
            &self.qkv,
            group_norm_act(&self.norm, x.clone(), None, false),
        );
        x + conv::forward(&self.proj, multi_head_attention(qkv, self.heads))
    }
}

/// Self-attention over pixels: `qkv` `[B, 3C, H, W]` (queries, keys, values stacked along
/// channels, each split into `heads` heads) -> `[B, C, H, W]`.
///
/// `softmax(q k^T / sqrt(dh)) v` as two matmuls over strided views of `qkv` (the softmax is our
/// fused kernel on the CPU). Not Burn's fused `attention`: on wgpu it returns wrong values for
/// strided inputs like these (relative error above 1 at 49 or more tokens, exact at 16;
/// `tests/wgpu_parity.rs`).
pub fn multi_head_attention(qkv: Tensor<4>, heads: usize) -> Tensor<4> {
    let [b, c3, h, w] = qkv.dims();
    let (c, l) = (c3 / 3, h * w);
    let dh = c / heads;
    // [B, 3C, H, W] -> [B, 3, heads, dh, L] -> three [B, heads, L, dh]
    let qkv = qkv.reshape([b, 3, heads, dh, l]);
    let part = |i: usize| {
        qkv.clone()
            .narrow(1, i, 1)
            .reshape([b, heads, dh, l])
            .swap_dims(2, 3)
    };
    let (q, k, v) = (part(0), part(1), part(2));
    // The two products in the thread's precision, the softmax in f32 (crate::precision).
    use crate::precision::{to_compute, to_f32};
    let scores = to_f32(to_compute(q).matmul(to_compute(k).swap_dims(2, 3))); // [B, heads, L, L]
    let scale = (dh as f64).powf(-0.5);
    let weights = if crate::cpu::supported(&scores) {
        crate::cpu::softmax(scores, scale)
    } else {
        softmax(scores * scale, 3)
    };
    let out = to_f32(to_compute(weights).matmul(to_compute(v))); // [B, heads, L, dh]
    out.swap_dims(2, 3).reshape([b, c, h, w])
}

/// A ResBlock optionally followed by self-attention (the unit a UNet level repeats).
#[derive(Module, Debug)]
pub struct UnetBlock {
    pub res: ResBlock,
    pub attn: Option<AttentionBlock>,
}

impl UnetBlock {
    pub fn forward(&self, x: Tensor<4>, emb: Tensor<2>) -> Tensor<4> {
        let h = self.res.forward(x, emb);
        match &self.attn {
            Some(a) => a.forward(h),
            None => h,
        }
    }
}
