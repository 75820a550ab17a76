//! Genome -> Burn module: the DDPM/IDDPM UNet (ALGORITHMS.md section 1). The only place a
//! genome meets Burn. Shapes come from [`Genome::layout`], the same derivation the cost model
//! uses, so the built parameter count equals the cost model's by construction (and by test).

mod blocks;
pub mod bundle;
pub mod conv;
#[cfg(feature = "gpu-kernels")]
pub mod gpu_norm;
#[cfg(feature = "gpu-kernels")]
pub mod im2col;
pub mod norm;

/// How every convolution and GroupNorm of this process runs, from `DIFFNAS_CONV` and
/// `DIFFNAS_NORM` when they are set; a value that does not parse is named with its variable.
pub fn algorithms_from_env() -> Result<(), String> {
    fn apply<T: std::str::FromStr<Err = String>>(name: &str, set: fn(T)) -> Result<(), String> {
        match std::env::var_os(name) {
            None => Ok(()),
            Some(v) => v
                .to_string_lossy()
                .parse::<T>()
                .map(set)
                .map_err(|e| format!("{name}: {e}")),
        }
    }
    apply("DIFFNAS_CONV", conv::set_conv_algorithm)?;
    apply("DIFFNAS_NORM", norm::set_norm_algorithm)
}

pub use blocks::{AttentionBlock, ResBlock, TimeEmbedding, UnetBlock, multi_head_attention};

use crate::diffusion::{Denoiser, Prediction};
use crate::genome::{Genome, GenomeErrors, ImageSpec};
use burn::module::Module;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, Initializer};
use burn::tensor::activation::silu;
use burn::tensor::{Device, Tensor};
use norm::group_norm_act;

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
    /// The head also gives the raw variance of IDDPM eq. 15 (`Genome::learn_sigma`).
    #[module(skip)]
    pub learn_sigma: bool,
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
                layout.out_channels,
                3,
                1,
                true,
                device,
            ),
            image: layout.image,
            learn_sigma: genome.learn_sigma,
        })
    }

    /// `x`: `[B, C, H, W]` noisy images, `t`: `[B]` timesteps. Returns the head's output: the
    /// predicted eps, `[B, C, H, W]`, followed by the raw variance channels (`[B, 2C, H, W]`)
    /// when the network learns its variance.
    pub fn forward(&self, x: Tensor<4>, t: Tensor<1>) -> Tensor<4> {
        self.run(x, t, None)
    }

    /// The forward pass that also records what every block saw and produced (the block view of
    /// the block-wise distillation search, ALGORITHMS.md section 6).
    pub fn trace(&self, x: Tensor<4>, t: Tensor<1>) -> Trace {
        let mut blocks = Vec::new();
        let emb = self.embed(t.clone());
        let eps = self.run(x, t, Some(&mut blocks));
        Trace { emb, blocks, eps }
    }

    /// The timestep embedding every block receives (already through SiLU), `[B, temb]`.
    pub fn embed(&self, t: Tensor<1>) -> Tensor<2> {
        silu(self.time.forward(t))
    }

    /// The blocks in forward order: each encoder level, the middle, each decoder level.
    pub fn block_ids(&self) -> Vec<BlockId> {
        let levels = self.encoder.len();
        (0..levels)
            .map(BlockId::Encoder)
            .chain([BlockId::Middle])
            .chain((0..self.decoder.len()).map(BlockId::Decoder))
            .collect()
    }

    /// The units (ResBlock + optional attention) of one block.
    pub fn block_units(&self, id: BlockId) -> &[UnetBlock] {
        match id {
            BlockId::Encoder(l) => &self.encoder[l].blocks,
            BlockId::Middle => &self.middle,
            BlockId::Decoder(d) => &self.decoder[d].blocks,
        }
    }

    /// Run one block on given inputs (e.g. a teacher's), with this model's weights.
    pub fn forward_block(
        &self,
        id: BlockId,
        input: Tensor<4>,
        skips: &[Tensor<4>],
        emb: Tensor<2>,
    ) -> Vec<Tensor<4>> {
        let units = self.block_units(id);
        block_forward(id, units.len(), input, skips, |i, h| {
            units[i].forward(h, emb.clone())
        })
    }

    fn run(&self, x: Tensor<4>, t: Tensor<1>, mut trace: Option<&mut Vec<BlockIo>>) -> Tensor<4> {
        let emb = self.embed(t);
        let mut h = conv::forward(&self.stem, x);
        let mut skips = vec![h.clone()];
        let mut record =
            |id: BlockId, input: Tensor<4>, used: Vec<Tensor<4>>, out: &[Tensor<4>]| {
                if let Some(tr) = trace.as_deref_mut() {
                    tr.push(BlockIo {
                        id,
                        input,
                        skips: used,
                        outputs: out.to_vec(),
                    });
                }
            };
        for id in self.block_ids() {
            let input = h.clone();
            let used = match id {
                BlockId::Decoder(d) => {
                    let n = self.decoder[d].blocks.len();
                    // The level pops its skips from the end: the first block takes the last.
                    let mut used = skips.split_off(skips.len() - n);
                    used.reverse();
                    used
                }
                _ => Vec::new(),
            };
            let outs = self.forward_block(id, input.clone(), &used, emb.clone());
            record(id, input, used, &outs);
            h = outs.last().expect("a block has at least one unit").clone();
            match id {
                BlockId::Encoder(l) => {
                    skips.extend(outs);
                    if let Some(down) = &self.encoder[l].down {
                        h = conv::forward(down, h);
                        skips.push(h.clone());
                    }
                }
                BlockId::Middle => {}
                BlockId::Decoder(d) => {
                    if let Some(up) = &self.decoder[d].up {
                        h = conv::forward(up, upsample_nearest2(h));
                    }
                }
            }
        }
        conv::forward(
            &self.head_conv,
            group_norm_act(&self.head_norm, h, None, true),
        )
    }
}

