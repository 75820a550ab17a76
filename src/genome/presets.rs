//! Named architectures: the test preset and the reference UNets of DDPM and IDDPM.

use super::{
    AttentionGene, DecoderLevel, EncoderLevel, Genome, GenomeError, GenomeErrors, ImageSpec,
    Middle, ResBlockGene,
};
use std::path::Path;

/// Why [`Genome::load`] or [`Genome::read_file`] gave no genome (bad input, all of it).
#[derive(Debug, thiserror::Error)]
pub enum GenomeLoadError {
    #[error("{0:?} is neither a preset ({presets}) nor an existing file", presets = Genome::PRESETS.join(", "))]
    NotFound(String),
    #[error("{0}: {1}")]
    Read(String, std::io::Error),
    #[error("{0}: {1}")]
    Parse(String, GenomeError),
    #[error("{0}: invalid genome:\n{1}")]
    Invalid(String, GenomeErrors),
}

/// A UNet with `levels[i] = (channel_mult, num_res_blocks)`, all blocks standard.
fn uniform(
    image: ImageSpec,
    base_channels: usize,
    norm_groups: usize,
    levels: &[(usize, usize)],
    attention: AttentionGene,
    dropout: f64,
    scale_shift_norm: bool,
) -> Genome {
    let rb = ResBlockGene::STANDARD;
    Genome {
        image,
        base_channels,
        time_embed_mult: 4,
        norm_groups,
        dropout,
        scale_shift_norm,
        attention,
        encoder: levels
            .iter()
            .map(|&(channel_mult, n)| EncoderLevel {
                channel_mult,
                res_blocks: vec![rb; n],
            })
            .collect(),
        middle: Middle {
            res_blocks: [rb, rb],
        },
        decoder: levels
            .iter()
            .rev()
            .map(|&(_, n)| DecoderLevel {
                res_blocks: vec![rb; n + 1],
            })
            .collect(),
        learn_sigma: false,
    }
}

impl Genome {
    /// Names accepted by [`Genome::preset`].
    pub const PRESETS: [&'static str; 4] =
        ["tiny", "fmnist-small", "ddpm-cifar10", "iddpm-cifar10"];

    /// A preset by name, else the genome JSON file at `arg`, checked structurally.
    pub fn load(arg: &str) -> Result<Genome, GenomeLoadError> {
        if let Some(g) = Genome::preset(arg) {
            return Ok(g);
        }
        if !Path::new(arg).exists() {
            return Err(GenomeLoadError::NotFound(arg.to_string()));
        }
        let g = Genome::read_file(arg)?;
        g.check()
            .map_err(|e| GenomeLoadError::Invalid(arg.to_string(), e))?;
        Ok(g)
    }

    /// The genome JSON file at `path`, parsed (not checked).
    pub fn read_file(path: &str) -> Result<Genome, GenomeLoadError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| GenomeLoadError::Read(path.into(), e))?;
        Genome::from_json(&text).map_err(|e| GenomeLoadError::Parse(path.into(), e))
    }

    /// Look a preset up by name.
    pub fn preset(name: &str) -> Option<Genome> {
        match name {
            "tiny" => Some(Genome::tiny()),
            "fmnist-small" => Some(Genome::fmnist_small()),
            "ddpm-cifar10" => Some(Genome::ddpm_cifar10()),
            "iddpm-cifar10" => Some(Genome::iddpm_cifar10()),
            _ => None,
        }
    }

    /// The test preset: 0.63 M parameters at 28x28 grayscale (Fashion-MNIST's own size).
    pub fn tiny() -> Genome {
        Genome::tiny_for(ImageSpec {
            channels: 1,
            size: 28,
        })
    }

    /// The test preset at another image spec (the size must be divisible by 4).
    pub fn tiny_for(image: ImageSpec) -> Genome {
        uniform(
            image,
            24,
            8,
            &[(1, 1), (2, 1), (2, 1)],
            AttentionGene {
                resolutions: vec![image.size / 4],
                heads: 4,
                head_channels: None,
            },
            0.0,
            false,
        )
    }

    /// A small but capable Fashion-MNIST model (32x32 padded, about 6 M parameters).
    pub fn fmnist_small() -> Genome {
        uniform(
            ImageSpec {
                channels: 1,
                size: 32,
            },
            64,
            32,
            &[(1, 2), (2, 2), (2, 2)],
            AttentionGene {
                resolutions: vec![8],
                heads: 4,
                head_channels: None,
            },
            0.1,
            false,
        )
    }

    /// The DDPM CIFAR-10 UNet (Ho et al. 2020): 35.7 M parameters.
    pub fn ddpm_cifar10() -> Genome {
        uniform(
            ImageSpec {
                channels: 3,
                size: 32,
            },
            128,
            32,
            &[(1, 2), (2, 2), (2, 2), (2, 2)],
            AttentionGene {
                resolutions: vec![16],
                heads: 1,
                head_channels: None,
            },
            0.1,
            false,
        )
    }

    /// The published IDDPM CIFAR-10 UNet (Nichol & Dhariwal 2021): 3 blocks per level,
    /// attention at 16 and 8 with 4 heads, scale-shift norm, dropout 0.3, and the learned
    /// variance (6 output channels). Its recipe (`TrainConfig::for_genome`) is `L_hybrid`, the
    /// cosine schedule and T = 4,000.
    pub fn iddpm_cifar10() -> Genome {
        let mut g = uniform(
            ImageSpec {
                channels: 3,
                size: 32,
            },
            128,
            32,
            &[(1, 3), (2, 3), (2, 3), (2, 3)],
            AttentionGene {
                resolutions: vec![16, 8],
                heads: 4,
                head_channels: None,
            },
            0.3,
            true,
        );
        g.learn_sigma = true;
        g
    }
}
