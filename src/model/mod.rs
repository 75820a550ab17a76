//! Genome -> Burn module: the DDPM/IDDPM UNet (ALGORITHMS.md section 1). The only place a
//! genome meets Burn. Shapes come from [`Genome::layout`], the same derivation the cost model
//! uses, so the built parameter count equals the cost model's by construction (and by test).

mod blocks;

pub use blocks::{AttentionBlock, ResBlock, TimeEmbedding, UnetBlock};

use crate::diffusion::Denoiser;
use crate::genome::{Genome, GenomeErrors, ImageSpec};
use burn::module::Module;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, Initializer};
use burn::tensor::activation::silu;
use burn::tensor::{Device, Tensor};

/// A `k x k` convolution with "same" padding (odd k), optionally strided or zero-initialised.
pub(crate) fn conv(
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    zero: bool,
    device: &Device,
) -> Conv2d {
    let p = k / 2;
    let mut cfg = Conv2dConfig::new([cin, cout], [k, k])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(p, p, p, p));
    if zero {
        cfg = cfg.with_initializer(Initializer::Zeros);
    }
    cfg.init(device)
}

pub(crate) fn group_norm(groups: usize, channels: usize, device: &Device) -> GroupNorm {
    GroupNormConfig::new(groups, channels).init(device)
}

/// One encoder level: blocks then an optional strided-conv downsample.
#[derive(Module, Debug)]
pub struct EncoderLevel {
    pub blocks: Vec<UnetBlock>,
    pub down: Option<Conv2d>,
}

/// One decoder level: blocks fed `concat(h, skip)`, then optional nearest-x2 + conv upsample.
#[derive(Module, Debug)]
pub struct DecoderLevel {
    pub blocks: Vec<UnetBlock>,
    pub up: Option<Conv2d>,
}

/// The UNet denoiser.
#[derive(Module, Debug)]
pub struct Unet {
    pub time: TimeEmbedding,
    pub stem: Conv2d,
    pub encoder: Vec<EncoderLevel>,
    pub middle: Vec<UnetBlock>,
    pub decoder: Vec<DecoderLevel>,
    pub head_norm: GroupNorm,
    pub head_conv: Conv2d,
    #[module(skip)]
    pub image: ImageSpec,
}

impl Unet {
    /// Build a freshly initialised UNet for `genome` on `device`.
    pub fn new(genome: &Genome, device: &Device) -> Result<Unet, GenomeErrors> {
        let layout = genome.layout()?;
        let g = layout.norm_groups;
        let temb = layout.time_embed_channels;
        let ss = layout.scale_shift_norm;
        let block = |s: &crate::genome::ResBlockShape, attention: bool| UnetBlock {
            res: ResBlock::new(s, g, temb, ss, genome.dropout, device),
            attn: attention.then(|| {
                AttentionBlock::new(s.out_channels, genome.heads_for(s.out_channels), g, device)
            }),
        };
        let encoder = layout
            .encoder
            .iter()
            .map(|(blocks, down)| EncoderLevel {
                blocks: blocks.iter().map(|s| block(s, s.attention)).collect(),
                down: down.map(|(c, _)| conv(c, c, 3, 2, false, device)),
            })
            .collect();
        let [m0, m1] = &layout.middle;
        let middle = vec![block(m0, true), block(m1, false)];
        let decoder = layout
            .decoder
            .iter()
            .map(|(blocks, up)| DecoderLevel {
                blocks: blocks.iter().map(|s| block(s, s.attention)).collect(),
                up: up.map(|(c, _)| conv(c, c, 3, 1, false, device)),
            })
            .collect();
        Ok(Unet {
            time: TimeEmbedding::new(layout.base_channels, temb, device),
            stem: conv(
                layout.image.channels,
                layout.base_channels,
                3,
                1,
                false,
                device,
            ),
            encoder,
            middle,
            decoder,
            head_norm: group_norm(g, layout.head_channels, device),
            head_conv: conv(
                layout.head_channels,
                layout.image.channels,
                3,
                1,
                true,
                device,
            ),
            image: layout.image,
        })
    }

    /// `x`: `[B, C, H, W]` noisy images, `t`: `[B]` timesteps. Returns predicted eps, `[B, C, H, W]`.
    pub fn forward(&self, x: Tensor<4>, t: Tensor<1>) -> Tensor<4> {
        // [B, temb]; every block's projection starts with SiLU, shared here.
        let emb = silu(self.time.forward(t));
        let mut h = self.stem.forward(x);
        let mut skips = vec![h.clone()];
        for level in &self.encoder {
            for b in &level.blocks {
                h = b.forward(h, emb.clone());
                skips.push(h.clone());
            }
            if let Some(down) = &level.down {
                h = down.forward(h);
                skips.push(h.clone());
            }
        }
        for b in &self.middle {
            h = b.forward(h, emb.clone());
        }
        for level in &self.decoder {
            for b in &level.blocks {
                let skip = skips
                    .pop()
                    .expect("the layout gives one skip per decoder block");
                h = b.forward(Tensor::cat(vec![h, skip], 1), emb.clone());
            }
            if let Some(up) = &level.up {
                h = up.forward(upsample_nearest2(h));
            }
        }
        self.head_conv.forward(silu(self.head_norm.forward(h)))
    }
}

/// Nearest-neighbour x2 upsampling, `[B, C, H, W] -> [B, C, 2H, 2W]`, as a broadcast (exact
/// on every backend, and its gradient is a plain sum).
pub fn upsample_nearest2(x: Tensor<4>) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    x.reshape([b, c, h, 1, w, 1])
        .expand([b, c, h, 2, w, 2])
        .reshape([b, c, 2 * h, 2 * w])
}

impl Denoiser for Unet {
    fn predict_eps(&self, x_t: Tensor<4>, t: Tensor<1>) -> Tensor<4> {
        self.forward(x_t, t)
    }
}