/// A block of the UNet as the block-wise search sees it (ALGORITHMS.md section 6): an encoder
/// level's units (up to its downsample), the middle, or a decoder level's units (up to its
/// upsample). Stem, timestep MLP, resampling convolutions and head are outside every block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlockId {
    Encoder(usize),
    Middle,
    Decoder(usize),
}

impl std::fmt::Display for BlockId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BlockId::Encoder(l) => write!(f, "encoder[{l}]"),
            BlockId::Middle => write!(f, "middle"),
            BlockId::Decoder(d) => write!(f, "decoder[{d}]"),
        }
    }
}

/// What one block received and produced in a traced forward pass.
#[derive(Debug, Clone)]
pub struct BlockIo {
    pub id: BlockId,
    /// The activation entering the block.
    pub input: Tensor<4>,
    /// Decoder blocks: the skip activations their units concatenate, in unit order.
    pub skips: Vec<Tensor<4>>,
    /// The block's distillation targets: every unit's output for an encoder level (each one
    /// is a skip the decoder reads), the last unit's output otherwise.
    pub outputs: Vec<Tensor<4>>,
}

/// A traced forward pass.
#[derive(Debug, Clone)]
pub struct Trace {
    /// The timestep embedding after SiLU, `[B, temb]`.
    pub emb: Tensor<2>,
    pub blocks: Vec<BlockIo>,
    /// The head's output (as [`Unet::forward`]).
    pub eps: Tensor<4>,
}

/// The wiring of one block, shared by the UNet and the block supernets so they cannot
/// disagree: `unit(i, h)` runs unit `i`. Encoder units chain and all their outputs are
/// returned; decoder unit `i` reads `concat(h, skips[i])`; the middle chains its two units.
pub fn block_forward(
    id: BlockId,
    units: usize,
    input: Tensor<4>,
    skips: &[Tensor<4>],
    mut unit: impl FnMut(usize, Tensor<4>) -> Tensor<4>,
) -> Vec<Tensor<4>> {
    let mut h = input;
    let mut outs = Vec::with_capacity(units);
    for i in 0..units {
        let x = match (id, skips.get(i)) {
            (BlockId::Decoder(_), Some(s)) => Tensor::cat(vec![h, s.clone()], 1),
            (BlockId::Decoder(_), None) => panic!("{id}: unit {i} has no skip"),
            _ => h,
        };
        h = unit(i, x);
        if matches!(id, BlockId::Encoder(_)) {
            outs.push(h.clone());
        }
    }
    if !matches!(id, BlockId::Encoder(_)) {
        outs.push(h);
    }
    outs
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
        self.predict(x_t, t).eps
    }

    fn predict(&self, x_t: Tensor<4>, t: Tensor<1>) -> Prediction {
        let out = self.forward(x_t, t);
        if !self.learn_sigma {
            return Prediction {
                eps: out,
                variance: None,
            };
        }
        let c = self.image.channels;
        Prediction {
            eps: out.clone().narrow(1, 0, c),
            variance: Some(out.narrow(1, c, c)),
        }
    }
}
